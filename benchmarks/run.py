#!/usr/bin/env python3
"""Compare pymongoose_uring with the servers its users would otherwise pick, on this machine.

    python3 benchmarks/run.py                 # everything: ~14 minutes on 2 cores
    python3 benchmarks/run.py --quick         # keep-alive and pipelined, one round: < 2 min
    python3 benchmarks/run.py --servers hello_c,nginx --workloads keepalive,pipelined
    python3 benchmarks/run.py --provision-only  # build, install, check each answer; no load
    python3 benchmarks/run.py --files         # the file workloads (16 KiB, 1 MiB) only
    python3 benchmarks/run.py --suite apps    # raw WSGI/ASGI, Flask, FastAPI on every server
    python3 benchmarks/run.py --suite tls     # HTTPS: us, nginx, uvicorn, granian over TLS 1.3

Installs what is missing (wrk and nginx with apt-get, the Python peers with pip), builds
examples/hello_server (build-bench/engine/) and the pymongoose_uring package
(build-bench/python/), starts every server pinned to the server CPUs, checks its answers with
real requests (one of the project's own servers that is unavailable is an error: exit status
1, the server and the cause named; an unavailable peer is left out and listed), then measures each
workload in alternation (A B C, B C A, ... per round) with wrk pinned to the client CPUs,
and reports medians: requests/s, latency p50/p99, server CPU µs per request (utime+stime of
the server's process tree from /proc), peak RSS, socket errors; beside every server that runs
an app of servers/apps.py, the app's own cost (the app called in-process, no server,
bench/appcost.py) and the server's own (the row minus the app's). Writes results.json,
results.csv, rounds.csv, results.md and PNG charts under benchmarks/results/raw/<stamp>/
(--publish also copies them to benchmarks/results/). The HTTPS workloads (--suite tls) get
certificates made for the run (bench/tls.py) and wrk a preload that makes every connection a
full handshake. See benchmarks/README.md.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import (  # noqa: E402
    BENCH_DIR,
    RESULTS_DIR,
    BenchError,
    WrongAnswer,
    appcost,
    checks,
    files,
    measure,
    procstat,
    provision,
    registry,
    report,
    tls,
    workloads as wl,
    wrk,
    wsload,
)
from bench.serverproc import ServerProcess, Unavailable  # noqa: E402
from bench.session import provision_servers, raise_fd_limit, warm_up  # noqa: E402


def parse_args(argv=None):
    ncpu = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="servers: %s\nworkloads: %s" % (", ".join(registry.DEFAULT), ", ".join(wl.DEFAULT)),
    )
    p.add_argument(
        "--servers",
        default=None,
        help="comma-separated servers (default: all those of the default set that serve a "
        "selected workload)",
    )
    p.add_argument("--skip", default="", help="comma-separated servers to leave out")
    p.add_argument("--workloads", default=None, help="comma-separated workloads (default: all)")
    p.add_argument(
        "--files",
        action="store_true",
        help="the file workloads only (%s), on every server that serves files" % ",".join(wl.FILES),
    )
    p.add_argument(
        "--suite",
        choices=sorted(registry.SUITES),
        default=None,
        help="a named set of servers and workloads: apps = raw WSGI, raw ASGI, Flask and "
        "FastAPI on every server that runs them, against the native API (%s; keepalive "
        "unless --workloads is given); tls = HTTPS, us against nginx, uvicorn and granian "
        "(%s; workloads %s)"
        % (
            ", ".join(registry.SUITES["apps"]),
            ", ".join(registry.SUITES["tls"]),
            ", ".join(registry.SUITE_WORKLOADS["tls"]),
        ),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="keepalive and pipelined only, 1 round of 3 s (under 2 minutes)",
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds per workload (default 3)")
    p.add_argument(
        "--duration",
        type=int,
        default=None,
        help="seconds per measurement (default 2; 3 with --quick)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of unmeasured load after each server starts (default 1)",
    )
    p.add_argument(
        "--server-cpus",
        default="1" if ncpu > 1 else "0",
        help="CPUs the servers are pinned to, e.g. 1 or 0-7 (default 1)",
    )
    p.add_argument(
        "--client-cpus", default="0", help="CPUs wrk is pinned to, one wrk thread each (default 0)"
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=18100,
        help="servers listen on 127.0.0.1:base+index (default 18100)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ring threads for hello_c and pymongoose_uring (default 1)",
    )
    p.add_argument(
        "--hello-server",
        default=None,
        help="path of a hello_server binary (default: build it in build-bench/engine/)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="server the ratios are taken against (default: pymongoose_uring, "
        "else the first of %s that ran)" % ", ".join(registry.REFERENCE_ORDER),
    )
    p.add_argument(
        "--ws-procs",
        type=int,
        default=1,
        help="client processes for ws-echo (default 1: one wsload process; more, to check "
        "that the client does not limit the rate)",
    )
    p.add_argument("--no-install", action="store_true", help="install nothing (apt, pip)")
    p.add_argument(
        "--no-build",
        action="store_true",
        help="build nothing; use binaries and packages already there",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="reinstall pymongoose_uring from the repository even if importable",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="on a wrong answer or a crash, drop that server and go on (exit 1 at end)",
    )
    p.add_argument("--out", default=None, help="output folder (default results/raw/<stamp>)")
    p.add_argument(
        "--publish",
        action="store_true",
        help="also copy the results and charts to benchmarks/results/",
    )
    p.add_argument(
        "--publish-from",
        metavar="DIR",
        default=None,
        help="publish an earlier run's folder (as --publish would have), then exit",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--list", action="store_true", help="list servers and workloads, then exit")
    p.add_argument(
        "--provision-only",
        action="store_true",
        help="install and build what the servers need, start each once to check "
        "its answer, list them, then exit without measuring",
    )
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 2)
    if args.suite:
        if args.files or args.servers is not None:
            p.error("--suite and --files/--servers: give one of them")
        args.servers = ",".join(registry.SUITES[args.suite])
        if args.workloads is None:
            args.workloads = ",".join(registry.SUITE_WORKLOADS[args.suite])
    if args.files:
        if args.workloads is not None:
            p.error("--files and --workloads: give one of them")
        args.workloads = ",".join(wl.FILES)
    if args.workloads is None:
        args.workloads = ",".join(wl.QUICK if args.quick else wl.DEFAULT)
    args.servers_given = args.servers is not None
    only_tls = all(n.strip() in wl.TLS for n in args.workloads.split(",") if n.strip())
    # HTTPS workloads alone, no servers named: the HTTPS servers (the default set has none).
    default = registry.SUITES["tls"] if only_tls else registry.DEFAULT
    args.servers = args.servers or ",".join(default)
    return args


def idle_servers(defs, workloads):
    """The servers that serve none of the workloads (a WebSocket-only run and nginx, say):
    with the default set they are not started, and the report says why."""
    return [d for d in defs if not any(d.supports(w) for w in workloads)]


def _names(text, known, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(
            "unknown %s: %s (known: %s)" % (what, ", ".join(unknown), ", ".join(known))
        )
    return names


def _shown(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def publish(out_dir):
    """Copy a run's tables, data and charts to benchmarks/results/ and rewrite the README's
    results section from them."""
    with open(os.path.join(out_dir, "results.json")) as f:
        meta = json.load(f)["meta"]
    with open(os.path.join(out_dir, "results.md")) as f:
        tables = f.read()
    names = ["results.json", "results.csv", "rounds.csv", "results.md"]
    names += sorted(n for n in os.listdir(out_dir) if n.endswith(".png"))
    for name in names:
        shutil.copy(os.path.join(out_dir, name), os.path.join(RESULTS_DIR, name))
    images = "\n".join(
        "![%s](results/%s)" % (n[:-4].replace("_", " "), n) for n in names if n.endswith(".png")
    )
    section = "%s\n\n%s\n%s" % (report.machine_table(meta), tables.rstrip() + "\n", images)
    updated = report.update_readme(os.path.join(BENCH_DIR, "README.md"), section)
    print(
        "published %s to %s/%s"
        % (
            os.path.relpath(out_dir),
            os.path.relpath(RESULTS_DIR),
            " and README.md" if updated else "",
        )
    )


def comparison_workloads(workloads):
    """The HTTP workloads that selected ones compare with (compare_with) but that were not
    selected: measured too, only on the project's own servers, so that the ratio (a
    WebSocket message against a pipelined request) comes from one run."""
    names = [w.name for w in workloads]
    extra = []
    for w in workloads:
        if w.compare_with and w.compare_with not in names:
            names.append(w.compare_with)
            extra.append(wl.BY_NAME[w.compare_with])
    return extra


def comparison_server(definition, base, workloads):
    """Whether a comparison-only workload `base` is measured on this server: one of the
    project's own (or the C reference) that also runs the workload comparing with it."""
    return definition.kind != "peer" and any(
        w.compare_with == base.name and definition.supports(w) for w in workloads
    )


def progress(workload, rnd, rounds, server, p):
    extra = ""
    if p.get("mem_per_conn_kib") is not None:
        extra = "  %.1f KiB/conn" % p["mem_per_conn_kib"]
    if p.get("client_cpu_util") is not None:
        extra += "  CPU server/client %.0f%%/%.0f%%" % (
            100 * (p.get("server_cpu_util") or 0),
            100 * p["client_cpu_util"],
        )
    if p.get("server_own_us_per_req") is not None:
        extra += "  (app's own %.1f, server's own %.1f)" % (
            p["app_us_per_req"],
            p["server_own_us_per_req"],
        )
    errors = p["socket_errors"] + p["status_errors"]
    unit = workload.unit
    print(
        "  %-12s r%d/%d  %-18s %9s %s/s  p50 %7.2f ms  p99 %7.2f ms  CPU %6.1f µs/%s  "
        "RSS %6.1f MiB%s%s"
        % (
            workload.name,
            rnd + 1,
            rounds,
            server.name,
            "{:,.0f}".format(p["rps"]),
            unit,
            p["lat_p50_ms"],
            p["lat_p99_ms"],
            p["cpu_us_per_req"] or 0,
            unit,
            p["rss_peak_mib"],
            extra,
            "  ERRORS %d" % errors if errors else "",
        ),
        flush=True,
    )


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for d in registry.SERVERS:
            print("server   %-18s %s" % (d.name, d.description))
        for w in wl.WORKLOADS:
            print("workload %-18s %s" % (w.name, w.description))
        return 0
    if args.publish_from:
        publish(args.publish_from)
        return 0
    server_names = [
        n
        for n in _names(args.servers, registry.BY_NAME, "servers")
        if n not in _names(args.skip, registry.BY_NAME, "servers")
    ]
    workloads = [wl.BY_NAME[n] for n in _names(args.workloads, wl.BY_NAME, "workloads")]
    extra = comparison_workloads(workloads)
    left_out = []
    if not args.servers_given:
        left_out = idle_servers([registry.BY_NAME[n] for n in server_names], workloads)
        server_names = [n for n in server_names if registry.BY_NAME[n] not in left_out]
    server_cpus = procstat.parse_cpu_list(args.server_cpus)
    client_cpus = procstat.parse_cpu_list(args.client_cpus)
    if server_cpus & client_cpus:
        print(
            "warning: server and client CPUs overlap (%s / %s): numbers will mix the two"
            % (args.server_cpus, args.client_cpus)
        )
    os.sched_setaffinity(0, client_cpus)  # the runner's own sampling stays off the server CPUs
    fd_limit = raise_fd_limit()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or os.path.join(RESULTS_DIR, "raw", stamp)
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    setup_log = os.path.join(logs, "setup.log")
    wrk_log = os.path.join(logs, "wrk.log")

    print("setting up (log: %s)" % _shown(setup_log), flush=True)
    if not args.no_install:
        provision.check_wrk(setup_log)
    elif not wrk.find() and not args.provision_only:
        raise SystemExit("wrk is required (apt-get install -y wrk)")
    defs = [registry.BY_NAME[n] for n in server_names]
    unavailable, built = provision_servers(defs, args, setup_log)
    wsload_binary = None
    if any(w.client == "wsload" for w in workloads) and not args.provision_only:
        wsload_binary, error = wsload.build(setup_log, build=not args.no_build)
        if error:
            raise SystemExit("the WebSocket load client is required: %s" % error)
    if args.provision_only:
        args.no_plots = True
    if not args.no_plots and not args.no_install:
        if provision.ensure_pip([("matplotlib", "matplotlib")], setup_log):
            print("  matplotlib unavailable: no charts")
            args.no_plots = True

    if any(w.needs == "files" for w in workloads) or any(d.files_only for d in defs):
        # The files the file workloads serve, made afresh for this run (bench/files.py).
        built.files_root = files.prepare()
    certificates = None
    if any(d.tls for d in defs):
        # HTTPS: this run's certificates, and wrk's preload (bench/tls.py): the openssl
        # command and OpenSSL's headers from apt-get when missing.
        if not args.no_install:
            error = tls.ensure_tools(setup_log)
            if error:
                raise SystemExit("the HTTPS servers need %s" % error)
        if not args.provision_only:
            _preload, error = tls.build_preload(setup_log, build=not args.no_build)
            if error:
                raise SystemExit("the HTTPS workloads need wrk's TLS preload: %s" % error)
        certificates = tls.make_certificates(log=setup_log)
    first_kind = next((w.tls_cert for w in workloads if w.tls_cert), "ecdsa")
    servers, failed, notes, remarks = {}, {}, [], []
    if left_out:
        notes.append(
            "not started, serving none of %s: %s"
            % (
                ", ".join(w.name for w in workloads),
                ", ".join("%s (%s)" % (d.name, ", ".join(d.caps)) for d in left_out),
            )
        )
    meta = {
        "args": vars(args),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "fd_limit": fd_limit,
        "machine": report.machine(server_cpus, client_cpus),
        "hello_server": built.hello_server,
        "pythonpath": built.pythonpath,
        "wsload": wsload_binary,
        "comparison_only": [w.name for w in extra],
        "files_root": built.files_root,
        "files": dict(files.FILES) if built.files_root else None,
        "tls": (
            {
                "certificates": {k: c.label for k, c in certificates.items()},
                "directory": os.path.dirname(certificates["ecdsa"].certfile),
                "tls13_suites": tls.TLS13_SUITES,
                "tls12_ciphers": tls.TLS12_CIPHERS,
                "client": "wrk with benchmarks/wrktls (no session resumption)",
            }
            if certificates
            else None
        ),
    }
    all_points = []
    started_at = time.monotonic()
    exit_status = 0
    app_costs = {}
    wanted = (
        appcost.wanted_for([d for d in defs if d.name not in unavailable], workloads)
        if not args.provision_only
        else []
    )
    if wanted:
        # Before any server starts: the apps alone, pinned to the server CPUs.
        print("app's own cost: %d app/request pair(s), in-process" % len(wanted), flush=True)
        app_costs, app_errors = appcost.measure_all(wanted, server_cpus, log=setup_log)
        for key, result in sorted(app_costs.items()):
            print(
                "  %-12s %-4s %-6s %6.1f µs/call" % (key[0], key[1], key[2], result["us_per_call"])
            )
        for key, error in sorted(app_errors.items()):
            notes.append(
                "app's own cost of %s (%s %s): not measured (%s)" % (key[0], key[1], key[2], error)
            )

    def app_sample(key):
        """The app's own cost right now (one repeat), to pair with a round (appcost.pair)."""
        if key is None:
            return {}
        return appcost.measure_all([key], server_cpus, log=setup_log, repeats=1)[0]

    def fail(name, error, fatal=True):
        """A server that did not start or answered wrongly stops the run (unless
        --keep-going); one that stopped answering under load is dropped, and the run goes on.
        Either way the exit status is 1."""
        nonlocal exit_status
        exit_status = 1
        failed[name] = str(error)
        print("\nERROR: %s: %s\n" % (name, error), file=sys.stderr, flush=True)
        if name in servers:
            servers.pop(name).stop()
        if fatal and not args.keep_going:
            raise BenchError("%s: %s" % (name, error))

    def unavailable_server(d, reason):
        """A peer that cannot be had is left out (and listed); the project's own server is a
        failure: the comparison exists to measure it."""
        if d.project:
            fail(d.name, "this project's own server is unavailable: %s" % reason)
        else:
            unavailable[d.name] = reason
            print("  %-18s unavailable: %s" % (d.name, reason), flush=True)

    checked = []
    try:
        # Start every server; they stay up (idle) while the others are measured.
        for index, d in enumerate(defs):
            if d.name in unavailable:
                unavailable_server(d, unavailable.pop(d.name))
                continue
            knobs = {"threads": args.threads} if "threads" in d.knobs else {}
            s = ServerProcess(
                d,
                args.base_port + index,
                server_cpus,
                os.path.join(logs, d.name + ".log"),
                built=built,
                knobs=knobs,
            )
            if d.tls:
                s.certificate = certificates[first_kind]
            try:
                s.start()
                if args.provision_only:
                    print(
                        "  %-18s answered on port %d, checked and stopped" % (d.name, s.port),
                        flush=True,
                    )
                    checked.append(d.name)
                    s.stop()
                    continue
                servers[d.name] = s
                warm_up(s, args.warmup, client_cpus)
                print(
                    "  %-18s up on port %d (pid %d), answer checked" % (d.name, s.port, s.pid),
                    flush=True,
                )
                if (s.answer.get("connection") or "").lower() == "close":
                    remarks.append(
                        "%s answers every request with Connection: close, so its "
                        "keep-alive numbers are connection-per-request numbers" % d.name
                    )
            except Unavailable as e:
                unavailable_server(d, str(e))
            except BenchError as e:
                fail(d.name, e)

        for w in workloads + extra if not args.provision_only else []:
            active = []
            for name, s in list(servers.items()):
                if w in extra and not comparison_server(s.definition, w, workloads):
                    continue
                if not s.definition.supports(w):
                    if not s.definition.files_only:  # there for the file workloads only
                        notes.append("%s: %s (no %s endpoint)" % (name, w.name, w.needs))
                    continue
                try:
                    if s.certificate is not None and s.certificate.kind != w.tls_cert:
                        # An HTTPS workload with another kind of certificate: start afresh.
                        s.stop()
                        s.certificate = certificates[w.tls_cert]
                        s.start()
                        warm_up(s, args.warmup, client_cpus)
                    checks.check(w.check, s.port, tls=s.certificate)
                    active.append(s)
                except checks.NotSupported as e:
                    notes.append("%s: %s (%s)" % (name, w.name, e))
                except Unavailable as e:
                    fail(name, "%s: restart with the %s certificate: %s" % (w.name, w.tls_cert, e))
                except BenchError as e:
                    fail(name, "%s check: %s" % (w.name, e), fatal=isinstance(e, WrongAnswer))
            rounds = w.rounds or args.rounds
            print(
                "%s: %s — %d server(s), %d round(s)%s"
                % (
                    w.name,
                    w.title,
                    len(active),
                    rounds,
                    " (only as the base of a comparison)" if w in extra else "",
                ),
                flush=True,
            )
            for r in range(rounds):
                shift = r % len(active) if active else 0
                for s in active[shift:] + active[:shift]:
                    if s.name not in servers:
                        continue  # dropped after a failure (--keep-going)
                    try:
                        if w.restart:
                            s.stop()
                            s.start()
                            warm_up(s, args.warmup, client_cpus)
                        app_key = appcost.key_for(s.definition, w, app_costs)
                        before = app_sample(app_key)
                        p = measure.point(
                            s,
                            w,
                            args.duration,
                            client_cpus,
                            log=wrk_log,
                            wsload_binary=wsload_binary,
                            warmup=args.warmup,
                            ws_procs=args.ws_procs,
                        )
                    except BenchError as e:
                        fail(s.name, "%s: %s" % (w.name, e), fatal=isinstance(e, WrongAnswer))
                        continue
                    if app_key is not None:
                        appcost.pair(p, [before, app_sample(app_key)], app_costs, app_key)
                    progress(w, r, rounds, s, p)
                    if not p["recovered"]:
                        remarks.append(
                            "%s did not answer within 30 s after %s round %d (%s); "
                            "it was restarted" % (s.name, w.name, r + 1, p["recovery_error"])
                        )
                        print(
                            "  %s is not answering after the load: restarting it" % s.name,
                            flush=True,
                        )
                        try:
                            s.stop()
                            s.start()
                            warm_up(s, args.warmup, client_cpus)
                        except BenchError as e:
                            fail(s.name, "restart after %s: %s" % (w.name, e), fatal=False)
                    p.update(server=s.name, workload=w.name, round=r + 1)
                    all_points.append(p)
        if any(w.needs == "files" for w in workloads):
            for s in servers.values():
                if s.definition.stats_path and "files" in s.definition.caps:
                    note = report.file_counters_note(
                        s.name, checks.stats(s.port, s.definition.stats_path)
                    )
                    if note:
                        remarks.append(note)
        for s in servers.values():
            if s.certificate is not None and s.definition.stats_path:
                note = report.tls_counters_note(
                    s.name, checks.stats(s.port, s.definition.stats_path, tls=s.certificate)
                )
                if note:
                    remarks.append(note)
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured", file=sys.stderr)
        exit_status = 130
    except BenchError:
        exit_status = 1
    finally:
        for s in servers.values():
            s.stop()
        if built.files_root:
            files.remove(built.files_root)
        tls.remove(certificates)

    elapsed = time.monotonic() - started_at
    if args.provision_only:
        print("\nservers answering: %s" % (", ".join(checked) or "none"))
        for name, reason in sorted(unavailable.items()):
            print("unavailable peer: %s (%s)" % (name, reason))
        for name, reason in sorted(failed.items()):
            print("FAILED: %s (%s)" % (name, reason.splitlines()[0]))
        return exit_status
    # The app's own cost of the run: the median of every repeat, before the servers and
    # beside their rounds (a row whose rounds were paired shows the medians of its own).
    meta["app_costs"] = [
        dict(app=k[0], method=k[1], path=k[2], body_bytes=k[3], **v)
        for k, v in sorted(app_costs.items())
    ]
    for key, result in sorted(app_costs.items()):
        print(
            "app's own cost %-12s %-4s %-6s %6.1f µs/call (median of %d repeats, %.1f to %.1f)"
            % (
                key[0],
                key[1],
                key[2],
                result["us_per_call"],
                len(result["runs"]),
                min(result["runs"]),
                max(result["runs"]),
            ),
            flush=True,
        )
    grouped = {}
    for p in all_points:
        grouped.setdefault((p["server"], p["workload"]), []).append(p)
    summary = {key: report.summarize(points) for key, points in grouped.items()}
    appcost.annotate(
        summary,
        {d.name: d.app for d in registry.SERVERS if d.app},
        {w.name: w for w in workloads + extra},
        app_costs,
    )
    measured = {p["server"] for p in all_points}
    for d in defs:
        if d.name in measured:
            remarks += report.server_notes(d.name, os.path.join(logs, d.name + ".log"))
    labels = {d.name: d.label for d in registry.SERVERS}
    kinds = {d.name: d.kind for d in registry.SERVERS}
    reference = report.choose_reference(summary, registry.REFERENCE_ORDER, args.reference)
    for name, reason in unavailable.items():
        notes.append("%s: unavailable (%s)" % (name, reason))
    for name, reason in failed.items():
        notes.append("%s: FAILED (%s)" % (name, reason.splitlines()[0]))
    meta["elapsed_s"] = round(elapsed, 1)
    meta["reference"] = reference
    m = meta["machine"]
    header = (
        "Measured %s on %s (%s CPUs, kernel %s), servers on CPU %s, wrk on CPU %s; "
        "%d round(s) of %d s per point, medians; %.0f s in all."
        % (
            m["date"],
            m["cpu_model"],
            m["cpus"],
            m["kernel"],
            args.server_cpus,
            args.client_cpus,
            args.rounds,
            args.duration,
            elapsed,
        )
    )
    text = (
        header
        + "\n\n"
        + report.tables(
            workloads,
            summary,
            labels,
            reference,
            notes,
            remarks,
            meta,
            ws_labels=registry.WS_LABELS,
            extra=extra,
            files_labels=registry.FILES_LABELS,
        )
    )
    print("\n" + text)

    rows = [
        dict(server=s, workload=w, label=labels.get(s, s), **r) for (s, w), r in summary.items()
    ]
    report.write_json(
        os.path.join(out_dir, "results.json"),
        {
            "meta": meta,
            "results": rows,
            "points": all_points,
            "unavailable": unavailable,
            "failed": failed,
            "not_measured": notes,
            "targets": report.measured_targets(summary),
            "own_cost_targets": report.measured_own_cost_targets(summary),
            "handshake_targets": report.measured_handshake_targets(summary),
            "notes": remarks,
            "servers": {
                d.name: {"label": d.label, "kind": d.kind, "description": d.description}
                for d in defs
            },
            "workloads": {
                w.name: {"title": w.title, "description": w.description} for w in workloads + extra
            },
        },
    )
    report.write_csv(os.path.join(out_dir, "results.csv"), rows)
    report.write_csv(os.path.join(out_dir, "rounds.csv"), all_points)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    written = ["results.json", "results.csv", "rounds.csv", "results.md"]
    if not args.no_plots and summary:
        from bench import plots

        try:
            written += [
                os.path.basename(p)
                for p in plots.comparison(
                    out_dir,
                    workloads,
                    summary,
                    labels,
                    kinds,
                    reference,
                    ws_labels=registry.WS_LABELS,
                    files_labels=registry.FILES_LABELS,
                )
            ]
        except Exception as e:  # a chart must never lose the numbers
            print("charts failed: %s" % e, file=sys.stderr)
    print("results: %s/{%s}" % (_shown(out_dir), ",".join(written)))
    if args.publish:
        publish(out_dir)
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
