"""Runs benchmarks/wsload (the C WebSocket load client) pinned to the client CPUs and
returns its figures; builds it first when needed.

wsload prints `WSLOAD_START t` once its connections are open and warmed up, `WSLOAD_END t`
when it stops counting (t: CLOCK_MONOTONIC seconds, Python's time.monotonic()), then
`WSLOAD_RESULT {json}` after draining and closing every connection. The runner reads the
server's CPU at the first two lines (callbacks), so that connecting, warming up and closing
are not in the measured interval. Any wrong frame, wrong or missing message, or unanswered
close makes wsload exit 2 with the reason in the result's "error": that is a WrongAnswer.
"""

import json
import os
import shutil
import subprocess

from . import BENCH_DIR, REPO_DIR, BenchError, WrongAnswer

SOURCE = os.path.join(BENCH_DIR, "wsload", "wsload.c")
BUILD_DIR = os.path.join(REPO_DIR, "build-bench", "wsload")
BINARY = os.path.join(BUILD_DIR, "wsload")
START, END, RESULT = "WSLOAD_START ", "WSLOAD_END ", "WSLOAD_RESULT "
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-Wshadow", "-std=gnu11"]


def build(log=None, binary=BINARY, source=SOURCE, build=True):
    """Compile wsload with the system C compiler when the binary is missing or older than its
    source (with build=False, only an existing binary will do). Returns (path, None) or
    (None, why not)."""
    if os.access(binary, os.X_OK) and (
        not build or os.path.getmtime(binary) >= os.path.getmtime(source)
    ):
        return binary, None
    if not build:
        return None, "no %s (and --no-build given)" % os.path.relpath(binary, REPO_DIR)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc) to build %s" % os.path.relpath(source, REPO_DIR)
    os.makedirs(os.path.dirname(binary), exist_ok=True)
    argv = [cc, *CFLAGS, "-o", binary + ".tmp", source]
    p = subprocess.run(argv, capture_output=True, text=True)
    if log:
        with open(log, "a") as f:
            f.write("\n$ %s\n%s%s" % (" ".join(argv), p.stdout, p.stderr))
    if p.returncode != 0:
        return None, "building wsload failed: %s" % (p.stderr.strip()[-500:] or p.returncode)
    os.replace(binary + ".tmp", binary)
    return binary, None


def argv(binary, port, workload, duration, warmup, procs=1):
    """The command line for one measurement of a WebSocket workload (procs > 1: that many
    client processes share the connections, echo only)."""
    return [
        binary,
        *(["--procs", str(procs)] if procs > 1 else []),
        "--port",
        str(port),
        "--path",
        workload.path,
        "--mode",
        workload.ws_mode,
        "--connections",
        str(workload.connections),
        "--size",
        str(workload.ws_size),
        "--depth",
        str(workload.ws_depth),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--timeout",
        str(workload.timeout),
    ]


def marker_time(line, mark):
    """The time of a WSLOAD_START/WSLOAD_END line, or None if the line is not that one."""
    if not line.startswith(mark):
        return None
    return float(line[len(mark) :].split()[0])


def parse_result(line):
    """The dict of a WSLOAD_RESULT line, or None if the line is not one."""
    if not line.startswith(RESULT):
        return None
    return json.loads(line[len(RESULT) :])


def check_result(result, stderr="", returncode=0, where="wsload"):
    """Raise WrongAnswer for a result that reports an error (or none at all); return it."""
    if result is None:
        raise BenchError(
            "%s printed no result (exit status %s): %s" % (where, returncode, stderr.strip()[-800:])
        )
    if result.get("error") or returncode != 0:
        raise WrongAnswer("%s: %s" % (where, result.get("error") or "exit status %d" % returncode))
    if not result.get("messages"):
        raise WrongAnswer("%s: no message came back in %.1f s" % (where, result["duration_s"]))
    return result


def run(
    binary,
    port,
    workload,
    duration,
    cpus,
    warmup=1.0,
    on_start=None,
    on_end=None,
    log=None,
    procs=1,
):
    """Run wsload against 127.0.0.1:port; on_start()/on_end() are called as it starts and
    stops counting. Returns its result dict with "server_window" = (the times on_start and
    on_end returned, if they returned any) added."""
    cmd = argv(binary, port, workload, duration, warmup, procs)
    cpus = sorted(cpus)
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
    except OSError as e:
        raise BenchError("cannot run %s: %s" % (binary, e)) from e
    result, lines, marks = None, [], {}
    try:
        for line in proc.stdout:
            lines.append(line)
            if marker_time(line, START) is not None and on_start:
                marks["start"] = on_start()
            elif marker_time(line, END) is not None and on_end:
                marks["end"] = on_end()
            elif line.startswith(RESULT):
                result = parse_result(line)
        stderr = proc.stderr.read()
        proc.wait(timeout=workload.timeout * 3 + duration + warmup + 30)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        proc.wait()
        raise BenchError("wsload did not finish: %s" % " ".join(cmd)) from e
    finally:
        if proc.poll() is None:  # interrupted: never leave the client behind
            proc.kill()
            proc.wait()
        if log:
            with open(log, "a") as f:
                f.write("$ %s\n%s" % (" ".join(cmd), "".join(lines)))
    where = "wsload %s %s on port %d" % (workload.ws_mode, workload.path, port)
    result = check_result(result, stderr, proc.returncode, where)
    result["argv"] = cmd
    result["server_window"] = (marks.get("start"), marks.get("end"))
    return result
