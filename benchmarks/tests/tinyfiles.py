"""A stand-in file server for the runner's tests: python tinyfiles.py PORT [MODE]

Serves GET /files/NAME from $BENCH_FILES_ROOT/files (HTTP/1.1, keep-alive, threads) and GET /
with the hello JSON (without $BENCH_FILES_ROOT, a run with no file workload, the hello alone). MODE changes one thing, so that a test can see the runner catch it:
  right     the files as they are (default)
  no-hello  no GET / (404), as a static file server alone
  x         every file answered with as many bytes of b"x" (right length, wrong bytes)
  missing   every file answered 404
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.environ.get("BENCH_FILES_ROOT", "")
MODE = sys.argv[2] if len(sys.argv) > 2 else "right"
HELLO = b'{"message":"Hello, World!"}'


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/" and MODE != "no-hello":
            return self.answer(200, HELLO, "application/json")
        name = self.path[len("/files/") :] if self.path.startswith("/files/") else ""
        path = os.path.join(ROOT, "files", name)
        if not name or "/" in name or not os.path.isfile(path) or MODE == "missing":
            return self.answer(404, b"not found\n", "text/plain")
        with open(path, "rb") as f:
            body = f.read()
        if MODE == "x":
            body = b"x" * len(body)
        self.answer(200, body, "application/octet-stream")


if __name__ == "__main__":
    print("BENCH_NOTE serving %s in mode %s" % (ROOT, MODE), flush=True)  # the runner's notes
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
