"""pymongoose_uring through its native API: python pymongoose_uring_server.py PORT [--knob V]

Engine knobs (see knobs.py) come from options such as ``--threads 2 --buf-size 8192`` or from
PMU_* environment variables; the sweep command uses the latter. GET /__stats answers the
engine's counters (server.stats()) as JSON so that the sweep can record them beside each point.
GET / is the documented Hello World: a handler returning a dict (compact JSON).
GET /files/16k.bin and /files/1m.bin (when BENCH_FILES_ROOT names the runner's files):
handlers returning pymongoose_uring.FileResponse, which the binding answers with the engine's
file rules (pmu_serve_file); a package without FileResponse answers them 501 (the runner
lists the workload declined).

WebSocket, the callback form of App.websocket: /ws/echo sends every message back from its
on_message (on the engine thread), /ws/broadcast sends every message to every connection of
/ws/broadcast with pymongoose_uring.broadcast (framed once). A build without WebSocket answers
/ws/* with 501, which the runner reports as the workload declined.
"""

import os
import sys

import common
import knobs

try:
    import pymongoose_uring
    from pymongoose_uring import App, Response, Server
except ImportError as e:
    common.unavailable("pymongoose_uring", e)

app = App()
server = None
HAS_WEBSOCKET = hasattr(app, "websocket")


@app.get("/")
def hello(request):
    return {"message": "Hello, World!"}


@app.get("/16k")
def bytes_16k(request):
    return Response(common.BYTES_16K, content_type=common.OCTETS)


@app.get("/1m")
def bytes_1m(request):
    return Response(common.BYTES_1M, content_type=common.OCTETS)


def file_route(path):
    def serve(request):
        return FileResponse(path, content_type=common.OCTETS)

    return serve


FileResponse = getattr(pymongoose_uring, "FileResponse", None)
if os.environ.get("BENCH_FILES_ROOT"):  # the runner's files (by hand: see common.files_root)
    for _name in sorted(os.listdir(common.files_dir())):
        _route = app.get(common.FILES_PREFIX + "/" + _name)
        if FileResponse is not None:
            _route(file_route(os.path.join(common.files_dir(), _name)))
        else:
            _route(lambda request: Response(b"no FileResponse in this package\n", status=501))


@app.post(common.ECHO_PATH)
def echo(request):
    return Response(request.body, content_type=common.OCTETS)


if HAS_WEBSOCKET:
    from pymongoose_uring import broadcast

    BROADCAST = {}  # the open connections of /ws/broadcast (a dict keeps their order)

    def echo_message(ws, data):
        ws.send(data)

    def broadcast_message(ws, data):
        broadcast(BROADCAST, data)

    def broadcast_gone(ws, code):
        BROADCAST.pop(ws, None)

    @app.websocket(common.WS_ECHO_PATH)
    def ws_echo(request):
        request.accept().on_message = echo_message

    @app.websocket(common.WS_BROADCAST_PATH)
    def ws_broadcast(request):
        ws = request.accept()
        ws.on_message = broadcast_message
        ws.on_disconnect = broadcast_gone
        BROADCAST[ws] = None

else:

    @app.get(common.WS_ECHO_PATH)
    @app.get(common.WS_BROADCAST_PATH)
    def no_websocket(request):
        return Response(b"no WebSocket in this build\n", status=501)


@app.get("/__stats")
def stats(request):
    return server.stats()


if __name__ == "__main__":
    server = Server(
        app, host=common.HOST, port=common.port_from_argv(8001), **knobs.parse(sys.argv[2:])
    )
    server.run()  # until SIGINT or SIGTERM, then a graceful stop
