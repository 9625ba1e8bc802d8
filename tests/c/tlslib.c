/*
 * tlslib.c: see tlslib.h.
 */
#include "tlslib.h"
#include "testlib.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

/* ---- the directory ---- */

static char tls_dir[64];

static void remove_dir(void) {
  DIR *d = opendir(tls_dir);
  if (!d)
    return;
  struct dirent *e;
  char path[600];
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(path, sizeof path, "%s/%s", tls_dir, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(tls_dir);
}

const char *t_tls_dir(void) {
  if (!tls_dir[0]) {
    snprintf(tls_dir, sizeof tls_dir, "/tmp/pmu-tls-XXXXXX");
    if (!mkdtemp(tls_dir))
      T_FAIL("mkdtemp %s: %s", tls_dir, strerror(errno));
    atexit(remove_dir);
  }
  return tls_dir;
}

const char *t_tls_errors(char *buf, size_t len) {
  size_t used = 0;
  buf[0] = 0;
  unsigned long e;
  while ((e = ERR_get_error()) != 0 && used + 2 < len) {
    char one[256];
    ERR_error_string_n(e, one, sizeof one);
    int n = snprintf(buf + used, len - used, "%s%s", used ? "; " : "", one);
    if (n < 0)
      break;
    used += (size_t)n < len - used ? (size_t)n : len - used - 1;
  }
  ERR_clear_error();
  return buf;
}

/* ---- certificates ---- */

static EVP_PKEY *new_key(t_tls_key_kind kind) {
  EVP_PKEY *key = kind == T_TLS_ECDSA_P256 ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
  if (!key) {
    char err[512];
    T_FAIL("key generation failed: %s", t_tls_errors(err, sizeof err));
  }
  return key;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  if (!ext || !X509_add_ext(cert, ext, -1)) {
    char err[512];
    T_FAIL("extension %s=%s: %s", OBJ_nid2sn(nid), value, t_tls_errors(err, sizeof err));
  }
  X509_EXTENSION_free(ext);
}

static void path_in_dir(char *out, size_t len, const char *name, const char *suffix) {
  snprintf(out, len, "%s/%s%s", t_tls_dir(), name, suffix);
}

static FILE *open_out(const char *path) {
  FILE *f = fopen(path, "w");
  if (!f)
    T_FAIL("cannot write %s: %s", path, strerror(errno));
  return f;
}

static void write_cert(const char *path, X509 *first, X509 *second, EVP_PKEY *key,
                       const char *password) {
  FILE *f = open_out(path);
  int ok = first ? PEM_write_X509(f, first) : 1;
  if (ok && second)
    ok = PEM_write_X509(f, second);
  if (ok && key)
    ok = password ? PEM_write_PrivateKey(f, key, EVP_aes_256_cbc(), NULL, 0, NULL, (void *)password)
                  : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
  if (fclose(f) != 0 || !ok)
    T_FAIL("cannot write %s", path);
}

/* A certificate for `key`, named cn, issued by issuer (NULL: self-signed). */
static X509 *new_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key) {
  X509 *cert = X509_new();
  T_ASSERT(cert != NULL);
  X509_set_version(cert, 2);
  unsigned char serial[8];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 30L * 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME *name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"pmu tests", -1, -1,
                             0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
  X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name);
  return cert;
}

static void sign(X509 *cert, EVP_PKEY *key) {
  if (!X509_sign(cert, key, EVP_sha256())) {
    char err[512];
    T_FAIL("X509_sign: %s", t_tls_errors(err, sizeof err));
  }
}

void t_tls_make_ca(const char *name, t_tls_cert_t *ca) {
  memset(ca, 0, sizeof *ca);
  ca->key = new_key(T_TLS_ECDSA_P256);
  ca->cert = new_cert(ca->key, name, NULL, NULL);
  add_ext(ca->cert, ca->cert, NID_basic_constraints, "critical,CA:TRUE");
  add_ext(ca->cert, ca->cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(ca->cert, ca->cert, NID_subject_key_identifier, "hash");
  sign(ca->cert, ca->key);
  path_in_dir(ca->cert_path, sizeof ca->cert_path, name, ".crt");
  path_in_dir(ca->key_path, sizeof ca->key_path, name, ".key");
  write_cert(ca->cert_path, ca->cert, NULL, NULL, NULL);
  write_cert(ca->key_path, NULL, NULL, ca->key, NULL);
}

void t_tls_make_cert(const t_tls_cert_t *ca, const char *name, const t_tls_cert_opts_t *opts,
                     t_tls_cert_t *out) {
  memset(out, 0, sizeof *out);
  const char *cn = opts->cn ? opts->cn : opts->dns && opts->dns[0] ? opts->dns[0] : "t";
  out->key = new_key(opts->kind);
  out->cert = new_cert(out->key, cn, ca->cert, ca->key);
  add_ext(out->cert, ca->cert, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(out->cert, ca->cert, NID_key_usage,
          opts->kind == T_TLS_RSA2048 ? "critical,digitalSignature,keyEncipherment"
                                      : "critical,digitalSignature");
  add_ext(out->cert, ca->cert, NID_ext_key_usage, opts->client ? "clientAuth" : "serverAuth");
  add_ext(out->cert, ca->cert, NID_authority_key_identifier, "keyid:always");
  if (opts->dns && opts->dns[0]) {
    char san[1024] = "";
    size_t used = 0;
    for (size_t i = 0; opts->dns[i]; i++)
      used +=
          (size_t)snprintf(san + used, sizeof san - used, "%sDNS:%s", i ? "," : "", opts->dns[i]);
    T_ASSERT(used < sizeof san);
    add_ext(out->cert, ca->cert, NID_subject_alt_name, san);
  }
  sign(out->cert, ca->key);
  path_in_dir(out->cert_path, sizeof out->cert_path, name, ".crt");
  path_in_dir(out->key_path, sizeof out->key_path, name, ".key");
  path_in_dir(out->both_path, sizeof out->both_path, name, "-both.pem");
  path_in_dir(out->chain_path, sizeof out->chain_path, name, "-chain.pem");
  write_cert(out->cert_path, out->cert, NULL, NULL, NULL);
  write_cert(out->key_path, NULL, NULL, out->key, opts->password);
  write_cert(out->both_path, out->cert, NULL, out->key, NULL);
  write_cert(out->chain_path, out->cert, ca->cert, NULL, NULL);
}

void t_tls_cert_free(t_tls_cert_t *cert) {
  X509_free(cert->cert);
  EVP_PKEY_free(cert->key);
  cert->cert = NULL;
  cert->key = NULL;
}

unsigned char *t_tls_der(X509 *cert, size_t *len) {
  unsigned char *der = NULL;
  int n = i2d_X509(cert, &der);
  T_ASSERT(n > 0);
  *len = (size_t)n;
  return der;
}

/* ---- the client ---- */

/* "a,b" as ALPN's wire format into out; its length. */
static size_t alpn_wire(const char *list, unsigned char *out, size_t cap) {
  size_t used = 0;
  while (*list) {
    const char *end = strchr(list, ',');
    size_t n = end ? (size_t)(end - list) : strlen(list);
    T_ASSERT(n > 0 && n < 256 && used + 1 + n <= cap);
    out[used++] = (unsigned char)n;
    memcpy(out + used, list, n);
    used += n;
    list += n + (end ? 1 : 0);
  }
  return used;
}

SSL *t_tls_client_ssl(const t_tls_client_opts_t *o) {
  static const t_tls_client_opts_t none;
  if (!o)
    o = &none;
  char err[512];
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  T_ASSERT(ctx != NULL);
  SSL_CTX_set_min_proto_version(ctx, o->min_version ? o->min_version : TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, o->max_version ? o->max_version : TLS1_3_VERSION);
  if (o->ciphers && !SSL_CTX_set_cipher_list(ctx, o->ciphers))
    T_FAIL("client ciphers %s: %s", o->ciphers, t_tls_errors(err, sizeof err));
  if (o->ciphersuites && !SSL_CTX_set_ciphersuites(ctx, o->ciphersuites))
    T_FAIL("client suites %s: %s", o->ciphersuites, t_tls_errors(err, sizeof err));
  if (o->cert) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, o->key ? o->key : o->cert, SSL_FILETYPE_PEM) != 1)
      T_FAIL("client certificate %s: %s", o->cert, t_tls_errors(err, sizeof err));
  }
  if (o->ca_file) {
    if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1)
      T_FAIL("client CA %s: %s", o->ca_file, t_tls_errors(err, sizeof err));
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  SSL *ssl = SSL_new(ctx);
  SSL_CTX_free(ctx); /* the SSL holds it */
  T_ASSERT(ssl != NULL);
  if (o->sni) {
    SSL_set_tlsext_host_name(ssl, o->sni);
    if (o->ca_file)
      SSL_set1_host(ssl, o->sni);
  }
  if (o->alpn) {
    unsigned char wire[256];
    size_t n = alpn_wire(o->alpn, wire, sizeof wire);
    T_ASSERT(SSL_set_alpn_protos(ssl, wire, (unsigned)n) == 0);
  }
  if (o->session)
    T_ASSERT(SSL_set_session(ssl, o->session) == 1);
  SSL_set_connect_state(ssl);
  return ssl;
}

/* Wait until fd is ready for what SSL wants (err: SSL_ERROR_WANT_*); false on timeout. */
static bool wait_io(int fd, int err, int64_t until) {
  int left = (int)(until - t_now_ms());
  if (left <= 0)
    return false;
  struct pollfd p = {.fd = fd, .events = err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
  return poll(&p, 1, left) == 1;
}

static void describe_failure(SSL *ssl, int err, char *why, size_t len) {
  char errs[400];
  t_tls_errors(errs, sizeof errs);
  snprintf(why, len, "SSL error %d (errno %d) %s", err, errno, errs);
}

SSL *t_tls_connect(uint16_t port, const t_tls_client_opts_t *opts, int timeout_ms, int *fd,
                   char *why, size_t why_len) {
  *fd = -1;
  why[0] = 0;
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  T_ASSERT(s >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
    snprintf(why, why_len, "connect: %s", strerror(errno));
    close(s);
    return NULL;
  }
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
  SSL *ssl = t_tls_client_ssl(opts);
  SSL_set_fd(ssl, s);
  int64_t until = t_now_ms() + timeout_ms;
  for (;;) {
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    if (rc == 1)
      break;
    int err = SSL_get_error(ssl, rc);
    if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) && wait_io(s, err, until))
      continue;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
      snprintf(why, why_len, "handshake timed out after %d ms", timeout_ms);
    else
      describe_failure(ssl, err, why, why_len);
    SSL_free(ssl);
    close(s);
    return NULL;
  }
  *fd = s;
  return ssl;
}

bool t_tls_write_all(SSL *ssl, const void *data, size_t len) {
  const char *p = data;
  int64_t until = t_now_ms() + T_IO_TIMEOUT_MS;
  while (len > 0) {
    size_t done = 0;
    int rc = SSL_write_ex(ssl, p, len, &done);
    if (rc == 1) {
      p += done;
      len -= done;
      continue;
    }
    int err = SSL_get_error(ssl, rc);
    if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) &&
        wait_io(SSL_get_fd(ssl), err, until))
      continue;
    return false;
  }
  return true;
}

long t_tls_read(SSL *ssl, char *buf, size_t cap, const char *until_text, int timeout_ms) {
  size_t used = 0;
  int64_t until = t_now_ms() + timeout_ms;
  while (used + 1 < cap) {
    size_t got = 0;
    int rc = SSL_read_ex(ssl, buf + used, cap - 1 - used, &got);
    if (rc == 1) {
      used += got;
      buf[used] = 0;
      if (until_text && t_memmem(buf, used, until_text))
        break;
      continue;
    }
    int err = SSL_get_error(ssl, rc);
    if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) &&
        wait_io(SSL_get_fd(ssl), err, until))
      continue;
    if (used == 0 && err != SSL_ERROR_ZERO_RETURN && err != SSL_ERROR_WANT_READ)
      return -1;
    break;
  }
  buf[used] = 0;
  ERR_clear_error();
  return (long)used;
}

void t_tls_close(SSL *ssl, int fd) {
  if (ssl) {
    SSL_shutdown(ssl);
    SSL_free(ssl);
  }
  if (fd >= 0)
    close(fd);
  ERR_clear_error();
}

/* ---- two SSLs in memory ---- */

void t_tls_pair_join(t_tls_pair_t *pair, SSL *client, SSL *server) {
  BIO *c = NULL, *s = NULL;
  T_ASSERT(BIO_new_bio_pair(&c, 0, &s, 0) == 1);
  SSL_set_bio(client, c, c);
  SSL_set_bio(server, s, s);
  pair->client = client;
  pair->server = server;
}

/* One step of one side's handshake: 1 done, 0 wants more, -1 failed. */
static int step(SSL *ssl, int *done) {
  if (*done)
    return 1;
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl);
  if (rc == 1) {
    *done = 1;
    return 1;
  }
  int err = SSL_get_error(ssl, rc);
  return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

int t_tls_pair_handshake(t_tls_pair_t *pair, char *why, size_t why_len) {
  int cdone = 0, sdone = 0;
  why[0] = 0;
  for (int round = 0; round < 20; round++) {
    int c = step(pair->client, &cdone);
    if (c < 0) {
      char errs[400];
      snprintf(why, why_len, "client failed: %s", t_tls_errors(errs, sizeof errs));
      return 0;
    }
    int s = step(pair->server, &sdone);
    if (s < 0) {
      char errs[400];
      snprintf(why, why_len, "server failed: %s", t_tls_errors(errs, sizeof errs));
      /* Let the client read the server's alert, as a real client would. */
      step(pair->client, &cdone);
      ERR_clear_error();
      return 0;
    }
    if (cdone && sdone)
      return 1;
  }
  snprintf(why, why_len, "handshake stalled");
  return 0;
}

static bool move(SSL *from, SSL *to, const char *text) {
  size_t n = strlen(text), done = 0;
  if (SSL_write_ex(from, text, n, &done) != 1 || done != n)
    return false;
  char buf[256];
  size_t got = 0;
  /* The receiver may first read post-handshake messages (tickets). */
  for (int i = 0; i < 4; i++) {
    if (SSL_read_ex(to, buf, sizeof buf, &got) == 1)
      return got == n && memcmp(buf, text, n) == 0;
    int err = SSL_get_error(to, 0);
    if (err != SSL_ERROR_WANT_READ)
      return false;
  }
  return false;
}

bool t_tls_pair_exchange(t_tls_pair_t *pair) {
  bool ok = move(pair->client, pair->server, "ping") && move(pair->server, pair->client, "pong");
  ERR_clear_error();
  return ok;
}

void t_tls_pair_free(t_tls_pair_t *pair) {
  /* A session freed without a close_notify sent is marked not resumable. */
  SSL_shutdown(pair->client);
  SSL_shutdown(pair->server);
  SSL_free(pair->client);
  SSL_free(pair->server);
  pair->client = pair->server = NULL;
  ERR_clear_error();
}
