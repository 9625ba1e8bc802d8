"""Handler exceptions, deferred replies (threads, asyncio) and async handlers."""

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import RawClient, request
from pymongoose_uring import App, Response


def test_exception_gives_500_and_logs_traceback(serve, caplog):
    def handler(req):
        if req.path == "/boom":
            raise ValueError("kaboom")
        return "fine " + req.path

    server = serve(handler)
    with caplog.at_level(logging.ERROR, logger="pymongoose_uring"):
        status, headers, body, _ = request(server, path="/boom")
    assert (status, body) == (500, b"Internal Server Error")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    rec = [r for r in caplog.records if "handler raised" in r.getMessage()]
    assert rec and "GET /boom" in rec[0].getMessage()
    assert rec[0].exc_info[0] is ValueError
    assert "kaboom" in caplog.text and "Traceback" in caplog.text


def test_exception_spares_the_rest_of_the_batch(serve, caplog):
    def handler(req):
        if req.path == "/boom":
            raise RuntimeError("only me")
        return req.path

    server = serve(handler)
    c = RawClient(server.port)
    paths = [b"/a", b"/boom", b"/b", b"/boom", b"/c"]
    with caplog.at_level(logging.ERROR, logger="pymongoose_uring"):
        c.send(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p for p in paths))
        got = [c.read_response() for _ in paths]
    c.close()
    assert [(s, b) for s, _, b in got] == [
        (200, b"/a"),
        (500, b"Internal Server Error"),
        (200, b"/b"),
        (500, b"Internal Server Error"),
        (200, b"/c"),
    ]


def test_deferred_reply_from_another_thread(serve):
    def handler(req):
        threading.Timer(0.05, req.reply, args=("later " + req.path,)).start()
        return None

    server = serve(handler)
    t0 = time.monotonic()
    status, _, body, _ = request(server, path="/x")
    assert (status, body) == (200, b"later /x")
    assert time.monotonic() - t0 >= 0.04
    assert server.stats()["deferred"] >= 1


def test_many_deferred_replies_from_a_pool(serve):
    pool = ThreadPoolExecutor(8)

    def handler(req):
        pool.submit(lambda: req.reply({"n": int(req.path[1:])}, 201, {"X-Deferred": "1"}))

    server = serve(handler)

    def client(k):
        conn_results = []
        for j in range(10):
            status, headers, body, _ = request(server, path="/%d" % (k * 10 + j))
            conn_results.append((status, headers["x-deferred"], body))
        return conn_results

    with ThreadPoolExecutor(20) as clients:
        results = [r for rs in clients.map(client, range(20)) for r in rs]
    pool.shutdown()
    assert sorted(json.loads(b)["n"] for _, _, b in results) == list(range(200))
    assert all(s == 201 and h == "1" for s, h, _ in results)


def test_reply_inside_the_handler_then_return_none(serve):
    server = serve(lambda req: req.reply(Response.text("direct", 202)))
    assert request(server)[0:3:2] == (202, b"direct")


def test_reply_twice_raises(serve):
    errors = []

    def handler(req):
        req.reply("one")
        try:
            req.reply("two")
        except RuntimeError as exc:
            errors.append(str(exc))

    server = serve(handler)
    assert request(server)[2] == b"one"
    assert errors and "already answered" in errors[0]


def test_reply_and_return_value_warns(serve, caplog):
    def handler(req):
        req.reply("replied")
        return "returned"

    server = serve(handler)
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        assert request(server)[2] == b"replied"
    assert "returned value was ignored" in caplog.text


def test_dropped_request_gets_500(serve, caplog):
    server = serve(lambda req: None)  # neither answers nor keeps it
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        status, _, body, _ = request(server, path="/lost")
    assert status == 500
    assert "GET /lost" in caplog.text and "without replying" in caplog.text


def test_kept_request_unanswered_at_shutdown_is_reported(caplog):
    """A request kept and never answered when the server stops: after
    shutdown_timeout_ms the stop closes its connection, the client gets no answer,
    and the log says so (not that the handler dropped it)."""
    import socket

    from pymongoose_uring import Server

    kept = []
    server = Server(kept.append, port=0, shutdown_timeout_ms=300).start()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /kept?q=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    deadline = time.monotonic() + 5
    while not kept and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kept
    with caplog.at_level(logging.WARNING, logger="pymongoose_uring"):
        started = time.monotonic()
        server.stop(timeout=10)
        assert 0.25 <= time.monotonic() - started < 5
        assert sock.recv(100) == b""  # closed, nothing sent
        sock.close()
        kept.clear()  # collected after the stop: no second line
    text = caplog.text
    assert "GET /kept: the request was kept and never answered before shutdown" in text
    assert "(1 such on ring thread 0)" in text and "the client got no answer" in text
    assert "shutdown_timeout_ms (300 ms)" in text
    assert "without replying" not in text


def test_deferred_request_collected_unanswered_gets_500(serve):
    kept = []
    server = serve(lambda req: kept.append(req))
    result = {}

    def call():
        result["r"] = request(server, timeout=10)

    t = threading.Thread(target=call)
    t.start()
    for _ in range(100):
        if kept:
            break
        time.sleep(0.01)
    kept.clear()  # the last reference goes: the request is answered with 500
    t.join(10)
    assert result["r"][0] == 500


def test_reply_from_an_asyncio_task(serve):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def work(req):
        await asyncio.sleep(0.01)
        req.reply({"async": req.path})

    def handler(req):
        asyncio.run_coroutine_threadsafe(work(req), loop)

    server = serve(handler)
    try:
        assert request(server, path="/t")[2] == b'{"async":"/t"}'
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_async_handlers_on_the_private_loop(serve, caplog):
    app = App()

    @app.get("/sleep")
    async def sleep(req):
        await asyncio.sleep(0.01)
        return {"slept": True}

    @app.get("/fail")
    async def fail(req):
        raise KeyError("async boom")

    @app.get("/later")
    async def later(req):
        asyncio.get_running_loop().call_later(0.01, req.reply, "called later")

    server = serve(app)
    with caplog.at_level(logging.ERROR, logger="pymongoose_uring"):
        assert request(server, path="/sleep")[2] == b'{"slept":true}'
        assert request(server, path="/fail")[0] == 500
        assert request(server, path="/later")[2] == b"called later"
    assert "async boom" in caplog.text

    def client(_):
        return request(server, path="/sleep")[0]

    with ThreadPoolExecutor(20) as pool:
        assert set(pool.map(client, range(100))) == {200}


def test_async_handler_on_a_given_loop(serve):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen = []

    async def handler(req):
        seen.append(asyncio.get_running_loop())
        return "on given loop"

    server = serve(handler, loop=loop)
    try:
        assert request(server)[2] == b"on given loop"
        assert seen == [loop]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_stop_waits_for_deferred_in_flight_requests(serve):
    gate = threading.Event()
    in_flight = threading.Event()

    def handler(req):
        in_flight.set()
        threading.Thread(target=lambda: (gate.wait(5), req.reply("finished"))).start()

    server = serve(handler)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", request(server)))
    t.start()
    assert in_flight.wait(10)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.2)
    assert stopper.is_alive()  # still waiting for the request in flight
    gate.set()
    stopper.join(10)
    t.join(10)
    assert result["r"][0:3:2] == (200, b"finished")
    assert not server.running


def test_reply_after_the_server_stopped():
    from pymongoose_uring import Server

    kept = []
    server = Server(lambda req: kept.append(req), port=0, shutdown_timeout_ms=200).start()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", _safe_request(server)))
    t.start()
    for _ in range(200):
        if kept:
            break
        time.sleep(0.01)
    server.stop()  # the request is still unanswered: the deadline closes its connection
    t.join(10)
    kept[0].reply("too late")  # the engine just releases it
    assert kept[0].answered
    other = []
    server2 = Server(lambda req: other.append(req), port=0, shutdown_timeout_ms=100).start()
    t = threading.Thread(target=lambda: _safe_request(server2))
    t.start()
    for _ in range(200):
        if other:
            break
        time.sleep(0.01)
    server2.stop()
    t.join(10)
    other.clear()  # collected unanswered after the stop: nothing breaks
    assert result["r"] is None or result["r"][0] in (500, 503)


def _safe_request(server):
    try:
        return request(server, timeout=5)
    except Exception:
        return None


def test_stop_from_an_async_handler(serve):
    from pymongoose_uring import Server

    holder = {}

    async def handler(req):
        holder["server"].stop()  # begins the stop from the loop thread
        return "stopping"

    server = Server(handler, port=0)
    holder["server"] = server
    server.start()
    assert request(server)[2] == b"stopping"
    server.stop(timeout=15)  # completes it from here
    assert not server.running


def test_deferred_replies_arrive_promptly(serve):
    """A reply from another thread wakes the ring at once: no polling delay."""
    import queue

    jobs = queue.Queue()

    def worker():
        while True:
            req = jobs.get()
            if req is None:
                return
            req.reply("ok")

    t = threading.Thread(target=worker)
    t.start()
    try:
        server = serve(jobs.put)
        conn = __import__("http.client").client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        times = []
        for _ in range(100):
            t0 = time.perf_counter()
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok"
            times.append(time.perf_counter() - t0)
        conn.close()
    finally:
        jobs.put(None)
        t.join(5)
    times.sort()
    # A reply that waited for the ring's next timer instead of waking it
    # would take seconds; 50 ms leaves room for a loaded machine.
    assert times[50] < 0.05, "median deferred round trip %.1f ms" % (times[50] * 1e3)


def test_after_batch_runs_at_the_end_of_the_batch(serve):
    """_pmu.after_batch(fn) on a ring thread puts fn off to the end of the batch
    (after the handler returned), in order; elsewhere it calls fn now."""
    from pymongoose_uring._native import _pmu

    events = []
    _pmu.after_batch(lambda: events.append("now"))
    assert events == ["now"]
    events.clear()
    done = threading.Event()

    def handler(req):
        _pmu.after_batch(lambda: events.append("first"))
        _pmu.after_batch(lambda: events.append("second"))
        _pmu.after_batch(done.set)
        events.append("handler returns")
        return "ok"

    server = serve(handler)
    status, _, body, _ = request(server, path="/x")
    assert (status, body) == (200, b"ok")
    assert done.wait(5)
    assert events == ["handler returns", "first", "second"]


def test_held_wakeups_wake_the_ring_once_at_the_flush(serve):
    """_pmu.hold_wakeups(): the answers a thread gives then wake their ring once, at
    flush_wakeups() (which says how many rings it woke), not one by one; without
    holding, each answer wakes the ring itself and a flush has nothing to wake."""
    from pymongoose_uring._native import _pmu

    kept = []
    three = threading.Event()

    def handler(req):
        kept.append(req)
        if len(kept) % 3 == 0:
            three.set()
        return None  # answered below, from another thread

    server = serve(handler)
    results = {}

    def answer(hold):
        clients = [RawClient(server.port) for _ in range(3)]
        for c in clients:
            c.send(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
        assert three.wait(5)
        three.clear()
        batch = kept[-3:]

        def giver():
            if hold:
                _pmu.hold_wakeups()
            for req in batch:
                req.reply("held" if hold else "plain")
            results[hold] = _pmu.flush_wakeups()

        t = threading.Thread(target=giver)
        t.start()
        t.join(5)
        bodies = [c.read_response()[2] for c in clients]
        for c in clients:
            c.close()
        return bodies

    assert answer(True) == [b"held"] * 3
    assert results[True] == 1  # one ring, woken once for three answers
    assert answer(False) == [b"plain"] * 3
    assert results[False] == 0
