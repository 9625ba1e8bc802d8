"""The native WebSocket API: what ``@app.websocket(path)`` handlers receive.

Two forms of handler, chosen by how it is defined:

- ``def handler(ws)`` runs on the engine thread with a :class:`WebSocketRequest`,
  the pending handshake. It reads the path, headers, query and offered
  subprotocols, then ``accept()``s (which returns the binding's
  ``_pmu.WebSocket``, whose ``on_message`` and other callbacks it sets: each
  message then costs one call from C, with no layer in between) or
  ``reject()``s. Returning without either answers 403.
- ``async def handler(ws)`` runs on the server's asyncio loop with an
  :class:`AsyncWebSocket`: ``await ws.accept()``, ``async for message in ws``,
  ``await ws.receive()``, ``await ws.send(data)``, ``await ws.close()``.
  Messages of one engine batch reach the loop in one ``call_soon_threadsafe``
  (an inbox per loop, below); at most ``max_queue`` messages wait unread
  before the connection stops being read (TCP backpressure on the client).

The binding's ``_pmu.WebSocket`` is the connection itself in both forms:
``send()`` works on it from any thread, and :func:`broadcast` frames one
message once for many of them.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import weakref
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
    Iterable,
    List,
    Optional,
    Tuple,
    Union,
)

from . import _native
from ._datastructures import Headers, QueryParams
from ._types import HeadersLike

if TYPE_CHECKING:
    from ._pmu import Request, WebSocket

__all__ = [
    "AsyncWebSocket",
    "WebSocketClosed",
    "WebSocketDisconnect",
    "WebSocketRequest",
    "broadcast",
]

log = logging.getLogger("pymongoose_uring")

Message = Union[str, bytes]

if _native._pmu is not None:
    WebSocketClosed = _native._pmu.WebSocketClosed
else:  # pragma: no cover - extension missing

    class WebSocketClosed(OSError):  # type: ignore[no-redef]
        """The WebSocket is closing or closed: the message was not sent."""


class WebSocketDisconnect(Exception):
    """The peer closed the WebSocket (``code`` as it sent it, 1005 when it sent
    none, 1006 when the connection ended without a close frame)."""

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"WebSocket closed with {self.code}" + (f": {self.reason}" if self.reason else "")


def broadcast(websockets: Iterable[Any], data: Union[bytes, bytearray, memoryview, str]) -> int:
    """Send one message to many WebSockets, from any thread or task: framed once
    (str as TEXT, bytes-like as BINARY) and queued on each open one without a copy
    per connection. Takes ``_pmu.WebSocket`` or :class:`AsyncWebSocket` objects;
    returns how many took it (closed ones are skipped)."""
    return int(_native._pmu.broadcast((_raw(w) for w in websockets), data))


def _raw(ws: Any) -> Any:
    return ws.websocket if isinstance(ws, AsyncWebSocket) else ws


def _offered(request: Request) -> List[str]:
    return [
        p.strip()
        for value in request.headers.getall("sec-websocket-protocol")
        for p in value.split(",")
        if p.strip()
    ]


class _Handshake:
    """What both forms read of the handshake request before accepting."""

    __slots__ = ("request", "_subprotocols")

    def __init__(self, request: Request) -> None:
        self.request = request
        self._subprotocols: Optional[List[str]] = None

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def raw_path(self) -> str:
        return self.request.raw_path

    @property
    def query_string(self) -> str:
        return self.request.query_string

    @property
    def query(self) -> QueryParams:
        return self.request.query

    @property
    def headers(self) -> Headers:
        return self.request.headers

    @property
    def params(self) -> Dict[str, Any]:
        return self.request.params

    @property
    def client(self) -> Optional[Tuple[str, int]]:
        return self.request.client

    @property
    def server(self) -> Union[Tuple[str, int], str, None]:
        return self.request.server

    @property
    def subprotocols(self) -> List[str]:
        """The subprotocols the client offered, in its order."""
        if self._subprotocols is None:
            self._subprotocols = _offered(self.request)
        return list(self._subprotocols)

    def reject(
        self,
        status: int = 403,
        body: Union[bytes, str] = b"",
        headers: HeadersLike = None,
    ) -> None:
        """Refuse the handshake with an ordinary HTTP response (the connection
        then closes). RuntimeError once accepted or answered."""
        if self.request.answered:
            raise RuntimeError("the handshake was already accepted or answered")
        self.request.reply(body, status, headers)


class WebSocketRequest(_Handshake):
    """A pending WebSocket handshake, given to a sync ``@app.websocket``
    handler on the engine thread."""

    __slots__ = ("websocket",)

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self.websocket: Optional[WebSocket] = None

    def accept(
        self,
        subprotocol: Optional[str] = None,
        headers: HeadersLike = None,
        **callbacks: Any,
    ) -> WebSocket:
        """Accept: the 101 goes out with ``subprotocol`` and ``headers``.
        Returns the connection (``_pmu.WebSocket``); set its ``on_message``,
        ``on_close``, ``on_disconnect``... now or pass them here."""
        ws = self.request.accept_websocket(subprotocol, headers, **callbacks)
        self.websocket = ws
        return ws


class _Done:
    """An awaitable that is already done, so that ``ws.accept()`` works with or
    without ``await``, and ``await ws.send()`` costs no coroutine when nothing
    needs waiting for."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that yields nothing


_DONE = _Done()


class _Inbox:
    """Events from the engine threads to one asyncio loop. A ring thread (GIL
    held, in a batch) appends; the first append after a flush schedules the
    next flush at the batch's end, so the events of a batch, and of every batch
    that comes before the loop runs it, cost one ``call_soon_threadsafe``.
    (Posted at once, it would wake the loop while the batch runs, and the loop
    could take the GIL mid-batch and need another wake-up for the rest.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: List[Tuple["AsyncWebSocket", Any]] = []
        self.scheduled = False

    def post(self, target: "AsyncWebSocket", item: Any) -> None:
        self.items.append((target, item))
        if not self.scheduled:
            self.scheduled = True
            _native._pmu.after_batch(self._schedule)

    def _schedule(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.flush)
        except RuntimeError:  # the loop is closed: nobody will read these
            self.items.clear()

    def flush(self) -> None:
        # Cleared before the swap: an append between the two schedules a flush
        # of its own instead of being stranded.
        self.scheduled = False
        items, self.items = self.items, []
        for target, item in items:
            target._arrive(item)


_inboxes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox]" = (
    weakref.WeakKeyDictionary()
)
_inboxes_lock = threading.Lock()


def _inbox_of(loop: asyncio.AbstractEventLoop) -> _Inbox:
    try:
        return _inboxes[loop]
    except KeyError:
        pass
    except TypeError:  # a loop without weak references (uvloop): one inbox per socket
        return _Inbox(loop)
    with _inboxes_lock:
        inbox = _inboxes.get(loop)
        if inbox is None:
            inbox = _inboxes[loop] = _Inbox(loop)
        return inbox


class _Closed:
    """The end of the message stream: the peer's close frame, or the
    connection gone."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


_DRAIN = object()
_EMPTY = object()


class AsyncWebSocket(_Handshake):
    """A WebSocket for ``async def`` handlers, on the server's asyncio loop.

    Before accepting: the handshake's ``path``, ``headers``, ``query``,
    ``params``, ``subprotocols``, ``client``; ``reject()``. After: ``receive()``
    and ``async for``, ``send()``, ``close()``; ``websocket`` is the binding's
    connection (``send()`` on it works from any thread)."""

    __slots__ = (
        "websocket",
        "max_queue",
        "_loop",
        "_inbox",
        "_messages",
        "_waiter",
        "_drain_waiters",
        "_paused",
        "_pause_lock",
    )

    def __init__(self, request: Request, max_queue: int = 32) -> None:
        super().__init__(request)
        self.websocket: Optional[WebSocket] = None
        self.max_queue = max(1, max_queue)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._inbox: Optional[_Inbox] = None
        self._messages: Deque[Union[Message, _Closed]] = collections.deque()
        self._waiter: Optional["asyncio.Future[None]"] = None
        self._drain_waiters: List["asyncio.Future[None]"] = []
        self._paused = False
        self._pause_lock = threading.Lock()

    # -- accepting ------------------------------------------------------------

    def accept(self, subprotocol: Optional[str] = None, headers: HeadersLike = None) -> _Done:
        """Accept the handshake (``await ws.accept()``, or without ``await``):
        the 101 goes out with ``subprotocol`` and ``headers``. Call it on the
        loop the handler runs on."""
        if self.websocket is not None:
            raise RuntimeError("the WebSocket was already accepted")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._inbox = _inbox_of(loop)
        # The callbacks are given to the accept itself: the engine thread may
        # deliver the first message before this call returns.
        self.websocket = self.request.accept_websocket(
            subprotocol,
            headers,
            on_message=self._on_message,
            on_close=self._on_close,
            on_drain=self._on_drain,
            on_disconnect=self._on_disconnect,
        )
        return _DONE

    @property
    def accepted(self) -> bool:
        return self.websocket is not None

    @property
    def subprotocol(self) -> Optional[str]:
        return self.websocket.subprotocol if self.websocket is not None else None

    @property
    def extensions(self) -> str:
        return self.websocket.extensions if self.websocket is not None else ""

    # -- the engine thread's side ---------------------------------------------
    #
    # Messages go straight into the deque (its append and popleft are atomic);
    # the loop is woken only when receive() waits, through the inbox, so a
    # batch of messages costs one wake-up at most. Under the GIL each step
    # below is seen in order by the other thread: the loop stores its waiter
    # and then looks at the deque again; this side appends and then looks at
    # the waiter; one of the two sees the other.

    def _on_message(self, ws: WebSocket, data: Message) -> None:
        messages = self._messages
        messages.append(data)
        if self._waiter is not None:
            self._wake()
        if len(messages) >= self.max_queue and not self._paused:
            with self._pause_lock:
                # Again under the lock: the loop may have drained the queue
                # since (and it resumes under this lock before it waits).
                if not self._paused and len(messages) >= self.max_queue:
                    self._paused = True
                    ws.pause_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            inbox = self._inbox
            assert inbox is not None
            inbox.post(self, waiter)

    def _on_close(self, ws: WebSocket, code: int, reason: str) -> None:
        self._messages.append(_Closed(code, reason))
        self._wake()

    def _on_drain(self, ws: WebSocket) -> None:
        inbox = self._inbox
        assert inbox is not None
        inbox.post(self, _DRAIN)

    def _on_disconnect(self, ws: WebSocket, code: int) -> None:
        # After a close frame (on_close) this adds nothing for receive(); a
        # connection that ended without one ends the stream here.
        self._messages.append(_Closed(code, ""))
        self._wake()
        self._on_drain(ws)  # a sender waiting for a drain would wait forever

    # -- the loop's side ------------------------------------------------------

    def _arrive(self, item: Any) -> None:
        if item is _DRAIN:
            waiters, self._drain_waiters = self._drain_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        elif not item.done():  # receive()'s waiter
            item.set_result(None)

    def _need_accepted(self) -> "WebSocket":
        ws = self.websocket
        if ws is None:
            raise RuntimeError("accept() the WebSocket first")
        return ws

    def _next(self) -> Any:
        """The next message if one is there, else _EMPTY; raises
        WebSocketDisconnect at the end of the stream."""
        messages = self._messages
        if not messages:
            return _EMPTY
        message = messages[0]
        if isinstance(message, _Closed):
            # Left in place: every later receive() raises the same.
            raise WebSocketDisconnect(message.code, message.reason)
        messages.popleft()
        if self._paused and len(messages) <= self.max_queue // 2:
            self._resume()
        return message

    async def _wait(self) -> None:
        """Wait for the next event; the queue is empty."""
        if self._paused or self._pause_lock.locked():
            self._resume()  # never wait with reading paused
        loop = self._loop
        assert loop is not None
        waiter = self._waiter = loop.create_future()
        if self._messages:  # one came in between
            self._waiter = None
            return
        try:
            await waiter
        finally:
            self._waiter = None

    async def receive(self) -> Message:
        """The next message: str (TEXT) or bytes (BINARY). Raises
        :class:`WebSocketDisconnect` once the peer has closed."""
        self._need_accepted()
        while True:
            message = self._next()
            if message is not _EMPTY:
                return message  # type: ignore[no-any-return]
            await self._wait()

    def __aiter__(self) -> "AsyncWebSocket":
        self._need_accepted()
        return self

    async def __anext__(self) -> Message:
        """``async for message in ws``: ends when the peer has closed."""
        messages = self._messages
        while True:
            if messages:  # the common case, inline: a message is there
                message = messages[0]
                if isinstance(message, _Closed):
                    raise StopAsyncIteration
                messages.popleft()
                if self._paused and len(messages) <= self.max_queue // 2:
                    self._resume()
                return message
            await self._wait()

    def _resume(self) -> None:
        with self._pause_lock:
            if self._paused:
                self._paused = False
                ws = self.websocket
                if ws is not None:
                    ws.resume_reading()

    async def receive_text(self) -> str:
        """The next message, which must be TEXT (TypeError otherwise)."""
        message = await self.receive()
        if not isinstance(message, str):
            raise TypeError("expected a TEXT message, got BINARY")
        return message

    async def receive_bytes(self) -> bytes:
        """The next message, which must be BINARY (TypeError otherwise)."""
        message = await self.receive()
        if not isinstance(message, bytes):
            raise TypeError("expected a BINARY message, got TEXT")
        return message

    def send(self, data: Union[bytes, bytearray, memoryview, str]) -> Awaitable[None]:
        """``await ws.send(data)``: queue a message (str as TEXT, bytes-like as
        BINARY), at once; the await waits while more than ws_send_high_water
        bytes are unsent. Raises WebSocketClosed (an OSError) once the
        connection is closing or closed."""
        ws = self._need_accepted()
        if ws.send(data) or ws.closed:
            return _DONE
        # Over the high-water mark: on_drain comes when the unsent bytes fall to
        # half of it (or the end of the connection wakes us).
        loop = self._loop
        assert loop is not None
        waiter: "asyncio.Future[None]" = loop.create_future()
        self._drain_waiters.append(waiter)
        return waiter

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Begin the closing handshake (after what is queued); nothing when
        already closing. Before accept, rejects the handshake with 403."""
        ws = self.websocket
        if ws is None:
            if not self.request.answered:
                self.reject(403)
            return
        ws.close(code, reason)

    @property
    def closed(self) -> bool:
        ws = self.websocket
        return ws is None or ws.closed

    @property
    def close_code(self) -> Optional[int]:
        """The peer's close code once known (1006: gone without one)."""
        return self.websocket.close_code if self.websocket is not None else None

    def __repr__(self) -> str:
        state = "pending" if self.websocket is None else repr(self.websocket)
        return f"<AsyncWebSocket {self.request.path} {state}>"


AsyncWebSocketHandler = Callable[[AsyncWebSocket], Awaitable[Any]]
SyncWebSocketHandler = Callable[[WebSocketRequest], Any]


async def _session(handler: AsyncWebSocketHandler, ws: AsyncWebSocket) -> None:
    """Run an async handler to its end: 403 if it neither accepted nor
    rejected, 500 if it raised before, close 1011 if it raised after accepting,
    close 1000 if it returned with the connection open (as uvicorn does)."""
    request = ws.request
    try:
        await handler(ws)
    except WebSocketDisconnect:
        pass
    except asyncio.CancelledError:
        if ws.websocket is not None:
            ws.websocket.close(1001)  # the server is stopping
        raise
    except Exception as exc:
        if isinstance(exc, WebSocketClosed) and ws.websocket is not None and ws.websocket.closed:
            return  # a send that lost the race with the peer's close: not the handler's fault
        log.exception(
            "WebSocket handler raised on %s; %s",
            request.path,
            "closed with 1011" if ws.websocket is not None else "sent 500",
        )
        if ws.websocket is not None:
            ws.websocket.close(1011)
        elif not request.answered:
            request.reply("Internal Server Error", 500)
        return
    if ws.websocket is not None:
        ws.websocket.close(1000)
    elif not request.answered:
        request.reply("Forbidden", 403)


def make_route_handler(
    handler: Callable[..., Any], max_queue: Callable[[], int]
) -> Callable[[Request], Any]:
    """The engine-side handler of one ``@app.websocket`` route: a sync handler
    runs here, on the engine thread; an async one becomes a coroutine the
    engine hands to the asyncio bridge with the rest of its batch."""
    if inspect.iscoroutinefunction(handler):

        def run_async(request: Request) -> Any:
            if not request.websocket:
                return _bad_handshake(request)
            return _session(handler, AsyncWebSocket(request, max_queue()))

        return run_async

    def run_sync(request: Request) -> Any:
        if not request.websocket:
            return _bad_handshake(request)
        pending = WebSocketRequest(request)
        try:
            result = handler(pending)
        except Exception:
            if pending.websocket is None:
                raise  # the engine logs it and answers 500
            log.exception("WebSocket handler raised on %s; closed with 1011", request.path)
            pending.websocket.close(1011)
            return None
        if not request.answered:
            if result is not None:
                return result  # an ordinary response instead of the handshake
            request.reply("Forbidden", 403)
        return None

    return run_sync


def _bad_handshake(request: Request) -> Any:
    """A request to a WebSocket route that is not a valid handshake: 400 when
    it asks for the upgrade (a malformed handshake), else 404, as Starlette
    answers an HTTP request to a WebSocket-only route."""
    from ._native import Response

    upgrade = (request.header("upgrade") or "").lower()
    if "websocket" in upgrade:
        return Response.text("Bad Request: invalid WebSocket handshake", 400)
    return Response.text("Not Found", 404)
