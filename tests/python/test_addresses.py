"""Each request sees its own connection's addresses: request.client and .server, the ASGI
scope's client and server, the WSGI environ's REMOTE_ADDR/REMOTE_PORT and SERVER_PORT.
The binding keeps the (host, port) tuples of recent addresses (1024 slots, one place per
address): many more clients than slots, from several source addresses, each must get
its own."""

import socket

import pytest

N = 1500  # connections: more than the cache's slots, so slots are reused


def sources():
    """127.0.0.1 and whichever of 127.0.0.2-4 this host lets a client bind."""
    found = ["127.0.0.1"]
    for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        s = socket.socket()
        try:
            s.bind((host, 0))
            found.append(host)
        except OSError:
            pass
        finally:
            s.close()
    return found


def ask(port, source, path="/"):
    """One request on a new connection from `source`: (answer body, our address, the
    server's address as we connected to it)."""
    sock = socket.socket()
    sock.settimeout(10)
    try:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n\r\n", 1)[1].decode(), sock.getsockname(), sock.getpeername()
    finally:
        sock.close()


def native_app(request):
    return "%s %d %s %d" % (request.client + request.server)


async def asgi_app(scope, receive, send):
    body = ("%s %d %s %d" % (tuple(scope["client"]) + tuple(scope["server"]))).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    fields = ("REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT")
    return [" ".join(str(environ[k]) for k in fields).encode()]


@pytest.mark.parametrize("kind", ["native", "asgi", "wsgi"])
def test_each_request_gets_its_connections_addresses(kind, serve, serve_asgi, serve_wsgi):
    if kind == "native":
        server = serve(native_app)
    elif kind == "asgi":
        server = serve_asgi(asgi_app, lifespan="off")
    else:
        server = serve_wsgi(wsgi_app)
    hosts = sources()
    for i in range(N):
        body, (host, port), (shost, sport) = ask(server.port, hosts[i % len(hosts)])
        assert body == "%s %d %s %d" % (host, port, shost, sport), (i, body)
