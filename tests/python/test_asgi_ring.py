"""Where the ASGI adapter's ring runs: on the event loop's own thread (ring="loop",
the default with one ring: the engine is driven by the loop, no hand-off per batch)
or on ring threads of its own (ring="thread", and any threads > 1)."""

import asyncio
import http.client
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import recv_until_closed, request, wait_until
from pymongoose_uring import asgi
from pymongoose_uring.asgi import ASGIServer


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    body = threading.current_thread().name.encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def get(server, path="/"):
    status, _, body, _ = request(server, path=path)
    return status, body


def started(app, **options):
    options.setdefault("lifespan", "off")
    return ASGIServer(app, "127.0.0.1", 0, **options).start()


def test_one_ring_runs_on_the_loops_thread_by_default():
    s = started(hello)
    try:
        # A driven engine (only those have a descriptor), driven by this handler; that
        # no ring thread runs beside the loop's is counted in a fresh process below.
        assert s.server._engine.fileno() >= 0
        assert s.handler._engine is s.server._engine
        assert s.handler._engine is not None
        assert get(s) == (200, b"pymongoose_uring-asgi")
    finally:
        s.stop()
    assert s.handler._engine is None and s.handler._ring_fd == -1


def test_ring_thread_keeps_ring_threads_of_its_own():
    s = started(hello, ring="thread")
    try:
        assert s.server._engine.fileno() == -1
        assert s.handler._engine is None
        assert get(s) == (200, b"pymongoose_uring-asgi")
    finally:
        s.stop()


def test_more_threads_take_ring_threads_and_ring_loop_refuses_them():
    s = started(hello, threads=2)
    try:
        assert s.server._engine.fileno() == -1 and s.handler._engine is None
        assert get(s)[0] == 200
    finally:
        s.stop()
    with pytest.raises(ValueError, match="threads must be 1"):
        started(hello, ring="loop", threads=2)
    with pytest.raises(ValueError, match="ring must be"):
        ASGIServer(hello, ring="ring")


def test_answers_after_awaits_and_from_other_threads_all_arrive():
    """Immediate answers, answers after a sleep (given between the ring's steps, on
    the loop's thread: no kernel wake-up) and answers after a thread's work
    (run_in_executor), mixed over keep-alive connections."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        kind = scope["path"]
        if kind == "/sleep":
            await asyncio.sleep(0.005)
        elif kind == "/thread":
            await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.005)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": kind.encode()})

    s = started(app)
    errors = []

    def client(n):
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        try:
            for i in range(30):
                path = ("/now", "/sleep", "/thread")[(i + n) % 3]
                c.request("GET", path)
                r = c.getresponse()
                body = r.read()
                if (r.status, body) != (200, path.encode()):
                    errors.append((path, r.status, body))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            c.close()

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
    finally:
        s.stop()


def test_timers_fire_with_the_loop_otherwise_idle():
    """The keep-alive timeout closes an idle connection: the ring asked the loop
    for that time (call_at), nothing else wakes it."""
    s = started(hello, keepalive_timeout_ms=300)
    try:
        c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        t0 = time.monotonic()
        data = recv_until_closed(c)
        took = time.monotonic() - t0
        c.close()
        assert data.startswith(b"HTTP/1.1 200")
        assert 0.25 <= took < 2.0, took
    finally:
        s.stop()


def test_graceful_stop_lets_a_request_in_flight_finish():
    async def slow(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    s = started(slow)
    got = []
    t = threading.Thread(target=lambda: got.append(get(s)))
    t.start()
    time.sleep(0.1)  # the request is with the app
    t0 = time.monotonic()
    s.stop()
    t.join(10)
    assert got == [(200, b"late")]
    assert time.monotonic() - t0 < 5
    assert not s.running


def test_stop_from_the_app_on_the_loops_thread_does_not_wait_for_itself():
    holder = {}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        holder["server"].server.stop()  # on the loop's thread: only begins the stop
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"bye"})

    s = started(app)
    holder["server"] = s
    try:
        assert get(s) == (200, b"bye")
        wait_until(lambda: s.handler._engine is None, 5, "the loop's last step of the ring")
        assert s.server._engine.fileno() == -1  # and the ring is gone
    finally:
        s.stop()
    assert not s.running


def test_blocking_on_the_engine_from_the_loops_thread_is_refused():
    result = {}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        engine = result["server"].server._engine
        try:
            engine.wait(0.1)
        except RuntimeError as exc:
            result["wait"] = str(exc)
        result["in_ring"] = engine.in_ring_thread()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    s = started(app)
    result["server"] = s
    try:
        assert get(s)[0] == 200
        assert "wait for itself" in result["wait"]
        assert result["in_ring"] is True
    finally:
        s.stop()


def test_cli_asgi_ring_option(tmp_path):
    (tmp_path / "ringapp.py").write_text(
        "import threading\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    n = str(len(__import__('os').listdir('/proc/self/task'))).encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': n})\n"
    )
    counts = {}
    for mode in ("loop", "thread"):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pymongoose_uring", "ringapp:app", "--interface", "asgi"]
            + ["--port", str(port), "--asgi-ring", mode, "--lifespan", "off"],
            cwd=str(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    c.request("GET", "/")
                    r = c.getresponse()
                    counts[mode] = int(r.read())
                    c.close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(20)
    assert counts["thread"] == counts["loop"] + 1  # the ring thread


def test_a_task_factory_the_app_sets_makes_the_request_tasks():
    """Request tasks are made as asyncio.Task(...) directly, unless the loop has a
    task factory when the server starts (one the lifespan startup set): then it."""
    made = []

    def factory(loop, coro, **kwargs):
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    asyncio.get_running_loop().set_task_factory(factory)
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    for ring in ("loop", "thread"):
        made.clear()
        s = started(app, lifespan="on", ring=ring)
        try:
            assert get(s) == (200, b"ok") and get(s) == (200, b"ok")
        finally:
            s.stop()
        assert len(made) >= 2, ring


@pytest.mark.parametrize("ring", ["loop", "thread"])
def test_the_app_runs_in_its_own_task_from_its_first_step(ring):
    """Each request's coroutine runs as a Task of its own (started eagerly on Python
    3.12+), which asyncio.current_task() gives from the first line on, as anyio's
    cancel scopes (Starlette, FastAPI) need."""
    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        task = asyncio.current_task()
        seen.append(task)
        body = b"%d %s" % (
            task is not None and task.get_coro() is not None,
            task.get_name().encode(),
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    s = started(app, ring=ring)
    try:
        assert get(s) == (200, b"1 pymongoose_uring-request")
        assert get(s) == (200, b"1 pymongoose_uring-request")
    finally:
        s.stop()
    assert len(seen) == 2 and seen[0] is not seen[1]


@pytest.mark.parametrize("ring", ["loop", "thread"])
def test_tasks_done_in_their_first_step_need_no_done_callback(ring):
    """A task that is done once the batch's first steps have run ends there (_sweep;
    on 3.12+ in its eager constructor): no done callback, no loop callback for it.
    One that waits gets the callback, and ends through it."""
    s = started(hello, ring=ring)
    calls = []
    real = s.handler._finished
    s.handler._finished = lambda task: (calls.append(task), real(task))
    try:
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        for _ in range(30):  # one at a time: each batch holds one request
            c.request("GET", "/")
            r = c.getresponse()
            assert r.status == 200 and r.read() == b"pymongoose_uring-asgi"
        c.close()
        assert calls == []
    finally:
        s.stop()

    async def slow(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.01)
        raise ValueError("after a wait")

    s = started(slow, ring=ring)
    calls = []
    real = s.handler._finished
    s.handler._finished = lambda task: (calls.append(task), real(task))
    try:
        assert get(s)[0] == 500
        # 3.12+: its own (eager) task, ended through the done callback; before, the
        # batch's Task it waited in ran it to its end (the batch's end is C's callback)
        assert len(calls) == (1 if asgi._EAGER else 0)
    finally:
        s.stop()


def test_start_driven_with_a_handler_in_place_of_the_engines():
    """Engine.start_driven(wake, handler): the engine calls `handler` for each request
    (the ASGI adapter passes its ASGIStarter); a start refused keeps the engine's own."""
    from pymongoose_uring import _native

    seen = []

    def own(req):
        seen.append("own")
        req.reply("own")

    def driven(req):
        seen.append(threading.current_thread().name)
        req.reply("driven")

    raw = _native._pmu.Engine(None, raw=True, connection_handler=lambda *a: None, port=0)
    with pytest.raises(TypeError, match="no handler to replace"):
        raw.start_driven(None, driven)
    engine = _native._pmu.Engine(own, host="127.0.0.1", port=0, threads=2)
    with pytest.raises(TypeError, match="must be callable"):
        engine.start_driven(None, 42)
    with pytest.raises(ValueError, match="threads must be 1"):
        engine.start_driven(None, driven)
    engine.start()  # on ring threads, with its own handler still
    try:
        assert request(engine)[2] == b"own"
    finally:
        engine.stop()
        engine.wait()
    assert seen == ["own"]
    seen.clear()
    engine = _native._pmu.Engine(own, host="127.0.0.1", port=0, threads=1)
    engine.start_driven(None, driven)
    answers = []
    client = threading.Thread(
        target=lambda: answers.extend(request(engine)[2] for _ in range(3)), name="client"
    )
    client.start()
    while client.is_alive():
        select.select([engine.fileno()], [], [], 0.02)
        engine.step()
    engine.stop()
    while engine.step() is not None:
        time.sleep(0.001)
    assert answers == [b"driven"] * 3
    assert seen == [threading.current_thread().name] * 3
