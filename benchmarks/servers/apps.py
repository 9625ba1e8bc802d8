"""The apps the benchmark servers run, all in this one module, so that every server of a
kind runs the same app and the runner's "app's own cost" (bench/appcost.py: the app called
in-process, no server) calls that very app:

  wsgi_raw     a raw WSGI app (no framework)
  asgi_raw     a raw ASGI app (no framework); its "websocket" scopes go to the Starlette app
               of ws_app.py
  flask_app    a Flask app (built on first use, so that a server without Flask can import
               this module)
  fastapi_app  a FastAPI app (built on first use)

Every one serves the routes of common.py (GET /, /16k, /1m, POST /echo) with the same bytes.
Servers name them as MODULE:ATTRIBUTE, e.g. ``gunicorn apps:wsgi_raw`` or
``granian --interface asgi apps:fastapi_app``.
"""

import common

# Raw WSGI and ASGI: the route table as each interface wants its headers, built once.
WSGI_ROUTES = {
    path: (
        [body],
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    for path, (body, content_type) in common.GET_ROUTES.items()
}
ASGI_ROUTES = {
    path: (body, [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))])
    for path, (body, content_type) in common.GET_ROUTES.items()
}
NOT_FOUND_BODY = b"not found\n"
# A WebSocket path reached as plain HTTP: the server did not upgrade the handshake (it has no
# WebSocket support); 501 tells the benchmark runner so (the workload is listed as declined).
WS_PATHS = (common.WS_ECHO_PATH, common.WS_BROADCAST_PATH)
NO_WEBSOCKET_BODY = b"no WebSocket in this server\n"


def wsgi_raw(environ, start_response):
    """The raw WSGI hello: a dict lookup and start_response, as a framework-free app is."""
    path = environ.get("PATH_INFO") or "/"
    if environ["REQUEST_METHOD"] == "POST" and path == common.ECHO_PATH:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length else b""
        start_response(
            "200 OK", [("Content-Type", common.OCTETS), ("Content-Length", str(len(body)))]
        )
        return [body]
    route = WSGI_ROUTES.get(path)
    if route is None:
        status = "501 Not Implemented" if path in WS_PATHS else "404 Not Found"
        body = NO_WEBSOCKET_BODY if path in WS_PATHS else NOT_FOUND_BODY
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", route[1])
    return route[0]


async def asgi_raw(scope, receive, send):
    """The raw ASGI hello (uvicorn_raw, granian_asgi and our ASGI adapter serve it)."""
    if scope["type"] == "websocket":
        import ws_app  # Starlette; imported by the first WebSocket scope only

        return await ws_app.dispatch(scope, receive, send)
    if scope["type"] != "http":  # lifespan: accept startup and shutdown
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if scope["method"] == "POST" and path == common.ECHO_PATH:
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
    elif path in ASGI_ROUTES:
        (body, headers), status = ASGI_ROUTES[path], 200
    else:
        body = NO_WEBSOCKET_BODY if path in WS_PATHS else NOT_FOUND_BODY
        status = 501 if path in WS_PATHS else 404
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _build_flask():
    try:
        from flask import Flask, Response, request
    except ImportError as e:
        common.unavailable("flask", e)

    app = Flask("apps")

    @app.get("/")
    def hello():
        # The idiomatic Flask answer: a dict, sent as compact JSON (Flask appends a newline).
        return {"message": "Hello, World!"}

    @app.get("/16k")
    def bytes_16k():
        return Response(common.BYTES_16K, mimetype=common.OCTETS)

    @app.get("/1m")
    def bytes_1m():
        return Response(common.BYTES_1M, mimetype=common.OCTETS)

    @app.post(common.ECHO_PATH)
    def echo():
        return Response(request.get_data(), mimetype=common.OCTETS)

    return app


def _build_fastapi():
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import Response
    except ImportError as e:
        common.unavailable("fastapi", e)

    app = FastAPI()

    @app.get("/")
    async def hello():
        # The idiomatic FastAPI answer: a dict, serialized compactly by JSONResponse to the
        # same 27 bytes as every other server.
        return {"message": "Hello, World!"}

    @app.get("/16k")
    async def bytes_16k():
        return Response(common.BYTES_16K, media_type=common.OCTETS)

    @app.get("/1m")
    async def bytes_1m():
        return Response(common.BYTES_1M, media_type=common.OCTETS)

    @app.post(common.ECHO_PATH)
    async def echo(request: Request):
        return Response(await request.body(), media_type=common.OCTETS)

    return app


_BUILDERS = {"flask_app": _build_flask, "fastapi_app": _build_fastapi}

# name -> interface, for every app above (bench/appcost.py and the registry's `app` field).
INTERFACES = {"wsgi_raw": "wsgi", "asgi_raw": "asgi", "flask_app": "wsgi", "fastapi_app": "asgi"}


def __getattr__(name):
    """flask_app and fastapi_app are built on first access (PEP 562), once."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise AttributeError("module 'apps' has no attribute %r" % name)
    app = builder()
    globals()[name] = app
    return app
