"""Command line: serve a native, WSGI or ASGI app, or report what the kernel offers.

    python -m pymongoose_uring myapp:app --port 8000              # interface detected
    python -m pymongoose_uring myflask:app --interface wsgi --pool-threads 16
    python -m pymongoose_uring myfastapi:app --interface asgi --workers 4 --port 8000
    python -m pymongoose_uring --hello --port 8000     # built-in hello-world JSON app
    python -m pymongoose_uring --probe                 # io_uring features, as JSON

The interface is detected when --interface is omitted: an App (or handler(request))
is native, app(environ, start_response) is WSGI, async app(scope, receive, send) is
ASGI 3. --workers N forks N processes, each with its own server, on listening
sockets the parent holds (one SO_REUSEPORT socket per worker for TCP); the parent
restarts a worker that dies, replaces them one by one on SIGHUP (new code, no
connection refused), and stops them all gracefully on SIGTERM or SIGINT. Every
engine knob is an option (--ring-entries,
--buf-size, --sqpoll 1...) with the engine's default shown below.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import random
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ._server import say

# Exit status of a worker that could not load its app or bind: the
# supervisor stops instead of restarting it forever.
EXIT_BOOT_FAILED = 3
# Exit status of a worker that served its --max-requests: replaced at once.
EXIT_RECYCLED = 4

_LISTEN = ("host", "port", "unix_path", "threads", "listen_fd")


def _load(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"give the app as MODULE:ATTRIBUTE, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    return obj


def _hello_app() -> Any:
    from . import App
    app = App()
    body = b'{"message":"Hello, World!"}'
    headers = [("Content-Type", "application/json")]

    @app.get("/")
    def hello(request: Any) -> Any:
        return 200, headers, body

    return app


def _parser(defaults: Dict[str, Any]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pymongoose_uring", allow_abbrev=False,
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("app", nargs="?",
                   help="MODULE:ATTRIBUTE of the app (an App, a handler, a WSGI or an ASGI app)")
    p.add_argument("--interface", choices=("auto", "native", "wsgi", "asgi"), default="auto",
                   help="how to call the app (default: detected from the app)")
    p.add_argument("--hello", action="store_true", help="serve the built-in hello-world app")
    p.add_argument("--probe", action="store_true", help="print probe() as JSON and exit")
    g = p.add_argument_group("listening and processes")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any)")
    g.add_argument("--uds", "--unix-path", dest="unix_path", default=None, metavar="PATH",
                   help="listen on this Unix socket instead of TCP")
    g.add_argument("--fd", "--listen-fd", dest="fd", type=int, default=None, metavar="FD",
                   help="serve on this inherited listening socket (TCP or Unix) instead of "
                        "binding one")
    g.add_argument("--threads", type=int, default=1,
                   help="ring threads per process, one io_uring each (default 1)")
    g.add_argument("--workers", type=int, default=1,
                   help="processes, supervised: the supervisor holds the listening sockets "
                        "(one SO_REUSEPORT socket per worker for TCP), so connections wait "
                        "while a worker that died is restarted; SIGTERM/SIGINT stop them all "
                        "gracefully (default 1: no supervisor)")
    g.add_argument("--max-requests", type=int, default=0, metavar="N",
                   help="replace a worker after it served N requests (frees what a leaky app "
                        "holds; no connection is lost; implies the supervisor; default 0: "
                        "never)")
    g.add_argument("--reload", action="store_true",
                   help="for development: replace the workers (as SIGHUP does) when a .py "
                        "file under --reload-dir changes; implies the supervisor")
    g.add_argument("--reload-dir", action="append", default=None, metavar="DIR",
                   help="where --reload watches (repeatable; default: the current directory)")
    g.add_argument("--max-requests-jitter", type=int, default=0, metavar="J",
                   help="add 0..J at random to each worker's --max-requests, so that "
                        "workers are not replaced all at once")
    g.add_argument("--access-log", action="store_true",
                   help="log one line per request to stderr (logger pymongoose_uring.access)")
    g.add_argument("--log-level", default="warning",
                   choices=("debug", "info", "warning", "error", "critical"),
                   help="level of the pymongoose_uring logger (default warning)")
    x = p.add_argument_group("behind a reverse proxy (WSGI and ASGI apps)")
    x.add_argument("--proxy-headers", action=argparse.BooleanOptionalAction, default=True,
                   help="take the client address and scheme from X-Forwarded-For and "
                        "X-Forwarded-Proto when the peer is a trusted proxy (default on)")
    x.add_argument("--forwarded-allow-ips", default=None, metavar="LIST",
                   help="the trusted proxies: comma-separated addresses, networks "
                        "(10.0.0.0/8), 'unix:' (peers on a Unix socket) or '*' (default "
                        "$FORWARDED_ALLOW_IPS, else 127.0.0.1,::1)")
    w = p.add_argument_group("WSGI")
    w.add_argument("--pool-threads", "--wsgi-threads", dest="pool_threads", type=int, default=8,
                   help="Python threads that call the WSGI app (default 8)")
    w.add_argument("--script-name", default="",
                   help="SCRIPT_NAME: the URL prefix the WSGI app is mounted under")
    a = p.add_argument_group("ASGI")
    a.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                   help="ASGI lifespan: auto (used when the app supports it), on, off")
    a.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="event loop for ASGI (default auto: uvloop when installed)")
    a.add_argument("--root-path", default="", help="ASGI root_path")
    e = p.add_argument_group("engine knobs (default: the engine's)")
    for name, value in defaults.items():
        if name in _LISTEN:
            continue
        kind = str if isinstance(value, str) or value is None and name.endswith(("header", "_dir")) \
            else int
        e.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"engine default: {value!r}")
    return p


def _engine_options(args: argparse.Namespace, defaults: Dict[str, Any]) -> Dict[str, Any]:
    from ._adapter import _SERVER_PARAMS
    options = {}
    for name in defaults:
        if name in _LISTEN:
            continue
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in _SERVER_PARAMS:
            raise SystemExit(f"pymongoose_uring: --{name.replace('_', '-')} is not supported "
                             f"by this Server")
        options[name] = value
    return options


def _setup_logging(args: argparse.Namespace) -> None:
    root = logging.getLogger("pymongoose_uring")
    root.setLevel(args.log_level.upper())
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: "
                                         "%(message)s"))
        root.addHandler(h)
        root.propagate = False
    access = logging.getLogger("pymongoose_uring.access")
    if args.access_log:
        access.setLevel(logging.INFO)
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(h)
        access.propagate = False
    else:
        access.setLevel(logging.WARNING)


def _native_with_access_log(app: Callable[[Any], Any]) -> Callable[[Any], Any]:
    from . import Response
    from ._adapter import log_access

    def logged(request: Any) -> Any:
        result = app(request)
        if isinstance(result, Response):
            status: Any = result.status
        elif isinstance(result, int) and not isinstance(result, bool):
            status = result
        elif isinstance(result, tuple) and result:
            first = result[0]
            status = first if isinstance(first, int) else (
                result[1] if len(result) > 1 else 200)
        elif result is None or hasattr(result, "__await__"):
            status = "-"
        else:
            status = 200
        log_access(request.client, request.method, request.target, request.http_version,
                   status, None)
        return result

    return logged


def _make_server(args: argparse.Namespace, options: Dict[str, Any]) -> Any:
    """The server object for the app (Server, WSGIServer or ASGIServer)."""
    from . import Server
    from ._adapter import detect_interface

    app = _hello_app() if args.hello else _load(args.app)
    interface = args.interface
    if interface == "auto":
        interface = detect_interface(app)
    listen = dict(unix_path=args.unix_path, threads=args.threads, listen_fd=args.fd)
    proxy = dict(proxy_headers=args.proxy_headers, forwarded_allow_ips=args.forwarded_allow_ips)
    if interface == "wsgi":
        from .wsgi import WSGIServer
        return WSGIServer(app, args.host, args.port, pool_threads=args.pool_threads,
                          script_name=args.script_name, access_log=args.access_log,
                          multiprocess=args.workers > 1, **proxy, **listen, **options)
    if interface == "asgi":
        from .asgi import ASGIServer
        return ASGIServer(app, args.host, args.port, lifespan=args.lifespan,
                          root_path=args.root_path, loop=args.loop,
                          access_log=args.access_log, **proxy, **listen, **options)
    if args.access_log:
        app = _native_with_access_log(app)
    return Server(app, args.host, args.port, **listen, **options)


def _serve(args: argparse.Namespace, options: Dict[str, Any], ready_fd: int = -1) -> int:
    """Load the app and serve until SIGINT/SIGTERM (one process). A byte is
    written to ready_fd (then closed) once the server accepts."""
    from . import Error
    try:
        server = _make_server(args, options)
    except Error as exc:
        say(str(exc))
        return EXIT_BOOT_FAILED
    except (ImportError, AttributeError, ValueError) as exc:
        say(f"cannot load {args.app!r}: {type(exc).__name__}: {exc}")
        return EXIT_BOOT_FAILED
    except Exception as exc:
        import traceback
        traceback.print_exc()
        say(f"cannot load {args.app!r}: {type(exc).__name__}: {exc}")
        return EXIT_BOOT_FAILED
    recycled = _recycle_after(server, args) if args.max_requests else None
    if ready_fd >= 0:
        _tell_when_serving(server, ready_fd)
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


def _tell_when_serving(server: Any, fd: int) -> None:
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


class _Recycle(threading.Event):
    limit_reached = False


def _recycle_after(server: Any, args: argparse.Namespace) -> _Recycle:
    """Stop this worker gracefully (as SIGTERM does) once it has served
    --max-requests (plus jitter) requests. Returns an event that ends the
    watch when set."""
    limit = args.max_requests + random.randint(0, args.max_requests_jitter)
    done = _Recycle()

    def watch() -> None:
        while not done.wait(0.02):
            try:
                served = server.stats()["requests"]
            except RuntimeError:  # not started yet
                continue
            if served >= limit:
                done.limit_reached = True
                say(f"worker {os.environ.get('PYMONGOOSE_URING_WORKER', '0')} (pid {os.getpid()}) "
                    f"served {served} requests (--max-requests {limit}); replacing it")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="pymongoose_uring max-requests", daemon=True).start()
    return done


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGTERM this worker if the supervisor dies."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux, or no libc
        pass
    if os.getppid() != parent:
        os._exit(0)


def _listening_sockets(args: argparse.Namespace, backlog: int) -> List[socket.socket]:
    """The supervisor's listening sockets, made before any worker: one
    SO_REUSEPORT socket per worker for TCP (the kernel spreads connections
    over them), one shared Unix socket, or the inherited --fd. The
    supervisor keeps them open, so a socket's waiting connections outlive
    its worker and the replacement answers them."""
    if args.fd is not None:
        return [socket.socket(fileno=os.dup(args.fd))]
    if args.unix_path:
        path = args.unix_path
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # left over from an earlier run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        return [sock]
    infos = socket.getaddrinfo(args.host or None, args.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sockets: List[socket.socket] = []
    try:
        for _ in range(args.workers):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
            address = sock.getsockname()  # with port 0: the others share the one picked
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _SourceWatcher:
    """--reload: the .py files under some folders, polled (at most every half
    second) for a changed, added or removed file."""

    SKIP = {"__pycache__", "node_modules", "build", "dist", "venv"}

    def __init__(self, roots: List[str]) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.last = ""
        self.next_poll = 0.0
        self.seen = self._scan()

    def _scan(self) -> Dict[str, Tuple[int, int]]:
        found: Dict[str, Tuple[int, int]] = {}
        for root in self.roots:
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d not in self.SKIP]
                for name in files:
                    if name.endswith(".py"):
                        path = os.path.join(folder, name)
                        try:
                            st = os.stat(path)
                            found[path] = (st.st_mtime_ns, st.st_size)
                        except OSError:
                            pass
        return found

    def changed(self) -> bool:
        now = time.monotonic()
        if now < self.next_poll:
            return False
        self.next_poll = now + 0.5
        current = self._scan()
        if current == self.seen:
            return False
        diff = ({p for p in current if self.seen.get(p) != current[p]}
                | (set(self.seen) - set(current)))
        for path in diff:
            # A .pyc records its source's mtime in whole seconds: an edit within
            # the same second that keeps the size would load the old code.
            try:
                os.unlink(importlib.util.cache_from_source(path))
            except (OSError, ValueError, NotImplementedError):
                pass
        self.last = os.path.relpath(sorted(diff)[0]) if diff else "a file"
        self.seen = current
        return True


class _Supervisor:
    """Forks --workers processes, restarts the ones that die (at once when
    they were replaced for --max-requests), replaces them one by one on
    SIGHUP (each new worker serves before the old one stops, so new code is
    loaded without refusing a connection), stops them all gracefully on
    SIGTERM/SIGINT (SIGKILL after the shutdown deadline). It holds the
    listening sockets the workers serve."""

    def __init__(self, args: argparse.Namespace, options: Dict[str, Any]) -> None:
        self.args = args
        self.options = options
        self.children: Dict[int, int] = {}  # pid -> worker index
        self.started: Dict[int, float] = {}  # index -> start time
        self.failures: Dict[int, int] = {}  # index -> quick deaths in a row
        self.stopping = False
        self.reload_requested: Optional[str] = None  # why, when asked
        self.retired: Set[int] = set()  # pids replaced on SIGHUP: not restarted
        self.ready: Dict[int, int] = {}  # pid -> read end of its "serving" pipe
        self.grace = (options.get("shutdown_timeout_ms") or 10000) / 1000.0 + 5.0
        self.sockets: List[socket.socket] = []

    def log(self, message: str) -> None:
        say(message)

    def spawn(self, index: int) -> int:
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                for fd in self.ready.values():
                    os.close(fd)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _die_with_parent(parent)
                os.environ["PYMONGOOSE_URING_WORKER"] = str(index)
                mine = self.sockets[index % len(self.sockets)]
                for sock in self.sockets:
                    if sock is not mine:
                        sock.close()
                self.args.fd = mine.fileno()
                code = _serve(self.args, self.options, ready_w)
            except BaseException:  # pragma: no cover - reported, then exit
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(ready_w)
        self.ready[pid] = ready_r
        self.children[pid] = index
        self.started[index] = time.monotonic()
        self.log(f"worker {index} started (pid {pid})")
        return pid

    def wait_serving(self, pid: int, timeout: float) -> bool:
        """Whether worker pid says it serves within timeout (False if it died,
        or the supervisor is stopping)."""
        import select
        fd = self.ready.get(pid)
        deadline = time.monotonic() + timeout
        while fd is not None and not self.stopping and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                return os.read(fd, 1) == b"r"
        return False

    def on_hangup(self, signum: int, frame: Any) -> None:
        self.reload_requested = "SIGHUP received"

    def reload(self) -> None:
        """Replace every worker, one at a time: the new one serves the same
        socket before the old one is stopped gracefully."""
        why, self.reload_requested = self.reload_requested, None
        n = self.args.workers
        self.log(f"{why}; replacing " + ("the worker" if n == 1 else
                                         f"the {n} workers one by one"))
        for index in range(self.args.workers):
            old = [pid for pid, i in self.children.items() if i == index]
            new = self.spawn(index)
            if not self.wait_serving(new, 60):
                if self.stopping:
                    return
                self.log(f"worker {index} (pid {new}) did not start serving; the reload stops "
                         "here and the running workers stay")
                self.retired.add(new)
                try:
                    os.kill(new, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return
            for pid in old:
                self.retired.add(pid)
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.log("reload done: every worker replaced")

    def on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            self.log(f"{signal.Signals(signum).name} received; stopping the workers")
            for pid in list(self.children):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def reap(self) -> List[Any]:
        dead = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid == 0:
                break
            index = self.children.pop(pid, None)
            fd = self.ready.pop(pid, None)
            if fd is not None:
                os.close(fd)
            if pid in self.retired:
                self.retired.discard(pid)
                continue
            if index is not None:
                dead.append((pid, index, status))
        return dead

    def run(self) -> int:
        try:
            self.sockets = _listening_sockets(self.args, self.options.get("backlog") or 4096)
        except OSError as exc:
            where = self.args.unix_path or f"{self.args.host}:{self.args.port}"
            self.log(f"cannot listen on {where}: {exc.strerror or exc}")
            return 1
        try:
            return self._supervise()
        finally:
            for sock in self.sockets:
                sock.close()
            if self.args.unix_path and self.args.fd is None:
                try:
                    os.unlink(self.args.unix_path)
                except OSError:
                    pass

    def _supervise(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        signal.signal(signal.SIGHUP, self.on_hangup)
        name = self.sockets[0].getsockname()
        where = (f"unix:{name}" if self.sockets[0].family == socket.AF_UNIX
                 else f"http://[{name[0]}]:{name[1]}" if ":" in name[0]
                 else f"http://{name[0]}:{name[1]}")
        self.log(f"supervising {self.args.workers} workers on {where} (pid {os.getpid()})")
        for i in range(self.args.workers):
            self.spawn(i)
        code = 0
        watcher = _SourceWatcher(self.args.reload_dir or [os.getcwd()]) if self.args.reload \
            else None
        while not self.stopping:
            if watcher is not None and watcher.changed():
                self.reload_requested = f"{watcher.last} changed"
            if self.reload_requested:
                self.reload()
            for pid, index, status in self.reap():
                if self.stopping:
                    break
                how = (f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
                       if os.WIFSIGNALED(status) else f"exited with {os.WEXITSTATUS(status)}")
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_FAILED:
                    self.log(f"worker {index} (pid {pid}) could not start ({how}); stopping")
                    code = 1
                    self.on_signal(signal.SIGTERM, None)
                    break
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_RECYCLED:
                    self.failures[index] = 0
                    self.spawn(index)  # its socket kept the connections that came meanwhile
                    continue
                quick = time.monotonic() - self.started.get(index, 0) < 1.0
                self.failures[index] = self.failures.get(index, 0) + 1 if quick else 0
                delay = min(0.1 * 2 ** self.failures[index], 5.0) if quick else 0
                self.log(f"worker {index} (pid {pid}) {how}; restarting"
                         + (f" in {delay:.1f}s" if delay else ""))
                if delay:
                    time.sleep(delay)
                if not self.stopping:
                    self.spawn(index)
            time.sleep(0.05)
        deadline = time.monotonic() + self.grace
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in list(self.children):
            self.log(f"worker pid {pid} did not stop in time; killing it")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self.children:
            self.reap()
            time.sleep(0.02)
        self.log("all workers stopped")
        return code


def main(argv: Optional[List[str]] = None) -> int:
    from . import probe
    from . import _native

    defaults = _native._pmu.config_defaults() if _native._pmu is not None else {}
    p = _parser(defaults)
    args = p.parse_args(argv)

    if args.probe:
        print(json.dumps(probe(), indent=2))
        return 0 if probe()["available"] else 1
    if not args.hello and not args.app:
        p.error("give MODULE:APP, --hello or --probe")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.pool_threads < 1:
        p.error("--pool-threads must be at least 1")
    if args.max_requests < 0 or args.max_requests_jitter < 0:
        p.error("--max-requests and --max-requests-jitter cannot be negative")
    if args.fd is not None:
        try:
            os.fstat(args.fd)
        except OSError as exc:
            p.error(f"--fd {args.fd}: {exc.strerror}")
    if args.proxy_headers:
        from ._adapter import ProxyHeaders
        try:
            ProxyHeaders(args.forwarded_allow_ips)
        except ValueError as exc:
            p.error(str(exc))
    options = _engine_options(args, defaults)
    _setup_logging(args)
    if args.workers > 1 or args.max_requests or args.reload:
        return _Supervisor(args, options).run()
    code = _serve(args, options)
    return 1 if code == EXIT_BOOT_FAILED else code


if __name__ == "__main__":
    sys.exit(main())
