#!/usr/bin/env python3
"""Memory per idle WebSocket: the server's RSS growth per connection, with and without
permessage-deflate negotiated.

    python3 benchmarks/ws_memory.py                      # 10,000 connections, every mode
    python3 benchmarks/ws_memory.py --connections 2000 --modes plain,deflate

For each mode a fresh examples/hello_server (one ring thread) is started; a client in this
process opens the WebSockets to its echo endpoint on 127.0.0.1 and leaves them open and
idle. The figure is (VmRSS with them open - VmRSS before) / connections, VmRSS read from
/proc/PID/status after a warm-up of 200 connections opened and closed (so that the pools a
first connection grows are in the baseline, not in the figure). Modes:

  plain          no extension offered
  deflate-idle   permessage-deflate negotiated (the browser's offer, client_max_window_bits),
                 no message: the zlib streams are made lazily, so none exists yet
  deflate        the same, then one compressed message each way (a 300-byte JSON-like text
                 the client compresses, and the server's compressed echo): both streams exist
  deflate-15     as deflate, but the client offers no client_max_window_bits: its window is
                 15 bits, so the server's inflater keeps a 32 KiB window
  deflate-nct    as deflate, the server started with ws_deflate_no_context_takeover=1: the
                 streams are the thread's, shared, reset per message
  deflate-busy   as deflate, with 16 distinct 2 KiB messages each way instead of one, so
                 that every page of the zlib streams has been written (RSS counts only
                 pages touched: after one short message part of each window is not)
  deflate-15-busy  as deflate-busy with the client window of deflate-15

It raises RLIMIT_NOFILE as far as the hard limit allows (both processes need one descriptor
per connection) and lowers --connections to fit. It builds hello_server as benchmarks/run.py
does (build-bench/engine), unless --hello-server names one.
"""

import argparse
import base64
import hashlib
import os
import resource
import socket
import struct
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MODES = (
    "plain",
    "deflate-idle",
    "deflate",
    "deflate-15",
    "deflate-nct",
    "deflate-busy",
    "deflate-15-busy",
)
OFFERS = {
    "plain": None,
    "deflate-idle": "permessage-deflate; client_max_window_bits",
    "deflate": "permessage-deflate; client_max_window_bits",
    "deflate-15": "permessage-deflate",
    "deflate-nct": "permessage-deflate; client_max_window_bits",
    "deflate-busy": "permessage-deflate; client_max_window_bits",
    "deflate-15-busy": "permessage-deflate",
}
# A message over ws_deflate_min_size (128), so that the echo goes back compressed too.
MESSAGE = (
    b'{"type":"update","user":"alice","room":"lobby","seq":1,"items":['
    + b",".join(b'{"id":%d,"name":"item %d","price":%d.99}' % (i, i, i * 7) for i in range(8))
    + b"]}"
)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def vm_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for pid %d" % pid)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def handshake(port, path, offer):
    """A WebSocket opened on a fresh connection; returns (socket, negotiated extension)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16))
    lines = [
        b"GET %s HTTP/1.1" % path.encode(),
        b"Host: 127.0.0.1:%d" % port,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
    ]
    if offer:
        lines.append(b"Sec-WebSocket-Extensions: " + offer.encode())
    s.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake: %r" % head)
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    if rest:
        raise RuntimeError("bytes after the 101: %r" % rest)
    status, *fields = head.split(b"\r\n")
    if not status.startswith(b"HTTP/1.1 101"):
        raise RuntimeError("handshake refused: %r" % head)
    headers = {}
    for field in fields:
        name, _, value = field.partition(b":")
        headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if headers.get(b"sec-websocket-accept") != accept:
        raise RuntimeError("bad Sec-WebSocket-Accept in %r" % head)
    return s, headers.get(b"sec-websocket-extensions", b"").decode()


def send_frame(sock, opcode, payload, rsv1=False):
    mask = os.urandom(4)
    b0 = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(head + mask + masked)


def recv_frame(sock):
    """(fin, rsv1, opcode, payload) of one frame from the server (unmasked)."""
    b0, b1 = recv_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", recv_exact(sock, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", recv_exact(sock, 8))
    if b1 & 0x80:
        raise RuntimeError("a masked frame from the server")
    return bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, recv_exact(sock, n)


def busy_messages(count=16, size=2048):
    """Distinct JSON-like texts: together they fill any window (2^15 bytes at most)."""
    out = []
    for m in range(count):
        parts, n, i = [], 0, 0
        while n < size:
            part = b'{"id":%d,"user":"u%d","score":%d,"tag":"t%x"},' % (
                m * 1000 + i,
                (m * 7 + i) % 97,
                (m * 31 + i * 17) % 1000,
                m * 65537 + i,
            )
            parts.append(part)
            n += len(part)
            i += 1
        out.append(b"".join(parts)[:size])
    return out


def compressed(message):
    """message as permessage-deflate data (RFC 7692 7.2.1), compressed with a 9-bit window
    (within any client_max_window_bits the server may answer, 9..15) by a fresh compressor:
    a compressor may always ignore its history, so the same bytes are valid at any point of
    any connection."""
    c = zlib.compressobj(6, zlib.DEFLATED, -9)
    data = c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def exchange(sock, messages, wires):
    """The compressed text messages, one at a time, each echoed; checks that every echo came
    back compressed and equal (one decompressor per connection: the server keeps its
    context across messages)."""
    d = zlib.decompressobj(-15)
    for message, wire in zip(messages, wires):
        send_frame(sock, 0x1, wire, rsv1=True)
        fin, rsv1, opcode, payload = recv_frame(sock)
        if not (fin and opcode == 0x1):
            raise RuntimeError("unexpected echo frame: fin %s opcode %d" % (fin, opcode))
        if not rsv1:
            raise RuntimeError(
                "the echo came back uncompressed (is ws_deflate_min_size > %d?)" % len(message)
            )
        if d.decompress(payload + b"\x00\x00\xff\xff") != message:
            raise RuntimeError("the echo differs from the message")


def close(sock):
    try:
        send_frame(sock, 0x8, struct.pack("!H", 1000))
        sock.settimeout(2)
        recv_frame(sock)
    except (OSError, RuntimeError):
        pass
    sock.close()


def measure(args, mode):
    port = free_port()
    env = dict(os.environ, PMU_MAX_CONNECTIONS=str(args.connections + 1000))
    if mode == "deflate-nct":
        env["PMU_WS_DEFLATE_NO_CONTEXT_TAKEOVER"] = "1"
    server = subprocess.Popen(
        [args.hello_server, str(port), "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=raise_nofile,
    )
    socks = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "hello_server did not start: %s" % server.stderr.read()
                    ) from None
                time.sleep(0.05)
        offer = OFFERS[mode]
        messages = busy_messages() if mode.endswith("-busy") else [MESSAGE]
        if mode in ("plain", "deflate-idle"):
            messages = []
        wires = [compressed(m) for m in messages]
        # Warm-up: what the first connections make once (buffer pools, shared streams).
        for _ in range(200):
            s, ext = handshake(port, args.path, offer)
            exchange(s, messages, wires)
            close(s)
        time.sleep(0.5)
        before = vm_rss(server.pid)
        t0 = time.monotonic()
        extension = ""
        for _ in range(args.connections):
            s, extension = handshake(port, args.path, offer)
            if bool(offer) != bool(extension):
                raise RuntimeError("%s: negotiated %r for the offer %r" % (mode, extension, offer))
            exchange(s, messages, wires)
            socks.append(s)
        opened = time.monotonic() - t0
        time.sleep(1.0)
        after = vm_rss(server.pid)
        for s in socks:
            s.close()
        socks = []
        return {
            "mode": mode,
            "connections": args.connections,
            "extension": extension or "(none)",
            "rss_before": before,
            "rss_after": after,
            "per_conn": (after - before) / args.connections,
            "open_s": opened,
        }
    finally:
        for s in socks:
            s.close()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--modes", default=",".join(MODES), help="of: " + ", ".join(MODES))
    p.add_argument("--path", default="/ws", help="hello_server's echo endpoint (/ws)")
    p.add_argument("--hello-server", help="this hello_server binary instead of building one")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error("unknown mode(s): %s" % ", ".join(bad))
    if not args.hello_server:
        from bench import provision

        log_dir = os.path.join(provision.REPO_DIR, "build")
        os.makedirs(log_dir, exist_ok=True)
        args.hello_server, why = provision.hello_server(os.path.join(log_dir, "ws-memory.log"))
        if not args.hello_server:
            raise SystemExit("ws_memory: %s" % why)
    limit = raise_nofile()
    if args.connections > limit - 100:
        print(
            "RLIMIT_NOFILE is %d: %d connections instead of %d"
            % (limit, limit - 100, args.connections)
        )
        args.connections = limit - 100
    rows = []
    for mode in modes:
        print("%-13s opening %d WebSockets ..." % (mode, args.connections), flush=True)
        rows.append(measure(args, mode))
    print("\n| mode | extension negotiated | RSS before | RSS with them open | per connection |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            "| %s | `%s` | %.1f MiB | %.1f MiB | %.1f KiB |"
            % (
                r["mode"],
                r["extension"],
                r["rss_before"] / 2**20,
                r["rss_after"] / 2**20,
                r["per_conn"] / 1024,
            )
        )
    print(
        "\n%d connections per mode, one ring thread; opened in %s s"
        % (args.connections, ", ".join("%.1f" % r["open_s"] for r in rows))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
