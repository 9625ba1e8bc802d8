"""Behind a reverse proxy: the client address and scheme from X-Forwarded-For
and X-Forwarded-Proto, believed only from trusted proxies (WSGI and ASGI)."""

import json
import logging
import os
import socket
import tempfile

import pytest

from conftest import RawClient, request
from pymongoose_uring.__main__ import main as cli_main
from pymongoose_uring._adapter import ProxyHeaders
from pymongoose_uring.asgi import ASGIServer
from pymongoose_uring.wsgi import WSGIServer

# ---- the rules ---------------------------------------------------------------


@pytest.mark.no_uring_ok
def test_default_trusts_the_local_host_only(monkeypatch):
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    proxies = ProxyHeaders()
    assert proxies.trusts(("127.0.0.1", 5000)) and proxies.trusts(("::1", 5000))
    assert not proxies.trusts(("10.0.0.1", 5000))
    assert not proxies.trusts(None)  # a Unix socket peer


@pytest.mark.no_uring_ok
def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8, unix:")
    proxies = ProxyHeaders()
    assert proxies.trusts(("10.9.8.7", 1)) and proxies.trusts(None)
    assert not proxies.trusts(("127.0.0.1", 1))
    assert ProxyHeaders("192.0.2.1").trusts(("192.0.2.1", 1))  # an explicit list wins


@pytest.mark.no_uring_ok
def test_forms_of_the_trusted_list():
    assert ProxyHeaders("*").trusts(("198.51.100.1", 1)) and ProxyHeaders("*").trusts(None)
    assert ProxyHeaders(["192.0.2.1", "2001:db8::/32"]).trusts(("2001:db8::5", 1))
    assert ProxyHeaders("0:0::1").trusts(("::1", 1))  # addresses compared normalised
    assert not ProxyHeaders("").trusts(("127.0.0.1", 1))
    for bad in ("localhost", "10.0.0.0/33", "1.2.3"):
        with pytest.raises(ValueError, match="forwarded_allow_ips"):
            ProxyHeaders(bad)


@pytest.mark.no_uring_ok
def test_client_is_the_rightmost_untrusted_address():
    proxies = ProxyHeaders("127.0.0.1,10.0.0.0/8")
    peer = ("127.0.0.1", 4000)
    assert proxies.client("203.0.113.7", peer) == ("203.0.113.7", 0)
    # A client may send its own X-Forwarded-For: only what trusted hops added counts.
    assert proxies.client("1.1.1.1, 203.0.113.7, 10.1.2.3", peer) == ("203.0.113.7", 0)
    assert proxies.client("10.1.1.1,10.2.2.2", peer) == ("10.1.1.1", 0)  # all trusted
    assert proxies.client(" , ", peer) == peer
    assert proxies.scheme("https", "http") == "https"
    assert proxies.scheme("HTTPS", "http") == "https"
    assert proxies.scheme("http, https", "http") == "https"  # the nearest proxy's
    assert proxies.scheme("gopher", "http") == "http"


# ---- through the servers ---------------------------------------------------


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"client": scope["client"], "scheme": scope["scheme"]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    body = json.dumps(
        {
            "client": [environ["REMOTE_ADDR"], int(environ.get("REMOTE_PORT") or 0)],
            "scheme": environ["wsgi.url_scheme"],
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


SERVERS = {"asgi": (ASGIServer, asgi_app), "wsgi": (WSGIServer, wsgi_app)}
FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.fixture(params=sorted(SERVERS))
def serve_app(request):
    kind, servers = request.param, []

    def start(**options):
        cls, app = SERVERS[kind]
        options.setdefault("port", 0)
        server = cls(app, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=30)


def seen(server, headers=None):
    status, _, body, _ = request(server, headers=headers)
    assert status == 200
    return json.loads(body)


def test_forwarded_headers_from_the_local_proxy(serve_app, monkeypatch):
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    server = serve_app()
    assert seen(server, FORWARDED) == {"client": ["203.0.113.7", 0], "scheme": "https"}
    direct = seen(server)
    assert direct["client"][0] == "127.0.0.1" and direct["client"][1] > 0
    assert direct["scheme"] == "http"


def test_forwarded_headers_ignored_from_an_untrusted_peer(serve_app):
    server = serve_app(forwarded_allow_ips="192.0.2.1")
    got = seen(server, FORWARDED)
    assert got["client"][0] == "127.0.0.1" and got["scheme"] == "http"


def test_forwarded_headers_off(serve_app):
    server = serve_app(proxy_headers=False, forwarded_allow_ips="*")
    got = seen(server, FORWARDED)
    assert got["client"][0] == "127.0.0.1" and got["scheme"] == "http"


def test_forwarded_for_in_several_lines(serve_app):
    server = serve_app(forwarded_allow_ips="127.0.0.1,10.0.0.0/8")
    c = RawClient(server.port)
    c.send(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.9, 203.0.113.7\r\n"
        b"X-Forwarded-For: 10.0.0.2\r\n\r\n"
    )
    status, _, body = c.read_response()
    c.close()
    assert status == 200 and json.loads(body)["client"] == ["203.0.113.7", 0]


def test_proxy_on_a_unix_socket(serve_app):
    path = os.path.join(tempfile.mkdtemp(), "proxy.sock")
    serve_app(unix_path=path, forwarded_allow_ips="unix:")
    c = RawClient(0, family=socket.AF_UNIX, address=path)
    c.send(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\n\r\n"
    )
    status, _, body = c.read_response()
    c.close()
    assert status == 200
    assert json.loads(body) == {"client": ["203.0.113.7", 0], "scheme": "https"}


def test_an_empty_forwarded_for_from_a_unix_socket_proxy(serve_app):
    # The peer has no address and the header names none: the client stays unknown
    # (the WSGI adapter answered 500 here, indexing the None it got back).
    path = os.path.join(tempfile.mkdtemp(), "proxy.sock")
    serve_app(unix_path=path, forwarded_allow_ips="unix:")
    c = RawClient(0, family=socket.AF_UNIX, address=path)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: ,\r\n\r\n")
    status, _, body = c.read_response()
    c.close()
    assert status == 200
    assert json.loads(body)["client"] in (None, ["", 0])  # ASGI: None; WSGI: REMOTE_ADDR ""


def test_access_log_names_the_forwarded_client(caplog):
    for cls, app in SERVERS.values():
        server = cls(app, port=0, access_log=True, forwarded_allow_ips="127.0.0.1").start()
        try:
            with caplog.at_level(logging.INFO, logger="pymongoose_uring.access"):
                caplog.clear()
                seen(server, FORWARDED)
                for _ in range(200):
                    if caplog.records:
                        break
                    import time

                    time.sleep(0.01)
            lines = [r.getMessage() for r in caplog.records]
            assert lines and lines[0].startswith('203.0.113.7:0 - "GET / HTTP/1.1" 200'), lines
        finally:
            server.stop(timeout=30)


@pytest.mark.no_uring_ok
def test_cli_refuses_a_bad_trusted_list(capsys):
    with pytest.raises(SystemExit) as exit:
        cli_main(["--hello", "--forwarded-allow-ips", "not-an-address"])
    assert exit.value.code == 2
    assert "forwarded_allow_ips" in capsys.readouterr().err
