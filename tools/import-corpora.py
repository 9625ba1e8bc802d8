#!/usr/bin/env python3
"""Turn two public request corpora into our own compact test data (tests/corpus/*.json).

    tools/import-corpora.py --llhttp DIR --desync DIR [--out tests/corpus]

DIR is a checkout (or a bare git directory: files are then read from its HEAD) of
  - nodejs/llhttp: test/request/*.md, each test a request in an ```http block, its
    parser mode in a <!-- meta={...} --> comment ("request": the default, strict mode;
    "request-lenient-*": a leniency flag set) and the expected parser log in a ```log
    block (an "error code=" line, but for the pauses 21-23, means llhttp refuses it);
  - aws/http-desync-guardian: tests/*.yaml, each test a request described by method,
    uri, version and headers, with the tier expected (Compliant, Acceptable,
    Ambiguous, Severe).
Only the request bytes, where they come from and the expectation are written: data,
no code. The llhttp input escapes are decoded as llhttp's test runner documents them
(newlines become CRLF; \\r \\n \\t \\f \\xHH \\NNN; a backslash before a newline joins lines).
A request line of HTTP/1.1 (at the start, or after a blank line) whose head has no Host
gets "Host: h" after it ("host_added": true), so that it reaches the rule it is about
instead of being refused for the missing Host (RFC 9112 3.2).
Needs PyYAML (Debian: python3-yaml).
"""

import argparse
import json
import os
import re
import subprocess
import sys

import yaml

REQUEST_LINE = re.compile(rb"^[A-Z]+ [^ \r\n]+ HTTP/1\.1$")
# An error in llhttp's log; 21-23 are HPE_PAUSED, HPE_PAUSED_UPGRADE (CONNECT or Upgrade:
# the parser stops for the caller to take over) and HPE_PAUSED_H2_UPGRADE: no refusal.
ERROR = re.compile(r"error code=(?!2[123] )\d+")


class Tree:
    """Files of a checkout or, for a bare git directory, of its HEAD."""

    def __init__(self, path):
        self.path = path
        self.git = not os.path.isdir(os.path.join(path, "test")) and not os.path.isdir(
            os.path.join(path, "tests")
        )

    def commit(self):
        return subprocess.run(
            ["git", "-C", self.path, "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def list(self, folder, suffix):
        if self.git:
            out = subprocess.run(
                ["git", "-C", self.path, "ls-tree", "--name-only", "HEAD", folder + "/"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
        else:
            out = [folder + "/" + f for f in os.listdir(os.path.join(self.path, folder))]
        return sorted(f for f in out if f.endswith(suffix))

    def read(self, name):
        if self.git:
            return subprocess.run(
                ["git", "-C", self.path, "show", "HEAD:" + name], check=True, capture_output=True
            ).stdout.decode("utf-8")
        with open(os.path.join(self.path, name), encoding="utf-8") as f:
            return f.read()


def add_host(data):
    """Insert "Host: h" after each HTTP/1.1 request line (at the start, or right after a
    blank line) whose head has no Host."""
    out, added, start = b"", False, 0
    while True:
        end = data.find(b"\r\n", start)
        head_end = data.find(b"\r\n\r\n", start)
        head = data[start : head_end if head_end >= 0 else len(data)].lower()
        if end >= 0 and REQUEST_LINE.match(data[start:end]) and b"\r\nhost:" not in head:
            out += data[start : end + 2] + b"Host: h\r\n"
            added, pos = True, end + 2
        else:
            pos = start
        if head_end < 0:
            return out + data[pos:], added
        out += data[pos : head_end + 4]
        start = head_end + 4


def decode_llhttp_input(text):
    """The bytes llhttp's test runner feeds for an ```http block."""
    text = re.sub(r"\n\Z", "", text)
    text = re.sub(r"\\(\r\n|\r|\n)", "", text)
    text = re.sub(r"\r\n|\r|\n", "\r\n", text)
    text = text.replace("\\r", "\r").replace("\\n", "\n").replace("\\t", "\t")
    text = text.replace("\\f", "\f")
    text = re.sub(r"\\x([0-9a-fA-F]+)", lambda m: chr(int(m.group(1), 16)), text)
    text = re.sub(r"\\([0-7]{1,3})", lambda m: chr(int(m.group(1), 8)), text)
    if "${" in text:
        raise ValueError("inline JavaScript in a test input")
    return text.encode("utf-8") if any(ord(c) > 255 for c in text) else text.encode("latin-1")


def llhttp_vectors(tree):
    vectors = []
    for name in tree.list("test/request", ".md"):
        lines = tree.read(name).split("\n")
        heading, meta, i = None, None, 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("#"):
                heading, meta = line.lstrip("#").strip(), None
            elif line.startswith("<!-- meta="):
                meta = json.loads(line[len("<!-- meta=") : line.rindex("-->")])
            elif line.strip() == "```http":
                j = lines.index("```", i + 1)
                data = decode_llhttp_input("\n".join(lines[i + 1 : j]) + "\n")
                k = next(n for n in range(j + 1, len(lines)) if lines[n].strip() == "```log")
                m = lines.index("```", k + 1)
                log = lines[k + 1 : m]
                kind = (meta or {}).get("type", "request")
                if (meta or {}).get("skipBody"):
                    mode = "skip-body"
                elif kind == "request":
                    mode = "strict"
                else:
                    mode = kind[len("request-") :]
                data, added = add_host(data)
                vectors.append(
                    {
                        "file": name,
                        "name": heading,
                        "mode": mode,
                        "expect": "error" if any(ERROR.search(x) for x in log) else "ok",
                        "upgrade": any("error code=22 " in x for x in log),
                        "messages": sum(1 for x in log if x.endswith("message complete")),
                        "request": data.decode("latin-1"),
                        "host_added": added,
                    }
                )
                i = m
            i += 1
    return vectors


def desync_vectors(tree):
    vectors = []
    for name in tree.list("tests", ".yaml"):
        for case in yaml.safe_load(tree.read(name)) or []:
            version = str(case.get("version", ""))
            line = "%s %s%s" % (case["method"], case["uri"], " " + version if version else "")
            head = line.encode("utf-8") + b"\r\n"
            for h in case.get("headers") or []:
                value = "" if h.get("value") is None else str(h["value"])
                head += ("%s: %s\r\n" % (h["name"], value)).encode("utf-8")
            data, added = add_host(head + b"\r\n")
            vectors.append(
                {
                    "file": name,
                    "name": case["name"],
                    "tier": case["expected"]["tier"],
                    "reason": case["expected"].get("reason", ""),
                    "request": data.decode("latin-1"),
                    "host_added": added,
                }
            )
    return vectors


def write(path, repo, commit, licence, vectors):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {"source": {"repo": repo, "commit": commit, "licence": licence}, "vectors": vectors},
            f,
            indent=0,
            ensure_ascii=True,
        )
        f.write("\n")
    print("%s: %d vectors from %s@%s" % (path, len(vectors), repo, commit[:12]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llhttp", required=True, help="nodejs/llhttp checkout or git directory")
    ap.add_argument(
        "--desync", required=True, help="aws/http-desync-guardian checkout or git directory"
    )
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "corpus")
    )
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ll, dg = Tree(args.llhttp), Tree(args.desync)
    write(
        os.path.join(args.out, "llhttp-requests.json"),
        "nodejs/llhttp",
        ll.commit(),
        "MIT",
        llhttp_vectors(ll),
    )
    write(
        os.path.join(args.out, "desync-guardian.json"),
        "aws/http-desync-guardian",
        dg.commit(),
        "Apache-2.0",
        desync_vectors(dg),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
