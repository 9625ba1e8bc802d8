#!/usr/bin/env python3
"""What the pymongoose API costs over the native API, per request, and where it goes.

A quick loop for working on the compat fast path (binding/mgcompat.c), outside the test
suite: servers/pymongoose_uring_server.py (the native API) and servers/pymongoose_server.py
(pymongoose's API on pymongoose_uring.compat) are started with the package found on
PYTHONPATH (a build of your checkout, e.g. ``--pythonpath build/devpkg``), one ring thread,
pinned to one CPU; wrk, pinned to another, drives ``GET /`` keep-alive and 16-deep
pipelined, in alternating rounds; the figure is the server's CPU time per request (utime +
stime of its threads from /proc, over wrk's interval), as benchmarks/run.py measures it.
``--profile`` adds a ``perf record`` of each server during one pipelined round and prints its
top symbols (needs perf).

    python3 benchmarks/compat_cost.py --pythonpath build/devpkg --rounds 5 --seconds 2
    python3 benchmarks/compat_cost.py --pythonpath build/devpkg \
        --baseline-python /path/to/main/checkout/build/venv/bin/python

benchmarks/run.py is the proof (the same scripts, every check); this script only narrows
down a change quickly. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = {
    "native": os.path.join(HERE, "servers", "pymongoose_uring_server.py"),
    "pymongoose": os.path.join(HERE, "servers", "pymongoose_server.py"),
}
WORKLOADS = {
    "keepalive": [],
    "pipelined": ["-s", os.path.join(HERE, "lua", "pipeline.lua")],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid, all its threads (io_uring's workers included), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit("server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server on port %d did not answer" % port)


def run_wrk(args, port: int, workload: str, seconds: float) -> int:
    cmd = ["taskset", "-c", args.client_cpu, "wrk", "-t1", "-c64", "-d%ds" % seconds]
    cmd += WORKLOADS[workload] + ["http://127.0.0.1:%d/" % port]
    if workload == "pipelined":
        cmd += ["--", "16"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if " requests in " in line:
            return int(line.split()[0])
    raise SystemExit("no request count in wrk's output:\n" + out)


def profile(args, name: str, pid: int, port: int) -> None:
    data = "/tmp/pm-speed-compat-cost-%s.perf" % name
    rec = subprocess.Popen(
        ["perf", "record", "-q", "-g", "-o", data, "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    run_wrk(args, port, "pipelined", args.seconds)
    rec.send_signal(2)
    rec.wait(timeout=30)
    report = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            data,
            "--no-children",
            "--stdio",
            "--sort",
            "symbol",
            "-g",
            "none",
        ],
        capture_output=True,
        text=True,
    ).stdout
    lines = [ln for ln in report.splitlines() if ln.strip() and not ln.startswith("#")]
    what = "with callees" if args.children else "self time"
    print("\n%s, pipelined, top symbols (%s):" % (name, what))
    for ln in lines[: args.top]:
        print("  " + ln.strip())
    os.unlink(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pythonpath", default="", help="prepended to PYTHONPATH for the servers")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--server-cpu", default="1")
    ap.add_argument("--client-cpu", default="0")
    ap.add_argument("--workloads", default="keepalive,pipelined")
    ap.add_argument("--profile", action="store_true", help="perf record one pipelined round")
    ap.add_argument(
        "--baseline-python",
        help="an interpreter with another build installed (e.g. the main checkout's venv): "
        "its native API is measured too, to show the native API unchanged",
    )
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--children", action="store_true", help="the profile with callees' time")
    args = ap.parse_args()

    env = dict(os.environ)
    path = [os.path.abspath(p) for p in args.pythonpath.split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(
        path + [os.path.join(HERE, "servers")] + [env.get("PYTHONPATH", "")]
    )
    runs = [(name, script, sys.executable, env) for name, script in SERVERS.items()]
    if args.baseline_python:
        base_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        base_env["PYTHONPATH"] = os.path.join(HERE, "servers")
        runs.append(("native-baseline", SERVERS["native"], args.baseline_python, base_env))
    procs = {}
    try:
        for name, script, python, run_env in runs:
            port = free_port()
            cmd = ["taskset", "-c", args.server_cpu, python, script, str(port), "--threads", "1"]
            proc = subprocess.Popen(cmd, env=run_env, cwd="/tmp")
            procs[name] = (proc, port)
        for proc, port in procs.values():
            wait_up(port, proc)
        results = {(n, w): [] for n in procs for w in args.workloads.split(",")}
        names = list(procs)
        for r in range(args.rounds):
            for workload in args.workloads.split(","):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    proc, port = procs[name]
                    before = cpu_seconds(proc.pid)
                    count = run_wrk(args, port, workload, args.seconds)
                    used = cpu_seconds(proc.pid) - before
                    results[(name, workload)].append(used * 1e6 / max(count, 1))
        print("server CPU µs per request (median of %d x %d s):" % (args.rounds, args.seconds))
        for workload in args.workloads.split(","):
            native = statistics.median(results[("native", workload)])
            compat = statistics.median(results[("pymongoose", workload)])
            print(
                "  %-10s native %.2f  pymongoose %.2f  ratio %.2fx   (rounds: %s / %s)"
                % (
                    workload,
                    native,
                    compat,
                    compat / native,
                    " ".join("%.2f" % v for v in results[("native", workload)]),
                    " ".join("%.2f" % v for v in results[("pymongoose", workload)]),
                )
            )
            if ("native-baseline", workload) in results:
                base = statistics.median(results[("native-baseline", workload)])
                print(
                    "  %-10s the baseline build's native %.2f: this build's native is %.2fx it"
                    % (workload, base, native / base)
                )
        if args.profile:
            for name, (proc, port) in procs.items():
                profile(args, name, proc.pid, port)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
