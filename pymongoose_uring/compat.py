"""pymongoose compatibility: run a server written for pymongoose by changing
only its import::

    from pymongoose_uring.compat import Manager, MG_EV_HTTP_MSG

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.reply(200, b'{"ok":true}', headers={"Content-Type": "application/json"})

    mgr = Manager(handler)
    mgr.listen("http://0.0.0.0:8000", http=True)
    while True:
        mgr.poll(1000)

What differs from pymongoose:

- Handlers run on the engine's ring threads as requests arrive (under the
  GIL, one batch at a time), not inside ``poll()``; ``poll(ms)`` just waits,
  letting Ctrl-C through. Only ``MG_EV_HTTP_MSG`` is delivered; the other
  event constants exist so that scripts comparing against them still run.
- Each ``listen()`` starts its own server, and the handler given to
  ``listen()`` (else the Manager's) handles every connection it accepts.
- Reply bodies are sent by length: they may contain NUL bytes.
- ``conn.reply()`` may be called later, from any thread, on a ``conn``
  kept from the handler. A request the handler neither answers nor keeps
  gets a 500 (pymongoose left the client waiting).
- Only HTTP listeners exist (``http=True``); raw TCP, WebSocket, MQTT, TLS,
  timers and outbound connections are not provided.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from ._native import Response
from ._server import Server

if TYPE_CHECKING:
    from ._pmu import Request

__all__ = [
    "Manager",
    "Connection",
    "HttpMessage",
    "MG_EV_ERROR",
    "MG_EV_OPEN",
    "MG_EV_POLL",
    "MG_EV_RESOLVE",
    "MG_EV_CONNECT",
    "MG_EV_ACCEPT",
    "MG_EV_TLS_HS",
    "MG_EV_READ",
    "MG_EV_WRITE",
    "MG_EV_CLOSE",
    "MG_EV_HTTP_HDRS",
    "MG_EV_HTTP_MSG",
    "MG_EV_WS_OPEN",
    "MG_EV_WS_MSG",
    "MG_EV_WS_CTL",
    "MG_EV_MQTT_CMD",
    "MG_EV_MQTT_MSG",
    "MG_EV_MQTT_OPEN",
    "MG_EV_SNTP_TIME",
    "MG_EV_WAKEUP",
    "MG_EV_USER",
]

# Mongoose 7 event numbers, in its order.
(
    MG_EV_ERROR,
    MG_EV_OPEN,
    MG_EV_POLL,
    MG_EV_RESOLVE,
    MG_EV_CONNECT,
    MG_EV_ACCEPT,
    MG_EV_TLS_HS,
    MG_EV_READ,
    MG_EV_WRITE,
    MG_EV_CLOSE,
    MG_EV_HTTP_HDRS,
    MG_EV_HTTP_MSG,
    MG_EV_WS_OPEN,
    MG_EV_WS_MSG,
    MG_EV_WS_CTL,
    MG_EV_MQTT_CMD,
    MG_EV_MQTT_MSG,
    MG_EV_MQTT_OPEN,
    MG_EV_SNTP_TIME,
    MG_EV_WAKEUP,
    MG_EV_USER,
) = range(21)

EventHandler = Callable[["Connection", int, Any], None]


def _address(addr: Union[Tuple[str, int], str, None]) -> Optional[Tuple[str, int, bool]]:
    if isinstance(addr, tuple):
        return (addr[0], addr[1], ":" in addr[0])
    return None


class HttpMessage:
    """The request, as pymongoose's ``data`` for ``MG_EV_HTTP_MSG``."""

    __slots__ = ("_request",)

    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def uri(self) -> str:
        """The path as sent, without the query."""
        return self._request.raw_path

    @property
    def query(self) -> str:
        """The raw query string, without '?'."""
        return self._request.query_string

    @property
    def proto(self) -> str:
        return "HTTP/" + self._request.http_version

    @property
    def body_bytes(self) -> bytes:
        return self._request.body

    @property
    def body_text(self) -> str:
        return self._request.text

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """First value of header ``name`` (case-insensitive), else default."""
        return self._request.header(name, default)

    def headers(self) -> List[Tuple[str, str]]:
        """Every header as (name, value), in order received."""
        return self._request.headers.multi_items()

    def query_var(self, name: str) -> Optional[str]:
        """A query parameter, percent-decoded; None when absent."""
        return self._request.query.get(name)

    def status(self) -> Optional[int]:
        """A response's status; None for requests."""
        return None

    def header_var(self, header_name: str, var_name: str) -> Optional[str]:
        """A ``var=value`` item of a header, e.g. charset of Content-Type."""
        value = self._request.header(header_name)
        if value is None:
            return None
        for part in value.split(";"):
            k, sep, v = part.strip().partition("=")
            if sep and k.strip().lower() == var_name.lower():
                return v.strip().strip('"')
        return None

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<HttpMessage {self._request!r}>"


class Connection:
    """pymongoose's ``conn``: a listener, or the connection a request came on.

    ``reply()`` answers the request the handler was called for; keep the
    object to answer later, from any thread.
    """

    __slots__ = (
        "_request",
        "_manager",
        "_handler",
        "_listen_addr",
        "_server",
        "userdata",
        "_close_after",
    )

    def __init__(
        self,
        manager: "Manager",
        handler: Optional[EventHandler] = None,
        request: Optional[Request] = None,
    ) -> None:
        self._manager = manager
        self._handler = handler
        self._request = request
        self._listen_addr: Optional[Tuple[str, int, bool]] = None
        self._server: Optional[Server] = None
        self.userdata: Any = None
        self._close_after = False

    # -- pymongoose properties ---------------------------------------------

    @property
    def id(self) -> int:
        return self._request.conn_id if self._request is not None else 0

    @property
    def handler(self) -> Optional[EventHandler]:
        return self._handler

    def set_handler(self, handler: Optional[EventHandler]) -> None:
        self._handler = handler

    @property
    def is_listening(self) -> bool:
        return self._request is None

    @property
    def is_closing(self) -> bool:
        return self._close_after

    @property
    def is_client(self) -> bool:
        return False

    @property
    def is_tls(self) -> bool:
        return False

    @property
    def is_udp(self) -> bool:
        return False

    @property
    def is_websocket(self) -> bool:
        return False

    @property
    def local_addr(self) -> Optional[Tuple[str, int, bool]]:
        if self._request is None:
            return self._listen_addr
        return _address(self._request.server)

    @property
    def remote_addr(self) -> Optional[Tuple[str, int, bool]]:
        if self._request is None:
            return None
        return _address(self._request.client)

    # -- replying ----------------------------------------------------------

    def reply(
        self,
        status_code: int,
        body: Union[bytes, bytearray, memoryview, str, None] = b"",
        headers: Optional[Dict[str, str]] = None,
    ) -> None:
        """Send the HTTP response: status, body (str is sent UTF-8 encoded,
        NUL bytes included), headers as a dict. No Content-Type is added."""
        request = self._request
        if request is None:
            raise RuntimeError("reply() on a listening connection")
        if body is None:
            body = b""
        if self._close_after:
            headers = dict(headers or {})
            headers["Connection"] = "close"
        request.reply(Response(body, status_code, headers, None))

    def drain(self) -> None:
        """Close the connection once the reply is sent."""
        self._close_after = True

    def close(self) -> None:
        """Close the connection after the reply (a listener: stop it)."""
        if self._request is None and self._server is not None:
            self._server.stop()
            return
        self._close_after = True

    def send(self, data: bytes) -> None:
        raise NotImplementedError("raw sends are not supported: use conn.reply()")

    def __repr__(self) -> str:
        if self._request is None:
            return f"<Connection listening on {self._listen_addr}>"
        return f"<Connection id={self.id} {self._request!r}>"


def _parse_url(url: str) -> Tuple[str, int]:
    """'http://0.0.0.0:8000', 'tcp://[::1]:0', ':8000', '8000' -> (host, port)."""
    if url.isdigit():
        return "0.0.0.0", int(url)
    if "://" not in url:
        url = "http://" + (url if not url.startswith(":") else "0.0.0.0" + url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "tcp", "ws"):
        raise ValueError(
            f"unsupported listen URL {url!r}: only http:// is served (no TLS, UDP or MQTT)"
        )
    host = parts.hostname or "0.0.0.0"
    if host == "localhost":
        host = "127.0.0.1"
    port = parts.port if parts.port is not None else 80
    return host, port


class Manager:
    """pymongoose's event manager: ``listen()`` starts servers, ``poll()``
    waits, ``close()`` stops them all. ``server_options`` (``threads``,
    ``max_body_bytes``, ...) go to every :class:`Server` it starts."""

    def __init__(
        self,
        handler: Optional[EventHandler] = None,
        enable_wakeup: bool = False,
        **server_options: Any,
    ) -> None:
        self._handler = handler
        self._options = server_options
        self._listeners: List[Connection] = []
        self._closed = False

    def listen(
        self, url: str, handler: Optional[EventHandler] = None, *, http: bool = False
    ) -> Connection:
        """Listen on ``url`` and start serving at once. ``http=True`` is
        required (only HTTP is served). Returns the listening Connection;
        its ``local_addr`` gives the port bound (useful with port 0)."""
        if self._closed:
            raise RuntimeError("Manager has been freed")
        if not http:
            raise ValueError("only HTTP listeners are supported: call listen(url, http=True)")
        host, port = _parse_url(url)
        listener = Connection(self, handler)
        server = Server(self._dispatcher(listener), host, port, **self._options)
        try:
            server.start()
        except OSError as exc:
            raise RuntimeError(f"Failed to listen on '{url}': {exc}") from exc
        listener._server = server
        listener._listen_addr = (host, server.port, ":" in host)
        self._listeners.append(listener)
        return listener

    def _dispatcher(self, listener: Connection) -> Callable[[Request], None]:
        manager = self

        def dispatch(request: Request) -> None:
            handler = listener._handler or manager._handler
            if handler is None:
                request.reply(Response.text("Not Found", 404))
                return
            conn = Connection(manager, handler, request)
            handler(conn, MG_EV_HTTP_MSG, HttpMessage(request))

        return dispatch

    def poll(self, timeout_ms: int = 0) -> None:
        """Wait up to ``timeout_ms`` ms (requests are served meanwhile, and
        all the time). Ctrl-C raises KeyboardInterrupt here."""
        if self._closed:
            raise RuntimeError("Manager has been freed")
        time.sleep(max(timeout_ms, 0) / 1000.0)

    def wakeup(self, connection_id: int, data: bytes = b"") -> bool:
        raise NotImplementedError(
            "wakeup is not supported: keep conn and call conn.reply() from any thread"
        )

    def close(self) -> None:
        """Stop every listener gracefully and release the servers."""
        self._closed = True
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            if listener._server is not None:
                listener._server.stop()

    def __enter__(self) -> "Manager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
