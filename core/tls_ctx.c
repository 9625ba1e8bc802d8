/*
 * tls_ctx.c: the configuration side of the engine's TLS.
 *
 * A server with cfg.ssl_certfile owns a pmu__tls_server: copies of the TLS
 * settings (the caller's strings are not kept), the session ticket keys, and
 * the current pmu__tls_ctx. A pmu__tls_ctx is one loaded configuration: an
 * SSL_CTX per certificate (the SNI certificates in config order, then
 * ssl_certfile's, which answers when no name matches), the names each answers
 * for, and the ALPN list. It is refcounted: the transport takes a reference
 * for each connection it accepts (pmu__tls_ctx_acquire), every SSL made from
 * it holds one too (SSL ex_data, dropped by SSL_free), and
 * pmu_server_tls_reload() swaps in a new one under a lock, so that a ring
 * thread never sees a configuration freed under it.
 *
 * Session tickets: the keys are random, made here (never read from disk),
 * one per period of ssl_ticket_rotate_ms counted from the server's start,
 * shared by every SSL_CTX of the server and every reload (a reload does not
 * end resumption). A ticket made under the key of period p is accepted during
 * periods p and p + 1 (then renewed: a new ticket under the current key), and
 * not after. OpenSSL's own session cache is off: resumption is by ticket only,
 * so it works across ring threads and holds no memory per session.
 *
 * OCSP stapling (ssl_ocsp_file) is nginx's ssl_stapling_file: a response the
 * operator fetches and refreshes, read and checked with the certificates (at
 * start and by a reload), sent verbatim to a client that asks.
 *
 * ssl_cert_per_conn: one SSL_CTX with every setting and no certificate; the
 * handler's pmu_tls_certs_t (a parsed chain, key, CA store and verify mode,
 * refcounted) is put on each SSL by pmu__tls_certs_apply, with a session id
 * context of its own: a session resumes only under the handle it was made
 * with (a ticket from a connection that was not asked for a client
 * certificate cannot skip the verification of another handle).
 *
 * The snapshot (pmu__tls_snap_t) is one malloc'd block holding the
 * pmu_tls_info_t strings and DER: immutable after pmu__tls_snap_new, freed by
 * its last unref, independent of the server and the context.
 */
#include "internal.h"
#include "tls.h"

#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/opensslconf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/* TLS 1.2 ciphers when ssl_ciphers is NULL: ECDHE key exchange with an AEAD
 * only (Mozilla's "intermediate" profile without its DHE suites). */
#define DEFAULT_CIPHERS                                                                      \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* ---- ticket keys ---- */

typedef struct ticket_key {
  unsigned char name[16];
  unsigned char aes[32];  /* AES-256-CBC */
  unsigned char hmac[32]; /* HMAC-SHA256 */
  uint64_t period;        /* the rotation period it was made for */
  int valid;
} ticket_key_t;

typedef struct tickets {
  atomic_long refs;
  pthread_mutex_t lock;
  uint64_t start_ms;  /* period 0 starts here (monotonic) */
  uint64_t period_ms; /* ssl_ticket_rotate_ms */
  ticket_key_t current, previous;
} tickets_t;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int make_key(ticket_key_t *k, uint64_t period) {
  if (RAND_bytes(k->name, sizeof k->name) != 1 || RAND_priv_bytes(k->aes, sizeof k->aes) != 1 ||
      RAND_priv_bytes(k->hmac, sizeof k->hmac) != 1)
    return -1;
  k->period = period;
  k->valid = 1;
  return 0;
}

static tickets_t *tickets_new(unsigned period_ms) {
  tickets_t *t = calloc(1, sizeof *t);
  if (!t)
    return NULL;
  atomic_init(&t->refs, 1);
  pthread_mutex_init(&t->lock, NULL);
  t->start_ms = now_ms();
  t->period_ms = period_ms ? period_ms : 1000;
  if (make_key(&t->current, 0) < 0) {
    pthread_mutex_destroy(&t->lock);
    free(t);
    return NULL;
  }
  return t;
}

static void tickets_unref(tickets_t *t) {
  if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
    return;
  pthread_mutex_destroy(&t->lock);
  OPENSSL_cleanse(t, sizeof *t);
  free(t);
}

/* Under t->lock: make the current key the one of this period (rotating, or
 * starting afresh when more than one period passed). -1: no randomness. */
static int tickets_rotate(tickets_t *t) {
  uint64_t period = (now_ms() - t->start_ms) / t->period_ms;
  if (period == t->current.period)
    return 0;
  ticket_key_t fresh;
  if (make_key(&fresh, period) < 0)
    return -1;
  if (period == t->current.period + 1)
    t->previous = t->current;
  else
    OPENSSL_cleanse(&t->previous, sizeof t->previous);
  t->current = fresh;
  OPENSSL_cleanse(&fresh, sizeof fresh);
  return 0;
}

/* ---- configurations ---- */

typedef struct cert_slot {
  SSL_CTX *ctx;
  char **names; /* lower case DNS names it answers for ("*.x" wildcards) */
  size_t nnames;
  unsigned char *der; /* the leaf certificate as DER, for snapshots */
  size_t der_len;
} cert_slot_t;

struct pmu__tls_ctx {
  atomic_long refs;
  cert_slot_t *slots; /* SNI certificates in config order, then ssl_certfile's (the last) */
  size_t nslots;
  unsigned char *alpn; /* the ALPN list in wire format; NULL: no ALPN */
  size_t alpn_len;
  unsigned char *ocsp; /* ssl_ocsp_file's DER response, stapled for the last slot; NULL: none */
  size_t ocsp_len;
  tickets_t *tickets; /* a reference */
};

typedef struct pmu__tls_server {
  pthread_mutex_t lock;        /* guards current */
  pthread_mutex_t reload_lock; /* one reload at a time */
  pmu__tls_ctx_t *current;
  tickets_t *tickets;
  int ktls; /* SSL_OP_ENABLE_KTLS: ssl_ktls and the probe said yes */
  /* Copies of the settings the config named (s->cfg points at them). */
  char *certfile, *keyfile, *password, *ca_certs, *ciphers, *suites, *min_version, *alpn, *ocsp;
  pmu_tls_cert_t *sni;
  size_t nsni;
} pmu__tls_server_t;

/* SSL ex_data: the pmu__tls_ctx an SSL was made from (a reference). */
static pthread_once_t index_once = PTHREAD_ONCE_INIT;
static int ssl_ctx_index = -1;

static void ssl_ctx_ref_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                             void *argp) {
  if (ptr)
    pmu__tls_ctx_release(ptr);
}

static void make_index(void) {
  ssl_ctx_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, ssl_ctx_ref_free);
}

static pmu__tls_ctx_t *ctx_of(SSL *ssl) { return SSL_get_ex_data(ssl, ssl_ctx_index); }

static void ctx_free(pmu__tls_ctx_t *c) {
  for (size_t i = 0; i < c->nslots; i++) {
    SSL_CTX_free(c->slots[i].ctx);
    for (size_t k = 0; k < c->slots[i].nnames; k++)
      free(c->slots[i].names[k]);
    free(c->slots[i].names);
    OPENSSL_free(c->slots[i].der);
  }
  free(c->slots);
  free(c->alpn);
  free(c->ocsp);
  tickets_unref(c->tickets);
  free(c);
}

void pmu__tls_ctx_release(pmu__tls_ctx_t *ctx) {
  if (ctx && atomic_fetch_sub(&ctx->refs, 1) == 1)
    ctx_free(ctx);
}

pmu__tls_ctx_t *pmu__tls_ctx_acquire(pmu_server_t *s) {
  pmu__tls_server_t *t = s->tls;
  if (!t)
    return NULL;
  pthread_mutex_lock(&t->lock);
  pmu__tls_ctx_t *c = t->current;
  atomic_fetch_add(&c->refs, 1);
  pthread_mutex_unlock(&t->lock);
  return c;
}

/* ---- callbacks ---- */

/* Does the certificate name `pattern` (lower case) answer for `host` (lower
 * case)? A leading "*." matches exactly one non-empty label. */
static int name_matches(const char *pattern, const char *host) {
  if (pattern[0] == '*' && pattern[1] == '.') {
    const char *dot = strchr(host, '.');
    return dot && dot != host && strcmp(dot, pattern + 1) == 0;
  }
  return strcmp(pattern, host) == 0;
}

/* The SNI (servername) callback: switch to the first certificate that answers
 * for the name the client sent; none: stay on ssl_certfile's. */
static int on_servername(SSL *ssl, int *alert, void *arg) {
  pmu__tls_ctx_t *c = ctx_of(ssl);
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!c || !name || c->nslots < 2)
    return SSL_TLSEXT_ERR_OK;
  char host[256];
  size_t n = strlen(name);
  if (n && name[n - 1] == '.')
    n--; /* an absolute name */
  if (n == 0 || n >= sizeof host)
    return SSL_TLSEXT_ERR_OK;
  for (size_t i = 0; i < n; i++)
    host[i] = (char)tolower((unsigned char)name[i]);
  host[n] = 0;
  for (size_t i = 0; i < c->nslots; i++)
    for (size_t k = 0; k < c->slots[i].nnames; k++)
      if (name_matches(c->slots[i].names[k], host)) {
        if (i != c->nslots - 1 && !SSL_set_SSL_CTX(ssl, c->slots[i].ctx)) {
          *alert = SSL_AD_INTERNAL_ERROR;
          return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        return SSL_TLSEXT_ERR_OK;
      }
  return SSL_TLSEXT_ERR_OK;
}

/* ALPN: the first of our protocols (in our order) that the client offers; a
 * client offering none of them gets the no_application_protocol alert. */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg) {
  pmu__tls_ctx_t *c = ctx_of(ssl);
  if (!c || !c->alpn)
    return SSL_TLSEXT_ERR_NOACK;
  unsigned char *chosen = NULL;
  if (SSL_select_next_proto(&chosen, outlen, c->alpn, (unsigned)c->alpn_len, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

/* The ticket key callback (OpenSSL 3's EVP form). enc: encrypt a new ticket
 * under the current key. Else find the ticket's key: 1 the current one, 2 the
 * previous one (accepted, and a new ticket is issued), 0 none (a full
 * handshake), -1 failure. */
static int on_ticket_key(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc) {
  pmu__tls_ctx_t *c = ctx_of(ssl);
  if (!c)
    return -1;
  tickets_t *t = c->tickets;
  ticket_key_t key;
  int rc;
  pthread_mutex_lock(&t->lock);
  if (tickets_rotate(t) < 0) {
    pthread_mutex_unlock(&t->lock);
    return -1;
  }
  if (enc) {
    key = t->current;
    rc = 1;
  } else if (memcmp(key_name, t->current.name, 16) == 0) {
    key = t->current;
    rc = 1;
  } else if (t->previous.valid && memcmp(key_name, t->previous.name, 16) == 0) {
    key = t->previous;
    rc = 2;
  } else {
    rc = 0;
  }
  pthread_mutex_unlock(&t->lock);
  if (rc == 0)
    return 0;
  OSSL_PARAM params[3];
  params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof key.hmac);
  params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
  params[2] = OSSL_PARAM_construct_end();
  if (enc) {
    memcpy(key_name, key.name, 16);
    if (RAND_bytes(iv, 16) != 1 ||
        EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes, iv) != 1)
      rc = -1;
  } else if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes, iv) != 1) {
    rc = -1;
  }
  if (rc > 0 && EVP_MAC_CTX_set_params(hctx, params) != 1)
    rc = -1;
  OPENSSL_cleanse(&key, sizeof key);
  return rc;
}

/* OCSP stapling: a client that sent status_request, served ssl_certfile's
 * certificate, gets ssl_ocsp_file's response (OpenSSL frees the copy). */
static int on_status(SSL *ssl, void *arg) {
  pmu__tls_ctx_t *c = ctx_of(ssl);
  if (!c || !c->ocsp || SSL_get_SSL_CTX(ssl) != c->slots[c->nslots - 1].ctx)
    return SSL_TLSEXT_ERR_NOACK;
  unsigned char *copy = OPENSSL_memdup(c->ocsp, c->ocsp_len);
  if (!copy || !SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)c->ocsp_len)) {
    OPENSSL_free(copy);
    return SSL_TLSEXT_ERR_NOACK;
  }
  return SSL_TLSEXT_ERR_OK;
}

/* What the password callback is given: the password (NULL: none), and
 * whether OpenSSL asked for it (the key is encrypted). */
typedef struct {
  const char *password;
  int asked;
} password_ask_t;

/* A key's password, from the SSL_CTX's userdata (a password_ask_t, or NULL);
 * "" when none was given, so that OpenSSL never asks on a terminal. */
static int on_password(char *buf, int size, int rwflag, void *u) {
  password_ask_t *ask = u;
  if (ask)
    ask->asked = 1;
  const char *pw = ask ? ask->password : NULL;
  if (!pw)
    return 0;
  size_t n = strlen(pw);
  if (n > (size_t)size)
    return -1;
  memcpy(buf, pw, n);
  return (int)n;
}

/* ---- loading ---- */

/* The first (root) error of OpenSSL's queue as "reason (library)", and the
 * queue emptied; *bad_decrypt set when any entry says a decryption failed (a
 * wrong or missing password). */
static void ssl_reason(char *out, size_t len, int *bad_decrypt) {
  unsigned long e, first = 0;
  *bad_decrypt = 0;
  while ((e = ERR_get_error()) != 0) {
    const char *r = ERR_reason_error_string(e);
    if (r && (strstr(r, "bad decrypt") || strstr(r, "bad password")))
      *bad_decrypt = 1;
    if (!first)
      first = e;
  }
  const char *reason = first ? ERR_reason_error_string(first) : NULL;
  const char *lib = first ? ERR_lib_error_string(first) : NULL;
  snprintf(out, len, "%s%s%s%s", reason ? reason : "failed", lib ? " (" : "", lib ? lib : "",
           lib ? ")" : "");
}

/* pmu__set_error: "what path: OpenSSL's reason" (the queue emptied). */
static void ssl_error(pmu_server_t *s, const char *what, const char *path) {
  char reason[200];
  int bad_decrypt;
  ssl_reason(reason, sizeof reason, &bad_decrypt);
  pmu__set_error(s, "%s %s: %s", what, path ? path : "", reason);
}

static int add_name(cert_slot_t *slot, const char *name, size_t len) {
  if (len == 0 || memchr(name, 0, len))
    return 0;
  char *copy = malloc(len + 1);
  char **grown = realloc(slot->names, (slot->nnames + 1) * sizeof *grown);
  if (!copy || !grown) {
    free(copy);
    if (grown)
      slot->names = grown;
    return -ENOMEM;
  }
  slot->names = grown;
  for (size_t i = 0; i < len; i++)
    copy[i] = (char)tolower((unsigned char)name[i]);
  copy[len] = 0;
  slot->names[slot->nnames++] = copy;
  return 0;
}

/* The names a certificate answers for: its subjectAltName DNS names, else its
 * subject's CN. */
static int read_names(cert_slot_t *slot, X509 *cert) {
  int rc = 0;
  GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
  for (int i = 0; sans && rc == 0 && i < sk_GENERAL_NAME_num(sans); i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
    if (g->type == GEN_DNS)
      rc = add_name(slot, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                    (size_t)ASN1_STRING_length(g->d.dNSName));
  }
  GENERAL_NAMES_free(sans);
  if (rc == 0 && slot->nnames == 0) {
    X509_NAME *subject = X509_get_subject_name(cert);
    int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (at >= 0) {
      ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
      rc = add_name(slot, (const char *)ASN1_STRING_get0_data(cn), (size_t)ASN1_STRING_length(cn));
    }
  }
  ERR_clear_error();
  return rc;
}

/* A new SSL_CTX with every setting of the server but the certificate (versions,
 * ciphers, tickets, SNI, ALPN): 0 and slot->ctx, or -errno with the error set. */
static int ctx_settings(pmu_server_t *s, pmu__tls_server_t *t, cert_slot_t *slot) {
  const pmu_config_t *cfg = &s->cfg;
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    ssl_error(s, "SSL_CTX_new", NULL);
    return -ENOMEM;
  }
  slot->ctx = ctx;
  int min = strcasecmp(t->min_version, "TLSv1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
  SSL_CTX_set_min_proto_version(ctx, min);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  /* No renegotiation (a client-initiated one is a denial-of-service lever and
   * HTTP/1.1 has no use for it); buffers freed while a connection is idle. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               (t->ktls ? SSL_OP_ENABLE_KTLS : 0));
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  /* The same context id on every certificate: a session may resume whichever
   * certificate SNI picks (OpenSSL refuses to resume without one when client
   * certificates are verified). */
  SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"pmu", 3);
  if (!SSL_CTX_set_cipher_list(ctx, t->ciphers ? t->ciphers : DEFAULT_CIPHERS)) {
    ssl_error(s, "ssl_ciphers: no cipher in", t->ciphers ? t->ciphers : DEFAULT_CIPHERS);
    return -EINVAL;
  }
  if (t->suites && !SSL_CTX_set_ciphersuites(ctx, t->suites)) {
    ssl_error(s, "ssl_ciphersuites: not a TLS 1.3 suite list:", t->suites);
    return -EINVAL;
  }
  if (cfg->ssl_session_tickets) {
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
  } else {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, 0);
  }
  SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
  SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
  if (t->ocsp) /* after SNI OpenSSL asks the chosen SSL_CTX: every slot has it */
    SSL_CTX_set_tlsext_status_cb(ctx, on_status);
  if (cfg->ssl_cert_per_conn) /* the handler's certificate, before anything is chosen */
    SSL_CTX_set_client_hello_cb(ctx, pmu__tls_client_hello, NULL);
  return 0;
}

/* One SSL_CTX for certfile/keyfile with every setting of the server. Returns
 * 0 and fills slot, or -errno with the error set. */
static int load_slot(pmu_server_t *s, pmu__tls_server_t *t, const char *certfile,
                     const char *keyfile, const char *password, cert_slot_t *slot) {
  const pmu_config_t *cfg = &s->cfg;
  const char *keypath = keyfile ? keyfile : certfile;
  int rc = ctx_settings(s, t, slot);
  if (rc < 0)
    return rc;
  SSL_CTX *ctx = slot->ctx;
  SSL_CTX_set_default_passwd_cb(ctx, on_password); /* no userdata: never a terminal prompt */
  if (SSL_CTX_use_certificate_chain_file(ctx, certfile) != 1) {
    ssl_error(s, "cannot load the certificate chain", certfile);
    return -EINVAL;
  }
  /* The key read apart from its use: a key that does not match the certificate
   * is then told from one that cannot be read (SSL_CTX_use_PrivateKey_file fails
   * both ways). */
  password_ask_t ask = {.password = password};
  BIO *kb = BIO_new_file(keypath, "r");
  EVP_PKEY *pkey = kb ? PEM_read_bio_PrivateKey(kb, NULL, on_password, &ask) : NULL;
  BIO_free(kb);
  if (pkey == NULL) {
    char reason[200];
    int bad_decrypt;
    ssl_reason(reason, sizeof reason, &bad_decrypt);
    /* A wrong password, or none (OpenSSL then tries ""), passes the padding check about
     * once in 256 decryptions, and the garbage then fails to decode instead: that the
     * password was asked for says the key is encrypted either way. */
    if (bad_decrypt && password)
      pmu__set_error(s, "cannot decrypt the private key %s: wrong password (%s)", keypath, reason);
    else if (password && ask.asked)
      pmu__set_error(s,
                     "cannot load the private key %s with the password given (wrong password?): %s",
                     keypath, reason);
    else if (bad_decrypt || ask.asked)
      pmu__set_error(s, "the private key %s is encrypted: give its password (%s)", keypath, reason);
    else
      pmu__set_error(s, "cannot load the private key %s: %s", keypath, reason);
    return -EINVAL;
  }
  int used = SSL_CTX_use_PrivateKey(ctx, pkey) == 1;
  EVP_PKEY_free(pkey);
  if (!used || SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    pmu__set_error(s, "the private key %s does not match the certificate %s", keypath, certfile);
    return -EINVAL;
  }
  if (cfg->ssl_cert_reqs) {
    if (SSL_CTX_load_verify_locations(ctx, t->ca_certs, NULL) != 1) {
      ssl_error(s, "cannot load ssl_ca_certs", t->ca_certs);
      return -EINVAL;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->ca_certs);
    if (names)
      SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(
        ctx, SSL_VERIFY_PEER | (cfg->ssl_cert_reqs == 2 ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
        NULL);
  }
  rc = read_names(slot, SSL_CTX_get0_certificate(ctx));
  int der_len = rc < 0 ? 0 : i2d_X509(SSL_CTX_get0_certificate(ctx), &slot->der);
  if (der_len <= 0)
    rc = -ENOMEM;
  slot->der_len = der_len > 0 ? (size_t)der_len : 0;
  if (rc < 0)
    pmu__set_error(s, "out of memory");
  ERR_clear_error();
  return rc;
}

/* "http/1.1,h2" as ALPN's wire format. 0, or -EINVAL with the error set. */
static int alpn_parse(pmu_server_t *s, const char *list, pmu__tls_ctx_t *c) {
  if (!list || !list[0])
    return 0;
  size_t len = strlen(list);
  c->alpn = malloc(len + 1);
  if (!c->alpn) {
    pmu__set_error(s, "out of memory");
    return -ENOMEM;
  }
  size_t used = 0;
  const char *p = list;
  for (;;) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    while (n && (*p == ' ' || *p == '\t'))
      p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
      n--;
    if (n == 0 || n > 255) {
      pmu__set_error(s, "ssl_alpn \"%s\": each protocol must be 1..255 bytes, comma-separated",
                     list);
      return -EINVAL;
    }
    c->alpn[used++] = (unsigned char)n;
    memcpy(c->alpn + used, p, n);
    used += n;
    if (!end)
      break;
    p = end + 1;
  }
  c->alpn_len = used;
  return 0;
}

/* ssl_ocsp_file into c->ocsp: a successful OCSP response (DER) with a status
 * for the certificate's serial. 0, or -errno with the error set. */
static int ocsp_load(pmu_server_t *s, const char *path, X509 *leaf, pmu__tls_ctx_t *c) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    int err = errno;
    pmu__set_error(s, "cannot read ssl_ocsp_file %s: %s", path, strerror(err));
    return -err;
  }
  unsigned char *buf = malloc(1 << 20);
  size_t n = buf ? fread(buf, 1, 1 << 20, f) : 0;
  int big = buf && n == 1 << 20 && fgetc(f) != EOF;
  fclose(f);
  if (!buf) {
    pmu__set_error(s, "out of memory");
    return -ENOMEM;
  }
  const unsigned char *p = buf;
  OCSP_RESPONSE *resp = big ? NULL : d2i_OCSP_RESPONSE(NULL, &p, (long)n);
  OCSP_BASICRESP *basic = resp ? OCSP_response_get1_basic(resp) : NULL;
  const char *why = NULL;
  if (!resp || (size_t)(p - buf) != n)
    why = big ? "over 1 MiB" : "not a DER OCSP response";
  else if (OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL || !basic)
    why = "not a successful OCSP response";
  int found = 0;
  for (int i = 0; !why && !found && i < OCSP_resp_count(basic); i++) {
    ASN1_INTEGER *serial = NULL;
    OCSP_id_get0_info(NULL, NULL, NULL, &serial,
                      (OCSP_CERTID *)OCSP_SINGLERESP_get0_id(OCSP_resp_get0(basic, i)));
    found = serial && ASN1_INTEGER_cmp(serial, X509_get0_serialNumber(leaf)) == 0;
  }
  if (!why && !found)
    why = "no status for the certificate's serial number (a response for another certificate?)";
  OCSP_BASICRESP_free(basic);
  OCSP_RESPONSE_free(resp);
  ERR_clear_error();
  if (why) {
    free(buf);
    pmu__set_error(s, "ssl_ocsp_file %s: %s", path, why);
    return -EINVAL;
  }
  c->ocsp = buf;
  c->ocsp_len = n;
  return 0;
}

/* A new configuration from t's settings: 0 and *out, or -errno, error set. */
static int ctx_load(pmu_server_t *s, pmu__tls_server_t *t, pmu__tls_ctx_t **out) {
  *out = NULL;
  pmu__tls_ctx_t *c = calloc(1, sizeof *c);
  if (!c) {
    pmu__set_error(s, "out of memory");
    return -ENOMEM;
  }
  atomic_init(&c->refs, 1);
  c->tickets = t->tickets;
  atomic_fetch_add(&t->tickets->refs, 1);
  int rc = alpn_parse(s, t->alpn, c);
  if (rc < 0)
    goto fail;
  c->slots = calloc(t->nsni + 1, sizeof *c->slots);
  if (!c->slots) {
    pmu__set_error(s, "out of memory");
    rc = -ENOMEM;
    goto fail;
  }
  ERR_clear_error();
  if (s->cfg.ssl_cert_per_conn) {
    /* One SSL_CTX without a certificate: each SSL gets the handler's. */
    c->nslots = 1;
    rc = ctx_settings(s, t, &c->slots[0]);
    if (rc < 0)
      goto fail;
    *out = c;
    return 0;
  }
  for (size_t i = 0; i <= t->nsni; i++) {
    c->nslots = i + 1;
    if (i < t->nsni)
      rc = load_slot(s, t, t->sni[i].certfile, t->sni[i].keyfile, t->sni[i].key_password,
                     &c->slots[i]);
    else
      rc = load_slot(s, t, t->certfile, t->keyfile, t->password, &c->slots[i]);
    if (rc < 0) {
      if (i < t->nsni) { /* say which SNI certificate */
        char msg[sizeof s->error];
        snprintf(msg, sizeof msg, "%s", s->error);
        pmu__set_error(s, "ssl_sni_certs[%zu]: %s", i, msg);
      }
      goto fail;
    }
  }
  if (t->ocsp) {
    rc = ocsp_load(s, t->ocsp, SSL_CTX_get0_certificate(c->slots[t->nsni].ctx), c);
    if (rc < 0)
      goto fail;
  }
  *out = c;
  return 0;
fail:
  ctx_free(c);
  return rc;
}

/* ---- the server's TLS ---- */

static char *dup_str(const char *p, int *failed) {
  if (!p)
    return NULL;
  char *d = strdup(p);
  if (!d)
    *failed = 1;
  return d;
}

static void server_tls_free(pmu__tls_server_t *t) {
  pmu__tls_ctx_release(t->current);
  tickets_unref(t->tickets);
  if (t->password)
    OPENSSL_cleanse(t->password, strlen(t->password));
  free(t->certfile);
  free(t->keyfile);
  free(t->password);
  free(t->ca_certs);
  free(t->ciphers);
  free(t->suites);
  free(t->min_version);
  free(t->alpn);
  free(t->ocsp);
  for (size_t i = 0; i < t->nsni; i++) {
    free((char *)t->sni[i].certfile);
    free((char *)t->sni[i].keyfile);
    if (t->sni[i].key_password)
      OPENSSL_cleanse((char *)t->sni[i].key_password, strlen(t->sni[i].key_password));
    free((char *)t->sni[i].key_password);
  }
  free(t->sni);
  pthread_mutex_destroy(&t->lock);
  pthread_mutex_destroy(&t->reload_lock);
  free(t);
}

/* Check the TLS knobs that the table's ranges cannot. 0 or -EINVAL, error set. */
static int check_knobs(pmu_server_t *s) {
  const pmu_config_t *c = &s->cfg;
  const char *v = c->ssl_min_version ? c->ssl_min_version : "TLSv1.2";
  if (strcasecmp(v, "TLSv1.2") != 0 && strcasecmp(v, "TLSv1.3") != 0) {
    pmu__set_error(s, "ssl_min_version must be \"TLSv1.2\" or \"TLSv1.3\" (got \"%s\")", v);
    return -EINVAL;
  }
  if (c->ssl_cert_reqs && (!c->ssl_ca_certs || !c->ssl_ca_certs[0])) {
    pmu__set_error(s,
                   "ssl_cert_reqs %d (client certificates %s) needs ssl_ca_certs, the CA "
                   "bundle that verifies them",
                   c->ssl_cert_reqs, c->ssl_cert_reqs == 2 ? "required" : "optional");
    return -EINVAL;
  }
  if (c->ssl_cert_per_conn) {
    const char *other = c->ssl_certfile         ? "ssl_certfile"
                        : c->ssl_sni_cert_count ? "ssl_sni_certs"
                        : c->ssl_ocsp_file      ? "ssl_ocsp_file"
                        : c->ssl_cert_reqs      ? "ssl_cert_reqs"
                        : c->ssl_ca_certs       ? "ssl_ca_certs"
                        : c->ssl_keyfile        ? "ssl_keyfile"
                                                : NULL;
    if (!c->conn_handler) {
      pmu__set_error(s, "ssl_cert_per_conn needs a conn_handler: it gives each connection its "
                        "certificate (pmu_conn_tls_use)");
      return -EINVAL;
    }
    if (other) {
      pmu__set_error(s,
                     "ssl_cert_per_conn and %s: with ssl_cert_per_conn the certificate, key and "
                     "client verification are given per connection (pmu_tls_certs_new)",
                     other);
      return -EINVAL;
    }
  }
  if (c->ssl_sni_cert_count && !c->ssl_sni_certs) {
    pmu__set_error(s, "ssl_sni_cert_count is %zu but ssl_sni_certs is NULL", c->ssl_sni_cert_count);
    return -EINVAL;
  }
  for (size_t i = 0; i < c->ssl_sni_cert_count; i++)
    if (!c->ssl_sni_certs[i].certfile || !c->ssl_sni_certs[i].certfile[0]) {
      pmu__set_error(s, "ssl_sni_certs[%zu] has no certfile", i);
      return -EINVAL;
    }
  return 0;
}

int pmu__tls_server_init(pmu_server_t *s) {
  pthread_once(&index_once, make_index);
  if (ssl_ctx_index < 0) {
    pmu__set_error(s, "OpenSSL: no ex_data index");
    return -ENOMEM;
  }
  int rc = check_knobs(s);
  if (rc < 0)
    return rc;
  pmu__tls_server_t *t = calloc(1, sizeof *t);
  if (!t) {
    pmu__set_error(s, "out of memory");
    return -ENOMEM;
  }
  pthread_mutex_init(&t->lock, NULL);
  pthread_mutex_init(&t->reload_lock, NULL);
  s->tls = t;
  pmu_config_t *c = &s->cfg;
  int failed = 0;
  t->certfile = dup_str(c->ssl_certfile, &failed);
  t->keyfile = dup_str(c->ssl_keyfile && c->ssl_keyfile[0] ? c->ssl_keyfile : NULL, &failed);
  t->password = dup_str(c->ssl_keyfile_password, &failed);
  t->ca_certs = dup_str(c->ssl_ca_certs && c->ssl_ca_certs[0] ? c->ssl_ca_certs : NULL, &failed);
  t->ciphers = dup_str(c->ssl_ciphers && c->ssl_ciphers[0] ? c->ssl_ciphers : NULL, &failed);
  t->suites =
      dup_str(c->ssl_ciphersuites && c->ssl_ciphersuites[0] ? c->ssl_ciphersuites : NULL, &failed);
  t->min_version = dup_str(c->ssl_min_version ? c->ssl_min_version : "TLSv1.2", &failed);
  t->alpn = dup_str(c->ssl_alpn, &failed);
  t->ocsp = dup_str(c->ssl_ocsp_file && c->ssl_ocsp_file[0] ? c->ssl_ocsp_file : NULL, &failed);
  if (c->ssl_sni_cert_count) {
    t->sni = calloc(c->ssl_sni_cert_count, sizeof *t->sni);
    failed |= !t->sni;
    for (size_t i = 0; t->sni && i < c->ssl_sni_cert_count; i++) {
      const pmu_tls_cert_t *in = &c->ssl_sni_certs[i];
      t->sni[i].certfile = dup_str(in->certfile, &failed);
      t->sni[i].keyfile = dup_str(in->keyfile && in->keyfile[0] ? in->keyfile : NULL, &failed);
      t->sni[i].key_password = dup_str(in->key_password, &failed);
      t->nsni = i + 1;
    }
  }
  /* The config now points at the copies: the caller's strings are not kept. */
  c->ssl_certfile = t->certfile;
  c->ssl_keyfile = t->keyfile;
  c->ssl_keyfile_password = t->password;
  c->ssl_ca_certs = t->ca_certs;
  c->ssl_ciphers = t->ciphers;
  c->ssl_ciphersuites = t->suites;
  c->ssl_min_version = t->min_version;
  c->ssl_alpn = t->alpn;
  c->ssl_ocsp_file = t->ocsp;
  c->ssl_sni_certs = t->sni;
  c->ssl_sni_cert_count = t->nsni;
  if (failed || !(t->tickets = tickets_new(c->ssl_ticket_rotate_ms))) {
    pmu__set_error(s, "out of memory");
    return -ENOMEM;
  }
  t->ktls = c->ssl_ktls && pmu__ktls_probe(NULL, 0);
  return ctx_load(s, t, &t->current);
}

void pmu__tls_server_free(pmu_server_t *s) {
  if (!s->tls)
    return;
  server_tls_free(s->tls);
  s->tls = NULL;
}

int pmu_server_tls_reload(pmu_server_t *s) {
  pmu__tls_server_t *t = s->tls;
  if (!t)
    return -EINVAL;
  pthread_mutex_lock(&t->reload_lock);
  pmu__tls_ctx_t *fresh;
  int rc = ctx_load(s, t, &fresh);
  if (rc == 0) {
    pthread_mutex_lock(&t->lock);
    pmu__tls_ctx_t *old = t->current;
    t->current = fresh;
    pthread_mutex_unlock(&t->lock);
    pmu__tls_ctx_release(old); /* freed once no connection holds it */
  }
  pthread_mutex_unlock(&t->reload_lock);
  return rc;
}

SSL *pmu__tls_ssl_new(pmu__tls_ctx_t *c) {
  SSL *ssl = SSL_new(c->slots[c->nslots - 1].ctx);
  if (!ssl)
    return NULL;
  atomic_fetch_add(&c->refs, 1);
  if (!SSL_set_ex_data(ssl, ssl_ctx_index, c)) {
    pmu__tls_ctx_release(c);
    SSL_free(ssl);
    return NULL;
  }
  SSL_set_accept_state(ssl);
  return ssl;
}

/* ---- certificates given per connection (ssl_cert_per_conn) ---- */

struct pmu_tls_certs {
  atomic_long refs;
  X509 *leaf;
  STACK_OF(X509) * chain; /* the certificates after the leaf (may be empty) */
  EVP_PKEY *key;
  X509_STORE *store;           /* verify != 0: the CA certificates */
  STACK_OF(X509_NAME) * names; /* ... and their subjects, sent in CertificateRequest */
  int verify;
  unsigned char id[16]; /* random: the session id context of its sessions */
};

static void certs_free(pmu_tls_certs_t *c) {
  X509_free(c->leaf);
  sk_X509_pop_free(c->chain, X509_free);
  EVP_PKEY_free(c->key);
  X509_STORE_free(c->store);
  sk_X509_NAME_pop_free(c->names, X509_NAME_free);
  free(c);
}

void pmu__tls_certs_ref(pmu_tls_certs_t *c) { atomic_fetch_add(&c->refs, 1); }

void pmu_tls_certs_release(pmu_tls_certs_t *c) {
  if (c && atomic_fetch_sub(&c->refs, 1) == 1)
    certs_free(c);
}

/* "what: OpenSSL's reason" into err, the queue emptied. */
static void certs_error(char *err, size_t len, const char *what) {
  char reason[200];
  int bad_decrypt;
  ssl_reason(reason, sizeof reason, &bad_decrypt);
  if (err && len)
    snprintf(err, len, "%s: %s", what,
             bad_decrypt ? "the key is encrypted (give it unencrypted)" : reason);
}

/* Every certificate of a PEM text, in order, onto *out (made when NULL). The
 * number read, or -1 (no memory, or a bad PEM block). */
static int read_pem_certs(const void *pem, size_t len, STACK_OF(X509) * *out) {
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  if (!bio || (!*out && !(*out = sk_X509_new_null()))) {
    BIO_free(bio);
    return -1;
  }
  int n = 0;
  X509 *x;
  while ((x = PEM_read_bio_X509(bio, NULL, on_password, NULL))) {
    if (!sk_X509_push(*out, x)) {
      X509_free(x);
      n = -1;
      break;
    }
    n++;
  }
  unsigned long e = ERR_peek_last_error();
  if (n >= 0 && ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
    ERR_clear_error(); /* the end of the text */
  else if (n >= 0 && e)
    n = -1;
  BIO_free(bio);
  return n;
}

pmu_tls_certs_t *pmu_tls_certs_new(const pmu_tls_certs_opts_t *o, char *err, size_t err_len) {
  if (err && err_len)
    err[0] = 0;
  if (!o || !o->cert || !o->cert_len || o->cert_len > INT_MAX || o->key_len > INT_MAX ||
      o->ca_len > INT_MAX || o->verify < 0 || o->verify > 2 ||
      (o->verify && (!o->ca || !o->ca_len))) {
    if (err && err_len)
      snprintf(err, err_len, "%s",
               o && o->verify ? "client verification needs the CA certificates (ca)"
                              : "no certificate, or a bad length or verify mode");
    errno = EINVAL;
    return NULL;
  }
  pmu_tls_certs_t *c = calloc(1, sizeof *c);
  if (!c || RAND_bytes(c->id, sizeof c->id) != 1) {
    free(c);
    errno = ENOMEM;
    return NULL;
  }
  atomic_init(&c->refs, 1);
  c->verify = o->verify;
  ERR_clear_error();
  STACK_OF(X509) *all = NULL;
  int n = read_pem_certs(o->cert, o->cert_len, &all);
  if (n <= 0) {
    sk_X509_pop_free(all, X509_free);
    certs_error(err, err_len, "cannot read the certificate chain (PEM)");
    goto fail;
  }
  c->leaf = sk_X509_shift(all);
  c->chain = all;
  BIO *kb = BIO_new_mem_buf(o->key ? o->key : o->cert, (int)(o->key ? o->key_len : o->cert_len));
  c->key = kb ? PEM_read_bio_PrivateKey(kb, NULL, on_password, NULL) : NULL;
  BIO_free(kb);
  if (!c->key) {
    certs_error(err, err_len, "cannot read the private key (PEM)");
    goto fail;
  }
  if (X509_check_private_key(c->leaf, c->key) != 1) {
    ERR_clear_error();
    if (err && err_len)
      snprintf(err, err_len, "the private key does not match the certificate");
    goto fail;
  }
  if (c->verify) {
    STACK_OF(X509) *cas = NULL;
    n = read_pem_certs(o->ca, o->ca_len, &cas);
    c->store = X509_STORE_new();
    c->names = sk_X509_NAME_new_null();
    for (int i = 0; n > 0 && c->store && c->names && i < n; i++) {
      X509 *ca = sk_X509_value(cas, i);
      X509_NAME *name = X509_NAME_dup(X509_get_subject_name(ca));
      if (X509_STORE_add_cert(c->store, ca) != 1 || !name || !sk_X509_NAME_push(c->names, name)) {
        X509_NAME_free(name);
        n = -1;
      }
    }
    sk_X509_pop_free(cas, X509_free);
    if (n <= 0 || !c->store || !c->names) {
      certs_error(err, err_len, "cannot read the CA certificates (PEM)");
      goto fail;
    }
  }
  ERR_clear_error();
  return c;
fail:
  ERR_clear_error();
  certs_free(c);
  errno = EINVAL;
  return NULL;
}

int pmu__tls_certs_apply(SSL *ssl, pmu_tls_certs_t *c) {
  if (SSL_use_certificate(ssl, c->leaf) != 1 || SSL_use_PrivateKey(ssl, c->key) != 1 ||
      SSL_set1_chain(ssl, c->chain) != 1 ||
      SSL_set_session_id_context(ssl, c->id, sizeof c->id) != 1)
    return 0;
  if (c->verify) {
    STACK_OF(X509_NAME) *names = SSL_dup_CA_list(c->names);
    if (!names || SSL_set1_verify_cert_store(ssl, c->store) != 1) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      return 0;
    }
    SSL_set_client_CA_list(ssl, names);
    SSL_set_verify(ssl, SSL_VERIFY_PEER | (c->verify == 2 ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                   NULL);
  }
  return 1;
}

/* ---- snapshots ---- */

struct pmu__tls_snap {
  atomic_long refs;
  pmu_tls_info_t info;
  unsigned npeer;
  const unsigned char **peer_der;
  size_t *peer_len;
  /* then: the strings and DER blobs the pointers above point at */
};

/* A bump allocator over the snapshot's block. */
typedef struct {
  char *p, *end;
} bump_t;

static void *bump(bump_t *b, size_t n, size_t align) {
  uintptr_t at = ((uintptr_t)b->p + align - 1) & ~(uintptr_t)(align - 1);
  b->p = (char *)at + n;
  return (void *)at;
}

static const char *bump_str(bump_t *b, const char *s, size_t n) {
  char *d = bump(b, n + 1, 1);
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

pmu__tls_snap_t *pmu__tls_snap_new(SSL *ssl) {
  const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  const unsigned char *alpn = NULL;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
  /* Our certificate's DER, encoded once at load: the slot whose SSL_CTX SNI chose. */
  const pmu__tls_ctx_t *c = ctx_of(ssl);
  const cert_slot_t *slot = NULL;
  for (size_t i = 0; c && i < c->nslots && !slot; i++)
    if (c->slots[i].ctx == SSL_get_SSL_CTX(ssl))
      slot = &c->slots[i];
  X509 *peer = SSL_get0_peer_certificate(ssl);
  /* On the server the chain OpenSSL keeps excludes the client's leaf. */
  STACK_OF(X509) *chain = peer ? SSL_get_peer_cert_chain(ssl) : NULL;
  unsigned npeer = peer ? 1 + (unsigned)(chain ? sk_X509_num(chain) : 0) : 0;
  char subject[1024];
  size_t subject_len = 0;
  if (peer) {
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem)
      return NULL;
    X509_NAME_print_ex(mem, X509_get_subject_name(peer), 0,
                       XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
    subject_len = (size_t)BIO_read(mem, subject, sizeof subject - 1);
    if ((int)subject_len < 0)
      subject_len = 0;
    BIO_free(mem);
  }
  size_t own_len = slot ? slot->der_len : 0;
  /* ssl_cert_per_conn: the handler's certificate, set on the SSL itself. */
  X509 *own = !own_len ? SSL_get_certificate(ssl) : NULL;
  int own_der = own ? i2d_X509(own, NULL) : 0;
  if (own_der > 0)
    own_len = (size_t)own_der;
  int lens[64];
  if (npeer > 64)
    npeer = 64;
  size_t size = sizeof(pmu__tls_snap_t) + npeer * (sizeof(unsigned char *) + sizeof(size_t)) + 32;
  size += (sni ? strlen(sni) + 1 : 0) + alpn_len + 1 + subject_len + 1 + own_len;
  for (unsigned i = 0; i < npeer; i++) {
    lens[i] = i2d_X509(i == 0 ? peer : sk_X509_value(chain, (int)i - 1), NULL);
    size += lens[i] > 0 ? (size_t)lens[i] : 0;
  }
  pmu__tls_snap_t *snap = malloc(size);
  if (!snap)
    return NULL;
  memset(snap, 0, sizeof *snap);
  bump_t b = {(char *)(snap + 1), (char *)snap + size};
  atomic_init(&snap->refs, 1);
  pmu_tls_info_t *in = &snap->info;
  in->version = (uint16_t)SSL_version(ssl);
  in->version_name = SSL_get_version(ssl); /* static strings of OpenSSL's */
  const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
  in->cipher = cipher ? SSL_CIPHER_get_name(cipher) : NULL;
  in->cipher_id = cipher ? SSL_CIPHER_get_protocol_id(cipher) : 0;
  in->server_name = sni ? bump_str(&b, sni, strlen(sni)) : NULL;
  in->alpn = alpn_len ? bump_str(&b, (const char *)alpn, alpn_len) : NULL;
  in->resumed = SSL_session_reused(ssl) ? 1 : 0;
#ifndef OPENSSL_NO_KTLS
  in->ktls_tx = SSL_get_wbio(ssl) && BIO_get_ktls_send(SSL_get_wbio(ssl)) ? 1 : 0;
  in->ktls_rx = SSL_get_rbio(ssl) && BIO_get_ktls_recv(SSL_get_rbio(ssl)) ? 1 : 0;
#endif
  in->peer_cert = peer ? 1 : 0;
  in->peer_subject = peer ? bump_str(&b, subject, subject_len) : NULL;
  in->peer_chain_len = npeer;
  snap->npeer = npeer;
  snap->peer_der = bump(&b, npeer * sizeof *snap->peer_der, sizeof(void *));
  snap->peer_len = bump(&b, npeer * sizeof *snap->peer_len, sizeof(size_t));
  for (unsigned i = 0; i < npeer; i++) {
    unsigned char *d = bump(&b, lens[i] > 0 ? (size_t)lens[i] : 0, 1);
    unsigned char *w = d;
    int n = lens[i] > 0 ? i2d_X509(i == 0 ? peer : sk_X509_value(chain, (int)i - 1), &w) : 0;
    snap->peer_der[i] = d;
    snap->peer_len[i] = n > 0 ? (size_t)n : 0;
  }
  if (own_len) {
    unsigned char *d = bump(&b, own_len, 1), *w = d;
    if (own_der > 0)
      own_len = (size_t)(i2d_X509(own, &w) > 0 ? own_der : 0);
    else
      memcpy(d, slot->der, own_len);
    in->server_cert_der = d;
    in->server_cert_der_len = own_len;
  }
  ERR_clear_error();
  return snap;
}

void pmu__tls_snap_ref(pmu__tls_snap_t *snap) { atomic_fetch_add(&snap->refs, 1); }

void pmu__tls_snap_unref(pmu__tls_snap_t *snap) {
  if (snap && atomic_fetch_sub(&snap->refs, 1) == 1)
    free(snap);
}

void pmu__tls_snap_info(const pmu__tls_snap_t *snap, pmu_tls_info_t *out) { *out = snap->info; }

int pmu__tls_snap_peer_cert(const pmu__tls_snap_t *snap, unsigned index, const unsigned char **der,
                            size_t *len) {
  if (index >= snap->npeer)
    return -ENOENT;
  *der = snap->peer_der[index];
  *len = snap->peer_len[index];
  return 0;
}

/* ---- kernel TLS ---- */

static pthread_once_t ktls_once = PTHREAD_ONCE_INIT;
static int ktls_usable;
static char ktls_why[160];

/* A connected loopback TCP pair; the accepted end in *server, 0 or -errno. */
static int loopback_pair(int *client, int *server) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int err = 0, lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  *client = *server = -1;
  if (lfd < 0)
    return -errno;
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 1) < 0 ||
      getsockname(lfd, (struct sockaddr *)&a, &len) < 0)
    goto fail;
  *client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (*client < 0 || connect(*client, (struct sockaddr *)&a, sizeof a) < 0)
    goto fail;
  *server = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  if (*server < 0)
    goto fail;
  close(lfd);
  return 0;
fail:
  err = -errno;
  if (*client >= 0)
    close(*client);
  *client = -1;
  close(lfd);
  return err;
}

static void ktls_probe_once(void) {
#if defined(OPENSSL_NO_KTLS)
  snprintf(ktls_why, sizeof ktls_why,
           "the OpenSSL linked (%s) was built without kTLS (OPENSSL_NO_KTLS): user space",
           OPENSSL_FULL_VERSION_STR);
#else
  int client, server;
  int rc = loopback_pair(&client, &server);
  if (rc < 0) {
    snprintf(ktls_why, sizeof ktls_why, "no loopback TCP pair to probe TCP_ULP \"tls\": %s",
             strerror(-rc));
    return;
  }
  if (setsockopt(server, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") < 0) {
    int err = errno;
    if (err == ENOENT)
      snprintf(ktls_why, sizeof ktls_why,
               "this kernel has no TLS module (TCP_ULP \"tls\": ENOENT; CONFIG_TLS unset or "
               "the tls module not loadable): user space");
    else
      snprintf(ktls_why, sizeof ktls_why, "the kernel refused TCP_ULP \"tls\": %s: user space",
               strerror(err));
  } else {
    ktls_usable = 1;
    snprintf(ktls_why, sizeof ktls_why,
             "kernel TLS: TCP_ULP \"tls\" accepted; OpenSSL %s has kTLS (TLS 1.2 and 1.3 "
             "AES-GCM, ChaCha20-Poly1305 where the kernel has them)",
             OPENSSL_FULL_VERSION_STR);
  }
  close(client);
  close(server);
#endif
}

int pmu__ktls_probe(char *why, size_t why_len) {
  pthread_once(&ktls_once, ktls_probe_once);
  if (why && why_len)
    snprintf(why, why_len, "%s", ktls_why);
  return ktls_usable;
}
