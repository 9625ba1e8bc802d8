"""The ASGI adapter's C hot path (binding/asgi.c): the scope built in C equals the one
ASGIHandler.scope() builds in Python, request after request; send() and receive()
answer a plain request without yielding to the loop, and hand everything else to the
Python paths; the pure-Python base (no compiled extension) behaves the same."""

import asyncio
import collections
import gc
import http
import socket
import sys
import threading
import weakref

import pytest

from conftest import RawClient, request
from pymongoose_uring import Server, asgi
from pymongoose_uring.asgi import ASGIHandler


def test_the_extension_has_the_fast_path():
    """The tests below compare the C fast path with the Python one: the compiled extension
    must have it (the package falls back to Python without it, and nothing else would say)."""
    assert asgi._asgi_scope is not None
    assert asgi._CycleBaseC is not asgi._CycleBase
    assert asgi._Starter is not None


def _both_scopes(handler):
    """A native handler that builds each request's scope both ways."""
    pairs = []

    def native(req):
        python = handler.scope(req)
        c = asgi._asgi_scope(req, handler._scope_base, handler.state, handler._forward)
        pairs.append((python, c))
        return "ok"

    return native, pairs


def _check_equal(pairs, count):
    assert len(pairs) == count
    for python, c in pairs:
        assert c == python
        assert list(c) == list(python)  # the same keys in the same order
        for key, value in python.items():
            assert type(c[key]) is type(value), key
        assert c["extensions"] is not python["extensions"]
        assert c["state"] is not python["state"]


# Request heads over the cases the scope has to get right: methods, percent-encoded
# and non-UTF-8 paths, queries, header case and repeats, empty values, HTTP/1.0.
HEADS = [
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /a/b%20c?x=1&y=%41 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /caf%C3%A9/%FF%fe?q=%FF&r=caf%C3%A9 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /p? HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /%2F%zz HTTP/1.1\r\nHost: t\r\nX-A: 1\r\nx-a: 2\r\nEmpty:\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /old HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n",
    b"PATCH /" + b"x" * 2000 + b" HTTP/1.1\r\nHost: t\r\nUser-Agent: " + b"u" * 3000 + b"\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: t\r\n"
    + b"".join(b"H-%d: v%d\r\n" % (i, i) for i in range(60))
    + b"\r\n",
    # From the local host (trusted by default): both apply the proxy's headers.
    b"GET /fwd HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n"
    b"X-Forwarded-Proto: https\r\n\r\n",
    b"GET /fwd2 HTTP/1.1\r\nHost: t\r\nx-forwarded-for: 1.1.1.1\r\nX-FORWARDED-FOR: 10.0.0.1\r\n\r\n",
    b"GET /fwd3 HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: wss\r\nX-Forwarded-Host: h\r\n\r\n",
]


@pytest.mark.parametrize(
    "options",
    [{}, {"root_path": "/api/", "scheme": "https"}, {"proxy_headers": False}],
    ids=["defaults", "root_path-scheme", "no-proxy-headers"],
)
def test_c_scope_equals_python_scope(serve, options):
    handler = ASGIHandler(lambda scope, receive, send: None, **options)
    handler.state["shared"] = [1, 2]
    native, pairs = _both_scopes(handler)
    server = serve(native)
    for head in HEADS:
        c = RawClient(server.port)
        try:
            c.send(head)
            status, _, _ = c.read_response()
            assert status == 200, head
        finally:
            c.close()
    _check_equal(pairs, len(HEADS))
    fwd = [c for _, c in pairs if c["path"] == "/fwd"][0]
    if options.get("proxy_headers", True):
        assert fwd["client"] == ("203.0.113.9", 0) and fwd["scheme"] == "https"
    else:
        assert fwd["client"][0] == "127.0.0.1"


def test_c_scope_over_a_unix_socket(tmp_path):
    handler = ASGIHandler(lambda scope, receive, send: None)
    native, pairs = _both_scopes(handler)
    path = str(tmp_path / "s.sock")
    with Server(native, unix_path=path):
        c = RawClient(0, family=socket.AF_UNIX, address=path)
        try:
            c.send(b"GET /u?v=1 HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n")
            assert c.read_response()[0] == 200
        finally:
            c.close()
    _check_equal(pairs, 1)
    assert pairs[0][1]["server"] == (path, None) and pairs[0][1]["client"] is None


def _result(awaitable):
    """The value of an awaitable that must not yield: StopIteration at the first step."""
    it = awaitable.__await__()
    with pytest.raises(StopIteration) as stop:
        it.send(None)
    return stop.value.value


def test_plain_request_never_yields(serve):
    """receive() of a buffered body, http.response.start and a whole body are done in
    C: each awaitable is complete at once, and the request is answered by then."""
    handler = ASGIHandler(lambda scope, receive, send: None)
    seen = {}

    def native(req):
        cycle = asgi._Cycle(req, handler)
        seen["message"] = _result(cycle.receive())
        start = {"type": "http.response.start", "status": 201, "headers": [(b"x-c", b"1")]}
        assert _result(cycle.send(start)) is None
        assert not req.answered
        body = {"type": "http.response.body", "body": b"made in C"}
        assert _result(cycle.send(body)) is None
        seen["answered"] = req.answered
        seen["fields"] = (cycle.started, cycle.done, cycle.streaming, cycle.status)
        # a second body: the Python path, which raises as before
        with pytest.raises(RuntimeError, match="after the response was complete"):
            _result(cycle.send(body))
        # the body was given: receive() now waits in Python (a coroutine)
        coro = cycle.receive()
        seen["later"] = asyncio.iscoroutine(coro)
        coro.close()
        return None

    server = serve(native)
    status, headers, body, _ = request(server, "POST", "/x", body=b"abc")
    assert (status, headers["x-c"], body) == (201, "1", b"made in C")
    assert seen["message"] == {"type": "http.request", "body": b"abc", "more_body": False}
    assert seen["answered"] is True
    assert seen["fields"] == (True, True, False, 201)
    assert seen["later"] is True


def test_other_messages_take_the_python_path(serve):
    """A streamed body, announced trailers and unknown types come back as coroutines
    of _Cycle._send (which run as before)."""
    handler = ASGIHandler(lambda scope, receive, send: None)
    kinds = {}

    def native(req):
        cycle = asgi._Cycle(req, handler)
        trailing = {"type": "http.response.start", "status": 200, "trailers": True}
        coro = cycle.send(trailing)
        kinds["trailers"] = asyncio.iscoroutine(coro)
        coro.close()
        _result(cycle.send({"type": "http.response.start", "status": 200, "headers": []}))
        coro = cycle.send({"type": "http.response.body", "body": b"a", "more_body": True})
        kinds["more_body"] = asyncio.iscoroutine(coro)
        coro.close()
        coro = cycle.send({"type": "nonsense"})
        kinds["unknown"] = asyncio.iscoroutine(coro)
        with pytest.raises(ValueError, match="unsupported ASGI message type"):
            coro.send(None)
        req.reply("done")
        return None

    assert request(serve(native))[2] == b"done"
    assert kinds == {"trailers": True, "more_body": True, "unknown": True}


def _python_cycle():
    """_Cycle over the pure-Python base, as without the compiled extension."""
    methods = {
        k: v for k, v in asgi._Cycle.__dict__.items() if callable(v) and not k.startswith("__")
    }
    return type("PyCycle", (asgi._CycleBase,), {"__slots__": (), **methods})


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    message = await receive()
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/short":
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"short"})
    else:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % (3 + len(message["body"]))),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"hi " + message["body"]})


def _use_base(monkeypatch, base):
    """ "c": the compiled paths; "python start": each request's task started by
    ASGIHandler._start (no ASGIStarter); "python": no compiled piece at all."""
    if base != "c":
        monkeypatch.setattr(asgi, "_Starter", None)
    if base == "python":
        monkeypatch.setattr(asgi, "_Cycle", _python_cycle())
        monkeypatch.setattr(asgi, "_asgi_scope", None)


@pytest.mark.parametrize("base", ["c", "python start", "python"])
def test_both_bases_answer_alike(serve_asgi, monkeypatch, base):
    """The C paths and the Python ones (_use_base)."""
    _use_base(monkeypatch, base)
    server = serve_asgi(_app)
    starter = asgi._native._pmu.ASGIStarter
    assert isinstance(server.handler._dispatch, starter) == (base == "c")
    assert request(server, "POST", "/", body=b"there")[2] == b"hi there"
    status, headers, body, _ = request(server, "GET", "/stream")
    assert (status, body, headers.get("transfer-encoding")) == (200, b"one two", "chunked")
    c = RawClient(server.port)
    try:
        c.send(b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n")
        c.sock.settimeout(10)
        data = b""
        while True:
            chunk = c.sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        c.close()
    # fewer bytes than declared: sent as they are, then the connection closes
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nshort")


STATUSES = {
    "/int": 201,
    "/enum": http.HTTPStatus.ACCEPTED,  # an int subclass: Response()'s own conversion
    "/bool": True,  # status 1
    "/str": "200",
    "/low": 99,
    "/high": 1000,
    "/huge": 2**70,
    "/negative": -200,
}


async def _status_app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = STATUSES[scope["path"]]
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"status"})


@pytest.mark.parametrize("base", ["c", "python"])
def test_statuses_alike_on_both_bases(serve_asgi, monkeypatch, base):
    """The C send makes its Response without the call for an exact int status; any other
    status goes through Response() as in Python: the same answers on both (500 for what
    cannot be sent), and the server goes on."""
    _use_base(monkeypatch, base)
    server = serve_asgi(_status_app, lifespan="off")
    got = {path: request(server, path=path)[0] for path in STATUSES}
    assert got == {
        "/int": 201,
        "/enum": 202,
        "/bool": 500,
        "/str": 500,
        "/low": 500,
        "/high": 500,
        "/huge": 500,
        "/negative": 500,
    }


def test_access_log_from_the_c_path(serve_asgi, caplog):
    with caplog.at_level("INFO", logger="pymongoose_uring.access"):
        server = serve_asgi(_app, access_log=True)
        assert request(server, "GET", "/logged")[0] == 200
        server.stop()
    lines = [r.getMessage() for r in caplog.records if "/logged" in r.getMessage()]
    assert len(lines) == 1 and " 200" in lines[0], lines


class _NotACoroutine:
    """An awaitable that is not a coroutine (a class-based app may return one)."""

    def __init__(self, send):
        self.send = send

    def __await__(self):
        yield from self.send({"type": "http.response.start", "status": 202}).__await__()
        yield from self.send({"type": "http.response.body", "body": b"awaited"}).__await__()


@pytest.fixture(params=["c", "python"])
def start(request, monkeypatch):
    """Requests started by the C ASGIStarter, or by ASGIHandler._start (no starter)."""
    if request.param == "python":
        monkeypatch.setattr(asgi, "_Starter", None)
    return request.param


def test_app_returning_other_awaitables_and_raising_at_call(serve_asgi, start):
    def app(scope, receive, send):
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        if scope["path"] == "/raise":
            raise ValueError("raised before any coroutine")
        return _NotACoroutine(send)

    server = serve_asgi(app, lifespan="off")
    assert request(server)[0::2] == (202, b"awaited")
    assert request(server, path="/raise")[0::2] == (500, b"Internal Server Error")
    assert request(server)[0::2] == (202, b"awaited")  # the server goes on


class _Quit(BaseException):
    """Not an Exception: the adapter lets it go to the engine (which answers 500)."""


def test_base_exceptions_at_call_reach_the_engine(serve_asgi, start, caplog):
    def app(scope, receive, send):
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        if scope["path"] == "/quit":
            raise _Quit()
        return _app(scope, receive, send)

    server = serve_asgi(app, lifespan="off")
    with caplog.at_level("ERROR", logger="pymongoose_uring"):
        assert request(server, path="/quit")[0::2] == (500, b"Internal Server Error")
    assert any("_Quit" in (r.exc_text or "") for r in caplog.records)
    assert request(server, "POST", "/", body=b"on")[2] == b"hi on"  # the server goes on


@pytest.mark.parametrize("ring", ["loop", "thread"])
def test_plain_requests_start_without_a_python_frame_of_the_adapter(serve_asgi, ring):
    """With the ring on the loop's thread, the engine calls the ASGIStarter itself: a
    plain request runs no Python function of asgi.py (its task is made and ended in C);
    with ring threads, only the hand-over to the loop (__call__, _drain) is Python."""
    server = serve_asgi(_app, lifespan="off", ring=ring)
    loop = server.handler.loop
    calls = collections.Counter()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == asgi.__file__:
            calls[frame.f_code.co_name] += 1

    def on_loop(fn, *args):
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (fn(*args), done.set()))
        assert done.wait(10)

    c = RawClient(server.port)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # the first one outside the count
        assert c.read_response()[0] == 200
        on_loop(sys.setprofile, profile)
        try:
            for _ in range(20):
                c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
                assert c.read_response()[0] == 200
        finally:
            on_loop(sys.setprofile, None)
    finally:
        c.close()
    for name in ("_start", "_sweep", "_finished", "_ended", "scope", "handle"):
        assert calls[name] == 0, (name, calls)
    if ring == "loop":
        assert sum(calls.values()) == calls["_step"] + calls["_wake_step"], calls
    else:
        assert calls["_drain"] >= 1, calls


def test_the_starter_lets_its_handler_go():
    """Handler and starter refer to each other: the garbage collector frees both."""
    server = asgi.ASGIServer(_app, port=0, lifespan="off").start()
    assert request(server, "POST", "/", body=b"x")[2] == b"hi x"
    server.stop()
    assert isinstance(server.handler._dispatch, asgi._Starter)
    gone = weakref.ref(server.handler)
    del server
    gc.collect()
    assert gone() is None
