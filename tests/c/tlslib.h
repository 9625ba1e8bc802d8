/*
 * tlslib.h: certificates and a TLS client for the engine's HTTPS tests.
 *
 * Certificates are made at run time with OpenSSL's API (nothing is committed):
 * a CA, server certificates (RSA-2048 or ECDSA P-256) with the DNS names given
 * as subjectAltName, client certificates signed by a CA, keys encrypted with a
 * password when asked. They are written as PEM into one temporary directory per
 * process (t_tls_dir()), removed at exit.
 *
 * The client is OpenSSL's, blocking, over a real socket (t_tls_connect), or over
 * an in-memory BIO pair against a server SSL (t_tls_pair_*), for tests of the
 * TLS context that need no server at all. Failures of the library itself (no
 * memory, a file that cannot be written) fail the test; a refused handshake is
 * a result the caller checks.
 */
#ifndef PMU_TLSLIB_H
#define PMU_TLSLIB_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The temporary directory of this process's certificates (made on first use,
 * removed with its files at exit). */
const char *t_tls_dir(void);

typedef enum { T_TLS_RSA2048, T_TLS_ECDSA_P256 } t_tls_key_kind;

/* A certificate and its key, in memory and as PEM files in t_tls_dir(). */
typedef struct t_tls_cert {
  X509 *cert;
  EVP_PKEY *key;
  char cert_path[512];  /* the certificate alone (PEM) */
  char key_path[512];   /* its key (PEM; encrypted when made with a password) */
  char both_path[512];  /* certificate then unencrypted key in one file */
  char chain_path[512]; /* the certificate, then its issuer's (a chain, leaf first) */
} t_tls_cert_t;

typedef struct t_tls_cert_opts {
  t_tls_key_kind kind;
  const char *cn;         /* subject CN; NULL: the first DNS name, else "t" */
  const char *const *dns; /* subjectAltName DNS names, NULL-terminated; NULL: no SAN */
  bool client;            /* extendedKeyUsage clientAuth (else serverAuth) */
  const char *password;   /* encrypt the key file (AES-256-CBC) with it; NULL: plain */
} t_tls_cert_opts_t;

/* A self-signed CA named `name` (files NAME.crt, NAME.key). */
void t_tls_make_ca(const char *name, t_tls_cert_t *ca);
/* A certificate signed by ca (files NAME.crt, NAME.key, NAME-both.pem,
 * NAME-chain.pem). */
void t_tls_make_cert(const t_tls_cert_t *ca, const char *name, const t_tls_cert_opts_t *opts,
                     t_tls_cert_t *out);
void t_tls_cert_free(t_tls_cert_t *cert);

/* One certificate's DER (OPENSSL_malloc'd; *len its length). */
unsigned char *t_tls_der(X509 *cert, size_t *len);

/* What a client offers. Zeroed: TLS 1.2 to 1.3, no SNI, no ALPN, no client
 * certificate, the server's certificate not verified. */
typedef struct t_tls_client_opts {
  const char *sni;          /* server name to send */
  const char *alpn;         /* "h2,http/1.1": protocols to offer, comma-separated */
  int min_version;          /* TLS1_2_VERSION, TLS1_3_VERSION; 0: TLS 1.2 */
  int max_version;          /* 0: TLS 1.3 */
  const char *cert, *key;   /* client certificate and key files */
  const char *ca_file;      /* verify the server against it (and the SNI name) */
  SSL_SESSION *session;     /* resume it */
  const char *ciphers;      /* TLS 1.2 cipher list; NULL: OpenSSL's default */
  const char *ciphersuites; /* TLS 1.3 suites; NULL: OpenSSL's default */
} t_tls_client_opts_t;

/* A client SSL (connect state, no BIO) with these options; test fails on ENOMEM. */
SSL *t_tls_client_ssl(const t_tls_client_opts_t *opts);

/*
 * Connect to 127.0.0.1:port and complete a handshake, blocking (at most
 * timeout_ms). Returns the SSL (its fd in *fd) or NULL with why[] saying what
 * failed (OpenSSL's reason, the alert received) and *fd -1.
 */
SSL *t_tls_connect(uint16_t port, const t_tls_client_opts_t *opts, int timeout_ms, int *fd,
                   char *why, size_t why_len);
/* Write all of data, blocking; false on failure. */
bool t_tls_write_all(SSL *ssl, const void *data, size_t len);
/* Read what comes within timeout_ms into buf (at most cap - 1 bytes, NUL
 * added) until the peer closes or `until` (if not NULL) appears. Returns the
 * length read, or -1 on a TLS error before anything arrived. */
long t_tls_read(SSL *ssl, char *buf, size_t cap, const char *until, int timeout_ms);
/* close_notify (not waiting for the peer's), SSL_free, close(fd). */
void t_tls_close(SSL *ssl, int fd);

/*
 * Two SSLs joined by an in-memory BIO pair (BIO_new_bio_pair), a client and a
 * server, driven by turns from one thread: no socket, no server.
 */
typedef struct t_tls_pair {
  SSL *client, *server;
} t_tls_pair_t;

/* Join client and server (each takes ownership of its end of the pair). */
void t_tls_pair_join(t_tls_pair_t *pair, SSL *client, SSL *server);
/* Drive both handshakes until both are done (1) or one fails or nothing moves
 * (0; why[] says which side failed and why). */
int t_tls_pair_handshake(t_tls_pair_t *pair, char *why, size_t why_len);
/* After a finished handshake: exchange application data both ways once
 * (client writes, server reads, server writes, client reads), which also
 * delivers TLS 1.3 session tickets to the client. true when both arrived. */
bool t_tls_pair_exchange(t_tls_pair_t *pair);
/* Both send close_notify (a client session stays resumable), then both are freed. */
void t_tls_pair_free(t_tls_pair_t *pair);

/* OpenSSL's error queue as one line (and emptied), for messages. */
const char *t_tls_errors(char *buf, size_t len);

#endif /* PMU_TLSLIB_H */
