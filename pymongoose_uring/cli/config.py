"""Command line: serve a native, WSGI or ASGI app, or report what the kernel offers.

    python -m pymongoose_uring myapp:app --port 8000              # interface detected
    python -m pymongoose_uring myflask:app --interface wsgi --pool-threads 16
    python -m pymongoose_uring myfastapi:app --interface asgi --workers 4 --port 8000
    python -m pymongoose_uring --hello --port 8000     # built-in hello-world JSON app
    python -m pymongoose_uring --static /=./public --port 8000     # a static file server
    python -m pymongoose_uring myapp:app --static /assets=./assets # files in front of an app
    python -m pymongoose_uring --probe                 # io_uring features, as JSON

The interface is detected when --interface is omitted: an App (or handler(request))
is native, app(environ, start_response) is WSGI, async app(scope, receive, send) is
ASGI 3. --workers N forks N processes, each with its own server, on listening
sockets the parent holds (one SO_REUSEPORT socket per worker for TCP); the parent
restarts a worker that dies, replaces them one by one on SIGHUP (new code, no
connection refused), and stops them all gracefully on SIGTERM or SIGINT. Every
engine knob but those of connection handlers is an option (--ring-entries,
--buf-size, --sqpoll 1...) with the engine's default shown below; uvicorn's
--ws-max-size, --ws-ping-interval, --ws-ping-timeout and --ws-per-message-deflate
set the WebSocket knobs they correspond to.

--ssl-certfile PATH (and --ssl-keyfile PATH) serves HTTPS on the listener:
TLS 1.2 and 1.3, the certificate chosen by SNI among those of --ssl-sni-cert,
client certificates with --ssl-ca-certs and --ssl-cert-reqs; SIGUSR2 makes every
worker read its certificate files again (no connection closed), SIGHUP replaces
the workers one by one (new code and new certificates).

--static URL_PREFIX=DIR (repeatable) mounts a directory that the engine serves
itself, before the app sees the request (no Python per file; ETag, 304, Range,
precompressed .br/.gz siblings, index.html): a path the directory lacks is 404,
except under the prefix "/" with an app given, where the app gets it. Without
an app the command is a static file server alone.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Server arguments that are CLI options of their own, not engine knobs.
LISTEN = ("host", "port", "unix_path", "threads", "listen_fd")
# Knobs of servers with a connection_handler (raw TCP, compat): an app run from
# the command line has none, so they are not options (--raw would start a server
# that can serve nothing).
CONNECTION_HANDLER_KNOBS = (
    "raw",
    "conn_io_events",
    "conn_send_high_water",
    "conn_send_limit",
    "raw_idle_timeout_ms",
    "ssl_cert_per_conn",
)
# TLS knobs whose options are in the HTTPS group under uvicorn's names (the others,
# --ssl-ticket-rotate-ms, --ssl-max-handshakes..., are generated from the table).
TLS_NAMED_KNOBS = (
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_keyfile_password",
    "ssl_ca_certs",
    "ssl_cert_reqs",
    "ssl_ciphers",
    "ssl_ciphersuites",
    "ssl_min_version",
    "ssl_alpn",
)
# uvicorn's --ssl-version (an ssl.PROTOCOL_* number) as our minimum version: None keeps the
# default (TLS 1.2, 1.3 preferred); the protocols older than TLS 1.2 are refused.
_SSL_VERSIONS = {2: None, 17: None, 5: "TLSv1.2"}


@dataclass
class Config:
    """Everything one run of the command line needs, parsed and checked: the
    supervisor and every worker build their servers from it."""

    app: Optional[str] = None
    interface: str = "auto"
    hello: bool = False
    probe: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    unix_path: Optional[str] = None
    fd: Optional[int] = None
    threads: int = 1
    workers: int = 1
    max_requests: int = 0
    max_requests_jitter: int = 0
    reload: bool = False
    reload_dir: Optional[List[str]] = None
    access_log: bool = False
    log_level: Optional[str] = None  # None: warning, or what --log-config says
    proxy_headers: bool = True
    forwarded_allow_ips: Optional[str] = None
    pool_threads: int = 8
    inline_ms: float = 0.0
    script_name: str = ""
    lifespan: str = "auto"
    loop: str = "auto"
    asgi_ring: str = "auto"
    root_path: str = ""
    ws: str = "auto"
    ws_max_queue: int = 32
    # --static URL_PREFIX=DIR, in the order given, as (prefix, directory).
    statics: List[Tuple[str, str]] = field(default_factory=list)
    static_listing: bool = False
    static_dotfiles: bool = False
    static_cache_control: Optional[str] = None
    static_precompressed: bool = True
    # uvicorn/gunicorn names: --env-file, --app-dir, --factory, --log-config,
    # --access-log-format (the engine knobs they set are in engine).
    env_file: Optional[str] = None
    app_dir: str = "."
    factory: bool = False
    log_config: Optional[str] = None
    access_log_format: Optional[str] = None
    access_logfile: Optional[str] = None
    error_logfile: Optional[str] = None
    # --env KEY=VALUE, in the order given.
    env: List[Tuple[str, str]] = field(default_factory=list)
    # --ssl-sni-cert CERTFILE,KEYFILE[,PASSWORD], in the order given (Server's ssl_sni_certs).
    ssl_sni_certs: List[Tuple[str, ...]] = field(default_factory=list)
    # Engine knobs given on the command line (the rest keep the engine's defaults).
    engine: Dict[str, Any] = field(default_factory=dict)

    @property
    def supervised(self) -> bool:
        """Whether a supervisor forks the workers (rather than one process serving)."""
        return self.workers > 1 or self.max_requests > 0 or self.reload


def _version_line() -> str:
    """What --version prints, as uvicorn's: "pymongoose_uring 0.1.0 (engine 0.1.0)
    with CPython 3.11.2 on Linux 6.1.0"."""
    import platform

    from .. import __version__, _native

    pmu = _native._pmu
    engine = pmu.ENGINE_VERSION if pmu is not None else "not importable"
    return (
        f"pymongoose_uring {__version__} (engine {engine}) with "
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()} {platform.release()}"
    )


def build_parser(defaults: Dict[str, Any]) -> argparse.ArgumentParser:
    """The argument parser; defaults are the engine's knobs and their defaults
    (config_defaults()), one option each."""
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="python -m pymongoose_uring",
        allow_abbrev=False,
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "app",
        nargs="?",
        help="MODULE:ATTRIBUTE of the app (an App, a handler, a WSGI or an ASGI app)",
    )
    p.add_argument(
        "--interface",
        choices=("auto", "native", "wsgi", "asgi", "asgi3"),
        default="auto",
        help="how to call the app (default: detected from the app)",
    )
    p.add_argument("--hello", action="store_true", help="serve the built-in hello-world app")
    p.add_argument(
        "--version",
        action="version",
        version=_version_line(),
        help="print the version (package, engine, Python, kernel) and exit",
    )
    p.add_argument("--probe", action="store_true", help="print probe() as JSON and exit")
    g = p.add_argument_group("listening and processes")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any)")
    g.add_argument(
        "--uds",
        "--unix-path",
        dest="unix_path",
        default=None,
        metavar="PATH",
        help="listen on this Unix socket instead of TCP",
    )
    g.add_argument(
        "--fd",
        "--listen-fd",
        dest="fd",
        type=int,
        default=None,
        metavar="FD",
        help="serve on this inherited listening socket (TCP or Unix) instead of binding one",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ring threads per process, one io_uring each (default 1)",
    )
    g.add_argument(
        "--workers",
        "-w",
        type=int,
        default=1,
        help="processes, supervised: the supervisor holds the listening sockets "
        "(one SO_REUSEPORT socket per worker for TCP), so connections wait "
        "while a worker that died is restarted; SIGTERM/SIGINT stop them all "
        "gracefully (default 1: no supervisor)",
    )
    g.add_argument(
        "--max-requests",
        "--limit-max-requests",
        dest="max_requests",
        type=int,
        default=0,
        metavar="N",
        help="replace a worker after it served N requests (frees what a leaky app "
        "holds; no connection is lost; implies the supervisor; default 0: "
        "never)",
    )
    g.add_argument(
        "--reload",
        action="store_true",
        help="for development: replace the workers (as SIGHUP does) when a .py "
        "file under --reload-dir changes; implies the supervisor",
    )
    g.add_argument(
        "--reload-dir",
        action="append",
        default=None,
        metavar="DIR",
        help="where --reload watches (repeatable; default: the current directory)",
    )
    g.add_argument(
        "--max-requests-jitter",
        type=int,
        default=0,
        metavar="J",
        help="add 0..J at random to each worker's --max-requests, so that "
        "workers are not replaced all at once",
    )
    g.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log one line per request to stderr (logger pymongoose_uring.access; default off)",
    )
    g.add_argument(
        "--access-logfile",
        default=None,
        metavar="PATH",
        help="log one line per request to this file ('-': stdout), as gunicorn's; "
        "implies --access-log",
    )
    g.add_argument(
        "--error-logfile",
        "--log-file",
        dest="error_logfile",
        default=None,
        metavar="PATH",
        help="the pymongoose_uring logger's lines to this file instead of stderr ('-': stderr)",
    )
    g.add_argument(
        "--access-log-format",
        "--access-logformat",
        dest="access_log_format",
        default=None,
        metavar="FORMAT",
        help="the access line in gunicorn's atoms, e.g. '%%(h)s %%(l)s %%(u)s %%(t)s "
        '"%%(r)s" %%(s)s %%(b)s "%%(f)s" "%%(a)s" %%(D)s\' (h l u t r m U q H s b B f '
        "a T M D L p; default: 'CLIENT - \"REQUEST LINE\" STATUS LENGTH')",
    )
    g.add_argument(
        "--log-level",
        default=None,
        choices=("trace", "debug", "info", "warning", "error", "critical"),
        help="level of the pymongoose_uring logger (default warning, or what "
        "--log-config sets; trace means debug)",
    )
    g.add_argument(
        "--log-config",
        default=None,
        metavar="PATH",
        help="logging configuration, as uvicorn reads it: .json, .yaml or .yml "
        "(PyYAML) through logging.config.dictConfig, any other file through "
        "fileConfig; the loggers are pymongoose_uring and pymongoose_uring.access",
    )
    u = p.add_argument_group(
        "uvicorn's and gunicorn's names (each sets an engine knob or loads the app)"
    )
    u.add_argument(
        "--bind",
        "-b",
        default=None,
        type=_bind,
        metavar="ADDRESS",
        help="gunicorn's form of --host/--port, --uds, --fd: HOST:PORT, [IPv6]:PORT, "
        "HOST, unix:PATH or fd://N",
    )
    u.add_argument(
        "--env",
        "-e",
        dest="env",
        action="append",
        default=[],
        type=_env_pair,
        metavar="KEY=VALUE",
        help="set an environment variable before the app is loaded (repeatable; after --env-file)",
    )
    u.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="look for the app's module in DIR first (put on sys.path; default: the "
        "current directory)",
    )
    u.add_argument(
        "--factory",
        action="store_true",
        help="MODULE:ATTRIBUTE is a function that returns the app: call it",
    )
    u.add_argument(
        "--env-file",
        default=None,
        metavar="PATH",
        help="set environment variables from this .env file (KEY=VALUE lines; "
        "python-dotenv when installed) before the app is loaded",
    )
    u.add_argument(
        "--timeout-keep-alive",
        "--keep-alive",
        dest="timeout_keep_alive",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close a kept-alive connection idle this long (keepalive_timeout_ms)",
    )
    u.add_argument(
        "--timeout-graceful-shutdown",
        "--graceful-timeout",
        dest="timeout_graceful_shutdown",
        type=float,
        default=None,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, wait this long for requests in flight (shutdown_timeout_ms)",
    )
    u.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="open connections at most; beyond, a new one gets 503 (max_connections)",
    )
    u.add_argument(
        "--limit-request-body",
        type=int,
        default=None,
        metavar="BYTES",
        help="larger request bodies get 413, 0: no cap (max_body_bytes; default: none "
        "for WSGI and ASGI apps, 1 MiB for native apps)",
    )
    u.add_argument(
        "--no-server-header",
        dest="server_header_off",
        action="store_true",
        help="send no Server header (server_header '')",
    )
    u.add_argument(
        "--no-date-header",
        dest="date_header_off",
        action="store_true",
        help="send no Date header (date_header 0)",
    )
    u.add_argument(
        "--header",
        dest="headers",
        action="append",
        default=[],
        type=_header_option,
        metavar="NAME:VALUE",
        help="add this header to every answer (repeatable; extra_headers)",
    )
    x = p.add_argument_group("behind a reverse proxy (WSGI and ASGI apps)")
    x.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take the client address and scheme from X-Forwarded-For and "
        "X-Forwarded-Proto when the peer is a trusted proxy (default on)",
    )
    x.add_argument(
        "--forwarded-allow-ips",
        default=None,
        metavar="LIST",
        help="the trusted proxies: comma-separated addresses, networks "
        "(10.0.0.0/8), 'unix:' (peers on a Unix socket) or '*' (default "
        "$FORWARDED_ALLOW_IPS, else 127.0.0.1,::1)",
    )
    w = p.add_argument_group("WSGI")
    w.add_argument(
        "--pool-threads",
        "--wsgi-threads",
        dest="pool_threads",
        type=int,
        default=8,
        help="Python threads that call the WSGI app (default 8)",
    )
    w.add_argument(
        "--wsgi-inline-ms",
        dest="inline_ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="call a path proven quick (64 pool calls under MS ms) on the ring thread, "
        "saving the thread handoff; 0: never (default; see the README: a call on the "
        "ring blocks it)",
    )
    w.add_argument(
        "--script-name",
        default="",
        help="SCRIPT_NAME: the URL prefix the WSGI app is mounted under",
    )
    a = p.add_argument_group("ASGI")
    a.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="ASGI lifespan: auto (used when the app supports it), on, off",
    )
    a.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop for ASGI (default auto: uvloop when installed)",
    )
    a.add_argument(
        "--asgi-ring",
        choices=("auto", "loop", "thread"),
        default="auto",
        help="where the io_uring ring runs for ASGI: loop (on the event loop's thread, "
        "no hand-off per batch; one ring: --threads 1), thread (ring threads that hand "
        "requests to the loop), auto (loop with --threads 1, else thread)",
    )
    a.add_argument("--root-path", default="", help="ASGI root_path")
    ws = p.add_argument_group(
        "WebSocket (uvicorn's names; each sets an engine knob, except --ws and --ws-max-queue)"
    )
    ws.add_argument(
        "--ws",
        choices=("auto", "none", "websockets", "websockets-sansio", "wsproto"),
        default="auto",
        help="auto: ASGI apps get websocket scopes; none: WebSocket handshakes reach "
        "them as plain http requests (uvicorn's implementation names mean auto)",
    )
    ws.add_argument(
        "--ws-max-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest message accepted, beyond: close 1009 (ws_max_message; default 16777216)",
    )
    ws.add_argument(
        "--ws-max-queue",
        type=int,
        default=32,
        metavar="N",
        help="received messages an ASGI app may leave unread before the connection "
        "is no longer read (default 32)",
    )
    ws.add_argument(
        "--ws-ping-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="ping a connection silent this long, 0: never (ws_ping_interval_ms; default 20)",
    )
    ws.add_argument(
        "--ws-ping-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close a connection that sends nothing this long after a ping, 0: never "
        "(ws_ping_timeout_ms; default 20)",
    )
    ws.add_argument(
        "--ws-per-message-deflate",
        nargs="?",
        const=True,
        default=None,
        type=_boolean,
        metavar="BOOL",
        help="negotiate permessage-deflate when the client offers it (ws_deflate; "
        "default on); also --ws-per-message-deflate false, as uvicorn takes it",
    )
    ws.add_argument(
        "--no-ws-per-message-deflate",
        dest="ws_per_message_deflate",
        action="store_false",
        help="never compress (ws_deflate 0)",
    )
    t = p.add_argument_group(
        "HTTPS (uvicorn's names; granian's --ssl-certificate too; each sets an engine knob)"
    )
    t.add_argument(
        "--ssl-certfile",
        "--ssl-certificate",
        dest="ssl_certfile",
        default=None,
        metavar="PATH",
        help="serve HTTPS with this PEM certificate chain, leaf first (ssl_certfile)",
    )
    t.add_argument(
        "--ssl-keyfile",
        default=None,
        metavar="PATH",
        help="its PEM private key (ssl_keyfile; default: in --ssl-certfile)",
    )
    t.add_argument(
        "--ssl-keyfile-password",
        default=None,
        metavar="PASSWORD",
        help="the password of an encrypted key (ssl_keyfile_password)",
    )
    t.add_argument(
        "--ssl-ca-certs",
        default=None,
        metavar="PATH",
        help="CA bundle that verifies client certificates (ssl_ca_certs)",
    )
    t.add_argument(
        "--ssl-cert-reqs",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="client certificates: 0 none, 1 optional, 2 required (ssl.CERT_* numbers; "
        "1 and 2 need --ssl-ca-certs; ssl_cert_reqs, default 0)",
    )
    t.add_argument(
        "--ssl-version",
        type=int,
        default=None,
        metavar="N",
        help="uvicorn's ssl.PROTOCOL_* number: 2 or 17 (default) keep TLS 1.2 and 1.3, "
        "5 (PROTOCOL_TLSv1_2) means --ssl-min-version TLSv1.2; older ones are refused",
    )
    t.add_argument(
        "--ssl-min-version",
        choices=("TLSv1.2", "TLSv1.3"),
        default=None,
        help="oldest protocol accepted (ssl_min_version; default TLSv1.2, 1.3 preferred)",
    )
    t.add_argument(
        "--ssl-ciphers",
        default=None,
        metavar="LIST",
        help="TLS 1.2 ciphers, OpenSSL syntax (ssl_ciphers; default: ECDHE with AEAD only)",
    )
    t.add_argument(
        "--ssl-ciphersuites",
        default=None,
        metavar="LIST",
        help="TLS 1.3 suites, OpenSSL syntax (ssl_ciphersuites; default: OpenSSL's)",
    )
    t.add_argument(
        "--ssl-alpn",
        default=None,
        metavar="LIST",
        help="ALPN protocols, comma-separated, preferred first (ssl_alpn; default http/1.1)",
    )
    t.add_argument(
        "--ssl-sni-cert",
        dest="ssl_sni_certs",
        action="append",
        default=[],
        type=_sni_cert,
        metavar="CERTFILE,KEYFILE[,PASSWORD]",
        help="one more certificate, served to clients that ask for one of its names "
        "(SNI; repeatable, the first that matches wins, then --ssl-certfile's)",
    )
    t.add_argument(
        "--ssl-handshake-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close a connection whose handshake takes longer, 0: never "
        "(ssl_handshake_timeout_ms; default 10)",
    )
    t.add_argument(
        "--no-ssl-session-tickets",
        dest="ssl_tickets_off",
        action="store_true",
        help="no resumption by session tickets (ssl_session_tickets 0)",
    )
    t.add_argument(
        "--no-ssl-ktls",
        dest="ssl_ktls_off",
        action="store_true",
        help="never hand a session to kernel TLS (ssl_ktls 0)",
    )
    st = p.add_argument_group("static files (served by the engine itself)")
    st.add_argument(
        "--static",
        dest="statics",
        action="append",
        default=[],
        type=_static_mount,
        metavar="URL_PREFIX=DIR",
        help="serve DIR under URL_PREFIX (repeatable; the longest prefix wins); "
        "with no app, a static file server alone",
    )
    st.add_argument(
        "--static-listing",
        action="store_true",
        help="an HTML listing for a directory without index.html",
    )
    st.add_argument(
        "--static-dotfiles",
        action="store_true",
        help="serve names starting with '.' (default: 404)",
    )
    st.add_argument(
        "--static-cache-control",
        default=None,
        metavar="VALUE",
        help="Cache-Control header on static answers (e.g. 'public, max-age=3600')",
    )
    st.add_argument(
        "--static-no-precompressed",
        dest="static_precompressed",
        action="store_false",
        help="never answer with a .br/.gz sibling (default: by Accept-Encoding)",
    )
    e = p.add_argument_group("engine knobs (default: the engine's)")
    table = _knob_table()
    for name, value in defaults.items():
        if name in LISTEN or name in CONNECTION_HANDLER_KNOBS or name in TLS_NAMED_KNOBS:
            continue
        knob = table.get(name)
        if knob is not None:  # type, unit and doc from include/pmu/pmu.h
            kind: type = str if knob.type is str else int  # on/off knobs are 0/1
            unit = f" {knob.unit}" if knob.unit else ""
            text = f"{knob.doc} (engine default: {value!r}{unit})"
        else:
            kind = (
                str
                if isinstance(value, str) or value is None and name.endswith(("header", "_dir"))
                else int
            )
            text = f"engine default: {value!r}"
        e.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None, help=text.replace("%", "%%")
        )
    return p


def _static_mount(text: str) -> Tuple[str, str]:
    """--static URL_PREFIX=DIR as (prefix, DIR); the directory must exist."""
    prefix, sep, directory = text.partition("=")
    if not sep or not prefix.startswith("/") or not directory:
        raise argparse.ArgumentTypeError(
            f"give URL_PREFIX=DIR with the prefix starting with '/', not {text!r}"
        )
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"{directory!r} is not a directory")
    return prefix, directory


def _bind(text: str) -> Dict[str, Any]:
    """gunicorn's --bind as the options it stands for: {"host", "port"},
    {"unix_path"} or {"fd"}."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise argparse.ArgumentTypeError("unix: needs a path")
        return {"unix_path": text[5:]}
    if text.startswith("fd://"):
        try:
            return {"fd": int(text[5:])}
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a descriptor number: {text!r}") from None
    host, port = text, "8000"
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] not in ("", ":"):
            raise argparse.ArgumentTypeError(f"not [IPv6]:PORT: {text!r}")
        host, port = text[1:end], text[end + 2 :] or "8000"
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {port!r}")
    return {"host": host or "0.0.0.0", "port": int(port)}


def _sni_cert(text: str) -> Tuple[str, ...]:
    """--ssl-sni-cert CERTFILE,KEYFILE[,PASSWORD] as a tuple of absolute paths (and the
    password); the files must exist."""
    parts = text.split(",", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"give CERTFILE,KEYFILE[,PASSWORD], not {text!r}")
    for path in parts[:2]:
        if not os.path.isfile(path):
            raise argparse.ArgumentTypeError(f"{path!r}: no such file")
    return (os.path.abspath(parts[0]), os.path.abspath(parts[1]), *parts[2:])


def _env_pair(text: str) -> Tuple[str, str]:
    """--env KEY=VALUE as (KEY, VALUE)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"give KEY=VALUE, not {text!r}")
    return key.strip(), value


def _header_option(text: str) -> Tuple[str, str]:
    """--header NAME:VALUE as (NAME, VALUE): a token name, a value without CR, LF, NUL."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c not in _TOKEN for c in name):
        raise argparse.ArgumentTypeError(f"give NAME:VALUE with NAME a header name, not {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"a header value cannot hold CR, LF or NUL: {text!r}")
    return name, value


# The characters of an HTTP token (a header name), RFC 9110.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _boolean(text: str) -> bool:
    """An on/off value as uvicorn's options take it."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (true or false)")


def _seconds_ms(seconds: float) -> int:
    """Seconds as the engine's milliseconds (a positive value never rounds to 0: off)."""
    ms = int(round(seconds * 1000))
    return 1 if seconds > 0 and ms == 0 else ms


def websocket_options(
    args: argparse.Namespace, defaults: Dict[str, Any], p: argparse.ArgumentParser
) -> Dict[str, Any]:
    """The engine knobs that uvicorn-named --ws-* options set; an error when one
    contradicts its engine knob's own option, or the engine has no such knob."""
    wanted: Dict[str, Any] = {}
    if args.ws_max_size is not None:
        if args.ws_max_size < 0:
            p.error("--ws-max-size cannot be negative")
        wanted["ws_max_message"] = ("--ws-max-size", args.ws_max_size)
    _seconds_options(
        args,
        p,
        wanted,
        (("ws_ping_interval", "ws_ping_interval_ms"), ("ws_ping_timeout", "ws_ping_timeout_ms")),
    )
    if args.ws_per_message_deflate is not None:
        wanted["ws_deflate"] = ("--ws-per-message-deflate", int(args.ws_per_message_deflate))
    return _knobs_wanted(args, defaults, p, wanted, " (no WebSocket support)")


def _seconds_options(
    args: argparse.Namespace,
    p: argparse.ArgumentParser,
    wanted: Dict[str, Any],
    pairs: Tuple[Tuple[str, str], ...],
) -> None:
    """For each (option, knob) given on the command line in seconds: wanted[knob]
    = (its --name, the value in ms); an error when negative."""
    for option, knob in pairs:
        seconds = getattr(args, option)
        if seconds is not None:
            if seconds < 0:
                p.error(f"--{option.replace('_', '-')} cannot be negative")
            wanted[knob] = ("--" + option.replace("_", "-"), _seconds_ms(seconds))


def _knobs_wanted(
    args: argparse.Namespace,
    defaults: Dict[str, Any],
    p: argparse.ArgumentParser,
    wanted: Dict[str, Any],
    missing: str = "",
) -> Dict[str, Any]:
    """The knobs of wanted ({knob: (--option, value)}); an error when the engine
    lacks one (the message ends with ``missing``) or the knob's own option was
    given another value."""
    options = {}
    for knob, (option, value) in wanted.items():
        if knob not in defaults:
            p.error(f"{option}: this engine has no {knob} knob{missing}")
        given = getattr(args, knob, None)
        if given is not None and given != value:
            p.error(f"{option} and --{knob.replace('_', '-')} disagree")
        options[knob] = value
    return options


def server_options(
    args: argparse.Namespace, defaults: Dict[str, Any], p: argparse.ArgumentParser
) -> Dict[str, Any]:
    """The engine knobs that uvicorn's and gunicorn's options set; an error when
    one contradicts its engine knob's own option, or the engine lacks the knob."""
    wanted: Dict[str, Any] = {}
    _seconds_options(
        args,
        p,
        wanted,
        (
            ("timeout_keep_alive", "keepalive_timeout_ms"),
            ("timeout_graceful_shutdown", "shutdown_timeout_ms"),
        ),
    )
    for option, knob in (
        ("limit_concurrency", "max_connections"),
        ("limit_request_body", "max_body_bytes"),
    ):
        value = getattr(args, option)
        if value is not None:
            if value < 0:
                p.error(f"--{option.replace('_', '-')} cannot be negative")
            wanted[knob] = ("--" + option.replace("_", "-"), value)
    if args.server_header_off:
        wanted["server_header"] = ("--no-server-header", "")
    if args.date_header_off:
        wanted["date_header"] = ("--no-date-header", 0)
    if args.headers:
        lines = "\r\n".join(f"{name}: {value}" for name, value in args.headers)
        wanted["extra_headers"] = ("--header", lines)
    return _knobs_wanted(args, defaults, p, wanted)


def tls_options(
    args: argparse.Namespace, defaults: Dict[str, Any], p: argparse.ArgumentParser
) -> Dict[str, Any]:
    """The TLS knobs that --ssl-version, --ssl-handshake-timeout, --no-ssl-session-tickets and
    --no-ssl-ktls set; an error for a TLS option without --ssl-certfile, a file that does not
    exist, client certificates without a CA, or an option that contradicts its knob's own."""
    wanted: Dict[str, Any] = {}
    if args.ssl_version is not None:
        if args.ssl_version not in _SSL_VERSIONS:
            p.error(
                f"--ssl-version {args.ssl_version}: TLS 1.2 is the oldest protocol served "
                "(give 2, 5 or 17: ssl.PROTOCOL_TLS, PROTOCOL_TLSv1_2, PROTOCOL_TLS_SERVER)"
            )
        version = _SSL_VERSIONS[args.ssl_version]
        if version is not None:
            wanted["ssl_min_version"] = ("--ssl-version", version)
    _seconds_options(args, p, wanted, (("ssl_handshake_timeout", "ssl_handshake_timeout_ms"),))
    if args.ssl_tickets_off:
        wanted["ssl_session_tickets"] = ("--no-ssl-session-tickets", 0)
    if args.ssl_ktls_off:
        wanted["ssl_ktls"] = ("--no-ssl-ktls", 0)
    options = _knobs_wanted(args, defaults, p, wanted, " (no TLS support)")
    given = [
        "--" + name.replace("_", "-")
        for name in defaults
        if name.startswith("ssl_")
        and name != "ssl_certfile"
        and getattr(args, name, None) is not None
    ]
    if args.ssl_certfile is None:
        if given or options or args.ssl_sni_certs:
            extra = given + sorted(option for option, _ in wanted.values())
            if args.ssl_sni_certs:
                extra.append("--ssl-sni-cert")
            p.error(f"{', '.join(extra)}: give --ssl-certfile too (the HTTPS certificate)")
        return options
    for option in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "ssl_ocsp_file"):
        path = getattr(args, option, None)
        if path is not None and not os.path.isfile(path):
            p.error(f"--{option.replace('_', '-')} {path}: no such file")
        if path is not None:  # (a reload reads it again: whatever the directory then)
            options[option] = os.path.abspath(path)
    if (args.ssl_cert_reqs or 0) > 0 and args.ssl_ca_certs is None:
        p.error(
            "--ssl-cert-reqs 1 or 2 needs --ssl-ca-certs (the CA that signs client certificates)"
        )
    return options


def _knob_table() -> Dict[str, Any]:
    """The engine's knob table (pymongoose_uring.knobs()), or {} without the engine."""
    try:
        from .._server import knobs

        return dict(knobs())
    except Exception:  # the extension is missing: plain options, defaults only
        return {}


def engine_options(args: argparse.Namespace, defaults: Dict[str, Any]) -> Dict[str, Any]:
    """The engine knobs given on the command line, as Server keyword arguments;
    SystemExit for one this Server does not take."""
    from .._adapter import _SERVER_PARAMS

    options = {}
    for name in defaults:
        if name in LISTEN:
            continue
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in _SERVER_PARAMS:
            raise SystemExit(
                f"pymongoose_uring: --{name.replace('_', '-')} is not supported by this Server"
            )
        options[name] = value
    return options


def parse(argv: Optional[Sequence[str]], defaults: Dict[str, Any]) -> Config:
    """argv (sys.argv[1:] when None) as a checked Config. Starts nothing: a wrong
    option or value exits (status 2) with the parser's usage message, as
    argparse does. With --probe the rest is not checked."""
    p = build_parser(defaults)
    args = p.parse_args(argv)
    known = {name for name in Config.__dataclass_fields__ if name != "engine"}
    config = Config(**{name: value for name, value in vars(args).items() if name in known})
    if config.probe:
        return config
    if args.bind is not None:
        for name, value in args.bind.items():
            setattr(config, name, value)
    if config.access_logfile is not None:
        config.access_log = True
    if not config.hello and not config.app and not config.statics:
        p.error("give MODULE:APP, --hello, --static URL_PREFIX=DIR or --probe")
    if config.workers < 1:
        p.error("--workers must be at least 1")
    if config.threads < 1:
        p.error("--threads must be at least 1")
    if config.pool_threads < 1:
        p.error("--pool-threads must be at least 1")
    if config.inline_ms < 0:
        p.error("--wsgi-inline-ms must be 0 (never) or more")
    if config.max_requests < 0 or config.max_requests_jitter < 0:
        p.error("--max-requests and --max-requests-jitter cannot be negative")
    if config.ws_max_queue < 1:
        p.error("--ws-max-queue must be at least 1")
    if config.interface == "asgi3":  # uvicorn's name
        config.interface = "asgi"
    if config.ws != "none":
        config.ws = "auto"
    if config.fd is not None:
        try:
            os.fstat(config.fd)
        except OSError as exc:
            p.error(f"--fd {config.fd}: {exc.strerror}")
    if config.proxy_headers:
        from .._adapter import ProxyHeaders

        try:
            ProxyHeaders(config.forwarded_allow_ips)
        except ValueError as exc:
            p.error(str(exc))
    if config.log_level == "trace":
        config.log_level = "debug"
    if config.log_config is not None and not os.path.isfile(config.log_config):
        p.error(f"--log-config {config.log_config}: no such file")
    if config.env_file is not None and not os.path.isfile(config.env_file):
        p.error(f"--env-file {config.env_file}: no such file")
    if not os.path.isdir(config.app_dir):
        p.error(f"--app-dir {config.app_dir}: not a directory")
    if config.access_log_format is not None:
        from .._adapter import set_access_log_format

        try:
            set_access_log_format(config.access_log_format)
        except ValueError as exc:
            p.error(f"--access-log-format: {exc}")
        finally:
            set_access_log_format(None)  # set for real by setup_logging()
    config.engine = engine_options(args, defaults)
    config.engine.update(websocket_options(args, defaults, p))
    config.engine.update(server_options(args, defaults, p))
    config.engine.update(tls_options(args, defaults, p))
    return config
