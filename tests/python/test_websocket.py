"""The native WebSocket API over real sockets: @app.websocket in both forms, the
plain-handler form (request.accept_websocket), the binding's WebSocket object
(callbacks, send from any thread, close codes), broadcast, routing, leaks.

Clients: the `websockets` library (sync client) for ordinary exchanges, and
wsraw.RawWS for exact bytes (fragments, unmasked frames, a client that never
answers or never reads)."""

import asyncio
import contextlib
import logging
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wsraw import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    RawWS,
    close_payload,
    frame,
    handshake_request,
)

import pymongoose_uring as pmu
from pymongoose_uring import _native

_pmu = _native._pmu


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.005)


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def url(server, path):
    return "ws://127.0.0.1:%d%s" % (server.port, path)


def echo_app(**kw):
    app = pmu.App(**kw)
    events = []

    @app.websocket("/echo")
    def echo(ws):
        sock = ws.accept()
        sock.on_message = lambda s, m: s.send(m)
        sock.on_close = lambda s, code, reason: events.append(("close", code, reason))
        sock.on_disconnect = lambda s, code: events.append(("gone", code))

    @app.websocket("/aecho")
    async def aecho(ws):
        await ws.accept()
        try:
            while True:
                await ws.send(await ws.receive())
        except pmu.WebSocketDisconnect as exc:
            events.append(("adisconnect", exc.code, exc.reason))

    app.events = events
    return app


# -- echo -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/echo", "/aecho"])
def test_echo_text_and_binary(serve, path):
    server = serve(echo_app())
    with connect(url(server, path)) as ws:
        ws.send("héllo ✓")
        assert ws.recv(timeout=5) == "héllo ✓"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        ws.send("")
        assert ws.recv(timeout=5) == ""
        for i in range(50):
            ws.send("m%d" % i)
        assert [ws.recv(timeout=5) for _ in range(50)] == ["m%d" % i for i in range(50)]


@pytest.mark.parametrize("path", ["/echo", "/aecho"])
def test_large_messages(serve, path):
    server = serve(echo_app())
    big = bytes(range(256)) * 4096 * 3  # 3 MiB
    text = "é" * 300000
    with connect(url(server, path), max_size=None, compression=None) as ws:
        ws.send(big)
        assert ws.recv(timeout=20) == big
        ws.send(text)
        assert ws.recv(timeout=20) == text


def test_async_form_on_a_given_uvloop_loop(serve):
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        server = serve(echo_app(), loop=loop)
        with connect(url(server, "/aecho")) as ws:
            for i in range(100):
                ws.send("u%d" % i)
            assert [ws.recv(timeout=5) for _ in range(100)] == ["u%d" % i for i in range(100)]
        server.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


def test_fragmented_input_with_interleaved_ping(serve):
    server = serve(echo_app())
    c = RawWS(server.port, "/echo")
    assert c.status == 101
    payload = "fragmented ✓ message".encode()
    # Split inside the multi-byte character: valid only as a whole.
    c.send_frame(TEXT, payload[:12], fin=False)
    c.send_frame(PING, b"p1")
    c.send_frame(CONT, payload[12:14], fin=False)
    c.send_frame(CONT, payload[14:], fin=True)
    assert c.recv_until(PONG) == b"p1"
    fin, op, data = c.recv_frame()
    assert (fin, op, data) == (True, TEXT, payload)
    # A frame's bytes split across many writes.
    raw = b"".join(
        [
            bytes([0x82, 0x80 | 5]),
            b"\x01\x02\x03\x04",
            bytes(b ^ k for b, k in zip(b"abcde", b"\x01\x02\x03\x04\x01")),
        ]
    )
    for i in range(len(raw)):
        c.send(raw[i : i + 1])
        time.sleep(0.001)
    assert c.recv_frame() == (True, BINARY, b"abcde")
    c.close()


# -- the handshake ------------------------------------------------------------


def test_handshake_headers_subprotocol_and_extra_headers(serve):
    app = pmu.App()
    seen = {}

    @app.websocket("/chat/{room}")
    def chat(ws):
        seen.update(
            path=ws.path,
            room=ws.params["room"],
            query=ws.query["user"],
            offered=ws.subprotocols,
            client=ws.client,
            token=ws.headers.get("x-token"),
        )
        sock = ws.accept("chat.v2", {"X-Room": ws.params["room"], "Set-Cookie": "a=1"})
        seen.update(chosen=sock.subprotocol, sock_path=sock.path, sock_query=sock.query_string)
        seen["sock_offered"] = sock.subprotocols
        seen["sock_token"] = sock.headers.get("X-Token")
        seen["raw"] = sock.raw_headers
        seen["multi"] = sock.headers.getall("x-multi")
        sock.on_message = lambda s, m: s.send(s.subprotocol + ":" + m)

    server = serve(app)
    with connect(
        url(server, "/chat/lobby?user=ann"),
        subprotocols=["chat.v1", "chat.v2"],
        additional_headers=[("X-Token", "t0k"), ("X-Multi", "1"), ("X-Multi", "2")],
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers["X-Room"] == "lobby"
        assert ws.response.headers["Set-Cookie"] == "a=1"
        ws.send("hi")
        assert ws.recv(timeout=5) == "chat.v2:hi"
    assert seen["path"] == seen["sock_path"] == "/chat/lobby"
    assert seen["room"] == "lobby" and seen["query"] == "ann"
    assert seen["offered"] == seen["sock_offered"] == ["chat.v1", "chat.v2"]
    assert seen["client"][0] == "127.0.0.1"
    assert seen["token"] == seen["sock_token"] == "t0k"
    assert seen["chosen"] == "chat.v2" and seen["sock_query"] == "user=ann"
    assert (b"x-token", b"t0k") in seen["raw"] and (b"upgrade", b"websocket") in seen["raw"]
    assert all(isinstance(n, bytes) and n == n.lower() for n, _ in seen["raw"])
    assert seen["multi"] == ["1", "2"]


def test_reject_with_custom_response_and_default_403(serve):
    app = pmu.App()

    @app.websocket("/private")
    def private(ws):
        if ws.headers.get("authorization") != "Bearer ok":
            ws.reject(401, "who are you?", {"WWW-Authenticate": "Bearer"})
            return
        ws.accept().on_message = lambda s, m: s.send(m)

    @app.websocket("/nothing")
    def nothing(ws):
        pass  # neither accept nor reject: 403

    @app.websocket("/anothing")
    async def anothing(ws):
        await asyncio.sleep(0)

    @app.websocket("/areject")
    async def areject(ws):
        ws.reject(451, b"gone")

    server = serve(app)
    c = RawWS(server.port, "/private")
    assert c.status == 401 and c.body == b"who are you?"
    assert c.headers["www-authenticate"] == "Bearer"
    assert c.at_eof()
    for path, status in [("/nothing", 403), ("/anothing", 403), ("/areject", 451)]:
        c = RawWS(server.port, path)
        assert c.status == status, path
        assert c.at_eof()
    with connect(url(server, "/private"), additional_headers={"Authorization": "Bearer ok"}) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"


def test_routing_of_handshakes_and_plain_requests(serve):
    app = pmu.App()

    @app.get("/both")
    def both_http(request):
        return "http"

    @app.websocket("/both")
    def both_ws(ws):
        ws.accept().on_message = lambda s, m: s.send("ws:" + m)

    @app.websocket("/only")
    def only(ws):
        ws.accept()

    @app.get("/plain")
    def plain(request):
        return "plain:%s" % request.websocket

    @app.websocket("/items/{n:int}")
    def item(ws):
        n = ws.params["n"]
        ws.accept().on_message = lambda s, m: s.send(str(n * 2))

    server = serve(app)
    base = "http://127.0.0.1:%d" % server.port
    assert urllib.request.urlopen(base + "/both").read() == b"http"
    with connect(url(server, "/both")) as ws:
        ws.send("a")
        assert ws.recv(timeout=5) == "ws:a"
    with connect(url(server, "/items/21")) as ws:
        ws.send("?")
        assert ws.recv(timeout=5) == "42"
    # An HTTP request to a WebSocket-only route: 404, as Starlette answers.
    for path in ("/only", "/items/3"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path)
        assert e.value.code == 404
    # A POST to a path with GET and WebSocket routes: 405, Allow without WEBSOCKET.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(base + "/both", data=b"x"))
    assert e.value.code == 405 and e.value.headers["Allow"] == "GET, HEAD"
    # A handshake to a path without a WebSocket route is the GET it also is.
    c = RawWS(server.port, "/plain")
    assert c.status == 200 and c.body == b"plain:True"
    c = RawWS(server.port, "/missing")
    assert c.status == 404
    # A malformed handshake (no key) to a WebSocket route: 400.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(
        b"GET /only HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    s.close()
    # A wrong version: the engine's own 426.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(
        b"GET /only HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13" in answer
    s.close()


def test_plain_handler_form(serve):
    notes = []

    def handler(request):
        if request.websocket:
            request.accept_websocket(on_message=lambda s, m: s.send(m.upper()))
            notes.append(("answered", request.answered))
            try:
                request.accept_websocket()
            except RuntimeError:
                notes.append("second accept refused")
            return None
        try:
            request.accept_websocket()
        except RuntimeError:
            notes.append("http accept refused")
        return "http"

    server = serve(handler)
    assert urllib.request.urlopen("http://127.0.0.1:%d/" % server.port).read() == b"http"
    with connect(url(server, "/any")) as ws:
        ws.send("shout")
        assert ws.recv(timeout=5) == "SHOUT"
    assert notes == ["http accept refused", ("answered", True), "second accept refused"]


def test_accept_from_another_thread(serve):
    """accept_websocket() from a pool thread, callbacks given to the accept so
    that the first message cannot be missed."""

    def handler(request):
        def later():
            time.sleep(0.05)
            request.accept_websocket(on_message=lambda s, m: s.send("late:" + m))

        threading.Thread(target=later).start()

    server = serve(handler)
    with connect(url(server, "/")) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "late:x"


def test_bad_accept_arguments(serve):
    errors = []

    def handler(request):
        for args, kw in [
            (("bad proto",), {}),
            ((None, {"X-Bad": "a\r\nb"}), {}),
            ((), {"on_message": 3}),
            ((), {"no_such_callback": print}),
        ]:
            try:
                request.accept_websocket(*args, **kw)
            except (ValueError, TypeError) as exc:
                errors.append(type(exc).__name__)
        assert not request.answered
        request.accept_websocket().on_message = lambda s, m: s.send(m)

    server = serve(handler)
    with connect(url(server, "/")) as ws:
        ws.send("ok")
        assert ws.recv(timeout=5) == "ok"
    assert errors == ["ValueError", "ValueError", "TypeError", "TypeError"]


# -- close paths ----------------------------------------------------------------


def test_client_close_with_code_and_reason(serve):
    app = echo_app()
    server = serve(app)
    with connect(url(server, "/echo")) as ws:
        ws.send("a")
        ws.recv(timeout=5)
        ws.close(4001, "bye now")
    wait_for(lambda: ("gone", 4001) in app.events, what="on_disconnect")
    assert ("close", 4001, "bye now") in app.events
    assert app.events.index(("close", 4001, "bye now")) < app.events.index(("gone", 4001))
    with connect(url(server, "/aecho")) as ws:
        ws.close(4002, "async bye")
    wait_for(lambda: ("adisconnect", 4002, "async bye") in app.events, what="async disconnect")


def test_close_without_code_is_1005_and_a_drop_is_1006(serve):
    app = echo_app()
    server = serve(app)
    c = RawWS(server.port, "/echo")
    c.send_frame(CLOSE, b"")
    assert c.recv_close()[0] in (1005, 1000)  # 1005 is never sent: an empty close or 1000
    wait_for(lambda: ("gone", 1005) in app.events, what="gone 1005")
    assert ("close", 1005, "") in app.events
    c.close()
    c = RawWS(server.port, "/echo")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # a reset, no close frame
    wait_for(lambda: ("gone", 1006) in app.events, what="gone 1006")


def test_server_close_reaches_the_client_and_on_disconnect(serve):
    gone = []
    app = pmu.App()

    @app.websocket("/bye")
    def bye(ws):
        sock = ws.accept()

        def on_message(s, m):
            s.send("last")
            s.close(4100, "server says bye")
            assert s.closed
            with pytest.raises(pmu.WebSocketClosed):
                s.send("too late")
            s.close()  # a second close does nothing

        sock.on_message = on_message
        sock.on_disconnect = lambda s, code: gone.append((code, s.close_code, s.closed))

    server = serve(app)
    with connect(url(server, "/bye")) as ws:
        ws.send("go")
        assert ws.recv(timeout=5) == "last"
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
        assert e.value.rcvd.code == 4100 and e.value.rcvd.reason == "server says bye"
    wait_for(lambda: gone, what="on_disconnect")
    assert gone[0][0] in (4100, 1000, 1005) and gone[0][2] is True


def test_async_close_and_receive_after_disconnect(serve):
    result = []
    app = pmu.App()

    @app.websocket("/a")
    async def handler(ws):
        await ws.accept()
        first = await ws.receive()
        await ws.close(4200, "done:" + first)
        try:
            await ws.receive()
        except pmu.WebSocketDisconnect as exc:
            result.append(exc.code)
        with pytest.raises(pmu.WebSocketClosed):
            await ws.send("after close")

    server = serve(app)
    with connect(url(server, "/a")) as ws:
        ws.send("x")
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
        assert e.value.rcvd.code == 4200 and e.value.rcvd.reason == "done:x"
    wait_for(lambda: result, what="receive raising")
    assert result[0] in (4200, 1000, 1005)


def test_client_gone_before_accept_still_gets_a_disconnect(serve):
    """granian #835: a client that leaves before the accept still ends in
    on_disconnect (1006) / WebSocketDisconnect, in both forms."""
    seen = []
    errors = []

    def plain(request):  # accepts later, from another thread
        def later():
            time.sleep(0.3)
            request.accept_websocket(on_disconnect=lambda s, code: seen.append(("sync", code)))

        threading.Thread(target=later).start()

    app = pmu.App()

    @app.websocket("/async")
    async def asynchronous(ws):
        await asyncio.sleep(0.3)
        try:
            await ws.accept()
            await ws.receive()
        except pmu.WebSocketDisconnect as exc:
            seen.append(("async", exc.code))
        except Exception as exc:
            errors.append(exc)

    for server, path in ((serve(plain), "/sync"), (serve(app), "/async")):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(handshake_request(path)[0])
        s.close()
    wait_for(lambda: len(seen) == 2 or errors, what=str(seen))
    assert sorted(seen) == [("async", 1006), ("sync", 1006)], (seen, errors)


def test_ping_timeout_closes_with_1006(serve):
    gone = []

    def handler(request):
        ws = request.accept_websocket()
        ws.on_disconnect = lambda s, code: gone.append(code)

    server = serve(handler, ws_ping_interval_ms=150, ws_ping_timeout_ms=600)
    c = RawWS(server.port, "/")
    assert c.status == 101
    # Never answers: the engine pings after 150 ms of silence, then gives up.
    assert c.recv_until(PING) is not None
    assert c.at_eof(timeout=5)
    wait_for(lambda: gone, what="on_disconnect")
    assert gone == [1006]
    # A client that answers stays: pinged again and again, never dropped.
    c = RawWS(server.port, "/")
    pings = 0
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        c.send_frame(PONG, c.recv_until(PING))
        pings += 1
    assert pings >= 4 and gone == [1006]
    c.close()


def test_server_stop_sends_1001(serve):
    import gc

    gc.collect()
    alive = _pmu.websockets_alive()
    app = echo_app()
    server = serve(app)
    clients = [RawWS(server.port, "/echo") for _ in range(3)]
    with connect(url(server, "/aecho")) as ws:
        ws.send("x")
        ws.recv(timeout=5)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        for c in clients:
            code, _ = c.recv_close()
            assert code == 1001
            c.send_frame(CLOSE, close_payload(1001))
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
        assert e.value.rcvd.code == 1001
        stopper.join(20)
        assert not stopper.is_alive()
    for c in clients:
        c.close()
    # Every connection object was handed back at the stop.
    wait_for(lambda: gc.collect() is not None and _pmu.websockets_alive() == alive)


def test_protocol_error_closes_with_1002(serve):
    app = echo_app()
    server = serve(app)
    c = RawWS(server.port, "/echo")
    c.send_frame(TEXT, b"unmasked", mask=False)
    assert c.recv_close()[0] == 1002
    c.send_frame(CLOSE, close_payload(1002))
    c.close()  # the server lingers after a failing close until the client leaves
    wait_for(lambda: any(e[0] == "gone" for e in app.events), what="gone")


def test_oversized_message_closes_with_1009(serve):
    app = echo_app()
    server = serve(app, ws_max_message=1000)
    c = RawWS(server.port, "/echo")
    c.send_frame(BINARY, b"x" * 1000)
    assert c.recv_frame() == (True, BINARY, b"x" * 1000)
    c.send_frame(BINARY, b"x" * 1001)
    assert c.recv_close()[0] == 1009
    c.close()


def test_echo_of_the_largest_message_fits_the_default_send_limit(serve):
    """A ws_max_message-sized message (16 MiB) echoed back must not trip the
    send limit (Autobahn 9.1.6 and 9.2.6 closed with 1008 when both were 16 MiB)."""
    server = serve(echo_app())
    size = pmu.knobs()["ws_max_message"].default
    payload = bytes(range(256)) * (size // 256)
    with connect(url(server, "/echo"), max_size=None, compression=None) as ws:
        ws.send(payload)
        assert ws.recv(timeout=30) == payload


def test_callback_exception_closes_1011_logs_and_keeps_serving(serve, caplog):
    app = pmu.App()

    @app.websocket("/boom")
    def boom(ws):
        def on_message(s, m):
            raise ZeroDivisionError("kaboom in on_message")

        ws.accept().on_message = on_message

    @app.websocket("/aboom")
    async def aboom(ws):
        await ws.accept()
        await ws.receive()
        raise KeyError("async kaboom")

    @app.websocket("/early")
    def early(ws):
        raise ValueError("before accept")

    @app.websocket("/late")
    def late(ws):
        ws.accept()
        raise LookupError("after accept")

    server = serve(app)
    caplog.set_level(logging.ERROR, logger="pymongoose_uring")
    for path in ("/boom", "/aboom"):
        with connect(url(server, path)) as ws:
            ws.send("x")
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=5)
            assert e.value.rcvd.code == 1011
    c = RawWS(server.port, "/early")
    assert c.status == 500
    c.close()
    c = RawWS(server.port, "/late")
    assert c.status == 101 and c.recv_close()[0] == 1011
    c.send_frame(CLOSE, close_payload(1011))
    c.close()
    text = caplog.text
    assert "kaboom in on_message" in text and "ZeroDivisionError" in text
    assert "Traceback" in text or any(r.exc_info for r in caplog.records)
    assert "async kaboom" in text and "before accept" in text and "after accept" in text
    # Still serving.
    with connect(url(server, "/boom")) as ws:
        assert ws.protocol.state.name == "OPEN"


def test_message_and_close_in_one_write_is_echoed_then_closed_quietly(serve, caplog):
    """The peer's close is answered after the handler has seen the messages
    before it, so a sync echo still goes out (RFC 6455 5.5.1); an async
    echo that loses the race with the close ends quietly, without a
    traceback or a 1011."""
    app = pmu.App()

    @app.websocket("/sync")
    def sync_echo(ws):
        ws.accept().on_message = lambda s, m: s.send(m)

    @app.websocket("/async")
    async def async_echo(ws):
        await ws.accept()
        async for m in ws:
            await ws.send(m)

    server = serve(app)
    caplog.set_level(logging.INFO, logger="pymongoose_uring")
    c = RawWS(server.port, "/sync")
    c.send(frame(TEXT, b"last words") + frame(CLOSE, close_payload(1000)))
    assert c.recv_frame() == (True, TEXT, b"last words")
    assert c.recv_close()[0] == 1000
    c.close()
    for _ in range(20):
        c = RawWS(server.port, "/async")
        c.send(frame(TEXT, b"x" * 100) + frame(CLOSE, close_payload(1000)))
        assert c.recv_until(CLOSE)  # the echo may or may not precede it
        c.close()
    time.sleep(0.2)
    assert "1011" not in caplog.text and "Traceback" not in caplog.text
    assert not any(r.exc_info for r in caplog.records)


def test_ping_pong_callbacks_and_server_pings(serve):
    events = []
    socks = []

    def handler(request):
        socks.append(
            request.accept_websocket(
                on_ping=lambda s, data: events.append(("ping", data)),
                on_pong=lambda s, data: events.append(("pong", data)),
            )
        )

    server = serve(handler)
    c = RawWS(server.port, "/")
    c.send_frame(PING, b"are you there")
    assert c.recv_frame() == (True, PONG, b"are you there")  # ws_auto_pong
    wait_for(lambda: ("ping", b"are you there") in events)
    socks[0].ping(b"server ping")
    assert c.recv_frame() == (True, PING, b"server ping")
    c.send_frame(PONG, b"server ping")
    wait_for(lambda: ("pong", b"server ping") in events)
    socks[0].pong(b"unsolicited")
    assert c.recv_frame() == (True, PONG, b"unsolicited")
    with pytest.raises(ValueError):
        socks[0].ping(b"x" * 126)
    c.close()


def test_send_over_high_water_returns_false_then_on_drain(serve):
    state = {"results": [], "drained": threading.Event()}

    def handler(request):
        ws = request.accept_websocket(on_drain=lambda s: state["drained"].set())
        ws.on_message = lambda s, m: state["results"].extend(s.send(b"d" * 65536) for _ in range(8))

    server = serve(handler, ws_send_high_water=100000)
    c = RawWS(server.port, "/")
    c.send_frame(TEXT, "go")
    wait_for(lambda: len(state["results"]) == 8)
    assert state["results"][0] is True and False in state["results"]
    for _ in range(8):  # reading lets the engine send: the queue drains
        assert c.recv_frame() == (True, BINARY, b"d" * 65536)
    assert state["drained"].wait(10)
    c.close()


# -- sending from elsewhere ---------------------------------------------------------


def test_sends_from_eight_threads_keep_each_threads_order(serve):
    opened = []
    app = pmu.App()

    @app.websocket("/feed")
    def feed(ws):
        opened.append(ws.accept())

    server = serve(app)
    n_threads, per_thread = 8, 500
    with connect(url(server, "/feed"), max_queue=None) as ws:
        wait_for(lambda: opened)
        sock = opened[0]

        def produce(t):
            for i in range(per_thread):
                sock.send("%d:%d" % (t, i))

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        got = [ws.recv(timeout=10) for _ in range(n_threads * per_thread)]
        for t in threads:
            t.join()
    last = {}
    for m in got:
        t, i = map(int, m.split(":"))
        assert i == last.get(t, -1) + 1, "thread %d out of order" % t
        last[t] = i
    assert last == {t: per_thread - 1 for t in range(n_threads)}


def test_sends_from_asyncio_tasks_and_broadcast(serve):
    app = pmu.App()
    room = set()
    joined = threading.Event()

    @app.websocket("/room")
    async def member(ws):
        await ws.accept()
        room.add(ws)
        if len(room) == 5:
            joined.set()
        try:
            async for m in ws:
                # broadcast from a task: pmu.broadcast over the members
                n = pmu.broadcast(room, "says:" + m)
                await ws.send("sent to %d" % n)
        finally:
            room.discard(ws)

    server = serve(app)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(url(server, "/room"))) for _ in range(5)]
        assert joined.wait(10)

        async def tick(ws, k):
            for i in range(20):
                await ws.send("tick %d %d" % (k, i))

        # Tasks on the server's loop send to every member.
        loop = server._bridge._loop
        members = list(room)

        async def all_ticks():
            await asyncio.gather(*(tick(m, k) for k, m in enumerate(members)))

        fut = asyncio.run_coroutine_threadsafe(all_ticks(), loop)
        fut.result(10)
        for c in clients:
            ticks = [c.recv(timeout=5) for _ in range(20)]
            assert len(set(t.rsplit(" ", 1)[0] for t in ticks)) == 1
            assert [int(t.rsplit(" ", 1)[1]) for t in ticks] == list(range(20))
        clients[0].send("hello")
        for c in clients:
            assert c.recv(timeout=5) == "says:hello"
        assert clients[0].recv(timeout=5) == "sent to 5"


def test_broadcast_binding_level(serve):
    socks = []
    lock = threading.Lock()

    def handler(request):
        ws = request.accept_websocket()
        with lock:
            socks.append(ws)

    server = serve(handler)
    n = 50
    clients = [RawWS(server.port, "/") for _ in range(n)]
    wait_for(lambda: len(socks) == n)
    socks[1].send(bytearray(b"from a bytearray"))
    socks[1].send(memoryview(b"xx from a memoryview")[3:])
    assert clients[1].recv_frame() == (True, BINARY, b"from a bytearray")
    assert clients[1].recv_frame() == (True, BINARY, b"from a memoryview")
    with pytest.raises(TypeError):
        socks[1].send(12)
    assert pmu.broadcast(socks, b"\x01" * 3000) == n
    assert _pmu.broadcast(socks, "text ✓") == n
    for c in clients:
        assert c.recv_frame() == (True, BINARY, b"\x01" * 3000)
        assert c.recv_frame() == (True, TEXT, "text ✓".encode())
    clients[0].send_frame(CLOSE, close_payload(1000))
    clients[0].recv_close()
    wait_for(lambda: socks[0].closed or any(s.closed for s in socks))
    assert pmu.broadcast(socks, b"again") == n - 1
    with pytest.raises(TypeError):
        pmu.broadcast([object()], b"x")
    for c in clients:
        c.close()


# -- backpressure --------------------------------------------------------------------


def test_client_that_never_reads_is_closed_by_the_send_limit(serve):
    state = {"false": 0, "closed": None, "max_unsent": 0, "gone": None}
    done = threading.Event()

    def handler(request):
        ws = request.accept_websocket()
        ws.on_disconnect = lambda s, code: (state.update(gone=code), done.set())

        def flood():
            chunk = bytearray(b"z" * 65536)  # a bytearray: the engine copies each send
            try:
                for _ in range(2000):  # 128 MiB if nothing stopped it
                    if not ws.send(chunk):
                        state["false"] += 1
                    state["max_unsent"] = max(state["max_unsent"], ws.unsent)
            except pmu.WebSocketClosed as exc:
                state["closed"] = str(exc)

        threading.Thread(target=flood).start()

    server = serve(handler, ws_send_high_water=256 * 1024, ws_send_limit=4 * 1024 * 1024)
    rss_before = rss()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(handshake_request("/")[0])
    assert done.wait(30), state
    assert state["closed"] is not None
    assert state["false"] > 0
    assert state["max_unsent"] <= 4 * 1024 * 1024
    assert state["gone"] in (1006, 1008)
    assert rss() - rss_before < 48 * 1024 * 1024  # not the 128 MiB offered
    s.close()


def test_async_receive_backpressure_pauses_reading(serve):
    """A handler that does not read: the engine stops reading after max_queue
    messages (plus what its receive buffers already held: at most
    buf_count x buf_size = 4 MiB here, 64 of these messages), and TCP holds the
    client back; everything arrives once the handler reads."""
    app = pmu.App(ws_max_queue=4)
    seen = {"max_queued": 0, "got": 0}
    release = threading.Event()
    total = 300

    @app.websocket("/slow")
    async def slow(ws):
        await ws.accept()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, release.wait, 20)
        seen["max_queued"] = len(ws._messages)
        n = 0
        async for m in ws:
            n += 1
            if m == "end":
                break
        seen["got"] = n
        await ws.send("got %d" % n)

    server = serve(app)
    sent = [0]
    with connect(url(server, "/slow"), compression=None) as ws:
        blob = "q" * 65536

        def send_all():
            for _ in range(total):
                ws.send(blob)
                sent[0] += 1
            ws.send("end")

        sender = threading.Thread(target=send_all)
        sender.start()
        time.sleep(1.5)
        held_back_at = sent[0]
        release.set()
        sender.join(30)
        assert ws.recv(timeout=30) == "got %d" % (total + 1)
    assert held_back_at < total, "the client was never held back"
    assert seen["max_queued"] < 100, seen


def test_async_receive_text_and_bytes(serve):
    app = pmu.App()
    kinds = []

    @app.websocket("/kinds")
    async def kinds_handler(ws):
        await ws.accept()
        kinds.append(await ws.receive_text())
        kinds.append(await ws.receive_bytes())
        try:
            await ws.receive_bytes()
        except TypeError:
            kinds.append("TypeError")
        await ws.send("ok")

    server = serve(app)
    with connect(url(server, "/kinds")) as ws:
        ws.send("t")
        ws.send(b"b")
        ws.send("not bytes")
        assert ws.recv(timeout=5) == "ok"
    assert kinds == ["t", b"b", "TypeError"]


def test_async_pause_and_resume_race_never_stalls(serve):
    """max_queue=1: reading is paused and resumed around nearly every message,
    from two threads; every message still arrives, in order."""
    app = pmu.App(ws_max_queue=1)

    @app.websocket("/tight")
    async def tight(ws):
        await ws.accept()
        n = 0
        async for m in ws:
            assert m == "m%d" % n
            n += 1
            if n % 7 == 0:
                await asyncio.sleep(0)
            if n == 3000:
                await ws.send("done")

    server = serve(app)
    with connect(url(server, "/tight"), compression=None) as ws:
        for i in range(3000):
            ws.send("m%d" % i)
        assert ws.recv(timeout=30) == "done"


def test_async_messages_of_a_batch_cost_one_wakeup(serve):
    """100 messages that arrive in one read reach the asyncio loop with one
    call_soon_threadsafe, not one each: the wake-up goes out at the batch's
    end, so the loop cannot take the GIL mid-batch (here every microsecond, as
    a busy machine makes it) and need another for the rest."""
    flushes = []

    class CountingLoop(asyncio.SelectorEventLoop):
        def call_soon_threadsafe(self, callback, *args, **kwargs):
            if getattr(callback, "__qualname__", "") == "_Inbox.flush":
                flushes.append(callback)
            return super().call_soon_threadsafe(callback, *args, **kwargs)

    loop = CountingLoop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    app = pmu.App()
    got = []
    waiting = threading.Event()
    ended = threading.Event()

    @app.websocket("/batch")
    async def batch(ws):
        await ws.accept()
        loop.call_soon(waiting.set)  # set once the iteration below waits
        try:
            async for m in ws:
                got.append(m)
                if len(got) == 100:
                    await ws.send("got all")
        finally:
            ended.set()

    try:
        server = serve(app, loop=loop)
        c = RawWS(server.port, "/batch")
        assert waiting.wait(10)
        time.sleep(0.05)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            c.send(b"".join(frame(TEXT, "m%d" % i) for i in range(100)))  # one write
            assert c.recv_frame() == (True, TEXT, b"got all")
        finally:
            sys.setswitchinterval(switch)
        assert got == ["m%d" % i for i in range(100)]
        assert 1 <= len(flushes) <= 2, len(flushes)
        c.close()
        assert ended.wait(10)  # the handler's task is done before its loop stops
        server.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


# -- scale and leaks ---------------------------------------------------------------


def test_a_thousand_concurrent_websockets(serve):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    opened = []
    lock = threading.Lock()

    def handler(request):
        ws = request.accept_websocket(on_message=lambda s, m: s.send(m))
        with lock:
            opened.append(ws)

    server = serve(handler)
    n = 1000
    clients = []
    start = time.monotonic()
    try:
        for _ in range(n):
            clients.append(RawWS(server.port, "/", timeout=20))
        wait_for(lambda: len(opened) == n, timeout=30)
        assert server.stats()["ws_open"] == n
        for i, c in enumerate(clients):
            c.send_frame(TEXT, "n%d" % i)
        for i, c in enumerate(clients):
            assert c.recv_frame() == (True, TEXT, ("n%d" % i).encode())
    finally:
        for c in clients:
            c.close()
    wait_for(lambda: server.stats()["ws_open"] == 0, timeout=30)
    assert time.monotonic() - start < 60


def test_no_websocket_or_request_leaks(serve):
    import gc

    gc.collect()
    ws_base = _pmu.websockets_alive()
    req_base = _pmu.requests_alive()
    server = serve(echo_app())
    for path in ("/echo", "/aecho"):
        for _ in range(20):
            with connect(url(server, path)) as ws:
                ws.send("x")
                ws.recv(timeout=5)
    # A closure that refers to its own socket: a cycle, broken after on_disconnect.
    app2 = pmu.App()

    @app2.websocket("/cycle")
    def cycle(ws):
        sock = ws.accept()
        sock.on_message = lambda s, m: sock.send(m)
        sock.user = {"self": sock}

    server2 = serve(app2)
    for _ in range(10):
        with connect(url(server2, "/cycle")) as ws:
            ws.send("y")
            assert ws.recv(timeout=5) == "y"
    wait_for(lambda: server.stats()["ws_open"] == 0 and server2.stats()["ws_open"] == 0)

    def settled():
        gc.collect()
        return _pmu.websockets_alive() == ws_base and _pmu.requests_alive() == req_base

    wait_for(settled, what="every WebSocket and Request freed")


def test_websockets_alive_counts_open_ones(serve):
    base = _pmu.websockets_alive()
    server = serve(echo_app())
    clients = [RawWS(server.port, "/echo") for _ in range(3)]
    wait_for(lambda: server.stats()["ws_open"] == 3)
    assert _pmu.websockets_alive() == base + 3
    for c in clients:
        c.send_frame(CLOSE, close_payload(1000))
        c.recv_close()
        c.close()
    wait_for(lambda: _pmu.websockets_alive() == base)


# -- permessage-deflate ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/echo", "/aecho"])
def test_deflate_negotiated_and_large_compressible_round_trip(serve, path):
    server = serve(echo_app())
    text = ("the same sentence again and again. " * 40000)[:1_000_000]
    with connect(url(server, path), max_size=None) as ws:  # offers permessage-deflate
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ext.startswith("permessage-deflate")
        ws.send(text)
        assert ws.recv(timeout=20) == text
    stats = server.stats()
    assert stats["ws_deflate_in_raw"] >= len(text)
    assert stats["ws_deflate_in_wire"] < len(text) // 20
    assert stats["ws_deflate_out_wire"] < stats["ws_deflate_out_raw"]


def test_deflate_off_by_knob(serve):
    seen = []

    def handler(request):
        seen.append(request.accept_websocket(on_message=lambda s, m: s.send(m)).extensions)

    server = serve(handler, ws_deflate=False)
    with connect(url(server, "/")) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=5) == "plain"
    assert seen == [""]


def test_websocket_properties_after_close(serve):
    kept = []
    gone = threading.Event()

    def handler(request):
        kept.append(request.accept_websocket(on_disconnect=lambda s, code: gone.set()))

    server = serve(handler)
    c = RawWS(server.port, "/p?q=1")
    wait_for(lambda: kept)
    ws = kept[0]
    assert repr(ws).startswith("<WebSocket /p") and not ws.closed
    assert ws.close_code is None and ws.close_reason == ""
    c.send_frame(CLOSE, close_payload(4444, "fin"))
    c.recv_close()
    wait_for(lambda: ws.close_code == 4444)
    assert ws.closed
    assert gone.wait(10)
    assert ws.close_reason == "fin" and ws.path == "/p" and ws.query_string == "q=1"
    assert ws.unsent == 0
    with pytest.raises(pmu.WebSocketClosed):
        ws.send("x")
    with pytest.raises(pmu.WebSocketClosed):
        ws.ping()
    ws.close()  # nothing
    ws.pause_reading()
    ws.resume_reading()
    c.close()
