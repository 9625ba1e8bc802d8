"""One serving process: load the app, build its server (native, WSGI or ASGI),
serve until SIGINT/SIGTERM; tell the supervisor once it serves, and stop after
--max-requests."""

from __future__ import annotations

import importlib
import os
import random
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, List, Optional, Union

from .._server import say
from .._types import Handler, HandlerResult
from .config import Config

if TYPE_CHECKING:
    from .. import App, Request, Server
    from ..asgi import ASGIServer
    from ..wsgi import WSGIServer

    AnyServer = Union[Server, WSGIServer, ASGIServer]

# Exit status of a worker that could not load its app or bind: the
# supervisor stops instead of restarting it forever.
EXIT_BOOT_FAILED = 3
# Exit status of a worker that served its --max-requests: replaced at once.
EXIT_RECYCLED = 4


def load(spec: str, app_dir: str = ".", factory: bool = False) -> Any:
    """The object MODULE:ATTRIBUTE names (ATTRIBUTE may be dotted; default app),
    importing MODULE with app_dir first on sys.path (--app-dir, as uvicorn's);
    with factory (--factory), what calling that object returns."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"give the app as MODULE:ATTRIBUTE, not {spec!r}")
    directory = os.path.abspath(app_dir)
    if directory in sys.path:
        sys.path.remove(directory)
    sys.path.insert(0, directory)
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    if factory:
        if not callable(obj):
            raise ValueError(f"--factory: {spec} is not callable")
        obj = obj()
    return obj


def hello_app() -> App:
    """--hello: GET / answers {"message":"Hello, World!"}."""
    from .. import App

    app = App()
    body = b'{"message":"Hello, World!"}'
    headers = [("Content-Type", "application/json")]

    @app.get("/")
    def hello(request: Request) -> HandlerResult:
        return 200, headers, body

    return app


def static_mounts(config: Config, with_app: bool) -> List[Any]:
    """The StaticMount of each --static: fallthrough only for the prefix "/" in
    front of an app, so that the app still gets what the directory lacks."""
    from .._native import _pmu

    return [
        _pmu.StaticMount(
            prefix,
            os.path.abspath(directory),
            listing=config.static_listing,
            dotfiles=config.static_dotfiles,
            cache_control=config.static_cache_control,
            precompressed=config.static_precompressed,
            fallthrough=with_app and prefix.rstrip("/") == "",
        )
        for prefix, directory in config.statics
    ]


def files_only_app(request: Request) -> HandlerResult:
    """The app of a static file server alone: what no mount answers is 404."""
    from .. import Response

    return Response.text("Not Found", 404)


def native_with_access_log(app: Handler) -> Handler:
    """app, logging one access line per request when its answer is given
    (request._on_answer): a request kept and answered later logs the status
    it got and the time to it, as one answered at once does."""
    from .._adapter import access_log_needs_headers, log_access

    headers = access_log_needs_headers()
    clock = time.perf_counter

    def logged(request: Request) -> HandlerResult:
        start = clock()
        client = request.client
        method = request.method
        target = request.target
        version = request.http_version
        referer = request.header("referer") if headers else None
        agent = request.header("user-agent") if headers else None

        def answered(status: int, length: Optional[int]) -> None:
            log_access(
                client,
                method,
                target,
                version,
                status or "-",  # 0: the file rules chose it (200, 206, 304...)
                length,
                duration=clock() - start,
                referer=referer,
                user_agent=agent,
            )

        request._on_answer(answered)
        return app(request)

    return logged


def make_server(config: Config) -> AnyServer:
    """The server object for the app (Server, WSGIServer or ASGIServer)."""
    from .. import Server
    from .._adapter import detect_interface

    # What MODULE:ATTRIBUTE names is only known at run time: detect_interface() tells.
    app: Any
    if config.hello:
        app = hello_app()
    elif config.app:
        app = load(config.app, config.app_dir, config.factory)
    else:
        app = files_only_app
    interface = config.interface
    if interface == "auto":
        interface = "native" if app is files_only_app else detect_interface(app)
    listen: Any = dict(unix_path=config.unix_path, threads=config.threads, listen_fd=config.fd)
    proxy: Any = dict(
        proxy_headers=config.proxy_headers, forwarded_allow_ips=config.forwarded_allow_ips
    )
    options: Any = dict(config.engine)
    if config.ssl_sni_certs:
        options["ssl_sni_certs"] = list(config.ssl_sni_certs)
    if config.statics:
        options["statics"] = static_mounts(config, with_app=app is not files_only_app)
    if interface == "wsgi":
        from ..wsgi import WSGIServer

        return WSGIServer(
            app,
            config.host,
            config.port,
            pool_threads=config.pool_threads,
            inline_ms=config.inline_ms,
            script_name=config.script_name,
            access_log=config.access_log,
            multiprocess=config.workers > 1,
            **proxy,
            **listen,
            **options,
        )
    if interface == "asgi":
        from ..asgi import ASGIServer

        return ASGIServer(
            app,
            config.host,
            config.port,
            lifespan=config.lifespan,
            root_path=config.root_path,
            loop=config.loop,
            access_log=config.access_log,
            ws=config.ws,
            ws_max_queue=config.ws_max_queue,
            ring=config.asgi_ring,
            **proxy,
            **listen,
            **options,
        )
    if config.access_log:
        app = native_with_access_log(app)
    return Server(app, config.host, config.port, **listen, **options)


def serve(config: Config, ready_fd: int = -1) -> int:
    """Load the app and serve until SIGINT/SIGTERM (one process). A byte is
    written to ready_fd (then closed) once the server accepts. Returns the
    exit status: 0, EXIT_BOOT_FAILED or EXIT_RECYCLED."""
    from .. import Error

    try:
        server = make_server(config)
    except Error as exc:
        say(str(exc))
        return EXIT_BOOT_FAILED
    except (ImportError, AttributeError, ValueError) as exc:
        say(f"cannot load {config.app!r}: {type(exc).__name__}: {exc}")
        return EXIT_BOOT_FAILED
    except Exception as exc:
        import traceback

        traceback.print_exc()
        say(f"cannot load {config.app!r}: {type(exc).__name__}: {exc}")
        return EXIT_BOOT_FAILED
    recycled = recycle_after(server, config) if config.max_requests else None
    if ready_fd >= 0:
        tell_when_serving(server, ready_fd)
    try:
        server.run()
    except Error as exc:  # UnavailableError, address in use...
        say(str(exc))
        return EXIT_BOOT_FAILED
    except RuntimeError as exc:  # e.g. ASGI lifespan startup failed
        say(str(exc))
        return EXIT_BOOT_FAILED
    finally:
        if recycled is not None:
            recycled.set()  # ends the watcher
    return EXIT_RECYCLED if recycled is not None and recycled.limit_reached else 0


def tell_when_serving(server: AnyServer, fd: int) -> None:
    """Write a byte to fd once the server runs (its listener accepts), for the
    supervisor; closing fd without it (the worker died) says it never did."""

    def watch() -> None:
        try:
            deadline = time.monotonic() + 600
            while not server.running and time.monotonic() < deadline:
                time.sleep(0.005)
            if server.running:
                os.write(fd, b"r")
        finally:
            os.close(fd)

    threading.Thread(target=watch, name="pymongoose_uring ready", daemon=True).start()


class Recycle(threading.Event):
    """Set to end the --max-requests watch; limit_reached says it fired."""

    limit_reached = False


def recycle_after(server: AnyServer, config: Config) -> Recycle:
    """Stop this worker gracefully (as SIGTERM does) once it has served
    --max-requests (plus jitter) requests. Returns an event that ends the
    watch when set."""
    limit = config.max_requests + random.randint(0, config.max_requests_jitter)
    done = Recycle()

    def watch() -> None:
        while not done.wait(0.02):
            try:
                served = server.stats()["requests"]
            except RuntimeError:  # not started yet
                continue
            if served >= limit:
                done.limit_reached = True
                say(
                    f"worker {os.environ.get('PYMONGOOSE_URING_WORKER', '0')} (pid {os.getpid()}) "
                    f"served {served} requests (--max-requests {limit}); replacing it"
                )
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="pymongoose_uring max-requests", daemon=True).start()
    return done
