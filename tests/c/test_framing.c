/*
 * test_framing: every request whose framing or syntax is ambiguous (the
 * stuff of request smuggling, RFC 9112 sections 2.2, 5, 6.3 and 7.1) is
 * refused with 400 and the connection closed, and one bad connection does
 * not disturb another.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct bad_case {
  const char *name;
  const char *request;
  size_t len; /* 0: strlen */
} bad_case_t;

/* clang-format off */
static const bad_case_t bad_cases[] = {
    {"Content-Length and Transfer-Encoding together",
     "POST /f HTTP/1.1\r\nHost: f\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     "0\r\n\r\n", 0},
    {"Transfer-Encoding and Content-Length together (other order)",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
     "0\r\n\r\n", 0},
    {"differing duplicate Content-Length",
     "POST /f HTTP/1.1\r\nHost: f\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 0},
    {"differing Content-Length values in one line",
     "POST /f HTTP/1.1\r\nHost: f\r\nContent-Length: 5, 6\r\n\r\nhello!", 0},
    {"Content-Length not a number",
     "POST /f HTTP/1.1\r\nHost: f\r\nContent-Length: abc\r\n\r\n", 0},
    {"Content-Length negative",
     "POST /f HTTP/1.1\r\nHost: f\r\nContent-Length: -1\r\n\r\n", 0},
    {"Content-Length with a sign",
     "POST /f HTTP/1.1\r\nHost: f\r\nContent-Length: +5\r\n\r\nhello", 0},
    {"Transfer-Encoding: chunked, gzip (last coding not chunked)",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 0},
    {"Transfer-Encoding: gzip",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: gzip\r\n\r\nabc", 0},
    {"Transfer-Encoding: chunked then a second Transfer-Encoding: gzip line",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
     "0\r\n\r\n", 0},
    {"Transfer-Encoding: identity",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: identity\r\n\r\nabc", 0},
    {"bad chunk size zz",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 0},
    {"chunk size with 0x prefix",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 0},
    {"negative chunk size",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 0},
    {"chunk data not followed by CRLF",
     "POST /f HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n", 0},
    {"obs-fold: header continued on a line starting with a space",
     "GET /f HTTP/1.1\r\nHost: f\r\nX-Folded: first\r\n second\r\n\r\n", 0},
    {"obs-fold: header continued on a line starting with a tab",
     "GET /f HTTP/1.1\r\nHost: f\r\nX-Folded: first\r\n\tsecond\r\n\r\n", 0},
    {"bare CR inside a header value",
     "GET /f HTTP/1.1\r\nHost: f\r\nX-A: a\rb\r\n\r\n", 0},
    {"bare CR ending a header line",
     "GET /f HTTP/1.1\r\nHost: f\rX-A: b\r\n\r\n", 0},
    {"bare CR in the request line",
     "GET /f\r HTTP/1.1\r\nHost: f\r\n\r\n", 0},
    {"space between header name and colon",
     "GET /f HTTP/1.1\r\nHost: f\r\nX-A : a\r\n\r\n", 0},
    {"tab between header name and colon",
     "GET /f HTTP/1.1\r\nHost\t: f\r\n\r\n", 0},
    {"space before Content-Length's colon (smuggling classic)",
     "POST /f HTTP/1.1\r\nHost: f\r\nContent-Length : 5\r\n\r\nhello", 0},
    {"header line without a colon",
     "GET /f HTTP/1.1\r\nHost: f\r\nNoColonHere\r\n\r\n", 0},
    {"invalid character in a header name",
     "GET /f HTTP/1.1\r\nHost: f\r\nX(A): b\r\n\r\n", 0},
    {"NUL in a header value",
     "GET /f HTTP/1.1\r\nHost: f\r\nX-A: a\0b\r\n\r\n", 38},
    {"garbage request line", "HELLO WORLD\r\n\r\n", 0},
    {"binary request line", "\x01\x02\x03\x04\x05\r\n\r\n", 0},
    {"unknown protocol", "GET /f FOO/1.1\r\nHost: f\r\n\r\n", 0},
    {"request line missing the version", "GET /f\r\nHost: f\r\n\r\n", 0},
    {"spaces inside the target", "GET /a b HTTP/1.1\r\nHost: f\r\n\r\n", 0},
    {"lowercase protocol name", "GET /f http/1.1\r\nHost: f\r\n\r\n", 0},
};
/* clang-format on */

int main(void) {
  t_init("framing");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);

  size_t refused = 0;
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    char name[160];
    snprintf(name, sizeof name, "400 and close: %s", bad_cases[i].name);
    t_case(name);
    const char *req = bad_cases[i].request;
    size_t len = bad_cases[i].len ? bad_cases[i].len : strlen(req);
    /* each row is independent: report every refusal that fails */
    char why[256];
    if (t_try_error_close(server, req, len, 400, why, sizeof why))
      refused++;
    else
      t_case_failed("%s (request \"%.*s\")", why, (int)(len > 120 ? 120 : len), req);
  }

  t_case("a valid request then a bad one pipelined: 200, then 400, then close");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn,
               "GET /good HTTP/1.1\r\nHost: f\r\n\r\n"
               "POST /bad HTTP/1.1\r\nHost: f\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"
               "GET /never HTTP/1.1\r\nHost: f\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/good");
    t_response_free(&r);
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 400);
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("a smuggled request hidden in a refused body is never answered");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "POST /outer HTTP/1.1\r\nHost: f\r\nContent-Length: 34\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n"
                     "0\r\n\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 400);
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    t_conn_close(conn);
  }

  t_case("a bad request on one connection does not disturb another's pipelined requests");
  {
    char *pipeline = NULL;
    size_t len = 0;
    for (int i = 0; i < 30; i++) {
      char line[96];
      int n = snprintf(line, sizeof line, "GET /ok/%d HTTP/1.1\r\nHost: f\r\n\r\n", i);
      pipeline = realloc(pipeline, len + (size_t)n + 1);
      memcpy(pipeline + len, line, (size_t)n + 1);
      len += (size_t)n;
    }
    t_conn_t *good = t_connect(server);
    t_conn_t *bad[4];
    for (int k = 0; k < 4; k++)
      bad[k] = t_connect(server);
    /* interleave: half the good pipeline, the bad ones, the rest */
    size_t half = len / 2;
    t_send(good, pipeline, half);
    t_send_str(bad[0], "GET /x HTTP/1.1\r\nHost: f\r\nX-A : a\r\n\r\n");
    (void)t_send_try(bad[1], "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11); /* TLS hello */
    t_send_str(bad[2], "POST /x HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    t_send_str(bad[3], "GET /x HTTP/1.1\r\nHost: f\r\nX: a\r\n b\r\n\r\n");
    t_sleep_ms(20);
    t_send(good, pipeline + half, len - half);
    for (int i = 0; i < 30; i++) {
      t_response_t r;
      t_expect_response(good, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      char path[32];
      snprintf(path, sizeof path, "/ok/%d", i);
      T_ASSERT_FIELD(&r, "path", path);
      t_response_free(&r);
    }
    for (int k = 0; k < 4; k++) {
      t_response_t r;
      t_expect_response(bad[k], &r);
      T_ASSERT_INT_EQ(r.status, 400);
      t_response_free(&r);
      T_ASSERT(t_wait_closed(bad[k], 2000));
      t_conn_close(bad[k]);
    }
    T_ASSERT_MSG(!t_wait_closed(good, 50), "the good connection was closed");
    t_conn_close(good);
    free(pipeline);
  }

  t_case("parse_errors counted every refusal");
  {
    pmu_stats_t stats = t_stats(server, -1);
    size_t expected = refused + 2 + 4;
    T_ASSERT_MSG(stats.parse_errors >= expected, "parse_errors = %llu, expected >= %zu",
                 (unsigned long long)stats.parse_errors, expected);
  }

  t_server_destroy(server);
  return t_done();
}
