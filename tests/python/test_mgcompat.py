"""The C fast path of the pymongoose API (binding/mgcompat.c): MgHttpMessage,
MgConnection.reply and MgDispatcher, over real sockets.

Each answer is checked against what pymongoose gives for the same call (its
HttpMessage over Mongoose's mg_http_* functions, its reply() over mg_http_reply):
the query_var and header_var cases against a model of Mongoose's rules written
here, the reply bytes byte for byte."""

import gc
import logging
import socket
import sys
import threading
import time

import pytest

from conftest import RawClient, wait_until
from pymongoose_uring import _native

_pmu = _native._pmu
MG_EV_HTTP_MSG = 11


class Conn(_pmu.MgConnection):
    """As compat subclasses it: its own slots beside the C ones."""

    __slots__ = ("extra", "__weakref__")


class FakeTransport:
    """Stands in for the _pmu.Connection a reply without a request is sent on."""

    def __init__(self):
        self.sent = []

    def send(self, data):
        self.sent.append(bytes(data))
        return False


@pytest.fixture
def mg(serve):
    """mg(handler, **kw) -> (server, state): a Server whose handler is an
    MgDispatcher; every request gets a fresh Conn (make_conn) whose _conn is
    state["transport"]."""

    def start(handler=None, resolve=None, hdrs=False, **options):
        state = {"transport": FakeTransport(), "conns": [], "resolved": 0}

        def make_conn(request):
            conn = Conn()
            conn._conn = state["transport"]
            state["conns"].append(conn)
            return conn

        def default_resolve(conn):
            state["resolved"] += 1
            return None

        dispatcher = _pmu.MgDispatcher(resolve or default_resolve, make_conn, handler)
        dispatcher.http_hdrs = hdrs  # (MG_EV_HTTP_HDRS has its own test)
        options.setdefault("threads", 1)
        state["dispatcher"] = dispatcher
        return serve(dispatcher, **options), state

    return start


def exchange(server, raw, count=1):
    """Send raw bytes on one connection, read `count` answers."""
    client = RawClient(server.port)
    try:
        client.send(raw)
        return [client.read_response() for _ in range(count)]
    finally:
        client.close()


def get(server, target="/", headers=(), method="GET", body=b"", version="1.1"):
    head = "".join("%s: %s\r\n" % h for h in headers)
    if body:
        head += "Content-Length: %d\r\n" % len(body)
    raw = ("%s %s HTTP/%s\r\nHost: t\r\n%s\r\n" % (method, target, version, head)).encode("latin-1")
    return exchange(server, raw + body)[0]


# ---- MgHttpMessage ----


def test_message_fields(mg):
    seen = {}

    def handler(conn, ev, msg):
        seen.update(
            ev=ev,
            method=msg.method,
            uri=msg.uri,
            query=msg.query,
            proto=msg.proto,
            body=msg.body_bytes,
            text=msg.body_text,
            host=msg.header("host"),
            host_kw=msg.header(name="HOST"),
            missing=msg.header("X-Missing"),
            missing_default=msg.header("X-Missing", "d"),
            headers=msg.headers(),
            status=msg.status(),
            truth=bool(msg),
            request=msg.request,
            conn_id=msg.request.conn_id,
            type=type(msg),
        )
        conn.reply(200, b"ok")

    server, _ = mg(handler)
    status, _, body = get(server, "/p%41th/x?a=1&b=2", headers=(("X-Two", "1"), ("x-two", "2")))
    assert (status, body) == (200, b"ok")
    assert seen["ev"] == MG_EV_HTTP_MSG and seen["type"] is _pmu.MgHttpMessage
    assert seen["method"] == "GET"
    assert seen["uri"] == "/p%41th/x"  # as sent, not decoded (Mongoose's hm->uri)
    assert seen["query"] == "a=1&b=2"
    assert seen["proto"] == "HTTP/1.1"
    assert seen["body"] == b"" and seen["text"] == ""
    assert seen["host"] == "t" and seen["host_kw"] == "t"
    assert seen["missing"] is None and seen["missing_default"] == "d"
    assert seen["headers"] == [("Host", "t"), ("X-Two", "1"), ("x-two", "2")]
    assert seen["status"] == 0 and seen["truth"] is True  # mg_http_status: atoi(uri)
    assert isinstance(seen["request"], _pmu.Request)


def test_message_empty_query_http10_and_odd_body(mg):
    seen = []

    def handler(conn, ev, msg):
        seen.append((msg.query, msg.proto, msg.body_bytes, msg.body_text, msg.uri))
        conn.reply(200)

    server, _ = mg(handler)
    body = b"a\x00b\xff\xfe\xc3\xa9"
    get(server, "/x", version="1.0", method="POST", body=body)
    get(server, "/x?", method="POST", body=b"")
    assert seen[0] == ("", "HTTP/1.0", body, body.decode("utf-8", "surrogateescape"), "/x")
    assert seen[1] == ("", "HTTP/1.1", b"", "", "/x")


def test_header_values_are_utf8_text(mg):
    seen = {}

    def handler(conn, ev, msg):
        seen["v"] = msg.header("X-Name")
        seen["bad"] = msg.header("X-Bad")
        seen["pairs"] = msg.headers()[1:]
        conn.reply(200)

    server, _ = mg(handler)
    raw = b"GET / HTTP/1.1\r\nHost: t\r\nX-Name: caf\xc3\xa9\r\nX-Bad: \xff\r\n\r\n"
    assert exchange(server, raw)[0][0] == 200
    assert seen["v"] == "café"  # pymongoose decodes UTF-8 (surrogateescape), not latin-1
    assert seen["bad"] == b"\xff".decode("utf-8", "surrogateescape")
    assert seen["pairs"] == [("X-Name", "café"), ("X-Bad", seen["bad"])]


def mongoose_get_var(query: bytes, name: str):
    """What pymongoose's query_var answers: Mongoose's mg_http_get_var into its
    256-byte buffer, then None for any result <= 0."""
    if not query:
        return None
    key = name.encode("utf-8").split(b"\0")[0]
    for entry in query.split(b"&"):
        if not entry:
            continue
        k, sep, v = entry.partition(b"=")
        if k.lower() != key.lower():
            continue
        out = bytearray()
        i = 0
        while i < len(v):
            if len(out) + 1 >= 256:
                return None
            c = v[i : i + 1]
            if c == b"%":
                hexa = v[i + 1 : i + 3]
                if i + 2 >= len(v) or not all(ch in b"0123456789abcdefABCDEF" for ch in hexa):
                    return None
                out.append(int(hexa, 16))
                i += 3
                continue
            out += b" " if c == b"+" else c
            i += 1
        return out.decode("utf-8", "surrogateescape") if out else None
    return None


QUERY_CASES = [
    (b"", "a"),
    (b"a=1", "b"),
    (b"a=1", "a"),
    (b"a=", "a"),
    (b"a", "a"),
    (b"a=1&a=2", "a"),
    (b"A=1", "a"),
    (b"abc=1", "ABC"),
    (b"a=b+c", "a"),
    (b"a=%41%42", "a"),
    (b"a=%4", "a"),
    (b"a=%4g", "a"),
    (b"a=x%zz", "a"),
    (b"a=%00x", "a"),
    (b"a=%E2%82%AC", "a"),
    (b"a=%FF", "a"),
    (b"&&a=1&", "a"),
    (b"xa=1&a=2", "a"),
    (b"a=1=2", "a"),
    (b"a=" + b"x" * 255, "a"),
    (b"a=" + b"x" * 256, "a"),
    (b"a=" + b"%41" * 255, "a"),
    (b"a=" + b"%41" * 256, "a"),
    (b"b=2&a=%2B", "a"),
    (b"%C3%A9=1", "%C3%A9"),
    (b"a=1", ""),
    (b"=1", ""),
]


def test_query_var_answers_as_mongoose(mg):
    answers = {}

    def handler(conn, ev, msg):
        q = msg.query
        answers[q] = [msg.query_var(name) for _, name in QUERY_CASES]
        conn.reply(200)

    server, _ = mg(handler)
    for query, _ in QUERY_CASES:
        get(server, "/?" + query.decode("latin-1") if query else "/")
    for i, (query, name) in enumerate(QUERY_CASES):
        got = answers[query.decode("utf-8", "surrogateescape")][i]
        assert got == mongoose_get_var(query, name), (query, name, got)
    # the cases mean what they say
    assert mongoose_get_var(b"a=", "a") is None and mongoose_get_var(b"a=1&a=2", "a") == "1"
    assert mongoose_get_var(b"a=b+c", "a") == "b c" and mongoose_get_var(b"a=%4", "a") is None
    assert mongoose_get_var(b"a=" + b"x" * 255, "a") == "x" * 255
    assert mongoose_get_var(b"a=" + b"x" * 256, "a") is None


def test_query_var_needs_a_str(mg):
    errors = []

    def handler(conn, ev, msg):
        for bad in (b"a", None, 1):
            try:
                msg.query_var(bad)
            except TypeError:
                errors.append(bad)
        conn.reply(200)

    server, _ = mg(handler)
    get(server, "/?a=1")
    assert errors == [b"a", None, 1]


HEADER_VAR_CASES = [
    ("text/html; charset=utf-8", "charset", "utf-8"),
    ('text/html; charset="utf-8"', "charset", "utf-8"),
    ('a; b="x y;z"', "b", "x y;z"),
    ("text/html; Charset=utf-8", "charset", None),  # matched case-sensitively
    ("text/html; xcharset=ab", "charset", "ab"),  # anywhere in the value, as Mongoose
    ("text/html; xcharset=a", "charset", None),  # needs 2 bytes after the '='
    ("text/html; charset=", "charset", None),
    ("a=1,b=2", "a", "1"),
    ("a=1 b=22", "b", "22"),
    ("a=1 b=2", "b", None),  # too near the end for Mongoose's loop
    ("token=abc; other=1", "other", None),  # needs 2 bytes after the '='
    ("token=abc; other=12", "other", "12"),
    ("x", "", None),
]


def test_header_var_answers_as_mongoose(mg):
    got = []

    def handler(conn, ev, msg):
        got.append(msg.header_var("X-H", msg.query))
        got.append(msg.header_var("X-Missing", "a"))
        conn.reply(200)

    server, _ = mg(handler)
    for value, var, want in HEADER_VAR_CASES:
        got.clear()
        get(server, "/?" + var, headers=(("X-H", value),))
        assert got == [want, None], (value, var)


def test_message_constructor_and_request(mg):
    made = {}

    def handler(conn, ev, msg):
        other = _pmu.MgHttpMessage(msg.request)
        made["same"] = (other.uri, other.method, other.request is msg.request)
        conn.reply(200)

    with pytest.raises(TypeError):
        _pmu.MgHttpMessage(b"GET /")
    server, _ = mg(handler)
    get(server, "/c")
    assert made["same"] == ("/c", "GET", True)


def test_message_readable_all_through_the_handler_after_reply(mg):
    seen = {}

    def handler(conn, ev, msg):
        conn.reply(200, b"first")
        # As in pymongoose, the message stays valid until the handler returns,
        # also for what was not read before the reply.
        seen.update(uri=msg.uri, query=msg.query, headers=msg.headers(), body=msg.body_bytes)
        seen["request_after"] = conn._request

    server, _ = mg(handler)
    status, _, body = get(server, "/after?q=1", method="POST", body=b"xyz")
    assert (status, body) == (200, b"first")
    assert seen == {
        "uri": "/after",
        "query": "q=1",
        "headers": [("Host", "t"), ("Content-Length", "3")],
        "body": b"xyz",
        "request_after": None,
    }


def test_message_kept_after_the_handler_stays_readable(mg):
    kept = []

    def handler(conn, ev, msg):
        kept.append(msg)  # read nothing now
        conn.reply(200, b"k")

    server, _ = mg(handler)
    get(server, "/kept?z=9", headers=(("X-K", "v"),))
    msg = kept[0]
    assert (msg.uri, msg.query, msg.header("X-K"), msg.query_var("z")) == ("/kept", "z=9", "v", "9")


def test_message_readable_after_the_request_was_answered_directly(mg):
    out = {}

    def handler(conn, ev, msg):
        msg.request.reply(b"direct")  # answered outside pymongoose's API (copies the request)
        out.update(uri=msg.uri, query=msg.query, host=msg.header("Host"))
        conn.reply(200, b"second")  # nothing left to answer: raw, as Mongoose

    server, state = mg(handler)
    assert get(server, "/e?q=1")[2] == b"direct"
    assert out == {"uri": "/e", "query": "q=1", "host": "t"}
    assert state["transport"].sent[0].endswith(b"\r\n\r\nsecond")


# ---- MgConnection.reply ----


@pytest.mark.parametrize(
    "body, sent",
    [
        ("héllo", "héllo".encode()),
        (b"a\x00b\x00c", b"a\x00b\x00c"),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"memview")[3:], b"view"),
        (None, b""),
        ([65, 66], b"AB"),
        (b"x" * 100_000, b"x" * 100_000),
        ("é" * 40_000, "é".encode() * 40_000),
    ],
)
def test_reply_bodies(mg, body, sent):
    def handler(conn, ev, msg):
        conn.reply(201, body)

    server, _ = mg(handler)
    status, headers, got = get(server, "/")
    assert status == 201 and got == sent
    assert dict(headers)["Content-Type"] == "text/plain"
    assert int(dict(headers)["Content-Length"]) == len(sent)


def test_reply_default_body_and_headers(mg):
    calls = iter(
        [
            lambda c: c.reply(204),
            lambda c: c.reply(200, headers={}),
            lambda c: c.reply(status_code=202, body="k", headers={"X-N": 1, "X-F": 1.5}),
            lambda c: c.reply(200, b"j", {"Content-Type": "application/json"}),
        ]
    )

    def handler(conn, ev, msg):
        next(calls)(conn)

    server, _ = mg(handler)
    status, headers, body = get(server, "/")
    assert (status, body) == (204, b"") and dict(headers)["Content-Type"] == "text/plain"
    status, headers, body = get(server, "/")
    assert status == 200 and "Content-Type" not in dict(headers)  # a dict: those headers only
    status, headers, body = get(server, "/")
    assert (status, body) == (202, b"k")
    assert dict(headers)["X-N"] == "1" and dict(headers)["X-F"] == "1.5"  # as f"{v}"
    assert "Content-Type" not in dict(headers)
    status, headers, body = get(server, "/")
    assert [v for k, v in headers if k == "Content-Type"] == ["application/json"]


def test_reply_errors_are_raised_in_the_handler(mg):
    raised = []

    def handler(conn, ev, msg):
        for args in ((200, b"", {"X-Bad": "a\r\nInjected: 1"}), (99,), ("200",), (200, b"", 5)):
            try:
                conn.reply(*args)
            except (ValueError, TypeError) as e:
                raised.append(type(e))
        conn.reply(200, b"after")

    server, _ = mg(handler)
    status, headers, body = get(server, "/")
    assert (status, body) == (200, b"after")
    assert "Injected" not in dict(headers)
    assert raised == [ValueError, ValueError, TypeError, TypeError]


def test_second_reply_goes_out_raw_as_mongoose_formats_it(mg):
    def handler(conn, ev, msg):
        conn.reply(200, b"one")
        conn.reply(404, "two\x00", {"X-A": "b"})
        conn.reply(201)

    server, state = mg(handler)
    status, _, body = get(server, "/")
    assert (status, body) == (200, b"one")
    assert state["transport"].sent == [
        b"HTTP/1.1 404 Not Found\r\nX-A: b\r\nContent-Length: 4\r\n\r\ntwo\x00",
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
    ]


def test_reply_with_nothing_to_answer_nor_send_on():
    conn = Conn()
    with pytest.raises(RuntimeError):
        conn.reply(200, b"x")
    assert (conn.userdata, conn._request, conn._conn, conn._handler, conn._close_after) == (
        None,
        None,
        None,
        None,
        False,
    )
    conn.extra = 1
    conn.userdata = {"k": 1}
    assert conn.userdata == {"k": 1} and conn.extra == 1
    with pytest.raises(AttributeError):
        conn.undeclared = 1  # the subclass has __slots__


def test_close_after_adds_connection_close_and_closes(mg):
    def handler(conn, ev, msg):
        conn._close_after = msg.uri == "/last"
        conn.reply(200, msg.uri, None if msg.uri == "/last" else {"X-U": "1"})

    server, _ = mg(handler)
    client = RawClient(server.port)
    try:
        client.send(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /last HTTP/1.1\r\nHost: t\r\n\r\n")
        s1, h1, b1 = client.read_response()
        s2, h2, b2 = client.read_response()
        assert b1 == b"/one" and ("Connection", "close") not in h1
        assert b2 == b"/last" and ("Connection", "close") in h2
        assert client.closed_by_server()
    finally:
        client.close()


def test_reply_later_from_another_thread(mg):
    kept = []

    def handler(conn, ev, msg):
        kept.append((conn, msg))  # answered later, as pymongoose allows

    server, _ = mg(handler)
    result = {}

    def client():
        result["answer"] = get(server, "/later?v=1")

    t = threading.Thread(target=client)
    t.start()
    wait_until(lambda: kept, what="the handler ran")
    conn, msg = kept[0]
    time.sleep(0.05)
    conn.reply(200, "late " + msg.query_var("v"))
    t.join(10)
    assert result["answer"][0] == 200 and result["answer"][2] == b"late 1"
    assert msg.uri == "/later"  # copied before the answer: the message outlives it
    assert conn._request is None


def test_pipelined_requests_answered_in_order(mg):
    def handler(conn, ev, msg):
        conn.reply(200, msg.uri)

    server, _ = mg(handler)
    raw = b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(16))
    answers = exchange(server, raw, 16)
    assert [body for _, _, body in answers] == [b"/%d" % i for i in range(16)]


# ---- MgDispatcher ----


def test_handler_order_conn_then_dispatcher_then_resolve(mg):
    calls = []

    def default(conn, ev, msg):
        calls.append("default")
        conn.reply(200, b"default")

    def own(conn, ev, msg):
        calls.append("own")
        conn.reply(200, b"own")

    def resolve(conn):
        calls.append("resolve")
        return own if len(calls) >= 3 else None

    server, state = mg(default, resolve=resolve)
    assert get(server, "/")[2] == b"default"
    state["dispatcher"].handler = None
    assert get(server, "/")[:1] == (404,)  # resolve gave None
    assert get(server, "/")[2] == b"own"  # resolve gave own
    assert calls == ["default", "resolve", "resolve", "own"]
    assert state["dispatcher"].resolve is resolve


def test_conn_handler_wins(serve):
    conn = Conn()
    conn._handler = lambda c, ev, msg: c.reply(200, b"mine")
    seen = []

    def resolve(c):
        seen.append(c)
        return None

    dispatcher = _pmu.MgDispatcher(resolve, lambda r: conn, lambda *a: 1 / 0)
    dispatcher.http_hdrs = False
    server = serve(dispatcher, threads=1)
    assert get(server, "/")[2] == b"mine" and seen == []


def test_exceptions_are_logged_and_answered_500(mg, caplog):
    def handler(conn, ev, msg):
        if msg.uri == "/after":
            conn.reply(200, b"sent")
        raise KeyError("boom " + msg.uri)

    server, state = mg(handler)
    with caplog.at_level(logging.ERROR, logger="pymongoose_uring"):
        assert get(server, "/before")[0] == 500
        assert get(server, "/after")[:3:2] == (200, b"sent")  # the reply stands
    assert [c._request for c in state["conns"]] == [None, None]  # nothing left to answer
    records = [r for r in caplog.records if "pymongoose handler raised" in r.getMessage()]
    assert len(records) == 2
    assert "/before" in records[0].getMessage() and records[0].exc_info[0] is KeyError
    assert "boom /after" in str(records[1].exc_info[1])


def test_make_conn_errors_are_500(serve, caplog):
    def resolve(conn):
        return None

    bad = serve(_pmu.MgDispatcher(resolve, lambda r: object()), threads=1)
    with caplog.at_level(logging.ERROR, logger="pymongoose_uring"):
        assert get(bad, "/")[0] == 500
    assert any(r.exc_info and r.exc_info[0] is TypeError for r in caplog.records)
    with pytest.raises(TypeError):
        _pmu.MgDispatcher(1)
    with pytest.raises(TypeError):
        _pmu.MgDispatcher(resolve, 5)


def test_nothing_leaks(mg):
    body = b"leak-check" * 10
    headers = {"Content-Type": "text/plain", "X-A": "1"}
    kept_conns = []

    def handler(conn, ev, msg):
        msg.uri, msg.headers(), msg.query_var("a")
        if msg.query == "raise":
            raise ValueError("x")
        conn.reply(200, body, headers)
        if msg.query == "twice":
            conn.reply(200, body, headers)

    server, state = mg(handler)
    # (no log records: the test logger would keep each traceback, and with it the
    # handler's frame, its message, its connection and its request)
    logging.disable(logging.CRITICAL)
    for query in ("", "a=1", "raise", "twice"):
        get(server, "/?" + query)  # warm up caches
    gc.collect()
    base_body, base_headers = sys.getrefcount(body), sys.getrefcount(headers)
    alive = _pmu.requests_alive()
    client = RawClient(server.port)
    try:
        for _ in range(50):
            for query in ("", "a=1", "raise", "twice"):
                client.send(("GET /?%s HTTP/1.1\r\nHost: t\r\n\r\n" % query).encode())
                client.read_response()
    finally:
        logging.disable(logging.NOTSET)
        client.close()
    state["conns"].clear()
    kept_conns.clear()
    gc.collect()
    wait_until(lambda: _pmu.requests_alive() <= alive, what="Requests freed")
    assert sys.getrefcount(body) == base_body
    assert sys.getrefcount(headers) == base_headers
    assert not [o for o in gc.get_objects() if type(o) is _pmu.MgHttpMessage]


def test_connection_object_is_collected(mg):
    import weakref

    refs = []

    def handler(conn, ev, msg):
        refs.append(weakref.ref(conn))
        conn.userdata = conn  # a cycle through the C slot
        conn.reply(200)

    server, state = mg(handler)
    get(server, "/")
    state["conns"].clear()
    gc.collect()
    assert refs[0]() is None


def test_socket_level_sanity(mg):
    """The answer is one well-formed HTTP/1.1 response that keeps the connection."""

    def handler(conn, ev, msg):
        conn.reply(200, b"k")

    server, _ = mg(handler)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n\r\nk"):
                data += s.recv(4096)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        s.close()


def test_dispatcher_finds_the_connection_object_of_the_connection(serve):
    """With connection events, the compat Connection is request.connection.user, made at
    OPEN: one object for every request of a connection, make_conn never called."""
    made = []

    def on_conn(handle, event, data):
        if event == _pmu.CONN_OPEN:
            conn = Conn()
            conn._conn = handle
            handle.user = conn
            made.append(conn)

    def handler(conn, ev, msg):
        conn.reply(200, "%d %s" % (made.index(conn), msg.uri))

    def make_conn(request):
        raise AssertionError("make_conn called")

    dispatcher = _pmu.MgDispatcher(lambda c: None, make_conn, handler)
    dispatcher.http_hdrs = False
    server = serve(dispatcher, threads=1, connection_handler=on_conn)
    raw = b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(3))
    assert [b for _, _, b in exchange(server, raw, 3)] == [b"0 /0", b"0 /1", b"0 /2"]
    assert [b for _, _, b in exchange(server, raw, 3)] == [b"1 /0", b"1 /1", b"1 /2"]
    assert len(made) == 2


def test_second_reply_raw_on_the_real_connection(serve):
    def on_conn(handle, event, data):
        if event == _pmu.CONN_OPEN:
            conn = Conn()
            conn._conn = handle
            handle.user = conn

    def handler(conn, ev, msg):
        if ev == MG_EV_HTTP_MSG:
            conn.reply(200, b"one")
            conn.reply(200, b"two")  # raw bytes after the answer, as Mongoose writes them

    server = serve(
        _pmu.MgDispatcher(lambda c: None, None, handler), threads=1, connection_handler=on_conn
    )
    client = RawClient(server.port)
    try:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response()[2] == b"one"
        status, headers, body = client.read_response()
        assert (status, body) == (200, b"two")
        assert headers == [("Content-Type", "text/plain"), ("Content-Length", "3")]
    finally:
        client.close()


def test_each_request_is_http_hdrs_then_http_msg(mg, caplog):
    seen = []

    def other(conn, ev, msg):
        seen.append(("other", ev, msg.uri))
        conn.reply(200, b"other")

    def handler(conn, ev, msg):
        seen.append((ev, id(msg), msg.uri, msg.status()))
        if msg.uri == "/raise":
            raise ValueError("in HTTP_HDRS")
        if msg.uri == "/switch":
            conn._handler = other  # pymongoose's set_handler: the next event goes there
            return
        if ev == MG_EV_HTTP_MSG:
            conn.reply(200, b"ok")

    server, _ = mg(handler, hdrs=True)
    assert get(server, "/a")[2] == b"ok"
    assert [e for e, *_ in seen] == [10, 11] and seen[0][1] == seen[1][1]  # one message
    assert seen[0][2:] == ("/a", 0)
    seen.clear()
    with caplog.at_level(logging.ERROR, logger="pymongoose_uring"):
        assert get(server, "/raise")[0] == 500
    assert [e for e, *_ in seen] == [10]  # no MG_EV_HTTP_MSG after a raise
    seen.clear()
    assert get(server, "/switch")[2] == b"other"
    assert seen[1] == ("other", 11, "/switch")


def test_an_empty_message_answers_as_pymongoose():
    """pymongoose's HttpMessage over no message: '' and None, false."""
    for msg in (_pmu.MgHttpMessage(), _pmu.MgHttpMessage.__new__(_pmu.MgHttpMessage)):
        assert not msg and msg.request is None
        assert (msg.method, msg.uri, msg.query, msg.proto) == ("", "", "", "")
        assert (msg.body_bytes, msg.body_text, msg.headers()) == (b"", "", [])
        assert msg.header("Host") is None and msg.header("Host", "d") == "d"
        assert msg.query_var("a") is None and msg.header_var("a", "b") is None
        assert msg.status() is None


def test_reply_leaves_chunked_answers_and_raw_replies_to_the_subclass(serve):
    calls = []

    class Slow(_pmu.MgConnection):
        __slots__ = ()

        def _reply_slow(self, status_code, body, headers):
            calls.append((status_code, body, headers, self._request is not None))
            request = self._request
            if request is not None:
                self._request = None
                request.reply(b"slow:" + body, status_code)

    def handler(conn, ev, msg):
        if msg.uri == "/chunked":
            conn.reply(200, b"c", {"Transfer-Encoding": "Chunked"})
        else:
            conn.reply(200, b"fast", {"X": "1"})
            conn.reply(201)

    dispatcher = _pmu.MgDispatcher(lambda conn: None, lambda request: Slow(), handler)
    dispatcher.http_hdrs = False
    server = serve(dispatcher, threads=1)
    assert get(server, "/chunked")[2] == b"slow:c"
    assert get(server, "/other")[2] == b"fast"
    assert calls == [(200, b"c", {"Transfer-Encoding": "Chunked"}, True), (201, b"", None, False)]


def test_no_connection_object_and_no_make_conn_is_404(serve, caplog):
    """As compat answers a request whose connection has no compat Connection (its
    connection closed, its object let go): 404, nothing logged."""
    dispatcher = _pmu.MgDispatcher(lambda conn: None, None, lambda *a: 1 / 0)
    server = serve(dispatcher, threads=1)  # no connection_handler: no Connection objects
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, _, body = get(server, "/x")
    assert (status, body) == (404, b"Not Found")
    assert not caplog.records
