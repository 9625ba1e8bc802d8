"""aiohttp (asyncio, llhttp parser): python aiohttp_server.py PORT"""

import common

try:
    from aiohttp import web
except ImportError as e:
    common.unavailable("aiohttp", e)


def make_get(body, content_type):
    async def get(request):
        return web.Response(body=body, content_type=content_type)

    return get


async def echo(request):
    return web.Response(body=await request.read(), content_type=common.OCTETS)


def make_app():
    app = web.Application(client_max_size=2 * 1024 * 1024)
    for path, (body, content_type) in common.GET_ROUTES.items():
        app.router.add_get(path, make_get(body, content_type))
    app.router.add_post(common.ECHO_PATH, echo)
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
