"""Starting, checking and stopping one benchmark server.

The server runs in its own process session (so that it and its children can be stopped
together), pinned to the server CPUs, with its output in a log file.
"""

import os
import resource
import signal
import socket
import subprocess
import sys
import time

from . import SERVERS_DIR, BenchError, checks, tls
from .knobs import ALL_KNOBS, environment

EXIT_UNAVAILABLE = 78  # servers/common.py


class Unavailable(Exception):
    """The server cannot run here (its library is missing or failed to build)."""


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class ServerProcess:
    def __init__(self, definition, port, cpus, log_path, built=None, knobs=None, nofile=None):
        """nofile: RLIMIT_NOFILE (soft and hard) of the server, as `ulimit -n` would set it
        (default: the runner's own)."""
        self.definition, self.port, self.cpus = definition, port, set(cpus)
        self.log_path, self.built, self.nofile = log_path, built, nofile
        self.knobs = dict(knobs or {})
        self.proc = None
        self.answer = None  # what checks.probe() reported
        # An HTTPS server's certificate (a bench/tls.py Certificate), set before start():
        # the run restarts it with another when a workload needs another kind.
        self.certificate = None

    @property
    def name(self):
        return self.definition.name

    @property
    def pid(self):
        return self.proc.pid

    def argv(self):
        values = {
            "python": sys.executable,
            "servers": SERVERS_DIR,
            "port": str(self.port),
            "threads": str(self.knobs.get("threads", 1)),
            "hello_server": (self.built and self.built.hello_server) or "hello_server",
            "files": (self.built and self.built.files_root) or "",
        }
        return [part.format(**values) for part in self.definition.argv]

    def start(self, timeout=None):
        """Start the server and wait until it accepts connections, then check its answer
        (GET /, or the file of a static file server alone: checks.probe).
        Raises Unavailable (exit status 78) or BenchError (anything else going wrong)."""
        if port_open(self.port):
            raise BenchError(
                "port %d is already taken by another process: cannot start %s "
                "(choose another --base-port)" % (self.port, self.name)
            )
        env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_HOST="127.0.0.1")
        env.update(dict(self.definition.env))
        if self.built:
            env.update(self.built.env_for(self.definition))
        env.update(self._tls_environment())
        env.update(environment({k: v for k, v in self.knobs.items() if k != "threads"}))
        if "threads" in self.knobs:
            env.update(environment({"threads": self.knobs["threads"]}))
        log = open(self.log_path, "ab")
        log.write(("\n==== %s: %s\n" % (time.strftime("%H:%M:%S"), " ".join(self.argv()))).encode())
        log.flush()
        cpus, nofile = self.cpus, self.nofile

        def child():
            os.sched_setaffinity(0, cpus)
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=SERVERS_DIR,
            start_new_session=True,
            preexec_fn=child,
        )
        log.close()
        try:
            self._wait_ready(timeout or self.definition.start_timeout)
            self.answer = checks.probe(self.definition, self.port, tls=self.certificate)
        except BaseException:
            self.stop()  # neither a wrong answer nor Ctrl-C may leave the server behind
            raise
        return self

    def _tls_environment(self):
        """What tells an HTTPS server its certificate: the engine's ssl_* knobs (PMU_*) or
        BENCH_TLS_CERT/KEY (registry `tls`). Raises Unavailable for an engine without TLS
        knobs (a checkout before issue 14), BenchError when no certificate was set."""
        how = self.definition.tls
        if how is None:
            return {}
        if self.certificate is None:
            raise BenchError("%s serves HTTPS: a certificate must be set first" % self.name)
        if how == "knobs":
            missing = [k for k in tls.engine_knobs(self.certificate) if k not in ALL_KNOBS]
            if missing:
                raise Unavailable(
                    "this checkout's engine has no %s knob: no TLS to measure" % missing[0]
                )
            return environment(tls.engine_knobs(self.certificate))
        return tls.environment(self.certificate)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                if rc == EXIT_UNAVAILABLE:
                    raise Unavailable(tail(self.log_path, 3).strip().splitlines()[-1])
                raise BenchError(
                    "%s exited with status %d before listening on port %d; its "
                    "log (%s) ends:\n%s"
                    % (self.name, rc, self.port, self.log_path, tail(self.log_path))
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    "%s did not listen on port %d within %.0f s; its log (%s) "
                    "ends:\n%s"
                    % (self.name, self.port, timeout, self.log_path, tail(self.log_path))
                )
            time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def ensure_alive(self):
        if not self.alive():
            rc = self.proc.poll() if self.proc else None
            raise BenchError(
                "%s is no longer running (exit status %s); its log (%s) ends:\n%s"
                % (self.name, rc, self.log_path, tail(self.log_path))
            )

    def stop(self, grace=5.0):
        """SIGTERM the server's process group (it and its workers), SIGKILL what is left
        after `grace` seconds, and wait until the port is free again."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the server's pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 5
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
