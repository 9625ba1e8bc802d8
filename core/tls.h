/*
 * tls.h: the engine's TLS, inside the engine (not a public header).
 *
 * Two halves. The configuration (core/tls_ctx.c): the SSL_CTXs a server's
 * config describes (one per certificate, chosen by SNI), loaded at start and
 * by pmu_server_tls_reload(), refcounted so that a reload can swap them while
 * ring threads still hold the old ones; the session ticket keys; the snapshot
 * of a finished handshake that requests hold (pmu_tls_info_t); the kTLS probe.
 * The transport (core/tls.c): one SSL object per connection over memory BIOs,
 * fed and drained by the ring, which does every socket read and write.
 */
#ifndef PMU_TLS_H
#define PMU_TLS_H

#include "pmu/pmu.h"

#include <openssl/ssl.h>

/* One loaded configuration (an SSL_CTX per certificate), refcounted. */
typedef struct pmu__tls_ctx pmu__tls_ctx_t;
/* One session's pmu_tls_info_t and the client's chain as DER, immutable, refcounted. */
typedef struct pmu__tls_snap pmu__tls_snap_t;

/*
 * At pmu_server_start, when cfg.ssl_certfile is set: check the TLS knobs, copy
 * config.ssl_sni_certs, load every certificate and key, make the ticket keys.
 * Returns 0, or -errno with pmu_server_error() naming the file and OpenSSL's
 * reason. pmu__tls_server_free releases all of it (safe when init failed or
 * never ran).
 */
int pmu__tls_server_init(pmu_server_t *s);
void pmu__tls_server_free(pmu_server_t *s);

/* The current configuration with a reference taken (any thread), or NULL on a
 * server without TLS; release it with pmu__tls_ctx_release. */
pmu__tls_ctx_t *pmu__tls_ctx_acquire(pmu_server_t *s);
void pmu__tls_ctx_release(pmu__tls_ctx_t *ctx);

/* A server SSL in accept state from ctx, no BIOs yet (the transport sets
 * them); NULL on ENOMEM. The SSL holds what it needs of ctx by itself. */
SSL *pmu__tls_ssl_new(pmu__tls_ctx_t *ctx);

/* After a finished handshake: the snapshot of ssl (refcount 1), NULL on ENOMEM.
 * ktls_tx/ktls_rx are read from the SSL's BIOs (BIO_get_ktls_send/recv): take
 * it after kTLS was switched on, if it is. */
pmu__tls_snap_t *pmu__tls_snap_new(SSL *ssl);
void pmu__tls_snap_ref(pmu__tls_snap_t *snap);
void pmu__tls_snap_unref(pmu__tls_snap_t *snap);
/* Fill *out; its pointers live as long as the snapshot. */
void pmu__tls_snap_info(const pmu__tls_snap_t *snap, pmu_tls_info_t *out);
/* The client's certificate `index` (0: leaf) as DER: 0, or -ENOENT past the end. */
int pmu__tls_snap_peer_cert(const pmu__tls_snap_t *snap, unsigned index, const unsigned char **der,
                            size_t *len);

/*
 * ssl_cert_per_conn. pmu__tls_client_hello is the SSL_CTX's ClientHello
 * callback (core/tls.c): it applies the certificate the handler gave the
 * connection, refuses, or suspends the handshake until the handler answers.
 * pmu__tls_certs_apply puts a handle's chain, key, client verification and
 * session id context on the SSL: 1, or 0 (OpenSSL failed).
 */
int pmu__tls_client_hello(SSL *ssl, int *alert, void *arg);
int pmu__tls_certs_apply(SSL *ssl, pmu_tls_certs_t *certs);
void pmu__tls_certs_ref(pmu_tls_certs_t *certs);

/*
 * Can this process hand sessions to kernel TLS? 1: yes (the OpenSSL linked
 * was built with kTLS and the kernel accepts TCP_ULP "tls"); 0: no, and `why`
 * says why (or, on 1, what it supports). Probed once, then cached; any thread.
 */
int pmu__ktls_probe(char *why, size_t why_len);

#endif /* PMU_TLS_H */
