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

WebSocket, as pymongoose has it::

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG and data.uri == "/ws":
            conn.ws_upgrade(data)                 # MG_EV_WS_OPEN follows at once
        elif ev == MG_EV_WS_MSG:                  # data: a WsMessage
            if data.flags == WEBSOCKET_OP_TEXT:
                conn.ws_send("echo " + data.text, WEBSOCKET_OP_TEXT)
            else:
                conn.ws_send(data.data, WEBSOCKET_OP_BINARY)
        elif ev == MG_EV_CLOSE:                   # the WebSocket is gone
            ...

What differs from pymongoose:

- Handlers run on the engine's ring threads as requests arrive (under the
  GIL, one batch at a time), not inside ``poll()``; ``poll(ms)`` waits and
  runs the timers of ``timer_add()`` that fall due, letting Ctrl-C through.
  Delivered: ``MG_EV_HTTP_MSG``; on a WebSocket ``MG_EV_WS_OPEN`` (inside
  ``ws_upgrade()``, as Mongoose does), ``MG_EV_WS_MSG`` (whole messages,
  fragments joined), ``MG_EV_WS_CTL`` (ping, pong and the peer's close frame; pings
  are answered by the engine) and ``MG_EV_CLOSE``. The other event constants
  exist so that scripts comparing against them still run; plain HTTP
  connections get no ``MG_EV_CLOSE``.
- ``WsMessage.flags`` is the opcode (``WEBSOCKET_OP_TEXT`` ...), which is what
  pymongoose's examples compare it with; Mongoose gives the frame's first byte,
  FIN bit included (``flags & 15`` is the opcode either way).
- ``ws_upgrade()`` chooses the first subprotocol the client offered (Mongoose
  echoes the whole header). A request that is not a valid handshake gets
  426, as in Mongoose. ``ws_send()`` on a connection that is closing or closed
  raises ``ConnectionClosed`` (a ``RuntimeError``, as pymongoose raises, and an
  ``OSError``); ``conn.close()`` and ``conn.drain()`` on a WebSocket send a
  close frame (1000) and close once the client answers it.
- Each ``listen()`` starts its own server, and the handler given to
  ``listen()`` (else the Manager's) handles every connection it accepts.
- Reply bodies are sent by length: they may contain NUL bytes.
- ``conn.reply()`` may be called later, from any thread, on a ``conn``
  kept from the handler. A request the handler neither answers nor keeps
  gets a 500 (pymongoose left the client waiting).
- Only HTTP listeners exist (``http=True``); raw TCP, MQTT, TLS and
  outbound connections are not provided (``TlsOpts`` exists; ``conn.tls_init()``
  raises NotImplementedError).
- ``serve_dir()``/``serve_file()`` are answered by the engine's file rules
  (``Request.serve_static``/``serve_file``): Range, ETag and Last-Modified with
  304/412, HEAD, ``index.html`` and the 301 that adds a directory's slash, the
  traversal guard (the kernel confines the path: ``openat2`` ``RESOLVE_BENEATH``),
  the file sent without a copy through Python. Unlike Mongoose: dotfiles are
  404, methods other than GET and HEAD get 405, and a ``"/uri=/dir"`` entry of
  ``root_dir`` covers ``/uri`` and what is below ``/uri/``, not ``/urifoo``.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from . import _native
from ._compat_helpers import (
    json_get,
    json_get_bool,
    json_get_long,
    json_get_num,
    json_get_str,
    url_encode,
)
from ._native import Response
from ._server import Server

if TYPE_CHECKING:
    from ._pmu import Request

__all__ = [
    "Manager",
    "Connection",
    "ConnectionClosed",
    "HttpMessage",
    "Timer",
    "TlsOpts",
    "WsMessage",
    "http_parse_multipart",
    "json_get",
    "json_get_num",
    "json_get_bool",
    "json_get_long",
    "json_get_str",
    "url_encode",
    "WEBSOCKET_OP_TEXT",
    "WEBSOCKET_OP_BINARY",
    "WEBSOCKET_OP_PING",
    "WEBSOCKET_OP_PONG",
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

# WebSocket opcodes (RFC 6455), as Mongoose names them.
WEBSOCKET_OP_CONTINUE = 0
WEBSOCKET_OP_TEXT = 1
WEBSOCKET_OP_BINARY = 2
WEBSOCKET_OP_CLOSE = 8
WEBSOCKET_OP_PING = 9
WEBSOCKET_OP_PONG = 10

EventHandler = Callable[["Connection", int, Any], None]

log = logging.getLogger("pymongoose_uring")

_WebSocketClosed: Any = getattr(_native._pmu, "WebSocketClosed", ConnectionResetError)


class ConnectionClosed(OSError, RuntimeError):
    """ws_send() on a WebSocket that is closing or closed. A RuntimeError, as
    pymongoose raises for a closed connection, and an OSError."""


class WsMessage:
    """A WebSocket message or control frame, as pymongoose's ``data`` for
    ``MG_EV_WS_MSG`` and ``MG_EV_WS_CTL``: ``data`` (bytes), ``text`` (str),
    ``flags`` (the opcode: ``WEBSOCKET_OP_TEXT``, ``_BINARY``, ``_PING``,
    ``_PONG``, or 8 for a close frame, whose data is the code and reason)."""

    __slots__ = ("_payload", "flags")

    def __init__(self, payload: Union[bytes, str], flags: int) -> None:
        self._payload = payload
        self.flags = flags

    @property
    def data(self) -> bytes:
        payload = self._payload
        return payload.encode("utf-8") if type(payload) is str else payload  # type: ignore[return-value]

    @property
    def text(self) -> str:
        payload = self._payload
        if type(payload) is str:
            return payload
        return payload.decode("utf-8", "surrogateescape")  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<WsMessage flags={self.flags} {self._payload!r:.60}>"


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
        "_ws",
        "_gone",
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
        self._ws: Any = None  # the _pmu.WebSocket after ws_upgrade()
        self._gone = False  # MG_EV_CLOSE was delivered

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
        ws = self._ws
        return self._close_after or (ws is not None and ws.closed)

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
        return self._ws is not None

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
        """Close the connection once the reply is sent (a WebSocket: once what
        was sent is out, with a close frame)."""
        self._close_after = True
        if self._ws is not None:
            self._ws.close(1000, "")

    def close(self) -> None:
        """Close the connection after the reply (a listener: stop it; a
        WebSocket: send a close frame, 1000)."""
        if self._request is None and self._server is not None:
            self._server.stop()
            return
        self._close_after = True
        if self._ws is not None:
            self._ws.close(1000, "")

    # -- WebSocket ---------------------------------------------------------

    def ws_upgrade(
        self, message: HttpMessage, extra_headers: Optional[Dict[str, str]] = None
    ) -> None:
        """Accept the WebSocket handshake ``message`` asks for (101 with
        ``extra_headers``, the first subprotocol offered); ``MG_EV_WS_OPEN``
        reaches the handler before this returns. Not a valid handshake: 426."""
        request = self._request
        if request is None or not isinstance(message, HttpMessage):
            raise ValueError("HttpMessage is not valid for this event")
        if self._ws is not None:
            raise RuntimeError("already a WebSocket connection")
        if not getattr(request, "websocket", False):
            request.reply(Response(b"WS upgrade expected\n", 426, None, None))
            return
        offered = request.header("Sec-WebSocket-Protocol")
        subprotocol = offered.split(",")[0].strip() or None if offered else None
        self._ws = request.accept_websocket(
            subprotocol,
            extra_headers,
            on_message=self._ws_message,
            on_ping=self._ws_ping,
            on_pong=self._ws_pong,
            on_close=self._ws_close,
            on_disconnect=self._ws_disconnect,
        )
        self._event(MG_EV_WS_OPEN, message)

    def ws_send(self, data: Union[bytes, bytearray, memoryview, str], op: int = 1) -> None:
        """Send a WebSocket message (``WEBSOCKET_OP_TEXT``, the default, or
        ``_BINARY``) or a ``_PING``/``_PONG`` control frame, from any thread.
        ConnectionClosed when the connection is closing or closed."""
        ws = self._ws
        if ws is None:
            raise RuntimeError("ws_send() on a connection that is not a WebSocket")
        try:
            if op == WEBSOCKET_OP_TEXT:
                ws.send(data if type(data) is str else bytes(data).decode("utf-8"))  # type: ignore[arg-type]
            elif op == WEBSOCKET_OP_BINARY:
                ws.send(data.encode("utf-8") if isinstance(data, str) else data)
            elif op == WEBSOCKET_OP_PING or op == WEBSOCKET_OP_PONG:
                payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
                if ws.closed:
                    raise _WebSocketClosed("the WebSocket is closing or closed")
                (ws.ping if op == WEBSOCKET_OP_PING else ws.pong)(payload)
            elif op == WEBSOCKET_OP_CLOSE:
                payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
                ws.close(code, payload[2:].decode("utf-8", "replace"))
            else:
                raise ValueError(f"unsupported WebSocket opcode {op}")
        except _WebSocketClosed as exc:
            raise ConnectionClosed(*exc.args) from None

    def _event(self, ev: int, data: Any) -> None:
        """Call the handler with a WebSocket event; what it raises is logged,
        as pymongoose prints it, and the connection goes on."""
        handler = self._handler
        if handler is None:
            return
        try:
            handler(self, ev, data)
        except Exception:
            log.exception("the pymongoose handler raised on event %d", ev)

    def _ws_message(self, ws: Any, data: Union[bytes, str]) -> None:
        self._event(
            MG_EV_WS_MSG,
            WsMessage(data, WEBSOCKET_OP_TEXT if type(data) is str else WEBSOCKET_OP_BINARY),
        )

    def _ws_ping(self, ws: Any, data: bytes) -> None:
        self._event(MG_EV_WS_CTL, WsMessage(data, WEBSOCKET_OP_PING))

    def _ws_pong(self, ws: Any, data: bytes) -> None:
        self._event(MG_EV_WS_CTL, WsMessage(data, WEBSOCKET_OP_PONG))

    def _ws_close(self, ws: Any, code: int, reason: str) -> None:
        payload = b"" if code == 1005 else code.to_bytes(2, "big") + reason.encode("utf-8")
        self._event(MG_EV_WS_CTL, WsMessage(payload, WEBSOCKET_OP_CLOSE))

    def _ws_disconnect(self, ws: Any, code: int) -> None:
        self._gone = True  # (the binding drops the callbacks, and so this conn, now)
        self._event(MG_EV_CLOSE, None)

    # -- files -------------------------------------------------------------

    def serve_dir(
        self,
        message: HttpMessage,
        root_dir: str,
        extra_headers: str = "",
        mime_types: str = "",
        page404: str = "",
    ) -> None:
        """Answer with the file under ``root_dir`` that the request's path
        names, served by the engine with every HTTP rule (Range, ETag/304,
        ``index.html`` for a directory and the 301 that adds its slash, the
        traversal guard, HEAD). ``root_dir`` is a directory, or Mongoose's list
        ``"/uri=/dir,/other=/dir2,/default/dir"`` (the first entry whose URI
        prefix the path falls under; an entry without ``=`` serves every path).
        ``extra_headers``: "Name: value" lines on every answer;
        ``mime_types``: "ext=type,ext=type" over the built-in types;
        ``page404``: a file answered with 404 (else "Not found") for a path
        that names no file."""
        request = self._request
        if request is None or not isinstance(message, HttpMessage):
            raise ValueError("HttpMessage is not valid for this event")
        if self._close_after:  # drain() came first: close once the answer is out
            extra_headers += "\r\nConnection: close\r\n"
        mount = self._manager._static_mount(root_dir, extra_headers, mime_types, request.path)
        if mount is not None and request.serve_static(mount):
            return
        headers = _header_lines(extra_headers)
        if page404 and os.path.isfile(page404):
            request.serve_file(
                page404,
                content_type=_mime_type(page404, mime_types),
                headers=list(headers.items()) or None,
                status=404,
            )
            return
        self.reply(404, b"Not found\n", headers)

    def serve_file(
        self, message: HttpMessage, path: str, extra_headers: str = "", mime_types: str = ""
    ) -> None:
        """Answer with the file at ``path`` (not confined to any directory),
        served by the engine with the same rules as ``serve_dir`` (404 when it
        is missing). ``mime_types`` as for ``serve_dir``: the type of this file's
        extension, else the built-in one."""
        request = self._request
        if request is None or not isinstance(message, HttpMessage):
            raise ValueError("HttpMessage is not valid for this event")
        if self._close_after:  # drain() came first: close once the answer is out
            extra_headers += "\r\nConnection: close\r\n"
        request.serve_file(
            path,
            content_type=_mime_type(path, mime_types),
            headers=list(_header_lines(extra_headers).items()) or None,
        )

    def tls_init(self, opts: "TlsOpts") -> None:
        raise NotImplementedError(
            "TLS is not provided: serve plain HTTP behind a TLS-terminating proxy"
        )

    def send(self, data: bytes) -> None:
        raise NotImplementedError(
            "raw sends are not supported: use conn.reply() or, on a WebSocket, conn.ws_send()"
        )

    def __repr__(self) -> str:
        if self._request is None:
            return f"<Connection listening on {self._listen_addr}>"
        return f"<Connection id={self.id} {self._request!r}>"


def _mime_type(path: str, mime_types: str) -> Optional[str]:
    """The type ``mime_types`` ("ext=type,ext=type") gives path's extension; None
    when it gives none (the engine's table decides)."""
    if not mime_types:
        return None
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    for item in mime_types.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip().lstrip(".").lower() == ext:
            return value.strip()
    return None


def _root_entries(root_dir: str) -> List[Tuple[str, str]]:
    """Mongoose's root_dir as (URI prefix, directory) pairs: ``"/a=/dir1,/dir2"``
    -> [("/a", "/dir1"), ("/", "/dir2")]."""
    entries = []
    for item in root_dir.split(",") if "=" in root_dir else [root_dir]:
        prefix, sep, directory = item.partition("=")
        if not sep:
            prefix, directory = "/", item
        prefix = "/" + prefix.strip().strip("/")
        entries.append((prefix, directory.strip()))
    return entries


def http_parse_multipart(
    body: Union[bytes, bytearray, memoryview, str], offset: int = 0
) -> Tuple[int, Optional[Dict[str, Any]]]:
    """The part of a ``multipart/form-data`` body that starts at ``offset``, as
    pymongoose's (Mongoose's ``mg_http_next_multipart``): ``(next_offset,
    {"name", "filename", "body"})``, or ``(0, None)`` when no part starts there.
    The boundary is the body's first line. Loop from offset 0 until ``None``."""
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    eol = data.find(b"\r\n")
    if not data.startswith(b"--") or eol < 3 or offset < 0:
        return 0, None
    boundary = data[:eol]
    if not data.startswith(boundary + b"\r\n", offset):
        return 0, None
    head = offset + len(boundary) + 2
    head_end = data.find(b"\r\n\r\n", head)
    if head_end < 0:
        return 0, None
    end = data.find(b"\r\n" + boundary, head_end + 4)
    if end < 0:
        return 0, None
    name = filename = ""
    for line in data[head:head_end].split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-disposition":
            name = _disposition_param(value, b"name")
            filename = _disposition_param(value, b"filename")
    part = {"name": name, "filename": filename, "body": data[head_end + 4 : end]}
    return end + 2, part


def _disposition_param(value: bytes, key: bytes) -> str:
    """A parameter of a Content-Disposition value (quoted or not); "" when absent."""
    for param in value.split(b";")[1:]:
        k, sep, v = param.partition(b"=")
        if sep and k.strip().lower() == key:
            v = v.strip()
            if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
                v = v[1:-1]
            return v.decode("utf-8", "surrogateescape")
    return ""


class TlsOpts:
    """pymongoose's TLS options (ca, cert, key, name, skip_verification), kept so
    that scripts which build them import and run over plain HTTP; TLS itself is
    not provided (``conn.tls_init()`` raises NotImplementedError)."""

    def __init__(
        self,
        ca: Union[bytes, str, None] = None,
        cert: Union[bytes, str, None] = None,
        key: Union[bytes, str, None] = None,
        name: Union[bytes, str, None] = None,
        skip_verification: bool = False,
    ) -> None:
        # As pymongoose keeps them: bytes, a str encoded as UTF-8, nothing as b"".
        self.ca, self.cert, self.key, self.name = (
            _as_bytes(ca),
            _as_bytes(cert),
            _as_bytes(key),
            _as_bytes(name),
        )
        self.skip_verification = skip_verification


def _as_bytes(value: Union[bytes, str, None]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value) if value else b""


def _header_lines(text: str) -> Dict[str, str]:
    """Mongoose's extra_headers ("Name: value\\r\\n" lines) as a dict."""
    headers = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return headers


class Timer:
    """A timer of ``Manager.timer_add()``; ``cancel()`` stops it."""

    __slots__ = ("interval", "callback", "repeat", "due", "cancelled")

    def __init__(self, interval: float, callback: Callable[[], Any], repeat: bool) -> None:
        self.interval = interval
        self.callback = callback
        self.repeat = repeat
        self.due = 0.0
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: "Timer") -> bool:
        return self.due < other.due


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
        self._timers: List[Timer] = []  # a heap by due time
        self._timers_lock = threading.Lock()
        # serve_dir's engine mounts by (root_dir, extra_headers, mime_types)
        self._mounts: Dict[Tuple[str, str, str], List[Tuple[str, Any]]] = {}

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

    def _static_mount(self, root_dir: str, extra_headers: str, mime_types: str, path: str) -> Any:
        """The engine mount (a ``StaticMount``, fallthrough so that a miss comes
        back for ``page404``) that serves path for serve_dir's arguments; None
        when no entry of root_dir covers path or its directory does not exist."""
        key = (root_dir, extra_headers, mime_types)
        mounts = self._mounts.get(key)
        if mounts is None:
            headers = list(_header_lines(extra_headers).items()) or None
            mounts = []
            complete = True
            for prefix, directory in _root_entries(root_dir):
                try:
                    mount = _native._pmu.StaticMount(
                        prefix,
                        directory,
                        headers=headers,
                        mime_types=mime_types or None,
                        fallthrough=True,
                    )
                except OSError:  # no such directory (yet): its paths are 404
                    complete = False
                    continue
                mounts.append((prefix, mount))
            if complete:  # (else built again next time: the directory may appear)
                if len(self._mounts) >= 64:
                    self._mounts.clear()
                self._mounts[key] = mounts
        for prefix, mount in mounts:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return mount
        return None

    def poll(self, timeout_ms: int = 0) -> None:
        """Wait up to ``timeout_ms`` ms, running the timers that fall due
        (requests and WebSocket events are served meanwhile, and all the
        time). Ctrl-C raises KeyboardInterrupt here."""
        if self._closed:
            raise RuntimeError("Manager has been freed")
        end = time.monotonic() + max(timeout_ms, 0) / 1000.0
        while True:
            now = time.monotonic()
            self._run_timers(now)
            with self._timers_lock:
                next_due = self._timers[0].due if self._timers else end
            wait = min(end, next_due) - now
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() >= end:
                self._run_timers(time.monotonic())
                return

    def timer_add(
        self,
        milliseconds: int,
        callback: Callable[[], Any],
        *,
        repeat: bool = False,
        run_now: bool = False,
    ) -> Timer:
        """Call ``callback()`` after ``milliseconds`` (every ``milliseconds``
        with ``repeat``; once at the next poll too with ``run_now``), on the
        thread that calls ``poll()``, as Mongoose does."""
        if self._closed:
            raise RuntimeError("Manager has been freed")
        timer = Timer(max(milliseconds, 0) / 1000.0, callback, repeat)
        timer.due = time.monotonic() + (0.0 if run_now else timer.interval)
        with self._timers_lock:
            heapq.heappush(self._timers, timer)
        return timer

    def _run_timers(self, now: float) -> None:
        while True:
            with self._timers_lock:
                if not self._timers or self._timers[0].due > now:
                    return
                timer = heapq.heappop(self._timers)
                if timer.cancelled:
                    continue
                if timer.repeat:  # on time, or (late, or every poll) from now on
                    due = timer.due + timer.interval
                    timer.due = due if due > now else now + max(timer.interval, 0.001)
                    heapq.heappush(self._timers, timer)
            try:
                timer.callback()
            except Exception:
                log.exception("a pymongoose timer callback raised")

    def wakeup(self, connection_id: int, data: bytes = b"") -> bool:
        raise NotImplementedError(
            "wakeup is not supported: keep conn and call conn.reply() from any thread"
        )

    def close(self) -> None:
        """Stop every listener gracefully and release the servers."""
        self._closed = True
        with self._timers_lock:
            self._timers.clear()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            if listener._server is not None:
                listener._server.stop()

    def __enter__(self) -> "Manager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
