/*
 * test_limits: each configured limit answers with its status and closes the
 * connection: max_header_bytes and max_headers -> 431, max_url_bytes -> 414,
 * max_body_bytes -> 413 (Content-Length or chunked), max_connections -> 503.
 * Requests just inside each limit are served.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct buf {
  char *data;
  size_t len;
} buf_t;

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  b->data = realloc(b->data, b->len + (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

static void buf_fill(buf_t *b, char c, size_t n) {
  b->data = realloc(b->data, b->len + n + 1);
  memset(b->data + b->len, c, n);
  b->len += n;
  b->data[b->len] = '\0';
}

/* Send `req` on a fresh connection and expect 200. */
static void expect_ok(const t_server_t *server, const buf_t *req) {
  t_conn_t *conn = t_connect(server);
  t_send(conn, req->data, req->len);
  t_response_t r;
  t_expect_response(conn, &r);
  T_ASSERT_MSG(r.status == 200, "status %d for a request inside the limits", r.status);
  t_response_free(&r);
  t_conn_close(conn);
}

/* Like t_expect_error_close but the request goes out in pieces; the server may
 * answer before the last piece, so send errors end the sending quietly. */
static void expect_error_pieces(const t_server_t *server, const buf_t *req, size_t piece,
                                int status) {
  t_conn_t *conn = t_connect(server);
  for (size_t off = 0; off < req->len; off += piece) {
    size_t n = req->len - off < piece ? req->len - off : piece;
    if (t_send_try(conn, req->data + off, n) < 0)
      break;
    t_sleep_ms(1);
  }
  t_response_t r;
  t_expect_response(conn, &r);
  T_ASSERT_INT_EQ(r.status, status);
  t_response_free(&r);
  T_ASSERT_MSG(t_wait_closed(conn, 2000), "still open after %d", status);
  t_conn_close(conn);
}

int main(void) {
  t_init("limits");
  pmu_config_t config;
  t_config_init(&config);
  config.max_header_bytes = 1024;
  config.max_headers = 10;
  config.max_url_bytes = 256;
  config.max_body_bytes = 1000;
  t_server_t *server = t_server_start(&config);

  t_case("headers well inside max_header_bytes are served");
  {
    buf_t req = {0};
    buf_printf(&req, "GET / HTTP/1.1\r\nHost: l\r\nX-Fill: ");
    buf_fill(&req, 'f', 700);
    buf_printf(&req, "\r\n\r\n");
    expect_ok(server, &req);
    free(req.data);
  }

  t_case("one header beyond max_header_bytes: 431, closed");
  {
    buf_t req = {0};
    buf_printf(&req, "GET / HTTP/1.1\r\nHost: l\r\nX-Fill: ");
    buf_fill(&req, 'f', 1500);
    buf_printf(&req, "\r\n\r\n");
    t_expect_error_close(server, req.data, req.len, 431);
    free(req.data);
  }

  t_case("many small headers adding up beyond max_header_bytes: 431, closed");
  {
    pmu_config_t c2 = config;
    c2.max_headers = 100;
    t_server_t *s2 = t_server_start(&c2);
    buf_t req = {0};
    buf_printf(&req, "GET / HTTP/1.1\r\nHost: l\r\n");
    for (int i = 0; i < 40; i++)
      buf_printf(&req, "X-H%02d: %040d\r\n", i, i);
    buf_printf(&req, "\r\n");
    t_expect_error_close(s2, req.data, req.len, 431);
    free(req.data);
    t_server_destroy(s2);
  }

  t_case("headers beyond max_header_bytes arriving in small pieces: 431, closed");
  {
    buf_t req = {0};
    buf_printf(&req, "GET / HTTP/1.1\r\nHost: l\r\nX-Fill: ");
    buf_fill(&req, 'f', 3000);
    buf_printf(&req, "\r\n\r\n");
    expect_error_pieces(server, &req, 100, 431);
    free(req.data);
  }

  t_case("exactly max_headers headers are served");
  {
    buf_t req = {0};
    buf_printf(&req, "GET / HTTP/1.1\r\nHost: l\r\n");
    for (int i = 0; i < 9; i++)
      buf_printf(&req, "X-H%d: %d\r\n", i, i);
    buf_printf(&req, "\r\n");
    expect_ok(server, &req);
    free(req.data);
  }

  t_case("more than max_headers headers: 431, closed");
  {
    buf_t req = {0};
    buf_printf(&req, "GET / HTTP/1.1\r\nHost: l\r\n");
    for (int i = 0; i < 20; i++)
      buf_printf(&req, "X-H%d: %d\r\n", i, i);
    buf_printf(&req, "\r\n");
    t_expect_error_close(server, req.data, req.len, 431);
    free(req.data);
  }

  t_case("a URL inside max_url_bytes is served");
  {
    buf_t req = {0};
    buf_printf(&req, "GET /");
    buf_fill(&req, 'u', 200);
    buf_printf(&req, " HTTP/1.1\r\nHost: l\r\n\r\n");
    expect_ok(server, &req);
    free(req.data);
  }

  t_case("a URL beyond max_url_bytes: 414, closed");
  {
    buf_t req = {0};
    buf_printf(&req, "GET /");
    buf_fill(&req, 'u', 400);
    buf_printf(&req, " HTTP/1.1\r\nHost: l\r\n\r\n");
    t_expect_error_close(server, req.data, req.len, 414);
    free(req.data);
  }

  t_case("a URL beyond max_url_bytes arriving in small pieces: 414, closed");
  {
    buf_t req = {0};
    buf_printf(&req, "GET /?q=");
    buf_fill(&req, 'u', 600);
    buf_printf(&req, " HTTP/1.1\r\nHost: l\r\n\r\n");
    expect_error_pieces(server, &req, 50, 414);
    free(req.data);
  }

  t_case("a body of exactly max_body_bytes is served");
  {
    buf_t req = {0};
    buf_printf(&req, "POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: 1000\r\n\r\n");
    buf_fill(&req, 'b', 1000);
    t_conn_t *conn = t_connect(server);
    t_send(conn, req.data, req.len);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_INT_EQ(r.body_len, 1000);
    t_response_free(&r);
    t_conn_close(conn);
    free(req.data);
  }

  t_case("Content-Length beyond max_body_bytes: 413, closed (before the body is sent)");
  {
    const char *req = "POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: 1001\r\n\r\n";
    t_expect_error_close(server, req, strlen(req), 413);
  }

  t_case("Content-Length beyond max_body_bytes with the body: 413, closed");
  {
    buf_t req = {0};
    buf_printf(&req, "POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: 5000\r\n\r\n");
    buf_fill(&req, 'b', 5000);
    t_expect_error_close(server, req.data, req.len, 413);
    free(req.data);
  }

  t_case("a chunked body of exactly max_body_bytes is served");
  {
    buf_t req = {0};
    buf_printf(&req, "POST /echo HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 10; i++) {
      buf_printf(&req, "64\r\n");
      buf_fill(&req, (char)('a' + i), 100);
      buf_printf(&req, "\r\n");
    }
    buf_printf(&req, "0\r\n\r\n");
    t_conn_t *conn = t_connect(server);
    t_send(conn, req.data, req.len);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_INT_EQ(r.body_len, 1000);
    t_response_free(&r);
    t_conn_close(conn);
    free(req.data);
  }

  t_case("chunks adding up beyond max_body_bytes: 413, closed");
  {
    buf_t req = {0};
    buf_printf(&req, "POST /echo HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 20; i++) {
      buf_printf(&req, "64\r\n");
      buf_fill(&req, 'c', 100);
      buf_printf(&req, "\r\n");
    }
    buf_printf(&req, "0\r\n\r\n");
    t_expect_error_close(server, req.data, req.len, 413);
    free(req.data);
  }

  t_case("one chunk announced beyond max_body_bytes: 413, closed");
  {
    const char *req = "POST /echo HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "100000\r\nabc";
    t_expect_error_close(server, req, strlen(req), 413);
  }

  t_case("a Content-Length too large for any integer: 400 or 413, closed");
  {
    const char *req = "POST /echo HTTP/1.1\r\nHost: l\r\n"
                      "Content-Length: 99999999999999999999999999\r\n\r\n";
    t_conn_t *conn = t_connect(server);
    (void)t_send_try(conn, req, strlen(req));
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_MSG(r.status == 400 || r.status == 413, "status %d", r.status);
    t_response_free(&r);
    T_ASSERT(t_wait_closed(conn, 2000));
    t_conn_close(conn);
  }

  t_case("the parse_errors counter saw the refusals");
  {
    pmu_stats_t stats = t_stats(server, -1);
    T_ASSERT_MSG(stats.parse_errors >= 10, "parse_errors = %llu",
                 (unsigned long long)stats.parse_errors);
  }
  t_server_destroy(server);

  t_case("connections beyond max_connections: 503, closed; capacity comes back");
  {
    pmu_config_t c3;
    t_config_init(&c3);
    c3.max_connections = 2;
    t_server_t *s3 = t_server_start(&c3);
    t_conn_t *held[2];
    for (int i = 0; i < 2; i++) {
      held[i] = t_connect(s3);
      t_send_str(held[i], "GET /held HTTP/1.1\r\nHost: l\r\n\r\n");
      t_response_t r;
      t_expect_response(held[i], &r);
      T_ASSERT_INT_EQ(r.status, 200);
      t_response_free(&r);
    }
    const char *req = "GET /third HTTP/1.1\r\nHost: l\r\n\r\n";
    t_expect_error_close(s3, req, strlen(req), 503);

    /* the held connections are unharmed */
    t_send_str(held[1], "GET /still HTTP/1.1\r\nHost: l\r\n\r\n");
    t_response_t r;
    t_expect_response(held[1], &r);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);

    pmu_stats_t stats = t_stats(s3, -1);
    T_ASSERT_MSG(stats.connections_rejected >= 1, "connections_rejected = %llu",
                 (unsigned long long)stats.connections_rejected);

    /* closing one frees a slot: within a second a new connection is served */
    t_conn_close(held[0]);
    int status = 0;
    int64_t deadline = t_now_ms() + 2000;
    while (t_now_ms() < deadline) {
      t_conn_t *conn = t_connect(s3);
      (void)t_send_try(conn, req, strlen(req));
      if (t_read_response(conn, &r, 2000, false) == 0) {
        status = r.status;
        t_response_free(&r);
      }
      t_conn_close(conn);
      if (status == 200)
        break;
      t_sleep_ms(20);
    }
    T_ASSERT_MSG(status == 200, "no slot freed after closing a connection (last status %d)",
                 status);
    t_conn_close(held[1]);
    t_server_destroy(s3);
  }

  return t_done();
}
