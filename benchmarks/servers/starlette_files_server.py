"""Starlette serving the runner's files, on uvicorn or on pymongoose_uring's ASGI adapter:
python starlette_files_server.py PORT uvicorn|pymongoose_uring fileresponse|staticfiles [--knob V]

fileresponse: a route GET /files/{name} returning Starlette's FileResponse for one of the
files of the runner's directory (common.files_dir(); any other name is 404). Starlette 1.x
sends the file with the ASGI `http.response.pathsend` message when the server lists that
extension in scope["extensions"] (pymongoose_uring's adapter does, once it has it: the
engine then sends the file), else it reads the file and sends it in chunks through
`http.response.body` (uvicorn).
staticfiles: Starlette's StaticFiles mounted on /files (which answers with FileResponse too).

Both also answer GET / with the hello JSON (the runner's check that the server is up).
uvicorn runs with uvloop and httptools as uvicorn_server.py does; the adapter with uvloop, and
engine knobs from options or PMU_* variables (see knobs.py).
"""

import os
import sys

import common
import knobs

USAGE = "starlette_files_server.py PORT uvicorn|pymongoose_uring fileresponse|staticfiles"
if len(sys.argv) < 4 or sys.argv[2] not in ("uvicorn", "pymongoose_uring"):
    sys.exit(USAGE)
SERVER, MODE = sys.argv[2], sys.argv[3]
if MODE not in ("fileresponse", "staticfiles"):
    sys.exit(USAGE)

try:
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as e:
    common.unavailable("starlette", e)

DIRECTORY = common.files_dir()
# name -> path: the route serves these and nothing else (no path from the URL is opened).
FILES = {
    name: os.path.join(DIRECTORY, name)
    for name in os.listdir(DIRECTORY)
    if os.path.isfile(os.path.join(DIRECTORY, name))
}


async def hello(request):
    return JSONResponse({"message": "Hello, World!"})


PATHSEND = "http.response.pathsend"
said = []


async def file(request):
    if not said:  # once, for the runner's notes (report.server_notes): pathsend or not
        said.append(True)
        offered = PATHSEND in (request.scope.get("extensions") or {})
        print(
            "BENCH_NOTE %s"
            % (
                "the server offered %s: the engine sends the file" % PATHSEND
                if offered
                else "no %s offered: Starlette reads the file and sends it in chunks" % PATHSEND
            ),
            flush=True,
        )
    path = FILES.get(request.path_params["name"])
    if path is None:
        return PlainTextResponse("not found\n", status_code=404)
    return FileResponse(path, media_type=common.OCTETS)


routes = [Route("/", hello)]
if MODE == "fileresponse":
    routes.append(Route(common.FILES_PREFIX + "/{name}", file))
else:
    routes.append(Mount(common.FILES_PREFIX, StaticFiles(directory=DIRECTORY)))
app = Starlette(routes=routes)


if __name__ == "__main__":
    port = common.port_from_argv(8012)
    if SERVER == "uvicorn":
        try:
            import uvicorn
        except ImportError as e:
            common.unavailable("uvicorn", e)
        uvicorn.run(app, host=common.HOST, port=port, log_level="warning", access_log=False)
    else:
        try:
            from pymongoose_uring.asgi import ASGIServer
        except ImportError as e:
            common.unavailable("pymongoose_uring", e)
        server = ASGIServer(app, host=common.HOST, port=port, **knobs.parse(sys.argv[4:]))
        server.run()  # until SIGINT or SIGTERM, then a graceful stop
