"""HTTPS from the command line: the --ssl-* options end to end (uvicorn's names, granian's,
ours), their checks before anything starts, and SIGUSR2 (every worker reads its certificates
again, in place: new connections get the new one while an old connection keeps working)."""

import json
import re
import shutil
import signal
import ssl

import pytest
from test_cli import Lines
from tlscerts import PASSWORD, Certs, get, served_pem, tls_connect

import pymongoose_uring
from conftest import run_cli
from pymongoose_uring.cli.config import parse

APP = """
import json

def app(request):
    return {"scheme": request.scheme, "sni": request.tls["server_name"],
            "subject": request.tls["peer_subject"], "cipher": request.tls["cipher"]}

def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"url_scheme": environ["wsgi.url_scheme"],
                        "HTTPS": environ.get("HTTPS")}).encode()]
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("tls-python-certs"))


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "tlsapp.py").write_text(APP)
    return tmp_path


def https_port(lines, text="serving on https://"):
    line = lines.wait(text)[0]
    return int(re.search(r"https://[^ ]*:(\d+)", line).group(1))


def stop(proc, lines):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = lines.rest()
    assert proc.returncode == 0, err
    return err


def test_native_app_over_https(app_dir, certs):
    proc = run_cli(
        app_dir,
        "tlsapp:app",
        "--port",
        "0",
        "--ssl-certificate",  # granian's name
        certs.server_pem,
        "--ssl-keyfile",
        certs.enc_key,
        "--ssl-keyfile-password",
        PASSWORD,
        "--ssl-sni-cert",
        "%s,%s" % (certs.other_pem, certs.other_key),
        "--ssl-ciphersuites",
        "TLS_CHACHA20_POLY1305_SHA256",
        "--ssl-handshake-timeout",
        "5",
    )
    lines = Lines(proc)
    try:
        port = https_port(lines)
        with tls_connect(port, certs.context(ssl.TLSVersion.TLSv1_3)) as s:
            seen = json.loads(get(s)[2])
        assert seen == {
            "scheme": "https",
            "sni": "localhost",
            "subject": None,
            "cipher": "TLS_CHACHA20_POLY1305_SHA256",
        }
        with tls_connect(port, certs.context(), server_hostname="other.example.test") as s:
            assert json.loads(get(s)[2])["sni"] == "other.example.test"
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(certs.other)
    finally:
        stop(proc, lines)


def test_wsgi_app_with_client_certificates(app_dir, certs):
    proc = run_cli(
        app_dir,
        "tlsapp:wsgi",
        "--port",
        "0",
        "--ssl-certfile",
        certs.server_pem,
        "--ssl-keyfile",
        certs.server_key,
        "--ssl-ca-certs",
        certs.ca_pem,
        "--ssl-cert-reqs",
        "2",
        "--ssl-version",
        "5",
        "--no-ssl-session-tickets",
    )
    lines = Lines(proc)
    try:
        port = https_port(lines)
        with tls_connect(port, certs.context(client="client")) as s:
            assert json.loads(get(s)[2]) == {"url_scheme": "https", "HTTPS": "on"}
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with tls_connect(port, certs.context()) as s:
                get(s)
    finally:
        stop(proc, lines)


DEFAULTS = pymongoose_uring.config_defaults()


@pytest.mark.no_uring_ok
def test_options_set_the_knobs(certs, tmp_path):
    config = parse(
        [
            "--hello",
            "--ssl-certfile",
            certs.server_pem,
            "--ssl-keyfile",
            certs.server_key,
            "--ssl-ca-certs",
            certs.ca_pem,
            "--ssl-cert-reqs",
            "1",
            "--ssl-version",
            "5",
            "--ssl-ciphers",
            "ECDHE+AESGCM",
            "--ssl-alpn",
            "http/1.1",
            "--ssl-handshake-timeout",
            "2.5",
            "--no-ssl-session-tickets",
            "--no-ssl-ktls",
            "--ssl-max-handshakes",
            "64",
            "--ssl-sni-cert",
            "%s,%s,pw" % (certs.other_pem, certs.other_key),
        ],
        DEFAULTS,
    )
    engine = config.engine
    assert engine["ssl_certfile"] == certs.server_pem and engine["ssl_keyfile"] == certs.server_key
    assert engine["ssl_ca_certs"] == certs.ca_pem and engine["ssl_cert_reqs"] == 1
    assert engine["ssl_min_version"] == "TLSv1.2" and engine["ssl_ciphers"] == "ECDHE+AESGCM"
    assert engine["ssl_alpn"] == "http/1.1" and engine["ssl_handshake_timeout_ms"] == 2500
    assert engine["ssl_session_tickets"] == 0 and engine["ssl_ktls"] == 0
    assert engine["ssl_max_handshakes"] == 64
    assert config.ssl_sni_certs == [(certs.other_pem, certs.other_key, "pw")]


@pytest.mark.no_uring_ok
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ssl-keyfile", "KEY"], "give --ssl-certfile too"),
        (["--ssl-certfile", "/nonexistent/cert.pem"], "no such file"),
        (["--ssl-certfile", "CERT", "--ssl-ocsp-file", "/nonexistent/ocsp.der"], "no such file"),
        (["--ssl-certfile", "CERT", "--ssl-cert-reqs", "2"], "needs --ssl-ca-certs"),
        (["--ssl-certfile", "CERT", "--ssl-version", "3"], "TLS 1.2 is the oldest"),
        (["--ssl-certfile", "CERT", "--ssl-min-version", "TLSv1.1"], "invalid choice"),
        (["--ssl-certfile", "CERT", "--ssl-sni-cert", "only-one-file"], "CERTFILE,KEYFILE"),
        (
            [
                "--ssl-certfile",
                "CERT",
                "--ssl-handshake-timeout",
                "1",
                "--ssl-handshake-timeout-ms",
                "5",
            ],
            "disagree",
        ),
        (
            ["--ssl-certfile", "CERT", "--ssl-version", "5", "--ssl-min-version", "TLSv1.3"],
            "disagree",
        ),
    ],
)
def test_option_errors_exit_2_before_anything_starts(certs, capsys, argv, message):
    argv = [a.replace("CERT", certs.server_pem).replace("KEY", certs.server_key) for a in argv]
    with pytest.raises(SystemExit) as info:
        parse(["--hello", *argv], DEFAULTS)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def swap_certificate(certs, cert, key):
    """A new certificate for localhost in the files cert and key; returns it."""
    fresh = certs.ca.issue_cert("localhost", "127.0.0.1")
    cert.write_bytes(b"".join(b.bytes() for b in fresh.cert_chain_pems))
    key.write_bytes(fresh.private_key_pem.bytes())
    return fresh


@pytest.mark.parametrize(
    "workers, sig",
    [(1, signal.SIGUSR2), (2, signal.SIGUSR2), (1, signal.SIGHUP)],
    ids=["one-SIGUSR2", "two-SIGUSR2", "one-SIGHUP"],
)
def test_sigusr2_reloads_certificates_in_place(app_dir, certs, workers, sig):
    """SIGUSR2 (and SIGHUP for a single process, which has no workers to replace)."""
    cert, key = app_dir / "live.pem", app_dir / "live.key"
    shutil.copy(certs.server_pem, cert)
    shutil.copy(certs.server_key, key)
    proc = run_cli(
        app_dir,
        "tlsapp:app",
        "--port",
        "0",
        "--workers",
        str(workers),
        "--ssl-certfile",
        "live.pem",  # relative: read again from where it was given
        "--ssl-keyfile",
        "live.key",
    )
    lines = Lines(proc)
    ctx = certs.context()
    try:
        if workers > 1:
            port = https_port(lines, "supervising 2 workers on https://")
            lines.wait("serving on", 2)
        else:
            port = https_port(lines)
        olds = [tls_connect(port, ctx) for _ in range(4)]
        for s in olds:
            assert get(s)[0] == 200
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(certs.server)
        fresh = swap_certificate(certs, cert, key)
        proc.send_signal(sig)
        lines.wait("TLS certificates reloaded", workers)
        for _ in range(6):  # new connections (spread over the workers) get the new one
            with tls_connect(port, ctx) as s:
                assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(fresh)
                assert get(s)[0] == 200
        for s in olds:  # and the old ones still work, nothing was closed
            assert get(s)[0] == 200
            s.close()
        # A bad file: said, and the certificate in use stays.
        key.write_bytes(b"garbage")
        proc.send_signal(sig)
        lines.wait("reloading the TLS certificates failed", workers)
        with tls_connect(port, ctx) as s:
            assert ssl.DER_cert_to_PEM_cert(s.getpeercert(True)) == served_pem(fresh)
    finally:
        stop(proc, lines)
