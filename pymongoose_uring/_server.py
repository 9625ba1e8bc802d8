"""The Server: a C engine running Python handlers.

The engine's worker threads ("rings") parse requests and gather the ones
completed in one pass into a batch; the C batch handler takes the GIL once,
calls the handler for each request of the batch, turns each result into a
response, releases the GIL and sends. This module wraps that engine
(``_pmu.Engine``) with what is not on the hot path: configuration,
start/stop, ``run()`` with signal handling, the asyncio bridge for
``async def`` handlers, and cleanup at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import signal
import sys
import threading
from types import FrameType
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from . import _native
from ._native import Response, UnavailableError
from ._types import AsyncBatch, Handler, HandlerResult

if TYPE_CHECKING:
    from ._pmu import ConnectionHandler, Engine, Request, StaticMount


def say(message: str) -> None:
    """One line to stderr in one write, so lines of several worker processes
    sharing the stream never interleave (print() writes the text and the
    newline separately when stderr is write-through)."""
    sys.stderr.write(f"pymongoose_uring: {message}\n")
    sys.stderr.flush()


__all__ = ["Server", "probe"]

log = logging.getLogger("pymongoose_uring")

# The keyword arguments of Server besides the listening ones, in the engine's table's order
# (include/pmu/pmu.h PMU_CONFIG_KNOBS); tests/python/test_knob_table.py checks this list, the
# signature and the docstring against knobs().
_ENGINE_OPTIONS = (
    "backlog",
    "ring_entries",
    "cq_entries",
    "buf_count",
    "buf_size",
    "defer_taskrun",
    "sqpoll",
    "sqpoll_idle_ms",
    "registered_files",
    "send_zc_threshold",
    "file_splice_min",
    "file_read_chunk",
    "pipe_size",
    "pipe_pool",
    "batch_max",
    "slow_handler_ms",
    "busy_linger_us",
    "busy_linger_batch",
    "sched_batch",
    "max_header_bytes",
    "max_headers",
    "max_url_bytes",
    "max_body_bytes",
    "max_connections",
    "max_pipelined",
    "output_high_water",
    "stream_body_threshold",
    "header_timeout_ms",
    "keepalive_timeout_ms",
    "body_timeout_ms",
    "send_timeout_ms",
    "shutdown_timeout_ms",
    "accept_backoff_ms",
    "server_header",
    "date_header",
    "extra_headers",
    "body_buffer_budget",
    "body_spool_dir",
    "min_recv_rate",
    "min_rate_grace_ms",
    "ws_max_message",
    "ws_max_frame",
    "ws_auto_pong",
    "ws_ping_interval_ms",
    "ws_ping_timeout_ms",
    "ws_idle_timeout_ms",
    "ws_close_timeout_ms",
    "ws_deflate",
    "ws_deflate_window_bits",
    "ws_deflate_mem_level",
    "ws_deflate_min_size",
    "ws_deflate_no_context_takeover",
    "ws_send_high_water",
    "ws_send_limit",
    "ws_send_limit_close",
    "file_cache_entries",
    "file_cache_valid_ms",
    "max_ranges",
    "raw",
    "conn_io_events",
    "conn_send_high_water",
    "conn_send_limit",
    "raw_idle_timeout_ms",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_keyfile_password",
    "ssl_ca_certs",
    "ssl_cert_reqs",
    "ssl_ciphers",
    "ssl_ciphersuites",
    "ssl_min_version",
    "ssl_alpn",
    "ssl_ocsp_file",
    "ssl_session_tickets",
    "ssl_ticket_rotate_ms",
    "ssl_handshake_timeout_ms",
    "ssl_max_handshakes",
    "ssl_ktls",
    "ssl_cert_per_conn",
)

_probe_cache: Optional[Dict[str, Any]] = None
_probe_lock = threading.Lock()


def probe() -> Dict[str, Any]:
    """What the kernel's io_uring offers this engine (a dict).

    ``available`` says whether a server can run; when it cannot, ``message``
    names the cause and the fix. The other keys list the io_uring features
    found (``defer_taskrun``, ``multishot_recv``, ``send_zc``, ...) and the
    ``kernel`` release. Never raises.
    """
    if _native._pmu is None:
        import os

        here = os.path.dirname(os.path.abspath(__file__))
        hint = "it builds on Linux only; install with `pip install .` from a checkout"
        if os.path.exists(os.path.join(here, "..", "binding", "meson.build")):
            hint = (
                f"this is the source tree at {here}, which has no compiled extension: "
                f"install with `pip install .` and run from another directory"
            )
        return {
            "available": False,
            "error": 0,
            "kernel": "",
            "features": 0,
            "message": f"the C extension pymongoose_uring._pmu could not be loaded "
            f"({_native.IMPORT_ERROR}); {hint}",
        }
    return _native._pmu.probe()


def _require_engine() -> None:
    """Raise UnavailableError naming the reason when no server can run."""
    global _probe_cache
    if _native._pmu is None:
        raise UnavailableError(probe()["message"])
    with _probe_lock:
        if _probe_cache is None:
            _probe_cache = probe()
        p = _probe_cache
    if not p["available"]:
        err = abs(p["error"])
        raise UnavailableError(err, p["message"]) if err else UnavailableError(p["message"])


class _AsyncBridge:
    """Runs the coroutines of ``async def`` handlers on an asyncio loop.

    The engine hands over all coroutines of one batch in one call (on a ring
    thread, GIL held); they are posted to the loop with a single
    ``call_soon_threadsafe``. Each task replies with ``request.reply()``,
    which reaches the ring through the engine's cross-thread queue. Without
    a loop given, a private loop thread starts on first use.
    """

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        self._loop = loop
        self._own = loop is None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._tasks: Set["asyncio.Task[Any]"] = set()

    def schedule(self, batch: AsyncBatch) -> None:
        loop = self._loop
        if loop is None:
            loop = self._start_loop()
        loop.call_soon_threadsafe(self._spawn, batch)

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                t = threading.Thread(target=main, name="pymongoose_uring-asyncio", daemon=True)
                t.start()
                ready.wait()
                self._thread = t
                self._loop = loop
            return self._loop

    def _spawn(self, batch: AsyncBatch) -> None:
        loop = self._loop
        assert loop is not None
        # The replies the tasks give in their first step wake the ring once, after the
        # last (see ASGIHandler._drain).
        _native.hold_wakeups()
        try:
            for request, coro in batch:
                task = loop.create_task(_drive(request, coro))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            loop.call_soon(_native.flush_wakeups)  # after the tasks' first steps (FIFO)

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def close(self) -> None:
        """Stop the private loop thread (a loop given by the caller is left
        alone). Tasks still pending are cancelled."""
        if self.in_loop_thread():
            raise RuntimeError("the asyncio bridge cannot close from its own thread")
        with self._lock:
            loop, thread = self._loop, self._thread
            if not self._own or loop is None or thread is None:
                return
            self._loop = self._thread = None

        async def shutdown() -> None:
            tasks = [t for t in self._tasks if not t.done()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()


def _abort_stream(request: Request) -> None:
    """Cut short a streamed answer the handler started and failed to finish
    (the client sees it incomplete; a no-op for one already ended)."""
    try:
        request.abort()
    except RuntimeError:
        pass


async def _drive(request: Request, coro: Awaitable[HandlerResult]) -> None:
    try:
        result = await coro
    except asyncio.CancelledError:
        if not request.answered:
            request.reply(Response.text("Service Unavailable", 503))
        else:
            _abort_stream(request)
        raise
    except Exception:
        log.exception("async handler raised; sent 500 for %s %s", request.method, request.target)
        if not request.answered:
            request.reply(Response.text("Internal Server Error", 500))
        else:
            _abort_stream(request)  # the head is out: the client must see it failed
        return
    if result is None:
        return  # answered with request.reply(), now or later
    if request.answered:
        log.warning(
            "%r: the async handler replied and also returned %s; the returned value was ignored",
            request,
            type(result).__name__,
        )
        return
    try:
        request.reply(result)
    except Exception:
        log.exception(
            "could not send the async handler's response; sent 500 for %s %s",
            request.method,
            request.target,
        )
        if not request.answered:
            request.reply(Response.text("Internal Server Error", 500))


# Servers whose engines may be running: stopped at interpreter exit, before
# the interpreter stops letting ring threads take the GIL.
_live: Set["Server"] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for s in servers:
        try:
            s.stop()
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("stopping %r at exit failed", s)


def _address_of(fd: int) -> Tuple[str, int, Optional[str]]:
    """(host, port, unix_path) of a listening socket given by its fd."""
    import socket

    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"listen_fd {fd}: {exc.strerror or exc}") from None
    try:
        name = sock.getsockname()
        family = sock.family
    finally:
        sock.detach()
    if family == socket.AF_UNIX:
        path = name.decode(errors="surrogateescape") if isinstance(name, bytes) else name
        return "", 0, path or None
    return name[0], name[1], None


class Server:
    """An HTTP/1.1 server whose handlers are Python callables.

    ``app`` is an :class:`App` (routing) or any callable taking a request.
    A handler returns the response: a :class:`Response`, ``bytes``
    (application/octet-stream), ``str`` (text/plain), a ``dict`` or ``list``
    (JSON), an ``int`` (status, empty body), a tuple ``(body, status)`` or
    ``(body, status, headers)``, a coroutine (``async def`` handlers, run on
    ``loop`` or a private asyncio thread), or ``None`` after keeping the
    request to answer later with ``request.reply(...)`` from any thread.

    Listening: ``host`` and ``port`` (``port=0`` picks a free one, see
    :attr:`port`), or ``unix_path`` for a Unix socket, or ``listen_fd``: a
    listening TCP or Unix socket made elsewhere (a supervisor, systemd), whose
    waiting connections stay in its queue when this server stops. ``threads``
    ring threads each run their own io_uring. Every other keyword is an engine
    knob; ``None`` keeps the engine's default (see :func:`config_defaults`):

    - io_uring: ``ring_entries``, ``cq_entries``, ``buf_count``, ``buf_size``,
      ``defer_taskrun``, ``sqpoll``, ``sqpoll_idle_ms``, ``registered_files``,
      ``send_zc_threshold``, ``backlog``
    - files (pieces of answers that are ranges of files): ``file_splice_min``
      (64 KiB: longer pieces go by splice file -> pipe -> socket, shorter are
      read into memory and sent), ``file_read_chunk`` (64 KiB: the read path's
      buffer per connection), ``pipe_size`` (256 KiB: F_SETPIPE_SZ),
      ``pipe_pool`` (16 idle pipes kept per ring thread)
    - batching: ``batch_max`` (most requests per handler batch);
      ``slow_handler_ms`` (100; 0: off): a handler call that holds its ring
      thread longer is counted in ``stats()["slow_batches"]`` and logged (a
      WARNING on the ``pymongoose_uring`` logger naming the handler and the
      request, at most one line per ring thread per 10 s); ``busy_linger_us``
      (0: off) and ``busy_linger_batch`` (16): while requests wait in the WSGI
      adapter's pool behind running calls, an idle ring thread waits for that
      many completions or that long instead of waking at the first (counted in
      ``stats()["lingers"]``): fewer, larger turns of the ring thread, which
      shares the CPU with the pool's threads, at up to that much latency;
      ``sched_batch`` (off; on by default in :class:`~pymongoose_uring.wsgi.WSGIServer`):
      ring threads run under SCHED_BATCH, so their wake-ups do not preempt a
      thread running on their CPU (``ring_info(i)["sched_batch"]`` says whether
      it took)
    - limits: ``max_header_bytes``, ``max_headers``, ``max_url_bytes``,
      ``max_body_bytes``, ``max_connections``, ``max_pipelined``,
      ``output_high_water``
    - streaming: ``stream_body_threshold`` (0, the default, keeps every body
      whole in ``request.body``): a request whose Content-Length exceeds it,
      or whose chunked body outgrows it, reaches the handler at once and its
      body follows in pieces, read with ``request.read()`` from a worker
      thread or ``await request.read_async()``; the engine stops reading
      while more than ``output_high_water`` bytes of it are unread. Any
      answer may be streamed with ``request.start()``, ``write()`` and
      ``end()`` (``abort()`` when producing it fails: the connection closes
      without completing it).
    - hostile clients: ``body_buffer_budget`` (bytes of request bodies kept in
      memory by the whole server, 64 MiB; bodies beyond it are spooled to an
      unlinked file in ``body_spool_dir``, default ``$TMPDIR`` or /tmp, and
      ``request.body`` maps it), ``min_recv_rate`` (bytes/s a client must
      average while sending a head or body, 500; 0 disables) after
      ``min_rate_grace_ms`` (10000); slower gets 408
    - timeouts (ms, 0 disables): ``header_timeout_ms``, ``keepalive_timeout_ms``,
      ``body_timeout_ms``, ``send_timeout_ms``, ``shutdown_timeout_ms``
    - ``accept_backoff_ms`` (500): when accepting fails for want of file
      descriptors or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS), accept nothing
      for this long or until a connection closes; logged at most once a
      second per ring thread on the ``pymongoose_uring`` logger, counted in
      ``stats()["accept_errors"]``
    - ``server_header``: the Server header value ("" sends none);
      ``date_header`` (True): send the Date header; ``extra_headers``:
      header lines added to every HTTP answer, ``"Name: value\r\nName2: v2"``
      (a malformed one fails the start: OSError, errno EINVAL)
    - WebSocket: ``ws_max_message`` and ``ws_max_frame`` (16 MiB each: close 1009
      beyond; 0 no limit), ``ws_auto_pong`` (True), ``ws_ping_interval_ms`` and
      ``ws_ping_timeout_ms`` (20000 each: keepalive pings to a silent connection,
      dropped when nothing answers), ``ws_idle_timeout_ms`` (0: off; close 1001
      when no message went either way this long), ``ws_close_timeout_ms`` (5000),
      permessage-deflate: ``ws_deflate`` (True), ``ws_deflate_window_bits`` (12),
      ``ws_deflate_mem_level`` (5), ``ws_deflate_min_size`` (128),
      ``ws_deflate_no_context_takeover`` (False); sending: ``ws_send_high_water``
      (1 MiB: ``send()`` returns False beyond, ``on_drain`` follows),
      ``ws_send_limit`` (32 MiB) and ``ws_send_limit_close`` (True: close 1008
      beyond the limit; False: drop the connection)
    - static files (engine mounts, ``serve_static``, ``serve_file``):
      ``file_cache_entries`` (256 open files kept per ring thread; 0: no cache),
      ``file_cache_valid_ms`` (1000: a cached file is checked again after this),
      ``max_ranges`` (100: a Range header with more ranges is ignored, 200)

    Connections: ``connection_handler(conn, event, data)`` is called on the ring
    thread for every event of every accepted connection (the GIL taken once
    per batch of events): ``conn`` is one :class:`Connection` object per
    connection (``_pmu.Connection``, also ``request.connection`` of its
    requests), ``event`` one of ``_pmu.CONN_OPEN`` (first), ``CONN_DATA``
    (raw mode: ``data`` is the bytes received), ``CONN_READ`` and
    ``CONN_SENT`` (with ``conn_io_events``: the bytes received, the number of
    bytes that reached the socket), ``CONN_DRAIN`` (after ``conn.send()``
    returned True, the unsent bytes fell to half of ``conn_send_high_water``)
    and ``CONN_CLOSE`` (last: ``data`` is 0 or an errno). An exception in it
    is logged and the server goes on. ``conn.send(data)`` writes bytes on the
    connection (between responses on an HTTP one), ``conn.close(now=False)``
    closes it, ``request.reply_raw(data)`` answers a request with bytes sent
    verbatim. Its knobs: ``raw`` (False: with True no HTTP at all, every
    connection is a byte stream for ``connection_handler`` and ``app`` may be
    None), ``conn_io_events`` (False), ``conn_send_high_water`` (1 MiB),
    ``conn_send_limit`` (32 MiB: beyond it ``send()`` raises
    ``ConnectionClosed`` and the connection is closed; 0 no limit),
    ``raw_idle_timeout_ms`` (0: off; a raw connection silent both ways this
    long is closed, CLOSE with ETIMEDOUT).

    HTTPS (the names are uvicorn's): ``ssl_certfile`` (a PEM chain, leaf
    first: set, the listener speaks TLS only), ``ssl_keyfile`` (None: the key
    is in the certificate file), ``ssl_keyfile_password`` (an encrypted key),
    ``ssl_ca_certs`` (CA bundle for client certificates) with ``ssl_cert_reqs``
    (0 ``ssl.CERT_NONE``, 1 optional, 2 required), ``ssl_ciphers`` (TLS 1.2,
    OpenSSL syntax; None: ECDHE with AEAD only), ``ssl_ciphersuites`` (TLS
    1.3; None: OpenSSL's), ``ssl_min_version`` ("TLSv1.2" or "TLSv1.3"),
    ``ssl_alpn`` ("http/1.1": comma-separated, a client offering none of them
    is refused), ``ssl_ocsp_file`` (a DER OCSP response for the certificate,
    stapled when a client asks; refresh it and reload), ``ssl_session_tickets``
    (True; keys random per server)
    rotated every ``ssl_ticket_rotate_ms`` (1 h), ``ssl_handshake_timeout_ms``
    (10 s), ``ssl_max_handshakes`` (256 per ring thread mid-handshake; more
    wait unread), ``ssl_ktls`` (True: kernel TLS where ``probe()`` says it
    works), ``ssl_cert_per_conn`` (True, with a ``connection_handler`` and no
    ``ssl_certfile``: TLS whose certificate the handler gives each connection at
    ``CONN_OPEN``, ``conn.tls_use(TlsCerts(cert, key))``, or refuses,
    ``conn.tls_decline()``; the handshake waits for it). ``ssl_sni_certs``: more certificates, ``[(certfile, keyfile[,
    password]), ...]`` (keyfile None: in certfile), each served to clients whose
    SNI matches one of its names (the first that matches; else
    ``ssl_certfile``'s). On a TLS connection ``request.scheme`` is ``"https"``
    and ``request.tls`` describes the session (version, cipher, SNI, ALPN,
    resumption, the client's certificate); :meth:`reload_tls` (and SIGUSR2 or SIGHUP in
    ``run()``) reads the certificate files again without closing anything.

    Files: ``statics``, a list of :class:`StaticMount` (``_pmu.StaticMount``),
    directories the engine answers itself before any handler (an
    :class:`App`'s :meth:`App.static` mounts are added to them); a handler
    may return a :class:`FileResponse` (``Response.file(path)``), or call
    ``request.serve_file()``, ``request.serve_static()`` or, in a streamed
    answer, ``request.sendfile()``.

    ``run()`` blocks until SIGINT or SIGTERM, then stops gracefully;
    ``start()``/``stop()`` run it in the background; ``with Server(...) as s:``
    starts and stops it. Raises :class:`UnavailableError` naming the reason
    where io_uring cannot be used.
    """

    def __init__(
        self,
        app: Optional[Handler],
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        unix_path: Optional[str] = None,
        threads: int = 1,
        listen_fd: Optional[int] = None,
        backlog: Optional[int] = None,
        ring_entries: Optional[int] = None,
        cq_entries: Optional[int] = None,
        buf_count: Optional[int] = None,
        buf_size: Optional[int] = None,
        defer_taskrun: Optional[bool] = None,
        sqpoll: Optional[bool] = None,
        sqpoll_idle_ms: Optional[int] = None,
        registered_files: Optional[bool] = None,
        send_zc_threshold: Optional[int] = None,
        file_splice_min: Optional[int] = None,
        file_read_chunk: Optional[int] = None,
        pipe_size: Optional[int] = None,
        pipe_pool: Optional[int] = None,
        batch_max: Optional[int] = None,
        slow_handler_ms: Optional[int] = None,
        busy_linger_us: Optional[int] = None,
        busy_linger_batch: Optional[int] = None,
        sched_batch: Optional[bool] = None,
        max_header_bytes: Optional[int] = None,
        max_headers: Optional[int] = None,
        max_url_bytes: Optional[int] = None,
        max_body_bytes: Optional[int] = None,
        max_connections: Optional[int] = None,
        max_pipelined: Optional[int] = None,
        output_high_water: Optional[int] = None,
        stream_body_threshold: Optional[int] = 0,
        header_timeout_ms: Optional[int] = None,
        keepalive_timeout_ms: Optional[int] = None,
        body_timeout_ms: Optional[int] = None,
        send_timeout_ms: Optional[int] = None,
        shutdown_timeout_ms: Optional[int] = None,
        accept_backoff_ms: Optional[int] = None,
        server_header: Optional[str] = None,
        date_header: Optional[bool] = None,
        extra_headers: Optional[str] = None,
        body_buffer_budget: Optional[int] = None,
        body_spool_dir: Optional[str] = None,
        min_recv_rate: Optional[int] = None,
        min_rate_grace_ms: Optional[int] = None,
        ws_max_message: Optional[int] = None,
        ws_max_frame: Optional[int] = None,
        ws_auto_pong: Optional[bool] = None,
        ws_ping_interval_ms: Optional[int] = None,
        ws_ping_timeout_ms: Optional[int] = None,
        ws_idle_timeout_ms: Optional[int] = None,
        ws_close_timeout_ms: Optional[int] = None,
        ws_deflate: Optional[bool] = None,
        ws_deflate_window_bits: Optional[int] = None,
        ws_deflate_mem_level: Optional[int] = None,
        ws_deflate_min_size: Optional[int] = None,
        ws_deflate_no_context_takeover: Optional[bool] = None,
        ws_send_high_water: Optional[int] = None,
        ws_send_limit: Optional[int] = None,
        ws_send_limit_close: Optional[bool] = None,
        file_cache_entries: Optional[int] = None,
        file_cache_valid_ms: Optional[int] = None,
        max_ranges: Optional[int] = None,
        raw: Optional[bool] = None,
        conn_io_events: Optional[bool] = None,
        conn_send_high_water: Optional[int] = None,
        conn_send_limit: Optional[int] = None,
        raw_idle_timeout_ms: Optional[int] = None,
        ssl_certfile: Optional[str] = None,
        ssl_keyfile: Optional[str] = None,
        ssl_keyfile_password: Optional[str] = None,
        ssl_ca_certs: Optional[str] = None,
        ssl_cert_reqs: Optional[int] = None,
        ssl_ciphers: Optional[str] = None,
        ssl_ciphersuites: Optional[str] = None,
        ssl_min_version: Optional[str] = None,
        ssl_alpn: Optional[str] = None,
        ssl_ocsp_file: Optional[str] = None,
        ssl_session_tickets: Optional[bool] = None,
        ssl_ticket_rotate_ms: Optional[int] = None,
        ssl_handshake_timeout_ms: Optional[int] = None,
        ssl_max_handshakes: Optional[int] = None,
        ssl_ktls: Optional[bool] = None,
        ssl_cert_per_conn: Optional[bool] = None,
        ssl_sni_certs: Optional[Sequence[Sequence[Optional[str]]]] = None,
        statics: Optional[Sequence[StaticMount]] = None,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        connection_handler: Optional[ConnectionHandler] = None,
    ) -> None:
        _require_engine()
        if app is None and not raw:
            raise TypeError("app is None: only a raw=True server has no request handler")
        if app is not None and not callable(app):
            raise TypeError("app must be an App or a callable taking a request")
        if connection_handler is not None and not callable(connection_handler):
            raise TypeError("connection_handler must be callable")
        if raw and connection_handler is None:
            raise ValueError("raw=True needs a connection_handler (it gets the bytes)")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.app = app
        if listen_fd is not None:
            host, port, unix_path = _address_of(listen_fd)
        self.host = host
        self._options: Dict[str, Any] = {
            "host": host,
            "port": port,
            "threads": threads,
            "unix_path": unix_path,
        }
        if listen_fd is not None:
            self._options["listen_fd"] = listen_fd
        given = locals()
        for name in _ENGINE_OPTIONS:
            if given[name] is not None:
                self._options[name] = given[name]
        if ssl_sni_certs:
            self._options["ssl_sni_certs"] = list(ssl_sni_certs)  # entries checked by the engine
        self._statics: List[StaticMount] = list(statics or ())
        for mount in self._statics:
            if not isinstance(mount, _native._pmu.StaticMount):
                raise TypeError(f"statics takes StaticMount objects, not {type(mount).__name__}")
        self._loop = loop
        self.connection_handler = connection_handler
        self._engine: Optional[Engine] = None
        self._bridge: Optional[_AsyncBridge] = None
        self._final_stats: Optional[Dict[str, Any]] = None
        self._lock = threading.RLock()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> "Server":
        """Bind and start the ring threads in the background; returns self.

        Raises ``Error`` naming the cause (port in use, bad knob, ...)."""
        with self._lock:
            if self._engine is not None:
                raise RuntimeError("the server is already running")
            from ._routing import App, make_mounts

            bridge = _AsyncBridge(self._loop)
            app = self.app
            statics = list(self._statics)
            if isinstance(app, App):
                statics += make_mounts(app._mounts)
                engine = _native._pmu.Engine(
                    app._fallback,
                    routes=app._static,
                    async_scheduler=bridge.schedule,
                    statics=statics,
                    connection_handler=self.connection_handler,
                    **self._options,
                )
            else:
                engine = _native._pmu.Engine(
                    app,
                    async_scheduler=bridge.schedule,
                    statics=statics,
                    connection_handler=self.connection_handler,
                    **self._options,
                )
            # A handler that hosts the ring on its event loop's thread (the ASGI
            # adapter's, ring="loop") starts it there; others get ring threads.
            drive = getattr(app, "_pmu_drive", None)
            if drive is None or not drive(engine):
                engine.start()
            self._engine, self._bridge, self._final_stats = engine, bridge, None
            with _live_lock:
                _live.add(self)
            return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop gracefully: stop accepting, let in-flight requests finish (at
        most ``shutdown_timeout_ms``), then release everything. A keep-alive
        connection quiet for a second is closed at once; one just accepted or
        busy within the last second gets up to a second to send the request
        it may have on the way, so a stop with such clients connected takes
        up to a second longer. Blocks until done (or ``timeout`` seconds pass:
        TimeoutError). Called from a
        handler (or an async handler's loop), it only begins the stop and
        returns; run(), or a later stop() from another thread, completes it."""
        engine, bridge = self._engine, self._bridge
        if engine is None:
            return
        if engine.in_ring_thread() or (bridge is not None and bridge.in_loop_thread()):
            # Waiting here would wait for this very thread: only begin the
            # stop; run() (or a later stop() elsewhere) completes it.
            engine.stop()
            return
        with self._lock:
            engine = self._engine
            if engine is None:
                return
            engine.stop()
            if not engine.wait(timeout):
                raise TimeoutError("the server did not stop in time")
            self._finish()

    def _finish(self) -> None:
        engine, bridge = self._engine, self._bridge
        assert engine is not None  # called while running, with self._lock held
        try:
            self._final_stats = dict(engine.stats())
        except Exception:
            self._final_stats = None
        engine.close()
        self._engine = self._bridge = None
        if bridge is not None:
            bridge.close()
        with _live_lock:
            _live.discard(self)

    def run(self) -> None:
        """Serve until SIGINT (Ctrl-C) or SIGTERM, then stop gracefully:
        in-flight requests finish, idle connections close."""
        stop_requested = threading.Event()
        previous: Dict[
            signal.Signals, Union[Callable[[int, Optional[FrameType]], Any], int, None]
        ] = {}

        def on_signal(signum: int, frame: Optional[FrameType]) -> None:
            log.info("%s received; stopping gracefully", signal.Signals(signum).name)
            stop_requested.set()
            engine = self._engine
            if engine is not None:
                engine.stop()

        def on_reload(signum: int, frame: Optional[FrameType]) -> None:
            self._reload_on_signal(signal.Signals(signum).name)

        # Handlers first: a signal arriving while the server starts must stop
        # it, not raise KeyboardInterrupt somewhere in the middle.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
            if self.tls:  # SIGUSR2 and SIGHUP: read the certificates again, in place
                for sig in (signal.SIGUSR2, signal.SIGHUP):
                    previous[sig] = signal.signal(sig, on_reload)
        engine = None
        try:
            self.start()
            engine = self._engine
            assert engine is not None  # start() succeeded
            if stop_requested.is_set():
                engine.stop()
            say(f"serving on {self.url} with {engine.threads} thread(s); Ctrl-C to stop")
            engine.wait()  # returns once a signal (or stop()) ended the workers
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            with self._lock:
                if engine is not None and self._engine is engine:
                    engine.stop()
                    self._finish()

    serve_forever = run  # the socketserver spelling

    def reload_tls(self) -> None:
        """Read every certificate, key, CA and OCSP file again (``ssl_certfile``,
        ``ssl_keyfile``, ``ssl_ca_certs``, ``ssl_sni_certs``, ``ssl_ocsp_file``): new connections
        get them, established ones keep theirs and nothing is closed. Raises
        ``Error`` naming what failed (a missing file, a key that does not match
        its certificate...): the certificates in use then stay. ``run()`` calls
        it on SIGUSR2 and SIGHUP (under the command line's supervisor, SIGHUP replaces
        the workers instead)."""
        engine = self._engine
        if engine is None:
            raise RuntimeError("the server is not running")
        engine.reload_tls()

    def _reload_on_signal(self, name: str) -> None:
        try:
            self.reload_tls()
        except Exception as exc:  # the old certificates stay: say why, go on serving
            say(f"{name}: reloading the TLS certificates failed ({exc}); the ones in use stay")
        else:
            say(f"{name}: TLS certificates reloaded; new connections get them")

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- introspection ------------------------------------------------------

    @property
    def running(self) -> bool:
        engine = self._engine
        return engine is not None and engine.running

    @property
    def port(self) -> int:
        """The TCP port bound (the real one after start() with port=0)."""
        engine = self._engine
        return engine.port if engine is not None else self._options["port"]

    @property
    def unix_path(self) -> Optional[str]:
        path: Optional[str] = self._options["unix_path"]
        return path

    @property
    def tls(self) -> bool:
        """Whether the listener speaks HTTPS (``ssl_certfile`` or ``ssl_cert_per_conn``
        is set)."""
        return bool(self._options.get("ssl_certfile") or self._options.get("ssl_cert_per_conn"))

    @property
    def url(self) -> str:
        """``http://host:port`` (``https://`` with TLS; IPv6 hosts in brackets), or
        ``unix:PATH``."""
        if self.unix_path:
            return f"unix:{self.unix_path}"
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def config(self) -> Dict[str, Any]:
        """Every engine knob as this server uses it."""
        if self._engine is not None:
            return self._engine.config
        return _native._pmu.Engine(
            self.app, connection_handler=self.connection_handler, **self._options
        ).config

    def stats(self, thread: int = -1) -> Dict[str, Any]:
        """The engine counters, summed over threads (-1) or for one thread:
        requests, responses, bytes, connections, parse errors, timeouts,
        sends, CQEs and waits, ``batches`` and ``batch_hist`` (bucket i
        counts batches of 2**i to 2**(i+1)-1 requests), ``deferred``
        (answers that came from other threads), ``status_classes`` (final
        responses by class: ``{"1xx": n, "2xx": n, ..., "5xx": n}``, the
        engine's own 400/408/413/414/431/503 included), ``bodies_spooled`` and
        ``body_buffer_bytes`` (request bodies in memory, against
        ``body_buffer_budget``). After stop(), the final totals."""
        engine = self._engine
        if engine is None:
            if self._final_stats is not None and thread == -1:
                return dict(self._final_stats)
            raise RuntimeError("the server is not running")
        return dict(engine.stats(thread))

    def ring_info(self, thread: int = 0) -> Dict[str, Any]:
        """How the ring of one thread was set up (setup flags, features,
        whether DEFER_TASKRUN, SQPOLL, registered files are in use)."""
        engine = self._engine
        if engine is None:
            raise RuntimeError("the server is not running")
        return engine.ring_info(thread)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Server {self.url} {state}>"


def config_defaults() -> Dict[str, Any]:
    """Every engine knob with its default value."""
    _require_engine()
    return _native._pmu.config_defaults()


class Knob(NamedTuple):
    """One engine knob as include/pmu/pmu.h declares it (PMU_CONFIG_KNOBS)."""

    type: type  # str, int or bool
    default: Any
    unit: str  # "bytes", "ms", ... or "" for a plain count
    min: Optional[int]  # the range the engine accepts; None for a str
    max: Optional[int]
    doc: str


def knobs() -> Dict[str, Knob]:
    """Every engine knob, in the engine's order: ``{name: Knob(type, default, unit, min, max,
    doc)}``, from the one table in include/pmu/pmu.h. The command line builds its options
    from it."""
    _require_engine()
    types = {"str": str, "int": int, "bool": bool}
    return {name: Knob(types[kind], *rest) for name, (kind, *rest) in _native._pmu.knobs().items()}
