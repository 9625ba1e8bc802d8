"""The graceful stop's deadline (shutdown_timeout_ms, --timeout-graceful-shutdown) bounds
the adapters too: a WSGI call still running when the engine has stopped, or an ASGI task
still running after its answer, holds stop() only for what is left of it (before: a fixed
10 s for the WSGI pool, 30 s for ASGI tasks)."""

import asyncio
import socket
import threading
import time

from pymongoose_uring.asgi import ASGIServer
from pymongoose_uring.wsgi import WSGIServer


def fire(port, path):
    """Send a request and leave the socket open (its answer may never come)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    return s


def test_wsgi_stop_waits_only_for_the_graceful_deadline():
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        entered.set()
        release.wait(20)
        start_response("200 OK", [])
        return [b"late"]

    server = WSGIServer(app, "127.0.0.1", 0, shutdown_timeout_ms=500).start()
    s = fire(server.port, b"/slow")
    try:
        assert entered.wait(5)
        t0 = time.monotonic()
        server.stop()
        took = time.monotonic() - t0
        assert took < 3.0, f"stop took {took:.1f} s with shutdown_timeout_ms=500"
    finally:
        release.set()
        s.close()


def test_asgi_task_after_its_answer_is_cut_at_the_graceful_deadline():
    started = threading.Event()
    cancelled = threading.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        started.set()
        try:
            await asyncio.sleep(20)  # work after the answer, as a BackgroundTask
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server = ASGIServer(app, "127.0.0.1", 0, lifespan="off", shutdown_timeout_ms=500).start()
    s = fire(server.port, b"/")
    try:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        assert started.wait(5)
        t0 = time.monotonic()
        server.stop()
        took = time.monotonic() - t0
        assert took < 3.0, f"stop took {took:.1f} s with shutdown_timeout_ms=500"
        assert cancelled.wait(2)
    finally:
        s.close()


def test_asgi_task_after_its_answer_finishes_within_the_deadline():
    finished = threading.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await asyncio.sleep(0.3)
        finished.set()

    server = ASGIServer(app, "127.0.0.1", 0, lifespan="off", shutdown_timeout_ms=5000).start()
    s = fire(server.port, b"/")
    try:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        server.stop()
        assert finished.is_set()
    finally:
        s.close()


def test_adapters_log_the_time_to_the_answer(caplog):
    """--access-log-format's time atoms (%(D)s: microseconds) for WSGI and ASGI apps: the
    time from the app's call to the answer, not '-'."""
    import logging

    from pymongoose_uring._adapter import set_access_log_format

    def wsgi_app(environ, start_response):
        time.sleep(0.05)
        start_response("200 OK", [])
        return [b"w"]

    async def asgi_app(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"a"})

    set_access_log_format("%(s)s %(D)s")
    try:
        with caplog.at_level(logging.INFO, logger="pymongoose_uring.access"):
            for server in (
                WSGIServer(wsgi_app, "127.0.0.1", 0, access_log=True),
                ASGIServer(asgi_app, "127.0.0.1", 0, access_log=True, lifespan="off"),
            ):
                with server:
                    s = fire(server.port, b"/")
                    assert s.recv(4096).startswith(b"HTTP/1.1 20")
                    s.close()
    finally:
        set_access_log_format(None)
    lines = [r.getMessage() for r in caplog.records if r.name == "pymongoose_uring.access"]
    assert [line.split()[0] for line in lines] == ["200", "201"], lines
    for line in lines:
        assert 45_000 <= int(line.split()[1]) < 5_000_000, line
