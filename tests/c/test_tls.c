/*
 * test_tls.c: HTTPS end to end (core/tls.c): real TLS clients over real
 * sockets against a server with ssl_certfile set.
 *
 * Requests over TLS 1.2 and 1.3 (the handler sees request->tls and the
 * session through pmu_request_tls_info), keep-alive and pipelining, a
 * handshake dribbled one byte at a time, a garbage ClientHello (alert, closed,
 * counted), plain HTTP to the TLS port (nginx's 400), clients vanishing
 * mid-handshake (ASan checks nothing leaks), the handshake timeout, the
 * handshake slot limit (connections beyond it wait, then are served), a
 * 16 MiB streamed upload and a 16 MiB download, a file answer, a WebSocket,
 * resumption, close_notify on a closing answer and on the server's stop, and
 * 1000 concurrent connections (handshaking four at a time), client certificates,
 * connection events and a raw listener over TLS. Bulk answers: a 1 MiB answer
 * goes in sends of 32 KiB of plaintext, 1 MiB answers on 16 connections fault
 * no new pages into the loop thread (the ciphertext buffers are the loop's
 * spares), and connections done with them keep no large buffer.
 */
#include "testlib.h"
#include "tlslib.h"
#include "wslib.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <malloc.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static t_tls_cert_t ca, leaf;
static char file_path[600];
static size_t file_len = 3 * 1024 * 1024 + 123; /* above file_splice_min: the read path */

/* ---- the server ---- */

static atomic_ulong upload_bytes;
static atomic_int saw_plain_request; /* a request without tls came in */
static char *mib;                    /* /mib's body: 1 MiB, made once */

static void no_release(void *ctx) { (void)ctx; }

/* /tlsinfo: what pmu_request_tls_info says; /file: the test file; /upload: a
 * streamed body counted (on_body) and answered with its length; /mib: 1 MiB
 * of static bytes (no copy, no allocation); /minflt: the loop thread's minor
 * page faults so far (the handler runs on it); the rest as wslib's and
 * testlib's handlers answer. */
static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (!r->tls)
      atomic_store(&saw_plain_request, 1);
    if (t_path_is(r, "/tlsinfo")) {
      pmu_tls_info_t info;
      char body[512];
      int rc = pmu_request_tls_info(r, &info);
      int n =
          rc ? snprintf(body, sizeof body, "rc=%d\n", rc)
             : snprintf(body, sizeof body,
                        "tls=%d\nversion=%04x\nname=%s\ncipher=%s\nalpn=%s\nresumed=%d\n"
                        "server_cert=%zu\n",
                        r->tls, info.version, info.version_name, info.cipher,
                        info.alpn ? info.alpn : "(none)", info.resumed, info.server_cert_der_len);
      pmu_response_t resp = {.status = 200, .body = body, .body_len = (size_t)n};
      pmu_respond(r, &resp);
    } else if (t_path_is(r, "/peer")) {
      pmu_tls_info_t info;
      const unsigned char *der = NULL;
      size_t der_len = 0;
      char body[512];
      T_ASSERT_INT_EQ(pmu_request_tls_info(r, &info), 0);
      int rc0 = pmu_request_tls_peer_cert(r, 0, &der, &der_len);
      const unsigned char *der1;
      size_t len1;
      int rc_end = pmu_request_tls_peer_cert(r, info.peer_chain_len, &der1, &len1);
      int n = snprintf(body, sizeof body,
                       "peer_cert=%d\nsubject=%s\nchain=%u\nrc0=%d\nder_len=%zu\n"
                       "rc_end=%d\n",
                       info.peer_cert, info.peer_subject ? info.peer_subject : "(none)",
                       info.peer_chain_len, rc0, der_len, rc_end);
      if (rc0 == 0)
        n += snprintf(body + n, sizeof body - (size_t)n, "der_first=%02x\n", der[0]);
      pmu_response_t resp = {.status = 200, .body = body, .body_len = (size_t)n};
      pmu_respond(r, &resp);
    } else if (t_path_is(r, "/mib")) {
      pmu_response_t resp = {
          .status = 200, .body = mib, .body_len = 1 << 20, .body_release = no_release};
      pmu_respond(r, &resp);
    } else if (t_path_is(r, "/minflt")) {
      struct rusage ru;
      T_ASSERT(getrusage(RUSAGE_THREAD, &ru) == 0);
      char body[64];
      int n = snprintf(body, sizeof body, "minflt=%ld\n", ru.ru_minflt);
      pmu_response_t resp = {.status = 200, .body = body, .body_len = (size_t)n};
      pmu_respond(r, &resp);
    } else if (t_path_is(r, "/file")) {
      int fd = open(file_path, O_RDONLY | O_CLOEXEC);
      T_ASSERT(fd >= 0);
      T_ASSERT_INT_EQ(pmu_respond_file(r, 200, NULL, 0, fd, 0, file_len, NULL, NULL), 0);
    } else if (t_path_is(r, "/upload") && r->body_streaming) {
      atomic_store(&upload_bytes, 0); /* answered by on_body at the last piece */
    } else if (r->ws_upgrade) {
      t_ws_handler(data, &requests[i], 1);
    } else {
      t_handle_request(data, r);
    }
  }
}

static void on_body(void *data, pmu_request_t *r, const void *bytes, size_t len, int last) {
  (void)data;
  (void)bytes;
  atomic_fetch_add(&upload_bytes, len);
  pmu_request_body_consumed(r, len);
  if (last) {
    char body[64];
    int n = snprintf(body, sizeof body, "got=%lu\n", (unsigned long)atomic_load(&upload_bytes));
    pmu_response_t resp = {.status = 200, .body = body, .body_len = (size_t)n};
    pmu_respond(r, &resp);
  }
}

static void tls_config(pmu_config_t *cfg) {
  t_ws_config_init(cfg);
  cfg->handler = handler;
  cfg->on_body = on_body;
  cfg->body_stream_threshold = 1 << 20;
  cfg->max_body_bytes = 64u << 20;
  cfg->threads = 1;
  cfg->ssl_certfile = leaf.cert_path;
  cfg->ssl_keyfile = leaf.key_path;
}

/* ---- a client over the library's connect ---- */

typedef struct tconn {
  SSL *ssl;
  int fd;
  char *buf;
  size_t len, cap;
  int eof; /* 1: close_notify, 2: TCP end without it, 3: error */
} tconn_t;

static tconn_t *tc_connect(uint16_t port, const t_tls_client_opts_t *opts) {
  char why[256];
  tconn_t *c = calloc(1, sizeof *c);
  T_ASSERT(c);
  t_tls_client_opts_t none = {0};
  c->ssl = t_tls_connect(port, opts ? opts : &none, T_IO_TIMEOUT_MS, &c->fd, why, sizeof why);
  T_ASSERT_MSG(c->ssl, "handshake failed: %s", why);
  struct timeval tv = {.tv_sec = 5};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return c;
}

static void tc_send(tconn_t *c, const void *data, size_t len) {
  T_ASSERT_MSG(t_tls_write_all(c->ssl, data, len), "TLS write failed");
}

/* Read more into c->buf: > 0 bytes, 0 at the end (c->eof says how), -1 timeout. */
static int tc_more(tconn_t *c) {
  if (c->cap - c->len < 16384) {
    c->cap = c->cap ? c->cap * 2 : 65536;
    c->buf = realloc(c->buf, c->cap + 1);
    T_ASSERT(c->buf);
  }
  ERR_clear_error();
  int n = SSL_read(c->ssl, c->buf + c->len, (int)(c->cap - c->len));
  if (n > 0) {
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    return n;
  }
  int err = SSL_get_error(c->ssl, n);
  if (err == SSL_ERROR_ZERO_RETURN) {
    c->eof = 1;
    return 0;
  }
  if (err == SSL_ERROR_WANT_READ ||
      (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK))) {
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    return poll(&p, 1, T_IO_TIMEOUT_MS) == 1 ? tc_more(c) : -1;
  }
  c->eof = err == SSL_ERROR_SYSCALL ? 2 : 3;
  return 0;
}

static void tc_response(tconn_t *c, t_response_t *out, bool head) {
  for (;;) {
    long used = t_parse_response(c->buf ? c->buf : "", c->len, head, c->eof != 0, out);
    T_ASSERT_MSG(used >= 0, "malformed response");
    if (used > 0) {
      memmove(c->buf, c->buf + used, c->len - (size_t)used);
      c->len -= (size_t)used;
      return;
    }
    T_ASSERT_MSG(!c->eof, "connection ended before a response (%d)", c->eof);
    T_ASSERT_MSG(tc_more(c) >= 0, "no response in time");
  }
}

/* Wait for the end of the connection; returns c->eof (1: close_notify). */
static int tc_end(tconn_t *c) {
  while (!c->eof)
    T_ASSERT_MSG(tc_more(c) >= 0, "the connection stayed open");
  return c->eof;
}

static void tc_close(tconn_t *c) {
  t_tls_close(c->ssl, c->fd);
  free(c->buf);
  free(c);
}

static void tc_get(tconn_t *c, const char *target, t_response_t *out) {
  char req[512];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", target);
  tc_send(c, req, (size_t)n);
  tc_response(c, out, false);
}

static int raw_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  T_ASSERT(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  T_ASSERT(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* The ClientHello a default client sends (bytes into out, its length). */
static size_t client_hello(char *out, size_t cap) {
  t_tls_client_opts_t none = {0};
  SSL *ssl = t_tls_client_ssl(&none);
  BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, r, w);
  T_ASSERT(SSL_do_handshake(ssl) <= 0);
  int n = BIO_read(w, out, (int)cap);
  T_ASSERT(n > 0);
  SSL_free(ssl);
  return (size_t)n;
}

/* ---- cases ---- */

static void check_info(tconn_t *c, const char *version, const char *version_name) {
  t_response_t resp;
  tc_get(c, "/tlsinfo", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_FIELD(&resp, "tls", "1");
  T_ASSERT_FIELD(&resp, "version", version);
  T_ASSERT_FIELD(&resp, "name", version_name);
  T_ASSERT_FIELD(&resp, "alpn", "(none)");
  char v[32];
  T_ASSERT(t_describe_get(&resp, "server_cert", v, sizeof v) && atoi(v) > 100);
  t_response_free(&resp);
}

static void test_versions(t_server_t *s) {
  t_case("a request over TLS 1.3, its session seen by the handler");
  tconn_t *c = tc_connect(s->port, NULL);
  check_info(c, "0304", "TLSv1.3");
  t_response_t resp;
  tc_get(c, "/a?b=1", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_FIELD(&resp, "target", "/a?b=1");
  t_response_free(&resp);
  tc_close(c);

  t_case("a request over TLS 1.2");
  t_tls_client_opts_t o12 = {.max_version = TLS1_2_VERSION};
  c = tc_connect(s->port, &o12);
  check_info(c, "0303", "TLSv1.2");
  tc_close(c);

  t_case("ALPN http/1.1 negotiated and reported");
  t_tls_client_opts_t alpn = {.alpn = "http/1.1"};
  c = tc_connect(s->port, &alpn);
  tc_get(c, "/tlsinfo", &resp);
  T_ASSERT_FIELD(&resp, "alpn", "http/1.1");
  t_response_free(&resp);
  tc_close(c);
}

static void test_keepalive_pipeline(t_server_t *s) {
  t_case("keep-alive: requests one after another on one TLS connection");
  tconn_t *c = tc_connect(s->port, NULL);
  for (int i = 0; i < 20; i++) {
    char target[32];
    snprintf(target, sizeof target, "/k%d", i);
    t_response_t resp;
    tc_get(c, target, &resp);
    T_ASSERT_INT_EQ(resp.status, 200);
    T_ASSERT_FIELD(&resp, "target", target);
    t_response_free(&resp);
  }

  t_case("backpressure: 300 pipelined requests for 64 KiB answers, read only afterwards");
  {
    pmu_stats_t before = t_stats(s, -1);
    char *many = malloc(300 * 64);
    size_t mlen = 0;
    for (int i = 0; i < 300; i++)
      mlen += (size_t)sprintf(many + mlen, "GET /big?n=65536&i=%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
    tc_send(c, many, mlen); /* it fits the socket buffers: the server pauses reading */
    free(many);
    t_sleep_ms(200);
    for (int i = 0; i < 300; i++) {
      t_response_t resp;
      tc_response(c, &resp, false);
      T_ASSERT_INT_EQ(resp.status, 200);
      T_ASSERT_INT_EQ(resp.body_len, 65536);
      t_response_free(&resp);
    }
    T_ASSERT(t_stats(s, -1).recv_paused > before.recv_paused);
  }

  t_case("pipelining: 50 requests in one write, answered in order");
  char *req = malloc(50 * 64);
  size_t len = 0;
  for (int i = 0; i < 50; i++)
    len += (size_t)sprintf(req + len, "GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
  tc_send(c, req, len);
  free(req);
  for (int i = 0; i < 50; i++) {
    char target[32];
    snprintf(target, sizeof target, "/p%d", i);
    t_response_t resp;
    tc_response(c, &resp, false);
    T_ASSERT_FIELD(&resp, "target", target);
    t_response_free(&resp);
  }
  tc_close(c);
}

/* Send the client's output one byte per TCP segment. */
static void dribble_out(int fd, BIO *w) {
  char b;
  while (BIO_read(w, &b, 1) == 1) {
    T_ASSERT(send(fd, &b, 1, MSG_NOSIGNAL) == 1);
    t_sleep_ms(1);
  }
}

static void test_dribble(t_server_t *s) {
  t_case("a handshake and a request dribbled one byte at a time");
  pmu_stats_t before = t_stats(s, -1);
  int fd = raw_connect(s->port);
  t_tls_client_opts_t none = {0};
  SSL *ssl = t_tls_client_ssl(&none);
  BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, r, w);
  int64_t until = t_now_ms() + T_EVENT_MS;
  for (;;) {
    int rc = SSL_do_handshake(ssl);
    dribble_out(fd, w);
    if (rc == 1)
      break;
    T_ASSERT_INT_EQ(SSL_get_error(ssl, rc), SSL_ERROR_WANT_READ);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    T_ASSERT(poll(&p, 1, 5000) == 1);
    char in[4096];
    ssize_t n = recv(fd, in, sizeof in, 0);
    T_ASSERT(n > 0);
    BIO_write(r, in, (int)n);
    T_ASSERT(t_now_ms() < until);
  }
  static const char req[] = "GET /dribbled HTTP/1.1\r\nHost: x\r\n\r\n";
  T_ASSERT(SSL_write(ssl, req, sizeof req - 1) == (int)sizeof req - 1);
  dribble_out(fd, w);
  char buf[8192];
  size_t got = 0;
  t_response_t resp;
  long used;
  while ((used = t_parse_response(buf, got, false, false, &resp)) == 0) {
    int n = SSL_read(ssl, buf + got, (int)(sizeof buf - 1 - got));
    if (n > 0) {
      got += (size_t)n;
      continue;
    }
    T_ASSERT_INT_EQ(SSL_get_error(ssl, n), SSL_ERROR_WANT_READ);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    T_ASSERT(poll(&p, 1, 5000) == 1);
    char in[4096];
    ssize_t k = recv(fd, in, sizeof in, 0);
    T_ASSERT(k > 0);
    BIO_write(r, in, (int)k);
  }
  T_ASSERT(used > 0);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_FIELD(&resp, "target", "/dribbled");
  t_response_free(&resp);
  SSL_free(ssl);
  close(fd);
  pmu_stats_t after = t_stats(s, -1);
  T_ASSERT_INT_EQ(after.tls_handshakes - before.tls_handshakes, 1);
}

static void test_garbage(t_server_t *s) {
  static const char *const garbage[] = {
      "\x16\x03\x01\x00\x10"
      "0123456789abcdef", /* a handshake record of nonsense */
      /* no TLS record at all: OpenSSL closes without an alert (as openssl s_server) */
      "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f",
      "\x16\x03\x01\xff\xff", /* a record longer than any may be: record_overflow */
  };
  for (size_t i = 0; i < sizeof garbage / sizeof *garbage; i++) {
    t_case("a garbage ClientHello: an alert, closed, counted");
    pmu_stats_t before = t_stats(s, -1);
    int fd = raw_connect(s->port);
    size_t len = i == 1 ? 16 : i == 0 ? 21 : 5;
    T_ASSERT(send(fd, garbage[i], len, MSG_NOSIGNAL) == (ssize_t)len);
    char buf[256];
    size_t got = t_read_until_closed(fd, buf, sizeof buf);
    if (i != 1)
      T_ASSERT_MSG(got >= 7 && buf[0] == 0x15, "no alert record (got %zu bytes)", got);
    else
      T_ASSERT_MSG(got == 0 || buf[0] == 0x15, "not an alert (got %zu bytes)", got);
    close(fd);
    T_WAIT_UNTIL(t_stats(s, -1).tls_handshake_errors == before.tls_handshake_errors + 1,
                 T_EVENT_MS);
    T_ASSERT_INT_EQ(t_stats(s, -1).tls_handshake_errors - before.tls_handshake_errors, 1);
  }
}

static void test_plain_http(t_server_t *s) {
  t_case("plain HTTP to the TLS port: 400, nginx's text, closed, counted");
  pmu_stats_t before = t_stats(s, -1);
  atomic_store(&saw_plain_request, 0);
  t_conn_t *c = t_connect(s);
  t_send_str(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  t_response_t resp;
  t_expect_response(c, &resp);
  T_ASSERT_INT_EQ(resp.status, 400);
  T_ASSERT_STR_EQ(resp.body, "The plain HTTP request was sent to HTTPS port\n");
  T_ASSERT_STR_EQ(t_header(&resp, "Connection"), "close");
  t_response_free(&resp);
  t_expect_closed(c, T_EVENT_MS);
  t_conn_close(c);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_plain_http - before.tls_plain_http, 1);
  T_ASSERT_INT_EQ(atomic_load(&saw_plain_request), 0); /* the handler never saw it */
}

static void test_vanish(t_server_t *s) {
  char hello[4096];
  size_t n = client_hello(hello, sizeof hello);
  for (int how = 0; how < 3; how++) {
    t_case(how == 0   ? "a client vanishing after half its ClientHello"
           : how == 1 ? "a client vanishing after its ClientHello, before reading"
                      : "a client resetting mid-handshake");
    int fd = raw_connect(s->port);
    T_ASSERT(send(fd, hello, how == 0 ? n / 2 : n, MSG_NOSIGNAL) > 0);
    if (how == 2) {
      t_sleep_ms(20);
      struct linger l = {.l_onoff = 1, .l_linger = 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    close(fd);
    T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);
    T_ASSERT_INT_EQ(t_stats(s, -1).connections_open, 0);
  }
}

static void test_resumption(t_server_t *s) {
  t_case("resumption: a second connection resumes the first's session");
  pmu_stats_t before = t_stats(s, -1);
  tconn_t *c = tc_connect(s->port, NULL);
  t_response_t resp;
  tc_get(c, "/first", &resp); /* TLS 1.3 tickets come after the handshake */
  t_response_free(&resp);
  SSL_SESSION *sess = SSL_get1_session(c->ssl);
  T_ASSERT(sess && SSL_SESSION_is_resumable(sess));
  tc_close(c);
  t_tls_client_opts_t again = {.session = sess};
  c = tc_connect(s->port, &again);
  T_ASSERT_MSG(SSL_session_reused(c->ssl), "the session was not resumed");
  tc_get(c, "/tlsinfo", &resp);
  T_ASSERT_FIELD(&resp, "resumed", "1");
  t_response_free(&resp);
  tc_close(c);
  SSL_SESSION_free(sess);
  pmu_stats_t after = t_stats(s, -1);
  T_ASSERT_INT_EQ(after.tls_resumed - before.tls_resumed, 1);
  T_ASSERT_INT_EQ(after.tls_handshakes - before.tls_handshakes, 2);
}

static void test_close_notify_answer(t_server_t *s) {
  t_case("an answer with Connection: close ends with close_notify");
  pmu_stats_t before = t_stats(s, -1);
  tconn_t *c = tc_connect(s->port, NULL);
  t_response_t resp;
  tc_get(c, "/close", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_STR_EQ(t_header(&resp, "Connection"), "close");
  t_response_free(&resp);
  T_ASSERT_INT_EQ(tc_end(c), 1);
  tc_close(c);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_close_notify - before.tls_close_notify, 1);
}

static void test_download_upload(t_server_t *s) {
  t_case("a 16 MiB download over TLS");
  tconn_t *c = tc_connect(s->port, NULL);
  const size_t big = 16u << 20;
  char target[64];
  snprintf(target, sizeof target, "/big?n=%zu", big);
  t_response_t resp;
  tc_get(c, target, &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_INT_EQ(resp.body_len, big);
  for (size_t i = 0; i < big; i += 4093)
    T_ASSERT_MSG(resp.body[i] == (char)('a' + i % 26), "byte %zu wrong", i);
  t_response_free(&resp);

  t_case("a 16 MiB upload over TLS, streamed to the handler");
  char head[128];
  int n = snprintf(head, sizeof head,
                   "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", big);
  tc_send(c, head, (size_t)n);
  char *chunk = malloc(1 << 20);
  memset(chunk, 'u', 1 << 20);
  for (int i = 0; i < 16; i++)
    tc_send(c, chunk, 1 << 20);
  free(chunk);
  tc_response(c, &resp, false);
  T_ASSERT_INT_EQ(resp.status, 200);
  char want[64];
  snprintf(want, sizeof want, "got=%zu\n", big);
  T_ASSERT_STR_EQ(resp.body, want);
  t_response_free(&resp);
  tc_close(c);
}

static long loop_minflt(tconn_t *c) {
  t_response_t resp;
  tc_get(c, "/minflt", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  char v[32];
  T_ASSERT(t_describe_get(&resp, "minflt", v, sizeof v));
  t_response_free(&resp);
  return atol(v);
}

static const char get_mib_req[] = "GET /mib HTTP/1.1\r\nHost: x\r\n\r\n";

static void get_mib_response(tconn_t *c) {
  t_response_t resp;
  tc_response(c, &resp, false);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_INT_EQ(resp.body_len, 1 << 20);
  T_ASSERT(resp.body[0] == 'm' && resp.body[(1 << 20) - 1] == 'm');
  t_response_free(&resp);
}

static size_t heap_bytes(void) {
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

static void test_bulk(t_server_t *s) {
  if (!T_HEAP_MEASURED)
    return;
  t_case("a 1 MiB answer goes in sends of 32 KiB of plaintext");
  tconn_t *one = tc_connect(s->port, NULL);
  t_response_t first;
  tc_get(one, "/x", &first); /* the handshake's sends (tickets) are behind */
  t_response_free(&first);
  pmu_stats_t st0 = t_stats(s, -1);
  tc_send(one, get_mib_req, sizeof get_mib_req - 1);
  get_mib_response(one);
  /* The last send's completion may come after the client read its bytes. */
  T_WAIT_UNTIL(t_stats(s, -1).bytes_out >= st0.bytes_out + (1 << 20), T_EVENT_MS);
  pmu_stats_t st1 = t_stats(s, -1);
  /* Head and body in 32 KiB pieces: 32 full ones and the rest (the head's
   * length), each one send; a short send's rest is a send more, not a piece. */
  uint64_t pieces = (st1.sends - st0.sends) - (st1.short_sends - st0.short_sends);
  T_ASSERT_MSG(pieces == 33, "%llu sends (%llu short) for a 1 MiB answer",
               (unsigned long long)(st1.sends - st0.sends),
               (unsigned long long)(st1.short_sends - st0.short_sends));
  tc_close(one);

  t_case("1 MiB answers on 16 connections at once: no page faulted in on the loop thread");
  enum { K = 16, ROUNDS = 4 };
  /* malloc's defaults, as in a fresh server: the 16 MiB download's free raised
   * its trim threshold for the rest of the process. */
  T_ASSERT(mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1);
  tconn_t *ks[K];
  for (int i = 0; i < K; i++)
    ks[i] = tc_connect(s->port, NULL);
  long f0 = 0;
  for (int round = 0; round < ROUNDS; round++) {
    if (round == 1)
      f0 = loop_minflt(ks[0]); /* after a round that made every buffer once */
    for (int i = 0; i < K; i++)
      tc_send(ks[i], get_mib_req, sizeof get_mib_req - 1);
    for (int i = 0; i < K; i++)
      get_mib_response(ks[i]);
  }
  long f1 = loop_minflt(ks[0]);
  /* Each connection freed its ciphertext buffer after every send, and with
   * sends of many connections interleaved malloc gave the pages back to the
   * kernel now and then, to fault them in again: about 20 faults an answer. */
  const int answers = K * (ROUNDS - 1);
  T_ASSERT_MSG(f1 - f0 < answers / 2, "%ld page faults in %d answers", f1 - f0, answers);
  for (int i = 0; i < K; i++)
    tc_close(ks[i]);

  t_case("64 connections done with 1 MiB answers keep no ciphertext buffer");
  enum { N = 64 };
  tconn_t *cs[N];
  t_response_t resp;
  /* The 16 connections above are gone on the server's side too (their frees
   * would fall into the measure). */
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);
  for (int i = 0; i < N; i++) {
    cs[i] = tc_connect(s->port, NULL);
    tc_get(cs[i], "/x", &resp); /* every object of the connection, both sides */
    t_response_free(&resp);
  }
  size_t before = heap_bytes();
  /* All 64 answers at once: each connection holds its buffers meanwhile. */
  for (int i = 0; i < N; i++)
    tc_send(cs[i], get_mib_req, sizeof get_mib_req - 1);
  for (int i = 0; i < N; i++) {
    tc_response(cs[i], &resp, false);
    T_ASSERT_INT_EQ(resp.body_len, 1 << 20);
    t_response_free(&resp);
    /* The client's buffer back to the size it had when `before` was taken. */
    T_ASSERT(cs[i]->len == 0 && cs[i]->cap > 65536);
    free(cs[i]->buf);
    cs[i]->buf = malloc(65536 + 1);
    T_ASSERT(cs[i]->buf);
    cs[i]->cap = 65536;
  }
  /* At most the loop's spares (32 of 36 KiB) stay; kept by the idle connections
   * they would be 64 x 36 KiB (2.3 MiB) at least. The wait: the client may read the
   * last bytes before the server saw its send complete (and not so long that
   * the keep-alive timeout closes them). */
  const size_t bound = 3u << 19;
  T_WAIT_UNTIL(heap_bytes() < before + bound, 1000);
  size_t after = heap_bytes();
  T_ASSERT_INT_EQ(t_stats(s, -1).connections_open, N); /* measured while they are open */
  size_t grown = after > before ? after - before : 0;
  T_ASSERT_MSG(grown < bound, "the heap grew by %zu KiB for %d idle connections", grown >> 10, N);
  for (int i = 0; i < N; i++)
    tc_close(cs[i]);
}

static void test_file(t_server_t *s) {
  t_case("a file answer over TLS (read path: never spliced in plaintext)");
  tconn_t *c = tc_connect(s->port, NULL);
  t_response_t resp;
  tc_get(c, "/file", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_INT_EQ(resp.body_len, file_len);
  for (size_t i = 0; i < file_len; i += 977)
    T_ASSERT_MSG(resp.body[i] == (char)(i * 7 % 251), "byte %zu wrong", i);
  t_response_free(&resp);
  tc_close(c);
}

static void test_websocket(t_server_t *s) {
  t_case("a WebSocket over TLS: handshake, one frame echoed");
  tconn_t *c = tc_connect(s->port, NULL);
  char req[1024];
  size_t n = t_ws_request(req, sizeof req, "/ws", NULL);
  tc_send(c, req, n);
  t_response_t resp;
  tc_response(c, &resp, false);
  T_ASSERT_INT_EQ(resp.status, 101);
  t_response_free(&resp);
  char frame[64];
  size_t fl = t_ws_build(frame, 0x81, "hello tls", 9, 1);
  tc_send(c, frame, fl);
  while (c->len < 2 + 9)
    T_ASSERT_MSG(tc_more(c) > 0, "no echo");
  T_ASSERT_INT_EQ((unsigned char)c->buf[0], 0x81);
  T_ASSERT_INT_EQ((unsigned char)c->buf[1], 9);
  T_ASSERT(memcmp(c->buf + 2, "hello tls", 9) == 0);
  tc_close(c);
}

static void *connect_thread(void *arg) {
  uint16_t port = *(uint16_t *)arg;
  tconn_t *c = tc_connect(port, NULL);
  t_response_t resp;
  tc_get(c, "/waited", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  t_response_free(&resp);
  tc_close(c);
  return NULL;
}

static void test_client_certs(void) {
  t_case("client certificates required: one refused without a certificate, counted");
  t_tls_cert_t client;
  const char *const cdns[] = {"client.test", NULL};
  t_tls_cert_opts_t co = {
      .kind = T_TLS_ECDSA_P256, .dns = cdns, .cn = "client one", .client = true};
  t_tls_make_cert(&ca, "client", &co, &client);
  pmu_config_t cfg;
  tls_config(&cfg);
  cfg.ssl_ca_certs = ca.cert_path;
  cfg.ssl_cert_reqs = 2;
  t_server_t *s = t_server_start(&cfg);
  char why[256];
  int fd;
  t_tls_client_opts_t none = {0};
  SSL *ssl = t_tls_connect(s->port, &none, T_IO_TIMEOUT_MS, &fd, why, sizeof why);
  if (ssl) { /* TLS 1.3: the client finished first; the refusal comes at its first read */
    static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    t_tls_write_all(ssl, req, sizeof req - 1);
    char buf[64];
    T_ASSERT(t_tls_read(ssl, buf, sizeof buf, NULL, T_IO_TIMEOUT_MS) <= 0);
    t_tls_close(ssl, fd);
  }
  T_WAIT_UNTIL(t_stats(s, -1).tls_handshake_errors == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_handshake_errors, 1);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_handshakes, 0);

  t_case("... one with a certificate is served, its certificate given to the handler");
  t_tls_client_opts_t with = {.cert = client.cert_path, .key = client.key_path};
  tconn_t *c = tc_connect(s->port, &with);
  t_response_t resp;
  tc_get(c, "/peer", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_FIELD(&resp, "peer_cert", "1");
  T_ASSERT_FIELD(&resp, "subject", "CN=client one,O=pmu tests");
  T_ASSERT_FIELD(&resp, "chain", "1");
  T_ASSERT_FIELD(&resp, "rc0", "0");
  T_ASSERT_FIELD(&resp, "rc_end", "-2");    /* -ENOENT past the end */
  T_ASSERT_FIELD(&resp, "der_first", "30"); /* a DER SEQUENCE */
  char v[32];
  size_t want;
  unsigned char *der = t_tls_der(client.cert, &want);
  OPENSSL_free(der);
  T_ASSERT(t_describe_get(&resp, "der_len", v, sizeof v));
  T_ASSERT_INT_EQ(strtoul(v, NULL, 10), want);
  t_response_free(&resp);
  tc_close(c);
  t_server_destroy(s);
  t_tls_cert_free(&client);
}

static void test_slots(void) {
  t_case("ssl_max_handshakes: a connection beyond the limit waits, then is served");
  pmu_config_t cfg;
  tls_config(&cfg);
  cfg.ssl_max_handshakes = 2;
  t_server_t *s = t_server_start(&cfg);
  int a = raw_connect(s->port), b = raw_connect(s->port); /* silent: they hold the slots */
  T_WAIT_UNTIL(t_stats(s, -1).connections_accepted == 2, T_EVENT_MS);
  pthread_t th;
  uint16_t port = s->port;
  T_ASSERT(pthread_create(&th, NULL, connect_thread, &port) == 0);
  T_WAIT_UNTIL(t_stats(s, -1).tls_handshakes_waiting == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_handshakes_waiting, 1);
  t_sleep_ms(200);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_handshakes, 0); /* still waiting, unread */
  close(a);                                          /* a slot frees */
  T_ASSERT(pthread_join(th, NULL) == 0);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT_INT_EQ(st.tls_handshakes, 1);
  T_ASSERT_INT_EQ(st.tls_handshakes_waiting, 0);
  close(b);
  t_server_destroy(s);
}

static void test_timeout(void) {
  t_case("ssl_handshake_timeout_ms: a silent client is closed, counted");
  pmu_config_t cfg;
  tls_config(&cfg);
  cfg.ssl_handshake_timeout_ms = 300;
  t_server_t *s = t_server_start(&cfg);
  int fd = raw_connect(s->port);
  int64_t t0 = t_now_ms();
  char buf[64];
  T_ASSERT_INT_EQ(t_read_until_closed(fd, buf, sizeof buf), 0);
  int64_t took = t_now_ms() - t0;
  T_ASSERT_MSG(took >= 250 && took < 5000, "closed after %lld ms", (long long)took);
  close(fd);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_handshake_timeouts, 1);

  t_case("a keep-alive connection closed by its idle timeout gets close_notify");
  t_server_destroy(s);
  cfg.keepalive_timeout_ms = 300;
  s = t_server_start(&cfg);
  {
    tconn_t *k = tc_connect(s->port, NULL);
    t_response_t kr;
    tc_get(k, "/then-idle", &kr);
    t_response_free(&kr);
    T_ASSERT_INT_EQ(tc_end(k), 1);
    tc_close(k);
    T_ASSERT_INT_EQ(t_stats(s, -1).tls_close_notify, 1);
  }
  cfg.keepalive_timeout_ms = 5000;

  t_case("the header timeout starts when the handshake ends");
  cfg.ssl_handshake_timeout_ms = 10000;
  cfg.header_timeout_ms = 400;
  t_server_destroy(s);
  s = t_server_start(&cfg);
  fd = raw_connect(s->port);
  t_sleep_ms(700); /* longer than the header timeout, before any handshake byte */
  t_tls_client_opts_t none = {0};
  SSL *ssl = t_tls_client_ssl(&none);
  SSL_set_fd(ssl, fd);
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  T_ASSERT_MSG(SSL_connect(ssl) == 1, "the connection did not wait for its handshake");
  static const char req[] = "GET /in-time HTTP/1.1\r\nHost: x\r\n\r\n";
  T_ASSERT(SSL_write(ssl, req, sizeof req - 1) == (int)sizeof req - 1);
  char got[4096];
  int n = SSL_read(ssl, got, sizeof got - 1);
  T_ASSERT(n > 12);
  T_ASSERT(memcmp(got, "HTTP/1.1 200", 12) == 0);

  SSL_free(ssl);
  close(fd);

  t_case("... and runs from there: a client silent after its handshake is closed by it");
  tconn_t *c = tc_connect(s->port, NULL);
  int64_t t0b = t_now_ms();
  tc_end(c);
  int64_t tookb = t_now_ms() - t0b;
  T_ASSERT_MSG(tookb >= 300 && tookb < 5000, "closed after %lld ms", (long long)tookb);
  tc_close(c);
  t_server_destroy(s);
}

static void test_stop_close_notify(void) {
  t_case("a graceful stop sends close_notify to an idle keep-alive connection");
  pmu_config_t cfg;
  tls_config(&cfg);
  t_server_t *s = t_server_start(&cfg);
  tconn_t *c = tc_connect(s->port, NULL);
  t_response_t resp;
  tc_get(c, "/before-stop", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  t_response_free(&resp);
  pmu_server_stop(s->pmu);
  T_ASSERT_INT_EQ(tc_end(c), 1); /* SSL_read: a clean shutdown */
  tc_close(c);
  T_ASSERT_INT_EQ(pmu_server_wait(s->pmu, T_EVENT_MS), 0);
  T_ASSERT_INT_EQ(t_stats(s, -1).tls_close_notify, 1);
  t_server_destroy(s);
}

/* Connection events over TLS: OPEN once the handshake is done (the session
 * known from it), READ with the plaintext; raw mode echoes DATA back. */
static atomic_int ev_opens, ev_closes, ev_open_version, ev_reads_plain;

static void conn_events(void *data, const pmu_conn_event_t *evs, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    const pmu_conn_event_t *e = &evs[i];
    if (e->type == PMU_CONN_EV_OPEN) {
      pmu_tls_info_t info;
      atomic_fetch_add(&ev_opens, 1);
      atomic_store(&ev_open_version, pmu_conn_tls_info(e->conn, &info) == 0 ? info.version : -1);
    } else if (e->type == PMU_CONN_EV_READ) {
      if (e->len >= 4 && memcmp(e->data, "GET ", 4) == 0)
        atomic_fetch_add(&ev_reads_plain, 1);
    } else if (e->type == PMU_CONN_EV_DATA) {
      T_ASSERT(pmu_conn_send(e->conn, e->data, e->len, NULL, NULL) >= 0);
    } else if (e->type == PMU_CONN_EV_CLOSE) {
      atomic_fetch_add(&ev_closes, 1);
      pmu_conn_release(e->conn);
    }
  }
}

static void test_conn_events(void) {
  t_case("connection events: OPEN after the handshake knows the session, READ is plaintext");
  pmu_config_t cfg;
  tls_config(&cfg);
  cfg.conn_handler = conn_events;
  cfg.conn_io_events = 1;
  t_server_t *s = t_server_start(&cfg);
  tconn_t *c = tc_connect(s->port, NULL);
  t_response_t resp;
  tc_get(c, "/events", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  t_response_free(&resp);
  tc_close(c);
  T_WAIT_UNTIL(atomic_load(&ev_closes) == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&ev_opens), 1);
  T_ASSERT_INT_EQ(atomic_load(&ev_open_version), 0x0304);
  T_ASSERT_INT_EQ(atomic_load(&ev_reads_plain), 1);

  t_case("... a connection that never finishes its handshake gets no OPEN and no CLOSE");
  t_conn_t *p = t_connect(s);
  t_send_str(p, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  t_expect_response(p, &resp);
  T_ASSERT_INT_EQ(resp.status, 400);
  t_response_free(&resp);
  t_expect_closed(p, T_EVENT_MS);
  t_conn_close(p);
  int fd = raw_connect(s->port);
  close(fd);
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);
  t_sleep_ms(50);
  T_ASSERT_INT_EQ(atomic_load(&ev_opens), 1);
  T_ASSERT_INT_EQ(atomic_load(&ev_closes), 1);
  t_server_destroy(s);

  t_case("a raw listener over TLS: DATA is plaintext, pmu_conn_send is encrypted");
  tls_config(&cfg);
  cfg.conn_handler = conn_events;
  cfg.raw = 1;
  s = t_server_start(&cfg);
  c = tc_connect(s->port, NULL);
  for (int i = 0; i < 3; i++) {
    char msg[32];
    int n = snprintf(msg, sizeof msg, "echo %d;", i);
    tc_send(c, msg, (size_t)n);
    while (c->len < (size_t)n)
      T_ASSERT_MSG(tc_more(c) > 0, "no echo");
    T_ASSERT(memcmp(c->buf, msg, (size_t)n) == 0);
    c->len = 0;
  }
  tc_close(c);
  t_server_destroy(s);
}

struct connect_job {
  uint16_t port;
  tconn_t **out;
  int n;
};

static void *connect_many(void *arg) {
  struct connect_job *j = arg;
  for (int i = 0; i < j->n; i++)
    j->out[i] = tc_connect(j->port, NULL);
  return NULL;
}

static void test_concurrent(t_server_t *s) {
  enum { N = 1000 };
  t_case("1000 concurrent TLS connections, a request each");
  T_ASSERT(t_raise_nofile(4 * N + 64));
  tconn_t **cs = calloc(N, sizeof *cs);
  /* Four clients handshake at once: the ring has handshakes of many connections in
   * each turn. */
  struct connect_job jobs[4];
  pthread_t th[4];
  for (int k = 0; k < 4; k++) {
    jobs[k] = (struct connect_job){.port = s->port, .out = cs + k * (N / 4), .n = N / 4};
    T_ASSERT(pthread_create(&th[k], NULL, connect_many, &jobs[k]) == 0);
  }
  for (int k = 0; k < 4; k++)
    T_ASSERT(pthread_join(th[k], NULL) == 0);
  for (int i = 0; i < N; i++) {
    char req[64];
    int n = snprintf(req, sizeof req, "GET /c%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
    tc_send(cs[i], req, (size_t)n);
  }
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == N, T_EVENT_MS); /* earlier cases' closes */
  T_ASSERT_INT_EQ(t_stats(s, -1).connections_open, N);
  for (int i = 0; i < N; i++) {
    char target[32];
    snprintf(target, sizeof target, "/c%d", i);
    t_response_t resp;
    tc_response(cs[i], &resp, false);
    T_ASSERT_FIELD(&resp, "target", target);
    t_response_free(&resp);
    tc_close(cs[i]);
  }
  free(cs);
}

int main(void) {
  t_init("test_tls");
  t_tls_make_ca("ca", &ca);
  const char *const dns[] = {"localhost", NULL};
  t_tls_cert_opts_t o = {.kind = T_TLS_ECDSA_P256, .dns = dns};
  t_tls_make_cert(&ca, "leaf", &o, &leaf);
  snprintf(file_path, sizeof file_path, "%s/file.bin", t_tls_dir());
  char *data = malloc(file_len);
  for (size_t i = 0; i < file_len; i++)
    data[i] = (char)(i * 7 % 251);
  t_write_file(file_path, data, file_len);
  free(data);
  mib = malloc(1 << 20);
  T_ASSERT(mib);
  memset(mib, 'm', 1 << 20);

  pmu_config_t cfg;
  tls_config(&cfg);
  t_server_t *s = t_server_start(&cfg);
  test_versions(s);
  test_keepalive_pipeline(s);
  test_dribble(s);
  test_garbage(s);
  test_plain_http(s);
  test_vanish(s);
  test_resumption(s);
  test_close_notify_answer(s);
  test_download_upload(s);
  test_bulk(s);
  test_file(s);
  test_websocket(s);
  test_concurrent(s);
  T_ASSERT_INT_EQ(atomic_load(&saw_plain_request), 0);
  t_server_destroy(s);

  test_client_certs();
  test_slots();
  test_timeout();
  test_conn_events();
  test_stop_close_notify();

  t_tls_cert_free(&leaf);
  t_tls_cert_free(&ca);
  free(mib);
  return t_done();
}
