"""Medians over rounds, the printed tables, and the JSON / CSV files."""

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from . import REPO_DIR, wrk

# Metrics reduced by median over rounds; the rest by max (memory) or sum (errors).
MEDIAN = [
    "rps",
    "mb_per_s",
    "cpu_us_per_req",
    "core_us_per_req",
    "server_cpu_util",
    "lat_mean_ms",
    "lat_p50_ms",
    "lat_p90_ms",
    "lat_p99_ms",
    "mem_per_conn_kib",
    "rss_before_mib",
    "client_cpu_util",
    "client_us_per_msg",
    "published",
    "handshakes_per_cpu_s",
    "app_us_per_req",  # rounds paired with the app's own cost (appcost.pair)
    "server_own_us_per_req",
]
MAX = ["rss_peak_mib", "lat_max_ms"]
SUM = [
    "requests",
    "socket_errors",
    "errors_connect",
    "errors_read",
    "errors_write",
    "errors_timeout",
    "status_errors",
    "handshakes",
    "resumed",
]


def summarize(points):
    """Reduce the rounds of one (server, workload) to one row."""
    row = {"rounds": len(points)}
    for key in MEDIAN:
        values = [p[key] for p in points if p.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    for key in MAX:
        values = [p[key] for p in points if p.get(key) is not None]
        row[key] = max(values) if values else None
    for key in SUM:
        row[key] = sum(p.get(key) or 0 for p in points)
    rps = [p["rps"] for p in points]
    row["rps_min"], row["rps_max"] = min(rps), max(rps)
    # Rounds that carry the app's own cost measured beside them (appcost.pair).
    row["paired_rounds"] = sum(p.get("server_own_us_per_req") is not None for p in points)
    cpu = [p["cpu_us_per_req"] for p in points if p.get("cpu_us_per_req") is not None]
    row["cpu_min"], row["cpu_max"] = (min(cpu), max(cpu)) if cpu else (None, None)
    if any(p.get("tls_negotiated") for p in points):
        # What the HTTPS rounds negotiated (wrk's view); more than one would be a surprise.
        seen = []
        for p in points:
            if p.get("tls_negotiated") and p["tls_negotiated"] not in seen:
                seen.append(p["tls_negotiated"])
        row["tls_negotiated"] = ", ".join(seen)
    return row


def choose_reference(summary, order, wanted=None):
    """The server the ratios are taken against: `wanted` if it ran, else the first of
    `order` that ran, else the first server with results."""
    ran = {s for (s, _w) in summary}
    for name in ([wanted] if wanted else []) + list(order):
        if name in ran:
            return name
    return next(iter(sorted(ran)), None)


def _fmt_int(x):
    return "-" if x is None else f"{x:,.0f}"


def _fmt(x, digits=1):
    return "-" if x is None else "{:,.{d}f}".format(x, d=digits)


def _ratio(x):
    return ("%.2f×" % x) if 0.1 <= x < 100 else ("%.2g×" % x if x < 0.1 else "%.0f×" % x)


def _fmt_ms(x):
    if x is None:
        return "-"
    return "%.2f ms" % x if x < 10 else "%.0f ms" % x if x >= 100 else "%.1f ms" % x


def _pct(x):
    return "-" if x is None else "%.0f%%" % (x * 100)


def workload_table(workload, rows, labels, reference, header_note=""):
    """Markdown table for one workload: rows is [(server, summary row)] in display order.
    A WebSocket workload counts messages, and shows the server's and the client's CPU use
    (the share of one core each used while counting) and the client's CPU per message: a
    client near 100% may be what limits the rate, which is why the server's CPU per message
    is the figure to compare."""
    unit = workload.unit
    ws = workload.client == "wsload"
    ref = dict(rows).get(reference)
    rate = "Messages/sec" if ws else "Requests/sec"
    vs = "vs %s (%s/s, CPU)" % (reference, unit) if reference else "vs reference"
    cols = ["Framework", rate, "Latency p50 / p99", "CPU µs/%s" % unit]
    # The app's own cost (the app called in-process, no server: bench/appcost.py) and the
    # server's own (the row minus it), where a server runs an app of servers/apps.py.
    app_cols = any(row.get("app_us_per_req") is not None for _, row in rows)
    if app_cols:
        cols += ["App's own µs/%s" % unit, "Server's own µs/%s" % unit]
    # HTTPS: full handshakes per second of server CPU (connection-per-request workloads),
    # and what was negotiated, as wrk's preload saw it.
    handshakes = getattr(workload, "handshakes", False)
    tls_col = getattr(workload, "tls_cert", None) is not None
    if handshakes:
        cols.append("Handshakes/CPU-s")
    cols.append("Peak RSS")
    if workload.per_connection_memory:
        cols.append("Memory/conn")
    if ws:
        cols += ["CPU used, server / client", "Client µs/msg"]
    if tls_col:
        cols += ["CPU used, server / client", "Negotiated"]
    cols += ["Errors", vs]
    lines = [
        "### %s%s" % (workload.title, header_note),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for server, row in rows:
        ratio = "-"
        if ref and row["rps"] and ref["rps"]:
            cpu_ratio = (
                row["cpu_us_per_req"] / ref["cpu_us_per_req"]
                if row["cpu_us_per_req"] and ref["cpu_us_per_req"]
                else None
            )
            ratio = "%s / %s" % (
                _ratio(row["rps"] / ref["rps"]),
                _ratio(cpu_ratio) if cpu_ratio else "-",
            )
        name = labels.get(server, server)
        name = "**%s**" % name if server == reference else name
        errors = row["socket_errors"] + row["status_errors"]
        cells = [
            name,
            _fmt_int(row["rps"]),
            "%s / %s" % (_fmt_ms(row["lat_p50_ms"]), _fmt_ms(row["lat_p99_ms"])),
            _fmt(row["cpu_us_per_req"]),
        ]
        if app_cols:
            cells += [_fmt(row.get("app_us_per_req")), _fmt(row.get("server_own_us_per_req"))]
        if handshakes:
            cells.append(_fmt_int(row.get("handshakes_per_cpu_s")))
        cells.append("%s MiB" % _fmt(row["rss_peak_mib"]))
        if workload.per_connection_memory:
            cells.append("%s KiB" % _fmt(row.get("mem_per_conn_kib")))
        if ws:
            cells.append(
                "%s / %s" % (_pct(row.get("server_cpu_util")), _pct(row.get("client_cpu_util")))
            )
            cells.append(_fmt(row.get("client_us_per_msg"), 2))
        if tls_col:
            cells.append(
                "%s / %s" % (_pct(row.get("server_cpu_util")), _pct(row.get("client_cpu_util")))
            )
            cells.append(row.get("tls_negotiated") or "-")
        cells += [_fmt_int(errors) if errors else "0", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(workload, other, summary, labels):
    """Server CPU per message of `workload` beside CPU per request of the HTTP workload
    `other` (its compare_with), for every server measured on both in this run; None if
    none was."""
    rows = []
    for (server, wn), row in summary.items():
        if wn != workload.name:
            continue
        base = summary.get((server, other.name))
        if not base or not row.get("cpu_us_per_req") or not base.get("cpu_us_per_req"):
            continue
        rows.append((server, row["cpu_us_per_req"], base["cpu_us_per_req"]))
    if not rows:
        return None
    rows.sort(key=lambda r: r[1])
    lines = [
        "### Server CPU: a WebSocket message (%s) against an HTTP request (%s)"
        % (workload.name, other.name),
        "",
        "| Framework | CPU µs/msg, %s | CPU µs/req, %s | ratio |" % (workload.name, other.name),
        "|---|---|---|---|",
    ]
    for server, msg, req in rows:
        lines.append(
            "| %s | %s | %s | %s |"
            % (labels.get(server, server), _fmt(msg, 2), _fmt(req, 2), _ratio(msg / req))
        )
    return "\n".join(lines)


# The issues' targets, as ratios of server CPU per message (or request) measured in one run:
# (what, numerator (server, workload), denominator (server, workload), at most). Issue 10:
# WebSocket; issue 11: files (nginx with sendfile and open_file_cache on is the base).
TARGETS = [
    (
        "Starlette echo on our ASGI adapter vs uvicorn",
        ("pymongoose_uring_asgi", "ws-echo"),
        ("uvicorn_raw", "ws-echo"),
        0.5,
    ),
    (
        "Starlette echo on our ASGI adapter vs granian",
        ("pymongoose_uring_asgi", "ws-echo"),
        ("granian_asgi", "ws-echo"),
        0.5,
    ),
    (
        "native API echo vs uvicorn's Starlette echo",
        ("pymongoose_uring", "ws-echo"),
        ("uvicorn_raw", "ws-echo"),
        0.25,
    ),
    (
        "C example: a WebSocket message vs a 16-deep pipelined request",
        ("hello_c", "ws-echo"),
        ("hello_c", "pipelined"),
        1.5,
    ),
    (
        "--static vs nginx (sendfile, open_file_cache), 16 KiB file",
        ("pymongoose_uring_static", "file-16k"),
        ("nginx", "file-16k"),
        1.0,
    ),
    (
        "--static vs nginx (sendfile, open_file_cache), 1 MiB file",
        ("pymongoose_uring_static", "file-1m"),
        ("nginx", "file-1m"),
        1.2,
    ),
    (
        "Starlette FileResponse, our ASGI adapter vs uvicorn, 16 KiB file",
        ("pymongoose_uring_fileresponse", "file-16k"),
        ("uvicorn_fileresponse", "file-16k"),
        0.4,
    ),
    (
        "Starlette FileResponse, our ASGI adapter vs uvicorn, 1 MiB file",
        ("pymongoose_uring_fileresponse", "file-1m"),
        ("uvicorn_fileresponse", "file-1m"),
        0.4,
    ),
]


# Issue 13: the adapters' cost, keep-alive hello (ratios of server CPU per request).
TARGETS += [
    (
        "raw WSGI app through the CLI vs the native API",
        ("pymongoose_uring_wsgi", "keepalive"),
        ("pymongoose_uring", "keepalive"),
        1.5,
    ),
    (
        "raw ASGI app through the CLI vs the native API",
        ("pymongoose_uring_asgi", "keepalive"),
        ("pymongoose_uring", "keepalive"),
        1.5,
    ),
    (
        "raw ASGI app: our ASGI adapter vs granian",
        ("pymongoose_uring_asgi", "keepalive"),
        ("granian_asgi", "keepalive"),
        0.5,
    ),
    (
        "FastAPI: our ASGI adapter vs uvicorn",
        ("pymongoose_uring_fastapi", "keepalive"),
        ("uvicorn", "keepalive"),
        0.6,
    ),
]
# Issue 14: HTTPS. Keep-alive over TLS at most 1.1x nginx's server CPU per request, and
# uvicorn and granian behind us on every HTTPS row: more CPU per request on the keep-alive
# rows, fewer full handshakes per CPU-second on the connection-per-request ones (see
# HANDSHAKE_TARGETS: the handshakes of connections still open when wrk stops cost CPU too,
# and at a few hundred per second they are a tenth of the requests).
TARGETS += [
    (
        "HTTPS keep-alive: ours vs nginx",
        ("pymongoose_uring_tls", "tls-keepalive"),
        ("nginx_tls", "tls-keepalive"),
        1.1,
    ),
]
TARGETS += [
    (
        "HTTPS %s: ours vs %s" % (what, peer_label),
        ("pymongoose_uring_tls", workload),
        (peer, workload),
        1.0,
    )
    for workload, what in (("tls-keepalive", "keep-alive"), ("tls-get1m", "1 MiB response"))
    for peer, peer_label in (("uvicorn_tls", "uvicorn"), ("granian_tls", "granian"))
]
# Targets on full handshakes per second of server CPU, at least this share of the base's:
# (what, numerator (server, workload), denominator (server, workload), at least).
HANDSHAKE_TARGETS = [
    (
        "HTTPS handshakes per CPU-second, %s: ours vs %s" % (label, peer_label),
        ("pymongoose_uring_tls", workload),
        (peer, workload),
        least,
    )
    for workload, label in (
        ("tls-handshake-ecdsa", "ECDSA P-256"),
        ("tls-handshake-rsa", "RSA-2048"),
    )
    for peer, peer_label, least in (
        ("nginx_tls", "nginx", 0.9),
        ("uvicorn_tls", "uvicorn", 1.0),
        ("granian_tls", "granian", 1.0),
    )
]


def measured_handshake_targets(summary, targets=HANDSHAKE_TARGETS):
    """The handshake targets this run measured both sides of: dicts (what, the two figures
    in full handshakes per CPU-second, ratio, the least allowed, met)."""
    out = []
    for what, num, den, least in targets:
        a, b = summary.get(num), summary.get(den)
        if not a or not b or not a.get("handshakes_per_cpu_s") or not b.get("handshakes_per_cpu_s"):
            continue
        ratio = a["handshakes_per_cpu_s"] / b["handshakes_per_cpu_s"]
        out.append(
            {
                "what": what,
                "server": num[0],
                "workload": num[1],
                "base_server": den[0],
                "base_workload": den[1],
                "handshakes_per_cpu_s": a["handshakes_per_cpu_s"],
                "base_handshakes_per_cpu_s": b["handshakes_per_cpu_s"],
                "ratio": ratio,
                "at_least": least,
                "met": ratio >= least,
            }
        )
    return out


# Targets on the server's own cost (CPU µs per request minus the app's own), in µs:
# (what, (server, workload), at most, the floor's (server, workload)): the floor is the same
# app called from a native handler with no adapter (servers/pymongoose_uring_flask_floor_
# server.py), whose own cost, shown beside the target, is the engine's around that app.
OWN_COST_TARGETS = [
    (
        "Flask: the WSGI adapter's own cost per request",
        ("pymongoose_uring_flask", "keepalive"),
        8.0,
        ("pymongoose_uring_flask_floor", "keepalive"),
    ),
]


def measured_own_cost_targets(summary, targets=OWN_COST_TARGETS):
    """The server's-own-cost targets this run measured: dicts (what, server, workload, the
    row's CPU, the app's own, the server's own, limit, met, and the floor's own cost or None)."""
    out = []
    for what, key, limit, floor_key in targets:
        row = summary.get(key)
        if not row or row.get("server_own_us_per_req") is None:
            continue
        own = row["server_own_us_per_req"]
        floor = (summary.get(floor_key) or {}).get("server_own_us_per_req")
        out.append(
            {
                "what": what,
                "server": key[0],
                "workload": key[1],
                "cpu_us": row["cpu_us_per_req"],
                "app_us": row["app_us_per_req"],
                "server_own_us": own,
                "at_most_us": limit,
                "met": own <= limit,
                "floor_own_us": floor,
                "paired": row.get("paired_rounds", 0) > 0,
            }
        )
    return out


def measured_targets(summary, targets=TARGETS):
    """The targets that this run measured both sides of: a list of dicts (what, the two
    CPU figures, ratio, limit, met), in the order of `targets`."""
    out = []
    for what, num, den, limit in targets:
        a, b = summary.get(num), summary.get(den)
        if not a or not b or not a.get("cpu_us_per_req") or not b.get("cpu_us_per_req"):
            continue
        ratio = a["cpu_us_per_req"] / b["cpu_us_per_req"]
        out.append(
            {
                "what": what,
                "server": num[0],
                "workload": num[1],
                "base_server": den[0],
                "base_workload": den[1],
                "cpu_us": a["cpu_us_per_req"],
                "base_cpu_us": b["cpu_us_per_req"],
                "ratio": ratio,
                "at_most": limit,
                "met": ratio <= limit,
            }
        )
    return out


def targets_table(summary, targets=TARGETS):
    """The issue's targets that this run measured both sides of, with the ratio found; None
    if none."""
    lines = [
        "| %s | %s / %s | %s | at most %s× | %s |"
        % (
            t["what"],
            _fmt(t["cpu_us"], 2),
            _fmt(t["base_cpu_us"], 2),
            _ratio(t["ratio"]),
            t["at_most"],
            "met" if t["met"] else "**not met**",
        )
        for t in measured_targets(summary, targets)
    ]
    lines += [
        "| %s | %s own (CPU %s, app %s%s)%s | - | at most %s µs | %s |"
        % (
            t["what"],
            _fmt(t["server_own_us"], 2),
            _fmt(t["cpu_us"], 2),
            _fmt(t["app_us"], 2),
            ": medians of rounds, each less the app measured beside it" if t["paired"] else "",
            ""
            if t["floor_own_us"] is None
            else " (the floor, the app from a native handler without an adapter: %s)"
            % _fmt(t["floor_own_us"], 2),
            _fmt(t["at_most_us"], 0),
            "met" if t["met"] else "**not met**",
        )
        for t in measured_own_cost_targets(summary)
    ]
    lines += [
        "| %s | %s / %s handshakes/CPU-s | %s | at least %s× | %s |"
        % (
            t["what"],
            _fmt_int(t["handshakes_per_cpu_s"]),
            _fmt_int(t["base_handshakes_per_cpu_s"]),
            _ratio(t["ratio"]),
            t["at_least"],
            "met" if t["met"] else "**not met**",
        )
        for t in measured_handshake_targets(summary)
    ]
    if not lines:
        return None
    head = [
        "### Targets (server CPU per request or message, ratios within this run)",
        "",
        "| target | CPU µs | ratio | aim | |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + lines)


def labels_for(workload, labels, ws_labels=None, files_labels=None):
    """How the servers are named in a workload's table: WebSocket tables by `ws_labels`
    where given (what serves /ws/* may be another app than what serves HTTP), file tables by
    `files_labels` (what serves /files/, nginx's open_file_cache)."""
    if workload.client == "wsload":
        return dict(labels, **(ws_labels or {}))
    if workload.needs == "files":
        return dict(labels, **(files_labels or {}))
    return labels


def workload_reference(workload, rows, reference):
    """The server a workload's ratios are taken against: its own reference (nginx for the
    file workloads) when that ran, else the run's."""
    wanted = getattr(workload, "reference", None)
    if wanted and any(server == wanted for server, _row in rows):
        return wanted
    return reference


def tables(
    workloads,
    summary,
    labels,
    reference,
    skipped,
    remarks,
    meta,
    ws_labels=None,
    extra=(),
    files_labels=None,
):
    """All workload tables, fastest first, then the issues' targets measured, then what was
    not measured and remarks. Servers are named by labels_for(). `extra`: workloads
    measured only as a comparison base for another's compare_with (their tables are not
    repeated)."""
    out = []
    by_name = {w.name: w for w in list(workloads) + list(extra)}
    for w in workloads:
        rows = [(s, r) for (s, wn), r in summary.items() if wn == w.name]
        if not rows:
            continue
        names = labels_for(w, labels, ws_labels, files_labels)
        rows.sort(key=lambda sr: -(sr[1]["rps"] or 0))
        rounds = max(r["rounds"] for _, r in rows)
        note = " (median of %d × %d s)" % (rounds, max(meta["duration_s"], w.min_duration))
        out.append(workload_table(w, rows, names, workload_reference(w, rows, reference), note))
        out.append("")
        if w.compare_with and w.compare_with in by_name:
            table = comparison_table(w, by_name[w.compare_with], summary, labels)
            if table:
                out.append(table)
                out.append("")
    table = targets_table(summary)
    if table:
        out.append(table)
        out.append("")
    for title, items in (("Not measured:", skipped), ("Notes:", remarks)):
        if items:
            out.append(title)
            out += ["- %s" % n for n in items]
            out.append("")
    return "\n".join(out)


def _version(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def _package_versions():
    from importlib import metadata

    out = {}
    for name in (
        "pymongoose_uring",
        "aiohttp",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "flask",
        "werkzeug",
        "gunicorn",
        "granian",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine(server_cpus, client_cpus):
    """What the numbers were measured on."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None
            )
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = None
    commit = _version(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"])
    if commit and "fatal" not in commit:
        dirty = subprocess.run(
            [
                "git",
                "-C",
                REPO_DIR,
                "status",
                "--porcelain",
                "--",
                "core",
                "include",
                "binding",
                "pymongoose_uring",
                "examples",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        commit += " with uncommitted changes" if dirty else ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1) if mem_kib else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "wrk": (wrk.version() or "").split(" Copyright")[0] or None,
        "nginx": _version(["nginx", "-v"]) or _version(["/usr/sbin/nginx", "-v"]),
        "packages": _package_versions(),
        "git_commit": commit if commit and "fatal" not in commit else None,
        "server_cpus": sorted(server_cpus),
        "client_cpus": sorted(client_cpus),
    }


# The engine's file counters (issue 11), shown after a run with file workloads for the servers
# that answer their counters (the registry's stats_path): which path the bytes took.
FILE_COUNTERS = (
    "files_sent",
    "file_bytes_spliced",
    "file_bytes_read",
    "file_errors",
    "pipe_fallbacks",
    "file_cache_hits",
    "file_cache_misses",
    "static_answers",
    "not_modified",
)


def file_counters_note(name, stats):
    """ "name: engine file counters over the run: files_sent 123, ..." from a server's
    counters (GET stats_path), or None when it has none of them."""
    shown = [
        f"{key} {stats[key]:,}" for key in FILE_COUNTERS if isinstance((stats or {}).get(key), int)
    ]
    if not shown:
        return None
    return "%s: engine file counters at the end of the run (checks and warm-ups included): %s" % (
        name,
        ", ".join(shown),
    )


# The engine's TLS counters (issue 14), shown after an HTTPS run for our servers: the
# server's own count of handshakes and resumptions beside wrk's.
TLS_COUNTERS = (
    "tls_handshakes",
    "tls_resumed",
    "tls_handshake_errors",
    "tls_handshake_timeouts",
    "tls_plain_http",
    "tls_ktls",
    "tls_close_notify",
)


def tls_counters_note(name, stats):
    """ "name: engine TLS counters ...: tls_handshakes 123, ..." from a server's counters, or
    None when it has none of them."""
    shown = [
        f"{key} {stats[key]:,}" for key in TLS_COUNTERS if isinstance((stats or {}).get(key), int)
    ]
    if not shown:
        return None
    return (
        "%s: engine TLS counters since its last start (the last certificate's workloads, "
        "checks and warm-ups included): %s" % (name, ", ".join(shown))
    )


NOTE_MARK = "BENCH_NOTE "


def server_notes(name, log_path):
    """What a server script said about itself for the report: its log's lines starting
    with BENCH_NOTE (once each), as "name: text" (say, whether the server offered
    http.response.pathsend to the Starlette FileResponse app)."""
    out = []
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if line.startswith(NOTE_MARK):
                    note = "%s: %s" % (name, line[len(NOTE_MARK) :].strip())
                    if note not in out:
                        out.append(note)
    except OSError:
        pass
    return out


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, default=str)
        f.write("\n")


def write_csv(path, rows):
    """rows: list of flat dicts; the columns are the union of their keys, in first-seen order."""
    columns = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
            )


def machine_table(meta):
    """The machine and the software versions, as a Markdown table."""
    m = meta["machine"]
    pkgs = ", ".join("%s %s" % kv for kv in sorted(m.get("packages", {}).items()))
    rows = [
        ("CPU", "%s, %s CPUs visible" % (m.get("cpu_model"), m.get("cpus"))),
        ("memory", "%s GiB" % m.get("memory_gib")),
        ("kernel", m.get("kernel")),
        (
            "pinning",
            "servers on CPU %s, wrk on CPU %s"
            % (
                ",".join(map(str, m.get("server_cpus", []))),
                ",".join(map(str, m.get("client_cpus", []))),
            ),
        ),
        ("Python", m.get("python")),
        ("load generator", m.get("wrk")),
        ("nginx", m.get("nginx")),
        ("Python packages", pkgs),
        ("checkout", m.get("git_commit") or "uncommitted"),
        ("date", m.get("date")),
    ]
    return "\n".join(["| | |", "|---|---|"] + ["| %s | %s |" % (k, v) for k, v in rows])


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def update_readme(path, section):
    """Replace what lies between the results markers of the README at `path`."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return False
    a, b = text.find(BEGIN), text.find(END)
    if a < 0 or b < a:
        return False
    text = text[: a + len(BEGIN)] + "\n" + section.rstrip() + "\n" + text[b:]
    with open(path, "w") as f:
        f.write(text)
    return True
