/*
 * test_oom: when an answer cannot be formatted or queued for want of memory
 * (the engine's fault points make the allocation fail), the request is still
 * answered (the static 503, which closes) or its connection closed, nothing
 * after it is misframed, the handler's body is released, and the next
 * connection is served. Run under ASan, it also shows nothing leaks.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

/* Test-only switch of the engine (core/faults.c). */
void pmu_test_fault(int point, unsigned long first, unsigned long every, unsigned long times);
#define FAULT_SERIALIZE 1
#define FAULT_SEG 3

static atomic_int start_rc, write_rc, end_rc;

/* /stream: a streamed answer of three pieces, "one", "two", "three"; other
 * paths as the test handler answers them. */
static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  t_server_t *server = data;
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (r->path_len == 7 && memcmp(r->path, "/stream", 7) == 0) {
      static const pmu_header_t ct = {"Content-Type", 12, "text/plain", 10};
      atomic_store(&start_rc, pmu_respond_start(r, 200, &ct, 1));
      int w = 0;
      static const char *pieces[] = {"one", "two", "three"};
      for (int k = 0; k < 3; k++) {
        int rc = pmu_respond_write(r, pieces[k], strlen(pieces[k]), NULL, NULL);
        if (rc < 0 && !w)
          w = rc;
      }
      atomic_store(&write_rc, w);
      atomic_store(&end_rc, pmu_respond_end(r));
    } else {
      t_handle_request(server, r);
    }
  }
}

static void expect_oom_503(t_conn_t *conn) {
  t_response_t r;
  t_expect_response(conn, &r);
  T_ASSERT_INT_EQ(r.status, 503);
  T_ASSERT_STR_EQ(t_header(&r, "Connection"), "close");
  T_ASSERT_STR_EQ(r.body, "Service Unavailable\n");
  t_response_free(&r);
  t_expect_closed(conn, 3000); /* and nothing after it */
}

static void next_is_fine(t_server_t *server) {
  t_get_ok(server, "/next");
  t_conn_t *conn = t_connect(server);
  t_send_str(conn, "GET /stream HTTP/1.1\r\nHost: o\r\n\r\n");
  t_response_t r;
  t_expect_response(conn, &r);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT(r.chunked);
  T_ASSERT_STR_EQ(r.body, "onetwothree");
  t_response_free(&r);
  t_conn_close(conn);
}

#define STREAM_THEN_SECOND \
  "GET /stream HTTP/1.1\r\nHost: o\r\n\r\nGET /second HTTP/1.1\r\nHost: o\r\n\r\n"

/* On a new connection, with the fault point armed to fail once at its
 * `first` call, send `request`: answered with the static 503 (and the
 * close), or with closes_silent, closed with nothing sent. */
static void faulted(t_server_t *server, int point, unsigned long first, const char *request,
                    bool closes_silent) {
  t_conn_t *conn = t_connect(server);
  pmu_test_fault(point, first, 1, 1);
  t_send_str(conn, request);
  if (closes_silent)
    t_expect_closed(conn, 3000);
  else
    expect_oom_503(conn);
  t_conn_close(conn);
}

int main(void) {
  t_init("oom");
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  t_server_t *server = t_server_start(&config);

  t_case("pmu_respond cannot format: static 503 and close, body released, next served");
  {
    unsigned long released = t_big_releases();
    /* Two pipelined: the first fails, the second must not be misframed. */
    faulted(server, FAULT_SERIALIZE, 1,
            "GET /big?n=100000 HTTP/1.1\r\nHost: o\r\n\r\nGET /second HTTP/1.1\r\nHost: o\r\n\r\n",
            false);
    T_ASSERT_INT_EQ(t_big_releases() - released, 1);
    next_is_fine(server);
  }

  t_case("the engine's own error answer cannot be formatted: static 503 and close");
  faulted(server, FAULT_SERIALIZE, 1, "GET / HTTP/1.1\r\nHost: o\r\nBad Header\r\n\r\n", false);
  next_is_fine(server);

  t_case("a streamed head cannot be formatted: static 503 and close");
  faulted(server, FAULT_SERIALIZE, 1, STREAM_THEN_SECOND, false);
  T_ASSERT_INT_EQ(atomic_load(&start_rc), -ENOMEM);
  T_ASSERT_INT_EQ(atomic_load(&end_rc), 0);
  next_is_fine(server);

  t_case("no memory for the stream's end piece at start: 503 and close at the end");
  faulted(server, FAULT_SEG, 1, STREAM_THEN_SECOND, false);
  T_ASSERT_INT_EQ(atomic_load(&start_rc), -ENOMEM);
  T_ASSERT_INT_EQ(atomic_load(&write_rc), -ENOMEM);
  T_ASSERT_INT_EQ(atomic_load(&end_rc), 0);
  next_is_fine(server);

  t_case("no memory for the streamed head: the connection closes, nothing sent");
  faulted(server, FAULT_SEG, 2, STREAM_THEN_SECOND, true);
  T_ASSERT_INT_EQ(atomic_load(&start_rc), -ENOMEM);
  T_ASSERT_INT_EQ(atomic_load(&end_rc), 0);
  next_is_fine(server);

  t_case("no memory for a piece: the answer ends by closing, without the last chunk");
  {
    t_conn_t *conn = t_connect(server);
    pmu_test_fault(FAULT_SEG, 4, 1, 1); /* end piece, head, "one", then "two" fails */
    t_send_str(conn, STREAM_THEN_SECOND);
    t_response_t r;
    int rc = t_read_response(conn, &r, 3000, false);
    T_ASSERT_MSG(rc == -ECONNRESET, "got %d: the cut answer looked complete", rc);
    T_ASSERT_CONTAINS(conn->buf, conn->len, "HTTP/1.1 200 OK");
    T_ASSERT_CONTAINS(conn->buf, conn->len, "\r\n3\r\none\r\n");
    T_ASSERT_MSG(!t_memmem(conn->buf, conn->len, "\r\n0\r\n\r\n"), "the last chunk was sent");
    T_ASSERT_MSG(!t_memmem(conn->buf, conn->len, "/second"), "the next request was answered");
    T_ASSERT_INT_EQ(atomic_load(&write_rc), -ENOMEM);
    t_conn_close(conn);
    next_is_fine(server);
  }

  pmu_stats_t s = t_stats(server, -1);
  T_ASSERT_MSG(s.status_classes[5] >= 4, "503s counted: %llu",
               (unsigned long long)s.status_classes[5]);
  t_server_destroy(server);
  return t_done();
}
