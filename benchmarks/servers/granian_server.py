"""granian (Rust, hyper + tokio), one worker:
python granian_server.py PORT [asgi|wsgi|fastapi|static]

asgi serves uvicorn_raw_server.py's raw ASGI app (its /ws/* routes are the Starlette app of
ws_app.py); wsgi serves flask_server.py's Flask app; fastapi serves uvicorn_server.py's
FastAPI app over ASGI; static is asgi with granian's own static file mount
(--static-path-route /files --static-path-mount DIR) in front of the app, serving the
runner's file directory (common.files_dir()) from Rust.
Replaces itself with granian (same PID).
"""

import os
import sys

import common

INTERFACE = sys.argv[2] if len(sys.argv) > 2 else "asgi"
TARGETS = {
    "asgi": "uvicorn_raw_server:app",
    "wsgi": "flask_server:app",
    "fastapi": "uvicorn_server:app",
    "static": "uvicorn_raw_server:app",
}
if INTERFACE not in TARGETS:
    sys.exit("granian_server.py PORT [asgi|wsgi|fastapi|static]")
common.require(
    "granian",
    *{
        "wsgi": ["flask"],
        "fastapi": ["fastapi"],
        "asgi": ["starlette"],
        "static": ["starlette"],
    }.get(INTERFACE, []),
)

HERE = os.path.dirname(os.path.abspath(__file__))
os.execv(
    sys.executable,
    [
        sys.executable,
        "-m",
        "granian",
        "--working-dir",
        HERE,
        "--interface",
        "wsgi" if INTERFACE == "wsgi" else "asgi",
        "--host",
        common.HOST,
        "--port",
        str(common.port_from_argv(8007)),
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--http",
        "1",
        # WebSocket for ASGI (the Starlette app of ws_app.py on /ws/*), not for WSGI.
        *(["--no-ws"] if INTERFACE == "wsgi" else ["--ws"]),
        # WSGI: 4 Python threads, as gunicorn_server.py has (granian's default allows 2048).
        *(["--blocking-threads", "4"] if INTERFACE == "wsgi" else []),
        "--backlog",
        "4096",
        *(
            ["--static-path-route", common.FILES_PREFIX, "--static-path-mount", common.files_dir()]
            if INTERFACE == "static"
            else []
        ),
        "--no-access-log",
        "--log-level",
        "warning",
        TARGETS[INTERFACE],
    ],
)
