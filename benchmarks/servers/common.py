"""What every benchmark server script shares: the bodies, the routes and the command line.

Each script in this folder is run as ``python SCRIPT.py PORT [options]`` (the predecessor's
shape) and serves the same four HTTP routes, so that every server sends the same bytes:

  GET  /      {"message":"Hello, World!"} as application/json   (every workload's default)
  GET  /16k   16 KiB of b"x" as application/octet-stream
  GET  /1m    1 MiB of b"x" as application/octet-stream
  POST /echo  the request body back, as application/octet-stream

the servers that serve files (the registry's "files" capability), from the runner's file
directory (benchmarks/bench/files.py; BENCH_FILES_ROOT names it):

  GET  /files/16k.bin, /files/1m.bin   deterministic bytes, compared with the files

and, the servers that speak WebSocket (see the registry's "ws" capability):

  /ws/echo       every message back to its sender (text as text, binary as binary)
  /ws/broadcast  every message to every connection of /ws/broadcast, the sender included

The bodies are built once at import so that no server pays for producing them per request.
A script whose server library cannot be imported calls unavailable(), which exits with
EXIT_UNAVAILABLE: the runner then marks the server "unavailable" instead of failing.
"""

import os
import sys

HELLO = b'{"message":"Hello, World!"}'
JSON = "application/json"
OCTETS = "application/octet-stream"
BYTES_16K = b"x" * (16 * 1024)
BYTES_1M = b"x" * (1024 * 1024)

# Route table for GET: path -> (body, content type).
GET_ROUTES = {
    "/": (HELLO, JSON),
    "/16k": (BYTES_16K, OCTETS),
    "/1m": (BYTES_1M, OCTETS),
}
ECHO_PATH = "/echo"
WS_ECHO_PATH = "/ws/echo"
WS_BROADCAST_PATH = "/ws/broadcast"

HOST = os.environ.get("BENCH_HOST", "127.0.0.1")

# Exit status that tells the runner "this server's library is missing" (sysexits EX_CONFIG).
EXIT_UNAVAILABLE = 78


FILES_PREFIX = "/files"

# HTTPS (run.py --suite tls): the runner makes the certificate and key for each run
# (bench/tls.py) and names them in BENCH_TLS_CERT and BENCH_TLS_KEY. Every server that can be
# told is given the same TLS 1.3 suite and the same TLS 1.2 ciphers: TLS_AES_256_GCM_SHA384 is
# the suite an OpenSSL client (wrk) asks for first, so the servers that cannot be told (granian's
# rustls follows the client's order; uvicorn's Python ssl cannot restrict TLS 1.3 suites and
# prefers it too) negotiate it as well; the runner reports what each negotiated.
TLS_ENV_CERT = "BENCH_TLS_CERT"
TLS_ENV_KEY = "BENCH_TLS_KEY"
TLS13_SUITES = "TLS_AES_256_GCM_SHA384"
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def tls_files():
    """(certificate, key) paths the runner gave this server (BENCH_TLS_CERT, BENCH_TLS_KEY);
    exits with a message when they are not set or not readable."""
    cert, key = os.environ.get(TLS_ENV_CERT), os.environ.get(TLS_ENV_KEY)
    for name, path in ((TLS_ENV_CERT, cert), (TLS_ENV_KEY, key)):
        if not path or not os.access(path, os.R_OK):
            sys.exit("%s must name a readable PEM file (got %r)" % (name, path))
    return cert, key


def files_root():
    """The directory the file workloads serve (ROOT/files/16k.bin, ...): BENCH_FILES_ROOT,
    which the runner sets; run by hand without it, the files are written (deterministic, as
    the runner writes them) into /tmp/pmu-bench-files-UID and that is used."""
    root = os.environ.get("BENCH_FILES_ROOT")
    if root:
        return root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import files

    return files.prepare("/tmp/pmu-bench-files-%d" % os.getuid())


def files_dir():
    """The folder served under /files/."""
    return os.path.join(files_root(), "files")


def port_from_argv(default=8000):
    """The first command-line argument as a port number (the guide's convention)."""
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        return int(sys.argv[1])
    return default


def unavailable(what, error):
    """Report that a required library is missing and exit with EXIT_UNAVAILABLE."""
    sys.stderr.write("UNAVAILABLE: %s cannot be imported: %s\n" % (what, error))
    sys.stderr.flush()
    sys.exit(EXIT_UNAVAILABLE)


def require(*modules):
    """Exit with EXIT_UNAVAILABLE unless every named module can be imported."""
    import importlib.util

    for name in modules:
        if importlib.util.find_spec(name) is None:
            unavailable(name, "module not found")


def exec_cli(target, interface, argv, extra=()):
    """Replace this process (same PID) with pymongoose_uring's command line serving
    apps.py's `target` (e.g. "apps:wsgi_raw") on port_from_argv(): ``python -m
    pymongoose_uring TARGET --interface INTERFACE --host HOST --port PORT``, every engine knob
    set in `argv` (``--knob V``) or PMU_* variables (knobs.py) passed as the CLI's own option,
    `extra` options after them. Run from this folder, so that ``apps`` is importable."""
    import importlib.util

    import knobs

    if importlib.util.find_spec("pymongoose_uring") is None:
        unavailable("pymongoose_uring", "module not found")
    options = []
    for knob, value in knobs.parse(argv).items():
        options += [
            "--" + knob.replace("_", "-"),
            str(int(value) if value is True or value is False else value),
        ]
    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)
    cmd = [sys.executable, "-m", "pymongoose_uring", target, "--interface", interface]
    cmd += ["--host", HOST, "--port", str(port_from_argv(8000)), "--log-level", "warning"]
    os.execv(sys.executable, cmd + options + list(extra))
