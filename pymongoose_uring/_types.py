"""Type aliases for what handlers take and return, and for the WSGI and ASGI
interfaces the adapters serve (for annotations only: nothing here runs)."""

from __future__ import annotations

from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Coroutine,
    Dict,
    Iterable,
    List,
    Mapping,
    MutableMapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

if TYPE_CHECKING:
    from ._pmu import FileResponse, Request, Response

__all__ = [
    "HeaderValue",
    "HeadersLike",
    "Body",
    "HandlerResult",
    "Handler",
    "AsyncHandler",
    "AsyncBatch",
    "ExcInfo",
    "StartResponse",
    "WSGIEnviron",
    "WSGIApp",
    "Scope",
    "Message",
    "Receive",
    "Send",
    "ASGIApp",
]

# --- native handlers: handler(request) -> one of the forms the README lists.
HeaderValue = Union[str, bytes, int]
HeadersLike = Union[
    None,
    Mapping[str, Union[HeaderValue, Sequence[HeaderValue]]],
    Sequence[Tuple[Union[str, bytes], HeaderValue]],
]
Body = Union[bytes, bytearray, memoryview, str, Dict[str, Any], List[Any]]
HandlerResult = Union[
    "Response",
    "FileResponse",
    Body,
    int,
    Tuple[Body, int],
    Tuple[Body, int, HeadersLike],
    Tuple[int, Body],
    Tuple[int, HeadersLike, Body],
    Coroutine[Any, Any, Any],
    None,
]
Handler = Callable[["Request"], HandlerResult]
AsyncHandler = Callable[["Request"], Awaitable[HandlerResult]]
# What the engine hands the asyncio bridge: the requests of one batch whose
# handlers returned a coroutine, each with its coroutine.
AsyncBatch = List[Tuple["Request", Awaitable[HandlerResult]]]

# --- WSGI (PEP 3333).
ExcInfo = Tuple[Type[BaseException], BaseException, Optional[TracebackType]]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIEnviron = Dict[str, Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

# --- ASGI 3.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
