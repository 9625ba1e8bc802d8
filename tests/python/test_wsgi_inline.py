"""WSGI calls on the ring thread: a path proven quick on the pool runs inline (no thread
handoff); one that turns slow goes back to the pool, so a blocking app cannot keep the
ring from the other connections; streamed bodies and inline_ms=0 always use the pool."""

import http.client
import socket
import threading
import time

import pytest

from conftest import request
from pymongoose_uring import wsgi as pmu_wsgi
from pymongoose_uring.wsgi import WSGIHandler

POOL = "pymongoose_uring-wsgi-"
# A budget that a quick call keeps even on a loaded test machine (the default, 1 ms, is
# wall time: a preempted call can exceed it).
INLINE_MS = 100


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def recording_app(threads, hold=None):
    """An app that records the thread each call runs on; /slow sleeps 0.3 s (over the
    budget of INLINE_MS) while slow["on"], and waits for hold["release"] while hold["on"]."""
    slow = {"on": False}

    def app(environ, start_response):
        threads.append((environ["PATH_INFO"], threading.current_thread().name))
        if environ["PATH_INFO"] == "/slow":
            if slow["on"]:
                time.sleep(0.3)
            if hold is not None and hold["on"]:
                hold["held"].set()
                hold["release"].wait(10)
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode() + b" " + str(len(body)).encode()]

    return app, slow


def test_a_quick_path_moves_to_the_ring_and_a_slow_one_back_to_the_pool(serve_wsgi):
    threads = []
    hold = {"on": False, "held": threading.Event(), "release": threading.Event()}
    app, slow = recording_app(threads, hold)
    server = serve_wsgi(app, pool_threads=2, inline_ms=INLINE_MS)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    n = pmu_wsgi._INLINE_AFTER
    for _ in range(n + 5):
        assert get(conn, "/slow") == (200, b"/slow 0")
    names = [name for _, name in threads]
    # The first calls ran on the pool; once proven quick, on the ring thread.
    assert all(name.startswith(POOL) for name in names[:n])
    assert not any(name.startswith(POOL) for name in names[n + 1 :])
    # Two calls in a row over budget on the ring (one alone may have been preempted):
    # answered, and the path goes back to the pool.
    slow["on"] = True
    assert get(conn, "/slow") == (200, b"/slow 0")
    assert get(conn, "/slow") == (200, b"/slow 0")
    assert not any(name.startswith(POOL) for _, name in threads[-2:])
    slow["on"] = False
    # Now a blocking call holds a pool thread, not the ring: another connection is
    # answered meanwhile.
    hold["on"] = True
    result = []
    t = threading.Thread(target=lambda: result.append(request(server, path="/slow")[2]))
    t.start()
    try:
        assert hold["held"].wait(10)
        assert threads[-1][1].startswith(POOL)
        assert request(server, path="/other")[2] == b"/other 0"
        assert result == []  # still held
    finally:
        hold["release"].set()
        t.join(10)
    assert result == [b"/slow 0"]
    # The path needs four times more quick pool calls before the ring tries it again.
    hold["on"] = False
    del threads[:]
    for _ in range(4 * n + 3):
        assert get(conn, "/slow") == (200, b"/slow 0")
    names = [name for _, name in threads]
    assert all(name.startswith(POOL) for name in names[: 4 * n - 1])
    assert not names[-1].startswith(POOL)
    conn.close()


def test_a_batch_stops_running_inline_after_its_budget(serve_wsgi, monkeypatch):
    """Pipelined requests reach the handler in one batch: once the batch has spent its
    ring budget in inline calls, the rest go to the pool."""
    monkeypatch.setattr(pmu_wsgi, "_BATCH_BUDGET", 0.005)
    # Two calls of one batch are at most this far apart, even on a loaded test machine.
    monkeypatch.setattr(pmu_wsgi, "_BATCH_GAP", 0.001)
    threads = []

    def app(environ, start_response):
        threads.append(threading.current_thread().name)
        time.sleep(0.003)  # quick (under INLINE_MS), but two fill the batch's budget
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = serve_wsgi(app, pool_threads=2, inline_ms=INLINE_MS)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(pmu_wsgi._INLINE_AFTER + 1):
        assert get(conn, "/") == (200, b"ok")
    conn.close()
    assert not threads[-1].startswith(POOL)
    del threads[:]
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 8)
        data = b""
        while data.count(b"HTTP/1.1 200") < 8:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    assert len(threads) == 8
    on_ring = [name for name in threads if not name.startswith(POOL)]
    assert 1 <= len(on_ring) < 8


@pytest.mark.parametrize("inline_ms", [0, 1.0])
def test_streamed_bodies_and_inline_off_use_the_pool(serve_wsgi, inline_ms):
    threads = []
    app, _ = recording_app(threads)
    server = serve_wsgi(
        app, pool_threads=2, inline_ms=inline_ms and INLINE_MS, stream_body_threshold=1024
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(pmu_wsgi._INLINE_AFTER + 5):
        conn.request("POST", "/up", body=b"x" * 4000)
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"/up 4000")
        if inline_ms == 0:
            assert get(conn, "/up") == (200, b"/up 0")
    conn.close()
    assert threads and all(name.startswith(POOL) for _, name in threads)


def test_inline_ms_must_not_be_negative():
    with pytest.raises(ValueError):
        WSGIHandler(lambda e, s: [], inline_ms=-1)


def test_inline_is_off_by_default(serve_wsgi):
    """Without inline_ms every call runs on the pool, however many quick calls a path made
    (a call on the ring could block it: an app calling its own server would wait for
    itself)."""
    threads = []
    app, _ = recording_app(threads)
    server = serve_wsgi(app, pool_threads=2)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(pmu_wsgi._INLINE_AFTER * 2):
        assert get(conn, "/quick") == (200, b"/quick 0")
    assert threads and all(name.startswith(POOL) for _, name in threads)


def test_cli_wsgi_inline_ms_reaches_the_handler(tmp_path):
    from pymongoose_uring.cli.config import parse
    from pymongoose_uring.cli.worker import make_server

    (tmp_path / "inlineapp.py").write_text(
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n"
    )
    base = ["inlineapp:app", "--app-dir", str(tmp_path), "--interface", "wsgi", "--port", "0"]
    for argv, budget in (([], 0.0), (["--wsgi-inline-ms", "2.5"], 0.0025)):
        server = make_server(parse([*base, *argv], {}))
        assert server._handler._budget == pytest.approx(budget)
    with pytest.raises(SystemExit):
        parse([*base, "--wsgi-inline-ms", "-1"], {})
