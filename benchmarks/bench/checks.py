"""Answer checks: real HTTP requests that must get the right answer before (and after) a
server is measured. A wrong answer raises WrongAnswer, no answer at all (refused, timed
out) BenchError; 501 Not Implemented raises NotSupported (the server declines that workload,
which is reported, not measured; for WebSocket, a handshake answered 501).

Over HTTPS (`tls`: the bench/tls.py Certificate the server was started with) the same checks
run on a TLS connection that trusts only the run's CA and checks the name, and the server's
certificate must be that one byte for byte (an ECDSA workload answered with another
certificate would measure something else)."""

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import time

from . import BenchError, WrongAnswer, files

HOST = "127.0.0.1"
HELLO = {"message": "Hello, World!"}
TIMEOUT = 10.0


class NotSupported(Exception):
    pass


def _request(port, method, path, body=None, headers=None, tls=None):
    if tls is None:
        conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    else:
        conn = _HTTPSConnection(port, tls)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp, data
    except (OSError, http.client.HTTPException) as e:
        raise BenchError("%s %s on port %d failed: %s" % (method, path, port, e)) from e
    finally:
        conn.close()


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 verified as `localhost` by the run's CA, and the certificate the
    server presented checked against the one it was given."""

    def __init__(self, port, tls):
        super().__init__(HOST, port, timeout=TIMEOUT, context=tls.client_context())
        self._tls = tls

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = _tls_wrap(sock, self._tls, self.port)


def _tls_wrap(sock, tls, port):
    """`sock` after a TLS handshake checked as _HTTPSConnection checks it; closed on error."""
    from . import tls as tls_module

    try:
        wrapped = tls.client_context().wrap_socket(sock, server_hostname=tls_module.SERVER_NAME)
    except ssl.SSLCertVerificationError as e:
        sock.close()
        raise WrongAnswer(
            "port %d: the server's certificate is not the run's %s one (%s)"
            % (port, tls.label, e.verify_message)
        ) from None
    except BaseException:
        sock.close()
        raise
    if wrapped.getpeercert(binary_form=True) != tls.der:
        wrapped.close()
        raise WrongAnswer(
            "port %d: the server presented another certificate than the run's %s one"
            % (port, tls.label)
        )
    return wrapped


def _expect_status(port, method, path, resp, data):
    if resp.status == 501:
        raise NotSupported("%s %s answered 501" % (method, path))
    if resp.status != 200:
        raise WrongAnswer(
            "%s %s on port %d answered %d %s: %r"
            % (method, path, port, resp.status, resp.reason, data[:200])
        )


def _check_hello_body(where, content_type, data):
    if not (content_type or "").lower().startswith("application/json"):
        raise WrongAnswer("%s: Content-Type is %r, not application/json" % (where, content_type))
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if value != HELLO:
        raise WrongAnswer("%s: body is %r, not %s" % (where, data[:200], json.dumps(HELLO)))


def hello(port, patience=0.0, tls=None):
    """GET / must answer 200, application/json, {"message":"Hello, World!"}.
    Returns a little description of the answer for the report. With `patience`, a server
    that does not answer (still draining a flood) is asked again for that many seconds;
    a wrong answer fails at once."""
    deadline = time.monotonic() + patience
    while True:
        try:
            resp, data = _request(port, "GET", "/", tls=tls)
            break
        except WrongAnswer:
            raise
        except BenchError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    _expect_status(port, "GET", "/", resp, data)
    _check_hello_body("GET / on port %d" % port, resp.getheader("Content-Type"), data)
    return {
        "body_bytes": len(data),
        "server_header": resp.getheader("Server"),
        "connection": resp.getheader("Connection"),
    }


def get_bytes(port, path, size, tls=None):
    resp, data = _request(port, "GET", path, tls=tls)
    _expect_status(port, "GET", path, resp, data)
    if len(data) != size or data.strip(b"x"):
        raise WrongAnswer(
            "GET %s on port %d: expected %d bytes of 'x', got %d bytes (%r...)"
            % (path, port, size, len(data), data[:40])
        )


def get_file(port, name, patience=0.0):
    """GET /files/NAME must answer 200 with exactly the bytes of the runner's file (see
    bench/files.py): a 404, another file or a body of the right length but other bytes is a
    wrong answer. With `patience`, a server that does not answer is asked again for that
    many seconds. Returns what checks.hello() returns, for a server probed this way."""
    path = files.url(name)
    expected = files.content(files.FILES[name])
    deadline = time.monotonic() + patience
    while True:
        try:
            resp, data = _request(port, "GET", path)
            break
        except BenchError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    _expect_status(port, "GET", path, resp, data)
    if data != expected:
        raise WrongAnswer(
            "GET %s on port %d: %d bytes, not the file's %d bytes (%s)"
            % (path, port, len(data), len(expected), _difference(data, expected))
        )
    return {
        "body_bytes": len(data),
        "server_header": resp.getheader("Server"),
        "connection": resp.getheader("Connection"),
        "content_type": resp.getheader("Content-Type"),
    }


def _difference(data, expected):
    at = next((i for i, (a, b) in enumerate(zip(data, expected)) if a != b), None)
    if at is not None:
        return "first difference at byte %d" % at
    return "a prefix of it" if len(data) < len(expected) else "the file, then more"


PROBE_FILE = "16k.bin"


def probe(definition, port, patience=0.0, tls=None):
    """The answer a server must give to count as up: GET / (the hello JSON; over HTTPS with
    `tls`), or for a static file server alone (definition.hello false) GET /files/16k.bin,
    byte-exact."""
    if getattr(definition, "hello", True):
        return hello(port, patience, tls=tls)
    return get_file(port, PROBE_FILE, patience)


def echo(port, size=65536):
    body = bytes(range(256)) * (size // 256)
    resp, data = _request(
        port, "POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"}
    )
    _expect_status(port, "POST", "/echo", resp, data)
    if data != body:
        raise WrongAnswer(
            "POST /echo on port %d: %d bytes sent, %d bytes back, %s"
            % (
                port,
                len(body),
                len(data),
                "different content" if len(data) == len(body) else "wrong length",
            )
        )


class _Reader:
    """Reads HTTP/1.1 responses one after another from a socket."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self):
        """(status, {lower-case header: value}, body)"""
        status = int(self._line().split()[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                n = int(self._line().split(b";")[0], 16)
                if n == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._take(n))
                self._take(2)
            body = b"".join(parts)
        else:
            body = self._take(int(headers.get("content-length", "0")))
        return status, headers, body


def pipelined(port, depth=16):
    """`depth` GET / sent in one write must come back as `depth` correct answers, in order."""
    where = "%d pipelined GET / on port %d" % (depth, port)
    request = b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (HOST.encode(), port)
    try:
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
            sock.sendall(request * depth)
            reader = _Reader(sock)
            closing = False
            for i in range(depth):
                try:
                    status, headers, body = reader.response()
                except EOFError:
                    if i and closing:
                        raise NotSupported(
                            "the server closes the connection after each "
                            "answer (Connection: close): no pipelining"
                        ) from None
                    raise WrongAnswer(
                        "%s: connection closed after %d answer(s)" % (where, i)
                    ) from None
                if status != 200:
                    raise WrongAnswer("%s: answer %d has status %d" % (where, i + 1, status))
                _check_hello_body(
                    "%s, answer %d" % (where, i + 1), headers.get("content-type"), body
                )
                closing = headers.get("connection", "").lower() == "close"
    except (OSError, ValueError, IndexError) as e:
        raise BenchError("%s: %s" % (where, str(e) or type(e).__name__)) from e


def close(port, tls=None):
    """GET / with Connection: close must be answered and then the connection closed (over
    HTTPS with `tls`: a TLS close or a TCP close both count as closed)."""
    where = "GET / with Connection: close on port %d" % port
    request = b"GET / HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (HOST.encode(), port)
    try:
        sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        if tls is not None:
            sock = _tls_wrap(sock, tls, port)
        with sock:
            sock.sendall(request)
            reader = _Reader(sock)
            status, headers, body = reader.response()
            if status != 200:
                raise WrongAnswer("%s: status %d" % (where, status))
            _check_hello_body(where, headers.get("content-type"), body)
            if reader.buf:
                raise WrongAnswer("%s: bytes after the answer: %r" % (where, reader.buf[:80]))
            sock.settimeout(5.0)
            try:
                reader._fill()
            except (EOFError, ssl.SSLEOFError, ConnectionResetError):
                return  # closed, as asked
            except socket.timeout:
                raise WrongAnswer("%s: the server kept the connection open" % where) from None
            raise WrongAnswer("%s: bytes after the answer: %r" % (where, reader.buf[:80]))
    except (OSError, ValueError, IndexError, EOFError) as e:
        raise BenchError("%s: %s" % (where, str(e) or type(e).__name__)) from e


def stats(port, path, tls=None):
    """The server's counters as a dict (GET path, JSON; over HTTPS with `tls`), or None if
    it has none."""
    try:
        resp, data = _request(port, "GET", path, tls=tls)
        return json.loads(data) if resp.status == 200 else None
    except (BenchError, ValueError):
        return None


# ---- WebSocket (RFC 6455): a small blocking client, enough to check an endpoint ----

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocketClient:
    """One client connection: the opening handshake checked, masked frames out, the
    server's frames in (unmasked, RSV bits clear: no extension is offered)."""

    def __init__(self, port, path, timeout=TIMEOUT):
        self.where = "WebSocket %s on port %d" % (path, port)
        key = base64.b64encode(os.urandom(16))
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        try:
            self.sock.sendall(
                b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), HOST.encode(), port, key)
            )
            self.reader = _Reader(self.sock)
            self._handshake(key)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, key):
        status_line = self.reader._line().decode("latin-1")
        headers = {}
        while True:
            line = self.reader._line()
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = status_line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status == 501:
            raise NotSupported("the WebSocket handshake was answered 501")
        if status != 101:
            raise WrongAnswer("%s: handshake answered %r" % (self.where, status_line))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise WrongAnswer(
                "%s: Sec-WebSocket-Accept %r, expected %r"
                % (self.where, headers.get("sec-websocket-accept"), accept)
            )
        if headers.get("upgrade", "").lower() != "websocket":
            raise WrongAnswer("%s: 101 without Upgrade: websocket" % self.where)
        if "sec-websocket-extensions" in headers:
            raise WrongAnswer("%s: an extension none was offered" % self.where)

    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv(self):
        """The next whole message or control frame as (opcode, payload); pings answered."""
        message, first = b"", None
        while True:
            b0, b1 = self.reader._take(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.reader._take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.reader._take(8))[0]
            if b1 & 0x80 or b0 & 0x70:
                raise WrongAnswer("%s: masked frame or RSV bits set (0x%02x)" % (self.where, b0))
            opcode, payload = b0 & 0x0F, self.reader._take(n)
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode >= 0x8:
                return opcode, payload
            if (opcode == 0) == (first is None):
                raise WrongAnswer("%s: bad fragmentation (opcode %d)" % (self.where, opcode))
            first = first if opcode == 0 else opcode
            message += payload
            if b0 & 0x80:
                return first, message

    def close(self):
        """Our close (1000); the server must answer it with a close frame."""
        self.send(0x8, struct.pack("!H", 1000))
        while True:
            opcode, payload = self.recv()
            if opcode == 0x8:
                break
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()


def _ws_io(where, fn):
    try:
        return fn()
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise BenchError("%s: %s" % (where, str(e) or type(e).__name__)) from e


def ws_echo(port, path="/ws/echo"):
    """A binary and a text message (and a 64 KiB one) must come back as sent, as the same
    type; our close must be answered."""

    def run():
        with WebSocketClient(port, path) as ws:
            for opcode, payload in (
                (0x2, bytes(range(32))),
                (0x1, "héllo, wörld".encode()),
                (0x2, os.urandom(65536)),
            ):
                ws.send(opcode, payload)
                got = ws.recv()
                if got != (opcode, payload):
                    raise WrongAnswer(
                        "WebSocket %s on port %d: sent opcode %d, %d bytes; got opcode %d, "
                        "%d bytes%s"
                        % (
                            path,
                            port,
                            opcode,
                            len(payload),
                            got[0],
                            len(got[1]),
                            "" if len(got[1]) != len(payload) else " (different bytes)",
                        )
                    )
            ws.close()

    _ws_io("WebSocket echo on port %d" % port, run)


def ws_broadcast(port, path="/ws/broadcast", patience=5.0):
    """A message one connection sends must reach another connection and the sender: the
    first connection sends numbered messages until the second gets one (it may join the
    server's set a moment after its handshake), then one more that both must get, in order
    after the earlier ones."""

    def run():
        with WebSocketClient(port, path) as a, WebSocketClient(port, path) as b:
            deadline = time.monotonic() + patience
            sent, got = 0, None
            b.sock.settimeout(0.05)
            while got is None:
                if time.monotonic() > deadline:
                    raise WrongAnswer(
                        "WebSocket %s on port %d: another connection got none of %d "
                        "messages in %.0f s" % (path, port, sent, patience)
                    )
                a.send(0x2, b"sync %d" % sent)
                sent += 1
                try:
                    got = b.recv()
                except socket.timeout:
                    continue
            b.sock.settimeout(TIMEOUT)
            last = b"last %d" % sent
            a.send(0x2, last)
            for ws, who in ((b, "the other connection"), (a, "the sender")):
                while True:
                    opcode, payload = ws.recv()
                    if payload == last and opcode == 0x2:
                        break
                    if opcode != 0x2 or not payload.startswith(b"sync "):
                        raise WrongAnswer(
                            "WebSocket %s on port %d: %s got opcode %d %r"
                            % (path, port, who, opcode, payload[:40])
                        )
            a.close()
            b.close()

    _ws_io("WebSocket broadcast on port %d" % port, run)


CHECKS = {
    "hello": hello,
    "pipelined": pipelined,
    "close": close,
    "get16k": lambda port: get_bytes(port, "/16k", 16 * 1024),
    "get1m": lambda port, tls=None: get_bytes(port, "/1m", 1024 * 1024, tls=tls),
    "file-16k": lambda port: get_file(port, "16k.bin"),
    "file-1m": lambda port: get_file(port, "1m.bin"),
    "echo": echo,
    "ws-echo": ws_echo,
    "ws-broadcast": ws_broadcast,
}


def check(name, port, tls=None):
    """Run the check `name` of CHECKS against `port`, over HTTPS when `tls` is given (only
    hello, close and get1m have an HTTPS form: the HTTPS workloads')."""
    if tls is None:
        return CHECKS[name](port)
    return CHECKS[name](port, tls=tls)
