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

Every connection (listener included) is one :class:`Connection` for its whole
life, numbered as Mongoose numbers them (one counter per Manager, the listener
first). Events, in Mongoose's order: ``MG_EV_OPEN`` and ``MG_EV_ACCEPT`` when a
connection is accepted; ``MG_EV_HTTP_HDRS`` then ``MG_EV_HTTP_MSG`` per request
on an HTTP listener (``listen(url, http=True)``); ``MG_EV_READ`` (bytes in
``conn.recv_data()``) on a plain TCP listener (``tcp://``, or ``http://``
without ``http=True``), and on HTTP connections too with
``Manager(io_events=True)``, which also gives ``MG_EV_WRITE`` after each send;
``MG_EV_WS_*`` on a WebSocket; ``MG_EV_POLL`` once per ``poll()`` per live
connection; ``MG_EV_WAKEUP`` (``Manager.wakeup``), ``MG_EV_ERROR``
(``conn.error()``); ``MG_EV_CLOSE`` last.

Where handlers run: by default on the engine's ring threads as events happen
(under the GIL, one batch at a time): that is the speed. ``poll(ms)`` runs the
timers of ``timer_add()``, the ``MG_EV_WAKEUP`` events and ``MG_EV_POLL``.
``Manager(handler, handlers_in_poll=True)`` runs every event handler inside
``poll()`` on the thread that calls it, as pymongoose does (events are queued
by the ring threads meanwhile; ``poll()`` returns after a batch, like
``mg_mgr_poll``).

WebSocket, as pymongoose has it::

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG and data.uri == "/ws":
            conn.ws_upgrade(data)                 # MG_EV_WS_OPEN follows at once
        elif ev == MG_EV_WS_MSG:                  # data: a WsMessage
            if data.flags == WEBSOCKET_OP_TEXT:
                conn.ws_send("echo " + data.text, WEBSOCKET_OP_TEXT)
            else:
                conn.ws_send(data.data, WEBSOCKET_OP_BINARY)
        elif ev == MG_EV_CLOSE:                   # the connection is gone
            ...

The README's section "Compatibility with pymongoose" lists every item of
pymongoose's API: supported, differs (how), not supported (why). In short,
what differs:

- The handler given to ``listen()`` handles the connections that listener
  accepts (Mongoose's rule, and what pymongoose's documentation says; its code
  gives them the Manager's handler); without one, the Manager's.
- ``reply()`` with ``headers=None`` sends ``Content-Type: text/plain``, as
  pymongoose does. Reply bodies are sent by length: they may contain NUL bytes.
  ``conn.reply()`` may be called later, from any thread (a request left
  unanswered waits for it, as in pymongoose). A handler that raises on a
  request gets it answered 500 (pymongoose left the client waiting).
- ``recv_data()`` holds the bytes of the current ``MG_EV_READ`` (consumed when
  the handler returns: pymongoose has no way to consume them) or the request of
  the current ``MG_EV_HTTP_MSG``; ``send_len`` counts the bytes queued and not
  yet on the wire; ``send_data()`` is empty (the engine keeps no copy to show).
- TLS as pymongoose's examples have it: ``listen("https://...")`` (or
  ``tls://``, ``ssl://``, ``tcps://``: TCP over TLS without ``http=True``) binds at
  once. Either ``listener.tls_init(TlsOpts(cert=PEM, key=PEM[, ca=PEM]))`` before
  the first ``poll()`` serves HTTPS on it with that certificate (the engine's
  TLS: the PEM texts are handed over in memory files, never written to disk;
  ``ca`` asks every client for a certificate that CA signed, unless
  ``skip_verification``), and ``conn.tls_init()`` on its accepted connections is
  accepted and changes nothing (the listener's certificate serves them). Or,
  Mongoose's own pattern, ``conn.tls_init(opts)`` in ``MG_EV_ACCEPT`` of each
  accepted connection: a listener without ``tls_init`` at the first ``poll()``
  serves per connection (the engine's ``ssl_cert_per_conn``: the handshake waits
  for the certificate the ``MG_EV_ACCEPT`` handler gives, parsed once per
  distinct ``TlsOpts`` and cached), and a connection whose ``MG_EV_ACCEPT``
  handler gave none is refused (a handshake_failure alert, its ``MG_EV_CLOSE``,
  a log line at most once a minute). Sessions resume only on connections given
  the same certificate and verification. ``conn.is_tls`` is True on the
  listener and its connections. ``tls_init`` without a certificate, and on a
  plain ``http://`` listener, changes nothing (logged).
- UDP, MQTT, SNTP, DNS and outbound connections (``Manager.connect``) are
  not provided: they raise NotImplementedError (``listen()`` of a ``udp://``
  or ``mqtts://`` URL raises RuntimeError, as a failed listen does).
- ``WsMessage.flags`` is the opcode (``WEBSOCKET_OP_TEXT`` ...), which is what
  pymongoose's examples compare it with; Mongoose gives the frame's first byte,
  FIN bit included (``flags & 15`` is the opcode either way).
- ``ws_upgrade()`` chooses the first subprotocol the client offered (Mongoose
  echoes the whole header). A request that is not a valid handshake gets
  426, as in Mongoose. ``ws_send()`` on a connection that is closing or closed
  raises ``ConnectionClosed`` (a ``RuntimeError``, as pymongoose raises, and an
  ``OSError``); ``conn.close()`` and ``conn.drain()`` on a WebSocket send a
  close frame (1000) and close once the client answers it.
- ``serve_dir()``/``serve_file()`` are answered by the engine's file rules
  (``Request.serve_static``/``serve_file``): Range, ETag and Last-Modified with
  304/412, HEAD, ``index.html`` and the 301 that adds a directory's slash, the
  traversal guard (the kernel confines the path: ``openat2`` ``RESOLVE_BENEATH``),
  the file sent without a copy through Python. Unlike Mongoose: dotfiles are
  404, methods other than GET and HEAD get 405, and a ``"/uri=/dir"`` entry of
  ``root_dir`` covers ``/uri`` and what is below ``/uri/``, not ``/urifoo``.
"""

from __future__ import annotations

import base64
import collections
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple, Union
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
    from ._pmu import MgConnection as _MgConnection, MgHttpMessage as _MgHttpMessage, Request
else:
    _MgConnection = _native._pmu.MgConnection
    _MgHttpMessage = _native._pmu.MgHttpMessage

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

_pmu: Any = _native._pmu
_WebSocketClosed: Any = getattr(_pmu, "WebSocketClosed", ConnectionResetError)
# The binding's connection events (the engine's enum pmu_conn_event_type).
_CONN_OPEN = getattr(_pmu, "CONN_OPEN", 0)
_CONN_DATA = getattr(_pmu, "CONN_DATA", 1)
_CONN_READ = getattr(_pmu, "CONN_READ", 2)
_CONN_SENT = getattr(_pmu, "CONN_SENT", 3)
_CONN_DRAIN = getattr(_pmu, "CONN_DRAIN", 4)
_CONN_CLOSE = getattr(_pmu, "CONN_CLOSE", 5)
_ConnectionClosedError: Any = getattr(_pmu, "ConnectionClosed", _WebSocketClosed)
# Bytes unsent above which is_full is true (the engine's conn_send_high_water
# default, unless the Manager's options set it).
_DEFAULT_HIGH_WATER = 1 << 20


class ConnectionClosed(OSError, RuntimeError):
    """send()/ws_send() on a connection that is closing or closed. A
    RuntimeError, as pymongoose raises for a closed connection, and an OSError."""


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
    """pymongoose's address triple (ip, port, is_ipv6); None for a Unix socket."""
    if isinstance(addr, tuple):
        return (addr[0], addr[1], ":" in addr[0])
    return None


# pymongoose's HttpMessage, the ``data`` of ``MG_EV_HTTP_HDRS`` and
# ``MG_EV_HTTP_MSG``: binding/mgcompat.c's MgHttpMessage over the engine's Request
# (method, uri, query, proto, body_bytes, body_text, header(), headers(),
# query_var() and header_var() as Mongoose's mg_http_* functions answer, text as
# UTF-8 with surrogateescape; ``HttpMessage()`` is the empty message). One of the
# hot path's three pieces, with Connection.reply (MgConnection.reply) and the
# request dispatcher (MgDispatcher).
HttpMessage = _MgHttpMessage


def _request_bytes(request: Request) -> bytes:
    """The request as it came in (request line, headers, body): what Mongoose's
    receive buffer holds while MG_EV_HTTP_MSG runs."""
    head = [f"{request.method} {request.target} HTTP/{request.http_version}".encode("latin-1")]
    head += [f"{name}: {value}".encode("latin-1") for name, value in request.headers.multi_items()]
    return b"\r\n".join(head) + b"\r\n\r\n" + request.body


def _reply_bytes(status: int, body: bytes, headers: Dict[str, str]) -> bytes:
    """A response as Mongoose's mg_http_reply writes it."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"HTTP/1.1 {status} {_pmu.status_reason(status)}\r\n{lines}"
    return head.encode("utf-8") + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _as_payload(data: Union[bytes, bytearray, memoryview, str, None]) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data) if data is not None else b""


def _is_chunked(headers: Dict[str, str]) -> bool:
    for k, v in headers.items():
        if k.lower() == "transfer-encoding" and "chunked" in str(v).lower():
            return True
    return False


_NOT_PROVIDED = "not provided by pymongoose_uring (see the README's compatibility table)"


class Connection(_MgConnection):
    """pymongoose's ``conn``: a listener, or one accepted connection, the same
    object for every event of that connection's life.

    State (what the per-request dispatcher and ``reply`` use): ``_conn`` the
    engine's ``_pmu.Connection`` (None for a listener), ``_request`` the request
    being answered (None once answered; a pipelined request arriving while it
    is unanswered takes its place), ``_close_after`` drain() was called, ``_stream`` a chunked answer begun
    by ``reply(..., {"Transfer-Encoding": "chunked"})``, ``_handler`` the
    handler of this connection (the listener's, else the Manager's, copied at
    accept as Mongoose copies ``fn``; ``set_handler`` changes it).
    """

    # _handler, _request, _conn, userdata and _close_after are MgConnection's C
    # slots (binding/mgcompat.c), which its reply() and MgDispatcher use.
    __slots__ = (
        "_manager",
        "_id",
        "_stream",
        "_held",
        "_gone",
        "_ws",
        "_recv",
        "_server",
        "_listen_addr",
        "_listening",
        "_tls",
        "_tls_pending",
        "__weakref__",
    )

    def __init__(
        self,
        manager: "Manager",
        handler: Optional[EventHandler] = None,
        conn: Any = None,
    ) -> None:
        self._manager = manager
        self._handler = handler
        self._request = None
        self._conn = conn  # the engine's _pmu.Connection
        self.userdata = None
        self._id = next(manager._ids)
        self._stream: Optional[Request] = None
        self._held: Optional[Request] = None  # answered by raw sends, kept unanswered
        self._close_after = False
        self._gone = False  # MG_EV_CLOSE was delivered
        self._ws: Any = None  # the _pmu.WebSocket after ws_upgrade()
        self._recv: Optional[bytes] = None  # the bytes of the current MG_EV_READ
        self._server: Optional[Server] = None
        self._listen_addr: Optional[Tuple[str, int, bool]] = None
        self._listening = False
        # A listener's _TlsListener (https://); an accepted connection's listener's.
        self._tls: Optional[_TlsListener] = None
        # An accepted connection of a listener serving per connection: its handshake
        # waits for conn.tls_init in MG_EV_ACCEPT (declined when none came).
        self._tls_pending = False

    # -- pymongoose properties ---------------------------------------------

    @property
    def id(self) -> int:
        """Mongoose's connection id (0 once closed, as pymongoose gives)."""
        return 0 if self._gone else self._id

    @property
    def handler(self) -> Optional[EventHandler]:
        return self._handler

    def set_handler(self, handler: Optional[EventHandler]) -> None:
        self._handler = handler

    @property
    def is_listening(self) -> bool:
        return self._listening and not self._gone

    @property
    def is_closing(self) -> bool:
        if self._gone:
            return True
        conn, ws = self._conn, self._ws
        if ws is not None and ws.closed:
            return True
        if self._listening:
            return self._server is None
        return conn is not None and conn.closed

    @property
    def is_client(self) -> bool:
        return False

    @property
    def is_tls(self) -> bool:
        """The connection speaks TLS: an https:// listener serving (with its
        tls_init's certificate, or from the first poll() with each connection's),
        and the connections it accepts."""
        tls = self._tls
        return tls is not None and (tls.serving or tls.failed)

    @property
    def is_udp(self) -> bool:
        return False

    @property
    def is_websocket(self) -> bool:
        return self._ws is not None

    @property
    def is_readable(self) -> bool:
        """Received bytes are waiting for the handler (an MG_EV_READ or a
        request being delivered)."""
        return not self._gone and (bool(self._recv) or self._request is not None)

    @property
    def is_writable(self) -> bool:
        """The connection takes more output without going over its high water."""
        return not self._gone and not self.is_closing and not self._listening and not self.is_full

    @property
    def is_full(self) -> bool:
        """More than the high-water mark of output is unsent (the engine stops
        reading such a connection until it drains)."""
        return self.send_len > self._manager._high_water

    @property
    def is_draining(self) -> bool:
        return self._close_after and not self._gone

    @property
    def local_addr(self) -> Optional[Tuple[str, int, bool]]:
        if self._gone:
            return None
        if self._listening:
            return self._listen_addr
        return _address(self._conn.local) if self._conn is not None else None

    @property
    def remote_addr(self) -> Optional[Tuple[str, int, bool]]:
        if self._gone or self._conn is None:
            return None
        return _address(self._conn.peer)

    # -- buffers -------------------------------------------------------------

    def _received(self) -> bytes:
        if self._gone:
            return b""
        recv = self._recv
        if recv is not None:
            return recv
        request = self._request
        return _request_bytes(request) if request is not None else b""

    @property
    def recv_len(self) -> int:
        """Bytes in recv_data()."""
        return len(self._received())

    @property
    def recv_size(self) -> int:
        return len(self._received())

    @property
    def send_len(self) -> int:
        """Bytes queued on the connection and not yet on the wire."""
        conn = self._conn
        return conn.unsent if conn is not None and not self._gone else 0

    @property
    def send_size(self) -> int:
        return self.send_len

    def recv_data(self, length: int = -1) -> bytes:
        """The received bytes the handler is being given: those of the current
        MG_EV_READ, or the request of the current MG_EV_HTTP_MSG (first
        ``length`` bytes; all when negative)."""
        data = self._received()
        return data if length < 0 else data[:length]

    def send_data(self, length: int = -1) -> bytes:
        """Always b"": the engine keeps no copy of queued output to show
        (``send_len`` counts it)."""
        return b""

    # -- sending -------------------------------------------------------------

    def _take_request(self) -> Optional[Request]:
        """The unanswered request, now taken to be answered."""
        request, self._request = self._request, None
        return request

    def _answered(self) -> None:
        """After an answer was given: drain() closes once nothing is pending."""
        if self._close_after and self._request is None and self._stream is None:
            if self._conn is not None:
                self._close_conn(False)

    def _close_conn(self, now: bool) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.close(now)
        except OSError:
            pass  # closing or closed already

    # reply(status_code, body=b"", headers=None) is MgConnection.reply (C): an
    # HTTP response as pymongoose's ``mg_http_reply``: a str body UTF-8 encoded,
    # sent whole by length (NUL bytes included); ``headers`` None sends
    # ``Content-Type: text/plain``, a dict sends those headers. It answers the
    # request being handled (sent when the handler returns, as Mongoose sends).
    # With ``Transfer-Encoding: chunked`` among the headers, or with no request
    # unanswered, it calls _reply_slow below.

    def _reply_slow(
        self,
        status_code: int,
        body: Union[bytes, bytearray, memoryview, str, None] = b"",
        headers: Optional[Dict[str, str]] = None,
    ) -> None:
        """reply()'s other cases: with ``Transfer-Encoding: chunked`` among the
        headers, begin a chunked answer that ``http_chunk()`` and ``http_sse()``
        continue and ``http_chunk("")`` ends; with no request unanswered (a
        second reply, a plain TCP connection) send the response's bytes as they
        are."""
        if headers is None:
            headers = {"Content-Type": "text/plain"}
        payload = body if type(body) is bytes else _as_payload(body)
        if self._close_after:  # drain() first: the engine closes after this answer
            headers = dict(headers)
            headers["Connection"] = "close"
        request = self._take_request()
        if request is None:
            if self._listening:
                raise RuntimeError("reply() on a listening connection")
            self._send(_reply_bytes(status_code, payload, headers))
            return
        if _is_chunked(headers):
            request.start(
                status_code,
                [(k, v) for k, v in headers.items() if k.lower() != "transfer-encoding"],
            )
            self._stream = request
            if payload:
                request.write(payload, False)
            return
        request.reply(Response(payload, status_code, headers, None))

    def send(self, data: Union[bytes, bytearray, memoryview, str]) -> None:
        """Send raw bytes. On an HTTP connection with a request unanswered they
        are its answer, as written (the handler writes the status line, headers
        and framing); later sends follow them on the connection."""
        payload = _as_payload(data)
        request = self._take_request()
        if request is not None:
            if request.keep_alive:
                request.reply_raw(payload)
                if self._close_after:
                    self._answered()
                return
            # The client asked for this answer to be the last (Connection: close,
            # HTTP/1.0): answered, the connection would close at once, and the
            # sends that follow (SSE events, chunks) would find it closed. As
            # Mongoose, keep it open: the request stays unanswered (held here; the
            # engine releases it when the connection closes) and the bytes go raw.
            self._held = request
        self._send(payload)

    def _send(self, payload: bytes) -> None:
        conn = self._conn
        if conn is None:
            if self._listening:
                raise RuntimeError("send() on a listening connection")
            raise ConnectionClosed("the connection is closed")
        if self._ws is not None:
            raise RuntimeError("send() on a WebSocket: use ws_send()")
        try:
            conn.send(payload)
        except _ConnectionClosedError as exc:
            raise ConnectionClosed(*exc.args) from None

    def http_chunk(self, data: Union[bytes, bytearray, memoryview, str]) -> None:
        """One piece of a chunked answer; empty data ends it. After
        ``reply(..., headers={"Transfer-Encoding": "chunked"})`` the engine
        frames the pieces; after a head written with ``send()``, the chunk is
        framed here, as Mongoose's mg_http_write_chunk does."""
        payload = _as_payload(data)
        stream = self._stream
        if stream is not None:
            if payload:
                stream.write(payload, False)
                return
            self._stream = None
            stream.end()
            if self._close_after:
                self._answered()
            return
        self._send(b"%x\r\n" % len(payload) + payload + b"\r\n")

    def http_sse(self, event_type: str, data: str) -> None:
        """A Server-Sent Event (``event: <type>\\ndata: <data>\\n\\n``) as one chunk."""
        self.http_chunk(
            b"event: " + event_type.encode("utf-8") + b"\ndata: " + data.encode("utf-8") + b"\n\n"
        )

    def http_basic_auth(self, username: str, password: str) -> None:
        """Send an ``Authorization: Basic`` header line, as Mongoose's
        mg_http_bauth writes it (meant for a client's request being written)."""
        credentials = username.encode("utf-8")
        if password:
            credentials += b":" + password.encode("utf-8")
        self._send(b"Authorization: Basic " + base64.b64encode(credentials) + b"\r\n")

    def drain(self) -> None:
        """Close once the answer is sent: at once when nothing is left to
        answer, else after the pending reply (a WebSocket: a close frame, 1000,
        and close once the client answers it)."""
        self._close_after = True
        if self._ws is not None:
            self._ws.close(1000, "")
        elif self._listening:
            self.close()
        elif self._conn is not None:
            self._answered()

    def close(self) -> None:
        """Close: stop reading, and close once what is already queued is on the
        wire (a listener: stop it; a WebSocket: send a close frame, 1000)."""
        self._shut(1000)

    def error(self, message: str) -> None:
        """As Mongoose's mg_error: MG_EV_ERROR (data: the message) to the
        handler, now, then the connection closes (a WebSocket with 1011)."""
        self._manager._deliver(self, MG_EV_ERROR, str(message))
        self._shut(1011)

    def _shut(self, ws_code: int) -> None:
        """The end of close() and error(): a listener stops, a WebSocket sends a
        close frame with ws_code, any other connection closes once what is
        queued is on the wire."""
        if self._listening:
            self._manager._stop_listener(self)
        elif self._ws is not None:
            self._ws.close(ws_code, "")
        elif self._conn is not None:
            self._close_conn(False)

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
            self._take_request()
            request.reply(Response(b"WS upgrade expected\n", 426, None, None))
            return
        offered = request.header("Sec-WebSocket-Protocol")
        subprotocol = offered.split(",")[0].strip() or None if offered else None
        self._take_request()
        self._ws = request.accept_websocket(
            subprotocol,
            extra_headers,
            on_message=self._ws_message,
            on_ping=self._ws_ping,
            on_pong=self._ws_pong,
            on_close=self._ws_close,
        )
        self._manager._deliver(self, MG_EV_WS_OPEN, message)

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

    def _ws_message(self, ws: Any, data: Union[bytes, str]) -> None:
        message = WsMessage(data, WEBSOCKET_OP_TEXT if type(data) is str else WEBSOCKET_OP_BINARY)
        manager = self._manager
        if manager._in_poll:
            manager._post(self, MG_EV_WS_MSG, message)
        else:  # the hot path of a WebSocket, on the ring thread: _deliver without _post
            manager._deliver(self, MG_EV_WS_MSG, message)

    def _ws_ping(self, ws: Any, data: bytes) -> None:
        self._manager._post(self, MG_EV_WS_CTL, WsMessage(data, WEBSOCKET_OP_PING))

    def _ws_pong(self, ws: Any, data: bytes) -> None:
        self._manager._post(self, MG_EV_WS_CTL, WsMessage(data, WEBSOCKET_OP_PONG))

    def _ws_close(self, ws: Any, code: int, reason: str) -> None:
        payload = b"" if code == 1005 else code.to_bytes(2, "big") + reason.encode("utf-8")
        self._manager._post(self, MG_EV_WS_CTL, WsMessage(payload, WEBSOCKET_OP_CLOSE))

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
        self._take_request()
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
        request.reply(Response(b"Not found\n", 404, headers, None))

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
        self._take_request()
        request.serve_file(
            path,
            content_type=_mime_type(path, mime_types),
            headers=list(_header_lines(extra_headers).items()) or None,
        )

    # -- not provided --------------------------------------------------------

    def tls_init(self, opts: "TlsOpts") -> None:
        """Mongoose's mg_tls_init. On an https:// listener: serve HTTPS with
        opts.cert and opts.key (PEM texts; opts.ca: client certificates signed by
        it are required, unless opts.skip_verification), starting the listener
        the first time and replacing its certificate later (new connections get
        it; asking for client certificates where it did not, or the reverse,
        starts a server with the new settings on the same socket and stops the
        one before gracefully). On a connection that listener accepted: nothing to do (its
        certificate serves it), unless the listener had no ``tls_init`` before the
        first ``poll()``: then its server gives each connection the certificate
        its own ``tls_init`` gives, in ``MG_EV_ACCEPT`` (Mongoose's pattern; a
        connection without one is refused once the handler returns). Elsewhere,
        or without a certificate: nothing changes, and a warning says why. A
        certificate or key that cannot be used raises nothing, as Mongoose's
        mg_tls_init: an error is logged and the handshakes it would serve fail (a
        listener keeps the certificate it had, if any; is_tls is True)."""
        tls = self._tls
        if not opts.cert:
            log.warning("tls_init without a certificate (TlsOpts.cert): nothing to serve TLS with")
            return
        if tls is None:
            log.warning(
                "tls_init on a connection of a plain listener: listen on an https:// URL "
                "and call tls_init on the listener to serve TLS"
            )
            return
        if not self._listening:
            if self._tls_pending:
                self._tls_pending = False
                try:
                    certs = self._manager._tls_certs(opts)
                except RuntimeError as exc:
                    # Mongoose's mg_tls_init logs "Failed to load certificate" and
                    # returns; the handshake then fails. Here: logged, refused now.
                    log.error("%s; the connection is refused", exc)
                    certs = None
                try:
                    if self._conn is not None:
                        if certs is None:
                            self._conn.tls_decline()
                        else:
                            self._conn.tls_use(certs)
                except (OSError, RuntimeError):
                    pass  # closed meanwhile: its MG_EV_CLOSE follows
                return
            if tls.per_conn:
                return  # after MG_EV_ACCEPT: answered (refused) already
            if tls.serving and opts.cert != tls.cert:
                tls.warn_once(
                    "tls_init on an accepted connection with another certificate than its "
                    "listener's: the listener's serves every connection"
                )
            return
        self._manager._tls_start(self, opts)

    def tls_free(self) -> None:
        """Mongoose's mg_tls_free: the engine keeps a TLS connection's session
        until it closes, and a listener its certificate, so nothing to free."""

    def resolve(self, url: str) -> None:
        raise NotImplementedError("DNS resolution is " + _NOT_PROVIDED)

    def resolve_cancel(self) -> None:
        raise NotImplementedError("DNS resolution is " + _NOT_PROVIDED)

    def sntp_request(self) -> None:
        raise NotImplementedError("SNTP is " + _NOT_PROVIDED)

    def mqtt_pub(self, topic: str, message: Any, qos: int = 0, retain: bool = False) -> int:
        raise NotImplementedError("MQTT is " + _NOT_PROVIDED)

    def mqtt_sub(self, topic: str, qos: int = 0) -> None:
        raise NotImplementedError("MQTT is " + _NOT_PROVIDED)

    def mqtt_ping(self) -> None:
        raise NotImplementedError("MQTT is " + _NOT_PROVIDED)

    def mqtt_pong(self) -> None:
        raise NotImplementedError("MQTT is " + _NOT_PROVIDED)

    def mqtt_disconnect(self) -> None:
        raise NotImplementedError("MQTT is " + _NOT_PROVIDED)

    def __repr__(self) -> str:
        if self._gone:
            return "<Connection closed>"
        if self._listening:
            return f"<Connection id={self._id} listening on {self._listen_addr}>"
        return f"<Connection id={self._id} readable={self.is_readable} writable={self.is_writable}>"


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
    """pymongoose's TLS options: ``cert`` and ``key`` (PEM texts, str or bytes),
    ``ca`` (PEM: client certificates it signed are required), ``name`` (a
    client's SNI: not used by a server), ``skip_verification`` (no client
    certificate asked for). Given to ``listener.tls_init()``."""

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


class _TlsListener:
    """What an https:// listener holds: its bound socket (served by the engine
    through ``listen_fd`` once a certificate is given), the memory files the
    engine reads the PEM texts from, and the certificate it serves."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.files: Dict[str, int] = {}  # "cert", "key", "ca" -> memfd
        self.cert = b""
        self.verify = False  # client certificates required (TlsOpts.ca)
        self.serving = False
        # Serving with the certificate each connection's tls_init gives (no tls_init of
        # the listener before the first poll): the engine's ssl_cert_per_conn.
        self.per_conn = False
        # listener.tls_init was given a certificate that cannot be used (logged): as
        # Mongoose, the listener is TLS all the same, and its handshakes fail.
        self.failed = False
        self.base: Tuple[bool, Dict[str, Any]] = (True, {})  # listen()'s (http, options)
        self._warned = False
        self._refused_logged = -1e9  # monotonic time of the last "refused" log line

    def path(self, name: str, data: bytes) -> str:
        """A path the engine can open that holds data: /proc/self/fd/N of a memory
        file (rewritten in place when it exists, so a reload reads the new text)."""
        fd = self.files.get(name)
        if fd is None:
            fd = os.memfd_create("pymongoose_uring-tls-" + name, os.MFD_CLOEXEC)
            self.files[name] = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return "/proc/self/fd/%d" % fd

    def warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)

    def refused(self, count: int) -> None:
        """A connection was refused for want of a certificate: said at most once a
        minute (a client retrying in a loop cannot flood the log)."""
        now = time.monotonic()
        if now - self._refused_logged >= 60.0:
            self._refused_logged = now
            log.warning(
                "an https:// connection was refused: no conn.tls_init(TlsOpts(cert=..., "
                "key=...)) in MG_EV_ACCEPT gave it a certificate, and its listener has none "
                "(listener.tls_init) (%d refused so far)",
                count,
            )

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()
        self.sock.close()


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


_TLS_SCHEMES = ("mqtts",)  # TLS listeners not provided
# Mongoose's TLS schemes (mg_url_is_ssl) served here: HTTP(S) or raw TCP by listen()'s http=.
_HTTPS_SCHEMES = ("https", "wss", "tls", "ssl", "tcps")
_DEFAULT_PORTS = {"http": 80, "ws": 80, "mqtt": 1883, "https": 443, "wss": 443}  # others: 0


def _is_https(url: str) -> bool:
    return "://" in url and url.split("://", 1)[0].lower() in _HTTPS_SCHEMES


def _listen_address(url: str) -> Tuple[str, int]:
    """'http://0.0.0.0:8000', 'https://...', 'tcp://[::1]:0', ':8000', '8000' ->
    (host, port). RuntimeError "Failed to listen on '<url>': <why>", as
    pymongoose raises when Mongoose cannot listen, for a URL that cannot be
    served."""
    if url.isdigit():
        return "0.0.0.0", int(url)
    spec = url if "://" in url else "tcp://" + ("0.0.0.0" + url if url.startswith(":") else url)
    try:
        parts = urlsplit(spec)
        scheme = parts.scheme.lower()
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise RuntimeError(f"Failed to listen on '{url}': {exc}") from None
    if scheme in _TLS_SCHEMES:
        raise RuntimeError(f"Failed to listen on '{url}': TLS is {_NOT_PROVIDED}")
    if scheme == "udp":
        raise RuntimeError(f"Failed to listen on '{url}': UDP is {_NOT_PROVIDED}")
    if scheme not in ("http", "ws", "tcp", "mqtt") + _HTTPS_SCHEMES:
        raise RuntimeError(f"Failed to listen on '{url}': unknown scheme {scheme!r}")
    if host is None:
        raise RuntimeError(f"Failed to listen on '{url}': no host")
    if host == "localhost":
        host = "127.0.0.1"
    return host, port if port is not None else _DEFAULT_PORTS.get(scheme, 0)


def _check_port_free(url: str, host: str, port: int) -> None:
    """RuntimeError when something listens on host:port already. The engine's
    listeners share a port (SO_REUSEPORT, one per ring thread), so a second
    listen() on a port in use would succeed there; Mongoose's fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise RuntimeError(f"Failed to listen on '{url}': {exc}") from None


def _no_handler(conn: Connection) -> None:
    """MgDispatcher's resolve(): a connection without a handler has none."""
    return None


def _no_http(request: Request) -> None:  # the handler of a raw server (never called)
    request.reply(Response(b"", 500, None, None))


class Manager:
    """pymongoose's event manager: ``listen()`` starts servers, ``poll()``
    runs timers, wakeups, ``MG_EV_POLL`` (and, with ``handlers_in_poll``,
    every handler), ``close()`` stops them all.

    ``handlers_in_poll=False`` (the default): handlers run on the engine's
    ring threads as events happen. ``True``: events are queued and their
    handlers run inside ``poll()`` on the caller's thread, as pymongoose runs
    them. ``io_events=True``: ``MG_EV_READ`` on HTTP connections too, and
    ``MG_EV_WRITE`` after each send (the engine's ``conn_io_events``).
    ``server_options`` (``threads``, ``max_body_bytes``, ...) go to every
    :class:`Server` ``listen()`` starts (``shutdown_timeout_ms`` defaults to
    1000 here, so that ``close()`` does not wait long on unanswered requests).
    """

    def __init__(
        self,
        handler: Optional[EventHandler] = None,
        enable_wakeup: bool = False,
        *,
        handlers_in_poll: bool = False,
        io_events: bool = False,
        **server_options: Any,
    ) -> None:
        self._handler = handler
        self._wakeup_enabled = bool(enable_wakeup)
        self._in_poll = bool(handlers_in_poll)
        self._io_events = bool(io_events)
        server_options.setdefault("shutdown_timeout_ms", 1000)
        self._options = server_options
        self._high_water = server_options.get("conn_send_high_water") or _DEFAULT_HIGH_WATER
        # The request handler of every HTTP listener (ring-thread mode): a C loop
        # doing what _http_event does (binding/mgcompat.c). A connection whose
        # _handler is None gets 404, as _http_event answers.
        self._mg_dispatch = _pmu.MgDispatcher(_no_handler)
        self._ids = itertools.count(1)
        if enable_wakeup:
            next(self._ids)  # Mongoose's wakeup pipe is a connection: it takes an id
        self._conns: Dict[int, Connection] = {}  # live connections by id, listeners too
        self._listeners: List[Connection] = []
        # https:// listeners bound and waiting for their tls_init (or the first poll)
        self._pending_tls: Dict[Connection, bool] = {}
        # conn.tls_init's certificates, parsed once: (cert, key, ca, verify) -> TlsCerts
        self._tls_handles: Dict[Tuple[bytes, bytes, bytes, bool], Any] = {}
        self._tls_refused = 0
        self._closed = False
        # Work for the poll() thread: (fn, a, b, c) -> fn(a, b, c)
        self._queue: Deque[Tuple[Callable[[Any, Any, Any], None], Any, Any, Any]] = (
            collections.deque()
        )
        self._cond = threading.Condition(threading.Lock())
        self._waiting = False
        self._timers: List[Timer] = []  # a heap by due time
        self._timers_lock = threading.Lock()
        # serve_dir's engine mounts by (root_dir, extra_headers, mime_types)
        self._mounts: Dict[Tuple[str, str, str], List[Tuple[str, Any]]] = {}

    # -- listening -----------------------------------------------------------

    def listen(
        self, url: str, handler: Optional[EventHandler] = None, *, http: bool = False
    ) -> Connection:
        """Listen on ``url`` and start serving at once: HTTP with
        ``http=True``, else a plain TCP server (MG_EV_READ, ``recv_data()``,
        ``send()``). Returns the listening Connection (its ``local_addr`` gives
        the port bound, useful with port 0); ``handler`` handles it and the
        connections it accepts. RuntimeError "Failed to listen on ..." when it
        cannot."""
        if self._closed:
            raise RuntimeError("Manager has been freed")
        listener = Connection(self, handler)
        listener._listening = True
        host, port = _listen_address(url)
        options = dict(self._options)
        options["connection_handler"] = self._connection_events(listener)
        if self._io_events:
            options["conn_io_events"] = True
        if port:
            _check_port_free(url, host, port)
        if _is_https(url):
            # Bound now (local_addr, port 0); served once tls_init gives a certificate.
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(options.get("backlog") or 4096)
            except OSError as exc:
                sock.close()
                raise RuntimeError(f"Failed to listen on '{url}': {exc}") from exc
            listener._tls = _TlsListener(sock)
            listener._tls.base = (http, options)
            listener._listen_addr = (host, sock.getsockname()[1], ":" in host)
            listener._server = None
            self._pending_tls[listener] = True
        else:
            server = self._make_server(http, host, port, options)
            try:
                server.start()
            except OSError as exc:
                raise RuntimeError(f"Failed to listen on '{url}': {exc}") from exc
            listener._server = server
            listener._listen_addr = (host, server.port, ":" in host)
        self._listeners.append(listener)
        self._conns[listener._id] = listener
        self._deliver(listener, MG_EV_OPEN, None)
        return listener

    def _make_server(self, http: bool, host: str, port: int, options: Dict[str, Any]) -> Server:
        if http:
            dispatch = self._dispatch if self._in_poll else self._mg_dispatch
            return Server(dispatch, host, port, **options)
        return Server(_no_http, host, port, raw=True, **options)

    def _tls_start(self, listener: Connection, opts: "TlsOpts") -> None:
        """listener.tls_init(opts) on an https:// listener: start serving it with
        the certificate, or give the running server the new one."""
        tls = listener._tls
        assert tls is not None
        settings: Dict[str, Any] = {
            "ssl_certfile": tls.path("cert", opts.cert),
            "ssl_keyfile": tls.path("key", opts.key or opts.cert),
        }
        verify = bool(opts.ca) and not opts.skip_verification
        if verify:
            settings["ssl_ca_certs"] = tls.path("ca", opts.ca)
            settings["ssl_cert_reqs"] = 2  # Mongoose: VERIFY_PEER | FAIL_IF_NO_PEER_CERT
        server = listener._server
        if server is not None and not tls.per_conn and verify == tls.verify:
            # The same settings: the memory files were rewritten, the engine reads them again.
            try:
                server.reload_tls()
            except OSError as exc:
                log.error("tls_init: %s; the listener keeps its certificate", exc)
                return
            tls.cert = opts.cert
            return
        # First, or client certificates asked for now and not before (or the reverse): a
        # server on the same socket, which accepts from now on; the one before stops
        # gracefully (its connections finish).
        http, options = tls.base
        host, port, _ = listener._listen_addr or ("127.0.0.1", 0, False)
        options = dict(options, listen_fd=tls.sock.fileno(), **settings)
        fresh = self._make_server(http, host, port, options)
        try:
            fresh.start()
        except OSError as exc:
            if server is not None:
                log.error("tls_init: %s; the listener keeps its certificate", exc)
            else:
                # Mongoose logs and goes on with a TLS listener whose handshakes fail:
                # here it stays pending (from the first poll() each connection needs
                # its own tls_init in MG_EV_ACCEPT, else it is refused).
                log.error("tls_init: %s; its TLS handshakes will fail", exc)
                tls.failed = True
            return
        listener._server = fresh
        self._pending_tls.pop(listener, None)
        tls.cert, tls.verify, tls.serving, tls.per_conn = opts.cert, verify, True, False
        tls.failed = False
        if server is not None:
            server.stop()

    def _tls_start_per_conn(self, listener: Connection) -> None:
        """An https:// listener without tls_init at the first poll: serve it with the
        certificate each accepted connection's tls_init gives in MG_EV_ACCEPT (the
        engine's ssl_cert_per_conn: each handshake waits for it)."""
        tls = listener._tls
        assert tls is not None
        http, options = tls.base
        host, port, _ = listener._listen_addr or ("127.0.0.1", 0, False)
        options = dict(options, listen_fd=tls.sock.fileno(), ssl_cert_per_conn=True)
        server = self._make_server(http, host, port, options)
        # Set before the start: a connection waiting in the backlog is accepted at once,
        # and its OPEN (on the ring thread) reads per_conn to know that its MG_EV_ACCEPT
        # must give the certificate (read as False, its handshake waited forever).
        tls.serving, tls.per_conn = True, True
        try:
            server.start()
        except OSError as exc:  # (not expected: the socket is bound, nothing to load)
            tls.serving, tls.per_conn = False, False
            tls.warn_once("an https:// listener cannot serve: %s" % exc)
            return
        listener._server = server
        self._pending_tls.pop(listener, None)

    def _tls_certs(self, opts: "TlsOpts") -> Any:
        """The engine's certificate handle for opts, parsed once per distinct
        (cert, key, ca, verification); RuntimeError when it cannot be used."""
        verify = bool(opts.ca) and not opts.skip_verification
        key = (opts.cert, opts.key, opts.ca if verify else b"", verify)
        certs = self._tls_handles.get(key)
        if certs is None:
            try:
                certs = _pmu.TlsCerts(
                    opts.cert, opts.key or None, opts.ca if verify else None, 2 if verify else 0
                )
            except ValueError as exc:
                raise RuntimeError(f"tls_init: {exc}") from exc
            if len(self._tls_handles) >= 64:
                self._tls_handles.clear()
            self._tls_handles[key] = certs
        return certs

    def _stop_listener(self, listener: Connection) -> None:
        """Stop a listener's server (its connections close), then MG_EV_CLOSE."""
        server, listener._server = listener._server, None
        tls = listener._tls
        pending = self._pending_tls.pop(listener, None) is not None
        if server is None and not pending:
            return
        try:
            if server is not None:
                server.stop()
        finally:
            if tls is not None:
                tls.serving = False
                tls.close()
            self._post(listener, MG_EV_CLOSE, None, self._closed_event)

    # -- events --------------------------------------------------------------

    def _deliver(self, conn: Connection, ev: int, data: Any) -> None:
        """Call conn's handler (a listener's: its own, else the Manager's);
        what it raises is logged, as pymongoose prints it, and the connection
        goes on."""
        handler = conn._handler
        if handler is None and conn._listening:
            handler = self._handler
        if handler is None:
            return
        try:
            handler(conn, ev, data)
        except Exception:
            log.exception("the pymongoose handler raised on event %d", ev)

    def _post(
        self,
        conn: Connection,
        a: Any,
        b: Any,
        fn: Optional[Callable[[Any, Any, Any], None]] = None,
    ) -> None:
        """fn(conn, a, b) (by default: deliver event a with data b) now, or on
        the poll() thread with handlers_in_poll."""
        if fn is None:
            fn = self._deliver
        if self._in_poll:
            self._queue.append((fn, conn, a, b))
            if self._waiting:
                with self._cond:
                    self._cond.notify()
        else:
            fn(conn, a, b)

    def _connection_events(self, listener: Connection) -> Callable[[Any, int, Any], None]:
        """The engine's connection_handler for one listener's server."""
        post = self._post

        def on_event(pconn: Any, ev: int, data: Any) -> None:
            if ev == _CONN_OPEN:
                conn = Connection(self, listener._handler or self._handler, pconn)
                conn._tls = listener._tls
                conn._tls_pending = listener._tls is not None and listener._tls.per_conn
                pconn.user = conn
                post(conn, None, None, self._opened_event)
                return
            conn = pconn.user
            if conn is None:
                return
            if ev == _CONN_DATA or ev == _CONN_READ:
                post(conn, data, None, self._read_event)
            elif ev == _CONN_SENT:
                post(conn, MG_EV_WRITE, None)
            elif ev == _CONN_CLOSE:
                post(conn, MG_EV_CLOSE, data, self._closed_event)

        return on_event

    def _opened_event(self, conn: Connection, _a: Any, _b: Any) -> None:
        # Live (for MG_EV_POLL and wakeups) from its MG_EV_OPEN on, not before.
        self._conns[conn._id] = conn
        self._deliver(conn, MG_EV_OPEN, None)
        self._deliver(conn, MG_EV_ACCEPT, None)
        if conn._tls_pending:
            # No tls_init in MG_EV_ACCEPT: nothing to serve TLS with.
            conn._tls_pending = False
            self._tls_refused += 1
            try:
                if conn._conn is not None:
                    conn._conn.tls_decline()
            except (OSError, RuntimeError):
                pass  # closed meanwhile
            if conn._tls is not None:
                conn._tls.refused(self._tls_refused)

    def _read_event(self, conn: Connection, data: bytes, _: Any) -> None:
        conn._recv = data
        try:
            self._deliver(conn, MG_EV_READ, None)
        finally:
            conn._recv = None

    def _closed_event(self, conn: Connection, ev: int, err: Any) -> None:
        if conn._gone:
            return
        self._deliver(conn, MG_EV_CLOSE, None)
        conn._gone = True
        self._conns.pop(conn._id, None)
        conn._request = conn._stream = conn._held = None
        pconn = conn._conn
        if pconn is not None:
            pconn.user = None  # (the binding may release the handle now)

    def _dispatch(self, request: Request) -> None:
        """The request handler of every HTTP listener's server with
        handlers_in_poll (the ring-thread mode uses _mg_dispatch)."""
        pconn = request.connection
        conn = pconn.user if pconn is not None else None
        if conn is None:  # (cannot happen: OPEN comes first)
            request.reply(Response(b"Not Found", 404, None, None))
            return
        if self._in_poll:
            self._post(conn, request, None, self._poll_http_event)
        else:
            self._http_event(conn, request, None)

    def _poll_http_event(self, conn: Connection, request: Request, _: Any) -> None:
        """A request queued for poll(): MgDispatcher runs it (the C hot path, as
        on the ring threads) while its connection is open; else the Python path."""
        if request.connection is not None:
            self._mg_dispatch(request)
        else:
            self._http_event(conn, request, None)

    def _http_event(self, conn: Connection, request: Request, _: Any) -> None:
        """MG_EV_HTTP_HDRS then MG_EV_HTTP_MSG for one request: the hot path."""
        conn._request = request  # (one still unanswered is dropped: 500 unless kept)
        handler = conn._handler
        if handler is None:
            conn._take_request()
            request.reply(Response(b"Not Found", 404, None, None))
            return
        message = HttpMessage(request)
        try:
            handler(conn, MG_EV_HTTP_HDRS, message)
            handler(conn, MG_EV_HTTP_MSG, message)
        except Exception:
            log.exception(
                "the pymongoose handler raised on %s %s; sent 500", request.method, request.target
            )
            if not request.answered:
                if conn._request is request:
                    conn._request = None
                try:
                    request.reply(Response(b"Internal Server Error", 500, None, None))
                except RuntimeError:
                    pass

    # -- serve_dir's mounts --------------------------------------------------

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
                    mount = _pmu.StaticMount(
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

    # -- polling -------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> None:
        """Wait up to ``timeout_ms`` ms, running the timers that fall due and
        the queued events (wakeups; with handlers_in_poll, every event): it
        returns once a batch of them ran, as mg_mgr_poll returns after I/O.
        Then MG_EV_POLL to every live connection, listeners included. Ctrl-C
        raises KeyboardInterrupt here."""
        if self._closed:
            raise RuntimeError("Manager has been freed")
        for listener in list(self._pending_tls):
            # No listener.tls_init so far: each connection's tls_init in MG_EV_ACCEPT
            # gives its certificate.
            self._tls_start_per_conn(listener)
        end = time.monotonic() + max(timeout_ms, 0) / 1000.0
        while True:
            self._run_timers(time.monotonic())
            if self._queue:
                self._run_queue()
                break
            now = time.monotonic()
            if now >= end:
                break
            with self._timers_lock:
                next_due = self._timers[0].due if self._timers else end
            self._wait(min(end, next_due) - now)
        for conn in list(self._conns.values()):
            if not conn._gone:
                self._deliver(conn, MG_EV_POLL, None)

    def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._cond:
            if self._queue:
                return
            self._waiting = True
            try:
                self._cond.wait(seconds)
            finally:
                self._waiting = False

    def _run_queue(self) -> None:
        queue = self._queue
        for _ in range(len(queue)):
            try:
                fn, a, b, c = queue.popleft()
            except IndexError:
                return
            fn(a, b, c)

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

    def wakeup(
        self, connection_id: int, data: Union[bytes, bytearray, memoryview, str] = b""
    ) -> bool:
        """MG_EV_WAKEUP (data: these bytes) to the connection with this id,
        inside the next poll(), from any thread. True once queued (whether or
        not the id is live, as Mongoose answers); False without
        ``Manager(enable_wakeup=True)`` or for id 0."""
        if self._closed:
            raise RuntimeError("Manager has been freed")
        if not self._wakeup_enabled or connection_id <= 0:
            return False
        self._queue.append((self._wakeup_event, connection_id, _as_payload(data), None))
        if self._waiting:
            with self._cond:
                self._cond.notify()
        return True

    def _wakeup_event(self, connection_id: int, data: bytes, _: Any) -> None:
        conn = self._conns.get(connection_id)
        if conn is not None and not conn._gone:
            self._deliver(conn, MG_EV_WAKEUP, data)

    # -- not provided --------------------------------------------------------

    def connect(
        self, url: str, handler: Optional[EventHandler] = None, *, http: bool = False
    ) -> Connection:
        raise NotImplementedError("outbound connections are " + _NOT_PROVIDED)

    def mqtt_connect(
        self, url: str, handler: Optional[EventHandler] = None, **kw: Any
    ) -> Connection:
        raise NotImplementedError("MQTT is " + _NOT_PROVIDED)

    def mqtt_listen(self, url: str, handler: Optional[EventHandler] = None) -> Connection:
        raise NotImplementedError("MQTT is " + _NOT_PROVIDED)

    def sntp_connect(self, url: str, handler: Optional[EventHandler] = None) -> Connection:
        raise NotImplementedError("SNTP is " + _NOT_PROVIDED)

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Stop every listener (their connections close: MG_EV_CLOSE to each,
        then to the listener) and free the Manager; a second call does nothing."""
        if self._closed:
            return
        with self._timers_lock:
            self._timers.clear()
        listeners, self._listeners = self._listeners, []
        try:
            for listener in listeners:
                self._stop_listener(listener)
        finally:
            self._run_queue()
            self._closed = True
            self._queue.clear()
            for conn in list(self._conns.values()):
                conn._gone = True
            self._conns.clear()

    def __enter__(self) -> "Manager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
