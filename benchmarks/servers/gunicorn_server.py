"""flask_server.py's app under gunicorn, one gthread worker: python gunicorn_server.py PORT

One worker because the benchmark gives every server one CPU; gthread because it is
gunicorn's worker that keeps connections alive. Replaces itself with gunicorn (same PID).
"""

import os
import sys

import common

common.require("gunicorn", "flask")

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = os.environ.get("BENCH_GUNICORN_THREADS", "4")
os.execv(
    sys.executable,
    [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        HERE,
        "--bind",
        "%s:%d" % (common.HOST, common.port_from_argv(8006)),
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        THREADS,
        # Room for the 10,000-connection workload (the default is 1,000 per worker).
        "--worker-connections",
        "12000",
        "--backlog",
        "4096",
        "--keep-alive",
        "75",
        "--log-level",
        "warning",
        "flask_server:app",
    ],
)
