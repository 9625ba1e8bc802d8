"""Every request field a handler can read, over real sockets."""

import json
import os
import socket
import tempfile

import pytest

from conftest import RawClient, get_json, read_closed, request
from pymongoose_uring import Headers, QueryParams


def describe(req):
    return {
        "method": req.method,
        "path": req.path,
        "raw_path": req.raw_path,
        "target": req.target,
        "query_string": req.query_string,
        "query": {k: req.query.getall(k) for k in req.query},
        "http_version": req.http_version,
        "keep_alive": req.keep_alive,
        "client": list(req.client) if isinstance(req.client, tuple) else req.client,
        "server": list(req.server) if isinstance(req.server, tuple) else req.server,
        "body": req.body.hex(),
        "thread": req.thread,
        "conn_id": req.conn_id,
        "params": req.params,
    }


def test_method_path_and_query(serve):
    server = serve(describe)
    d = get_json(server, "/a%20b/%C3%A9t%C3%A9?x=1&x=2&empty=&plus=a+b&enc=%41%26")
    assert d["method"] == "GET"
    assert d["path"] == "/a b/été"
    assert d["raw_path"] == "/a%20b/%C3%A9t%C3%A9"
    assert d["target"] == "/a%20b/%C3%A9t%C3%A9?x=1&x=2&empty=&plus=a+b&enc=%41%26"
    assert d["query_string"] == "x=1&x=2&empty=&plus=a+b&enc=%41%26"
    assert d["query"] == {"x": ["1", "2"], "empty": [""], "plus": ["a b"], "enc": ["A&"]}
    assert d["http_version"] == "1.1"
    assert d["keep_alive"] is True
    assert d["params"] == {}


def test_no_query(serve):
    d = get_json(serve(describe), "/plain")
    assert d["query_string"] == "" and d["query"] == {} and d["target"] == "/plain"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_methods(serve, method):
    server = serve(lambda req: req.method)
    status, _, body, _ = request(server, method=method, body=b"" if method != "GET" else None)
    assert (status, body) == (200, method.encode())


def test_headers_case_insensitive_and_multi_valued(serve):
    seen = {}

    def handler(req):
        h = req.headers
        seen.update(
            first=h["x-multi"],
            all=h.getall("X-MULTI"),
            accept=req.header("ACCEPT"),
            missing=req.header("nope", "dflt"),
            contains="x-Multi" in h,
            names=list(h),
            pairs=h.multi_items(),
            get=h.get("nope"),
            type=type(h),
        )
        return b"ok"

    server = serve(handler)
    c = RawClient(server.port)
    c.send(
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Multi: a\r\nAccept: text/plain\r\n"
        b"x-multi: b\r\nX-Empty:\r\n\r\n"
    )
    assert c.read_response()[0] == 200
    c.close()
    assert seen["first"] == "a" and seen["all"] == ["a", "b"]
    assert seen["accept"] == "text/plain" and seen["missing"] == "dflt"
    assert seen["contains"] is True and seen["get"] is None
    assert seen["names"] == ["Host", "X-Multi", "Accept", "X-Empty"]
    assert ("x-multi", "b") in seen["pairs"] and ("X-Empty", "") in seen["pairs"]
    assert seen["type"] is Headers


def test_raw_headers_are_lowercased_bytes_in_order(serve):
    seen = {}

    def handler(req):
        seen["raw"] = req.raw_headers
        return b"ok"

    server = serve(handler)
    c = RawClient(server.port)
    c.send(
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Multi: a\r\nX-Obs-Text: \xff\r\n"
        b"x-multi: B \r\nX-Empty:\r\n\r\n"
    )
    assert c.read_response()[0] == 200
    c.close()
    assert seen["raw"] == [
        (b"host", b"t"),
        (b"x-multi", b"a"),
        (b"x-obs-text", b"\xff"),
        (b"x-multi", b"B"),
        (b"x-empty", b""),
    ]


def test_body_bytes_text_and_json(serve):
    got = {}

    def handler(req):
        got["body"] = req.body
        if req.header("content-type") == "application/json":
            got["json"] = req.json()
        else:
            got["text"] = req.text
        return b""

    server = serve(handler)
    raw = bytes(range(256)) * 10
    assert request(server, "POST", "/", body=raw)[0] == 200
    assert got["body"] == raw
    request(server, "POST", "/", body="héllo".encode())
    assert got["text"] == "héllo"
    request(
        server,
        "POST",
        "/",
        body=json.dumps({"a": [1, 2]}),
        headers={"Content-Type": "application/json"},
    )
    assert got["json"] == {"a": [1, 2]}
    request(server, "GET", "/")
    assert got["body"] == b""


def test_chunked_body_is_dechunked(serve):
    server = serve(lambda req: req.body)
    c = RawClient(server.port)
    c.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    )
    status, _, body = c.read_response()
    c.close()
    assert (status, body) == (200, b"hello, world")


def test_http_10_and_keep_alive_flag(serve):
    server = serve(lambda req: {"v": req.http_version, "ka": req.keep_alive})
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    assert json.loads(c.read_response()[2]) == {"v": "1.0", "ka": False}
    assert c.closed_by_server()
    c.close()
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert json.loads(c.read_response()[2]) == {"v": "1.1", "ka": False}
    assert c.closed_by_server()
    c.close()


def test_client_and_server_addresses(serve):
    server = serve(describe)
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    d = json.loads(c.read_response()[2])
    assert d["client"] == ["127.0.0.1", c.sock.getsockname()[1]]
    assert d["server"] == ["127.0.0.1", server.port]
    c.close()


def test_client_addresses_of_every_width(serve):
    """The dotted quad of each octet width (1, 2 and 3 digits, 0 and 255): the
    scope's and environ's "client" are written without inet_ntop."""
    server = serve(describe, host="0.0.0.0")
    for source in ("127.0.0.1", "127.10.200.3", "127.255.0.99", "127.1.20.255"):
        raw = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        try:
            status, _, body = read_closed(server.port, raw, source=source)
        except OSError as exc:
            pytest.skip("cannot connect from %s: %s" % (source, exc))
        d = json.loads(body)
        assert status == 200 and d["client"][0] == source and d["client"][1] > 0
        assert d["server"] == ["127.0.0.1", server.port]


def test_ipv6(serve):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no ::1")
    server = serve(describe, host="::1")
    c = RawClient(server.port, socket.AF_INET6, ("::1", server.port))
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    d = json.loads(c.read_response()[2])
    c.close()
    assert d["client"][0] == "::1" and d["server"] == ["::1", server.port]
    assert server.url == "http://[::1]:%d" % server.port


def test_unix_socket(serve):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        server = serve(describe, unix_path=path)
        assert server.url == "unix:" + path
        c = RawClient(0, socket.AF_UNIX, path)
        c.send(b"GET /u?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        d = json.loads(c.read_response()[2])
        c.close()
        assert d["path"] == "/u" and d["query"] == {"x": ["1"]}
        assert d["client"] is None
        assert d["server"] == path


def test_conn_id_same_on_keep_alive(serve):
    server = serve(describe)
    c = RawClient(server.port)
    ids = []
    for _ in range(3):
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        ids.append(json.loads(c.read_response()[2])["conn_id"])
    c.close()
    other = get_json(server)["conn_id"]
    assert ids[0] == ids[1] == ids[2] != other
    assert get_json(server)["thread"] == 0


def test_attributes_stay_readable_after_the_answer(serve):
    kept = []

    def handler(req):
        kept.append(req)
        return "ok"

    server = serve(handler)
    request(server, "POST", "/keep?me=1", body=b"payload", headers={"X-A": "1"})
    req = kept[0]
    assert req.answered
    # Built only now, after the engine released its copy of the request.
    assert req.method == "POST" and req.path == "/keep" and req.body == b"payload"
    assert req.header("x-a") == "1" and req.query["me"] == "1"
    assert req.client[0] == "127.0.0.1"
    assert "answered" in repr(req)
    with pytest.raises(RuntimeError):
        req.reply("again")


def test_request_cannot_be_created_by_hand():
    from pymongoose_uring import Request

    with pytest.raises(TypeError):
        Request()


@pytest.mark.no_uring_ok
def test_multidicts():
    h = Headers([("A", "1"), ("b", "2"), ("a", "3")])
    assert h["a"] == "1" and h.getall("A") == ["1", "3"] and len(h) == 2
    assert list(h) == ["A", "b"] and dict(h) == {"A": "1", "b": "2"}
    assert h == Headers([("A", "1"), ("b", "2"), ("a", "3")])
    assert h.getall("zz") == [] and h.getall("zz", None) == []
    with pytest.raises(KeyError):
        h["zz"]
    q = QueryParams("a=1&a=2&b=&c=%20")
    assert q["a"] == "1" and q.getall("a") == ["1", "2"] and q["b"] == "" and q["c"] == " "
    assert "A" not in q and QueryParams({"x": ["1", "2"]}).getall("x") == ["1", "2"]
