"""Tests of the WebSocket parts of the runner: the registry and workloads, the answer checks
and the C load client (wsload) against a tiny local WebSocket server, honest and faulty, and
the figures and tables made from wsload's output. No speed is asserted here.

    python3 -m pytest benchmarks/tests/test_ws.py -q
"""

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import struct
import sys
import threading

import pytest
from tinyserver import ThreadedServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run  # noqa: E402
from bench import (  # noqa: E402
    BenchError,
    WrongAnswer,
    checks,
    registry,
    report,
    workloads as wl,  # noqa: E402
    wsload,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class TinyWsServer(ThreadedServer):
    """A threaded WebSocket server on 127.0.0.1: `mode` "echo" (each message back to its
    sender) or "broadcast" (to every connection, the sender included). `fault(n, payload)`,
    called with the server-wide message count, returns what to send instead (None: drop it).
    `status` other than 101 answers every handshake with that status."""

    def __init__(self, mode="echo", fault=None, status=101, answer_close=True, fragment=False):
        self.mode, self.fault, self.status, self.answer_close = mode, fault, status, answer_close
        self.fragment = fragment  # each message in two frames, a ping between them
        self.pongs = 0  # pongs that answered our ping with its payload
        self.count = 0
        self.lock = threading.Lock()
        self.clients = []
        super().__init__(128)

    @staticmethod
    def frame(opcode, payload, fin=True):
        n, b0 = len(payload), (0x80 if fin else 0) | opcode
        if n < 126:
            head = struct.pack("!BB", b0, n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, 126, n)
        else:
            head = struct.pack("!BBQ", b0, 127, n)
        return head + payload

    def message(self, opcode, payload):
        if not self.fragment:
            return self.frame(opcode, payload)
        half = len(payload) // 2
        return (
            self.frame(opcode, payload[:half], fin=False)
            + self.frame(0x9, b"are you there")
            + self.frame(0x0, payload[half:])
        )

    def _conn(self, conn):
        buf = b""

        def take(n):
            nonlocal buf
            while len(buf) < n:
                data = conn.recv(65536)
                if not data:
                    raise EOFError
                buf += data
            out, buf = buf[:n], buf[n:]
            return out

        client = (conn, threading.Lock())
        try:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            if self.status != 101:
                conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % self.status)
                return
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept
            )
            with self.lock:
                self.clients.append(client)
            while True:
                b0, b1 = take(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", take(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", take(8))[0]
                mask = take(4)
                payload = bytes(b ^ mask[i & 3] for i, b in enumerate(take(n)))
                opcode = b0 & 0x0F
                if opcode == 0xA:  # a pong (to our ping between fragments)
                    with self.lock:
                        self.pongs += payload == b"are you there"
                    continue
                if opcode == 0x8:
                    if self.answer_close:
                        with client[1]:
                            conn.sendall(self.frame(0x8, payload[:2]))
                    return
                with self.lock:
                    self.count += 1
                    count = self.count
                    targets = list(self.clients) if self.mode == "broadcast" else [client]
                out = self.fault(count, payload) if self.fault else payload
                if out is None:
                    continue
                for c, lock in targets:
                    with lock:
                        try:
                            c.sendall(self.message(opcode, out))
                        except OSError:
                            pass
        except (OSError, EOFError, StopIteration):
            pass
        finally:
            with self.lock:
                if client in self.clients:
                    self.clients.remove(client)
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def tiny():
    servers = []

    def make(**kwargs):
        s = TinyWsServer(**kwargs)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


# ---- registry and workloads ----


def test_ws_workloads_are_the_issues():
    echo, bcast = wl.BY_NAME["ws-echo"], wl.BY_NAME["ws-broadcast"]
    assert (echo.connections, echo.ws_size, echo.ws_depth, echo.ws_mode) == (64, 32, 16, "echo")
    assert (bcast.connections, bcast.ws_size, bcast.ws_mode) == (1000, 32, "broadcast")
    assert echo.path == "/ws/echo" and bcast.path == "/ws/broadcast"
    assert echo.unit == "msg" and wl.BY_NAME["keepalive"].unit == "req"
    assert echo.compare_with == "pipelined" and echo.compare_with in wl.BY_NAME
    assert echo.needs == "ws" and bcast.needs == "ws-broadcast"
    for w in (echo, bcast):
        assert w.client == "wsload" and w.check in checks.CHECKS


def test_only_servers_that_speak_websocket_run_the_ws_workloads():
    echo = wl.BY_NAME["ws-echo"]
    speaking = {d.name for d in registry.SERVERS if d.supports(echo)}
    assert {"uvicorn_raw", "granian_asgi", "aiohttp"} <= speaking
    assert not speaking & {"nginx", "flask", "gunicorn", "granian_wsgi"}
    for name in speaking:
        assert "ws" in registry.BY_NAME[name].caps
    # Broadcast is a capability of its own (a server may echo and not broadcast).
    broadcasting = {d.name for d in registry.SERVERS if d.supports(wl.BY_NAME["ws-broadcast"])}
    assert {"uvicorn_raw", "granian_asgi", "aiohttp"} <= broadcasting <= speaking
    # What serves /ws/* on the raw ASGI app is the Starlette app, and the tables say so.
    assert "Starlette" in registry.WS_LABELS["uvicorn_raw"]


def test_a_ws_workload_brings_its_comparison_base_for_our_servers_only():
    echo = wl.BY_NAME["ws-echo"]
    assert [w.name for w in run.comparison_workloads([echo])] == ["pipelined"]
    assert run.comparison_workloads([echo, wl.BY_NAME["pipelined"]]) == []
    pipelined = wl.BY_NAME["pipelined"]
    ours = dataclasses.replace(registry.BY_NAME["aiohttp"], kind="ours")
    assert run.comparison_server(ours, pipelined, [echo])
    assert not run.comparison_server(registry.BY_NAME["aiohttp"], pipelined, [echo])
    no_ws = registry.BY_NAME["nginx"]
    assert not run.comparison_server(no_ws, pipelined, [echo])


def test_run_accepts_the_ws_workloads():
    args = run.parse_args(["--workloads", "ws-echo,ws-broadcast"])
    assert args.workloads == "ws-echo,ws-broadcast" and not args.servers_given
    assert run._names(args.workloads, wl.BY_NAME, "workloads") == ["ws-echo", "ws-broadcast"]
    assert run.parse_args(["--servers", "nginx"]).servers_given


def test_a_ws_only_run_leaves_out_the_servers_without_websocket():
    ws = [wl.BY_NAME["ws-echo"], wl.BY_NAME["ws-broadcast"]]
    defs = [registry.BY_NAME[n] for n in registry.DEFAULT]
    idle = {d.name for d in run.idle_servers(defs, ws)}
    assert {"nginx", "flask", "gunicorn", "granian_wsgi"} <= idle
    assert not idle & {"hello_c", "pymongoose_uring", "uvicorn_raw", "granian_asgi", "aiohttp"}
    # A keep-alive run starts every default server but those there for the files alone.
    assert run.idle_servers(defs, [wl.BY_NAME["keepalive"]]) == [d for d in defs if d.files_only]


# ---- the answer checks ----


def test_ws_checks_pass_on_a_correct_server(tiny):
    checks.ws_echo(tiny().port)
    checks.ws_broadcast(tiny(mode="broadcast").port)


def test_ws_echo_check_catches_changed_bytes(tiny):
    server = tiny(fault=lambda n, p: p[:-1] + bytes([p[-1] ^ 1]) if n == 2 else p)
    with pytest.raises(WrongAnswer):
        checks.ws_echo(server.port)


def test_ws_broadcast_check_needs_the_other_connection(tiny):
    # An echo server never delivers to the other connection.
    with pytest.raises(WrongAnswer):
        checks.ws_broadcast(tiny().port, patience=0.5)


def test_ws_handshake_501_declines_and_404_is_wrong(tiny):
    with pytest.raises(checks.NotSupported):
        checks.ws_echo(tiny(status=501).port)
    with pytest.raises(WrongAnswer):
        checks.ws_echo(tiny(status=404).port)


# ---- wsload's output ----


def result_line(**fields):
    base = {
        "mode": "echo",
        "messages": 1000,
        "bytes": 32000,
        "duration_s": 2.0,
        "published": 0,
        "client_cpu_util": 0.4,
        "client_cpu_s": 0.8,
        "latency_us": {"mean": 10.0, "p50": 9.0, "p90": 12.0, "p99": 20.0, "max": 30.0},
        "error": None,
    }
    base.update(fields)
    return "WSLOAD_RESULT " + json.dumps(base)


def test_wsload_lines_parse():
    assert wsload.marker_time("WSLOAD_START 12.5\n", wsload.START) == 12.5
    assert wsload.marker_time("WSLOAD_END 13.5\n", wsload.START) is None
    r = wsload.parse_result(result_line(messages=7))
    assert r["messages"] == 7 and wsload.check_result(r) is r
    assert wsload.parse_result("WSLOAD_START 1") is None


def test_wsload_errors_are_wrong_answers():
    with pytest.raises(WrongAnswer, match="lost"):
        wsload.check_result(wsload.parse_result(result_line(error="3 messages lost")), "", 2)
    with pytest.raises(WrongAnswer):
        wsload.check_result(wsload.parse_result(result_line(messages=0)))
    with pytest.raises(BenchError):
        wsload.check_result(None, "segfault", -11)


def test_wsload_argv_carries_the_workload():
    argv = wsload.argv("/bin/wsload", 1234, wl.BY_NAME["ws-broadcast"], 2, 1)
    opts = dict(zip(argv[1::2], argv[2::2]))
    assert opts["--port"] == "1234" and opts["--mode"] == "broadcast"
    assert opts["--connections"] == "1000" and opts["--path"] == "/ws/broadcast"
    assert opts["--size"] == "32" and opts["--duration"] == "2"


def test_ws_figures_scale_server_cpu_to_the_counted_interval():
    from bench import measure, procstat

    result = wsload.parse_result(result_line(messages=100_000, duration_s=2.0))
    tck = procstat.CLK_TCK
    # The server was read over 2.5 s (late marks) and used 2.5 s of CPU: 1 s per s, so the
    # 2 s the client counted cost 2 s, 20 µs per message.
    start = (10.0, {1: 0}, 0)
    end = (12.5, {1: int(2.5 * tck)}, int(2.5 * tck))
    p = measure.ws_figures(result, start, end, 1 << 20, 2 << 20)
    assert p["rps"] == 50_000
    assert p["cpu_us_per_req"] == pytest.approx(20.0)
    assert p["server_cpu_util"] == pytest.approx(1.0)
    assert p["client_cpu_util"] == 0.4 and p["recovered"]
    assert p["client_us_per_msg"] == pytest.approx(8.0)  # 0.8 s for 100,000 messages


def test_ws_tables_count_messages_and_show_the_http_ratio():
    echo, pipelined = wl.BY_NAME["ws-echo"], wl.BY_NAME["pipelined"]
    row = dict(
        rps=1000.0,
        cpu_us_per_req=0.9,
        lat_p50_ms=1.0,
        lat_p99_ms=2.0,
        rss_peak_mib=8.0,
        socket_errors=0,
        status_errors=0,
        rounds=1,
        server_cpu_util=0.97,
        client_cpu_util=0.5,
        client_us_per_msg=0.45,
    )
    summary = {
        ("hello_c", "ws-echo"): row,
        ("hello_c", "pipelined"): dict(row, cpu_us_per_req=0.6),
        ("aiohttp", "ws-echo"): dict(row, cpu_us_per_req=10.0),
    }
    text = report.tables(
        [echo], summary, {"hello_c": "C"}, "hello_c", [], [], {"duration_s": 2}, extra=[pipelined]
    )
    assert "Messages/sec" in text and "CPU µs/msg" in text and "97% / 50% | 0.45 |" in text
    assert "| C | 0.90 | 0.60 | 1.50× |" in text
    # The base workload's own table is not repeated, and aiohttp (no pipelined) has no ratio.
    assert "### 16-deep" not in text and "| aiohttp | 10.00" not in text
    # The issue's targets measured here: the C server's ratio (1.5x allowed) only.
    assert (
        "| C example: a WebSocket message vs a 16-deep pipelined request | 0.90 / 0.60 | 1.50× | at most 1.5× | met |"
        in text
    )
    assert "ASGI adapter" not in text


def test_targets_say_when_they_are_not_met():
    row = dict(cpu_us_per_req=10.0)
    summary = {
        ("pymongoose_uring_asgi", "ws-echo"): row,
        ("uvicorn_raw", "ws-echo"): dict(row, cpu_us_per_req=15.0),
        ("granian_asgi", "ws-echo"): dict(row, cpu_us_per_req=40.0),
    }
    lines = report.targets_table(summary).splitlines()
    assert len(lines) == 6  # heading, blank, header, rule, two targets measured
    assert "0.67× | at most 0.5× | **not met** |" in lines[4]
    assert "0.25× | at most 0.5× | met |" in lines[5]


# ---- the load client itself, briefly, against the tiny server ----


@pytest.fixture(scope="module")
def wsload_binary(tmp_path_factory):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    path, error = wsload.build(binary=str(tmp_path_factory.mktemp("wsload") / "wsload"))
    assert error is None, error
    return path


def short(name, **changes):
    return dataclasses.replace(wl.BY_NAME[name], timeout=3, **changes)


def load(binary, server, workload, procs=1):
    marks = []
    result = wsload.run(
        binary,
        server.port,
        workload,
        0.3,
        os.sched_getaffinity(0),
        warmup=0.1,
        on_start=lambda: marks.append("start"),
        on_end=lambda: marks.append("end"),
        procs=procs,
    )
    assert marks == ["start", "end"]
    return result


def test_wsload_echo_counts_checked_echoes(wsload_binary, tiny):
    w = short("ws-echo", connections=2, ws_depth=4)
    r = load(wsload_binary, tiny(), w)
    assert r["error"] is None and r["messages"] > 0
    assert r["bytes"] == r["messages"] * 32 and r["total_messages"] >= r["messages"]
    assert 0 < r["latency_us"]["p50"] <= r["latency_us"]["max"]
    # Messages bigger than one frame header's short form, and smaller than the id block.
    for size in (70000, 5):
        r = load(wsload_binary, tiny(), short("ws-echo", connections=1, ws_depth=2, ws_size=size))
        assert r["messages"] > 0 and r["bytes"] == r["messages"] * size


def test_wsload_procs_share_the_connections_and_sum(wsload_binary, tiny):
    server = tiny()
    r = load(wsload_binary, server, short("ws-echo", connections=3, ws_depth=2), procs=2)
    assert r["error"] is None and r["procs"] == 2 and r["connections"] == 3
    assert r["messages"] > 0 and r["bytes"] == r["messages"] * 32
    assert r["latency_us"]["samples"] == r["messages"] and r["latency_us"]["p50"] > 0
    # A fault in either process fails the whole run.
    bad = tiny(fault=lambda n, p: p[:-1] + b"?" if n == 80 else p)
    with pytest.raises(WrongAnswer, match="differs"):
        load(wsload_binary, bad, short("ws-echo", connections=2, ws_depth=2), procs=2)


def test_wsload_takes_fragments_with_a_ping_between(wsload_binary, tiny):
    w = short("ws-echo", connections=2, ws_depth=4)
    server = tiny(fragment=True)
    r = load(wsload_binary, server, w)
    assert r["error"] is None and r["messages"] > 0
    assert server.pongs >= r["messages"]  # every ping answered, with its payload


@pytest.mark.parametrize(
    "fault,reason",
    [
        (lambda n, p: p[:20] + bytes([p[20] ^ 0x40]) + p[21:] if n == 50 else p, "differs"),
        (lambda n, p: None if n == 50 else p, "lost"),
        (lambda n, p: None if n >= 50 else p, "undelivered"),
        (lambda n, p: p[:-1] if n == 50 else p, "bytes"),
        (lambda n, p: p + p if n == 50 else p, "longer"),
    ],
    ids=["changed-byte", "dropped", "no-more", "short", "long"],
)
def test_wsload_echo_fails_loudly_on_a_wrong_echo(wsload_binary, tiny, fault, reason):
    w = short("ws-echo", connections=2, ws_depth=4)
    with pytest.raises(WrongAnswer, match=reason):
        load(wsload_binary, tiny(fault=fault), w)


def test_wsload_echo_catches_a_duplicate(wsload_binary, tiny):
    class Dup:
        def __init__(self):
            self.previous = None

        def __call__(self, n, p):
            out = self.previous if n == 50 else p
            self.previous = p
            return out

    with pytest.raises(WrongAnswer, match="id block"):
        load(wsload_binary, tiny(fault=Dup()), short("ws-echo", connections=1, ws_depth=4))


def test_wsload_needs_its_close_answered(wsload_binary, tiny):
    with pytest.raises(WrongAnswer, match="close"):
        load(wsload_binary, tiny(answer_close=False), short("ws-echo", connections=1))


def test_wsload_broadcast_counts_deliveries_to_every_subscriber(wsload_binary, tiny):
    w = short("ws-broadcast", connections=5, ws_depth=2)
    r = load(wsload_binary, tiny(mode="broadcast"), w)
    assert r["error"] is None and r["published"] > 0
    # Every message published while counting reached all 5, give or take those in flight
    # at the two ends of the interval.
    assert abs(r["messages"] - 5 * r["published"]) <= 5 * 2 * 2


def test_wsload_broadcast_catches_a_lost_delivery(wsload_binary, tiny):
    # Echo instead of broadcast: subscribers never get anything.
    with pytest.raises(WrongAnswer, match="subscribers"):
        load(wsload_binary, tiny(), short("ws-broadcast", connections=3, ws_depth=2))
    # One delivery dropped for everyone once counting runs: a gap in every subscriber.
    with pytest.raises(WrongAnswer, match="lost|undelivered"):
        load(
            wsload_binary,
            tiny(mode="broadcast", fault=lambda n, p: None if n == 60 else p),
            short("ws-broadcast", connections=3, ws_depth=2),
        )


def test_wsload_refused_handshake_is_an_error(wsload_binary, tiny):
    with pytest.raises(WrongAnswer, match="404"):
        load(wsload_binary, tiny(status=404), short("ws-echo", connections=1))


# ---- autobahn9.py: its report reading and table ----


def test_autobahn9_reads_reports_and_tabulates(tmp_path):
    import autobahn9

    reports = tmp_path / "reports"
    reports.mkdir()
    index = {
        "server": {
            "9.1.1": {"behavior": "OK", "behaviorClose": "OK", "duration": 19},
            "9.10.1": {"behavior": "OK", "behaviorClose": "OK", "duration": 5},
            "9.3.1": {"behavior": "FAILED", "behaviorClose": "FAILED", "duration": 3080},
        }
    }
    (reports / "index.json").write_text(json.dumps(index))
    (reports / "server_case_9_3_1.json").write_text(
        json.dumps(
            {
                "id": "9.3.1",
                "description": "Send fragmented text message message with message payload "
                "of length 4 * 2**20 (4M). Sent out in fragments of 64.",
            }
        )
    )
    results = {"uv": autobahn9.read_report(str(reports / "index.json"))}
    assert results["uv"]["9.3.1"] == {
        "behavior": "FAILED",
        "behaviorClose": "FAILED",
        "duration_ms": 3080,
    }
    names = autobahn9.case_descriptions(str(reports), results["uv"])
    assert names == {"9.3.1": "4M text message in fragments of 64"}
    lines = autobahn9.table(results, names).splitlines()
    # Cases in numeric order (9.3 before 9.10), a failure named, and the total.
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| 9.1.1",
        "| 9.3.1",
        "| 9.10.1",
        "| all",
    ]
    assert "3,080 ms FAILED" in lines[3] and lines[-1].endswith("3,104 ms |")


# ---- examples/hello_server's WebSocket endpoints, when a build of it is at hand ----


def built_hello_server():
    from bench import REPO_DIR

    for rel in ("build/test/hello_server", "build-bench/engine/hello_server"):
        path = os.path.join(REPO_DIR, rel)
        if os.access(path, os.X_OK):
            return path
    pytest.skip("no hello_server built (tools/test.sh builds build/test/hello_server)")


def test_hello_server_echoes_and_broadcasts(wsload_binary):
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [built_hello_server(), str(port), "2"],  # two ring threads share the broadcast set
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        checks.ws_echo(port)
        checks.ws_broadcast(port)
        w = short("ws-broadcast", connections=50, ws_depth=4)
        r = wsload.run(wsload_binary, port, w, 0.3, os.sched_getaffinity(0), warmup=0.1)
        assert r["error"] is None and r["published"] > 0
        assert abs(r["messages"] - 50 * r["published"]) <= 50 * 4 * 2
        # Those who left are out of the set: a second run finds only its own connections.
        r = wsload.run(wsload_binary, port, w, 0.3, os.sched_getaffinity(0), warmup=0.1)
        assert r["error"] is None and r["published"] > 0
    finally:
        proc.terminate()
        proc.wait(10)
