"""The WSGI pool (binding/wsgi.c's WSGIPool): the engine queues requests without the GIL;
quick calls run back to back on one thread; the watchdog wakes another thread when a
call blocks, so a blocking app delays the others only briefly and an app that calls its
own server is answered."""

import http.client
import os
import threading
import time
import urllib.request

import pytest

from conftest import request
from pymongoose_uring import _native, wsgi as pmu_wsgi

POOL = "pymongoose_uring-wsgi-"


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [threading.current_thread().name.encode()]


def test_the_engine_fills_the_pool_and_quick_calls_stay_on_one_thread(serve_wsgi, monkeypatch):
    # A long stall: only a call blocked for 0.5 s would wake a second thread, so on a
    # loaded machine too, quick calls from many connections run on one thread.
    monkeypatch.setattr(pmu_wsgi, "_STALL", 0.5)
    server = serve_wsgi(hello, pool_threads=4)
    queue = server.handler._queue
    names = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for _ in range(50):
            conn.request("GET", "/")
            names.append(conn.getresponse().read().decode())
        conn.close()

    clients = [threading.Thread(target=client) for _ in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(30)
    assert len(names) == 400 and all(n.startswith(POOL) for n in names)
    # Whichever thread was woken took each burst alone: never two at once, so never
    # a second thread while the first was running; the watchdog woke none.
    assert queue.watchdog_wakes == 0
    assert queue.done >= 400


def test_a_blocked_call_lets_another_thread_run_the_others(serve_wsgi):
    """/quick queued behind a blocked /block runs on another thread (woken by the
    watchdog, or by the ring once the watchdog found /block stuck)."""
    release, entered = threading.Event(), threading.Event()
    ran = {}

    def app(environ, start_response):
        ran[environ["PATH_INFO"]] = threading.current_thread().name
        if environ["PATH_INFO"] == "/block":
            entered.set()
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    server = serve_wsgi(app, pool_threads=2)
    blocked = threading.Thread(target=lambda: request(server, path="/block"))
    blocked.start()
    assert entered.wait(10)
    t0 = time.monotonic()
    assert request(server, path="/quick")[2] == b"/quick"
    assert time.monotonic() - t0 < 5  # (the stall is 1 ms; generous for a loaded machine)
    assert not release.is_set() and ran["/quick"] != ran["/block"]
    release.set()
    blocked.join(10)


def test_an_app_calling_its_own_server_is_answered(serve_wsgi):
    """The call to itself waits in the queue behind the calling request: the watchdog
    sees no call end and wakes a second thread for it."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/outer":
            url = "http://127.0.0.1:%s/inner" % environ["SERVER_PORT"]
            with urllib.request.urlopen(url, timeout=10) as r:
                return [b"outer+" + r.read()]
        return [b"inner"]

    server = serve_wsgi(app, pool_threads=2)
    assert request(server, path="/outer", timeout=15)[2] == b"outer+inner"


def test_pool_queue_arguments_and_put():
    pool = _native._pmu.WSGIPool(0.01)
    with pytest.raises(TypeError):
        pool.put("not a request")
    with pytest.raises(ValueError):
        _native._pmu.WSGIPool(0)
    assert len(pool) == 0 and pool.done == 0
    pool.close()
    # A closed, empty pool lets serve() return at once.
    pool.serve(lambda request: None)


def _burst(server, clients=8, each=4):
    """`clients` threads, each `each` requests on one connection; their answers."""
    bodies = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        for _ in range(each):
            conn.request("GET", "/")
            bodies.append(conn.getresponse().read())
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return bodies


def test_the_ring_lingers_while_the_pool_is_behind(serve_wsgi):
    """busy_linger_us: while requests wait in the pool's queue (config.busy says so),
    an idle ring waits for busy_linger_batch completions or busy_linger_us instead of
    the first (stats()["lingers"]); off by default, and never once the queue is empty."""

    def slow(environ, start_response):
        time.sleep(0.005)  # the queue fills behind the one thread
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    plain = serve_wsgi(slow, pool_threads=1)
    assert len(_burst(plain)) == 32
    assert plain.stats()["lingers"] == 0  # busy_linger_us is 0 by default

    lingering = serve_wsgi(slow, pool_threads=1, busy_linger_us=2000, busy_linger_batch=8)
    assert _burst(lingering) == [b"ok"] * 32
    assert lingering.stats()["lingers"] > 0
    idle = lingering.stats()["lingers"]
    for _ in range(5):  # one at a time: nothing ever waits in the queue
        assert request(lingering)[2] == b"ok"
    assert lingering.stats()["lingers"] == idle


def _policy_and_name(tid):
    """(scheduling policy, name) of thread `tid` of this process, from /proc."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        policy = int(f.read().rsplit(")", 1)[1].split()[38])  # field 41: policy
    with open(f"/proc/self/task/{tid}/comm") as f:
        return policy, f.read().strip()


def _threads_named(prefix):
    """{name: policy} of this process's threads whose name starts with `prefix`."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            policy, name = _policy_and_name(tid)
        except OSError:  # ended meanwhile
            continue
        if name.startswith(prefix):
            found[name] = policy
    return found


def whoami(environ, start_response):
    """The calling thread's policy and name (the pool thread's)."""
    policy, name = _policy_and_name(threading.get_native_id())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d %s" % (policy, name.encode())]


def test_the_pool_and_ring_threads_run_under_sched_batch_by_default(serve_wsgi):
    """WSGIServer's sched_batch (on unless given): the ring threads, the pool threads and
    the watchdog run under SCHED_BATCH, so a ring thread woken by the network does not
    preempt the pool thread running the app on the same CPU; every thread is named."""
    server = serve_wsgi(whoami, pool_threads=2, threads=2)
    policy, name = request(server)[2].decode().split()
    assert int(policy) == os.SCHED_BATCH and name.startswith("pmu-wsgi-")
    assert all(server.ring_info(i)["sched_batch"] for i in range(2))
    assert _threads_named("pmu-ring-") == {
        "pmu-ring-0": os.SCHED_BATCH,
        "pmu-ring-1": os.SCHED_BATCH,
    }
    assert _threads_named("pmu-wsgi-watch") == {"pmu-wsgi-watch": os.SCHED_BATCH}


def test_sched_batch_off(serve_wsgi):
    server = serve_wsgi(whoami, pool_threads=1, sched_batch=False)
    policy, name = request(server)[2].decode().split()
    assert int(policy) == os.SCHED_OTHER and name.startswith("pmu-wsgi-")
    assert not server.ring_info(0)["sched_batch"]


def test_a_plain_server_keeps_the_normal_policy_unless_asked(serve):
    """The engine knob is off by default (native handlers run on the ring thread, which
    then competes with no thread of ours); sched_batch=True turns it on."""

    def handler(request):
        request.reply(b"%d" % os.sched_getscheduler(0))

    plain = serve(handler)
    assert int(request(plain)[2]) == os.SCHED_OTHER
    assert not plain.ring_info(0)["sched_batch"]
    batch = serve(handler, sched_batch=True)
    assert int(request(batch)[2]) == os.SCHED_BATCH
    assert batch.ring_info(0)["sched_batch"]


def test_serve_gives_its_thread_its_own_policy_back():
    """A thread that calls WSGIPool(sched_batch=True).serve() runs under SCHED_BATCH while
    it serves (here parked: nothing queued) and under its own policy after."""
    pool = _native._pmu.WSGIPool(0.01, sched_batch=True)
    after = []

    def worker():
        pool.serve(lambda request: None)
        after.append(os.sched_getscheduler(0))

    t = threading.Thread(target=worker)
    t.start()
    deadline = time.monotonic() + 10
    while (
        not _policy_and_name(t.native_id)[1].startswith("pmu-wsgi-") and time.monotonic() < deadline
    ):
        time.sleep(0.01)  # until serve() named it
    assert _policy_and_name(t.native_id)[0] == os.SCHED_BATCH
    pool.close()
    t.join(10)
    assert after == [os.SCHED_OTHER]
