"""apps.py's raw ASGI app through pymongoose_uring's command line:
python pymongoose_uring_asgi_server.py PORT [--knob V]

Becomes ``python -m pymongoose_uring apps:asgi_raw --interface asgi`` (same PID), as a user
would run an ASGI app (uvloop when installed): the very app uvicorn_raw and granian_asgi
serve, framework-free over HTTP, /ws/echo and /ws/broadcast the Starlette app of ws_app.py.
Engine knobs come from options or PMU_* variables (see knobs.py).
"""

import sys

import common

if __name__ == "__main__":
    common.require("starlette")
    common.exec_cli("apps:asgi_raw", "asgi", sys.argv[2:])
