"""Tests of the benchmark runner's own parts: answer checks against tiny local servers,
/proc readings, medians, sweep planning. No speed is asserted here.

    python3 -m pytest benchmarks/tests -q
"""

import os
import socket
import sys
import time

import pytest
from tinyserver import ThreadedServer

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, BENCH)

import sweep  # noqa: E402
from bench import BenchError, WrongAnswer, checks, procstat, report  # noqa: E402

HELLO = b'{"message":"Hello, World!"}'


class TinyServer(ThreadedServer):
    """A one-thread HTTP/1.1 server answering every request with `answer(request_bytes)`,
    keep-alive and pipelining included (it splits requests on the blank line)."""

    def __init__(self, answer):
        self.answer = answer
        super().__init__(16)

    def _conn(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                out, close = self.answer(head, body)
                conn.sendall(out)
                if close:
                    return

    def close(self):
        self.sock.close()


def response(body, content_type="application/json", status=200, close=False):
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
        % (status, content_type.encode(), len(body), b"Connection: close\r\n" if close else b"")
        + body
    )


@pytest.fixture
def good():
    def answer(head, body):
        close = b"connection: close" in head.lower()
        path = head.split(b" ")[1]
        if path == b"/echo":
            return response(body, "application/octet-stream", close=close), close
        if path == b"/16k":
            return response(b"x" * 16384, "application/octet-stream", close=close), close
        return response(HELLO, close=close), close

    server = TinyServer(answer)
    yield server
    server.close()


def test_checks_pass_on_a_correct_server(good):
    assert checks.hello(good.port)["body_bytes"] == len(HELLO)
    checks.pipelined(good.port, depth=16)
    checks.close(good.port)
    checks.get_bytes(good.port, "/16k", 16384)
    checks.echo(good.port, 65536)


@pytest.mark.parametrize(
    "body,ctype",
    [
        (b'{"message":"Hello"}', "application/json"),
        (HELLO, "text/plain"),
    ],
)
def test_wrong_hello_is_a_wrong_answer(body, ctype):
    server = TinyServer(lambda head, _body: (response(body, ctype), False))
    try:
        with pytest.raises(WrongAnswer):
            checks.hello(server.port)
    finally:
        server.close()


def test_echo_of_other_bytes_is_a_wrong_answer():
    server = TinyServer(
        lambda head, body: (response(body[::-1], "application/octet-stream"), False)
    )
    try:
        with pytest.raises(WrongAnswer):
            checks.echo(server.port, 4096)
    finally:
        server.close()


def test_501_means_not_supported():
    server = TinyServer(lambda head, body: (response(b"", status=501), False))
    try:
        with pytest.raises(checks.NotSupported):
            checks.echo(server.port, 1024)
    finally:
        server.close()


def test_closing_after_each_answer_declines_pipelining():
    server = TinyServer(lambda head, body: (response(HELLO, close=True), True))
    try:
        with pytest.raises(checks.NotSupported):
            checks.pipelined(server.port)
    finally:
        server.close()


def test_no_server_is_not_a_wrong_answer():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BenchError) as info:
        checks.hello(port)
    assert not isinstance(info.value, WrongAnswer)


def test_procstat_reads_this_process():
    me = os.getpid()
    assert me in procstat.tree(me)
    assert procstat.rss_bytes([me]) > 1 << 20
    before = procstat.cpu_ticks([me])
    sum(i * i for i in range(3_000_000))
    after = procstat.cpu_ticks([me])
    assert procstat.cpu_delta_seconds(before, after) > 0
    assert procstat.parse_cpu_list("0-2,5") == {0, 1, 2, 5}


def test_summarize_takes_medians_and_sums_errors():
    points = [
        dict(
            rps=r,
            cpu_us_per_req=c,
            socket_errors=e,
            status_errors=0,
            requests=100,
            lat_p50_ms=1.0,
            lat_p99_ms=2.0,
            rss_peak_mib=m,
        )
        for r, c, e, m in ((10, 3.0, 0, 5), (30, 1.0, 2, 7), (20, 2.0, 1, 6))
    ]
    row = report.summarize(points)
    assert (row["rps"], row["cpu_us_per_req"], row["socket_errors"]) == (20, 2.0, 3)
    assert (row["rps_min"], row["rps_max"], row["rss_peak_mib"]) == (10, 30, 7)


def test_sweep_points_one_at_a_time_and_grid():
    dims = [("knob", "buf_size", [1024, 4096]), ("sysctl", "net.core.somaxconn", ["128"])]
    fixed = {"knob": {"threads": 1}, "sysctl": {}}
    alone = sweep.points(dims, fixed, grid=False)
    assert [p["label"] for p in alone] == [
        "defaults",
        "buf_size=1024",
        "buf_size=4096",
        "net.core.somaxconn=128",
    ]
    assert all(p["knob"]["threads"] == 1 for p in alone)
    assert len(sweep.points(dims, fixed, grid=True)) == 2


def test_stats_delta_keeps_gauges_and_subtracts_lists():
    before = {
        "requests": 10,
        "connections_open": 5,
        "batch_hist": [1, 2],
        "status_classes": {"2xx": 9, "4xx": 1},
    }
    after = {
        "requests": 25,
        "connections_open": 3,
        "batch_hist": [4, 2],
        "status_classes": {"2xx": 23, "4xx": 2, "7xx": 1},
    }
    assert sweep.stats_delta(before, after) == {
        "requests": 15,
        "connections_open": 3,
        "batch_hist": [3, 0],
        "status_classes": {"2xx": 14, "4xx": 1, "7xx": 1},
    }


def test_resilience_clients_count_answers_and_failures():
    import time

    import resilience

    server = TinyServer(lambda head, body: (response(b"v7 12345", "text/plain", close=True), True))
    try:
        clients = resilience.Clients(server.port, threads=1)
        deadline = time.monotonic() + 5
        while clients.answered < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        clients.stop()
    finally:
        server.close()
    assert clients.answered >= 5 and clients.versions["v7"] == clients.answered
    assert not clients.failed
    # Nothing listens there: every request fails, and is counted.
    clients = resilience.Clients(resilience.free_port(), threads=1)
    time.sleep(0.2)
    clients.stop()
    assert clients.answered == 0 and sum(clients.failed.values()) > 0


def test_resilience_refuses_unknown_scenarios():
    import resilience

    with pytest.raises(SystemExit) as exit:
        resilience.main(["--scenarios", "reload,nope"])
    assert exit.value.code == 2


def test_adapter_cost_splits_a_process_by_thread_name():
    """adapter_cost.py --by-thread: thread_times reads every thread of a process (name, CPU
    ticks, context switches); by_thread turns two readings into per-request figures by name,
    leaving out threads that were not alive at both."""
    import threading

    import adapter_cost

    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    t = threading.Thread(target=spin, name="spinner")
    t.start()
    try:
        before = adapter_cost.thread_times(os.getpid())
        assert os.getpid() in before and t.native_id in before
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            pass
        after = adapter_cost.thread_times(os.getpid())
    finally:
        stop.set()
        t.join()
    name = before[t.native_id][0]
    split = adapter_cost.by_thread(before, after, 100)
    assert split[name][0] + split[name][1] > 0  # the spinner used CPU
    # made-up readings: a thread of each name, one born between them
    tick = 0.01
    before = {1: ("pmu-ring-0", 10, 5, 100, 1), 2: ("pmu-wsgi-0", 0, 0, 0, 0)}
    after = {
        1: ("pmu-ring-0", 30, 15, 140, 3),
        2: ("pmu-wsgi-0", 100, 0, 0, 20),
        3: ("pmu-wsgi-1", 50, 50, 5, 5),
    }
    split = adapter_cost.by_thread(before, after, 1000, tick)
    assert set(split) == {"pmu-ring-0", "pmu-wsgi-0"}
    assert split["pmu-ring-0"] == pytest.approx((200.0, 100.0, 0.04, 0.002))
    assert split["pmu-wsgi-0"] == pytest.approx((1000.0, 0.0, 0.0, 0.02))


def test_adapter_cost_floor_answers_as_the_flask_app():
    """adapter_cost.py's floor row, started as it starts it (the CLI, --interface native):
    flask_server.py's app from a native handler gives the client what the same app gives
    through the WSGI adapter."""
    pytest.importorskip("flask")
    import subprocess
    import urllib.request

    import adapter_cost

    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [BENCH, os.path.join(BENCH, "servers"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    answers = {}
    for row in ("floor", "flask"):
        port = adapter_cost.free_port()
        cmd = [sys.executable, "-m", "pymongoose_uring", *adapter_cost.OURS[row]]
        proc = subprocess.Popen(cmd + ["--port", str(port)], env=env, cwd="/tmp")
        try:
            try:
                adapter_cost.wait_up(port, proc, timeout=20)
            except RuntimeError as e:
                if "exited" in str(e) and row == "floor":
                    pytest.skip("pymongoose_uring is not installed for %s" % sys.executable)
                raise
            with urllib.request.urlopen("http://127.0.0.1:%d/" % port) as resp:
                answers[row] = (resp.status, resp.headers["Content-Type"], resp.read())
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert answers["floor"] == answers["flask"]
    assert answers["floor"][0] == 200 and answers["floor"][2]
