"""Type stubs for pymongoose_uring._pmu, the C extension (the engine binding)."""

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypedDict,
    Union,
    final,
)

from ._datastructures import Headers, QueryParams
from ._types import AsyncBatch, HandlerResult as _HandlerResult, HeadersLike as _HeadersLike

ENGINE_VERSION: str
BATCH_BUCKETS: int
CONN_OPEN: int
CONN_DATA: int
CONN_READ: int
CONN_SENT: int
CONN_DRAIN: int
CONN_CLOSE: int

class Stats(TypedDict):
    """What Engine.stats() returns: every counter of include/pmu/pmu.h PMU_STATS_FIELDS
    (counters() says which are gauges); tests/python/test_knob_table.py checks this list."""

    connections_accepted: int
    connections_open: int
    connections_rejected: int
    accept_errors: int
    requests: int
    responses: int
    bytes_in: int
    bytes_out: int
    parse_errors: int
    timeouts: int
    enobufs: int
    short_sends: int
    sends: int
    send_zc: int
    recv_paused: int
    cq_overflows: int
    waits: int
    lingers: int
    wait_errors: int
    cqes: int
    batches: int
    slow_batches: int
    batch_hist: List[int]
    deferred: int
    status_classes: Dict[str, int]
    responses_aborted: int
    bodies_spooled: int
    files_sent: int
    file_bytes_spliced: int
    file_bytes_read: int
    file_errors: int
    pipe_fallbacks: int
    file_reads_async: int
    body_buffer_bytes: int
    ws_open: int
    ws_accepted: int
    ws_messages_in: int
    ws_messages_out: int
    ws_bytes_in: int
    ws_bytes_out: int
    ws_frames_in: int
    ws_frames_out: int
    ws_pings_sent: int
    ws_closes: List[int]
    ws_deflate_in_wire: int
    ws_deflate_in_raw: int
    ws_deflate_out_raw: int
    ws_deflate_out_wire: int
    file_cache_hits: int
    file_cache_misses: int
    static_answers: int
    not_modified: int
    conn_events: int
    raw_bytes_in: int
    raw_bytes_out: int
    raw_sends: int
    tls_handshakes: int
    tls_resumed: int
    tls_handshake_errors: int
    tls_handshake_timeouts: int
    tls_handshakes_waiting: int
    tls_plain_http: int
    tls_ktls: int
    tls_close_notify: int

_Path = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_File = Union[_Path, int, _HasFileno]

class Error(OSError):
    """The engine refused: (errno, message naming the cause and the fix)."""

class UnavailableError(Error):
    """io_uring cannot be used here; the message says why and what to do."""

class ClientDisconnected(ConnectionError):
    """The client left before the request's body (or streamed answer) was complete."""

@final
class Request:
    """One HTTP request; attributes are built on first access."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str:
        """Path without the query, percent-decoded."""
    @property
    def raw_path(self) -> str:
        """Path without the query, as sent."""
    @property
    def target(self) -> str:
        """Request-target: path and '?query' (an absolute-form target in origin-form)."""
    @property
    def query_string(self) -> str: ...
    @property
    def query(self) -> QueryParams: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def raw_headers(self) -> List[Tuple[bytes, bytes]]:
        """[(name, value)] as bytes, names lower-cased, in the order received."""
    @property
    def body(self) -> bytes: ...
    @property
    def text(self) -> str: ...
    @property
    def http_version(self) -> str:
        """'1.1' or '1.0'."""
    @property
    def scheme(self) -> str:
        """'https' on a TLS connection, else 'http'."""
    @property
    def tls(self) -> Optional[Dict[str, Any]]:
        """None on a plain connection; else the TLS session: version ('TLSv1.3'),
        cipher, server_name (SNI), alpn, resumed, peer_subject (RFC 4514),
        peer_cert_chain (PEM, leaf first), version_number, cipher_id, server_cert
        (PEM), ktls (kernel TLS took it: the kernel encrypts its sends). Built on first
        access."""
    def _asgi_tls(self) -> Optional[Dict[str, Any]]:
        """The ASGI 'tls' extension of the connection (a new dict); None if plain."""
    @property
    def keep_alive(self) -> bool: ...
    @property
    def client(self) -> Optional[Tuple[str, int]]:
        """(host, port); None over a Unix socket."""
    @property
    def server(self) -> Union[Tuple[str, int], str, None]:
        """(host, port), or the Unix socket path."""
    params: Dict[str, Any]
    @property
    def thread(self) -> int: ...
    @property
    def conn_id(self) -> int: ...
    @property
    def answered(self) -> bool:
        """Whether a response was given, or a streamed one started."""
    @property
    def body_streaming(self) -> bool:
        """The body arrives in pieces: read() / read_async(); .body raises."""
    @property
    def disconnected(self) -> bool:
        """The client left while the request was unanswered (or its stream open)."""
    @property
    def connection(self) -> Optional["Connection"]:
        """The request's Connection; None without a connection_handler."""
    def header(self, name: str, default: Optional[str] = None) -> Optional[str]: ...
    def json(self) -> Any: ...
    def reply(
        self,
        response: _HandlerResult = b"",
        status: Optional[int] = None,
        headers: _HeadersLike = None,
    ) -> None:
        """Answer now or later, from any thread; RuntimeError if already answered
        or a streamed answer was started."""
    def reply_raw(self, data: Union[bytes, bytearray, memoryview, str]) -> None:
        """Answer with these bytes verbatim (status line, headers, framing: the
        caller's); the connection goes on as after any answer."""
    def read(self, size: Optional[int] = -1, timeout: Optional[float] = None) -> bytes:
        """Up to size bytes of the body (all when size < 0), b"" at its end; waits
        for a streamed body with the GIL released (TimeoutError after timeout);
        ClientDisconnected if the client left first. Not on an engine thread."""
    def read_async(self, size: Optional[int] = -1) -> "asyncio.Future[bytes]":
        """read() for code running in an asyncio event loop."""
    def _on_answer(self, fn: Optional[Callable[[int, Optional[int]], Any]]) -> None:
        """fn(status, length) once, when the request is answered (the answering
        thread, with the GIL): status as sent (0: the file rules decide it), length
        of the body or None. For the access log."""
    def add_disconnect_callback(self, fn: Callable[[], Any]) -> None:
        """fn() once, on an engine thread with the GIL, if the client leaves while
        the request is unanswered; at once if it already has."""
    def start(self, status: int, headers: _HeadersLike = None) -> None:
        """Begin a streamed answer (status 200..999, headers as for reply())."""
    def write(self, data: Union[bytes, bytearray, memoryview, str], wait: bool = True) -> bool:
        """Queue a piece; with wait, block while more than output_high_water is
        unsent. False once the client is gone."""
    def write_async(self, data: Union[bytes, bytearray, memoryview, str]) -> "asyncio.Future[bool]":
        """write() for asyncio code: the future is done once drained."""
    def end(self, trailers: _HeadersLike = None) -> None:
        """Finish the streamed answer; a second call does nothing. trailers go
        after the last chunk of a chunked answer (dropped when framed otherwise)."""
    def abort(self) -> None:
        """Cut the streamed answer short (it failed): what was written is sent,
        then the connection closes without completing the body."""
    def serve_static(self, mount: "StaticMount", path: Optional[str] = None) -> bool:
        """Answer from mount's directory by the static file rules (path: below the
        mount, decoded; None: the request's path minus the prefix). False only when
        a fallthrough mount has no such file: the request is then still unanswered."""
    def serve_file(
        self,
        path_or_fd: _File,
        *,
        content_type: Optional[str] = None,
        cache_control: Optional[str] = None,
        headers: _HeadersLike = None,
        status: int = 0,
    ) -> None:
        """Answer with one file (not confined) with ETag, 304/412, Range, HEAD; status
        0 or 200: those rules; another: the whole file with it. 404 when missing."""
    def sendfile(self, file: _File, offset: int = 0, count: Optional[int] = None) -> bool:
        """A file piece of the streamed answer (after start()): bytes [offset,
        offset+count) (count None: to the end), sent by the engine (splice or
        read+send); the descriptor is duplicated. False once the client is gone."""
    @property
    def websocket(self) -> bool:
        """A valid WebSocket opening handshake: accept_websocket() or answer it."""
    def accept_websocket(
        self,
        subprotocol: Optional[str] = None,
        headers: _HeadersLike = None,
        *,
        on_message: Optional[Callable[["WebSocket", Union[bytes, str]], Any]] = None,
        on_ping: Optional[Callable[["WebSocket", bytes], Any]] = None,
        on_pong: Optional[Callable[["WebSocket", bytes], Any]] = None,
        on_close: Optional[Callable[["WebSocket", int, str], Any]] = None,
        on_drain: Optional[Callable[["WebSocket"], Any]] = None,
        on_disconnect: Optional[Callable[["WebSocket", int], Any]] = None,
        user: Any = None,
    ) -> "WebSocket":
        """Accept the handshake (any thread); the request is then answered.
        RuntimeError if answered already or not a handshake; ValueError on a bad
        header or subprotocol. Callbacks given here are set before any event."""

@final
class WebSocket:
    """One open WebSocket connection (Request.accept_websocket()). Callbacks run
    on the engine thread with the GIL, once per batch of events; an exception in
    one is logged and closes the connection with 1011."""

    @property
    def path(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def query_string(self) -> str: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def raw_headers(self) -> List[Tuple[bytes, bytes]]: ...
    @property
    def client(self) -> Optional[Tuple[str, int]]: ...
    @property
    def server(self) -> Union[Tuple[str, int], str, None]: ...
    @property
    def http_version(self) -> str: ...
    @property
    def conn_id(self) -> int: ...
    @property
    def thread(self) -> int: ...
    @property
    def subprotocols(self) -> List[str]:
        """Offered by the client, in order."""
    @property
    def subprotocol(self) -> Optional[str]:
        """Chosen at accept."""
    @property
    def extensions(self) -> str:
        """The negotiated extension, "" if none."""
    on_message: Optional[Callable[["WebSocket", Union[bytes, str]], Any]]
    on_ping: Optional[Callable[["WebSocket", bytes], Any]]
    on_pong: Optional[Callable[["WebSocket", bytes], Any]]
    on_close: Optional[Callable[["WebSocket", int, str], Any]]
    on_drain: Optional[Callable[["WebSocket"], Any]]
    on_disconnect: Optional[Callable[["WebSocket", int], Any]]
    user: Any
    def send(self, data: Union[bytes, bytearray, memoryview, str]) -> bool:
        """Any thread; str -> TEXT, else BINARY. True under ws_send_high_water,
        False over it (on_drain follows); WebSocketClosed when closing/closed."""
    def ping(self, data: bytes = b"") -> None: ...
    def pong(self, data: bytes = b"") -> None: ...
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Begin the closing handshake; nothing when already closing."""
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    @property
    def unsent(self) -> int: ...
    @property
    def closed(self) -> bool:
        """Closing or gone."""
    @property
    def close_code(self) -> Optional[int]:
        """After on_close/on_disconnect."""
    @property
    def close_reason(self) -> str: ...

class WebSocketClosed(OSError):
    """The WebSocket is closing or closed: the message was not sent."""

def broadcast(
    websockets: Iterable[WebSocket], data: Union[bytes, bytearray, memoryview, str]
) -> int:
    """Frame once, queue on each open WebSocket; returns how many took it."""

def websockets_alive() -> int:
    """WebSocket objects not yet freed in this interpreter (open ones included)."""

@final
class Connection:
    """One accepted connection as connection_handler(conn, event, data) sees it:
    made at CONN_OPEN, the same object for every event and request.connection,
    closed after CONN_CLOSE. Methods work from any thread."""

    @property
    def id(self) -> int:
        """request.conn_id of its requests."""
    @property
    def thread(self) -> int: ...
    @property
    def peer(self) -> Optional[Tuple[str, int]]:
        """(host, port); None over a Unix socket."""
    @property
    def local(self) -> Union[Tuple[str, int], str, None]:
        """(host, port), or the Unix socket path."""
    @property
    def closed(self) -> bool:
        """Closing or closed."""
    @property
    def unsent(self) -> int: ...
    @property
    def close_error(self) -> Optional[int]:
        """CONN_CLOSE's err (0: orderly); None before."""
    @property
    def tls(self) -> Optional[Dict[str, Any]]:
        """The TLS session (request.tls without peer_cert_chain); None on a plain
        connection or once closed."""
    user: Any
    def send(self, data: Union[bytes, bytearray, memoryview, str]) -> bool:
        """Queue bytes (str as UTF-8) after everything queued; True when more than
        conn_send_high_water is unsent (CONN_DRAIN follows); ConnectionClosed when
        closing/closed or over conn_send_limit."""
    def close(self, now: bool = False) -> None:
        """After what is queued is sent, or at once with now; nothing if closing."""
    def pause_reading(self, pause: bool = True) -> None: ...
    def tls_use(self, certs: "TlsCerts") -> None:
        """ssl_cert_per_conn: the handshake goes on with certs; any thread.
        ConnectionClosed when closing/closed; RuntimeError when there is no
        certificate to give (not ssl_cert_per_conn, or answered already)."""
    def tls_decline(self) -> None:
        """ssl_cert_per_conn: refuse the connection (alert, CLOSE ECONNREFUSED)."""

@final
class TlsCerts:
    """A parsed certificate chain, key and client verification for
    Connection.tls_use (ValueError when the PEM texts cannot be used)."""

    def __init__(
        self,
        cert: bytes,
        key: Optional[bytes] = None,
        ca: Optional[bytes] = None,
        verify: int = 0,
    ) -> None: ...

class ConnectionClosed(OSError):
    """The connection is closing or closed: the data was not sent."""

ConnectionHandler = Callable[[Connection, int, Union[bytes, int, None]], Any]

def connections_alive() -> int:
    """Connection objects not yet freed in this interpreter (open ones included)."""

@final
class MgHttpMessage:
    """pymongoose's HttpMessage over a Request (binding/mgcompat.c): text is UTF-8
    with surrogateescape, as pymongoose decodes it."""

    def __init__(self, request: Request) -> None: ...
    @property
    def request(self) -> Request: ...
    @property
    def method(self) -> str: ...
    @property
    def uri(self) -> str:
        """The path as sent, without the query."""
    @property
    def query(self) -> str:
        """The query string as sent, without '?'."""
    @property
    def proto(self) -> str: ...
    @property
    def body_bytes(self) -> bytes: ...
    @property
    def body_text(self) -> str: ...
    def header(self, name: str, default: Optional[str] = None) -> Optional[str]: ...
    def headers(self) -> List[Tuple[str, str]]: ...
    def query_var(self, name: str) -> Optional[str]:
        """As Mongoose's mg_http_get_var: None when absent, empty or badly escaped."""
    def header_var(self, header_name: str, var_name: str) -> Optional[str]: ...
    def status(self) -> int:
        """As Mongoose's mg_http_status: atoi(uri), 0 for a request."""

class MgConnection:
    """The base of compat's Connection: the slots of its hot path and reply()."""

    userdata: Any
    _request: Optional[Request]
    _handler: Optional[Callable[..., Any]]
    _conn: Optional[Connection]
    _close_after: bool
    def reply(
        self,
        status_code: int,
        body: Union[bytes, bytearray, memoryview, str, None] = b"",
        headers: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """pymongoose's reply: answer _request (sent when the dispatcher's handler
        returns), else the bytes go raw on _conn."""

@final
class MgDispatcher:
    """A Server handler running pymongoose handlers: handler(conn, MG_EV_HTTP_HDRS, msg)
    (unless http_hdrs is False), then handler(conn, MG_EV_HTTP_MSG, msg), with conn = request.connection.user (else make_conn(request)); the handler is
    conn._handler, else .handler, else resolve(conn)."""

    handler: Optional[Callable[[Any, int, MgHttpMessage], Any]]
    http_hdrs: bool
    def __init__(
        self,
        resolve: Callable[[Any], Optional[Callable[[Any, int, MgHttpMessage], Any]]],
        make_conn: Optional[Callable[[Request], MgConnection]] = None,
        handler: Optional[Callable[[Any, int, MgHttpMessage], Any]] = None,
    ) -> None: ...
    @property
    def resolve(self) -> Callable[[Any], Any]: ...
    def __call__(self, request: Request) -> None: ...

class ASGICycle:
    """One ASGI request's receive() and send() (binding/asgi.c), the base of
    pymongoose_uring.asgi._Cycle: send() of http.response.start and of a whole body,
    receive() of a buffered body return an awaitable already done; anything else
    returns the subclass's _send(message) / _receive() coroutine."""

    request: Request
    handler: Any
    status: Any
    headers: Any
    trailers: Any
    waiter: Optional["asyncio.Future[None]"]
    client: Optional[Tuple[str, int]]
    sent: int
    t0: float
    started: bool
    streaming: bool
    done: bool
    body_done: bool
    gone: bool
    watching: bool
    def __init__(self, request: Request, handler: Any) -> None: ...
    def send(self, message: Dict[str, Any]) -> Awaitable[None]: ...
    def receive(self) -> Awaitable[Dict[str, Any]]: ...

class ASGIStarter:
    """ASGIHandler._start and _sweep in C (binding/asgi.c): called with a request, it
    makes its cycle, scope, the app's coroutine and the asyncio Task that runs it (an
    eager Task of its own on Python 3.12+; before, this turn's ASGIBatch and its Task);
    TLS requests and WebSocket handshakes go to handler._start. The handler's fields
    (app, loop, _scope_base, state, _forward, _fresh, _tasks, websocket, access_log) are
    read once, when it is made."""

    def __init__(
        self, handler: Any, cycle_type: type, task_type: type, name: str, eager: bool
    ) -> None: ...
    def __call__(self, request: Request) -> None: ...
    def sweep(self, count: int) -> None: ...
    def _batch_done(self, task: "asyncio.Task[Any]") -> None:
        """A batch Task's done callback (Python < 3.12): it leaves handler._tasks."""

class ASGIBatch:
    """The requests of one ring turn, run one after the other by one asyncio Task, each
    app in its own copy of the context (Python < 3.12; made by ASGIStarter only). An app
    that waits keeps the Task; the requests after it go on in a new batch and Task."""

    def send(self, value: Any) -> Any: ...
    def throw(self, exc: BaseException) -> Any: ...
    def close(self) -> None: ...
    def __await__(self) -> "ASGIBatch": ...

def asgi_scope(
    request: Request,
    base: Dict[str, Any],
    state: Dict[str, Any],
    forwarded: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """The ASGI http scope of request: base's items, the request's, a fresh
    extensions dict and a copy of state; forwarded(scope) when the request has
    X-Forwarded-For or X-Forwarded-Proto."""

class Response:
    """Status, headers and body. content_type defaults from the body's type."""

    status: int
    headers: _HeadersLike
    content_type: Optional[str]
    def __init__(
        self,
        body: Union[bytes, bytearray, memoryview, str, None] = b"",
        status: int = 200,
        headers: _HeadersLike = None,
        content_type: Optional[str] = ...,
    ) -> None: ...
    @property
    def body(self) -> bytes: ...
    @body.setter
    def body(self, value: Union[bytes, bytearray, memoryview, str, None]) -> None: ...
    @classmethod
    def json(cls, data: Any, status: int = 200, headers: _HeadersLike = None) -> "Response": ...
    @classmethod
    def text(cls, text: str, status: int = 200, headers: _HeadersLike = None) -> "Response": ...
    @classmethod
    def html(cls, html: str, status: int = 200, headers: _HeadersLike = None) -> "Response": ...
    @classmethod
    def redirect(
        cls, location: str, status: int = 307, headers: _HeadersLike = None
    ) -> "Response": ...
    @classmethod
    def file(
        cls,
        path: _Path,
        *,
        status: int = 200,
        headers: _HeadersLike = None,
        content_type: Optional[str] = None,
        cache_control: Optional[str] = None,
    ) -> "FileResponse": ...

@final
class FileResponse:
    """A handler's answer that is one file, sent by the engine (pmu_serve_file)
    with ETag, 304/412, Range, If-Range, HEAD; status other than 200: the whole
    file with it, no conditionals. 404 when the file is missing."""

    def __init__(
        self,
        path: _Path,
        *,
        status: int = 200,
        headers: _HeadersLike = None,
        content_type: Optional[str] = None,
        cache_control: Optional[str] = None,
    ) -> None: ...
    @property
    def path(self) -> _Path: ...
    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> _HeadersLike: ...
    @property
    def content_type(self) -> Optional[str]: ...
    @property
    def cache_control(self) -> Optional[str]: ...

@final
class StaticMount:
    """A directory served under a URL prefix with every rule of static files:
    by the engine itself (Engine(statics=[...])) or Request.serve_static()."""

    def __init__(
        self,
        prefix: str,
        root: _Path,
        *,
        index: Optional[str] = "index.html",
        dotfiles: bool = False,
        listing: bool = False,
        precompressed: bool = True,
        follow_symlinks: bool = True,
        fallthrough: bool = False,
        cache_control: Optional[str] = None,
        headers: _HeadersLike = None,
        mime_types: Union[str, Mapping[str, str], None] = None,
    ) -> None: ...
    @property
    def prefix(self) -> str: ...
    @property
    def root(self) -> _Path: ...
    @property
    def index(self) -> str:
        """'' when a directory has no index file."""
    @property
    def dotfiles(self) -> bool: ...
    @property
    def listing(self) -> bool: ...
    @property
    def precompressed(self) -> bool: ...
    @property
    def follow_symlinks(self) -> bool: ...
    @property
    def fallthrough(self) -> bool: ...
    @property
    def cache_control(self) -> Optional[str]: ...
    @property
    def headers(self) -> Optional[Tuple[Tuple[str, str], ...]]: ...
    @property
    def mime_types(self) -> Optional[str]: ...

@final
class WSGIPool:
    """The WSGI adapter's queue of requests for its pool threads (binding/wsgi.c): the
    engine fills it without the GIL; a watchdog wakes one more parked thread when
    requests wait and no call ended for ``stall`` seconds; with ``sched_batch`` the
    watchdog and the threads in serve() run under SCHED_BATCH."""

    def __init__(self, stall: float = 0.001, sched_batch: bool = False) -> None: ...
    def serve(self, handle: Callable[[Request], object], /) -> None: ...
    def put(self, request: Request, /) -> None: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...
    @property
    def done(self) -> int: ...
    @property
    def watchdog_wakes(self) -> int: ...

@final
class WSGIStartResponse:
    """start_response for one WSGI call (binding/wsgi.c)."""

    def __init__(self, request: Request, write: Callable[[Any, bytes], None]) -> None: ...
    def __call__(
        self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]: ...
    def write(self, data: bytes, /) -> None: ...
    @property
    def request(self) -> Request: ...
    @property
    def status(self) -> Optional[str]: ...
    @property
    def headers(self) -> Optional[List[Tuple[str, str]]]: ...
    streaming: bool
    sent: int

@final
class WSGICall:
    """Calls a WSGI app for a Request: environ, start_response and the common answer
    in C; the rest through ``finish`` (binding/wsgi.c)."""

    def __init__(
        self,
        app: Callable[..., Any],
        base: Dict[str, Any],
        script_name: str,
        proxies: Any,
        stream_input: Callable[[Request], Any],
        bytes_io: Callable[[bytes], Any],
        empty: Any,
        finish: Callable[[Request, Any, Any, Dict[str, Any]], Any],
        fail: Callable[[Request, Any, str], None],
        write: Callable[[Any, bytes], None],
        scheme_fixed: bool = False,
    ) -> None: ...
    def __call__(self, request: Request, /) -> None: ...
    def environ(self, request: Request, /) -> Dict[str, Any]: ...

@final
class Engine:
    """One C server; Server (in pymongoose_uring) is the public wrapper."""

    def __init__(
        self,
        handler: Optional[Callable[[Request], _HandlerResult]],
        *,
        routes: Optional[Dict[str, Dict[str, Callable[[Request], _HandlerResult]]]] = None,
        async_scheduler: Optional[Callable[[AsyncBatch], None]] = None,
        statics: Optional[Sequence[StaticMount]] = None,
        connection_handler: Optional[ConnectionHandler] = None,
        host: Optional[str] = ...,
        port: int = ...,
        unix_path: Optional[str] = ...,
        listen_fd: int = ...,
        backlog: int = ...,
        threads: int = ...,
        ring_entries: int = ...,
        cq_entries: int = ...,
        buf_count: int = ...,
        buf_size: int = ...,
        defer_taskrun: bool = ...,
        sqpoll: bool = ...,
        sqpoll_idle_ms: int = ...,
        registered_files: bool = ...,
        send_zc_threshold: int = ...,
        file_splice_min: int = ...,
        file_read_chunk: int = ...,
        pipe_size: int = ...,
        pipe_pool: int = ...,
        batch_max: int = ...,
        slow_handler_ms: int = ...,
        busy_linger_us: int = ...,
        busy_linger_batch: int = ...,
        sched_batch: bool = ...,
        max_header_bytes: int = ...,
        max_headers: int = ...,
        max_url_bytes: int = ...,
        max_body_bytes: int = ...,
        max_connections: int = ...,
        max_pipelined: int = ...,
        output_high_water: int = ...,
        stream_body_threshold: int = ...,
        body_buffer_budget: int = ...,
        body_spool_dir: Optional[str] = ...,
        header_timeout_ms: int = ...,
        keepalive_timeout_ms: int = ...,
        body_timeout_ms: int = ...,
        send_timeout_ms: int = ...,
        min_recv_rate: int = ...,
        min_rate_grace_ms: int = ...,
        shutdown_timeout_ms: int = ...,
        accept_backoff_ms: int = ...,
        server_header: Optional[str] = ...,
        date_header: bool = ...,
        extra_headers: Optional[str] = ...,
        ws_max_message: int = ...,
        ws_max_frame: int = ...,
        ws_auto_pong: bool = ...,
        ws_ping_interval_ms: int = ...,
        ws_ping_timeout_ms: int = ...,
        ws_idle_timeout_ms: int = ...,
        ws_close_timeout_ms: int = ...,
        ws_deflate: bool = ...,
        ws_deflate_window_bits: int = ...,
        ws_deflate_mem_level: int = ...,
        ws_deflate_min_size: int = ...,
        ws_deflate_no_context_takeover: bool = ...,
        ws_send_high_water: int = ...,
        ws_send_limit: int = ...,
        ws_send_limit_close: bool = ...,
        file_cache_entries: int = ...,
        file_cache_valid_ms: int = ...,
        max_ranges: int = ...,
        raw: bool = ...,
        conn_io_events: bool = ...,
        conn_send_high_water: int = ...,
        conn_send_limit: int = ...,
        raw_idle_timeout_ms: int = ...,
        ssl_certfile: Optional[str] = ...,
        ssl_keyfile: Optional[str] = ...,
        ssl_keyfile_password: Optional[str] = ...,
        ssl_ca_certs: Optional[str] = ...,
        ssl_cert_reqs: int = ...,
        ssl_ciphers: Optional[str] = ...,
        ssl_ciphersuites: Optional[str] = ...,
        ssl_min_version: Optional[str] = ...,
        ssl_alpn: Optional[str] = ...,
        ssl_ocsp_file: Optional[str] = ...,
        ssl_session_tickets: bool = ...,
        ssl_ticket_rotate_ms: int = ...,
        ssl_handshake_timeout_ms: int = ...,
        ssl_max_handshakes: int = ...,
        ssl_ktls: bool = ...,
        ssl_cert_per_conn: bool = ...,
        ssl_sni_certs: Optional[Sequence[Sequence[Optional[str]]]] = ...,
    ) -> None: ...
    def start(self) -> None: ...
    def start_driven(
        self,
        wake: Optional[Callable[[], object]] = None,
        handler: Optional[Callable[[Request], object]] = None,
    ) -> None: ...
    def step(self) -> Optional[int]: ...
    def fileno(self) -> int: ...
    def stop(self) -> None: ...
    def wait(self, timeout: Optional[float] = None) -> bool: ...
    def close(self) -> None: ...
    def stats(self, thread: int = -1) -> Stats: ...
    def ring_info(self, thread: int = 0) -> Dict[str, Any]: ...
    def in_ring_thread(self) -> bool: ...
    def reload_tls(self) -> None: ...
    @property
    def port(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def running(self) -> bool: ...
    @property
    def config(self) -> Dict[str, Any]: ...

def probe() -> Dict[str, Any]:
    """io_uring features of this kernel; 'available' and 'message' say if and why not;
    'ktls' and 'ktls_message': whether kernel TLS can take established sessions, and why not."""

def status_reason(status: int) -> str: ...
def config_defaults() -> Dict[str, Any]: ...
def knobs() -> Dict[str, Tuple[str, Any, str, Optional[int], Optional[int], str]]:
    """Every engine knob: {name: (type, default, unit, min, max, doc)}, type 'str', 'int' or
    'bool'; min and max None for a string."""

def counters() -> Dict[str, Tuple[str, str]]:
    """Every key of Engine.stats(): {name: (kind, doc)}, kind 'counter', 'gauge' or 'array'."""

def hold_wakeups() -> None:
    """From now on, the answers this thread gives wake their ring threads only at
    flush_wakeups() (one wake-up for a turn's answers, not one each)."""

def flush_wakeups() -> int:
    """Stop holding and wake the ring threads the held answers wait on; how many."""

def after_batch(fn: Callable[[], object]) -> None:
    """On a ring thread running a batch of callbacks: call fn() when the batch
    ends (under the GIL, in order). Elsewhere: call fn() now."""

def requests_alive() -> int:
    """Request objects not yet freed, answered or not, in every server of this interpreter."""
