#!/usr/bin/env python3
"""A hostile client that exhausts the server's file descriptors: what each server does when
accept() fails with EMFILE.

    python3 benchmarks/hostile_fd.py                       # hello_c, cli, nginx, uvicorn_raw
    python3 benchmarks/hostile_fd.py --servers hello_c,cli --connections 1000

Scenario fd-exhaustion, for each server in turn: start it under `ulimit -n 256` (soft and
hard RLIMIT_NOFILE set in the child before exec; nginx also gets `worker_rlimit_nofile
256`), pinned to the server CPU (default 1). Another process, pinned to the client CPU
(default 0), opens 1,000 connections to it on 127.0.0.1 and holds them without sending a
byte (at most --hold seconds, 20 by default). While they are held the server's CPU time
(utime + stime of its process tree, /proc/PID/stat) is sampled over --sample seconds
(default 10). Then the holder closes every connection, and GET / must be answered within
--answer-within seconds. One row per server:

  CPU %           server CPU over the sample (100 = one core busy the whole time)
  logged          lines of its log (stderr; nginx's error.log) that mention the accept
                  error (EMFILE, "Too many open files", accept), and the first of them
  answered after  whether GET / was answered once the holders let go, and how soon
  closed by server  how many of the held connections the server had closed (EOF or reset)
                  by the time they were let go: accepted and dropped, or timed out

hello_c also prints its engine counters on exit: the waits and any counter named for
accept are shown. Servers: hello_c (examples/hello_server), cli (`python -m
pymongoose_uring --hello`), nginx (1 worker, as benchmarks/servers/nginx_server.py runs
it), uvicorn_raw (uvicorn + uvloop + httptools). A server whose program is missing is
listed as unavailable (nothing is installed here beyond building the checkout, which
benchmarks/run.py does too); exits 1 if one of the project's servers is unavailable.
Results: a Markdown table on stdout and results.json under
benchmarks/results/raw/hostile-fd-<stamp>/ (with each server's log).
"""

import argparse
import dataclasses
import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import RESULTS_DIR, BenchError, checks, procstat, provision, registry  # noqa: E402
from bench.serverproc import ServerProcess, Unavailable  # noqa: E402
from bench.session import Built  # noqa: E402

CLI = registry.Server(
    "cli",
    "python -m pymongoose_uring --hello",
    ("{python}", "-m", "pymongoose_uring", "--hello", "--host", "127.0.0.1", "--port", "{port}"),
    kind="ours",
    build="pymongoose_uring",
    description="the command line serving its built-in hello-world app",
)
TARGETS = {
    "hello_c": registry.BY_NAME["hello_c"],
    "cli": CLI,
    "nginx": registry.BY_NAME["nginx"],
    "uvicorn_raw": registry.BY_NAME["uvicorn_raw"],
}
# What a line about the failed accept looks like: errno names, strerror, the call failing.
# (hello_server's exit line of counters is not a log line about it.)
ACCEPT_ERROR = re.compile(
    r"EMFILE|ENFILE|too many open files|accept\S*\s*(\(\))?:?\s*(fail|error)", re.IGNORECASE
)


# --- the holder: a separate process, so that its descriptors are its own ----------------


def hold(port, count, seconds):
    """Open `count` connections to 127.0.0.1:port without sending anything; print
    "held N" (N: connections the kernel completed) once they are all attempted, then keep
    them until stdin closes (or says anything) or `seconds` pass, and close them all."""
    deadline = time.monotonic() + seconds
    want = count + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:  # root may raise the hard limit too; others get what the hard limit allows
            resource.setrlimit(
                resource.RLIMIT_NOFILE,
                (want, max(hard, want) if hard != resource.RLIM_INFINITY else hard),
            )
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks, pending = [], {}
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))  # EINPROGRESS; the kernel finishes it
        socks.append(s)
        pending[s.fileno()] = s
    # Up to 3 s for the handshakes the kernel can complete (a full accept queue drops SYNs).
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    connected = 0
    settle = min(deadline, time.monotonic() + 3)
    while pending and time.monotonic() < settle:
        for fd, _ev in poller.poll(100):
            s = pending.pop(fd, None)
            if s is not None:
                poller.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected += 1
    print("held %d" % connected, flush=True)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            break
    print("released %d" % closed_by_peer(socks), flush=True)
    for s in socks:
        s.close()


def closed_by_peer(socks):
    """How many of the connections the server has closed (EOF or reset) by now."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = 0
    for fd, ev in poller.poll(0):
        if ev & (select.POLLERR | select.POLLHUP):
            closed += 1
            continue
        try:
            if by_fd[fd].recv(1, socket.MSG_PEEK) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


class Holder:
    def __init__(self, port, count, seconds, cpus):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--_hold",
                str(port),
                str(count),
                str(seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        self.held = None
        line = self.proc.stdout.readline()  # "held N" within ~3 s
        if line.startswith("held "):
            self.held = int(line.split()[1])

    def release(self):
        """Let go of the connections; returns how many the server had closed by then."""
        closed = None
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.close()
            line = self.proc.stdout.readline()
            if line.startswith("released "):
                closed = int(line.split()[1])
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return closed


# --- one server --------------------------------------------------------------------------


def log_files(server, port):
    files = [server.log_path]
    if server.definition.name == "nginx":
        files.append("/tmp/pmu-bench-nginx-%d/error.log" % port)  # nginx_server.py's prefix
    return files


def sizes(paths):
    return {p: os.path.getsize(p) if os.path.exists(p) else 0 for p in paths}


def new_lines(offsets):
    lines = []
    for path, offset in offsets.items():
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                lines += f.read().decode(errors="replace").splitlines()
        except OSError:
            pass
    return lines


def engine_counters(lines):
    """hello_server's exit line, "PMU_STATS {json}": waits, and counters named for accept."""
    for line in reversed(lines):
        if line.startswith("PMU_STATS "):
            try:
                stats = json.loads(line[len("PMU_STATS ") :])
            except ValueError:
                return {}
            return {
                k: v
                for k, v in stats.items()
                if k == "waits" or k == "connections_accepted" or "accept" in k
            }
    return {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario(definition, port, built, args, logs):
    server_cpus = procstat.parse_cpu_list(args.server_cpus)
    client_cpus = procstat.parse_cpu_list(args.client_cpus)
    row = {"server": definition.name, "label": definition.label}
    # servers/nginx_server.py sets worker_rlimit_nofile from this (the others ignore it).
    definition = dataclasses.replace(
        definition, env=definition.env + (("BENCH_NGINX_NOFILE", str(args.nofile)),)
    )
    server = ServerProcess(
        definition,
        port,
        server_cpus,
        os.path.join(logs, definition.name + ".log"),
        built=built,
        nofile=args.nofile,
    )
    server.start()
    offsets = sizes(log_files(server, port))  # only what is logged after startup counts
    holder = None
    try:
        holder = Holder(port, args.connections, args.hold, client_cpus)
        row["held"] = holder.held
        time.sleep(1.0)  # let the server meet the flood before sampling
        pids = procstat.tree(server.pid)
        t0, before = time.monotonic(), procstat.cpu_ticks(pids)
        time.sleep(args.sample)
        pids = procstat.tree(server.pid)
        after, t1 = procstat.cpu_ticks(pids), time.monotonic()
        row["cpu_percent"] = round(100.0 * procstat.cpu_delta_seconds(before, after) / (t1 - t0), 1)
        row["alive_during"] = server.alive()
        row["closed_by_server"] = holder.release()
        holder = None
        released = time.monotonic()
        try:
            checks.hello(port, patience=args.answer_within)
            row["answered_after"] = True
            row["answer_s"] = round(time.monotonic() - released, 2)
        except BenchError as e:
            row["answered_after"] = False
            row["answer_error"] = str(e).splitlines()[0]
    finally:
        if holder is not None:
            holder.release()
        server.stop()
    lines = new_lines(offsets)
    hits = [
        line.strip()
        for line in lines
        if ACCEPT_ERROR.search(line) and not line.startswith("PMU_STATS ")
    ]
    row["logged_lines"] = len(hits)
    row["logged_first"] = hits[0][:160] if hits else None
    row["counters"] = engine_counters(lines)
    return row


def provide(definition, args, log, built):
    """Build or find what the server needs; returns None or why it is unavailable."""
    for tool in definition.tools:
        if not provision.find_tool(tool):
            return "%s is not installed (benchmarks/run.py installs it)" % tool
    missing = provision.missing_modules([m for m, _ in definition.pip])
    if missing:
        return "missing %s (benchmarks/run.py installs it)" % ", ".join(missing)
    if definition.build == "hello_server":
        built.hello_server, why = provision.hello_server(log, explicit=args.hello_server)
        return why
    if definition.build == "pymongoose_uring":
        if built.pythonpath is None:
            built.pythonpath, why = provision.pymongoose_uring(log)
            return why
    return None


def table(rows, sample_s):
    out = [
        "| server | connections held | closed by server | server CPU %% (%g s) | "
        "accept error logged | answered after release | notes |" % sample_s,
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "unavailable" in r:
            out.append("| %s | | | | | | unavailable: %s |" % (r["server"], r["unavailable"]))
            continue
        if "error" in r:
            out.append("| %s | | | | | | FAILED: %s |" % (r["server"], r["error"]))
            continue
        logged = (
            "yes, %d line(s): `%s`" % (r["logged_lines"], r["logged_first"])
            if r["logged_lines"]
            else "nothing"
        )
        answered = (
            "yes, in %.2f s" % r["answer_s"]
            if r["answered_after"]
            else "NO (%s)" % r.get("answer_error", "")
        )
        notes = ", ".join("%s %s" % (k, f"{v:,}") for k, v in r["counters"].items())
        out.append(
            "| %s | %s | %s | %.1f | %s | %s | %s |"
            % (
                r["label"],
                r["held"],
                r["closed_by_server"],
                r["cpu_percent"],
                logged,
                answered,
                notes,
            )
        )
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_hold"]:
        hold(int(argv[1]), int(argv[2]), float(argv[3]))
        return 0
    ncpu = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--servers",
        default=",".join(TARGETS),
        help="comma-separated, of: %s (default: all)" % ", ".join(TARGETS),
    )
    p.add_argument("--connections", type=int, default=1000, help="connections held (1000)")
    p.add_argument("--nofile", type=int, default=256, help="the servers' ulimit -n (256)")
    p.add_argument(
        "--hold", type=float, default=20.0, help="the most seconds the connections are held (20)"
    )
    p.add_argument(
        "--sample",
        type=float,
        default=10.0,
        help="seconds of server CPU sampled while they are held (10)",
    )
    p.add_argument(
        "--answer-within",
        type=float,
        default=5.0,
        help="seconds GET / may take to be answered after the release (5)",
    )
    p.add_argument("--server-cpus", default="1" if ncpu > 1 else "0")
    p.add_argument("--client-cpus", default="0")
    p.add_argument(
        "--base-port",
        type=int,
        default=0,
        help="servers listen on base+index (default: a free port each)",
    )
    p.add_argument("--hello-server", default=None, help="a hello_server binary to use")
    p.add_argument(
        "--out", default=None, help="output folder (default results/raw/hostile-fd-<stamp>)"
    )
    args = p.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error("unknown server(s): %s" % ", ".join(unknown))
    if args.sample + 1.5 > args.hold:
        p.error("--hold must leave room for --sample (and 1.5 s of start)")
    os.sched_setaffinity(0, procstat.parse_cpu_list(args.client_cpus))

    out_dir = args.out or os.path.join(
        RESULTS_DIR, "raw", "hostile-fd-" + time.strftime("%Y%m%d-%H%M%S")
    )
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    setup_log = os.path.join(logs, "setup.log")
    built, rows, status = Built(), [], 0
    for index, name in enumerate(names):
        d = TARGETS[name]
        why = provide(d, args, setup_log, built)
        if why:
            rows.append({"server": name, "unavailable": why})
            print("%-12s unavailable: %s" % (name, why), flush=True)
            status = status or (1 if d.project else 0)
            continue
        print(
            "%-12s holding %d connections under ulimit -n %d ..."
            % (name, args.connections, args.nofile),
            flush=True,
        )
        try:
            port = args.base_port + index if args.base_port else free_port()
            row = scenario(d, port, built, args, logs)
        except Unavailable as e:
            rows.append({"server": name, "unavailable": str(e)})
            status = status or (1 if d.project else 0)
            continue
        except BenchError as e:
            rows.append({"server": name, "error": str(e).splitlines()[0]})
            print("%-12s FAILED: %s" % (name, e), file=sys.stderr, flush=True)
            status = 1
            continue
        rows.append(row)
        print(
            "%-12s CPU %.1f %%, accept error logged: %d line(s), answered after: %s"
            % (name, row["cpu_percent"], row["logged_lines"], row["answered_after"]),
            flush=True,
        )

    text = (
        "fd-exhaustion: %d connections held (at most %g s) against each server under "
        "ulimit -n %d, server on CPU %s, holder on CPU %s\n\n%s"
        % (
            args.connections,
            args.hold,
            args.nofile,
            args.server_cpus,
            args.client_cpus,
            table(rows, args.sample),
        )
    )
    print("\n" + text)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    print("results: %s" % os.path.relpath(out_dir))
    return status


if __name__ == "__main__":
    sys.exit(main())
