/*
 * test_keepalive: several requests on one HTTP/1.1 connection are each
 * answered and the connection stays open; every response carries Date and
 * Server and a Content-Length that frames its body; the request the handler
 * sees (method, target, path, query, headers, body) is what was sent.
 */
#include "testlib.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

/* An IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT". */
static bool is_imf_fixdate(const char *s) {
  static const char *days[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
  static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  if (!s || strlen(s) != 29)
    return false;
  bool day_ok = false, month_ok = false;
  for (int i = 0; i < 7; i++)
    day_ok |= strncmp(s, days[i], 3) == 0;
  for (int i = 0; i < 12; i++)
    month_ok |= strncmp(s + 8, months[i], 3) == 0;
  const char *digits = "5 6 12 13 14 15 17 18 20 21 23 24";
  for (const char *d = digits; *d;) {
    int pos = (int)strtol(d, (char **)&d, 10);
    if (!isdigit((unsigned char)s[pos]))
      return false;
  }
  return day_ok && month_ok && s[3] == ',' && s[4] == ' ' && s[7] == ' ' && s[11] == ' ' &&
         s[16] == ' ' && s[19] == ':' && s[22] == ':' && strcmp(s + 25, " GMT") == 0;
}

/* Common checks of every engine response. */
static void check_common(const t_response_t *r) {
  T_ASSERT_INT_EQ(r->status, 200);
  T_ASSERT_INT_EQ(r->minor, 1);
  T_ASSERT_STR_EQ(r->reason, "OK");
  T_ASSERT_MSG(is_imf_fixdate(t_header(r, "Date")), "Date is not an IMF-fixdate: %s",
               t_header(r, "Date") ? t_header(r, "Date") : "(absent)");
  T_ASSERT_INT_EQ(t_header_count_named(r, "Date"), 1);
  T_ASSERT_STR_EQ(t_header(r, "Server"), "pymongoose_uring");
  T_ASSERT_INT_EQ(t_header_count_named(r, "Server"), 1);
  T_ASSERT_MSG(r->has_content_length, "no Content-Length");
  T_ASSERT_INT_EQ(t_header_count_named(r, "Content-Length"), 1);
  T_ASSERT_MSG(!r->chunked, "a complete body was sent chunked");
  T_ASSERT_INT_EQ(r->content_length, r->body_len);
  const char *connection = t_header(r, "Connection");
  T_ASSERT_MSG(!connection || strcasecmp(connection, "close") != 0,
               "keep-alive response says Connection: close");
}

int main(void) {
  t_init("keepalive");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);

  t_case("five GETs on one connection, each answered, connection stays open");
  t_conn_t *conn = t_connect(server);
  char conn_id[32] = "";
  for (int i = 0; i < 5; i++) {
    char request[256], target[64];
    snprintf(target, sizeof target, "/ka/%d?i=%d&x=y", i, i);
    snprintf(request, sizeof request,
             "GET %s HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t/1\r\n\r\n", target);
    t_send_str(conn, request);
    t_response_t r;
    t_expect_response(conn, &r);
    check_common(&r);
    char path[32], query[32];
    snprintf(path, sizeof path, "/ka/%d", i);
    snprintf(query, sizeof query, "i=%d&x=y", i);
    T_ASSERT_FIELD(&r, "method", "GET");
    T_ASSERT_FIELD(&r, "target", target);
    T_ASSERT_FIELD(&r, "path", path);
    T_ASSERT_FIELD(&r, "query", query);
    T_ASSERT_FIELD(&r, "version", "1.1");
    T_ASSERT_FIELD(&r, "keep_alive", "1");
    T_ASSERT_FIELD(&r, "head", "0");
    T_ASSERT_FIELD(&r, "host", "example.test");
    T_ASSERT_FIELD(&r, "header_count", "2");
    T_ASSERT_FIELD(&r, "body_len", "0");
    if (i == 0)
      snprintf(conn_id, sizeof conn_id, "%s", t_header(&r, "X-Conn"));
    else
      T_ASSERT_STR_EQ(t_header(&r, "X-Conn"), conn_id);
    t_response_free(&r);
  }
  T_ASSERT_MSG(!t_wait_closed(conn, 200), "server closed a keep-alive connection");
  T_ASSERT_INT_EQ(conn->len, 0);

  t_case("methods with and without bodies on the same connection");
  static const struct {
    const char *method, *body;
    /* clang-format off */
  } cases[] = {
      {"POST", "a=1&b=2"}, {"PUT", "{\"k\": [1, 2, 3]}"}, {"DELETE", ""},
      {"OPTIONS", ""},     {"PATCH", "x"},                {"POST", ""},
  };
  /* clang-format on */
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char request[512];
    size_t body_len = strlen(cases[i].body);
    int n = snprintf(request, sizeof request,
                     "%s /m/%zu HTTP/1.1\r\nHost: h\r\nContent-Length: %zu\r\n\r\n%s",
                     cases[i].method, i, body_len, cases[i].body);
    t_send(conn, request, (size_t)n);
    t_response_t r;
    t_expect_response(conn, &r);
    check_common(&r);
    T_ASSERT_FIELD(&r, "method", cases[i].method);
    char len_text[32];
    snprintf(len_text, sizeof len_text, "%zu", body_len);
    T_ASSERT_FIELD(&r, "body_len", len_text);
    T_ASSERT_FIELD(&r, "body", cases[i].body);
    T_ASSERT_FIELD(&r, "query", "");
    T_ASSERT_STR_EQ(t_header(&r, "X-Conn"), conn_id);
    t_response_free(&r);
  }

  t_case("headers reach the handler in order, names as sent, values trimmed");
  {
    const char *request = "GET /h HTTP/1.1\r\n"
                          "Host: h\r\n"
                          "x-lower: one\r\n"
                          "X-MiXeD-Case:two\r\n"
                          "X-Padded:   three  \t\r\n"
                          "X-Empty:\r\n"
                          "X-Dup: a\r\n"
                          "X-Dup: b\r\n"
                          "\r\n";
    t_send_str(conn, request);
    t_response_t r;
    t_expect_response(conn, &r);
    check_common(&r);
    T_ASSERT_FIELD(&r, "header_count", "7");
    T_ASSERT_CONTAINS(r.body, r.body_len,
                      "header=Host: h\n"
                      "header=x-lower: one\n"
                      "header=X-MiXeD-Case: two\n"
                      "header=X-Padded: three\n"
                      "header=X-Empty: \n"
                      "header=X-Dup: a\n"
                      "header=X-Dup: b\n");
    t_response_free(&r);
  }

  t_case("an HTTP/1.1 request without Host is refused with 400 (RFC 9112 3.2)");
  {
    t_conn_t *c2 = t_connect(server);
    t_send_str(c2, "GET /nohost HTTP/1.1\r\n\r\n");
    t_response_t r;
    t_expect_response(c2, &r);
    T_ASSERT_INT_EQ(r.status, 400);
    t_response_free(&r);
    t_expect_closed(c2, 2000);
    t_conn_close(c2);
  }

  t_case("a long keep-alive run: 200 requests one after another");
  for (int i = 0; i < 200; i++) {
    char request[128];
    int n = snprintf(request, sizeof request, "GET /run/%d HTTP/1.1\r\nHost: h\r\n\r\n", i);
    t_send(conn, request, (size_t)n);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    char path[32];
    snprintf(path, sizeof path, "/run/%d", i);
    T_ASSERT_FIELD(&r, "path", path);
    t_response_free(&r);
  }
  T_ASSERT_MSG(!t_wait_closed(conn, 50), "server closed the connection");
  t_conn_close(conn);

  t_server_destroy(server);
  return t_done();
}
