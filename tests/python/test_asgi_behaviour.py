"""ASGI behaviour as uvicorn gives it: ASGI 2 (double-callable) apps detected and run,
from Python and from the command line; lifespan state in scope["state"], a shallow copy
per request (Starlette's request.state and lifespan state)."""

import json
import textwrap

import pytest

from conftest import At, port_of, request, run_cli, stop_process, wait_until
from pymongoose_uring._adapter import asgi_version, detect_interface
from pymongoose_uring.asgi import ASGIServer, asgi2_app


class Asgi2App:
    """An ASGI 2 app: built from the scope, then called with receive and send."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.scope["state"]["started_by"] = "asgi2"
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        message = await receive()
        body = json.dumps(
            {
                "path": self.scope["path"],
                "body": message["body"].decode(),
                "state": self.scope.get("state"),
            }
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def asgi2_function(scope):
    """An ASGI 2 app written as a function returning the coroutine function."""

    async def instance(receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    return instance


class Asgi3Class:
    """An ASGI 3 app that is a class: called with (scope, receive, send), awaited."""

    def __init__(self, scope, receive, send):
        self.send = send

    def __await__(self):
        return self.run().__await__()

    async def run(self):
        await self.send({"type": "http.response.start", "status": 202, "headers": []})
        await self.send({"type": "http.response.body", "body": b"asgi3 class"})


async def asgi3_function(scope, receive, send):
    pass


def test_asgi_versions_told_apart():
    assert asgi_version(Asgi2App) == 2
    assert asgi_version(asgi2_function) == 2
    assert asgi_version(Asgi3Class) == 3
    assert asgi_version(asgi3_function) == 3
    assert asgi_version(lambda scope, receive, send: None) == 3
    assert asgi_version(asgi2_app(Asgi2App)) == 3
    # The command line's detection: the ASGI 2 class is ASGI (not a native handler).
    assert detect_interface(Asgi2App) == "asgi"
    assert detect_interface(Asgi3Class) != "asgi2"


def test_asgi2_class_runs_with_lifespan():
    with ASGIServer(Asgi2App, port=0) as server:
        status, _, body, _ = request(server, "POST", "/two", body=b"hi")
        assert status == 200
        assert json.loads(body) == {"path": "/two", "body": "hi", "state": {"started_by": "asgi2"}}
        assert server.state == {"started_by": "asgi2"}


def test_asgi2_function_and_asgi3_class_run():
    with ASGIServer(asgi2_function, port=0, lifespan="off") as server:
        status, _, body, _ = request(server, path="/fn")
        assert (status, body) == (201, b"/fn")
    with ASGIServer(Asgi3Class, port=0, lifespan="off") as server:
        status, _, body, _ = request(server, path="/")
        assert (status, body) == (202, b"asgi3 class")


def test_cli_detects_and_runs_an_asgi2_app(tmp_path):
    (tmp_path / "asgi2mod.py").write_text(
        textwrap.dedent(
            """
            class App:
                def __init__(self, scope):
                    self.scope = scope

                async def __call__(self, receive, send):
                    if self.scope["type"] != "http":
                        return
                    await send({"type": "http.response.start", "status": 200, "headers": []})
                    await send({"type": "http.response.body", "body": b"asgi2 via cli"})
            """
        )
    )
    proc = run_cli(tmp_path, "asgi2mod:App", "--port", "0", "--lifespan", "off")
    try:
        port = port_of(proc)

        s = At(port)
        status, _, body, _ = request(s, path="/")
        assert (status, body) == (200, b"asgi2 via cli")
    finally:
        stop_process(proc)


def test_lifespan_state_is_a_shallow_copy_per_request():
    """What lifespan startup puts in scope["state"] reaches every request; a key a
    request adds stays in that request; objects inside are shared (shallow copy)."""
    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["db"] = {"hits": 0}
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        state = scope["state"]
        seen.append(sorted(state))
        state["per_request"] = True  # not seen by the next request
        state["db"]["hits"] += 1  # the same object in every request
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % state["db"]["hits"]})

    with ASGIServer(app, port=0) as server:
        assert request(server)[2] == b"1"
        assert request(server)[2] == b"2"
        assert seen == [["db"], ["db"]]
        assert server.state == {"db": {"hits": 2}}


def test_starlette_lifespan_state_and_request_state():
    pytest.importorskip("starlette", reason="Starlette is not installed (FastAPI brings it)")
    import contextlib

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield {"pool": "the pool", "count": [0]}

    class Tag(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            request.state.tag = request.url.path
            return await call_next(request)

    async def home(request):
        request.state.count.append(1)
        return JSONResponse(
            {"pool": request.state.pool, "tag": request.state.tag, "n": len(request.state.count)}
        )

    app = Starlette(routes=[Route("/{p}", home)], lifespan=lifespan, middleware=[Middleware(Tag)])
    with ASGIServer(app, port=0) as server:
        assert json.loads(request(server, path="/a")[2]) == {
            "pool": "the pool",
            "tag": "/a",
            "n": 2,
        }
        assert json.loads(request(server, path="/b")[2]) == {
            "pool": "the pool",
            "tag": "/b",
            "n": 3,
        }


def test_fin_during_a_buffered_request_gives_http_disconnect():
    """A client that sends its request and half-closes (FIN): the app's receive() after
    the body gets http.disconnect, so a long poll ends, as on uvicorn; a plain request
    half-closed the same way is still answered (the connection was not cut)."""
    import asyncio
    import socket

    events = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        first = await receive()
        events.append((scope["path"], first["type"], first["body"]))
        if scope["path"] == "/poll":
            try:
                message = await asyncio.wait_for(receive(), 10)
                events.append(("poll ended", message["type"]))
            except asyncio.TimeoutError:
                events.append(("poll ended", "timeout"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done " + scope["path"].encode()})

    with ASGIServer(app, port=0, lifespan="off") as server:
        for path in ("/poll", "/plain"):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            body = b"abc"
            sock.sendall(
                b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n%s"
                % (path.encode(), body)
            )
            if path == "/poll":  # the app waits in its second receive() first
                wait_until(lambda: len(events) == 1, what="the app has the body")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            sock.close()
            assert data.startswith(b"HTTP/1.1 200"), data
            assert data.endswith(b"done " + path.encode()), data
        assert events == [
            ("/poll", "http.request", b"abc"),
            ("poll ended", "http.disconnect"),
            ("/plain", "http.request", b"abc"),
        ]


def _raw_exchange(port, raw):
    """Send raw bytes, half-close, read until the server closes: the bytes received."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(raw)
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


async def trailers_app(scope, receive, send):
    if scope["type"] != "http":
        return
    assert "http.response.trailers" in scope["extensions"]
    await receive()
    headers = [(b"trailer", b"x-checksum, grpc-status")]
    if scope["path"] == "/length":
        headers.append((b"content-length", b"11"))
    await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": True})
    await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
    await send({"type": "http.response.body", "body": b"world"})
    await send(
        {
            "type": "http.response.trailers",
            "headers": [(b"x-checksum", b"abc123")],
            "more_trailers": True,
        }
    )
    await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})


def test_asgi_trailers_sent_after_the_last_chunk():
    """trailers: true, then http.response.trailers messages: the fields go after the last
    chunk (checked on the wire, and the connection serves the next request); under a
    Content-Length the answer ends without them, whole."""
    import h11

    with ASGIServer(trailers_app, port=0, lifespan="off") as server:
        get = b"GET /t HTTP/1.1\r\nHost: t\r\n\r\n"
        data = _raw_exchange(server.port, get + get.replace(b"/t", b"/length"))
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/t", headers=[("Host", "t")]))
        client.send(h11.EndOfMessage())
        client.receive_data(data)
        events = []
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                break
            events.append(event)
            if isinstance(event, h11.EndOfMessage):
                break
        response, *bodies, end = events
        assert response.status_code == 200
        assert (b"transfer-encoding", b"chunked") in response.headers
        assert b"".join(e.data for e in bodies) == b"hello world"
        assert list(end.headers) == [(b"x-checksum", b"abc123"), (b"grpc-status", b"0")]
        # The second answer, under its Content-Length: whole, without the trailers.
        second = data[data.index(b"HTTP/1.1 200", 10) :]
        assert second.endswith(b"\r\n\r\nhello world")
        assert b"abc123" not in second


def test_asgi_bad_trailer_raises_and_the_answer_still_ends():
    raised = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"body"})
        try:
            await send({"type": "http.response.trailers", "headers": [(b"x-bad", b"a\r\nb: c")]})
        except ValueError as e:
            raised.append(str(e))

    with ASGIServer(app, port=0, lifespan="off") as server:
        data = _raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert data.endswith(b"4\r\nbody\r\n0\r\n\r\n"), data
        assert b"b: c" not in data
        assert len(raised) == 1, raised


def test_background_tasks_finish_before_shutdown():
    """Work an app does after its answer (Starlette's BackgroundTasks) finishes when the
    server stops right after the answer, before the lifespan shutdown, as on uvicorn
    (not cancelled)."""
    pytest.importorskip("starlette", reason="Starlette is not installed (FastAPI brings it)")
    import asyncio
    import contextlib

    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    events = []

    async def later():
        await asyncio.sleep(0.3)
        events.append("background done")

    async def home(request):
        return PlainTextResponse("ok", background=BackgroundTask(later))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        events.append("lifespan shutdown")

    server = ASGIServer(Starlette(routes=[Route("/", home)], lifespan=lifespan), port=0).start()
    try:
        assert request(server)[2] == b"ok"
    finally:
        server.stop()
    assert events == ["background done", "lifespan shutdown"]


def test_scope_state_is_there_without_lifespan_state():
    """scope["state"] is in every http and websocket scope, an empty dict when no
    lifespan filled it (as uvicorn gives it: middleware writes to it unchecked), and a
    write to it is not seen by the next request."""
    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        seen.append(dict(scope["state"]))
        scope["state"]["mine"] = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    for lifespan in ("on", "off"):
        seen.clear()
        with ASGIServer(app, "127.0.0.1", 0, lifespan=lifespan) as server:
            for _ in range(2):
                assert request(server)[0] == 200
        assert seen == [{}, {}], (lifespan, seen)
