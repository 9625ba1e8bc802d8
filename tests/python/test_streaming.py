"""Streamed request bodies (read, read_async), streamed answers (start, write,
end), drain and disconnect, over real sockets."""

import gc
import hashlib
import http.client
import json
import logging
import os
import socket
import struct
import threading
import time

import pytest

import pymongoose_uring as pmu
from conftest import RawClient, request, wait_until

MB = 1 << 20


def digest(data):
    return hashlib.sha256(data).hexdigest()


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def in_thread(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def abort(sock):
    """Close with a reset, as a client that goes away does: a plain close (FIN)
    could be a half-close still waiting for its answer."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until_close(sock):
    chunks = []
    while True:
        b = sock.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def split_head(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def dechunk(body):
    out, rest = [], body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            return b"".join(out), rest[2:] if rest.startswith(b"\r\n") else rest
        out.append(rest[:n])
        rest = rest[n + 2 :]


# ---- streamed request bodies ----


def upload_server(serve, **options):
    """A server whose handler reads a streamed body with read(size) in a thread
    and answers its length and SHA-256."""
    seen = {}

    def work(req, size):
        try:
            chunks = []
            while True:
                b = req.read(size)
                if not b:
                    break
                assert size < 0 or len(b) <= size
                chunks.append(b)
            data = b"".join(chunks)
            seen["streaming"] = req.body_streaming
            seen["pieces"] = len(chunks)
            req.reply({"len": len(data), "sha": digest(data)})
        except Exception as exc:  # pragma: no cover - shown in the failure
            req.reply(repr(exc), 500)

    def handler(req):
        size = int(req.query.get("size", "-1"))
        in_thread(work, req, size)

    options.setdefault("stream_body_threshold", 64 * 1024)
    options.setdefault("max_body_bytes", 64 * MB)
    return serve(handler, **options), seen


def test_streamed_upload_read_in_a_thread(serve):
    server, seen = upload_server(serve)
    data = os.urandom(5 * MB + 123)
    status, _, body, _ = request(server, "POST", "/up", body=data, timeout=30)
    assert status == 200, body
    got = json.loads(body)
    assert got == {"len": len(data), "sha": digest(data)}
    assert seen["streaming"] is True


def test_read_with_small_sizes(serve):
    server, seen = upload_server(serve)
    data = os.urandom(300 * 1024 + 7)
    status, _, body, _ = request(server, "POST", "/up?size=1000", body=data, timeout=30)
    got = json.loads(body)
    assert status == 200 and got == {"len": len(data), "sha": digest(data)}
    assert seen["pieces"] >= len(data) // 1000


def test_small_body_stays_buffered_and_read_slices_it(serve):
    def handler(req):
        assert not req.body_streaming
        parts = [req.read(3), req.read(0), req.read(4), req.read(), req.read()]
        return {"parts": [p.decode() for p in parts], "body": req.body.decode()}

    server = serve(handler, stream_body_threshold=1024)
    status, _, body, _ = request(server, "POST", "/", body=b"abcdefghij")
    assert json.loads(body) == {"parts": ["abc", "", "defg", "hij", ""], "body": "abcdefghij"}


def test_body_of_a_streamed_request_raises_and_read_on_the_ring_thread_refuses(serve):
    errors = []

    def handler(req):
        with pytest.raises(RuntimeError, match="streamed"):
            req.body  # noqa: B018 (reading the property is what raises)
        with pytest.raises(RuntimeError, match="engine's own thread"):
            req.read()
        errors.append("checked")
        return "refused"

    server = serve(handler, stream_body_threshold=16)
    status, _, body, _ = request(server, "POST", "/", body=b"x" * 5000)
    assert (status, body, errors) == (200, b"refused", ["checked"])


def test_read_async_in_an_asyncio_handler(serve):
    async def handler(req):
        assert req.body_streaming
        h = hashlib.sha256()
        n = pieces = 0
        while True:
            b = await req.read_async(32 * 1024)
            if not b:
                break
            h.update(b)
            n += len(b)
            pieces += 1
        return {"len": n, "sha": h.hexdigest(), "pieces": pieces}

    async def whole(req):
        data = await req.read_async()
        assert await req.read_async() == b""
        return {"len": len(data), "sha": digest(data)}

    app = pmu.App()
    app.post("/pieces")(handler)
    app.post("/whole")(whole)
    server = serve(app, stream_body_threshold=4096, max_body_bytes=16 * MB)
    data = os.urandom(3 * MB + 5)
    for path in ("/pieces", "/whole"):
        status, _, body, _ = request(server, "POST", path, body=data, timeout=30)
        got = json.loads(body)
        assert status == 200 and got["len"] == len(data) and got["sha"] == digest(data)
    assert got.keys() == {"len", "sha"}


def test_chunked_uploads(serve):
    server, _ = upload_server(serve, stream_body_threshold=10000)
    c = RawClient(server.port, timeout=30)
    big = os.urandom(400 * 1024)
    pieces = [big[i : i + 7000] for i in range(0, len(big), 7000)]
    c.send(b"POST /up?size=5000 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for p in pieces:
        c.send(b"%x\r\n%s\r\n" % (len(p), p))
    c.send(b"0\r\n\r\n")
    status, _, body = c.read_response()
    assert status == 200
    assert json.loads(body) == {"len": len(big), "sha": digest(big)}
    # A small chunked body stays below the threshold: buffered, on the same connection.
    c.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    status, _, body = c.read_response()
    assert json.loads(body) == {"len": 5, "sha": digest(b"abcde")}
    c.close()


def test_slow_reader_holds_the_client_back(serve):
    """The engine stops reading while output_high_water bytes are unread: the
    server's memory stays flat although the client has far more to send."""
    total = 48 * MB
    block = bytes(range(256)) * 256  # 64 KiB
    go = threading.Event()
    result = {}

    def work(req):
        go.wait(20)
        h = hashlib.sha256()
        n = 0
        while True:
            b = req.read(100000)
            if not b:
                break
            h.update(b)
            n += len(b)
        result["len"], result["sha"] = n, h.hexdigest()
        req.reply(b"ok")

    server = serve(
        lambda req: in_thread(work, req) and None,
        stream_body_threshold=1024,
        max_body_bytes=total,
        output_high_water=256 * 1024,
    )
    gc.collect()
    before = rss_bytes()
    sent = [0]
    cut = []
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)

    def upload():
        try:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
            for _ in range(total // len(block)):
                sock.sendall(block)
                sent[0] += len(block)
        except OSError as e:
            cut.append(e)

    t = in_thread(upload)
    wait_until(lambda: server.stats()["recv_paused"] >= 1, what="the server pausing receives")
    time.sleep(0.5)  # an observation window: the client stays held back
    grown = rss_bytes() - before
    stalled_at = sent[0]
    assert stalled_at < total // 2, "the client was never held back"
    assert grown < 24 * MB, "server memory grew by %d bytes" % grown
    assert server.stats()["recv_paused"] >= 1
    go.set()
    t.join(30)
    # The engine's own pause must never be held against the client: a cut
    # here with timeouts counted is the engine timing out a connection it was
    # not reading.
    assert not cut, "upload cut after %d bytes (%r); engine timeouts: %d" % (
        sent[0],
        cut[0],
        server.stats()["timeouts"],
    )
    raw = read_until_close_or_response(sock)
    sock.close()
    assert raw.endswith(b"ok")
    expected = hashlib.sha256(block * (total // len(block))).hexdigest()
    assert result == {"len": total, "sha": expected}


def read_until_close_or_response(sock):
    """The body of one response framed by Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    status, headers, first = split_head(buf)
    body = bytearray(first)
    want = int(headers.get("content-length", 0))
    while len(body) < want:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        body += chunk
    return bytes(body)


def test_client_disconnect_is_seen(serve):
    events = {}
    called = threading.Event()
    failed = threading.Event()

    def work(req):
        try:
            req.read()
        except pmu.ClientDisconnected as exc:
            events["error"] = exc
            failed.set()

    def on_gone():
        events["thread"] = threading.current_thread().name
        called.set()

    def handler(req):
        events["req"] = req
        req.add_disconnect_callback(on_gone)
        assert req.disconnected is False
        in_thread(work, req)
        events["ready"] = True

    server = serve(handler, stream_body_threshold=100)
    c = RawClient(server.port)
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
    wait_until(lambda: "ready" in events, what="the handler")
    abort(c.sock)
    assert called.wait(10) and failed.wait(10)
    req = events["req"]
    assert req.disconnected is True
    assert isinstance(events["error"], ConnectionError)
    late = threading.Event()
    req.add_disconnect_callback(late.set)  # already gone: called at once
    assert late.is_set()
    req.reply("nobody listens")  # answering a gone request just releases it
    assert req.answered


def test_disconnect_of_an_unanswered_buffered_request(serve):
    kept = []
    called = threading.Event()

    def handler(req):
        kept.append(req)
        req.add_disconnect_callback(called.set)

    server = serve(handler)
    c = RawClient(server.port)
    c.send(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
    while not kept:
        time.sleep(0.01)
    assert kept[0].disconnected is False
    abort(c.sock)
    assert called.wait(10)
    assert kept[0].disconnected is True
    kept[0].reply("late")  # releases it
    assert kept[0].answered and kept[0].disconnected


def test_read_async_sees_the_disconnect(serve):
    outcome = {}
    done = threading.Event()

    started = threading.Event()

    async def handler(req):
        started.set()
        try:
            while await req.read_async(1000):
                pass
        except pmu.ClientDisconnected:
            outcome["disconnected"] = req.disconnected
        done.set()
        return "bye"

    server = serve(handler, stream_body_threshold=100)
    c = RawClient(server.port)
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"y" * 3000)
    assert started.wait(10)
    abort(c.sock)
    assert done.wait(10)
    assert outcome == {"disconnected": True}


def test_half_closed_upload_is_a_disconnect(serve):
    """A client that stops mid-body with a FIN (not a reset) can never finish
    that body: the engine closes at once (not at body_timeout_ms), and the
    reader learns the client is gone."""
    outcome = {}
    done = threading.Event()

    def work(req):
        t0 = time.monotonic()
        try:
            req.read()
        except pmu.ClientDisconnected:
            outcome["after"] = time.monotonic() - t0
        done.set()

    server = serve(
        lambda req: in_thread(work, req) and None, stream_body_threshold=100, body_timeout_ms=30000
    )
    c = RawClient(server.port)
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"y" * 3000)
    c.sock.shutdown(socket.SHUT_WR)
    assert done.wait(10)
    assert outcome["after"] < 2
    c.close()


def test_read_timeout(serve):
    outcome = {}

    def work(req):
        try:
            req.read(timeout=0.2)
        except TimeoutError:
            outcome["timeout"] = True
        req.reply("timed out")

    server = serve(lambda req: in_thread(work, req) and None, stream_body_threshold=100)
    c = RawClient(server.port)
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"z" * 200)
    status, _, body = c.read_response()
    c.close()
    assert (status, body, outcome) == (200, b"timed out", {"timeout": True})


# ---- streamed answers ----


def stream_app(pieces, headers=None, delay=0.0, in_worker=True):
    def produce(req):
        if delay:
            time.sleep(delay)
        req.start(200, headers if headers is not None else {"Content-Type": "text/plain"})
        for p in pieces:
            req.write(p)
        req.end()

    def handler(req):
        if in_worker:
            in_thread(produce, req)
        else:
            produce(req)

    return handler


@pytest.mark.parametrize("in_worker", [True, False])
def test_streamed_answer_chunked(serve, in_worker):
    pieces = [b"hello ", "wörld ", bytearray(b"x" * 20000), memoryview(b"tail")]
    server = serve(stream_app(pieces, in_worker=in_worker))
    status, headers, body, _ = request(server)
    expected = b"hello " + "wörld ".encode() + b"x" * 20000 + b"tail"
    assert (status, body) == (200, expected)
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert headers["content-type"] == "text/plain"


def test_streamed_answer_with_content_length_keeps_the_connection(serve):
    server = serve(stream_app([b"01234", b"56789"], {"Content-Length": "10"}))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.read() == b"0123456789"
        assert resp.getheader("Content-Length") == "10"
        assert resp.getheader("Transfer-Encoding") is None
    conn.close()
    assert server.stats()["connections_accepted"] == 1


def test_streamed_answer_to_http_1_0_is_close_delimited(serve):
    server = serve(stream_app([b"abc", b"def"]))
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    status, headers, body = split_head(read_until_close(sock))
    sock.close()
    assert (status, body) == (200, b"abcdef")
    assert "content-length" not in headers and "transfer-encoding" not in headers


def test_streamed_answer_to_head_sends_no_body(serve):
    server = serve(stream_app([b"abc", b"def"]))
    c = RawClient(server.port)
    c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
    while b"\r\n\r\n" not in c.buf:
        c._fill()
    head, c.buf = c.buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    while not c.buf.endswith(b"0\r\n\r\n"):
        c._fill()
    status, headers, body = split_head(c.buf)
    assert status == 200 and dechunk(body) == (b"abcdef", b"")
    c.close()


def test_start_reply_and_end_misuse(serve):
    errors = []

    def handler(req):
        with pytest.raises(RuntimeError):
            req.write(b"x")
        with pytest.raises(RuntimeError):
            req.end()
        with pytest.raises(ValueError):
            req.start(101)
        with pytest.raises(ValueError):
            req.start(200, {"X-Bad": "a\r\nb"})
        req.start(201, [("X-Stream", "1")])
        assert req.answered
        with pytest.raises(RuntimeError):
            req.start(200)
        with pytest.raises(RuntimeError):
            req.reply("no")
        with pytest.raises(TypeError):
            req.write(12)
        req.write(b"ok")
        req.end()
        req.end()  # a second end does nothing
        with pytest.raises(RuntimeError):
            req.write(b"late")
        assert req.method == "GET"  # still readable after end
        errors.append("checked")

    server = serve(handler)
    status, headers, body, _ = request(server)
    assert (status, body, headers["x-stream"], errors) == (201, b"ok", "1", ["checked"])


def test_write_waits_for_a_slow_client(serve):
    piece = os.urandom(256 * 1024)
    count = 128  # 32 MiB
    progress = {"written": 0, "results": []}
    finished = threading.Event()

    def produce(req):
        req.start(200, {"Content-Length": str(len(piece) * count)})
        for _ in range(count):
            progress["results"].append(req.write(piece))
            progress["written"] += len(piece)
        req.end()
        finished.set()

    server = serve(lambda req: in_thread(produce, req) and None, output_high_water=128 * 1024)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(1.0)
    assert not finished.is_set()
    stalled = progress["written"]
    assert stalled < len(piece) * count // 2
    time.sleep(0.3)
    assert progress["written"] == stalled, "write() did not wait for the client"
    body = read_until_close_or_response(sock)
    sock.close()
    assert finished.wait(10)
    assert body == piece * count
    assert all(progress["results"])


def test_write_async_waits_for_a_slow_client(serve):
    piece = b"0123456789abcdef" * 4096  # 64 KiB
    count = 256  # 16 MiB
    state = {"awaited": 0}

    async def handler(req):
        req.start(200, {"Content-Type": "application/octet-stream"})
        for _ in range(count):
            assert await req.write_async(piece)
            state["awaited"] += 1
        req.end()

    server = serve(handler, output_high_water=128 * 1024)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(1.0)
    assert state["awaited"] < count // 2
    buf = bytearray()
    while not buf.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(1 << 20)
        assert chunk, "closed before the end of the stream"
        buf += chunk
    sock.close()
    status, headers, body = split_head(bytes(buf))
    assert status == 200 and dechunk(body) == (piece * count, b"")
    assert state["awaited"] == count


def test_write_reports_the_client_gone(serve):
    outcome = {}
    done = threading.Event()

    def produce(req):
        req.start(200)
        gone_seen = threading.Event()
        req.add_disconnect_callback(gone_seen.set)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not req.write(b"z" * 65536):
                outcome["write"] = False
                break
        outcome["callback"] = gone_seen.wait(5)
        outcome["disconnected"] = req.disconnected
        req.end()
        done.set()

    server = serve(lambda req: in_thread(produce, req) and None, output_high_water=64 * 1024)
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    c.sock.recv(1000)
    abort(c.sock)
    assert done.wait(15)
    assert outcome == {"write": False, "callback": True, "disconnected": True}


def test_pipelined_streams_keep_their_order(serve):
    def handler(req):
        n = int(req.path[1:])
        if n % 2 == 0:  # streamed, late, from a thread
            in_thread(stream_app([b"s%d-" % n, b"end"], delay=0.05 * (5 - n)), req)
            return None
        return "plain%d" % n

    server = serve(handler)
    c = RawClient(server.port)
    c.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5)))
    got = []
    for _ in range(5):
        while b"\r\n\r\n" not in c.buf:
            c._fill()
        head = c.buf.split(b"\r\n\r\n", 1)[0]
        if b"chunked" in head.lower():
            while b"\r\n0\r\n\r\n" not in c.buf:
                c._fill()
            raw, c.buf = c.buf.split(b"\r\n0\r\n\r\n", 1)
            got.append(dechunk(raw.split(b"\r\n\r\n", 1)[1] + b"\r\n0\r\n\r\n")[0])
        else:
            got.append(c.read_response()[2])
    c.close()
    assert got == [b"s0-end", b"plain1", b"s2-end", b"plain3", b"s4-end"]


def fetch_closed(port, target, extra=b""):
    """Send one GET (and `extra` pipelined behind it); read until the server
    closes; -> (status, headers, body bytes as sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n" + extra)
        return split_head(read_until_close(sock))
    finally:
        sock.close()


def assert_incomplete_chunked(headers, body, sent):
    """The chunked body carries what was sent, and no last chunk: a client
    cannot take it for whole."""
    assert headers["transfer-encoding"] == "chunked"
    assert not body.endswith(b"0\r\n\r\n"), body
    expected = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in sent)
    assert body == expected, body


def test_unfinished_stream_is_aborted_when_collected(serve, caplog):
    def handler(req):
        if req.path == "/behind":
            return "behind"
        if req.path == "/length":
            req.start(200, {"Content-Length": "100"})
        else:
            req.start(200)
        req.write(b"partial")
        return None  # dropped without end()

    server = serve(handler)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        # Shorter than its Content-Length: closed after the bytes, unpadded.
        status, headers, body = fetch_closed(server.port, "/length")
        assert (status, body, headers["content-length"]) == (200, b"partial", "100")
        # Chunked: closed without the last chunk, even with a request behind.
        status, headers, body = fetch_closed(
            server.port, "/chunked", b"GET /behind HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        assert status == 200
        assert_incomplete_chunked(headers, body, [b"partial"])  # and nothing after it
    assert "never ended" in caplog.text
    assert server.stats()["responses_aborted"] == 2


@pytest.mark.parametrize("kind", ["sync", "async", "thread"])
def test_stream_failing_half_way_closes_without_the_last_chunk(serve, caplog, kind):
    """A handler that raises after start() and a write (sync or async), or a
    producer thread that calls abort(): the client gets what was written, then
    the connection closes, never a complete-looking answer."""

    def produce(req):
        req.start(200, {"Content-Type": "text/plain"})
        req.write(b"first piece")
        raise RuntimeError("the producer failed")

    def threaded(req):
        try:
            produce(req)
        except RuntimeError:
            req.abort()

    async def async_handler(req):
        produce(req)

    def handler(req):
        if req.path == "/ok":
            return "fine"
        if kind == "sync":
            produce(req)
        elif kind == "thread":
            in_thread(threaded, req)
            return None
        return async_handler(req)

    server = serve(handler)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, headers, body = fetch_closed(server.port, "/fail")
    assert status == 200
    assert_incomplete_chunked(headers, body, [b"first piece"])
    if kind != "thread":
        assert "the producer failed" in caplog.text  # the traceback is logged
    assert request(server, path="/ok")[2] == b"fine"  # a new connection works
    assert server.stats()["responses_aborted"] == 1


def test_abort_rules(serve):
    seen = {}

    def handler(req):
        try:
            req.abort()
        except RuntimeError as exc:
            seen["before"] = str(exc)
        req.start(200, {"Content-Length": "3"})
        req.write(b"abc")
        req.end()
        req.abort()  # after end(): nothing
        seen["after"] = True

    server = serve(handler)
    assert request(server)[2] == b"abc"
    assert "before start()" in seen["before"] and seen["after"]
    assert server.stats()["responses_aborted"] == 0
