"""pymongoose's own example programs on the compatibility layer, run from a checkout of
its repository (or the mirror) with only their import changed: the plain TCP echo
server (a handler given to listen() of a Manager() without one), the RESTful server's
chunked /api/stats (conn.send of a hand-made head, then http_chunk), the SSE server
(a head by send(), then http_sse), and the multithreaded server (threads answering
through Manager.wakeup). Skipped where no checkout is available."""

import http.client
import signal
import socket
import subprocess
import sys

import pytest
from pymongoose_checkout import free_port, pymongoose_source, wait_serving


@pytest.fixture
def example(tmp_path):
    """example(rel, *args) -> port: the example at rel (a path in pymongoose's
    repository) started with `-l <url of a free port>` and args; stopped with SIGINT
    at the end of the test, which it must survive with exit status 0."""
    started = []

    def start(rel, scheme, *args):
        script = tmp_path / rel.rsplit("/", 1)[-1]
        script.write_text(pymongoose_source(rel))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(script), "-l", "%s://127.0.0.1:%d" % (scheme, port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(tmp_path),
        )
        started.append(proc)
        wait_serving(proc, port)
        return port

    yield start
    for proc in started:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError("the example did not stop on SIGINT: %s" % err) from None
        assert proc.returncode == 0, err


def test_tcp_echo_server_echoes(example):
    port = example("tests/examples/network/tcp_echo_server.py", "tcp", "--server")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"Hello, echo server!")
        got = b""
        while len(got) < 19:
            got += s.recv(100)
        assert got == b"Hello, echo server!"


def test_restful_server_api_stats_is_a_chunked_answer(example):
    port = example("tests/examples/http/http_restful_server.py", "http")
    h = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h.request("GET", "/api/stats")
    r = h.getresponse()
    body = r.read().decode()
    assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
    assert body.startswith("ID PROTO TYPE") and "TCP  ACCEPTED  127.0.0.1:" in body
    h.request("GET", "/api/f2/abc")  # the same connection, after the chunked answer
    r = h.getresponse()
    assert r.status == 200 and b'"result": "/api/f2/abc"' in r.read()
    h.close()


def test_sse_server_streams_events(example):
    port = example("tests/examples/http/http_sse_server.py", "http")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        got = b""
        while b"Welcome to SSE server!" not in got:
            piece = s.recv(4096)
            assert piece, got
            got += piece
    assert got.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
    assert b"event: connected\ndata: Welcome to SSE server!\n\n\r\n" in got


def test_multithreaded_server_answers_from_wakeup(example):
    port = example("tests/examples/advanced/multithreaded_server.py", "http", "-t", "0.2")
    h = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h.request("GET", "/slow")
    r = h.getresponse()
    assert r.status == 200 and b"completed after 0.2s" in r.read()
    h.close()
