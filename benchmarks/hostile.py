#!/usr/bin/env python3
"""Memory a hostile client can take: the server's peak RSS under an attack from another
process on 127.0.0.1, and a normal client's latency meanwhile.

    python3 benchmarks/hostile.py                          # every scenario
    python3 benchmarks/hostile.py --scenarios held-bodies --hold 10

Scenarios (each a fresh server pinned to CPU 1, the attacker and the normal client on
CPU 0; VmRSS of the server sampled every 20 ms from /proc/PID/status):
  held-bodies      examples/hello_server; 1,000 connections each send 1 MiB - 1 byte of
                   a 1 MiB body, then hold; meanwhile a normal client uploads 1 MiB
                   bodies whole, one after another
  unread-pipeline  a native Server (Python) whose handler returns a fresh 1 MiB bytes;
                   20 connections each pipeline 128 GETs and never read; meanwhile a
                   normal client asks for /ping, one request after another

One function per scenario (SCENARIOS maps names to them). The table gives the RSS before
the attack, its peak, the normal client's requests and their median and worst latency.
It builds the checkout as benchmarks/run.py does (hello_server in build-bench/, the
package in build-bench/python), unless --hello-server / --pythonpath name others (for a
before/after comparison with an older checkout's build).
"""

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import BenchError, provision  # noqa: E402

SERVER_CPU = "1"
CLIENT_CPU = "0"
MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def pinned(cpu, argv):
    return (["taskset", "-c", cpu] if provision.find_tool("taskset") else []) + argv


def vm_rss(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            rss = vm_rss(self.pid)
            if rss is None:
                return
            self.peak = max(self.peak, rss)
            time.sleep(0.02)


def wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError("the server exited: %s" % proc.stderr.read()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError("the server did not listen on port %d" % port)


def http_once(port, method, path, body=b"", timeout=10):
    """One request on a fresh connection; (status, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(
            b"%s %s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\nConnection: close"
            b"\r\n\r\n" % (method.encode(), path.encode(), len(body)) + body
        )
        data = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0
    return status, time.monotonic() - t0


# The attackers run in their own process (on CLIENT_CPU): they print "ready" once the
# attack is in place and hold until killed.
ATTACK_HELD_BODIES = r"""
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
socks, body = [], b"b" * (size - 1)
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size + body)
    socks.append(s)
print("ready", flush=True)
time.sleep(3600)
"""

ATTACK_UNREAD_PIPELINE = r"""
import socket, sys, time
port, n, depth = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"".join(b"GET /mb?%d HTTP/1.1\r\nHost: h\r\n\r\n" % k for k in range(depth)))
    socks.append(s)
print("ready", flush=True)
time.sleep(3600)
"""

PY_SERVER = r"""
import sys
from pymongoose_uring import Server

def app(request):
    if request.path == "/ping":
        return b"pong"
    return b"x" * (1 << 20)   # a fresh 1 MiB bytes each time

Server(app, host="127.0.0.1", port=int(sys.argv[1])).run()
"""


def attack(script, port, *args):
    proc = subprocess.Popen(
        pinned(CLIENT_CPU, [sys.executable, "-c", script, str(port)] + [str(a) for a in args]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=raise_nofile,
    )
    return proc


def unread_by_server(port):
    """Bytes waiting in the receive queues of the server's connections (`ss`), or None."""
    if not provision.find_tool("ss"):
        return None
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", "( sport = :%d )" % port],
        capture_output=True,
        text=True,
    ).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.split())


def run_scenario(server_proc, port, attack_proc, normal, hold):
    """Sample RSS, wait for the attack to be in place (sent, and read by the server as far
    as it reads), then run the normal client for `hold` seconds. Returns the row's
    figures."""
    sampler = RssSampler(server_proc.pid)
    base = vm_rss(server_proc.pid)
    sampler.start()
    t0 = time.monotonic()
    latencies, failures = [], 0
    ready = False
    try:
        line = attack_proc.stdout.readline()
        ready = line.strip() == "ready"
        # The kernel buffers what was sent: wait until the server has taken it in, or
        # stopped taking (a bound on what it reads is the point of some scenarios).
        last, still_since = None, time.monotonic()
        while ready and time.monotonic() - still_since < 1.0 and time.monotonic() - t0 < 60:
            unread = unread_by_server(port)
            if unread is None or unread == 0:
                break
            if unread != last:
                last, still_since = unread, time.monotonic()
            time.sleep(0.05)
        setup_s = time.monotonic() - t0
        end = time.monotonic() + hold
        while time.monotonic() < end:
            try:
                status, seconds = normal(port)
                if status == 200:
                    latencies.append(seconds)
                else:
                    failures += 1
            except OSError:
                failures += 1
                time.sleep(0.1)
        peak_now = vm_rss(server_proc.pid)
    finally:
        attack_proc.kill()
        attack_proc.wait()
        sampler.stop.set()
        sampler.join()
    return {
        "attack_ready": ready,
        "attack_setup_s": setup_s,
        "rss_base": base,
        "rss_peak": sampler.peak,
        "rss_end": peak_now,
        "normal_ok": len(latencies),
        "normal_failed": failures,
        "normal_median_ms": statistics.median(latencies) * 1000 if latencies else None,
        "normal_max_ms": max(latencies) * 1000 if latencies else None,
    }


def stop_server(proc):
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def held_bodies(args):
    port = free_port()
    env = dict(os.environ, PMU_MAX_CONNECTIONS="20000", PMU_STATS="1")
    server = subprocess.Popen(
        pinned(SERVER_CPU, [args.hello_server, str(port)]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=raise_nofile,
    )
    try:
        wait_port(port, server)
        attacker = attack(ATTACK_HELD_BODIES, port, args.bodies, MIB)
        upload = b"u" * MIB
        row = run_scenario(
            server, port, attacker, lambda p: http_once(p, "POST", "/upload", upload), args.hold
        )
    finally:
        err = stop_server(server)
    stats = [line for line in err.splitlines() if line.startswith("PMU_STATS")]
    row["note"] = ""
    if stats and "bodies_spooled" in stats[-1]:
        import json

        s = json.loads(stats[-1].split(" ", 1)[1])
        row["note"] = "bodies_spooled %d" % s["bodies_spooled"]
    row["scenario"] = "held-bodies (%d x 1 MiB - 1)" % args.bodies
    row["server"] = "hello_server"
    return row


def unread_pipeline(args):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=args.pythonpath)
    server = subprocess.Popen(
        pinned(SERVER_CPU, [sys.executable, "-c", PY_SERVER, str(port)]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=raise_nofile,
        cwd="/",
    )  # not the checkout: its package has no extension
    try:
        wait_port(port, server)
        attacker = attack(ATTACK_UNREAD_PIPELINE, port, args.pipeliners, args.depth)
        row = run_scenario(
            server, port, attacker, lambda p: http_once(p, "GET", "/ping"), args.hold
        )
    finally:
        stop_server(server)
    row["scenario"] = "unread-pipeline (%d x %d x 1 MiB)" % (args.pipeliners, args.depth)
    row["server"] = "Python Server"
    row["note"] = ""
    return row


SCENARIOS = {"held-bodies": held_bodies, "unread-pipeline": unread_pipeline}


def mb(n):
    return "%.0f MB" % (n / 1e6) if n is not None else "-"


def ms(v):
    return "%.1f" % v if v is not None else "-"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, of: %s" % ", ".join(SCENARIOS),
    )
    p.add_argument(
        "--hold",
        type=float,
        default=5.0,
        help="seconds the attack is held while the normal client runs (default 5)",
    )
    p.add_argument("--bodies", type=int, default=1000, help="held-bodies connections (1000)")
    p.add_argument("--pipeliners", type=int, default=20, help="unread-pipeline connections (20)")
    p.add_argument("--depth", type=int, default=128, help="requests each pipelines (128)")
    p.add_argument("--hello-server", help="this hello_server binary instead of building one")
    p.add_argument(
        "--pythonpath", help="import pymongoose_uring from here instead of building the checkout's"
    )
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        p.error("unknown scenario(s): %s" % ", ".join(unknown))

    # Not in build-bench/: configuring it for hello_server starts it afresh.
    log_dir = os.path.join(provision.REPO_DIR, "build")
    os.makedirs(log_dir, exist_ok=True)
    log = os.path.join(log_dir, "hostile-setup.log")
    if "held-bodies" in chosen:
        args.hello_server, why = provision.hello_server(log, args.hello_server)
        if not args.hello_server:
            raise SystemExit("hostile: %s" % why)
    if "unread-pipeline" in chosen and not args.pythonpath:
        args.pythonpath, why = provision.pymongoose_uring(log)
        if not args.pythonpath:
            raise SystemExit("hostile: %s" % why)
    raise_nofile()

    rows = []
    for name in chosen:
        print("%-16s running (hold %.0f s) ..." % (name, args.hold), flush=True)
        rows.append(SCENARIOS[name](args))
    print(
        "\n| scenario | server | RSS before | RSS peak | normal client: ok / failed "
        "| median ms | worst ms | notes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        note = r["note"]
        if not r["attack_ready"]:
            note = (note + "; " if note else "") + "the attack did not complete its setup"
        print(
            "| %s | %s | %s | %s | %d / %d | %s | %s | %s |"
            % (
                r["scenario"],
                r["server"],
                mb(r["rss_base"]),
                mb(r["rss_peak"]),
                r["normal_ok"],
                r["normal_failed"],
                ms(r["normal_median_ms"]),
                ms(r["normal_max_ms"]),
                note,
            )
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit("hostile: %s" % e)
