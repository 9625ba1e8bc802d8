"""What a comparison run and a sweep share: file limits, provisioning the selected servers,
and the unmeasured warm-up."""

import os
import resource

from . import checks, files, provision, wrk


def raise_fd_limit(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    return target


class Built:
    """What provisioning produced for the servers: the hello_server binary, and the folder
    holding the checkout's pymongoose_uring (put on PYTHONPATH for the servers needing it)."""

    def __init__(self):
        self.hello_server = None
        self.pythonpath = None
        self.files_root = None  # the file workloads' directory (bench/files.py), when made

    def env_for(self, definition):
        env = {}
        if definition.build == "pymongoose_uring" and self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        if self.files_root and "files" in definition.caps:
            env[files.ENV] = self.files_root
        return env


def provision_servers(defs, args, log):
    """Install and build what the servers need. Returns ({name: reason} of unavailable
    servers, Built)."""
    unavailable, built = {}, Built()
    tool_errors, pip_errors, done = {}, {}, {}
    for d in defs:
        reasons = []
        for tool in d.tools:
            if tool not in tool_errors:
                if provision.find_tool(tool):
                    tool_errors[tool] = None
                elif args.no_install:
                    tool_errors[tool] = "%s missing (and --no-install given)" % tool
                else:
                    tool_errors[tool] = provision.ensure_tool(tool, log)
            if tool_errors[tool]:
                reasons.append(tool_errors[tool])
        if d.pip:
            if d.pip not in pip_errors:
                missing = provision.missing_modules([m for m, _ in d.pip])
                if not missing:
                    pip_errors[d.pip] = None
                elif args.no_install:
                    pip_errors[d.pip] = "missing %s (and --no-install given)" % ", ".join(missing)
                else:
                    pip_errors[d.pip] = provision.ensure_pip(d.pip, log)
            if pip_errors[d.pip]:
                reasons.append(pip_errors[d.pip])
        if d.build and d.build not in done:
            if d.build == "hello_server":
                built.hello_server, done[d.build] = provision.hello_server(
                    log, explicit=args.hello_server, build=not args.no_build
                )
            elif d.build == "pymongoose_uring":
                built.pythonpath, done[d.build] = provision.pymongoose_uring(
                    log, build=not args.no_build, rebuild=args.rebuild
                )
        if d.build and done.get(d.build):
            reasons.append(done[d.build])
        if reasons:
            unavailable[d.name] = "; ".join(reasons)
    return unavailable, built


def warm_up(server, seconds, client_cpus):
    """Unmeasured load on the server's probe path (GET /, or the 16 KiB file of a static
    file server alone; over HTTPS for an HTTPS server), then its answer checked again."""
    if seconds > 0:
        hello = getattr(server.definition, "hello", True)
        path = "/" if hello else files.url(checks.PROBE_FILE)
        wrk.run(server.port, path, 64, seconds, client_cpus, tls=server.certificate)
        checks.probe(server.definition, server.port, tls=server.certificate)
