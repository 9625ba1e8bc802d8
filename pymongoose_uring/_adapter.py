"""What the WSGI and ASGI adapters share: a server wrapper with start/stop hooks,
the access log, the proxy headers, and telling apart native, WSGI and ASGI
applications.

On the per-request path: :class:`ProxyHeaders` (when the peer is a trusted
proxy) and :func:`log_access` (when access logging was asked for).
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from ._server import Server
from ._types import Handler

__all__ = ["AdapterServer", "ProxyHeaders", "asgi_version", "detect_interface", "access_log"]

log = logging.getLogger("pymongoose_uring")
access_log = logging.getLogger("pymongoose_uring.access")

# The keywords Server() accepts besides app, host and port.
_SERVER_PARAMS = frozenset(
    name
    for name, p in inspect.signature(Server.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)


# The body knobs WSGIServer and ASGIServer default to, as gunicorn, uvicorn and
# granian do: no cap on a request body, and a body above 64 KiB streamed to the app
# (wsgi.input / http.request messages with more_body) as it arrives, the engine
# reading no further while more than output_high_water is unread, so that memory
# stays bounded whatever the size. A body up to the threshold arrives whole, as
# before. max_body_bytes=N keeps a cap (413 above it); the native API keeps the
# engine's 1 MiB default.
ADAPTER_BODY_DEFAULTS = {"max_body_bytes": 0, "stream_body_threshold": 64 * 1024}


def adapter_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """``options`` with the adapters' body defaults for the knobs it does not give
    (see ADAPTER_BODY_DEFAULTS); a value of None counts as not given."""
    out = dict(options)
    for name, value in ADAPTER_BODY_DEFAULTS.items():
        if out.get(name) is None:
            out[name] = value
    return out


def server_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """The items of ``options`` that Server() accepts (unknown keys raise TypeError)."""
    unknown = sorted(k for k in options if k not in _SERVER_PARAMS)
    if unknown:
        raise TypeError("unknown server option(s): " + ", ".join(unknown))
    return options


# --access-log-format (gunicorn's atoms), or None: the default line.
_access_format: Optional[str] = None

# gunicorn's default --access-log-format.
GUNICORN_ACCESS_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


class AccessAtoms(dict):  # type: ignore[type-arg]
    """The values of gunicorn's access-log atoms for one answer; an atom it
    lacks (``{header}i``, ``{header}o``, ``{name}e``, unknown ones) is '-'."""

    def __missing__(self, key: str) -> str:
        return "-"


def access_atoms(
    client: Union[Tuple[str, int], str, None],
    method: str,
    target: str,
    version: str,
    status: Union[int, str],
    length: Optional[int],
    duration: Optional[float],
    referer: Optional[str] = None,
    user_agent: Optional[str] = None,
) -> AccessAtoms:
    """gunicorn's atoms: h l u t r m U q H s b B f a T M D L p."""
    if isinstance(client, tuple):
        host = str(client[0])
    else:
        host = client or "-"
    path, _, query = target.partition("?")
    now = time.time()
    started = now - duration if duration is not None else now
    atoms = AccessAtoms(
        h=host,
        l="-",
        u="-",
        t=time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(started)),
        r=f"{method} {target} HTTP/{version}",
        m=method,
        U=path,
        q=query,
        H=f"HTTP/{version}",
        s=str(status),
        b="-" if length is None else str(length),
        B="-" if length is None else str(length),
        f=referer or "-",
        a=user_agent or "-",
        p=f"<{os.getpid()}>",
    )
    if duration is not None:
        atoms.update(
            T=str(int(duration)),
            M=str(int(duration * 1000)),
            D=str(int(duration * 1_000_000)),
            L="%.6f" % duration,
        )
    return atoms


def set_access_log_format(fmt: Optional[str]) -> None:
    """Log access lines in this format (gunicorn's ``%(atom)s`` atoms; see
    :func:`access_atoms`), or the default line when None. ValueError for a
    format that cannot be filled in."""
    global _access_format
    if fmt is not None:
        try:
            fmt % access_atoms(("127.0.0.1", 1), "GET", "/?a=1", "1.1", 200, 2, 0.001)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"bad access log format {fmt!r}: {exc}") from None
    _access_format = fmt


def access_log_needs_headers() -> bool:
    """Whether the access-log format shows the Referer or User-Agent (atoms f, a)."""
    fmt = _access_format
    return fmt is not None and ("%(f)" in fmt or "%(a)" in fmt)


def log_access(
    client: Union[Tuple[str, int], str, None],
    method: str,
    target: str,
    version: str,
    status: Union[int, str],
    length: Optional[int],
    *,
    duration: Optional[float] = None,
    referer: Optional[str] = None,
    user_agent: Optional[str] = None,
) -> None:
    """One access-log line when the answer is given. The default shape is
    ``127.0.0.1:5000 - "GET /path HTTP/1.1" 200 27``; with
    :func:`set_access_log_format`, gunicorn's atoms. ``duration`` is the time
    from the request to its answer in seconds (atoms T, M, D, L; '-' without
    it), ``referer`` and ``user_agent`` the request's headers (f, a)."""
    fmt = _access_format
    if fmt is not None:
        access_log.info(
            "%s",
            fmt
            % access_atoms(
                client, method, target, version, status, length, duration, referer, user_agent
            ),
        )
        return
    if isinstance(client, tuple):
        who = "%s:%s" % client
    else:
        who = client or "-"
    access_log.info(
        '%s - "%s %s HTTP/%s" %s %s',
        who,
        method,
        target,
        version,
        status,
        "-" if length is None else length,
    )


def declared_length(headers: Iterable[Tuple[Any, Any]]) -> Optional[int]:
    """The Content-Length an app's headers ((name, value) pairs, str or bytes)
    declare, read as the engine reads it: the last value made only of digits;
    None when there is none (the engine then frames the body itself)."""
    length = None
    for name, value in headers:
        if len(name) == 14 and name.lower() in ("content-length", b"content-length"):
            if isinstance(value, (bytes, bytearray)):
                value = value.decode("latin-1")
            value = str(value)
            if value.isascii() and value.isdigit() and len(value) <= 18:
                length = int(value)
    return length


def length_mismatch(kind: str, method: str, target: str, sent: int, declared: int) -> None:
    """Warn that an app's body did not match its Content-Length, and say what
    the engine does about it."""
    if sent < declared:
        log.warning(
            "%s %s: the %s app's body has %d bytes, fewer than its Content-Length "
            "%d; closed the connection after them so that the client sees the answer "
            "incomplete",
            method,
            target,
            kind,
            sent,
            declared,
        )
    else:
        log.warning(
            "%s %s: the %s app's body has %d bytes, more than its Content-Length "
            "%d; cut it off there and closed the connection",
            method,
            target,
            kind,
            sent,
            declared,
        )


# Whom X-Forwarded-* headers are believed from when nobody says: the local
# host, as uvicorn and gunicorn do. The FORWARDED_ALLOW_IPS environment
# variable (their name for it) overrides it.
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"


class ProxyHeaders:
    """Who the client is, and over which scheme it came, when a reverse proxy
    (nginx, a load balancer) stands in front of the server.

    ``trusted`` lists the proxies whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` headers are believed: addresses, networks
    (``10.0.0.0/8``), ``unix:`` for peers on a Unix socket, ``*`` for
    everyone; a comma-separated string or a list. ``None`` takes the
    ``FORWARDED_ALLOW_IPS`` environment variable, else
    :data:`DEFAULT_FORWARDED_ALLOW_IPS`. Headers from any other peer are
    ignored: anyone can send them.

    The client is the rightmost address of ``X-Forwarded-For`` that is not a
    trusted proxy (the leftmost when all are), with port 0; the scheme is the
    rightmost value of ``X-Forwarded-Proto`` when it is ``http`` or
    ``https``.
    """

    __slots__ = ("trust_all", "trust_unix", "hosts", "networks", "_verdicts")

    def __init__(self, trusted: Union[str, Iterable[str], None] = None) -> None:
        if trusted is None:
            trusted = os.environ.get("FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS)
        items = trusted.split(",") if isinstance(trusted, str) else list(trusted)
        self.trust_all = False
        self.trust_unix = False
        self.hosts: Set[str] = set()
        self.networks: List[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]] = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            if item == "*":
                self.trust_all = True
            elif item == "unix:":
                self.trust_unix = True
            elif "/" in item:
                try:
                    self.networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ValueError(f"forwarded_allow_ips: {item!r} is not a network") from None
            else:
                try:
                    self.hosts.add(str(ipaddress.ip_address(item)))
                except ValueError:
                    raise ValueError(
                        f"forwarded_allow_ips: {item!r} is not an IP address, a "
                        "network, 'unix:' or '*'"
                    ) from None
        self._verdicts: Dict[str, bool] = {}  # host -> in a trusted network

    def trusts_host(self, host: str) -> bool:
        if self.trust_all or host in self.hosts:
            return True
        if not self.networks:
            return False
        verdict = self._verdicts.get(host)
        if verdict is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                verdict = False
            else:
                verdict = any(address in network for network in self.networks)
            if len(self._verdicts) < 4096:
                self._verdicts[host] = verdict
        return verdict

    def trusts(self, peer: Optional[Tuple[str, int]]) -> bool:
        """Whether the connection's peer (``request.client``; None on a Unix
        socket) is a trusted proxy."""
        if peer is None:
            return self.trust_all or self.trust_unix
        return self.trusts_host(peer[0])

    def client(
        self, forwarded_for: str, peer: Optional[Tuple[str, int]]
    ) -> Optional[Tuple[str, int]]:
        """The client an ``X-Forwarded-For`` value names (from a trusted peer)."""
        hosts = [h for h in (part.strip() for part in forwarded_for.split(",")) if h]
        if not hosts:
            return peer
        for host in reversed(hosts):
            if not self.trusts_host(host):
                return (host, 0)
        return (hosts[0], 0)

    @staticmethod
    def scheme(forwarded_proto: str, scheme: str) -> str:
        """The scheme an ``X-Forwarded-Proto`` value names (from a trusted peer)."""
        proto = forwarded_proto.rpartition(",")[2].strip().lower()
        return proto if proto in ("http", "https") else scheme


def trusted_proxies(
    enabled: bool, trusted: Union[str, Iterable[str], None]
) -> Optional[ProxyHeaders]:
    """The adapters' proxy_headers/forwarded_allow_ips options as one object,
    or None when the headers are not to be read."""
    if not enabled:
        return None
    proxies = ProxyHeaders(trusted)
    if not (proxies.trust_all or proxies.trust_unix or proxies.hosts or proxies.networks):
        return None
    return proxies


class AdapterServer:
    """A :class:`Server` running an adapter's handler, with hooks around start
    and stop (the WSGI thread pool; the ASGI event loop and lifespan).

    It offers the same lifecycle as Server: ``start()``/``stop()``, ``run()``
    (until SIGINT or SIGTERM), ``with ... as s:``, and ``port``, ``url``,
    ``running``, ``stats()``, ``ring_info()``, ``config``; ``server`` is the
    Server itself.
    """

    server: Server

    def __init__(self, handler: Handler, host: str, port: int, options: Dict[str, Any]) -> None:
        self._handler = handler
        self._host, self._port = host, port
        self._options = server_options(adapter_options(options))
        self.server = Server(handler, host, port, **self._options)
        self._started = False

    # -- hooks ----------------------------------------------------------------

    def _before_start(self) -> None:  # pragma: no cover - overridden
        pass

    def _after_stop(self, grace: Optional[float] = None) -> None:  # pragma: no cover
        """Stop the adapter; ``grace``: seconds left of the graceful stop
        (shutdown_timeout_ms) for app work still running, None: the adapter's own."""

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "AdapterServer":
        """Prepare the adapter, then bind and start the ring threads; returns self."""
        if self.server.running:
            raise RuntimeError("the server is already running")
        self._before_start()
        self._started = True
        try:
            self.server.start()
        except BaseException:
            self._started = False
            self._after_stop()
            raise
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop gracefully (requests in flight finish), then stop the adapter."""
        t0 = time.monotonic()
        try:
            self.server.stop(timeout)
        finally:
            if self._started:
                self._started = False
                # App work still running after the engine's stop (a WSGI call whose
                # client was cut, an ASGI task after its answer) gets what is left of
                # the graceful stop, as --timeout-graceful-shutdown promises.
                grace = self.server.config.get("shutdown_timeout_ms", 10000) / 1000.0
                self._after_stop(max(0.0, grace - (time.monotonic() - t0)))

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully."""
        self._before_start()
        self._started = True
        try:
            self.server.run()
        finally:
            if self._started:
                self._started = False
                self._after_stop()

    serve_forever = run

    def __enter__(self) -> "AdapterServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- introspection -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.server.running

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def config(self) -> Dict[str, Any]:
        return self.server.config

    def stats(self, thread: int = -1) -> Dict[str, Any]:
        return self.server.stats(thread)

    def ring_info(self, thread: int = 0) -> Dict[str, Any]:
        return self.server.ring_info(thread)

    def reload_tls(self) -> None:
        """Read the TLS certificates again (:meth:`Server.reload_tls`)."""
        self.server.reload_tls()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state}>"


def _positional_count(fn: Callable[..., object]) -> Optional[int]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    n = 0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
        elif p.kind is p.VAR_POSITIONAL:
            return -1  # *args: takes anything; ASGI if async, else WSGI (below)
    return n


def asgi_version(app: object) -> int:
    """2 for an ASGI 2 (double-callable) app, ``app(scope)`` returning an
    ``instance(receive, send)`` to await; 3 otherwise.

    As uvicorn's ``--interface auto`` tells them apart: a class is ASGI 2
    unless its instances are awaitable (``__await__``: an ASGI 3 class called
    with scope, receive, send); a callable that is not a coroutine function and
    takes exactly one positional argument is ASGI 2 (uvicorn takes any plain
    function for ASGI 2; we keep a plain function of three arguments, e.g. one
    returning a coroutine, ASGI 3).
    """
    if isinstance(app, type):
        return 3 if hasattr(app, "__await__") else 2
    fn: Any = app
    if not (inspect.isfunction(app) or inspect.ismethod(app)):
        call = getattr(type(app), "__call__", None)  # noqa: B004 (the type's own __call__)
        if call is None or inspect.isbuiltin(call):
            return 3
        fn = getattr(app, "__call__")  # noqa: B004, B009
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__func__", None)
    ):
        return 3
    return 2 if _positional_count(fn) == 1 else 3


def _asgi2_class(app: object) -> bool:
    """Whether `app` is a class whose instances are ASGI 2 apps' second callable:
    built from one scope, called with receive and send, a coroutine function."""
    if not isinstance(app, type) or hasattr(app, "__await__"):
        return False
    call = getattr(app, "__call__", None)  # noqa: B004 (the instances' __call__)
    if call is None or not inspect.iscoroutinefunction(call):
        return False
    return _positional_count(call) == 3 and _positional_count(app) == 1  # self, receive, send


def detect_interface(app: object) -> str:
    """``"native"``, ``"wsgi"`` or ``"asgi"`` for an application object.

    An :class:`App` is native. Otherwise the callable's signature decides:
    ``async def app(scope, receive, send)`` (or any callable of three
    positional parameters) is ASGI 3, a class built from a scope whose
    instances have ``async def __call__(self, receive, send)`` ASGI 2, ``app(environ, start_response)`` is
    WSGI, ``handler(request)`` native. Raises ValueError when it cannot tell.
    """
    from ._routing import App

    if isinstance(app, App):
        return "native"
    if not callable(app):
        raise ValueError(f"{app!r} is not callable")
    if _asgi2_class(app):
        return "asgi"  # ASGI 2: ASGIServer runs it through asgi2_app()
    fn = app
    if not (inspect.isfunction(app) or inspect.ismethod(app)):
        call = getattr(type(app), "__call__", None)  # noqa: B004 (the type's own __call__, not callable())
        if call is not None and not inspect.isbuiltin(call) and not isinstance(app, type):
            fn = getattr(app, "__call__")  # noqa: B004, B009 (keeps fn an object for mypy)
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__func__", None)
    )
    n = _positional_count(fn)
    if n is None:
        raise ValueError(f"cannot tell the interface of {app!r}; give --interface")
    if n == -1:
        return "asgi" if is_async else "wsgi"
    if n >= 3 and is_async:
        return "asgi"
    if n == 3:
        return "asgi"
    if n == 2:
        return "wsgi"
    if n == 1:
        return "native"
    if n > 3 and not is_async:
        return "wsgi"
    raise ValueError(
        f"cannot tell the interface of {app!r} ({n} positional parameters); give --interface"
    )
