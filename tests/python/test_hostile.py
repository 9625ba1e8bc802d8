"""What a hostile client can take from a server, seen from the Python API:
request bodies beyond body_buffer_budget are spooled to an unlinked file and
still reach the handler whole; a pipelining client that never reads cannot
make the handler produce more than about output_high_water for it."""

import os
import socket
import tempfile
import time

from conftest import request, wait_until


def test_bodies_beyond_the_budget_are_spooled_and_reach_the_handler_whole(serve):
    seen = []

    def app(req):
        seen.append(len(req.body))
        return req.body

    with tempfile.TemporaryDirectory() as spool:
        server = serve(app, body_buffer_budget=4096, body_spool_dir=spool, max_body_bytes=1 << 20)
        body = os.urandom(300_000)
        status, _, got, _ = request(server, "POST", "/", body=body)
        assert status == 200 and got == body
        small = b"x" * 100
        status, _, got, _ = request(server, "POST", "/", body=small)
        assert status == 200 and got == small
        assert server.stats()["bodies_spooled"] == 1  # the large one only
        deadline = time.monotonic() + 5  # freed once the answer is on the wire
        while server.stats()["body_buffer_bytes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats()["body_buffer_bytes"] == 0  # every body given back
        assert os.listdir(spool) == []  # the file was never named
        assert server.config["body_buffer_budget"] == 4096


def _read_answers(sock, count, size):
    """Read count answers with a body of size bytes each; their X-I values."""
    buf = b""
    found = []
    while len(found) < count:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1")
            length = int(
                [
                    ln.split(":", 1)[1]
                    for ln in head.split("\r\n")
                    if ln.lower().startswith("content-length:")
                ][0]
            )
            if len(buf) >= head_end + 4 + length:
                assert length == size
                found.append(
                    int(
                        [
                            ln.split(":", 1)[1]
                            for ln in head.split("\r\n")
                            if ln.lower().startswith("x-i:")
                        ][0]
                    )
                )
                buf = buf[head_end + 4 + length :]
                continue
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed after %d answers" % len(found)
        buf += chunk
    return found


def test_unread_pipelined_answers_are_not_produced_ahead(serve):
    conns, depth, size = 10, 64, 1 << 20
    calls = []

    def app(req):
        calls.append(req.conn_id)
        return bytes(size), 200, {"X-I": req.query_string}

    server = serve(app)
    socks = []
    sent = server.stats()["bytes_in"]
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", server.port))
        pipeline = b"".join(b"GET /?%d HTTP/1.1\r\nHost: p\r\n\r\n" % i for i in range(depth))
        s.sendall(pipeline)
        sent += len(pipeline)
        socks.append(s)
    # the server has taken every pipelined request in
    wait_until(lambda: server.stats()["bytes_in"] >= sent, what="the server reading the pipelines")
    t0 = time.monotonic()
    status, _, body, _ = request(server, "GET", "/?other")
    latency = time.monotonic() - t0
    assert status == 200 and len(body) == size
    ran = len(calls) - 1
    # Before: every pipelined request ran at once (conns * depth answers queued).
    assert ran <= conns * 8, "%d of %d requests ran while nobody read" % (ran, conns * depth)
    assert latency < 1.0, "another client waited %.3f s" % latency
    for s in socks:
        s.settimeout(10)
        assert _read_answers(s, depth, size) == list(range(depth))
        s.close()
    assert len(calls) == conns * depth + 1
