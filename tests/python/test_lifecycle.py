"""Starting, stopping, signals, configuration, counters and the unavailable path."""

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

import pymongoose_uring as pmu
from conftest import At, port_of, request, run_cli, spawn, stop_process, wait_for_line, wait_until
from pymongoose_uring import App, Server


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def os_threads():
    return len(os.listdir("/proc/self/task"))


def test_start_stop_50_times_leaks_nothing():
    app = App()
    app.get("/")(lambda req: "hi")
    # One round first: lazily imported modules and caches settle.
    with Server(app, port=0) as s:
        request(s)
    fds, threads = open_fds(), os_threads()
    for i in range(50):
        server = Server(app, port=0, threads=1 + i % 2)
        server.start()
        assert server.running
        if i % 5 == 0:
            assert request(server)[2] == b"hi"
        server.stop()
        assert not server.running
    # threads of earlier tests may end meanwhile
    wait_until(
        lambda: open_fds() <= fds and os_threads() <= threads,
        timeout=5,
        what="descriptors and threads back to before",
    )


def test_same_server_restarts():
    server = Server(lambda req: "again", port=0)
    for _ in range(3):
        server.start()
        assert request(server)[2] == b"again"
        server.stop()
    server.stop()  # idempotent


def test_context_manager_and_url():
    with Server(lambda req: "ctx", port=0) as server:
        assert server.running and server.port > 0
        assert server.url == "http://127.0.0.1:%d" % server.port
        assert request(server)[2] == b"ctx"
        with pytest.raises(RuntimeError):
            server.start()
    assert not server.running
    final = server.stats()
    assert final["requests"] >= 1  # the final counters survive the stop


def test_stats_count_responses_by_status_class(serve):
    import logging

    from conftest import RawClient

    app = pmu.App()
    app.get("/ok")(lambda req: "ok")
    app.get("/moved")(lambda req: pmu.Response.redirect("/ok"))
    app.get("/boom")(lambda req: 1 / 0)
    server = serve(app)
    logger = logging.getLogger("pymongoose_uring")
    logger.disabled = True  # the 500's traceback
    try:
        for path in ("/ok", "/ok", "/moved", "/nowhere", "/boom"):
            request(server, path=path)
    finally:
        logger.disabled = False
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")  # the engine's 400
    assert c.read_response()[0] == 400
    c.close()
    classes = server.stats()["status_classes"]
    assert classes == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 2, "5xx": 1}


def test_stats_probe_ring_info_and_config(serve):
    server = serve(lambda req: "x", batch_max=8, max_body_bytes=1234, server_header="srv")
    for _ in range(3):
        request(server)
    stats = server.stats()
    for key in (
        "connections_accepted",
        "connections_open",
        "connections_rejected",
        "requests",
        "responses",
        "bytes_in",
        "bytes_out",
        "parse_errors",
        "timeouts",
        "enobufs",
        "short_sends",
        "sends",
        "send_zc",
        "recv_paused",
        "cq_overflows",
        "waits",
        "cqes",
        "batches",
        "deferred",
    ):
        assert isinstance(stats[key], int), key
    assert len(stats["batch_hist"]) == 16 == pmu._native._pmu.BATCH_BUCKETS
    assert stats["requests"] == 3 and stats["batches"] >= 1
    assert stats["batch_hist"][0] >= 1
    with pytest.raises(ValueError):
        server.stats(5)

    info = server.ring_info()
    assert set(info) == {
        "setup_flags",
        "features",
        "defer_taskrun",
        "sqpoll",
        "registered_files",
        "registered_ring_fd",
        "sched_batch",
    }
    assert info["sched_batch"] is False  # the knob is off by default
    cfg = server.config
    assert cfg["batch_max"] == 8 and cfg["max_body_bytes"] == 1234
    assert cfg["server_header"] == "srv" and cfg["port"] == 0
    assert request(server)[1]["server"] == "srv"

    p = pmu.probe()
    assert p["available"] and p["kernel"] and isinstance(p["features"], int)
    for key in (
        "defer_taskrun",
        "multishot_accept",
        "multishot_recv",
        "provided_buffer_ring",
        "send_zc",
        "single_issuer",
    ):
        assert isinstance(p[key], bool)
    defaults = pmu.config_defaults()
    assert defaults["threads"] == 1 and defaults["batch_max"] > 0


def test_batch_max_caps_batches(serve):
    server = serve(lambda req: "x", batch_max=2)
    from conftest import RawClient

    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 32)
    for _ in range(32):
        assert c.read_response()[0] == 200
    c.close()
    hist = server.stats()["batch_hist"]
    assert sum(hist[2:]) == 0 and sum(hist) >= 16


def test_every_knob_is_accepted(serve):
    server = serve(
        lambda req: req.body,
        threads=2,
        backlog=128,
        ring_entries=256,
        cq_entries=2048,
        buf_count=256,
        buf_size=8192,
        defer_taskrun=False,
        sqpoll=False,
        sqpoll_idle_ms=500,
        registered_files=True,
        send_zc_threshold=65536,
        batch_max=32,
        max_header_bytes=8192,
        max_headers=50,
        max_url_bytes=4096,
        max_body_bytes=1 << 16,
        max_connections=100,
        max_pipelined=16,
        output_high_water=1 << 18,
        header_timeout_ms=5000,
        keepalive_timeout_ms=2000,
        body_timeout_ms=5000,
        send_timeout_ms=5000,
        shutdown_timeout_ms=3000,
        server_header="",
    )
    assert request(server, "POST", body=b"k" * 1000)[2] == b"k" * 1000
    assert "server" not in request(server)[1]
    assert request(server, "POST", body=b"k" * 70000)[0] == 413
    info = server.ring_info(0)
    assert info["registered_files"] is True and info["defer_taskrun"] is False


def test_sqpoll(serve):
    server = serve(lambda req: "polled", sqpoll=True, sqpoll_idle_ms=50)
    assert request(server)[2] == b"polled"
    assert server.ring_info()["sqpoll"] is True


def test_bad_options():
    with pytest.raises(TypeError):
        Server(lambda r: None, port=0, no_such_knob=1)
    with pytest.raises(ValueError):
        Server(lambda r: None, port=0, threads=0)
    with pytest.raises(TypeError):
        Server("not callable")
    with pytest.raises(ValueError):
        Server(lambda r: None, port=70000).start()
    with pytest.raises(ValueError):
        Server(lambda r: None, port=0, batch_max=-1).start()


def test_port_in_use_names_the_cause():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(pmu.Error) as err:
            Server(lambda r: None, port=port).start()
        assert err.value.errno == errno.EADDRINUSE
        assert str(port) in str(err.value) or "in use" in str(err.value)
    finally:
        taken.close()


def test_unix_path_in_missing_directory():
    with pytest.raises(pmu.Error) as err:
        Server(lambda r: None, unix_path="/nonexistent-dir/x.sock").start()
    assert err.value.errno in (errno.ENOENT, errno.EACCES)


@pytest.mark.no_uring_ok
def test_unavailable_kernel_raises_naming_the_reason(monkeypatch):
    from pymongoose_uring import _server

    monkeypatch.setattr(
        _server,
        "_probe_cache",
        {
            "available": False,
            "error": -errno.EPERM,
            "message": "io_uring is disabled (kernel.io_uring_disabled=2): set it to 0",
        },
    )
    with pytest.raises(pmu.UnavailableError) as err:
        Server(lambda r: None)
    assert "io_uring_disabled" in str(err.value) and err.value.errno == errno.EPERM
    assert isinstance(err.value, pmu.Error) and isinstance(err.value, OSError)


@pytest.mark.no_uring_ok
def test_import_works_without_the_extension():
    script = textwrap.dedent("""
        import sys
        sys.modules["pymongoose_uring._pmu"] = None   # as if it could not be built
        import pymongoose_uring as pmu
        app = pmu.App()
        app.get("/")(lambda r: pmu.Response.json({"a": 1}))
        assert pmu.Response.json({"a": 1}).body == b'{"a":1}'
        assert pmu.probe()["available"] is False
        try:
            pmu.Server(app)
        except pmu.UnavailableError as exc:
            print("RAISED:", exc)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tempfile.gettempdir(),
    )
    assert out.returncode == 0, out.stderr
    assert "RAISED:" in out.stdout and "could not be loaded" in out.stdout


SIGNAL_SERVER = textwrap.dedent("""
    import sys, threading
    from pymongoose_uring import App, Server
    app = App()

    @app.get("/slow")
    def slow(req):
        # answered 0.5 s later from another thread: in flight when the signal comes
        threading.Timer(0.5, req.reply, args=("slow done",)).start()
        print("slow in flight", file=sys.stderr, flush=True)

    @app.get("/")
    def index(req):
        return "up"

    @app.get("/shutdown")
    def shutdown(req):
        server.stop()          # from a handler: begins the stop, returns at once
        return "bye"

    server = Server(app, port=0, threads=int(sys.argv[1]))
    server.run()
    print("exited cleanly", flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stops_gracefully_on_signal(sig):
    proc = spawn(SIGNAL_SERVER, "2")
    try:
        port = port_of(proc)

        s = At(port)
        assert request(s)[2] == b"up"
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", request(s, path="/slow")))
        t.start()
        wait_for_line(proc, "slow in flight")
        proc.send_signal(sig)
        t.join(10)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result["r"][0:3:2] == (200, b"slow done")  # in-flight request finished
    assert proc.returncode == 0, err
    assert "exited cleanly" in out
    assert "Traceback" not in err


def test_stop_from_a_handler():
    proc = spawn(SIGNAL_SERVER, "1")
    try:
        port = port_of(proc)

        s = At(port)
        assert request(s, path="/shutdown")[2] == b"bye"
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "exited cleanly" in out


def test_running_server_is_stopped_at_exit():
    script = textwrap.dedent("""
        import urllib.request
        from pymongoose_uring import Server
        s = Server(lambda r: "x", port=0).start()
        print(urllib.request.urlopen(s.url).read().decode(), flush=True)
        # no stop(): the interpreter's exit must stop the engine cleanly
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tempfile.gettempdir(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "x"


def test_command_line_hello():
    proc = run_cli(tempfile.gettempdir(), "--hello", "--port", "0", "--batch-max", "16")
    try:
        port = port_of(proc)

        s = At(port)
        assert request(s)[2] == b'{"message":"Hello, World!"}'
    finally:
        stop_process(proc, signal.SIGINT)
    assert proc.returncode == 0
