"""Every form a handler's response may take, checked on the wire."""

import json
import logging

import pytest

from conftest import RawClient, request
from pymongoose_uring import Response

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
OCTET = "application/octet-stream"

CASES = [
    # returned value, status, content type (None: absent), body
    (b"raw\x00bytes", 200, OCTET, b"raw\x00bytes"),
    (bytearray(b"ba"), 200, OCTET, b"ba"),
    (memoryview(b"mv"), 200, OCTET, b"mv"),
    ("héllo", 200, TEXT, "héllo".encode()),
    ({"message": "Hello, World!"}, 200, JSON, b'{"message":"Hello, World!"}'),
    ([1, "two", None, 3.5], 200, JSON, b'[1,"two",null,3.5]'),
    ({"é": "ü"}, 200, JSON, b'{"\\u00e9":"\\u00fc"}'),
    (204, 204, None, b""),
    (("created", 201), 201, TEXT, b"created"),
    (({"a": 1}, 202, {"X-A": "1"}), 202, JSON, b'{"a":1}'),
    ((418, [("Content-Type", "text/x-teapot")], b"short"), 418, "text/x-teapot", b"short"),
    ((299, b"odd"), 299, OCTET, b"odd"),
    (Response(b"r", 200), 200, OCTET, b"r"),
    (Response("txt", 404), 404, TEXT, b"txt"),
    (Response(b"x", content_type="image/png"), 200, "image/png", b"x"),
    (Response(b"none", content_type=None), 200, None, b"none"),
    (Response(), 200, OCTET, b""),
    (Response.json({"k": [1]}, 201), 201, JSON, b'{"k":[1]}'),
    (Response.text("plain", 200), 200, TEXT, b"plain"),
    (Response.html("<b>x</b>"), 200, "text/html; charset=utf-8", b"<b>x</b>"),
]


@pytest.mark.parametrize(
    "value,status,ctype,body",
    CASES,
    ids=[type(c[0]).__name__ + str(i) for i, c in enumerate(CASES)],
)
def test_response_forms(serve, value, status, ctype, body):
    server = serve(lambda req: value)
    got_status, headers, got_body, _ = request(server)
    assert got_status == status
    assert headers.get("content-type") == ctype
    assert got_body == body
    assert status == 204 or int(headers["content-length"]) == len(body)


def test_reason_phrases_and_engine_headers(serve):
    server = serve(lambda req: (b"", int(req.path[1:])))
    for code, reason in [
        (200, "OK"),
        (201, "Created"),
        (404, "Not Found"),
        (500, "Internal Server Error"),
    ]:
        _, _, _, resp = request(server, path="/%d" % code)
        assert resp.status == code and resp.reason == reason
        assert resp.getheader("Date") and resp.getheader("Server") == "pymongoose_uring"


def test_headers_dict_list_and_multiple_values(serve):
    def handler(req):
        if req.path == "/dict":
            return Response(
                b"",
                headers={"X-One": "1", "Set-Cookie": ["a=1", "b=2"], "X-Int": 7, "X-Bytes": b"raw"},
            )
        return Response(b"", headers=[("X-Dup", "1"), ("X-Dup", "2")])

    server = serve(handler)
    _, _, _, resp = request(server, path="/dict")
    assert resp.getheader("X-One") == "1" and resp.getheader("X-Int") == "7"
    assert resp.getheader("X-Bytes") == "raw"
    assert resp.msg.get_all("Set-Cookie") == ["a=1", "b=2"]
    _, _, _, resp = request(server, path="/list")
    assert resp.msg.get_all("X-Dup") == ["1", "2"]


def test_headers_object_keeps_every_value(serve):
    from pymongoose_uring import Headers

    server = serve(lambda req: Response(b"", headers=Headers([("X-D", "1"), ("x-d", "2")])))
    _, _, _, resp = request(server)
    assert resp.msg.get_all("X-D") == ["1", "2"]


def test_handler_content_type_and_server_headers_win(serve):
    server = serve(
        lambda req: Response("x", headers={"content-type": "text/csv", "Server": "mine"})
    )
    _, headers, _, resp = request(server)
    assert resp.msg.get_all("Content-Type") == ["text/csv"]
    assert resp.msg.get_all("Server") == ["mine"]


def test_redirect(serve):
    server = serve(lambda req: Response.redirect("/elsewhere", headers={"X-A": "1"}))
    status, headers, body, _ = request(server)
    assert status == 307 and headers["location"] == "/elsewhere"
    assert headers["x-a"] == "1" and body == b""
    assert "content-type" not in headers


def test_large_body(serve):
    big = bytes(range(256)) * 4096  # 1 MiB
    server = serve(lambda req: big)
    status, _, body, _ = request(server)
    assert status == 200 and body == big


def test_head_sends_no_body(serve):
    server = serve(lambda req: b"0123456789")
    c = RawClient(server.port)
    c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = c.read_response(head=True)
    assert status == 200 and dict(headers)["Content-Length"] == "10" and body == b""
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection is still in sync
    assert c.read_response()[2] == b"0123456789"
    c.close()


@pytest.mark.parametrize(
    "bad",
    [
        object(),
        True,
        (b"x",),
        (b"x", 1000),
        (b"x", 200, {"Bad Name": "v"}),
        (b"x", 200, {"X-Inject": "a\r\nSet-Cookie: evil"}),
        (b"x", 200, {"X-Bad": 1.5}),
        (Response(b"x"), 200),
        {"not": {1, 2}},
    ],
)
def test_invalid_results_answer_500_and_log(serve, caplog, bad):
    server = serve(lambda req: bad)
    with caplog.at_level(logging.ERROR, logger="pymongoose_uring"):
        status, headers, body, _ = request(server)
    assert status == 500 and body == b"Internal Server Error"
    assert "evil" not in json.dumps(headers)
    assert any("could not send" in r.getMessage() for r in caplog.records)


def test_response_object_attributes():
    r = Response("héllo", 201, {"A": "b"})
    assert r.status == 201 and r.body == "héllo".encode() and r.headers == {"A": "b"}
    assert r.content_type == "text/plain; charset=utf-8"
    r.status = 404
    r.body = b"new"
    r.content_type = None
    assert (r.status, r.body, r.content_type) == (404, b"new", None)
    with pytest.raises(ValueError):
        r.status = 99
    with pytest.raises(ValueError):
        Response(b"", 1000)
    with pytest.raises(TypeError):
        Response({"a": 1})
    assert json.loads(Response.json({"a": [1, 2]}).body) == {"a": [1, 2]}
    assert "404" in repr(r)

    class Mine(Response):
        pass

    m = Mine.text("sub")
    assert type(m) is Mine and m.body == b"sub"


def test_subclass_without_super_init_is_sendable(serve):
    class Bare(Response):
        def __init__(self):
            pass

    server = serve(lambda req: Bare())
    status, _, body, _ = request(server)
    assert (status, body) == (200, b"")


def test_large_json_body(serve):
    data = {"text": "x" * 5000, "numbers": list(range(1000)), "nested": [{"é": [1.5, None]}] * 50}
    server = serve(lambda req: data)
    status, headers, body, _ = request(server)
    assert status == 200 and headers["content-type"] == JSON
    assert body == json.dumps(data, separators=(",", ":")).encode()


def test_json_matches_the_json_module():
    """The fast C encoder writes exactly what json.dumps writes; shapes it does
    not handle fall back to json itself."""
    import random

    rnd = random.Random(7)

    def text():
        cps = [
            rnd.choice(
                [rnd.randint(0, 0x7F), rnd.randint(0x80, 0xFFFF), rnd.randint(0x10000, 0x10FFFF)]
            )
            for _ in range(rnd.randint(0, 12))
        ]
        return "".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF)

    def value(depth=0):
        r = rnd.random()
        if depth > 4 or r < 0.45:
            return rnd.choice(
                [
                    text(),
                    rnd.randint(-(2**70), 2**70),
                    rnd.randint(-9, 9),
                    rnd.random() * 10 ** rnd.randint(-12, 12),
                    True,
                    False,
                    None,
                ]
            )
        if r < 0.75:
            return {text(): value(depth + 1) for _ in range(rnd.randint(0, 5))}
        return [value(depth + 1) for _ in range(rnd.randint(0, 5))]

    for _ in range(2000):
        v = value()
        assert Response.json(v).body == json.dumps(v, separators=(",", ":")).encode()

    class Sub(dict):
        pass

    for v in [float("nan"), {1: "int key"}, Sub(a=1), (1, 2), 2**80, {"a": "\ud800"}]:
        assert Response.json(v).body == json.dumps(v, separators=(",", ":")).encode()
    with pytest.raises(TypeError):
        Response.json({"a": {1, 2}})


def test_interim_status_is_refused_by_the_engine(serve, caplog):
    server = serve(lambda req: (b"", 150))
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        assert request(server)[0] == 500
    assert "status 150" in caplog.text


@pytest.mark.parametrize("status", [100, 101, 103, 199])
def test_one_status_rule_1xx_refused_where_given(status):
    """The engine's rule (pmu_status_valid: 200..999) applies at Response(...):
    a 1xx is refused with a clear ValueError, not accepted and turned into 500."""
    with pytest.raises(
        ValueError,
        match=r"status %d cannot be sent: a final status is "
        r"200\.\.999" % status,
    ):
        Response(b"", status)
    with pytest.raises(ValueError):
        Response.text("x", status)
    r = Response(b"", 200)
    with pytest.raises(ValueError):
        r.status = status
    assert r.status == 200
    for ok in (200, 299, 999):
        assert Response(b"", ok).status == ok


def test_streamed_1xx_refused_at_start(serve):
    errors = []

    def handler(req):
        try:
            req.start(101, [])
        except ValueError as e:
            errors.append(str(e))
        return "fallback"

    server = serve(handler)
    assert request(server)[0] == 200
    assert errors and "200..999" in errors[0]


def test_large_bodies_made_per_request_arrive_intact(serve):
    """Bodies of 16 KiB and more are sent without a copy: the engine holds the
    bytes (or str) object until they are on the wire."""
    import hashlib
    import os as _os
    from concurrent.futures import ThreadPoolExecutor

    def handler(req):
        if req.path == "/str":
            body = "é" * 100000
            return Response(body, headers={"X-Sum": hashlib.sha1(body.encode()).hexdigest()})
        body = _os.urandom(300000)
        return 200, {"X-Sum": hashlib.sha1(body).hexdigest()}, body

    server = serve(handler)

    def fetch(i):
        _, headers, body, _ = request(server, path="/str" if i % 3 == 0 else "/bytes")
        return hashlib.sha1(body).hexdigest() == headers["x-sum"] and len(body) in (200000, 300000)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fetch, range(60)))


def test_date_header_off_and_extra_headers(serve):
    server = serve(
        lambda req: "hi",
        date_header=False,
        extra_headers="X-Frame-Options: DENY\r\nX-A: 1",
        max_body_bytes=10,
    )
    status, headers, body, _ = request(server)
    assert (status, body) == (200, b"hi")
    assert "date" not in headers
    assert headers["x-frame-options"] == "DENY" and headers["x-a"] == "1"
    assert headers["server"] == "pymongoose_uring"
    # The engine's own answers carry them too.
    status, headers, _, _ = request(server, method="POST", body=b"x" * 100)
    assert status == 413 and headers["x-a"] == "1"


def test_a_malformed_extra_header_fails_the_start():
    import errno

    from pymongoose_uring import Server

    with pytest.raises(OSError) as e:
        Server(lambda req: "hi", port=0, extra_headers="no colon here").start()
    assert e.value.errno == errno.EINVAL and "extra_headers" in str(e.value)
