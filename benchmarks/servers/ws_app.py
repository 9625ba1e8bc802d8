"""The WebSocket app every ASGI server runs (uvicorn, granian, pymongoose_uring's ASGI
adapter), written with Starlette as its users write one, so that the servers alone differ:

  /ws/echo       every message back to its sender, text as text, binary as binary
  /ws/broadcast  every message to every connection of /ws/broadcast, the sender included,
                 in the order received

`app` is the Starlette app; `dispatch(scope, receive, send)` is what a raw ASGI app calls for
a "websocket" scope (apps.py's asgi_raw does: its HTTP routes stay framework-free).
"""

import common

try:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as e:  # the HTTP side still works; the ws check then fails loudly
    common.unavailable("starlette", e)

# The connections of /ws/broadcast, in the order they were accepted.
BROADCAST = {}


async def echo(websocket: WebSocket):
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            await websocket.send_bytes(message["bytes"])
        else:
            await websocket.send_text(message["text"])


async def broadcast(websocket: WebSocket):
    await websocket.accept()
    BROADCAST[websocket] = None
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            for peer in list(BROADCAST):
                try:
                    if data is not None:
                        await peer.send_bytes(data)
                    else:
                        await peer.send_text(message["text"])
                except (WebSocketDisconnect, RuntimeError, OSError):
                    BROADCAST.pop(peer, None)  # gone meanwhile
    finally:
        BROADCAST.pop(websocket, None)


app = Starlette(
    routes=[
        WebSocketRoute(common.WS_ECHO_PATH, echo),
        WebSocketRoute(common.WS_BROADCAST_PATH, broadcast),
    ]
)


async def dispatch(scope, receive, send):
    await app(scope, receive, send)
