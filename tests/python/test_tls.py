"""HTTPS through the native API, with real clients: Python's ssl (TLS 1.2 and 1.3, ALPN, SNI,
resumption by ticket, client certificates), curl --cacert and openssl s_client; plain HTTP to
the TLS port; 1,000 concurrent TLS connections; large bodies both ways; WebSocket over TLS;
close_notify on a graceful stop; reload_tls() with a connection kept across it."""

import asyncio
import hashlib
import http.client
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
import wsraw
from tlscerts import PASSWORD, Certs, get, served_pem, tls_connect

from conftest import wait_until
from pymongoose_uring import App, Error, Response, Server

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("tls-python-certs"))


def describe(request):
    """The handler that answers what the request saw of its connection."""
    return {"scheme": request.scheme, "tls": request.tls}


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_request_sees_the_session(serve, certs, version):
    server = serve(describe, **certs.options())
    assert server.url.startswith("https://")
    with tls_connect(server.port, certs.context(version)) as s:
        status, headers, body = get(s)
        der = s.getpeercert(binary_form=True)
        cipher = s.cipher()
    assert status == 200
    seen = json.loads(body)
    assert seen["scheme"] == "https"
    tls = seen["tls"]
    name = "TLSv1.3" if version is TLS13 else "TLSv1.2"
    assert tls["version"] == name == cipher[1]
    assert tls["version_number"] == (0x0304 if version is TLS13 else 0x0303)
    assert tls["cipher"] == cipher[0]
    assert isinstance(tls["cipher_id"], int) and tls["cipher_id"] > 0
    assert tls["server_name"] == "localhost"
    assert tls["alpn"] == "http/1.1"
    assert tls["resumed"] is False
    assert tls["peer_subject"] is None and tls["peer_cert_chain"] == []
    assert tls["server_cert"] == ssl.DER_cert_to_PEM_cert(der) == served_pem(certs.server)
    assert (
        tls["ktls"] is False
    )  # this kernel has no TLS module; see test_ktls_where_the_kernel_has_it
    stats = server.stats()
    assert stats["tls_handshakes"] >= 1 and stats["tls_handshake_errors"] == 0


def test_plain_server_says_http(serve):
    server = serve(describe)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    c.request("GET", "/")
    assert json.loads(c.getresponse().read()) == {"scheme": "http", "tls": None}
    assert server.url.startswith("http://")
    with pytest.raises(Error):
        server.reload_tls()  # no TLS to reload: EINVAL


def test_no_alpn_is_served_and_a_foreign_alpn_is_refused(serve, certs):
    server = serve(describe, **certs.options())
    with tls_connect(server.port, certs.context(alpn=None)) as s:
        assert json.loads(get(s)[2])["tls"]["alpn"] is None
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(server.port, certs.context(alpn=("h2",))) as s:
            get(s)
    assert server.stats()["tls_handshake_errors"] >= 1


def test_http_client_and_request_tls_is_cached(serve, certs):
    def handler(request):
        return {"same": request.tls is request.tls, "scheme": request.scheme}

    server = serve(handler, **certs.options())
    c = http.client.HTTPSConnection("localhost", server.port, context=certs.context(), timeout=10)
    c.request("GET", "/")
    assert json.loads(c.getresponse().read()) == {"same": True, "scheme": "https"}


def test_request_tls_outlives_the_answer(serve, certs):
    kept = []

    def handler(request):
        kept.append(request)
        return "ok"

    server = serve(handler, **certs.options())
    with tls_connect(server.port, certs.context()) as s:
        assert get(s)[2] == b"ok"
    wait = time.monotonic() + 5
    while not kept and time.monotonic() < wait:
        time.sleep(0.01)
    assert kept[0].tls["server_name"] == "localhost" and kept[0].scheme == "https"


def test_curl_cacert(serve, certs):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl")
    server = serve(lambda request: {"scheme": request.scheme}, **certs.options())
    out = subprocess.run(
        [curl, "-sS", "--cacert", certs.ca_pem, "https://localhost:%d/" % server.port],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"scheme": "https"}


def s_client(port, *args, stdin=b"", timeout=30):
    """openssl s_client against 127.0.0.1:port: its stdout and stderr as text."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command")
    out = subprocess.run(
        [openssl, "s_client", "-connect", "127.0.0.1:%d" % port, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    return out.stdout.decode("latin-1") + out.stderr.decode("latin-1")


def test_openssl_s_client_alpn_and_sni(serve, certs):
    server = serve(describe, **certs.options(ssl_sni_certs=[(certs.other_pem, certs.other_key)]))
    out = s_client(
        server.port, "-alpn", "http/1.1", "-servername", "localhost", "-CAfile", certs.ca_pem
    )
    assert "ALPN protocol: http/1.1" in out, out
    assert "Verify return code: 0 (ok)" in out, out
    # The certificate served follows the name asked for.
    for name, cert in (
        ("other.example.test", certs.other),
        ("a.wild.example.test", certs.other),
        ("localhost", certs.server),
        ("unknown.example.test", certs.server),  # no match: ssl_certfile's
    ):
        out = s_client(server.port, "-servername", name)
        begin = out.index("-----BEGIN CERTIFICATE-----")
        end = out.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
        assert ssl.PEM_cert_to_DER_cert(out[begin:end] + "\n") == ssl.PEM_cert_to_DER_cert(
            served_pem(cert)
        ), name
    # Python's client: the name reaches request.tls, the certificate verifies for it.
    with tls_connect(server.port, certs.context(), server_hostname="other.example.test") as s:
        tls = json.loads(get(s)[2])["tls"]
    assert tls["server_name"] == "other.example.test"
    assert tls["server_cert"] == served_pem(certs.other)
    # Without SNI (an IP address as the name), ssl_certfile's.
    with tls_connect(server.port, certs.context(), server_hostname="127.0.0.1") as s:
        tls = json.loads(get(s)[2])["tls"]
    assert tls["server_name"] is None and tls["server_cert"] == served_pem(certs.server)


def test_openssl_s_client_tls12_and_tls13(serve, certs):
    server = serve(describe, **certs.options())
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        out = s_client(
            server.port,
            flag,
            "-ign_eof",
            "-servername",
            "localhost",
            "-CAfile",
            certs.ca_pem,
            stdin=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        assert "Protocol  : " + name in out or "Protocol: " + name in out, out
        assert '"scheme": "https"' in out or '"scheme":"https"' in out, out


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_resumption_with_a_ticket(serve, certs, version):
    server = serve(describe, **certs.options())
    ctx = certs.context(version)
    with tls_connect(server.port, ctx) as s:
        assert json.loads(get(s)[2])["tls"]["resumed"] is False
        session = s.session  # (TLS 1.3: the ticket came with the answer)
    assert session is not None
    with tls_connect(server.port, ctx, session=session) as s:
        assert s.session_reused
        assert json.loads(get(s)[2])["tls"]["resumed"] is True
    assert server.stats()["tls_resumed"] >= 1


def test_no_session_tickets(serve, certs):
    server = serve(describe, **certs.options(ssl_session_tickets=False))
    ctx = certs.context(TLS13)
    with tls_connect(server.port, ctx) as s:
        get(s)
        session = s.session
    with tls_connect(server.port, ctx, session=session) as s:
        assert not s.session_reused
        assert json.loads(get(s)[2])["tls"]["resumed"] is False


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_client_certificate_required(serve, certs, version):
    server = serve(describe, **certs.options(ssl_ca_certs=certs.ca_pem, ssl_cert_reqs=2))
    with tls_connect(server.port, certs.context(version, client="client")) as s:
        tls = json.loads(get(s)[2])["tls"]
    assert "CN=test client" in tls["peer_subject"]
    assert tls["peer_cert_chain"][0] == served_pem(certs.client)
    for client in (None, "stranger"):  # none, or one of another CA: refused
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with tls_connect(server.port, certs.context(version, client=client)) as s:
                get(s)  # (TLS 1.3: the refusal comes after the client's Finished)
    assert server.stats()["tls_handshake_errors"] >= 2


def test_client_certificate_optional(serve, certs):
    server = serve(describe, **certs.options(ssl_ca_certs=certs.ca_pem, ssl_cert_reqs=1))
    with tls_connect(server.port, certs.context()) as s:
        tls = json.loads(get(s)[2])["tls"]
    assert tls["peer_subject"] is None and tls["peer_cert_chain"] == []
    with tls_connect(server.port, certs.context(client="client")) as s:
        assert "CN=test client" in json.loads(get(s)[2])["tls"]["peer_subject"]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(server.port, certs.context(client="stranger")) as s:
            get(s)


def test_client_certificates_need_a_ca(certs):
    with pytest.raises(Error):
        Server(describe, port=0, **certs.options(ssl_cert_reqs=2)).start()


def test_encrypted_key(serve, certs):
    server = serve(
        describe,
        ssl_certfile=certs.server_pem,
        ssl_keyfile=certs.enc_key,
        ssl_keyfile_password=PASSWORD,
    )
    with tls_connect(server.port, certs.context()) as s:
        assert get(s)[0] == 200
    with pytest.raises(Error, match="enc.key"):
        Server(
            describe,
            port=0,
            ssl_certfile=certs.server_pem,
            ssl_keyfile=certs.enc_key,
            ssl_keyfile_password="wrong",
        ).start()


def test_plain_http_to_the_tls_port_gets_400(serve, certs):
    server = serve(describe, **certs.options())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in head.lower()
    assert body == b"The plain HTTP request was sent to HTTPS port\n"
    assert server.stats()["tls_plain_http"] == 1


def test_thousand_concurrent_tls_connections(serve, certs):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2400:
        pytest.skip("needs 2,400 file descriptors (hard limit %d)" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2400), hard))
    server = serve(lambda request: request.target, **certs.options())
    ctx = certs.context()
    n = 1000

    async def main():
        opened = asyncio.Event()
        count = [0]

        async def one(i):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=ctx, server_hostname="localhost"
            )
            count[0] += 1
            if count[0] == n:
                opened.set()
            await opened.wait()  # all n open at once before any asks
            writer.write(b"GET /%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            writer.close()
            return body

        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 120)

    bodies = asyncio.run(main())
    assert bodies == [b"/%d" % i for i in range(n)]
    assert server.stats()["tls_handshakes"] >= n


def test_large_upload_and_download(serve, certs):
    big = os.urandom(8 << 20)

    def handler(request):
        if request.method == "POST":
            return {"size": len(request.body), "sha256": hashlib.sha256(request.body).hexdigest()}
        return Response(big)

    server = serve(handler, max_body_bytes=16 << 20, **certs.options())
    c = http.client.HTTPSConnection("localhost", server.port, context=certs.context(), timeout=60)
    c.request("POST", "/", body=big)
    answer = json.loads(c.getresponse().read())
    assert answer == {"size": len(big), "sha256": hashlib.sha256(big).hexdigest()}
    c.request("GET", "/")  # the same connection
    assert c.getresponse().read() == big


def test_websocket_over_tls(serve, certs):
    app = App()

    @app.websocket("/echo")
    def echo(ws):
        conn = ws.accept()
        conn.on_message = lambda conn, data: conn.send(data)

    server = serve(app, **certs.options())
    # One thread reads and writes (wsraw.RawWS): see test_tls_adapters.py's twin.
    ws = wsraw.RawWS(server.port, "/echo", ssl_context=certs.context())
    try:
        assert ws.status == 101
        for opcode, message in (
            (wsraw.TEXT, "hello"),
            (wsraw.BINARY, b"\x00\x01" * 40000),
            (wsraw.TEXT, "é" * 1000),
        ):
            ws.send_frame(opcode, message)
            data = message.encode() if isinstance(message, str) else message
            assert ws.recv_frame() == (True, opcode, data)
    finally:
        ws.close()


def test_graceful_stop_sends_close_notify(certs):
    server = Server(describe, port=0, **certs.options()).start()
    try:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s = certs.context().wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        )
        assert get(s)[0] == 200
        stopper = threading.Thread(target=server.stop, kwargs={"timeout": 30})
        stopper.start()
        # A close_notify ends the stream cleanly (b""); an EOF without one raises.
        assert s.recv(100) == b""
        stopper.join()
        s.close()
    finally:
        server.stop(timeout=30)
    assert server.stats()["tls_close_notify"] >= 1


def test_connection_close_answer_sends_close_notify(serve, certs):
    server = serve(describe, **certs.options())
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with certs.context().wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=False
    ) as s:
        assert get(s, headers="Connection: close\r\n")[0] == 200
        assert s.recv(100) == b""


def test_reload_tls_serves_new_connections_and_keeps_old_ones(serve, certs, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs.server_pem, cert)
    shutil.copy(certs.server_key, key)
    server = serve(describe, ssl_certfile=str(cert), ssl_keyfile=str(key))
    ctx = certs.context()
    old = tls_connect(server.port, ctx, server_hostname="localhost")
    try:
        assert json.loads(get(old)[2])["tls"]["server_cert"] == served_pem(certs.server)
        fresh = certs.ca.issue_cert("localhost", "127.0.0.1")
        cert.write_bytes(b"".join(b.bytes() for b in fresh.cert_chain_pems))
        key.write_bytes(fresh.private_key_pem.bytes())
        server.reload_tls()
        with tls_connect(server.port, ctx) as s:
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(fresh)
            assert json.loads(get(s)[2])["tls"]["server_cert"] == served_pem(fresh)
        # The connection made before keeps its session and still works.
        assert json.loads(get(old)[2])["tls"]["server_cert"] == served_pem(certs.server)
        # A reload that fails changes nothing.
        key.write_bytes(b"not a key")
        with pytest.raises(Error):
            server.reload_tls()
        with tls_connect(server.port, ctx) as s:
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(fresh)
        assert get(old)[0] == 200
    finally:
        old.close()


def test_probe_reports_ktls():
    from pymongoose_uring import probe

    p = probe()
    assert isinstance(p["ktls"], bool) and p["ktls_message"]


def test_ktls_where_the_kernel_has_it(serve, certs):
    from pymongoose_uring import probe

    p = probe()
    if not p["ktls"]:
        pytest.skip("no kernel TLS here: " + p["ktls_message"])
    big = os.urandom(1 << 20)
    server = serve(
        lambda request: {"tls": request.tls} if request.path == "/" else big, **certs.options()
    )
    with tls_connect(server.port, certs.context(TLS12)) as s:
        assert json.loads(get(s)[2])["tls"]["ktls"] is True
        assert get(s, "/big")[2] == big
    assert server.stats()["tls_ktls"] >= 1


def test_sni_certs_take_a_password_and_a_key_in_the_certificate_file(serve, certs, tmp_path):
    both = tmp_path / "other-both.pem"  # key and chain in one file: keyfile None
    both.write_bytes(certs.other.private_key_and_cert_chain_pem.bytes())
    server = serve(
        describe,
        **certs.options(
            ssl_sni_certs=[
                (str(both), None),
                [certs.server_pem, certs.enc_key, PASSWORD],  # a list, a password
            ]
        ),
    )
    with tls_connect(server.port, certs.context(), server_hostname="other.example.test") as s:
        assert json.loads(get(s)[2])["tls"]["server_cert"] == served_pem(certs.other)
    with tls_connect(server.port, certs.context()) as s:
        assert json.loads(get(s)[2])["tls"]["server_cert"] == served_pem(certs.server)


@pytest.mark.parametrize(
    "bad",
    [[("only-one",)], [("a", "b", "c", "d")], ["a,b"], 5, [(1, "b")]],
)
def test_sni_certs_refuse_what_is_not_a_list_of_pairs(certs, bad):
    with pytest.raises(TypeError):
        Server(describe, port=0, **certs.options(ssl_sni_certs=bad)).start()


def test_sni_cert_that_does_not_load_fails_the_start(certs):
    with pytest.raises(Error, match="nonexistent"):
        Server(
            describe, port=0, **certs.options(ssl_sni_certs=[("/nonexistent.pem", "/x.key")])
        ).start()


def test_asgi_extension_alike_with_and_without_request_tls(serve, certs):
    """The ASGI extension made straight from the session equals the one made from
    request.tls (client certificate included)."""

    def handler(request):
        direct = request._asgi_tls()
        assert request.tls is not None  # built now: the next call goes through it
        return {"same": direct == request._asgi_tls(), "direct": direct}

    server = serve(handler, **certs.options(ssl_ca_certs=certs.ca_pem, ssl_cert_reqs=2))
    with tls_connect(server.port, certs.context(client="client")) as s:
        seen = json.loads(get(s)[2])
    assert seen["same"] is True
    assert seen["direct"]["client_cert_chain"][0] == served_pem(certs.client)
    assert "CN=test client" in seen["direct"]["client_cert_name"]


def test_connection_handler_sees_the_session(serve, certs):
    """Connection events over TLS: OPEN comes after the handshake, conn.tls describes it
    (request.connection is the same object); a raw TLS connection echoes plaintext."""
    from pymongoose_uring._native import _pmu

    opened = []

    def on_conn(conn, event, data):
        if event == _pmu.CONN_OPEN:
            opened.append(conn.tls)

    def handler(request):
        return {"conn": request.connection.tls}

    server = serve(handler, connection_handler=on_conn, **certs.options())
    with tls_connect(server.port, certs.context(), server_hostname="localhost") as s:
        seen = json.loads(get(s)[2])["conn"]
    assert seen["server_name"] == "localhost" and "peer_cert_chain" not in seen
    assert opened and opened[0]["version"] in ("TLSv1.2", "TLSv1.3")

    def echo(conn, event, data):
        if event == _pmu.CONN_DATA:
            conn.send(b"%s %s" % (conn.tls["version"].encode(), data))

    raw = serve(None, raw=True, connection_handler=echo, **certs.options())
    with tls_connect(raw.port, certs.context(alpn=None)) as s:
        s.sendall(b"ping")
        assert s.recv(100) == b"TLSv1.3 ping"


def test_certificate_per_connection(serve, certs):
    """ssl_cert_per_conn from Python: CONN_OPEN comes before the handshake (conn.tls None),
    conn.tls_use(TlsCerts) serves it, from another thread too; tls_decline refuses; a
    second answer, a wrong type, bad PEM and a server without the knob raise."""
    from pymongoose_uring._native import _pmu

    def pem(path):
        with open(path, "rb") as f:
            return f.read()

    mine = _pmu.TlsCerts(pem(certs.server_pem), pem(certs.server_key))
    other = _pmu.TlsCerts(pem(certs.other_pem), pem(certs.other_key))
    choice = {"certs": mine, "thread": False, "decline": False}
    seen = []

    def answer(conn):
        if choice["decline"]:
            conn.tls_decline()
            return
        conn.tls_use(choice["certs"])
        with pytest.raises(RuntimeError, match="answered already"):
            conn.tls_use(other)

    def on_conn(conn, event, data):
        if event == _pmu.CONN_OPEN:
            seen.append(conn.tls)
            if choice["thread"]:
                threading.Timer(0.1, answer, (conn,)).start()
            else:
                answer(conn)
        elif event == _pmu.CONN_CLOSE:
            seen.append(data)

    server = serve(
        lambda request: request.connection.tls["version"],
        connection_handler=on_conn,
        ssl_cert_per_conn=True,
    )
    with tls_connect(server.port, certs.context()) as s:
        assert get(s)[2].startswith(b"TLSv1.")
        assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(certs.server)
    assert seen[0] is None  # no session yet at OPEN
    choice.update(certs=other, thread=True)
    with tls_connect(server.port, certs.context(), server_hostname="other.example.test") as s:
        assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(certs.other)
    choice.update(decline=True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(server.port, certs.context()) as s:
            get(s)
    import errno

    wait_until(lambda: seen[-1] == errno.ECONNREFUSED, what="CLOSE with ECONNREFUSED")
    with pytest.raises(ValueError, match="does not match"):
        _pmu.TlsCerts(pem(certs.server_pem), pem(certs.other_key))
    with pytest.raises(ValueError, match="needs the CA"):
        _pmu.TlsCerts(pem(certs.server_pem), pem(certs.server_key), None, 2)

    plain_conns = []
    plain = serve(lambda request: "ok", connection_handler=lambda c, e, d: plain_conns.append(c))
    with socket.create_connection(("127.0.0.1", plain.port)):
        wait_until(lambda: plain_conns, what="OPEN")
        with pytest.raises(RuntimeError, match="ssl_cert_per_conn"):
            plain_conns[0].tls_use(mine)
        with pytest.raises(TypeError):
            plain_conns[0].tls_use(b"not a TlsCerts")
    with pytest.raises(Error, match="conn_handler"):
        Server(lambda request: "ok", port=0, ssl_cert_per_conn=True).start()


def test_session_dicts_leak_nothing(serve, certs):
    """request.tls, the ASGI extension and scheme, read on every request of a connection
    with a client certificate: the interpreter's live blocks stay flat and every Request
    is freed."""
    import gc
    import sys

    from pymongoose_uring._native import _pmu

    def handler(request):
        assert request.tls["peer_cert_chain"] and request._asgi_tls()["client_cert_chain"]
        return request.scheme

    server = serve(handler, **certs.options(ssl_ca_certs=certs.ca_pem, ssl_cert_reqs=2))
    with tls_connect(server.port, certs.context(client="client")) as s:
        for _ in range(200):
            get(s)
        gc.collect()
        before = sys.getallocatedblocks()
        for _ in range(2000):
            assert get(s)[2] == b"https"
        gc.collect()
        grown = sys.getallocatedblocks() - before
    assert grown < 0.05 * 2000, grown
    assert _pmu.requests_alive() == 0
