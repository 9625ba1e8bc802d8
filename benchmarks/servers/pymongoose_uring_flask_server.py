"""apps.py's Flask app (the one flask_server.py serves) on pymongoose_uring's WSGI adapter:
python pymongoose_uring_flask_server.py PORT [--knob V]

The very app gunicorn_server.py and granian_server.py (wsgi) serve. WSGI calls run on a
pool of BENCH_WSGI_THREADS Python threads (default 4, as gunicorn's and granian's
scripts have); engine knobs come from options or PMU_* variables (see knobs.py).
"""

import os
import sys

import common
import knobs

common.require("flask")
try:
    from pymongoose_uring.wsgi import WSGIServer
except ImportError as e:
    common.unavailable("pymongoose_uring", e)

from apps import flask_app as app  # noqa: E402  (the same Flask app as the peers)

if __name__ == "__main__":
    server = WSGIServer(
        app,
        host=common.HOST,
        port=common.port_from_argv(8008),
        pool_threads=int(os.environ.get("BENCH_WSGI_THREADS", "4")),
        **knobs.parse(sys.argv[2:]),
    )
    server.run()  # until SIGINT or SIGTERM, then a graceful stop
