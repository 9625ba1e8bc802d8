/*
 * test_tls_ctx: the TLS configuration of a server (core/tls_ctx.c), without
 * sockets: a server SSL made from the server's context (pmu__tls_ssl_new)
 * against an OpenSSL client over an in-memory BIO pair (tlslib.c).
 *
 * Versions (1.2, 1.3, the minimum refusing older clients), ALPN (ours chosen
 * in our order, none offered, no overlap refused), SNI among certificates (SAN
 * names, a wildcard, a CN without SAN, the default), keys (encrypted with the
 * right and a wrong password, not matching the certificate), client
 * certificates (required, optional, refused from another CA), resumption by
 * ticket across ring threads' SSLs and through key rotation, renegotiation
 * refused, a reload that swaps certificates while the old configuration is
 * still held, and the snapshot of a finished handshake. Every error text
 * names the file or knob at fault.
 */
#include "internal.h"
#include "testlib.h"
#include "tls.h"
#include "tlslib.h"

#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static t_tls_cert_t ca, other_ca, dflt, a_rsa, wild, cn_only, enc, client, stranger;

/* A pmu_server_t with only what the TLS configuration uses (no rings). */
static pmu_server_t *tls_server(const pmu_config_t *cfg, int *rc) {
  pmu_server_t *s = calloc(1, sizeof *s);
  T_ASSERT(s != NULL);
  s->cfg = *cfg;
  *rc = pmu__tls_server_init(s);
  return s;
}

static void tls_server_free(pmu_server_t *s) {
  pmu__tls_server_free(s);
  free(s);
}

static void base_config(pmu_config_t *cfg) {
  pmu_config_init(cfg);
  cfg->ssl_certfile = dflt.chain_path;
  cfg->ssl_keyfile = dflt.key_path;
}

/* A server that must start; fails the test with its error otherwise. */
static pmu_server_t *started(const pmu_config_t *cfg) {
  int rc;
  pmu_server_t *s = tls_server(cfg, &rc);
  T_ASSERT_MSG(rc == 0, "pmu__tls_server_init: %d %s", rc, pmu_server_error(s));
  return s;
}

/* A server that must not start: returns its error text (static). */
static const char *refused(const pmu_config_t *cfg, int expect_rc) {
  static char text[600];
  int rc;
  pmu_server_t *s = tls_server(cfg, &rc);
  snprintf(text, sizeof text, "%s", pmu_server_error(s));
  T_ASSERT_MSG(rc == expect_rc, "rc %d, expected %d (%s)", rc, expect_rc, text);
  tls_server_free(s);
  return text;
}

/* Handshake a client with these options against a fresh SSL of s. */
static int shake(pmu_server_t *s, const t_tls_client_opts_t *o, t_tls_pair_t *pair, char *why,
                 size_t why_len) {
  pmu__tls_ctx_t *ctx = pmu__tls_ctx_acquire(s);
  T_ASSERT(ctx != NULL);
  SSL *server = pmu__tls_ssl_new(ctx);
  T_ASSERT(server != NULL);
  pmu__tls_ctx_release(ctx); /* the SSL holds its own reference */
  t_tls_pair_join(pair, t_tls_client_ssl(o), server);
  return t_tls_pair_handshake(pair, why, why_len);
}

/* The handshake must succeed; returns with pair joined and application data
 * exchanged both ways. */
static void must_shake(pmu_server_t *s, const t_tls_client_opts_t *o, t_tls_pair_t *pair) {
  char why[600];
  T_ASSERT_MSG(shake(s, o, pair, why, sizeof why), "handshake failed: %s", why);
  T_ASSERT(t_tls_pair_exchange(pair));
}

static void must_fail(pmu_server_t *s, const t_tls_client_opts_t *o, const char *expect) {
  char why[600];
  t_tls_pair_t pair;
  int ok = shake(s, o, &pair, why, sizeof why);
  if (ok) /* TLS 1.3: a refused client certificate shows after the handshake */
    ok = t_tls_pair_exchange(&pair);
  T_ASSERT_MSG(!ok, "handshake succeeded, expected a failure (%s)", expect);
  if (expect)
    T_ASSERT_CONTAINS(why, strlen(why), expect);
  t_tls_pair_free(&pair);
}

static X509 *served(const t_tls_pair_t *pair) { return SSL_get0_peer_certificate(pair->client); }

static const char *alpn_of(SSL *ssl, char *buf) {
  const unsigned char *p;
  unsigned n;
  SSL_get0_alpn_selected(ssl, &p, &n);
  if (!n)
    return NULL;
  memcpy(buf, p, n);
  buf[n] = 0;
  return buf;
}

static void make_certs(void) {
  t_tls_make_ca("ca", &ca);
  t_tls_make_ca("other-ca", &other_ca);
  t_tls_make_cert(
      &ca, "default",
      &(t_tls_cert_opts_t){.kind = T_TLS_ECDSA_P256, .dns = (const char *[]){"default.test", NULL}},
      &dflt);
  t_tls_make_cert(&ca, "a",
                  &(t_tls_cert_opts_t){.kind = T_TLS_RSA2048,
                                       .dns = (const char *[]){"a.test", "alt.test", NULL}},
                  &a_rsa);
  t_tls_make_cert(
      &ca, "wild",
      &(t_tls_cert_opts_t){.kind = T_TLS_ECDSA_P256, .dns = (const char *[]){"*.w.test", NULL}},
      &wild);
  t_tls_make_cert(&ca, "cn-only", &(t_tls_cert_opts_t){.kind = T_TLS_ECDSA_P256, .cn = "cn.test"},
                  &cn_only);
  t_tls_make_cert(&ca, "enc",
                  &(t_tls_cert_opts_t){.kind = T_TLS_ECDSA_P256,
                                       .dns = (const char *[]){"enc.test", NULL},
                                       .password = "s3cret"},
                  &enc);
  t_tls_make_cert(
      &ca, "client",
      &(t_tls_cert_opts_t){.kind = T_TLS_ECDSA_P256, .cn = "client one", .client = true}, &client);
  t_tls_make_cert(&other_ca, "stranger",
                  &(t_tls_cert_opts_t){.kind = T_TLS_ECDSA_P256, .cn = "stranger", .client = true},
                  &stranger);
}

static void test_versions(void) {
  t_tls_pair_t pair;
  pmu_config_t cfg;
  base_config(&cfg);
  cfg.ssl_certfile = a_rsa.chain_path;
  cfg.ssl_keyfile = a_rsa.key_path;
  pmu_server_t *s = started(&cfg);

  t_case("TLS 1.3 when the client has it, with an RSA certificate");
  must_shake(s, NULL, &pair);
  T_ASSERT_INT_EQ(SSL_version(pair.server), TLS1_3_VERSION);
  T_ASSERT(X509_cmp(served(&pair), a_rsa.cert) == 0);
  t_tls_pair_free(&pair);

  t_case("TLS 1.2 for a client that stops there: an ECDHE AEAD cipher");
  must_shake(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION}, &pair);
  T_ASSERT_INT_EQ(SSL_version(pair.server), TLS1_2_VERSION);
  const char *name = SSL_CIPHER_get_name(SSL_get_current_cipher(pair.server));
  T_ASSERT_MSG(strncmp(name, "ECDHE-RSA-", 10) == 0 &&
                   (strstr(name, "GCM") || strstr(name, "CHACHA20")),
               "cipher %s", name);
  t_tls_pair_free(&pair);

  t_case("TLS 1.2 without ECDHE or AEAD is refused by the default cipher list");
  must_fail(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION, .ciphers = "AES128-SHA256"},
            "server failed");

  t_case("renegotiation is refused");
  must_shake(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION}, &pair);
  T_ASSERT(SSL_renegotiate(pair.client) == 1);
  /* The client sends a new ClientHello; the server reads it inside SSL_read (as
   * the transport would) and answers with a no_renegotiation alert: the
   * client's renegotiation fails instead of completing. */
  int client_rc = 0;
  for (int round = 0; round < 10 && client_rc == 0; round++) {
    int rc = SSL_do_handshake(pair.client);
    if (rc == 1)
      client_rc = 1;
    else if (SSL_get_error(pair.client, rc) != SSL_ERROR_WANT_READ)
      client_rc = -1;
    char buf[64];
    size_t got;
    SSL_read_ex(pair.server, buf, sizeof buf, &got);
  }
  T_ASSERT_MSG(client_rc == -1, "the client's renegotiation %s",
               client_rc == 1 ? "completed" : "neither completed nor failed");
  /* OpenSSL 3 refuses a client's renegotiation by default too; the option also
   * covers a configuration file that would allow it. Buffers go when idle. */
  T_ASSERT(SSL_get_options(pair.server) & SSL_OP_NO_RENEGOTIATION);
  T_ASSERT(SSL_get_mode(pair.server) & SSL_MODE_RELEASE_BUFFERS);
  ERR_clear_error();
  t_tls_pair_free(&pair);
  tls_server_free(s);

  t_case("ssl_min_version TLSv1.3 refuses a TLS 1.2 client, serves a 1.3 one");
  base_config(&cfg);
  cfg.ssl_min_version = "TLSv1.3";
  s = started(&cfg);
  must_fail(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION}, "server failed");
  must_shake(s, NULL, &pair);
  T_ASSERT_INT_EQ(SSL_version(pair.server), TLS1_3_VERSION);
  t_tls_pair_free(&pair);
  tls_server_free(s);

  t_case("ssl_ciphers and ssl_ciphersuites are applied");
  base_config(&cfg);
  cfg.ssl_ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305";
  cfg.ssl_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
  s = started(&cfg);
  must_shake(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION}, &pair);
  T_ASSERT_STR_EQ(SSL_CIPHER_get_name(SSL_get_current_cipher(pair.server)),
                  "ECDHE-ECDSA-CHACHA20-POLY1305");
  t_tls_pair_free(&pair);
  must_shake(s, NULL, &pair);
  T_ASSERT_STR_EQ(SSL_CIPHER_get_name(SSL_get_current_cipher(pair.server)),
                  "TLS_CHACHA20_POLY1305_SHA256");
  t_tls_pair_free(&pair);
  must_fail(s, &(t_tls_client_opts_t){.ciphersuites = "TLS_AES_128_GCM_SHA256"}, "server failed");
  tls_server_free(s);

  t_case("bad version, cipher and suite settings fail the start, naming the knob");
  base_config(&cfg);
  cfg.ssl_min_version = "TLSv1.1";
  const char *e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "ssl_min_version");
  base_config(&cfg);
  cfg.ssl_ciphers = "NOPE-NOTHING";
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "ssl_ciphers");
  base_config(&cfg);
  cfg.ssl_ciphersuites = "TLS_NOPE";
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "ssl_ciphersuites");
  base_config(&cfg);
  cfg.ssl_alpn = "h2,,http/1.1";
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "ssl_alpn");
}

static void test_alpn(void) {
  t_tls_pair_t pair;
  pmu_config_t cfg;
  char buf[256];
  base_config(&cfg);
  cfg.ssl_alpn = "h2,http/1.1";
  pmu_server_t *s = started(&cfg);

  t_case("ALPN: our first protocol the client offers, in our order");
  must_shake(s, &(t_tls_client_opts_t){.alpn = "http/1.1,h2"}, &pair);
  T_ASSERT_STR_EQ(alpn_of(pair.client, buf), "h2");
  t_tls_pair_free(&pair);
  must_shake(s, &(t_tls_client_opts_t){.alpn = "spdy/1,http/1.1"}, &pair);
  T_ASSERT_STR_EQ(alpn_of(pair.client, buf), "http/1.1");
  t_tls_pair_free(&pair);

  t_case("ALPN: a client offering none is served without a protocol");
  must_shake(s, NULL, &pair);
  T_ASSERT_STR_EQ(alpn_of(pair.client, buf), NULL);
  t_tls_pair_free(&pair);

  t_case("ALPN: no protocol in common fails with no_application_protocol");
  must_fail(s, &(t_tls_client_opts_t){.alpn = "spdy/3,h3"}, "no application protocol");
  tls_server_free(s);

  t_case("ALPN off (ssl_alpn \"\"): the client's list is ignored");
  base_config(&cfg);
  cfg.ssl_alpn = "";
  s = started(&cfg);
  must_shake(s, &(t_tls_client_opts_t){.alpn = "spdy/3"}, &pair);
  T_ASSERT_STR_EQ(alpn_of(pair.client, buf), NULL);
  t_tls_pair_free(&pair);
  tls_server_free(s);
}

static void test_sni(void) {
  t_tls_pair_t pair;
  pmu_config_t cfg;
  base_config(&cfg);
  pmu_tls_cert_t sni[] = {
      {.certfile = a_rsa.cert_path, .keyfile = a_rsa.key_path},
      {.certfile = wild.both_path},
      {.certfile = cn_only.cert_path, .keyfile = cn_only.key_path},
  };
  cfg.ssl_sni_certs = sni;
  cfg.ssl_sni_cert_count = 3;
  pmu_server_t *s = started(&cfg);
  /* The config is copied: the caller's array may go. */
  memset(sni, 0, sizeof sni);

  struct {
    const char *name;
    X509 *expect;
  } rows[] = {
      {"a.test", a_rsa.cert},    {"ALT.Test", a_rsa.cert},    {"alt.test.", a_rsa.cert},
      {"x.w.test", wild.cert},   {"w.test", dflt.cert},       {"y.x.w.test", dflt.cert},
      {"cn.test", cn_only.cert}, {"default.test", dflt.cert}, {"other.test", dflt.cert},
      {NULL, dflt.cert},
  };
  t_case("SNI picks the certificate answering for the name (SAN, wildcard of one label, CN), "
         "else ssl_certfile's");
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    must_shake(s, &(t_tls_client_opts_t){.sni = rows[i].name}, &pair);
    if (X509_cmp(served(&pair), rows[i].expect) != 0)
      t_case_failed("SNI %s: served another certificate", rows[i].name ? rows[i].name : "(none)");
    t_tls_pair_free(&pair);
  }

  t_case("SNI: the client verifies the certificate chosen for its name");
  must_shake(s, &(t_tls_client_opts_t){.sni = "q.w.test", .ca_file = ca.cert_path}, &pair);
  T_ASSERT_INT_EQ(SSL_get_verify_result(pair.client), X509_V_OK);
  t_tls_pair_free(&pair);
  tls_server_free(s);

  t_case("an SNI certificate that cannot load fails the start, naming it");
  base_config(&cfg);
  pmu_tls_cert_t bad[] = {{.certfile = a_rsa.cert_path, .keyfile = a_rsa.key_path},
                          {.certfile = "/nonexistent/sni.pem"}};
  cfg.ssl_sni_certs = bad;
  cfg.ssl_sni_cert_count = 2;
  const char *e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "ssl_sni_certs[1]");
  T_ASSERT_CONTAINS(e, strlen(e), "/nonexistent/sni.pem");
}

static void test_keys(void) {
  t_tls_pair_t pair;
  pmu_config_t cfg;
  const char *e;

  t_case("an encrypted key opens with ssl_keyfile_password");
  base_config(&cfg);
  cfg.ssl_certfile = enc.cert_path;
  cfg.ssl_keyfile = enc.key_path;
  cfg.ssl_keyfile_password = "s3cret";
  pmu_server_t *s = started(&cfg);
  must_shake(s, NULL, &pair);
  T_ASSERT(X509_cmp(served(&pair), enc.cert) == 0);
  t_tls_pair_free(&pair);
  tls_server_free(s);

  t_case("a wrong password fails the start, naming the key file");
  cfg.ssl_keyfile_password = "wrong";
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), enc.key_path);
  T_ASSERT_CONTAINS(e, strlen(e), "password");

  t_case("an encrypted key without a password fails the start (no prompt)");
  cfg.ssl_keyfile_password = NULL;
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), enc.key_path);
  T_ASSERT_CONTAINS(e, strlen(e), "password");

  /* P-256 keys encrypted with "s3cret" (made here with openssl pkcs8 -topk8 -v2 aes-256-cbc)
   * whose decryption with "" (the first) and with "wrong" (the second) gets past the CBC
   * padding check, as about one in 256 does: the garbage then fails to decode, and only
   * that OpenSSL asked for a password says the key is encrypted. */
  static const char empty_passes[] =
      "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
      "MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAhu288iUfJ8ywICCAAw\n"
      "DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEECVUdog8kHuLkU1OawRpmgsEgZC5\n"
      "9GUYo3+H/yeY98NzUeb8lAPtNdcfrpMq2Co69eefjD7YX1KmeduI29MhSOSfBdkM\n"
      "w/P8TjGBh07si9RR9uvv7hwmLNDMO443WUvErTJ0CwoGRtoOWHHhs9Wj2RloLheA\n"
      "GPRAGLy6A7GSS/kyuSU2aqGze55ioeGq5kUrZ8zFUKWqpCySoMALHHe1BWDxLRw=\n"
      "-----END ENCRYPTED PRIVATE KEY-----\n";
  static const char wrong_passes[] =
      "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
      "MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAgqUFyl5JeO1QICCAAw\n"
      "DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEM23Ru51M3BXcVHFxRSpSb8EgZBR\n"
      "8Du5NxRM3E7dxr/1rYiultFWC/3VjGWt5F1UukUXYYjYxa+lDIfD0zcgNpIMopa9\n"
      "F7KsuYjb+mKBmMlYdB7xtE4WEKGdBlK35TWtiNp0VRqsqN2DPXZg9BIZNckRGqGb\n"
      "N/0busVfj7mJywaXQH8+zncbexZcdAZ/lzIXdeIcLA40WYnUA7uZv4KJrjV72fk=\n"
      "-----END ENCRYPTED PRIVATE KEY-----\n";
  char lucky[600];

  t_case("an encrypted key whose decryption without a password decodes as garbage: "
         "still 'give its password'");
  snprintf(lucky, sizeof lucky, "%s/lucky-empty.key", t_tls_dir());
  t_write_file(lucky, empty_passes, sizeof empty_passes - 1);
  cfg.ssl_keyfile = lucky;
  cfg.ssl_keyfile_password = NULL;
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), lucky);
  T_ASSERT_CONTAINS(e, strlen(e), "is encrypted: give its password");

  t_case("a wrong password whose decryption decodes as garbage: still 'wrong password?'");
  snprintf(lucky, sizeof lucky, "%s/lucky-wrong.key", t_tls_dir());
  t_write_file(lucky, wrong_passes, sizeof wrong_passes - 1);
  cfg.ssl_keyfile_password = "wrong";
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), lucky);
  T_ASSERT_CONTAINS(e, strlen(e), "wrong password");
  cfg.ssl_keyfile_password = "s3cret"; /* the right one: it loads, and is not the cert's */
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "does not match");

  t_case("a key that does not match the certificate fails the start");
  base_config(&cfg);
  cfg.ssl_keyfile = a_rsa.key_path;
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "does not match");
  T_ASSERT_CONTAINS(e, strlen(e), a_rsa.key_path);

  t_case("the key in the certificate file (ssl_keyfile NULL)");
  base_config(&cfg);
  cfg.ssl_certfile = dflt.both_path;
  cfg.ssl_keyfile = NULL;
  s = started(&cfg);
  must_shake(s, NULL, &pair);
  t_tls_pair_free(&pair);
  tls_server_free(s);

  t_case("a missing or garbled certificate file fails the start, naming it");
  base_config(&cfg);
  cfg.ssl_certfile = "/nonexistent/cert.pem";
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "/nonexistent/cert.pem");
  char garbled[600];
  snprintf(garbled, sizeof garbled, "%s/garbled.pem", t_tls_dir());
  t_write_file(garbled, "-----BEGIN CERTIFICATE-----\nnot base64\n", 40);
  cfg.ssl_certfile = garbled;
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), garbled);
}

static void test_client_certs(void) {
  t_tls_pair_t pair;
  pmu_config_t cfg;

  t_case("client certificates required without ssl_ca_certs fail the start");
  base_config(&cfg);
  cfg.ssl_cert_reqs = 2;
  const char *e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "ssl_ca_certs");

  cfg.ssl_ca_certs = "/nonexistent/ca.pem";
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "/nonexistent/ca.pem");

  t_case("required: a certificate from the CA is accepted (TLS 1.3 and 1.2)");
  cfg.ssl_ca_certs = ca.cert_path;
  pmu_server_t *s = started(&cfg);
  for (int v = 0; v < 2; v++) {
    must_shake(s,
               &(t_tls_client_opts_t){.cert = client.cert_path,
                                      .key = client.key_path,
                                      .max_version = v ? TLS1_2_VERSION : 0},
               &pair);
    X509 *peer = SSL_get0_peer_certificate(pair.server);
    T_ASSERT(peer != NULL && X509_cmp(peer, client.cert) == 0);
    t_tls_pair_free(&pair);
  }

  t_case("required: no certificate, or one from another CA, is refused");
  must_fail(s, NULL, NULL);
  must_fail(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION}, "server failed");
  must_fail(s, &(t_tls_client_opts_t){.cert = stranger.cert_path, .key = stranger.key_path}, NULL);
  must_fail(s,
            &(t_tls_client_opts_t){.cert = stranger.cert_path,
                                   .key = stranger.key_path,
                                   .max_version = TLS1_2_VERSION},
            "server failed");
  tls_server_free(s);

  t_case("optional: served without a certificate, verified with one");
  cfg.ssl_cert_reqs = 1;
  s = started(&cfg);
  must_shake(s, NULL, &pair);
  T_ASSERT(SSL_get0_peer_certificate(pair.server) == NULL);
  t_tls_pair_free(&pair);
  must_shake(s, &(t_tls_client_opts_t){.cert = client.cert_path, .key = client.key_path}, &pair);
  T_ASSERT(SSL_get0_peer_certificate(pair.server) != NULL);
  t_tls_pair_free(&pair);
  must_fail(s,
            &(t_tls_client_opts_t){.cert = stranger.cert_path,
                                   .key = stranger.key_path,
                                   .max_version = TLS1_2_VERSION},
            "server failed");
  tls_server_free(s);

  t_case("none (the default): no certificate is asked for");
  base_config(&cfg);
  s = started(&cfg);
  must_shake(s, &(t_tls_client_opts_t){.cert = client.cert_path, .key = client.key_path}, &pair);
  T_ASSERT(SSL_get0_peer_certificate(pair.server) == NULL);
  t_tls_pair_free(&pair);
  tls_server_free(s);
}

/* A full handshake, then its session from the client. */
static SSL_SESSION *first_session(pmu_server_t *s, const t_tls_client_opts_t *o) {
  t_tls_pair_t pair;
  must_shake(s, o, &pair);
  T_ASSERT_INT_EQ(SSL_session_reused(pair.server), 0);
  SSL_SESSION *session = SSL_get1_session(pair.client);
  T_ASSERT(session != NULL && SSL_SESSION_is_resumable(session));
  t_tls_pair_free(&pair);
  return session;
}

/* Offer session: 1 if the server resumed it. */
static int resumes(pmu_server_t *s, SSL_SESSION *session, int max_version) {
  t_tls_pair_t pair;
  must_shake(s, &(t_tls_client_opts_t){.session = session, .max_version = max_version}, &pair);
  int reused = SSL_session_reused(pair.server);
  t_tls_pair_free(&pair);
  return reused;
}

static void test_resumption(void) {
  pmu_config_t cfg;
  base_config(&cfg);

  t_case("resumption with a ticket: TLS 1.3 and 1.2, from SSLs made apart (two ring threads)");
  pmu_server_t *s = started(&cfg);
  for (int v = 0; v < 2; v++) {
    int max = v ? TLS1_2_VERSION : 0;
    SSL_SESSION *session = first_session(s, &(t_tls_client_opts_t){.max_version = max});
    T_ASSERT(resumes(s, session, max));
    SSL_SESSION_free(session);
  }

  t_case("resumption survives a reload (the ticket keys are the server's)");
  SSL_SESSION *session = first_session(s, NULL);
  T_ASSERT_INT_EQ(pmu_server_tls_reload(s), 0);
  T_ASSERT(resumes(s, session, 0));
  SSL_SESSION_free(session);
  tls_server_free(s);

  t_case("another server's tickets are not accepted (keys are per server)");
  pmu_server_t *s1 = started(&cfg), *s2 = started(&cfg);
  session = first_session(s1, NULL);
  T_ASSERT(!resumes(s2, session, 0));
  SSL_SESSION_free(session);
  tls_server_free(s1);
  tls_server_free(s2);

  t_case("ssl_session_tickets off: no resumption");
  cfg.ssl_session_tickets = 0;
  s = started(&cfg);
  t_tls_pair_t pair;
  must_shake(s, NULL, &pair);
  session = SSL_get1_session(pair.client);
  t_tls_pair_free(&pair);
  T_ASSERT(!resumes(s, session, 0));
  SSL_SESSION_free(session);
  must_shake(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION}, &pair);
  session = SSL_get1_session(pair.client);
  t_tls_pair_free(&pair);
  T_ASSERT(!resumes(s, session, TLS1_2_VERSION));
  SSL_SESSION_free(session);
  tls_server_free(s);

  t_case("ticket keys rotate: a ticket resumes one rotation later, not two");
  base_config(&cfg);
  cfg.ssl_ticket_rotate_ms = 1500;
  /* Two servers: s sees a handshake in every period; quiet sees none in
   * period 1, so that its rotation into period 2 skips one. */
  int64_t t0 = t_now_ms(); /* their period 0 starts after this */
  s = started(&cfg);
  pmu_server_t *quiet = started(&cfg);
  int64_t t1 = t_now_ms(); /* ... and before this */
  session = first_session(s, NULL);
  SSL_SESSION *quiet_session = first_session(quiet, NULL);
  T_ASSERT_MSG(t_now_ms() < t0 + 1500, "the first handshakes took too long (%lld ms)",
               (long long)(t_now_ms() - t0));
  /* Period 1: [start + 1500, start + 3000). */
  t_sleep_ms((unsigned)(t1 + 1700 - t_now_ms()));
  T_ASSERT(resumes(s, session, 0));
  T_ASSERT_MSG(t_now_ms() < t0 + 3000, "period 1 passed before the check");
  /* Period 2 and later: the key of period 0 is gone from both. */
  t_sleep_ms((unsigned)(t1 + 3200 - t_now_ms()));
  T_ASSERT(!resumes(s, session, 0));
  T_ASSERT(!resumes(quiet, quiet_session, 0));
  SSL_SESSION_free(session);
  SSL_SESSION_free(quiet_session);
  tls_server_free(s);
  tls_server_free(quiet);
}

static void copy_file(const char *from, const char *to) {
  char buf[16384];
  FILE *f = fopen(from, "r");
  T_ASSERT(f != NULL);
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  T_ASSERT(n > 0 && n < sizeof buf);
  t_write_file(to, buf, n);
}

static void test_reload(void) {
  t_tls_pair_t pair;
  pmu_config_t cfg;
  char cert[600], key[600];
  snprintf(cert, sizeof cert, "%s/reload.crt", t_tls_dir());
  snprintf(key, sizeof key, "%s/reload.key", t_tls_dir());

  /* reload.crt/.key start as dflt's, then become a_rsa's. */
  t_case("reload: new handshakes get the new certificate, a held context keeps the old");
  const t_tls_cert_t *from = &dflt, *to = &a_rsa;
  copy_file(from->chain_path, cert);
  copy_file(from->key_path, key);
  base_config(&cfg);
  cfg.ssl_certfile = cert;
  cfg.ssl_keyfile = key;
  pmu_server_t *s = started(&cfg);
  pmu__tls_ctx_t *old = pmu__tls_ctx_acquire(s); /* a ring thread holds it */
  SSL *old_ssl = pmu__tls_ssl_new(old);          /* a connection mid-handshake */

  copy_file(to->chain_path, cert);
  copy_file(to->key_path, key);
  T_ASSERT_INT_EQ(pmu_server_tls_reload(s), 0);

  pmu__tls_ctx_t *fresh = pmu__tls_ctx_acquire(s);
  T_ASSERT(fresh != old);
  pmu__tls_ctx_release(fresh);
  must_shake(s, NULL, &pair);
  T_ASSERT(X509_cmp(served(&pair), to->cert) == 0);
  t_tls_pair_free(&pair);
  /* The old context still serves its certificate, after its last holder but
   * the SSL let go. */
  SSL *old_ssl2 = pmu__tls_ssl_new(old);
  pmu__tls_ctx_release(old);
  t_tls_pair_join(&pair, t_tls_client_ssl(NULL), old_ssl2);
  char why[600];
  T_ASSERT_MSG(t_tls_pair_handshake(&pair, why, sizeof why), "%s", why);
  T_ASSERT(X509_cmp(served(&pair), from->cert) == 0);
  t_tls_pair_free(&pair);
  t_tls_pair_join(&pair, t_tls_client_ssl(NULL), old_ssl);
  T_ASSERT_MSG(t_tls_pair_handshake(&pair, why, sizeof why), "%s", why);
  T_ASSERT(X509_cmp(served(&pair), from->cert) == 0);
  t_tls_pair_free(&pair);

  t_case("reload: a file that no longer loads changes nothing and says why");
  t_write_file(key, "garbage", 7);
  T_ASSERT_INT_EQ(pmu_server_tls_reload(s), -EINVAL);
  T_ASSERT_CONTAINS(pmu_server_error(s), strlen(pmu_server_error(s)), key);
  must_shake(s, NULL, &pair);
  T_ASSERT(X509_cmp(served(&pair), to->cert) == 0);
  t_tls_pair_free(&pair);
  tls_server_free(s);

  t_case("reload on a server without TLS: -EINVAL");
  pmu_server_t plain;
  memset(&plain, 0, sizeof plain);
  T_ASSERT_INT_EQ(pmu_server_tls_reload(&plain), -EINVAL);
  T_ASSERT(pmu__tls_ctx_acquire(&plain) == NULL);
}

/* Handshakes from "ring threads" while another thread reloads. */
static atomic_int reloads_left;

static void *handshaking(void *arg) {
  pmu_server_t *s = arg;
  for (int i = 0; i < 30; i++) {
    t_tls_pair_t pair;
    char why[600];
    pmu__tls_ctx_t *ctx = pmu__tls_ctx_acquire(s);
    SSL *server = pmu__tls_ssl_new(ctx);
    pmu__tls_ctx_release(ctx);
    if (!server)
      return "no SSL";
    t_tls_pair_join(&pair, t_tls_client_ssl(&(t_tls_client_opts_t){.sni = "a.test"}), server);
    int ok = t_tls_pair_handshake(&pair, why, sizeof why) && t_tls_pair_exchange(&pair);
    pmu__tls_snap_t *snap = ok ? pmu__tls_snap_new(pair.server) : NULL;
    t_tls_pair_free(&pair);
    if (!ok || !snap)
      return "a handshake failed during reloads";
    pmu_tls_info_t info;
    pmu__tls_snap_info(snap, &info);
    ok = info.server_cert_der_len > 0;
    pmu__tls_snap_unref(snap);
    if (!ok)
      return "no certificate in the snapshot";
  }
  return NULL;
}

static void *reloading(void *arg) {
  pmu_server_t *s = arg;
  while (atomic_fetch_sub(&reloads_left, 1) > 0)
    if (pmu_server_tls_reload(s) != 0)
      return "a reload failed";
  return NULL;
}

static void test_reload_threads(void) {
  t_case("reloads from one thread while two others acquire, make SSLs and handshake");
  pmu_config_t cfg;
  base_config(&cfg);
  pmu_tls_cert_t sni[] = {{.certfile = a_rsa.chain_path, .keyfile = a_rsa.key_path}};
  cfg.ssl_sni_certs = sni;
  cfg.ssl_sni_cert_count = 1;
  pmu_server_t *s = started(&cfg);
  atomic_store(&reloads_left, 20);
  pthread_t th[3];
  T_ASSERT(pthread_create(&th[0], NULL, reloading, s) == 0);
  T_ASSERT(pthread_create(&th[1], NULL, handshaking, s) == 0);
  T_ASSERT(pthread_create(&th[2], NULL, handshaking, s) == 0);
  for (int i = 0; i < 3; i++) {
    void *err;
    pthread_join(th[i], &err);
    T_ASSERT_MSG(err == NULL, "thread %d: %s", i, (const char *)err);
  }
  tls_server_free(s);
}

/* The OCSP response stapled to the client's handshake (NULL, 0: none). */
static long stapled(const t_tls_pair_t *pair, const unsigned char **der) {
  *der = NULL;
  long n = SSL_get_tlsext_status_ocsp_resp(pair->client, der);
  return n > 0 ? n : 0;
}

static void test_ocsp(void) {
  t_tls_pair_t pair;
  pmu_config_t cfg;
  char path[600], other_path[600], bad[600];
  unsigned char *der, *other_der;
  size_t len, other_len;
  const unsigned char *got;
  t_tls_make_ocsp(&ca, &dflt, "default", path, sizeof path, &der, &len);
  t_tls_make_ocsp(&ca, &a_rsa, "a", other_path, sizeof other_path, &other_der, &other_len);

  t_case("OCSP stapling: the response goes to a client that asks, TLS 1.3 and 1.2");
  base_config(&cfg);
  cfg.ssl_ocsp_file = path;
  pmu_tls_cert_t sni[] = {{.certfile = a_rsa.chain_path, .keyfile = a_rsa.key_path}};
  cfg.ssl_sni_certs = sni;
  cfg.ssl_sni_cert_count = 1;
  pmu_server_t *s = started(&cfg);
  for (int v = 0; v < 2; v++) {
    must_shake(
        s, &(t_tls_client_opts_t){.status_request = true, .max_version = v ? TLS1_2_VERSION : 0},
        &pair);
    T_ASSERT_INT_EQ(stapled(&pair, &got), (long)len);
    T_ASSERT(memcmp(got, der, len) == 0);
    t_tls_pair_free(&pair);
  }

  t_case("OCSP stapling: nothing for a client that does not ask, nor for an SNI certificate");
  must_shake(s, NULL, &pair);
  T_ASSERT_INT_EQ(stapled(&pair, &got), 0);
  t_tls_pair_free(&pair);
  must_shake(s, &(t_tls_client_opts_t){.status_request = true, .sni = "a.test"}, &pair);
  T_ASSERT(X509_cmp(served(&pair), a_rsa.cert) == 0);
  T_ASSERT_INT_EQ(stapled(&pair, &got), 0);
  t_tls_pair_free(&pair);

  t_case("OCSP stapling: a reload reads the file again");
  t_write_file(path, other_der, other_len);
  /* a response for another certificate: the reload fails and changes nothing */
  T_ASSERT_INT_EQ(pmu_server_tls_reload(s), -EINVAL);
  T_ASSERT_CONTAINS(pmu_server_error(s), strlen(pmu_server_error(s)), "serial");
  must_shake(s, &(t_tls_client_opts_t){.status_request = true}, &pair);
  T_ASSERT(stapled(&pair, &got) == (long)len && memcmp(got, der, len) == 0);
  t_tls_pair_free(&pair);
  unsigned char *fresh;
  size_t fresh_len;
  t_tls_make_ocsp(&ca, &dflt, "default-2", bad, sizeof bad, &fresh, &fresh_len);
  T_ASSERT(fresh_len != len || memcmp(fresh, der, len) != 0);
  t_write_file(path, fresh, fresh_len);
  T_ASSERT_INT_EQ(pmu_server_tls_reload(s), 0);
  must_shake(s, &(t_tls_client_opts_t){.status_request = true}, &pair);
  T_ASSERT(stapled(&pair, &got) == (long)fresh_len && memcmp(got, fresh, fresh_len) == 0);
  t_tls_pair_free(&pair);
  tls_server_free(s);

  t_case("OCSP stapling: a missing file, garbage, or another certificate's response fail "
         "the start");
  base_config(&cfg);
  cfg.ssl_ocsp_file = "/nonexistent/x.ocsp";
  const char *e = refused(&cfg, -ENOENT);
  T_ASSERT_CONTAINS(e, strlen(e), "/nonexistent/x.ocsp");
  snprintf(bad, sizeof bad, "%s/garbage.ocsp", t_tls_dir());
  t_write_file(bad, "\x30\x03\x0a\x01\x00garbage", 12);
  cfg.ssl_ocsp_file = bad;
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "ssl_ocsp_file");
  cfg.ssl_ocsp_file = other_path;
  e = refused(&cfg, -EINVAL);
  T_ASSERT_CONTAINS(e, strlen(e), "serial");

  t_case("OCSP stapling through a running server: a client on a socket gets the staple, "
         "then its answer");
  t_config_init(&cfg);
  cfg.ssl_certfile = dflt.chain_path;
  cfg.ssl_keyfile = dflt.key_path;
  cfg.ssl_ocsp_file = path; /* now holds `fresh` */
  t_server_t *ts = t_server_start(&cfg);
  char why[600], buf[4096];
  int fd;
  SSL *ssl = t_tls_connect(ts->port, &(t_tls_client_opts_t){.status_request = true},
                           T_IO_TIMEOUT_MS, &fd, why, sizeof why);
  T_ASSERT_MSG(ssl != NULL, "%s", why);
  long n = SSL_get_tlsext_status_ocsp_resp(ssl, &got);
  T_ASSERT(n == (long)fresh_len && memcmp(got, fresh, fresh_len) == 0);
  const char *req = "GET /ocsp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  T_ASSERT(t_tls_write_all(ssl, req, strlen(req)));
  long got_len = t_tls_read(ssl, buf, sizeof buf, NULL, T_IO_TIMEOUT_MS);
  T_ASSERT_CONTAINS(buf, (size_t)(got_len > 0 ? got_len : 0), "path=/ocsp");
  t_tls_close(ssl, fd);
  t_server_destroy(ts);
  OPENSSL_free(der);
  OPENSSL_free(other_der);
  OPENSSL_free(fresh);
}

static void test_snapshot(void) {
  t_tls_pair_t pair;
  pmu_config_t cfg;
  base_config(&cfg);
  cfg.ssl_ca_certs = ca.cert_path;
  cfg.ssl_cert_reqs = 1;
  cfg.ssl_alpn = "http/1.1";
  pmu_tls_cert_t sni[] = {{.certfile = a_rsa.chain_path, .keyfile = a_rsa.key_path}};
  cfg.ssl_sni_certs = sni;
  cfg.ssl_sni_cert_count = 1;
  pmu_server_t *s = started(&cfg);

  t_case("the snapshot: version, cipher, SNI, ALPN, the client's subject and chain, our "
         "certificate; valid after the SSL, the context and the server are gone");
  must_shake(
      s,
      &(t_tls_client_opts_t){
          .sni = "a.test", .alpn = "http/1.1", .cert = client.chain_path, .key = client.key_path},
      &pair);
  pmu__tls_snap_t *snap = pmu__tls_snap_new(pair.server);
  T_ASSERT(snap != NULL);
  t_tls_pair_free(&pair);
  tls_server_free(s);
  pmu__tls_snap_ref(snap);
  pmu__tls_snap_unref(snap);
  pmu_tls_info_t info;
  pmu__tls_snap_info(snap, &info);
  T_ASSERT_INT_EQ(info.version, 0x0304);
  T_ASSERT_STR_EQ(info.version_name, "TLSv1.3");
  T_ASSERT_INT_EQ(info.cipher_id, 0x1302); /* TLS_AES_256_GCM_SHA384: OpenSSL's first */
  T_ASSERT_STR_EQ(info.cipher, "TLS_AES_256_GCM_SHA384");
  T_ASSERT_STR_EQ(info.server_name, "a.test");
  T_ASSERT_STR_EQ(info.alpn, "http/1.1");
  T_ASSERT_INT_EQ(info.resumed, 0);
  T_ASSERT_INT_EQ(info.ktls_tx, 0);
  T_ASSERT_INT_EQ(info.ktls_rx, 0);
  T_ASSERT_INT_EQ(info.peer_cert, 1);
  T_ASSERT_STR_EQ(info.peer_subject, "CN=client one,O=pmu tests");
  T_ASSERT_INT_EQ(info.peer_chain_len, 2);
  size_t len;
  unsigned char *want = t_tls_der(client.cert, &len);
  const unsigned char *der;
  size_t der_len;
  T_ASSERT_INT_EQ(pmu__tls_snap_peer_cert(snap, 0, &der, &der_len), 0);
  T_ASSERT(der_len == len && memcmp(der, want, len) == 0);
  OPENSSL_free(want);
  want = t_tls_der(ca.cert, &len);
  T_ASSERT_INT_EQ(pmu__tls_snap_peer_cert(snap, 1, &der, &der_len), 0);
  T_ASSERT(der_len == len && memcmp(der, want, len) == 0);
  OPENSSL_free(want);
  T_ASSERT_INT_EQ(pmu__tls_snap_peer_cert(snap, 2, &der, &der_len), -ENOENT);
  want = t_tls_der(a_rsa.cert, &len);
  T_ASSERT(info.server_cert_der_len == len && memcmp(info.server_cert_der, want, len) == 0);
  OPENSSL_free(want);
  pmu__tls_snap_unref(snap);

  t_case("the snapshot of a plain TLS 1.2 session: no SNI, ALPN or client certificate; resumed");
  base_config(&cfg);
  s = started(&cfg);
  SSL_SESSION *session = first_session(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION});
  must_shake(s, &(t_tls_client_opts_t){.max_version = TLS1_2_VERSION, .session = session}, &pair);
  snap = pmu__tls_snap_new(pair.server);
  T_ASSERT(snap != NULL);
  pmu__tls_snap_info(snap, &info);
  T_ASSERT_INT_EQ(info.version, 0x0303);
  T_ASSERT_STR_EQ(info.version_name, "TLSv1.2");
  T_ASSERT_INT_EQ(info.cipher_id, SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(pair.client)));
  T_ASSERT_STR_EQ(info.server_name, NULL);
  T_ASSERT_STR_EQ(info.alpn, NULL);
  T_ASSERT_INT_EQ(info.resumed, 1);
  T_ASSERT_INT_EQ(info.peer_cert, 0);
  T_ASSERT_STR_EQ(info.peer_subject, NULL);
  T_ASSERT_INT_EQ(info.peer_chain_len, 0);
  T_ASSERT_INT_EQ(pmu__tls_snap_peer_cert(snap, 0, &der, &der_len), -ENOENT);
  want = t_tls_der(dflt.cert, &len);
  T_ASSERT(info.server_cert_der_len == len && memcmp(info.server_cert_der, want, len) == 0);
  OPENSSL_free(want);
  pmu__tls_snap_unref(snap);
  SSL_SESSION_free(session);
  t_tls_pair_free(&pair);
  tls_server_free(s);
}

static void test_ktls_probe(void) {
  t_case("the kTLS probe answers the same twice, with a reason, as pmu_probe does");
  char why[160], again[160];
  int k = pmu__ktls_probe(why, sizeof why);
  T_ASSERT(k == 0 || k == 1);
  T_ASSERT_INT_EQ(pmu__ktls_probe(again, sizeof again), k);
  T_ASSERT_STR_EQ(why, again);
  T_ASSERT(why[0] != 0);
  pmu_probe_t p;
  pmu_probe(&p);
  T_ASSERT_INT_EQ(p.ktls, k);
  T_ASSERT_STR_EQ(p.ktls_message, why);
  printf("# kTLS: %d, %s\n", k, why);
}

static void test_server_start(void) {
  t_case("pmu_server_start with a certificate that cannot load fails, naming the file");
  pmu_config_t cfg;
  base_config(&cfg);
  cfg.port = 0;
  cfg.handler = (pmu_batch_handler_fn)1; /* never called: the start fails first */
  cfg.ssl_keyfile = a_rsa.key_path;
  pmu_server_t *s = NULL;
  int rc = pmu_server_start(&cfg, &s);
  T_ASSERT_INT_EQ(rc, -EINVAL);
  T_ASSERT_CONTAINS(pmu_server_error(s), strlen(pmu_server_error(s)), "does not match");
  pmu_server_destroy(s);
}

int main(void) {
  t_init("tls_ctx");
  make_certs();
  test_versions();
  test_alpn();
  test_sni();
  test_keys();
  test_client_certs();
  test_snapshot();
  test_reload();
  test_reload_threads();
  test_ocsp();
  test_ktls_probe();
  test_server_start();
  test_resumption();
  t_tls_cert_t *all[] = {&ca, &other_ca, &dflt, &a_rsa, &wild, &cn_only, &enc, &client, &stranger};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    t_tls_cert_free(all[i]);
  return t_done();
}
