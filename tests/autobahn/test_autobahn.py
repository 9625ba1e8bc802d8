"""Tests of the Autobahn step itself (tools/autobahn.sh and tests/autobahn/summary.py): that
its verdict fails on what it must fail on, on made-up reports and against a real wrong echo
server, so that a green autobahn step means something. tools/test.sh runs them before the
step; they need what the step needs (a CPython 2.7 for the suite, the websockets package for
the servers they start)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SUMMARY = HERE / "summary.py"
DRIVER = ROOT / "tools" / "autobahn.sh"


def write_report(tmp: Path, results: Dict[str, Tuple[str, str]]) -> Path:
    """A report directory as wstest writes it: reports/index.json and a file per case."""
    reports = tmp / "reports"
    reports.mkdir(parents=True)
    index: Dict[str, Dict[str, Any]] = {}
    for case, (behaviour, close) in results.items():
        name = "server_case_%s.json" % case.replace(".", "_")
        index[case] = {
            "behavior": behaviour,
            "behaviorClose": close,
            "duration": 12,
            "reportfile": name,
        }
        (reports / name).write_text(
            json.dumps(
                {
                    "description": "Send <b>case %s</b>" % case,
                    "expectation": "an echo",
                    "result": "Actual events differ",
                    "resultClose": "",
                    "received": [["message", "x", False]],
                    "localCloseCode": 1000,
                    "remoteCloseCode": 1002,
                    "remoteCloseReason": None,
                    "wasNotCleanReason": None,
                }
            )
        )
    (reports / "index.json").write_text(json.dumps({"server": index}))
    return tmp


def summarize(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, str(SUMMARY), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "results, rc",
    [
        ({"1.1.1": ("OK", "OK"), "7.1.6": ("INFORMATIONAL", "INFORMATIONAL")}, 0),
        ({"1.1.1": ("OK", "OK"), "3.2": ("NON-STRICT", "OK")}, 0),
        ({"1.1.1": ("OK", "OK"), "7.1.5": ("FAILED", "WRONG CODE")}, 1),
        ({"1.1.1": ("OK", "OK"), "12.1.1": ("UNIMPLEMENTED", "OK")}, 1),
        ({"1.1.1": ("OK", "OK"), "7.3.1": ("OK", "FAILED")}, 1),
    ],
)
def test_summary_verdict(tmp_path: Path, results: Dict[str, Tuple[str, str]], rc: int) -> None:
    report = write_report(tmp_path, results)
    done = summarize(str(report), "server")
    assert done.returncode == rc, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    for behaviour in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"):
        n = sum(1 for b, _ in results.values() if b == behaviour)
        assert "%s %d" % (behaviour, n) in first
    for case, (behaviour, close) in results.items():
        # Every case that is not OK is described: what was sent and what came back.
        shown = behaviour not in ("OK", "INFORMATIONAL") or close not in ("OK", "INFORMATIONAL")
        assert (("  %s: " % case) in done.stdout) == shown
        if shown:
            assert "Send case %s" % case in done.stdout  # HTML tags stripped
            assert "the server's 1002" in done.stdout
    if rc:
        failed = [
            c for c, (b, cl) in results.items() if "FAILED" in (b, cl) or b == "UNIMPLEMENTED"
        ]
        assert done.stdout.splitlines()[-1] == "server: FAILED: " + " ".join(failed)


def test_summary_fails_cases_without_result(tmp_path: Path) -> None:
    # wstest stops at the first connection refused and keeps the results so far: the
    # cases its log planned and that have no result fail the run.
    report = write_report(tmp_path, {"1.1.1": ("OK", "OK"), "1.1.2": ("OK", "OK")})
    log = "Cases = ['1.1.1', '1.1.2', '1.1.3', '2.1']\nServers = [u'ws://127.0.0.1:9/']\n"
    (report / "wstest.log").write_text(log)
    done = summarize(str(report), "server")
    assert done.returncode == 1, done.stdout
    assert "server: FAILED: 2 cases have no result (the run stopped before them): 1.1.3 2.1" in (
        done.stdout
    )
    (report / "wstest.log").write_text(log.replace(", '1.1.3', '2.1'", ""))
    assert summarize(str(report), "server").returncode == 0


def test_summary_without_report(tmp_path: Path) -> None:
    done = summarize(str(tmp_path), "server")
    assert done.returncode == 2
    assert "no Autobahn report" in done.stdout


def test_summary_table(tmp_path: Path) -> None:
    a = write_report(tmp_path / "a", {"1.1.1": ("OK", "OK"), "3.2": ("NON-STRICT", "OK")})
    b = write_report(tmp_path / "b", {"1.1.1": ("FAILED", "OK"), "3.2": ("OK", "FAILED")})
    done = summarize("--table", "ours=%s" % a, "theirs=%s" % b)
    assert done.returncode == 0
    assert "| ours | 1 | 1 | 0 | 0 | 0 | 0 |" in done.stdout
    assert "| theirs | 1 | 0 | 0 | 0 | 1 | 1 |" in done.stdout


@pytest.fixture()
def echo_server(request: Any) -> Iterator[int]:
    """A websockets echo server on a free port; the parameter "wrong" makes it append a
    byte to every message it echoes."""
    import asyncio

    from websockets.asyncio.server import serve

    wrong = request.param == "wrong"
    ready = threading.Event()
    state: Dict[str, Any] = {}

    async def echo(ws: Any) -> None:
        async for message in ws:
            if wrong:
                message = message + ("x" if isinstance(message, str) else b"x")
            await ws.send(message)

    async def main() -> None:
        state["stop"] = asyncio.get_running_loop().create_future()
        async with serve(echo, "127.0.0.1", 0) as server:
            state["port"] = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await state["stop"]

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield state["port"]
    loop.call_soon_threadsafe(state["stop"].set_result, None)
    thread.join(30)


def drive(port: int, tmp_path: Path, cases: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, AUTOBAHN_CASES=cases, AUTOBAHN_REPORTS=str(tmp_path))
    done = subprocess.run(
        ["bash", str(DRIVER), "--url", "ws://127.0.0.1:%d/" % port, "peer"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    # 2: the suite could not run at all (no CPython 2.7, no PyPI): a failure here too.
    assert done.returncode != 2, done.stdout + done.stderr
    return done


@pytest.mark.parametrize("echo_server", ["right"], indirect=True)
def test_driver_passes_an_echo_server(echo_server: int, tmp_path: Path) -> None:
    done = drive(echo_server, tmp_path, '["1.1.1","1.1.2","1.2.1","2.1"]')
    assert done.returncode == 0, done.stdout + done.stderr
    assert "peer: OK 4, NON-STRICT 0" in done.stdout
    assert (tmp_path / "peer" / "reports" / "index.html").exists()


@pytest.mark.parametrize("echo_server", ["wrong"], indirect=True)
def test_driver_fails_a_wrong_echo(echo_server: int, tmp_path: Path) -> None:
    done = drive(echo_server, tmp_path, '["1.1.1","1.1.2","1.2.1","2.1"]')
    assert done.returncode == 1, done.stdout + done.stderr
    # The three echo cases fail; 2.1 (a ping) is answered by the library itself.
    assert "peer: FAILED: 1.1.1 1.1.2 1.2.1\n" in done.stdout
    assert "autobahn: FAILED: peer" in done.stdout
