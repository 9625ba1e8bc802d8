"""WSGI (PEP 3333): serve Flask, Django or any WSGI app on the io_uring engine.

::

    from pymongoose_uring.wsgi import WSGIServer
    from myapp import app                      # a Flask app, Django's get_wsgi_application()...

    WSGIServer(app, host="0.0.0.0", port=8000, pool_threads=8).run()

or ``python -m pymongoose_uring myapp:app --interface wsgi``.

How it runs. The engine's ring threads append the requests to the pool's
queue (``_pmu.WSGIPool``, binding/wsgi.c) without taking the GIL, and return
to their I/O: the ring never waits for the app. One pool thread takes the
queued requests back to back while they are quick; a watchdog (C, no GIL)
wakes another thread when every running one has been in the same call for
``_STALL`` (1 ms: a sleep, I/O, a lock, a call to this very server), so a
blocking call holds the requests behind it about that long and an app that
calls its own server is answered. Apps that block (database, sleep) block
only their pool thread; ``pool_threads`` bounds how many requests run at
once. Each call (``_pmu.WSGICall``) builds the environ in C, calls the app
with a C ``start_response``, and answers a list or tuple of one ``bytes``, or
another iterable under a Content-Length of at most :data:`BUFFER_LIMIT` given
before it returned (Flask's, Django's: joined, then closed), in one engine
call, as :meth:`WSGIHandler._finish` would; everything else (other iterables, files, ``write()``, a
Content-Length to check, HEAD) goes through :meth:`WSGIHandler._finish`:
``request.reply()`` for a complete body (a list/tuple result, or a body
whose Content-Length is known and small) or ``request.start/write/end``
(streamed: chunked when no length is given, as-is under a Content-Length).
With the access log on, or a subclass's own ``_environ``, the whole call is
Python (:meth:`WSGIHandler._handle`).

An opt-in exception saves the thread handoff: with ``inline_ms`` above 0
(off by default), a path (the request's raw path) that has made 64 quick
calls on the pool (each under ``inline_ms``; a slower one halves the count)
is called on the ring thread itself, inside the batch (the ring then takes
the GIL for every batch). Two ring calls in a row over that budget (one
alone may just have been preempted) send the path back to the pool, and its
next try needs four times more quick calls; a batch stops calling inline
once it has held the ring 2 ms (the rest go to the pool). It is off by
default because a call on the ring can still block it: an app that calls
its own server and waits for the answer would wait for itself forever, and
a quick route's rare slow call (a cold cache, a lock) makes every connection
of that ring wait. Requests whose body is streamed always go to the pool.

The environ is complete: ``REQUEST_METHOD``, ``SCRIPT_NAME``, ``PATH_INFO``
(percent-decoded, latin-1 as PEP 3333 says), ``QUERY_STRING``,
``CONTENT_TYPE``, ``CONTENT_LENGTH``, ``SERVER_NAME``, ``SERVER_PORT``,
``SERVER_PROTOCOL``, ``REMOTE_ADDR``, ``REMOTE_PORT``, ``RAW_URI``, every
``HTTP_*`` header (repeated headers joined with ", "; header names containing
"_" are dropped, as gunicorn and nginx do, so they cannot pose as others),
``wsgi.input`` (streams the body when the server streams large bodies,
``wsgi.input_terminated`` is true), ``wsgi.errors``, ``wsgi.file_wrapper``,
``wsgi.multithread`` and the rest. Behind a trusted proxy (``forwarded_allow_ips``,
default the local host), ``REMOTE_ADDR`` and ``wsgi.url_scheme`` come from its
``X-Forwarded-For`` and ``X-Forwarded-Proto`` headers (``proxy_headers=False``:
never). Over TLS (a server with ``ssl_certfile``) ``wsgi.url_scheme`` is
``https`` and ``HTTPS`` is ``on``, unless ``url_scheme`` was given.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
import threading
from time import perf_counter
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import unquote_to_bytes

from ._adapter import AdapterServer, declared_length, length_mismatch, log_access, trusted_proxies
from ._native import Response, _pmu
from ._types import ExcInfo, WSGIApp, WSGIEnviron

if TYPE_CHECKING:
    from ._pmu import Request, WSGICall, WSGIPool
elif _pmu is not None:
    WSGICall, WSGIPool = _pmu.WSGICall, _pmu.WSGIPool

__all__ = ["WSGIHandler", "WSGIServer", "FileWrapper", "serve"]

log = logging.getLogger("pymongoose_uring")


# Bodies of a known length up to this size are sent in one piece with reply();
# larger ones (and bodies of unknown length) are streamed.
BUFFER_LIMIT = 1 << 20
_READ_SIZE = 65536

_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}

# Running the app on the ring thread (see the module's docstring): quick pool calls a
# path needs before it runs inline (times 4 after each inline call over budget, up to
# _INLINE_MAX), the ring time one batch may spend in inline calls, the gap between two
# calls that starts a new batch, and how many paths are tracked.
_INLINE_AFTER = 64
_INLINE_MAX = 1 << 20
_BATCH_BUDGET = 0.002
_BATCH_GAP = 0.000005
_INLINE_PATHS = 4096
# The pool's watchdog: requests waiting while no call ended for this long (seconds)
# wake one more pool thread (see binding/wsgi.c).
_STALL = 0.001
_ERROR_BODY = b"Internal Server Error"
_ERROR_HEADERS = [("Content-Type", "text/plain; charset=utf-8")]


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class FileWrapper:
    """``wsgi.file_wrapper`` (PEP 3333): wraps a file-like object the app returns.

    The adapter recognises its instances: a wrapped binary file whose ``fileno()``
    is a regular file is sent by the engine from the file (``Request.sendfile``:
    splice or read in C, no copy through Python), from the file's current position
    (``tell()``) to its end, or as far as the Content-Length the app gave; the
    Content-Length is the remaining size when the app gave none. Anything else (a
    BytesIO, a pipe, a socket) is iterated in ``blksize`` blocks. ``close()``
    closes the file (the adapter calls it after the answer, as PEP 3333 says).

    It iterates itself and delegates ``seekable()``/``seek()``/``tell()``, so that
    werkzeug's Range handling seeks the file instead of reading up to the range.
    """

    __slots__ = ("filelike", "blksize")

    def __init__(self, filelike: _Readable, blksize: int = _READ_SIZE) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> "FileWrapper":
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def seekable(self) -> bool:
        seekable = getattr(self.filelike, "seekable", None)
        return bool(seekable is not None and seekable())

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.filelike.seek(offset, whence)  # type: ignore[attr-defined, no-any-return]

    def tell(self) -> int:
        return self.filelike.tell()  # type: ignore[attr-defined, no-any-return]


def _regular_file(filelike: Any) -> Optional[Tuple[int, int, int]]:
    """(fd, position, size) of a binary file object on a regular file; None for
    anything else (no fileno, a pipe, a socket, a text file, a closed file)."""
    if isinstance(filelike, io.TextIOBase):
        return None
    try:
        fd = filelike.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        position = filelike.tell()
    except (AttributeError, OSError, ValueError, TypeError):
        return None
    if type(fd) is not int or type(position) is not int or position < 0:
        return None
    return fd, position, st.st_size


def _file_range(result: Any) -> Optional[Tuple[FileWrapper, int, Optional[int]]]:
    """(wrapper, offset, length) when result is werkzeug's range wrapper around our
    FileWrapper and has not been iterated yet (it would seek the file to offset and
    yield length bytes): Flask's send_file answering a Range request. None
    otherwise (then the result is iterated, which gives the same bytes)."""
    inner = getattr(result, "iterable", None)
    if type(inner) is not FileWrapper or type(result).__name__ != "_RangeWrapper":
        return None
    try:
        start, length = result.start_byte, result.byte_range
        fresh = result.read_length == 0 and result.seekable is True
    except AttributeError:
        return None
    if not fresh or type(start) is not int or start < 0:
        return None
    if length is not None and (type(length) is not int or length < 0):
        return None
    return inner, start, length


class _EmptyInput:
    """``wsgi.input`` of a request without a body."""

    __slots__ = ()

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""

    def readlines(self, hint: int = -1) -> List[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


_EMPTY_INPUT = _EmptyInput()


class _StreamInput:
    """``wsgi.input`` over a body that arrives in pieces (``request.read``)."""

    __slots__ = ("_read", "_buf", "_eof")

    def __init__(self, request: Request) -> None:
        self._read = request.read
        self._buf = b""
        self._eof = False

    def _more(self) -> bytes:
        if self._eof:
            return b""
        data = self._read(_READ_SIZE)
        if not data:
            self._eof = True
        return data

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buf]
            self._buf = b""
            while True:
                data = self._more()
                if not data:
                    return b"".join(parts)
                parts.append(data)
        buf = self._buf
        while len(buf) < size:
            data = self._more()
            if not data:
                break
            buf += data
        self._buf = buf[size:]
        return buf[:size]

    def readline(self, size: Optional[int] = -1) -> bytes:
        limit = -1 if size is None else size
        buf = self._buf
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                end = i + 1
                break
            if 0 <= limit <= len(buf):
                end = len(buf)
                break
            data = self._more()
            if not data:
                end = len(buf)
                break
            buf += data
        if 0 <= limit < end:
            end = limit
        self._buf = buf[end:]
        return buf[:end]

    def readlines(self, hint: int = -1) -> List[bytes]:
        lines: List[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def _header_key(name: str) -> str:
    """The environ key of a request header ("" to drop it)."""
    if "_" in name:
        return ""
    key = name.upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return key
    return "HTTP_" + key


def _latin1(text: str) -> str:
    """A str the engine decoded as UTF-8 (surrogateescape) as PEP 3333's
    "bytes as latin-1" native string."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


class _StartResponse:
    """start_response for one call; also the legacy write() callable."""

    __slots__ = ("request", "status", "headers", "streaming", "sent")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.status: Optional[str] = None
        self.headers: Optional[List[Tuple[str, str]]] = None
        self.streaming = False  # headers sent with request.start()
        self.sent = 0  # body bytes given to request.write()

    def __call__(
        self, status: str, headers: List[Tuple[str, str]], exc_info: Optional[ExcInfo] = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.streaming:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError(
                "start_response() was already called; pass exc_info to "
                "replace the status and headers"
            )
        if type(status) is not str:
            raise TypeError(f"status must be a str such as '200 OK', not {type(status).__name__}")
        if type(headers) is not list:
            raise TypeError(f"headers must be a list, not {type(headers).__name__}")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy write(): sends at once, streamed."""
        _write(self, data)


def _write(sr: Any, data: bytes) -> None:
    """The legacy write() of a start_response (ours, or the C one's write)."""
    if sr.status is None:
        raise AssertionError("write() before start_response()")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write() takes bytes, not {type(data).__name__}")
    if not sr.streaming:
        _start(sr)
    if data:
        sr.sent += len(data)
        if not sr.request.write(data):
            raise ConnectionError("the client disconnected")


_status_codes: Dict[str, int] = {}


def _status_code(status: str) -> int:
    code = _status_codes.get(status)
    if code is None:
        head = status[:4]
        if len(status) < 4 or head[3] != " " or not head[:3].isdigit():
            raise ValueError(f"bad WSGI status {status!r} (it must look like '200 OK')")
        code = int(head[:3])
        if len(_status_codes) < 256:
            _status_codes[status] = code
    return code


_SendableHeaders = Sequence[Tuple[str, Union[str, bytes]]]


def _checked_headers(headers: List[Tuple[str, str]]) -> Tuple[_SendableHeaders, Optional[str]]:
    """(headers the engine can send, the Content-Length value or None). Values
    are latin-1 in WSGI; the engine encodes str as UTF-8, so any non-ASCII
    value is passed as its latin-1 bytes."""
    length = None
    fixed: Optional[List[Tuple[str, Union[str, bytes]]]] = None
    for i, pair in enumerate(headers):
        name, value = pair
        if len(name) == 14 and name.lower() == "content-length":
            length = value
        if type(value) is str and not value.isascii():
            if fixed is None:
                fixed = list(headers)
            fixed[i] = (name, value.encode("latin-1"))
    return (headers if fixed is None else fixed), length


def _start(sr: Any) -> None:
    assert sr.status is not None and sr.headers is not None  # start_response() was called
    headers, _ = _checked_headers(sr.headers)
    sr.request.start(_status_code(sr.status), headers)
    sr.streaming = True


def _join(chunks: Iterable[bytes]) -> bytes:
    try:
        return b"".join(chunks)
    except TypeError:
        for c in chunks:
            if not isinstance(c, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"the WSGI app's body yielded {type(c).__name__}, not bytes"
                ) from None
        raise


class WSGIHandler:
    """The engine handler that runs a WSGI app on a pool of threads.

    ``Server(WSGIHandler(app), ...)`` works, but :class:`WSGIServer` also
    starts and stops the pool with the server. ``pool_threads`` threads call
    the app (they start on first use, or with :meth:`start`);
    ``url_scheme`` is ``wsgi.url_scheme`` (None, the default: ``https`` on a TLS
    connection, with ``HTTPS`` ``on``, else ``http``); ``script_name`` is ``SCRIPT_NAME``
    (the prefix the app is mounted under, stripped from ``PATH_INFO``);
    ``errors`` is ``wsgi.errors`` (default ``sys.stderr``); ``access_log``
    logs one line per request to the logger ``pymongoose_uring.access``;
    ``inline_ms`` is the budget of a call run on the ring thread (see the
    module's docstring; 0, the default: the app always runs on the pool);
    ``sched_batch`` runs the pool threads and the watchdog under SCHED_BATCH
    (:class:`WSGIServer` turns it on, with the engine knob of the same name for
    its ring threads: their wake-ups then do not preempt the app's thread).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        pool_threads: int = 8,
        url_scheme: Optional[str] = None,
        script_name: str = "",
        errors: Optional[IO[str]] = None,
        multiprocess: bool = False,
        access_log: bool = False,
        proxy_headers: bool = True,
        forwarded_allow_ips: Union[str, Iterable[str], None] = None,
        inline_ms: float = 0.0,
        sched_batch: bool = False,
    ) -> None:
        if not callable(app):
            raise TypeError("app must be a WSGI callable app(environ, start_response)")
        if pool_threads < 1:
            raise ValueError("pool_threads must be at least 1")
        if inline_ms < 0:
            raise ValueError("inline_ms must be 0 (never inline) or more")
        self.app = app
        self.pool_threads = pool_threads
        self.sched_batch = sched_batch
        self.access_log = access_log
        self.proxies = trusted_proxies(proxy_headers, forwarded_allow_ips)
        self.script_name = script_name.rstrip("/")
        # url_scheme None: from the connection (https over TLS, see _environ).
        self._scheme_fixed = url_scheme is not None
        self._base: Dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": url_scheme or "http",
            "wsgi.errors": errors if errors is not None else sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": self.script_name,
            "SERVER_SOFTWARE": "pymongoose_uring",
        }
        self._keys: Dict[str, str] = {}  # header name as sent -> environ key
        self._servers: Dict[Union[Tuple[str, int], str, None], Tuple[str, str]] = {}
        # The pool: a C queue (_pmu.WSGIPool) that the engine fills without the
        # GIL; each pool thread runs its serve() loop (see _work). Made by start().
        self._queue: Optional[WSGIPool] = None
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        # Inline calls: path -> [quick pool calls, quick calls needed, whether the last
        # ring call was over budget]; the current batch's start and the last inline
        # call's end (perf_counter seconds).
        self._budget = inline_ms / 1000.0
        self._paths: Dict[str, List[int]] = {}
        self._batch_start = 0.0
        self._batch_end = 0.0
        self._busy = 0  # pool threads running a request (inline mode)
        self._grace = 2 * sys.getswitchinterval()
        # The call of the app: in C (environ, start_response and the common answer)
        # unless the access log or a subclass's own _environ needs the Python path.
        self._run: Callable[[Request], Any] = self._handle
        if not access_log and type(self)._environ is WSGIHandler._environ:
            self._run = WSGICall(
                app,
                self._base,
                self.script_name,
                self.proxies,
                _StreamInput,
                io.BytesIO,
                _EMPTY_INPUT,
                self._finish,
                self._fail,
                _write,
                self._scheme_fixed,
            )

    # -- the pool ---------------------------------------------------------------

    def start(self) -> "WSGIHandler":
        """Start the pool threads (done on first use otherwise)."""
        with self._lock:
            if self._threads:
                return self
            queue = self._queue = WSGIPool(_STALL, sched_batch=self.sched_batch)
            for i in range(self.pool_threads):
                t = threading.Thread(
                    target=self._work,
                    args=(queue,),
                    name=f"pymongoose_uring-wsgi-{i}",
                    daemon=True,
                )
                t.start()
                self._threads.append(t)
        return self

    def _pmu_pool(self) -> Optional[WSGIPool]:
        """The engine's hook when it starts: the pool's queue, which it fills with
        the requests without the GIL; None when the app may run on the ring
        (``inline_ms``), which takes the GIL and this handler's __call__."""
        self.start()
        return None if self._budget else self._queue

    def close(self, timeout: Optional[float] = 10.0) -> None:
        """Stop the pool threads once the requests queued are done (call it
        after the server stopped)."""
        with self._lock:
            threads, self._threads = self._threads, []
            queue = self._queue
            if not threads or queue is None:
                return
            queue.close()
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def __call__(self, request: Request) -> None:
        """The engine handler (ring thread, GIL held) when it does not use the
        queue itself: run the request here when its path has proven quick
        (inline_ms), else queue it for the pool."""
        if self._budget:
            track = self._paths.get(request.raw_path)
            if track is not None and track[0] >= track[1] and not request.body_streaming:
                t0 = perf_counter()
                if t0 - self._batch_end > _BATCH_GAP:
                    self._batch_start = t0  # the ring went back to its I/O in between
                # While pool threads run, times include waits for the GIL they hold
                # (up to a switch interval each): then only a grace beyond counts.
                queue = self._queue
                grace = self._grace if self._busy or (queue is not None and len(queue)) else 0.0
                if t0 - self._batch_start < _BATCH_BUDGET + grace:
                    self._run(request)
                    end = self._batch_end = perf_counter()
                    if end - t0 <= self._budget + grace:
                        track[2] = 0
                    elif track[2]:
                        # Two calls in a row over budget (one alone may have been
                        # preempted by another process): too slow for the ring.
                        track[0], track[1], track[2] = 0, min(track[1] * 4, _INLINE_MAX), 0
                    else:
                        track[2] = 1
                    return
        queue = self._queue
        if queue is None or not self._threads:
            self.start()
            queue = self._queue
        assert queue is not None
        queue.put(request)

    def _work(self, queue: WSGIPool) -> None:
        """A pool thread: the queue's C loop calls the app (through _run) for each
        request; with inline_ms, through _timed, which also times the calls."""
        queue.serve(self._timed if self._budget else self._run)

    def _timed(self, request: Request) -> None:
        """_run, and the count of the path's quick calls (inline_ms)."""
        path, streamed = request.raw_path, request.body_streaming  # while it is live
        t0 = perf_counter()
        self._busy += 1
        try:
            self._run(request)
        finally:
            self._busy -= 1
        # Count the path's quick calls in a row (a streamed body's reads wait for the
        # network: those calls say nothing of the app).
        quick = perf_counter() - t0 <= self._budget
        track = self._paths.get(path)
        if track is None:
            if quick and len(self._paths) < _INLINE_PATHS and not streamed:
                self._paths[path] = [1, _INLINE_AFTER, 0]
        elif quick:
            if not streamed:
                track[0] += 1
        else:
            # Halved, not reset: a pool call's time includes its waits for the GIL,
            # which a busy ring makes long now and then; a path that blocks often
            # never reaches the count.
            track[0] //= 2

    # -- one request ---------------------------------------------------------------

    def _environ(self, request: Request) -> WSGIEnviron:
        env = self._base.copy()
        env["REQUEST_METHOD"] = request.method
        raw = request.raw_path
        if "%" in raw:
            path = unquote_to_bytes(
                raw if raw.isascii() else raw.encode("utf-8", "surrogateescape")
            ).decode("latin-1")
        elif raw.isascii():
            path = raw
        else:
            path = _latin1(raw)
        script = self.script_name
        if script and (path == script or path.startswith(script + "/")):
            path = path[len(script) :]
        env["PATH_INFO"] = path
        qs = request.query_string
        env["QUERY_STRING"] = qs if qs.isascii() else _latin1(qs)
        target = request.target
        env["RAW_URI"] = target if target.isascii() else _latin1(target)
        env["SERVER_PROTOCOL"] = _PROTOCOLS.get(request.http_version) or (
            "HTTP/" + request.http_version
        )
        server = request.server
        names = self._servers.get(server)
        if names is None:
            if isinstance(server, tuple):
                names = (server[0], str(server[1]))
            else:  # a Unix socket path
                names = ("localhost", "0")
            if len(self._servers) < 64:
                self._servers[server] = names
        env["SERVER_NAME"], env["SERVER_PORT"] = names
        client = request.client
        if client is not None:
            env["REMOTE_ADDR"] = client[0]
            env["REMOTE_PORT"] = str(client[1])
        else:
            env["REMOTE_ADDR"] = ""
        keys = self._keys
        for name, value in request.headers._pairs:
            key = keys.get(name)
            if key is None:
                key = _header_key(name)
                if len(keys) < 1024:
                    keys[name] = key
                if not key:
                    continue
            elif not key:
                continue
            old = env.get(key)
            if old is None:
                env[key] = value
            else:
                env[key] = old + ("; " if key == "HTTP_COOKIE" else ", ") + value
        if request.scheme == "https":  # a TLS connection
            env["HTTPS"] = "on"
            if not self._scheme_fixed:
                env["wsgi.url_scheme"] = "https"
        proxies = self.proxies
        if proxies is not None:
            forwarded_for = env.get("HTTP_X_FORWARDED_FOR")
            forwarded_proto = env.get("HTTP_X_FORWARDED_PROTO")
        if (
            proxies is not None
            and (forwarded_for is not None or forwarded_proto is not None)
            and proxies.trusts(client)  # (asked only when a proxy header came)
        ):
            if forwarded_for is not None:
                client = proxies.client(forwarded_for, client)
                if client is not None:  # None: a Unix socket peer, and no address named
                    env["REMOTE_ADDR"], env["REMOTE_PORT"] = client[0], str(client[1])
            if forwarded_proto is not None:
                env["wsgi.url_scheme"] = proxies.scheme(forwarded_proto, env["wsgi.url_scheme"])
        if request.body_streaming:
            env["wsgi.input"] = _StreamInput(request)
        else:
            body = request.body
            if body:
                env["wsgi.input"] = io.BytesIO(body)
                if "CONTENT_LENGTH" not in env:  # a chunked body, de-chunked by the engine
                    env["CONTENT_LENGTH"] = str(len(body))
            else:
                env["wsgi.input"] = _EMPTY_INPUT
        return env

    def _handle(self, request: Request) -> None:
        """Run the app for one request and answer it (a pool thread): the Python
        path, taken with the access log on or when a subclass replaces
        _environ; _run is the C path (_pmu.WSGICall) otherwise."""
        t0 = perf_counter() if self.access_log else 0.0  # the access log's duration
        sr = _StartResponse(request)
        try:
            environ = self._environ(request)
            result = self.app(environ, sr)
        except Exception:
            self._fail(request, sr, "the WSGI app raised")
            return
        status = self._finish(request, sr, result, environ)
        if self.access_log:
            # REMOTE_ADDR: behind a trusted proxy, its client.
            client = (
                (environ["REMOTE_ADDR"], environ["REMOTE_PORT"])
                if environ.get("REMOTE_ADDR") and "REMOTE_PORT" in environ
                else None
            )
            log_access(
                client,
                environ["REQUEST_METHOD"],
                environ["RAW_URI"],
                request.http_version,
                status if status is not None else 500,
                None,
                duration=perf_counter() - t0,
            )

    def _finish(
        self, request: Request, sr: Any, result: Any, environ: WSGIEnviron
    ) -> Optional[int]:
        """Answer with what the app returned, then close() it (the C path calls
        this for every answer it does not send itself). Returns the status sent,
        or None when the app's response failed (answered 500 or cut off)."""
        status: Optional[int] = None
        try:
            status = self._respond(request, sr, result, environ)
        except Exception:
            self._fail(request, sr, "the WSGI app's response failed")
        finally:
            close = None if type(result) is list else getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("the WSGI app's close() raised")
        return status

    def _respond(
        self,
        request: Request,
        sr: Any,
        result: Any,  # what the app returned: an iterable of bytes, checked here
        environ: WSGIEnviron,
    ) -> int:
        kind = type(result)
        if sr.status is not None and not sr.streaming:
            if kind is FileWrapper:
                code = self._send_file(request, sr, result, None, None, environ)
                if code is not None:
                    return code
            elif kind is not list and kind is not tuple:
                found = _file_range(result)
                if found is not None:
                    code = self._send_file(request, sr, found[0], found[1], found[2], environ)
                    if code is not None:
                        return code
        if (kind is list or kind is tuple) and not sr.streaming:
            if sr.status is None:
                raise RuntimeError("the WSGI app returned without calling start_response()")
            n = len(result)
            if n == 1 and type(result[0]) is bytes:
                body = result[0]
            else:
                body = _join(result)
            return self._reply(request, sr, body, environ)
        if kind is str or kind is bytes:
            raise TypeError(
                "the WSGI app returned a str/bytes; it must return an iterable of bytes (a list)"
            )
        it = iter(result)
        # A body of known, moderate length still goes in one piece; otherwise
        # each chunk is sent as the app yields it.
        first = None
        for chunk in it:  # start_response may be called during the first iteration
            first = chunk
            break
        if sr.status is None:
            raise RuntimeError("the WSGI app returned without calling start_response()")
        assert sr.headers is not None  # with the status
        if not sr.streaming:
            length = _checked_headers(sr.headers)[1]
            if first is None:
                return self._reply(request, sr, b"", environ)
            if length is not None:
                try:
                    small = int(length) <= BUFFER_LIMIT
                except ValueError:
                    small = False
            else:  # no length given: is the body one chunk (PEP 3333's len() hint)?
                try:
                    small = len(result) == 1
                except Exception:
                    small = False
            if small:
                rest = _join(it)  # usually nothing more
                return self._reply(request, sr, first + rest if rest else first, environ)
            _start(sr)
        write = request.write
        sent = sr.sent
        if first:
            sent += len(first)
        if not first or write(first):
            for chunk in it:
                if chunk:
                    sent += len(chunk)
                    if not write(chunk):
                        break  # the client left: stop producing
        sr.sent = sent
        code = _status_code(sr.status)
        declared = declared_length(sr.headers)
        if (
            declared is not None
            and sent != declared
            and code != 204
            and code != 304
            and environ["REQUEST_METHOD"] != "HEAD"
            and not request.disconnected
        ):
            length_mismatch("WSGI", environ["REQUEST_METHOD"], environ["RAW_URI"], sent, declared)
            if sent < declared:
                request.abort()  # never complete: the client must not take it for whole
                return code
        request.end()  # (a longer body was cut off at the length, and the connection closes)
        return code

    def _send_file(
        self,
        request: Request,
        sr: Any,
        wrapper: FileWrapper,
        offset: Optional[int],
        length: Optional[int],
        environ: WSGIEnviron,
    ) -> Optional[int]:
        """Answer with the file a FileWrapper wraps, sent by the engine: from offset
        (None: the file's position) for length bytes (None: to the end), bounded by
        the app's Content-Length. None when the wrapped object is not a regular
        file (then it is iterated)."""
        found = _regular_file(wrapper.filelike)
        if found is None:
            return None
        assert sr.status is not None and sr.headers is not None
        fd, position, size = found
        if offset is None:
            offset = position
        available = max(size - offset, 0)
        if length is not None:
            available = min(available, length)
        code = _status_code(sr.status)
        headers, _ = _checked_headers(sr.headers)
        declared = declared_length(headers)
        bodiless = code < 200 or code == 204 or code == 304
        if declared is None and not bodiless:
            headers = [*headers, ("Content-Length", str(available))]
        method = environ["REQUEST_METHOD"]
        request.start(code, headers)
        sr.streaming = True
        if method == "HEAD" or bodiless:
            request.end()
            return code
        count = available if declared is None else min(declared, available)
        if count and not request.sendfile(fd, offset, count):
            request.end()  # the client left
            return code
        sr.sent = count
        if declared is not None and declared > count and not request.disconnected:
            # The file ends before the length the app declared: the client must
            # see the answer incomplete (the connection closes after the bytes).
            length_mismatch("WSGI", method, environ["RAW_URI"], count, declared)
            request.abort()
            return code
        request.end()
        return code

    def _reply(self, request: Request, sr: Any, body: bytes, environ: WSGIEnviron) -> int:
        assert sr.status is not None and sr.headers is not None  # the app called start_response
        code = _status_code(sr.status)
        headers, length = _checked_headers(sr.headers)
        method = environ["REQUEST_METHOD"]
        if not body and method == "HEAD":
            # HEAD keeps the Content-Length the app gave (the length of the GET body).
            request.start(code, headers)
            request.end()
            return code
        if (
            length is not None
            and length != str(len(body))  # (the usual case: the app's length is right)
            and code != 204
            and code != 304
            and method != "HEAD"
        ):
            declared = declared_length(headers)
            if declared is not None and declared != len(body):
                # Sent under the length the app declared, as the app said: the
                # engine closes the connection after a shorter body (the client
                # sees it incomplete) or cuts a longer one off at the length.
                length_mismatch("WSGI", method, environ["RAW_URI"], len(body), declared)
                request.start(code, headers)
                if body:
                    request.write(body)
                request.end()
                return code
        request.reply(Response(body, code, headers, None))
        return code

    def _fail(self, request: Request, sr: Any, what: str) -> None:
        log.exception(
            "%s; %s %s", what, getattr(request, "method", "?"), getattr(request, "target", "?")
        )
        try:
            if sr.streaming:
                request.abort()  # headers are out: the client must see the body fail
            elif not request.answered:
                request.reply(Response(_ERROR_BODY, 500, _ERROR_HEADERS, None))
        except Exception:
            log.exception("could not answer after the WSGI app failed")


class WSGIServer(AdapterServer):
    """A :class:`Server` running a WSGI app, with its thread pool.

    ``WSGIServer(app, host, port, pool_threads=8, url_scheme=None,
    script_name="", access_log=False, **server_options)``: the server
    options are :class:`Server`'s (``threads`` ring threads, ``unix_path``,
    every engine knob). The engine knob ``sched_batch`` is on unless given:
    the ring threads, the pool threads and the watchdog run under SCHED_BATCH,
    so a ring thread woken by the network does not preempt the thread running
    the app on its CPU (``sched_batch=False``: the normal policy for all).
    ``run()`` serves until SIGINT/SIGTERM; ``start()`` / ``stop()`` and
    ``with`` run it in the background.
    """

    def __init__(
        self,
        app: WSGIApp,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        pool_threads: int = 8,
        url_scheme: Optional[str] = None,
        script_name: str = "",
        errors: Optional[IO[str]] = None,
        multiprocess: bool = False,
        access_log: bool = False,
        proxy_headers: bool = True,
        forwarded_allow_ips: Union[str, Iterable[str], None] = None,
        inline_ms: float = 0.0,
        **server_options: Any,
    ) -> None:
        # The engine knob, on unless given: the ring threads and the pool's.
        sched_batch = server_options.get("sched_batch")
        server_options["sched_batch"] = sched_batch = (
            True if sched_batch is None else bool(sched_batch)
        )
        self.handler = WSGIHandler(
            app,
            pool_threads=pool_threads,
            url_scheme=url_scheme,
            script_name=script_name,
            errors=errors,
            multiprocess=multiprocess,
            access_log=access_log,
            proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips,
            inline_ms=inline_ms,
            sched_batch=sched_batch,
        )
        super().__init__(self.handler, host, port, server_options)

    def _before_start(self) -> None:
        self.handler.start()

    def _after_stop(self, grace: Optional[float] = None) -> None:
        self.handler.close(10.0 if grace is None else grace)


def serve(app: WSGIApp, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve a WSGI app until SIGINT or SIGTERM (see :class:`WSGIServer`)."""
    WSGIServer(app, host, port, **options).run()
