"""apps.py's FastAPI app (uvicorn_server.py's) on pymongoose_uring's ASGI adapter:
python pymongoose_uring_fastapi_server.py PORT [--knob V]

The very app uvicorn and granian serve (apps.fastapi_app); it runs on uvloop when
installed. Engine knobs come from options or PMU_* variables (see knobs.py).
"""

import sys

import common
import knobs

common.require("fastapi")
try:
    from pymongoose_uring.asgi import ASGIServer
except ImportError as e:
    common.unavailable("pymongoose_uring", e)

from apps import fastapi_app as app  # noqa: E402  (the same FastAPI app as uvicorn's)

if __name__ == "__main__":
    server = ASGIServer(
        app, host=common.HOST, port=common.port_from_argv(8009), **knobs.parse(sys.argv[2:])
    )
    server.run()  # until SIGINT or SIGTERM, then a graceful stop
