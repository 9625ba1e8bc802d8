"""Routing by method and path, with path parameters.

Static paths live in a dict ``{path: {METHOD: handler}}`` that the C engine
reads itself: a request for a static route reaches its handler without any
Python-level dispatch. WebSocket routes live there too, under the method key
``"WEBSOCKET"``, which the engine tries first for a valid handshake. Everything
else (paths with parameters, 404, 405) goes through :meth:`App._fallback`.
"""

from __future__ import annotations

import re
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Pattern,
    Sequence,
    Set,
    Tuple,
    TypeVar,
)

from ._native import Response
from ._types import Handler, HandlerResult

if TYPE_CHECKING:
    from ._pmu import Request

__all__ = ["App"]

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?}")
_CONVERTERS: Dict[str, Tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"[0-9]+", int),
    "path": (r".+", str),
}


def _compile(path: str) -> Tuple[Pattern[str], Dict[str, Callable[[str], Any]]]:
    """'/users/{id:int}' -> (regex with named groups, {name: converter})."""
    parts: List[str] = []
    converters: Dict[str, Callable[[str], Any]] = {}
    pos = 0
    for m in _PARAM.finditer(path):
        name, kind = m.group(1), m.group(2) or "str"
        if kind not in _CONVERTERS:
            raise ValueError(
                f"unknown path converter {kind!r} in {path!r} (use one of {', '.join(_CONVERTERS)})"
            )
        if name in converters:
            raise ValueError(f"path parameter {name!r} appears twice in {path!r}")
        regex, conv = _CONVERTERS[kind]
        parts.append(re.escape(path[pos : m.start()]))
        parts.append(f"(?P<{name}>{regex})")
        converters[name] = conv
        pos = m.end()
    parts.append(re.escape(path[pos:]))
    return re.compile("".join(parts)), converters


def _not_found(request: Request) -> HandlerResult:
    return Response.text("Not Found", 404)


class App:
    """A router: handlers registered by method and path.

    Paths are matched exactly against the percent-decoded request path.
    ``{name}`` matches one segment, ``{name:int}`` digits (given to the
    handler as an int), ``{name:path}`` the rest of the path, slashes
    included; the values land in ``request.params``. A GET route also
    answers HEAD (the engine sends no body). Unknown paths get 404; known
    paths with another method get 405 with an Allow header.

    Handlers take the request and return a response (see :class:`Server`);
    ``async def`` handlers run on an asyncio loop.

    WebSocket routes (:meth:`websocket`) take the same paths and parameters. A
    handshake to a path without one is routed as the GET request it also is; an
    HTTP request to a WebSocket-only path gets 404, as in Starlette (400 when it
    asks for the upgrade with a malformed handshake). ``ws_max_queue``: how many
    received messages an ``async`` WebSocket handler may leave unread before the
    connection stops being read (uvicorn's default, 32).
    """

    def __init__(self, ws_max_queue: int = 32) -> None:
        # Read by the C engine directly: {path: {METHOD: handler}}.
        self._static: Dict[str, Dict[str, Handler]] = {}
        self._dynamic: List[
            Tuple[str, Pattern[str], Dict[str, Callable[[str], Any]], Dict[str, Handler]]
        ] = []
        self.not_found: Handler = _not_found
        self.ws_max_queue = ws_max_queue
        # Directories the engine serves itself (App.static), in the order given.
        self._mounts: List[Dict[str, Any]] = []

    # -- static files -------------------------------------------------------

    def static(
        self,
        prefix: str,
        directory: Any,
        *,
        index: Optional[str] = "index.html",
        dotfiles: bool = False,
        listing: bool = False,
        precompressed: bool = True,
        follow_symlinks: bool = True,
        cache_control: Optional[str] = None,
        fallthrough: bool = False,
        headers: Any = None,
    ) -> None:
        """Serve ``directory`` under the URL path ``prefix`` ("/assets", or "/").

        The mount is the engine's: its requests are answered on the ring
        threads, before any route, without calling Python. Every HTTP rule of
        static files applies: paths confined to the directory by the kernel
        (``..``, encoded separators, NUL, overlong UTF-8 refused with 400;
        symlinks leading out 404), ETag and Last-Modified, 304 and 412, Range
        (206, multipart/byteranges, 416) and If-Range, HEAD, 405 for other
        methods, MIME types by extension, ``index`` for a directory and a
        301 from ``/dir`` to ``/dir/``, ``.br``/``.gz`` siblings by
        Accept-Encoding (``precompressed``) with ``Vary``, ``Cache-Control``
        (``cache_control``) and ``headers`` on every answer, an HTML listing
        of a directory without index (``listing``). Names starting with "."
        are 404 unless ``dotfiles``. ``fallthrough``: a path the directory
        lacks goes to the routes instead of 404 (a mount at "/" without it
        answers every path, so no route is reached). The longest prefix wins.
        FileNotFoundError or NotADirectoryError now if ``directory`` is not
        a directory.
        """
        import os

        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"a mount's prefix starts with '/': {prefix!r}")
        path = os.fspath(directory)
        if not os.path.isdir(path):
            if not os.path.exists(path):
                raise FileNotFoundError(2, "No such file or directory", path)
            raise NotADirectoryError(20, "Not a directory", path)
        self._mounts.append(
            dict(
                prefix=prefix,
                root=path,
                index=index,
                dotfiles=dotfiles,
                listing=listing,
                precompressed=precompressed,
                follow_symlinks=follow_symlinks,
                cache_control=cache_control,
                fallthrough=fallthrough,
                headers=headers,
            )
        )

    # -- registration -------------------------------------------------------

    def add_route(self, path: str, handler: Handler, methods: Iterable[str] = ("GET",)) -> None:
        """Register ``handler`` for ``path`` and each of ``methods``."""
        if not path.startswith("/"):
            raise ValueError(f"route paths start with '/': {path!r}")
        if not callable(handler):
            raise TypeError("handler must be callable")
        if isinstance(methods, str):
            methods = (methods,)
        names = [m.upper() for m in methods]
        if not names:
            raise ValueError("a route needs at least one method")
        if "{" not in path:
            table = self._static.setdefault(path, {})
        else:
            for p, _, _, t in self._dynamic:
                if p == path:
                    table = t
                    break
            else:
                regex, converters = _compile(path)
                table = {}
                self._dynamic.append((path, regex, converters, table))
        for m in names:
            # sys.intern: the C side looks methods up by its interned names.
            table[_intern(m)] = handler

    def route(self, path: str, methods: Iterable[str] = ("GET",)) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add_route`."""

        def register(handler: Handler) -> Handler:
            self.add_route(path, handler, methods)
            return handler

        return register

    def add_websocket_route(self, path: str, handler: Callable[..., Any]) -> None:
        """Register a WebSocket ``handler`` for ``path`` (see :meth:`websocket`)."""
        if not callable(handler):
            raise TypeError("handler must be callable")
        from ._websocket import make_route_handler

        self.add_route(path, make_route_handler(handler, lambda: self.ws_max_queue), (_WS,))

    def websocket(self, path: str) -> Callable[[WSHandler], WSHandler]:
        """Decorator: a WebSocket endpoint at ``path`` (parameters as for HTTP
        routes, in ``ws.params``).

        ``def handler(ws)``: called on the engine thread with a
        :class:`~pymongoose_uring.WebSocketRequest`; ``ws.accept()`` returns the
        connection, whose ``on_message(ws, data)`` etc. it sets; ``ws.reject()``
        refuses; returning without either answers 403.

        ``async def handler(ws)``: runs on the asyncio loop with an
        :class:`~pymongoose_uring.AsyncWebSocket`: ``await ws.accept()``,
        ``async for message in ws``, ``await ws.send(data)``."""

        def register(handler: WSHandler) -> WSHandler:
            self.add_websocket_route(path, handler)
            return handler

        return register

    def get(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ("GET",))

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ("POST",))

    def put(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ("PUT",))

    def patch(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ("PATCH",))

    def delete(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ("DELETE",))

    def head(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ("HEAD",))

    def options(self, path: str) -> Callable[[Handler], Handler]:
        return self.route(path, ("OPTIONS",))

    # -- dispatch -----------------------------------------------------------

    def __call__(self, request: Request) -> HandlerResult:
        """Dispatch one request (the whole routing, static paths included)."""
        table = self._static.get(request.path)
        if table is not None:
            handler = table.get(_WS) if request.websocket else None
            if handler is None:
                handler = _pick(table, request.method)
            if handler is not None:
                return handler(request)
        return self._fallback(request)

    def _fallback(self, request: Request) -> HandlerResult:
        """Called by the engine when the static table has no handler for the
        request: parameterised routes, then 405 or 404."""
        path = request.path
        method = request.method
        handshake = request.websocket
        allowed: Set[str] = set()
        ws_route = None  # a WebSocket route matched the path
        table = self._static.get(path)
        if table is not None:
            allowed = set(table)
            ws_route = table.get(_WS)
        for _, regex, converters, table in self._dynamic:
            m = regex.fullmatch(path)
            if m is None:
                continue
            handler = table.get(_WS) if handshake else None
            if handler is None:
                handler = _pick(table, method)
            if handler is None:
                allowed |= set(table)
                ws_route = ws_route or table.get(_WS)
                continue
            request.params = {k: converters[k](v) for k, v in m.groupdict().items()}
            return handler(request)
        allowed.discard(_WS)
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")
            return Response.text("Method Not Allowed", 405, {"Allow": ", ".join(sorted(allowed))})
        if ws_route is not None and "websocket" in (request.header("upgrade") or "").lower():
            # A malformed handshake to a WebSocket route (the engine itself
            # answers a wrong version with 426).
            return Response.text("Bad Request: invalid WebSocket handshake", 400)
        return self.not_found(request)

    # -- running ------------------------------------------------------------

    def run(self, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
        """``Server(self, host, port, **options).run()``."""
        from ._server import Server

        Server(self, host, port, **options).run()


def make_mounts(specs: Sequence[Dict[str, Any]]) -> List[Any]:
    """StaticMount objects (the engine's) for App.static's mounts."""
    from ._native import _pmu

    mounts = []
    for spec in specs:
        kw = dict(spec)
        mounts.append(_pmu.StaticMount(kw.pop("prefix"), kw.pop("root"), **kw))
    return mounts


# The method key of WebSocket handlers in the route tables (binding/engine.c
# looks it up for a valid handshake before the request's method).
_WS = "WEBSOCKET"
WSHandler = TypeVar("WSHandler", bound=Callable[..., Any])


def _pick(table: Dict[str, Handler], method: str) -> Optional[Handler]:
    handler = table.get(method)
    if handler is None and method == "HEAD":
        handler = table.get("GET")
    return handler


def _intern(s: str) -> str:
    import sys

    return sys.intern(s)
