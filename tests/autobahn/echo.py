"""The WebSocket echo endpoints that Autobahn|Testsuite drives (tools/autobahn.sh).

    python tests/autobahn/echo.py KIND [PORT]

Every message received goes back as it came (text as text, binary as binary), on the
path ``/``, with the server's default WebSocket settings (permessage-deflate on). KIND:

- ``native``: the native API, ``@app.websocket`` with callbacks on the engine thread
- ``native-async``: the native API, an ``async def`` handler on the asyncio loop
- ``asgi``: a Starlette ``WebSocket`` endpoint on the ASGI adapter (``ASGIServer``)
- ``websockets``: the reference, the ``websockets`` library's asyncio server as its own
  compliance server runs it (``max_size=2**25``, deflate on), for the comparison

PORT 0 (the default) takes a free port. Prints ``listening on 127.0.0.1:PORT`` once it
serves; SIGTERM or SIGINT stops it gracefully, and then it prints ``stats {json}``: the
engine's WebSocket counters (not for ``websockets``), so the driver can check that every
connection was closed and counted.
"""

import json
import signal
import sys
from typing import Any, Dict


def native_app(asynchronous: bool) -> Any:
    from pymongoose_uring import App

    app = App()
    if asynchronous:

        @app.websocket("/")
        async def echo_async(ws: Any) -> None:
            await ws.accept()
            async for message in ws:
                await ws.send(message)

    else:

        def on_message(conn: Any, message: Any) -> None:
            conn.send(message)

        @app.websocket("/")
        def echo(ws: Any) -> None:
            ws.accept().on_message = on_message

    return app


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await ws.send_text(message["text"])
                else:
                    await ws.send_bytes(message["bytes"])
        except WebSocketDisconnect:
            pass

    return Starlette(routes=[WebSocketRoute("/", echo)])


WS_COUNTERS = ("ws_accepted", "ws_open", "ws_messages_in", "ws_messages_out", "ws_closes")


def serve_ours(kind: str, port: int) -> Dict[str, Any]:
    from pymongoose_uring import Server
    from pymongoose_uring.asgi import ASGIServer

    # Blocked before the engine's threads start, so that they inherit the mask and
    # only sigwait() below sees the stop signals.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    if kind == "asgi":
        server: Any = ASGIServer(starlette_app(), "127.0.0.1", port, lifespan="off")
    else:
        server = Server(native_app(kind == "native-async"), host="127.0.0.1", port=port)
    with server:
        print("listening on 127.0.0.1:%d" % server.port, flush=True)
        signal.sigwait(stop_signals)
    stats = server.stats()
    return {name: stats[name] for name in WS_COUNTERS if name in stats}


def serve_websockets(port: int) -> None:
    import asyncio

    from websockets.asyncio.server import serve

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set_result, None)
        async with serve(echo, "127.0.0.1", port, max_size=2**25) as server:
            bound = next(iter(server.sockets)).getsockname()[1]
            print("listening on 127.0.0.1:%d" % bound, flush=True)
            await stop

    asyncio.run(main())


def main() -> int:
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in (
        "native",
        "native-async",
        "asgi",
        "websockets",
    ):
        print(__doc__, file=sys.stderr)
        return 2
    kind, port = sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 0
    if kind == "websockets":
        serve_websockets(port)
        return 0
    print("stats " + json.dumps(serve_ours(kind, port)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
