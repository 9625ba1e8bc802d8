"""What a hostile client can take from a server, seen from the Python API:
request bodies beyond body_buffer_budget are spooled to an unlinked file and
still reach the handler whole; a pipelining client that never reads cannot
make the handler produce more than about output_high_water for it."""
import os
import socket
import tempfile
import threading
import time

from conftest import request


def test_bodies_beyond_the_budget_are_spooled_and_reach_the_handler_whole(serve):
    seen = []

    def app(req):
        seen.append(len(req.body))
        return req.body

    with tempfile.TemporaryDirectory() as spool:
        server = serve(app, body_buffer_budget=4096, body_spool_dir=spool,
                       max_body_bytes=1 << 20)
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
        assert os.listdir(spool) == []          # the file was never named
        assert server.config["body_buffer_budget"] == 4096
