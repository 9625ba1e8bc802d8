"""pymongoose's serve_dir/serve_file in the compatibility layer, answered by the
engine's file rules (Request.serve_static/serve_file): bytes, types, extra headers,
index and its 301, Range, ETag/304, HEAD, traversal, page404, mime_types, Mongoose's
"/uri=/dir" root lists; http_parse_multipart and TlsOpts; and pymongoose's own
static-files example and tests, run from a checkout with only the import changed."""

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from pymongoose_checkout import pymongoose_source, run_example, wait_serving

from conftest import RawClient, request
from pymongoose_uring.compat import MG_EV_HTTP_MSG, TlsOpts, http_parse_multipart


class _At:
    def __init__(self, port):
        self.port = port


@pytest.fixture
def serving(polled_manager):
    """serving(handler) -> an object with .port (a polled Manager) and .manager."""

    def start(handler):
        manager, listener = polled_manager(handler)
        at = _At(listener.local_addr[1])
        at.manager = manager
        at.server = listener._server
        return at

    return start


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"<h1>index</h1>")
    (root / "data.bin").write_bytes(os.urandom(200_000))
    (root / "notes.txt").write_bytes(b"plain notes\n")
    (root / "style.custom").write_bytes(b"body{}")
    (root / ".env").write_bytes(b"SECRET=1")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<h1>sub</h1>")
    (root / "sub" / "b.json").write_bytes(b"{}")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "o.txt").write_bytes(b"other dir")
    (tmp_path / "404.html").write_bytes(b"<h1>custom 404</h1>")
    (tmp_path / "secret.txt").write_bytes(b"top secret")
    return tmp_path


def static_answers(at):
    return at.server.stats().get("static_answers", 0)


def test_serve_dir_by_the_engine_rules(serving, site):
    root = str(site / "www")

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.serve_dir(data, root_dir=root, extra_headers="X-Extra: yes\r\nX-Two: 2\r\n")

    at = serving(handler)
    before = static_answers(at)
    data = (site / "www" / "data.bin").read_bytes()
    status, headers, body, _ = request(at, path="/data.bin")
    assert status == 200 and body == data
    assert headers["x-extra"] == "yes" and headers["x-two"] == "2"
    assert headers["content-length"] == str(len(data)) and headers["etag"]
    etag = headers["etag"]
    assert request(at, path="/data.bin", headers={"If-None-Match": etag})[0] == 304
    status, headers, body, _ = request(at, path="/data.bin", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["content-range"] == "bytes 100-199/%d" % len(data)
    status, headers, body, _ = request(at, "HEAD", "/data.bin")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(data))
    status, headers, body, _ = request(at, path="/")
    assert (status, body) == (200, b"<h1>index</h1>")
    assert headers["content-type"].startswith("text/html")
    status, headers, _, _ = request(at, path="/sub?x=1")
    assert status == 301 and headers["location"] == "/sub/?x=1"
    assert request(at, path="/sub/")[2] == b"<h1>sub</h1>"
    status, headers, _, _ = request(at, path="/sub/b.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert request(at, path="/notes.txt")[1]["content-type"].startswith("text/plain")
    assert static_answers(at) - before == 9  # every one answered by the engine


def test_serve_dir_misses_traversal_and_page404(serving, site):
    root = str(site / "www")
    page404 = str(site / "404.html")

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            if data.uri.startswith("/custom"):
                conn.serve_dir(data, root_dir=root, page404=page404, extra_headers="X-E: 1\r\n")
            else:
                conn.serve_dir(data, root_dir=root, extra_headers="X-E: 1\r\n")

    at = serving(handler)
    status, headers, body, _ = request(at, path="/missing.txt")
    assert (status, body) == (404, b"Not found\n") and headers["x-e"] == "1"
    status, headers, body, _ = request(at, path="/custom/missing")
    assert (status, body) == (404, b"<h1>custom 404</h1>")
    assert headers["content-type"].startswith("text/html")
    for path in (
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/.env",
        "/%2eenv",
    ):
        status, _, body, _ = request(at, path=path)
        assert status in (400, 404), path
        assert b"SECRET" not in body and b"top secret" not in body, path


def test_serve_dir_mime_types_and_root_lists(serving, site):
    root = str(site / "www")
    roots = "/o=%s,%s" % (site / "other", root)

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            if data.uri.startswith("/list"):
                return conn.reply(200, "-")
            conn.serve_dir(data, root_dir=roots, mime_types="custom=text/x-custom,txt=text/x-t")

    at = serving(handler)
    status, headers, body, _ = request(at, path="/style.custom")
    assert (status, body) == (200, b"body{}") and headers["content-type"] == "text/x-custom"
    assert request(at, path="/notes.txt")[1]["content-type"] == "text/x-t"
    status, headers, body, _ = request(at, path="/o/o.txt")  # the "/o=" entry
    assert (status, body) == (200, b"other dir") and headers["content-type"] == "text/x-t"
    assert request(at, path="/o.txt")[0] == 404  # not in the default root
    assert request(at, path="/index.html")[2] == b"<h1>index</h1>"


def test_serve_dir_on_a_missing_root(serving, site):
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.serve_dir(data, root_dir=str(site / "later"))

    at = serving(handler)
    assert request(at, path="/a.txt")[:3:2] == (404, b"Not found\n")
    (site / "later").mkdir()
    (site / "later" / "a.txt").write_bytes(b"now here")
    assert request(at, path="/a.txt")[:3:2] == (200, b"now here")


def test_serve_file(serving, site):
    data = (site / "www" / "data.bin").read_bytes()

    def handler(conn, ev, data_):
        if ev == MG_EV_HTTP_MSG:
            name = {"/one": "www/data.bin", "/typed": "www/notes.txt", "/gone": "nope.bin"}
            conn.serve_file(
                data_,
                str(site / name[data_.uri]),
                extra_headers="Cache-Control: no-store\r\n",
                mime_types="txt=text/x-typed",
            )

    at = serving(handler)
    before = static_answers(at)
    status, headers, body, _ = request(at, path="/one")
    assert status == 200 and body == data and headers["cache-control"] == "no-store"
    status, _, body, _ = request(at, path="/one", headers={"Range": "bytes=-5"})
    assert (status, body) == (206, data[-5:])
    status, headers, body, _ = request(at, path="/typed")
    assert (status, body) == (200, b"plain notes\n")
    assert headers["content-type"] == "text/x-typed"
    assert request(at, path="/gone")[0] == 404
    assert static_answers(at) - before == 4


@pytest.mark.no_uring_ok
def test_http_parse_multipart():
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="field1"\r\n'
        b"\r\n"
        b"value1\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="up"; filename="a b.txt"\r\n'
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"line1\r\nline2 --XyZ not a boundary\r\n"
        b"--XyZ--\r\n"
    )
    offset, part = http_parse_multipart(body, 0)
    assert part == {"name": "field1", "filename": "", "body": b"value1"}
    offset, part = http_parse_multipart(body, offset)
    assert part == {
        "name": "up",
        "filename": "a b.txt",
        "body": b"line1\r\nline2 --XyZ not a boundary",
    }
    assert http_parse_multipart(body, offset) == (0, None)
    assert http_parse_multipart(b"", 0) == (0, None)
    assert http_parse_multipart("not multipart", 0) == (0, None)
    assert http_parse_multipart(body[:40], 0) == (0, None)  # cut short: no part
    assert http_parse_multipart(body.decode(), 0)[1]["body"] == b"value1"


@pytest.mark.no_uring_ok
def test_tls_opts_keep_their_fields():
    opts = TlsOpts(cert=b"C", key=b"K", skip_verification=True)
    assert (opts.cert, opts.key, opts.ca, opts.skip_verification) == (b"C", b"K", b"", True)
    opts = TlsOpts(ca="é", name="example.com", cert=None)  # str as UTF-8, None as b""
    assert (opts.ca, opts.name, opts.cert, opts.key) == (b"\xc3\xa9", b"example.com", b"", b"")
    assert opts.skip_verification is False


# ---- pymongoose's own static-files example and tests ---------------------------------------


def test_pymongoose_http_server_example(tmp_path):
    """tests/examples/http/http_server.py: serve_dir with extra headers over the web
    root it creates, its JSON API, and a multipart upload (http_parse_multipart)."""
    proc, port = run_example(
        "tests/examples/http/http_server.py", tmp_path, "--root", str(tmp_path / "root")
    )
    base = "http://127.0.0.1:%d" % port
    try:
        wait_serving(proc, port)
        with urllib.request.urlopen(base + "/") as r:
            assert b"pymongoose HTTP Server" in r.read()
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert r.headers["Content-Type"].startswith("text/html")
        with urllib.request.urlopen(base + "/upload.html") as r:
            assert b'enctype="multipart/form-data"' in r.read()
        with urllib.request.urlopen(base + "/api/info") as r:
            assert json.loads(r.read())["server"] == "pymongoose"
        body = (
            b"--BOUNDARY\r\n"
            b'Content-Disposition: form-data; name="file"; filename="up.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\n"
            b"uploaded bytes\r\n"
            b"--BOUNDARY--\r\n"
        )
        req = urllib.request.Request(
            base + "/upload",
            data=body,
            headers={"Content-Type": "multipart/form-data; boundary=BOUNDARY"},
            method="POST",
        )
        with urllib.request.urlopen(req) as r:
            assert r.read() == b"Uploaded 1 file(s): up.txt"
        assert (tmp_path / "uploads" / "up.txt").read_bytes() == b"uploaded bytes"
        (tmp_path / "root" / "up.txt").write_bytes(b"0123456789")
        status, _, body, _ = request(_At(port), path="/up.txt", headers={"Range": "bytes=2-4"})
        assert (status, body) == (206, b"234")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/missing.html")
        assert info.value.code == 404
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Server stopped cleanly" in out and "GET /api/info" in out


@pytest.mark.parametrize(
    "rel",
    ["tests/examples/test_examples_http_server_static_files.py", "tests/test_multipart.py"],
)
def test_pymongoose_own_tests(tmp_path, rel):
    """pymongoose's static-files example tests and its multipart tests, unchanged but for
    the import, pass against the compatibility layer."""
    test = tmp_path / ("test_" + os.path.basename(rel).removeprefix("test_"))
    test.write_text(pymongoose_source(rel))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_drain_before_serving_closes_after_the_file(serving, site):
    """conn.drain() before serve_dir/serve_file: the file, then the connection closes
    (as after a reply)."""

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.drain()
            if data.uri == "/one":
                conn.serve_file(data, str(site / "www" / "notes.txt"))
            else:
                conn.serve_dir(data, root_dir=str(site / "www"))

    at = serving(handler)
    for path in ("/one", "/notes.txt"):
        c = RawClient(at.port)
        try:
            c.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
            status, headers, body = c.read_response()
            assert (status, body) == (200, b"plain notes\n"), path
            assert ("Connection", "close") in headers or ("connection", "close") in headers
            assert c.closed_by_server(), path
        finally:
            c.close()
