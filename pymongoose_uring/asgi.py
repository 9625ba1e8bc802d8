"""ASGI 3 (HTTP, WebSocket and lifespan): serve FastAPI, Starlette, Django (ASGI),
Django Channels or any ASGI app on the io_uring engine.

::

    from pymongoose_uring.asgi import ASGIServer
    from myapp import app                      # a FastAPI app...

    ASGIServer(app, host="0.0.0.0", port=8000).run()

or ``python -m pymongoose_uring myapp:app --interface asgi``.

How it runs. One asyncio event loop thread (uvloop when installed) runs the
app. With one ring (``threads=1``, the default; ``ring="loop"``) the engine's ring
runs on that thread too: the loop watches the ring's descriptor and timers and runs
one turn of it when they fire (``Engine.start_driven``/``step``), and each request
of a turn becomes a task running ``app(scope, receive, send)`` there and then (on
Python 3.12+ its first step runs at once). With more rings (or ``ring="thread"``)
the engine's ring threads hand each batch of requests to the loop with a single
``call_soon_threadsafe`` (the first request of a batch posts it; the others join
the same queue). The answer goes back to the engine straight from the loop
thread: ``request.reply()`` for a complete body (``more_body`` false in the first
body message), ``request.start/write/end`` for a streamed one (chunked unless the
app gave a Content-Length). There is no other thread hop.

- ``scope``: type, asgi (version 3.0, spec_version 2.4), http_version,
  method, scheme, path (percent-decoded), raw_path, query_string, root_path,
  headers (lower-cased names, bytes), client, server, state (a copy of what
  the lifespan startup stored). Behind a trusted proxy (``forwarded_allow_ips``,
  default the local host), client and scheme come from its ``X-Forwarded-For``
  and ``X-Forwarded-Proto`` headers (``proxy_headers=False``: never). Over TLS
  (a server with ``ssl_certfile``) scheme is ``https`` (``wss``) unless
  ``scheme`` was given, and ``extensions["tls"]`` is the ASGI TLS extension:
  ``server_cert`` (PEM), ``client_cert_chain`` (PEM, leaf first),
  ``client_cert_name`` (RFC 4514), ``client_cert_error`` (None: a certificate
  that fails verification fails the handshake), ``tls_version`` and
  ``cipher_suite`` (numbers).
- ``receive()``: ``http.request`` messages with the body (in pieces when the
  server streams large bodies), then ``http.disconnect`` once the client
  leaves or the response is complete.
- ``send()``: ``http.response.start`` and ``http.response.body``; with spec
  2.4, sending to a client that left raises ``OSError``
  (``pymongoose_uring.ClientDisconnected`` when available).
- ``http.response.pathsend`` (listed in ``scope["extensions"]``; Starlette's
  ``FileResponse`` uses it on its own): after ``http.response.start``,
  ``{"type": "http.response.pathsend", "path": ...}`` ends the response with the
  file's bytes, sent by the engine from the file (``Request.sendfile``: splice or
  read in C, never through Python). A start without Content-Length gets the file's
  size as one; HEAD sends none of the body; a missing file raises
  ``FileNotFoundError`` in send() (an ``OSError``: nothing is sent yet, and the app
  may catch it and send another ``http.response.start``; uncaught, the client gets
  a 500). Before start, twice, or after a body: ``RuntimeError``.
- ``http.response.trailers`` (listed in ``scope["extensions"]``): with
  ``"trailers": True`` in http.response.start, the body is sent chunked and the
  answer ends with the fields of the ``http.response.trailers`` messages (until
  ``more_trailers`` is false) after the last chunk; an answer under a
  Content-Length, or to HTTP/1.0, ends without them. The client half-closing
  (FIN) after its request gives ``http.disconnect`` to a ``receive()`` waiting
  after the body, as on uvicorn.
- ``websocket`` scopes (spec 2.4): the same fields as http (scheme ``ws``/``wss``)
  plus ``subprotocols`` and ``extensions`` (``websocket.http.response``: a
  denial response instead of the 403 of a close before accept). ``receive()``
  gives ``websocket.connect``, then one ``websocket.receive`` per message
  (exactly one of ``text``/``bytes``), then ``websocket.disconnect`` with the
  peer's close code (1005 when its close frame had none, 1006 when it left
  without one) and reason, also after a close the app began. The engine
  answers pings and handles fragments; no ping or pong reaches the app.
  ``send()`` of a message does not wait unless more than
  ``ws_send_high_water`` bytes are unsent; then it waits for the client to
  read. On a closing or closed connection it raises
  ``pymongoose_uring.WebSocketClosed`` (an ``OSError``). An app that raises
  gets its connection closed with 1011 (500 before accept); one that returns
  without closing, 1000. Messages the app has not received yet are queued,
  up to ``ws_max_queue`` (32, as uvicorn), beyond which the connection is not
  read until the app catches up. ``ws="none"``: handshakes reach the app as
  ordinary ``http`` requests.
- lifespan: ``startup`` runs before the server accepts connections,
  ``shutdown`` after it stopped. ``lifespan="auto"`` (default) goes on
  without it when the app does not support it, ``"on"`` requires it,
  ``"off"`` skips it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import logging
import os
import stat
import sys
import threading
import time
from time import perf_counter as _clock
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Coroutine,
    Dict,
    Iterable,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import _native
from ._adapter import (
    AdapterServer,
    asgi_version,
    declared_length,
    length_mismatch,
    log_access,
    trusted_proxies,
)
from ._native import Response
from ._types import ASGIApp, Message, Scope

if TYPE_CHECKING:
    from ._pmu import Request

__all__ = ["ASGIHandler", "ASGIServer", "asgi2_app", "serve", "new_event_loop"]

log = logging.getLogger("pymongoose_uring")

# Raised by send() once the client left (ASGI spec 2.4: an OSError).
_ClientDisconnected: Any = getattr(_native, "ClientDisconnected", ConnectionResetError)
# Raised by WebSocket.send() on a closing or closed connection (an OSError).
_WebSocketClosed: Any = getattr(_native._pmu, "WebSocketClosed", ConnectionResetError)
# Whether the engine speaks WebSocket (the binding's Request.accept_websocket).
_HAS_WEBSOCKET = hasattr(getattr(_native._pmu, "Request", None), "accept_websocket")

_READ_SIZE = 65536
_ERROR_BODY = b"Internal Server Error"
_ERROR_HEADERS = [(b"content-type", b"text/plain; charset=utf-8")]

_T = TypeVar("_T")
_Client = Optional[Tuple[str, int]]


def asgi2_app(app: Callable[[Scope], Any]) -> ASGIApp:
    """An ASGI 3 app running the ASGI 2 (double-callable) `app`: for each scope,
    ``instance = app(scope)``, then ``await instance(receive, send)``.
    ASGIHandler applies it by itself to an app asgi_version() finds ASGI 2."""

    async def asgi3(scope: Scope, receive: Any, send: Any) -> None:
        instance = app(scope)
        await instance(receive, send)

    asgi3.__wrapped__ = app  # type: ignore[attr-defined]  # what it runs, for introspection
    return asgi3


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: ``"uvloop"``, ``"asyncio"``, or ``"auto"`` (uvloop
    when installed)."""
    if kind not in ("auto", "uvloop", "asyncio"):
        raise ValueError("loop must be 'auto', 'uvloop' or 'asyncio'")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# The name of every request task: without one, Python 3.11 formats "Task-N" for each.
_TASK_NAME = "pymongoose_uring-request"
_Task = asyncio.Task
# Python 3.12+: a request's task takes its first step at once, in the Task's
# constructor (eager_start): an app that answers without waiting is done before the
# loop's next callback, with no pass through the loop's queue; with the ring on the
# loop's thread the answer is on the connection before the engine's turn ends.
_EAGER = sys.version_info >= (3, 12)


class _CycleBase:
    """Pure-Python stand-in for ``_pmu.ASGICycle`` (the base of :class:`_Cycle`), for
    an interpreter without the compiled extension: the same fields, and ``send`` /
    ``receive`` that always take the Python paths (``_send``/``_receive``)."""

    __slots__ = (
        "request",
        "handler",
        "status",
        "headers",
        "started",
        "streaming",
        "done",
        "body_done",
        "gone",
        "waiter",
        "watching",
        "client",
        "sent",
        "trailers",
        "t0",
    )

    def __init__(self, request: Request, handler: "ASGIHandler") -> None:
        self.request = request
        self.handler = handler
        self.t0 = _clock() if handler.access_log else 0.0  # the access log's duration
        self.status: Any = 0
        self.headers: Any = None  # the app's, as it gave them (checked by the engine)
        self.started = False  # http.response.start received
        self.streaming = False  # headers sent with request.start()
        self.done = False  # the response is complete
        self.body_done = False  # the last http.request message was given
        self.gone = False  # the client left
        self.client: _Client = None  # scope["client"]
        self.sent = 0  # body bytes streamed
        # http.response.trailers: None (not announced), a list (announced: the
        # fields so far) once the body is complete, False before that
        self.trailers: Any = None
        self.waiter: Optional["asyncio.Future[None]"] = None
        self.watching = False

    def send(self, message: Message) -> Any:
        return self._send(message)  # type: ignore[attr-defined]  # _Cycle's

    def receive(self) -> Any:
        return self._receive()  # type: ignore[attr-defined]  # _Cycle's


# The compiled base: scope-free fast paths in C (binding/asgi.c). send() handles
# http.response.start and a whole http.response.body itself, receive() a buffered
# body, each returning an awaitable that is already done; everything else comes
# back to _Cycle._send / _Cycle._receive below.
if TYPE_CHECKING:
    _CycleBaseC = _CycleBase
else:
    _CycleBaseC = getattr(_native._pmu, "ASGICycle", _CycleBase)
# asgi_scope(request, base, state, forwarded): ASGIHandler.scope in C.
_asgi_scope: Any = getattr(_native._pmu, "asgi_scope", None)
_hold_wakeups, _flush_wakeups = _native.hold_wakeups, _native.flush_wakeups
# ASGIStarter(handler, ...): ASGIHandler._start and _sweep in C.
_Starter: Any = getattr(_native._pmu, "ASGIStarter", None)


class _Cycle(_CycleBaseC):
    """One request's receive() and send(): the fields and the fast paths are the
    base's (``_pmu.ASGICycle``); here are the rest, the same with either base."""

    __slots__ = ()

    async def _receive(self) -> Message:
        if not self.body_done:
            request = self.request
            if request.body_streaming:
                try:
                    data = await request.read_async(_READ_SIZE)
                except ConnectionError:
                    self.body_done = self.gone = True
                    return {"type": "http.disconnect"}
                if data:
                    return {"type": "http.request", "body": data, "more_body": True}
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            self.body_done = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        if self.done or self.gone or self.request.disconnected:
            return {"type": "http.disconnect"}
        waiter = self.waiter
        if waiter is None or waiter.done():
            loop = asyncio.get_running_loop()
            waiter = self.waiter = loop.create_future()
            if not self.watching:
                self.watching = True
                call = loop.call_soon_threadsafe
                gone = self._gone

                def on_disconnect() -> None:  # a ring thread
                    try:
                        call(gone)
                    except RuntimeError:  # the loop is closed: nobody waits any more
                        pass

                self.request.add_disconnect_callback(on_disconnect)
        await waiter
        return {"type": "http.disconnect"}

    def _short(self) -> bool:
        """Whether the streamed body fell short of a declared Content-Length
        (warned about, as one that went over is)."""
        declared = declared_length(self.headers)
        status = self.status
        if declared is None or declared == self.sent or status == 204 or status == 304:
            return False
        request = self.request
        if request.method == "HEAD" or request.disconnected:
            return False
        length_mismatch("ASGI", request.method, request.target, self.sent, declared)
        return self.sent < declared

    def _gone(self) -> None:
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.status = message["status"]
            self.headers = message.get("headers") or ()
            self.started = True
            if message.get("trailers"):
                self.trailers = False  # the body's end waits for http.response.trailers
            return
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.done:
                raise RuntimeError("http.response.body after the response was complete")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            request = self.request
            if not more and not self.streaming and self.trailers is None:
                self.done = True
                self.handler._answered(request, self, body)
                self._wake()
                return
            if self.gone:
                raise _ClientDisconnected("the client disconnected")
            if not self.streaming:
                self.streaming = True
                request.start(self.status, self.headers)
            if body:
                self.sent += len(body)
                if not await request.write_async(body):
                    self.gone = True
                    self.done = True
                    request.end()
                    self._wake()
                    raise _ClientDisconnected("the client disconnected")
            if not more:
                if self.trailers is not None:
                    self.trailers = []  # the body is complete; the trailers end it
                    return
                self.done = True
                if self._short():
                    request.abort()  # never complete: the client must not take it for whole
                else:
                    request.end()  # (a longer body was cut off at the length, and closes)
                self._wake()
                if self.handler.access_log:
                    self.handler._log(request, self.client, self.status, self.t0)
            return
        if kind == "http.response.pathsend":
            if not self.started:
                raise RuntimeError("http.response.pathsend before http.response.start")
            if self.done:
                raise RuntimeError("http.response.pathsend after the response was complete")
            if self.streaming:
                raise RuntimeError("http.response.pathsend after a streamed http.response.body")
            await self._pathsend(message["path"])
            return
        if kind == "http.response.trailers":
            await self._trailers(message)
            return
        raise ValueError(f"unsupported ASGI message type {kind!r} for http")

    async def _trailers(self, message: Message) -> None:
        """``http.response.trailers`` (announced by ``trailers: True`` in
        http.response.start, after the last body message): the fields are
        gathered until ``more_trailers`` is false, then sent after the last
        chunk (an answer under a Content-Length, or to HTTP/1.0, ends without
        them: it has no place for them). Unannounced trailers are ignored."""
        trailers = self.trailers
        if trailers is None or self.done:
            return
        if trailers is False:
            raise RuntimeError("http.response.trailers before the last http.response.body")
        trailers.extend(message.get("headers") or ())
        if message.get("more_trailers", False):
            return
        self.done = True
        request = self.request
        if self.gone or request.disconnected:
            request.end()
        elif self._short():
            request.abort()
        else:
            request.end(trailers)
        self._wake()
        if self.handler.access_log:
            self.handler._log(request, self.client, self.status, self.t0)

    async def _pathsend(self, path: Any) -> None:
        """``http.response.pathsend``: the file at ``path`` is the whole body,
        sent by the engine from the file (``Request.sendfile``: no copy through
        Python). The file is opened here, before anything is sent, so that a
        missing one raises ``FileNotFoundError`` (an ``OSError``) in the app's
        send(), where the app can catch it; uncaught, the client gets a 500. Without
        a Content-Length from the app, the file's size is given as one."""
        request = self.request
        if self.gone:
            raise _ClientDisconnected("the client disconnected")
        try:
            fd = os.open(os.fsdecode(path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.started = False  # nothing was sent: the app may start another answer
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.started = False
                raise IsADirectoryError(
                    errno.EISDIR, "http.response.pathsend: not a regular file", path
                )
            size = st.st_size
            headers = self.headers
            status = self.status
            bodiless = status < 200 or status == 204 or status == 304
            declared = declared_length(headers)
            if declared is None and not bodiless:
                headers = [*headers, (b"content-length", b"%d" % size)]
            self.done = self.streaming = True
            request.start(status, headers)
            if request.method == "HEAD" or bodiless:
                request.end()
            else:
                count = size if declared is None else min(declared, size)
                if count:
                    if not request.sendfile(fd, 0, count):
                        self.gone = True
                        request.end()
                        raise _ClientDisconnected("the client disconnected")
                self.sent = count
                if declared is not None and declared != size and not request.disconnected:
                    # The app's length and the file's disagree: sent as the app said,
                    # (a short body closes the connection unfinished), as for a body.
                    length_mismatch("ASGI", request.method, request.target, size, declared)
                    if count < declared:
                        request.abort()
                    else:
                        request.end()
                else:
                    request.end()
        finally:
            os.close(fd)  # (Request.sendfile sends from a duplicate of its own)
            self._wake()
        if self.handler.access_log:
            self.handler._log(request, self.client, self.status, self.t0)


class _WebSocketCycle:
    """One WebSocket connection's receive() and send().

    The engine's callbacks (a ring thread, GIL held, once per batch of events) queue
    what arrives in ``inbox``: a ``str`` (text), ``bytes`` (binary), or the
    disconnect message, last. The loop is woken only when the app waits in
    receive() (or in send(), for the socket to drain), and then once per batch for
    all the connections that got something (ASGIHandler._wake_soon). receive()
    with messages queued returns at once, without awaiting anything.
    """

    __slots__ = (
        "request",
        "handler",
        "ws",
        "state",
        "inbox",
        "waiter",
        "drain_waiter",
        "queued",
        "paused",
        "drains",
        "gone",
        "disconnect",
        "told",
        "max_queue",
        "status",
        "headers",
        "body",
        "client",
        "done",
    )

    # state: what the app has said so far
    CONNECTING, HANDSHAKE, OPEN, RESPONDING, REFUSED = range(5)

    def __init__(self, request: Request, handler: "ASGIHandler") -> None:
        self.request = request
        self.handler = handler
        self.ws: Any = None  # the _pmu.WebSocket, once accepted
        self.state = self.CONNECTING
        self.inbox: "collections.deque[Any]" = collections.deque()
        self.waiter: Optional["asyncio.Future[None]"] = None  # receive() waits
        self.drain_waiter: Optional["asyncio.Future[None]"] = None  # send() waits
        self.queued = False  # in the handler's list of connections to wake
        self.paused = False  # reading paused: the app lags ws_max_queue messages
        self.drains = 0  # on_drain calls so far
        self.gone = False  # the disconnect message is in inbox (or was taken)
        self.disconnect: Optional[Message] = None
        self.told = False  # receive() gave the app the disconnect message
        self.max_queue = handler.ws_max_queue
        self.status = 0  # a denial response's
        self.headers: Any = None
        self.body: List[bytes] = []
        self.client: _Client = None
        self.done = False  # the app returned

    # -- the engine's callbacks (a ring thread) --------------------------------------

    def _on_message(self, ws: Any, data: Union[str, bytes]) -> None:
        inbox = self.inbox
        inbox.append(data)
        if self.waiter is not None and not self.queued:
            self.queued = True
            self.handler._wake_soon(self)
        if len(inbox) >= self.max_queue and not self.paused and not self.done:
            self.paused = True
            ws.pause_reading()

    def _on_drain(self, ws: Any) -> None:
        self.drains += 1
        if self.drain_waiter is not None and not self.queued:
            self.queued = True
            self.handler._wake_soon(self)

    def _on_close(self, ws: Any, code: int, reason: str) -> None:
        """The peer's close frame: the app hears of it now (the connection ends when
        the engine's answer is out)."""
        if self.disconnect is None:
            self._end(code, reason)

    def _on_disconnect(self, ws: Any, code: int) -> None:
        # (the binding drops the callbacks after this one: no cycle through them stays)
        if self.disconnect is None:
            self._end(code, "")

    def _end(self, code: int, reason: str) -> None:
        self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        self.inbox.append(self.disconnect)
        self.gone = True
        if not self.queued and (self.waiter is not None or self.drain_waiter is not None):
            self.queued = True
            self.handler._wake_soon(self)

    def _wake(self) -> None:
        """On the loop: resume whatever of receive() and send() waits."""
        self.queued = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- receive and send (the loop) ----------------------------------------------------

    async def receive(self) -> Message:
        inbox = self.inbox
        if not inbox:
            if self.state != self.OPEN:
                return await self._receive_handshake()
            if self.gone:
                self.told = True
                return self.disconnect  # type: ignore[return-value]  # set with gone
            loop = self.handler.loop
            assert loop is not None
            while not inbox:
                waiter = self.waiter = loop.create_future()
                if inbox:  # arrived between the test and the waiter: no wake comes
                    break
                try:
                    await waiter
                finally:
                    self.waiter = None
        data = inbox.popleft()
        if self.paused and len(inbox) <= self.max_queue >> 1:
            self.paused = False
            self.ws.resume_reading()
        kind = type(data)
        if kind is str:
            return {"type": "websocket.receive", "text": data}
        if kind is bytes:
            return {"type": "websocket.receive", "bytes": data}
        self.told = True
        return data  # type: ignore[no-any-return]  # the disconnect message

    async def _receive_handshake(self) -> Message:
        if self.state == self.CONNECTING:
            self.state = self.HANDSHAKE
            return {"type": "websocket.connect"}
        if self.state == self.HANDSHAKE:
            # Neither accepted nor refused yet: wait for the client to leave.
            request = self.request
            if not request.disconnected:
                loop = asyncio.get_running_loop()
                waiter = self.waiter = loop.create_future()

                def gone() -> None:
                    if not waiter.done():
                        waiter.set_result(None)

                def on_disconnect() -> None:  # a ring thread
                    try:
                        loop.call_soon_threadsafe(gone)
                    except RuntimeError:  # the loop is closed
                        pass

                request.add_disconnect_callback(on_disconnect)
                try:
                    await waiter
                finally:
                    self.waiter = None
                if self.state == self.OPEN:  # accepted meanwhile, by another task
                    return await self.receive()
        return {"type": "websocket.disconnect", "code": 1006, "reason": ""}

    async def send(self, message: Message) -> None:
        ws = self.ws
        if ws is not None:  # accepted
            kind = message["type"]
            if kind == "websocket.send":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes")
                    if data is None:
                        raise TypeError("websocket.send needs 'text' or 'bytes'")
                if self.told:
                    # The app heard the client leave; the engine may not have answered
                    # the close yet (it does after the pass), but the app must not
                    # learn that from a race (spec 2.4: an OSError).
                    raise _WebSocketClosed("websocket.send: the client closed the WebSocket")
                drains = self.drains
                if not ws.send(data):  # raises WebSocketClosed once closing or closed
                    await self._drained(drains)
                return
            if kind == "websocket.close":
                reason = message.get("reason") or ""
                if len(reason) > 30:  # a close frame carries 123 bytes of it at most
                    reason = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
                ws.close(message.get("code") or 1000, reason)
                return
            if kind == "websocket.accept":
                raise RuntimeError("websocket.accept sent twice")
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an open WebSocket")
        await self._send_handshake(message)

    async def _drained(self, drains: int) -> None:
        """Wait until on_drain was called after the send that saw drains calls."""
        loop = self.handler.loop
        assert loop is not None
        while self.drains == drains and not self.gone:
            waiter = self.drain_waiter = loop.create_future()
            if self.drains != drains or self.gone:
                break
            try:
                await waiter
            finally:
                self.drain_waiter = None

    async def _send_handshake(self, message: Message) -> None:
        kind = message["type"]
        state = self.state
        request = self.request
        handler = self.handler
        if state == self.HANDSHAKE or state == self.CONNECTING:
            if kind == "websocket.accept":
                headers = message.get("headers") or None
                self.ws = request.accept_websocket(
                    message.get("subprotocol"),
                    headers,
                    on_message=self._on_message,
                    on_close=self._on_close,
                    on_drain=self._on_drain,
                    on_disconnect=self._on_disconnect,
                )
                self.state = self.OPEN
                if handler.access_log:
                    handler._log(request, self.client, 101)
                self._wake()  # a receive() waiting for the handshake's end
                return
            if kind == "websocket.close":
                self._refuse(403, None, b"")
                return
            if kind == "websocket.http.response.start":
                self.status = message["status"]
                self.headers = message.get("headers") or ()
                self.state = self.RESPONDING
                return
            raise RuntimeError(
                "expected ASGI message 'websocket.accept', 'websocket.close' or "
                f"'websocket.http.response.start', got {kind!r}"
            )
        if state == self.RESPONDING and kind == "websocket.http.response.body":
            body = message.get("body", b"")
            if body:
                self.body.append(body)
            if not message.get("more_body", False):
                self._refuse(self.status, self.headers, b"".join(self.body))
            return
        if state == self.REFUSED:
            raise _WebSocketClosed("the WebSocket handshake was refused")
        raise RuntimeError(f"unexpected ASGI message {kind!r} during a denial response")

    def _refuse(self, status: int, headers: Any, body: bytes) -> None:
        self.state = self.REFUSED
        self.request.reply(Response(body, status, headers, None))
        if self.handler.access_log:
            self.handler._log(self.request, self.client, status)
        self._wake()


class _Lifespan:
    """Runs the app's lifespan protocol on the loop."""

    def __init__(self, app: ASGIApp, mode: str, state: Dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self.supported = True
        self.queue: "asyncio.Queue[Message]" = asyncio.Queue()
        self.events: Dict[str, "asyncio.Future[Message]"] = {}
        self.task: Optional["asyncio.Task[None]"] = None
        self.error: Optional[BaseException] = None

    async def _receive(self) -> Message:
        return await self.queue.get()

    async def _send(self, message: Message) -> None:
        kind = message.get("type", "")
        phase = kind.split(".")[1] if kind.count(".") == 2 else ""
        fut = self.events.get(phase)
        if fut is None or not kind.startswith("lifespan."):
            raise RuntimeError(f"unexpected lifespan message {kind!r}")
        if not fut.done():
            fut.set_result(message)

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            self.error = exc
            startup = self.events.get("startup")
            if self.mode == "auto" and startup is not None and not startup.done():
                self.supported = False
                log.info(
                    "the ASGI app does not support lifespan (%s: %s); going on without it",
                    type(exc).__name__,
                    exc,
                )
            else:
                log.error("ASGI lifespan failed", exc_info=exc)
        finally:
            for fut in self.events.values():
                if not fut.done():
                    fut.set_result({"type": "lifespan.returned"})

    async def _phase(self, phase: str) -> None:
        loop = asyncio.get_running_loop()
        fut = self.events[phase] = loop.create_future()
        if phase == "startup":
            self.task = loop.create_task(self._main())
        await self.queue.put({"type": "lifespan." + phase})
        message = await fut
        kind = message["type"]
        if kind == f"lifespan.{phase}.complete":
            return
        if kind == f"lifespan.{phase}.failed":
            raise RuntimeError(f"ASGI lifespan {phase} failed: {message.get('message', '')}")
        # The app returned, or raised, without answering.
        if phase == "startup":
            if self.mode == "auto":
                self.supported = False
                return
            how = f"raised {self.error!r}" if self.error is not None else "returned"
            raise RuntimeError(f"ASGI lifespan startup: the app {how} without completing it")

    async def startup(self) -> None:
        await self._phase("startup")

    async def shutdown(self) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        await self._phase("shutdown")
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 5)
        except (asyncio.TimeoutError, Exception):
            pass


class ASGIHandler:
    """The engine handler that runs an ASGI 3 app on an asyncio loop.

    ``Server(handler)`` after ``handler.start()`` (which starts the loop and
    runs the lifespan startup), ``handler.close()`` after the server stopped;
    :class:`ASGIServer` does all of it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifespan: str = "auto",
        root_path: str = "",
        loop: Union[str, asyncio.AbstractEventLoop] = "auto",
        scheme: Optional[str] = None,
        access_log: bool = False,
        proxy_headers: bool = True,
        forwarded_allow_ips: Union[str, Iterable[str], None] = None,
        ws: str = "auto",
        ws_max_queue: int = 32,
        ring: str = "auto",
    ) -> None:
        if not callable(app):
            raise TypeError("app must be an ASGI callable app(scope, receive, send)")
        if asgi_version(app) == 2:  # double-callable: wrapped once, here
            app = asgi2_app(app)  # type: ignore[arg-type]
        if lifespan not in ("auto", "on", "off"):
            raise ValueError("lifespan must be 'auto', 'on' or 'off'")
        if ws not in ("auto", "none"):
            raise ValueError("ws must be 'auto' or 'none'")
        if ws_max_queue < 1:
            raise ValueError("ws_max_queue must be at least 1")
        if ring not in ("auto", "loop", "thread"):
            raise ValueError("ring must be 'auto', 'loop' or 'thread'")
        # Where the engine's ring runs (_pmu_drive): "loop", on the event loop's own
        # thread (one ring: threads=1); "thread", on ring threads of its own that hand
        # each batch to the loop; "auto", "loop" for one ring and a loop of our own.
        self.ring = ring
        self._engine: Any = None  # the driven engine, while the loop runs its ring
        self._ring_fd = -1
        self._ring_timer: Optional[asyncio.TimerHandle] = None
        self._step_soon = False
        # Request tasks are made as asyncio.Task(...) unless the loop has a task factory
        # (looked at when the server starts, after the lifespan startup).
        self._plain_tasks = True
        # Handshakes become websocket scopes (ws="none": http ones, as any request).
        self.websocket = ws == "auto" and _HAS_WEBSOCKET
        self.ws_max_queue = ws_max_queue
        self._ws_extensions: Dict[str, Any] = {"websocket.http.response": {}}
        # WebSocket connections with something for a waiting receive() or send();
        # the loop is woken once per engine batch for all of them.
        self._ws_ready: "collections.deque[_WebSocketCycle]" = collections.deque()
        self._ws_scheduled = False
        self.app = app
        self.lifespan_mode = lifespan
        self.root_path = root_path.rstrip("/")
        # scheme None: from the connection (https/wss over TLS).
        self.scheme = scheme or "http"
        self._scheme_fixed = scheme is not None
        self.access_log = access_log
        self.proxies = trusted_proxies(proxy_headers, forwarded_allow_ips)
        self.state: Dict[str, Any] = {}
        self._loop_kind = loop if isinstance(loop, str) else None
        self.loop: Optional[asyncio.AbstractEventLoop] = None if isinstance(loop, str) else loop
        self._own_loop = isinstance(loop, str)
        self._thread: Optional[threading.Thread] = None
        self._lifespan: Optional[_Lifespan] = None
        self._asgi = {"version": "3.0", "spec_version": "2.4"}
        # The constant part of every http scope, in scope order, for _asgi_scope
        # (which fills in the rest from the request, as scope() does).
        self._scope_base: Scope = {
            "type": "http",
            "asgi": self._asgi,
            "http_version": "1.1",
            "server": None,
            "client": None,
            "scheme": self.scheme,
            "method": "GET",
            "root_path": self.root_path,
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [],
            "extensions": {"http.response.pathsend": {}, "http.response.trailers": {}},
            "state": {},
        }
        # The same for a request on a TLS connection: scheme https unless one was given
        # (a trusted proxy's X-Forwarded-Proto still changes it after); the tls extension
        # is added to the scope _asgi_scope made (_tls_scope).
        self._scope_base_tls: Scope = dict(
            self._scope_base, scheme=self.scheme if self._scheme_fixed else "https"
        )
        # Called by _asgi_scope on a request with X-Forwarded-For/-Proto headers.
        self._forward = self._forward_scope if self.proxies is not None else None
        # Requests waiting for the loop; a drain is posted once per batch.
        self._queue: "collections.deque[Request]" = collections.deque()
        self._scheduled = False
        self._post: Optional[Callable[[Callable[[], None]], object]] = None  # call_soon_threadsafe
        # Request tasks running: each with its _Cycle when the task runs the app
        # itself (_drain), None when it runs handle().
        self._tasks: Dict["asyncio.Task[Any]", Optional[_Cycle]] = {}
        # Tasks just made (Python < 3.12), with their cycles, until _sweep looks at them.
        self._fresh: List[Tuple["asyncio.Task[Any]", _Cycle]] = []
        # _start and _sweep, or the same in C (_Starter), once start() ran.
        self._dispatch: Callable[[Request], None] = self._start
        self._sweeper: Callable[[int], None] = self._sweep
        self._root_task: Optional["asyncio.Task[Any]"] = None  # the loop thread's (start)
        self._stopped: Optional["asyncio.Future[None]"] = None  # ends it

    # -- the loop and lifespan ------------------------------------------------------

    def start(self) -> asyncio.AbstractEventLoop:
        """Start the loop thread (unless a running loop was given) and run the
        lifespan startup; returns the loop. Raises RuntimeError when the
        startup failed."""
        if self._own_loop and self._thread is None:
            loop = new_event_loop(self._loop_kind or "auto")
            ready = threading.Event()

            def main() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                # The loop runs one long-lived root task rather than run_forever():
                # anyio ties its worker threads (anyio.to_thread: Starlette's
                # FileResponse stat, FastAPI's sync endpoints) to the task that
                # run_until_complete runs, else to each request's own task, and then
                # starts a new thread for every request and ends it with the task.
                loop.run_until_complete(self._root())

            t = threading.Thread(target=main, name="pymongoose_uring-asgi", daemon=True)
            t.start()
            ready.wait()
            self.loop, self._thread = loop, t
        assert self.loop is not None
        self._post = self.loop.call_soon_threadsafe
        self._scheduled = False
        if self.lifespan_mode != "off":
            try:
                self._run(self._startup(), None)
            except BaseException:
                self.close()
                raise
        self._plain_tasks = self.loop.get_task_factory() is None
        # What starts a request's task on the loop: _start, or the same in C (the
        # handler's fields it reads, state among them, are set by now; before Python
        # 3.12 it runs each turn's apps in one Task, an ASGIBatch: binding/asgi.c).
        self._dispatch, self._sweeper = self._start, self._sweep
        if _Starter is not None and self._plain_tasks and _CycleBaseC is not _CycleBase:
            starter = _Starter(self, _Cycle, _Task, _TASK_NAME, _EAGER)
            self._dispatch, self._sweeper = starter, starter.sweep
        return self.loop

    async def _root(self) -> None:
        """The loop thread's root task: waits until close() ends it."""
        self._root_task = asyncio.current_task()
        self._stopped = asyncio.get_running_loop().create_future()
        await self._stopped

    def _stop_root(self) -> None:
        stopped = self._stopped
        if stopped is not None and not stopped.done():
            stopped.set_result(None)

    def _run(
        self,
        coro: Coroutine[Any, Any, _T],
        timeout: Optional[float],
        loop: Optional[asyncio.AbstractEventLoop] = None,
    ) -> _T:
        target = loop or self.loop
        assert target is not None  # started
        fut = asyncio.run_coroutine_threadsafe(coro, target)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    async def _startup(self) -> None:
        self.state = {}
        self._lifespan = _Lifespan(self.app, self.lifespan_mode, self.state)
        await self._lifespan.startup()

    async def _wait_tasks(self, timeout: Optional[float]) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        tasks += [t for t, _ in self._fresh if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def _shutdown_tasks(self) -> None:
        me = asyncio.current_task()
        tasks = [
            t
            for t in asyncio.all_tasks()
            if t is not me
            and t is not self._root_task
            and not t.done()
            and (self._lifespan is None or t is not self._lifespan.task)
        ]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self, timeout: Optional[float] = 30.0, tasks_timeout: Optional[float] = None) -> None:
        """Run the lifespan shutdown, then stop the loop thread (call it after
        the server stopped). Request tasks still running after their answer get
        ``tasks_timeout`` seconds (default: ``timeout``) before they are cancelled."""
        loop, lifespan = self.loop, self._lifespan
        if loop is None:
            return
        if self._tasks and loop.is_running():
            # Apps that go on after their answer (Starlette's BackgroundTasks, an
            # upload's files closed in a thread) finish first, as uvicorn waits
            # for its tasks at shutdown; those still running after `timeout`
            # are cancelled below.
            try:
                self._run(
                    self._wait_tasks(timeout if tasks_timeout is None else tasks_timeout),
                    None,
                    loop,
                )
            except Exception:
                log.exception("waiting for the ASGI tasks left failed")
        self._lifespan = None
        if lifespan is not None and loop.is_running():
            try:
                self._run(lifespan.shutdown(), timeout, loop)
            except Exception:
                log.exception("ASGI lifespan shutdown failed")
        self._post = None
        if not self._own_loop:
            return
        thread = self._thread
        self._thread = None
        self.loop = None
        if loop.is_running():
            try:
                self._run(self._shutdown_tasks(), 10, loop)
            except Exception:
                log.exception("could not cancel the ASGI tasks left")
            loop.call_soon_threadsafe(self._stop_root)
        if thread is not None:
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()

    # -- the ring on the loop's thread (ring="loop") -------------------------------------

    def _pmu_drive(self, engine: Any) -> bool:
        """Server.start()'s hook: with one ring, run it on the loop's thread
        (``engine.start_driven()`` there, its descriptor watched with add_reader,
        its timers with call_at), so that requests and answers cross no thread.
        False: the engine starts its own ring threads instead."""
        mode = self.ring
        if mode == "thread" or (mode == "auto" and not self._own_loop):
            return False
        threads = engine.config["threads"]
        if threads != 1:
            if mode == "loop":
                raise ValueError(
                    "ring='loop' runs the engine's one ring on the event loop's thread: "
                    "threads must be 1 (it is %d)" % threads
                )
            return False
        loop = self.loop
        assert loop is not None  # start() ran
        begun: "concurrent.futures.Future[None]" = concurrent.futures.Future()

        def begin() -> None:
            try:
                # Requests go straight to _dispatch (no __call__ in between).
                engine.start_driven(self._wake_step, self._dispatch)
            except BaseException as exc:
                begun.set_exception(exc)
                return
            try:
                self._engine, self._ring_fd = engine, engine.fileno()
                self._post = loop.call_soon  # requests now come on this very thread
                loop.add_reader(self._ring_fd, self._step)
                self._step()
            except BaseException as exc:
                self._undrive(engine)
                begun.set_exception(exc)
            else:
                begun.set_result(None)

        loop.call_soon_threadsafe(begin)
        begun.result()
        return True

    def _step(self) -> None:
        """One turn of the ring (the loop's thread): when its descriptor is readable,
        when a timer it asked for is due, and right after the tasks of a batch."""
        engine = self._engine
        if engine is None:
            return
        self._step_soon = False
        loop = self.loop
        assert loop is not None
        before = len(self._fresh)
        nxt = engine.step()
        made = len(self._fresh) - before
        if made:
            # After the first steps of the tasks this turn made (all its batches'),
            # queued behind them. (Inline, as in _drain: no call more per turn.)
            loop.call_soon(self._sweeper, made)
        if nxt is None:  # stopped, its last connection closed: the ring is gone
            self._undrive(None)
        elif nxt == 0:  # work left for another turn (capped pipelines, short SQEs)
            self._wake_step()
        elif nxt > 0:
            when = loop.time() + nxt / 1000.0
            timer = self._ring_timer
            if timer is None or timer.when() > when + 0.001:
                if timer is not None:
                    timer.cancel()
                self._ring_timer = loop.call_at(when, self._timer_step)

    def _wake_step(self) -> None:
        """A step soon (once until it runs): the engine's on_self_wake (an answer
        given on this thread between steps, a task's: the next step sends it, with no
        kernel wake-up), and a step that left work for the next."""
        if not self._step_soon and self._engine is not None:
            self._step_soon = True
            loop = self.loop
            assert loop is not None
            loop.call_soon(self._step)

    def _timer_step(self) -> None:
        self._ring_timer = None
        self._step()

    def _undrive(self, engine: Any) -> None:
        """Stop watching the ring; with `engine` (a start that failed half-way),
        stop it and run its steps to the end here."""
        loop = self.loop
        if self._ring_fd >= 0 and loop is not None:
            loop.remove_reader(self._ring_fd)
        self._ring_fd = -1
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None
        self._engine = None
        if engine is not None:
            engine.stop()
            while engine.step() is not None:
                time.sleep(0.001)

    # -- the batches ------------------------------------------------------------------

    def __call__(self, request: Request) -> None:
        """The engine handler (ring thread, GIL held): queue the request for the
        loop. The first request of a batch posts one drain to the loop; the
        loop cannot run before the ring releases the GIL at the batch's end,
        so that drain finds the whole batch. (With the ring on the loop's own
        thread, the engine calls _dispatch itself.)"""
        self._queue.append(request)
        if not self._scheduled:
            self._scheduled = True
            post = self._post
            if post is None:
                self._queue.pop()
                self._scheduled = False
                request.reply(Response(b"Service Unavailable", 503, _ERROR_HEADERS, None))
                return
            post(self._drain)

    def _wake_soon(self, cycle: _WebSocketCycle) -> None:
        """A ring thread (GIL held): wake cycle's waiting receive() or send() on the
        loop; one call_soon_threadsafe serves every connection of the batch."""
        self._ws_ready.append(cycle)
        if not self._ws_scheduled:
            self._ws_scheduled = True
            # At the batch's end: a wake-up posted now could let the loop take the
            # GIL mid-batch and need another for the rest.
            _native._pmu.after_batch(self._post_ws_wake)

    def _post_ws_wake(self) -> None:
        post = self._post
        if post is not None:
            try:
                post(self._ws_wake)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _ws_wake(self) -> None:
        self._ws_scheduled = False  # before waking: a cycle queued later posts again
        ready = self._ws_ready
        while ready:
            ready.popleft()._wake()

    def _drain(self) -> None:
        """On the loop: the queued requests' tasks. An http request's task runs
        the app's coroutine itself (no wrapper coroutine between the task and the
        app: each of its steps is one frame shorter); what handle() does after the
        app returns or raises, _finished does when the task is done. (The C
        starter, before Python 3.12: one Task for the drain's apps, an ASGIBatch.)"""
        self._scheduled = False  # before draining: a request queued later posts again
        loop = self.loop
        assert loop is not None
        # The answers the tasks give in their first step (all of them, for an app that
        # answers without waiting) wake the ring once, after the last: the ring then
        # sends them together, instead of waking (on this very CPU, mostly) for each.
        _hold_wakeups()
        before = len(self._fresh)
        try:
            queue, start = self._queue, self._dispatch
            while queue:
                start(queue.popleft())
        finally:
            loop.call_soon(_flush_wakeups)  # after the tasks' first steps (FIFO)
            made = len(self._fresh) - before
            if made:
                loop.call_soon(self._sweeper, made)

    def _start(self, request: Request) -> None:
        """On the loop: the task of one request (its first step runs here on Python
        3.12+, else in a later callback of this loop turn)."""
        loop = self.loop
        assert loop is not None  # started
        if _asgi_scope is None or (self.websocket and request.websocket):
            task = loop.create_task(self.handle(request))
            self._tasks[task] = None
            task.add_done_callback(self._finished)
            return
        cycle = _Cycle(request, self)
        try:
            if request.scheme == "https":
                scope = self._tls_scope(request)
            else:
                scope = _asgi_scope(request, self._scope_base, self.state, self._forward)
            cycle.client = scope["client"]  # for the access log: behind a proxy, its client
            coro = self.app(scope, cycle.receive, cycle.send)
            try:
                if self._plain_tasks:
                    # The Task made here, named: uvloop's create_task is a Python-level
                    # call more, and Python 3.11 formats a "Task-N" name for each.
                    if _EAGER:
                        task = _Task(coro, loop=loop, name=_TASK_NAME, eager_start=True)  # type: ignore[arg-type,call-arg]
                    else:
                        task = _Task(coro, loop=loop, name=_TASK_NAME)  # type: ignore[arg-type]
                else:  # the app set a task factory: its tasks
                    task = loop.create_task(coro)  # type: ignore[arg-type]
            except TypeError:  # an awaitable that is not a coroutine
                task = loop.create_task(self._await(coro))
        except Exception as exc:
            self._failed(request, cycle, exc)
            return
        if _EAGER:
            if task.done():  # its first step, in the constructor, was its last
                self._ended(task, cycle)
            else:
                self._tasks[task] = cycle
                task.add_done_callback(self._finished)
        else:
            # Looked at once the tasks have taken their first step (_sweep): queued
            # at the end of the ring's turn (with the ring on this thread), or by
            # _drain after its last task.
            self._fresh.append((task, cycle))
        # An eager first step that raised left a traceback whose app frame has this
        # frame as its f_back, kept with the locals it has when it returns: without
        # these, task -> exception -> traceback -> frames -> task would be a cycle that
        # keeps the request until the garbage collector runs.
        del task, coro, scope, cycle, request

    @staticmethod
    async def _await(awaitable: Any) -> None:
        await awaitable

    def _finished(self, task: "asyncio.Task[Any]") -> None:
        """A request task's done callback: for a task that ran the app itself,
        what handle() does after the app."""
        cycle = self._tasks.pop(task, None)
        if cycle is not None:
            self._ended(task, cycle)

    def _sweep(self, count: int) -> None:
        """After the first steps of the `count` oldest tasks _start made (a callback
        queued behind them, by the ring's turn or the drain that made them; a later
        turn's tasks may be in the list already, not yet stepped): those already
        done end here, the others get the done callback. A done callback costs a loop
        callback and a dict entry per request (0.7-1.0 µs a request in-process here);
        most apps answer in their first step."""
        fresh = self._fresh[:count]
        del self._fresh[:count]
        tasks, finished, ended = self._tasks, self._finished, self._ended
        for task, cycle in fresh:
            if task.done():
                if cycle.done and not task.cancelled() and task.exception() is None:
                    continue  # answered, and returned: nothing more to do
                ended(task, cycle)
            else:
                tasks[task] = cycle
                task.add_done_callback(finished)

    def _ended(self, task: "asyncio.Task[Any]", cycle: _Cycle) -> None:
        """A request task is done: what handle() does after the app."""
        if task.cancelled():
            self._failed(cycle.request, cycle, asyncio.CancelledError())
            return
        exc = task.exception()
        if exc is not None:
            self._failed(cycle.request, cycle, exc)
            return
        if not cycle.done:
            self._unfinished(cycle.request, cycle)

    # -- one request ----------------------------------------------------------------

    def scope(self, request: Request) -> Scope:
        """The ASGI scope of a request."""
        headers = request.raw_headers  # built in C: lower-cased names, bytes
        server: Union[Tuple[str, int], Tuple[str, None], str, None] = request.server
        if type(server) is str:
            server = (server, None)
        client = request.client
        scheme = self.scheme
        tls = request.scheme == "https"
        if tls and not self._scheme_fixed:
            scheme = "https"
        proxies = self.proxies
        if proxies is not None and proxies.trusts(client):
            client, scheme = self._forwarded(headers, client, scheme)
        scope: Scope = {
            "type": "http",
            "asgi": self._asgi,
            "http_version": request.http_version,
            "server": server,
            "client": client,
            "scheme": scheme,
            "method": request.method,
            "root_path": self.root_path,
            "path": request.path,
            "raw_path": request.raw_path.encode("utf-8", "surrogateescape"),
            "query_string": request.query_string.encode("utf-8", "surrogateescape"),
            "headers": headers,
            "extensions": {"http.response.pathsend": {}, "http.response.trailers": {}},
            # Always there, a shallow copy per request, as uvicorn gives it (middleware
            # may write to scope["state"] whether or not the lifespan filled it).
            "state": self.state.copy(),
        }
        if tls:
            scope["extensions"]["tls"] = request._asgi_tls()
        return scope

    def _tls_scope(self, request: Request) -> Scope:
        """The C scope (_asgi_scope) of a request on a TLS connection: scheme https
        (unless given), and the ASGI tls extension."""
        scope: Scope = _asgi_scope(request, self._scope_base_tls, self.state, self._forward)
        scope["extensions"]["tls"] = request._asgi_tls()
        return scope

    def _forward_scope(self, scope: Scope) -> None:
        """A scope's client and scheme from a trusted proxy's X-Forwarded-* headers
        (_asgi_scope calls it when the request has such headers)."""
        proxies = self.proxies
        client = scope["client"]
        if proxies is not None and proxies.trusts(client):
            scope["client"], scope["scheme"] = self._forwarded(
                scope["headers"], client, scope["scheme"]
            )

    def _forwarded(
        self, headers: List[Tuple[bytes, bytes]], client: _Client, scheme: str
    ) -> Tuple[_Client, str]:
        """Client and scheme from a trusted proxy's X-Forwarded-* headers."""
        proxies = self.proxies
        assert proxies is not None  # only called when the peer is a trusted proxy
        forwarded_for = forwarded_proto = None
        for name, value in headers:
            if name[:12] == b"x-forwarded-":
                if name == b"x-forwarded-for":
                    forwarded_for = (
                        value if forwarded_for is None else (forwarded_for + b"," + value)
                    )
                elif name == b"x-forwarded-proto":
                    forwarded_proto = value
        if forwarded_for is not None:
            client = proxies.client(forwarded_for.decode("latin-1"), client)
        if forwarded_proto is not None:
            scheme = proxies.scheme(forwarded_proto.decode("latin-1"), scheme)
        return client, scheme

    def websocket_scope(self, request: Request) -> Scope:
        """The ASGI scope of a WebSocket handshake."""
        headers = request.raw_headers
        server: Union[Tuple[str, int], Tuple[str, None], str, None] = request.server
        if type(server) is str:
            server = (server, None)
        client = request.client
        scheme = self.scheme
        tls = request.scheme == "https"
        if tls and not self._scheme_fixed:
            scheme = "https"
        proxies = self.proxies
        if proxies is not None and proxies.trusts(client):
            client, scheme = self._forwarded(headers, client, scheme)
        subprotocols = []
        for name, value in headers:
            if name == b"sec-websocket-protocol":
                for item in value.split(b","):
                    item = item.strip()
                    if item:
                        subprotocols.append(item.decode("latin-1"))
        scope = {
            "type": "websocket",
            "asgi": self._asgi,
            "http_version": request.http_version,
            "server": server,
            "client": client,
            "scheme": "wss" if scheme in ("https", "wss") else "ws",
            "root_path": self.root_path,
            "path": request.path,
            "raw_path": request.raw_path.encode("utf-8", "surrogateescape"),
            "query_string": request.query_string.encode("utf-8", "surrogateescape"),
            "headers": headers,
            "subprotocols": subprotocols,
            "extensions": self._ws_extensions,
            "state": self.state.copy(),
        }
        if tls:
            scope["extensions"] = dict(self._ws_extensions, tls=request._asgi_tls())
        return scope

    async def handle_websocket(self, request: Request) -> None:
        """Run the app for one WebSocket handshake, and the connection if accepted."""
        cycle = _WebSocketCycle(request, self)
        try:
            scope = self.websocket_scope(request)
            cycle.client = scope["client"]
            await self.app(scope, cycle.receive, cycle.send)
        except BaseException as exc:
            cycle.done = True
            self._websocket_failed(request, cycle, exc)
            if not isinstance(exc, Exception):
                raise
            return
        cycle.done = True
        ws = cycle.ws
        if ws is not None:
            if cycle.paused:  # the close handshake needs the peer's close frame read
                cycle.paused = False
                ws.resume_reading()
            ws.close(1000, "")  # nothing when the app (or the peer) closed already
            return
        if cycle.state != cycle.REFUSED:
            log.error(
                "the ASGI app returned without accepting or refusing the WebSocket "
                "handshake; sent 500 for %s",
                request.target,
            )
            cycle._refuse(500, _ERROR_HEADERS, _ERROR_BODY)

    def _websocket_failed(
        self, request: Request, cycle: _WebSocketCycle, exc: BaseException
    ) -> None:
        ws = cycle.ws
        if isinstance(exc, _WebSocketClosed) and (ws is None or ws.closed or cycle.told):
            pass  # our own "the connection is closed", let through by the app (spec 2.4)
        elif isinstance(exc, asyncio.CancelledError):
            log.warning("ASGI WebSocket task cancelled: %s", request.target)
        else:
            log.error("the ASGI app raised; WebSocket %s", request.target, exc_info=exc)
        try:
            if ws is not None:
                if cycle.paused:
                    cycle.paused = False
                    ws.resume_reading()
                code = 1012 if isinstance(exc, asyncio.CancelledError) else 1011
                ws.close(code, "")
            elif cycle.state != cycle.REFUSED and not request.answered:
                cycle._refuse(500, _ERROR_HEADERS, _ERROR_BODY)
        except Exception:
            log.exception("could not close after the ASGI app failed")

    async def handle(self, request: Request) -> None:
        """The engine handler: run the app for one request (on the loop)."""
        if self.websocket and request.websocket:
            return await self.handle_websocket(request)
        cycle = _Cycle(request, self)
        try:
            if _asgi_scope is not None:  # self.scope(request), in C
                if request.scheme == "https":
                    scope = self._tls_scope(request)
                else:
                    scope = _asgi_scope(request, self._scope_base, self.state, self._forward)
            else:
                scope = self.scope(request)
            cycle.client = scope["client"]  # for the access log: behind a proxy, its client
            await self.app(scope, cycle.receive, cycle.send)
        except BaseException as exc:
            self._failed(request, cycle, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not cycle.done:
            self._unfinished(request, cycle)

    def _unfinished(self, request: Request, cycle: _Cycle) -> None:
        """The app returned without completing its answer: say so, and end it."""
        if cycle.streaming:
            log.error(
                "the ASGI app returned without finishing its streamed response; "
                "closed the connection without completing it: %s %s",
                request.method,
                request.target,
            )
            request.abort()
            cycle.done = True
        else:
            log.error(
                "the ASGI app returned without %s; sent 500 for %s %s",
                "a body" if cycle.started else "a response",
                request.method,
                request.target,
            )
            cycle.done = True
            if not request.answered:
                request.reply(Response(_ERROR_BODY, 500, _ERROR_HEADERS, None))
        cycle._wake()

    def _answered(self, request: Request, cycle: _Cycle, body: bytes) -> None:
        declared = declared_length(cycle.headers)
        if declared is not None and declared != len(body):
            status = cycle.status
            if status != 204 and status != 304 and request.method != "HEAD":
                # Sent under the length the app declared, as the app said: the
                # engine closes the connection after a shorter body (the client
                # sees it incomplete) or cuts a longer one off at the length.
                length_mismatch("ASGI", request.method, request.target, len(body), declared)
                request.start(status, cycle.headers)
                if body:
                    request.write(body, False)
                request.end()
                if self.access_log:
                    self._log(request, cycle.client, status, cycle.t0)
                return
        request.reply(Response(body, cycle.status, cycle.headers, None))
        if self.access_log:
            self._log(request, cycle.client, cycle.status, cycle.t0)

    def _log(self, request: Request, client: _Client, status: int, t0: float = 0.0) -> None:
        log_access(
            client,
            request.method,
            request.target,
            request.http_version,
            status,
            None,
            duration=_clock() - t0 if t0 else None,
        )

    def _failed(self, request: Request, cycle: _Cycle, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            log.warning("ASGI request task cancelled: %s %s", request.method, request.target)
        elif isinstance(exc, ConnectionError) and (cycle.gone or cycle.done):
            return  # the client left; nothing to answer
        else:
            log.error("the ASGI app raised; %s %s", request.method, request.target, exc_info=exc)
        cycle.done = True
        try:
            if cycle.streaming:
                request.abort()  # the head is out: the client must see the body fail
            elif not request.answered:
                status = 503 if isinstance(exc, asyncio.CancelledError) else 500
                request.reply(
                    Response(
                        _ERROR_BODY if status == 500 else b"Service Unavailable",
                        status,
                        _ERROR_HEADERS,
                        None,
                    )
                )
        except Exception:
            log.exception("could not answer after the ASGI app failed")
        cycle._wake()


class ASGIServer(AdapterServer):
    """A :class:`Server` running an ASGI 3 app (or an ASGI 2 double-callable one,
    detected and wrapped by :func:`asgi2_app`) on its own event loop thread.

    ``ASGIServer(app, host, port, lifespan="auto", root_path="", loop="auto",
    access_log=False, ws="auto", ws_max_queue=32, **server_options)``: ``loop``
    is ``"auto"`` (uvloop when installed), ``"uvloop"``, ``"asyncio"`` or a
    running loop of yours; ``ws="none"`` hands WebSocket handshakes to the app as
    http requests; ``ws_max_queue`` is how many received messages wait for the app
    before the connection is no longer read; the server options are
    :class:`Server`'s (``ws_max_message``, ``ws_ping_interval_ms``... for WebSocket). Lifespan startup runs in
    ``start()``/``run()`` before the server accepts; shutdown after it stops.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        lifespan: str = "auto",
        root_path: str = "",
        loop: Union[str, asyncio.AbstractEventLoop] = "auto",
        scheme: Optional[str] = None,
        access_log: bool = False,
        proxy_headers: bool = True,
        forwarded_allow_ips: Union[str, Iterable[str], None] = None,
        ws: str = "auto",
        ws_max_queue: int = 32,
        ring: str = "auto",
        **server_options: Any,
    ) -> None:
        self.handler = ASGIHandler(
            app,
            lifespan=lifespan,
            root_path=root_path,
            loop=loop,
            scheme=scheme,
            access_log=access_log,
            proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips,
            ws=ws,
            ws_max_queue=ws_max_queue,
            ring=ring,
        )
        super().__init__(self.handler, host, port, server_options)

    def _before_start(self) -> None:
        self.handler.start()

    def _after_stop(self, grace: Optional[float] = None) -> None:
        self.handler.close(tasks_timeout=grace)

    @property
    def state(self) -> Dict[str, Any]:
        """What the lifespan startup stored in ``scope["state"]``."""
        return self.handler.state


def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve an ASGI app until SIGINT or SIGTERM (see :class:`ASGIServer`)."""
    ASGIServer(app, host, port, **options).run()
