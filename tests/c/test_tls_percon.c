/*
 * test_tls_percon.c: HTTPS with the certificate chosen per connection by the
 * handler (config.ssl_cert_per_conn, pmu_tls_certs_new, pmu_conn_tls_use,
 * pmu_conn_tls_decline), over real sockets with tlslib's client.
 *
 * OPEN comes at accept, before the handshake; the handshake waits for the
 * handler's answer, given inside OPEN or later from another thread; two
 * connections given two certificates are served each its own; a declined
 * connection is refused (alert when its ClientHello is in) and closed with
 * ECONNREFUSED; a client that vanishes while waiting is freed (ASan); the
 * handshake timeout bounds the wait; client verification and resumption
 * follow the handle (a session of one handle does not resume on another);
 * bad PEM and bad configurations are refused with words.
 */
#include "testlib.h"
#include "tlslib.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static t_tls_cert_t ca, leaf_a, leaf_b, client;
static pmu_tls_certs_t *certs_a, *certs_b, *certs_verify;

/* ---- the handler ---- */

enum mode {
  MODE_USE,           /* pmu_conn_tls_use(next_certs) inside OPEN */
  MODE_LATER,         /* from another thread, answer_delay_ms after OPEN */
  MODE_DECLINE,       /* pmu_conn_tls_decline inside OPEN */
  MODE_DECLINE_LATER, /* ... from another thread, after the ClientHello came */
  MODE_NONE,          /* never answered */
};

static atomic_int mode;
static pmu_tls_certs_t *_Atomic next_certs;
static atomic_int answer_delay_ms = 300;
static atomic_int opens, closes, last_close_err, open_info_rc, second_answer_rc, close_answer_rc;
static pmu_conn_t *_Atomic last_conn; /* the last connection opened (until its CLOSE) */

/* What OPEN decided for a later answer. */
typedef struct {
  pmu_conn_t *conn;
  int decline;
  unsigned delay_ms;
  pmu_tls_certs_t *certs;
} later_t;

static void *answer_later(void *arg) {
  later_t *l = arg;
  pmu_conn_t *conn = l->conn;
  t_sleep_ms(l->delay_ms);
  int decline = l->decline;
  int rc = decline ? pmu_conn_tls_decline(conn) : pmu_conn_tls_use(conn, l->certs);
  free(l);
  T_ASSERT_INT_EQ(rc, 0);
  /* The first answer stands. (Not after a decline: the connection closes at once, and its
   * CLOSE releases the handle this thread borrows.) */
  if (!decline)
    atomic_store(&second_answer_rc, pmu_conn_tls_use(conn, certs_b));
  return NULL;
}

static void conn_events(void *data, const pmu_conn_event_t *evs, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    const pmu_conn_event_t *e = &evs[i];
    if (e->type == PMU_CONN_EV_OPEN) {
      pmu_tls_info_t info;
      atomic_fetch_add(&opens, 1);
      atomic_store(&open_info_rc, pmu_conn_tls_info(e->conn, &info));
      atomic_store(&last_conn, e->conn);
      switch (atomic_load(&mode)) {
      case MODE_USE: T_ASSERT_INT_EQ(pmu_conn_tls_use(e->conn, atomic_load(&next_certs)), 0); break;
      case MODE_DECLINE: T_ASSERT_INT_EQ(pmu_conn_tls_decline(e->conn), 0); break;
      case MODE_LATER:
      case MODE_DECLINE_LATER: {
        pthread_t th;
        later_t *l = malloc(sizeof *l);
        T_ASSERT(l);
        *l = (later_t){e->conn, atomic_load(&mode) == MODE_DECLINE_LATER,
                       (unsigned)atomic_load(&answer_delay_ms), atomic_load(&next_certs)};
        T_ASSERT(pthread_create(&th, NULL, answer_later, l) == 0);
        pthread_detach(th);
        break;
      }
      default: break;
      }
    } else if (e->type == PMU_CONN_EV_CLOSE) {
      atomic_store(&last_close_err, e->err);
      if (atomic_load(&mode) == MODE_NONE) /* never answered: too late now */
        atomic_store(&close_answer_rc, pmu_conn_tls_use(e->conn, certs_a));
      if (atomic_load(&last_conn) == e->conn)
        atomic_store(&last_conn, NULL);
      pmu_conn_release(e->conn);
      atomic_fetch_add(&closes, 1);
    }
  }
}

/* /tlsinfo: the request's session and its connection's (pmu_conn_tls_info
 * after the handshake); /peer: the client's certificate; the rest: testlib's. */
static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (t_path_is(r, "/tlsinfo") || t_path_is(r, "/peer")) {
      pmu_tls_info_t info, cinfo;
      char body[512];
      T_ASSERT_INT_EQ(pmu_request_tls_info(r, &info), 0);
      int crc = pmu_conn_tls_info(pmu_request_conn(r), &cinfo);
      int n =
          snprintf(body, sizeof body,
                   "version=%04x\nresumed=%d\nserver_cert=%zu\nconn_rc=%d\nconn_version=%04x\n"
                   "peer=%s\nend\n",
                   info.version, info.resumed, info.server_cert_der_len, crc,
                   crc == 0 ? cinfo.version : 0, info.peer_subject ? info.peer_subject : "(none)");
      pmu_response_t resp = {.status = 200, .body = body, .body_len = (size_t)n};
      pmu_respond(r, &resp);
    } else {
      t_handle_request(data, r);
    }
  }
}

static void percon_config(pmu_config_t *cfg) {
  t_config_init(cfg);
  cfg->handler = handler;
  cfg->conn_handler = conn_events;
  cfg->threads = 1;
  cfg->ssl_cert_per_conn = 1;
}

/* ---- helpers ---- */

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  T_ASSERT(f);
  char *buf = malloc(1 << 16);
  T_ASSERT(buf);
  *len = fread(buf, 1, 1 << 16, f);
  fclose(f);
  return buf;
}

static pmu_tls_certs_t *certs_from(const t_tls_cert_t *leaf, int verify) {
  size_t cl, kl, al;
  char *cert = read_all(leaf->chain_path, &cl), *key = read_all(leaf->key_path, &kl);
  char *cap = read_all(ca.cert_path, &al);
  pmu_tls_certs_opts_t o = {.cert = cert, .cert_len = cl, .key = key, .key_len = kl};
  if (verify) {
    o.ca = cap;
    o.ca_len = al;
    o.verify = verify;
  }
  char err[256];
  pmu_tls_certs_t *c = pmu_tls_certs_new(&o, err, sizeof err);
  T_ASSERT_MSG(c, "pmu_tls_certs_new: %s", err);
  free(cert);
  free(key);
  free(cap);
  return c;
}

static int raw_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  T_ASSERT(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  T_ASSERT(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  return fd;
}

/* A ClientHello on a fresh connection, and nothing more: the fd. */
static int send_client_hello(uint16_t port) {
  int fd = raw_connect(port);
  t_tls_client_opts_t none = {0};
  SSL *ssl = t_tls_client_ssl(&none);
  T_ASSERT(SSL_set_fd(ssl, fd) == 1);
  fcntl(fd, F_SETFL, O_NONBLOCK);
  T_ASSERT(SSL_connect(ssl) <= 0); /* WANT_READ: the hello is out */
  SSL_free(ssl);                   /* (the fd is not closed by SSL_free) */
  fcntl(fd, F_SETFL, 0);
  return fd;
}

typedef struct {
  SSL *ssl;
  int fd;
  char buf[4096];
  long len;
} client_t;

/* Connect and GET target: the answer in c->buf; NULL ssl (why in c->buf) when
 * the handshake failed. */
static void get(client_t *c, uint16_t port, const t_tls_client_opts_t *opts, const char *target) {
  t_tls_client_opts_t none = {0};
  c->ssl = t_tls_connect(port, opts ? opts : &none, T_IO_TIMEOUT_MS, &c->fd, c->buf, sizeof c->buf);
  c->len = 0;
  if (!c->ssl)
    return;
  char req[256];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", target);
  T_ASSERT(t_tls_write_all(c->ssl, req, (size_t)n));
  int info = strcmp(target, "/tlsinfo") == 0 || strcmp(target, "/peer") == 0;
  c->len =
      t_tls_read(c->ssl, c->buf, sizeof c->buf, info ? "\nend\n" : "\r\n\r\n", T_IO_TIMEOUT_MS);
}

static void client_close(client_t *c) {
  if (c->ssl)
    t_tls_close(c->ssl, c->fd);
  c->ssl = NULL;
}

/* The client was served `leaf`'s certificate. */
static void expect_served(client_t *c, const t_tls_cert_t *leaf) {
  T_ASSERT_MSG(c->ssl, "handshake failed: %s", c->buf);
  X509 *got = SSL_get0_peer_certificate(c->ssl);
  T_ASSERT(got && X509_cmp(got, leaf->cert) == 0);
}

/* Every connection of s closed and its CLOSE delivered. */
static void settle(t_server_t *s) {
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);
  T_WAIT_UNTIL(atomic_load(&closes) == atomic_load(&opens), T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&closes), atomic_load(&opens));
}

/* ---- cases ---- */

static void test_use(void) {
  t_case("OPEN comes at accept, before the handshake; the certificate given in OPEN serves it");
  pmu_config_t cfg;
  percon_config(&cfg);
  t_server_t *s = t_server_start(&cfg);
  atomic_store(&mode, MODE_USE);
  atomic_store(&next_certs, certs_a);
  client_t c;
  get(&c, s->port, NULL, "/tlsinfo");
  expect_served(&c, &leaf_a);
  T_ASSERT_INT_EQ(atomic_load(&open_info_rc), -EINVAL); /* no session at OPEN yet */
  T_ASSERT_CONTAINS(c.buf, (size_t)c.len, "conn_rc=0\nconn_version=0304\n");
  size_t der_len;
  unsigned char *der = t_tls_der(leaf_a.cert, &der_len);
  char want[64];
  snprintf(want, sizeof want, "server_cert=%zu\n", der_len);
  OPENSSL_free(der);
  T_ASSERT_CONTAINS(c.buf, (size_t)c.len, want);
  client_close(&c);

  t_case("two connections given two certificates see each its own");
  atomic_store(&next_certs, certs_b);
  get(&c, s->port, NULL, "/tlsinfo");
  expect_served(&c, &leaf_b);
  client_close(&c);
  atomic_store(&next_certs, certs_a);
  get(&c, s->port, NULL, "/tlsinfo");
  expect_served(&c, &leaf_a);

  t_case("a session resumes on a connection given the same handle");
  SSL_SESSION *sess = SSL_get1_session(c.ssl); /* the answer brought TLS 1.3 tickets */
  T_ASSERT(sess && SSL_SESSION_is_resumable(sess));
  client_close(&c);
  t_tls_client_opts_t again = {.session = sess};
  get(&c, s->port, &again, "/tlsinfo");
  T_ASSERT_MSG(c.ssl && SSL_session_reused(c.ssl), "not resumed: %s", c.buf);
  T_ASSERT_CONTAINS(c.buf, (size_t)c.len, "resumed=1\n");
  client_close(&c);

  t_case("... and not on one given another handle: a full handshake with its certificate");
  atomic_store(&next_certs, certs_b);
  get(&c, s->port, &again, "/tlsinfo");
  expect_served(&c, &leaf_b);
  T_ASSERT(!SSL_session_reused(c.ssl));
  client_close(&c);

  t_case("client verification is the handle's, and a session without a client certificate "
         "does not resume past it");
  atomic_store(&next_certs, certs_verify);
  get(&c, s->port, &again, "/peer");
  T_ASSERT_MSG(!c.ssl || c.len <= 0, "served without a client certificate: %s", c.buf);
  client_close(&c);
  SSL_SESSION_free(sess);
  t_tls_client_opts_t with_cert = {.cert = client.cert_path, .key = client.key_path};
  get(&c, s->port, &with_cert, "/peer");
  T_ASSERT_MSG(c.ssl, "refused: %s", c.buf);
  T_ASSERT_CONTAINS(c.buf, (size_t)c.len, "peer=CN=test client,");
  client_close(&c);
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);
  T_WAIT_UNTIL(atomic_load(&closes) == atomic_load(&opens), T_EVENT_MS);
  t_server_destroy(s);
}

static void test_later(void) {
  t_case("the handshake waits for a certificate given later from another thread");
  pmu_config_t cfg;
  percon_config(&cfg);
  t_server_t *s = t_server_start(&cfg);
  atomic_store(&mode, MODE_LATER);
  atomic_store(&next_certs, certs_b);
  atomic_store(&answer_delay_ms, 300);
  atomic_store(&second_answer_rc, 1); /* not tried yet */
  int64_t t0 = t_now_ms();
  client_t c;
  get(&c, s->port, NULL, "/tlsinfo");
  int64_t took = t_now_ms() - t0;
  expect_served(&c, &leaf_b);
  T_ASSERT_MSG(took >= 250, "the handshake did not wait (%lld ms)", (long long)took);
  /* The answering thread tries its second answer after the first, which may be after
   * the client was served (seen on a busy machine). */
  T_WAIT_UNTIL(atomic_load(&second_answer_rc) != 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&second_answer_rc), -EINVAL);
  client_close(&c);

  t_case("a certificate given before the ClientHello arrives is used when it does");
  atomic_store(&answer_delay_ms, 0);
  int fd = raw_connect(s->port);
  t_sleep_ms(100); /* answered meanwhile */
  t_tls_client_opts_t none = {0};
  SSL *ssl = t_tls_client_ssl(&none);
  T_ASSERT(SSL_set_fd(ssl, fd) == 1);
  T_ASSERT_MSG(SSL_connect(ssl) == 1, "handshake failed");
  T_ASSERT(X509_cmp(SSL_get0_peer_certificate(ssl), leaf_b.cert) == 0);
  t_tls_close(ssl, fd);

  t_case("declined later, once the ClientHello is in: a handshake_failure alert, CLOSE "
         "ECONNREFUSED");
  settle(s);
  int before = atomic_load(&closes);
  uint64_t errors = t_stats(s, -1).tls_handshake_errors;
  atomic_store(&mode, MODE_DECLINE_LATER);
  atomic_store(&answer_delay_ms, 200);
  get(&c, s->port, NULL, "/");
  T_ASSERT_MSG(!c.ssl, "served a declined connection");
  T_ASSERT_MSG(strstr(c.buf, "handshake failure"), "no alert: %s", c.buf);
  T_WAIT_UNTIL(atomic_load(&closes) == before + 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&last_close_err), ECONNREFUSED);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_handshake_errors - errors, 1);

  t_case("declined inside OPEN: closed before any ClientHello, CLOSE ECONNREFUSED");
  atomic_store(&mode, MODE_DECLINE);
  get(&c, s->port, NULL, "/");
  T_ASSERT_MSG(!c.ssl, "served a declined connection");
  T_WAIT_UNTIL(atomic_load(&closes) == before + 2, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&last_close_err), ECONNREFUSED);
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);
  t_server_destroy(s);
}

static void test_waiting_bounded(void) {
  t_case("a client that vanishes while its handshake waits is freed; CLOSE comes; an answer "
         "after it is -EPIPE");
  pmu_config_t cfg;
  percon_config(&cfg);
  cfg.ssl_handshake_timeout_ms = 400;
  t_server_t *s = t_server_start(&cfg);
  atomic_store(&mode, MODE_NONE);
  settle(s);
  int before = atomic_load(&closes);
  int fd = send_client_hello(s->port);
  T_WAIT_UNTIL(t_stats(s, -1).bytes_in > 0, T_EVENT_MS);
  t_sleep_ms(50); /* the ClientHello's step ran: the handshake waits in its callback */
  T_ASSERT_INT_EQ(t_stats(s, -1).connections_open, 1);
  close(fd);
  T_WAIT_UNTIL(atomic_load(&closes) == before + 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&close_answer_rc), -EPIPE);
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);

  t_case("waiting is bounded by ssl_handshake_timeout_ms: closed, counted, CLOSE ETIMEDOUT");
  fd = send_client_hello(s->port);
  int64_t t0 = t_now_ms();
  char buf[64];
  t_read_until_closed(fd, buf, sizeof buf);
  int64_t took = t_now_ms() - t0;
  close(fd);
  T_ASSERT_MSG(took >= 300 && took < 5000, "closed after %lld ms", (long long)took);
  T_WAIT_UNTIL(atomic_load(&closes) == before + 2, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&last_close_err), ETIMEDOUT);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_handshake_timeouts, 1);

  t_case("ssl_max_handshakes counts waiting connections: one more waits unread for the slot");
  t_server_destroy(s);
  cfg.ssl_handshake_timeout_ms = 10000;
  cfg.ssl_max_handshakes = 1;
  s = t_server_start(&cfg);
  atomic_store(&mode, MODE_DECLINE_LATER);
  atomic_store(&answer_delay_ms, 400);
  int opened = atomic_load(&opens);
  int first = send_client_hello(s->port); /* holds the slot until declined, 400 ms on */
  T_WAIT_UNTIL(t_stats(s, -1).bytes_in > 0 && atomic_load(&opens) == opened + 1, T_EVENT_MS);
  atomic_store(&mode, MODE_USE);
  atomic_store(&next_certs, certs_a);
  client_t c;
  int64_t t1 = t_now_ms();
  get(&c, s->port, NULL, "/tlsinfo");
  int64_t waited = t_now_ms() - t1;
  expect_served(&c, &leaf_a);
  T_ASSERT_MSG(waited >= 250, "the second did not wait for the slot (%lld ms)", (long long)waited);
  client_close(&c);

  size_t got = t_read_until_closed(first, buf, sizeof buf); /* its alert, then closed */
  T_ASSERT_MSG(got >= 7 && buf[0] == 0x15, "no alert record (got %zu bytes)", got);
  close(first);
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);
  t_server_destroy(s);
}

static void test_refusals(void) {
  t_case("pmu_tls_certs_new refuses what it cannot use, with words");
  char err[256];
  size_t cl, kl;
  char *cert = read_all(leaf_a.chain_path, &cl), *key_b = read_all(leaf_b.key_path, &kl);
  pmu_tls_certs_opts_t o = {.cert = "not a certificate", .cert_len = 17};
  errno = 0;
  T_ASSERT(!pmu_tls_certs_new(&o, err, sizeof err) && errno == EINVAL);
  T_ASSERT_MSG(strstr(err, "certificate chain"), "%s", err);
  o = (pmu_tls_certs_opts_t){.cert = cert, .cert_len = cl, .key = key_b, .key_len = kl};
  T_ASSERT(!pmu_tls_certs_new(&o, err, sizeof err));
  T_ASSERT_MSG(strstr(err, "does not match"), "%s", err);
  o = (pmu_tls_certs_opts_t){.cert = cert, .cert_len = cl, .verify = 2};
  T_ASSERT(!pmu_tls_certs_new(&o, err, sizeof err));
  T_ASSERT_MSG(strstr(err, "needs the CA"), "%s", err);
  o = (pmu_tls_certs_opts_t){.cert = cert, .cert_len = cl}; /* no key at all */
  T_ASSERT(!pmu_tls_certs_new(&o, err, sizeof err));
  T_ASSERT_MSG(strstr(err, "private key"), "%s", err);
  free(cert);
  free(key_b);

  t_case("ssl_cert_per_conn needs a conn_handler, and no certificate of the listener's");
  pmu_config_t cfg;
  percon_config(&cfg);
  cfg.conn_handler = NULL;
  t_server_t *s = NULL;
  T_ASSERT_INT_EQ(t_server_try_start(&cfg, &s), -EINVAL);
  T_ASSERT_MSG(strstr(pmu_server_error(s->pmu), "conn_handler"), "%s", pmu_server_error(s->pmu));
  t_server_destroy(s);
  percon_config(&cfg);
  cfg.ssl_certfile = leaf_a.cert_path;
  T_ASSERT_INT_EQ(t_server_try_start(&cfg, &s), -EINVAL);
  T_ASSERT_MSG(strstr(pmu_server_error(s->pmu), "ssl_certfile"), "%s", pmu_server_error(s->pmu));
  t_server_destroy(s);

  t_case("pmu_conn_tls_use on a server without ssl_cert_per_conn is -EINVAL");
  percon_config(&cfg);
  cfg.ssl_cert_per_conn = 0;
  s = t_server_start(&cfg);
  atomic_store(&mode, MODE_NONE);
  t_conn_t *p = t_connect(s);
  T_WAIT_UNTIL(atomic_load(&last_conn) != NULL, T_EVENT_MS);
  T_ASSERT_INT_EQ(pmu_conn_tls_use(atomic_load(&last_conn), certs_a), -EINVAL);
  t_conn_close(p);
  t_server_destroy(s);
}

int main(void) {
  t_init("test_tls_percon");
  t_tls_make_ca("ca", &ca);
  const char *const dns[] = {"localhost", NULL};
  t_tls_cert_opts_t o = {.kind = T_TLS_ECDSA_P256, .dns = dns};
  t_tls_make_cert(&ca, "a", &o, &leaf_a);
  o.kind = T_TLS_RSA2048;
  t_tls_make_cert(&ca, "b", &o, &leaf_b);
  t_tls_cert_opts_t co = {.kind = T_TLS_ECDSA_P256, .cn = "test client", .client = true};
  t_tls_make_cert(&ca, "client", &co, &client);
  certs_a = certs_from(&leaf_a, 0);
  certs_b = certs_from(&leaf_b, 0);
  certs_verify = certs_from(&leaf_a, 2);

  test_use();
  test_later();
  test_waiting_bounded();
  test_refusals();

  /* Connections hold their references: released with the servers, then these. */
  pmu_tls_certs_release(certs_a);
  pmu_tls_certs_release(certs_b);
  pmu_tls_certs_release(certs_verify);
  t_tls_cert_free(&client);
  t_tls_cert_free(&leaf_b);
  t_tls_cert_free(&leaf_a);
  t_tls_cert_free(&ca);
  return t_done();
}
