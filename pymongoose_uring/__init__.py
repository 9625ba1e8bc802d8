"""pymongoose_uring: an HTTP/1.1 server for Python on a C io_uring engine.

Handlers are plain Python callables; the engine's ring threads parse and
send in C and take the GIL once per batch of completed requests::

    from pymongoose_uring import App, Server

    app = App()

    @app.get("/")
    def hello(request):
        return {"message": "Hello, World!"}

    Server(app, port=8000).run()

``import pymongoose_uring`` works everywhere; creating a :class:`Server`
where io_uring is unavailable raises :class:`UnavailableError` naming the
reason (see :func:`probe`).
"""

from ._datastructures import Headers, QueryParams
from ._native import (
    ClientDisconnected,
    ConnectionClosed,
    Error,
    FileResponse,
    Response,
    UnavailableError,
)
from ._routing import App
from ._server import Knob, Server, config_defaults, knobs, probe
from ._websocket import (
    AsyncWebSocket,
    WebSocketClosed,
    WebSocketDisconnect,
    WebSocketRequest,
    broadcast,
)

try:
    from ._native import _pmu as _ext

    Request = _ext.Request
    WebSocket = _ext.WebSocket
    StaticMount = _ext.StaticMount
    Connection = _ext.Connection
    del _ext
except AttributeError:  # pragma: no cover - extension missing
    Request = None  # type: ignore[assignment,misc]
    WebSocket = None  # type: ignore[assignment,misc]
    StaticMount = None  # type: ignore[assignment,misc]
    Connection = None  # type: ignore[assignment,misc]

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncWebSocket",
    "ClientDisconnected",
    "Connection",
    "ConnectionClosed",
    "Error",
    "FileResponse",
    "Headers",
    "QueryParams",
    "Request",
    "Response",
    "Server",
    "StaticMount",
    "UnavailableError",
    "WebSocket",
    "WebSocketClosed",
    "WebSocketDisconnect",
    "WebSocketRequest",
    "broadcast",
    "config_defaults",
    "Knob",
    "knobs",
    "probe",
    "__version__",
]
