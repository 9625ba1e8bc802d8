"""pymongoose's own examples and tests, run against the compatibility layer: their text
from a checkout of github.com/shakfu/pymongoose (PYMONGOOSE_CHECKOUT, a work tree, else
the bare mirror the fetch tool leaves on the machines this was developed on), with only
the import changed."""

import os
import socket
import subprocess
import sys

import pytest

from conftest import wait_until

_MIRROR = "/work/.mirror/shakfu+pymongoose/repo"


def pymongoose_source(rel):
    """The text of `rel` (a path inside the pymongoose repository) importing
    pymongoose_uring.compat instead of pymongoose; skips the test when there is no
    checkout."""
    tree = os.environ.get("PYMONGOOSE_CHECKOUT")
    text = None
    if tree and os.path.isfile(os.path.join(tree, rel)):
        with open(os.path.join(tree, rel)) as f:
            text = f.read()
    elif os.path.isdir(_MIRROR):
        out = subprocess.run(
            ["git", "--git-dir", _MIRROR, "show", "HEAD:" + rel], capture_output=True, text=True
        )
        text = out.stdout if out.returncode == 0 else None
    if text is None:
        pytest.skip("no pymongoose checkout (set PYMONGOOSE_CHECKOUT to one)")
    assert "from pymongoose import" in text
    return text.replace("from pymongoose import", "from pymongoose_uring.compat import")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_example(rel, tmp_path, *args):
    """Start the example script `rel` from tmp_path with --port (a free port) and
    `args`: (process, port); its stdout and stderr are pipes of text."""
    script = tmp_path / os.path.basename(rel)
    script.write_text(pymongoose_source(rel))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    return proc, port


def wait_serving(proc, port):
    """Wait until the example accepts connections; fails with its stderr if it exits."""

    def up():
        if proc.poll() is not None:
            raise AssertionError("the example exited: %s" % proc.communicate()[1])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(up, timeout=20, what="the example serving")
