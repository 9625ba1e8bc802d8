"""benchmarks/hostile_fd.py's fd-exhaustion scenario against two tiny servers whose answer
to EMFILE is known: one that logs and stops accepting for half a second (as nginx does), one
that retries at once without a word. The scenario must tell them apart."""

import argparse
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hostile_fd  # noqa: E402
from bench import registry  # noqa: E402
from bench.session import Built  # noqa: E402

SERVER = r"""
import errno, selectors, socket, sys, time
port, polite = int(sys.argv[1]), sys.argv[2] == "polite"
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(1024)
ls.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(ls, selectors.EVENT_READ)
body = b'{"message":"Hello, World!"}'
answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
          % len(body) + body)
resume = None
while True:
    if resume is not None and time.monotonic() >= resume:
        sel.register(ls, selectors.EVENT_READ)
        resume = None
    for key, _ in sel.select(0.1 if resume is not None else None):
        if key.fileobj is ls:
            try:
                c, _ = ls.accept()
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                if polite:
                    print("accept() failed: Too many open files", file=sys.stderr, flush=True)
                    sel.unregister(ls)
                    resume = time.monotonic() + 0.5
                continue  # impolite: epoll reports the listener ready again at once
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
        else:
            c = key.fileobj
            try:
                data = c.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(c)
                c.close()
            elif b"\r\n\r\n" in data:
                c.sendall(answer)
"""


@pytest.fixture
def args():
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return argparse.Namespace(
        connections=150,
        nofile=64,
        hold=6.0,
        sample=2.0,
        answer_within=5.0,
        server_cpus=cpus,
        client_cpus=cpus,
    )


@pytest.mark.parametrize("mode", ["polite", "spinning"])
def test_fd_exhaustion_measures_cpu_logging_and_recovery(mode, args, tmp_path):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    definition = registry.Server(mode, mode, ("{python}", str(script), "{port}", mode), kind="peer")
    row = hostile_fd.scenario(definition, hostile_fd.free_port(), Built(), args, str(tmp_path))
    assert row["held"] == args.connections  # the kernel completes them all (backlog 1024)
    assert row["answered_after"], row
    assert row["closed_by_server"] == 0  # neither server drops what it accepted
    if mode == "polite":
        assert row["logged_lines"] >= 1
        assert row["logged_first"] == "accept() failed: Too many open files"
        assert row["cpu_percent"] < 10, row
    else:
        assert row["logged_lines"] == 0
        assert row["cpu_percent"] > 10, row  # a busy loop, even on a shared CPU


def test_hostile_fd_refuses_unknown_servers():
    with pytest.raises(SystemExit) as exit:
        hostile_fd.main(["--servers", "hello_c,nope"])
    assert exit.value.code == 2
