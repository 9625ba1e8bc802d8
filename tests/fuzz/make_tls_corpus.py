"""Write the seed corpus of fuzz_tls: real ClientHellos, made by Python's ssl module in memory.

    python tests/fuzz/make_tls_corpus.py [DIR]     # default tests/fuzz/corpus/tls

Each file is byte 0 (fuzz_tls's piece size: 0 all at once, 1 byte by byte, 7 in sevens) then
a client's first flight. A ClientHello carries only public values (random, key shares); no key
is written. The hellos vary what the server's configuration reacts to: TLS 1.3 and 1.2 only,
SNI names the fuzzer's certificates answer for (a.test, x.w.test) or not, ALPN with and without
a protocol in common, and a session ticket from an earlier handshake (made against a throwaway
server of this script, so the fuzzer's server cannot decrypt it: the ticket callback's
unknown-key path). Plus a plain HTTP request (not TLS at all).
"""

import os
import ssl
import subprocess
import sys
import tempfile


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def hello(sni=None, alpn=None, max_version=None, session=None, ctx=None):
    """A client's first flight; session (made with ctx) offers its ticket."""
    ctx = ctx or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni, session=session)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def ticket_session():
    """A TLS 1.2 session with a ticket from a throwaway in-memory server (its certificate made
    by the openssl command in a temporary directory, removed after)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="tls-ctx-corpus-") as tmp:
        pem = os.path.join(tmp, "throwaway.pem")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=throwaway",
                "-days",
                "1",
                "-keyout",
                pem,
                "-out",
                pem + ".crt",
            ],
            check=True,
            capture_output=True,
        )
        server_ctx.load_cert_chain(pem + ".crt", pem)
    client_ctx = client_context()
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
    return client_ctx, client.session


def main():
    out = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.path.join(os.path.dirname(__file__), "corpus", "tls")
    )
    os.makedirs(out, exist_ok=True)
    v12 = ssl.TLSVersion.TLSv1_2
    seeds = {
        "tls13-sni-alpn": (0, hello("a.test", ["h2", "http/1.1"])),
        "tls13-wildcard-dribble": (1, hello("x.w.test", ["http/1.1"])),
        "tls13-nosni-noalpn": (0, hello()),
        "tls13-alpn-none-in-common": (7, hello("default.test", ["spdy/3"])),
        "tls12-sni-alpn": (0, hello("a.test", ["http/1.1"], v12)),
        "tls12-unknown-name": (3, hello("nobody.test", None, v12)),
        "plain-http": (0, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    }
    ctx, session = ticket_session()
    seeds["tls12-foreign-ticket"] = (0, hello("a.test", None, None, session, ctx))
    for name, (piece, data) in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([piece]) + data)
    print("wrote %d seeds to %s" % (len(seeds), out))


if __name__ == "__main__":
    main()
