"""The requests a ring turn starts, before Python 3.12 (no eager tasks): one asyncio Task
(an ASGIBatch, binding/asgi.c) runs their apps one after the other, instead of a Task
each. Seen from an app, nothing of that shows but the task's identity: each app runs in
its own copy of the context, current_task() is a Task that stays the same while the app
lives and is not shared with an app waiting at the same time, an app that waits does not
hold back the others, cancelling it cancels it alone, and graceful stop waits for it.
On 3.12+ each request has its own eager Task: the same checks hold there too."""

import asyncio
import contextvars
import gc
import threading
import time

import pytest

from conftest import RawClient, wait_until
from pymongoose_uring import asgi
from pymongoose_uring.asgi import ASGIServer

var = contextvars.ContextVar("var", default="unset")
BATCHED = not asgi._EAGER and asgi._Starter is not None


def started(app, **options):
    options.setdefault("lifespan", "off")
    return ASGIServer(app, "127.0.0.1", 0, **options).start()


async def answer(send, body, status=200):
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def holding(app):
    """`app`, but for /hold, whose app holds the loop (time.sleep) for 0.3 s before it
    answers: the requests sent meanwhile reach the server in one ring turn."""

    async def held(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/hold":
            time.sleep(0.3)
            return await answer(send, b"held")
        return await app(scope, receive, send)

    return held


def send_all(port, paths, hold_first=0.3):
    """The first path, then (while its app holds the loop for `hold_first` s) the rest,
    each on its own connection: they reach the server in one ring turn. The bodies, in
    order."""
    clients = [RawClient(port) for _ in paths]
    try:
        clients[0].send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % paths[0].encode())
        time.sleep(hold_first / 3)
        for c, path in zip(clients[1:], paths[1:]):
            c.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
        out = []
        for c in clients:
            status, _, body = c.read_response()
            out.append((status, body))
        return out
    finally:
        for c in clients:
            c.close()


def test_apps_of_one_turn_each_run_in_their_own_context():
    tasks = []

    async def app(scope, receive, send):
        seen = var.get()
        var.set(scope["path"])
        tasks.append(asyncio.current_task())
        await answer(send, seen.encode())

    s = started(holding(app))
    try:
        paths = ["/hold"] + ["/set%d" % i for i in range(8)]
        got = send_all(s.port, paths)
    finally:
        s.stop()
    assert got == [(200, b"held")] + [(200, b"unset")] * 8
    assert all(isinstance(t, asyncio.Task) for t in tasks)
    if BATCHED:  # they did share a batch (else this test shows nothing of it)
        assert len({id(t) for t in tasks}) < len(tasks)


def test_an_app_that_waits_keeps_its_task_and_does_not_hold_back_the_rest():
    """/wait waits for an event that /release, in the same turn after it, sets: the
    apps after a waiting one go on in a Task of their own."""
    event = {}
    seen = {}

    async def app(scope, receive, send):
        path = scope["path"]
        ev = event.setdefault("e", asyncio.Event())
        if path == "/wait":
            before = asyncio.current_task()
            await asyncio.wait_for(ev.wait(), 10)
            await asyncio.sleep(0)
            seen["same"] = asyncio.current_task() is before
            seen["wait"] = before
            return await answer(send, b"waited")
        seen["release"] = asyncio.current_task()
        ev.set()
        await answer(send, b"released")

    s = started(holding(app))
    try:
        got = send_all(s.port, ["/hold", "/wait", "/release"])
        wait_until(lambda: not s.handler._tasks, what="the handler's tasks ending")
    finally:
        s.stop()
    assert got == [(200, b"held"), (200, b"waited"), (200, b"released")]
    assert seen["same"] is True
    assert seen["wait"] is not seen["release"]


def test_cancelling_an_apps_task_cancels_that_app_alone():
    async def app(scope, receive, send):
        path = scope["path"]
        if path == "/cancel":
            asyncio.current_task().cancel()
            await asyncio.sleep(5)  # CancelledError here
            return await answer(send, b"not cancelled")
        await asyncio.sleep(0.05)
        await answer(send, b"fine")

    s = started(holding(app))
    try:
        got = send_all(s.port, ["/hold", "/cancel", "/after", "/cancel", "/after"])
    finally:
        s.stop()
    assert [status for status, _ in got] == [200, 503, 200, 503, 200]
    assert got[2][1] == got[4][1] == b"fine"


def test_errors_and_unanswered_apps_in_a_batch():
    """What ends an app (an exception, a return without an answer) is its own: the apps
    after it in the batch are answered."""

    async def app(scope, receive, send):
        path = scope["path"]
        if path == "/raise":
            raise ValueError("boom")
        if path == "/silent":
            return None
        if path == "/late-raise":
            await asyncio.sleep(0.01)
            raise KeyError("later")
        await answer(send, b"ok")

    s = started(holding(app))
    try:
        paths = ["/hold", "/raise", "/ok", "/silent", "/ok", "/late-raise", "/ok"]
        got = send_all(s.port, paths)
    finally:
        s.stop()
    assert [status for status, _ in got] == [200, 500, 200, 500, 200, 500, 200]


def test_graceful_stop_waits_for_an_app_that_waits():
    started_event = threading.Event()

    async def app(scope, receive, send):
        started_event.set()
        await asyncio.sleep(0.5)
        await answer(send, b"done late")

    s = started(app)
    c = RawClient(s.port)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert started_event.wait(10)
        stopper = threading.Thread(target=s.stop, kwargs={"timeout": 10})
        stopper.start()
        status, _, body = c.read_response()
        stopper.join(15)
    finally:
        c.close()
    assert (status, body) == (200, b"done late")


@pytest.mark.skipif(not BATCHED, reason="batches are for Python < 3.12 (3.12+: eager tasks)")
def test_a_batch_is_one_task_registered_until_it_ends():
    """The batch's Task is in the handler's tasks while an app in it waits (graceful stop
    and shutdown see it), and leaves them when it ends."""
    gate = {}

    async def app(scope, receive, send):
        gate.setdefault("e", asyncio.Event())
        if scope["path"] == "/wait":
            gate["task"] = asyncio.current_task()
            await gate["e"].wait()
        else:
            gate["e"].set()
        await answer(send, b"ok")

    s = started(app)
    try:
        c = RawClient(s.port)
        c.send(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: "task" in gate, what="the waiting app")
        assert gate["task"] in s.handler._tasks
        coro = gate["task"].get_coro()
        assert type(coro).__name__ == "ASGIBatch"
        other = RawClient(s.port)
        other.send(b"GET /go HTTP/1.1\r\nHost: t\r\n\r\n")
        assert other.read_response()[0] == 200 and c.read_response()[0] == 200
        wait_until(lambda: not s.handler._tasks, what="the batch leaving the tasks")
        other.close()
        c.close()
    finally:
        s.stop()


@pytest.mark.skipif(not BATCHED, reason="batches are for Python < 3.12 (3.12+: eager tasks)")
def test_an_app_that_waits_does_not_keep_the_requests_before_it():
    """The apps of its batch that ended before it let their requests go at once, not
    when the waiting one ends (a long poll would keep them)."""
    from pymongoose_uring import _native

    gate = {}

    async def app(scope, receive, send):
        path = scope["path"]
        if path == "/wait":
            gate["e"] = asyncio.Event()
            await gate["e"].wait()
        await answer(send, b"ok")

    s = started(holding(app))
    clients = [RawClient(s.port) for _ in range(6)]
    try:
        base = _native._pmu.requests_alive()
        clients[0].send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        for c in clients[1:5]:
            c.send(b"GET /quick HTTP/1.1\r\nHost: t\r\n\r\n")
        clients[5].send(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        for c in clients[:5]:
            assert c.read_response()[0] == 200
        wait_until(lambda: "e" in gate, what="the waiting app")
        gc.collect()
        # the waiting request alone is held (give or take the ones the loop freed late)
        wait_until(lambda: _native._pmu.requests_alive() <= base + 1, what="requests freed")
        s.handler.loop.call_soon_threadsafe(gate["e"].set)
        assert clients[5].read_response()[0] == 200
    finally:
        for c in clients:
            c.close()
        s.stop()


def test_mixed_apps_under_load_all_answered_nothing_kept(monkeypatch):
    """Many connections at once, each request doing one of: answer at once, answer after
    a wait, raise before or after a wait, return without answering, cancel its own task
    while waiting. Every request gets its own status, and once all is done no request is
    held (the batches and their tasks let everything go)."""
    import http.client
    import logging
    import random

    from pymongoose_uring import _native

    # The errors' log records are dropped: pytest's capture would keep them, and with
    # them the tracebacks' frames and the requests they hold.
    log = logging.getLogger("pymongoose_uring")
    monkeypatch.setattr(log, "propagate", False)
    monkeypatch.setattr(log, "handlers", [logging.NullHandler()])

    expected = {"/now": 200, "/later": 200, "/raise": 500, "/late-raise": 500}
    expected.update({"/silent": 500, "/cancel": 503})

    async def app(scope, receive, send):
        path = scope["path"]
        if path in ("/later", "/late-raise", "/cancel"):
            if path == "/cancel":
                asyncio.current_task().cancel()
            await asyncio.sleep(0.001 * random.random())
        if path in ("/raise", "/late-raise"):
            raise RuntimeError(path)
        if path == "/silent":
            return
        await answer(send, path.encode())

    s = started(app)
    base = _native._pmu.requests_alive()
    failures = []

    def client(seed):
        rnd = random.Random(seed)
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        try:
            for _ in range(60):
                path = rnd.choice(list(expected))
                c.request("GET", path)
                r = c.getresponse()
                body = r.read()
                if r.status != expected[path] or (r.status == 200 and body != path.encode()):
                    failures.append((path, r.status, body))
                if r.getheader("connection", "").lower() == "close":
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failures == []
        gc.collect()
        wait_until(lambda: _native._pmu.requests_alive() <= base, what="requests freed")
        wait_until(lambda: not s.handler._tasks, what="the tasks ending")
    finally:
        s.stop()
