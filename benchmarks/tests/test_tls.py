"""The HTTPS pieces of the runner (--suite tls): the run's certificates, nginx's TLS
configuration, the suite's servers and workloads, the wrk preload that keeps every
connection a full handshake, the HTTPS answer checks, the tables and the issue's targets.
No speed is asserted.

    python3 -m pytest benchmarks/tests/test_tls.py -q
"""

import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys

import pytest
from tinyserver import ThreadedServer

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(BENCH, "servers"))

import nginx_server  # noqa: E402
from test_files import free_base_port  # noqa: E402
from test_provision import quick_main  # noqa: E402

import run  # noqa: E402
from bench import (  # noqa: E402
    BenchError,
    WrongAnswer,
    checks,
    measure,
    provision,
    registry,
    report,
    serverproc,
    tls,
    workloads as wl,
    wrk,
)
from bench.serverproc import ServerProcess, Unavailable  # noqa: E402
from bench.session import Built  # noqa: E402

HELLO = b'{"message":"Hello, World!"}'
TLS_SERVERS = {"pymongoose_uring_tls", "hello_c_tls", "nginx_tls", "uvicorn_tls", "granian_tls"}
has_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
has_nginx = pytest.mark.skipif(nginx_server.find_nginx() is None, reason="nginx is not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("no openssl command")
    made = tls.make_certificates(str(tmp_path_factory.mktemp("tls")))
    yield made
    tls.remove(made)


@pytest.fixture(scope="module")
def preload(tmp_path_factory):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    path, error = tls.build_preload(target=str(tmp_path_factory.mktemp("wrktls") / "wrktls.so"))
    assert error is None, error
    return path


def _openssl_text(path):
    return subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


# ---- certificates ----


def test_certificates_are_ecdsa_p256_and_rsa_2048_for_localhost_signed_by_the_run_ca(certs):
    assert set(certs) == set(tls.KINDS)
    ecdsa, rsa = _openssl_text(certs["ecdsa"].certfile), _openssl_text(certs["rsa"].certfile)
    assert "id-ecPublicKey" in ecdsa and "prime256v1" in ecdsa
    assert "rsaEncryption" in rsa and "Public-Key: (2048 bit)" in rsa
    for cert in certs.values():
        text = _openssl_text(cert.certfile)
        assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
        assert "CA:FALSE" in text and "pymongoose_uring benchmark CA" in text  # the issuer
        with open(cert.keyfile) as f:
            assert f.readline().strip() == "-----BEGIN PRIVATE KEY-----"  # PKCS#8 (granian)
        with open(cert.certfile) as f:
            assert ssl.PEM_cert_to_DER_cert(f.read()) == cert.der
        assert os.path.dirname(cert.ca) == os.path.dirname(cert.certfile)


def test_the_certificates_verify_by_the_run_ca_and_name(certs):
    """A TLS server with each certificate is accepted by the checks' client context (the
    run's CA, the name localhost), and the RSA one is not taken for the ECDSA one."""
    for kind, cert in certs.items():
        with TinyTLS(cert) as server:
            assert checks.hello(server.port, tls=cert)["body_bytes"] == len(HELLO)
            checks.close(server.port, tls=cert)
            other = certs["rsa" if kind == "ecdsa" else "ecdsa"]
            with pytest.raises(WrongAnswer, match="another certificate"):
                checks.hello(server.port, tls=other)


def test_a_certificate_from_another_ca_is_a_wrong_answer(certs, tmp_path):
    stranger = tls.make_certificates(str(tmp_path))["ecdsa"]
    with TinyTLS(stranger) as server:
        with pytest.raises(WrongAnswer, match="not the run's ECDSA P-256 one"):
            checks.hello(server.port, tls=certs["ecdsa"])


def test_a_plain_http_server_fails_the_https_check(certs, monkeypatch):
    monkeypatch.setattr(checks, "TIMEOUT", 1.0)  # the handshake waits for it: 10 s otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(BenchError):
            checks.hello(port, tls=certs["ecdsa"])  # no TLS answer: not up


def test_remove_deletes_the_directory_with_the_keys(tmp_path):
    made = tls.make_certificates(str(tmp_path / "certs"))
    assert os.path.exists(made["rsa"].keyfile)
    tls.remove(made)
    assert not os.path.exists(str(tmp_path / "certs"))


# ---- nginx ----


def test_nginx_tls_config_is_nginx_for_speed_with_the_runs_suite_and_ciphers():
    conf = nginx_server.config(
        "/p", 4433, ["tls"], None, "/files-root", ("/c/ecdsa.pem", "/c/ecdsa.key")
    )
    for line in (
        "worker_processes 1;",
        "access_log off;",
        "listen 127.0.0.1:4433 ssl backlog=4096;",
        "ssl_certificate /c/ecdsa.pem;",
        "ssl_certificate_key /c/ecdsa.key;",
        "ssl_protocols TLSv1.2 TLSv1.3;",  # nginx 1.22's default has no TLS 1.3
        "ssl_ciphers %s;" % tls.TLS12_CIPHERS,
        "ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;",
        "ssl_session_tickets on;",
    ):
        assert line in conf, line
    assert "ssl_session_cache" not in conf  # tickets resume; no cache to pay for
    plain = nginx_server.config("/p", 4433, [], None, "/files-root")
    assert "ssl" not in plain and "listen 127.0.0.1:4433 backlog=4096;" in plain


@has_nginx
def test_nginx_accepts_its_tls_config(certs, tmp_path):
    assert nginx_server.has_ssl_module(nginx_server.find_nginx())  # Debian's nginx-light has it
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx_server.config(
            str(tmp_path),
            free_base_port(1),
            ["tls"],
            nginx_server.echo_module(),
            str(tmp_path),
            (certs["rsa"].certfile, certs["rsa"].keyfile),
        )
    )
    (tmp_path / "tmp").mkdir()
    p = subprocess.run(
        [nginx_server.find_nginx(), "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "syntax is ok" in p.stderr


# ---- the suite: servers, workloads ----


def test_suite_tls_selects_the_https_servers_and_workloads():
    args = run.parse_args(["--suite", "tls"])
    assert set(args.servers.split(",")) == TLS_SERVERS
    assert args.workloads.split(",") == wl.TLS == registry.SUITE_WORKLOADS["tls"]
    assert wl.TLS == ["tls-keepalive", "tls-get1m", "tls-handshake-ecdsa", "tls-handshake-rsa"]
    # The HTTPS workloads alone pick the HTTPS servers; the default run has none of either.
    assert set(run.parse_args(["--workloads", "tls-keepalive"]).servers.split(",")) == TLS_SERVERS
    default = run.parse_args([])
    assert not set(default.workloads.split(",")) & set(wl.TLS)
    assert not set(default.servers.split(",")) & TLS_SERVERS


def test_https_servers_serve_the_https_workloads_only():
    for d in registry.SERVERS:
        for w in wl.WORKLOADS:
            if d.supports(w):  # HTTPS servers the HTTPS workloads, plain ones the others
                assert (d.tls is None) == (w.tls_cert is None), (d.name, w.name)
        if d.tls:
            assert all(d.supports(wl.BY_NAME[n]) for n in wl.TLS), d.name
            assert d.tls in ("knobs", "files") and "tls" in d.suites
            assert not d.default  # out of the default run
    kinds = {registry.BY_NAME[n].kind for n in TLS_SERVERS}
    assert kinds == {"ours", "c-reference", "peer"}
    handshakes = [wl.BY_NAME[n] for n in wl.TLS if wl.BY_NAME[n].handshakes]
    assert {w.tls_cert for w in handshakes} == {"ecdsa", "rsa"}
    assert all(w.headers == ("Connection: close",) and w.check == "close" for w in handshakes)
    assert wl.BY_NAME["tls-get1m"].path == "/1m" and wl.BY_NAME["tls-get1m"].check == "get1m"
    for n in wl.TLS:
        assert wl.BY_NAME[n].reference == "pymongoose_uring_tls"


def test_our_https_servers_get_the_engine_knobs_and_the_peers_the_files(certs, monkeypatch):
    cert = certs["ecdsa"]
    ours = ServerProcess(registry.BY_NAME["pymongoose_uring_tls"], 1, {0}, "/dev/null")
    ours.certificate = cert
    if "ssl_certfile" in serverproc.ALL_KNOBS:
        env = ours._tls_environment()
        assert env["PMU_SSL_CERTFILE"] == cert.certfile
        assert env["PMU_SSL_KEYFILE"] == cert.keyfile
        assert env["PMU_SSL_CIPHERSUITES"] == tls.TLS13_SUITES
        assert env["PMU_SSL_CIPHERS"] == tls.TLS12_CIPHERS
    # An engine without TLS knobs: our HTTPS servers are unavailable, saying why.
    monkeypatch.setattr(
        serverproc, "ALL_KNOBS", tuple(k for k in serverproc.ALL_KNOBS if not k.startswith("ssl"))
    )
    with pytest.raises(Unavailable, match="no ssl_certfile knob"):
        ours._tls_environment()
    peer = ServerProcess(registry.BY_NAME["nginx_tls"], 1, {0}, "/dev/null")
    with pytest.raises(BenchError, match="a certificate must be set"):
        peer._tls_environment()
    peer.certificate = cert
    assert peer._tls_environment() == {
        "BENCH_TLS_CERT": cert.certfile,
        "BENCH_TLS_KEY": cert.keyfile,
    }


# ---- the preload: full handshakes, counted ----


class TinyTLS(ThreadedServer):
    """An HTTPS server (Python's ssl, session tickets on as by default) answering every
    request with the hello JSON, keep-alive unless asked to close."""

    def __init__(self, cert):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.certfile, cert.keyfile)
        super().__init__(128)

    def _conn(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        buf = b""
        try:
            with conn:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    close = b"connection: close" in head.lower()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n%s\r\n%s"
                        % (len(HELLO), b"Connection: close\r\n" if close else b"", HELLO)
                    )
                    if close:
                        return
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()


def _wrk_close(port, cert, preload, no_resume):
    """wrk for 1 s with Connection: close and the preload; returns its result."""
    env = dict(os.environ, LD_PRELOAD=preload, WRKTLS_NO_RESUME="1" if no_resume else "0")
    argv = ["wrk", "-t1", "-c4", "-d1s", "-H", "Connection: close"]
    p = subprocess.run(
        argv + ["https://127.0.0.1:%d/" % port], capture_output=True, text=True, env=env
    )
    report_ = tls.parse_preload(p.stderr)
    assert report_ is not None, p.stderr
    return report_, p.stdout


@has_wrk
def test_wrk_resumes_sessions_unless_the_preload_drops_them(certs, preload):
    """Why the preload exists: wrk alone resumes the session of every reconnection after
    the first; with WRKTLS_NO_RESUME every handshake is a full one, and all are counted."""
    with TinyTLS(certs["ecdsa"]) as server:
        resumed, _ = _wrk_close(server.port, certs["ecdsa"], preload, no_resume=False)
        full, out = _wrk_close(server.port, certs["ecdsa"], preload, no_resume=True)
    assert resumed["handshakes"] > 20 and resumed["resumed"] >= resumed["handshakes"] // 2
    assert full["handshakes"] > 20 and full["resumed"] == 0 and full["no_resume"] == 1
    requests = int(out.split(" requests in ")[0].split()[-1])
    assert requests <= full["handshakes"] <= requests + 4  # one per request (+ those cut off)
    assert full["version"] == "TLSv1.3" and full["cipher"].startswith("TLS_AES_")
    assert full["group"]


@has_wrk
def test_wrk_run_over_https_reports_the_handshakes(certs, preload):
    with TinyTLS(certs["rsa"]) as server:
        result = wrk.run(
            server.port, "/", 4, 1, os.sched_getaffinity(0), tls=certs["rsa"], preload=preload
        )
    assert result["argv"][-1] == "https://127.0.0.1:%d/" % server.port
    assert result["requests"] > 0 and result["errors"]["status"] == 0
    assert result["tls"]["handshakes"] == 4 and result["tls"]["resumed"] == 0  # keep-alive


def test_tls_figures_refuse_resumption_and_another_protocol():
    w = wl.BY_NAME["tls-handshake-ecdsa"]
    good = dict(
        handshakes=500,
        resumed=0,
        no_resume=1,
        version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        group="X25519",
    )
    figures = measure.tls_figures("x", w, good, 0.25)
    assert figures["handshakes_per_cpu_s"] == 2000.0 and figures["resumed"] == 0
    assert figures["tls_negotiated"] == "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519"
    kept = measure.tls_figures("x", wl.BY_NAME["tls-keepalive"], good, 0.25)
    assert kept["handshakes_per_cpu_s"] is None  # only the connection-per-request rows
    with pytest.raises(BenchError, match="resumed 3 of 500"):
        measure.tls_figures("x", w, dict(good, resumed=3), 0.25)
    with pytest.raises(WrongAnswer, match="negotiated TLSv1.2"):
        measure.tls_figures("x", w, dict(good, version="TLSv1.2"), 0.25)


def test_preload_report_parses_and_is_required():
    line = 'WRKTLS {"handshakes":7,"resumed":0,"no_resume":1,"version":"TLSv1.3","cipher":"C","group":"G"}'
    assert tls.parse_preload("noise\n" + line + "\n")["handshakes"] == 7
    assert tls.parse_preload("no report here\n") is None


# ---- tables and targets ----

ROW = dict(
    rounds=3,
    rps=1000.0,
    lat_p50_ms=1.0,
    lat_p99_ms=2.0,
    rss_peak_mib=10.0,
    socket_errors=0,
    status_errors=0,
    tls_negotiated="TLSv1.3 TLS_AES_256_GCM_SHA384 X25519",
)


def test_summarize_keeps_the_handshake_figures():
    points = [
        dict(
            ROW,
            requests=100,
            cpu_us_per_req=c,
            handshakes=100,
            resumed=0,
            handshakes_per_cpu_s=h,
        )
        for c, h in ((400.0, 2500.0), (500.0, 2000.0), (450.0, 2222.0))
    ]
    row = report.summarize(points)
    assert row["handshakes_per_cpu_s"] == 2222.0 and row["handshakes"] == 300
    assert row["resumed"] == 0 and row["tls_negotiated"] == ROW["tls_negotiated"]


def test_tls_tables_show_handshakes_per_cpu_second_and_what_was_negotiated():
    summary = {
        ("pymongoose_uring_tls", "tls-handshake-rsa"): dict(
            ROW, cpu_us_per_req=800.0, handshakes_per_cpu_s=1250.0
        ),
        ("nginx_tls", "tls-handshake-rsa"): dict(
            ROW, cpu_us_per_req=850.0, handshakes_per_cpu_s=1176.0
        ),
        ("nginx_tls", "tls-keepalive"): dict(ROW, cpu_us_per_req=14.0),
    }
    text = report.tables(
        [wl.BY_NAME["tls-keepalive"], wl.BY_NAME["tls-handshake-rsa"]],
        summary,
        {d.name: d.label for d in registry.SERVERS},
        "nginx_tls",
        [],
        [],
        {"duration_s": 2},
    )
    lines = text.splitlines()
    heads = [line for line in lines if line.startswith("| Framework")]
    assert "Handshakes/CPU-s" not in heads[0] and "| Negotiated |" in heads[0]
    assert "| CPU µs/req | Handshakes/CPU-s |" in heads[1] and "| Negotiated |" in heads[1]
    ours = next(line for line in lines if line.startswith("| **pymongoose_uring (HTTPS)**"))
    assert "| 800.0 | 1,250 |" in ours and "| TLSv1.3 TLS_AES_256_GCM_SHA384 X25519 |" in ours
    # ratios against ours (the workloads' reference), not the run's
    nginx = next(line for line in lines if "nginx (1 worker, HTTPS)" in line and "1,176" in line)
    assert nginx.endswith("| 1.00× / 1.06× |")
    assert "HTTPS handshakes per CPU-second, RSA-2048: ours vs nginx | 1,250 / 1,176" in text


def test_tls_targets_say_met_and_not_met():
    def row(cpu, hs=None):
        return dict(cpu_us_per_req=cpu, handshakes_per_cpu_s=hs)

    summary = {
        ("pymongoose_uring_tls", "tls-keepalive"): row(15.0),
        ("nginx_tls", "tls-keepalive"): row(14.0),  # 1.07x: met (at most 1.1x)
        ("uvicorn_tls", "tls-keepalive"): row(60.0),
        ("granian_tls", "tls-keepalive"): row(12.0),  # granian ahead: not met
        ("pymongoose_uring_tls", "tls-handshake-ecdsa"): row(500.0, 2000.0),
        ("nginx_tls", "tls-handshake-ecdsa"): row(450.0, 2300.0),  # 0.87x: not met
        ("pymongoose_uring_tls", "tls-handshake-rsa"): row(800.0, 1250.0),
        ("nginx_tls", "tls-handshake-rsa"): row(850.0, 1200.0),  # 1.04x: met
    }
    cpu = {t["what"]: t for t in report.measured_targets(summary)}
    assert cpu["HTTPS keep-alive: ours vs nginx"]["met"] is True
    assert cpu["HTTPS keep-alive: ours vs nginx"]["at_most"] == 1.1
    assert cpu["HTTPS keep-alive: ours vs uvicorn"]["met"] is True
    assert cpu["HTTPS keep-alive: ours vs granian"]["met"] is False
    assert cpu["HTTPS keep-alive: ours vs granian"]["at_most"] == 1.0
    assert not any("1 MiB" in what for what in cpu)  # not measured: not listed
    hs = {t["what"]: t for t in report.measured_handshake_targets(summary)}
    ecdsa = hs["HTTPS handshakes per CPU-second, ECDSA P-256: ours vs nginx"]
    rsa = hs["HTTPS handshakes per CPU-second, RSA-2048: ours vs nginx"]
    assert ecdsa["met"] is False and ecdsa["at_least"] == 0.9
    assert rsa["met"] is True and round(rsa["ratio"], 3) == 1.042
    text = report.targets_table(summary)
    assert (
        "| HTTPS keep-alive: ours vs granian | 15.00 / 12.00 | 1.25× | at most 1.0× | **not met** |"
        in text
    )
    assert (
        "| HTTPS handshakes per CPU-second, ECDSA P-256: ours vs nginx | 2,000 / 2,300 "
        "handshakes/CPU-s | 0.87× | at least 0.9× | **not met** |" in text
    )
    # Every HTTPS row has its uvicorn and granian target: CPU per request on the keep-alive
    # rows, full handshakes per CPU-second (at least theirs) on the others.
    whats = {t[0] for t in report.TARGETS}
    for row_name in ("keep-alive", "1 MiB response"):
        for peer in ("uvicorn", "granian"):
            assert "HTTPS %s: ours vs %s" % (row_name, peer) in whats
    least = {t[0]: t[3] for t in report.HANDSHAKE_TARGETS}
    for label in ("ECDSA P-256", "RSA-2048"):
        for peer, at_least in (("nginx", 0.9), ("uvicorn", 1.0), ("granian", 1.0)):
            what = "HTTPS handshakes per CPU-second, %s: ours vs %s" % (label, peer)
            assert least[what] == at_least
    summary[("granian_tls", "tls-handshake-rsa")] = row(1000.0, 1300.0)
    granian = {t["what"]: t for t in report.measured_handshake_targets(summary)}
    assert granian["HTTPS handshakes per CPU-second, RSA-2048: ours vs granian"]["met"] is False


def test_tls_counters_note_lists_the_engines_tls_counters():
    stats = {"tls_handshakes": 1234, "tls_resumed": 0, "requests": 5}
    note = report.tls_counters_note("pymongoose_uring_tls", stats)
    assert note.startswith("pymongoose_uring_tls: engine TLS counters")
    assert note.endswith("tls_handshakes 1,234, tls_resumed 0")
    assert report.tls_counters_note("x", {"requests": 5}) is None


# ---- the servers themselves, and a short run ----


@pytest.mark.parametrize("name", sorted(TLS_SERVERS))
def test_each_https_server_starts_and_answers_with_each_certificate(name, certs, tmp_path):
    """Started as the runner starts it, with the ECDSA then the RSA certificate: GET / over
    HTTPS (ServerProcess.start checks the answer and the certificate), the close and 1 MiB
    checks. Ours run the runner's builds of this checkout (build-bench/: run.py makes them;
    the slow provisioning test makes them from a clean tree)."""
    d = registry.BY_NAME[name]
    for module, _requirement in d.pip:
        if importlib.util.find_spec(module) is None:
            pytest.skip("%s is not installed here (run.py installs it with pip)" % module)
    built = Built()
    if d.build == "pymongoose_uring":
        if not os.path.isdir(os.path.join(provision.PYTHON_TARGET, "pymongoose_uring")):
            pytest.skip("no build-bench/python (run.py builds the checkout's package there)")
        built.pythonpath = provision.PYTHON_TARGET
    if d.build == "hello_server":
        path = os.path.join(provision.ENGINE_BUILD_DIR, "hello_server")
        if not os.access(path, os.X_OK):
            pytest.skip("no build-bench hello_server (run.py builds it)")
        built.hello_server = path
    for tool in d.tools:
        if tool == "nginx" and nginx_server.find_nginx() is None:
            pytest.skip("nginx is not installed")
    for kind in ("ecdsa", "rsa"):
        server = ServerProcess(
            d, free_base_port(1), os.sched_getaffinity(0), str(tmp_path / "log"), built=built
        )
        server.certificate = certs[kind]
        try:
            server.start(timeout=30)
        except Unavailable as e:
            pytest.skip(str(e))
        try:
            checks.check("close", server.port, tls=certs[kind])
            checks.check("get1m", server.port, tls=certs[kind])
        finally:
            server.stop()


@has_wrk
@has_nginx
def test_a_tls_run_measures_full_handshakes_and_switches_certificates(tmp_path, capsys):
    rc = quick_main(["nginx_tls"], tmp_path, "--workloads", "tls-keepalive,tls-handshake-rsa")
    out = capsys.readouterr().out
    assert rc == 0, out
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    rows = {r["workload"]: r for r in results["results"]}
    assert set(rows) == {"tls-keepalive", "tls-handshake-rsa"}
    assert rows["tls-keepalive"]["handshakes"] == 64  # one per connection; warm-up not counted
    assert 0 < rows["tls-keepalive"]["client_cpu_util"] <= 1.05  # wrk's share of its core
    hs = rows["tls-handshake-rsa"]
    assert hs["resumed"] == 0 and hs["handshakes"] >= hs["requests"] > 0
    assert hs["handshakes_per_cpu_s"] > 0 and rows["tls-keepalive"]["handshakes_per_cpu_s"] is None
    assert hs["tls_negotiated"].startswith("TLSv1.3 TLS_AES_256_GCM_SHA384")
    assert results["meta"]["tls"]["tls13_suites"] == "TLS_AES_256_GCM_SHA384"
    # The RSA workload ran on a server restarted with the RSA certificate (its check compares
    # the certificate byte for byte); the run's certificates are gone afterwards.
    with open(tmp_path / "logs" / "nginx_tls.log") as f:
        assert f.read().count("==== ") == 2
    assert "Handshakes/CPU-s" in out
    assert not os.path.exists(results["meta"]["tls"]["directory"])
