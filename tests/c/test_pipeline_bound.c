/*
 * test_pipeline_bound: output_high_water bounds what the handler produces
 * for a connection, not only what is read from it. 20 connections each
 * pipeline 128 requests for 1 MiB answers and read nothing: the handler sees
 * only a few of each connection's requests (before, all 128: 2.5 GiB of
 * answers queued), another client is answered quickly meanwhile, and when
 * the pipeliners read, every answer comes, in order. And one connection's
 * burst of small requests is handed over in slices, not in one batch, while
 * lone requests of many connections still share one handler call.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

#define CONNS 20
#define DEPTH 128
#define ANSWER (1 << 20)

static char *big;
static atomic_ulong seen_mb;
static atomic_ulong largest_call;
static atomic_int slow_in, slow_go; /* /slow is in the handler; it may return */

static void noop_release(void *ctx) { (void)ctx; }

static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  unsigned long prev = atomic_load(&largest_call);
  while (count > prev && !atomic_compare_exchange_weak(&largest_call, &prev, count))
    ;
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *q = requests[i];
    if (q->path_len == 3 && memcmp(q->path, "/mb", 3) == 0) {
      atomic_fetch_add(&seen_mb, 1);
      char idx[32];
      int n = snprintf(idx, sizeof idx, "%.*s", (int)q->query_len, q->query);
      pmu_header_t h = {"X-I", 3, idx, (size_t)n};
      pmu_response_t resp = {.status = 200,
                             .headers = &h,
                             .header_count = 1,
                             .body = big,
                             .body_len = ANSWER,
                             .body_release = noop_release};
      pmu_respond(q, &resp);
    } else {
      if (q->path_len == 5 && memcmp(q->path, "/slow", 5) == 0) {
        /* holds the ring while other requests arrive: until the test has
         * sent them all, then a little longer for them to land */
        atomic_store(&slow_in, 1);
        T_WAIT_UNTIL(atomic_load(&slow_go), T_EVENT_MS);
        t_sleep_ms(50);
      }
      t_handler(data, &q, 1);
    }
  }
}

/* A second server streams the bodies of /up to on_body and answers with
 * their length once the last piece came. */
static void up_handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *q = requests[i];
    if (q->body_streaming)
      q->user = calloc(1, sizeof(size_t)); /* answered from up_body */
    else
      t_handler(data, &q, 1);
  }
}

static void up_body(void *data, pmu_request_t *q, const void *piece, size_t len, int last) {
  (void)data;
  (void)piece;
  size_t *got = q->user;
  *got += len;
  pmu_request_body_consumed(q, len);
  if (last) {
    char text[32];
    int n = snprintf(text, sizeof text, "%zu", *got);
    free(got);
    pmu_respond_simple(q, 200, NULL, 0, text, (size_t)n);
  }
}

int main(void) {
  t_init("pipeline_bound");
  big = malloc(ANSWER);
  for (size_t i = 0; i < ANSWER; i++)
    big[i] = (char)('a' + i % 26);

  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  t_server_t *server = t_server_start(&config);

  t_conn_t *conns[CONNS];
  t_case("pipeliners that never read get only a few requests run");
  {
    char *reqs = malloc(DEPTH * 64);
    uint64_t sent = t_stats(server, -1).bytes_in;
    for (int c = 0; c < CONNS; c++) {
      conns[c] = t_connect(server);
      size_t len = 0;
      for (int i = 0; i < DEPTH; i++)
        len += (size_t)sprintf(reqs + len, "GET /mb?%d HTTP/1.1\r\nHost: p\r\n\r\n", i);
      t_send(conns[c], reqs, len);
      sent += len;
    }
    free(reqs);
    /* the server has taken in every request */
    T_WAIT_UNTIL(t_stats(server, -1).bytes_in >= sent, T_EVENT_MS);
    T_ASSERT_INT_EQ(t_stats(server, -1).bytes_in, sent);
    /* and has sent what the pipeliners' socket buffers take (tens of MB on
     * loopback: copying them is the kernel's work, which a busy machine
     * slows to hundreds of ms); then it has nothing left to do for them */
    uint64_t out = t_stats(server, -1).bytes_out, was;
    int64_t settle_until = t_now_ms() + T_EVENT_MS;
    do {
      was = out;
      t_sleep_ms(50);
      out = t_stats(server, -1).bytes_out;
    } while (out != was && t_now_ms() < settle_until);
    T_ASSERT_MSG(out == was, "the server still sends to readers that never read");

    t_conn_t *other = t_connect(server);
    int64_t t0 = t_now_ms();
    t_send_str(other, "GET /other HTTP/1.1\r\nHost: p\r\n\r\n");
    t_response_t r;
    t_expect_response(other, &r);
    long ms = (long)(t_now_ms() - t0);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    t_conn_close(other);
    fprintf(stderr, "# another client waited %ld ms (%llu bytes out to the pipeliners)\n", ms,
            (unsigned long long)out);
    T_ASSERT_MSG(ms < 200, "another client waited %ld ms", ms);

    t_sleep_ms(200);
    unsigned long seen = atomic_load(&seen_mb);
    fprintf(stderr, "# handler ran %lu of %d requests while nobody read\n", seen, CONNS * DEPTH);
    T_ASSERT_MSG(seen <= CONNS * 8, "handler ran %lu requests (%d connections x %d)", seen, CONNS,
                 DEPTH);
    T_ASSERT(seen >= CONNS);
  }

  t_case("when the pipeliners read, every answer comes, in order");
  {
    for (int c = 0; c < CONNS; c++) {
      for (int i = 0; i < DEPTH; i++) {
        t_response_t r;
        t_expect_response(conns[c], &r);
        T_ASSERT_INT_EQ(r.status, 200);
        T_ASSERT_INT_EQ(r.body_len, ANSWER);
        const char *x = t_header(&r, "X-I");
        T_ASSERT_MSG(x && atoi(x) == i, "connection %d answer %d is X-I %s", c, i,
                     x ? x : "(none)");
        T_ASSERT(memcmp(r.body, big, 64) == 0);
        t_response_free(&r);
      }
      t_conn_close(conns[c]);
    }
    T_ASSERT_INT_EQ(atomic_load(&seen_mb), CONNS * DEPTH);
  }

  t_case("one connection's 128 pipelined requests are run in slices, answered in order");
  {
    atomic_store(&largest_call, 0);
    t_conn_t *conn = t_connect(server);
    char *reqs = malloc(DEPTH * 64);
    size_t len = 0;
    for (int i = 0; i < DEPTH; i++)
      len += (size_t)sprintf(reqs + len, "GET /small?%d HTTP/1.1\r\nHost: p\r\n\r\n", i);
    t_send(conn, reqs, len);
    free(reqs);
    for (int i = 0; i < DEPTH; i++) {
      t_response_t r;
      t_expect_response(conn, &r);
      char want[32];
      snprintf(want, sizeof want, "/small?%d", i);
      T_ASSERT_FIELD(&r, "target", want);
      t_response_free(&r);
    }
    t_conn_close(conn);
    unsigned long largest = atomic_load(&largest_call);
    T_ASSERT_MSG(largest <= 32, "a handler call took %lu of one connection's requests", largest);
  }

  t_case("lone requests of fresh connections still share a handler call");
  {
    enum { N = 50 };
    t_conn_t *many[N];
    uint64_t accepted0 = t_stats(server, -1).connections_accepted;
    for (int i = 0; i < N; i++)
      many[i] = t_connect(server);
    /* all accepted, their receives armed (in the turn that accepted them) */
    T_WAIT_UNTIL(t_stats(server, -1).connections_accepted >= accepted0 + N, T_EVENT_MS);
    t_conn_t *slow = t_connect(server);
    t_send_str(slow, "GET /slow HTTP/1.1\r\nHost: p\r\n\r\n");
    T_WAIT_UNTIL(atomic_load(&slow_in), T_EVENT_MS);
    T_ASSERT(atomic_load(&slow_in));
    atomic_store(&largest_call, 0);
    for (int i = 0; i < N; i++)
      t_send_str(many[i], "GET /c HTTP/1.1\r\nHost: p\r\n\r\n");
    atomic_store(&slow_go, 1);
    t_response_t r;
    t_expect_response(slow, &r);
    t_response_free(&r);
    t_conn_close(slow);
    for (int i = 0; i < N; i++) {
      t_expect_response(many[i], &r);
      T_ASSERT_INT_EQ(r.status, 200);
      t_response_free(&r);
      t_conn_close(many[i]);
    }
    unsigned long largest = atomic_load(&largest_call);
    T_ASSERT_MSG(largest >= N / 2, "the %d requests came in handler calls of %lu at most", N,
                 largest);
  }

  t_server_destroy(server);

  t_case("after a large answer, a streamed request body on the same connection is read");
  {
    /* The output bound counts answers owed; the request whose body is
     * streaming cannot be answered before its body: it must not pause it. */
    pmu_config_t up;
    t_config_init(&up);
    up.handler = up_handler;
    up.on_body = up_body;
    up.body_stream_threshold = 1000;
    up.output_high_water = 64 * 1024;
    t_server_t *s2 = t_server_start(&up);
    t_conn_t *conn = t_connect(s2);
    t_send_str(conn, "GET /big?n=200000 HTTP/1.1\r\nHost: p\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.body_len, 200000);
    t_response_free(&r);
    size_t n = 100000;
    char *req = malloc(n + 128);
    int h = snprintf(req, 128, "POST /up HTTP/1.1\r\nHost: p\r\nContent-Length: %zu\r\n\r\n", n);
    memset(req + h, 'u', n);
    t_send(conn, req, (size_t)h + n);
    free(req);
    T_ASSERT_INT_EQ(t_read_response(conn, &r, 3000, false), 0);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, "100000");
    t_response_free(&r);
    t_conn_close(conn);
    t_server_destroy(s2);
  }
  free(big);
  return t_done();
}
