/* wrktls: an LD_PRELOAD library for wrk's HTTPS runs (benchmarks/bench/tls.py builds it).
 *
 * wrk keeps one SSL object per connection and, on reconnect, calls SSL_shutdown and
 * SSL_clear on it: after a clean shutdown SSL_clear keeps the session, so the next
 * SSL_connect offers it and a server that issued a ticket resumes it. With
 * `Connection: close` that turns a "new TLS connection per request" workload into a
 * resumption workload. This library wraps SSL_connect:
 *
 *   - with WRKTLS_NO_RESUME=1, the session kept by SSL_clear is dropped before a
 *     handshake starts, so every connection makes a full handshake (certificate,
 *     signature and key exchange);
 *   - every finished handshake is counted, full or resumed, and the first one's
 *     protocol, cipher suite and key-exchange group are noted;
 *   - at exit it prints one line to stderr:
 *       WRKTLS {"handshakes":N,"resumed":M,"version":"TLSv1.3","cipher":"...","group":"..."}
 *     which the runner reads beside wrk's own result.
 *
 * wrk calls SSL_connect again while a non-blocking handshake is under way; only a call on
 * an SSL object that has not started its handshake (SSL_in_before) drops the session, and
 * only a call that returns 1 counts a handshake.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*connect_fn)(SSL *);

static atomic_ulong handshakes, resumed;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static connect_fn real_connect;
static int no_resume;
static pthread_mutex_t first_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_version[32], first_cipher[64], first_group[32];

static void init(void) {
  real_connect = (connect_fn)dlsym(RTLD_NEXT, "SSL_connect");
  const char *v = getenv("WRKTLS_NO_RESUME");
  no_resume = v && strcmp(v, "0") != 0;
}

/* The first handshake's parameters, for the report (every connection of one run talks to
 * the same server with the same client settings). */
static void note_first(SSL *ssl) {
  pthread_mutex_lock(&first_lock);
  if (!first_version[0]) {
    const char *cipher = SSL_get_cipher_name(ssl);
    int nid = SSL_get_negotiated_group(ssl);
    const char *group = nid > 0 ? OBJ_nid2sn(nid) : NULL;
    snprintf(first_version, sizeof first_version, "%s", SSL_get_version(ssl));
    snprintf(first_cipher, sizeof first_cipher, "%s", cipher ? cipher : "");
    snprintf(first_group, sizeof first_group, "%s", group ? group : "");
  }
  pthread_mutex_unlock(&first_lock);
}

int SSL_connect(SSL *ssl) {
  pthread_once(&once, init);
  if (!real_connect)
    return -1;
  if (no_resume && SSL_in_before(ssl) && SSL_get0_session(ssl) != NULL)
    SSL_set_session(ssl, NULL);
  int r = real_connect(ssl);
  if (r == 1) {
    atomic_fetch_add(&handshakes, 1);
    if (SSL_session_reused(ssl))
      atomic_fetch_add(&resumed, 1);
    note_first(ssl);
  }
  return r;
}

__attribute__((destructor)) static void report(void) {
  fprintf(stderr,
          "WRKTLS {\"handshakes\":%lu,\"resumed\":%lu,\"no_resume\":%d,\"version\":\"%s\","
          "\"cipher\":\"%s\",\"group\":\"%s\"}\n",
          atomic_load(&handshakes), atomic_load(&resumed), no_resume, first_version, first_cipher,
          first_group);
}
