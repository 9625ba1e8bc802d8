"""Uploads to WSGI and ASGI apps: a Flask and a FastAPI app take multipart file uploads of
1 MiB and more with the servers' defaults (no body cap, as gunicorn/uvicorn/granian), the
bytes checked by SHA-256 over a real socket; a 64 MiB body streams through a raw app with
the engine's buffered bodies and the process's memory staying bounded; max_body_bytes=N
still answers 413. The apps are benchmarks/upload_check.py's, which runs the same upload on
gunicorn and uvicorn."""

import hashlib
import http.client
import os
import sys
import threading

import pytest

from conftest import request, wait_until
from pymongoose_uring.asgi import ASGIServer
from pymongoose_uring.wsgi import WSGIServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import upload_check  # noqa: E402


def need(app, what):
    if app is None:
        pytest.skip("%s is not installed (tools/test-requirements.txt lists it)" % what)
    return app


@pytest.mark.parametrize("size", [1 << 20, 16 << 20 | 12345])
def test_flask_multipart_upload(size):
    app = need(upload_check.flask_app, "flask")
    data = os.urandom(size)
    with WSGIServer(app, port=0) as server:
        status, answer = upload_check.upload(server.port, data)
        assert upload_check.verdict(status, answer, data) == "ok", (status, answer)
        # The connection stays usable: a second upload on a fresh one works too.
        status, answer = upload_check.upload(server.port, data[:1000], filename="b.bin")
        assert status == 200 and answer["size"] == 1000


@pytest.mark.parametrize("size", [1 << 20, 16 << 20 | 12345])
def test_fastapi_multipart_upload(size):
    app = need(upload_check.fastapi_app, "fastapi and python-multipart")
    data = os.urandom(size)
    with ASGIServer(app, port=0) as server:
        status, answer = upload_check.upload(server.port, data)
        assert upload_check.verdict(status, answer, data) == "ok", (status, answer)


def test_adapter_defaults_follow_the_peers():
    """No body cap and streaming above 64 KiB for WSGI/ASGI apps unless given; the native
    API keeps its 1 MiB cap; a value given is kept."""
    from pymongoose_uring import Server

    def wsgi(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    async def asgi(scope, receive, send):
        pass

    for server in (WSGIServer(wsgi, port=0), ASGIServer(asgi, port=0, lifespan="off")):
        assert server.config["max_body_bytes"] == 0
        assert server.config["stream_body_threshold"] == 64 * 1024
    server = WSGIServer(wsgi, port=0, max_body_bytes=5000, stream_body_threshold=0)
    assert server.config["max_body_bytes"] == 5000
    assert server.config["stream_body_threshold"] == 0
    assert Server(lambda r: None, port=0).config["max_body_bytes"] == 1 << 20


def _pattern(total, piece=1 << 20):
    """`total` deterministic bytes in pieces of `piece`, and their SHA-256."""
    block = hashlib.sha256(b"pmu-upload").digest() * (piece // 32)
    pieces = []
    left = total
    digest = hashlib.sha256()
    while left:
        p = block[: min(piece, left)]
        digest.update(p)
        pieces.append(p)
        left -= len(p)
    return pieces, digest.hexdigest()


def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _stream_upload(server, total):
    """POST `total` bytes (sent piece by piece, never held whole) while sampling the
    engine's buffered-body gauge and this process's RSS: -> (status, body, peak buffered
    bytes, RSS growth, bodies spooled meanwhile)."""
    pieces, digest = _pattern(total)
    spooled = server.stats()["bodies_spooled"]
    base = _rss()
    peaks = {"buffered": 0, "rss": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peaks["buffered"] = max(peaks["buffered"], server.stats()["body_buffer_bytes"])
            peaks["rss"] = max(peaks["rss"], _rss() - base)
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(total))
        conn.endheaders()
        for i in range(total >> 20):  # the same 1 MiB block, sent again and again
            conn.send(pieces[i])
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    finally:
        done.set()
        sampler.join()
    assert body.decode().endswith(digest), (resp.status, body)
    return (
        resp.status,
        body,
        peaks["buffered"],
        peaks["rss"],
        (server.stats()["bodies_spooled"] - spooled),
    )


def _wsgi_hasher(environ, start_response):
    digest = hashlib.sha256()
    n = 0
    stream = environ["wsgi.input"]
    while chunk := stream.read(1 << 16):
        digest.update(chunk)
        n += len(chunk)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d %s" % (n, digest.hexdigest().encode())]


async def _asgi_hasher(scope, receive, send):
    if scope["type"] != "http":
        return
    digest = hashlib.sha256()
    n = 0
    more = True
    while more:
        message = await receive()
        assert message["type"] == "http.request"
        digest.update(message["body"])
        n += len(message["body"])
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d %s" % (n, digest.hexdigest().encode())})


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_64_mib_body_streams_in_bounded_memory(kind):
    """A 64 MiB body reaches the app whole (SHA-256), streamed: the engine never holds
    more than a few MiB of it, spools none of it, and the process grows far less than
    the body (the client sends the same 1 MiB block, so it holds no copy either)."""
    total = 64 << 20
    if kind == "wsgi":
        server = WSGIServer(_wsgi_hasher, port=0)
    else:
        server = ASGIServer(_asgi_hasher, port=0, lifespan="off")
    with server:
        status, body, buffered, grown, spooled = _stream_upload(server, total)
        assert status == 200 and body.startswith(b"%d " % total)
        assert buffered <= 8 << 20, buffered
        assert spooled == 0
        assert grown < 32 << 20, grown
        wait_until(lambda: server.stats()["body_buffer_bytes"] == 0, what="buffers released")


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_max_body_bytes_still_answers_413(kind):
    """max_body_bytes=N keeps the cap: a declared body over it gets 413 before the app
    runs, one at it reaches the app; a chunked body (no length declared) that grows past
    it never reaches the app whole: 413 while the app has not seen it, else the
    connection is closed under the app, which sees the body cut short."""
    limit = 256 * 1024
    seen = []

    def wsgi(environ, start_response):
        seen.append(environ.get("CONTENT_LENGTH"))
        return _wsgi_hasher(environ, start_response)

    async def asgi(scope, receive, send):
        seen.append(scope["method"])
        await _asgi_hasher(scope, receive, send)

    if kind == "wsgi":
        server = WSGIServer(wsgi, port=0, max_body_bytes=limit)
    else:
        server = ASGIServer(asgi, port=0, lifespan="off", max_body_bytes=limit)
    with server:
        status, _, body, _ = request(server, "POST", "/", body=b"a" * limit)
        assert status == 200 and body.startswith(b"%d " % limit)
        del seen[:]
        assert request(server, "POST", "/", body=b"a" * (limit + 1))[0] == 413
        assert seen == []  # refused from the head: the app never ran

        def chunks():
            for _ in range(8):
                yield b"b" * 65536

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("POST", "/", body=chunks(), encode_chunked=True)
            assert conn.getresponse().status == 413
        except (ConnectionError, http.client.HTTPException):
            pass  # closed under the app: no answer
        finally:
            conn.close()


def test_cli_wsgi_app_takes_a_body_over_the_native_cap(tmp_path):
    """Through the command line too (which passes only the knobs given to it): a 3 MiB
    body reaches a WSGI app whole, where the native API's 1 MiB cap would answer 413."""
    from conftest import port_of, run_cli, stop_process

    (tmp_path / "uploadapp.py").write_text(
        "import hashlib\n"
        "def app(environ, start_response):\n"
        "    data = environ['wsgi.input'].read()\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'%d %s' % (len(data), hashlib.sha256(data).hexdigest().encode())]\n"
    )
    proc = run_cli(tmp_path, "uploadapp:app", "--port", "0")
    try:
        port = port_of(proc)
        data = os.urandom(3 << 20)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/", body=data)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == 200, body
        assert body == b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
    finally:
        stop_process(proc)
