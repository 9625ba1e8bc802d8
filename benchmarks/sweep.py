#!/usr/bin/env python3
"""Kernel-tuning experiments: one workload, one server, across values of engine knobs and
of sysctls, with the engine's counters recorded beside each point.

    python3 benchmarks/sweep.py --server hello_c --workload pipelined \\
        --knob buf_size=1024,4096,16384 --knob defer_taskrun=0,1
    python3 benchmarks/sweep.py --server pymongoose_uring --workload keepalive \\
        --knob batch_max=1,16,256 --sysctl net.core.somaxconn=128,4096     # as root
    python3 benchmarks/sweep.py --server hello_c --knob threads=1,2,4,8 \\
        --server-cpus 0-7 --client-cpus 8-15                               # thread scaling

By default each dimension is varied alone from the defaults (plus --set values); --grid
measures every combination instead. Knobs reach the server as PMU_<KNOB> environment
variables (and `threads` as its argument); sysctls are written under /proc/sys before the
server starts and restored at the end, also on Ctrl-C. Every point restarts the server, and
rounds alternate over the points. Counters come from the server's stats endpoint
(GET /__stats, before and after the measured interval) or, failing that, from a line
`PMU_STATS {json}` the server prints when it stops (totals of that run).
"""

import argparse
import dataclasses
import itertools
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import (  # noqa: E402
    RESULTS_DIR,
    BenchError,
    checks,
    files,
    knobs as knoblib,
    measure,
    procstat,
    registry,
    report,
    workloads as wl,
    wrk,
    wsload,
)
from bench.serverproc import ServerProcess, Unavailable  # noqa: E402
from bench.session import provision_servers, raise_fd_limit, warm_up  # noqa: E402
from bench.sysctl import Sysctls  # noqa: E402

STATS_MARK = "PMU_STATS "
# Counters that are levels, not totals: report the value at the end, not a difference
# (include/pmu/pmu.h PMU_STATS_FIELDS, kind GAUGE; tests/python/test_knob_table.py checks it).
GAUGES = {"connections_open", "body_buffer_bytes", "ws_open", "tls_handshakes_waiting"}


def parse_args(argv=None):
    ncpu = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="knobs: %s" % ", ".join(knoblib.KNOBS),
    )
    p.add_argument(
        "--server",
        default="pymongoose_uring",
        help="one of: %s (default pymongoose_uring)" % ", ".join(registry.DEFAULT),
    )
    p.add_argument("--workload", default="keepalive", help="one of: %s" % ", ".join(wl.DEFAULT))
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="an engine knob and the values to try (repeatable)",
    )
    p.add_argument(
        "--sysctl",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a sysctl and the values to try, e.g. net.core.somaxconn=128,4096 "
        "(repeatable; root only)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=V",
        help="a knob or sysctl held at one value for every point (repeatable)",
    )
    p.add_argument("--grid", action="store_true", help="every combination of the values")
    p.add_argument(
        "--connections",
        type=int,
        default=None,
        help="override the workload's connection count (e.g. 256 for many threads)",
    )
    p.add_argument(
        "--ws-depth",
        type=int,
        default=None,
        help="override a WebSocket workload's messages in flight per connection",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=3, help="seconds per point (default 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--server-cpus", default="1" if ncpu > 1 else "0")
    p.add_argument("--client-cpus", default="0")
    p.add_argument("--port", type=int, default=18200)
    p.add_argument("--hello-server", default=None)
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--out", default=None, help="output folder (default results/raw/sweep-<stamp>)")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def _split(spec, what):
    name, sep, values = spec.partition("=")
    if not sep or not values:
        raise SystemExit("--%s wants NAME=V1,V2,... (got %r)" % (what, spec))
    return name.strip(), [v.strip() for v in values.split(",") if v.strip()]


def dimensions(args, definition):
    """[(kind, name, [values])] for the swept knobs and sysctls, and the fixed settings."""
    dims, fixed = [], {"knob": {}, "sysctl": {}}
    for spec in args.knob:
        name, values = _split(spec, "knob")
        if name not in definition.knobs:
            raise SystemExit(
                "%s does not take the knob %r (it takes: %s)"
                % (definition.name, name, ", ".join(definition.knobs) or "none")
            )
        dims.append(("knob", name, [knoblib.parse_value(name, v) for v in values]))
    for spec in args.sysctl:
        name, values = _split(spec, "sysctl")
        dims.append(("sysctl", name, values))
    for spec in args.set:
        name, values = _split(spec, "set")
        if name in knoblib.KNOBS:
            if name not in definition.knobs:
                raise SystemExit("%s does not take the knob %r" % (definition.name, name))
            fixed["knob"][name] = knoblib.parse_value(name, values[0])
        else:
            fixed["sysctl"][name] = values[0]
    if not dims:
        raise SystemExit("nothing to sweep: give --knob and/or --sysctl")
    return dims, fixed


def points(dims, fixed, grid):
    """Each point: {"knob": {...}, "sysctl": {...}, "label": str, "varies": (kind, name)}."""

    def make(assign, varies):
        p = {"knob": dict(fixed["knob"]), "sysctl": dict(fixed["sysctl"]), "varies": varies}
        for (kind, name), value in assign:
            p[kind][name] = value
        p["label"] = ", ".join("%s=%s" % (n, v) for (k, n), v in assign) or "defaults"
        return p

    if grid:
        keys = [(k, n) for k, n, _ in dims]
        return [
            make(list(zip(keys, combo)), None)
            for combo in itertools.product(*[vals for _, _, vals in dims])
        ]
    out = [make([], None)]
    for kind, name, values in dims:
        out += [make([((kind, name), v)], (kind, name)) for v in values]
    return out


def stats_delta(before, after):
    """after - before for every numeric counter (lists and dicts element-wise); gauges as
    they end."""
    out = {}
    for key, value in (after or {}).items():
        old = (before or {}).get(key)
        if key in GAUGES or old is None:
            out[key] = value
        elif isinstance(value, (int, float)) and isinstance(old, (int, float)):
            out[key] = value - old
        elif isinstance(value, list) and isinstance(old, list) and len(value) == len(old):
            out[key] = [a - b for a, b in zip(value, old)]
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = {k: v - old.get(k, 0) for k, v in value.items()}
        else:
            out[key] = value
    return out


def derived(stats):
    """The ratios worth reading beside a point."""

    def ratio(a, b):
        return stats[a] / stats[b] if stats.get(b) else None

    out = {
        "requests_per_batch": ratio("requests", "batches"),
        "cqes_per_wait": ratio("cqes", "waits"),
        "sends_per_request": ratio("sends", "requests"),
    }
    for key in (
        "enobufs",
        "short_sends",
        "recv_paused",
        "cq_overflows",
        "send_zc",
        "timeouts",
        "parse_errors",
        "connections_rejected",
    ):
        if key in stats:
            out[key] = stats[key]
    return out


def exit_stats(log_path, offset):
    """The last PMU_STATS line the server printed after `offset` in its log, or None."""
    try:
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            lines = [l for l in f if l.startswith(STATS_MARK)]
        return json.loads(lines[-1][len(STATS_MARK) :]) if lines else None
    except (OSError, ValueError):
        return None


def main(argv=None):
    args = parse_args(argv)
    if args.server not in registry.BY_NAME:
        raise SystemExit(
            "unknown server %r (known: %s)" % (args.server, ", ".join(registry.DEFAULT))
        )
    if args.workload not in wl.BY_NAME:
        raise SystemExit("unknown workload %r (known: %s)" % (args.workload, ", ".join(wl.DEFAULT)))
    definition = registry.BY_NAME[args.server]
    workload = wl.BY_NAME[args.workload]
    if args.connections:
        workload = dataclasses.replace(
            workload,
            connections=args.connections,
            title="%s (%d connections)" % (workload.title.split(",")[0], args.connections),
        )
    if args.ws_depth:
        workload = dataclasses.replace(
            workload,
            ws_depth=args.ws_depth,
            title="%s (%d in flight)" % (workload.title, args.ws_depth),
        )
    if not definition.supports(workload):
        raise SystemExit("%s does not serve the %s workload" % (definition.name, workload.name))
    dims, fixed = dimensions(args, definition)
    plan = points(dims, fixed, args.grid)
    server_cpus = procstat.parse_cpu_list(args.server_cpus)
    client_cpus = procstat.parse_cpu_list(args.client_cpus)
    os.sched_setaffinity(0, client_cpus)
    raise_fd_limit()

    out_dir = args.out or os.path.join(
        RESULTS_DIR, "raw", "sweep-" + time.strftime("%Y%m%d-%H%M%S")
    )
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    setup_log, wrk_log = os.path.join(logs, "setup.log"), os.path.join(logs, "wrk.log")
    server_log = os.path.join(logs, definition.name + ".log")

    sysctl_keys = sorted({n for k, n, _ in dims if k == "sysctl"} | set(fixed["sysctl"]))
    sysctls = Sysctls(sysctl_keys)  # exits unless root when there are any

    print("setting up (log: %s)" % os.path.relpath(setup_log), flush=True)
    if not wrk.find():
        from bench import provision

        provision.check_wrk(setup_log)
    unavailable, built = provision_servers([definition], args, setup_log)
    if unavailable:
        raise SystemExit("%s is unavailable: %s" % (definition.name, unavailable[definition.name]))
    if workload.needs == "files" or definition.files_only:
        built.files_root = files.prepare()  # the file workloads' files (bench/files.py)
    wsload_binary = None
    if workload.client == "wsload":
        wsload_binary, error = wsload.build(setup_log, build=not args.no_build)
        if error:
            raise SystemExit("the WebSocket load client is required: %s" % error)
    print(
        "%s, %s: %d point(s) × %d round(s) × %d s"
        % (
            definition.name,
            workload.title,
            len(plan),
            args.rounds,
            max(args.duration, workload.min_duration),
        ),
        flush=True,
    )

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    results = {p["label"]: [] for p in plan}
    status = 0
    try:
        for r in range(args.rounds):
            shift = r % len(plan)
            for p in plan[shift:] + plan[:shift]:
                sysctls.set(p["sysctl"])
                s = ServerProcess(
                    definition, args.port, server_cpus, server_log, built=built, knobs=p["knob"]
                )
                offset = os.path.getsize(server_log) if os.path.exists(server_log) else 0
                try:
                    s.start()
                    warm_up(s, args.warmup, client_cpus)
                    checks.CHECKS[workload.check](s.port)
                    before = (
                        checks.stats(s.port, definition.stats_path)
                        if definition.stats_path
                        else None
                    )
                    m = measure.point(
                        s,
                        workload,
                        args.duration,
                        client_cpus,
                        log=wrk_log,
                        wsload_binary=wsload_binary,
                        warmup=args.warmup,
                    )
                    after = (
                        checks.stats(s.port, definition.stats_path)
                        if definition.stats_path
                        else None
                    )
                finally:
                    s.stop()
                if after is not None:
                    m["stats"], m["stats_source"] = stats_delta(before, after), "endpoint"
                else:
                    found = exit_stats(server_log, offset)
                    if found is not None:
                        m["stats"], m["stats_source"] = found, "exit line (whole run)"
                m.update(round=r + 1, label=p["label"])
                results[p["label"]].append(m)
                d = derived(m.get("stats") or {})
                print(
                    "  r%d/%d  %-34s %11s req/s  CPU %6.2f µs/req  p99 %7.2f ms%s%s"
                    % (
                        r + 1,
                        args.rounds,
                        p["label"],
                        "{:,.0f}".format(m["rps"]),
                        m["cpu_us_per_req"] or 0,
                        m["lat_p99_ms"],
                        "  %.1f req/batch" % d["requests_per_batch"]
                        if d.get("requests_per_batch")
                        else "",
                        "  %.1f cqe/wait" % d["cqes_per_wait"] if d.get("cqes_per_wait") else "",
                    ),
                    flush=True,
                )
    except Unavailable as e:
        print("ERROR: %s is unavailable: %s" % (definition.name, e), file=sys.stderr)
        status = 1
    except BenchError as e:
        print("\nERROR: %s\n" % e, file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured", file=sys.stderr)
        status = 130
    finally:
        if built.files_root:
            files.remove(built.files_root)
        errors = sysctls.restore()
        if errors:
            print("WARNING: could not restore sysctls: %s" % "; ".join(errors), file=sys.stderr)
            status = status or 1

    rows = []
    for p in plan:
        ms = results[p["label"]]
        if not ms:
            continue
        row = report.summarize(ms)
        totals = {}
        for m in ms:
            for k, v in (m.get("stats") or {}).items():
                if isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0) + v
        row.update(
            label=p["label"],
            point=dict(p["knob"], **p["sysctl"]),
            varies=p["varies"],
            stats=totals or None,
            derived=derived(totals) if totals else None,
        )
        rows.append(row)
    text = sweep_table(definition, workload, rows, args)
    print("\n" + text)
    meta = {
        "args": vars(args),
        "server": definition.name,
        "workload": workload.name,
        "machine": report.machine(server_cpus, client_cpus),
        "hello_server": built.hello_server,
        "pythonpath": built.pythonpath,
        "sysctl_originals": sysctls.original,
    }
    report.write_json(
        os.path.join(out_dir, "sweep.json"),
        {"meta": meta, "points": rows, "rounds": [m for ms in results.values() for m in ms]},
    )
    flat = []
    for row in rows:
        f = {"label": row["label"], **{k: v for k, v in row["point"].items()}}
        f.update(
            {
                k: row[k]
                for k in (
                    "rps",
                    "cpu_us_per_req",
                    "core_us_per_req",
                    "lat_p50_ms",
                    "lat_p99_ms",
                    "socket_errors",
                    "rss_peak_mib",
                )
            }
        )
        f.update({k: v for k, v in (row["derived"] or {}).items()})
        flat.append(f)
    report.write_csv(os.path.join(out_dir, "sweep.csv"), flat)
    with open(os.path.join(out_dir, "sweep.md"), "w") as f:
        f.write(text + "\n")
    written = ["sweep.json", "sweep.csv", "sweep.md"]
    if not args.no_plots and rows:
        try:
            from bench import plots

            panels = []
            for kind, name, values in dims:
                if args.grid:
                    others = {n: vals[0] for k, n, vals in dims if n != name}
                    pts = [
                        (
                            str(v),
                            next(
                                (
                                    r
                                    for r in rows
                                    if r["point"].get(name) == v
                                    and all(r["point"].get(n) == ov for n, ov in others.items())
                                ),
                                None,
                            ),
                        )
                        for v in values
                    ]
                else:
                    pts = [
                        (
                            str(v),
                            next(
                                (
                                    r
                                    for r in rows
                                    if r["varies"] == (kind, name) and r["point"].get(name) == v
                                ),
                                None,
                            ),
                        )
                        for v in values
                    ]
                    base = next((r for r in rows if r["varies"] is None), None)
                    if base is not None:
                        pts = [("default", base)] + pts
                panels.append((name, [(x, r) for x, r in pts if r is not None]))
            written += [
                os.path.basename(p)
                for p in plots.sweep(out_dir, panels, "%s, %s" % (definition.label, workload.title))
            ]
        except Exception as e:
            print("chart failed: %s" % e, file=sys.stderr)
    print("results: %s/{%s}" % (os.path.relpath(out_dir), ",".join(written)))
    return status


def sweep_table(definition, workload, rows, args):
    lines = [
        "### %s — %s (median of %d × %d s; server CPUs %s, wrk CPUs %s)"
        % (
            definition.label,
            workload.title,
            args.rounds,
            max(args.duration, workload.min_duration),
            args.server_cpus,
            args.client_cpus,
        ),
        "",
        "| Point | Requests/sec | CPU µs/req | Latency p50 / p99 | Errors | req/batch | "
        "CQEs/wait | ENOBUFS | short sends |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r for r in rows if r["varies"] is None), rows[0] if rows else None)
    for r in rows:
        d = r["derived"] or {}
        rel = (
            " (%.2f×)" % (r["rps"] / base["rps"]) if base and base["rps"] and r is not base else ""
        )

        def num(v, fmt="%.1f"):
            return "-" if v is None else fmt % v

        lines.append(
            "| %s | %s%s | %s | %s / %s ms | %d | %s | %s | %s | %s |"
            % (
                r["label"],
                "{:,.0f}".format(r["rps"]),
                rel,
                num(r["cpu_us_per_req"], "%.2f"),
                num(r["lat_p50_ms"], "%.2f"),
                num(r["lat_p99_ms"], "%.2f"),
                r["socket_errors"] + r["status_errors"],
                num(d.get("requests_per_batch")),
                num(d.get("cqes_per_wait")),
                num(d.get("enobufs"), "%d"),
                num(d.get("short_sends"), "%d"),
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
