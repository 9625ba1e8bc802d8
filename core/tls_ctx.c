/*
 * tls_ctx.c: the configuration side of the engine's TLS: the SSL_CTXs a
 * server's config describes, their reload, the snapshots of finished
 * handshakes, and the kernel TLS probe. The transport (core/tls.c) drives the
 * SSL objects made here.
 */
#include "internal.h"
#include "tls.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/opensslconf.h>

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

int pmu__tls_server_init(pmu_server_t *s) {
  pmu__set_error(s, "ssl_certfile: HTTPS is not in this build yet");
  return -ENOSYS;
}

void pmu__tls_server_free(pmu_server_t *s) { s->tls = NULL; }

pmu__tls_ctx_t *pmu__tls_ctx_acquire(pmu_server_t *s) { return NULL; }

void pmu__tls_ctx_release(pmu__tls_ctx_t *ctx) {}

SSL *pmu__tls_ssl_new(pmu__tls_ctx_t *ctx) { return NULL; }

pmu__tls_snap_t *pmu__tls_snap_new(SSL *ssl) { return NULL; }

void pmu__tls_snap_ref(pmu__tls_snap_t *snap) {}

void pmu__tls_snap_unref(pmu__tls_snap_t *snap) {}

void pmu__tls_snap_info(const pmu__tls_snap_t *snap, pmu_tls_info_t *out) {
  memset(out, 0, sizeof *out);
}

int pmu__tls_snap_peer_cert(const pmu__tls_snap_t *snap, unsigned index, const unsigned char **der,
                            size_t *len) {
  return -ENOSYS;
}

int pmu_server_tls_reload(pmu_server_t *s) {
  if (!s->tls)
    return -EINVAL;
  return -ENOSYS;
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
           OpenSSL_version(OPENSSL_VERSION));
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
