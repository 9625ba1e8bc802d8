#!/usr/bin/env python3
"""Requests lost while workers come and go: `python -m pymongoose_uring --workers 2`
serving a small WSGI app under load while its workers are replaced, reloaded or killed.

    python3 benchmarks/resilience.py              # every scenario, 6 s each
    python3 benchmarks/resilience.py --seconds 10 --scenarios reload,kill

Scenarios (each a fresh supervisor on 127.0.0.1):
  max-requests     --max-requests 25: clients open a new connection per request
  max-requests-ka  --max-requests 20000 --max-requests-jitter 2000: wrk, 32 keep-alive
                   connections (wrk does not retry a request on a closed connection)
  reload           SIGHUP to the supervisor three times (new code each time), clients
                   opening a new connection per request
  kill             SIGKILL to one worker halfway, clients opening a new connection per
                   request

For each: requests answered, requests failed (refused, reset, closed unanswered, wrong
answer), and the replacements seen in the supervisor's log. Exits 1 if any request failed.
It builds the checkout's package as benchmarks/run.py does (into build-bench/python).
"""

import argparse
import collections
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import BenchError, provision, wrk  # noqa: E402

APP = """
import os
VERSION = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "version.txt")).read()

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s %d" % (VERSION.strip(), os.getpid())).encode()]
"""

SCENARIOS = ("max-requests", "max-requests-ka", "reload", "kill")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Supervisor:
    """`python -m pymongoose_uring app:app --workers 2 ...` with its stderr collected."""

    def __init__(self, app_dir, pythonpath, port, extra):
        env = dict(os.environ, PYTHONPATH=pythonpath)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pymongoose_uring",
                "app:app",
                "--interface",
                "wsgi",
                "--port",
                str(port),
                "--workers",
                "2",
                *extra,
            ],
            cwd=app_dir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def count(self, text):
        return sum(text in line for line in list(self.lines))

    def wait_for(self, text, count=1, timeout=30):
        deadline = time.monotonic() + timeout
        while self.count(text) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BenchError(
                    "the supervisor did not say %r %d time(s):\n%s"
                    % (text, count, "\n".join(self.lines[-20:]))
                )
            time.sleep(0.02)

    def worker_pids(self):
        return [
            int(m.group(1))
            for line in list(self.lines)
            for m in [re.search(r"worker \d+ started \(pid (\d+)\)", line)]
            if m
        ]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


class Clients:
    """Threads each sending GET / on a new connection, again and again."""

    def __init__(self, port, threads=3):
        self.port = port
        self.answered = 0
        self.failed = collections.Counter()
        self.versions = collections.Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                ok = resp.status == 200 and len(body.split()) == 2
                with self._lock:
                    if ok:
                        self.answered += 1
                        self.versions[body.split()[0].decode()] += 1
                    else:
                        self.failed["status %d" % resp.status] += 1
            except Exception as exc:  # any failure is what this measures
                with self._lock:
                    self.failed[type(exc).__name__] += 1

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(15)


def scenario(name, app_dir, pythonpath, seconds, client_cpus):
    """Run one scenario; returns a result row (dict)."""
    with open(os.path.join(app_dir, "version.txt"), "w") as f:
        f.write("v1")
    port = free_port()
    extra = {
        "max-requests": ["--max-requests", "25"],
        "max-requests-ka": ["--max-requests", "20000", "--max-requests-jitter", "2000"],
    }.get(name, [])
    sup = Supervisor(app_dir, pythonpath, port, extra)
    row = {"scenario": name, "answered": 0, "failed": 0, "why": "", "events": ""}
    try:
        sup.wait_for("serving on", 2)
        if name == "max-requests-ka":
            result = wrk.run(port, "/", 32, seconds, client_cpus)
            errors = result["errors"]
            row["answered"] = result["requests"] - errors["status"]
            row["failed"] = sum(errors.values())
            row["why"] = ", ".join("%s %d" % (k, v) for k, v in errors.items() if v)
        else:
            clients = Clients(port)
            if name == "reload":
                for version in ("v2", "v3", "v4"):
                    time.sleep(seconds / 4)
                    with open(os.path.join(app_dir, "version.txt"), "w") as f:
                        f.write(version)
                    done = sup.count("reload done")
                    sup.proc.send_signal(signal.SIGHUP)
                    sup.wait_for("reload done", done + 1)
                time.sleep(seconds / 4)
            elif name == "kill":
                time.sleep(seconds / 2)
                os.kill(sup.worker_pids()[0], signal.SIGKILL)
                sup.wait_for("started (pid", 3)
                time.sleep(seconds / 2)
            else:
                time.sleep(seconds)
            clients.stop()
            row["answered"] = clients.answered
            row["failed"] = sum(clients.failed.values())
            row["why"] = ", ".join("%s %d" % kv for kv in clients.failed.items())
            if name == "reload":
                row["versions"] = dict(clients.versions)
    finally:
        code = sup.stop()
    events = {
        "replaced (--max-requests)": sup.count("replacing it"),
        "reloads (SIGHUP)": sup.count("reload done"),
        "restarts after a crash": sup.count("; restarting"),
    }
    row["events"] = ", ".join("%s %d" % kv for kv in events.items() if kv[1])
    if code != 0:
        raise BenchError("the supervisor exited with %s:\n%s" % (code, "\n".join(sup.lines[-20:])))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=6, help="length of each scenario (default 6)")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, of: %s" % ", ".join(SCENARIOS),
    )
    p.add_argument("--client-cpus", default="0", help="CPUs for wrk (default 0)")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        p.error("unknown scenario(s): %s" % ", ".join(unknown))

    os.makedirs(provision.BUILD_DIR, exist_ok=True)
    log = os.path.join(provision.BUILD_DIR, "resilience-setup.log")
    if "max-requests-ka" in chosen:
        provision.check_wrk(log)
    pythonpath, why = provision.pymongoose_uring(log)
    if pythonpath is None:
        raise SystemExit("resilience: %s" % why)
    cpus = {int(c) for c in args.client_cpus.split(",")}

    rows = []
    with tempfile.TemporaryDirectory(prefix="pmu-resilience-") as app_dir:
        with open(os.path.join(app_dir, "app.py"), "w") as f:
            f.write(APP)
        for name in chosen:
            print("%-16s running for %d s ..." % (name, args.seconds), flush=True)
            rows.append(scenario(name, app_dir, pythonpath, args.seconds, cpus))
            r = rows[-1]
            print(
                "%-16s answered %7d  failed %4d  %s%s"
                % (
                    name,
                    r["answered"],
                    r["failed"],
                    r["events"],
                    ("  (" + r["why"] + ")") if r["why"] else "",
                ),
                flush=True,
            )
            if "versions" in r:
                print("%-16s answers by code version: %s" % ("", r["versions"]), flush=True)

    print("\n| scenario | requests answered | requests failed | what happened |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            "| %s | %d | %d%s | %s |"
            % (
                r["scenario"],
                r["answered"],
                r["failed"],
                " (%s)" % r["why"] if r["why"] else "",
                r["events"],
            )
        )
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit("resilience: %s" % e)
