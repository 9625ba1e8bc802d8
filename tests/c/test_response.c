/*
 * test_response: what the engine writes for a handler's response: the
 * status line with the engine's reason phrase, framing that belongs to the
 * engine alone (the handler's Content-Length, Transfer-Encoding and
 * Connection dropped), the handler's own Server and Date, bodiless statuses,
 * and a 500 for a status outside 100..999.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

static t_response_t get(t_conn_t *conn, const char *target) {
  char request[256];
  snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: r\r\n\r\n", target);
  t_send_str(conn, request);
  t_response_t r;
  t_expect_response(conn, &r);
  return r;
}

int main(void) {
  t_init("response");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);
  t_conn_t *conn = t_connect(server);

  t_case("statuses with their reason phrases and bodies");
  static const int codes[] = {200, 201, 202, 301, 302, 400, 401, 403, 404, 409,
                              418, 422, 429, 500, 502, 503, 299, 599, 999};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    char target[64], body[32];
    snprintf(target, sizeof target, "/status?code=%d", codes[i]);
    t_response_t r = get(conn, target);
    T_ASSERT_INT_EQ(r.status, codes[i]);
    T_ASSERT_STR_EQ(r.reason, pmu_status_reason(codes[i]));
    snprintf(body, sizeof body, "status %d", codes[i]);
    T_ASSERT_STR_EQ(r.body, body);
    T_ASSERT_INT_EQ(r.content_length, strlen(body));
    t_response_free(&r);
  }

  /* One line each: the request on the shared connection and what comes back;
   * T_KEEP: the connection goes on (the next request on it is answered). */
  /* clang-format off */
  static const t_exchange_t rows[] = {
      {"204 has no body and no Content-Length; the connection goes on",
       "GET /status?code=204 HTTP/1.1\r\nHost: r\r\n\r\n", .status = 204, .body = "",
       .lacks = {"Content-Length", "Transfer-Encoding"}, .after = T_KEEP},
      {"304 has no body; the connection goes on",
       "GET /status?code=304 HTTP/1.1\r\nHost: r\r\n\r\n", .status = 304, .body = "",
       .after = T_KEEP},
      {"an empty 200 body has Content-Length: 0", "GET /big?n=0 HTTP/1.1\r\nHost: r\r\n\r\n",
       .status = 200, .has = {"Content-Length: 0"}, .body = "", .after = T_KEEP},
  };
  /* clang-format on */
  for (size_t i = 0; i < T_COUNT(rows); i++) {
    t_case(rows[i].name);
    t_exchange(conn, &rows[i], NULL);
  }

  t_case("one status rule: pmu_status_valid is 200..999, and pmu_respond follows it");
  {
    static const int good[] = {200, 204, 299, 304, 418, 599, 999};
    static const int bad[] = {-1, 0, 99, 100, 101, 103, 199, 1000, 65536};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
      T_ASSERT_MSG(pmu_status_valid(good[i]), "%d refused", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
      T_ASSERT_MSG(!pmu_status_valid(bad[i]), "%d allowed", bad[i]);
  }

  t_case("a status outside 200..999: pmu_respond says -EINVAL and the client gets 500");
  {
    unsigned long before = t_respond_einval();
    t_response_t r = get(conn, "/status?code=1000");
    T_ASSERT_INT_EQ(r.status, 500);
    t_response_free(&r);
    r = get(conn, "/status?code=99");
    T_ASSERT_INT_EQ(r.status, 500);
    t_response_free(&r);
    T_ASSERT_INT_EQ(t_respond_einval() - before, 2);
    /* 1xx are interim answers, never a handler's final one. */
    r = get(conn, "/status?code=101");
    T_ASSERT_INT_EQ(r.status, 500);
    t_response_free(&r);
    r = get(conn, "/status?code=199");
    T_ASSERT_INT_EQ(r.status, 500);
    t_response_free(&r);
    r = get(conn, "/after-500");
    T_ASSERT_FIELD(&r, "path", "/after-500");
    t_response_free(&r);
  }

  t_case("the handler's framing headers are dropped, others kept");
  {
    static const t_exchange_t ex = {NULL,
                                    "GET /framing HTTP/1.1\r\nHost: r\r\n\r\n",
                                    .status = 200,
                                    .has = {"X-Kept: yes"},
                                    .lacks = {"Transfer-Encoding"},
                                    .after = T_KEEP};
    t_response_t r;
    t_exchange(conn, &ex, &r);
    T_ASSERT_INT_EQ(t_header_count_named(&r, "Content-Length"), 1);
    T_ASSERT_INT_EQ(r.content_length, r.body_len);
    T_ASSERT_MSG(r.content_length != 999, "the handler's Content-Length: 999 was used");
    T_ASSERT_MSG(t_header_count_named(&r, "Connection") <= 1, "%zu Connection headers",
                 t_header_count_named(&r, "Connection"));
    T_ASSERT_FIELD(&r, "path", "/framing");
    t_response_free(&r);
  }

  t_case("the handler's own Server and Date replace the engine's");
  {
    static const t_exchange_t ex = {NULL, "GET /server HTTP/1.1\r\nHost: r\r\n\r\n", .status = 200,
                                    .has = {"Server: t-server", "Date: t-date"}};
    t_response_t r;
    t_exchange(conn, &ex, &r);
    T_ASSERT_INT_EQ(t_header_count_named(&r, "Server"), 1);
    T_ASSERT_INT_EQ(t_header_count_named(&r, "Date"), 1);
    t_response_free(&r);
  }

  t_case("handler headers arrive as given, in order");
  {
    t_response_t r = get(conn, "/plain");
    const char *names[] = {"X-Conn", "X-Thread", "X-Seq", "Content-Type"};
    size_t k = 0;
    for (size_t i = 0; i < r.header_count && k < 4; i++)
      if (strcasecmp(r.headers[i].name, names[k]) == 0)
        k++;
    T_ASSERT_MSG(k == 4, "handler headers missing or out of order (matched %zu of 4)", k);
    T_ASSERT_STR_EQ(t_header(&r, "Content-Type"), "text/plain");
    t_response_free(&r);
  }

  t_case("bodies from 1 byte to 1 MB arrive intact (copied and released)");
  {
    static const size_t sizes[] = {1, 100, 4095, 4096, 4097, 65535, 65536, 300000, 1000000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      char target[64];
      snprintf(target, sizeof target, "/big?n=%zu", sizes[i]);
      t_response_t r = get(conn, target);
      T_ASSERT_INT_EQ(r.body_len, sizes[i]);
      for (size_t k = 0; k < r.body_len; k++)
        if (r.body[k] != (char)('a' + k % 26))
          T_FAIL("size %zu: byte %zu is %d", sizes[i], k, r.body[k]);
      t_response_free(&r);
    }
  }

  T_ASSERT_MSG(!t_wait_closed(conn, 50), "connection closed");
  t_conn_close(conn);
  t_server_destroy(server);
  return t_done();
}
