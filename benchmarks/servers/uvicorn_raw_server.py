"""A raw ASGI app (no framework) on uvicorn with uvloop and httptools:
python uvicorn_raw_server.py PORT

The app is apps.py's asgi_raw, the one granian_server.py (asgi) and pymongoose_uring's ASGI
adapter serve too, so that the servers alone differ. Its "websocket" scopes (/ws/echo,
/ws/broadcast) go to the Starlette app of ws_app.py, which uvicorn serves with its
"websockets" implementation (the websockets library).
"""

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
    )
