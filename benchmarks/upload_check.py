"""The same file upload through Flask and FastAPI on pymongoose_uring and on the peers.

    python3 benchmarks/upload_check.py                  # 1 MiB, every server it can run
    python3 benchmarks/upload_check.py --size 64M --servers pymongoose_uring_flask,gunicorn

A multipart/form-data POST of SIZE random bytes (field ``file``, plus a text field
``note``) to ``/upload`` of a Flask app (on our WSGIServer and on gunicorn) and a
FastAPI app taking an ``UploadFile`` (on our ASGIServer and on uvicorn). Each app
answers with the file's name, size and SHA-256 and the note, and this prints, per
server, the status and whether the SHA-256 matches what was sent. Every server runs
with its own defaults (no body limit given), as a user would start it. A server whose
library is missing is reported "unavailable"; the exit status is 1 if any server that
ran answered wrongly.

The apps are this module's ``flask_app`` and ``fastapi_app`` (the peers import them
as ``upload_check:flask_app``); tests/python/test_uploads.py uploads to the same apps.
"""

import argparse
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BOUNDARY = "----pmu-upload-check-7f3a"


def _file_answer(filename, data_sha, size, note):
    return {"filename": filename, "size": size, "sha256": data_sha, "note": note}


# What keeps an app from being built here (reported by main() as the server's "unavailable").
MISSING = {}

try:
    from flask import Flask, request as flask_request
except ImportError as e:
    flask_app = None
    MISSING["flask"] = "%s: pip install flask" % e
else:
    flask_app = Flask("upload_check")

    @flask_app.post("/upload")
    def flask_upload():
        f = flask_request.files["file"]
        digest = hashlib.sha256()
        size = 0
        while chunk := f.stream.read(1 << 16):
            digest.update(chunk)
            size += len(chunk)
        return _file_answer(f.filename, digest.hexdigest(), size, flask_request.form.get("note"))


try:
    try:  # python-multipart, which FastAPI's forms need (its module's new name, then the old)
        import python_multipart  # noqa: F401
    except ImportError:
        import multipart  # noqa: F401
    from fastapi import FastAPI, File, Form, UploadFile
except ImportError as e:
    fastapi_app = None
    MISSING["fastapi"] = "%s: pip install fastapi python-multipart" % e
else:
    fastapi_app = FastAPI()

    @fastapi_app.post("/upload")
    async def fastapi_upload(file: UploadFile = File(...), note: str = Form("")):
        digest = hashlib.sha256()
        size = 0
        while chunk := await file.read(1 << 16):
            digest.update(chunk)
            size += len(chunk)
        return _file_answer(file.filename, digest.hexdigest(), size, note)


def multipart_parts(data, filename="upload.bin", note="hello"):
    """The multipart/form-data body around `data`, as (head, data, tail) and its
    Content-Type: the body is head + data + tail (sent without joining them)."""
    head = (
        '--%s\r\nContent-Disposition: form-data; name="note"\r\n\r\n%s\r\n'
        '--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n" % (BOUNDARY, note, BOUNDARY, filename)
    ).encode()
    tail = ("\r\n--%s--\r\n" % BOUNDARY).encode()
    return (head, data, tail), "multipart/form-data; boundary=" + BOUNDARY


def upload(port, data, filename="upload.bin", note="hello", timeout=120):
    """POST `data` as a file to 127.0.0.1:port/upload -> (status, answer: dict or bytes)."""
    parts, ctype = multipart_parts(data, filename, note)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("POST", "/upload")
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(sum(len(p) for p in parts)))
        conn.endheaders()
        view = memoryview(data)
        conn.send(parts[0])
        for i in range(0, len(view), 1 << 20):
            conn.send(view[i : i + (1 << 20)])
        conn.send(parts[2])
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, body


def verdict(status, answer, data, filename="upload.bin"):
    """'ok' when the app saw exactly `data`, else what was wrong."""
    if status != 200:
        return "status %d" % status
    want = _file_answer(filename, hashlib.sha256(data).hexdigest(), len(data), "hello")
    if answer != want:
        return "wrong answer %r" % (answer,)
    return "ok"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _run_ours(kind, data):
    """(status, answer) from our WSGIServer (Flask) or ASGIServer (FastAPI), defaults."""
    if kind == "flask":
        from pymongoose_uring.wsgi import WSGIServer

        server = WSGIServer(flask_app, port=0)
    else:
        from pymongoose_uring.asgi import ASGIServer

        server = ASGIServer(fastapi_app, port=0)
    with server:
        return upload(server.port, data)


def _run_peer(argv, data):
    """(status, answer) from a peer started as `argv + [address options]`."""
    port = _free_port()
    args = [a.replace("{port}", str(port)) for a in argv]
    proc = subprocess.Popen(args, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not _wait_port(port, proc):
            err = proc.communicate(timeout=10)[1] if proc.poll() is not None else b""
            raise RuntimeError("did not start: " + err.decode(errors="replace")[-400:])
        return upload(port, data)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PY = sys.executable
SERVERS = {
    # name: (app kind, library to import, how to run it: None for ours, else argv)
    "pymongoose_uring_flask": ("flask", "pymongoose_uring", None),
    "pymongoose_uring_fastapi": ("fastapi", "pymongoose_uring", None),
    "gunicorn": (
        "flask",
        "gunicorn",
        [PY, "-m", "gunicorn", "-b", "127.0.0.1:{port}", "-w", "1", "-k", "gthread",
         "--log-level", "warning", "upload_check:flask_app"],
    ),
    "uvicorn": (
        "fastapi",
        "uvicorn",
        [PY, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}",
         "--log-level", "warning", "upload_check:fastapi_app"],
    ),
}  # fmt: skip


def _size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("IB")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=1 << 20, help="file size (1M, 64M...)")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    args = p.parse_args(argv)
    data = os.urandom(args.size)
    print("upload of %d bytes, sha256 %s" % (len(data), hashlib.sha256(data).hexdigest()[:16]))
    failed = False
    for name in args.servers.split(","):
        kind, library, how = SERVERS[name]
        app = flask_app if kind == "flask" else fastapi_app
        missing = MISSING.get(kind)
        try:
            __import__(library)
        except ImportError as e:
            missing = "%s: %s" % (
                e,
                "pip install . from the checkout" if how is None else "pip install " + library,
            )
        if app is None or missing:
            print("%-26s unavailable (%s)" % (name, missing))
            continue
        started = time.monotonic()
        try:
            status, answer = _run_ours(kind, data) if how is None else _run_peer(how, data)
        except Exception as e:  # noqa: BLE001 (reported per server)
            print("%-26s error: %s" % (name, e))
            failed = True
            continue
        result = verdict(status, answer, data)
        failed |= result != "ok"
        print(
            "%-26s status %d, sha256 %s (%.2f s)"
            % (name, status, "matches" if result == "ok" else "MISMATCH: " + result,
               time.monotonic() - started)
        )  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
