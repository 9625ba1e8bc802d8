"""TLS in the pymongoose API: pymongoose's own test_tls.py and its HTTPS example
(tests/examples/advanced/tls_https_server.py) with only the import changed, and the model
they use: listen("https://..."), then listener.tls_init(TlsOpts(cert=PEM, key=PEM))."""

import json
import os
import signal
import ssl
import subprocess
import sys
import time

import pytest
from pymongoose_checkout import free_port, pymongoose_source
from tlscerts import Certs, get, read_response, served_pem, tls_connect

from pymongoose_uring.compat import MG_EV_ACCEPT, MG_EV_HTTP_MSG, Manager, TlsOpts


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("tls-python-certs"))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_pymongoose_test_tls_unchanged(tmp_path):
    """pymongoose's tests/test_tls.py, only the import changed, passes."""
    test = tmp_path / "test_pymongoose_tls.py"
    test.write_text(pymongoose_source("tests/test_tls.py"))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_pymongoose_https_example_unchanged(certs, tmp_path):
    """The HTTPS example, only the import changed, serves over TLS: conn.is_tls is True."""
    script = tmp_path / "tls_https_server.py"
    script.write_text(pymongoose_source("tests/examples/advanced/tls_https_server.py"))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "-l",
            "https://127.0.0.1:%d" % port,
            "--cert",
            certs.server_pem,
            "--key",
            certs.server_key,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                s = tls_connect(port, certs.context())
                break
            except (ConnectionRefusedError, ssl.SSLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with s:
            status, _, body = get(s, "/api/status")
            assert status == 200
            assert json.loads(body)["tls"] is True
        with tls_connect(port, certs.context()) as s:  # (the example drains: one per connection)
            s.sendall(
                b"POST /api/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
            )
            assert read_response(s)[2] == b"hello"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Server stopped cleanly" in out and "HTTPS request: GET /api/status" in out


def test_listener_tls_init_with_a_ca_and_accept_tls_init(certs):
    """tls_init on the listener serves HTTPS (with ca: a client certificate is required);
    tls_init again on each accepted connection (Mongoose's MG_EV_ACCEPT habit) is fine;
    is_tls is True on both."""
    seen = []
    opts = TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key), ca=read(certs.ca_pem))

    def handler(conn, ev, data):
        if ev == MG_EV_ACCEPT:
            conn.tls_init(opts)
        elif ev == MG_EV_HTTP_MSG:
            seen.append(conn.is_tls)
            conn.reply(200, "secure" if conn.is_tls else "plain")

    with Manager(handler) as mgr:
        listener = mgr.listen("https://127.0.0.1:0", http=True)
        port = listener.local_addr[1]
        assert not listener.is_tls  # no certificate yet
        listener.tls_init(opts)
        assert listener.is_tls
        with tls_connect(port, certs.context(client="client")) as s:
            status, _, body = get(s)
            assert (status, body) == (200, b"secure")
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(certs.server)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with tls_connect(port, certs.context()) as s:  # no client certificate
                get(s)
        # skip_verification: no client certificate asked for; a new certificate for new
        # connections.
        fresh = certs.ca.issue_cert("localhost", "127.0.0.1")
        listener.tls_init(
            TlsOpts(
                cert=b"".join(b.bytes() for b in fresh.cert_chain_pems),
                key=fresh.private_key_pem.bytes(),
                ca=read(certs.ca_pem),
                skip_verification=True,
            )
        )
        with tls_connect(port, certs.context()) as s:
            assert get(s)[2] == b"secure"
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(fresh)
    assert seen and all(seen)


def test_plain_listener_is_not_tls_and_tls_init_changes_nothing(certs):
    from conftest import request

    def handler(conn, ev, data):
        if ev == MG_EV_HTTP_MSG:
            conn.reply(200, "tls" if conn.is_tls else "plain")

    with Manager(handler) as mgr:
        listener = mgr.listen("http://127.0.0.1:0", http=True)
        listener.tls_init(TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key)))
        listener.tls_free()

        class At:
            port = listener.local_addr[1]

        assert request(At)[2] == b"plain"
        assert not listener.is_tls


def answer_ok(conn, ev, data):
    if ev == MG_EV_HTTP_MSG:
        conn.reply(200, "ok")


def test_https_listener_bad_certificate_raises(certs):
    with Manager(answer_ok) as mgr:
        listener = mgr.listen("https://127.0.0.1:0", http=True)
        with pytest.raises(RuntimeError):
            listener.tls_init(TlsOpts(cert=b"not a certificate", key=b"nor a key"))
        # The listener still takes a good one.
        listener.tls_init(TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key)))
        with tls_connect(listener.local_addr[1], certs.context()) as s:
            assert get(s)[2] == b"ok"


def test_no_key_file_on_disk(certs, tmp_path):
    """The PEM texts of TlsOpts reach the engine through memory files: the private key is
    never written to a file system."""
    with Manager(answer_ok) as mgr:
        listener = mgr.listen("https://127.0.0.1:0", http=True)
        listener.tls_init(TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key)))
        fds = os.listdir("/proc/self/fd")
        targets = []
        for fd in fds:
            try:
                targets.append(os.readlink("/proc/self/fd/" + fd))
            except OSError:
                pass
        assert any(t.startswith("/memfd:pymongoose_uring-tls-key") for t in targets), targets


def test_https_listener_without_tls_init_warns_and_closes(caplog):
    from pymongoose_uring.compat import MG_EV_CLOSE

    events = []
    mgr = Manager(
        lambda conn, ev, data: events.append(ev) if conn.is_listening or ev == MG_EV_CLOSE else None
    )
    listener = mgr.listen("https://127.0.0.1:0", http=True)
    port = listener.local_addr[1]
    assert port > 0 and not listener.is_tls
    with caplog.at_level("WARNING", logger="pymongoose_uring"):
        mgr.poll(10)
    assert "serves nothing until listener.tls_init" in caplog.text
    mgr.close()
    assert MG_EV_CLOSE in events
    import socket

    with socket.socket() as s:  # the port was let go
        s.bind(("127.0.0.1", port))


def test_tls_tcp_listener(certs):
    """tls:// without http=True: a TCP server over TLS, MG_EV_READ gets the plaintext and
    send() is encrypted."""
    from pymongoose_uring.compat import MG_EV_READ

    def handler(conn, ev, data):
        if ev == MG_EV_READ:
            conn.send(b"%s:%s" % (b"tls" if conn.is_tls else b"plain", conn.recv_data()))

    with Manager(handler) as mgr:
        listener = mgr.listen("tls://127.0.0.1:0")
        listener.tls_init(TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key)))
        with tls_connect(listener.local_addr[1], certs.context(alpn=None)) as s:
            s.sendall(b"hello")
            assert s.recv(100) == b"tls:hello"
