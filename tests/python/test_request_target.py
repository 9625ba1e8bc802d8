"""What the application sees of the request target and Host (RFC 9112 3.2): an absolute-form
target reaches it as its path and query with the target's authority as the Host, through the
native API, WSGI and ASGI; OPTIONS * reaches it as path "*"; the requests the engine refuses
(no Host, two Host, CONNECT, * outside OPTIONS, a bare CR) never reach it."""

import json

import pytest

from conftest import RawClient
from pymongoose_uring.asgi import ASGIServer
from pymongoose_uring.wsgi import WSGIServer

ABSOLUTE = b"GET http://example.com:8080/p/a%20b?x=1 HTTP/1.1\r\nHost: other\r\nX-A: b\r\n\r\n"


@pytest.fixture
def serve_any():
    servers = []

    def start(cls, app):
        server = cls(app, port=0).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=30)


def exchange(server, data):
    """-> (status, JSON body or None, how the connection went on: "closed" when the server
    closed it, "kept" when a next request on it was answered)."""
    c = RawClient(server.port)
    try:
        c.send(data)
        status, headers, body = c.read_response()
        if ("Connection", "close") in headers or status != 200:
            after = "closed" if c.closed_by_server() else "open"
        else:
            c.send(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            after = "kept" if c.read_response()[0] == 200 else "?"
        return status, (json.loads(body) if status == 200 else None), after
    finally:
        c.close()


def native_app(req):
    return json.dumps(
        {
            "path": req.path,
            "raw_path": req.raw_path,
            "target": req.target,
            "query": req.query_string,
            "method": req.method,
            "hosts": req.headers.getall("host"),
        }
    ).encode()


def wsgi_app(environ, start_response):
    out = {
        k: environ.get(k)
        for k in ("PATH_INFO", "QUERY_STRING", "HTTP_HOST", "RAW_URI", "REQUEST_METHOD")
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(out).encode()]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    out = {
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "method": scope["method"],
        "hosts": [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"],
    }
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(out).encode()})


def test_absolute_form_native(serve):
    status, d, closed = exchange(serve(native_app), ABSOLUTE)
    assert status == 200 and closed == "kept"
    assert d["path"] == "/p/a b" and d["raw_path"] == "/p/a%20b"
    assert d["target"] == "/p/a%20b?x=1" and d["query"] == "x=1"
    assert d["hosts"] == ["example.com:8080"]


def test_absolute_form_wsgi(serve_any):
    status, d, _ = exchange(serve_any(WSGIServer, wsgi_app), ABSOLUTE)
    assert status == 200
    assert d["PATH_INFO"] == "/p/a b" and d["QUERY_STRING"] == "x=1"
    assert d["HTTP_HOST"] == "example.com:8080" and d["RAW_URI"] == "/p/a%20b?x=1"


def test_absolute_form_asgi(serve_any):
    status, d, _ = exchange(serve_any(ASGIServer, asgi_app), ABSOLUTE)
    assert status == 200
    assert d["path"] == "/p/a b" and d["raw_path"] == "/p/a%20b" and d["query_string"] == "x=1"
    assert d["hosts"] == ["example.com:8080"]


def test_absolute_form_empty_path_and_added_host(serve):
    server = serve(native_app)
    status, d, _ = exchange(
        server, b"GET HTTPS://h.example?q=2 HTTP/1.1\r\nHost: h.example\r\n\r\n"
    )
    assert status == 200 and (d["path"], d["query"], d["target"]) == ("/", "q=2", "/?q=2")
    # HTTP/1.0 may omit Host: the target's authority becomes one
    status, d, closed = exchange(server, b"GET http://h:81/x HTTP/1.0\r\n\r\n")
    assert status == 200 and closed == "closed" and d["hosts"] == ["h:81"] and d["path"] == "/x"


def test_options_asterisk(serve, serve_any):
    req = b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"
    status, d, closed = exchange(serve(native_app), req)
    assert (
        status == 200
        and closed == "kept"
        and (d["method"], d["path"], d["target"]) == ("OPTIONS", "*", "*")
    )
    status, d, _ = exchange(serve_any(WSGIServer, wsgi_app), req)
    assert status == 200 and d["PATH_INFO"] == "*"
    status, d, _ = exchange(serve_any(ASGIServer, asgi_app), req)
    assert status == 200 and d["path"] == "*"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\rXGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=["no-host", "two-host", "bad-host", "ftp", "asterisk-get", "connect", "bare-cr"],
)
def test_refused_before_the_application(serve, data):
    seen = []

    def handler(req):
        seen.append(req.target)
        return b"ok"

    status, _, closed = exchange(serve(handler), data)
    assert status == 400 and closed == "closed"
    assert seen == []
