"""One measured point: wrk (HTTP) or wsload (WebSocket) against a running server, with the
server's CPU and memory read from /proc around it."""

import time

from . import BenchError, WrongAnswer, checks, procstat, tls, wrk, wsload


def point(
    server, workload, duration, client_cpus, log=None, wsload_binary=None, warmup=1.0, ws_procs=1
):
    """Measure `workload` against the running ServerProcess `server` for `duration` seconds
    (or the workload's minimum). Returns a flat dict of numbers; checks GET / afterwards.
    WebSocket workloads need `wsload_binary`; `warmup` is their unmeasured load after
    connecting."""
    if workload.client == "wsload":
        return ws_point(
            server, workload, duration, client_cpus, wsload_binary, warmup, log, ws_procs
        )
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
            tls=server.certificate,
        )
    finally:
        cpu_after = procstat.cpu_ticks(procstat.tree(root))
        core_after = procstat.cpus_busy_ticks(server.cpus)
        rss_peak = sampler.stop()
    recovery_error = _recovered(server)

    requests = result["requests"]
    seconds = result["duration_us"] / 1e6
    cpu_s = procstat.cpu_delta_seconds(cpu_before, cpu_after)
    core_s = (core_after - core_before) / procstat.CLK_TCK
    errors = result["errors"]
    out = {
        "requests": requests,
        "seconds": round(seconds, 3),
        "rps": requests / seconds if seconds else 0.0,
        "mb_per_s": result["bytes"] / seconds / 1e6 if seconds else 0.0,
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_req": cpu_s * 1e6 / requests if requests else None,
        "core_us_per_req": core_s * 1e6 / requests if requests else None,
        "server_cpu_util": cpu_s / seconds if seconds else None,
        **_latency_ms(result["latency_us"]),
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
    if server.certificate is not None:
        out.update(tls_figures(server.name, workload, result["tls"], cpu_s))
        # wrk's share of its core: over TLS the client, not the server, may set the pace.
        out["client_cpu_util"] = result["client_cpu_s"] / seconds if seconds else None
    return out


TLS_VERSION = "TLSv1.3"  # what every HTTPS workload is about


def tls_figures(name, workload, report, cpu_s):
    """An HTTPS point's TLS figures from the wrk preload's report: handshakes (all full:
    one resumed is an error, the workload would measure something else), what was
    negotiated, and full handshakes per second of server CPU. A server that negotiated
    another protocol than TLS 1.3 with a client offering it is a wrong answer."""
    if report["version"] != TLS_VERSION:
        raise WrongAnswer(
            "%s negotiated %s with wrk, not %s"
            % (name, report["version"] or "nothing", TLS_VERSION)
        )
    if report["resumed"]:
        raise BenchError(
            "%s: wrk resumed %d of %d TLS sessions although the preload drops them "
            "(WRKTLS_NO_RESUME): not a full-handshake measurement"
            % (name, report["resumed"], report["handshakes"])
        )
    full = report["handshakes"] - report["resumed"]
    return {
        "handshakes": full,
        "resumed": report["resumed"],
        "tls_negotiated": tls.negotiated(report),
        "handshakes_per_cpu_s": full / cpu_s if workload.handshakes and cpu_s > 0 else None,
    }


def _latency_ms(latency_us):
    """A load client's latency figures (µs) as the result's lat_*_ms fields."""
    return {"lat_%s_ms" % k: latency_us[k] / 1000 for k in ("mean", "p50", "p90", "p99", "max")}


def _recovered(server):
    """Still answering, and answering right? A wrong answer raises; a server still buried
    under the load after 30 s (c10k does this to some) keeps its numbers, flagged: returns
    why, or None."""
    server.ensure_alive()
    try:
        checks.probe(server.definition, server.port, patience=30, tls=server.certificate)
    except WrongAnswer:
        raise
    except BenchError as e:
        return str(e)
    return None


def ws_point(server, workload, duration, client_cpus, binary, warmup, log=None, procs=1):
    """One WebSocket point: wsload connects, warms up, then counts for `duration` seconds;
    the server's CPU is read when it starts and stops counting (connecting and closing
    1,000 connections are not in the figure). Same keys as an HTTP point ("requests" are
    messages), plus the client's own CPU use."""
    if not binary:
        raise BenchError("no wsload binary for %s" % workload.name)
    server.ensure_alive()
    duration = max(duration, workload.min_duration)
    root = server.pid
    rss_before = procstat.rss_bytes(procstat.tree(root))
    sampler = procstat.RssSampler(root)
    sampler.start()
    at = {}

    def snapshot(key):
        def take():
            at[key] = (
                time.monotonic(),
                procstat.cpu_ticks(procstat.tree(root)),
                procstat.cpus_busy_ticks(server.cpus),
            )
            return at[key][0]

        return take

    try:
        result = wsload.run(
            binary,
            server.port,
            workload,
            duration,
            client_cpus,
            warmup=warmup,
            on_start=snapshot("start"),
            on_end=snapshot("end"),
            log=log,
            procs=procs if workload.ws_mode == "echo" else 1,
        )
    finally:
        rss_peak = sampler.stop()
    recovery_error = _recovered(server)
    if "start" not in at or "end" not in at:
        raise BenchError("wsload gave no start/end marks: %s" % result.get("argv"))
    return ws_figures(result, at["start"], at["end"], rss_before, rss_peak, recovery_error)


def ws_figures(result, start, end, rss_before, rss_peak, recovery_error=None):
    """The point's numbers from a wsload result and the server readings (time, cpu_ticks,
    busy ticks) taken at its start and end marks. The server's CPU is read a moment after
    each mark; its rate over that interval times the client's counted interval is what the
    counted messages cost."""
    messages = result["messages"]
    seconds = result["duration_s"]
    server_seconds = end[0] - start[0]
    cpu_s = procstat.cpu_delta_seconds(start[1], end[1])
    core_s = (end[2] - start[2]) / procstat.CLK_TCK
    scale = seconds / server_seconds if server_seconds > 0 else 1.0
    out = {
        "requests": messages,
        "seconds": round(seconds, 3),
        "rps": messages / seconds if seconds else 0.0,
        "mb_per_s": result["bytes"] / seconds / 1e6 if seconds else 0.0,
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_req": cpu_s * scale * 1e6 / messages if messages else None,
        "core_us_per_req": core_s * scale * 1e6 / messages if messages else None,
        "server_cpu_util": cpu_s / server_seconds if server_seconds > 0 else None,
        "client_cpu_util": result.get("client_cpu_util"),
        "client_us_per_msg": (
            result["client_cpu_s"] * 1e6 / messages
            if messages and result.get("client_cpu_s") is not None
            else None
        ),
        "published": result.get("published"),
        **_latency_ms(result["latency_us"]),
        # wsload stops at the first error, so a point that has numbers had none.
        "socket_errors": 0,
        "errors_connect": 0,
        "errors_read": 0,
        "errors_write": 0,
        "errors_timeout": 0,
        "status_errors": 0,
        "rss_before_mib": rss_before / 2**20,
        "rss_peak_mib": rss_peak / 2**20,
        "processes": len(start[1]),
        "recovered": recovery_error is None,
    }
    if recovery_error:
        out["recovery_error"] = recovery_error
    return out
