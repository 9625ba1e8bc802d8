"""One measured point: wrk against a running server, with the server's CPU and memory read
from /proc around it."""

from . import BenchError, WrongAnswer, checks, procstat, wrk


def point(server, workload, duration, client_cpus, log=None):
    """Measure `workload` against the running ServerProcess `server` for `duration` seconds
    (or the workload's minimum). Returns a flat dict of numbers; checks GET / afterwards."""
    server.ensure_alive()
    duration = max(duration, workload.min_duration)
    root = server.pid
    pids = procstat.tree(root)
    rss_before = procstat.rss_bytes(pids)
    sampler = procstat.RssSampler(root)
    sampler.start()
    cpu_before = procstat.cpu_ticks(pids)
    core_before = procstat.cpus_busy_ticks(server.cpus)
    try:
        result = wrk.run(
            server.port,
            workload.path,
            workload.connections,
            duration,
            client_cpus,
            script=workload.script,
            script_args=workload.script_args,
            headers=workload.headers,
            timeout=workload.timeout,
            log=log,
        )
    finally:
        cpu_after = procstat.cpu_ticks(procstat.tree(root))
        core_after = procstat.cpus_busy_ticks(server.cpus)
        rss_peak = sampler.stop()
    server.ensure_alive()
    # Still answering, and answering right? A wrong answer raises; a server still buried
    # under the load after 30 s (c10k does this to some) keeps its numbers, flagged.
    recovery_error = None
    try:
        checks.hello(server.port, patience=30)
    except WrongAnswer:
        raise
    except BenchError as e:
        recovery_error = str(e)

    requests = result["requests"]
    seconds = result["duration_us"] / 1e6
    cpu_s = procstat.cpu_delta_seconds(cpu_before, cpu_after)
    core_s = (core_after - core_before) / procstat.CLK_TCK
    errors = result["errors"]
    lat = result["latency_us"]
    out = {
        "requests": requests,
        "seconds": round(seconds, 3),
        "rps": requests / seconds if seconds else 0.0,
        "mb_per_s": result["bytes"] / seconds / 1e6 if seconds else 0.0,
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_req": cpu_s * 1e6 / requests if requests else None,
        "core_us_per_req": core_s * 1e6 / requests if requests else None,
        "server_cpu_util": cpu_s / seconds if seconds else None,
        "lat_mean_ms": lat["mean"] / 1000,
        "lat_p50_ms": lat["p50"] / 1000,
        "lat_p90_ms": lat["p90"] / 1000,
        "lat_p99_ms": lat["p99"] / 1000,
        "lat_max_ms": lat["max"] / 1000,
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "errors_connect": errors["connect"],
        "errors_read": errors["read"],
        "errors_write": errors["write"],
        "errors_timeout": errors["timeout"],
        "status_errors": errors["status"],
        "rss_before_mib": rss_before / 2**20,
        "rss_peak_mib": rss_peak / 2**20,
        "processes": len(pids),
        "recovered": recovery_error is None,
    }
    if recovery_error:
        out["recovery_error"] = recovery_error
    if workload.per_connection_memory:
        out["mem_per_conn_kib"] = max(0, rss_peak - rss_before) / workload.connections / 1024
    return out
