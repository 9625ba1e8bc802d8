"""HTTPS through the WSGI and ASGI adapters: Flask and raw WSGI see wsgi.url_scheme https and
HTTPS on; FastAPI and raw ASGI see scheme https (wss for WebSocket) and the ASGI tls extension,
with and without a client certificate; an explicit scheme still wins."""

import json
import ssl

import pytest
import wsraw
from tlscerts import Certs, get, served_pem, tls_connect

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("tls-python-certs"))


def raw_wsgi(environ, start_response):
    body = json.dumps(
        {"url_scheme": environ["wsgi.url_scheme"], "HTTPS": environ.get("HTTPS")}
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_raw_wsgi(serve_wsgi, certs, version):
    server = serve_wsgi(raw_wsgi, **certs.options())
    with tls_connect(server.port, certs.context(version)) as s:
        assert json.loads(get(s)[2]) == {"url_scheme": "https", "HTTPS": "on"}


def test_wsgi_plain_and_explicit_scheme(serve_wsgi, certs):
    plain = serve_wsgi(raw_wsgi)
    from conftest import request

    assert json.loads(request(plain)[2]) == {"url_scheme": "http", "HTTPS": None}
    fixed = serve_wsgi(raw_wsgi, url_scheme="http", **certs.options())
    with tls_connect(fixed.port, certs.context()) as s:
        assert json.loads(get(s)[2]) == {"url_scheme": "http", "HTTPS": "on"}


def test_flask(serve_wsgi, certs):
    flask = pytest.importorskip("flask")
    app = flask.Flask("tls")

    @app.route("/where")
    def where():
        return {
            "scheme": flask.request.scheme,
            "url": flask.request.url,
            "secure": flask.request.is_secure,
        }

    server = serve_wsgi(app, **certs.options())
    with tls_connect(server.port, certs.context()) as s:
        status, _, body = get(s, "/where")
    assert status == 200
    assert json.loads(body) == {
        "scheme": "https",
        "url": "https://localhost/where",
        "secure": True,
    }


async def raw_asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send(
            {
                "type": "websocket.send",
                "text": json.dumps(
                    {"scheme": scope["scheme"], "tls": scope["extensions"].get("tls")}
                ),
            }
        )
        await send({"type": "websocket.close", "code": 1000})
        return
    body = json.dumps({"scheme": scope["scheme"], "tls": scope["extensions"].get("tls")})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_raw_asgi_tls_extension(serve_asgi, certs, version):
    server = serve_asgi(raw_asgi, **certs.options())
    with tls_connect(server.port, certs.context(version)) as s:
        seen = json.loads(get(s)[2])
        cipher = s.cipher()
    assert seen["scheme"] == "https"
    tls = seen["tls"]
    assert set(tls) == {
        "server_cert",
        "client_cert_chain",
        "client_cert_name",
        "client_cert_error",
        "tls_version",
        "cipher_suite",
    }
    assert tls["server_cert"] == served_pem(certs.server)
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == (0x0304 if version is TLS13 else 0x0303)
    assert cipher[1] == ("TLSv1.3" if version is TLS13 else "TLSv1.2")
    assert isinstance(tls["cipher_suite"], int) and tls["cipher_suite"] > 0


def test_asgi_tls_extension_with_a_client_certificate(serve_asgi, certs):
    server = serve_asgi(raw_asgi, **certs.options(ssl_ca_certs=certs.ca_pem, ssl_cert_reqs=1))
    with tls_connect(server.port, certs.context(client="client")) as s:
        tls = json.loads(get(s)[2])["tls"]
    # The leaf first (Python's client sends its CA after it: OpenSSL builds the chain).
    assert tls["client_cert_chain"][0] == served_pem(certs.client)
    assert all(pem.startswith("-----BEGIN CERTIFICATE-----\n") for pem in tls["client_cert_chain"])
    assert "CN=test client" in tls["client_cert_name"]
    assert tls["client_cert_error"] is None
    with tls_connect(server.port, certs.context()) as s:  # optional: none given
        tls = json.loads(get(s)[2])["tls"]
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None


def test_asgi_plain_has_no_tls_extension(serve_asgi):
    from conftest import request

    server = serve_asgi(raw_asgi)
    assert json.loads(request(server)[2]) == {"scheme": "http", "tls": None}


def test_asgi_websocket_over_tls(serve_asgi, certs):
    """The handshake and the first message over TLS, on one thread (wsraw.RawWS: the
    `websockets` sync client failed here now and then under Python 3.9, with
    "[SSL] internal error" or a hang, as its reading thread raced its caller's writes)."""
    server = serve_asgi(raw_asgi, **certs.options())
    ws = wsraw.RawWS(server.port, "/ws", ssl_context=certs.context())
    try:
        assert ws.status == 101
        assert ws.headers["sec-websocket-accept"] == wsraw.accept_value(ws.key)
        fin, opcode, payload = ws.recv_frame()
    finally:
        ws.close()
    assert fin and opcode == wsraw.TEXT
    seen = json.loads(payload)
    assert seen["scheme"] == "wss"
    assert seen["tls"]["server_cert"] == served_pem(certs.server)


def test_fastapi(serve_asgi, certs):
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.get("/where")
    async def where(request: fastapi.Request):
        tls = request.scope["extensions"]["tls"]
        return {
            "url": str(request.url),
            "client_cert_name": tls["client_cert_name"],
            "tls_version": tls["tls_version"],
        }

    server = serve_asgi(app, **certs.options(ssl_ca_certs=certs.ca_pem, ssl_cert_reqs=2))
    with tls_connect(server.port, certs.context(TLS13, client="client")) as s:
        status, _, body = get(s, "/where")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["url"] == "https://localhost/where"
    assert "CN=test client" in seen["client_cert_name"]
    assert seen["tls_version"] == 0x0304


@pytest.mark.parametrize("options", [{}, {"scheme": "http"}, {"proxy_headers": False}])
def test_c_scope_over_tls_equals_python_scope(serve, certs, options):
    """Over TLS the scope made in C (binding/asgi.c through ASGIHandler._tls_scope) is the
    one ASGIHandler.scope() makes: the scheme (given, from the connection, from a trusted
    proxy) and the tls extension."""
    from pymongoose_uring import asgi

    assert asgi._asgi_scope is not None, "the compiled extension has no asgi_scope"
    handler = asgi.ASGIHandler(lambda scope, receive, send: None, **options)
    seen = []

    def native(req):
        python = handler.scope(req)
        c = handler._tls_scope(req)
        seen.append((python, c))
        return "ok"

    server = serve(native, **certs.options())
    with tls_connect(server.port, certs.context()) as s:
        get(s, "/p?q=1")
        get(s, "/p", headers="X-Forwarded-Proto: http\r\nX-Forwarded-For: 10.0.0.1\r\n")
    assert len(seen) == 2
    for python, c in seen:
        assert python == c
        assert c["extensions"]["tls"]["server_cert"] == served_pem(certs.server)
    expected = "http" if options.get("scheme") else "https"
    assert seen[0][1]["scheme"] == expected
    # The local host is a trusted proxy by default: its X-Forwarded-Proto wins.
    forwarded = "https" if options.get("proxy_headers") is False else "http"
    assert seen[1][1]["scheme"] == forwarded


def test_wsgi_streams_large_bodies_both_ways(serve_wsgi, certs):
    """8 MiB up through wsgi.input (streamed: above the adapters' 64 KiB threshold) and
    8 MiB down from a generator (chunked), over TLS."""
    import hashlib
    import http.client
    import os

    big = os.urandom(8 << 20)

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            digest, size = hashlib.sha256(), 0
            while True:
                chunk = environ["wsgi.input"].read(65536)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"%d %s" % (size, digest.hexdigest().encode())]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (big[i : i + 100000] for i in range(0, len(big), 100000))

    server = serve_wsgi(app, **certs.options())
    c = http.client.HTTPSConnection("localhost", server.port, context=certs.context(), timeout=60)
    c.request("POST", "/", body=big)
    assert c.getresponse().read() == b"%d %s" % (len(big), hashlib.sha256(big).hexdigest().encode())
    c.request("GET", "/")
    response = c.getresponse()
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.read() == big
