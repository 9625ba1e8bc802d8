"""The workloads, as data. Each names what a server must support (`needs`) and how its
client drives it: wrk for HTTP, wsload (benchmarks/wsload/wsload.c) for WebSocket
(`client="wsload"`); the runner checks the endpoint with a real request before measuring it.

A WebSocket workload counts messages instead of requests (`unit`): for ws-echo the echoes
that came back, for ws-broadcast the messages delivered to the subscribers (each message the
publisher sends is delivered `connections` times).

An HTTPS workload (`tls_cert` set: the kind of certificate of bench/tls.py every server is
started with) runs on the servers with the "tls" capability (the registry's HTTPS entries),
with wrk over https:// and the TLS preload (bench/tls.py): every connection a full handshake,
counted. `handshakes` marks the connection-per-request ones, whose tables show full
handshakes per second of server CPU."""

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    path: str = "/"
    connections: int = 64
    script: Optional[str] = None  # a file in benchmarks/lua/, report.lua is appended
    script_args: Tuple[str, ...] = ()
    headers: Tuple[str, ...] = ()  # wrk -H values
    needs: str = "hello"  # capability a server must declare: hello, bytes, echo
    check: str = "hello"  # which answer check to run first (bench/checks.py)
    restart: bool = False  # start the server afresh before each measurement
    rounds: Optional[int] = None  # overrides --rounds (None: use --rounds)
    min_duration: int = 0  # seconds; longer than --duration when the workload needs it
    timeout: int = 5  # wrk --timeout, seconds
    per_connection_memory: bool = False  # report (peak RSS - RSS before) / connections
    description: str = ""
    client: str = "wrk"  # or "wsload"
    ws_mode: str = "echo"  # wsload --mode: echo or broadcast
    ws_size: int = 32  # bytes per message
    ws_depth: int = 16  # messages in flight per connection (broadcast: not yet delivered)
    # The HTTP workload whose CPU per request the report sets beside this one's CPU per
    # message (the target: the C server's WebSocket message within 1.5x of a
    # 16-deep pipelined request), measured in the same run for the servers that have both.
    compare_with: Optional[str] = None
    # The server this workload's ratios are taken against when it ran (else the run's
    # reference): nginx for the file workloads, as the targets are.
    reference: Optional[str] = None
    # HTTPS: the certificate kind the servers serve (bench/tls.py KINDS), None for plain HTTP.
    tls_cert: Optional[str] = None
    # A new TLS connection per request: report full handshakes per CPU-second.
    handshakes: bool = False

    @property
    def unit(self):
        return "msg" if self.client == "wsload" else "req"


WORKLOADS = [
    Workload(
        "keepalive",
        "keep-alive hello, 64 connections",
        description="GET / on 64 keep-alive connections, one request in flight each",
    ),
    Workload(
        "pipelined",
        "16-deep pipelined hello, 64 connections",
        script="pipeline.lua",
        script_args=("16",),
        check="pipelined",
        description="GET / on 64 connections, each write carrying 16 requests",
    ),
    Workload(
        "close",
        "connection per request, 64 connections",
        headers=("Connection: close",),
        check="close",
        description="GET / with Connection: close: accept, one request, close",
    ),
    Workload(
        "get16k",
        "16 KiB response, 64 connections",
        path="/16k",
        needs="bytes",
        check="get16k",
        description="GET /16k: a 16 KiB body on keep-alive connections",
    ),
    Workload(
        "get1m",
        "1 MiB response, 16 connections",
        path="/1m",
        connections=16,
        needs="bytes",
        check="get1m",
        description="GET /1m: a 1 MiB body on 16 keep-alive connections",
    ),
    Workload(
        "file-16k",
        "16 KiB file, 64 connections",
        path="/files/16k.bin",
        needs="files",
        check="file-16k",
        reference="nginx",
        description="GET /files/16k.bin: a 16 KiB file from the runner's directory (the "
        "first answer compared byte for byte with the file), 64 keep-alive connections",
    ),
    Workload(
        "file-1m",
        "1 MiB file, 16 connections",
        path="/files/1m.bin",
        connections=16,
        needs="files",
        check="file-1m",
        reference="nginx",
        description="GET /files/1m.bin: a 1 MiB file from the runner's directory (the "
        "first answer compared byte for byte with the file), 16 keep-alive connections",
    ),
    Workload(
        "post64k",
        "64 KiB POST echoed, 64 connections",
        path="/echo",
        script="post_echo.lua",
        script_args=("65536",),
        needs="echo",
        check="echo",
        description="POST /echo with a 64 KiB body, answered with the same body",
    ),
    Workload(
        "c10k",
        "10,000 concurrent keep-alive connections",
        connections=10000,
        restart=True,
        rounds=1,
        min_duration=5,
        timeout=10,
        per_connection_memory=True,
        description="GET / on 10,000 keep-alive connections from a freshly started "
        "server; memory per connection = (peak RSS - RSS before) / 10,000",
    ),
    Workload(
        "ws-echo",
        "WebSocket echo: 64 connections, 16 × 32 B in flight each",
        path="/ws/echo",
        needs="ws",
        check="ws-echo",
        client="wsload",
        ws_mode="echo",
        ws_size=32,
        ws_depth=16,
        timeout=10,
        compare_with="pipelined",
        description="64 WebSocket connections to /ws/echo, each keeping 16 binary messages "
        "of 32 bytes in flight (one more sent per echo); every echo checked",
    ),
    Workload(
        "ws-broadcast",
        "WebSocket broadcast to 1,000 connections, 32 B messages",
        path="/ws/broadcast",
        connections=1000,
        needs="ws-broadcast",
        check="ws-broadcast",
        client="wsload",
        ws_mode="broadcast",
        ws_size=32,
        ws_depth=4,
        timeout=20,
        description="1,000 subscribers on /ws/broadcast and a publisher whose every message "
        "the server sends to all of them; the publisher keeps 4 messages not yet delivered "
        "to all; messages delivered per second, every delivery checked",
    ),
]
# HTTPS (run.py --suite tls; issue 14). Keep-alive and the 1 MiB body use the ECDSA
# certificate, as most sites now do; the handshake workloads one each. The suite runs them in
# this order, so the HTTPS servers are restarted once per change of certificate.
WORKLOADS += [
    Workload(
        "tls-keepalive",
        "HTTPS keep-alive hello (TLS 1.3), 64 connections",
        needs="tls",
        check="hello",
        tls_cert="ecdsa",
        reference="pymongoose_uring_tls",
        description="GET / over TLS 1.3 on 64 keep-alive connections (ECDSA P-256 "
        "certificate): the cost of encrypting and decrypting small records",
    ),
    Workload(
        "tls-get1m",
        "HTTPS 1 MiB response (TLS 1.3), 16 connections",
        path="/1m",
        connections=16,
        needs="tls-bytes",
        check="get1m",
        tls_cert="ecdsa",
        reference="pymongoose_uring_tls",
        description="GET /1m over TLS 1.3 on 16 keep-alive connections: bulk encryption",
    ),
    Workload(
        "tls-handshake-ecdsa",
        "HTTPS connection per request, full handshake, ECDSA P-256, 64 connections",
        headers=("Connection: close",),
        needs="tls",
        check="close",
        tls_cert="ecdsa",
        handshakes=True,
        min_duration=4,  # a few hundred handshakes a second: more of them per point
        reference="pymongoose_uring_tls",
        description="GET / with Connection: close over a new TLS 1.3 connection each "
        "time, a full handshake (no resumption: checked) with an ECDSA P-256 certificate",
    ),
    Workload(
        "tls-handshake-rsa",
        "HTTPS connection per request, full handshake, RSA-2048, 64 connections",
        headers=("Connection: close",),
        needs="tls",
        check="close",
        tls_cert="rsa",
        handshakes=True,
        min_duration=4,  # a few hundred handshakes a second: more of them per point
        reference="pymongoose_uring_tls",
        description="the same with an RSA-2048 certificate (an RSA-PSS signature per handshake)",
    ),
]
BY_NAME = {w.name: w for w in WORKLOADS}
# The HTTPS workloads: --suite tls (out of the default run, which is long enough already).
TLS = [w.name for w in WORKLOADS if w.tls_cert]
DEFAULT = [w.name for w in WORKLOADS if not w.tls_cert]
QUICK = ["keepalive", "pipelined"]
FILES = ["file-16k", "file-1m"]
