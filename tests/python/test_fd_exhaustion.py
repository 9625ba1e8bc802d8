"""Out of file descriptors, the server backs off instead of spinning: it logs
the failure through the "pymongoose_uring" logger (once a second at most),
counts it in stats()["accept_errors"], uses no CPU to speak of while accept
would fail, and accepts again as soon as a connection closes."""

import os
import socket
import subprocess
import sys
import tempfile
import time

from conftest import wait_for_line

CHILD = r"""
import logging, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(name)s %(levelname)s %(message)s")
from pymongoose_uring import Server
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
server = Server(lambda request: "ok", port=0, header_timeout_ms=0,
                accept_backoff_ms=60000).start()
print("PORT", server.port, file=sys.stderr, flush=True)
sys.stdin.readline()
print("ACCEPT_ERRORS", server.stats()["accept_errors"], flush=True)
server.stop()
"""


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_emfile_backs_off_logs_counts_and_resumes_on_close():
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    clients = []
    try:
        port = int(wait_for_line(proc, "PORT").split()[1])
        for _ in range(300):  # more than the child's 128 descriptors
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            clients.append(s)
        line = wait_for_line(proc, "accept failed")
        assert line.strip() == (
            "pymongoose_uring WARNING accept failed: Too many open files "
            "(EMFILE); pausing accepts for 60000 ms"
        )
        before, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(1.0)
        used = cpu_seconds(proc.pid) - before
        assert used < 0.3, f"the server used {used:.2f} s of CPU in {time.monotonic() - t0:.2f} s"
        # The clients go: the server's connections close and it accepts at once,
        # long before the 60 s backoff.
        for s in clients:
            s.close()
        clients = []
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200 OK")
        out, err = proc.communicate("\n", timeout=30)
        assert int(out.split()[1]) > 0, out
        assert err.count("accept failed") <= 2, err  # one a second at most
    finally:
        for s in clients:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_counters_and_knob_are_exposed(serve):
    import pymongoose_uring

    assert pymongoose_uring.config_defaults()["accept_backoff_ms"] == 500
    server = serve(lambda request: "x", accept_backoff_ms=100)
    stats = server.stats()
    assert stats["accept_errors"] == 0 and stats["wait_errors"] == 0
    assert server.config["accept_backoff_ms"] == 100
