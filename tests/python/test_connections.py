"""Connection events, raw byte streams and raw answers, over real sockets.

Server(connection_handler=...) gets every event of every accepted connection as
handler(conn, event, data), conn being one _pmu.Connection per connection (also
request.connection); raw=True makes every connection a byte stream; conn.send()
writes bytes on a connection; request.reply_raw() answers a request with bytes sent
verbatim. The engine side is include/pmu/pmu.h's pmu_conn_*; the binding is
binding/conn.c.
"""

import errno
import gc
import http.client
import logging
import socket
import struct
import threading
import time
import weakref

import pytest

import pymongoose_uring as pmu
from conftest import RawClient, request, wait_until
from pymongoose_uring import _native

_pmu = _native._pmu
OPEN, DATA, READ, SENT, DRAIN, CLOSE = (
    _pmu.CONN_OPEN,
    _pmu.CONN_DATA,
    _pmu.CONN_READ,
    _pmu.CONN_SENT,
    _pmu.CONN_DRAIN,
    _pmu.CONN_CLOSE,
)


class Recorder:
    """A connection_handler that records (conn, event, data) and may act on each."""

    def __init__(self, act=None):
        self.events = []
        self.act = act

    def __call__(self, conn, event, data):
        self.events.append((conn, event, data))
        if self.act is not None:
            self.act(conn, event, data)

    def conns(self):
        """The Connection objects, in the order of their OPEN events."""
        return [c for c, e, _ in self.events if e == OPEN]

    def of(self, conn):
        return [(e, d) for c, e, d in self.events if c is conn]

    def closes(self):
        return [(c, d) for c, e, d in self.events if e == CLOSE]

    def wait_closes(self, n, timeout=10):
        wait_until(lambda: len(self.closes()) >= n, timeout, what="%d CLOSE events" % n)


def raw_socket(server, timeout=10):
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def recv_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(1 << 20, n - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_to_eof(sock):
    data = bytearray()
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return bytes(data), True
            data += chunk
    except ConnectionResetError:
        return bytes(data), False


def echo(conn, event, data):
    if event == DATA:
        conn.send(data)


# ---- events on HTTP connections ----------------------------------------------------


def test_open_first_close_last_and_one_object_per_connection(serve):
    seen = []

    def app(request):
        seen.append((request.connection, request.conn_id, request.client))
        return "ok"

    rec = Recorder()
    server = serve(app, connection_handler=rec)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(3):
        c.request("GET", "/")
        assert c.getresponse().read() == b"ok"
    sockname = c.sock.getsockname()
    c.close()
    assert request(server)[2] == b"ok"  # a second connection
    rec.wait_closes(2)

    first, second = rec.conns()
    assert first is not second and first.id != second.id
    # The three requests of the keep-alive connection saw its one object.
    assert [s[0] for s in seen] == [first, first, first, second]
    assert {s[1] for s in seen[:3]} == {first.id}
    events = rec.of(first)
    assert events[0] == (OPEN, None) and events[-1] == (CLOSE, 0)
    assert [e for e, _ in events] == [OPEN, CLOSE]  # nothing else without conn_io_events
    assert first.peer == sockname == seen[0][2]
    assert first.local == ("127.0.0.1", server.port)
    assert first.closed and first.unsent == 0 and first.close_error == 0
    assert first.thread == 0
    assert "closed" in repr(first)
    assert server.stats()["conn_events"] == len(rec.events) == 4


def test_request_connection_is_none_without_a_connection_handler(serve):
    server = serve(lambda r: repr(r.connection))
    assert request(server)[2] == b"None"
    assert server.stats()["conn_events"] == 0  # the engine made none


def test_connection_of_a_request_answered_later_stays_readable(serve):
    kept = []

    def app(request):
        kept.append(request)
        threading.Timer(0.05, request.reply, ("later",)).start()

    rec = Recorder()
    server = serve(app, connection_handler=rec)
    assert request(server)[2] == b"later"
    rec.wait_closes(1)
    (conn,) = rec.conns()
    # Never read while the request was live: kept when it was answered.
    assert kept[0].connection is conn and kept[0].connection.closed


def test_a_held_request_outlives_its_closed_connection(serve):
    kept = []
    rec = Recorder()
    server = serve(lambda r: kept.append(r), connection_handler=rec)
    s = raw_socket(server)
    s.sendall(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: kept, what="the request")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # a reset: a half-close would still wait for the answer
    rec.wait_closes(1)
    (conn,) = rec.conns()
    request_ = kept[0]
    assert request_.disconnected
    # Unanswered when its connection closed: the handle was given back at CLOSE, so the
    # request no longer reaches the object (the layer above keeps its own reference).
    assert request_.connection is None
    assert conn.closed and conn.close_error == errno.ECONNRESET
    request_.reply("too late")  # answered into the void, quietly
    assert request_.answered and request_.connection is None
    with pytest.raises(pmu.ConnectionClosed):
        conn.send(b"x")


def test_interim_bytes_sent_on_the_connection_go_out_before_the_answer(serve):
    def app(request):
        assert (
            request.connection.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n") is False
        )
        return "final"

    server = serve(app, connection_handler=Recorder())
    c = RawClient(server.port)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = c.read_response(head=True)
        assert status == 103 and ("Link", "</s.css>") in headers
        status, _, body = c.read_response()
        assert (status, body) == (200, b"final")
    finally:
        c.close()


def test_bytes_sent_between_pipelined_answers_keep_their_place(serve):
    # Request 1's handler writes X on the connection, then answers: X, answer 1, answer 2.
    def app(request):
        if request.path == "/1":
            request.connection.send(b"X")
        return request.path

    server = serve(app, connection_handler=Recorder())
    s = raw_socket(server)
    s.sendall(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while data.count(b"\r\n\r\n") < 2 or not data.endswith(b"/2"):
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    s.close()
    assert data.startswith(b"XHTTP/1.1 200 ")
    assert data.index(b"\r\n\r\n/1") < data.index(b"\r\n\r\n/2")


def test_close_from_an_http_handler_ends_the_connection_after_the_answer(serve):
    rec = Recorder()

    def app(request):
        request.reply("last")
        request.connection.close()

    server = serve(app, connection_handler=rec)
    c = RawClient(server.port)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response()[2] == b"last"
        assert c.closed_by_server()
    finally:
        c.close()
    rec.wait_closes(1)
    assert rec.closes()[0][1] == 0


def test_conn_io_events_report_bytes_read_and_sent(serve):
    rec = Recorder()
    server = serve(lambda r: "x" * 100, connection_handler=rec, conn_io_events=True)
    status, _, body, _ = request(server, path="/io-events")
    assert (status, body) == (200, b"x" * 100)
    rec.wait_closes(1)
    (conn,) = rec.conns()
    events = rec.of(conn)
    kinds = [e for e, _ in events]
    assert kinds[0] == OPEN and kinds[-1] == CLOSE
    read = b"".join(d for e, d in events if e == READ)
    assert read.startswith(b"GET /io-events HTTP/1.1\r\n")
    sent = sum(d for e, d in events if e == SENT)
    assert isinstance(sent, int) and sent > 100  # the head and the 100-byte body
    assert kinds.index(READ) < kinds.index(SENT)
    # Off by default: only OPEN and CLOSE.
    rec2 = Recorder()
    server2 = serve(lambda r: "y", connection_handler=rec2)
    request(server2)
    rec2.wait_closes(1)
    assert [e for _, e, _ in rec2.events] == [OPEN, CLOSE]


def test_user_slot_is_the_layer_aboves(serve):
    marker = object()

    def on_event(conn, event, data):
        if event == OPEN:
            assert conn.user is None
            conn.user = {"marker": marker}

    server = serve(
        lambda r: "yes" if r.connection.user["marker"] is marker else "no",
        connection_handler=Recorder(on_event),
    )
    assert request(server)[2] == b"yes"


def test_an_exception_in_the_handler_is_logged_and_serving_goes_on(serve, caplog):
    caplog.set_level(logging.ERROR, logger="pymongoose_uring")

    def on_event(conn, event, data):
        raise ValueError("boom on %d" % event)

    rec = Recorder(on_event)
    server = serve(lambda r: "still", connection_handler=rec)
    for _ in range(2):
        assert request(server)[2] == b"still"
    rec.wait_closes(2)
    text = caplog.text
    assert "connection_handler raised on OPEN" in text and "boom on %d" % OPEN in text
    assert "connection_handler raised on CLOSE" in text
    assert any(r.exc_info for r in caplog.records)


def test_websocket_connection_gets_gone_before_close_and_send_is_refused(serve):
    order = []
    refused = []

    def app(request):
        conn = request.connection
        request.accept_websocket(on_disconnect=lambda ws, code: order.append("gone"))
        try:
            conn.send(b"raw bytes on a WebSocket")
        except RuntimeError as exc:
            refused.append(str(exc))

    rec = Recorder(lambda c, e, d: order.append(e))
    server = serve(app, connection_handler=rec)
    s = raw_socket(server)
    s.sendall(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    # A masked close frame 1000, then the server's close and the end.
    s.sendall(b"\x88\x82" + b"\x00\x00\x00\x00" + struct.pack("!H", 1000))
    recv_to_eof(s)
    s.close()
    rec.wait_closes(1)
    assert refused and "WebSocket" in refused[0]
    assert order[0] == OPEN and order[-2:] == ["gone", CLOSE]


# ---- raw byte streams ------------------------------------------------------------


def test_raw_echo(serve):
    rec = Recorder(echo)
    server = serve(None, raw=True, connection_handler=rec)
    s = raw_socket(server)
    s.sendall(b"hello")
    assert recv_exactly(s, 5) == b"hello"
    s.sendall("héllo".encode())
    assert recv_exactly(s, 6) == "héllo".encode()
    s.close()
    rec.wait_closes(1)
    (conn,) = rec.conns()
    kinds = [e for e, _ in rec.of(conn)]
    assert kinds[0] == OPEN and kinds[-1] == CLOSE and set(kinds[1:-1]) == {DATA}
    assert b"".join(d for e, d in rec.of(conn) if e == DATA) == "hellohéllo".encode()
    stats = server.stats()
    assert stats["raw_bytes_in"] == stats["raw_bytes_out"] == 11
    assert stats["raw_sends"] >= 2 and stats["requests"] == 0


def test_raw_conn_io_events_report_sent_not_read(serve):
    rec = Recorder(echo)
    server = serve(None, raw=True, connection_handler=rec, conn_io_events=True)
    s = raw_socket(server)
    s.sendall(b"count me")
    assert recv_exactly(s, 8) == b"count me"
    s.close()
    rec.wait_closes(1)
    kinds = [e for _, e, _ in rec.events]
    assert READ not in kinds  # raw bytes come as DATA only
    assert kinds.index(DATA) < kinds.index(SENT)
    assert sum(d for _, e, d in rec.events if e == SENT) == 8


def test_raw_echo_of_one_mebibyte(serve):
    server = serve(None, raw=True, connection_handler=echo)
    payload = bytes(range(256)) * 4096
    s = raw_socket(server, timeout=30)
    sender = threading.Thread(target=s.sendall, args=(payload,))
    sender.start()
    got = recv_exactly(s, len(payload))
    sender.join()
    s.close()
    assert got == payload


def test_raw_echo_to_a_dribbling_client(serve):
    server = serve(None, raw=True, connection_handler=echo)
    s = raw_socket(server)
    for i in range(40):
        s.sendall(bytes([i]))
        assert s.recv(16) == bytes([i])
        time.sleep(0.002)
    s.close()


def test_raw_over_a_unix_socket_and_ipv6(serve, tmp_path):
    path = str(tmp_path / "raw.sock")
    rec = Recorder(echo)
    serve(None, raw=True, connection_handler=rec, unix_path=path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"unix")
    assert recv_exactly(s, 4) == b"unix"
    s.close()
    rec.wait_closes(1)
    (conn,) = rec.conns()
    assert conn.peer is None and conn.local == path
    if not socket.has_ipv6:
        return
    try:
        server6 = serve(None, raw=True, connection_handler=rec, host="::1")
    except OSError:
        pytest.skip("no ::1")
    s = socket.create_connection(("::1", server6.port), timeout=10)
    s.sendall(b"six")
    assert recv_exactly(s, 3) == b"six"
    sockname = s.getsockname()
    s.close()
    rec.wait_closes(2)
    conn6 = rec.conns()[1]
    assert conn6.peer == sockname[:2] and conn6.local == ("::1", server6.port)


def test_send_str_and_buffers_and_type_errors(serve):
    results = []

    def act(conn, event, data):
        if event == DATA:
            conn.send("é")
            conn.send(bytearray(b"b"))
            conn.send(memoryview(b"xmvx")[1:3])
            try:
                conn.send(12)
            except TypeError as exc:
                results.append(str(exc))
            conn.close()

    server = serve(None, raw=True, connection_handler=act)
    s = raw_socket(server)
    s.sendall(b"go")
    assert recv_to_eof(s) == ("é".encode() + b"bmv", True)
    s.close()
    assert results and "str or a bytes-like object" in results[0]


def test_send_above_high_water_is_followed_by_drain(serve):
    results = []
    big = b"z" * (1 << 20)

    def act(conn, event, data):
        if event == DATA:
            results.append(("small", conn.send(b"s")))
            results.append(("big", conn.send(big)))
            results.append(("unsent", conn.unsent))
        elif event == DRAIN:
            results.append(("drain", conn.unsent))

    server = serve(None, raw=True, connection_handler=act, conn_send_high_water=256 << 10)
    s = raw_socket(server)
    s.sendall(b"go")
    assert recv_exactly(s, 1 + len(big)) == b"s" + big
    wait_until(lambda: any(r[0] == "drain" for r in results), what="DRAIN")
    s.close()
    assert results[0] == ("small", False)
    assert results[1] == ("big", True)
    assert results[2][1] > 256 << 10
    assert results[3][1] <= 128 << 10


def test_send_beyond_the_limit_raises_and_closes(serve):
    results = []

    def act(conn, event, data):
        if event == DATA:
            conn.send(b"a" * (64 << 10))
            try:
                conn.send(b"b" * (64 << 10))
            except _pmu.ConnectionClosed as exc:
                results.append(exc)
        elif event == CLOSE:
            results.append(("close", data))

    server = serve(None, raw=True, connection_handler=act, conn_send_limit=100 << 10)
    s = raw_socket(server)
    s.sendall(b"go")
    recv_to_eof(s)
    s.close()
    wait_until(lambda: any(isinstance(r, tuple) for r in results), what="CLOSE")
    assert isinstance(results[0], pmu.ConnectionClosed)
    assert "conn_send_limit" in str(results[0])


def test_close_after_send_delivers_what_was_queued(serve):
    rec = Recorder()

    def act(conn, event, data):
        rec(conn, event, data)
        if event == DATA:
            conn.send(b"bye " * 1000)
            conn.close()
            assert conn.closed
            conn.close()  # a second close does nothing
            with pytest.raises(_pmu.ConnectionClosed):
                conn.send(b"late")

    server = serve(None, raw=True, connection_handler=act)
    s = raw_socket(server)
    s.sendall(b"x")
    assert recv_to_eof(s) == (b"bye " * 1000, True)
    s.close()
    rec.wait_closes(1)
    assert rec.closes()[0][1] == 0


def test_close_now_drops_what_is_unsent(serve):
    rec = Recorder()
    big = b"n" * (8 << 20)

    def act(conn, event, data):
        rec(conn, event, data)
        if event == DATA:
            conn.send(big)
            conn.close(now=True)

    server = serve(None, raw=True, connection_handler=act)
    s = raw_socket(server)
    s.sendall(b"x")
    data, _ = recv_to_eof(s)
    s.close()
    assert len(data) < len(big)
    rec.wait_closes(1)


def test_close_err_reports_an_orderly_end_and_a_reset(serve):
    rec = Recorder()
    server = serve(None, raw=True, connection_handler=rec)
    # An orderly end: 0.
    s = raw_socket(server)
    s.sendall(b"a")
    wait_until(lambda: any(e == DATA for _, e, _ in rec.events), what="DATA")
    s.close()
    rec.wait_closes(1)
    assert rec.closes()[0][1] == 0
    # A reset: ECONNRESET.
    s = raw_socket(server)
    s.sendall(b"b")
    wait_until(lambda: sum(e == DATA for _, e, _ in rec.events) == 2, what="DATA")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    rec.wait_closes(2)
    assert rec.closes()[1][1] == errno.ECONNRESET
    assert [c.close_error for c in rec.conns()] == [0, errno.ECONNRESET]


@pytest.mark.parametrize("first", [b"", b"x"], ids=["silent", "after-data"])
def test_raw_idle_timeout_closes_with_etimedout(serve, first):
    rec = Recorder()
    server = serve(None, raw=True, connection_handler=rec, raw_idle_timeout_ms=300)
    s = raw_socket(server, timeout=3)
    if first:
        s.sendall(first)
    started = time.monotonic()
    assert recv_to_eof(s) == (b"", True)  # the peer sees the end
    assert time.monotonic() - started >= 0.25
    s.close()
    rec.wait_closes(1)
    assert rec.closes()[0][1] == errno.ETIMEDOUT


def test_pause_reading_holds_data_back_until_resumed(serve):
    rec = Recorder(lambda c, e, d: c.pause_reading() if e == OPEN else None)
    server = serve(None, raw=True, connection_handler=rec)
    s = raw_socket(server)
    s.sendall(b"held")
    wait_until(lambda: rec.conns(), what="OPEN")
    time.sleep(0.3)
    assert not any(e == DATA for _, e, _ in rec.events)
    (conn,) = rec.conns()
    conn.pause_reading(False)  # from this thread
    wait_until(lambda: any(e == DATA for _, e, _ in rec.events), what="DATA")
    assert b"".join(d for _, e, d in rec.events if e == DATA) == b"held"
    s.close()
    rec.wait_closes(1)


def test_send_from_another_thread(serve):
    conns = []
    server = serve(None, raw=True, connection_handler=lambda c, e, d: conns.append(c))
    s = raw_socket(server)
    wait_until(lambda: conns, what="OPEN")
    conn = conns[0]
    assert conn.send(b"from a thread") is False
    assert recv_exactly(s, 13) == b"from a thread"
    conn.close()
    assert recv_to_eof(s) == (b"", True)
    s.close()


def test_stop_closes_raw_connections(serve):
    rec = Recorder()
    server = serve(None, raw=True, connection_handler=rec, shutdown_timeout_ms=2000)
    s = raw_socket(server)
    wait_until(lambda: rec.conns(), what="OPEN")
    started = time.monotonic()
    server.stop(timeout=10)
    assert time.monotonic() - started < 5
    assert recv_to_eof(s)[0] == b""
    s.close()
    assert len(rec.closes()) == 1


def test_stop_gives_every_http_connection_its_close(serve):
    refs = []
    closes = []

    def handler(conn, event, data):
        if event == OPEN:
            refs.append(weakref.ref(conn))
        elif event == CLOSE:
            closes.append(data)

    server = serve(lambda r: "ok", connection_handler=handler)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    c.request("GET", "/")
    assert c.getresponse().read() == b"ok"  # then idle, kept alive
    s = raw_socket(server)  # accepted, nothing sent yet
    wait_until(lambda: len(refs) == 2, what="2 OPEN")
    server.stop(timeout=10)
    assert len(closes) == 2
    assert all(r() is None for r in refs)  # nothing held them: freed at CLOSE
    c.close()
    s.close()


def test_server_arguments_are_checked():
    with pytest.raises(TypeError, match="raw=True"):
        pmu.Server(None)
    with pytest.raises(ValueError, match="connection_handler"):
        pmu.Server(None, raw=True)
    with pytest.raises(TypeError, match="callable"):
        pmu.Server(lambda r: "", connection_handler=42)
    with pytest.raises(TypeError):
        _pmu.Connection()


# ---- raw answers -------------------------------------------------------------------


def test_reply_raw_keeps_the_connection_alive(serve):
    second = []

    def app(request):
        body = request.path.encode()
        request.reply_raw(
            b"HTTP/1.1 200 OK\r\nX-Raw: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        try:
            request.reply_raw(b"again")
        except RuntimeError as exc:
            second.append(str(exc))

    server = serve(app)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for path in ("/one", "/two"):
        c.request("GET", path)
        r = c.getresponse()
        assert (r.status, r.getheader("X-Raw"), r.read()) == (200, "1", path.encode())
    c.close()
    assert server.stats()["connections_accepted"] == 1
    assert len(second) == 2 and "already answered" in second[0]


def test_reply_raw_answers_pipelined_requests_in_order(serve):
    def app(request):
        if request.path == "/slow":
            # Answered last, from another thread: the later answers wait for it.
            threading.Timer(
                0.05, request.reply_raw, (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow",)
            ).start()
            return None
        body = request.path.encode()
        request.reply_raw(
            "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), request.path)
        )
        return None

    server = serve(app, connection_handler=Recorder())
    c = RawClient(server.port)
    try:
        c.send(
            b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p for p in (b"/a", b"/slow", b"/b"))
        )
        assert [c.read_response()[2] for _ in range(3)] == [b"/a", b"slow", b"/b"]
    finally:
        c.close()


def test_reply_raw_of_a_large_body_without_copy(serve):
    body = bytes(range(256)) * 1024  # 256 KiB: kept, not copied
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    whole = head + body

    def app(request):
        request.reply_raw(whole)

    server = serve(app)
    status, _, got, _ = request(server)
    assert (status, got) == (200, body)


# ---- lifetime ----------------------------------------------------------------------


def test_no_connection_left_after_close(serve):
    gc.collect()
    base = _pmu.connections_alive()
    refs = []

    def handler(conn, event, data):
        if event == OPEN:
            refs.append(weakref.ref(conn))
            conn.user = conn  # a cycle through the user slot, broken by the collector
        elif event == DATA:
            conn.send(data)

    server = serve(None, raw=True, connection_handler=handler)
    for _ in range(5):
        s = raw_socket(server)
        s.sendall(b"ping")
        assert recv_exactly(s, 4) == b"ping"
        s.close()
    wait_until(lambda: len(refs) == 5, what="5 OPEN")
    wait_until(
        lambda: gc.collect() is not None and all(r() is None for r in refs),
        what="every Connection freed",
    )
    assert _pmu.connections_alive() == base
    stats = server.stats()
    assert stats["connections_open"] == 0
    assert stats["conn_events"] == 5 * 3


def test_an_unheld_connection_dies_at_close(serve):
    refs = []
    server = serve(
        lambda r: "ok",
        connection_handler=lambda c, e, d: refs.append(weakref.ref(c)) if e == OPEN else None,
    )
    base = _pmu.requests_alive()
    assert request(server)[2] == b"ok"
    # No collection needed: the engine's reference is the last one and goes at CLOSE.
    wait_until(lambda: refs and refs[0]() is None, what="the Connection freed")
    assert _pmu.requests_alive() == base


def test_two_threads(serve):
    rec = Recorder()
    threads_seen = []

    def app(request):
        threads_seen.append((request.thread, request.connection.thread))
        return str(request.connection.id)

    server = serve(app, connection_handler=rec, threads=2)
    ids = set()
    for _ in range(24):
        status, _, body, _ = request(server)
        assert status == 200
        ids.add(int(body))
    rec.wait_closes(24)
    conns = rec.conns()
    assert len(conns) == 24 and {c.id for c in conns} == ids
    for conn in conns:
        kinds = [e for e, _ in rec.of(conn)]
        assert kinds == [OPEN, CLOSE]
    assert all(a == b for a, b in threads_seen)
    assert {t for t, _ in threads_seen} <= {0, 1}
