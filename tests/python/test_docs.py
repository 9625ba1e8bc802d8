"""The Python examples of README.md run as written.

Every ```python block is run in a subprocess. A block that serves forever
(``.run()`` or a ``poll()`` loop) is started with port 8000 replaced by 0,
asked for "/" once it says where it listens, then stopped with SIGINT; it must
exit 0. Every other block must exit 0 by itself, and print what the comments
beside its print() calls say.
"""

import http.client
import os
import re
import signal
import subprocess
import sys

import pytest

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def blocks():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


BLOCKS = blocks()


def test_the_doc_has_examples():
    assert len(BLOCKS) >= 6


def _serves_forever(code):
    return ".run()" in code or ".poll(" in code


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path):
    code = BLOCKS[index]
    if not _serves_forever(code):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
        # print(...)  # what it prints: the comment must be true.
        for expected in re.findall(r"^\s*print\(.*\)\s+#\s*(.+?)\s*$", code, re.M):
            assert expected in out.stdout, (expected, out.stdout)
        return
    code = code.replace("8000", "0")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        port = None
        seen = []
        while port is None:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("the example exited early:\n" + "".join(seen))
            seen.append(line)
            m = re.search(r"(?:serving on http://[^:]+:|Serving on port )(\d+)", line)
            if m:
                port = int(m.group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().status < 500
        conn.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stdout.read()


def test_websocket_examples_exchange_messages():
    """Each WebSocket example connects a client and prints what came back, so that
    test_example_runs checks a real exchange, not just that the server starts."""
    ws_blocks = [b for b in BLOCKS if "websocket" in b]
    assert len(ws_blocks) >= 4
    for code in ws_blocks:
        assert "connect(" in code, code
        assert re.search(r"print\(.*recv\(\).*\)\s+#\s*\S", code), code
