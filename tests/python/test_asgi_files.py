"""Files through the ASGI adapter: ``http.response.pathsend`` (sent by the engine with
Request.sendfile), its message rules and errors, and the frameworks that use it or
serve files themselves: Starlette's FileResponse (pathsend for a whole file, its own
body messages for a Range) and StaticFiles, FastAPI's FileResponse."""

import asyncio
import hashlib
import http.client
import os

import pytest

from conftest import (
    RawClient,
    check_confined,
    check_engine_sent,
    check_no_descriptor_left,
    files_sent,
    request,
    wait_until,
)


def pathsend_app(root, log):
    """GET /NAME sends root/NAME with pathsend; ?nolength leaves Content-Length out;
    ?catch catches a failed pathsend and answers 404 instead."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        assert scope["extensions"]["http.response.pathsend"] == {}
        path = os.path.join(root, scope["path"].lstrip("/"))
        query = scope["query_string"].decode()
        headers = [(b"content-type", b"application/octet-stream")]
        if "nolength" not in query and os.path.isfile(path):
            headers.append((b"content-length", str(os.path.getsize(path)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            await send({"type": "http.response.pathsend", "path": path})
        except FileNotFoundError as exc:
            log.append(exc)
            if "catch" not in query:
                raise
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no such file"})

    return app


def test_pathsend_sends_the_file_byte_exact(serve_asgi, file_tree):
    server = serve_asgi(pathsend_app(str(file_tree), []))
    before = files_sent(server)
    for name in ("small.bin", "big.bin", "page.html"):
        status, headers, body, _ = request(server, path="/" + name)
        assert status == 200
        assert body == (file_tree / name).read_bytes(), name
        assert headers["content-length"] == str(len(body))
        assert headers["content-type"] == "application/octet-stream"
    check_engine_sent(server, before, 3)


def test_pathsend_without_content_length_gets_the_size(serve_asgi, file_tree):
    server = serve_asgi(pathsend_app(str(file_tree), []))
    status, headers, body, _ = request(server, path="/big.bin?nolength")
    assert status == 200 and body == (file_tree / "big.bin").read_bytes()
    assert headers["content-length"] == str(3 << 20)
    assert "transfer-encoding" not in headers
    status, headers, body, _ = request(server, path="/empty.txt?nolength")
    assert (status, body, headers["content-length"]) == (200, b"", "0")


def test_pathsend_keep_alive_and_head(serve_asgi, file_tree):
    """Several answers on one connection stay framed; HEAD has the length, no body."""
    server = serve_asgi(pathsend_app(str(file_tree), []))
    c = RawClient(server.port)
    try:
        small = (file_tree / "small.bin").read_bytes()
        c.send(
            b"GET /small.bin HTTP/1.1\r\nHost: t\r\n\r\n"
            b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /page.html?nolength HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        status, headers, body = c.read_response()
        assert (status, body) == (200, small)
        status, headers, body = c.read_response(head=True)
        assert status == 200 and body == b""
        assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(3 << 20)
        status, headers, body = c.read_response()
        assert (status, body) == (200, b"<h1>hello</h1>\n")
    finally:
        c.close()


def test_pathsend_missing_file(serve_asgi, file_tree):
    """A missing file raises FileNotFoundError in send(), before anything is sent: an
    app may catch it and answer otherwise; uncaught, the client gets a 500."""
    log = []
    server = serve_asgi(pathsend_app(str(file_tree), log))
    status, _, body, _ = request(server, path="/missing.bin?catch")
    assert (status, body) == (404, b"no such file")
    status, _, _, _ = request(server, path="/missing.bin")
    assert status == 500
    assert len(log) == 2 and all(isinstance(e, FileNotFoundError) for e in log)


def test_pathsend_message_order(serve_asgi, file_tree):
    """pathsend before start, twice, or after a streamed body: RuntimeError."""
    errors = []
    path = str(file_tree / "page.html")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        start = {"type": "http.response.start", "status": 200, "headers": []}
        pathsend = {"type": "http.response.pathsend", "path": path}
        if scope["path"] == "/before":
            try:
                await send(pathsend)
            except RuntimeError as exc:
                errors.append(str(exc))
            await send(start)
            await send(pathsend)
        elif scope["path"] == "/twice":
            await send(start)
            await send(pathsend)
            try:
                await send(pathsend)
            except RuntimeError as exc:
                errors.append(str(exc))
        else:
            await send(start)
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            try:
                await send(pathsend)
            except RuntimeError as exc:
                errors.append(str(exc))
            await send({"type": "http.response.body", "body": b"y"})

    server = serve_asgi(app)
    assert request(server, path="/before")[2] == b"<h1>hello</h1>\n"
    assert request(server, path="/twice")[2] == b"<h1>hello</h1>\n"
    assert request(server, path="/after")[2] == b"xy"
    assert len(errors) == 3
    assert "before http.response.start" in errors[0]
    assert "after the response was complete" in errors[1]
    assert "after a streamed" in errors[2]


def test_pathsend_directory_is_refused(serve_asgi, file_tree):
    caught = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": str(file_tree)})
        except IsADirectoryError as exc:
            caught.append(exc)
            raise

    server = serve_asgi(app)
    assert request(server)[0] == 500
    assert len(caught) == 1


# ---- Starlette and FastAPI ----------------------------------------------------------------


def recording(app, seen):
    """The app, with the message types it sends recorded."""

    async def wrapped(scope, receive, send):
        async def spy(message):
            if scope["type"] == "http":
                seen.append(message["type"])
            await send(message)

        await app(scope, receive, spy)

    return wrapped


def starlette_app(root):
    pytest.importorskip("starlette", reason="Starlette is not installed")
    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def download(request):
        return FileResponse(os.path.join(root, request.path_params["name"]))

    return Starlette(
        routes=[
            Route("/file/{name}", download),
            Mount("/static", app=StaticFiles(directory=root), name="static"),
        ]
    )


def test_starlette_file_response_uses_pathsend(serve_asgi, file_tree):
    seen = []
    server = serve_asgi(recording(starlette_app(str(file_tree)), seen))
    before = files_sent(server)
    big = (file_tree / "big.bin").read_bytes()
    status, headers, body, _ = request(server, path="/file/big.bin")
    assert status == 200 and body == big
    assert headers["content-length"] == str(len(big))
    assert headers["accept-ranges"] == "bytes" and headers["etag"] and headers["last-modified"]
    assert seen == ["http.response.start", "http.response.pathsend"]
    check_engine_sent(server, before, 1)
    # Starlette's own conditional: 304 for its ETag (a plain body, no pathsend).
    status, _, body, _ = request(
        server, path="/static/big.bin", headers={"If-None-Match": headers["etag"]}
    )
    assert (status, body) == (304, b"")


def test_starlette_ranges_go_through_its_body_messages(serve_asgi, file_tree):
    """Starlette answers a Range itself with http.response.body messages (it sends
    pathsend only for the whole file): the bytes must be the range's."""
    seen = []
    server = serve_asgi(recording(starlette_app(str(file_tree)), seen))
    big = (file_tree / "big.bin").read_bytes()
    status, headers, body, _ = request(
        server, path="/file/big.bin", headers={"Range": "bytes=1000-200999"}
    )
    assert status == 206 and body == big[1000:201000]
    assert headers["content-range"] == "bytes 1000-200999/%d" % len(big)
    assert "http.response.pathsend" not in seen
    status, headers, body, _ = request(server, path="/file/big.bin", headers={"Range": "bytes=-10"})
    assert status == 206 and body == big[-10:]
    status, headers, _, _ = request(
        server, path="/file/small.bin", headers={"Range": "bytes=99999-"}
    )
    assert status == 416
    import starlette

    if int(starlette.__version__.split(".")[0]) < 1:
        # Starlette 0.49 (the last for Python 3.9) gets these wrong itself: it puts
        # "multipart/byteranges" in Content-Range instead of Content-Type, its
        # Content-Length is one byte short, and a 416 says "*/size" without "bytes".
        return
    assert headers["content-range"] == "bytes */%d" % (16 << 10)
    status, headers, body, _ = request(
        server, path="/file/small.bin", headers={"Range": "bytes=0-1,10-19"}
    )
    assert status == 206 and headers["content-type"].startswith("multipart/byteranges")
    assert big[10:20] in body and big[0:2] in body


def test_starlette_static_files(serve_asgi, file_tree):
    seen = []
    server = serve_asgi(recording(starlette_app(str(file_tree)), seen))
    status, headers, body, _ = request(server, path="/static/small.bin")
    assert status == 200 and body == (file_tree / "small.bin").read_bytes()
    assert "http.response.pathsend" in seen
    status, headers, body, _ = request(server, path="/static/page.html")
    assert (status, body) == (200, b"<h1>hello</h1>\n")
    assert headers["content-type"].startswith("text/html")
    status, _, body, _ = request(server, "HEAD", "/static/big.bin")
    assert status == 200 and body == b""
    assert request(server, path="/static/missing.txt")[0] == 404
    check_confined(server, "/static", file_tree)


def test_fastapi_file_response(serve_asgi, file_tree):
    pytest.importorskip("fastapi", reason="FastAPI is not installed")
    from fastapi import FastAPI
    from fastapi.responses import FileResponse

    app = FastAPI()

    @app.get("/dl/{name}")
    async def download(name: str):
        return FileResponse(str(file_tree / name), filename="report-" + name)

    server = serve_asgi(app)
    before = files_sent(server)
    status, headers, body, _ = request(server, path="/dl/small.bin")
    assert status == 200 and body == (file_tree / "small.bin").read_bytes()
    assert headers["content-disposition"] == 'attachment; filename="report-small.bin"'
    check_engine_sent(server, before, 1)


def test_many_pathsends_at_once(serve_asgi, file_tree):
    """Concurrent clients of the 3 MiB file each get it whole."""
    server = serve_asgi(pathsend_app(str(file_tree), []))
    digest = hashlib.sha256((file_tree / "big.bin").read_bytes()).hexdigest()

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return head.split(b" ")[1], hashlib.sha256(body).hexdigest()

    async def many():
        return await asyncio.gather(*(one() for _ in range(16)))

    assert asyncio.run(many()) == [(b"200", digest)] * 16


def test_pathsend_to_a_client_gone(serve_asgi, file_tree):
    """A client that leaves before the file is out: the server goes on serving."""
    server = serve_asgi(pathsend_app(str(file_tree), []))
    for _ in range(5):
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        c.request("GET", "/big.bin")
        r = c.getresponse()
        r.read(1000)
        c.close()
    status, _, body, _ = request(server, path="/small.bin")
    assert status == 200 and body == (file_tree / "small.bin").read_bytes()


def test_anyio_worker_threads_are_kept_across_requests(serve_asgi):
    """anyio keeps its worker threads (Starlette's FileResponse stat, FastAPI's sync
    endpoints) for the loop's root task: the adapter's loop runs one, so a thread
    serves request after request instead of one being started per request."""
    pytest.importorskip("fastapi", reason="FastAPI is not installed")
    import threading

    from fastapi import FastAPI

    app = FastAPI()
    local = threading.local()

    @app.get("/n")
    def count():  # a sync endpoint: run in an anyio worker thread
        local.n = getattr(local, "n", 0) + 1
        return {"n": local.n}

    server = serve_asgi(app)
    import json

    counts = [json.loads(request(server, path="/n")[2])["n"] for _ in range(6)]
    assert max(counts) >= 5, counts  # the same thread, again and again


def test_pathsend_leaves_no_descriptor_open(serve_asgi, file_tree):
    """The adapter's descriptor is closed after each pathsend, and the engine's
    duplicate once the file is sent: 200 answers leave the process's count as it was."""
    server = serve_asgi(pathsend_app(str(file_tree), []))
    check_no_descriptor_left(server, [("/small.bin", 16 << 10), ("/page.html?nolength", 15)])


def test_pathsend_access_log(serve_asgi, file_tree, caplog):
    server = serve_asgi(pathsend_app(str(file_tree), []), access_log=True)
    with caplog.at_level("INFO", logger="pymongoose_uring.access"):
        assert request(server, path="/page.html")[0] == 200
        wait_until(lambda: any("/page.html" in r.getMessage() for r in caplog.records))
    line = next(r.getMessage() for r in caplog.records if "/page.html" in r.getMessage())
    assert '"GET /page.html HTTP/1.1" 200' in line


def test_pathsend_with_a_bodiless_status(serve_asgi, file_tree):
    """A 304 start followed by pathsend sends neither the file nor a length."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", b'"x"')]})
        await send({"type": "http.response.pathsend", "path": str(file_tree / "big.bin")})

    server = serve_asgi(app)
    c = RawClient(server.port)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(2):
            status, headers, body = c.read_response(head=True)
            assert status == 304 and body == b""
            assert "content-length" not in {k.lower() for k, _ in headers}
    finally:
        c.close()
