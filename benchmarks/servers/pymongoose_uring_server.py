"""pymongoose_uring through its native API: python pymongoose_uring_server.py PORT [--knob V]

Engine knobs (see knobs.py) come from options such as ``--threads 2 --buf-size 8192`` or from
PMU_* environment variables; the sweep command uses the latter. GET /__stats answers the
engine's counters (server.stats()) as JSON so that the sweep can record them beside each point.
GET / is the documented Hello World: a handler returning a dict (compact JSON).
"""

import sys

import common
import knobs

try:
    from pymongoose_uring import App, Response, Server
except ImportError as e:
    common.unavailable("pymongoose_uring", e)

app = App()
server = None


@app.get("/")
def hello(request):
    return {"message": "Hello, World!"}


@app.get("/16k")
def bytes_16k(request):
    return Response(common.BYTES_16K, content_type=common.OCTETS)


@app.get("/1m")
def bytes_1m(request):
    return Response(common.BYTES_1M, content_type=common.OCTETS)


@app.post(common.ECHO_PATH)
def echo(request):
    return Response(request.body, content_type=common.OCTETS)


@app.get("/__stats")
def stats(request):
    return server.stats()


if __name__ == "__main__":
    server = Server(
        app, host=common.HOST, port=common.port_from_argv(8001), **knobs.parse(sys.argv[2:])
    )
    server.run()  # until SIGINT or SIGTERM, then a graceful stop
