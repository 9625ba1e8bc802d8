"""Request-smuggling and RFC 9112 request-rule vectors against running servers.

    python3 benchmarks/smuggling.py 127.0.0.1:8000 127.0.0.1:8001 ...

Sends each vector on a fresh connection to every target, reads what comes back until the
server closes or stays quiet for --idle seconds, and prints one row per vector, one column
per target: the statuses of the responses in order, then "close" if the server closed the
connection (e.g. "400 close", "200 200 200"). A smuggled request shows as one response more
than the vector has requests. Targets are only ever 127.0.0.1 / ::1 style local addresses
given on the command line; nothing else is contacted.
"""

import argparse
import socket
import time

H = b"Host: a\r\n"
CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"

# (name, request bytes, what a correct origin server answers)
VECTORS = [
    (
        "bare CR ends the head, smuggles a GET",
        b"GET / HTTP/1.1\r\nHost: a\r\n\rXGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        "400 close",
    ),
    (
        "bare CR before Content-Length",
        b"POST / HTTP/1.1\r\nHost: a\r\n\rContent-Length: 5\r\n\r\nhello",
        "400 close",
    ),
    (
        "bare CR before Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: a\r\n\rTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "400 close",
    ),
    ("bare CR ends a header line", b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n", "400 close"),
    ("bare CR in chunk size", CHUNKED + b"5\rXhello\r\n0\r\n\r\n", "400 close"),
    ("bare CR in chunk extension", CHUNKED + b"5;a=b\rXhello\r\n0\r\n\r\n", "400 close"),
    ("bare CR after chunk data", CHUNKED + b"5\r\nhello\rX0\r\n\r\n", "400 close"),
    ("bare CR in last chunk", CHUNKED + b"5\r\nhello\r\n0\rX\r\n\r\n", "400 close"),
    ("bare CR in trailer", CHUNKED + b"5\r\nhello\r\n0\r\nT: v\rX\r\n\r\n", "400 close"),
    ("bare CR in final CRLF", CHUNKED + b"5\r\nhello\r\n0\r\n\rX", "400 close"),
    ("CR inside chunk data (legitimate)", CHUNKED + b"5\r\nh\rl\ro\r\n0\r\n\r\n", "200"),
    ("LF alone ends the request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", "400 close"),
    (
        "LF alone as the blank line, then a GET",
        b"GET / HTTP/1.1\r\nHost: a\r\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        "400 close",
    ),
    ("LF alone before a request", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "400 close"),
    ("LF alone after chunk data", CHUNKED + b"5\r\nhello\n0\r\n\r\n", "400 close"),
    ("LF alone as the final line", CHUNKED + b"5\r\nhello\r\n0\r\n\n", "400 close"),
    ("empty field name", b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", "400 close"),
    (
        "empty Transfer-Encoding and Content-Length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n\r\nhello",
        "400 close",
    ),
    (
        "Connection: close<TAB>, then a GET",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\t\r\n\r\nGET /smuggled HTTP/1.1\r\n"
        b"Host: a\r\n\r\n",
        "200 close",
    ),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", "400 close"),
    ("HTTP/1.1 with two Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400 close"),
    ("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "400 close"),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "400 close"),
    ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", "200 close"),
    ("empty Host, origin-form", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "200"),
    (
        "absolute-form, other Host",
        b"GET http://example.com:8080/?x=1 HTTP/1.1\r\nHost: other\r\n\r\n",
        "200",
    ),
    (
        "absolute-form, ftp scheme",
        b"GET ftp://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "400 close",
    ),
    ("absolute-form, no authority", b"GET http:/x HTTP/1.1\r\nHost: a\r\n\r\n", "400 close"),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "400 close"),
    ("GET *", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", "400 close"),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "2xx-4xx, kept"),
]


def parse_responses(buf, head=False):
    """Statuses of the complete responses at the start of buf (Content-Length or chunked)."""
    statuses = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            break
        head_lines = buf[:end].split(b"\r\n")
        parts = head_lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            statuses.append("?")
            break
        status = int(parts[1])
        fields = {}
        for line in head_lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip().lower()
        rest = buf[end + 4 :]
        if status < 200 or status in (204, 304) or head:
            pass
        elif b"content-length" in fields:
            n = int(fields[b"content-length"])
            if len(rest) < n:
                statuses.append(f"{status}(cut)")
                break
            rest = rest[n:]
        elif fields.get(b"transfer-encoding") == b"chunked":
            while True:
                line_end = rest.find(b"\r\n")
                if line_end < 0:
                    rest = None
                    break
                size = int(rest[:line_end].split(b";")[0], 16)
                rest = rest[line_end + 2 :]
                if size == 0:
                    t = rest.find(b"\r\n")
                    while t > 0:  # trailers
                        rest = rest[t + 2 :]
                        t = rest.find(b"\r\n")
                    rest = rest[2:] if t == 0 else None
                    break
                rest = rest[size + 2 :]
            if rest is None:
                statuses.append(f"{status}(cut)")
                break
        else:
            rest = b""  # framed by the close
        if status >= 200:
            statuses.append(str(status))
        buf = rest
    return statuses


def probe(target, data, idle, total):
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(total)
    try:
        s.connect((host, int(port)))
    except OSError as e:
        return f"connect failed: {e.strerror}"
    got = b""
    closed = False
    try:
        s.sendall(data)
        deadline = time.monotonic() + total
        s.settimeout(idle)
        while time.monotonic() < deadline:
            try:
                piece = s.recv(65536)
            except socket.timeout:
                break
            if not piece:
                closed = True
                break
            got += piece
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        s.close()
    statuses = parse_responses(got, head=False)
    cell = " ".join(statuses) if statuses else "-"
    return cell + (" close" if closed else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="+", help="host:port of each server (local only)")
    ap.add_argument("--names", help="comma-separated column names, one per target")
    ap.add_argument(
        "--idle", type=float, default=0.5, help="seconds of silence that end a read (default 0.5)"
    )
    ap.add_argument("--total", type=float, default=3.0, help="seconds per probe at most")
    args = ap.parse_args()
    names = args.names.split(",") if args.names else args.targets
    rows = [["vector", "expected"] + names]
    for name, data, expected in VECTORS:
        rows.append(
            [name, expected] + [probe(t, data, args.idle, args.total) for t in args.targets]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("-|-".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
