"""The servers, as data: adding a server is one entry here (and usually one script in
benchmarks/servers/).

argv is a template: {python} is this interpreter, {servers} benchmarks/servers/, {port} the
port given to the server, {threads} the `threads` knob (default 1), {hello_server} the C
example's binary. `caps` lists what the server answers beyond GET / (see servers/common.py):
"bytes" (/16k, /1m), "echo" (POST /echo), "ws" (WebSocket echo on /ws/echo),
"ws-broadcast" (WebSocket broadcast on /ws/broadcast), "files" (GET /files/16k.bin and
/files/1m.bin from the runner's file directory, bench/files.py: {files} in argv, and
BENCH_FILES_ROOT in the environment, name it). A server whose caps are ("files",) alone is
there for the file workloads only: a run without them does not start it, and the tables of
the other workloads do not list it as missing them. `hello` False: the server does not
answer GET / (a static file server alone); it is checked and warmed up on /files/16k.bin
instead. `files_label` names it in the file workloads' tables where `label` would not say
what serves the files.
A server without "ws" (nginx without a backend, the WSGI servers, Flask) is simply left out
of the WebSocket workloads, and listed as such; `ws_label` names what serves its /ws/*
routes where that is not what `label` says (the raw ASGI app's WebSocket routes are a
Starlette app). `app` names the app of servers/apps.py it runs (the runner also calls it
in-process for the "app's own cost" column); `suites` the named suites (--suite) that select
it. `pip` lists (import name, pip requirement) pairs
installed when missing; `tools` lists system tools (apt) the server needs; `build` names what
provisioning must build first (a server with one is the project's own: see `project`).
`knobs` lists the engine knobs the server honours (sweeps refuse others): "threads" goes into
argv where the template has {threads}, and every knob also goes into a PMU_* environment
variable (examples/hello_server and the Python scripts read them).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from .knobs import ALL_KNOBS


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    argv: Tuple[str, ...]
    kind: str  # "ours", "c-reference" or "peer"
    caps: Tuple[str, ...] = ("hello", "bytes", "echo")
    pip: Tuple[Tuple[str, str], ...] = ()
    tools: Tuple[str, ...] = ()
    build: Optional[str] = None  # "hello_server" or "pymongoose_uring"
    knobs: Tuple[str, ...] = ()
    stats_path: Optional[str] = None
    start_timeout: float = 20.0
    env: Tuple[Tuple[str, str], ...] = ()
    description: str = ""
    # In the default set (python3 benchmarks/run.py with no --servers). The
    # framework comparisons (Flask and FastAPI on the adapters, granian with
    # FastAPI) are named explicitly, so the default run stays near 14 minutes.
    default: bool = True
    ws_label: Optional[str] = None
    hello: bool = True
    files_label: Optional[str] = None
    # The app of benchmarks/servers/apps.py the server runs (wsgi_raw, asgi_raw, flask_app,
    # fastapi_app): the runner measures it in-process too (bench/appcost.py), and the tables
    # show the app's own cost beside the server's CPU per request. None: no shared app (the
    # native API, the compatibility layer, C, nginx, aiohttp's own handlers).
    app: Optional[str] = None
    # Named suites (run.py --suite NAME) the server belongs to.
    suites: Tuple[str, ...] = ()
    # HTTPS: None (plain HTTP), "knobs" or "files" (see the module's docstring).
    tls: Optional[str] = None

    def supports(self, workload):
        return workload.needs in self.caps

    @property
    def files_only(self):
        return tuple(self.caps) == ("files",)

    @property
    def project(self):
        """Built from this checkout (the package or hello_server): the comparison is about
        these, so one that is unavailable fails the run instead of leaving a gap."""
        return self.build is not None


# The engine's default max_connections (10,000) is exactly the c10k workload's count; leave
# room, as gunicorn_server.py does with --worker-connections.
ROOM_FOR_C10K = (("PMU_MAX_CONNECTIONS", "12000"),)
PY = "{python}"
S = "{servers}/"
# uvicorn as the peers run it: with uvloop and httptools.
_UVICORN = (("uvicorn", "uvicorn"), ("uvloop", "uvloop"), ("httptools", "httptools"))

SERVERS = [
    Server(
        "pymongoose_uring",
        "pymongoose_uring",
        (PY, S + "pymongoose_uring_server.py", "{port}"),
        kind="ours",
        caps=("hello", "bytes", "echo", "ws", "ws-broadcast", "files"),
        build="pymongoose_uring",
        knobs=ALL_KNOBS,
        stats_path="/__stats",
        env=ROOM_FOR_C10K,
        ws_label="pymongoose_uring (native API, callbacks)",
        files_label="pymongoose_uring (native FileResponse)",
        description="the native Python API on the io_uring engine; /ws/* App.websocket's "
        "callback form, pymongoose_uring.broadcast",
        suites=("apps",),
    ),
    Server(
        "pymongoose",
        "pymongoose API (compat)",
        (PY, S + "pymongoose_server.py", "{port}"),
        kind="ours",
        caps=("hello", "bytes", "echo", "ws", "ws-broadcast"),
        build="pymongoose_uring",
        env=ROOM_FOR_C10K,
        description="the predecessor's script shape through the compatibility layer; /ws/* "
        "with ws_upgrade, MG_EV_WS_MSG and ws_send",
    ),
    Server(
        "pymongoose_uring_flask",
        "pymongoose_uring WSGI (Flask)",
        (PY, S + "pymongoose_uring_flask_server.py", "{port}"),
        kind="ours",
        build="pymongoose_uring",
        knobs=ALL_KNOBS,
        pip=(("flask", "flask"),),
        env=ROOM_FOR_C10K,
        default=False,
        description="the Flask app of gunicorn/granian WSGI on the WSGI adapter, 4 pool threads",
        app="flask_app",
        suites=("apps",),
    ),
    Server(
        "pymongoose_uring_flask_floor",
        "pymongoose_uring native + Flask (floor)",
        (PY, S + "pymongoose_uring_flask_floor_server.py", "{port}"),
        kind="ours",
        build="pymongoose_uring",
        knobs=ALL_KNOBS,
        pip=(("flask", "flask"),),
        env=ROOM_FOR_C10K,
        default=False,
        description="not a server for apps: the Flask app called from a native handler with "
        "the in-process measure's environ, on the ring thread; its own cost is the least any "
        "adapter on this engine could cost around this app",
        app="flask_app",
        suites=("apps",),
    ),
    Server(
        "pymongoose_uring_fastapi",
        "pymongoose_uring ASGI (FastAPI)",
        (PY, S + "pymongoose_uring_fastapi_server.py", "{port}"),
        kind="ours",
        build="pymongoose_uring",
        knobs=ALL_KNOBS,
        pip=(("fastapi", "fastapi"), ("uvloop", "uvloop")),
        env=ROOM_FOR_C10K,
        default=False,
        description="the FastAPI app of uvicorn on the ASGI adapter, uvloop",
        app="fastapi_app",
        suites=("apps",),
    ),
    Server(
        "pymongoose_uring_wsgi",
        "pymongoose_uring WSGI (raw app)",
        (PY, S + "pymongoose_uring_wsgi_server.py", "{port}"),
        kind="ours",
        build="pymongoose_uring",
        knobs=ALL_KNOBS,
        env=ROOM_FOR_C10K,
        default=False,
        app="wsgi_raw",
        suites=("apps",),
        description="the raw WSGI app of gunicorn_raw and granian_wsgi_raw through the command "
        "line (python -m pymongoose_uring apps:wsgi_raw), 4 pool threads",
    ),
    Server(
        "pymongoose_uring_asgi",
        "pymongoose_uring ASGI (raw app)",
        (PY, S + "pymongoose_uring_asgi_server.py", "{port}"),
        kind="ours",
        build="pymongoose_uring",
        knobs=ALL_KNOBS,
        caps=("hello", "bytes", "echo", "ws", "ws-broadcast"),
        pip=(("starlette", "starlette"), ("uvloop", "uvloop")),
        env=ROOM_FOR_C10K,
        ws_label="pymongoose_uring ASGI (Starlette app)",
        description="the raw ASGI app of uvicorn_raw and granian_asgi through the command "
        "line (python -m pymongoose_uring apps:asgi_raw), uvloop; /ws/* the same Starlette "
        "app as theirs",
        app="asgi_raw",
        suites=("apps",),
    ),
    Server(
        "hello_c",
        "hello_server (C engine)",
        ("{hello_server}", "{port}", "{threads}"),
        kind="c-reference",
        caps=("hello", "bytes", "echo", "ws", "ws-broadcast"),
        build="hello_server",
        knobs=ALL_KNOBS,
        env=ROOM_FOR_C10K,
        description="examples/hello_server: the engine with a C handler, no Python; "
        "WebSocket echo on every path but /ws/broadcast (pmu_ws_msg_new, framed once)",
    ),
    Server(
        "nginx",
        "nginx (1 worker)",
        (PY, S + "nginx_server.py", "{port}"),
        kind="c-reference",
        caps=("hello", "bytes", "echo", "files"),
        tools=("nginx",),
        files_label="nginx (sendfile, open_file_cache on)",
        description="nginx, one worker, return 200 / static files / echo module; /files/ "
        "with sendfile and open_file_cache on",
    ),
    Server(
        "nginx_nocache",
        "nginx (sendfile, open_file_cache off)",
        (PY, S + "nginx_server.py", "{port}", "nocache"),
        kind="c-reference",
        caps=("files",),
        tools=("nginx",),
        description="nginx, one worker, /files/ with sendfile and open_file_cache off "
        "(an open and a stat per request)",
    ),
    Server(
        "pymongoose_uring_static",
        "pymongoose_uring --static",
        (PY, S + "pymongoose_uring_static_server.py", "{port}", "{threads}"),
        kind="ours",
        caps=("files",),
        build="pymongoose_uring",
        knobs=("threads",),
        hello=False,
        description="the command line as a static file server alone: python -m "
        "pymongoose_uring --static /=DIR (engine mount: no Python per request)",
    ),
    Server(
        "pymongoose_uring_fileresponse",
        "Starlette FileResponse (pymongoose_uring ASGI)",
        (PY, S + "starlette_files_server.py", "{port}", "pymongoose_uring", "fileresponse"),
        kind="ours",
        caps=("files",),
        build="pymongoose_uring",
        knobs=ALL_KNOBS,
        pip=(("starlette", "starlette"), ("uvloop", "uvloop")),
        env=ROOM_FOR_C10K,
        description="a Starlette route returning FileResponse on the ASGI adapter, uvloop "
        "(http.response.pathsend when the adapter offers it)",
    ),
    Server(
        "granian_asgi",
        "granian ASGI",
        (PY, S + "granian_server.py", "{port}", "asgi"),
        kind="peer",
        caps=("hello", "bytes", "echo", "ws", "ws-broadcast"),
        pip=(("granian", "granian"), ("starlette", "starlette")),
        ws_label="granian (Starlette app)",
        description="granian (Rust) serving the raw ASGI app; /ws/* the Starlette app",
        app="asgi_raw",
        suites=("apps",),
    ),
    Server(
        "uvicorn_raw",
        "uvicorn raw ASGI",
        (PY, S + "uvicorn_raw_server.py", "{port}"),
        kind="peer",
        caps=("hello", "bytes", "echo", "ws", "ws-broadcast"),
        pip=_UVICORN + (("websockets", "websockets"), ("starlette", "starlette")),
        ws_label="uvicorn + websockets (Starlette app)",
        description="a raw ASGI app on uvicorn with uvloop and httptools; /ws/* the "
        "Starlette app on uvicorn's websockets implementation",
        app="asgi_raw",
        suites=("apps",),
    ),
    Server(
        "granian_static",
        "granian static mount",
        (PY, S + "granian_server.py", "{port}", "static"),
        kind="peer",
        caps=("files",),
        pip=(("granian", "granian"), ("starlette", "starlette")),
        description="granian (Rust) with --static-path-mount /files in front of the raw "
        "ASGI app: files served by granian itself",
    ),
    Server(
        "uvicorn_fileresponse",
        "Starlette FileResponse (uvicorn)",
        (PY, S + "starlette_files_server.py", "{port}", "uvicorn", "fileresponse"),
        kind="peer",
        caps=("files",),
        pip=(("starlette", "starlette"),) + _UVICORN,
        description="the Starlette FileResponse app on uvicorn with uvloop and httptools "
        "(no pathsend: the file goes through the app in chunks)",
    ),
    Server(
        "uvicorn_staticfiles",
        "Starlette StaticFiles (uvicorn)",
        (PY, S + "starlette_files_server.py", "{port}", "uvicorn", "staticfiles"),
        kind="peer",
        caps=("files",),
        pip=(("starlette", "starlette"),) + _UVICORN,
        description="Starlette's StaticFiles mounted on /files, on uvicorn with uvloop and "
        "httptools",
    ),
    Server(
        "uvicorn",
        "FastAPI (uvicorn)",
        (PY, S + "uvicorn_server.py", "{port}"),
        kind="peer",
        pip=(("fastapi", "fastapi"),) + _UVICORN,
        description="FastAPI on uvicorn with uvloop and httptools",
        app="fastapi_app",
        suites=("apps",),
    ),
    Server(
        "aiohttp",
        "aiohttp",
        (PY, S + "aiohttp_server.py", "{port}"),
        kind="peer",
        caps=("hello", "bytes", "echo", "ws", "ws-broadcast"),
        pip=(("aiohttp", "aiohttp"), ("uvloop", "uvloop")),
        description="aiohttp's web server on uvloop, its own WebSocket handlers",
    ),
    Server(
        "granian_fastapi",
        "granian ASGI (FastAPI)",
        (PY, S + "granian_server.py", "{port}", "fastapi"),
        kind="peer",
        pip=(("granian", "granian"), ("fastapi", "fastapi")),
        default=False,
        description="granian (Rust) serving the FastAPI app of uvicorn_server.py over ASGI",
        app="fastapi_app",
        suites=("apps",),
    ),
    Server(
        "granian_wsgi",
        "granian WSGI (Flask)",
        (PY, S + "granian_server.py", "{port}", "wsgi"),
        kind="peer",
        pip=(("granian", "granian"), ("flask", "flask")),
        description="granian (Rust) serving the Flask app over WSGI",
        app="flask_app",
        suites=("apps",),
    ),
    Server(
        "gunicorn",
        "gunicorn (Flask)",
        (PY, S + "gunicorn_server.py", "{port}"),
        kind="peer",
        pip=(("gunicorn", "gunicorn"), ("flask", "flask")),
        description="the Flask app under gunicorn, 1 gthread worker, 4 threads",
        app="flask_app",
        suites=("apps",),
    ),
    Server(
        "granian_wsgi_raw",
        "granian WSGI (raw app)",
        (PY, S + "granian_server.py", "{port}", "wsgi_raw"),
        kind="peer",
        pip=(("granian", "granian"),),
        default=False,
        app="wsgi_raw",
        suites=("apps",),
        description="granian (Rust) serving the raw WSGI app, 4 blocking threads",
    ),
    Server(
        "gunicorn_raw",
        "gunicorn (raw WSGI app)",
        (PY, S + "gunicorn_server.py", "{port}", "raw"),
        kind="peer",
        pip=(("gunicorn", "gunicorn"),),
        default=False,
        app="wsgi_raw",
        suites=("apps",),
        description="the raw WSGI app under gunicorn, 1 gthread worker, 4 threads",
    ),
    Server(
        "flask",
        "Flask (threaded)",
        (PY, S + "flask_server.py", "{port}"),
        kind="peer",
        pip=(("flask", "flask"),),
        description="Flask's own threaded development server",
        app="flask_app",
    ),
]
# HTTPS (issue 14, --suite tls): ours and the C engine with the engine's TLS, nginx with
# `ssl` on, uvicorn with --ssl-*, granian with its own TLS; each serves GET / and /1m.
_TLS_CAPS = ("tls", "tls-bytes")
SERVERS += [
    Server(
        "pymongoose_uring_tls",
        "pymongoose_uring (HTTPS)",
        (PY, S + "pymongoose_uring_server.py", "{port}"),
        kind="ours",
        caps=_TLS_CAPS,
        build="pymongoose_uring",
        knobs=ALL_KNOBS,
        stats_path="/__stats",
        env=ROOM_FOR_C10K,
        default=False,
        suites=("tls",),
        tls="knobs",
        description="the native API's hello server of the plain rows, HTTPS by the engine "
        "(ssl_certfile, ssl_keyfile, ssl_ciphersuites, ssl_ciphers knobs)",
    ),
    Server(
        "hello_c_tls",
        "hello_server (C engine, HTTPS)",
        ("{hello_server}", "{port}", "{threads}"),
        kind="c-reference",
        caps=_TLS_CAPS,
        build="hello_server",
        knobs=ALL_KNOBS,
        env=ROOM_FOR_C10K,
        default=False,
        suites=("tls",),
        tls="knobs",
        description="examples/hello_server with the engine's TLS knobs: the engine's HTTPS "
        "cost with no Python",
    ),
    Server(
        "nginx_tls",
        "nginx (1 worker, HTTPS)",
        (PY, S + "nginx_server.py", "{port}", "tls"),
        kind="c-reference",
        caps=_TLS_CAPS,
        tools=("nginx",),
        default=False,
        suites=("tls",),
        tls="files",
        description="nginx, one worker, `listen ... ssl`, TLS 1.2 and 1.3, the same suite "
        "and ciphers, session tickets on, access log off",
    ),
    Server(
        "uvicorn_tls",
        "uvicorn raw ASGI (HTTPS)",
        (PY, S + "uvicorn_raw_server.py", "{port}", "tls"),
        kind="peer",
        caps=_TLS_CAPS,
        pip=_UVICORN + (("websockets", "websockets"), ("starlette", "starlette")),
        default=False,
        suites=("tls",),
        tls="files",
        description="the raw ASGI app on uvicorn (uvloop, httptools) with --ssl-certfile, "
        "--ssl-keyfile, --ssl-ciphers",
    ),
    Server(
        "granian_tls",
        "granian ASGI (HTTPS)",
        (PY, S + "granian_server.py", "{port}", "asgi", "tls"),
        kind="peer",
        caps=_TLS_CAPS,
        pip=(("granian", "granian"), ("starlette", "starlette")),
        default=False,
        suites=("tls",),
        tls="files",
        description="granian (Rust) serving the raw ASGI app with its own TLS (rustls): "
        "--ssl-certificate, --ssl-keyfile",
    ),
]
BY_NAME = {s.name: s for s in SERVERS}
DEFAULT = [s.name for s in SERVERS if s.default]
WS_LABELS = {s.name: s.ws_label for s in SERVERS if s.ws_label}
FILES_LABELS = {s.name: s.files_label for s in SERVERS if s.files_label}
# Named suites (run.py --suite NAME): the servers, and the workloads run by default.
# "apps": raw WSGI, raw ASGI, Flask and FastAPI on every server that runs them (ours through
# the command line and the adapters, gunicorn, granian, uvicorn), with the native API as the
# reference: the rows of the app's-own-cost column, out of the default run for its length.
# "tls": the HTTPS servers and workloads (issue 14), out of the default run for its length.
SUITES = {name: [s.name for s in SERVERS if name in s.suites] for name in ("apps", "tls")}
SUITE_WORKLOADS = {
    "apps": ["keepalive"],
    "tls": ["tls-keepalive", "tls-get1m", "tls-handshake-ecdsa", "tls-handshake-rsa"],
}
# Reference for ratios: the first of these that ran.
REFERENCE_ORDER = [
    "pymongoose_uring",
    "pymongoose",
    "hello_c",
    "nginx",
    "pymongoose_uring_tls",
    "hello_c_tls",
    "nginx_tls",
]
