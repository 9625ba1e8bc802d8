"""HTTPS for the runner (run.py --suite tls): certificates made for each run, the wrk preload
that makes every new connection a full handshake and says what was negotiated, and the
client side of the answer checks.

Certificates: a CA (ECDSA P-256) and two server certificates it signs, one with an ECDSA
P-256 key and one with an RSA-2048 key, both for localhost, 127.0.0.1 and ::1, made with the
`openssl` command into a fresh temporary directory (`pmu-bench-tls-*`, removed at the end of
the run; never committed). Each certificate file holds the server certificate alone (the CA is
the client's trust anchor), each key file the key in PKCS#8 (granian reads no other form).

wrk and session resumption: wrk keeps one SSL object per connection and calls SSL_clear on it
before reconnecting, which keeps the session of a cleanly closed connection, so with
`Connection: close` wrk resumes every session after the first (measured with nginx: 872 of
876 connections resumed). benchmarks/wrktls/wrktls.c, preloaded into wrk for every HTTPS
run, drops that session before each handshake (WRKTLS_NO_RESUME=1), counts the handshakes and
the resumed ones, and prints the first one's protocol, suite and group at exit.
"""

import importlib.util
import json
import os
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass

from . import BENCH_DIR, REPO_DIR, SERVERS_DIR, BenchError

_spec = importlib.util.spec_from_file_location(
    "bench_server_common", os.path.join(SERVERS_DIR, "common.py")
)
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)

# What every server that can be told is given (servers/common.py holds them for the scripts).
TLS13_SUITES = _common.TLS13_SUITES
TLS12_CIPHERS = _common.TLS12_CIPHERS
ENV_CERT, ENV_KEY = _common.TLS_ENV_CERT, _common.TLS_ENV_KEY
# The certificates a workload can ask for (Workload.tls_cert), as the tables name them.
KINDS = {"ecdsa": "ECDSA P-256", "rsa": "RSA-2048"}
KEY_OPTIONS = {
    "ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-newkey", "rsa:2048"],
}
SERVER_NAME = "localhost"  # the name the checks verify (the certificates also carry the IPs)
SAN = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

PRELOAD_SOURCE = os.path.join(BENCH_DIR, "wrktls", "wrktls.c")
PRELOAD = os.path.join(REPO_DIR, "build-bench", "wrktls", "wrktls.so")
PRELOAD_MARK = "WRKTLS "
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-std=gnu11", "-shared", "-fPIC"]


@dataclass(frozen=True)
class Certificate:
    """One server certificate of a run: its kind ("ecdsa" or "rsa"), the files the server is
    given, the CA file that verifies it, and the certificate's DER (what a check compares the
    certificate a server presents with)."""

    kind: str
    certfile: str
    keyfile: str
    ca: str
    der: bytes

    @property
    def label(self):
        return KINDS[self.kind]

    def client_context(self):
        """A client context that trusts only this run's CA and checks the name."""
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def _openssl(argv, log=None):
    p = subprocess.run(["openssl", *argv], capture_output=True, text=True)
    if log:
        with open(log, "a") as f:
            f.write("\n$ openssl %s\n%s%s" % (" ".join(argv), p.stdout, p.stderr))
    if p.returncode != 0:
        raise BenchError("openssl %s failed: %s" % (argv[0], p.stderr.strip()[-500:]))
    return p.stdout


def make_certificates(directory=None, log=None):
    """Make this run's CA and server certificates in `directory` (default: a new temporary
    directory). Returns {kind: Certificate} for every kind of KINDS. Raises BenchError when
    the openssl command is missing or fails."""
    if not shutil.which("openssl"):
        raise BenchError("the openssl command is needed to make the HTTPS certificates")
    directory = directory or tempfile.mkdtemp(prefix="pmu-bench-tls-")
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)  # nginx's master reads them as root; nothing else needs them
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    _openssl(
        ["req", "-x509", *KEY_OPTIONS["ecdsa"], "-noenc", "-keyout", ca_key, "-out", ca]
        + ["-days", "2", "-subj", "/CN=pymongoose_uring benchmark CA"],
        log,
    )
    out = {}
    for kind in KINDS:
        key = os.path.join(directory, kind + ".key")
        csr = os.path.join(directory, kind + ".csr")
        cert = os.path.join(directory, kind + ".pem")
        ext = os.path.join(directory, kind + ".ext")
        with open(ext, "w") as f:
            f.write(
                "%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature"
                "%s\nextendedKeyUsage=serverAuth\n"
                % (SAN, ",keyEncipherment" if kind == "rsa" else "")
            )
        _openssl(
            ["req", "-new", *KEY_OPTIONS[kind], "-noenc", "-keyout", key, "-out", csr]
            + ["-subj", "/CN=%s" % SERVER_NAME],
            log,
        )
        _openssl(
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"]
            + ["-days", "2", "-sha256", "-extfile", ext, "-out", cert],
            log,
        )
        with open(cert) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        out[kind] = Certificate(kind, cert, key, ca, der)
    return out


def remove(certificates):
    """Remove the directory make_certificates() wrote (the CA's key with it)."""
    dirs = {os.path.dirname(c.certfile) for c in (certificates or {}).values()}
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


HEADER = "/usr/include/openssl/ssl.h"  # Debian's libssl-dev


def ensure_tools(log=None):
    """Install what the HTTPS suite needs and lacks, as the runner installs wrk and nginx:
    the openssl command (the certificates) and libssl-dev (the preload's headers). Returns
    None, or why not."""
    from . import provision

    error = provision.ensure_tool("openssl", log)
    if error is None and not os.path.exists(HEADER):
        error = provision.apt_install(["libssl-dev"], log)
    return error


def build_preload(log=None, target=PRELOAD, source=PRELOAD_SOURCE, build=True):
    """Compile benchmarks/wrktls/wrktls.c into a shared library when it is missing or older
    than its source (links libssl: Debian's libssl-dev). Returns (path, None) or (None, why
    not)."""
    if os.path.exists(target) and (
        not build or os.path.getmtime(target) >= os.path.getmtime(source)
    ):
        return target, None
    if not build:
        return None, "no %s (and --no-build given)" % os.path.relpath(target, REPO_DIR)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc) to build %s" % os.path.relpath(source, REPO_DIR)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    argv = [cc, *CFLAGS, "-o", target + ".tmp", source, "-lssl", "-lcrypto", "-ldl", "-lpthread"]
    p = subprocess.run(argv, capture_output=True, text=True)
    if log:
        with open(log, "a") as f:
            f.write("\n$ %s\n%s%s" % (" ".join(argv), p.stdout, p.stderr))
    if p.returncode != 0:
        return None, "building the wrk TLS preload failed: %s" % (
            p.stderr.strip()[-500:] or p.returncode
        )
    os.replace(target + ".tmp", target)
    return target, None


def preload_env(preload):
    """The environment that makes wrk load the preload with resumption off."""
    return {"LD_PRELOAD": preload, "WRKTLS_NO_RESUME": "1"}


def parse_preload(text):
    """The preload's report in wrk's stderr: {"handshakes", "resumed", "no_resume",
    "version", "cipher", "group"}, or None when there is none (the preload was not loaded)."""
    for line in text.splitlines():
        if line.startswith(PRELOAD_MARK):
            return json.loads(line[len(PRELOAD_MARK) :])
    return None


def negotiated(report):
    """ "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519" from a preload report (what the table shows)."""
    return " ".join(x for x in (report["version"], report["cipher"], report["group"]) if x)


def engine_knobs(certificate):
    """The engine knobs (PMU_* variables) that make our servers serve `certificate` with the
    suites and ciphers every server gets."""
    return {
        "ssl_certfile": certificate.certfile,
        "ssl_keyfile": certificate.keyfile,
        "ssl_ciphersuites": TLS13_SUITES,
        "ssl_ciphers": TLS12_CIPHERS,
    }


def environment(certificate):
    """BENCH_TLS_CERT and BENCH_TLS_KEY for the server scripts (servers/common.tls_files)."""
    return {ENV_CERT: certificate.certfile, ENV_KEY: certificate.keyfile}
