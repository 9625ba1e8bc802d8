/*
 * test_trailers: pmu_respond_end_trailers() sends trailer fields after the
 * last chunk of a chunked answer, and the connection serves the next request;
 * an answer under a Content-Length or to HTTP/1.0 ends without them (0); a
 * field with a CR in its value is refused (-EINVAL) with nothing done, and
 * the answer can still be ended.
 */
#include "testlib.h"

#include <stdatomic.h>
#include <stdio.h>

static atomic_int last_rc = 1; /* pmu_respond_end_trailers' result */
static atomic_int bad_rc = 1;  /* its result for a bad field */

static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (!t_path_is(r, "/trailers")) {
      t_handle_request(data, r);
      continue;
    }
    int length = t_query_ulong(r, "length", 0) != 0;
    pmu_header_t head[2] = {{"Trailer", 7, "X-Checksum, Grpc-Status", 23},
                            {"Content-Length", 14, "5", 1}};
    pmu_respond_start(r, 200, head, length ? 2 : 1);
    pmu_respond_write(r, "hello", 5, NULL, NULL);
    if (t_query_ulong(r, "bad", 0)) {
      pmu_header_t bad = {"X-Bad", 5, "a\r\nInjected: 1", 15};
      atomic_store(&bad_rc, pmu_respond_end_trailers(r, &bad, 1));
    }
    pmu_header_t trailers[2] = {{"X-Checksum", 10, "abc123", 6}, {"Grpc-Status", 11, "0", 1}};
    atomic_store(&last_rc, pmu_respond_end_trailers(r, trailers, 2));
  }
}

/* Whether c has received `want` so far. */
static bool received(const t_conn_t *c, const char *want) {
  return c->len > 0 && t_memmem(c->buf, c->len, want) != NULL;
}

/* Read from c until `want` has arrived (or fail after the event timeout). */
static void expect_bytes(t_conn_t *c, const char *want) {
  int64_t deadline = t_now_ms() + T_EVENT_MS;
  while (!received(c, want) && t_now_ms() < deadline)
    if (t_recv_some(c, 100) < 0)
      break;
  T_ASSERT_MSG(received(c, want), "not received: %s", want);
}

int main(void) {
  t_init("trailers");
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  t_server_t *server = t_server_start(&config);

  t_case("chunked: the trailers follow the last chunk, the connection goes on");
  {
    t_conn_t *c = t_connect(server);
    t_send_str(c, "GET /trailers HTTP/1.1\r\nHost: t\r\n\r\n");
    expect_bytes(c, "5\r\nhello\r\n0\r\nX-Checksum: abc123\r\nGrpc-Status: 0\r\n\r\n");
    T_ASSERT(received(c, "Transfer-Encoding: chunked\r\n"));
    T_ASSERT_INT_EQ(atomic_load(&last_rc), 0);
    c->len = 0;
    t_send_str(c, "GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    t_response_t resp;
    T_ASSERT_INT_EQ(t_read_response(c, &resp, T_EVENT_MS, false), 0);
    T_ASSERT_INT_EQ(resp.status, 200);
    t_response_free(&resp);
    t_conn_close(c);
  }

  t_case("under a Content-Length, and to HTTP/1.0: ended without them");
  {
    atomic_store(&last_rc, 1);
    t_conn_t *c = t_connect(server);
    t_send_str(c, "GET /trailers?length=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    expect_bytes(c, "\r\n\r\nhello");
    T_WAIT_UNTIL(atomic_load(&last_rc) == 0, T_EVENT_MS);
    T_ASSERT_INT_EQ(atomic_load(&last_rc), 0);
    t_send_str(c, "GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    expect_bytes(c, "HTTP/1.1 200 OK");
    T_ASSERT(!received(c, "abc123"));
    t_conn_close(c);
    atomic_store(&last_rc, 1);
    c = t_connect(server);
    t_send_str(c, "GET /trailers HTTP/1.0\r\n\r\n");
    while (!c->eof && t_recv_some(c, T_EVENT_MS) > 0) {
    }
    T_ASSERT(c->eof);
    T_ASSERT(received(c, "\r\n\r\nhello"));
    T_ASSERT(!received(c, "abc123"));
    T_ASSERT_INT_EQ(atomic_load(&last_rc), 0);
    t_conn_close(c);
  }

  t_case("a field with CR LF in its value: -EINVAL, nothing sent, the end still works");
  {
    t_conn_t *c = t_connect(server);
    t_send_str(c, "GET /trailers?bad=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    expect_bytes(c, "0\r\nX-Checksum: abc123\r\nGrpc-Status: 0\r\n\r\n");
    T_ASSERT_INT_EQ(atomic_load(&bad_rc), -EINVAL);
    T_ASSERT(!received(c, "Injected"));
    t_conn_close(c);
  }

  t_server_destroy(server);
  return t_done();
}
