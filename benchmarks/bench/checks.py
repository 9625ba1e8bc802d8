"""Answer checks: real HTTP requests that must get the right answer before (and after) a
server is measured. A wrong answer raises WrongAnswer, no answer at all (refused, timed
out) BenchError; 501 Not Implemented raises NotSupported (the server declines that workload, which is reported, not measured)."""

import http.client
import json
import socket
import time

from . import BenchError, WrongAnswer

HOST = "127.0.0.1"
HELLO = {"message": "Hello, World!"}
TIMEOUT = 10.0


class NotSupported(Exception):
    pass


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp, data
    except (OSError, http.client.HTTPException) as e:
        raise BenchError("%s %s on port %d failed: %s" % (method, path, port, e)) from e
    finally:
        conn.close()


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


def hello(port, patience=0.0):
    """GET / must answer 200, application/json, {"message":"Hello, World!"}.
    Returns a little description of the answer for the report. With `patience`, a server
    that does not answer (still draining a flood) is asked again for that many seconds;
    a wrong answer fails at once."""
    deadline = time.monotonic() + patience
    while True:
        try:
            resp, data = _request(port, "GET", "/")
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


def get_bytes(port, path, size):
    resp, data = _request(port, "GET", path)
    _expect_status(port, "GET", path, resp, data)
    if len(data) != size or data.strip(b"x"):
        raise WrongAnswer(
            "GET %s on port %d: expected %d bytes of 'x', got %d bytes (%r...)"
            % (path, port, size, len(data), data[:40])
        )


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


def close(port):
    """GET / with Connection: close must be answered and then the connection closed."""
    where = "GET / with Connection: close on port %d" % port
    request = b"GET / HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (HOST.encode(), port)
    try:
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
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
            except EOFError:
                return  # closed, as asked
            except socket.timeout:
                raise WrongAnswer("%s: the server kept the connection open" % where) from None
            raise WrongAnswer("%s: bytes after the answer: %r" % (where, reader.buf[:80]))
    except (OSError, ValueError, IndexError, EOFError) as e:
        raise BenchError("%s: %s" % (where, str(e) or type(e).__name__)) from e


def stats(port, path):
    """The server's counters as a dict (GET path, JSON), or None if it has none."""
    try:
        resp, data = _request(port, "GET", path)
        return json.loads(data) if resp.status == 200 else None
    except (BenchError, ValueError):
        return None


CHECKS = {
    "hello": hello,
    "pipelined": pipelined,
    "close": close,
    "get16k": lambda port: get_bytes(port, "/16k", 16 * 1024),
    "get1m": lambda port: get_bytes(port, "/1m", 1024 * 1024),
    "echo": echo,
}
