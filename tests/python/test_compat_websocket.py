"""pymongoose's WebSocket API in the compatibility layer: ws_upgrade, ws_send with each
op, MG_EV_WS_OPEN / MG_EV_WS_MSG / MG_EV_WS_CTL / MG_EV_CLOSE, WsMessage, is_websocket,
timers, serve_dir; and pymongoose's own WebSocket examples, run from a checkout of its
repository with only the import changed, where one is available."""

import json
import os
import signal
import threading
import time
import urllib.request

import pytest
from pymongoose_checkout import run_example, wait_serving
from test_asgi_websocket import WS, Record

from conftest import wait_until
from pymongoose_uring.compat import (
    MG_EV_CLOSE,
    MG_EV_HTTP_MSG,
    MG_EV_WS_CTL,
    MG_EV_WS_MSG,
    MG_EV_WS_OPEN,
    WEBSOCKET_OP_BINARY,
    WEBSOCKET_OP_PING,
    WEBSOCKET_OP_PONG,
    WEBSOCKET_OP_TEXT,
    ConnectionClosed,
    WsMessage,
)


@pytest.fixture
def manager_with(polled_manager):
    """manager_with(handler) -> (manager, port), polled by a thread until the test ends."""

    def start(handler):
        manager, listener = polled_manager(handler)
        return manager, listener.local_addr[1]

    return start


def test_opcodes_are_mongooses():
    assert (WEBSOCKET_OP_TEXT, WEBSOCKET_OP_BINARY, WEBSOCKET_OP_PING, WEBSOCKET_OP_PONG) == (
        1,
        2,
        9,
        10,
    )
    assert (MG_EV_CLOSE, MG_EV_WS_OPEN, MG_EV_WS_MSG, MG_EV_WS_CTL) == (9, 12, 13, 14)
    m = WsMessage("héllo", WEBSOCKET_OP_TEXT)
    assert (m.text, m.data, m.flags) == ("héllo", "héllo".encode(), 1)
    m = WsMessage(b"\xff\x00", WEBSOCKET_OP_BINARY)
    assert (m.data, m.flags) == (b"\xff\x00", 2)
    assert m.text == b"\xff\x00".decode("utf-8", "surrogateescape")
    assert issubclass(ConnectionClosed, RuntimeError) and issubclass(ConnectionClosed, OSError)


def test_events_in_order_on_one_connection_object(manager_with):
    events = Record()

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            if data.uri == "/ws":
                assert not conn.is_websocket
                conn.ws_upgrade(data, extra_headers={"X-Upgraded": "yes"})
                events.add(("upgraded", conn.is_websocket))
            else:
                conn.reply(200, "plain %s" % conn.is_websocket)
        elif ev == MG_EV_WS_OPEN:
            conn.userdata = "user-state"
            events.add(("open", data.uri, data.header("X-Hello"), id(conn)))
        elif ev == MG_EV_WS_MSG:
            events.add(("msg", data.flags, data.data, conn.userdata, id(conn)))
            if data.flags == WEBSOCKET_OP_TEXT:
                conn.ws_send("Echo: " + data.text, WEBSOCKET_OP_TEXT)
            else:
                conn.ws_send(data.data, WEBSOCKET_OP_BINARY)
        elif ev == MG_EV_WS_CTL:
            events.add(("ctl", data.flags, data.data))
        elif ev == MG_EV_CLOSE and conn.is_websocket:  # (the plain one closes too)
            events.add(("close", data, conn.is_websocket, id(conn)))

    manager, port = manager_with(handler)
    with urllib.request.urlopen("http://127.0.0.1:%d/plain" % port) as r:
        assert r.read() == b"plain False"
    ws = WS(port, "/ws", subprotocols=["first", "second"], headers=[("X-Hello", "hi")])
    assert ws.status == 101 and ws.headers["x-upgraded"] == "yes"
    assert ws.headers["sec-websocket-protocol"] == "first"
    ws.send("hello")
    assert ws.recv() == "Echo: hello"
    ws.send(b"\x00\x01")
    assert ws.recv() == b"\x00\x01"
    ws.ping(b"are you there")
    ws.send_frame(0xA, b"unasked")
    ws.close(4000, b"bye")
    assert ws.recv()[:2] == ("close", 4000)
    assert ws.control == [(0xA, b"are you there")]
    seen = events.wait(8)
    assert seen[0] == ("open", "/ws", "hi", seen[0][3])
    assert seen[1] == ("upgraded", True)
    conn_id = seen[0][3]
    assert seen[2] == ("msg", WEBSOCKET_OP_TEXT, b"hello", "user-state", conn_id)
    assert seen[3] == ("msg", WEBSOCKET_OP_BINARY, b"\x00\x01", "user-state", conn_id)
    assert seen[4] == ("ctl", WEBSOCKET_OP_PING, b"are you there")
    assert seen[5] == ("ctl", WEBSOCKET_OP_PONG, b"unasked")
    assert seen[6] == ("ctl", 8, b"\x0f\xa0bye")
    assert seen[7] == ("close", None, True, conn_id)


def test_ws_send_each_op_and_after_close(manager_with):
    conns = Record()

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.ws_upgrade(data)
        elif ev == MG_EV_WS_OPEN:
            conns.add(conn)
        elif ev == MG_EV_CLOSE:
            conns.add("closed")

    manager, port = manager_with(handler)
    ws = WS(port, "/ws")
    conn = conns.wait(1)[0]
    conn.ws_send("text")  # the default op is TEXT
    conn.ws_send(b"bytes as text", WEBSOCKET_OP_TEXT)
    conn.ws_send("str as binary", WEBSOCKET_OP_BINARY)
    conn.ws_send(b"ping payload", WEBSOCKET_OP_PING)
    conn.ws_send(b"pong payload", WEBSOCKET_OP_PONG)
    assert ws.recv() == "text"
    assert ws.recv() == "bytes as text"
    assert ws.recv() == b"str as binary"
    assert ws.recv_frame() == (True, 0x9, b"ping payload")
    assert ws.recv_frame() == (True, 0xA, b"pong payload")
    conn.close()  # a close frame, 1000
    assert ws.recv() == ("close", 1000, "")
    ws.close(1000)
    assert conns.wait(2)[1] == "closed"
    with pytest.raises(RuntimeError):
        conn.ws_send("too late")
    with pytest.raises(ConnectionClosed):
        conn.ws_send("too late")
    assert conn.is_websocket and conn.is_closing


def test_upgrade_of_a_plain_request_is_426(manager_with):
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.ws_upgrade(data)

    manager, port = manager_with(handler)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen("http://127.0.0.1:%d/ws" % port)
    assert info.value.code == 426


def test_handler_raising_on_a_message_is_logged_and_the_connection_goes_on(manager_with, caplog):
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.ws_upgrade(data)
        elif ev == MG_EV_WS_MSG:
            if data.text == "boom":
                raise ValueError("handler bug")
            conn.ws_send("ok " + data.text)

    manager, port = manager_with(handler)
    ws = WS(port, "/ws")
    ws.send("boom")
    ws.send("next")
    assert ws.recv() == "ok next"
    wait_until(lambda: "handler bug" in caplog.text, what="the traceback logged")


def test_timers_broadcast_from_poll(manager_with):
    clients = set()
    lock = threading.Lock()

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.ws_upgrade(data)
        elif ev == MG_EV_WS_OPEN:
            with lock:
                clients.add(conn)
        elif ev == MG_EV_CLOSE:
            with lock:
                clients.discard(conn)

    manager, port = manager_with(handler)
    ticks = []
    poll_threads = set()

    def tick():
        poll_threads.add(threading.current_thread().name)
        ticks.append(len(ticks))
        with lock:
            targets = list(clients)
        for conn in targets:
            try:
                conn.ws_send("tick %d" % ticks[-1])
            except RuntimeError:
                pass

    once = []
    manager.timer_add(30, lambda: once.append(1))  # runs once
    manager.timer_add(50, tick, repeat=True, run_now=True)
    cancelled = manager.timer_add(20, lambda: once.append("cancelled"), repeat=True)
    cancelled.cancel()
    a, b = WS(port, "/ws"), WS(port, "/ws")
    wait_until(lambda: len(clients) == 2, what="two WebSockets open")
    start = len(ticks)
    for ws in (a, b):
        first = int(ws.recv().split()[1])
        assert ws.recv() == "tick %d" % (first + 1)
    wait_until(lambda: len(ticks) >= start + 3, what="three more ticks")
    assert once == [1]
    # on the thread that polls, not the main thread nor a ring thread
    assert len(poll_threads) == 1 and threading.main_thread().name not in poll_threads
    assert not any("pymongoose_uring" in name for name in poll_threads)


def test_serve_dir(manager_with, tmp_path):
    (tmp_path / "index.html").write_text("<h1>index</h1>")
    (tmp_path / "a.txt").write_text("file a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text("{}")
    secret = tmp_path.parent / ("secret-%d.txt" % os.getpid())
    secret.write_text("secret")

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.serve_dir(
                data, root_dir=str(tmp_path), extra_headers="Cache-Control: max-age=60\r\n"
            )

    try:
        manager, port = manager_with(handler)
        base = "http://127.0.0.1:%d" % port
        with urllib.request.urlopen(base + "/") as r:
            assert r.read() == b"<h1>index</h1>" and r.headers["Content-Type"].startswith(
                "text/html"
            )
            assert r.headers["Cache-Control"] == "max-age=60"
        with urllib.request.urlopen(base + "/a.txt") as r:
            assert r.read() == b"file a" and r.headers["Content-Type"].startswith("text/plain")
        with urllib.request.urlopen(base + "/sub/b.json") as r:
            assert r.headers["Content-Type"].startswith("application/json")
        for path in ("/missing", "/../" + secret.name, "/%2e%2e/" + secret.name):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path)
            assert info.value.code in (400, 404), path  # the engine: 400 for ".."
    finally:
        secret.unlink()


# ---- pymongoose's own examples --------------------------------------------------------

EXAMPLES = "tests/examples/websocket/"


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def test_pymongoose_websocket_server_example(tmp_path):
    proc, port = run_example(
        EXAMPLES + "websocket_server.py", tmp_path, "--root", str(tmp_path / "www")
    )
    try:
        wait_serving(proc, port)
        a, b = WS(port, "/ws"), WS(port, "/ws")
        a.send("Hello")
        assert a.recv() == "Echo: Hello"
        a.send(b"\x01\x02")
        assert a.recv() == b"\x01\x02"
        base = "http://127.0.0.1:%d" % port
        with urllib.request.urlopen(base + "/api/stats") as r:
            assert json.loads(r.read()) == {"websocket_clients": 2, "endpoint": "/ws"}
        req = urllib.request.Request(base + "/api/broadcast", data=b"to all", method="POST")
        with urllib.request.urlopen(req) as r:
            assert r.read() == b"Broadcasted to 2 clients"
        assert a.recv() == "Broadcast: to all" and b.recv() == "Broadcast: to all"
        with urllib.request.urlopen(base + "/") as r:  # its page, through serve_dir
            assert b"WebSocket Echo Server" in r.read()
            assert r.headers["Cache-Control"] == "max-age=3600"
        a.close()
        b.close()
    finally:
        out = _stop(proc)
    assert "WebSocket connected (total: 2)" in out and "Server stopped cleanly" in out


def test_pymongoose_websocket_broadcast_example(tmp_path):
    proc, port = run_example(EXAMPLES + "websocket_broadcast.py", tmp_path, "--interval", "0.2")
    try:
        wait_serving(proc, port)
        with urllib.request.urlopen("http://127.0.0.1:%d/" % port) as r:
            assert b"WebSocket Broadcast Demo" in r.read()
        ws = WS(port, "/ws")
        assert ws.recv() == "Welcome! You are client #1"
        ws.send("hi")
        got = [ws.recv() for _ in range(4)]
        assert "Echo: hi" in got
        casts = [m for m in got if m.startswith("[")]
        assert casts and all(m.endswith("to 1 clients") for m in casts)
        ws.close()
        assert ws.recv()[0] == "close"
        time.sleep(0.1)
    finally:
        out = _stop(proc)
    assert "WebSocket client disconnected (remaining: 0)" in out
    assert "Server stopped cleanly" in out
