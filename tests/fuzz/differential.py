#!/usr/bin/env python3
"""Differential check of the engine's request parsing against h11 (strict).

Mutates a set of seed requests (byte flips, CR/LF/SP/HTAB insertions, header
duplication, Content-Length/Transfer-Encoding variations, chunk-size edits,
obs-fold, case changes, absolute-form, missing/duplicate Host, versions),
sends each on its own connection to a native pymongoose_uring.Server whose
handler echoes what it parsed (method, target, version, headers, body, in an
X-Echo header so that HEAD shows it too), parses the same bytes with h11 as a
server, and classifies every disagreement about the *first* request:

  ours-only     we answered it, h11 refuses it (or finds it incomplete)
  h11-only      h11 accepts it, we refused it (or found it incomplete)
  differ        both accept it but read a field differently

Each class is keyed by what was different and, for refusals, h11's reason or
our status. tests/fuzz/README.md documents every class in ALLOWED below.

    python tests/fuzz/differential.py [--count N] [--seed S] [--show K]

prints the classes with their counts and K examples each, and exits 1 if a
class is not in ALLOWED. tests/python/test_differential.py runs a bounded
version of it.
"""

import argparse
import base64
import collections
import json
import random
import re
import socket
import sys

import h11

# Seeds: one request each; mutations are applied to copies.
SEEDS = [
    b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: d/1\r\nAccept: */*\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
    b"\r\nhello world",
    b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"HEAD /head HTTP/1.1\r\nHost: h\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n",
    b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://example.com/abs?q HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nCookie: a=1; b=2\r\n\r\n",
]

INTERESTING = b'\r\n \t:;,=\x00\x7f\x80\xff0aAfF-+"\\/?#%'


# Every class the check may find, with a one-line reason; tests/fuzz/README.md
# explains each. Keys are (kind, feature) as classify() makes them. A class
# that stops occurring is dropped from here, so that it cannot come back
# unnoticed.
SAFE = "we refuse, h11 takes: "
EARLY = "we refuse before the end, h11 still waits: "
ALLOWED = {
    # --- we take what h11 refuses ---
    (
        "ours-only",
        "Transfer-Encoding other than one 'chunked'",
    ): "'gzip, chunked' or 'identity' + 'chunked': framed as chunked (chunked is last, "
    "RFC 9112 6.3), the body handed over still encoded; h11 knows only 'chunked'",
    (
        "ours-only",
        "empty lines before the request line",
    ): "llhttp skips CR and LF before a request line (RFC 9112 2.2 allows skipping "
    "empty lines); h11 only CRLF/LF",
    (
        "ours-only",
        "request-line spacing",
    ): "llhttp takes several SP between target and version; framing unaffected",
    # --- we wait (incomplete) where h11 refuses ---
    (
        "h11-refuses-we-wait",
        "Transfer-Encoding other than one 'chunked'",
    ): "as ours-only/Transfer-Encoding: we wait for the chunked body",
    # --- h11 takes what we refuse (the safe direction) ---
    ("h11-only", "obs-fold"): SAFE + "RFC 9112 5.2 lets a server refuse obs-fold",
    ("h11-only", "version"): SAFE + "HTTP/0.9, 1.2+, 2.0 on this port: 400/505",
    ("h11-only", "method case"): SAFE + "methods are case-sensitive; llhttp knows upper case",
    ("h11-only", "unknown method"): SAFE + "llhttp knows a fixed list of methods",
    ("h11-only", "CONNECT"): SAFE + "a CONNECT h11 takes that llhttp refuses",
    ("h11-only", "absolute-form"): SAFE + "llhttp refuses some targets h11 never checks",
    ("h11-only", "target neither origin, absolute nor asterisk form"): SAFE
    + "'GET host:443', 'GET ;x': not a target outside CONNECT",
    ("h11-only", "bare LF in the field lines"): SAFE
    + "strict llhttp: field lines end with CRLF (a bare LF only as the empty line)",
    ("h11-only", "control byte in a field value"): SAFE + "CTL in a value (RFC 9110 5.5)",
    ("h11-only", "Content-Length with Transfer-Encoding"): SAFE + "RFC 9112 6.3 lets a "
    "server refuse both",
    ("h11-only", "duplicate Content-Length"): SAFE + "identical duplicates: RFC 9112 6.3 "
    "allows refusing",
    ("h11-only", "Content-Length form"): SAFE + "'5, 5' lists: refusing is allowed",
    ("h11-only", "whitespace around 'chunked'"): SAFE + "llhttp matches 'chunked' exactly "
    "(a trailing HTAB is not OWS-trimmed)",
    ("h11-only", "chunk extension or whitespace"): SAFE
    + "llhttp's chunk-extension grammar (no BWS, '5;' and 'a=b;c' refused)",
    ("h11-only", "Expect other than 100-continue"): SAFE + "417 (RFC 9110 10.1.1)",
    ("h11-only", "asterisk-form outside OPTIONS"): SAFE
    + "RFC 9112 3.2.4: the asterisk-form is only for OPTIONS",
    ("h11-only", "invalid Host"): SAFE
    + "RFC 9112 3.2: 400 for a Host that is not host[:port] (h11 takes any value)",
    ("h11-only", "bare LF as the empty line"): SAFE
    + "the head ends with CRLF CRLF, as llhttp 9 requires; RFC 9112 2.2 allows "
    "a lone LF, and refusing keeps us in step with strict front ends",
    ("h11-only", "HTAB around Content-Length"): SAFE
    + "llhttp refuses an HTAB after the digits (a SP passes); OWS is allowed there",
}
# Whatever the feature: we refused (400) bytes h11 has not refused yet. Safe:
# we never answer these as requests, and the connection closes.
ALLOWED[("early", "*")] = EARLY + "a prefix we find invalid already"
ALLOWED[("h11-refuses-we-wait", "empty lines before the request line")] = (
    "h11 0.16 refuses a CRLF before the request line; llhttp skips it (RFC 9112 2.2)"
)


# ---------------------------------------------------------------- mutations


def _lines(req):
    head, sep, body = req.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), sep, body


def _join(lines, sep, body):
    return b"\r\n".join(lines) + sep + body


def m_flip(rng, req):
    i = rng.randrange(len(req))
    c = rng.choice(INTERESTING) if rng.random() < 0.7 else rng.randrange(256)
    return req[:i] + bytes([c]) + req[i + 1 :]


def m_insert(rng, req):
    i = rng.randrange(len(req) + 1)
    ins = rng.choice([b"\r", b"\n", b" ", b"\t", b"\r\n", b"\x00", b"\r\n ", b"\n\r"])
    return req[:i] + ins + req[i:]


def m_delete(rng, req):
    i = rng.randrange(len(req))
    return req[:i] + req[i + 1 :]


def m_dup_header(rng, req):
    lines, sep, body = _lines(req)
    if len(lines) < 2:
        return req
    i = rng.randrange(1, len(lines))
    lines.insert(i, lines[i])
    return _join(lines, sep, body)


def m_content_length(rng, req):
    lines, sep, body = _lines(req)
    n = len(body)
    lines = (
        [l for l in lines if not l.lower().startswith(b"content-length:")]
        if rng.random() < 0.5
        else lines
    )
    value = rng.choice(
        [
            b"%d" % n,
            b"%d" % (n + 1),
            b"%d" % max(n - 1, 0),
            b"0%d" % n,
            b"+%d" % n,
            b" %d" % n,
            b"%d, %d" % (n, n),
            b"%d,%d" % (n, n + 1),
            b"-1",
            b"0x%x" % n,
            b"%d " % n,
            b"99999999999999999999",
        ]
    )
    lines.insert(rng.randrange(1, len(lines) + 1), b"Content-Length: " + value)
    return _join(lines, sep, body)


def m_transfer_encoding(rng, req):
    lines, sep, body = _lines(req)
    value = rng.choice(
        [
            b"chunked",
            b"Chunked",
            b"chunked, chunked",
            b"gzip, chunked",
            b"chunked, gzip",
            b"identity",
            b" chunked",
            b"chunked\t",
            b"chunked;q=1",
            b"\tchunked",
            b"xchunked",
        ]
    )
    lines.insert(rng.randrange(1, len(lines) + 1), b"Transfer-Encoding: " + value)
    if rng.random() < 0.5 and b"\r\n0\r\n" not in body:
        body = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
    return _join(lines, sep, body)


def m_chunk_size(rng, req):
    if b"chunked" not in req.lower():
        req = SEEDS[2]
    head, sep, body = req.partition(b"\r\n\r\n")
    sizes = [m for m in re.finditer(rb"(?m)(?:^|\n)([0-9a-fA-F]+)(?=[;\r])", body)]
    if not sizes:
        return req
    m = rng.choice(sizes)
    s, e = m.span(1)
    old = int(body[s:e], 16)
    new = rng.choice(
        [
            b"%X" % old,
            b"00%x" % old,
            b"%x" % (old + 1),
            b"%x" % max(old - 1, 0),
            b"0x%x" % old,
            b"-%x" % old,
            b"%x " % old,
            b" %x" % old,
            b"%x;" % old,
            b'%x;a="b"' % old,
            b"%x ;a" % old,
            b"ffffffffffffffffff",
            b"%x\r" % old,
        ]
    )
    return head + sep + body[:s] + new + body[e:]


def m_obs_fold(rng, req):
    lines, sep, body = _lines(req)
    if len(lines) < 2:
        return req
    i = rng.randrange(1, len(lines))
    line = lines[i]
    c = line.find(b":")
    if c < 0:
        return req
    lines[i] = line + rng.choice([b"\r\n folded", b"\r\n\tfolded", b"\r\n "])
    return _join(lines, sep, body)


def m_case(rng, req):
    lines, sep, body = _lines(req)
    i = rng.randrange(len(lines))
    line = lines[i]
    if i == 0:
        parts = line.split(b" ")
        j = rng.choice([0, len(parts) - 1])
        parts[j] = parts[j].lower() if rng.random() < 0.5 else parts[j].swapcase()
        lines[0] = b" ".join(parts)
    else:
        name, colon, value = line.partition(b":")
        lines[i] = (name.upper() if rng.random() < 0.5 else name.lower()) + colon + value
    return _join(lines, sep, body)


def m_absolute_form(rng, req):
    lines, sep, body = _lines(req)
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return req
    target = parts[1] if parts[1].startswith(b"/") else b"/"
    parts[1] = (
        rng.choice(
            [
                b"http://example.com",
                b"http://other.example:8080",
                b"https://example.com",
                b"HTTP://Example.com",
            ]
        )
        + target
    )
    if rng.random() < 0.3:
        parts[1] = rng.choice([b"example.com:443", b"*"])
        parts[0] = rng.choice([b"CONNECT", b"GET", b"OPTIONS"])
    lines[0] = b" ".join(parts)
    return _join(lines, sep, body)


def m_host(rng, req):
    lines, sep, body = _lines(req)
    hosts = [i for i, l in enumerate(lines) if l.lower().startswith(b"host:")]
    if hosts and rng.random() < 0.5:
        del lines[hosts[0]]
    else:
        lines.insert(
            rng.randrange(1, len(lines) + 1),
            b"Host: " + rng.choice([b"h", b"other", b"", b"a b", b"h:99999"]),
        )
    return _join(lines, sep, body)


def m_version(rng, req):
    lines, sep, body = _lines(req)
    parts = lines[0].split(b" ")
    parts[-1] = rng.choice(
        [
            b"HTTP/1.0",
            b"HTTP/1.1",
            b"HTTP/2.0",
            b"HTTP/1.2",
            b"HTTP/0.9",
            b"HTTP/1.10",
            b"HTTP/1",
            b"HTTPS/1.1",
            b"HTTP/1.1 ",
        ]
    )
    lines[0] = b" ".join(parts)
    return _join(lines, sep, body)


MUTATIONS = [
    m_flip,
    m_insert,
    m_delete,
    m_dup_header,
    m_content_length,
    m_transfer_encoding,
    m_chunk_size,
    m_obs_fold,
    m_case,
    m_absolute_form,
    m_host,
    m_version,
]


def mutate(rng):
    req = rng.choice(SEEDS)
    ops = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.choice(MUTATIONS)
        req = op(rng, req)
        ops.append(op.__name__[2:])
    return req, ops


# ---------------------------------------------------------------- the two sides


def handler(request):
    """Echo what the engine parsed, in a header (a HEAD answer has no body)."""
    seen = {
        "method": request.method,
        "target": request.target,
        "version": request.http_version,
        "headers": [[n, v] for n, v in request.headers.multi_items()],
        "body": base64.b64encode(request.body).decode(),
    }
    echo = base64.b64encode(json.dumps(seen).encode()).decode()
    return 200, {"X-Echo": echo}, b""


def ours(port, data, timeout=5.0):
    """('accept', view) | ('refuse', status) | ('incomplete', None)"""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        out = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                out += d
        except (ConnectionResetError, socket.timeout):
            pass
    # Skip 100 Continue answers.
    while out.startswith(b"HTTP/1.1 100 "):
        out = out.partition(b"\r\n\r\n")[2]
    if not out:
        return ("incomplete", None)
    status = int(out[9:12])
    if status != 200:
        return ("refuse", status)
    head = out.partition(b"\r\n\r\n")[0].decode("latin-1")
    m = re.search(r"(?im)^X-Echo: *(\S+)", head)
    seen = json.loads(base64.b64decode(m.group(1)))
    seen["body"] = base64.b64decode(seen["body"])
    return ("accept", seen)


def theirs(data):
    """h11 as a server: ('accept', view) | ('refuse', reason) | ('incomplete', None)"""
    conn = h11.Connection(our_role=h11.SERVER)
    conn.receive_data(data)
    view, body = None, b""
    eof_sent = False
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                if eof_sent:
                    return ("incomplete", None)
                conn.receive_data(b"")
                eof_sent = True
                continue
            if isinstance(ev, h11.Request):
                view = {
                    "method": ev.method.decode("latin-1"),
                    "target": ev.target.decode("latin-1"),
                    "version": ev.http_version.decode(),
                    "headers": [
                        [n.decode("latin-1"), v.decode("latin-1")]
                        for n, v in ev.headers.raw_items()
                    ],
                }
            elif isinstance(ev, h11.Data):
                body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                view["body"] = body
                return ("accept", view)
            elif isinstance(ev, h11.ConnectionClosed):
                return ("incomplete", None)
    except h11.RemoteProtocolError as e:
        if (
            eof_sent
            and view is not None
            or "peer unexpectedly closed" in str(e)
            or "incomplete" in str(e).lower()
        ):
            return ("incomplete", None)
        return ("refuse", str(e))


# ---------------------------------------------------------------- classification

LLHTTP_METHODS = {
    b"DELETE",
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"COPY",
    b"LOCK",
    b"MKCOL",
    b"MOVE",
    b"PROPFIND",
    b"PROPPATCH",
    b"SEARCH",
    b"UNLOCK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PATCH",
    b"PURGE",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"SOURCE",
    b"QUERY",
}


def feature(data):
    """The first unusual thing about a request, in a fixed order (request
    line, field syntax, framing, then the request-target and Host rules):
    what a disagreement is filed under."""
    if data.lstrip(b"\r\n") != data:
        return "empty lines before the request line"
    m = re.search(rb"\r?\n\r?\n", data)  # the end of the head, as either side may see it
    head = data[: m.start()] if m else data
    body = data[m.end() :] if m else b""
    line_end = re.search(rb"\r?\n", data)
    first = data[: line_end.start()] if line_end else data
    parts = first.split(b" ")
    if len(parts) != 3 or not all(parts):
        return "request-line spacing"
    method, target, version = parts
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        return "version"
    if method != method.upper():
        return "method case"
    if method not in LLHTTP_METHODS:
        return "unknown method"
    if method == b"CONNECT":
        return "CONNECT"
    if re.search(rb"[^\x21-\x7e]", target):
        return "target bytes"
    if not (
        target.startswith(b"/")
        or target == b"*"
        or re.match(rb"[a-zA-Z][a-zA-Z0-9+.-]*://", target)
    ):
        return "target neither origin, absolute nor asterisk form"
    fields = head[len(first) :]
    if re.search(rb"\n[ \t]", fields):
        return "obs-fold"
    if re.search(rb"\r(?!\n)", data[: m.end()] if m else data):
        return "bare CR"
    if re.search(rb"(?<!\r)\n", data[: m.end() - 1] if m else data):
        return "bare LF in the field lines"
    if m and m.group() != b"\r\n\r\n":
        return "bare LF as the empty line"
    lines = fields.split(b"\r\n")[1:]
    if any(l.startswith(b":") for l in lines):
        return "empty field name"
    if any(re.match(rb"[^:]*[ \t]:", l) for l in lines):
        return "whitespace before colon"
    if any(b":" not in l for l in lines):
        return "field line without colon"
    names = [l.partition(b":")[0].lower() for l in lines]
    raw = [l.partition(b":")[2] for l in lines]
    values = [v.strip(b" \t") for v in raw]
    if any(re.search(rb"[^!#$%&'*+.^_`|~0-9a-z-]", n) for n in names):
        return "field name bytes"
    if any(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", v) for v in values):
        return "control byte in a field value"
    cls = [v for n, v in zip(names, values) if n == b"content-length"]
    tes = [v for n, v in zip(names, raw) if n == b"transfer-encoding"]
    if cls and tes:
        return "Content-Length with Transfer-Encoding"
    if len(cls) > 1:
        return "duplicate Content-Length"
    if cls and not re.fullmatch(rb"[0-9]+", cls[0]):
        return "Content-Length form"
    if cls and len(cls[0]) > 15:
        return "Content-Length overflow"
    if any(n == b"content-length" and b"\t" in v for n, v in zip(names, raw)):
        return "HTAB around Content-Length"
    if tes and [t.strip(b" \t").lower() for t in tes] != [b"chunked"]:
        return "Transfer-Encoding other than one 'chunked'"
    if tes and not re.fullmatch(rb" ?chunked", tes[0], re.I):
        return "whitespace around 'chunked'"
    if tes and re.search(rb"(?:^|\n):", body):
        return "empty field name"
    if tes and re.search(rb"(?m)^[0-9a-fA-F]{16,}", body):
        return "chunk size overflow"
    if tes and re.search(rb"(?m)^[0-9a-fA-F]*[ \t;]", body):
        return "chunk extension or whitespace"
    if tes:
        return "chunk framing"
    if any(n == b"expect" and v.lower() != b"100-continue" for n, v in zip(names, values)):
        return "Expect other than 100-continue"
    if target == b"*" and method != b"OPTIONS":
        return "asterisk-form outside OPTIONS"
    if re.match(rb"[a-zA-Z][a-zA-Z0-9+.-]*://", target):
        return "absolute-form"
    if version == b"HTTP/1.1" and names.count(b"host") == 0:
        return "missing Host"
    if names.count(b"host") > 1:
        return "duplicate Host"
    hosts = [v for n, v in zip(names, values) if n == b"host"]
    if (
        hosts
        and hosts[0]
        and not re.fullmatch(
            rb"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]*)?", hosts[0]
        )
    ):
        return "invalid Host"
    if any(re.search(rb"[\x80-\xff]", v) for v in values):
        return "obs-text in a field value"
    return "other"


def as_origin_form(view):
    """h11's view of an absolute-form request as the engine presents it (RFC
    9112 3.2.2): the target in origin-form ("/" for an empty path), and the
    target's authority as the Host field's value (added when absent)."""
    m = re.match(r"(?i)https?://([^/?#]*)(.*)", view["target"])
    if not m:
        return view
    authority, rest = m.groups()
    view = dict(view)
    view["target"] = rest if rest.startswith("/") else "/" + rest
    view["headers"] = [[n, authority if n.lower() == "host" else v] for n, v in view["headers"]]
    if not any(n.lower() == "host" for n, _ in view["headers"]):
        view["headers"].append(["Host", authority])  # HTTP/1.0 without Host: added last
    return view


def classify(data, a, b):
    """a: ours(), b: theirs(). Returns (kind, feature) or None when they agree.
    kind: ours-only (we answered, h11 refuses or waits), h11-only (h11 takes
    it, we refuse or wait), early (we refuse where h11 still waits for more),
    differ-FIELD (both take it, FIELD read differently)."""
    ka, kb = a[0], b[0]
    if ka == "accept" and kb == "accept":
        va, vb = a[1], as_origin_form(b[1])
        for field in ("method", "target", "version", "body"):
            if va[field] != vb[field]:
                return ("differ-" + field, feature(data))

        # h11 lower-cases the value of Transfer-Encoding
        def norm(n, v):
            return (n.lower(), v.lower() if n.lower() == "transfer-encoding" else v)

        ha = [norm(n, v) for n, v in va["headers"]]
        hb = [norm(n, v) for n, v in vb["headers"]]
        if ha != hb:
            return ("differ-headers", feature(data))
        return None
    if ka == kb:
        return None
    if ka == "accept":
        return ("ours-only", h11_cause(b[1]) or feature(data))
    if kb == "accept":
        return ("h11-only", feature(data))
    if ka == "refuse":  # h11: incomplete
        return ("early", feature(data))
    return ("h11-refuses-we-wait", h11_cause(b[1]) or feature(data))


def h11_cause(reason):
    """For a request we take and h11 refuses: h11's reason, where it names one."""
    if reason is None:
        return None
    for pattern, cause in (
        ("Missing mandatory Host", "missing Host"),
        ("Found multiple Host", "duplicate Host"),
        ("Only Transfer-Encoding: chunked", "Transfer-Encoding other than one 'chunked'"),
    ):
        if pattern in reason:
            return cause
    return None


def allowed(cls):
    return cls in ALLOWED or (cls[0], "*") in ALLOWED


def run(count, seed, port=None, progress=False):
    """Run count mutations; returns {class: [examples]} of the disagreements."""
    rng = random.Random(seed)
    server = None
    if port is None:
        import pymongoose_uring as pmu

        server = pmu.Server(handler, port=0, header_timeout_ms=5000, body_timeout_ms=5000)
        server.start()
        port = server.port
    found = collections.OrderedDict()
    try:
        for n in range(count):
            data, ops = mutate(rng)
            a, b = ours(port, data), theirs(data)
            cls = classify(data, a, b)
            if cls:
                found.setdefault(cls, []).append((data, ops, a, b))
            if progress and n % 500 == 499:
                print("%d mutations, %d classes" % (n + 1, len(found)), file=sys.stderr)
    finally:
        if server:
            server.stop(timeout=10)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--show", type=int, default=2, help="examples printed per class")
    ap.add_argument("--port", type=int, help="test a server already running there instead")
    args = ap.parse_args()
    found = run(args.count, args.seed, args.port, progress=True)
    bad = 0
    for cls, examples in sorted(found.items(), key=lambda kv: -len(kv[1])):
        ok = allowed(cls)
        bad += not ok
        print(
            "%-9s %-40s %6d  %s"
            % (cls[0], cls[1], len(examples), "allowed" if ok else "NOT IN THE ALLOW-LIST")
        )
        for data, ops, a, b in examples[: args.show]:
            print(
                "    %s %r\n      ours=%s h11=%s"
                % ("+".join(ops), data[:300], _short(a), _short(b))
            )
    print("%d mutations, %d disagreement classes, %d not allowed" % (args.count, len(found), bad))
    return 1 if bad else 0


def _short(r):
    if r[0] == "accept":
        v = r[1]
        return "accept(%s %s %s, %d headers, %d body bytes)" % (
            v["method"],
            v["target"][:60],
            v["version"],
            len(v["headers"]),
            len(v["body"]),
        )
    return "%s(%s)" % r if r[1] is not None else r[0]


if __name__ == "__main__":
    sys.exit(main())
