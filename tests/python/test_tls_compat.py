"""TLS in the pymongoose API: pymongoose's own test_tls.py and its HTTPS examples
(tests/examples/advanced/tls_https_server.py, tests/examples/http/http_server.py --tls) with
only the import changed, and the two models they use: listen("https://..."), then
listener.tls_init(TlsOpts(cert=PEM, key=PEM)); or Mongoose's conn.tls_init(opts) in
MG_EV_ACCEPT of each accepted connection (the engine's ssl_cert_per_conn)."""

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest
from pymongoose_checkout import free_port, pymongoose_source, wait_serving
from tlscerts import Certs, get, read_response, served_pem, tls_connect

from conftest import wait_until
from pymongoose_uring.compat import MG_EV_ACCEPT, MG_EV_HTTP_MSG, Manager, TlsOpts


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("tls-python-certs"))


def assert_refused(port, ctx):
    """A TLS client with ctx cannot get an answer from port (its handshake or its request
    fails)."""
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(port, ctx) as s:
            get(s)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def _run_pymongoose_tests(tmp_path, rel, *pytest_args):
    """pytest on pymongoose's test file `rel`, only the import changed; it must pass."""
    test = tmp_path / ("test_pymongoose_" + os.path.basename(rel))
    test.write_text(pymongoose_source(rel))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args, str(test)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_pymongoose_test_tls_unchanged(tmp_path):
    """pymongoose's tests/test_tls.py, only the import changed, passes."""
    _run_pymongoose_tests(tmp_path, "tests/test_tls.py")


def test_pymongoose_tls_example_tests_unchanged(tmp_path):
    """pymongoose's TLS tests of its examples (tests/examples/test_examples_advanced.py,
    the TLS ones but the one that opens the example's file by a path relative to its
    checkout), only the import changed, pass: among them a listener's tls_init with a
    made-up certificate, which Mongoose logs and does not raise on."""
    _run_pymongoose_tests(
        tmp_path, "tests/examples/test_examples_advanced.py", "-k", "tls and not can_import"
    )


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
        assert_refused(port, certs.context())  # no client certificate
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


def test_https_listener_bad_certificate_is_logged_as_mongoose_does(certs, caplog):
    """A certificate that cannot be used: no exception (Mongoose's mg_tls_init logs and
    returns; pymongoose's own example test calls it with a made-up certificate), an
    error logged, the listener TLS all the same with failing handshakes; a good one later
    serves; a bad one after that leaves the good one in place."""
    port = None
    with Manager(answer_ok) as mgr:
        listener = mgr.listen("https://127.0.0.1:0", http=True)
        port = listener.local_addr[1]
        with caplog.at_level("ERROR", logger="pymongoose_uring"):
            listener.tls_init(TlsOpts(cert=b"not a certificate", key=b"nor a key"))
        assert "cannot load the certificate chain" in caplog.text
        assert listener.is_tls
        mgr.poll(10)
        assert_refused(port, certs.context())
        # The listener still takes a good one...
        listener.tls_init(TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key)))
        with tls_connect(port, certs.context()) as s:
            assert get(s)[2] == b"ok"
        # ...and keeps it when given a bad one again.
        caplog.clear()
        with caplog.at_level("ERROR", logger="pymongoose_uring"):
            listener.tls_init(TlsOpts(cert=b"still not one", key=b"no"))
        assert "keeps its certificate" in caplog.text
        with tls_connect(port, certs.context()) as s:
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


def test_https_listener_without_any_tls_init_refuses_and_logs(certs, caplog):
    """No tls_init on the listener nor in MG_EV_ACCEPT: each connection is refused (its
    handshake fails, its MG_EV_CLOSE comes), a log line says why; the listener lets its
    port go at close."""
    from pymongoose_uring.compat import MG_EV_CLOSE

    events = []
    mgr = Manager(lambda conn, ev, data: events.append((conn.is_listening, ev)))
    listener = mgr.listen("https://127.0.0.1:0", http=True)
    port = listener.local_addr[1]
    assert port > 0 and not listener.is_tls
    with caplog.at_level("WARNING", logger="pymongoose_uring"):
        mgr.poll(10)
        assert listener.is_tls  # serving: each connection's MG_EV_ACCEPT gives the certificate
        for _ in range(2):
            assert_refused(port, certs.context())
        wait_until(lambda: events.count((False, MG_EV_CLOSE)) == 2, what="two MG_EV_CLOSE")
    assert caplog.text.count("an https:// connection was refused") == 1  # (once a minute)
    mgr.close()
    assert (True, MG_EV_CLOSE) in events
    import socket

    with socket.socket() as s:  # the port was let go: a server can listen on it again
        # (SO_REUSEADDR as servers set it: the refused connections, closed by the server
        # first, may leave TIME_WAIT entries on the port, which a plain bind refuses)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


@pytest.mark.parametrize("in_poll", [False, True], ids=["ring-threads", "handlers_in_poll"])
def test_tls_init_in_accept_only(certs, in_poll):
    """Mongoose's pattern: no listener.tls_init, conn.tls_init(opts) in MG_EV_ACCEPT of each
    accepted connection serves it (real ssl clients, keep-alive); the PEM is parsed once for
    all of them; conn.is_tls; with handlers_in_poll the certificate comes from the poll()
    thread while the handshake waits on the ring."""
    opts = TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key))
    seen = []

    def handler(conn, ev, data):
        if ev == MG_EV_ACCEPT:
            conn.tls_init(TlsOpts(cert=opts.cert, key=opts.key))  # a new TlsOpts each time
        elif ev == MG_EV_HTTP_MSG:
            seen.append(conn.is_tls)
            conn.reply(200, "secure" if conn.is_tls else "plain")

    with Manager(handler, handlers_in_poll=in_poll) as mgr:
        listener = mgr.listen("https://127.0.0.1:0", http=True)
        port = listener.local_addr[1]
        stop = threading.Event()
        poller = threading.Thread(target=lambda: [mgr.poll(20) for _ in iter(stop.is_set, True)])
        poller.start()
        try:
            wait_until(lambda: listener.is_tls, what="the listener serving")
            for _ in range(3):
                with tls_connect(port, certs.context()) as s:
                    for _ in range(2):  # keep-alive
                        status, _, body = get(s)
                        assert (status, body) == (200, b"secure")
                    assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(certs.server)
        finally:
            stop.set()
            poller.join()
        assert len(mgr._tls_handles) == 1  # parsed once, not per accept
    assert seen == [True] * 6


def test_tls_init_in_accept_serves_clients_that_came_before_the_first_poll(certs):
    """Clients that connected before the first poll() (waiting in the listener's backlog,
    their ClientHello sent) are accepted the moment the per-connection server starts: their
    MG_EV_ACCEPT's tls_init serves them too (a race once left such a handshake waiting
    forever: the OPEN on the ring thread read the listener as not per-connection yet)."""
    opts = TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key))

    def handler(conn, ev, data):
        if ev == MG_EV_ACCEPT:
            conn.tls_init(opts)
        elif ev == MG_EV_HTTP_MSG:
            conn.reply(200, "secure")

    for _ in range(5):
        with Manager(handler) as mgr:
            listener = mgr.listen("https://127.0.0.1:0", http=True)
            port = listener.local_addr[1]
            results = []

            def client(port, results):
                try:
                    with tls_connect(port, certs.context(), timeout=5) as s:
                        results.append(get(s)[2])
                except Exception as exc:  # the assertion below shows it
                    results.append(repr(exc))

            clients = [threading.Thread(target=client, args=(port, results)) for _ in range(3)]
            for t in clients:
                t.start()
            time.sleep(0.2)  # their ClientHellos wait in the backlog
            stop = threading.Event()
            poller = threading.Thread(
                target=lambda mgr, stop: [mgr.poll(20) for _ in iter(stop.is_set, True)],
                args=(mgr, stop),
            )
            poller.start()
            try:
                for t in clients:
                    t.join(8)
            finally:
                stop.set()
                poller.join()
            assert results == [b"secure"] * 3


def test_listener_tls_init_after_the_first_poll_takes_over(certs):
    """A listener serving per connection (no tls_init before the first poll) given a
    certificate of its own later: new connections get that one, with no tls_init in
    MG_EV_ACCEPT."""
    with Manager(answer_ok) as mgr:
        listener = mgr.listen("https://127.0.0.1:0", http=True)
        mgr.poll(10)
        port = listener.local_addr[1]
        assert_refused(port, certs.context())  # nothing gives a certificate
        listener.tls_init(TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key)))
        assert listener.is_tls
        with tls_connect(port, certs.context()) as s:
            assert get(s)[2] == b"ok"


def test_two_listeners_two_certificates(certs):
    """Two https:// listeners whose MG_EV_ACCEPT handlers give two TlsOpts: each serves
    its own certificate."""
    other = TlsOpts(cert=read(certs.other_pem), key=read(certs.other_key))
    mine = TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key))

    def by(opts):
        def handler(conn, ev, data):
            if ev == MG_EV_ACCEPT:
                conn.tls_init(opts)
            elif ev == MG_EV_HTTP_MSG:
                conn.reply(200, "ok")

        return handler

    with Manager() as mgr:
        a = mgr.listen("https://127.0.0.1:0", by(mine), http=True)
        b = mgr.listen("https://127.0.0.1:0", by(other), http=True)
        mgr.poll(10)
        with tls_connect(a.local_addr[1], certs.context()) as s:
            assert get(s)[2] == b"ok"
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(certs.server)
        with tls_connect(
            b.local_addr[1], certs.context(), server_hostname="other.example.test"
        ) as s:
            assert get(s)[2] == b"ok"
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(certs.other)


def test_tls_init_in_accept_with_a_ca_requires_client_certificates(certs):
    """TlsOpts(ca=...) in MG_EV_ACCEPT: a client certificate that CA signed is required;
    skip_verification asks for none."""
    ca_opts = TlsOpts(
        cert=read(certs.server_pem), key=read(certs.server_key), ca=read(certs.ca_pem)
    )

    def handler(conn, ev, data):
        if ev == MG_EV_ACCEPT:
            conn.tls_init(ca_opts)
        elif ev == MG_EV_HTTP_MSG:
            conn.reply(200, "ok")

    with Manager(handler) as mgr:
        listener = mgr.listen("https://127.0.0.1:0", http=True)
        mgr.poll(10)
        port = listener.local_addr[1]
        with tls_connect(port, certs.context(client="client")) as s:
            assert get(s)[2] == b"ok"
        assert_refused(port, certs.context())
        assert_refused(port, certs.context(client="stranger"))


def test_tls_init_in_accept_with_a_bad_certificate_refuses(certs, caplog):
    """A certificate that cannot be used: tls_init logs it (no exception, as Mongoose),
    the connection is refused, the server goes on."""
    calls = []

    def handler(conn, ev, data):
        if ev == MG_EV_ACCEPT:
            calls.append(1)
            if len(calls) == 1:
                conn.tls_init(TlsOpts(cert=b"not a certificate", key=b"nor a key"))
            else:
                conn.tls_init(TlsOpts(cert=read(certs.server_pem), key=read(certs.server_key)))
        elif ev == MG_EV_HTTP_MSG:
            conn.reply(200, "ok")

    with Manager(handler) as mgr:
        listener = mgr.listen("https://127.0.0.1:0", http=True)
        mgr.poll(10)
        port = listener.local_addr[1]
        with caplog.at_level("WARNING", logger="pymongoose_uring"):
            assert_refused(port, certs.context())
        assert "cannot read the certificate chain" in caplog.text
        with tls_connect(port, certs.context()) as s:
            assert get(s)[2] == b"ok"


def _pem_block(text, name):
    """The PEM text of the `name = b\"\"\"...\"\"\"` literal of an example."""
    return re.search(name + r' = b"""(.*?)"""', text, re.S)


def _start_http_server_example(tmp_path, cert=None, key=None):
    """pymongoose's tests/examples/http/http_server.py --tls, only the import changed (and,
    when given, its CERT_DATA and KEY_DATA literals replaced): (process, port) once it
    accepts connections."""
    text = pymongoose_source("tests/examples/http/http_server.py")
    if cert is not None:
        for name, pem in (("CERT_DATA", cert), ("KEY_DATA", key)):
            block = _pem_block(text, name)
            assert block, name
            text = text.replace(block.group(1), pem.decode())
    script = tmp_path / "http_server.py"
    script.write_text(text)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--tls"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    wait_serving(proc, port)
    return proc, port


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out, err


def test_pymongoose_http_server_example_tls(certs, tmp_path):
    """The HTTP server example with --tls, which calls conn.tls_init only in MG_EV_ACCEPT,
    serves HTTPS: /api/info and a static file over TLS. Its embedded certificate is not a
    valid one (its DER does not parse), so the literals are replaced by trustme's."""
    proc, port = _start_http_server_example(
        tmp_path, b"".join(b.bytes() for b in certs.server.cert_chain_pems), read(certs.server_key)
    )
    try:
        with tls_connect(port, certs.context()) as s:
            status, headers, body = get(s, "/api/info")
            assert status == 200 and json.loads(body)["server"] == "pymongoose"
            status, _, body = get(s, "/")  # serve_dir of the web root it made
            assert status == 200 and b"pymongoose HTTP Server" in body
    finally:
        out, _ = _stop(proc)
    assert "GET /api/info" in out


def test_pymongoose_http_server_example_tls_own_certificate_is_refused(tmp_path):
    """Unchanged but for the import, the example's embedded certificate cannot be parsed:
    each connection is refused with the reason logged, and the server runs on and stops
    cleanly."""
    proc, port = _start_http_server_example(tmp_path)
    try:
        for _ in range(2):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            assert_refused(port, ctx)
    finally:
        _, err = _stop(proc)
    assert "cannot read the certificate chain" in err and "the connection is refused" in err


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
