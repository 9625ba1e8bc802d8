"""Reads Autobahn|Testsuite reports (tools/autobahn.sh writes them).

    python tests/autobahn/summary.py REPORT_DIR [NAME]
        the counts per behaviour (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED),
        close FAILED, cases and seconds per group, and for each case that is not OK what
        the suite expected and what the server did. Exit status 1 on any FAILED or
        UNIMPLEMENTED case or any FAILED close behaviour, 2 when there is no report.
    python tests/autobahn/summary.py --table NAME=REPORT_DIR ...
        the counts of several runs side by side (a Markdown table), exit status 0.

REPORT_DIR is the directory with ``reports/index.json`` (wstest's outdir's parent) and
``wstest.log``: a case that log lists without a result fails too (wstest stops at the first
connection refused, with the results so far).
"""

import ast
import collections
import json
import os
import re
import sys
from typing import Any, Dict, List, Tuple

BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")


def case_key(case: str) -> List[int]:
    return [int(part) for part in case.split(".")]


def load(report_dir: str) -> Dict[str, Dict[str, Any]]:
    """The index's results of its one agent: case id -> behaviour, close, duration."""
    with open(os.path.join(report_dir, "reports", "index.json")) as f:
        index = json.load(f)
    if not index:
        raise ValueError("no results: wstest gave up before a case ended (did the server go?)")
    if len(index) != 1:
        raise ValueError("%s: expected one agent, found %s" % (report_dir, sorted(index)))
    results: Dict[str, Dict[str, Any]] = next(iter(index.values()))
    return results


def planned(report_dir: str) -> List[str]:
    """The cases wstest said it would run ("Cases = [...]" in its log), if it logged them."""
    try:
        with open(os.path.join(report_dir, "wstest.log")) as f:
            for line in f:
                if line.startswith("Cases = "):
                    return [str(c) for c in ast.literal_eval(line[len("Cases = ") :].strip())]
    except (OSError, ValueError, SyntaxError):
        pass
    return []


def failures(results: Dict[str, Dict[str, Any]]) -> List[str]:
    """The cases that fail the suite step: FAILED, UNIMPLEMENTED, or a FAILED close."""
    return sorted(
        (
            case
            for case, r in results.items()
            if r["behavior"] in ("FAILED", "UNIMPLEMENTED") or r["behaviorClose"] == "FAILED"
        ),
        key=case_key,
    )


def counts(results: Dict[str, Dict[str, Any]]) -> Tuple[Dict[str, int], int]:
    behaviour = collections.Counter(r["behavior"] for r in results.values())
    close_failed = sum(1 for r in results.values() if r["behaviorClose"] == "FAILED")
    return {b: behaviour.get(b, 0) for b in BEHAVIOURS}, close_failed


def plain(html: Any) -> str:
    return " ".join(re.sub(r"<[^>]+>", "", str(html)).split())


def describe(report_dir: str, case: str, r: Dict[str, Any]) -> List[str]:
    """What the suite expected of a case that is not OK, and what the server did."""
    lines = ["  %s: %s, close %s" % (case, r["behavior"], r["behaviorClose"])]
    path = os.path.join(report_dir, "reports", r.get("reportfile", ""))
    if not r.get("reportfile") or not os.path.exists(path):
        return lines
    with open(path) as f:
        detail = json.load(f)
    received = detail.get("received")
    shown = json.dumps(received)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    lines += [
        "    case:     " + plain(detail.get("description")),
        "    expected: " + plain(detail.get("expectation")),
        "    result:   " + plain(detail.get("result")) + " " + plain(detail.get("resultClose")),
        "    received: %s; close codes: ours %s, the server's %s %r%s"
        % (
            shown,
            detail.get("localCloseCode"),
            detail.get("remoteCloseCode"),
            detail.get("remoteCloseReason"),
            "; not clean: %s" % detail.get("wasNotCleanReason")
            if detail.get("wasNotCleanReason")
            else "",
        ),
    ]
    return lines


def summary(report_dir: str, name: str) -> int:
    try:
        results = load(report_dir)
    except (OSError, ValueError) as e:
        print("%s: no Autobahn report: %s" % (name, e))
        return 2
    # wstest stops at the first connection refused: a server that went away mid-run
    # leaves the cases after it without a result.
    missing = sorted(set(planned(report_dir)) - set(results), key=case_key)
    per_behaviour, close_failed = counts(results)
    groups: Dict[str, List[Any]] = collections.OrderedDict()
    for case in sorted(results, key=case_key):
        g = groups.setdefault(case.split(".")[0], [0, 0.0])
        g[0] += 1
        g[1] += results[case]["duration"] / 1000.0
    print(
        "%s: %s; close FAILED %d; %d cases"
        % (
            name,
            ", ".join("%s %d" % (b, per_behaviour[b]) for b in BEHAVIOURS),
            close_failed,
            len(results),
        )
    )
    print(
        "  groups (cases, seconds): "
        + ", ".join("%s.* %d %.1f" % (g, n, s) for g, (n, s) in groups.items())
    )
    for case in sorted(results, key=case_key):
        r = results[case]
        if r["behavior"] in ("NON-STRICT", "FAILED", "UNIMPLEMENTED") or r["behaviorClose"] not in (
            "OK",
            "INFORMATIONAL",
        ):
            print("\n".join(describe(report_dir, case, r)))
    failed = failures(results)
    if missing:
        print(
            "%s: FAILED: %d cases have no result (the run stopped before them): %s"
            % (name, len(missing), " ".join(missing[:20]))
        )
        return 1
    if failed:
        print("%s: FAILED: %s" % (name, " ".join(failed[:80])))
        return 1
    return 0


def table(pairs: List[str]) -> int:
    rows = []
    for pair in pairs:
        name, _, report_dir = pair.partition("=")
        per_behaviour, close_failed = counts(load(report_dir))
        rows.append([name] + [str(per_behaviour[b]) for b in BEHAVIOURS] + [str(close_failed)])
    print("| endpoint | " + " | ".join(BEHAVIOURS) + " | close FAILED |")
    print("|---" * (len(BEHAVIOURS) + 2) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def main() -> int:
    args = sys.argv[1:]
    if args and args[0] == "--table" and len(args) > 1:
        return table(args[1:])
    if len(args) in (1, 2) and not args[0].startswith("-"):
        return summary(args[0], args[1] if len(args) == 2 else args[0])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
