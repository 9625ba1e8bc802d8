#!/usr/bin/env python3
"""Extract seed corpora for the libFuzzer harnesses from the C tests' requests.

Run once, from anywhere: python3 tests/fuzz/extract_corpus.py
Reads the string literals of tests/c/*.c (adjacent literals concatenated, as C
does), keeps those that start like an HTTP request, and writes
  corpus/request/<test>-<n>   b"\\0" + the request bytes (no splits)
  corpus/chunked/<test>-<n>   b"\\0" + the chunked body framing after the head
with at most PER_TEST seeds from each test file, duplicates dropped, and
  corpus/request/handler-<n>  requests for the harness handler's own paths.
Files named regress-* (inputs that once failed a check) are left alone.
The leading byte is the harnesses' control byte (see fuzz_common.h).
"""

import hashlib
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
TESTS = HERE.parent / "c"
PER_TEST = 3
METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")

LITERAL = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
ESCAPES = {
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "0": b"\0",
    "\\": b"\\",
    '"': b'"',
    "'": b"'",
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "v": b"\v",
    "?": b"?",
}


def unescape(s):
    out, i = bytearray(), 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode("latin-1")
            i += 1
            continue
        n = s[i + 1]
        if n == "x":
            m = re.match(r"[0-9a-fA-F]{1,2}", s[i + 2 :])
            out.append(int(m.group(0), 16))
            i += 2 + len(m.group(0))
        elif n in "01234567" and re.match(r"[0-7]{1,3}", s[i + 1 :]).group(0) != "0":
            m = re.match(r"[0-7]{1,3}", s[i + 1 :])
            out.append(int(m.group(0), 8) & 0xFF)
            i += 1 + len(m.group(0))
        else:
            out += ESCAPES.get(n, n.encode("latin-1"))
            i += 2
    return bytes(out)


def literals(text):
    """Concatenated string literals of a C source, comments removed."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"(?m)//.*$", " ", text)
    run, end = [], None
    for m in LITERAL.finditer(text):
        if run and text[end : m.start()].strip():
            yield b"".join(run)
            run = []
        run.append(unescape(m.group(1)))
        end = m.end()
    if run:
        yield b"".join(run)


# The harness handler's own paths (fuzz_common.c), which the C tests do not use.
HANDLER_SEEDS = [
    b"GET /defer HTTP/1.1\r\nHost: f\r\n\r\nGET /cdefer HTTP/1.1\r\nHost: f\r\n\r\n"
    b"HEAD /chunk HTTP/1.1\r\nHost: f\r\n\r\nGET /len HTTP/1.1\r\nHost: f\r\n\r\n",
    b"GET /s1 HTTP/1.1\r\nHost: f\r\n\r\nGET /s2 HTTP/1.1\r\nHost: f\r\n\r\n"
    b"GET /s3 HTTP/1.1\r\nHost: f\r\n\r\nHEAD /s4 HTTP/1.1\r\nHost: f\r\n\r\n"
    b"GET /close HTTP/1.1\r\nHost: f\r\n\r\nGET /after HTTP/1.1\r\nHost: f\r\n\r\n",
    b"POST /early HTTP/1.1\r\nHost: f\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
    b"POST /echo HTTP/1.1\r\nHost: f\r\nContent-Length: 80\r\n\r\n"
    + b"y" * 80
    + b"GET /chunk HTTP/1.0\r\n\r\n",
    b"POST /defer HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"50\r\n" + b"z" * 80 + b"\r\n0\r\n\r\n",
]


def main():
    for sub in ("request", "chunked"):
        (HERE / "corpus" / sub).mkdir(parents=True, exist_ok=True)
        for f in (HERE / "corpus" / sub).iterdir():
            if not f.name.startswith("regress-"):  # inputs that once failed: kept
                f.unlink()
    seen = set()
    counts = {"request": 0, "chunked": 0}
    for src in sorted(TESTS.glob("test_*.c")):
        name = src.stem[len("test_") :]
        per = {"request": 0, "chunked": 0}
        for lit in literals(src.read_text(encoding="latin-1")):
            if not lit.startswith(METHODS) or b" HTTP/1." not in lit or b"%" in lit:
                continue
            seeds = [("request", lit)]
            head, sep, rest = lit.partition(b"\r\n\r\n")
            if sep and b"chunked" in head.lower() and rest:
                seeds.append(("chunked", rest))
            for kind, data in seeds:
                key = hashlib.sha1(kind.encode() + data).hexdigest()
                if key in seen or per[kind] >= PER_TEST:
                    continue
                seen.add(key)
                per[kind] += 1
                counts[kind] += 1
                (HERE / "corpus" / kind / f"{name}-{per[kind]}").write_bytes(b"\0" + data)
    for n, data in enumerate(HANDLER_SEEDS, 1):
        (HERE / "corpus" / "request" / f"handler-{n}").write_bytes(b"\0" + data)
        counts["request"] += 1
    print(f"wrote {counts['request']} request seeds, {counts['chunked']} chunked seeds")


if __name__ == "__main__":
    main()
