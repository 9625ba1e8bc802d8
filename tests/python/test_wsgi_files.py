"""Files through the WSGI adapter: ``wsgi.file_wrapper``. A wrapped regular file is
sent by the engine (Request.sendfile) from its position, bounded by the app's
Content-Length; anything else (BytesIO, a pipe, a socket) is iterated; the file is
closed after the answer. Flask's send_file/send_from_directory (werkzeug's
conditionals and Range) and Django's FileResponse go through it."""

import http.client
import io
import os
import socket
import subprocess
import sys
import threading

import pytest

from conftest import RawClient, request, wait_until
from pymongoose_uring import wsgi


def files_sent(server):
    return server.stats()["files_sent"]


def check_engine_sent(server, before, pieces):
    """`pieces` more file pieces were completed by the engine (the bytes did not go
    through Python)."""
    # (counted when the send completes: the client may see the bytes first)
    wait_until(lambda: files_sent(server) - before >= pieces, what="files_sent")
    assert files_sent(server) - before == pieces


@pytest.fixture
def files(tmp_path):
    rnd = os.urandom(3 << 20)
    (tmp_path / "small.bin").write_bytes(rnd[: 16 << 10])
    (tmp_path / "big.bin").write_bytes(rnd)
    (tmp_path / "page.html").write_bytes(b"<h1>hello</h1>\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    return tmp_path


class Tracked(io.FileIO):
    """A file that records that it was closed."""

    closed_files = []

    def close(self):
        if not self.closed:
            Tracked.closed_files.append(self.name)
        super().close()


def wrapper_app(root, opened):
    """/NAME?seek=N&length=M: root/NAME in wsgi.file_wrapper, its position at N, with
    Content-Length M when given (none otherwise)."""

    def app(environ, start_response):
        from urllib.parse import parse_qs

        q = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
        f = Tracked(os.path.join(root, environ["PATH_INFO"].lstrip("/")), "rb")
        opened.append(f)
        f.seek(int(q.get("seek", 0)))
        headers = [("Content-Type", "application/octet-stream")]
        if "length" in q:
            headers.append(("Content-Length", q["length"]))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f, 8192)

    return app


def test_file_wrapper_is_a_class_with_pep3333_behaviour():
    f = io.BytesIO(b"abcdefghij")
    w = wsgi.FileWrapper(f, 4)
    assert isinstance(wsgi.FileWrapper, type)
    assert list(w) == [b"abcd", b"efgh", b"ij"]
    assert w.seekable() and w.seek(2) == 2 and w.tell() == 2 and next(w) == b"cdef"
    w.close()
    assert f.closed


def test_wrapped_file_is_sent_byte_exact_and_closed(serve_wsgi, files):
    opened = []
    server = serve_wsgi(wrapper_app(str(files), opened))
    before = files_sent(server)
    for name in ("small.bin", "big.bin", "page.html"):
        status, headers, body, _ = request(server, path="/" + name)
        assert status == 200 and body == (files / name).read_bytes(), name
        assert headers["content-length"] == str(len(body))  # given by the adapter
        assert "transfer-encoding" not in headers
    check_engine_sent(server, before, 3)
    wait_until(lambda: all(f.closed for f in opened), what="the files closed")
    assert len(opened) == 3


def test_wrapped_file_from_its_position_and_length(serve_wsgi, files):
    server = serve_wsgi(wrapper_app(str(files), []))
    big = (files / "big.bin").read_bytes()
    status, headers, body, _ = request(server, path="/big.bin?seek=1000")
    assert status == 200 and body == big[1000:]
    assert headers["content-length"] == str(len(big) - 1000)
    status, headers, body, _ = request(server, path="/big.bin?seek=12345&length=70000")
    assert status == 200 and body == big[12345 : 12345 + 70000]
    status, _, body, _ = request(server, path="/big.bin?seek=%d" % len(big))
    assert (status, body) == (200, b"")
    status, _, body, _ = request(server, path="/empty.txt")
    assert (status, body) == (200, b"")


def test_wrapped_file_shorter_than_its_length_is_cut_short(serve_wsgi, files):
    """A Content-Length beyond the file's end: what the file has, then the connection
    closes (the client sees the answer incomplete, never padded)."""
    server = serve_wsgi(wrapper_app(str(files), []))
    c = RawClient(server.port)
    try:
        c.send(b"GET /page.html?length=100 HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = c.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"Content-Length: 100" in head or b"content-length: 100" in head
        assert body == b"<h1>hello</h1>\n"
    finally:
        c.close()
    assert request(server, path="/page.html")[2] == b"<h1>hello</h1>\n"  # still serving


def test_wrapped_file_head_and_keep_alive(serve_wsgi, files):
    opened = []
    server = serve_wsgi(wrapper_app(str(files), opened))
    c = RawClient(server.port)
    try:
        c.send(
            b"HEAD /big.bin?length=%d HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /small.bin?length=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (3 << 20, 16 << 10)
        )
        status, headers, body = c.read_response(head=True)
        assert status == 200 and body == b""
        assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(3 << 20)
        c.send(b"GET /page.html?length=15 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response()[2] == (files / "small.bin").read_bytes()
        assert c.read_response()[2] == b"<h1>hello</h1>\n"
    finally:
        c.close()
    wait_until(lambda: len(opened) == 3 and all(f.closed for f in opened), what="closed")


def test_wrapped_non_files_are_iterated(serve_wsgi, files):
    """BytesIO, a pipe and a socket have no regular file behind them: iterated, in
    blksize blocks, and closed."""
    data = os.urandom(300_000)
    made = []

    def app(environ, start_response):
        kind = environ["PATH_INFO"]
        if kind == "/bytesio":
            f = io.BytesIO(data)
        elif kind == "/pipe":
            r, w = os.pipe()
            threading.Thread(target=lambda: (os.write(w, data), os.close(w))).start()
            f = os.fdopen(r, "rb")
        else:
            a, b = socket.socketpair()
            threading.Thread(target=lambda: (b.sendall(data), b.close())).start()
            f = a.makefile("rb")
            a.close()  # (the file keeps the socket open)
        made.append(f)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 10_000)

    server = serve_wsgi(app)
    before = files_sent(server)
    for kind in ("/bytesio", "/pipe", "/socket"):
        status, headers, body, _ = request(server, path=kind)
        assert status == 200 and body == data, kind
    wait_until(lambda: all(f.closed for f in made), what="the files closed")
    assert files_sent(server) == before  # none went as a file piece


def test_file_wrapper_subclass_and_text_file_are_iterated(serve_wsgi, files):
    """Only the adapter's own class is taken for a file; a text file is iterated (its
    str blocks sent UTF-8 encoded, as the adapter sends a str from any body)."""

    class Mine(wsgi.FileWrapper):
        pass

    def app(environ, start_response):
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/sub":
            return Mine(open(files / "page.html", "rb"))
        return environ["wsgi.file_wrapper"](open(files / "page.html"))  # text mode

    server = serve_wsgi(app)
    before = files_sent(server)
    assert request(server, path="/sub")[2] == b"<h1>hello</h1>\n"
    assert request(server, path="/text")[2] == b"<h1>hello</h1>\n"
    assert files_sent(server) == before


# ---- Flask ------------------------------------------------------------------------------

MEMORY = bytes(range(256)) * 1000


def flask_app(root):
    pytest.importorskip("flask", reason="Flask is not installed")
    from flask import Flask, send_file, send_from_directory

    app = Flask(__name__)

    @app.route("/file/<name>")
    def one(name):
        return send_file(os.path.join(root, name))

    @app.route("/static-dir/<path:name>")
    def many(name):
        return send_from_directory(root, name, max_age=60)

    @app.route("/memory")
    def memory():
        return send_file(io.BytesIO(MEMORY), mimetype="application/octet-stream")

    @app.route("/attach")
    def attach():
        return send_file(os.path.join(root, "small.bin"), as_attachment=True)

    return app


def test_flask_send_file(serve_wsgi, files):
    server = serve_wsgi(flask_app(str(files)))
    before = files_sent(server)
    big = (files / "big.bin").read_bytes()
    status, headers, body, _ = request(server, path="/file/big.bin")
    assert status == 200 and body == big
    assert headers["content-length"] == str(len(big)) and headers["etag"]
    check_engine_sent(server, before, 1)
    etag, modified = headers["etag"], headers["last-modified"]
    status, _, body, _ = request(server, path="/file/big.bin", headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    status, _, body, _ = request(
        server, path="/file/big.bin", headers={"If-Modified-Since": modified}
    )
    assert (status, body) == (304, b"")
    status, headers, body, _ = request(server, "HEAD", "/file/big.bin")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(big))
    status, headers, body, _ = request(server, path="/attach")
    assert status == 200 and body == (files / "small.bin").read_bytes()
    assert headers["content-disposition"] == "attachment; filename=small.bin"


def test_flask_ranges(serve_wsgi, files):
    """werkzeug answers Range itself by wrapping the file_wrapper in its range
    wrapper: the adapter sends exactly the range (from the file, by the engine)."""
    server = serve_wsgi(flask_app(str(files)))
    big = (files / "big.bin").read_bytes()
    before = files_sent(server)
    cases = {
        "bytes=0-0": big[0:1],
        "bytes=1000-200999": big[1000:201000],
        "bytes=-10": big[-10:],
        "bytes=3000000-": big[3000000:],
    }
    for spec, want in cases.items():
        status, headers, body, _ = request(server, path="/file/big.bin", headers={"Range": spec})
        assert status == 206 and body == want, spec
        assert headers["content-length"] == str(len(want))
    check_engine_sent(server, before, len(cases))
    etag = request(server, "HEAD", "/file/big.bin")[1]["etag"]
    status, _, body, _ = request(
        server, path="/file/big.bin", headers={"Range": "bytes=5-9", "If-Range": etag}
    )
    assert (status, body) == (206, big[5:10])
    status, _, body, _ = request(
        server, path="/file/big.bin", headers={"Range": "bytes=5-9", "If-Range": '"other"'}
    )
    assert (status, body) == (200, big)  # If-Range does not match: the whole file
    status, headers, _, _ = request(
        server, path="/file/small.bin", headers={"Range": "bytes=99999-"}
    )
    assert status == 416 and headers["content-range"] == "bytes */%d" % (16 << 10)


def test_flask_send_file_from_memory_with_ranges(serve_wsgi, files):
    """send_file of a BytesIO: werkzeug's range wrapper seeks the wrapper (it is
    seekable) and the adapter iterates it: the range's bytes, no file piece."""
    server = serve_wsgi(flask_app(str(files)))
    before = files_sent(server)
    status, _, body, _ = request(server, path="/memory")
    assert (status, body) == (200, MEMORY)
    for spec, want in {"bytes=1000-1999": MEMORY[1000:2000], "bytes=-7": MEMORY[-7:]}.items():
        status, headers, body, _ = request(server, path="/memory", headers={"Range": spec})
        assert (status, body) == (206, want), spec
    assert files_sent(server) == before


def test_flask_send_from_directory(serve_wsgi, files):
    server = serve_wsgi(flask_app(str(files)))
    status, headers, body, _ = request(server, path="/static-dir/page.html")
    assert (status, body) == (200, b"<h1>hello</h1>\n")
    assert headers["content-type"].startswith("text/html")
    assert "max-age=60" in headers["cache-control"]
    assert request(server, path="/static-dir/missing.html")[0] == 404
    secret = files.parent / ("wsgi-files-secret-%d" % os.getpid())
    secret.write_text("secret")
    try:
        for path in ("/static-dir/../" + secret.name, "/static-dir/%2e%2e/" + secret.name):
            status, _, body, _ = request(server, path=path)
            assert status == 404 and b"secret" not in body, path
    finally:
        secret.unlink()


# ---- Django -----------------------------------------------------------------------------

DJANGO_FILES = """
import os, sys, hashlib, http.client
import django
from django.conf import settings
settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"],
                   SECRET_KEY="test", MIDDLEWARE=[], USE_TZ=True)
django.setup()
from django.http import FileResponse
from django.urls import path
from pymongoose_uring import wsgi
ROOT = sys.argv[1]
opened = []

def download(request, name):
    f = open(os.path.join(ROOT, name), "rb")
    f.seek(int(request.GET.get("seek", 0)))
    opened.append(f)
    return FileResponse(f, as_attachment="attach" in request.GET)

urlpatterns = [path("dl/<str:name>", download)]

from django.core.wsgi import get_wsgi_application
s = wsgi.WSGIServer(get_wsgi_application(), port=0).start()
before = s.stats().get("files_sent", 0)
c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
for target in ("/dl/big.bin", "/dl/small.bin?seek=100&attach=1", "/dl/page.html"):
    c.request("GET", target)
    r = c.getresponse()
    body = r.read()
    print(r.status, r.getheader("Content-Length"), r.getheader("Content-Disposition"),
          hashlib.sha256(body).hexdigest())
s.stop()
print("closed", all(f.closed for f in opened), len(opened))
print("files_sent", s.stats().get("files_sent", 0) - before)
"""


def test_django_file_response(tmp_path, files):
    pytest.importorskip("django", reason="Django is not installed")
    out = subprocess.run(
        [sys.executable, "-c", DJANGO_FILES, str(files)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()

    def digest(data):
        import hashlib

        return hashlib.sha256(data).hexdigest()

    big = (files / "big.bin").read_bytes()
    small = (files / "small.bin").read_bytes()
    assert lines[0] == '200 %d inline; filename="big.bin" %s' % (len(big), digest(big))
    assert lines[1] == '200 %d attachment; filename="small.bin" %s' % (
        len(small) - 100,
        digest(small[100:]),
    )
    assert lines[2] == '200 15 inline; filename="page.html" %s' % digest(b"<h1>hello</h1>\n")
    assert lines[3] == "closed True 3"
    assert lines[4] == "files_sent 3"  # each one sent by the engine from the file


def test_wrapped_files_leave_no_descriptor_open(serve_wsgi, files):
    """The app's file is closed after each answer and the engine's duplicate once it is
    sent: 200 answers leave the process's descriptor count as it was."""
    server = serve_wsgi(wrapper_app(str(files), []))
    request(server, path="/small.bin")
    before = len(os.listdir("/proc/self/fd"))
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for i in range(200):
        c.request("GET", "/small.bin" if i % 2 else "/page.html?seek=4")
        r = c.getresponse()
        assert r.status == 200 and len(r.read()) in (16 << 10, 11)
    c.close()
    wait_until(lambda: len(os.listdir("/proc/self/fd")) <= before, what="descriptors closed")


def test_wrapped_file_with_a_bodiless_status(serve_wsgi, files):
    """204 and 304 answers with a file_wrapper send neither the file nor a length."""

    def app(environ, start_response):
        status = "204 No Content" if environ["PATH_INFO"] == "/204" else "304 Not Modified"
        start_response(status, [("ETag", '"x"')])
        return environ["wsgi.file_wrapper"](open(files / "page.html", "rb"))

    server = serve_wsgi(app)
    before = files_sent(server)
    for path, code in (("/204", 204), ("/304", 304)):
        c = RawClient(server.port)
        try:
            c.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
            status, headers, body = c.read_response(head=True)
            assert status == code and body == b""
            assert "content-length" not in {k.lower() for k, _ in headers}
            assert dict((k.lower(), v) for k, v in headers)["etag"] == '"x"'
            c.send(b"GET /204 HTTP/1.1\r\nHost: t\r\n\r\n")  # and the connection goes on
            assert c.read_response(head=True)[0] == 204
        finally:
            c.close()
    assert files_sent(server) == before
