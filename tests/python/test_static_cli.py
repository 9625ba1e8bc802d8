"""The command line's --static: a static file server alone, directories in front of a native
or WSGI app (the prefix "/" falls through to the app), the --static-* options, --workers
(mounts in every worker) and --help."""

import re
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import RawClient, wait_for_line

APP = textwrap.dedent("""
    from pymongoose_uring import App

    native = App()

    @native.get("/")
    def home(request):
        return "native home"

    def wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi " + environ["PATH_INFO"].encode()]

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi " + scope["path"].encode()})
""")


@pytest.fixture
def site(tmp_path):
    (tmp_path / "staticapp.py").write_text(APP)
    public = tmp_path / "public"
    public.mkdir()
    (public / "hello.txt").write_bytes(b"hello from disk\n")
    (public / ".secret").write_bytes(b"dot")
    (public / "docs").mkdir()
    (public / "docs" / "a.md").write_bytes(b"# a")
    (public / "app.css").write_bytes(b"body{}" * 100)
    (public / "app.css.gz").write_bytes(b"GZ")
    return tmp_path


def cli(cwd, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "pymongoose_uring", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(cwd),
    )


def port_of(proc):
    line = wait_for_line(proc, "serving on")
    return int(re.search(r"http://[^ ]*:(\d+)", line).group(1))


def stop(proc):
    try:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def get(port, target, headers=()):
    c = RawClient(port)
    try:
        head = "".join("%s: %s\r\n" % h for h in headers)
        c.send(("GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (target, head)).encode())
        status, pairs, body = c.read_response()
        return status, {k.lower(): v for k, v in pairs}, body
    finally:
        c.close()


def test_static_file_server_alone(site):
    proc = cli(
        site,
        "--static",
        "/=public",
        "--static",
        "/files/=public/docs",
        "--static-cache-control",
        "max-age=30",
        "--static-listing",
    )
    try:
        port = port_of(proc)
        status, h, body = get(port, "/hello.txt")
        assert (status, body) == (200, b"hello from disk\n")
        assert h["cache-control"] == "max-age=30" and "etag" in h
        assert get(port, "/files/a.md")[2] == b"# a"
        assert get(port, "/.secret")[0] == 404
        assert get(port, "/../staticapp.py")[0] == 400
        assert get(port, "/nothing")[0] == 404
        status, h, body = get(port, "/docs/")
        assert status == 200 and b"a.md" in body  # --static-listing
        assert get(port, "/app.css", [("Accept-Encoding", "gzip")])[2] == b"GZ"
    finally:
        assert stop(proc) == 0


def test_static_in_front_of_apps(site):
    (site / "public" / "index.html").unlink(missing_ok=True)
    proc = cli(
        site,
        "staticapp:native",
        "--static",
        "/=public",
        "--static-dotfiles",
        "--static-no-precompressed",
    )
    try:
        port = port_of(proc)
        assert get(port, "/hello.txt")[2] == b"hello from disk\n"
        # "/" with an app: what the directory lacks (no index.html here) reaches the app.
        assert get(port, "/")[2] == b"native home"
        assert get(port, "/nope")[0] == 404
        assert get(port, "/.secret")[2] == b"dot"
        assert get(port, "/app.css", [("Accept-Encoding", "gzip")])[2] == b"body{}" * 100
    finally:
        assert stop(proc) == 0
    proc = cli(site, "staticapp:wsgi", "--static", "/assets=public", "--workers", "2")
    try:
        port = port_of(proc)
        # Every worker mounts it: the connections spread over both processes.
        for _ in range(12):
            assert get(port, "/assets/hello.txt")[2] == b"hello from disk\n"
        assert get(port, "/assets/none")[0] == 404  # under a prefix other than "/": no fallthrough
        assert get(port, "/other")[2] == b"wsgi /other"
    finally:
        assert stop(proc) == 0
    proc = cli(site, "staticapp:asgi", "--lifespan", "off", "--static", "/=public")
    try:
        port = port_of(proc)
        assert get(port, "/hello.txt")[2] == b"hello from disk\n"
        assert get(port, "/not-a-file")[2] == b"asgi /not-a-file"  # "/" falls through
    finally:
        assert stop(proc) == 0


def test_static_option_errors_and_help(site):
    out = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring", "--help"],
        capture_output=True,
        text=True,
        cwd=str(site),
    ).stdout
    for option in ("--static URL_PREFIX=DIR", "--static-listing", "--static-dotfiles"):
        assert option in out
    assert "--static-cache-control" in out and "--static-no-precompressed" in out
    for bad in ("public", "/x=missing-dir", "x=public"):
        r = subprocess.run(
            [sys.executable, "-m", "pymongoose_uring", "--static", bad],
            capture_output=True,
            text=True,
            cwd=str(site),
        )
        assert r.returncode == 2 and "--static" in r.stderr, (bad, r.stderr)
    r = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring"], capture_output=True, text=True, cwd=str(site)
    )
    assert r.returncode == 2 and "--static" in r.stderr
