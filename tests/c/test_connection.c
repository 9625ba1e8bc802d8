/*
 * test_connection: persistence rules (RFC 9112 section 9.3). HTTP/1.0 closes
 * after the response unless it asks for keep-alive; HTTP/1.1 persists unless
 * either side says "Connection: close".
 */
#include "testlib.h"

#include <stdio.h>
#include <strings.h>

/* Does the response's Connection header list `token`? */
static bool connection_says(const t_response_t *r, const char *token) {
  const char *v = t_header(r, "Connection");
  if (!v)
    return false;
  size_t n = strlen(token);
  for (const char *p = v; *p;) {
    while (*p == ' ' || *p == ',')
      p++;
    if (strncasecmp(p, token, n) == 0 && (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
      return true;
    while (*p && *p != ',')
      p++;
  }
  return false;
}

int main(void) {
  t_init("connection");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);

  t_case("HTTP/1.0 without keep-alive: answered, then closed");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /ten HTTP/1.0\r\nHost: c\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "version", "1.0");
    T_ASSERT_FIELD(&r, "keep_alive", "0");
    T_ASSERT_MSG(r.has_content_length, "no Content-Length");
    T_ASSERT_MSG(!r.chunked, "chunked response to HTTP/1.0");
    T_ASSERT_MSG(!connection_says(&r, "keep-alive"), "says keep-alive to a plain HTTP/1.0 request");
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("HTTP/1.0 POST with a body, no keep-alive");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "POST /ten HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "body", "body");
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("HTTP/1.0 with Connection: keep-alive stays open and says so");
  {
    t_conn_t *conn = t_connect(server);
    for (int i = 0; i < 3; i++) {
      t_send_str(conn, "GET /ten-ka HTTP/1.0\r\nHost: c\r\nConnection: Keep-Alive\r\n\r\n");
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      T_ASSERT_FIELD(&r, "keep_alive", "1");
      T_ASSERT_MSG(connection_says(&r, "keep-alive"), "Connection: %s",
                   t_header(&r, "Connection") ? t_header(&r, "Connection") : "(absent)");
      T_ASSERT_MSG(r.has_content_length, "no Content-Length on a persistent HTTP/1.0 response");
      t_response_free(&r);
    }
    T_ASSERT_MSG(!t_wait_closed(conn, 150), "HTTP/1.0 keep-alive connection was closed");

    t_case("HTTP/1.0 keep-alive, then a request without it: closed after that one");
    t_send_str(conn, "GET /ten-last HTTP/1.0\r\nHost: c\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_FIELD(&r, "path", "/ten-last");
    T_ASSERT_FIELD(&r, "keep_alive", "0");
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("HTTP/1.1 with Connection: close: answered with Connection: close, then closed");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /eleven HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "keep_alive", "0");
    T_ASSERT_MSG(connection_says(&r, "close"), "Connection: %s",
                 t_header(&r, "Connection") ? t_header(&r, "Connection") : "(absent)");
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("HTTP/1.1 with close among other Connection options");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /eleven HTTP/1.1\r\nHost: c\r\nConnection: X-Foo, CLOSE\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "keep_alive", "0");
    T_ASSERT_MSG(connection_says(&r, "close"), "no Connection: close");
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("pipelined: requests after Connection: close are not answered");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /one HTTP/1.1\r\nHost: c\r\n\r\n"
                     "GET /two HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"
                     "GET /three HTTP/1.1\r\nHost: c\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_FIELD(&r, "path", "/one");
    T_ASSERT_MSG(!connection_says(&r, "close"), "first response says close");
    t_response_free(&r);
    t_expect_response(conn, &r);
    T_ASSERT_FIELD(&r, "path", "/two");
    T_ASSERT_MSG(connection_says(&r, "close"), "second response lacks Connection: close");
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("the handler's Connection: close closes the connection after its response");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /close HTTP/1.1\r\nHost: c\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/close");
    T_ASSERT_MSG(connection_says(&r, "close"), "no Connection: close");
    T_ASSERT_INT_EQ(t_header_count_named(&r, "Connection"), 1);
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("HTTP/1.1 default persists with no Connection: close");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /persist HTTP/1.1\r\nHost: c\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_MSG(!connection_says(&r, "close"), "Connection: close on a persistent connection");
    t_response_free(&r);
    T_ASSERT_MSG(!t_wait_closed(conn, 150), "closed");
    t_conn_close(conn);
  }

  t_case("a client that half-closes after its request still gets the answer");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /half HTTP/1.1\r\nHost: c\r\n\r\n");
    shutdown(conn->fd, SHUT_WR);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/half");
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_server_destroy(server);
  return t_done();
}
