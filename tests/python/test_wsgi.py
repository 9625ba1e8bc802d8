"""The WSGI adapter: PEP 3333 environ and responses (checked by wsgiref.validate),
streaming, errors, the thread pool, and a real Flask app (Django where installable)."""

import http.client
import io
import json
import logging
import os
import threading
import time
from wsgiref.validate import validator

import pytest

from conftest import BEHIND, RawClient, fetch_closed, request, run_script, wait_until
from pymongoose_uring import wsgi as pmu_wsgi
from pymongoose_uring.wsgi import WSGIHandler, WSGIServer


def environ_app(environ, start_response):
    """Answers the environ's str values as JSON (and the body read from wsgi.input)."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    out = {k: v for k, v in environ.items() if isinstance(v, str)}
    out["body"] = body.decode("latin-1")
    out["wsgi.version"] = list(environ["wsgi.version"])
    out["multithread"] = environ["wsgi.multithread"]
    out["has_file_wrapper"] = environ["wsgi.file_wrapper"] is not None
    out["errors_writable"] = hasattr(environ["wsgi.errors"], "write")
    data = json.dumps(out).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


@pytest.mark.parametrize("length", [None, "30"])
def test_iterator_failing_half_way_closes_without_completing(serve_wsgi, caplog, length):
    """The body iterator raises after its first chunk: the client gets that chunk,
    then the connection closes, with no last chunk (or short of the length)."""

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/behind":
            start_response("200 OK", [])
            return [b"behind"]
        headers = [("Content-Type", "text/plain")]
        if length:
            headers.append(("Content-Length", str(pmu_wsgi.BUFFER_LIMIT + 30)))

        def gen():
            yield b"first chunk"
            raise RuntimeError("the iterator failed")

        start_response("200 OK", headers)
        return gen()

    server = serve_wsgi(app)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, headers, body = fetch_closed(server.port, BEHIND)
    assert status == 200
    if length:
        assert body == b"first chunk"
    else:
        assert headers["transfer-encoding"] == "chunked"
        assert body == b"b\r\nfirst chunk\r\n"  # no 0\r\n\r\n
    assert "the iterator failed" in caplog.text  # the traceback is logged
    assert request(server, path="/behind")[2] == b"behind"  # a new connection works
    assert server.stats()["responses_aborted"] == 1


@pytest.mark.parametrize("shape", ["list", "generator", "streamed"])
def test_body_shorter_than_content_length_closes_with_a_warning(serve_wsgi, caplog, shape):
    declared = 10 if shape != "streamed" else pmu_wsgi.BUFFER_LIMIT + 10

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/behind":
            start_response("200 OK", [])
            return [b"behind"]
        start_response("200 OK", [("Content-Length", str(declared))])
        return [b"hello"] if shape == "list" else iter([b"hel", b"lo"])

    server = serve_wsgi(app)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, headers, body = fetch_closed(server.port, BEHIND)
    assert (status, headers["content-length"], body) == (200, str(declared), b"hello")
    assert "fewer than its Content-Length" in caplog.text
    assert server.stats()["responses_aborted"] == 1


@pytest.mark.parametrize("shape", ["list", "streamed"])
def test_body_longer_than_content_length_is_cut_off_and_closes(serve_wsgi, caplog, shape):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/behind":
            start_response("200 OK", [])
            return [b"behind"]
        if shape == "list":
            start_response("200 OK", [("Content-Length", "3")])
            return [b"hello"]
        start_response("200 OK", [("Content-Length", str(pmu_wsgi.BUFFER_LIMIT + 3))])
        return iter([b"x" * pmu_wsgi.BUFFER_LIMIT, b"hello"])

    server = serve_wsgi(app)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, headers, body = fetch_closed(server.port, BEHIND)
    assert status == 200 and body.endswith(b"hel")
    assert len(body) == int(headers["content-length"])  # and nothing after: closed
    assert "more than its Content-Length" in caplog.text


def test_environ_is_complete(serve_wsgi):
    server = serve_wsgi(validator(environ_app))
    status, headers, body, _ = request(
        server,
        "POST",
        "/a%20b/caf%C3%A9?x=1&y=%20",
        body=b"hello",
        headers={"Content-Type": "text/plain", "X-Custom": "v", "Cookie": "a=1"},
    )
    assert status == 200, body
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    # PEP 3333: PATH_INFO is percent-decoded bytes as latin-1
    assert env["PATH_INFO"] == "/a b/caf\u00c3\u00a9"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/a b/café"
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["RAW_URI"] == "/a%20b/caf%C3%A9?x=1&y=%20"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["HTTP_X_CUSTOM"] == "v"
    assert env["HTTP_COOKIE"] == "a=1"
    assert env["HTTP_HOST"] == "127.0.0.1:%d" % server.port
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(server.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert int(env["REMOTE_PORT"]) > 0
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["multithread"] is True
    assert env["has_file_wrapper"] and env["errors_writable"]
    assert env["body"] == "hello"


def test_repeated_headers_join_and_underscores_are_dropped(serve_wsgi):
    server = serve_wsgi(environ_app)
    c = RawClient(server.port)
    c.send(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\nX_B: spoof\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\n\r\n"
    )
    status, _, body = c.read_response()
    c.close()
    env = json.loads(body)
    assert env["HTTP_X_A"] == "1, 2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_B" not in env
    assert env["PATH_INFO"] == "/" and env["QUERY_STRING"] == ""


def test_script_name_is_stripped_from_path_info(serve_wsgi):
    server = serve_wsgi(validator(environ_app), script_name="/mount/")
    env = json.loads(request(server, path="/mount/app/x?q=1")[2])
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == (
        "/mount",
        "/app/x",
        "q=1",
    )
    env = json.loads(request(server, path="/elsewhere")[2])
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/mount", "/elsewhere")


def test_chunked_request_body_gets_a_content_length(serve_wsgi):
    server = serve_wsgi(validator(environ_app))
    c = RawClient(server.port)
    c.send(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    status, _, body = c.read_response()
    c.close()
    env = json.loads(body)
    assert status == 200
    assert env["body"] == "hello world"
    assert env["CONTENT_LENGTH"] == "11"


def test_http_10_protocol(serve_wsgi):
    server = serve_wsgi(environ_app)
    c = RawClient(server.port)
    c.send(b"GET /old HTTP/1.0\r\n\r\n")
    status, _, body = c.read_response()
    c.close()
    assert json.loads(body)["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_validated_generator_with_close(serve_wsgi):
    closed = []

    class Body:
        def __init__(self):
            self.parts = [b"a", b"b", b"c"]

        def __iter__(self):
            return iter(self.parts)

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    server = serve_wsgi(validator(app))
    status, headers, body, _ = request(server)
    assert (status, body) == (200, b"abc")
    wait_until(lambda: closed == [True])
    assert headers.get("transfer-encoding") == "chunked"


def test_generator_is_streamed_as_it_is_produced(serve_wsgi):

    # The generator holds its second chunk until the client has read the
    # first: a server that waited for the whole body would time the wait out.
    seen_first = threading.Event()
    released = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            yield b"first\n"
            released.append(seen_first.wait(5))
            yield b"second\n"

        return gen()

    server = serve_wsgi(validator(app))
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    while b"first" not in c.buf:
        c._fill()
    seen_first.set()
    assert b"transfer-encoding: chunked" in c.buf.lower()
    while not c.buf.endswith(b"0\r\n\r\n"):
        c._fill()
    assert b"second" in c.buf
    assert released == [True], "the first chunk waited for the whole body"
    c.close()


def test_known_length_iterable_is_sent_whole(serve_wsgi):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return iter([b"abc", b"def"])

    server = serve_wsgi(validator(app))
    status, headers, body, _ = request(server)
    assert (status, body, headers["content-length"]) == (200, b"abcdef", "6")
    assert "transfer-encoding" not in headers


def test_write_callable(serve_wsgi):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]

    server = serve_wsgi(validator(app))
    assert request(server)[2] == b"written returned"


def test_file_wrapper(serve_wsgi, tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(200000)
    path.write_bytes(data)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 8192)

    server = serve_wsgi(validator(app))
    status, _, body, _ = request(server)
    assert status == 200 and body == data


def test_exc_info_replaces_the_headers(serve_wsgi):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"replaced"]

    server = serve_wsgi(validator(app))
    status, _, body, _ = request(server)
    assert (status, body) == (500, b"replaced")


def test_app_errors_answer_500_and_close_is_called(serve_wsgi, caplog):
    closed = []

    class Failing:
        def __iter__(self):
            raise RuntimeError("iteration failed")

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/raise":
            raise RuntimeError("app failed")
        if environ["PATH_INFO"] == "/nostart":
            return [b"no start_response"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/iter":
            return Failing()
        if environ["PATH_INFO"] == "/str":
            return ["not bytes"]
        return [b"ok"]

    server = serve_wsgi(app)
    for path in ("/raise", "/nostart", "/iter", "/str"):
        status, _, body, _ = request(server, path=path)
        assert status == 500, (path, body)
    assert request(server)[2] == b"ok"  # the pool survived
    wait_until(lambda: closed == [True])


def test_custom_status_and_headers(serve_wsgi):
    def app(environ, start_response):
        start_response(
            "418 I'm a teapot",
            [
                ("Content-Type", "text/plain"),
                ("X-Tea", "earl grey"),
                ("X-Tea", "green"),
                ("X-Latin", "caf\u00e9"),
            ],
        )
        return [b"short and stout"]

    server = serve_wsgi(validator(app))
    status, headers, body, resp = request(server)
    assert status == 418 and body == b"short and stout"
    assert resp.msg.get_all("X-Tea") == ["earl grey", "green"]
    assert resp.getheader("X-Latin") == "caf\u00e9"  # sent as latin-1 bytes


def test_head_keeps_the_apps_content_length(serve_wsgi):
    def app(environ, start_response):
        body = b"x" * 1234
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    server = serve_wsgi(app)
    status, headers, body, _ = request(server, "HEAD")
    assert status == 200 and body == b""
    assert headers["content-length"] == "1234"
    status, headers, body, _ = request(server)
    assert len(body) == 1234 and headers["content-length"] == "1234"


def test_blocking_app_does_not_stall_other_requests(serve_wsgi):
    release = threading.Event()

    held = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            held.append(1)
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    server = serve_wsgi(app, pool_threads=4)
    results = []
    slow = [
        threading.Thread(target=lambda: results.append(request(server, path="/slow")[2]))
        for _ in range(3)
    ]
    for t in slow:
        t.start()
    wait_until(lambda: len(held) == 3, what="three pool threads held by /slow")
    assert request(server, path="/fast")[2] == b"/fast"
    # answered while every /slow is still held (they are let go below, or after 10 s)
    assert results == []
    release.set()
    for t in slow:
        t.join(10)
    assert results == [b"/slow"] * 3


def test_many_concurrent_requests(serve_wsgi):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["QUERY_STRING"].encode()]

    server = serve_wsgi(app, pool_threads=3, threads=2)
    errors = []

    def client(n):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            for i in range(50):
                conn.request("GET", "/?%d-%d" % (n, i))
                r = conn.getresponse()
                assert r.read() == b"%d-%d" % (n, i)
            conn.close()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_pipelined_requests_keep_their_order(serve_wsgi):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/0":
            time.sleep(0.1)  # the first is the slowest: answers must still be in order
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    server = serve_wsgi(app, pool_threads=4)
    c = RawClient(server.port)
    c.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
    assert [c.read_response()[2] for _ in range(5)] == [b"/%d" % i for i in range(5)]
    c.close()


def test_large_body_in_and_out(serve_wsgi):
    def app(environ, start_response):
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [data[::-1]]

    server = serve_wsgi(validator(app), max_body_bytes=8 << 20)
    data = os.urandom(3 << 20)
    status, _, body, _ = request(server, "POST", body=data)
    assert status == 200 and body == data[::-1]


def test_streamed_request_body(serve_wsgi):

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        first = stream.readline()
        rest = stream.read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d %d %s" % (len(first), len(rest), str(type(stream).__name__).encode())]

    server = serve_wsgi(app, stream_body_threshold=1024)
    data = b"line one\n" + b"x" * 100000
    status, _, body, _ = request(server, "POST", body=data)
    assert status == 200
    assert body.startswith(b"9 100000 ")


def test_stream_input_unit():
    class FakeRequest:
        def __init__(self, data):
            self.data = io.BytesIO(data)

        def read(self, size=-1):
            return self.data.read(min(size, 7))

    s = pmu_wsgi._StreamInput(FakeRequest(b"ab\ncd\nefghijklmnop\nlast"))
    assert s.readline() == b"ab\n"
    assert s.read(2) == b"cd"
    assert s.readline(3) == b"\n"
    assert s.readline(3) == b"efg"
    assert list(s) == [b"hijklmnop\n", b"last"]
    assert s.read() == b"" and s.readline() == b""
    s = pmu_wsgi._StreamInput(FakeRequest(b"1\n2\n3"))
    assert s.readlines() == [b"1\n", b"2\n", b"3"]


@pytest.mark.no_uring_ok
def test_handler_validates_arguments():
    with pytest.raises(TypeError):
        WSGIHandler(42)
    with pytest.raises(ValueError):
        WSGIHandler(environ_app, pool_threads=0)


def test_pool_threads_stop_with_the_server():
    before = {t.name for t in threading.enumerate()}
    server = WSGIServer(environ_app, port=0, pool_threads=3).start()
    assert request(server)[0] == 200
    names = [t.name for t in threading.enumerate() if t.name.startswith("pymongoose_uring-wsgi")]
    assert len(names) >= 3
    server.stop()

    def gone():
        after = {t.name for t in threading.enumerate()} - before
        return not [n for n in after if n.startswith("pymongoose_uring-wsgi")]

    wait_until(gone, timeout=5, what="the pool threads' end")


def test_server_restarts_with_a_fresh_pool():
    server = WSGIServer(environ_app, port=0, pool_threads=2)
    for _ in range(3):
        server.start()
        for _ in range(3):
            assert request(server)[0] == 200
        server.stop()


def test_unix_socket(tmp_path):
    import socket

    path = str(tmp_path / "wsgi.sock")
    server = WSGIServer(environ_app, unix_path=path).start()
    try:
        c = RawClient(0, family=socket.AF_UNIX, address=path)
        c.send(b"GET /u HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = c.read_response()
        c.close()
        env = json.loads(body)
        assert status == 200 and env["PATH_INFO"] == "/u"
        assert env["SERVER_NAME"] and env["SERVER_PORT"]
    finally:
        server.stop()


# ---- Flask ------------------------------------------------------------------------------


def make_flask_app():
    pytest.importorskip("flask", reason="Flask is not installed (pip install flask)")
    from flask import (
        Flask,
        Response,
        abort,
        jsonify,
        redirect,
        request as freq,
        stream_with_context,
    )

    app = Flask(__name__)

    @app.get("/")
    def hello():
        return {"message": "Hello, World!"}

    @app.get("/users/<int:uid>")
    def user(uid):
        return jsonify(id=uid, q=freq.args.getlist("q"))

    @app.post("/json")
    def post_json():
        data = freq.get_json()
        return jsonify(got=data, n=len(data)), 201

    @app.post("/form")
    def form():
        return {"name": freq.form["name"], "tags": freq.form.getlist("tag")}

    @app.post("/upload")
    def upload():
        f = freq.files["file"]
        content = f.read()
        return {
            "filename": f.filename,
            "size": len(content),
            "head": content[:10].decode("latin-1"),
            "field": freq.form.get("note"),
        }

    @app.get("/stream")
    def stream():
        def gen():
            for i in range(5):
                yield "line %d\n" % i

        return Response(stream_with_context(gen()), mimetype="text/plain")

    @app.get("/missing")
    def missing():
        abort(404)

    @app.get("/crash")
    def crash():
        raise RuntimeError("boom")

    @app.get("/go")
    def go():
        return redirect("/")

    @app.get("/cookie")
    def cookie():
        r = Response("set")
        r.set_cookie("k", "v")
        return r

    return app


def multipart(fields, files):
    boundary = "----pmuboundary7MA4YWxk"
    out = io.BytesIO()
    for name, value in fields:
        out.write(
            (
                '--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                % (boundary, name, value)
            ).encode()
        )
    for name, filename, data in files:
        out.write(
            (
                '--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n" % (boundary, name, filename)
            ).encode()
        )
        out.write(data + b"\r\n")
    out.write(("--%s--\r\n" % boundary).encode())
    return out.getvalue(), "multipart/form-data; boundary=" + boundary


def test_flask_app(serve_wsgi):
    server = serve_wsgi(make_flask_app())
    status, headers, body, _ = request(server)
    assert status == 200 and json.loads(body) == {"message": "Hello, World!"}
    assert headers["content-type"] == "application/json"

    status, _, body, _ = request(server, path="/users/7?q=a&q=b")
    assert json.loads(body) == {"id": 7, "q": ["a", "b"]}

    status, _, body, _ = request(
        server, "POST", "/json", body=b'{"a": [1, 2]}', headers={"Content-Type": "application/json"}
    )
    assert status == 201 and json.loads(body) == {"got": {"a": [1, 2]}, "n": 1}

    status, _, body, _ = request(
        server,
        "POST",
        "/form",
        body=b"name=Ada+L&tag=x&tag=y",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and json.loads(body) == {"name": "Ada L", "tags": ["x", "y"]}

    payload = os.urandom(300000)
    data, ctype = multipart([("note", "hi")], [("file", "a.bin", payload)])
    status, _, body, _ = request(
        server, "POST", "/upload", body=data, headers={"Content-Type": ctype}
    )
    got = json.loads(body)
    assert status == 200 and got["filename"] == "a.bin" and got["size"] == len(payload)
    assert got["head"] == payload[:10].decode("latin-1") and got["field"] == "hi"

    status, headers, body, _ = request(server, path="/stream")
    assert status == 200 and body == b"".join(b"line %d\n" % i for i in range(5))

    assert request(server, path="/missing")[0] == 404
    assert request(server, path="/nowhere")[0] == 404
    assert request(server, "POST", "/")[0] == 405
    assert request(server, path="/crash")[0] == 500
    status, headers, _, _ = request(server, path="/go")
    assert status == 302 and headers["location"] == "/"
    status, headers, _, _ = request(server, path="/cookie")
    assert "k=v" in headers["set-cookie"]
    status, headers, body, _ = request(server, "HEAD", "/")
    assert status == 200 and body == b""


def test_flask_upload_with_a_streamed_body(serve_wsgi):
    server = serve_wsgi(make_flask_app(), stream_body_threshold=4096)
    payload = os.urandom(500000)
    data, ctype = multipart([("note", "big")], [("file", "big.bin", payload)])
    status, _, body, _ = request(
        server, "POST", "/upload", body=data, headers={"Content-Type": ctype}
    )
    got = json.loads(body)
    assert status == 200 and got["size"] == len(payload) and got["field"] == "big"
    # chunked (no Content-Length): wsgi.input_terminated lets Flask read to the end
    c = RawClient(server.port)
    c.send(
        (
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
            "Transfer-Encoding: chunked\r\n\r\n" % ctype
        ).encode()
    )
    for i in range(0, len(data), 10000):
        piece = data[i : i + 10000]
        c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    c.send(b"0\r\n\r\n")
    status, _, body = c.read_response()
    c.close()
    got = json.loads(body)
    assert status == 200 and got["size"] == len(payload)


def test_flask_keepalive_many_requests(serve_wsgi):
    server = serve_wsgi(make_flask_app())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for i in range(200):
        conn.request("GET", "/users/%d" % i)
        assert json.loads(conn.getresponse().read())["id"] == i
    conn.close()


# ---- Django -----------------------------------------------------------------------------


def _django():
    try:
        import django  # noqa: F401
    except ImportError:
        pytest.skip("Django is not installed (pip install django)")


def test_django_wsgi(tmp_path):
    _django()

    script = (
        DJANGO_APP
        + """
from django.core.wsgi import get_wsgi_application
from pymongoose_uring.wsgi import WSGIServer
s = WSGIServer(get_wsgi_application(), port=0).start()
import http.client, json
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


DJANGO_APP = """
import django
from django.conf import settings
settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"],
                   SECRET_KEY="test", MIDDLEWARE=[], USE_TZ=True)
django.setup()
from django.http import HttpResponse, JsonResponse
from django.urls import path

def hello(request):
    return JsonResponse({"hello": request.GET.get("name", "")})

def echo(request):
    return HttpResponse(request.body, content_type="text/plain")

urlpatterns = [path("hello/", hello), path("echo/", echo)]
"""
