#!/usr/bin/env python3
"""Autobahn|Testsuite's performance cases (9.*: big messages, many fragments, 1,000 round
trips) against the WebSocket echo endpoints of the benchmark servers, side by side.

    python3 benchmarks/autobahn9.py                          # every server speaking WebSocket
    python3 benchmarks/autobahn9.py --servers hello_c,uvicorn_raw --cases '["9.1.*","9.7.*"]'

The test suite runs cases 1-7, 10, 12 and 13 (conformance); 9.* is slow and belongs here.
Each server is built and started as run.py does (pinned to the server CPUs), its /ws/echo is
checked, then ../shared/tools/autobahn/run.sh (or --autobahn) runs the cases against it,
pinned to the client CPUs. Prints, per case, what it sends and how long each server took
(Autobahn's own duration, ms), and the behaviour where it is not OK; writes autobahn9.md and
autobahn9.json (plus Autobahn's HTML reports) under results/raw/autobahn9-<stamp>/. Exit
status 1 if a case FAILED on any server, or a server could not be measured.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import REPO_DIR, RESULTS_DIR, BenchError, checks, procstat, registry  # noqa: E402
from bench.serverproc import ServerProcess, Unavailable  # noqa: E402
from bench.session import provision_servers, raise_fd_limit  # noqa: E402

RUN_SH_CANDIDATES = (
    os.environ.get("AUTOBAHN_RUN", ""),
    os.path.join(os.path.dirname(REPO_DIR), "shared", "tools", "autobahn", "run.sh"),
    "/work/shared/tools/autobahn/run.sh",
)


def ws_servers():
    return [d.name for d in registry.SERVERS if "ws" in d.caps]


def parse_args(argv=None):
    ncpu = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--servers",
        default=",".join(ws_servers()),
        help="comma-separated servers (default: every one speaking WebSocket: %(default)s)",
    )
    p.add_argument("--cases", default='["9.*"]', help="Autobahn case list, JSON (default 9.*)")
    p.add_argument("--autobahn", default=None, help="path of run.sh (default: shared tools)")
    p.add_argument("--server-cpus", default="1" if ncpu > 1 else "0")
    p.add_argument("--client-cpus", default="0")
    p.add_argument("--base-port", type=int, default=18300)
    p.add_argument("--out", default=None, help="output folder (default results/raw/...)")
    p.add_argument("--no-install", action="store_true", help="install nothing (apt, pip)")
    p.add_argument("--no-build", action="store_true", help="build nothing")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--hello-server", default=None)
    return p.parse_args(argv)


def find_run_sh(explicit):
    for path in (explicit,) if explicit else RUN_SH_CANDIDATES:
        if path and os.access(path, os.X_OK):
            return path
    raise SystemExit(
        "autobahn9: no Autobahn runner (run.sh) found; give --autobahn PATH or AUTOBAHN_RUN"
    )


def case_key(case_id):
    return [int(x) for x in case_id.split(".")]


def read_report(index_path):
    """{case id: {"behavior", "behaviorClose", "duration"}} from Autobahn's index.json."""
    with open(index_path) as f:
        index = json.load(f)
    cases = next(iter(index.values())) if index else {}
    return {
        case: {
            "behavior": v.get("behavior"),
            "behaviorClose": v.get("behaviorClose"),
            "duration_ms": v.get("duration"),
        }
        for case, v in cases.items()
    }


# Autobahn's descriptions of the 9.* cases, shortened for a table column.
SHORTER = (
    (
        r"Send fragmented (text|binary) message message with message payload of length [^(]*"
        r"\((\w+)\)\. Sent out in fragments of (\w+)\.?",
        r"\2 \1 message in fragments of \3",
    ),
    (
        r"Send (text|binary) message message with payload of length [^(]*\((\w+)\)\.?",
        r"\2 \1 message",
    ),
    (r"Sent out data in chops of (\d+) octets\.?", r"written in chops of \1 bytes"),
    (
        r"Send 1000 (text|binary) messages of payload size (\d+) to measure.*",
        r"1000 \1 messages of \2 bytes, one at a time",
    ),
)


def shorten(text):
    for pattern, repl in SHORTER:
        text = re.sub(pattern, repl, text)
    return text.strip()


def case_descriptions(report_dir, cases):
    """Autobahn's one-line description of each case, from its per-case JSON reports."""
    out = {}
    for name in os.listdir(report_dir):
        if not name.endswith(".json") or name == "index.json":
            continue
        try:
            with open(os.path.join(report_dir, name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        case = data.get("id")
        if case in cases:
            text = " ".join((data.get("description") or "").replace("<br>", " ").split())
            out[case] = shorten(text)[:80]
    return out


def table(results, descriptions):
    """Markdown: one row per case, one column per server (ms, and the behaviour if not OK)."""
    servers = list(results)
    cases = sorted({c for r in results.values() for c in r}, key=case_key)
    lines = [
        "| case | what | " + " | ".join(servers) + " |",
        "|---|---|" + "---|" * len(servers),
    ]
    for case in cases:
        cells = []
        for s in servers:
            r = results[s].get(case)
            if r is None:
                cells.append("-")
                continue
            cell = "%s ms" % (
                "{:,}".format(r["duration_ms"]) if r["duration_ms"] is not None else "?"
            )
            if r["behavior"] != "OK":
                cell += " %s" % r["behavior"]
            cells.append(cell)
        lines.append("| %s | %s | %s |" % (case, descriptions.get(case, ""), " | ".join(cells)))
    totals = []
    for s in servers:
        ms = [r["duration_ms"] for r in results[s].values() if r["duration_ms"] is not None]
        totals.append(f"{sum(ms):,} ms")
    lines.append("| all | total time | %s |" % " | ".join(totals))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    run_sh = find_run_sh(args.autobahn)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry.BY_NAME]
    if unknown:
        raise SystemExit("unknown servers: %s" % ", ".join(unknown))
    server_cpus = procstat.parse_cpu_list(args.server_cpus)
    client_cpus = procstat.parse_cpu_list(args.client_cpus)
    os.sched_setaffinity(0, client_cpus)
    raise_fd_limit()
    out_dir = args.out or os.path.join(
        RESULTS_DIR, "raw", "autobahn9-" + time.strftime("%Y%m%d-%H%M%S")
    )
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    log = os.path.join(out_dir, "logs", "setup.log")
    defs = [registry.BY_NAME[n] for n in names]
    args.rebuild = getattr(args, "rebuild", False)
    unavailable, built = provision_servers(defs, args, log)
    results, problems, exit_status = {}, {}, 0
    for index, d in enumerate(defs):
        if d.name in unavailable:
            problems[d.name] = "unavailable: %s" % unavailable[d.name]
            if d.project:
                exit_status = 1
            continue
        s = ServerProcess(
            d,
            args.base_port + index,
            server_cpus,
            os.path.join(out_dir, "logs", d.name + ".log"),
            built=built,
        )
        try:
            s.start()
            checks.ws_echo(s.port)
            report_dir = os.path.join(out_dir, d.name)
            url = "ws://127.0.0.1:%d/ws/echo" % s.port
            print("%s: Autobahn %s against %s ..." % (d.name, args.cases, url), flush=True)
            started = time.monotonic()
            p = subprocess.run(
                [run_sh, url, args.cases, report_dir],
                capture_output=True,
                text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, client_cpus),
            )
            print(p.stdout.rstrip(), flush=True)
            index_json = os.path.join(report_dir, "reports", "index.json")
            if not os.path.exists(index_json):
                raise BenchError("Autobahn wrote no report: %s" % (p.stdout + p.stderr)[-800:])
            results[d.name] = read_report(index_json)
            print("  %.0f s" % (time.monotonic() - started), flush=True)
            if p.returncode != 0:
                exit_status = 1
        except (Unavailable, BenchError, checks.NotSupported) as e:
            problems[d.name] = str(e).splitlines()[0]
            exit_status = 1
            print("%s: %s" % (d.name, problems[d.name]), file=sys.stderr, flush=True)
        finally:
            s.stop()
    descriptions = {}
    for name in results:
        descriptions.update(
            case_descriptions(os.path.join(out_dir, name, "reports"), results[name])
        )
    text = "Autobahn|Testsuite %s, /ws/echo of each server (Autobahn's duration per case)\n\n" % (
        args.cases
    )
    text += table(results, descriptions) if results else "(no server measured)"
    if problems:
        text += "\n\nNot measured:\n" + "\n".join("- %s: %s" % kv for kv in problems.items())
    print("\n" + text)
    with open(os.path.join(out_dir, "autobahn9.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, "autobahn9.json"), "w") as f:
        json.dump({"cases": args.cases, "results": results, "problems": problems}, f, indent=1)
    print("results: %s" % os.path.relpath(out_dir))
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
