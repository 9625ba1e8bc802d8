"""pymongoose_uring's command line as a static file server alone:
python pymongoose_uring_static_server.py PORT [THREADS]

Replaces itself (same PID) with

    python -m pymongoose_uring --static /=ROOT --host 127.0.0.1 --port PORT --threads THREADS

where ROOT is the runner's file directory (common.files_root(): /files/16k.bin is
ROOT/files/16k.bin). The engine answers from its mount on the ring thread: no Python per
request. There is no GET / here (ROOT has no index.html): the runner checks and warms this
server up on /files/16k.bin (the registry's hello=False). A package whose command line has
no --static option is reported unavailable.
"""

import os
import subprocess
import sys

import common

port = common.port_from_argv(8013)
threads = sys.argv[2] if len(sys.argv) > 2 else "1"
try:
    usage = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
except (OSError, subprocess.SubprocessError) as e:
    common.unavailable("pymongoose_uring", e)
if usage.returncode != 0:
    common.unavailable("pymongoose_uring", (usage.stdout + usage.stderr).strip()[-300:])
if "--static" not in usage.stdout:
    common.unavailable("pymongoose_uring --static", "this package's command line has no --static")

argv = [
    sys.executable,
    "-m",
    "pymongoose_uring",
    "--static",
    "/=" + common.files_root(),
    "--host",
    common.HOST,
    "--port",
    str(port),
    "--threads",
    threads,
]
print(" ".join(argv), flush=True)
os.execv(sys.executable, argv)
