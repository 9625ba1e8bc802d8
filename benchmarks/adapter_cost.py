#!/usr/bin/env python3
"""What the WSGI and ASGI adapters cost over the native API, per request.

A quick loop for working on the adapters' hot paths (pymongoose_uring/wsgi.py, asgi.py),
outside the test suite. Each app is served through the CLI (``python -m pymongoose_uring
MODULE:APP``, one ring thread) pinned to one CPU; wrk, pinned to another, drives ``GET /``
keep-alive over 64 connections, the servers in alternating order round after round; the
figure is the server's CPU time per request (utime + stime of all its threads from /proc,
over wrk's interval), as benchmarks/run.py measures it. Rows:

- native: the native API's hello (``--hello``);
- wsgi, asgi: the 5-line raw WSGI and raw ASGI hello apps defined here;
- flask, fastapi: servers/flask_server.py's app and the FastAPI hello of
  servers/uvicorn_server.py (rebuilt here: that module needs uvicorn);
- floor: the same Flask app called from a native handler on the ring thread with the
  in-process measure's environ, no adapter (``flask_floor``; not in the default list): the
  least any adapter could cost around it, and with ``--by-thread`` the kernel's share at
  Flask's request rate;
- where the peers are installed for ``--peer-python``: granian's raw ASGI (the same app),
  uvicorn's FastAPI and gunicorn's (gthread) Flask.

For Flask and FastAPI the app's own cost is measured too (the app called in-process N times
with a minimal environ/scope, no server), and "server cost" = row - app's own. The issue's
targets are printed beside the figures.

    python3 benchmarks/adapter_cost.py --python build/venv/bin/python --rounds 5
    python3 benchmarks/adapter_cost.py --python build/venv/bin/python --only native,wsgi,flask \
        --baseline-python /path/to/main/checkout/build/venv/bin/python

With ``--by-thread`` each of our rows is also split by thread, by the names the engine
gives its threads (``pmu-ring-N``, ``pmu-wsgi-N``, ``pmu-wsgi-watch``; the main thread is
``python``): CPU µs per request, user and kernel, and voluntary and involuntary context
switches per request, medians over the rounds (``/proc/PID/task/*/stat`` and ``status``).

    python3 benchmarks/adapter_cost.py --only native,wsgi,flask --by-thread

Loopback only, bounded in time (rounds x servers x seconds).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS_DIR = os.path.join(HERE, "servers")

# -- the raw apps (served by every server that runs them, called in-process too) ----------

_HELLO = b"Hello, World!"
_WSGI_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(_HELLO)))]


def raw_wsgi(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    start_response("200 OK", _WSGI_HEADERS)
    return [_HELLO]


_ASGI_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}
_ASGI_BODY = {"type": "http.response.body", "body": _HELLO}


async def raw_asgi(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # lifespan: nothing to set up
    await send(_ASGI_START)
    await send(_ASGI_BODY)


_FLOOR: Dict[str, Any] = {}


def flask_floor(request: Any) -> Any:
    """The Flask row's floor, a native handler (``--interface native``): flask_server.py's app
    called on the ring thread with a copy of the in-process measure's environ, its body
    joined, no adapter at all: the least any adapter on this engine could cost around it."""
    if not _FLOOR:
        from flask_server import app

        from bench.appcost import wsgi_answer
        from pymongoose_uring import Response

        _FLOOR.update(app=app, answer=wsgi_answer, response=Response, environ=_wsgi_environ())
    status, headers, body = _FLOOR["answer"](_FLOOR["app"], dict(_FLOOR["environ"]))
    return _FLOOR["response"](body, status, headers)


def __getattr__(name: str) -> Any:
    """``fastapi_app``: servers/uvicorn_server.py's FastAPI hello, built on first use (so
    that this module imports without FastAPI, and without uvicorn installed)."""
    if name != "fastapi_app":
        raise AttributeError(name)
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    async def hello() -> Dict[str, str]:
        return {"message": "Hello, World!"}

    globals()["fastapi_app"] = app
    return app


# -- the servers --------------------------------------------------------------------------

OURS = {
    "native": ["--hello"],
    "wsgi": ["adapter_cost:raw_wsgi", "--interface", "wsgi"],
    "asgi": ["adapter_cost:raw_asgi", "--interface", "asgi"],
    "flask": ["flask_server:app", "--interface", "wsgi"],
    "fastapi": ["adapter_cost:fastapi_app", "--interface", "asgi"],
    "floor": ["adapter_cost:flask_floor", "--interface", "native"],
}
# The rows whose app's own cost is another row's app.
OWN_OF = {"floor": "flask"}


def peer_commands(port: int) -> Dict[str, List[str]]:
    """The peers' command lines (after the interpreter), one worker, one thread where the
    server has a choice."""
    p = str(port)
    return {
        "granian-asgi": "-m granian --interface asgi --host 127.0.0.1 --port".split()
        + [p, *"--workers 1 --runtime-threads 1 --no-ws --log-level warning".split()]
        + ["adapter_cost:raw_asgi"],
        "uvicorn-fastapi": "-m uvicorn --host 127.0.0.1 --port".split()
        + [p, *"--log-level warning --no-access-log adapter_cost:fastapi_app".split()],
        "gunicorn-flask": "-m gunicorn -k gthread --threads 4 -w 1 -b".split()
        + ["127.0.0.1:" + p, *"--log-level warning flask_server:app".split()],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its children that are still running (a peer's worker
    processes), every thread, in seconds."""
    total = 0.0
    pids = [pid]
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


Threads = Dict[int, Tuple[str, int, int, int, int]]


def thread_times(pid: int) -> Threads:
    """{tid: (name, utime ticks, stime ticks, voluntary, involuntary context switches)} of
    every thread of pid that can still be read."""
    out: Threads = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        base = "/proc/%d/task/%s/" % (pid, tid)
        try:
            with open(base + "comm") as f:
                name = f.read().strip()
            with open(base + "stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            switches = {}
            with open(base + "status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                        switches[key] = int(value)
        except (OSError, ValueError):
            continue  # it ended meanwhile
        out[int(tid)] = (
            name,
            int(fields[11]),
            int(fields[12]),
            switches.get("voluntary_ctxt_switches", 0),
            switches.get("nonvoluntary_ctxt_switches", 0),
        )
    return out


def by_thread(
    before: Threads, after: Threads, requests: int, tick: Optional[float] = None
) -> Dict[str, Tuple[float, float, float, float]]:
    """Per thread name, what the threads alive at both readings did between them, per
    request: (user µs, kernel µs, voluntary switches, involuntary switches). Threads of one
    name (none, as the engine names them) are added together."""
    tick = tick or 1.0 / os.sysconf("SC_CLK_TCK")
    per: Dict[str, List[float]] = {}
    n = max(requests, 1)
    for tid, (name, user, kernel, vol, invol) in after.items():
        if tid not in before:
            continue
        _, user0, kernel0, vol0, invol0 = before[tid]
        row = per.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        row[0] += (user - user0) * tick * 1e6 / n
        row[1] += (kernel - kernel0) * tick * 1e6 / n
        row[2] += (vol - vol0) / n
        row[3] += (invol - invol0) / n
    return {name: (v[0], v[1], v[2], v[3]) for name, v in per.items()}


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server on port %d did not answer" % port)


def run_wrk(cpu: str, port: int, seconds: int, connections: int) -> int:
    cmd = ["taskset", "-c", cpu, "wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds]
    cmd.append("http://127.0.0.1:%d/" % port)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if " requests in " in line:
            return int(line.split()[0])
    raise RuntimeError("no request count in wrk's output:\n" + out)


# -- the app's own cost (in-process, no server) -------------------------------------------


def _wsgi_environ() -> Dict[str, Any]:
    import io

    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def wsgi_own_cost(app: Any, n: int) -> float:
    """CPU µs per call of a WSGI app, body iterated and closed."""

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    base = _wsgi_environ()
    for _ in range(min(n, 200)):  # warm up
        b"".join(app(dict(base), start_response))
    t0 = time.process_time()
    for _ in range(n):
        result = app(dict(base), start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (time.process_time() - t0) * 1e6 / n


def asgi_own_cost(app: Any, n: int) -> float:
    """CPU µs per call of an ASGI app, awaited in one event loop, receive giving an empty
    body."""
    import asyncio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> Dict[str, Any]:
        return request

    async def send(message: Dict[str, Any]) -> None:
        return None

    async def loop() -> float:
        for _ in range(min(n, 200)):
            await app(dict(scope), receive, send)
        t0 = time.process_time()
        for _ in range(n):
            await app(dict(scope), receive, send)
        return (time.process_time() - t0) * 1e6 / n

    return asyncio.run(loop())


def own_costs(n: int) -> Dict[str, float]:
    """The apps' own costs in this process (run by the --python interpreter)."""
    sys.path[:0] = [HERE, SERVERS_DIR]
    costs = {"wsgi": wsgi_own_cost(raw_wsgi, n), "asgi": asgi_own_cost(raw_asgi, n)}
    try:
        from flask_server import app as flask_app

        costs["flask"] = wsgi_own_cost(flask_app, n)
    except (ImportError, SystemExit):
        pass
    try:
        costs["fastapi"] = asgi_own_cost(__getattr__("fastapi_app"), n)
    except ImportError:
        pass
    return costs


# -- the run ------------------------------------------------------------------------------


def has_module(python: str, module: str) -> bool:
    return (
        subprocess.run(
            [python, "-c", "import " + module], capture_output=True, cwd="/tmp"
        ).returncode
        == 0
    )


def start(
    name: str, args: argparse.Namespace, env: Dict[str, str]
) -> Optional[Tuple[subprocess.Popen, int]]:
    port = free_port()
    kind, _, base = name.partition("@")
    if kind in OURS:
        python = args.baseline_python if base else args.python
        cmd = [python, "-m", "pymongoose_uring", *OURS[kind], "--port", str(port)]
        cmd += ["--threads", "1", "--log-level", "warning"]
        if kind in ("wsgi", "flask"):
            cmd += ["--pool-threads", str(args.pool_threads)]
    else:
        module = name.split("-")[0]
        if not has_module(args.peer_python, module):
            print("(%s: %s not installed for %s)" % (name, module, args.peer_python))
            return None
        cmd = [args.peer_python, *peer_commands(port)[name]]
    proc = subprocess.Popen(
        ["taskset", "-c", args.server_cpu, *cmd], env=env, cwd="/tmp", stdout=subprocess.DEVNULL
    )
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="runs our servers (our build)")
    ap.add_argument("--peer-python", default="python3", help="runs granian/uvicorn/gunicorn")
    ap.add_argument("--pythonpath", default="", help="prepended to PYTHONPATH for our servers")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--client-cpu", default="1")
    ap.add_argument("--pool-threads", type=int, default=4)
    ap.add_argument("--calls", type=int, default=20000, help="in-process calls per app")
    ap.add_argument(
        "--only",
        default="native,wsgi,asgi,flask,fastapi,granian-asgi,uvicorn-fastapi,gunicorn-flask",
    )
    ap.add_argument(
        "--baseline-python",
        help="an interpreter with another build installed (e.g. the main checkout's venv): "
        "each of our rows is also served by it, as NAME@base, in the same rounds",
    )
    ap.add_argument(
        "--by-thread",
        action="store_true",
        help="split our rows by thread name: CPU µs and context switches per request",
    )
    ap.add_argument("--own-costs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.sep in args.python:
        args.python = os.path.abspath(args.python)  # the servers run in /tmp
    if args.baseline_python and os.sep in args.baseline_python:
        args.baseline_python = os.path.abspath(args.baseline_python)

    if args.own_costs:  # the child that measures the apps in-process
        for name, cost in own_costs(args.calls).items():
            print(name, cost)
        return

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    path = [os.path.abspath(p) for p in args.pythonpath.split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(path + [HERE, SERVERS_DIR, env.get("PYTHONPATH", "")])
    names = [n for n in args.only.split(",") if n]
    if args.baseline_python:
        names += [n + "@base" for n in names if n in OURS]
    procs: Dict[str, Tuple[subprocess.Popen, int]] = {}
    results: Dict[str, List[float]] = {}
    threads: Dict[str, Dict[str, List[Tuple[float, float, float, float]]]] = {}
    try:
        for name in names:
            started = start(name, args, env)
            if started is not None:
                procs[name] = started
        for name, (proc, port) in list(procs.items()):
            try:
                wait_up(port, proc)
            except RuntimeError as e:
                print("(%s: %s)" % (name, e))
                proc.kill()
                del procs[name]
        order = list(procs)
        results = {n: [] for n in order}
        for r in range(args.rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                proc, port = procs[name]
                mine = args.by_thread and name.partition("@")[0] in OURS
                tasks = thread_times(proc.pid) if mine else {}
                before = cpu_seconds(proc.pid)
                count = run_wrk(args.client_cpu, port, args.seconds, args.connections)
                used = cpu_seconds(proc.pid) - before
                results[name].append(used * 1e6 / max(count, 1))
                if mine:
                    split = by_thread(tasks, thread_times(proc.pid), count)
                    for thread, figures in split.items():
                        threads.setdefault(name, {}).setdefault(thread, []).append(figures)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    own: Dict[str, float] = {}
    out = subprocess.run(
        ["taskset", "-c", args.server_cpu, args.python, os.path.abspath(__file__)]
        + ["--own-costs", "--calls", str(args.calls)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/tmp",
    )
    for line in out.stdout.splitlines():
        key, value = line.split()
        own[key] = float(value)

    med = {n: statistics.median(v) for n, v in results.items()}
    print(
        "server CPU µs per request, GET / keep-alive %d connections, median of %d x %d s:"
        % (args.connections, args.rounds, args.seconds)
    )
    for name, values in results.items():
        line = "  %-16s %7.2f" % (name, med[name])
        kind = name.partition("@")[0]
        kind = OWN_OF.get(kind, kind)
        if kind in own:
            line += "   app's own %6.2f  server cost %6.2f" % (own[kind], med[name] - own[kind])
        line += "   (rounds: %s)" % " ".join("%.2f" % v for v in values)
        print(line)
    for name, split in threads.items():
        print(
            "  %s by thread (user + kernel µs, voluntary / involuntary switches, per request):"
            % name
        )
        for thread, rows in sorted(split.items()):
            cols = [statistics.median(r[k] for r in rows) for k in range(4)]
            print("    %-16s %7.2f + %6.2f   %5.2f / %5.2f" % (thread, *cols))
    if args.baseline_python and "native@base" in med:
        base = med["native@base"]
        for name in ("wsgi", "asgi"):
            if name + "@base" in med:
                print("  (baseline %s / its native = %.2fx)" % (name, med[name + "@base"] / base))
    print("targets:")
    native = med.get("native")
    for name in ("wsgi", "asgi"):
        if native and name in med:
            print("  %s / native = %.2fx (<= 1.5x)" % (name, med[name] / native))
    if "asgi" in med and "granian-asgi" in med:
        print("  asgi / granian-asgi = %.2fx (<= 0.5x)" % (med["asgi"] / med["granian-asgi"]))
    if "flask" in med and "flask" in own:
        print("  flask server cost = %.2f µs (<= 8)" % (med["flask"] - own["flask"]))
        if "floor" in med:
            print(
                "  (its floor, Flask from a native handler without an adapter: %.2f µs)"
                % (med["floor"] - own["flask"])
            )
    if "fastapi" in med and "uvicorn-fastapi" in med:
        print(
            "  fastapi / uvicorn-fastapi = %.2fx (<= 0.6x)"
            % (med["fastapi"] / med["uvicorn-fastapi"])
        )


if __name__ == "__main__":
    main()
