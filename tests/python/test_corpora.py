"""Replay two public request corpora against a native Server (tests/corpus/README.md):
every aws/http-desync-guardian "Severe" vector is refused, and every nodejs/llhttp request
vector that llhttp refuses in its default (strict) mode is refused by us too, except the
cases listed in ACCEPTED with the reason. Any other disagreement fails. A summary (counts
per tier and mode, refused or accepted) is printed (pytest -s shows it)."""

import asyncio
import collections
import json
import os

import pytest

CORPUS = os.path.join(os.path.dirname(__file__), "..", "corpus")
PROBE = b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n"

# llhttp strict-mode errors we accept (file, test name) -> why.
_AFTER_CLOSE = (
    "bytes after a request that closes the connection (HTTP/1.0 without keep-alive, "
    "Connection: close) are discarded unparsed and never answered: llhttp calls "
    "them an error, we answer the request and close"
)
ACCEPTED = {
    ("test/request/connection.md", "No restart when keep-alive is off (1.0)"): _AFTER_CLOSE,
    ("test/request/connection.md", "CRLF between requests, explicit `close`"): _AFTER_CLOSE,
    (
        "test/request/connection.md",
        "CRLF between requests, explicit `close` followed by tab",
    ): _AFTER_CLOSE,
}


def load(name):
    with open(os.path.join(CORPUS, name), encoding="utf-8") as f:
        return json.load(f)["vectors"]


def parse_responses(buf, head=False):
    """[(status, body)] of the complete responses in buf (Content-Length or chunked); the
    first has no body when `head` (the request was HEAD)."""
    out = []
    while b"\r\n\r\n" in buf:
        head_bytes, rest = buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        fields = dict(
            (k.strip().lower(), v.strip().lower())
            for k, _, v in (x.partition(b":") for x in lines[1:])
        )
        if head and not out:
            body, buf = b"", rest
        elif b"content-length" in fields:
            n = int(fields[b"content-length"])
            if len(rest) < n:
                break
            body, buf = rest[:n], rest[n:]
        elif fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_end = rest.find(b"\r\n")
                if size_end < 0:
                    return out
                size = int(rest[:size_end].split(b";")[0], 16)
                if size == 0:
                    buf = rest[size_end + 4 :]
                    break
                body += rest[size_end + 2 : size_end + 2 + size]
                rest = rest[size_end + 4 + size :]
        else:
            body, buf = b"", b""  # no framing: 1xx, 204, 304
        out.append((status, body))
    return out


async def exchange(port, data, idle=0.4, total=5.0):
    """Send data; read until the server closes or is quiet for `idle` seconds.
    -> ([(status, body)], closed)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf, closed = b"", False
    try:
        writer.write(data)
        await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        while loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), idle)
            except asyncio.TimeoutError:
                break
            if not chunk:
                closed = True
                break
            buf += chunk
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        writer.close()
    return parse_responses(buf, head=data.startswith(b"HEAD ")), closed


async def replay_all(port, payloads, parallel=32):
    sem = asyncio.Semaphore(parallel)

    async def one(data):
        async with sem:
            return await exchange(port, data)

    return await asyncio.gather(*(one(d) for d in payloads))


def handler(req):
    return b"path=" + req.path.encode("utf-8", "replace")


@pytest.fixture(scope="module")
def server():
    import pymongoose_uring as pmu

    s = pmu.Server(handler, port=0).start()
    yield s
    s.stop(timeout=30)


def test_desync_guardian_severe_refused(server):
    vectors = load("desync-guardian.json")
    # Each vector's head, then a second request: a server that does not refuse the head
    # must not let the second through as a request of its own either.
    results = asyncio.run(
        replay_all(server.port, [v["request"].encode("latin-1") + PROBE for v in vectors])
    )
    counts = collections.Counter()
    wrong = []
    for v, (responses, closed) in zip(vectors, results):
        statuses = [s for s, _ in responses]
        second_ok = any(s < 300 and b == b"path=/second" for s, b in responses)
        refused = any(s >= 400 for s in statuses) or (closed and not second_ok)
        counts[v["tier"], "refused" if refused else "accepted"] += 1
        if v["tier"] == "Severe" and not refused:
            wrong.append(
                "%s: %s: %s, answered %s%s"
                % (v["file"], v["name"], v["request"][:80], statuses, " closed" if closed else "")
            )
    print("\ndesync-guardian (%d vectors):" % len(vectors))
    for tier in ("Compliant", "Acceptable", "Ambiguous", "Severe"):
        print(
            "  %-10s refused %3d  accepted %3d"
            % (tier, counts[tier, "refused"], counts[tier, "accepted"])
        )
    assert not wrong, "Severe vectors not refused:\n" + "\n".join(wrong)


def test_llhttp_strict_errors_refused(server):
    vectors = load("llhttp-requests.json")
    results = asyncio.run(
        replay_all(server.port, [v["request"].encode("latin-1") for v in vectors])
    )
    counts = collections.Counter()
    wrong, stale = [], set(ACCEPTED)
    for v, (responses, closed) in zip(vectors, results):
        statuses = [s for s, _ in responses]
        refused = any(s >= 400 for s in statuses) or (closed and not responses)
        key = (v["file"], v["name"])
        counts[v["mode"], v["expect"], "refused" if refused else "accepted"] += 1
        if v["mode"] == "strict" and v["expect"] == "error":
            if refused:
                continue
            if key in ACCEPTED:
                stale.discard(key)
                continue
            wrong.append(
                "%s: %s: %r, answered %s%s"
                % (v["file"], v["name"], v["request"][:100], statuses, " closed" if closed else "")
            )
    print("\nllhttp request corpus (%d vectors): mode, llhttp's answer -> ours" % len(vectors))
    for (mode, expect, ours), n in sorted(counts.items()):
        print("  %-32s %-5s -> %-8s %3d" % (mode, expect, ours, n))
    print("  strict errors we accept, listed: %d" % (len(ACCEPTED) - len(stale)))
    for v, (responses, closed) in zip(vectors, results):
        if (
            v["mode"] == "strict"
            and v["expect"] == "ok"
            and (any(s >= 400 for s, _ in responses) or (closed and not responses))
        ):
            print(
                "  stricter than llhttp: %s: %s -> %s"
                % (v["file"], v["name"], [s for s, _ in responses])
            )
    assert not wrong, "llhttp refuses, we accept (not listed):\n" + "\n".join(wrong)
    assert not stale, "listed as accepted but now refused: %s" % sorted(stale)
