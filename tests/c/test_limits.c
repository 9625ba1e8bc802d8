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

/* prefix, n times c, suffix: a request of a chosen size, freed by fill_free(). */
static char *filled[16];
static size_t filled_count;

static const char *fill(const char *prefix, char c, size_t n, const char *suffix) {
  buf_t b = {0};
  buf_printf(&b, "%s", prefix);
  buf_fill(&b, c, n);
  buf_printf(&b, "%s", suffix);
  T_ASSERT(filled_count < sizeof filled / sizeof filled[0]);
  filled[filled_count++] = b.data;
  return b.data;
}

static void fill_free(void) {
  while (filled_count)
    free(filled[--filled_count]);
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

  buf_t headers9 = {0}, headers20 = {0}, headers40 = {0}, chunks10 = {0}, chunks20 = {0};
  buf_printf(&headers9, "GET / HTTP/1.1\r\nHost: l\r\n");
  for (int i = 0; i < 9; i++)
    buf_printf(&headers9, "X-H%d: %d\r\n", i, i);
  buf_printf(&headers9, "\r\n");
  buf_printf(&headers20, "GET / HTTP/1.1\r\nHost: l\r\n");
  for (int i = 0; i < 20; i++)
    buf_printf(&headers20, "X-H%d: %d\r\n", i, i);
  buf_printf(&headers20, "\r\n");
  buf_printf(&headers40, "GET / HTTP/1.1\r\nHost: l\r\n");
  for (int i = 0; i < 40; i++)
    buf_printf(&headers40, "X-H%02d: %040d\r\n", i, i);
  buf_printf(&headers40, "\r\n");
  const char *chunked = "POST /echo HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n";
  buf_printf(&chunks10, "%s", chunked);
  for (int i = 0; i < 10; i++) {
    buf_printf(&chunks10, "64\r\n");
    buf_fill(&chunks10, (char)('a' + i), 100);
    buf_printf(&chunks10, "\r\n");
  }
  buf_printf(&chunks10, "0\r\n\r\n");
  buf_printf(&chunks20, "%s", chunked);
  for (int i = 0; i < 20; i++) {
    buf_printf(&chunks20, "64\r\n");
    buf_fill(&chunks20, 'c', 100);
    buf_printf(&chunks20, "\r\n");
  }
  buf_printf(&chunks20, "0\r\n\r\n");

  /* clang-format off */
  const t_exchange_t rows[] = {
      {"headers well inside max_header_bytes are served",
       fill("GET / HTTP/1.1\r\nHost: l\r\nX-Fill: ", 'f', 700, "\r\n\r\n"), .status = 200, .after = T_KEEP},
      {"one header beyond max_header_bytes: 431, closed",
       fill("GET / HTTP/1.1\r\nHost: l\r\nX-Fill: ", 'f', 1500, "\r\n\r\n"), .status = 431,
       .after = T_CLOSE},
      {"headers beyond max_header_bytes arriving in small pieces: 431, closed",
       fill("GET / HTTP/1.1\r\nHost: l\r\nX-Fill: ", 'f', 3000, "\r\n\r\n"), .status = 431,
       .after = T_CLOSE, .piece = 100},
      {"exactly max_headers headers are served", headers9.data, .status = 200, .after = T_KEEP},
      {"more than max_headers headers: 431, closed", headers20.data, .status = 431,
       .after = T_CLOSE},
      {"a URL inside max_url_bytes is served",
       fill("GET /", 'u', 200, " HTTP/1.1\r\nHost: l\r\n\r\n"), .status = 200, .after = T_KEEP},
      {"a URL beyond max_url_bytes: 414, closed",
       fill("GET /", 'u', 400, " HTTP/1.1\r\nHost: l\r\n\r\n"), .status = 414, .after = T_CLOSE},
      {"a URL beyond max_url_bytes arriving in small pieces: 414, closed",
       fill("GET /?q=", 'u', 600, " HTTP/1.1\r\nHost: l\r\n\r\n"), .status = 414,
       .after = T_CLOSE, .piece = 50},
      {"a body of exactly max_body_bytes is served",
       fill("POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: 1000\r\n\r\n", 'b', 1000, ""),
       .status = 200, .after = T_KEEP, .body_len = 1000},
      {"Content-Length beyond max_body_bytes: 413, closed (before the body is sent)",
       "POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: 1001\r\n\r\n", .status = 413, .after = T_CLOSE},
      {"Content-Length beyond max_body_bytes with the body: 413, closed",
       fill("POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: 5000\r\n\r\n", 'b', 5000, ""),
       .status = 413, .after = T_CLOSE},
      {"a chunked body of exactly max_body_bytes is served", chunks10.data, .status = 200, .after = T_KEEP,
       .body_len = 1000},
      {"chunks adding up beyond max_body_bytes: 413, closed", chunks20.data, .status = 413,
       .after = T_CLOSE},
      {"one chunk announced beyond max_body_bytes: 413, closed",
       "POST /echo HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\nabc",
       .status = 413, .after = T_CLOSE},
      {"a Content-Length too large for any integer: 400 or 413, closed",
       "POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
       .status = 400, .status_alt = 413, .after = T_CLOSE},
  };
  /* clang-format on */
  t_exchanges(server, rows, T_COUNT(rows));

  t_case("many small headers adding up beyond max_header_bytes: 431, closed");
  {
    pmu_config_t c2 = config;
    c2.max_headers = 100;
    t_server_t *s2 = t_server_start(&c2);
    t_exchange_t row = {NULL, headers40.data, .status = 431, .after = T_CLOSE};
    t_exchanges(s2, &row, 1);
    t_server_destroy(s2);
  }
  fill_free();
  free(headers9.data);
  free(headers20.data);
  free(headers40.data);
  free(chunks10.data);
  free(chunks20.data);

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
