"""Certificates for the TLS tests, made by trustme at run time (nothing is committed): a CA,
server certificates for localhost and for other names (SNI), a client certificate, an
encrypted key, written as PEM files into a directory; and Python ssl clients that trust the
CA."""

import os
import socket
import ssl

import pytest

trustme = pytest.importorskip(
    "trustme", reason="trustme (tools/test-requirements.txt) makes the certificates"
)

PASSWORD = "s3cret pass"


class Certs:
    """PEM files in `where`: ca.pem; server.pem/server.key (localhost, 127.0.0.1, ::1);
    other.pem/other.key (other.example.test, *.wild.example.test); client.pem/client.key
    (CN=test client, signed by the CA); stranger.pem/stranger.key (a client certificate of
    another CA); enc.key (server.key encrypted with PASSWORD)."""

    def __init__(self, where):
        self.dir = str(where)
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("localhost", "127.0.0.1", "::1")
        self.other = self.ca.issue_cert("other.example.test", "*.wild.example.test")
        self.client = self.ca.issue_cert("client@example.test", common_name="test client")
        self.stranger = trustme.CA().issue_cert("x@example.test", common_name="stranger")
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.server_pem, self.server_key = self._leaf("server", self.server)
        self.other_pem, self.other_key = self._leaf("other", self.other)
        self.client_pem, self.client_key = self._leaf("client", self.client)
        self.stranger_pem, self.stranger_key = self._leaf("stranger", self.stranger)
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.server.private_key_pem.bytes(), None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
        self.enc_key = self._write("enc.key", encrypted)

    def _write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def _leaf(self, name, cert):
        pem = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        return self._write(name + ".pem", pem), self._write(
            name + ".key", cert.private_key_pem.bytes()
        )

    def options(self, **more):
        """Server keyword arguments for HTTPS with the localhost certificate."""
        return dict(ssl_certfile=self.server_pem, ssl_keyfile=self.server_key, **more)

    def context(self, version=None, alpn=("http/1.1",), client=None):
        """A client context trusting the CA: exactly `version` (ssl.TLSVersion) when given,
        ALPN `alpn` (None: no ALPN), a client certificate (name: "client"/"stranger")."""
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if client is not None:
            ctx.load_cert_chain(getattr(self, client + "_pem"), getattr(self, client + "_key"))
        return ctx


def served_pem(cert):
    """The PEM text of a trustme leaf, as ssl.DER_cert_to_PEM_cert writes it."""
    return ssl.DER_cert_to_PEM_cert(
        ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    )


def tls_connect(port, ctx, server_hostname="localhost", session=None, timeout=10):
    """A connected, handshaken TLS socket to 127.0.0.1:port."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise


def read_response(sock):
    """(status, headers dict lower-cased, body) of one HTTP/1.1 answer with a
    Content-Length read from sock."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head: %r" % data)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return status, headers, body


def get(sock, path="/", headers=""):
    """GET path on the TLS socket (keep-alive): (status, headers, body)."""
    sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (path, headers)).encode())
    return read_response(sock)
