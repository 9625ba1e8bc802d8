"""Slow handlers: a native (or pymongoose-API) handler runs on its ring thread, so one
that blocks holds every connection of that thread. The engine counts each call held
beyond slow_handler_ms (stats()["slow_batches"]) and the package's logger gets one
WARNING per ring thread per 10 s at most, naming the handler (module.qualname), the
request (METHOD /path), the time and the ring thread, with what to do about it."""

import logging
import socket
import threading
import time

from conftest import request
from pymongoose_uring import App
from pymongoose_uring.compat import MG_EV_HTTP_MSG, Manager


def slow_lines(caplog):
    return [
        r
        for r in caplog.records
        if r.name == "pymongoose_uring" and r.getMessage().startswith("slow handler:")
    ]


def sleepy_handler(request):
    if request.path == "/sleep":
        time.sleep(0.2)
    return b"done"


def test_a_blocking_handler_is_named_with_its_request(serve, caplog):
    server = serve(sleepy_handler)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        assert request(server, path="/sleep?x=1")[2] == b"done"
        assert server.stats()["slow_batches"] == 1
        lines = slow_lines(caplog)
        assert len(lines) == 1
        line = lines[0]
        assert line.levelno == logging.WARNING
        text = line.getMessage()
        assert "test_slow_handler.sleepy_handler" in text
        assert "on GET /sleep " in text
        assert "held ring thread 0 for " in text
        held = int(text.split("held ring thread 0 for ")[1].split(" ms")[0])
        assert 150 <= held < 2000, text
        assert "every connection on this ring waited" in text
        assert "threads=" in text and "WSGI pool" in text and "ASGI" in text

        # Within 10 s: counted, not logged again.
        assert request(server, path="/sleep")[2] == b"done"
        assert server.stats()["slow_batches"] == 2
        assert len(slow_lines(caplog)) == 1


def test_a_quick_handler_says_nothing(serve, caplog):
    server = serve(sleepy_handler)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        for _ in range(20):
            assert request(server, path="/quick")[0] == 200
    assert server.stats()["slow_batches"] == 0
    assert slow_lines(caplog) == []


def test_zero_turns_it_off(serve, caplog):
    server = serve(sleepy_handler, slow_handler_ms=0)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        assert request(server, path="/sleep")[0] == 200
    assert server.stats()["slow_batches"] == 0
    assert slow_lines(caplog) == []


def test_a_route_names_the_routes_handler(serve, caplog):
    app = App()

    @app.get("/report")
    def build_report(request):
        time.sleep(0.15)
        return b"report"

    server = serve(app)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        assert request(server, path="/report")[2] == b"report"
    text = slow_lines(caplog)[0].getMessage()
    assert "build_report" in text and "on GET /report " in text
    assert server.stats()["slow_batches"] == 1


def test_the_slowest_of_a_batch_is_named(serve, caplog):
    """Several requests in one handler call (pipelined): the one whose call took
    longest is named, not the first."""

    def handler(request):
        if request.path == "/slow":
            time.sleep(0.15)
        return b"x"

    server = serve(handler)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                b"GET /fast1 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /fast2 HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            got = b""
            while got.count(b"HTTP/1.1 200") < 3:
                chunk = s.recv(65536)
                assert chunk
                got += chunk
    assert server.stats()["batch_hist"][1] == 1  # the three in one call
    text = slow_lines(caplog)[0].getMessage()
    assert "on GET /slow " in text, text


def test_the_compat_api_names_the_users_handler(caplog):
    def compat_handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            time.sleep(0.2)
            conn.reply(200, "compat")

    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        with Manager(compat_handler) as mgr:
            listener = mgr.listen("http://127.0.0.1:0", http=True)

            class At:
                port = listener.local_addr[1]

            assert request(At, path="/c")[2] == b"compat"
    lines = slow_lines(caplog)
    assert len(lines) == 1
    text = lines[0].getMessage()
    assert "compat_handler" in text and "on GET /c " in text


def test_the_next_line_counts_the_unreported(serve, caplog):
    """Ten seconds after a line, the next slow call is logged again and says how many
    slow calls went unreported in between."""
    server = serve(sleepy_handler, slow_handler_ms=50)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        request(server, path="/sleep")
        request(server, path="/sleep")
        request(server, path="/sleep")
        assert len(slow_lines(caplog)) == 1
        time.sleep(10.1)
        request(server, path="/sleep")
    lines = slow_lines(caplog)
    assert len(lines) == 2
    assert "(2 more slow calls on this thread since the last report)" in lines[1].getMessage()
    assert server.stats()["slow_batches"] == 4


def test_a_blocked_ring_holds_the_other_clients(serve):
    """What the README says: with threads=1 a second client waits as long as the
    handler blocks."""
    server = serve(sleepy_handler, threads=1)
    took = {}

    def slow():
        request(server, path="/sleep")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    assert request(server, path="/quick")[0] == 200
    took["quick"] = time.monotonic() - t0
    t.join()
    assert took["quick"] >= 0.1, took
