/*
 * fuzz_tls: arbitrary bytes as a client's flight into a server SSL made from a
 * real HTTPS configuration (core/tls_ctx.c), driven over memory BIOs as the
 * transport drives it: bytes in, SSL_do_handshake, bytes out, again.
 *
 * The configuration has everything a ClientHello can reach: two SNI
 * certificates (a name and a wildcard) besides the default one, ALPN
 * "h2,http/1.1", client certificates optional (verified against a CA), session
 * tickets on (a ticket in the hello reaches the ticket key callback). The
 * certificates are made at start-up into a temporary directory (nothing is
 * committed); the context is loaded once.
 *
 * Input: byte 0 is the piece size (0: everything at once; n: n bytes per
 * SSL_do_handshake call, so 1 dribbles byte by byte); the rest is what the
 * client sends. Checks:
 * - the handshake never completes: a client that cannot compute the keys
 *   cannot send a valid Finished, and the ticket keys are random;
 * - everything the server writes is a sequence of whole TLS records (type 20
 *   to 23, version 3.x but for an early alert, length at most 2^14 + 2048); when the handshake
 * fails and the server wrote anything in that step, its last record is an alert (type 21, or 23
 * after a TLS 1.3 ServerHello: alerts are encrypted then);
 * - once it failed, it stays failed (more bytes do not revive it).
 * Leaks are left to the ASan C tests (test_tls_ctx), as for the other harnesses.
 * Seeds: tests/fuzz/corpus/tls, real ClientHellos made by make_tls_corpus.py.
 */
#include "internal.h"
#include "tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      fprintf(stderr, "fuzz check failed: %s: ", #cond); \
      fprintf(stderr, __VA_ARGS__);                      \
      fprintf(stderr, "\n");                             \
      abort();                                           \
    }                                                    \
  } while (0)

static pmu_server_t *server;
static char dir[64];

static void die(const char *what) {
  fprintf(stderr, "fuzz_tls: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(2);
}

static void remove_dir(void) {
  const char *names[] = {"ca.pem", "default.pem", "a.pem", "wild.pem"};
  char path[128];
  for (size_t i = 0; i < 4; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    unlink(path);
  }
  rmdir(dir);
}

/* A certificate (with its key, in one PEM file) for the DNS name dns, signed
 * by ca_key/ca (NULL: self-signed, a CA). */
static void make(const char *file, const char *dns, EVP_PKEY *ca_key, X509 *ca, EVP_PKEY **key_out,
                 X509 **cert_out) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *cert = X509_new();
  if (!key || !cert)
    die("no key or certificate");
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), ca ? 2 : 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600L * 24 * 365);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                             (const unsigned char *)dns, -1, -1, 0);
  X509_set_issuer_name(cert, X509_get_subject_name(ca ? ca : cert));
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, ca ? ca : cert, cert, NULL, NULL, 0);
  char san[128];
  snprintf(san, sizeof san, "DNS:%s", dns);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(
      NULL, &v3, ca ? NID_subject_alt_name : NID_basic_constraints, ca ? san : "critical,CA:TRUE");
  if (!ext || !X509_add_ext(cert, ext, -1) || !X509_sign(cert, ca_key ? ca_key : key, EVP_sha256()))
    die("cannot make a certificate");
  X509_EXTENSION_free(ext);
  char path[128];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  FILE *f = fopen(path, "w");
  if (!f || !PEM_write_X509(f, cert) || !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) ||
      fclose(f) != 0)
    die("cannot write a certificate");
  *key_out = key;
  *cert_out = cert;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  snprintf(dir, sizeof dir, "/tmp/pmu-fuzz-tls-XXXXXX");
  if (!mkdtemp(dir))
    die("mkdtemp");
  atexit(remove_dir);
  EVP_PKEY *keys[4];
  X509 *certs[4];
  make("ca.pem", "fuzz ca", NULL, NULL, &keys[0], &certs[0]);
  make("default.pem", "default.test", keys[0], certs[0], &keys[1], &certs[1]);
  make("a.pem", "a.test", keys[0], certs[0], &keys[2], &certs[2]);
  make("wild.pem", "*.w.test", keys[0], certs[0], &keys[3], &certs[3]);
  for (int i = 0; i < 4; i++) {
    EVP_PKEY_free(keys[i]);
    X509_free(certs[i]);
  }
  static char ca[128], dflt[128], a[128], wild[128];
  snprintf(ca, sizeof ca, "%s/ca.pem", dir);
  snprintf(dflt, sizeof dflt, "%s/default.pem", dir);
  snprintf(a, sizeof a, "%s/a.pem", dir);
  snprintf(wild, sizeof wild, "%s/wild.pem", dir);
  static pmu_tls_cert_t sni[2];
  sni[0].certfile = a;
  sni[1].certfile = wild;
  server = calloc(1, sizeof *server);
  if (!server)
    die("no memory");
  pmu_config_init(&server->cfg);
  server->cfg.ssl_certfile = dflt;
  server->cfg.ssl_ca_certs = ca;
  server->cfg.ssl_cert_reqs = 1;
  server->cfg.ssl_alpn = "h2,http/1.1";
  server->cfg.ssl_sni_certs = sni;
  server->cfg.ssl_sni_cert_count = 2;
  if (pmu__tls_server_init(server) < 0) {
    fprintf(stderr, "fuzz_tls: %s\n", pmu_server_error(server));
    exit(2);
  }
  return 0;
}

/* Drain what the server wrote and check it is whole TLS records. Returns the
 * bytes drained; *last_type: the type of the last record (0: none). */
static size_t drain(BIO *wbio, unsigned *last_type) {
  static unsigned char out[1 << 17];
  size_t total = 0;
  int n;
  *last_type = 0;
  while ((n = BIO_read(wbio, out, sizeof out)) > 0) {
    size_t at = 0, len = (size_t)n;
    while (at < len) {
      CHECK(len - at >= 5, "a record header cut at %zu of %zu", at, len);
      unsigned type = out[at], major = out[at + 1];
      size_t rlen = ((size_t)out[at + 3] << 8) | out[at + 4];
      CHECK(type >= 20 && type <= 23, "record type %u", type);
      /* An early alert carries the version the client's hello claimed (OpenSSL). */
      CHECK(major == 3 || type == 21, "record version %u.%u", major, out[at + 2]);
      CHECK(rlen <= 16384 + 2048, "record length %zu", rlen);
      CHECK(at + 5 + rlen <= len, "a record cut: %zu + 5 + %zu > %zu", at, rlen, len);
      *last_type = type;
      at += 5 + rlen;
    }
    total += len;
  }
  return total;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t piece = data[0] ? data[0] : size;
  data++;
  size--;
  pmu__tls_ctx_t *ctx = pmu__tls_ctx_acquire(server);
  SSL *ssl = pmu__tls_ssl_new(ctx);
  pmu__tls_ctx_release(ctx);
  BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
  CHECK(ssl && rbio && wbio, "out of memory");
  BIO_set_mem_eof_return(rbio, -1); /* empty: "retry", as a transport's BIO says */
  SSL_set_bio(ssl, rbio, wbio);
  int failed = 0;
  unsigned last;
  for (size_t at = 0; at < size || at == 0; at += piece) {
    size_t n = size - at < piece ? size - at : piece;
    if (n)
      CHECK(BIO_write(rbio, data + at, (int)n) == (int)n, "BIO_write");
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    int err = SSL_get_error(ssl, rc);
    CHECK(rc != 1, "the handshake completed with a client that has no keys");
    size_t out = drain(wbio, &last);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
      CHECK(out == 0 || last == 21 || last == 23,
            "the failed step's output ends with a record of type %u", last);
      failed = 1;
      break;
    }
    if (size == 0)
      break;
  }
  if (failed) { /* the transport would close; a later call must not revive it */
    CHECK(BIO_write(rbio, "\x16\x03\x01\x00\x00", 5) == 5, "BIO_write");
    int rc = SSL_do_handshake(ssl);
    int err = SSL_get_error(ssl, rc);
    CHECK(rc != 1 && err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE,
          "the handshake went on after it failed (rc %d, error %d)", rc, err);
    drain(wbio, &last);
  }
  ERR_clear_error();
  SSL_free(ssl);
  return 0;
}
