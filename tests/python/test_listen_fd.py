"""Server(listen_fd=...): serving a listening socket made elsewhere (a
supervisor, systemd), which outlives the server with its waiting connections."""

import os
import socket
import tempfile

import pytest

from conftest import RawClient
from pymongoose_uring import Server


def get(port_or_path, path="/"):
    if isinstance(port_or_path, str):
        c = RawClient(0, family=socket.AF_UNIX, address=port_or_path)
    else:
        c = RawClient(port_or_path)
    c.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    status, _, body = c.read_response()
    c.close()
    return status, body


def test_tcp_socket_given_by_fd():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    try:
        server = Server(
            lambda r: "%s %s" % (r.path, r.server[1]), listen_fd=sock.fileno(), threads=2
        )
        assert server.port == port and server.url == "http://127.0.0.1:%d" % port
        with server:
            assert server.port == port
            for _ in range(10):
                assert get(port, "/a") == (200, b"/a %d" % port)
        # Stopped: the socket still listens; a client that connects now waits in
        # its queue and the next server answers it.
        waiting = RawClient(port)
        waiting.send(b"GET /waited HTTP/1.1\r\nHost: x\r\n\r\n")
        with Server(lambda r: r.path, listen_fd=sock.fileno()):
            status, _, body = waiting.read_response()
            assert (status, body) == (200, b"/waited")
            waiting.close()
    finally:
        sock.close()


def test_unix_socket_given_by_fd():
    path = os.path.join(tempfile.mkdtemp(), "given.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(16)
    try:
        server = Server(lambda r: repr(r.server), listen_fd=sock.fileno())
        assert server.unix_path == path and server.url == "unix:" + path
        with server:
            assert get(path) == (200, repr(path).encode())
        assert os.path.exists(path)  # not the server's to remove
    finally:
        sock.close()
        os.unlink(path)


def test_listen_fd_must_be_a_listening_socket():
    from pymongoose_uring import Error

    sock = socket.socket()
    try:
        with pytest.raises(Error, match="not a listening"):
            Server(lambda r: "x", listen_fd=sock.fileno()).start()
    finally:
        sock.close()
    with pytest.raises(ValueError, match="listen_fd 9999"):
        Server(lambda r: "x", listen_fd=9999)
