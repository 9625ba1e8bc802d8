"""The command line: interface detection, --help, native/WSGI/ASGI apps from
MODULE:APP, --uds, --access-log, and --workers (supervised processes)."""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import At, RawClient, port_of, request, run_cli, stop_process as stop, wait_for_line
from pymongoose_uring._adapter import detect_interface

APPS = textwrap.dedent("""
    import os
    from pymongoose_uring import App

    native = App()

    @native.get("/")
    def hello(request):
        return {"interface": "native", "pid": os.getpid()}

    def handler(request):
        return "plain handler"

    def wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi %d" % os.getpid()]

    events = []

    async def asgi(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    print("LIFESPAN startup", flush=True)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    print("LIFESPAN shutdown", flush=True)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi %d" % os.getpid()})

    class Nested:
        app = wsgi

    async def wsapp(scope, receive, send):
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"http scope"})
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                import sys

                print("DISCONNECT", message["code"], file=sys.stderr, flush=True)
                return
            await send({"type": "websocket.send", "bytes": message["bytes"]})
""")


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "cliapps.py").write_text(APPS)
    return tmp_path


class Lines:
    """Reads a subprocess's stderr on a thread, keeping every line, to wait for patterns
    in any order without ever blocking past the timeout."""

    def __init__(self, proc):
        import queue
        import threading

        self.proc = proc
        self.lines = []
        self.queue = queue.Queue()

        def pump():
            for line in proc.stderr:
                self.queue.put(line)
            self.queue.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self.eof = False

    def wait(self, text, count=1, timeout=30):
        import queue

        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines if text in line]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError(
                    "no %d lines with %r; got:\n%s" % (count, text, "".join(self.lines))
                )
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.eof = True
            else:
                self.lines.append(line)

    def rest(self):
        """Every line once the process has exited."""
        while not self.eof:
            line = self.queue.get(timeout=30)
            if line is None:
                self.eof = True
            else:
                self.lines.append(line)
        return "".join(self.lines)


def pids(lines):
    return [int(re.search(r"pid (\d+)", line).group(1)) for line in lines]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- detection (no server needed) --------------------------------------------------------


@pytest.mark.no_uring_ok
def test_detect_interface():
    from pymongoose_uring import App

    def wsgi(environ, start_response):
        pass

    async def asgi(scope, receive, send):
        pass

    def native(request):
        pass

    async def native_async(request):
        pass

    class WsgiClass:
        def __call__(self, environ, start_response):
            pass

    class AsgiClass:
        async def __call__(self, scope, receive, send):
            pass

    assert detect_interface(App()) == "native"
    assert detect_interface(native) == "native"
    assert detect_interface(native_async) == "native"
    assert detect_interface(wsgi) == "wsgi"
    assert detect_interface(asgi) == "asgi"
    assert detect_interface(WsgiClass()) == "wsgi"
    assert detect_interface(AsgiClass()) == "asgi"
    with pytest.raises(ValueError):
        detect_interface(42)


@pytest.mark.no_uring_ok
def test_detect_real_frameworks():
    flask = pytest.importorskip("flask")
    fastapi = pytest.importorskip("fastapi")
    assert detect_interface(flask.Flask("x")) == "wsgi"
    assert detect_interface(fastapi.FastAPI()) == "asgi"


@pytest.mark.no_uring_ok
def test_help_documents_the_options():
    out = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    for option in (
        "--interface",
        "--host",
        "--port",
        "--uds",
        "--threads",
        "--workers",
        "--access-log",
        "--pool-threads",
        "--lifespan",
        "--loop",
        "--probe",
        "--hello",
    ):
        assert option in out.stdout, option


def test_version():
    import platform

    import pymongoose_uring
    from pymongoose_uring import _native

    out = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"pymongoose_uring {pymongoose_uring.__version__} "
        f"(engine {_native._pmu.ENGINE_VERSION}) with {platform.python_implementation()} "
        f"{platform.python_version()} on {platform.system()} {platform.release()}"
    )


def test_help_lists_every_engine_knob():
    import pymongoose_uring

    out = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    from pymongoose_uring.cli.config import CONNECTION_HANDLER_KNOBS

    for knob in pymongoose_uring.config_defaults():
        if knob in ("host", "port", "unix_path", "threads") or knob in CONNECTION_HANDLER_KNOBS:
            continue
        assert "--" + knob.replace("_", "-") in out.stdout, knob


# ---- serving -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,interface,expect",
    [
        ("cliapps:native", None, b'"interface":"native"'),
        ("cliapps:handler", None, b"plain handler"),
        ("cliapps:wsgi", None, b"wsgi "),
        ("cliapps:Nested.app", "wsgi", b"wsgi "),
        ("cliapps:asgi", None, b"asgi "),
        ("cliapps:asgi", "asgi", b"asgi "),
    ],
)
def test_serves_each_interface(app_dir, target, interface, expect):
    args = [target, "--port", "0", "--batch-max", "32"]
    if interface:
        args += ["--interface", interface]
    proc = run_cli(app_dir, *args)
    try:
        port = port_of(proc)
        status, _, body, _ = request(At(port))
        assert status == 200 and expect in body
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0, err
    if target == "cliapps:asgi":
        assert "LIFESPAN startup" in out and "LIFESPAN shutdown" in out


def test_access_log(app_dir):
    proc = run_cli(app_dir, "cliapps:wsgi", "--port", "0", "--access-log")
    try:
        port = port_of(proc)
        request(At(port), path="/logged?x=1")
    finally:
        out, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert re.search(r'"GET /logged\?x=1 HTTP/1.1" 200', err), err


def test_unix_socket(app_dir, tmp_path):
    path = str(tmp_path / "cli.sock")
    proc = run_cli(app_dir, "cliapps:wsgi", "--uds", path)
    try:
        wait_for_line(proc, "serving on")
        c = RawClient(0, family=socket.AF_UNIX, address=path)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = c.read_response()
        c.close()
        assert status == 200 and body.startswith(b"wsgi ")
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_bad_app_exits_nonzero(app_dir):
    out = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring", "nosuchmodule:app", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(app_dir),
    )
    assert out.returncode != 0
    assert "nosuchmodule" in out.stderr


def stop_supervisor(proc, lines):
    """SIGTERM, then every line once it exited (which must be cleanly)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = lines.rest()
    assert proc.returncode == 0, err
    assert "all workers stopped" in err
    return err


def test_workers_share_a_port_the_kernel_picked(app_dir):
    proc = run_cli(app_dir, "cliapps:wsgi", "--port", "0", "--workers", "2")
    lines = Lines(proc)
    try:
        where = lines.wait("supervising 2 workers on http://127.0.0.1:")[0]
        port = int(re.search(r":(\d+) ", where).group(1))
        started = pids(lines.wait("started (pid", 2))
        lines.wait("serving on", 2)
        seen = set()
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            pid = _get_pid(port)
            assert pid is not None
            seen.add(pid)
        assert seen == set(started)
    finally:
        stop_supervisor(proc, lines)


def test_workers_share_a_unix_socket(app_dir, tmp_path):
    path = str(tmp_path / "workers.sock")
    proc = run_cli(app_dir, "cliapps:wsgi", "--uds", path, "--workers", "2")
    lines = Lines(proc)
    try:
        lines.wait("supervising 2 workers on unix:" + path)
        started = pids(lines.wait("started (pid", 2))
        lines.wait("serving on unix:", 2)
        # One queue for all, taken from in turn.
        seen = set()
        for _ in range(20):
            c = RawClient(0, family=socket.AF_UNIX, address=path)
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, body = c.read_response()
            c.close()
            assert status == 200
            seen.add(int(body.split()[-1]))
        assert seen == set(started)
    finally:
        stop_supervisor(proc, lines)
    assert not os.path.exists(path)


def test_max_requests_replaces_workers_without_losing_a_request(app_dir):
    port = free_port()
    proc = run_cli(
        app_dir,
        "cliapps:wsgi",
        "--port",
        str(port),
        "--workers",
        "2",
        "--max-requests",
        "25",
        "--max-requests-jitter",
        "5",
    )
    lines = Lines(proc)
    answered_by = set()
    try:
        lines.wait("serving on", 2)
        # A new connection each, until workers were replaced a few times: none may
        # be refused or reset.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for _ in range(50):
                pid = _get_pid(port)
                assert pid is not None, "a request failed"
                answered_by.add(pid)
            try:
                lines.wait("worker 1 started", 2, timeout=0.001)
                lines.wait("worker 0 started", 2, timeout=0.001)
                lines.wait("replacing it", 4, timeout=0.001)
                break
            except AssertionError:
                continue
    finally:
        err = stop_supervisor(proc, lines)
    replaced = re.findall(r"served (\d+) requests \(--max-requests (\d+)\); replacing it", err)
    assert len(replaced) >= 4, err
    for served, limit in replaced:
        assert 25 <= int(limit) <= 30 and int(served) >= int(limit)
    assert len(answered_by) >= 4  # replacements answered too
    assert "restarting" not in err  # a replacement is not a crash


def _exited(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] == "Z"  # a zombie until its parent reaps it
    except FileNotFoundError:
        return True


VERSIONED_APP = textwrap.dedent("""
    import os
    VERSION = open(os.path.join(os.path.dirname(__file__), "version.txt")).read().strip()
    if VERSION == "broken":
        raise RuntimeError("this version does not load")

    def wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%s %d" % (VERSION.encode(), os.getpid())]
""")


def test_sighup_replaces_the_workers_with_new_code_refusing_nothing(app_dir):
    import threading

    (app_dir / "versioned.py").write_text(VERSIONED_APP)
    (app_dir / "version.txt").write_text("v1")
    port = free_port()
    proc = run_cli(app_dir, "versioned:wsgi", "--port", str(port), "--workers", "2")
    lines = Lines(proc)
    answers, failures, stop_load = [], [], threading.Event()

    def load():  # a new connection each, all the time
        while not stop_load.is_set():
            try:
                status, _, body, _ = request(At(port), timeout=5)
                answers.append(body.split())
            except Exception as exc:
                failures.append(repr(exc))

    try:
        lines.wait("serving on", 2)
        old = set(pids(lines.wait("started (pid", 2)))
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        (app_dir / "version.txt").write_text("v2")
        proc.send_signal(signal.SIGHUP)
        lines.wait("reload done", 1)
        time.sleep(0.3)
        stop_load.set()
        for t in threads:
            t.join(10)
        new = set(pids(lines.wait("started (pid", 4))) - old
        assert len(new) == 2
        status, _, body, _ = request(At(port))
        version, pid = body.split()
        assert version == b"v2" and int(pid) in new
    finally:
        stop_load.set()
        err = stop_supervisor(proc, lines)
    assert failures == [], failures[:3]
    assert {a[0] for a in answers} == {b"v1", b"v2"}
    assert "SIGHUP received; replacing the 2 workers one by one" in err
    for pid in old:  # the old workers stopped
        assert _exited(pid)


def test_sighup_with_code_that_does_not_load_keeps_the_workers(app_dir):
    (app_dir / "versioned.py").write_text(VERSIONED_APP)
    (app_dir / "version.txt").write_text("v1")
    port = free_port()
    proc = run_cli(app_dir, "versioned:wsgi", "--port", str(port), "--workers", "2")
    lines = Lines(proc)
    try:
        lines.wait("serving on", 2)
        (app_dir / "version.txt").write_text("broken")
        proc.send_signal(signal.SIGHUP)
        lines.wait("did not start serving; the reload stops here", 1)
        for _ in range(10):
            status, _, body, _ = request(At(port))
            assert status == 200 and body.startswith(b"v1 ")
        assert proc.poll() is None
    finally:
        err = stop_supervisor(proc, lines)
    assert "reload done" not in err


def test_reload_replaces_the_workers_when_a_source_file_changes(app_dir):
    source = app_dir / "live.py"
    source.write_text(
        VERSIONED_APP.replace(
            'open(os.path.join(os.path.dirname(__file__), "version.txt")).read().strip()', '"one"'
        )
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymongoose_uring", "live:wsgi", "--port", str(port), "--reload"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(app_dir),
        env=env,
    )
    lines = Lines(proc)
    try:
        lines.wait("serving on", 1)
        version, old_pid = request(At(port))[2].split()
        assert version == b"one"
        assert list((app_dir / "__pycache__").glob("live.*.pyc"))  # compiled on import
        before = source.stat()
        source.write_text(source.read_text().replace('"one"', '"two"'))
        # An edit in the same second, of the same size: the .pyc still looks fresh
        # to the import system (it records whole seconds), so reload must drop it.
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1000))
        lines.wait("live.py changed; replacing the worker", 1, timeout=10)
        lines.wait("reload done", 1)
        deadline = time.monotonic() + 10  # the old worker finishes and exits
        while not _exited(int(old_pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(5):
            assert request(At(port))[2].startswith(b"two ")
        (app_dir / "notes.txt").write_text("not a source file")
        time.sleep(1.2)
        assert len([line for line in lines.lines if "changed;" in line]) == 1
    finally:
        stop_supervisor(proc, lines)


def test_fd_serves_an_inherited_socket(app_dir):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    fd = sock.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymongoose_uring", "cliapps:handler", "--fd", str(fd)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(app_dir),
        pass_fds=(fd,),
    )
    try:
        line = wait_for_line(proc, "serving on")
        assert "http://127.0.0.1:%d" % port in line
        status, _, body, _ = request(At(port))
        assert (status, body) == (200, b"plain handler")
    finally:
        stop(proc)
        sock.close()


def test_fd_must_be_open(app_dir):
    out = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring", "cliapps:handler", "--fd", "987"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(app_dir),
    )
    assert out.returncode == 2 and "--fd 987" in out.stderr


def _get_pid(port, path="/"):
    """GET on a new connection: the worker's pid from the body, or None on a refused
    or reset connection (a worker that was just killed)."""
    try:
        status, _, body, _ = request(At(port), path=path, timeout=5)
    except (ConnectionError, OSError, Exception):
        return None
    if status != 200:
        return None
    return int(body.split()[-1])


def test_workers_survive_the_kill_of_one(app_dir):
    port = free_port()
    proc = run_cli(app_dir, "cliapps:wsgi", "--port", str(port), "--workers", "2")
    lines = Lines(proc)
    try:
        started = pids(lines.wait("started (pid", 2))
        lines.wait("serving on", 2)
        # Both workers answer (SO_REUSEPORT spreads new connections over them).
        seen = set()
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            pid = _get_pid(port)
            if pid:
                seen.add(pid)
        assert seen == set(started)

        victim = started[0]
        os.kill(victim, signal.SIGKILL)
        replacement = pids(lines.wait("started (pid", 3))[2]
        assert replacement not in started
        lines.wait("serving on", 3)
        # Requests keep being answered, by the survivor and the replacement.
        seen = set()
        failures = 0
        deadline = time.monotonic() + 20
        while seen != {started[1], replacement} and time.monotonic() < deadline:
            pid = _get_pid(port)
            if pid is None:
                failures += 1
            else:
                seen.add(pid)
        assert seen == {started[1], replacement}
        # The supervisor holds the dead worker's socket: connections routed to it
        # wait for the replacement instead of being refused.
        assert failures == 0
    finally:
        stop_supervisor(proc, lines)
    for pid in (started[1], replacement):
        assert _exited(pid)


def test_workers_stop_when_the_app_cannot_load(app_dir):
    port = free_port()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pymongoose_uring",
            "cliapps:nothing",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(app_dir),
    )
    assert out.returncode == 1
    assert "could not start" in out.stderr


def test_status_lines_are_written_whole(monkeypatch):
    # Workers share the supervisor's stderr; a line written in two pieces
    # (text, then newline) interleaves with another worker's line.
    from pymongoose_uring._server import say

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)
            return len(text)

        def flush(self):
            pass

    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    say("serving on http://127.0.0.1:1 with 1 thread(s)")
    say("worker 0 started (pid 1)")
    assert recorder.writes == [
        "pymongoose_uring: serving on http://127.0.0.1:1 with 1 thread(s)\n",
        "pymongoose_uring: worker 0 started (pid 1)\n",
    ]


def test_ws_options_reach_the_engine_and_the_adapter(app_dir):
    from test_asgi_websocket import WS

    proc = run_cli(app_dir, "cliapps:wsapp", "--port", "0", "--ws-max-size", "100")
    try:
        port = port_of(proc)
        ws = WS(port)
        ws.send(b"x" * 100)
        assert ws.recv() == b"x" * 100
        ws.send(b"y" * 101)  # over --ws-max-size: close 1009
        assert ws.recv()[:2] == ("close", 1009)
        ws.close(1009)
        # the app hears of it (1006: the engine fails the connection after its close)
        assert wait_for_line(proc, "DISCONNECT").split()[1] in ("1006", "1009")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    proc = run_cli(app_dir, "cliapps:wsapp", "--port", "0", "--ws", "none")
    try:
        ws = WS(port_of(proc))
        assert (ws.status, ws.body) == (200, b"http scope")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_ws_ping_interval_and_deflate_options_reach_the_engine(app_dir):
    from test_asgi_websocket import WS

    offer = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
    proc = run_cli(app_dir, "cliapps:wsapp", "--port", "0", "--ws-ping-interval", "0.2")
    try:
        ws = WS(port_of(proc), headers=offer)
        assert "permessage-deflate" in ws.headers.get("sec-websocket-extensions", "")
        started = time.monotonic()
        assert ws.recv_frame()[1] == 0x9  # a silent connection is pinged
        assert time.monotonic() - started < 5
        ws.sock.close()  # gone: the graceful stop need not wait for its close
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    proc = run_cli(app_dir, "cliapps:wsapp", "--port", "0", "--no-ws-per-message-deflate")
    try:
        ws = WS(port_of(proc), headers=offer)
        assert ws.status == 101 and "sec-websocket-extensions" not in ws.headers
        ws.sock.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
