"""The floor of the Flask rows: apps.py's Flask app called from a native API handler with no
WSGI adapter at all: python pymongoose_uring_flask_floor_server.py PORT [--knob V]

Each request's environ is the one the in-process measure (bench/appcost.py, the "app's own"
column) gives the app, a plain dict literal, start_response keeps the status and headers,
and the joined body goes back as the handler's Response, all on the ring thread. No
header is parsed into the environ, nothing runs on another thread, nothing is checked: this is
not a server for apps, only the least any adapter on this engine could cost around this app.
Its "server's own" figure is then the engine's own cost at this app's request rate (its
kernel work, its ring turns, and what a network round between calls costs the app's cached
state), against which the WSGI adapter's row (pymongoose_uring_flask_server.py) is read.
"""

import os
import sys

import common
import knobs

common.require("flask")
try:
    from pymongoose_uring import Response, Server
except ImportError as e:
    common.unavailable("pymongoose_uring", e)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from apps import flask_app as app  # noqa: E402  (the same Flask app as the WSGI rows)

from bench.appcost import environ_for, wsgi_answer  # noqa: E402  (the in-process measure's)


def handler(request):
    status, headers, body = wsgi_answer(
        app, environ_for(request.method, request.path, request.body)
    )
    return Response(body, status, headers)


if __name__ == "__main__":
    server = Server(
        handler,
        host=common.HOST,
        port=common.port_from_argv(8008),
        **knobs.parse(sys.argv[2:]),
    )
    server.run()  # until SIGINT or SIGTERM, then a graceful stop
