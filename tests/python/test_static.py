"""Static directories from Python: App.static and Server(statics=[StaticMount]) are engine
mounts answered on the ring threads without calling Python. Every HTTP rule of static files
once more from a user's side, over real sockets: traversal in each encoding, symlinks out of
the root, dotfiles, index and the slash redirect, 405, HEAD, ETag/304/412, Range (single,
suffix, open-ended, multiple, 416, If-Range), precompressed siblings with Vary,
Cache-Control, listing, fallthrough to the app. The rules themselves are core/static.c's
(tests/c/test_static*.c test them in C); these prove the binding wires them up."""

import gzip
import os
import re

import pytest

from conftest import RawClient, request
from pymongoose_uring import App, Response, Server, StaticMount, _native

SECRET = b"TOP-SECRET-OUTSIDE"


@pytest.fixture
def tree(tmp_path):
    """tmp/static (the mount's root), tmp/outside and tmp/static1 (must stay unreachable)."""
    root = tmp_path / "static"
    root.mkdir()
    (root / "index.html").write_bytes(b"<h1>root index</h1>")
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    (root / ".env").write_bytes(b"DOTFILE")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"GITCONFIG")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<p>sub index</p>")
    (root / "plain").mkdir()
    (root / "plain" / "a.txt").write_bytes(b"A")
    (root / "plain" / "<b>&.txt").write_bytes(b"B")
    (root / "plain" / ".hidden").write_bytes(b"H")
    js = b"console.log('plain');\n" * 50
    (root / "app.js").write_bytes(js)
    (root / "app.js.gz").write_bytes(gzip.compress(js))
    (root / "app.js.br").write_bytes(b"BROTLI-BYTES-STAND-IN")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    sibling = tmp_path / "static1"
    sibling.mkdir()
    (sibling / "secret.txt").write_bytes(SECRET)
    os.symlink("hello.txt", root / "link_in")  # relative, inside: followed
    os.symlink(root / "hello.txt", root / "link_abs")  # absolute: refused by RESOLVE_BENEATH
    os.symlink(outside / "secret.txt", root / "link_out")
    os.symlink("../outside/secret.txt", root / "link_rel_out")
    return tmp_path


def get(port, target, headers=(), method="GET"):
    """One raw request (the target sent byte for byte): (status, {name: value}, body)."""
    c = RawClient(port)
    try:
        head = "".join("%s: %s\r\n" % h for h in headers)
        c.send(("%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, target, head)).encode("latin-1"))
        status, pairs, body = c.read_response(head=method == "HEAD")
        return status, {k.lower(): v for k, v in pairs}, body
    finally:
        c.close()


def mounted(serve, tree, **kw):
    app = App()
    calls = []

    @app.get("/api")
    def api(request):
        calls.append(request.path)
        return {"api": True}

    def not_found(request):
        calls.append(request.path)
        return Response.text("app 404", 404)

    app.not_found = not_found
    app.static("/static", tree / "static", **kw)
    server = serve(app)
    server.calls = calls
    return server


def test_file_with_validators_and_no_python(serve, tree):
    server = mounted(serve, tree)
    status, h, body = get(server.port, "/static/hello.txt")
    assert status == 200 and body == b"hello, world\n"
    assert h["content-type"].startswith("text/plain")
    assert h["content-length"] == "13"
    assert re.fullmatch(r'"[^"]+"', h["etag"]), h["etag"]
    assert h["last-modified"].endswith("GMT")
    assert server.calls == []  # answered by the engine: the app never ran
    assert get(server.port, "/api")[0] == 200 and server.calls == ["/api"]
    assert server.stats()["static_answers"] >= 1


TRAVERSALS = [
    "/static/../outside/secret.txt",
    "/static/%2e%2e/outside/secret.txt",
    "/static/%2E%2E/outside/secret.txt",
    "/static/.%2e/outside/secret.txt",
    "/static/sub/../../outside/secret.txt",
    "/static/..%2foutside/secret.txt",
    "/static/..%2Foutside%2Fsecret.txt",
    "/static/%252e%252e/outside/secret.txt",
    "/static/%252e%252e%252foutside%252fsecret.txt",
    "/static/..\\outside\\secret.txt",
    "/static/..%5coutside%5csecret.txt",
    "/static/%5c..%5coutside%5csecret.txt",
    "/static/hello.txt%00.png",
    "/static/%00/../outside/secret.txt",
    "/static/%c0%ae%c0%ae/outside/secret.txt",
    "/static/%c0%ae%c0%ae%c0%afoutside%c0%afsecret.txt",
    "/static/....//outside/secret.txt",
    "/static/....//....//outside/secret.txt",
    "/static/../static1/secret.txt",
    "/static%2f..%2fstatic1/secret.txt",
    "/static/link_out",
    "/static/link_rel_out",
    "/static/link_abs/../../outside/secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_never_leaves_the_root(serve, tree, target):
    server = mounted(serve, tree)
    status, h, body = get(server.port, target)
    assert SECRET not in body
    if target.startswith("/static/"):
        # Refused by the mount itself (400 for a malformed path, 404 for a miss), never
        # handed to the app.
        assert status in (400, 404), (target, status, body)
        assert server.calls == [], (target, server.calls)
    else:
        assert status in (400, 404)


def test_dotdot_segment_is_400_and_symlinks(serve, tree):
    server = mounted(serve, tree)
    assert get(server.port, "/static/../outside/secret.txt")[0] == 400
    assert get(server.port, "/static/%2e%2e/outside/secret.txt")[0] == 400
    assert get(server.port, "/static/..%2fx")[0] == 400
    # A symlink that stays inside the root is followed by default; one leading out is 404.
    assert get(server.port, "/static/link_in")[2] == b"hello, world\n"
    assert get(server.port, "/static/link_out")[0] == 404


def test_follow_symlinks_off(serve, tree):
    server = mounted(serve, tree, follow_symlinks=False)
    assert get(server.port, "/static/link_in")[0] == 404
    assert get(server.port, "/static/hello.txt")[0] == 200


def test_dotfiles(serve, tree):
    server = mounted(serve, tree)
    for target in ("/static/.env", "/static/.git/config", "/static/%2eenv"):
        status, _, body = get(server.port, target)
        assert status == 404 and body not in (b"DOTFILE", b"GITCONFIG"), target
    other = serve(_app_with(tree, dotfiles=True))
    assert get(other.port, "/static/.env")[2] == b"DOTFILE"


def _app_with(tree, prefix="/static", **kw):
    app = App()
    app.static(prefix, tree / "static", **kw)
    return app


def test_index_and_slash_redirect(serve, tree):
    server = mounted(serve, tree)
    status, h, body = get(server.port, "/static/sub?x=1&y=2")
    assert status == 301
    assert h["location"] == "/static/sub/?x=1&y=2"
    assert get(server.port, "/static/sub/")[2] == b"<p>sub index</p>"
    assert get(server.port, "/static/")[2] == b"<h1>root index</h1>"
    assert get(server.port, "/static")[0] == 301
    # index=None: a directory has no index file (and no listing): 404.
    other = serve(_app_with(tree, index=None))
    assert get(other.port, "/static/sub/")[0] == 404


def test_405_and_head(serve, tree):
    server = mounted(serve, tree)
    for method in ("POST", "PUT", "DELETE"):
        status, h, _ = get(server.port, "/static/hello.txt", method=method)
        assert status == 405 and h["allow"] == "GET, HEAD", method
    status, h, body = get(server.port, "/static/hello.txt", method="HEAD")
    assert status == 200 and body == b"" and h["content-length"] == "13"
    _, full, _ = get(server.port, "/static/hello.txt")
    assert h["etag"] == full["etag"]


def test_conditionals(serve, tree):
    server = mounted(serve, tree)
    _, h, _ = get(server.port, "/static/hello.txt")
    etag, modified = h["etag"], h["last-modified"]
    status, h304, body = get(server.port, "/static/hello.txt", [("If-None-Match", etag)])
    assert status == 304 and body == b"" and h304["etag"] == etag
    assert get(server.port, "/static/hello.txt", [("If-None-Match", '"nope", ' + etag)])[0] == 304
    assert get(server.port, "/static/hello.txt", [("If-None-Match", '"nope"')])[0] == 200
    assert get(server.port, "/static/hello.txt", [("If-Modified-Since", modified)])[0] == 304
    old = "Mon, 01 Jan 1990 00:00:00 GMT"
    assert get(server.port, "/static/hello.txt", [("If-Modified-Since", old)])[0] == 200
    assert get(server.port, "/static/hello.txt", [("If-Match", '"nope"')])[0] == 412
    assert get(server.port, "/static/hello.txt", [("If-Match", etag)])[0] == 200
    assert get(server.port, "/static/hello.txt", [("If-Unmodified-Since", old)])[0] == 412
    assert server.stats()["not_modified"] >= 3


def parse_multipart(h, body):
    m = re.search(r"boundary=(\S+)", h["content-type"])
    boundary = m.group(1).strip('"').encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        cr = re.search(rb"Content-Range: bytes (\d+)-(\d+)/(\d+)", head, re.I)
        parts.append(((int(cr.group(1)), int(cr.group(2))), data[:-2]))
    return parts


def test_ranges(serve, tree):
    server = mounted(serve, tree)
    data = (tree / "static" / "data.bin").read_bytes()
    size = len(data)
    status, h, body = get(server.port, "/static/data.bin", [("Range", "bytes=10-19")])
    assert status == 206 and body == data[10:20]
    assert h["content-range"] == "bytes 10-19/%d" % size
    status, h, body = get(server.port, "/static/data.bin", [("Range", "bytes=-100")])
    assert status == 206 and body == data[-100:]
    status, h, body = get(server.port, "/static/data.bin", [("Range", "bytes=10000-")])
    assert status == 206 and body == data[10000:]
    status, h, body = get(server.port, "/static/data.bin", [("Range", "bytes=0-4,100-104")])
    assert status == 206 and h["content-type"].startswith("multipart/byteranges")
    assert parse_multipart(h, body) == [((0, 4), data[0:5]), ((100, 104), data[100:105])]
    status, h, body = get(server.port, "/static/data.bin", [("Range", "bytes=99999-")])
    assert status == 416 and h["content-range"] == "bytes */%d" % size
    # If-Range: the range only while the validator still matches.
    _, full, _ = get(server.port, "/static/data.bin")
    ranged = [("Range", "bytes=0-9"), ("If-Range", full["etag"])]
    assert get(server.port, "/static/data.bin", ranged)[2] == data[:10]
    stale = [("Range", "bytes=0-9"), ("If-Range", '"stale"')]
    status, _, body = get(server.port, "/static/data.bin", stale)
    assert status == 200 and body == data


def test_many_overlapping_ranges_do_not_amplify(serve, tree):
    server = mounted(serve, tree)
    size = (tree / "static" / "data.bin").stat().st_size
    spec = "bytes=" + ",".join("0-%d" % (size - 1) for _ in range(200))
    status, h, body = get(server.port, "/static/data.bin", [("Range", spec)])
    # Coalesced, ignored (200) or refused: never 200 copies of the file.
    assert len(body) < 3 * size, (status, len(body))


def test_precompressed_siblings(serve, tree):
    server = mounted(serve, tree)
    plain = (tree / "static" / "app.js").read_bytes()
    status, h, body = get(server.port, "/static/app.js", [("Accept-Encoding", "gzip")])
    assert status == 200 and h["content-encoding"] == "gzip"
    assert gzip.decompress(body) == plain
    assert "accept-encoding" in h["vary"].lower()
    assert h["content-type"].startswith(("application/javascript", "text/javascript"))
    status, h, body = get(server.port, "/static/app.js", [("Accept-Encoding", "gzip, br")])
    assert h["content-encoding"] == "br" and body == b"BROTLI-BYTES-STAND-IN"
    status, h, body = get(server.port, "/static/app.js", [("Accept-Encoding", "br;q=0, gzip")])
    assert h["content-encoding"] == "gzip"
    status, h, body = get(server.port, "/static/app.js")
    assert "content-encoding" not in h and body == plain
    assert "accept-encoding" in h["vary"].lower()
    other = serve(_app_with(tree, precompressed=False))
    status, h, body = get(other.port, "/static/app.js", [("Accept-Encoding", "gzip, br")])
    assert "content-encoding" not in h and body == plain


def test_cache_control_and_headers(serve, tree):
    mount = StaticMount(
        "/s/", tree / "static", cache_control="public, max-age=60", headers={"X-Mount": "yes"}
    )
    assert mount.prefix == "/s" and mount.cache_control == "public, max-age=60"
    assert mount.headers == (("X-Mount", "yes"),)
    server = serve(lambda r: "app", statics=[mount])
    status, h, body = get(server.port, "/s/hello.txt")
    assert status == 200 and h["cache-control"] == "public, max-age=60"
    assert h["x-mount"] == "yes"
    assert get(server.port, "/other")[2] == b"app"


def test_listing(serve, tree):
    server = mounted(serve, tree)
    assert get(server.port, "/static/plain/")[0] == 404
    other = serve(_app_with(tree, listing=True))
    status, h, body = get(other.port, "/static/plain/")
    assert status == 200 and h["content-type"].startswith("text/html")
    text = body.decode()
    assert "a.txt" in text
    assert "<b>&.txt" not in text and "&lt;b&gt;&amp;.txt" in text
    assert ".hidden" not in text


def test_fallthrough_at_root_reaches_the_app(serve, tree):
    app = App()

    @app.get("/api")
    def api(request):
        return {"api": True}

    app.static("/", tree / "static", fallthrough=True)
    server = serve(app)
    assert get(server.port, "/hello.txt")[2] == b"hello, world\n"
    assert get(server.port, "/")[2] == b"<h1>root index</h1>"
    assert get(server.port, "/api")[2] == b'{"api":true}'
    status, _, body = get(server.port, "/missing")
    assert status == 404 and body == b"Not Found"  # the App's own 404


def test_longest_prefix_wins(serve, tree):
    app = App()
    app.static("/", tree / "outside")
    app.static("/static", tree / "static")
    server = serve(app)
    assert get(server.port, "/static/hello.txt")[2] == b"hello, world\n"
    assert get(server.port, "/secret.txt")[2] == SECRET


def test_mount_validation(tree):
    with pytest.raises(FileNotFoundError):
        StaticMount("/x", tree / "nope")
    with pytest.raises(NotADirectoryError):
        StaticMount("/x", tree / "static" / "hello.txt")
    with pytest.raises(ValueError):
        StaticMount("x", tree / "static")
    with pytest.raises(ValueError):
        StaticMount("/x", tree / "static", cache_control="a\r\nb")
    with pytest.raises(TypeError):
        StaticMount("/x", tree / "static", headers=5)
    app = App()
    with pytest.raises(FileNotFoundError):
        app.static("/x", tree / "nope")
    with pytest.raises(NotADirectoryError):
        app.static("/x", tree / "static" / "hello.txt")
    with pytest.raises(TypeError):
        Server(lambda r: "x", port=0, statics=["/x"])
    with pytest.raises(TypeError):
        _native._pmu.Engine(lambda r: "x", statics=[StaticMount("/x", tree / "static"), 1])
    m = StaticMount("/", str(tree / "static"), index="", dotfiles=True, mime_types={"txt": "a/b"})
    assert (m.prefix, m.index, m.dotfiles, m.listing, m.fallthrough) == (
        "/",
        "",
        True,
        False,
        False,
    )
    assert m.mime_types == "txt=a/b" and m.root == str(tree / "static")


def test_mime_types_override(serve, tree):
    mount = StaticMount("/", tree / "static", mime_types="txt=text/x-custom")
    server = serve(lambda r: "app", statics=[mount])
    assert get(server.port, "/hello.txt")[1]["content-type"].startswith("text/x-custom")


def test_http_client_view(serve, tree):
    # The same through http.client, as an ordinary user would fetch it.
    server = mounted(serve, tree)
    status, h, body, _ = request(server, path="/static/data.bin", headers={"Range": "bytes=1-2"})
    assert status == 206 and body == bytes([1, 2])
