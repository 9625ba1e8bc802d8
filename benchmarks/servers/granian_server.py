"""granian (Rust, hyper + tokio), one worker:
python granian_server.py PORT [asgi|wsgi|wsgi_raw|fastapi|static] [tls]

The apps are apps.py's: asgi serves the raw ASGI app (its /ws/* routes are the Starlette app
of ws_app.py); wsgi the Flask app; wsgi_raw the raw WSGI app; fastapi the FastAPI app over
ASGI; static is asgi with granian's own static file mount
(--static-path-route /files --static-path-mount DIR) in front of the app, serving the
runner's file directory (common.files_dir()) from Rust.
With `tls`, HTTPS by granian's own TLS (rustls): --ssl-certificate and --ssl-keyfile, the
runner's certificate and key (BENCH_TLS_CERT, BENCH_TLS_KEY; the key in PKCS#8, as granian
needs), --ssl-protocol-min tls1.2 as the others (rustls cannot be given a cipher list here:
it follows the client's order of TLS 1.3 suites).
Replaces itself with granian (same PID).
"""

import os
import sys

import common

INTERFACE = sys.argv[2] if len(sys.argv) > 2 else "asgi"
TARGETS = {
    "asgi": "apps:asgi_raw",
    "wsgi": "apps:flask_app",
    "wsgi_raw": "apps:wsgi_raw",
    "fastapi": "apps:fastapi_app",
    "static": "apps:asgi_raw",
}
WSGI = INTERFACE in ("wsgi", "wsgi_raw")
TLS = sys.argv[3:] == ["tls"]
if INTERFACE not in TARGETS or (sys.argv[3:] and not TLS):
    sys.exit("granian_server.py PORT [asgi|wsgi|wsgi_raw|fastapi|static] [tls]")
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
        "wsgi" if WSGI else "asgi",
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
        *(["--no-ws"] if WSGI else ["--ws"]),
        # WSGI: 4 Python threads, as gunicorn_server.py has (granian's default allows 2048).
        *(["--blocking-threads", "4"] if WSGI else []),
        "--backlog",
        "4096",
        *(
            ["--static-path-route", common.FILES_PREFIX, "--static-path-mount", common.files_dir()]
            if INTERFACE == "static"
            else []
        ),
        *(
            [
                "--ssl-certificate",
                common.tls_files()[0],
                "--ssl-keyfile",
                common.tls_files()[1],
                "--ssl-protocol-min",
                "tls1.2",
            ]
            if TLS
            else []
        ),
        "--no-access-log",
        "--log-level",
        "warning",
        TARGETS[INTERFACE],
    ],
)
