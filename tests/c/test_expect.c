/*
 * test_expect: "Expect: 100-continue" (RFC 9110 section 10.1.1). The server
 * sends "HTTP/1.1 100 Continue" before the client sends the body, then the
 * final response; when the announced body is too large it answers 413 at
 * once, without a 100, and closes.
 */
#include "testlib.h"

#include <stdio.h>

int main(void) {
  t_init("expect");
  pmu_config_t config;
  t_config_init(&config);
  config.max_body_bytes = 1000;
  t_server_t *server = t_server_start(&config);

  t_case("100 Continue comes before the body is sent, then the final response");
  t_conn_t *conn = t_connect(server);
  for (int i = 0; i < 2; i++) {
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n"
                     "Expect: 100-continue\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 100);
    T_ASSERT_INT_EQ(r.minor, 1);
    T_ASSERT_INT_EQ(r.body_len, 0);
    t_response_free(&r);
    t_send_str(conn, "hello");
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, "hello");
    t_response_free(&r);
    /* and on the same connection, the next one works too (loop) */
  }

  t_case("100-continue with a chunked body");
  {
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
                     "Expect: 100-Continue\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 100);
    t_response_free(&r);
    t_send_str(conn, "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, "abcde");
    t_response_free(&r);
  }

  t_case("a client that sends the body without waiting still gets its answer");
  {
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 3\r\n"
                     "Expect: 100-continue\r\n\r\nxyz");
    t_response_t r;
    t_expect_response(conn, &r);
    if (r.status == 100) {
      t_response_free(&r);
      t_expect_response(conn, &r);
    }
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, "xyz");
    t_response_free(&r);
    t_send_str(conn, "GET /next HTTP/1.1\r\nHost: e\r\n\r\n");
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/next");
    t_response_free(&r);
  }
  t_conn_close(conn);

  t_case("100-continue with a too-large Content-Length: 413 at once, no 100, closed");
  {
    conn = t_connect(server);
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 5000\r\n"
                     "Expect: 100-continue\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_MSG(r.status != 100, "got 100 Continue for a body over max_body_bytes");
    T_ASSERT_INT_EQ(r.status, 413);
    t_response_free(&r);
    T_ASSERT_MSG(t_wait_closed(conn, 2000), "connection still open after 413");
    t_conn_close(conn);
  }

  t_case("HTTP/1.0 requests get no 100 Continue (the expectation is ignored)");
  {
    conn = t_connect(server);
    t_send_str(conn, "POST /echo HTTP/1.0\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    int rc = t_recv_some(conn, 300);
    T_ASSERT_MSG(rc == -ETIMEDOUT, "server sent \"%.*s\" before the body to HTTP/1.0",
                 (int)(conn->len > 100 ? 100 : conn->len), conn->buf ? conn->buf : "");
    t_send_str(conn, "abcd");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, "abcd");
    t_response_free(&r);
    t_conn_close(conn);
  }

  t_case("no 100 Continue when the request has no Expect header");
  {
    conn = t_connect(server);
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 4\r\n\r\n");
    int rc = t_recv_some(conn, 200);
    T_ASSERT_MSG(rc == -ETIMEDOUT, "unexpected bytes: \"%.*s\"",
                 (int)(conn->len > 100 ? 100 : conn->len), conn->buf ? conn->buf : "");
    t_send_str(conn, "wxyz");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, "wxyz");
    t_response_free(&r);
    t_conn_close(conn);
  }

  t_case("whitespace after 100-continue is not part of the value (RFC 9110 5.5)");
  {
    /* Found by tests/fuzz/differential.py: these got 417 */
    static const char *const values[] = {"100-continue ", "100-continue\t", "100-continue \t"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
      conn = t_connect(server);
      char req[160];
      snprintf(req, sizeof req,
               "POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 2\r\nExpect: %s\r\n\r\n",
               values[i]);
      t_send_str(conn, req);
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 100);
      t_response_free(&r);
      t_send_str(conn, "ok");
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      T_ASSERT_STR_EQ(r.body, "ok");
      t_response_free(&r);
      t_conn_close(conn);
    }
  }

  t_server_destroy(server);
  return t_done();
}
