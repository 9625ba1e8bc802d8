"""Files from Python handlers, over real sockets: FileResponse / Response.file (with the
conditional and Range rules), Request.serve_file, Request.serve_static with a fallthrough
mount, Request.sendfile inside a streamed answer; files that change while served (rewritten
between requests, truncated mid-download), a 2 GiB sparse file, a slow reader (the server's
memory stays bounded), 1,000 concurrent downloads, and no descriptor leaked by any of it."""

import asyncio
import os
import selectors
import socket
import threading
import time

import pytest

from conftest import RawClient, raw_get as get, read_closed, request, wait_until
from pymongoose_uring import App, FileResponse, Response, StaticMount


@pytest.fixture
def files(tmp_path):
    data = os.urandom(100_000)
    (tmp_path / "data.bin").write_bytes(data)
    (tmp_path / "note.txt").write_bytes(b"a note\n")
    (tmp_path / "page.html").write_bytes(b"<p>page</p>")
    return tmp_path


def read_chunked(data):
    out = b""
    while True:
        line, _, data = data.partition(b"\r\n")
        n = int(line.split(b";")[0], 16)
        if n == 0:
            return out
        out += data[:n]
        data = data[n + 2 :]


def get_closed(port, target, headers=()):
    """GET with Connection: close, read to EOF: (status, {name: value}, raw body)."""
    head = "".join("%s: %s\r\n" % h for h in headers)
    raw = "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s\r\n" % (target, head)
    return read_closed(port, raw.encode())


# ---- FileResponse ----


def test_file_response_rules(serve, files):
    data = (files / "data.bin").read_bytes()
    app = App()

    @app.get("/data")
    def data_route(request):
        return FileResponse(files / "data.bin", cache_control="max-age=5", headers={"X-A": "1"})

    @app.get("/typed")
    def typed(request):
        return Response.file(str(files / "note.txt"), content_type="text/x-note")

    @app.get("/created")
    def created(request):
        return FileResponse(os.fsencode(files / "note.txt"), status=201)

    @app.get("/missing")
    def missing(request):
        return FileResponse(files / "nope.bin")

    @app.get("/dir")
    def directory(request):
        return FileResponse(files)

    server = serve(app)
    status, h, body = get(server.port, "/data")
    assert status == 200 and body == data
    assert h["cache-control"] == "max-age=5" and h["x-a"] == "1"
    assert h["content-type"] == "application/octet-stream"
    etag = h["etag"]
    assert get(server.port, "/data", [("If-None-Match", etag)])[0] == 304
    assert get(server.port, "/data", [("If-Match", '"x"')])[0] == 412
    status, h, body = get(server.port, "/data", [("Range", "bytes=500-999")])
    assert status == 206 and body == data[500:1000]
    assert h["content-range"] == "bytes 500-999/100000"
    status, h, body = get(server.port, "/data", [("Range", "bytes=0-0,-1")])
    assert status == 206 and h["content-type"].startswith("multipart/byteranges")
    assert get(server.port, "/data", [("Range", "bytes=100000-")])[0] == 416
    status, h, body = get(server.port, "/data", method="HEAD")
    assert status == 200 and body == b"" and h["content-length"] == "100000"
    status, h, body = get(server.port, "/typed")
    assert body == b"a note\n" and h["content-type"].startswith("text/x-note")
    # Another status: the whole file, no Range or conditional logic.
    status, h, body = get(server.port, "/created", [("Range", "bytes=0-1")])
    assert status == 201 and body == b"a note\n"
    assert get(server.port, "/missing")[0] == 404
    assert get(server.port, "/dir")[0] == 404


def test_file_response_object():
    r = Response.file("/x/y.txt", status=203, content_type="a/b", cache_control="no-store")
    assert isinstance(r, FileResponse)
    assert (r.path, r.status, r.content_type, r.cache_control) == (
        "/x/y.txt",
        203,
        "a/b",
        "no-store",
    )
    with pytest.raises(ValueError):
        FileResponse("/x", status=99)
    with pytest.raises(ValueError):
        FileResponse("/x", content_type="a\nb")
    with pytest.raises(TypeError):
        FileResponse(3.5)


def test_file_response_async_and_reply_later(serve, files):
    app = App()

    @app.get("/async")
    async def in_loop(request):
        await asyncio.sleep(0)
        return FileResponse(files / "note.txt")

    @app.get("/later")
    def later(request):
        threading.Thread(target=request.reply, args=(FileResponse(files / "page.html"),)).start()

    server = serve(app)
    assert get(server.port, "/async")[2] == b"a note\n"
    status, h, body = get(server.port, "/later")
    assert body == b"<p>page</p>" and h["content-type"].startswith("text/html")


# ---- serve_file, serve_static ----


def test_serve_file_path_fd_and_file_object(serve, files):
    data = (files / "data.bin").read_bytes()
    app = App()

    @app.get("/obj")
    def obj(request):
        with open(files / "data.bin", "rb") as f:
            request.serve_file(f)  # duplicated: closing ours at once is fine

    @app.get("/fd")
    def fd(request):
        n = os.open(files / "note.txt", os.O_RDONLY)
        try:
            request.serve_file(n, content_type="text/plain", headers=[("X-B", "2")])
        finally:
            os.close(n)

    @app.get("/twice")
    def twice(request):
        request.serve_file(files / "note.txt")
        with pytest.raises(RuntimeError):
            request.serve_file(files / "note.txt")
        return None

    server = serve(app)
    status, h, body = get(server.port, "/obj", [("Range", "bytes=-10")])
    assert status == 206 and body == data[-10:]
    status, h, body = get(server.port, "/fd")
    assert body == b"a note\n" and h["x-b"] == "2"
    assert get(server.port, "/twice")[2] == b"a note\n"


def test_serve_static_from_a_handler(serve, files):
    falls = StaticMount("/files", files, fallthrough=True)
    strict = StaticMount("/strict", files)

    def handler(request):
        if request.path.startswith("/files/"):
            # A disconnect callback links the request to its stream state: serve_static
            # cuts that link to answer, and restores it when the mount falls through.
            request.add_disconnect_callback(lambda: None)
            if request.serve_static(falls):
                assert request.answered
                return None
            assert not request.answered and request.path.startswith("/files/")
            return "fell through: " + request.path  # still ours to answer
        if request.path.startswith("/rel"):
            assert request.serve_static(strict, "note.txt") is True
            return None
        assert request.serve_static(strict) is True  # answered, 404 included
        return None

    server = serve(handler)
    assert get(server.port, "/files/note.txt")[2] == b"a note\n"
    status, _, body = get(server.port, "/files/none.txt")
    assert status == 200 and body == b"fell through: /files/none.txt"
    assert get(server.port, "/rel/anything")[2] == b"a note\n"
    assert get(server.port, "/strict/none.txt")[0] == 404
    assert get(server.port, "/strict/../x")[0] == 400


def test_serve_static_fallthrough_with_a_streamed_body(serve, files):
    falls = StaticMount("/", files, fallthrough=True)
    outcome = []

    def handler(request):
        def later():
            try:
                request.serve_static(falls, "none.txt")
            except RuntimeError as exc:  # the body is still arriving
                outcome.append(str(exc))
            body = request.read()
            missed = request.serve_static(falls, "none.txt")  # the body is in: allowed
            outcome.append(missed)
            request.reply(b"%d bytes, fell through" % len(body))

        threading.Thread(target=later).start()

    server = serve(handler, stream_body_threshold=1024)
    c = RawClient(server.port)
    try:
        c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"a" * 1000)
        wait_until(lambda: outcome, 10, "the first serve_static")
        c.send(b"a" * 4000)
        status, _, body = c.read_response()
    finally:
        c.close()
    assert "still arriving" in outcome[0] and outcome[1] is False
    assert (status, body) == (200, b"5000 bytes, fell through")


# ---- sendfile ----


def test_sendfile_in_a_streamed_answer(serve, files):
    data = (files / "data.bin").read_bytes()
    errors = []

    def handler(request):
        if request.path == "/length":
            request.start(200, [("Content-Length", str(1 + 100 + 1))])
            request.write(b"<")
            assert request.sendfile(files / "data.bin", 10, 100) is True
            request.write(b">")
            request.end()
            return None
        if request.path == "/thread":

            def produce():
                try:
                    request.start(200, [("Content-Type", "application/octet-stream")])
                    with open(files / "data.bin", "rb") as f:
                        request.sendfile(f)
                    request.write(b"|")
                    request.sendfile(str(files / "note.txt"), count=2)
                    request.sendfile(files / "note.txt", offset=7)  # empty: nothing queued
                    request.end()
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    request.abort()

            threading.Thread(target=produce).start()
            return None
        with pytest.raises(RuntimeError):
            request.sendfile(files / "note.txt")  # before start()
        request.start(200)
        with pytest.raises(ValueError):
            request.sendfile(files)  # a directory
        with pytest.raises(ValueError):
            request.sendfile(files / "note.txt", -1)
        with pytest.raises(ValueError):
            request.sendfile(files / "note.txt", 8)  # past the end
        with pytest.raises(FileNotFoundError):
            request.sendfile(files / "nope")
        request.write(b"checked")
        request.end()
        return None

    server = serve(handler)
    status, h, body = get(server.port, "/length")
    assert status == 200 and body == b"<" + data[10:110] + b">"
    status, h, body = get_closed(server.port, "/thread")
    assert h["transfer-encoding"] == "chunked"
    assert read_chunked(body) == data + b"|a "
    assert not errors
    assert read_chunked(get_closed(server.port, "/checks")[2]) == b"checked"
    assert server.stats()["files_sent"] >= 3


def test_sendfile_after_the_client_left_returns_false(serve, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(8 << 20)
    result = []
    gone = threading.Event()

    def handler(request):
        def produce():
            request.start(200)
            deadline = time.monotonic() + 10
            ok = True
            while ok and time.monotonic() < deadline:
                ok = request.sendfile(big)
                gone.wait(0.01)
            result.append(ok)
            request.end()

        threading.Thread(target=produce).start()

    server = serve(handler)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    sock.recv(1024)
    sock.close()
    gone.set()
    wait_until(lambda: result, 15, "sendfile() to see the client gone")
    assert result == [False]
    assert get(server.port, "/")  # still serving: the next answer starts


# ---- files that change ----


def test_rewritten_file_gets_new_etag_and_bytes(serve, files):
    path = files / "note.txt"
    app = App()
    app.static("/m", files)

    @app.get("/r")
    def fr(request):
        return FileResponse(path)

    server = serve(app, file_cache_valid_ms=0)
    seen = {}
    for target in ("/m/note.txt", "/r"):
        path.write_bytes(b"version one\n")
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        _, h1, b1 = get(server.port, target)
        path.write_bytes(b"version two\n")  # same size: only the mtime and bytes differ
        os.utime(path, ns=(2_000_000_000, 2_000_000_000))
        _, h2, b2 = get(server.port, target)
        assert (b1, b2) == (b"version one\n", b"version two\n"), target
        assert h1["etag"] != h2["etag"], target
        # The old validator no longer matches: the new bytes, not a 304.
        status, _, b3 = get(server.port, target, [("If-None-Match", h1["etag"])])
        assert status == 200 and b3 == b"version two\n"
        seen[target] = h2["etag"]
    assert seen["/m/note.txt"] == seen["/r"]  # one rule for mounts and FileResponse


def test_file_response_absolute_path_is_cached(serve, files):
    """A native handler runs on the ring thread: its FileResponse of an absolute path
    comes from the open-file cache after the first answer."""
    app = App()

    @app.get("/abs")
    def absolute(request):
        return FileResponse(str(files / "note.txt"))

    server = serve(app, file_cache_valid_ms=60_000)
    before = server.stats()
    for _ in range(3):
        assert get(server.port, "/abs")[2] == b"a note\n"
    after = server.stats()
    assert after["file_cache_misses"] - before["file_cache_misses"] == 1
    assert after["file_cache_hits"] - before["file_cache_hits"] == 2


def test_truncated_mid_download_closes_short(serve, tmp_path):
    path = tmp_path / "shrinks.bin"
    size = 32 << 20
    with open(path, "wb") as f:
        f.write(b"x" * (4 << 20))
        f.truncate(size)
    (tmp_path / "ok.txt").write_bytes(b"still serving")
    app = App()
    app.static("/", tmp_path)
    server = serve(app)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.settimeout(15)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /shrinks.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while len(got) < (1 << 20):
        got += sock.recv(1 << 16)
    head, _, body = got.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"Content-Length: %d" % size in head
    os.truncate(path, 2 << 20)
    received = len(body)
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        received += len(chunk)
    sock.close()
    # Closed short of the promised length, never padded to it.
    assert received < size
    assert get(server.port, "/ok.txt")[2] == b"still serving"
    wait_until(lambda: server.stats()["file_errors"] >= 1, 5, "file_errors to count it")
    assert server.stats()["responses_aborted"] >= 1


def test_sparse_2gib_file_range_near_the_end(serve, tmp_path):
    path = tmp_path / "huge.bin"
    size = 2 << 30
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size - 8)
        f.write(b"THE-END!")
    app = App()
    app.static("/", tmp_path, fallthrough=True)

    @app.get("/fr")
    def fr(request):
        return FileResponse(path)

    server = serve(app)
    for target in ("/huge.bin", "/fr"):
        status, h, body = get(server.port, target, [("Range", "bytes=-8")])
        assert status == 206 and body == b"THE-END!", target
        assert h["content-range"] == "bytes %d-%d/%d" % (size - 8, size - 1, size)
        status, h, body = get(
            server.port, target, [("Range", "bytes=%d-%d" % (size - 20, size - 9))]
        )
        assert status == 206 and body == b"\0" * 12
        status, h, _ = get(server.port, target, method="HEAD")
        assert h["content-length"] == str(size)


# ---- load ----


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_costs_bounded_memory(serve, tmp_path):
    path = tmp_path / "large.bin"
    size = 256 << 20
    with open(path, "wb") as f:
        f.truncate(size)
    app = App()
    app.static("/", tmp_path)
    server = serve(app)
    before = rss_kib()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /large.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    peak, received = before, 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        received += len(sock.recv(16 << 10))
        peak = max(peak, rss_kib())
        time.sleep(0.01)
    sock.close()
    assert 0 < received < size // 4  # the reader really was slow
    # Had the server read the file ahead into memory it would have grown by up to 256 MiB.
    assert peak - before < 48 << 10, (before, peak)
    assert get(server.port, "/missing")[0] == 404


def test_a_thousand_concurrent_downloads(serve, tmp_path):
    payload = os.urandom(64 << 10)
    (tmp_path / "f.bin").write_bytes(payload)
    app = App()
    app.static("/", tmp_path)
    server = serve(app, backlog=2048)
    n = 1000
    sel = selectors.DefaultSelector()
    bufs = {}
    req = b"GET /f.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", server.port))
        sel.register(s, selectors.EVENT_WRITE)
        bufs[s] = bytearray()
    done = 0
    deadline = time.monotonic() + 60
    try:
        while done < n:
            assert time.monotonic() < deadline, "only %d of %d downloads finished" % (done, n)
            for key, events in sel.select(1):
                s = key.fileobj
                if events & selectors.EVENT_WRITE:
                    s.send(req)
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                chunk = s.recv(1 << 17)
                if chunk:
                    bufs[s] += chunk
                    continue
                sel.unregister(s)
                done += 1
    finally:
        for s in bufs:
            s.close()
        sel.close()
    for data in bufs.values():
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and body == payload


# ---- descriptors ----


def open_fds():
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    return out


def test_no_descriptor_leaks(tmp_path):
    from pymongoose_uring import Server

    data = os.urandom(300_000)
    (tmp_path / "d.bin").write_bytes(data)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(16 << 20)
    app = App()
    app.static("/s", tmp_path)

    @app.get("/fr")
    def fr(request):
        return FileResponse(tmp_path / "d.bin")

    @app.get("/stream")
    def stream(request):
        request.start(200)
        request.sendfile(tmp_path / "d.bin", 1, 1000)
        with open(tmp_path / "d.bin", "rb") as f:
            request.sendfile(f.fileno())
        request.end()

    before = open_fds()
    server = Server(app, port=0).start()
    try:
        for _ in range(3):
            assert get(server.port, "/s/d.bin")[2] == data
            assert get(server.port, "/s/d.bin", [("Range", "bytes=0-9,20-29")])[0] == 206
            assert get(server.port, "/s/d.bin", [("Range", "bytes=-5")])[2] == data[-5:]
            assert get(server.port, "/fr")[2] == data
            assert read_chunked(get_closed(server.port, "/stream")[2]) == data[1:1001] + data
            assert get(server.port, "/s/none")[0] == 404
            # A client that leaves in the middle of a large file.
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /s/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            s.recv(1 << 16)
            s.close()
        status, _, _, _ = request(server, path="/s/d.bin")
        assert status == 200
    finally:
        server.stop(timeout=30)
    wait_until(
        lambda: open_fds() == before, 10, "descriptors back to %r (now %r)" % (before, open_fds())
    )


# ---- memory ----


def test_file_answers_leave_nothing_behind(serve, files):
    """Thousands of answers through every file path: no Request, FileResponse or file
    argument is kept (test_leaks.py's measure: Request objects exactly, allocated blocks
    within half a block per request)."""
    from test_leaks import assert_flat

    mount = StaticMount("/sm", files, fallthrough=True)
    app = App()
    app.static("/m", files)

    @app.get("/fr")
    def fr(request):
        return FileResponse(files / "note.txt", headers={"X-A": "1"}, cache_control="no-cache")

    @app.get("/missing")
    def missing(request):
        return Response.file(files / "nope")

    @app.get("/sf")
    def sf(request):
        with open(files / "page.html", "rb") as f:
            request.serve_file(f, content_type="text/html")

    @app.get("/ss")
    def ss(request):
        if not request.serve_static(mount, "nope.txt"):
            return "fell"

    @app.get("/stream")
    def stream(request):
        request.start(200)
        request.sendfile(files / "data.bin", 0, 4000)
        request.end()

    calls = [
        ("GET", "/m/note.txt", None, 200),
        ("GET", "/fr", None, 200),
        ("GET", "/missing", None, 404),
        ("GET", "/sf", None, 200),
        ("GET", "/ss", None, 200),
        ("GET", "/stream", None, 200),
    ]
    server = serve(app)
    assert_flat(server.port, calls)


def test_file_response_long_content_type_multipart(serve, files):
    """A FileResponse's own long media type rides whole in every multipart part (a fixed
    256-byte part head once cut it short and sent the stack bytes after it)."""
    data = (files / "data.bin").read_bytes()
    ctype = "application/x-" + "long" * 60 + "; charset=utf-8"
    app = App()

    @app.get("/long")
    def long_typed(request):
        return FileResponse(files / "data.bin", content_type=ctype)

    server = serve(app)
    status, h, body = get(server.port, "/long", [("Range", "bytes=0-0,500-509,-1")])
    assert status == 206 and len(body) == int(h["content-length"])
    boundary = h["content-type"].split("boundary=")[1]
    want = b""
    for first, last in ((0, 0), (500, 509), (99_999, 99_999)):
        want += b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/100000\r\n\r\n" % (
            boundary.encode(),
            ctype.encode(),
            first,
            last,
        )
        want += data[first : last + 1]
    want += b"\r\n--%s--\r\n" % boundary.encode()
    assert body == want
