"""Runs wrk pinned to the client CPUs and returns its summary as numbers.

Every run's Lua script is the workload's own (benchmarks/lua/) with report.lua appended,
whose done() prints one BENCH_RESULT line of JSON: requests, duration, bytes, socket and
status errors, latency mean/p50/p90/p99/max in microseconds.

Over HTTPS (`tls`) wrk runs with the preload of bench/tls.py (benchmarks/wrktls/wrktls.c): no
connection resumes a session, and the result gains "tls", the preload's count of handshakes
(full and resumed) and what the first one negotiated.
"""

import json
import os
import resource
import shutil
import subprocess
import tempfile

from . import LUA_DIR, BenchError, tls as tls_module

MARK = "BENCH_RESULT "


def find():
    return shutil.which("wrk")


def version():
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def _script(workload_script):
    """Path of a temporary Lua file: the workload's script (if any) plus report.lua."""
    parts = []
    if workload_script:
        with open(os.path.join(LUA_DIR, workload_script)) as f:
            parts.append(f.read())
    with open(os.path.join(LUA_DIR, "report.lua")) as f:
        parts.append(f.read())
    fd, path = tempfile.mkstemp(prefix="bench-wrk-", suffix=".lua")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(parts))
    return path


def run(
    port,
    path,
    connections,
    duration,
    cpus,
    script=None,
    script_args=(),
    headers=(),
    timeout=5,
    log=None,
    tls=None,
    preload=None,
):
    """Run wrk against 127.0.0.1:port for `duration` whole seconds, one thread per client
    CPU; over https:// when `tls` (the server's Certificate) is given, with the TLS preload
    (`preload`, default bench/tls.PRELOAD). Returns the BENCH_RESULT dict; raises BenchError if
    wrk fails or, over HTTPS, the preload did not report."""
    cpus = sorted(cpus)
    threads = max(1, min(len(cpus), connections))
    lua = _script(script)
    argv = [
        "wrk",
        "-t%d" % threads,
        "-c%d" % connections,
        "-d%ds" % duration,
        "--timeout",
        "%ds" % timeout,
        "-s",
        lua,
    ]
    for h in headers:
        argv += ["-H", h]
    argv.append("%s://127.0.0.1:%d%s" % ("https" if tls else "http", port, path))
    env = None
    if tls:
        preload = preload or tls_module.PRELOAD
        if not os.path.exists(preload):
            raise BenchError("no TLS preload for wrk at %s (bench/tls.build_preload)" % preload)
        env = dict(os.environ, **tls_module.preload_env(preload))
    if script_args:
        argv += ["--", *script_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration + 60,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError("wrk did not finish: %s" % " ".join(argv)) from e
    finally:
        os.unlink(lua)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # wrk's own CPU (user + system): the children reaped meanwhile are wrk alone.
    client_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if log:
        with open(log, "a") as f:
            f.write("$ %s\n%s%s\n" % (" ".join(argv), proc.stdout, proc.stderr))
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            result = json.loads(line[len(MARK) :])
            result["argv"] = argv
            result["client_cpu_s"] = client_cpu_s
            if tls:
                result["tls"] = tls_module.parse_preload(proc.stderr)
                if result["tls"] is None:
                    raise BenchError(
                        "wrk ran without the TLS preload's report (%s not loaded?): %s"
                        % (preload, proc.stderr[-500:])
                    )
            return result
    raise BenchError(
        "wrk failed (exit %d): %s\n%s%s"
        % (proc.returncode, " ".join(argv), proc.stdout[-2000:], proc.stderr[-2000:])
    )
