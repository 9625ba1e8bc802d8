"""Shared fixtures for the Python tests: real servers on 127.0.0.1, port 0.

Every test that needs io_uring is skipped, with the reason, where the kernel
refuses it; the tests of the unavailable path run everywhere.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import pymongoose_uring as pmu

PROBE = pmu.probe()
needs_uring = pytest.mark.skipif(
    not PROBE["available"], reason="io_uring unavailable: %s" % PROBE["message"]
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "no_uring_ok" not in item.keywords:
            item.add_marker(needs_uring)


def pytest_configure(config):
    config.addinivalue_line("markers", "no_uring_ok: runs without io_uring")
    # Started in the background by a shell without job control, this process
    # ignores SIGINT, and so would the scripts the tests interrupt with it
    # (Python turns SIGINT into KeyboardInterrupt only where it is not
    # ignored). A handler here becomes the default again in each child.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _serving(factory):
    """The body of every serve fixture: start(app, **options) -> a started server of
    `factory` on 127.0.0.1:<free port>; every server is stopped at the end."""
    servers = []

    def start(app, **options):
        options.setdefault("port", 0)
        server = factory(app, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=30)


@pytest.fixture
def serve():
    """serve(app, **options) -> a started Server on 127.0.0.1:<free port>."""
    yield from _serving(pmu.Server)


@pytest.fixture
def serve_asgi():
    """serve_asgi(app, **options) -> a started ASGIServer on 127.0.0.1:<free port>."""
    from pymongoose_uring.asgi import ASGIServer

    yield from _serving(ASGIServer)


@pytest.fixture
def serve_wsgi():
    """serve_wsgi(app, **options) -> a started WSGIServer on 127.0.0.1:<free port>."""
    from pymongoose_uring.wsgi import WSGIServer

    yield from _serving(WSGIServer)


def files_sent(server):
    return server.stats()["files_sent"]


def check_engine_sent(server, before, pieces):
    """`pieces` more file pieces were completed by the engine since files_sent() was
    `before` (the bytes did not go through Python)."""
    # (counted when the send completes: the client may see the bytes first)
    wait_until(lambda: files_sent(server) - before >= pieces, what="files_sent")
    assert files_sent(server) - before == pieces


@pytest.fixture
def file_tree(tmp_path):
    """A directory with a 16 KiB file, a 3 MiB one (random bytes: any offset error
    shows), a small page and an empty file."""
    rnd = os.urandom(3 << 20)
    (tmp_path / "small.bin").write_bytes(rnd[: 16 << 10])
    (tmp_path / "big.bin").write_bytes(rnd)
    (tmp_path / "page.html").write_bytes(b"<h1>hello</h1>\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    return tmp_path


@pytest.fixture
def polled_manager():
    """polled_manager(handler) -> (manager, listener): a compat Manager listening for
    HTTP on 127.0.0.1:<free port>, polled by a thread until the test ends."""
    from pymongoose_uring.compat import Manager

    running = []

    def start(handler):
        manager = Manager(handler)
        listener = manager.listen("http://127.0.0.1:0", http=True)
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                manager.poll(50)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        running.append((manager, stop, thread))
        return manager, listener

    yield start
    for manager, stop, thread in running:
        stop.set()
        thread.join(5)
        manager.close()


def check_no_descriptor_left(server, answers, n=200):
    """n GETs on one keep-alive connection, cycling through `answers` ((target, body
    length) pairs), each a 200 of that length; then the process's descriptor count
    must come back to what it was before them (after one request to warm up)."""
    request(server, path=answers[0][0])
    before = len(os.listdir("/proc/self/fd"))
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for i in range(n):
            target, length = answers[i % len(answers)]
            c.request("GET", target)
            r = c.getresponse()
            assert (r.status, len(r.read())) == (200, length), target
    finally:
        c.close()
    wait_until(lambda: len(os.listdir("/proc/self/fd")) <= before, what="the descriptors closed")


def check_confined(server, prefix, root):
    """A file beside `root` cannot be reached as PREFIX/../NAME nor PREFIX/%2e%2e/NAME:
    each answer is 404 without its bytes."""
    secret = root.parent / ("confined-secret-%d" % os.getpid())
    secret.write_text("secret")
    try:
        for path in (prefix + "/../" + secret.name, prefix + "/%2e%2e/" + secret.name):
            status, _, body, _ = request(server, path=path)
            assert status == 404 and b"secret" not in body, path
    finally:
        secret.unlink()


def wait_until(condition, timeout=10.0, what="condition"):
    """Poll condition() until it is true, failing after timeout seconds: a wait on
    an event that fails only when the event never comes (a loaded machine makes it
    later, not false). Returns condition()'s last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "%s not met within %.1f s" % (what, timeout)
        time.sleep(0.005)


def request(server, method="GET", path="/", body=None, headers=None, timeout=10):
    """One request with http.client: (status, {lower-name: value}, body, response)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, resp
    finally:
        conn.close()


def get_json(server, path="/", **kw):
    status, headers, body, _ = request(server, path=path, **kw)
    assert status == 200, (status, body)
    return json.loads(body)


def recv_until_closed(sock):
    """Every byte the server sends on `sock` until it closes (within the socket's
    timeout)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def read_closed(port, raw, source=None):
    """Send the bytes `raw` on a fresh connection (from the address `source`, when
    given) and read until the server closes:
    -> (status, {lower-name: value}, body bytes as sent)."""
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0) if source else None
    )
    try:
        sock.sendall(raw)
        data = recv_until_closed(sock)
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def fetch_closed(port, extra=b""):
    """GET / (and `extra` pipelined behind it), read until the server closes:
    -> (status, {lower-name: value}, body bytes as sent)."""
    return read_closed(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" + extra)


# A second request to pipeline behind one whose answer fails half-way.
BEHIND = b"GET /behind HTTP/1.1\r\nHost: t\r\n\r\n"


class RawClient:
    """A raw socket speaking HTTP/1.1, for pipelining and odd requests."""

    def __init__(self, port, family=socket.AF_INET, address=None, timeout=10):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address or ("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buf += chunk

    def read_response(self, head=False):
        """-> (status, [(name, value)], body)"""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        length = (
            0 if head else int(dict((k.lower(), v) for k, v in headers).get("content-length", 0))
        )
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_server(self):
        """True when the server closes the connection (reads EOF)."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, socket.timeout):
            return False

    def close(self):
        self.sock.close()


def raw_get(port, target, headers=(), method="GET"):
    """One request on a fresh RawClient, the target sent byte for byte (latin-1):
    (status, {lower-name: value}, body). headers: (name, value) pairs."""
    c = RawClient(port)
    try:
        head = "".join("%s: %s\r\n" % h for h in headers)
        c.send(("%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, target, head)).encode("latin-1"))
        status, pairs, body = c.read_response(head=method == "HEAD")
        return status, {k.lower(): v for k, v in pairs}, body
    finally:
        c.close()


def wait_for_line(proc, prefix, timeout=20):
    """Read the subprocess's stderr until a line containing prefix; return it."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if prefix in line:
            return line
    raise AssertionError("no %r from the subprocess; it wrote:\n%s" % (prefix, "".join(lines)))


def run_cli(cwd, *args):
    """python -m pymongoose_uring ARGS in cwd, its stdout and stderr pipes of text."""
    return subprocess.Popen(
        [sys.executable, "-m", "pymongoose_uring", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(cwd),
    )


class At:
    """What request() needs of a server (its port), for one running in another process:
    ``request(At(port_of(proc)))``."""

    def __init__(self, port):
        self.port = port


def port_of(proc):
    """The port of the "serving on http://HOST:PORT" line the process writes."""
    line = wait_for_line(proc, "serving on")
    return int(re.search(r"http://[^ ]*:(\d+)", line).group(1))


def stop_process(proc, sig=signal.SIGTERM):
    """Send sig and wait (30 s) for the process to exit, killing it if it does not:
    -> (stdout, stderr); the exit status is proc.returncode."""
    try:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out, err


def run_script(script, *args, cwd, timeout=60):
    """Run the Python source `script` with `args` in a subprocess of this interpreter,
    in cwd; fails with its stderr unless it exits 0. -> its stdout, as lines."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def spawn(script, *args, env=None):
    """Run a Python script in a subprocess with this interpreter."""
    e = dict(os.environ)
    e.update(env or {})
    # cwd elsewhere: from the checkout's root, "import pymongoose_uring" would
    # find the source tree (no compiled extension) before the installed package.
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=e,
        cwd=tempfile.gettempdir(),
    )
