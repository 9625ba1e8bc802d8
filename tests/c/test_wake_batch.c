/*
 * test_wake_batch: answers given off the worker thread while a wake batch is
 * set (pmu_wake_batch_begin) wait until pmu_wake_batch_flush() wakes their
 * worker thread, once for many answers; from another thread too; without a
 * batch they go out at once; freeing a batch flushes it.
 */
#include "testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* The handler keeps each request for the test's main thread to answer. */
#define KEPT_MAX 16
static pmu_request_t *_Atomic kept[KEPT_MAX];
static atomic_int kept_count;

static void keeping_handler(void *data, pmu_request_t *const *requests, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    int k = atomic_fetch_add(&kept_count, 1);
    if (k < KEPT_MAX)
      atomic_store(&kept[k], requests[i]);
    else
      pmu_respond(requests[i], &(pmu_response_t){503, NULL, 0, "", 0, NULL, NULL});
  }
}

/* The request kept n-th (0-based), once the handler has it. */
static pmu_request_t *take_kept(int n) {
  T_WAIT_UNTIL(atomic_load(&kept_count) > n, T_EVENT_MS);
  T_ASSERT_MSG(atomic_load(&kept_count) > n, "request %d never reached the handler", n);
  pmu_request_t *r = atomic_load(&kept[n]);
  return r;
}

static void answer(pmu_request_t *r, const char *body) {
  pmu_response_t resp = {200, NULL, 0, body, strlen(body), NULL, NULL};
  T_ASSERT_INT_EQ(pmu_respond(r, &resp), 0);
}

/* Whether any byte of an answer reaches the client within ms. */
static bool answered_within(t_conn_t *conn, int ms) { return t_recv_some(conn, ms) > 0; }

static void *flush_from_thread(void *arg) {
  unsigned *woken = malloc(sizeof *woken);
  *woken = pmu_wake_batch_flush(arg);
  return woken;
}

int main(void) {
  t_init("wake_batch");
  pmu_config_t config;
  t_config_init(&config);
  config.handler = keeping_handler;
  t_server_t *server = t_server_start(&config);
  int next = 0;

  t_case("answers held in a batch wait for the flush, then go out together");
  {
    pmu_wake_batch_t *batch = pmu_wake_batch_new();
    T_ASSERT(batch != NULL);
    t_conn_t *a = t_connect(server), *b = t_connect(server);
    t_send_str(a, "GET /a HTTP/1.1\r\nHost: w\r\n\r\n");
    pmu_request_t *ra = take_kept(next++);
    t_send_str(b, "GET /b HTTP/1.1\r\nHost: w\r\n\r\n");
    pmu_request_t *rb = take_kept(next++);
    pmu_stats_t before = t_stats(server, -1);
    pmu_wake_batch_begin(batch);
    answer(ra, "held-a");
    answer(rb, "held-b");
    pmu_wake_batch_begin(NULL);
    T_ASSERT_MSG(!answered_within(a, 300), "an answer went out before the flush");
    T_ASSERT_MSG(!answered_within(b, 10), "an answer went out before the flush");
    T_ASSERT_INT_EQ(pmu_wake_batch_flush(batch), 1); /* one worker thread, woken once */
    T_ASSERT_INT_EQ(pmu_wake_batch_flush(batch), 0); /* nothing left */
    t_response_t r;
    t_expect_response(a, &r);
    T_ASSERT(t_str_eq(r.body, "held-a"));
    t_response_free(&r);
    t_expect_response(b, &r);
    T_ASSERT(t_str_eq(r.body, "held-b"));
    t_response_free(&r);
    T_ASSERT_INT_EQ(t_stats(server, -1).deferred - before.deferred, 2);
    t_conn_close(a);
    t_conn_close(b);
    pmu_wake_batch_free(batch);
  }

  t_case("another thread may flush; without a batch an answer goes out at once");
  {
    pmu_wake_batch_t *batch = pmu_wake_batch_new();
    t_conn_t *a = t_connect(server);
    t_send_str(a, "GET /c HTTP/1.1\r\nHost: w\r\n\r\n");
    pmu_request_t *ra = take_kept(next++);
    pmu_wake_batch_begin(batch);
    answer(ra, "held-c");
    pmu_wake_batch_begin(NULL);
    T_ASSERT_MSG(!answered_within(a, 200), "an answer went out before the flush");
    pthread_t t;
    T_ASSERT_INT_EQ(pthread_create(&t, NULL, flush_from_thread, batch), 0);
    void *woken;
    pthread_join(t, &woken);
    T_ASSERT_INT_EQ(*(unsigned *)woken, 1);
    free(woken);
    t_response_t r;
    t_expect_response(a, &r);
    T_ASSERT(t_str_eq(r.body, "held-c"));
    t_response_free(&r);

    t_send_str(a, "GET /d HTTP/1.1\r\nHost: w\r\n\r\n");
    pmu_request_t *rd = take_kept(next++);
    answer(rd, "at-once");
    t_expect_response(a, &r);
    T_ASSERT(t_str_eq(r.body, "at-once"));
    t_response_free(&r);
    t_conn_close(a);
    pmu_wake_batch_free(batch);
  }

  t_case("freeing a batch flushes what it holds");
  {
    pmu_wake_batch_t *batch = pmu_wake_batch_new();
    t_conn_t *a = t_connect(server);
    t_send_str(a, "GET /e HTTP/1.1\r\nHost: w\r\n\r\n");
    pmu_request_t *re = take_kept(next++);
    pmu_wake_batch_begin(batch);
    answer(re, "held-e");
    pmu_wake_batch_begin(NULL);
    pmu_wake_batch_free(batch);
    t_response_t r;
    t_expect_response(a, &r);
    T_ASSERT(t_str_eq(r.body, "held-e"));
    t_response_free(&r);
    t_conn_close(a);
  }

  t_server_destroy(server);
  return t_done();
}
