/*
 * test_body_stream: request bodies streamed to the handler (on_body with
 * body_stream_threshold). A large Content-Length body is handed over before
 * its bytes; a chunked body switches to streaming once it outgrows the
 * threshold; a small body stays buffered; a handler that consumes slowly
 * holds the engine to output_high_water; an early answer stops delivery and
 * closes; a client that leaves mid-body yields on_disconnect.
 */
#include "testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define THRESHOLD 1000
#define HIGH_WATER (64 * 1024)

typedef struct upload {
  size_t received;
  uint64_t sum; /* position-weighted checksum of the bytes */
  int saw_request_first;
  int slow;  /* consume only from the consumer thread */
  int early; /* answer at the first piece */
  int answered;
} upload_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static size_t max_backlog, delivered_total, consumed_total;
static int disconnects, pieces_after_answer;
static atomic_int stop_consumer;
static pmu_request_t *slow_request;
static upload_t *early_upload; /* kept to catch pieces after the answer; freed at exit */

static uint64_t mix(uint64_t sum, const unsigned char *p, size_t n, size_t at) {
  for (size_t i = 0; i < n; i++)
    sum += (uint64_t)p[i] * (at + i + 1);
  return sum;
}

static void answer(pmu_request_t *r, upload_t *u) {
  char body[128];
  int n = snprintf(body, sizeof body, "received=%zu sum=%llu streaming=%d first=%d", u->received,
                   (unsigned long long)u->sum, r->body_streaming, u->saw_request_first);
  u->answered = 1;
  pmu_respond_simple(r, 200, NULL, 0, body, (size_t)n);
}

static void on_body(void *data, pmu_request_t *r, const void *piece, size_t len, int last) {
  (void)data;
  upload_t *u = r->user;
  if (u->answered) {
    pieces_after_answer++;
    return;
  }
  u->sum = mix(u->sum, piece, len, u->received);
  u->received += len;
  pthread_mutex_lock(&lock);
  delivered_total += len;
  if (delivered_total - consumed_total > max_backlog)
    max_backlog = delivered_total - consumed_total;
  pthread_mutex_unlock(&lock);
  if (!u->slow)
    pmu_request_body_consumed(r, len);
  if (u->early) {
    answer(r, u);
    early_upload = u;
    return;
  }
  if (last) {
    if (u->slow) {
      atomic_store(&stop_consumer, 1);
      slow_request = NULL;
    }
    answer(r, u);
    free(u);
  }
}

static void on_disconnect(void *data, pmu_request_t *r) {
  (void)data;
  pthread_mutex_lock(&lock);
  disconnects++;
  pthread_mutex_unlock(&lock);
  upload_t *u = r->user;
  if (u && !u->answered) {
    answer(r, u); /* released: the connection is gone */
    free(u);
  } else if (u) {
    free(u);
  }
}

static void *consumer(void *arg) {
  (void)arg;
  while (!atomic_load(&stop_consumer)) {
    pthread_mutex_lock(&lock);
    size_t backlog = delivered_total - consumed_total;
    pmu_request_t *r = slow_request;
    size_t take = backlog < 8192 ? backlog : 8192;
    consumed_total += take;
    pthread_mutex_unlock(&lock);
    if (r && take)
      pmu_request_body_consumed(r, take);
    t_sleep_ms(1);
  }
  return NULL;
}

static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (r->path_len < 7 || memcmp(r->path, "/upload", 7) != 0) {
      t_handle_request(data, r);
      continue;
    }
    upload_t *u = calloc(1, sizeof *u);
    r->user = u;
    u->saw_request_first = r->body_streaming && r->body == NULL;
    u->slow = t_memmem(r->query, r->query_len, "slow") != NULL;
    u->early = t_memmem(r->query, r->query_len, "early") != NULL;
    if (u->slow) {
      pthread_mutex_lock(&lock);
      delivered_total = consumed_total = max_backlog = 0;
      slow_request = r;
      pthread_mutex_unlock(&lock);
    }
    if (!r->body_streaming) { /* small: buffered whole */
      u->sum = mix(0, (const unsigned char *)r->body, r->body_len, 0);
      u->received = r->body_len;
      answer(r, u);
      free(u);
    }
  }
}

static char *pattern(size_t n) {
  char *p = malloc(n);
  for (size_t i = 0; i < n; i++)
    p[i] = (char)('A' + (i * 7) % 26);
  return p;
}

static void expect_upload(t_response_t *resp, size_t n, const char *body, int streaming) {
  char want[128];
  snprintf(want, sizeof want, "received=%zu sum=%llu streaming=%d first=%d", n,
           (unsigned long long)mix(0, (const unsigned char *)body, n, 0), streaming, streaming);
  T_ASSERT_INT_EQ(resp->status, 200);
  T_ASSERT_STR_EQ(resp->body, want);
}

static void send_content_length(t_conn_t *conn, const char *path, const char *body, size_t n) {
  char head[256];
  snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: h\r\nContent-Length: %zu\r\n\r\n", path,
           n);
  t_send_str(conn, head);
  t_send(conn, body, n);
}

static int disconnect_count(void) {
  pthread_mutex_lock(&lock);
  int n = disconnects;
  pthread_mutex_unlock(&lock);
  return n;
}

/* True once on_disconnect has been called more than `before` times. */
static bool wait_disconnect_after(int before, int timeout_ms) {
  T_WAIT_UNTIL(disconnect_count() != before, timeout_ms);
  return disconnect_count() > before;
}

/* A connection that announced 100,000 bytes of body and sent 5,000. */
static size_t delivered(void) {
  pthread_mutex_lock(&lock);
  size_t n = delivered_total;
  pthread_mutex_unlock(&lock);
  return n;
}

static t_conn_t *start_upload_then_stop(const t_server_t *server) {
  char *body = pattern(5000);
  size_t before = delivered();
  t_conn_t *conn = t_connect(server);
  t_send_str(conn, "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n");
  t_send(conn, body, 5000);
  free(body);
  /* the request is with the handler, its 5000 bytes delivered to on_body */
  T_WAIT_UNTIL(delivered() >= before + 5000, T_EVENT_MS);
  T_ASSERT_MSG(delivered() >= before + 5000, "on_body got %zu of 5000 bytes", delivered() - before);
  return conn;
}

int main(void) {
  t_init("body_stream");
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  config.on_body = on_body;
  config.on_disconnect = on_disconnect;
  config.body_stream_threshold = THRESHOLD;
  config.output_high_water = HIGH_WATER;
  config.max_body_bytes = 64u << 20;
  t_server_t *server = t_server_start(&config);
  pthread_t consumer_thread;
  pthread_create(&consumer_thread, NULL, consumer, NULL);

  t_case("a small body stays buffered");
  {
    char *body = pattern(500);
    t_conn_t *conn = t_connect(server);
    send_content_length(conn, "/upload", body, 500);
    t_response_t resp;
    t_expect_response(conn, &resp);
    expect_upload(&resp, 500, body, 0);
    t_response_free(&resp);
    t_conn_close(conn);
    free(body);
  }

  t_case("a 300 KB Content-Length body is streamed, the request seen first; then keep-alive");
  {
    size_t n = 300000;
    char *body = pattern(n);
    t_conn_t *conn = t_connect(server);
    send_content_length(conn, "/upload", body, n);
    t_response_t resp;
    t_expect_response(conn, &resp);
    expect_upload(&resp, n, body, 1);
    t_response_free(&resp);
    t_send_str(conn, "GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    t_expect_response(conn, &resp);
    T_ASSERT_FIELD(&resp, "path", "/after");
    t_response_free(&resp);
    t_conn_close(conn);
    free(body);
  }

  t_case("a chunked body switches to streaming past the threshold");
  {
    size_t n = 50000, piece = 3000;
    char *body = pattern(n);
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (size_t off = 0; off < n; off += piece) {
      size_t len = n - off < piece ? n - off : piece;
      char size[32];
      snprintf(size, sizeof size, "%zx\r\n", len);
      t_send_str(conn, size);
      t_send(conn, body + off, len);
      t_send_str(conn, "\r\n");
    }
    t_send_str(conn, "0\r\n\r\n");
    t_response_t resp;
    t_expect_response(conn, &resp);
    char want[128];
    snprintf(want, sizeof want, "received=%zu sum=%llu streaming=1 first=1", n,
             (unsigned long long)mix(0, (const unsigned char *)body, n, 0));
    T_ASSERT_STR_EQ(resp.body, want); /* handed over mid-body, still before its pieces */
    t_response_free(&resp);
    t_conn_close(conn);
    free(body);
  }

  t_case("a slow consumer holds the engine near output_high_water (8 MiB upload)");
  {
    atomic_store(&stop_consumer, 0);
    size_t n = 8u << 20;
    char *body = pattern(n);
    t_conn_t *conn = t_connect(server);
    send_content_length(conn, "/upload?slow", body, n);
    t_response_t resp;
    t_expect_response(conn, &resp);
    expect_upload(&resp, n, body, 1);
    t_response_free(&resp);
    pthread_mutex_lock(&lock);
    size_t seen = max_backlog;
    pthread_mutex_unlock(&lock);
    /* A few receive buffers may land between the pause and its cancel. */
    T_ASSERT_MSG(seen <= HIGH_WATER + 256 * 1024, "backlog reached %zu", seen);
    t_conn_close(conn);
    free(body);
  }

  t_case("an answer before the body ends stops delivery and closes after the answer");
  {
    size_t n = 200000;
    char *body = pattern(n);
    t_conn_t *conn = t_connect(server);
    int before = pieces_after_answer;
    send_content_length(conn, "/upload?early", body, n);
    t_response_t resp;
    t_expect_response(conn, &resp);
    T_ASSERT_INT_EQ(resp.status, 200);
    t_response_free(&resp);
    T_ASSERT_MSG(t_wait_closed(conn, 3000), "connection not closed after an early answer");
    T_ASSERT_INT_EQ(pieces_after_answer, before);
    t_conn_close(conn);
    free(body);
  }

  t_case("a client that leaves mid-body (reset): on_disconnect");
  {
    t_conn_t *conn = start_upload_then_stop(server);
    int before = disconnect_count();
    t_conn_abort(conn);
    T_ASSERT_MSG(wait_disconnect_after(before, T_EVENT_MS), "on_disconnect not called");
  }

  t_case(
      "a client that half-closes mid-body (FIN): on_disconnect at once, not at the body timeout");
  {
    t_conn_t *conn = start_upload_then_stop(server);
    int before = disconnect_count();
    shutdown(conn->fd, SHUT_WR);
    /* well under body_timeout_ms (30 s): the FIN itself was noticed */
    T_ASSERT_MSG(wait_disconnect_after(before, T_EVENT_MS), "on_disconnect not called within %d ms",
                 T_EVENT_MS);
    t_conn_close(conn);
  }

  atomic_store(&stop_consumer, 1);
  pthread_join(consumer_thread, NULL);
  t_server_destroy(server);
  free(early_upload);
  return t_done();
}
