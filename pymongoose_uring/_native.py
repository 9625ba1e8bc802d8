"""Load the C extension, or record why it could not be loaded.

``import pymongoose_uring`` must work everywhere (so that apps can be
defined, type-checked and tested for import on any platform); only creating
a server needs the engine. When ``_pmu`` is missing, ``IMPORT_ERROR`` says
why, and a pure-Python ``Response`` with the same interface stands in.
"""

from __future__ import annotations

import json as _json
from typing import Any, Optional, Union

from ._types import HeadersLike

__all__ = [
    "_pmu",
    "IMPORT_ERROR",
    "Response",
    "FileResponse",
    "Error",
    "UnavailableError",
    "ClientDisconnected",
    "ConnectionClosed",
    "hold_wakeups",
    "flush_wakeups",
]

IMPORT_ERROR: Optional[BaseException] = None

try:
    from . import _pmu
except ImportError as exc:  # not built, or not Linux
    _pmu = None  # type: ignore[assignment]
    IMPORT_ERROR = exc


def _no_hold() -> None:
    return None


def _no_flush() -> int:
    return 0


# hold_wakeups() / flush_wakeups(): an event loop thread holds the ring wake-ups of the
# answers it gives in one turn, then wakes each ring once (see _pmu.hold_wakeups).
hold_wakeups = getattr(_pmu, "hold_wakeups", _no_hold)
flush_wakeups = getattr(_pmu, "flush_wakeups", _no_flush)

if _pmu is not None:
    Response = _pmu.Response
    FileResponse = _pmu.FileResponse
    Error = _pmu.Error
    UnavailableError = _pmu.UnavailableError
    ClientDisconnected = _pmu.ClientDisconnected
    ConnectionClosed = _pmu.ConnectionClosed
else:

    class Error(OSError):  # type: ignore[no-redef]
        """The engine refused: (errno, message naming the cause and the fix)."""

    class UnavailableError(Error):  # type: ignore[no-redef]
        """io_uring (or the C engine) cannot be used here."""

    class ClientDisconnected(ConnectionError):  # type: ignore[no-redef]
        """The client closed the connection before the request's body (or its
        streamed answer) was complete."""

    class ConnectionClosed(OSError):  # type: ignore[no-redef]
        """The connection is closing or closed: the data was not sent."""

    class FileResponse:  # type: ignore[no-redef]
        """Pure-Python stand-in for pymongoose_uring._pmu.FileResponse (a file as
        a handler's answer; only a server with the engine can send it)."""

        def __init__(
            self,
            path: Any,
            *,
            status: int = 200,
            headers: HeadersLike = None,
            content_type: Optional[str] = None,
            cache_control: Optional[str] = None,
        ) -> None:
            if not 200 <= status <= 999:
                raise ValueError(f"a FileResponse's status must be 200..999, not {status}")
            self.path, self.status, self.headers = path, status, headers
            self.content_type, self.cache_control = content_type, cache_control

    _TEXT = "text/plain; charset=utf-8"
    _missing: Any = object()

    class Response:  # type: ignore[no-redef]
        """Pure-Python stand-in for pymongoose_uring._pmu.Response."""

        def __init__(
            self,
            body: Union[bytes, bytearray, memoryview, str, None] = b"",
            status: int = 200,
            headers: HeadersLike = None,
            content_type: Optional[str] = _missing,
        ) -> None:
            if body is None:
                body = b""
            if isinstance(body, (bytearray, memoryview)):
                body = bytes(body)
            if not isinstance(body, (bytes, str)):
                raise TypeError("Response body must be bytes or str")
            if not 200 <= status <= 999:  # the engine's pmu_status_valid()
                raise ValueError(
                    f"HTTP status {status} cannot be sent: a final status is "
                    f"200..999 (1xx are interim answers, and protocol upgrades "
                    f"are not supported)"
                )
            if content_type is _missing:
                content_type = _TEXT if isinstance(body, str) else "application/octet-stream"
            self._body, self.status, self.headers = body, status, headers
            self.content_type = content_type

        @property
        def body(self) -> bytes:
            b = self._body
            return b.encode() if isinstance(b, str) else b

        @classmethod
        def json(cls, data: Any, status: int = 200, headers: HeadersLike = None) -> "Response":
            return cls(
                _json.dumps(data, separators=(",", ":")), status, headers, "application/json"
            )

        @classmethod
        def text(cls, text: str, status: int = 200, headers: HeadersLike = None) -> "Response":
            return cls(text, status, headers, _TEXT)

        @classmethod
        def html(cls, html: str, status: int = 200, headers: HeadersLike = None) -> "Response":
            return cls(html, status, headers, "text/html; charset=utf-8")

        @classmethod
        def redirect(
            cls, location: str, status: int = 307, headers: HeadersLike = None
        ) -> "Response":
            pairs = [("Location", location)]
            if headers:
                pairs += list(headers.items() if hasattr(headers, "items") else headers)
            return cls(b"", status, pairs, None)

        @classmethod
        def file(cls, path: Any, **kw: Any) -> "FileResponse":
            return FileResponse(path, **kw)
