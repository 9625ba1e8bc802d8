"""apps.py's Flask app (or, with `raw`, its raw WSGI app) under gunicorn, one gthread worker:
python gunicorn_server.py PORT [flask|raw]

One worker because the benchmark gives every server one CPU; gthread because it is
gunicorn's worker that keeps connections alive. Replaces itself with gunicorn (same PID).
"""

import os
import sys

import common

APP = sys.argv[2] if len(sys.argv) > 2 else "flask"
if APP not in ("flask", "raw"):
    sys.exit("gunicorn_server.py PORT [flask|raw]")
common.require("gunicorn", *(["flask"] if APP == "flask" else []))

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
        "apps:flask_app" if APP == "flask" else "apps:wsgi_raw",
    ],
)
