"""The pymongoose compatibility layer: a pymongoose-style script, unchanged but
for its import, and the objects it relies on."""

import json
import signal
import textwrap
import threading
import time

import pytest

from conftest import RawClient, request, spawn, wait_for_line
from pymongoose_uring import compat
from pymongoose_uring.compat import MG_EV_HTTP_MSG, Manager

# Written the way pymongoose's own examples are; only the import differs.
PYMONGOOSE_SCRIPT = textwrap.dedent("""
    import json
    import sys
    from pymongoose_uring.compat import Manager, MG_EV_HTTP_MSG, MG_EV_ACCEPT

    def handler(conn, ev, data):
        if ev == MG_EV_ACCEPT:
            return
        if ev == MG_EV_HTTP_MSG:
            if data.uri == "/binary":
                conn.reply(200, b"a\\x00b\\x00c", headers={"Content-Type": "application/octet-stream"})
            elif data.uri == "/json":
                conn.reply(200, json.dumps({
                    "method": data.method, "uri": data.uri, "query": data.query,
                    "proto": data.proto, "body": data.body_text,
                    "len": len(data.body_bytes), "ua": data.header("User-Agent"),
                    "missing": data.header("X-Missing", "none"),
                    "headers": data.headers(), "q": data.query_var("q"),
                }), headers={"Content-Type": "application/json"})
            else:
                conn.reply(404, "Not Found")

    def main():
        manager = Manager(handler)
        listener = manager.listen("http://127.0.0.1:0", http=True)
        try:
            print("listening on port %d" % listener.local_addr[1], file=sys.stderr, flush=True)
            while True:
                manager.poll(1000)
        except KeyboardInterrupt:
            pass
        finally:
            manager.close()
        print("closed", flush=True)

    main()
""")


class _At:
    def __init__(self, port):
        self.port = port


def test_pymongoose_script_runs_unchanged():
    proc = spawn(PYMONGOOSE_SCRIPT)
    try:
        line = wait_for_line(proc, "listening on port")
        s = _At(int(line.split()[-1]))
        status, headers, body, _ = request(
            s, "POST", "/json?q=x%20y&r=1", body=b"hello", headers={"User-Agent": "compat-test"}
        )
        assert status == 200 and headers["content-type"] == "application/json"
        d = json.loads(body)
        assert d["method"] == "POST" and d["uri"] == "/json" and d["query"] == "q=x%20y&r=1"
        assert d["proto"] == "HTTP/1.1" and d["body"] == "hello" and d["len"] == 5
        assert d["ua"] == "compat-test" and d["missing"] == "none" and d["q"] == "x y"
        assert ["User-Agent", "compat-test"] in d["headers"]
        status, _, body, _ = request(s, path="/binary")
        assert (status, body) == (200, b"a\x00b\x00c")  # NUL bytes survive
        status, headers, body, _ = request(s, path="/other")
        assert (status, body) == (404, b"Not Found")
        assert headers["content-type"] == "text/plain"  # pymongoose's default
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "closed" in out


def test_listener_handler_applies_to_its_connections():
    calls = []

    def default(conn, ev, data):
        if ev != MG_EV_HTTP_MSG:
            return
        calls.append("default")
        conn.reply(200, "default")

    def special(conn, ev, data):
        if ev != MG_EV_HTTP_MSG:
            return
        calls.append("special")
        assert conn.id > 0 and not conn.is_listening
        assert conn.remote_addr[0] == "127.0.0.1" and conn.local_addr[2] is False
        conn.reply(201, "special", headers={"X-Listener": "special"})

    mgr = Manager(default)
    try:
        a = mgr.listen("http://127.0.0.1:0", http=True)
        b = mgr.listen("127.0.0.1:0", special, http=True)
        assert a.is_listening and b.handler is special
        assert request(_At(a.local_addr[1]))[2] == b"default"
        status, headers, body, _ = request(_At(b.local_addr[1]))
        assert (status, body, headers["x-listener"]) == (201, b"special", "special")
        mgr.poll(0)
    finally:
        mgr.close()
    assert calls == ["default", "special"]


def test_deferred_conn_reply_from_a_thread():
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            body = data.body_bytes
            threading.Timer(0.05, conn.reply, args=(200, body[::-1])).start()

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        assert request(_At(listener.local_addr[1]), "POST", body=b"abc")[2] == b"cba"


def test_drain_closes_after_reply():
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.drain()
            conn.reply(200, "last")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        c = RawClient(listener.local_addr[1])
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response()[2] == b"last"
        assert c.closed_by_server()
        c.close()


def test_handler_exception_gives_500():
    def handler(conn, ev, data):
        raise RuntimeError("compat boom")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        assert request(_At(listener.local_addr[1]))[0] == 500


@pytest.mark.no_uring_ok
def test_constants_and_refusals():
    assert (
        compat.MG_EV_ERROR,
        compat.MG_EV_ACCEPT,
        compat.MG_EV_CLOSE,
        compat.MG_EV_HTTP_HDRS,
        compat.MG_EV_HTTP_MSG,
        compat.MG_EV_USER,
    ) == (0, 5, 9, 10, 11, 20)
    mgr = Manager(lambda c, e, d: None)
    with pytest.raises(RuntimeError, match="Failed to listen on 'udp://"):
        mgr.listen("udp://127.0.0.1:0")  # UDP: not provided
    with pytest.raises(NotImplementedError):
        mgr.mqtt_listen("mqtt://127.0.0.1:0")
    with pytest.raises(NotImplementedError):
        mgr.connect("tcp://127.0.0.1:1")
    mgr.close()
    with pytest.raises(RuntimeError):
        mgr.poll(0)


def test_poll_waits_and_serves_meanwhile():
    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.reply(200, "polled")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        t0 = time.monotonic()
        mgr.poll(50)
        assert time.monotonic() - t0 >= 0.045
        assert request(_At(listener.local_addr[1]))[2] == b"polled"
