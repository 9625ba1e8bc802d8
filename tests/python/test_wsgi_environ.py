"""The environ built in C (binding/wsgi.c, WSGICall.environ) equals the one
WSGIHandler._environ builds in Python, for the same engine request: query strings,
repeated headers, cookies, header names with "_", non-ASCII and percent-encoded
paths, HTTP/1.0, bodies (whole and chunked), SCRIPT_NAME, and the proxy headers from
a trusted and an untrusted peer. Also the C start_response's rules."""

import json
import socket
import sys

import pytest

from conftest import recv_until_closed, request
from pymongoose_uring import _native
from pymongoose_uring.wsgi import WSGIHandler


def hello(environ, start_response):
    start_response("200 OK", [])
    return [b""]


def differences(handler, req):
    """The keys whose values differ between the C and the Python environ of req."""
    c_env = handler._run.environ(req)
    py_env = handler._environ(req)
    diff = {}
    for key in sorted(set(c_env) | set(py_env)):
        a, b = c_env.get(key, "<missing>"), py_env.get(key, "<missing>")
        if key == "wsgi.input":  # two objects over the same bytes
            same = type(a) is type(b) and a.read() == b.read()
        else:
            same = a == b and type(a) is type(b)
        if not same:
            diff[key] = [repr(a), repr(b)]
    return diff


def comparing_server(serve, **options):
    """A native server whose handler answers, for each request, the environ keys on
    which C and Python disagree (JSON), and the C environ's str values."""
    handler = WSGIHandler(hello, **options)
    assert type(handler._run) is _native._pmu.WSGICall

    def compare(req):
        env = handler._run.environ(req)
        return {
            "diff": differences(handler, req),
            "env": {k: v for k, v in env.items() if isinstance(v, str)},
        }

    return serve(compare, stream_body_threshold=0)


def raw(server, data):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while b"\r\n\r\n" not in out or len(out.split(b"\r\n\r\n", 1)[1]) < int(
            out.split(b"Content-Length: ")[1].split(b"\r\n")[0] if b"Content-Length: " in out else 0
        ):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return json.loads(out.split(b"\r\n\r\n", 1)[1])


CASES = [
    b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /q?a=1&b=%20x&c=%C3%A9 HTTP/1.1\r\nHost: h\r\n\r\n",
    # (the engine refuses raw non-ASCII bytes in a target: they come percent-encoded)
    b"GET /caf%C3%A9/%41%2f%zz%E9%4 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept: b\r\nCookie: x=1\r\nCookie: y=2\r\n"
    b"X_Under: no\r\nX-Latin: caf\xe9\r\nContent-Type: text/x\r\n\r\n",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"GET /proxied HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n"
    b"X-Forwarded-Proto: https\r\n\r\n",
    b"GET /app/sub/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /application HTTP/1.1\r\nHost: h\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"PURGE /custom-method HTTP/1.1\r\nHost: h\r\n\r\n",
]


@pytest.mark.parametrize(
    "options, client",
    [
        ({}, "10.0.0.1"),  # the nearest untrusted hop
        ({"script_name": "/app/"}, "10.0.0.1"),
        ({"proxy_headers": False}, "127.0.0.1"),
        ({"forwarded_allow_ips": "192.0.2.1"}, "127.0.0.1"),  # our peer is not trusted
        ({"forwarded_allow_ips": "*", "url_scheme": "https"}, "203.0.113.7"),
    ],
    ids=["default", "script_name", "no_proxy_headers", "untrusted_peer", "trust_all"],
)
def test_the_c_environ_equals_the_python_one(serve, options, client):
    server = comparing_server(serve, **options)
    for data in CASES:
        got = raw(server, data)
        assert got["diff"] == {}, data
    # and the values are what the request says (not two equal mistakes)
    env = raw(server, CASES[3])["env"]
    assert env["HTTP_ACCEPT"] == "a, b" and env["HTTP_COOKIE"] == "x=1; y=2"
    assert env["HTTP_X_LATIN"] == "caf\xe9" and "HTTP_X_UNDER" not in env
    assert env["CONTENT_TYPE"] == "text/x" and env["SERVER_PROTOCOL"] == "HTTP/1.1"
    path = raw(server, CASES[2])["env"]["PATH_INFO"]
    script = options.get("script_name", "").rstrip("/")
    assert path == "/caf\xc3\xa9/A/%zz\xe9%4"
    assert raw(server, CASES[6])["env"]["CONTENT_LENGTH"] == "5"
    assert raw(server, CASES[4])["env"]["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert raw(server, CASES[8])["env"]["PATH_INFO"] == ("/sub/x" if script else "/app/sub/x")
    assert raw(server, CASES[8])["env"]["SCRIPT_NAME"] == script
    assert raw(server, CASES[7])["env"]["REMOTE_ADDR"] == client


def test_the_c_path_serves_and_the_python_path_with_the_access_log(serve_wsgi):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-A", "caf\xe9")])
        return [environ["PATH_INFO"].encode("latin-1")]

    fast = serve_wsgi(app)
    assert type(fast.handler._run) is _native._pmu.WSGICall
    slow = serve_wsgi(app, access_log=True)
    assert slow.handler._run == slow.handler._handle
    for server in (fast, slow):
        status, headers, body, resp = request(server, path="/x%41")
        assert (status, body) == (200, b"/xA")
        assert headers["content-type"] == "text/plain" and headers["content-length"] == "3"
        # a latin-1 header value goes out as its latin-1 byte
        assert resp.getheader("X-A").encode("latin-1") == b"caf\xe9"


def test_c_start_response_rules():
    """The C start_response keeps _StartResponse's rules (PEP 3333)."""
    sr_type = _native._pmu.WSGIStartResponse
    sr = sr_type(None, lambda sr, data: None)
    with pytest.raises(TypeError):
        sr(b"200 OK", [])
    with pytest.raises(TypeError):
        sr("200 OK", ())
    assert sr.status is None and sr.headers is None
    write = sr("200 OK", [("A", "b")])
    assert callable(write) and sr.status == "200 OK" and sr.headers == [("A", "b")]
    with pytest.raises(AssertionError):
        sr("500 Oops", [])
    # exc_info replaces the status while nothing is sent...
    try:
        raise ValueError("boom")
    except ValueError:
        sr("500 Oops", [], sys.exc_info())
    assert sr.status == "500 Oops"
    # ...and re-raises the app's error once the head is out
    sr.streaming = True
    try:
        raise KeyError("late")
    except KeyError:
        info = sys.exc_info()
    with pytest.raises(KeyError):
        sr("500 Oops", [], info)
    sr2 = sr_type(None, lambda sr, data: None)
    assert sr2(status="201 Created", headers=[]) is not None and sr2.status == "201 Created"


def test_the_c_environ_over_tls_equals_the_python_one(serve, tmp_path):
    """HTTPS=on and wsgi.url_scheme https (unless url_scheme was given), in C as in
    _environ."""
    from tlscerts import Certs, tls_connect

    certs = Certs(tmp_path)
    for options, scheme in (({}, "https"), ({"url_scheme": "http"}, "http")):
        handler = WSGIHandler(hello, **options)

        def compare(req, handler=handler):
            env = handler._run.environ(req)
            strs = {k: v for k, v in env.items() if isinstance(v, str)}
            return {"diff": differences(handler, req), "env": strs}

        server = serve(compare, **certs.options())
        with tls_connect(server.port, certs.context()) as s:
            s.sendall(b"GET /tls HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        got = json.loads(out.split(b"\r\n\r\n", 1)[1])
        assert got["diff"] == {}
        assert got["env"]["HTTPS"] == "on" and got["env"]["wsgi.url_scheme"] == scheme


# -- iterables answered in C ------------------------------------------------------------


class _Closing:
    """An iterable with close(), as werkzeug's ClosingIterator and Django's responses."""

    def __init__(self, chunks, closed):
        self._it = iter(chunks)
        self._closed = closed

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self):
        self._closed.append(True)


def _failing(closed):
    yield b"half"
    closed.append("raising")
    raise RuntimeError("the body failed")


ITERABLES = {
    # name: (chunks, Content-Length) -- chunks a list, or a callable(closed) -> iterable
    "one": ([b"hello"], "5"),
    "several": ([b"ab", b"", b"cd"], "4"),
    "empty": ([], "0"),
    "bytes-like": ([bytearray(b"xy"), memoryview(b"z")], "3"),
    "short": ([b"12345"], "10"),  # the app's length disagrees: sent under it, then closed
    "str": (["text"], "4"),  # one str: sent UTF-8 encoded, as from any body
    "strs": (["te", "xt"], "4"),  # str among several chunks: 500 (b"".join refuses)
    "raises": (_failing, "8"),  # 500, close() still called
}


def _iter_app(closed):
    def app(environ, start_response):
        chunks, length = ITERABLES[environ["PATH_INFO"][1:]]
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", length)])
        if callable(chunks):
            return _Closing(chunks(closed), closed)
        return _Closing(chunks, closed)

    return app


def _raw_exchange(port, name):
    """What the client receives for GET /name until the server closes or one answer
    is complete, the Date header left out."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /%s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % name.encode())
    data = recv_until_closed(s)
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = [x for x in head.split(b"\r\n") if not x.lower().startswith(b"date:")]
    return b"\r\n".join(lines), body


def test_iterables_answered_in_c_as_the_python_path_answers_them(serve_wsgi, monkeypatch, caplog):
    """A non-list iterable under a Content-Length of at most BUFFER_LIMIT (Flask's and
    Django's answers) is joined and answered by the C path, with the same bytes on the
    wire as the Python path gives (WSGIHandler._finish, used with the access log),
    errors included, and close() called once either way."""
    finished = []
    original = WSGIHandler._finish

    def counting_finish(self, request, sr, result, environ):
        finished.append(type(result).__name__)
        return original(self, request, sr, result, environ)

    monkeypatch.setattr(WSGIHandler, "_finish", counting_finish)
    closed_c, closed_py = [], []
    fast = serve_wsgi(_iter_app(closed_c))
    slow = serve_wsgi(_iter_app(closed_py), access_log=True)
    assert type(fast.handler._run) is _native._pmu.WSGICall
    for name in ITERABLES:
        del finished[:]
        got_c = _raw_exchange(fast.port, name)
        assert all(kind == "list" for kind in finished), (name, finished)  # never the iterable
        del finished[:]
        got_py = _raw_exchange(slow.port, name)
        assert finished == ["_Closing"], name  # the Python path had it
        assert got_c == got_py, name
        closes = [x for x in closed_c if x is True], [x for x in closed_py if x is True]
        assert closes == ([True], [True]), (name, closed_c, closed_py)
        del closed_c[:], closed_py[:]
    head, body = _raw_exchange(fast.port, "str")
    assert head.startswith(b"HTTP/1.1 200") and body == b"text"
    assert _raw_exchange(fast.port, "strs")[0].startswith(b"HTTP/1.1 500")
    assert _raw_exchange(fast.port, "raises")[0].startswith(b"HTTP/1.1 500")
    assert "the WSGI app's body yielded str, not bytes" in caplog.text
