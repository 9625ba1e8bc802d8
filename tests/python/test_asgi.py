"""The ASGI adapter: scope, receive/send, streaming, disconnects, lifespan, errors, and a
real FastAPI app (Django's ASGI handler where installable)."""

import asyncio
import http.client
import json
import logging
import os
import socket
import struct
import threading
import time

import pytest

from conftest import BEHIND, RawClient, fetch_closed, request, run_script, wait_until
from pymongoose_uring.asgi import ASGIServer


def abort(sock):
    """Close with a reset, as a client that goes away does (a plain close, a FIN, may
    be a half-close still waiting for its answer)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def scope_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = await read_body(receive)
    out = {
        k: v for k, v in scope.items() if k not in ("headers", "raw_path", "query_string", "state")
    }
    out["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
    out["raw_path"] = scope["raw_path"].decode("latin-1")
    out["query_string"] = scope["query_string"].decode("latin-1")
    out["body"] = body.decode("latin-1")
    out["types"] = [type(k).__name__ + type(v).__name__ for k, v in scope["headers"]]
    data = json.dumps(out).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


def test_scope_is_complete(serve_asgi):
    server = serve_asgi(scope_app)
    status, headers, body, _ = request(
        server, "POST", "/a%20b/caf%C3%A9?x=1&y=%20", body=b"hello", headers={"X-Custom": "V"}
    )
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    scope = json.loads(body)
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/a b/café"
    assert scope["raw_path"] == "/a%20b/caf%C3%A9"
    assert scope["query_string"] == "x=1&y=%20"
    assert scope["root_path"] == ""
    assert ["x-custom", "V"] in scope["headers"]
    assert ["host", "127.0.0.1:%d" % server.port] in scope["headers"]
    assert set(scope["types"]) == {"bytesbytes"}
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["client"][0] == "127.0.0.1" and scope["client"][1] > 0
    assert scope["body"] == "hello"


def test_chunked_request_body(serve_asgi):
    server = serve_asgi(scope_app)
    c = RawClient(server.port)
    c.send(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    status, _, body = c.read_response()
    c.close()
    assert status == 200 and json.loads(body)["body"] == "hello world"


def test_streamed_request_body(serve_asgi):

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        size, messages = 0, 0
        while True:
            message = await receive()
            messages += 1
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d %d" % (size, messages)})

    server = serve_asgi(app, stream_body_threshold=1024)
    status, _, body, _ = request(server, "POST", body=os.urandom(300000))
    size, messages = map(int, body.split())
    assert status == 200 and size == 300000 and messages > 1


def test_streamed_response(serve_asgi):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part %d\n" % i, "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    server = serve_asgi(app)
    status, headers, body, _ = request(server)
    assert status == 200 and body == b"part 0\npart 1\npart 2\n"
    assert headers.get("transfer-encoding") == "chunked"


def test_streamed_response_arrives_before_the_end(serve_asgi):
    # The app holds its second chunk until the client has read the first: a
    # server that waited for the whole body would time the wait out.
    seen_first = threading.Event()
    released = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        deadline = time.monotonic() + 5
        while not seen_first.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        released.append(seen_first.is_set())
        await send({"type": "http.response.body", "body": b"second"})

    server = serve_asgi(app)
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    while b"first" not in c.buf:
        c._fill()
    seen_first.set()
    while not c.buf.endswith(b"0\r\n\r\n"):
        c._fill()
    assert b"second" in c.buf
    assert released == [True], "the first chunk waited for the whole body"
    c.close()


def failing_app(how, headers=(), parts=(b"first part",), last=None):
    """An ASGI app that starts its answer, sends `parts` with more_body, then
    raises, returns, or sends `last` as the final body message."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/behind":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"behind"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        for part in parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        if how == "raise":
            raise RuntimeError("the app failed half-way")
        if how == "finish":
            await send({"type": "http.response.body", "body": last or b""})

    return app


@pytest.mark.parametrize("how", ["raise", "return"])
def test_app_failing_half_way_closes_without_the_last_chunk(serve_asgi, caplog, how):
    server = serve_asgi(failing_app(how))
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, headers, body = fetch_closed(server.port, BEHIND)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"a\r\nfirst part\r\n"  # no 0\r\n\r\n, nothing after it
    if how == "raise":
        assert "the app failed half-way" in caplog.text  # the traceback is logged
    else:
        assert "without finishing" in caplog.text
    assert request(server, path="/behind")[2] == b"behind"  # a new connection works
    assert server.stats()["responses_aborted"] == 1


@pytest.mark.parametrize("shape", ["one message", "streamed"])
def test_body_shorter_than_content_length_closes_with_a_warning(serve_asgi, caplog, shape):
    length = [(b"content-length", b"10")]
    if shape == "one message":
        app = failing_app("finish", length, parts=(), last=b"hello")
    else:
        app = failing_app("finish", length, parts=(b"hel", b"lo"))
    server = serve_asgi(app)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, headers, body = fetch_closed(server.port, BEHIND)
    assert (status, headers["content-length"], body) == (200, "10", b"hello")
    assert "fewer than its Content-Length" in caplog.text
    assert server.stats()["responses_aborted"] == 1


@pytest.mark.parametrize("shape", ["one message", "streamed"])
def test_body_longer_than_content_length_is_cut_off_and_closes(serve_asgi, caplog, shape):
    length = [(b"Content-Length", b"3")]
    if shape == "one message":
        app = failing_app("finish", length, parts=(), last=b"hello")
    else:
        app = failing_app("finish", length, parts=(b"he", b"llo"))
    server = serve_asgi(app)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, headers, body = fetch_closed(server.port, BEHIND)
    assert (status, headers["content-length"], body) == (200, "3", b"hel")  # then closed
    assert "more than its Content-Length" in caplog.text


def test_content_length_streamed_response(serve_asgi):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-length", b"10"), (b"x-a", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"56789"})

    server = serve_asgi(app)
    status, headers, body, _ = request(server)
    assert (status, body, headers["content-length"], headers["x-a"]) == (
        201,
        b"0123456789",
        "10",
        "1",
    )
    assert "transfer-encoding" not in headers


def test_disconnect_after_the_response(serve_asgi):
    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        seen.append(await asyncio.wait_for(receive(), 5))

    server = serve_asgi(app)
    assert request(server)[2] == b"done"
    wait_until(lambda: seen, timeout=5, what="the app's receive() after the response")
    assert seen == [{"type": "http.disconnect"}]


def test_disconnect_while_waiting(serve_asgi):
    got = threading.Event()
    has_request = threading.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await read_body(receive)
        has_request.set()
        message = await receive()  # nothing more: waits for the client to go
        if message["type"] == "http.disconnect":
            got.set()

    server = serve_asgi(app)
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    assert has_request.wait(10)
    abort(s)
    assert got.wait(5)


def test_send_to_a_gone_client_raises_oserror(serve_asgi):
    outcome = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(2000):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
                await asyncio.sleep(0.001)
        except OSError:
            outcome.append("oserror")
            return
        outcome.append("finished")

    server = serve_asgi(app)
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(1000)
    abort(s)
    wait_until(lambda: outcome, timeout=20, what="the app's end")
    assert outcome == ["oserror"]


def test_errors_answer_500(serve_asgi):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/raise":
            raise RuntimeError("boom")
        if path == "/nothing":
            return
        if path == "/bad":
            await send({"type": "http.response.body", "body": b"no start"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server = serve_asgi(app)
    for path in ("/raise", "/nothing", "/bad"):
        assert request(server, path=path)[0] == 500, path
    assert request(server)[2] == b"ok"


def test_head_drops_the_body(serve_asgi):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"twelve bytes"})

    server = serve_asgi(app)
    status, headers, body, _ = request(server, "HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "12"


def test_lifespan_runs_around_the_server():
    events = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await asyncio.sleep(0.1)
                    scope["state"]["db"] = "connected"
                    events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        events.append("request")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["state"]["db"].encode()})

    server = ASGIServer(app, port=0).start()
    try:
        assert events == ["startup"]
        assert request(server)[2] == b"connected"
        assert server.state == {"db": "connected"}
    finally:
        server.stop()
    assert events == ["startup", "request", "shutdown"]


def test_lifespan_unsupported_is_skipped_in_auto_mode(serve_asgi):
    async def app(scope, receive, send):
        assert scope["type"] == "http", "only http here"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fine"})

    server = serve_asgi(app)
    assert request(server)[2] == b"fine"


def test_lifespan_failure_stops_the_start():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})

    server = ASGIServer(app, port=0)
    with pytest.raises(RuntimeError, match="no database"):
        server.start()
    assert not server.running
    server2 = ASGIServer(lambda s, r, se: None, port=0, lifespan="on")
    with pytest.raises(RuntimeError):
        server2.start()


def test_loop_threads_stop_with_the_server():
    server = ASGIServer(scope_app, port=0).start()
    assert request(server)[0] == 200
    assert [t for t in threading.enumerate() if t.name == "pymongoose_uring-asgi"]
    server.stop()
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name == "pymongoose_uring-asgi"],
        timeout=5,
        what="the loop thread's end",
    )


def test_server_restarts_with_a_fresh_loop():
    server = ASGIServer(scope_app, port=0)
    for _ in range(3):
        server.start()
        assert request(server)[0] == 200
        server.stop()


def test_asyncio_and_uvloop_loops(serve_asgi):
    for kind in ("asyncio", "auto"):
        server = serve_asgi(scope_app, loop=kind)
        assert request(server)[0] == 200


def test_many_concurrent_requests(serve_asgi):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.001)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["query_string"]})

    server = serve_asgi(app, threads=2)
    errors = []

    def client(n):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            for i in range(50):
                conn.request("GET", "/?%d-%d" % (n, i))
                assert conn.getresponse().read() == b"%d-%d" % (n, i)
            conn.close()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


# ---- FastAPI ----------------------------------------------------------------------------


def make_fastapi_app(events):
    pytest.importorskip("fastapi", reason="FastAPI is not installed (pip install fastapi)")
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.responses import PlainTextResponse, StreamingResponse
    from pydantic import BaseModel

    @asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield {"greeting": "hello from lifespan"}
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    class Item(BaseModel):
        name: str
        price: float

    @app.get("/")
    async def hello():
        return {"message": "Hello, World!"}

    @app.get("/items/{item_id}")
    async def item(item_id: int, q: str = ""):
        return {"item_id": item_id, "q": q}

    @app.post("/items", status_code=201)
    async def create(item: Item):
        return {"name": item.name, "price": item.price * 2}

    @app.get("/sync")
    def sync_route():
        return {"sync": True}

    @app.get("/state")
    async def state(request: Request):
        return {"greeting": request.state.greeting}

    @app.get("/stream")
    async def stream():
        async def gen():
            for i in range(5):
                yield "chunk %d\n" % i
                await asyncio.sleep(0.01)

        return StreamingResponse(gen(), media_type="text/plain")

    @app.get("/missing")
    async def missing():
        raise HTTPException(status_code=404, detail="nope")

    @app.get("/crash")
    async def crash():
        raise RuntimeError("boom")

    @app.get("/text", response_class=PlainTextResponse)
    async def text():
        return "plain"

    import importlib.util

    # python-multipart: what FastAPI's forms and uploads need
    has_multipart = bool(
        importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")
    )

    if has_multipart:

        @app.post("/form")
        async def form(name: str = Form(...), age: int = Form(...)):
            return {"name": name, "age": age}

        @app.post("/upload")
        async def upload(file: UploadFile = File(...), note: str = Form("")):
            content = await file.read()
            return {"filename": file.filename, "size": len(content), "note": note}

    app.state.has_multipart = has_multipart
    return app


def multipart_body(fields, files):
    boundary = "----pmuboundaryQ9x"
    out = b""
    for name, value in fields:
        out += (
            '--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
            % (boundary, name, value)
        ).encode()
    for name, filename, data in files:
        out += (
            (
                '--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n" % (boundary, name, filename)
            ).encode()
            + data
            + b"\r\n"
        )
    out += ("--%s--\r\n" % boundary).encode()
    return out, "multipart/form-data; boundary=" + boundary


def test_fastapi_app():
    events = []
    app = make_fastapi_app(events)
    server = ASGIServer(app, port=0).start()
    try:
        assert events == ["startup"]
        status, headers, body, _ = request(server)
        assert status == 200 and json.loads(body) == {"message": "Hello, World!"}
        assert headers["content-type"] == "application/json"
        assert json.loads(request(server, path="/items/5?q=x")[2]) == {"item_id": 5, "q": "x"}
        assert request(server, path="/items/abc")[0] == 422
        status, _, body, _ = request(
            server,
            "POST",
            "/items",
            body=b'{"name": "pen", "price": 1.5}',
            headers={"Content-Type": "application/json"},
        )
        assert status == 201 and json.loads(body) == {"name": "pen", "price": 3.0}
        assert json.loads(request(server, path="/sync")[2]) == {"sync": True}
        assert json.loads(request(server, path="/state")[2]) == {"greeting": "hello from lifespan"}
        status, _, body, _ = request(server, path="/stream")
        assert status == 200 and body == b"".join(b"chunk %d\n" % i for i in range(5))
        status, _, body, _ = request(server, path="/missing")
        assert status == 404 and json.loads(body) == {"detail": "nope"}
        assert request(server, path="/crash")[0] == 500
        assert request(server, path="/text")[2] == b"plain"
        assert request(server, path="/nowhere")[0] == 404
        assert request(server, "HEAD", "/")[0] in (200, 405)
    finally:
        server.stop()
    assert events == ["startup", "shutdown"]


def test_fastapi_forms_and_uploads():
    """FastAPI's form and upload routes (they need python-multipart: skipped, with the
    reason, where it is not installed)."""
    app = make_fastapi_app([])
    if not app.state.has_multipart:
        pytest.skip(
            "python-multipart is not installed (pip install python-multipart): "
            "FastAPI's form and upload routes need it"
        )
    with ASGIServer(app, port=0) as server:
        status, _, body, _ = request(
            server,
            "POST",
            "/form",
            body=b"name=Ada&age=36",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 200 and json.loads(body) == {"name": "Ada", "age": 36}
        payload = os.urandom(200000)
        data, ctype = multipart_body([("note", "hi")], [("file", "a.bin", payload)])
        status, _, body, _ = request(
            server, "POST", "/upload", body=data, headers={"Content-Type": ctype}
        )
        assert status == 200, body
        assert json.loads(body) == {"filename": "a.bin", "size": len(payload), "note": "hi"}


def test_fastapi_keepalive_many_requests():
    app = make_fastapi_app([])
    with ASGIServer(app, port=0) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for i in range(200):
            conn.request("GET", "/items/%d" % i)
            assert json.loads(conn.getresponse().read())["item_id"] == i
        conn.close()


# ---- Django -----------------------------------------------------------------------------


def test_django_asgi(tmp_path):
    try:
        import django  # noqa: F401
    except ImportError:
        pytest.skip("Django is not installed (pip install django)")

    from test_wsgi import DJANGO_APP

    script = (
        DJANGO_APP
        + """
from django.core.asgi import get_asgi_application
from pymongoose_uring.asgi import ASGIServer
s = ASGIServer(get_asgi_application(), port=0).start()
import http.client
c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
c.request("GET", "/hello/?name=dj")
r = c.getresponse(); print(r.status, r.read().decode())
c.request("POST", "/echo/", body=b"payload", headers={"Content-Type": "text/plain"})
r = c.getresponse(); print(r.status, r.read().decode())
c.request("GET", "/nope/")
r = c.getresponse(); r.read(); print(r.status)
s.stop()
"""
    )
    lines = run_script(script, cwd=tmp_path)
    assert lines[0] == '200 {"hello": "dj"}'
    assert lines[1] == "200 payload"
    assert lines[2] == "404"
