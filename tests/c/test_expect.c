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

  /* Each step is one request (or body) and the response it must bring, in
   * order on one connection; 100 Continue is a response of its own. */
  static const struct step {
    const char *name; /* a new case starts here */
    t_exchange_t ex;
    /* clang-format off */
  } steps[] = {
      {"100 Continue comes before the body is sent, then the final response",
       {NULL, "POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        .status = 100, .body = ""}},
      {NULL, {NULL, "hello", .status = 200, .body = "hello"}},
      /* and on the same connection, the next one works too */
      {NULL,
       {NULL, "POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        .status = 100, .body = ""}},
      {NULL, {NULL, "hello", .status = 200, .body = "hello"}},
      {"100-continue with a chunked body",
       {NULL,
        "POST /echo HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
        "Expect: 100-Continue\r\n\r\n",
        .status = 100, .body = ""}},
      {NULL, {NULL, "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", .status = 200, .body = "abcde"}},
  };
  /* clang-format on */
  t_conn_t *conn = t_connect(server);
  for (size_t i = 0; i < T_COUNT(steps); i++) {
    if (steps[i].name)
      t_case(steps[i].name);
    t_response_t r;
    t_exchange(conn, &steps[i].ex, &r);
    T_ASSERT_INT_EQ(r.minor, 1);
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
    const t_exchange_t next = {NULL, "GET /next HTTP/1.1\r\nHost: e\r\n\r\n", .status = 200};
    t_exchange(conn, &next, &r);
    T_ASSERT_FIELD(&r, "path", "/next");
    t_response_free(&r);
  }
  t_conn_close(conn);

  t_case("100-continue with a too-large Content-Length: 413 at once, no 100, closed");
  {
    const t_exchange_t row = {NULL,
                              "POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 5000\r\n"
                              "Expect: 100-continue\r\n\r\n",
                              .status = 413, .after = T_CLOSE};
    t_exchanges(server, &row, 1);
  }

  t_case("HTTP/1.0 requests get no 100 Continue (the expectation is ignored)");
  {
    /* Silence for 300 ms: under load a wrong 100 might come after the wait and
     * be missed, but a right server never fails this. */
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
