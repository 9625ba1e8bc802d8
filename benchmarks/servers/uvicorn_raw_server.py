"""A raw ASGI app (no framework) on uvicorn with uvloop and httptools:
python uvicorn_raw_server.py PORT [tls]

The app is apps.py's asgi_raw, the one granian_server.py (asgi) and pymongoose_uring's ASGI
adapter serve too, so that the servers alone differ. Its "websocket" scopes (/ws/echo,
/ws/broadcast) go to the Starlette app of ws_app.py, which uvicorn serves with its
"websockets" implementation (the websockets library).
With `tls`, HTTPS as uvicorn's --ssl-certfile/--ssl-keyfile/--ssl-ciphers give it: the
runner's certificate and key (BENCH_TLS_CERT, BENCH_TLS_KEY) and the TLS 1.2 ciphers of
common.py (Python's ssl module cannot restrict the TLS 1.3 suites).
"""

import sys

import apps
import common

app = apps.asgi_raw

if __name__ == "__main__":
    common.require("starlette")
    try:
        import httptools  # noqa: F401
        import uvicorn
        import uvloop  # noqa: F401  (required: this entry is "uvicorn + uvloop + httptools")
        import websockets  # noqa: F401  (uvicorn's WebSocket implementation here)
    except ImportError as e:
        common.unavailable("uvicorn/uvloop/httptools/websockets", e)
    tls = {}
    if sys.argv[2:] == ["tls"]:
        cert, key = common.tls_files()
        tls = dict(ssl_certfile=cert, ssl_keyfile=key, ssl_ciphers=common.TLS12_CIPHERS)
    elif sys.argv[2:]:
        sys.exit("uvicorn_raw_server.py PORT [tls]")
    uvicorn.run(
        app,
        host=common.HOST,
        port=common.port_from_argv(8005),
        loop="uvloop",
        http="httptools",
        ws="websockets",
        log_level="warning",
        access_log=False,
        lifespan="off",
        **tls,
    )
