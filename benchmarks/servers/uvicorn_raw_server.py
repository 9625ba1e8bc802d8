"""A raw ASGI app (no framework) on uvicorn with uvloop and httptools:
python uvicorn_raw_server.py PORT

The same `app` is what granian_server.py serves over ASGI, so the two compare servers alone.
Its "websocket" scopes (/ws/echo, /ws/broadcast) go to the Starlette app of ws_app.py, which
uvicorn serves with its "websockets" implementation (the websockets library).
"""

import common
import ws_app

ROUTES = {
    path: (body, [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))])
    for path, (body, content_type) in common.GET_ROUTES.items()
}
NOT_FOUND = (b"not found\n", [(b"content-type", b"text/plain"), (b"content-length", b"10")])
# A WebSocket path reached as plain HTTP: the server did not upgrade the handshake (it has no
# WebSocket support); 501 tells the benchmark runner so (the workload is listed as declined).
WS_PATHS = (common.WS_ECHO_PATH, common.WS_BROADCAST_PATH)
NO_WEBSOCKET = (
    b"no WebSocket in this server\n",
    [(b"content-type", b"text/plain"), (b"content-length", b"28")],
)


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        return await ws_app.dispatch(scope, receive, send)
    if scope["type"] != "http":  # lifespan: accept startup and shutdown
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] == "POST" and scope["path"] == common.ECHO_PATH:
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = [
            (b"content-type", common.OCTETS.encode()),
            (b"content-length", b"%d" % len(body)),
        ]
        status = 200
    elif scope["path"] in WS_PATHS:
        (body, headers), status = NO_WEBSOCKET, 501
    else:
        body, headers = ROUTES.get(scope["path"], NOT_FOUND)
        status = 200 if scope["path"] in ROUTES else 404
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
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
