"""Memory stays flat: thousands of requests through every kind of handler,
answer and body leave nothing behind.

Two measures. _pmu.requests_alive() counts Request objects exactly: every
one must be freed once its answer is out, whatever path it took (error,
deferred, streamed, asyncio). sys.getallocatedblocks() counts all the
interpreter's live allocations; it wanders by a few hundred blocks as
caches settle, so it is held to half a block per request: a leak of any
object on every request goes over that.
"""

import asyncio
import gc
import http.client
import logging
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pymongoose_uring import App, Response, _native
from pymongoose_uring.asgi import ASGIServer
from pymongoose_uring.wsgi import WSGIServer

WARMUP = 3  # rounds that fill caches, pools and lazy imports
MEASURED = 3  # rounds whose growth counts
ROUND = 650  # requests per round, spread evenly over the paths


def requests_alive():
    return _native._pmu.requests_alive()


@pytest.fixture
def quiet_logs():
    """Handler errors are logged with tracebacks; pytest keeps every record,
    which would count as growth."""
    logger = logging.getLogger("pymongoose_uring")
    logger.disabled = True
    yield
    logger.disabled = False


def exercise(port, calls):
    """One round: every (method, path, body, expected status) in turn over
    one keep-alive connection, about ROUND requests in all."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(-(-ROUND // len(calls))):
            for method, path, body, status in calls:
                conn.request(
                    method, path, body=body, headers={"X-Test": "yes", "Cookie": "a=1; b=2"}
                )
                response = conn.getresponse()
                response.read()
                assert response.status == status, (method, path, response.status)
    finally:
        conn.close()


def assert_flat(port, calls):
    baseline = requests_alive()
    for _ in range(WARMUP):
        exercise(port, calls)
    gc.collect()
    before = sys.getallocatedblocks()
    for _ in range(MEASURED):
        exercise(port, calls)
    # A deferred answer's Request may be freed just after its answer is out.
    deadline = time.monotonic() + 5
    while requests_alive() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert requests_alive() <= baseline, "%d Request objects never freed" % (
        requests_alive() - baseline
    )
    gc.collect()
    grown = sys.getallocatedblocks() - before
    requests = MEASURED * -(-ROUND // len(calls)) * len(calls)
    assert grown < requests // 2, "%d blocks more after %d requests" % (grown, requests)


def test_native_handlers_leave_nothing_behind(serve, quiet_logs):
    app = App()
    pool = ThreadPoolExecutor(2)

    @app.get("/json")
    def as_json(request):
        return {
            "q": request.query.get("x"),
            "h": request.headers.get("x-test"),
            "client": request.client[0],
            "path": request.path,
        }

    @app.get("/text")
    def as_text(request):
        return "hello " + request.query_string

    @app.get("/big")
    def big(request):
        return b"b" * 20000  # sent without a copy

    @app.get("/response/{name}")
    def response(request):
        return Response.json(
            {"name": request.params["name"]},
            status=201,
            headers={"X-One": "1", "Set-Cookie": ["a=1", "b=2"]},
        )

    @app.get("/boom")
    def boom(request):
        raise ValueError("handler error")

    @app.get("/later")
    def later(request):
        pool.submit(request.reply, {"later": True})

    @app.get("/async")
    async def in_asyncio(request):
        await asyncio.sleep(0)
        return {"async": True}

    @app.post("/echo")
    def echo(request):
        return Response(request.body, headers={"Content-Type": "application/octet-stream"})

    @app.post("/json")
    def post_json(request):
        return {"n": len(request.json()["items"])}

    @app.post("/stream")
    def streamed(request):
        def work():
            total = 0
            while chunk := request.read(4096):
                total += len(chunk)
            request.start(200, {"Content-Type": "text/plain"})
            request.write(b"%d" % total)
            request.end()

        pool.submit(work)

    calls = [
        ("GET", "/json?x=1", None, 200),
        ("GET", "/text?a=b", None, 200),
        ("GET", "/big", None, 200),
        ("GET", "/response/x", None, 201),
        ("GET", "/boom", None, 500),
        ("GET", "/later", None, 200),
        ("GET", "/async", None, 200),
        ("POST", "/echo", b"e" * 3000, 200),
        ("POST", "/json", b'{"items": [1, 2, 3]}', 200),
        ("POST", "/stream", b"s" * 20000, 200),
        ("GET", "/missing", None, 404),
        ("POST", "/text", b"", 405),
        ("HEAD", "/json", None, 200),
    ]
    server = serve(app, stream_body_threshold=8192)
    try:
        assert_flat(server.port, calls)
    finally:
        pool.shutdown()


def test_wsgi_leaves_nothing_behind(quiet_logs):
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/boom":
            raise ValueError("app error")
        if path == "/echo":
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return [body]
        if path == "/gen":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (b"%d" % i for i in range(5))  # streamed, chunked
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["QUERY_STRING"].encode(), environ.get("HTTP_X_TEST", "").encode()]

    calls = [
        ("GET", "/?a=b", None, 200),
        ("GET", "/gen", None, 200),
        ("GET", "/boom", None, 500),
        ("POST", "/echo", b"w" * 20000, 200),
    ]
    with WSGIServer(app, port=0, stream_body_threshold=8192) as server:
        assert_flat(server.port, calls)


def test_asgi_leaves_nothing_behind(quiet_logs):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/boom":
            raise ValueError("app error")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        if scope["path"] == "/stream":
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": body or scope["query_string"]})

    calls = [
        ("GET", "/?a=b", None, 200),
        ("GET", "/stream", None, 200),
        ("GET", "/boom", None, 500),
        ("POST", "/echo", b"a" * 20000, 200),
    ]
    with ASGIServer(app, port=0, stream_body_threshold=8192) as server:
        assert_flat(server.port, calls)


def test_requests_alive_counts_requests_held(serve):
    held = []
    server = serve(held.append)  # answered later: returns None
    baseline = requests_alive()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    deadline = time.monotonic() + 5
    while not held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert requests_alive() == baseline + 1
    held[0].reply("late")
    assert conn.getresponse().read() == b"late"
    assert requests_alive() == baseline + 1  # answered, still referenced
    held.clear()
    assert requests_alive() == baseline
    conn.close()


@pytest.mark.parametrize("cycle", ["params", "disconnect_callback", "started_stream"])
def test_request_in_a_cycle_is_collected_and_answered(serve, cycle, caplog):
    """A handler that makes its request part of a cycle and drops it: the
    garbage collector frees it, which answers it (500, or a started stream
    aborted), and the server stops at once instead of waiting for it."""

    def handler(req):
        if cycle == "params":
            req.params["self"] = req
        elif cycle == "disconnect_callback":
            req.add_disconnect_callback(lambda: req.method)
        else:
            req.start(200)
            req.write(b"begun")
            req.params["self"] = req
        return None  # kept by nobody but the cycle

    server = serve(handler)
    baseline = requests_alive()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    gc.disable()  # the collection is the test's to make
    try:
        sock.sendall(b"GET /cycle HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + 5
        while requests_alive() == baseline and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert requests_alive() == baseline + 1  # unreachable, but alive: the cycle
        with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
            gc.collect()
        assert requests_alive() == baseline
    finally:
        gc.enable()
    data = b""
    while True:
        chunk = sock.recv(65536)
        if cycle != "started_stream" and b"Internal Server Error" in data + chunk:
            data += chunk
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    if cycle == "started_stream":
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"5\r\nbegun\r\n"), data
        assert "never ended" in caplog.text
    else:
        assert data.startswith(b"HTTP/1.1 500 "), data
        assert "dropped the request without replying" in caplog.text
    started = time.monotonic()
    server.stop(timeout=10)
    assert time.monotonic() - started < 3
