"""The floor of the Flask rows: apps.py's Flask app called from a native API handler with no
WSGI adapter at all: python pymongoose_uring_flask_floor_server.py PORT [--knob V]

Each request's environ is a plain dict literal with the few keys the in-process measure
(bench/appcost.py, the "app's own" column) gives the app, start_response keeps the status
and headers, and the joined body goes back with request.reply(), all on the ring thread. No
header is parsed into the environ, nothing runs on another thread, nothing is checked: this is
not a server for apps, only the least any adapter on this engine could cost around this app.
Its "server's own" figure is then the engine's own cost at this app's request rate (its
kernel work, its ring turns, and what a network round between calls costs the app's cached
state), against which the WSGI adapter's row (pymongoose_uring_flask_server.py) is read.
"""

import io
import sys

import common
import knobs

common.require("flask")
try:
    from pymongoose_uring import Response, Server
except ImportError as e:
    common.unavailable("pymongoose_uring", e)

from apps import flask_app as app  # noqa: E402  (the same Flask app as the WSGI rows)

ERRORS = sys.stderr


def handler(request):
    body = request.body
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/octet-stream",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": ERRORS,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    answer = []

    def start_response(status, headers, exc_info=None):
        answer[:] = [int(status[:3]), headers]

    result = app(environ, start_response)
    try:
        out = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = answer
    return Response(out, status, [(k, v) for k, v in headers if k.lower() != "content-length"])


if __name__ == "__main__":
    server = Server(
        handler,
        host=common.HOST,
        port=common.port_from_argv(8008),
        **knobs.parse(sys.argv[2:]),
    )
    server.run()  # until SIGINT or SIGTERM, then a graceful stop
