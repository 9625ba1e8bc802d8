/*
 * test_dribble: a request that arrives one byte per send (each byte its own
 * TCP segment, small sleeps between) is parsed exactly as if sent at once:
 * request line, headers, Content-Length body, chunked body, and two requests
 * back to back.
 */
#include "testlib.h"

#include <stdio.h>

int main(void) {
  t_init("dribble");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);
  t_conn_t *conn = t_connect(server);

  t_case("a GET sent one byte at a time");
  {
    const char *request = "GET /slow/path?q=1 HTTP/1.1\r\nHost: dribble\r\nX-Long-Header-Name: "
                          "some value here\r\n\r\n";
    const t_exchange_t ex = {NULL, request, .piece = 1, .status = 200};
    t_response_t r;
    t_exchange(conn, &ex, &r);
    T_ASSERT_FIELD(&r, "method", "GET");
    T_ASSERT_FIELD(&r, "target", "/slow/path?q=1");
    T_ASSERT_FIELD(&r, "query", "q=1");
    T_ASSERT_FIELD(&r, "header_count", "2");
    T_ASSERT_CONTAINS(r.body, r.body_len, "header=X-Long-Header-Name: some value here\n");
    t_response_free(&r);
  }

  t_case("a POST with a Content-Length body sent one byte at a time");
  {
    const char *request = "POST /upload HTTP/1.1\r\nHost: dribble\r\nContent-Length: 26\r\n\r\n"
                          "abcdefghijklmnopqrstuvwxyz";
    const t_exchange_t ex = {NULL, request, .piece = 1, .status = 200};
    t_response_t r;
    t_exchange(conn, &ex, &r);
    T_ASSERT_FIELD(&r, "method", "POST");
    T_ASSERT_FIELD(&r, "body_len", "26");
    T_ASSERT_FIELD(&r, "body", "abcdefghijklmnopqrstuvwxyz");
    t_response_free(&r);
  }

  t_case("a chunked POST with a trailer sent one byte at a time");
  {
    const char *request =
        "POST /chunks HTTP/1.1\r\nHost: dribble\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n"
        "1;name=value\r\n \r\n"
        "A\r\n0123456789\r\n"
        "0\r\nX-Trailer: t\r\n\r\n";
    const t_exchange_t ex = {NULL, request, .piece = 1, .status = 200};
    t_response_t r;
    t_exchange(conn, &ex, &r);
    T_ASSERT_FIELD(&r, "body_len", "16");
    T_ASSERT_FIELD(&r, "body", "hello 0123456789");
    t_response_free(&r);
  }

  t_case("two requests back to back, dribbled, both answered in order");
  {
    const char *request = "POST /first HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n\r\nonE"
                          "GET /second HTTP/1.1\r\nHost: d\r\n\r\n";
    t_send_pieces(conn, request, strlen(request), 1, 1);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_FIELD(&r, "path", "/first");
    T_ASSERT_FIELD(&r, "body", "onE");
    t_response_free(&r);
    t_expect_response(conn, &r);
    T_ASSERT_FIELD(&r, "path", "/second");
    T_ASSERT_FIELD(&r, "body_len", "0");
    t_response_free(&r);
  }

  t_case("a request split at every CR/LF boundary with longer pauses");
  {
    const char *parts[] = {"GET /split HTTP/1.1\r", "\n", "Host: d\r", "\nX-A: 1", "\r\n\r", "\n"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
      t_send_str(conn, parts[i]);
      t_sleep_ms(20);
    }
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/split");
    T_ASSERT_FIELD(&r, "header_count", "2");
    T_ASSERT_CONTAINS(r.body, r.body_len, "header=X-A: 1\n");
    t_response_free(&r);
  }

  T_ASSERT_MSG(!t_wait_closed(conn, 50), "connection closed");
  t_conn_close(conn);
  t_server_destroy(server);
  return t_done();
}
