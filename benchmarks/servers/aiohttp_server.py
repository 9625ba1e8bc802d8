"""aiohttp (asyncio, llhttp parser): python aiohttp_server.py PORT

Besides the HTTP routes, aiohttp's own WebSocket handlers (web.WebSocketResponse) on
/ws/echo and /ws/broadcast, behaving as ws_app.py's Starlette app does.
"""

import common

try:
    from aiohttp import WSMsgType, web
except ImportError as e:
    common.unavailable("aiohttp", e)

BROADCAST = web.AppKey("broadcast", dict)
# Messages of up to 16 MiB accepted, as uvicorn's --ws-max-size and the engine's ws_max_message
# (aiohttp refuses a message of max_msg_size bytes itself; its default is 4 MiB).
WS_MAX_SIZE = 16 * 1024 * 1024 + 1


def make_get(body, content_type):
    async def get(request):
        return web.Response(body=body, content_type=content_type)

    return get


async def echo(request):
    return web.Response(body=await request.read(), content_type=common.OCTETS)


async def ws_echo(request):
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_SIZE)
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
        elif message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


async def ws_broadcast(request):
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_SIZE)
    await ws.prepare(request)
    peers = request.app[BROADCAST]
    peers[ws] = None
    try:
        async for message in ws:
            if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                continue
            for peer in list(peers):
                try:
                    if message.type == WSMsgType.BINARY:
                        await peer.send_bytes(message.data)
                    else:
                        await peer.send_str(message.data)
                except (ConnectionError, RuntimeError):
                    peers.pop(peer, None)  # gone meanwhile
    finally:
        peers.pop(ws, None)
    return ws


def make_app():
    app = web.Application(client_max_size=2 * 1024 * 1024)
    for path, (body, content_type) in common.GET_ROUTES.items():
        app.router.add_get(path, make_get(body, content_type))
    app.router.add_post(common.ECHO_PATH, echo)
    app[BROADCAST] = {}
    app.router.add_get(common.WS_ECHO_PATH, ws_echo)
    app.router.add_get(common.WS_BROADCAST_PATH, ws_broadcast)
    return app


if __name__ == "__main__":
    try:  # aiohttp's documented speed-up; the plain asyncio loop otherwise
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(
        make_app(), host=common.HOST, port=common.port_from_argv(8002), access_log=None, print=None
    )
