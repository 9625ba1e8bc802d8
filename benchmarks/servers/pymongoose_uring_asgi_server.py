"""uvicorn_raw_server.py's raw ASGI app on pymongoose_uring's ASGI adapter:
python pymongoose_uring_asgi_server.py PORT [--knob V]

The very app uvicorn_raw_server.py and granian_server.py (asgi) serve, imported from it: the
HTTP routes framework-free, /ws/echo and /ws/broadcast the Starlette app of ws_app.py. It runs
on uvloop when installed. Engine knobs come from options or PMU_* variables (see knobs.py).
"""

import sys

import common
import knobs

common.require("starlette")
try:
    from pymongoose_uring.asgi import ASGIServer
except ImportError as e:
    common.unavailable("pymongoose_uring", e)

from uvicorn_raw_server import app  # noqa: E402  (the same app as uvicorn's and granian's)

if __name__ == "__main__":
    server = ASGIServer(
        app, host=common.HOST, port=common.port_from_argv(8011), **knobs.parse(sys.argv[2:])
    )
    server.run()  # until SIGINT or SIGTERM, then a graceful stop
