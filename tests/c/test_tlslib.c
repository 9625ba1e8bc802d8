/*
 * test_tlslib: the certificates and clients of tlslib.c are what the HTTPS
 * tests take them for: a chain that verifies against its CA (and not against
 * another), SAN names, an encrypted key that needs its password, and a client
 * that negotiates what it was told to (SNI, ALPN, versions, a client
 * certificate, resumption) against a plain OpenSSL server over the memory pair.
 */
#include "testlib.h"
#include "tlslib.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>

static t_tls_cert_t ca, other_ca, rsa, ec, client;

static bool verifies(X509 *cert, const t_tls_cert_t *root) {
  X509_STORE *store = X509_STORE_new();
  X509_STORE_add_cert(store, root->cert);
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, cert, NULL);
  bool ok = X509_verify_cert(ctx) == 1;
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  return ok;
}

static int password_cb(char *buf, int size, int rw, void *u) {
  const char *pw = u;
  int n = (int)strlen(pw);
  if (n > size)
    return -1;
  memcpy(buf, pw, (size_t)n);
  return n;
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg) {
  static const unsigned char ours[] = "\x08http/1.1";
  unsigned char *o;
  if (SSL_select_next_proto(&o, outlen, ours, sizeof ours - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = o;
  return SSL_TLSEXT_ERR_OK;
}

/* A plain OpenSSL server context with cert's files (client certificates
 * required when verify_ca is given). */
static SSL_CTX *server_ctx(const t_tls_cert_t *cert, const t_tls_cert_t *verify_ca) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  T_ASSERT(SSL_CTX_use_certificate_chain_file(ctx, cert->chain_path) == 1);
  T_ASSERT(SSL_CTX_use_PrivateKey_file(ctx, cert->both_path, SSL_FILETYPE_PEM) == 1);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
  SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"t", 1);
  if (verify_ca) {
    T_ASSERT(SSL_CTX_load_verify_locations(ctx, verify_ca->cert_path, NULL) == 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  }
  return ctx;
}

/* A server SSL from ctx (ctx released: the SSL holds it when owned is set). */
static SSL *server_ssl_from(SSL_CTX *ctx, bool owned) {
  SSL *ssl = SSL_new(ctx);
  if (owned)
    SSL_CTX_free(ctx);
  SSL_set_accept_state(ssl);
  return ssl;
}

static SSL *server_ssl(const t_tls_cert_t *cert, const t_tls_cert_t *verify_ca) {
  return server_ssl_from(server_ctx(cert, verify_ca), true);
}

int main(void) {
  t_init("tlslib");
  const char *const names[] = {"a.test", "*.b.test", NULL};

  t_case("a CA and certificates signed by it, RSA and ECDSA, with SAN names");
  t_tls_make_ca("ca", &ca);
  t_tls_make_ca("other-ca", &other_ca);
  t_tls_make_cert(&ca, "rsa", &(t_tls_cert_opts_t){.kind = T_TLS_RSA2048, .dns = names}, &rsa);
  t_tls_make_cert(&ca, "ec", &(t_tls_cert_opts_t){.kind = T_TLS_ECDSA_P256, .dns = names}, &ec);
  T_ASSERT_INT_EQ(EVP_PKEY_get_base_id(rsa.key), EVP_PKEY_RSA);
  T_ASSERT_INT_EQ(EVP_PKEY_get_bits(rsa.key), 2048);
  T_ASSERT_INT_EQ(EVP_PKEY_get_base_id(ec.key), EVP_PKEY_EC);
  T_ASSERT(verifies(rsa.cert, &ca) && verifies(ec.cert, &ca));
  T_ASSERT(!verifies(rsa.cert, &other_ca));
  T_ASSERT(X509_check_host(ec.cert, "a.test", 0, 0, NULL) == 1);
  T_ASSERT(X509_check_host(ec.cert, "x.b.test", 0, 0, NULL) == 1);
  T_ASSERT(X509_check_host(ec.cert, "c.test", 0, 0, NULL) == 0);

  t_case("an encrypted key opens with its password only");
  t_tls_make_cert(
      &ca, "client",
      &(t_tls_cert_opts_t){
          .kind = T_TLS_ECDSA_P256, .cn = "client one", .client = true, .password = "secret"},
      &client);
  FILE *f = fopen(client.key_path, "r");
  T_ASSERT(f != NULL);
  EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, password_cb, (void *)"wrong");
  T_ASSERT(k == NULL);
  rewind(f);
  k = PEM_read_PrivateKey(f, NULL, password_cb, (void *)"secret");
  T_ASSERT(k != NULL && EVP_PKEY_eq(k, client.key) == 1);
  EVP_PKEY_free(k);
  fclose(f);
  ERR_clear_error();

  t_case("the memory pair: SNI, ALPN and the version the client asked for");
  t_tls_pair_t pair;
  char why[512];
  t_tls_pair_join(&pair,
                  t_tls_client_ssl(&(t_tls_client_opts_t){.sni = "a.test",
                                                          .alpn = "h2,http/1.1",
                                                          .max_version = TLS1_2_VERSION,
                                                          .ca_file = ca.cert_path}),
                  server_ssl(&rsa, NULL));
  T_ASSERT_MSG(t_tls_pair_handshake(&pair, why, sizeof why), "%s", why);
  T_ASSERT_INT_EQ(SSL_version(pair.client), TLS1_2_VERSION);
  T_ASSERT_STR_EQ(SSL_get_servername(pair.server, TLSEXT_NAMETYPE_host_name), "a.test");
  const unsigned char *p;
  unsigned plen;
  SSL_get0_alpn_selected(pair.client, &p, &plen);
  T_ASSERT(plen == 8 && memcmp(p, "http/1.1", 8) == 0);
  T_ASSERT(t_tls_pair_exchange(&pair));
  t_tls_pair_free(&pair);

  t_case("the memory pair: a server name the certificate lacks fails verification");
  t_tls_pair_join(
      &pair, t_tls_client_ssl(&(t_tls_client_opts_t){.sni = "c.test", .ca_file = ca.cert_path}),
      server_ssl(&ec, NULL));
  T_ASSERT(!t_tls_pair_handshake(&pair, why, sizeof why));
  T_ASSERT_CONTAINS(why, strlen(why), "client failed");
  t_tls_pair_free(&pair);

  t_case("the memory pair: a client certificate with an encrypted key, TLS 1.3, resumed");
  /* The client's key file is encrypted: the client takes the combined file. */
  SSL_SESSION *session = NULL;
  SSL_CTX *shared = server_ctx(&ec, &ca); /* its ticket keys decrypt the second round's */
  for (int round = 0; round < 2; round++) {
    t_tls_pair_join(&pair,
                    t_tls_client_ssl(&(t_tls_client_opts_t){
                        .cert = client.cert_path, .key = client.both_path, .session = session}),
                    server_ssl_from(shared, false));
    T_ASSERT_MSG(t_tls_pair_handshake(&pair, why, sizeof why), "%s", why);
    T_ASSERT_INT_EQ(SSL_version(pair.server), TLS1_3_VERSION);
    T_ASSERT(t_tls_pair_exchange(&pair));
    T_ASSERT_INT_EQ(SSL_session_reused(pair.server), round);
    X509 *peer = SSL_get0_peer_certificate(pair.server);
    T_ASSERT(peer != NULL && X509_cmp(peer, client.cert) == 0);
    if (!session)
      session = SSL_get1_session(pair.client);
    T_ASSERT(session != NULL);
    t_tls_pair_free(&pair);
  }
  SSL_SESSION_free(session);
  SSL_CTX_free(shared);

  t_case("the memory pair: a client certificate from another CA is refused");
  t_tls_cert_t stranger;
  t_tls_make_cert(&other_ca, "stranger", &(t_tls_cert_opts_t){.client = true}, &stranger);
  t_tls_pair_join(&pair, t_tls_client_ssl(&(t_tls_client_opts_t){.cert = stranger.both_path}),
                  server_ssl(&ec, &ca));
  T_ASSERT(!t_tls_pair_handshake(&pair, why, sizeof why) || !t_tls_pair_exchange(&pair));
  t_tls_pair_free(&pair);
  t_tls_cert_free(&stranger);

  t_tls_cert_free(&client);
  t_tls_cert_free(&ec);
  t_tls_cert_free(&rsa);
  t_tls_cert_free(&other_ca);
  t_tls_cert_free(&ca);
  return t_done();
}
