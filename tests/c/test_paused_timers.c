/*
 * test_paused_timers: time the engine spends not reading because of its own
 * backpressure never counts against the client. A handler that consumes a
 * streamed body slowly pauses the connection's reads (output_high_water);
 * neither body_timeout_ms nor min_recv_rate may cut the client for that
 * pause: the body timer and the rate window start again when reading resumes.
 */
#include "testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THRESHOLD 1000
#define HIGH_WATER 4096

/* The one upload in flight: on_body counts what it is given; until `held`
 * ends, nothing is consumed, so the engine pauses its reads. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pmu_request_t *upload;
static size_t delivered, backlog;
static int held = 1, disconnects;

static void on_body(void *data, pmu_request_t *r, const void *piece, size_t len, int last) {
  (void)data;
  (void)piece;
  pthread_mutex_lock(&lock);
  delivered += len;
  int consume = !held;
  if (held)
    backlog += len;
  if (last)
    upload = NULL;
  size_t total = delivered;
  pthread_mutex_unlock(&lock);
  if (consume)
    pmu_request_body_consumed(r, len);
  if (last) {
    char body[64];
    int n = snprintf(body, sizeof body, "received=%zu", total);
    pmu_respond_simple(r, 200, NULL, 0, body, (size_t)n);
  }
}

static void on_disconnect(void *data, pmu_request_t *r) {
  (void)data;
  pthread_mutex_lock(&lock);
  disconnects++;
  upload = NULL;
  pthread_mutex_unlock(&lock);
  pmu_respond_simple(r, 500, NULL, 0, NULL, 0); /* released: the connection is gone */
}

static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    if (!requests[i]->body_streaming) {
      t_handle_request(data, requests[i]);
      continue;
    }
    pthread_mutex_lock(&lock);
    upload = requests[i];
    pthread_mutex_unlock(&lock);
  }
}

static size_t delivered_now(void) {
  pthread_mutex_lock(&lock);
  size_t n = delivered;
  pthread_mutex_unlock(&lock);
  return n;
}

static int disconnects_now(void) {
  pthread_mutex_lock(&lock);
  int n = disconnects;
  pthread_mutex_unlock(&lock);
  return n;
}

static void reset(void) {
  pthread_mutex_lock(&lock);
  upload = NULL;
  delivered = backlog = 0;
  held = 1;
  pthread_mutex_unlock(&lock);
}

/* The handler catches up: everything delivered so far is consumed, and what
 * follows is consumed as it comes. */
static void release(void) {
  pthread_mutex_lock(&lock);
  pmu_request_t *r = upload;
  size_t n = backlog;
  backlog = 0;
  held = 0;
  pthread_mutex_unlock(&lock);
  T_ASSERT_MSG(r, "the upload left before the handler caught up (%d disconnects)",
               disconnects_now());
  pmu_request_body_consumed(r, n);
}

static pmu_config_t base_config(void) {
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  config.on_body = on_body;
  config.on_disconnect = on_disconnect;
  config.body_stream_threshold = THRESHOLD;
  config.output_high_water = HIGH_WATER;
  return config;
}

typedef struct sender {
  t_conn_t *conn;
  const char *data;
  size_t len;
  int rc;
} sender_t;

static void *send_all(void *arg) {
  sender_t *s = arg;
  s->rc = t_send_try(s->conn, s->data, s->len);
  return NULL;
}

int main(void) {
  t_init("paused_timers");

  t_case("body_timeout_ms does not run while the engine holds reads back for a slow handler");
  {
    reset();
    pmu_config_t config = base_config();
    config.body_timeout_ms = 1000;
    config.min_recv_rate = 0;
    t_server_t *server = t_server_start(&config);
    size_t n = 1u << 20;
    char head[128];
    int hl = snprintf(head, sizeof head,
                      "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %zu\r\n\r\n", n);
    char *req = malloc((size_t)hl + n);
    memcpy(req, head, (size_t)hl);
    memset(req + hl, 'b', n);
    t_conn_t *conn = t_connect(server);
    sender_t s = {conn, req, (size_t)hl + n, 0};
    pthread_t thread;
    pthread_create(&thread, NULL, send_all, &s);
    /* Paused: the handler has consumed nothing and the engine stopped
     * reading. Hold it there for two and a half body timeouts (the 1 s
     * timeout leaves a client thread kept off the CPU room to send on). */
    T_WAIT_UNTIL(t_stats(server, -1).recv_paused >= 1, T_EVENT_MS);
    T_ASSERT_MSG(t_stats(server, -1).recv_paused >= 1, "the engine never paused its reads");
    t_sleep_ms(2500);
    release();
    pthread_join(thread, NULL);
    T_ASSERT_MSG(s.rc == 0, "the upload was cut after %zu bytes delivered: %s", delivered_now(),
                 strerror(-s.rc));
    t_response_t resp;
    t_expect_response(conn, &resp);
    T_ASSERT_INT_EQ(resp.status, 200);
    char want[64];
    snprintf(want, sizeof want, "received=%zu", n);
    T_ASSERT_STR_EQ(resp.body, want);
    t_response_free(&resp);
    T_ASSERT_INT_EQ(disconnects_now(), 0);
    t_conn_close(conn);
    free(req);
    t_server_destroy(server);
  }

  t_case("min_recv_rate's window starts again when reading resumes, not at a check while paused");
  {
    /* Grace 2 s: the rate is first looked at 2 s after the body began,
     * while reads are paused (before the fix that restarted the window at
     * that moment, 2 s before the next look, at 4 s). The handler catches up
     * 3.6 s in, and the client, which could not send while the engine was
     * not reading, takes 1 s: inside a grace counted from the resume, with
     * 1 s to spare. */
    reset();
    pmu_config_t config = base_config();
    config.body_timeout_ms = 10000;
    config.min_recv_rate = 500;
    config.min_rate_grace_ms = 2000;
    t_server_t *server = t_server_start(&config);
    size_t first = 8192, second = 1000, third = 1000;
    size_t n = first + second + third;
    char *body = malloc(n);
    memset(body, 'r', n);
    t_conn_t *conn = t_connect(server);
    char head[128];
    snprintf(head, sizeof head, "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %zu\r\n\r\n", n);
    /* The backlog passes output_high_water: what follows is held back. */
    int64_t t0 = t_now_ms();
    t_send_str(conn, head);
    t_send(conn, body, first + second);
    T_WAIT_UNTIL(t_stats(server, -1).recv_paused >= 1, T_EVENT_MS);
    T_ASSERT_MSG(t_stats(server, -1).recv_paused >= 1, "the engine never paused its reads");
    int64_t wait = t0 + 3600 - t_now_ms();
    if (wait > 0)
      t_sleep_ms((unsigned)wait);
    release();
    t_sleep_ms(1000);
    int rc = t_send_try(conn, body + first + second, third);
    t_response_t resp;
    int got = t_read_response(conn, &resp, T_IO_TIMEOUT_MS, false);
    T_ASSERT_MSG(rc == 0 && got == 0,
                 "cut 1 s after reading resumed (send: %s, response: %d, disconnects %d)",
                 strerror(-rc), got, disconnects_now());
    T_ASSERT_INT_EQ(resp.status, 200);
    char want[64];
    snprintf(want, sizeof want, "received=%zu", n);
    T_ASSERT_STR_EQ(resp.body, want);
    t_response_free(&resp);
    T_ASSERT_INT_EQ(disconnects_now(), 0);
    t_conn_close(conn);
    free(body);
    t_server_destroy(server);
  }
  return t_done();
}
