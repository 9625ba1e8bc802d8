"""pymongoose's connection model in the compatibility layer: one Connection per
connection for its whole life, Mongoose's ids and events in order (OPEN, ACCEPT,
HTTP_HDRS, HTTP_MSG, READ, WRITE, POLL, WAKEUP, ERROR, CLOSE), handler resolution,
plain TCP listeners, raw sends, chunked and SSE answers, drain/close, the two
poll() modes, buffers and listen() failures. Real sockets throughout."""

import http.client
import socket
import threading
import time

import pytest

from conftest import RawClient, wait_until
from pymongoose_uring import _native, compat
from pymongoose_uring.compat import (
    MG_EV_ACCEPT,
    MG_EV_CLOSE,
    MG_EV_ERROR,
    MG_EV_HTTP_HDRS,
    MG_EV_HTTP_MSG,
    MG_EV_OPEN,
    MG_EV_POLL,
    MG_EV_READ,
    MG_EV_WAKEUP,
    MG_EV_WRITE,
    ConnectionClosed,
    HttpMessage,
    Manager,
)

GET = b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n"


class Poller:
    """A Manager polled by a thread (as pymongoose programs do) until stop()."""

    def __init__(self, manager, ms=20):
        self.manager = manager
        self.running = True
        self.thread = threading.Thread(target=self._run, args=(ms,), daemon=True)
        self.thread.start()

    def _run(self, ms):
        while self.running:
            self.manager.poll(ms)

    def stop(self):
        self.running = False
        self.thread.join(5)
        self.manager.close()


def port_of(listener):
    return listener.local_addr[1]


def frame(data):
    """A chunk as Mongoose's mg_http_write_chunk frames it."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def test_one_connection_object_for_its_life_and_events_in_order():
    events = []

    def handler(conn, ev, data):
        if conn.is_listening:
            events.append(("listener", ev))
            return
        events.append((ev, conn.id, id(conn)))
        if ev == MG_EV_HTTP_MSG:
            conn.userdata = (conn.userdata or 0) + 1
            conn.reply(200, "request %d" % conn.userdata)

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        assert listener.id == 1 and listener.is_listening
        c = RawClient(port_of(listener))
        c.send(GET % b"a")
        assert c.read_response()[2] == b"request 1"
        c.send(GET % b"b")
        assert c.read_response()[2] == b"request 2"  # userdata survived: one object
        c.close()
        wait_until(lambda: any(e[0] == MG_EV_CLOSE for e in events), what="MG_EV_CLOSE")
    conn_events = [e for e in events if e[0] != "listener"]
    assert {e[1:] for e in conn_events} == {(2, conn_events[0][2])}  # id 2: after the listener
    assert [e[0] for e in conn_events] == [
        MG_EV_OPEN,
        MG_EV_ACCEPT,
        MG_EV_HTTP_HDRS,
        MG_EV_HTTP_MSG,
        MG_EV_HTTP_HDRS,
        MG_EV_HTTP_MSG,
        MG_EV_CLOSE,
    ]
    assert events[0] == ("listener", MG_EV_OPEN) and events[-1] == ("listener", MG_EV_CLOSE)


def test_ids_count_per_manager_listener_first_and_the_wakeup_pipe_takes_one():
    with Manager(lambda c, e, d: None) as a, Manager(enable_wakeup=True) as b:
        assert [a.listen("tcp://127.0.0.1:0").id, a.listen("tcp://127.0.0.1:0").id] == [1, 2]
        assert b.listen("http://127.0.0.1:0", http=True).id == 2  # 1 is Mongoose's pipe


def test_a_listeners_handler_handles_its_connections_else_the_managers():
    seen = []

    def default(conn, ev, data):
        seen.append(("default", ev, conn.is_listening))
        if ev == MG_EV_HTTP_MSG:
            conn.reply(200, "default")

    def special(conn, ev, data):
        seen.append(("special", ev, conn.is_listening))
        if ev == MG_EV_HTTP_MSG:
            assert conn.remote_addr[0] == "127.0.0.1" and conn.local_addr[2] is False
            conn.reply(201, "special", headers={"X-Listener": "special"})

    with Manager(default) as mgr:
        a = mgr.listen("http://127.0.0.1:0", http=True)
        b = mgr.listen("http://127.0.0.1:0", special, http=True)
        assert a.handler is None and b.handler is special
        for listener, expected in ((a, (200, b"default")), (b, (201, b"special"))):
            c = RawClient(port_of(listener))
            c.send(GET % b"")
            status, _, body = c.read_response()
            assert (status, body) == expected
            c.close()
    msgs = [(who, listening) for who, ev, listening in seen if ev == MG_EV_HTTP_MSG]
    assert msgs == [("default", False), ("special", False)]
    assert ("special", MG_EV_OPEN, True) in seen and ("default", MG_EV_OPEN, True) in seen


def test_no_handler_at_all_answers_404():
    with Manager() as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        c.send(GET % b"")
        assert c.read_response()[0] == 404


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:0", "http://127.0.0.1:0", "127.0.0.1:0"])
def test_plain_tcp_listener_echoes_with_read_recv_data_send(url):
    events = []

    def handler(conn, ev, data):
        if conn.is_listening:
            return
        events.append(ev)
        if ev == MG_EV_READ:
            assert data is None and conn.recv_len == len(conn.recv_data())
            conn.send(b"echo:" + conn.recv_data())
            if conn.recv_data() == b"bye":
                conn.close()

    with Manager(handler) as mgr:
        listener = mgr.listen(url)  # no http=True: a byte stream, no HTTP parsing
        sock = socket.create_connection(("127.0.0.1", port_of(listener)), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert sock.recv(100) == b"echo:GET / HTTP/1.1\r\n\r\n"
        sock.sendall(b"bye")
        data = b""
        while True:
            piece = sock.recv(100)
            if not piece:
                break
            data += piece
        assert data == b"echo:bye"  # sent, then closed by conn.close()
        sock.close()
        wait_until(lambda: MG_EV_CLOSE in events, what="MG_EV_CLOSE")
    assert events[:2] == [MG_EV_OPEN, MG_EV_ACCEPT] and events[-1] == MG_EV_CLOSE
    assert events.count(MG_EV_READ) >= 2


def test_send_writes_a_hand_made_response_and_http_chunk_frames_it():
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            if data.uri == "/chunks":
                conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                conn.http_chunk("First")
                conn.http_chunk(b"Second")
                conn.http_chunk("Привет")
                conn.http_chunk("")
            else:
                conn.reply(200, "after")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        h = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=10)
        h.request("GET", "/chunks")
        r = h.getresponse()
        assert r.status == 200 and r.read() == "FirstSecondПривет".encode()
        h.request("GET", "/next")  # the same connection goes on after it
        assert h.getresponse().read() == b"after"
        h.close()


def test_reply_with_transfer_encoding_chunked_streams_a_valid_chunked_answer():
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            if data.uri == "/sse":
                conn.reply(
                    200,
                    "",
                    headers={"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"},
                )
                conn.http_sse("message", "hello")
                conn.http_sse("update", "two")
                conn.http_chunk("")
            else:
                conn.reply(200, "start:", headers={"Transfer-Encoding": "chunked"})
                conn.http_chunk("X" * 10000)
                conn.http_chunk("")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        h = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=10)
        h.request("GET", "/big")
        r = h.getresponse()
        assert r.getheader("Transfer-Encoding") == "chunked"
        assert r.read() == b"start:" + b"X" * 10000
        h.request("GET", "/sse")
        r = h.getresponse()
        assert r.getheader("Content-Type") == "text/event-stream"
        assert r.read() == b"event: message\ndata: hello\n\nevent: update\ndata: two\n\n"
        h.close()


@pytest.mark.parametrize("close", [False, True])
def test_sse_after_a_hand_written_head_is_framed_as_mongoose_frames_it(close):
    """close: the client sends Connection: close (urllib does), which would end the
    connection after an answer: the events that follow the head must still go out."""
    conns = []

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            conn.http_sse("connected", "Welcome")
            conns.append(conn)

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        c.send(
            GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") % b"events"
            if close
            else GET % b"events"
        )
        wait_until(lambda: conns, what="the request")
        conns[0].http_sse("tick", "1")  # later, from another thread
        want = frame(b"event: connected\ndata: Welcome\n\n") + frame(b"event: tick\ndata: 1\n\n")
        wait_until(lambda: want in c.buf or c._fill(), what="the events")
        assert c.buf.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        conns[0].drain()  # nothing left to answer: closes once the events are out
        assert c.closed_by_server()
        c.close()


def test_reply_defaults_and_a_second_reply():
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            if data.uri == "/default":
                conn.reply(200, "plain")
            elif data.uri == "/given":
                conn.reply(200, b"{}", headers={"Content-Type": "application/json"})
            elif data.uri == "/none":
                conn.reply(204, None, {})
            else:
                conn.reply(200, "one")
                conn.reply(201, "two", headers={"X-Second": "yes"})  # raw, as Mongoose

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        c.send(GET % b"default")
        assert dict(c.read_response()[1])["Content-Type"] == "text/plain"
        c.send(GET % b"given")
        assert dict(c.read_response()[1])["Content-Type"] == "application/json"
        c.send(GET % b"none")
        status, headers, body = c.read_response()
        assert status == 204 and "Content-Type" not in dict(headers) and body == b""
        c.send(GET % b"twice")
        assert c.read_response()[2] == b"one"
        status, headers, body = c.read_response()
        assert (status, body, dict(headers)["X-Second"]) == (201, b"two", "yes")
        c.close()


@pytest.mark.parametrize("way", ["reply-drain", "drain-reply", "send-drain", "close"])
def test_drain_and_close_after_an_answer_close_the_connection(way):
    events = []

    def handler(conn, ev, data):
        events.append(ev)
        if ev != MG_EV_HTTP_MSG:
            return
        assert not conn.is_draining
        if way == "reply-drain":
            conn.reply(200, b"Goodbye!")
            conn.drain()
            assert conn.is_draining
        elif way == "drain-reply":
            conn.drain()
            conn.reply(200, b"Goodbye!")
        elif way == "send-drain":
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nGoodbye!")
            conn.drain()
        else:
            conn.reply(200, b"Goodbye!")
            conn.close()

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        c.send(GET % b"")
        assert c.read_response()[2] == b"Goodbye!"
        assert c.closed_by_server()
        c.close()
        wait_until(lambda: MG_EV_CLOSE in events, what="MG_EV_CLOSE")


def test_a_request_left_unanswered_is_answered_in_wakeup_on_the_poll_thread():
    threads = {}

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            body = data.body_bytes
            threading.Timer(0.05, mgr.wakeup, args=(conn.id, body[::-1])).start()
        elif ev == MG_EV_WAKEUP:
            threads["wakeup"] = threading.get_ident()
            conn.reply(200, data)

    mgr = Manager(handler, enable_wakeup=True)
    poller = Poller(mgr)
    try:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        h = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=10)
        h.request("POST", "/", body=b"abc")
        assert h.getresponse().read() == b"cba"
        h.close()
        assert threads["wakeup"] == poller.thread.ident
    finally:
        poller.stop()


def test_wakeup_returns_as_mongoose_does():
    got = []
    with Manager(lambda c, e, d: got.append((c.id, e, d)), enable_wakeup=True) as mgr:
        listener = mgr.listen("tcp://127.0.0.1:0")
        assert mgr.wakeup(listener.id, b"payload") is True
        assert mgr.wakeup(999, b"nobody") is True  # queued; no such connection
        assert mgr.wakeup(0) is False
        mgr.poll(0)
        assert (listener.id, MG_EV_WAKEUP, b"payload") in got
        assert not [g for g in got if g[2] == b"nobody"]
    with Manager() as mgr:
        listener = mgr.listen("tcp://127.0.0.1:0")
        assert mgr.wakeup(listener.id, b"x") is False  # not enable_wakeup
    with pytest.raises(RuntimeError):
        mgr.wakeup(1)


def test_error_delivers_mg_ev_error_then_closes():
    got = []

    def handler(conn, ev, data):
        got.append((conn.is_listening, ev, data))
        if ev == MG_EV_HTTP_MSG:
            conn.error("handler says no")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        c.send(GET % b"")
        assert c.closed_by_server()
        c.close()
        wait_until(lambda: (False, MG_EV_CLOSE, None) in got, what="MG_EV_CLOSE")
        assert (False, MG_EV_ERROR, "handler says no") in got
        listener.error("Test error message")
        assert (True, MG_EV_ERROR, "Test error message") in got
        mgr.poll(0)
        assert (True, MG_EV_CLOSE, None) in got and listener.is_closing


def test_mg_ev_poll_once_per_poll_per_live_connection():
    polls = {}
    threads = set()

    def handler(conn, ev, data):
        if ev == MG_EV_POLL:
            polls[conn.id] = polls.get(conn.id, 0) + 1
            threads.add(threading.get_ident())

    with Manager(handler) as mgr:
        listener = mgr.listen("tcp://127.0.0.1:0")
        sock = socket.create_connection(("127.0.0.1", port_of(listener)))
        wait_until(lambda: len(mgr._conns) == 2, what="the connection accepted")
        polls.clear()
        for _ in range(3):
            mgr.poll(0)
        assert polls == {listener.id: 3, listener.id + 1: 3}
        sock.close()
        wait_until(lambda: len(mgr._conns) == 1, what="the connection closed")
        mgr.poll(0)
        assert polls == {listener.id: 4, listener.id + 1: 3}
    assert threads == {threading.get_ident()}  # on the thread calling poll()


def test_handlers_in_poll_run_every_event_on_the_polling_thread():
    threads = set()
    events = []

    def handler(conn, ev, data):
        threads.add(threading.get_ident())
        events.append(ev)
        if ev == MG_EV_HTTP_MSG:
            conn.reply(200, "polled %s" % data.uri)
        elif ev == MG_EV_READ:
            conn.send(conn.recv_data().upper())

    mgr = Manager(handler, handlers_in_poll=True)
    poller = Poller(mgr, ms=1000)
    try:
        http_listener = mgr.listen("http://127.0.0.1:0", http=True)
        tcp_listener = mgr.listen("tcp://127.0.0.1:0")
        t0 = time.monotonic()
        c = RawClient(port_of(http_listener))
        c.send(GET % b"x")
        assert c.read_response()[2] == b"polled /x"
        assert time.monotonic() - t0 < 0.9  # poll(1000) returned after the batch
        sock = socket.create_connection(("127.0.0.1", port_of(tcp_listener)), timeout=10)
        sock.sendall(b"shout")
        assert sock.recv(100) == b"SHOUT"
        sock.close()
        c.close()
        wait_until(lambda: events.count(MG_EV_CLOSE) == 2, what="both MG_EV_CLOSE")
    finally:
        poller.stop()
    # listen() runs on this thread (the listeners' MG_EV_OPEN), every other event in poll()
    assert threads <= {poller.thread.ident, threading.get_ident()}
    assert poller.thread.ident in threads


def test_handlers_in_poll_without_polling_nothing_runs_and_close_delivers_close():
    events = []
    mgr = Manager(lambda c, e, d: events.append(e), handlers_in_poll=True)
    listener = mgr.listen("tcp://127.0.0.1:0")
    sock = socket.create_connection(("127.0.0.1", port_of(listener)))
    sock.sendall(b"x")
    time.sleep(0.2)
    assert events == [MG_EV_OPEN]  # the listener's, inside listen()
    mgr.close()  # stops the server and runs what was queued, CLOSE last
    assert events[1:3] == [MG_EV_OPEN, MG_EV_ACCEPT] and MG_EV_READ in events
    assert events[-2:] == [MG_EV_CLOSE, MG_EV_CLOSE]  # the connection's, the listener's
    sock.close()


def test_io_events_give_read_and_write_on_http_connections():
    events = []

    def handler(conn, ev, data):
        if conn.is_listening:
            return
        if ev == MG_EV_READ:
            events.append(("read", conn.recv_data()))
        elif ev in (MG_EV_WRITE, MG_EV_HTTP_MSG):
            events.append(ev)
            if ev == MG_EV_HTTP_MSG:
                conn.reply(200, "ok")

    with Manager(handler, io_events=True) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        c.send(GET % b"io")
        assert c.read_response()[2] == b"ok"
        wait_until(lambda: MG_EV_WRITE in events, what="MG_EV_WRITE")
        c.close()
    assert ("read", GET % b"io") in events
    assert events.index(MG_EV_HTTP_MSG) < events.index(MG_EV_WRITE)


def test_buffers_show_what_the_handler_is_given():
    got = {}

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            got.update(
                data=conn.recv_data(),
                first=conn.recv_data(4),
                len=conn.recv_len,
                send=conn.send_data(),
                readable=conn.is_readable,
                writable=conn.is_writable,
                full=conn.is_full,
            )
            conn.reply(200, "ok")
            got["after"] = conn.recv_data()

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        assert (listener.recv_len, listener.send_len, listener.recv_data()) == (0, 0, b"")
        c = RawClient(port_of(listener))
        c.send(b"POST /p?q=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert c.read_response()[2] == b"ok"
        c.close()
    assert got["data"] == b"POST /p?q=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    assert got["first"] == b"POST" and got["len"] == len(got["data"])
    assert got["send"] == b"" and got["after"] == b""
    assert got["readable"] and got["writable"] and not got["full"]


def test_a_closed_connection_answers_as_pymongoose_and_refuses_sends():
    kept = []

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            kept.append(conn)
            conn.reply(200, "ok")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        c.send(GET % b"")
        c.read_response()
        c.close()
        wait_until(lambda: kept and kept[0].is_closing, what="the connection closed")
        conn = kept[0]
        wait_until(lambda: conn.id == 0, what="MG_EV_CLOSE delivered")
        assert conn.remote_addr is None and conn.recv_len == 0 and conn.send_len == 0
        with pytest.raises(RuntimeError):  # ConnectionClosed: a RuntimeError, as pymongoose
            conn.send(b"late")
        with pytest.raises(ConnectionClosed):
            conn.reply(200, "late")


def test_a_handler_exception_is_answered_500_and_the_connection_goes_on():
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            if data.uri == "/boom":
                raise ValueError("compat boom")
            conn.reply(200, "fine")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        c.send(GET % b"boom")
        assert c.read_response()[0] == 500
        c.send(GET % b"next")
        assert c.read_response()[2] == b"fine"
        c.close()


@pytest.mark.no_uring_ok
@pytest.mark.parametrize(
    "url",
    ["invalid://address", "udp://127.0.0.1:0", "http://[::1", "mqtts://x:1"],
)
def test_listen_failures_raise_as_pymongoose(url):
    mgr = Manager()
    try:
        with pytest.raises(RuntimeError, match="^Failed to listen on '"):
            mgr.listen(url, http=True)
    finally:
        mgr.close()


def test_listen_on_a_port_in_use_raises_runtime_error():
    with Manager() as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        with pytest.raises(RuntimeError, match="Failed to listen on"):
            mgr.listen("tcp://127.0.0.1:%d" % port_of(listener))
        listener.close()
        assert listener.is_closing and not listener.is_listening
    with pytest.raises(RuntimeError):
        mgr.poll(0)


def test_http_message_as_mongoose_answers_it():
    got = {}

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            got.update(
                status=data.status(),
                q=[
                    data.query_var(n)
                    for n in ("a", "A", "plus", "pct", "bad", "empty", "flag", "none", "utf")
                ],
                long=[data.query_var(n) for n in ("l255", "l256")],
                charset=data.header_var("Content-Type", "charset"),
                bool=bool(data),
            )
            conn.reply(200, "ok")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(port_of(listener))
        query = b"a=1&a=2&plus=x+y&pct=%41%2b&bad=%4&empty=&flag&utf=%C3%A9"
        query += b"&l255=" + b"%41" * 255 + b"&l256=" + b"x" * 256  # Mongoose's 256-byte buffer
        c.send(
            b"GET /x?"
            + query
            + b" HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        )
        c.read_response()
        c.close()
    assert got["status"] == 0  # mg_http_status of a request: atoi("/x")
    assert got["q"] == ["1", "1", "x y", "A+", None, None, None, None, "é"]
    assert got["long"] == ["A" * 255, None]
    assert got["charset"] == "utf-8" and got["bool"] is True
    empty = HttpMessage.__new__(HttpMessage)
    assert empty.status() is None and not empty


def test_no_engine_connection_is_left_behind():
    alive = _native._pmu.connections_alive
    before = alive()

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.reply(200, "x")
        elif ev == MG_EV_READ:
            conn.send(conn.recv_data())

    with Manager(handler) as mgr:
        a = mgr.listen("http://127.0.0.1:0", http=True)
        b = mgr.listen("tcp://127.0.0.1:0")
        for _ in range(20):
            c = RawClient(port_of(a))
            c.send(GET % b"")
            c.read_response()
            c.close()
            s = socket.create_connection(("127.0.0.1", port_of(b)))
            s.sendall(b"x")
            s.recv(1)
            s.close()
    wait_until(lambda: alive() <= before, what="every Connection freed")
    assert compat.MG_EV_HTTP_HDRS == 10


def test_handlers_in_poll_serve_a_websocket_from_the_polling_thread():
    from test_asgi_websocket import WS

    from pymongoose_uring.compat import MG_EV_WS_MSG, MG_EV_WS_OPEN

    threads = set()
    events = []
    every = []  # MG_EV_POLL included: none before MG_EV_OPEN, none after MG_EV_CLOSE

    def handler(conn, ev, data):
        if conn.is_listening:
            return
        threads.add(threading.get_ident())
        every.append(ev)
        if ev != MG_EV_POLL:
            events.append(ev)
        if ev == MG_EV_HTTP_MSG:
            conn.ws_upgrade(data)
        elif ev == MG_EV_WS_MSG:
            conn.ws_send("echo " + data.text)

    mgr = Manager(handler, handlers_in_poll=True)
    poller = Poller(mgr)
    try:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        ws = WS(port_of(listener), "/ws")
        ws.send("hi")
        assert ws.recv() == "echo hi"
        ws.close(1000)
        wait_until(lambda: MG_EV_CLOSE in events, what="MG_EV_CLOSE")
    finally:
        poller.stop()
    assert threads == {poller.thread.ident}
    assert every[0] == MG_EV_OPEN and every[-1] == MG_EV_CLOSE
    assert events[:5] == [MG_EV_OPEN, MG_EV_ACCEPT, MG_EV_HTTP_HDRS, MG_EV_HTTP_MSG, MG_EV_WS_OPEN]
    assert events[-1] == MG_EV_CLOSE


def test_two_ring_threads_give_each_connection_its_own_id_and_object():
    seen = {}
    lock = threading.Lock()

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            with lock:
                seen.setdefault(conn.id, set()).add(id(conn))
            conn.reply(200, str(conn.id))

    with Manager(handler, threads=2) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        clients = [RawClient(port_of(listener)) for _ in range(16)]
        ids = []
        for c in clients:
            c.send(GET % b"1")
            ids.append(c.read_response()[2])
        for c, first in zip(clients, ids):
            c.send(GET % b"2")
            assert c.read_response()[2] == first  # the same Connection again
            c.close()
    assert len(set(ids)) == 16 and all(len(objs) == 1 for objs in seen.values())
    assert sorted(int(i) for i in ids) == list(range(2, 18))


def test_send_len_and_is_full_follow_what_the_client_has_not_read():
    got = {}

    def handler(conn, ev, data):
        if ev == MG_EV_READ:
            for _ in range(128):
                conn.send(b"x" * 65536)  # 8 MiB to a client that does not read yet
            got.update(len=conn.send_len, full=conn.is_full, writable=conn.is_writable)

    with Manager(handler, conn_send_high_water=65536) as mgr:
        listener = mgr.listen("tcp://127.0.0.1:0")
        sock = socket.create_connection(("127.0.0.1", port_of(listener)), timeout=10)
        sock.sendall(b"go")
        wait_until(lambda: got, what="the sends")
        assert got["len"] > 65536 and got["full"] and not got["writable"]
        received = 0
        while received < 128 * 65536:
            received += len(sock.recv(1 << 20))
        conn = mgr._conns[listener.id + 1]
        wait_until(lambda: conn.send_len == 0, what="everything sent")
        assert not conn.is_full and conn.is_writable
        sock.close()


def test_ipv6_addresses_as_pymongoose_triples():
    got = []

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            got.append((conn.local_addr, conn.remote_addr))
            conn.reply(200, "v6")

    with Manager(handler) as mgr:
        try:
            listener = mgr.listen("http://[::1]:0", http=True)
        except RuntimeError as exc:
            pytest.skip("no IPv6 loopback: %s" % exc)
        port = port_of(listener)
        assert listener.local_addr == ("::1", port, True)
        with socket.create_connection(("::1", port), timeout=10) as s:
            s.sendall(GET % b"")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    ((local, remote),) = got
    assert local == ("::1", port, True) and remote[0] == "::1" and remote[2] is True
