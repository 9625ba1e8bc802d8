/*
 * test_extra_headers: the date_header and extra_headers knobs. The extra header
 * lines go on every HTTP answer the engine writes: the handler's answers, its
 * streamed ones, the engine's own errors (400, 413) and static files; a line
 * naming Server or Date replaces the engine's own; date_header=0 drops Date;
 * a malformed extra_headers fails pmu_server_start with -EINVAL and says why;
 * the engine keeps its own copy of the string.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];

/* /stream: a streamed answer (chunked); anything else: the test handler. */
static void handler(void *data, pmu_request_t *const *reqs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    pmu_request_t *q = reqs[i];
    if (t_path_is(q, "/stream")) {
      T_ASSERT_INT_EQ(pmu_respond_start(q, 200, NULL, 0), 0);
      T_ASSERT_INT_EQ(pmu_respond_write(q, "abc", 3, NULL, NULL), 0);
      T_ASSERT_INT_EQ(pmu_respond_end(q), 0);
    } else {
      t_handle_request(data, q);
    }
  }
}

static t_response_t exchange(t_conn_t *conn, const char *request) {
  t_send_str(conn, request);
  t_response_t r;
  t_expect_response(conn, &r);
  return r;
}

/* The extra headers of the started server are on r, once each, Date absent. */
static void expect_extras(const t_response_t *r) {
  T_ASSERT_STR_EQ(t_header(r, "X-Extra"), "1");
  T_ASSERT_STR_EQ(t_header(r, "X-Two"), "two words");
  T_ASSERT_INT_EQ(t_header_count_named(r, "X-Extra"), 1);
  T_ASSERT_INT_EQ(t_header_count_named(r, "Date"), 0);
  T_ASSERT_STR_EQ(t_header(r, "Server"), "pymongoose_uring");
}

static void expect_refused(const char *extra, const char *why) {
  pmu_config_t config;
  t_config_init(&config);
  config.extra_headers = extra;
  t_server_t *server = NULL;
  int rc = t_server_try_start(&config, &server);
  T_ASSERT_MSG(rc == -EINVAL, "extra_headers \"%s\" (%s): pmu_server_start gave %d", extra, why,
               rc);
  T_ASSERT(server && server->pmu);
  const char *err = pmu_server_error(server->pmu);
  T_ASSERT_MSG(strstr(err, "extra_headers") != NULL, "error \"%s\"", err);
  pmu_server_destroy(server->pmu);
  free(server);
}

int main(void) {
  t_init("extra_headers");
  snprintf(root, sizeof root, "/tmp/i13-slow-extra-XXXXXX");
  T_ASSERT(mkdtemp(root) != NULL);
  char file[300];
  snprintf(file, sizeof file, "%s/a.txt", root);
  t_write_file(file, "static\n", 7);

  pmu_static_t mount;
  pmu_static_init(&mount);
  mount.prefix = "/files";
  mount.root = root;
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  config.statics = &mount;
  config.static_count = 1;
  config.max_body_bytes = 10;
  config.date_header = 0;
  /* The engine must copy it: overwritten once the server runs. Blanks around
   * the value go, a trailing CRLF is harmless. */
  char extra[64];
  snprintf(extra, sizeof extra, "X-Extra: 1\r\nX-Two:  two words \r\n");
  config.extra_headers = extra;
  t_server_t *server = t_server_start(&config);
  memset(extra, 'Z', sizeof extra - 1);
  t_conn_t *conn = t_connect(server);

  t_case("a handler's answer carries the extra headers and no Date (date_header=0)");
  t_response_t r = exchange(conn, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  T_ASSERT_INT_EQ(r.status, 200);
  expect_extras(&r);
  t_response_free(&r);

  t_case("a handler's error status too");
  r = exchange(conn, "GET /status?code=404 HTTP/1.1\r\nHost: h\r\n\r\n");
  T_ASSERT_INT_EQ(r.status, 404);
  expect_extras(&r);
  t_response_free(&r);

  t_case("a streamed answer (chunked) carries them");
  r = exchange(conn, "GET /stream HTTP/1.1\r\nHost: h\r\n\r\n");
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT(r.chunked);
  T_ASSERT_STR_EQ(r.body, "abc");
  expect_extras(&r);
  t_response_free(&r);

  t_case("a static file carries them");
  r = exchange(conn, "GET /files/a.txt HTTP/1.1\r\nHost: h\r\n\r\n");
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, "static\n");
  expect_extras(&r);
  t_response_free(&r);
  t_conn_close(conn);

  t_case("the engine's own 413 carries them");
  conn = t_connect(server);
  r = exchange(conn, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n");
  T_ASSERT_INT_EQ(r.status, 413);
  expect_extras(&r);
  t_response_free(&r);
  t_conn_close(conn);

  t_case("the engine's own 400 carries them");
  conn = t_connect(server);
  r = exchange(conn, "GET / HTTP/1.1\r\nBad Header\r\n\r\n");
  T_ASSERT_INT_EQ(r.status, 400);
  expect_extras(&r);
  t_response_free(&r);
  t_conn_close(conn);
  t_server_destroy(server);

  t_case("the default: Date on every answer, nothing extra");
  t_config_init(&config);
  server = t_server_start(&config);
  conn = t_connect(server);
  r = exchange(conn, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  T_ASSERT_INT_EQ(t_header_count_named(&r, "Date"), 1);
  T_ASSERT(strlen(t_header(&r, "Date")) == 29);
  T_ASSERT(t_header(&r, "X-Extra") == NULL);
  t_response_free(&r);
  t_conn_close(conn);
  t_server_destroy(server);

  t_case("an extra Server or Date line replaces the engine's own");
  t_config_init(&config);
  config.extra_headers = "Server: mine\nDate: Thu, 01 Jan 1970 00:00:00 GMT";
  server = t_server_start(&config);
  conn = t_connect(server);
  r = exchange(conn, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  T_ASSERT_INT_EQ(t_header_count_named(&r, "Server"), 1);
  T_ASSERT_STR_EQ(t_header(&r, "Server"), "mine");
  T_ASSERT_INT_EQ(t_header_count_named(&r, "Date"), 1);
  T_ASSERT_STR_EQ(t_header(&r, "Date"), "Thu, 01 Jan 1970 00:00:00 GMT");
  t_response_free(&r);
  t_conn_close(conn);
  t_server_destroy(server);

  t_case("a malformed extra_headers fails the start with -EINVAL");
  expect_refused("NoColon", "no colon");
  expect_refused("Bad Name: v", "a space in the name");
  expect_refused(": v", "an empty name");
  expect_refused("X-A: 1\r\nX-B: a\rb", "a CR in a value");
  expect_refused("X-A: 1\r\nX(B): 2", "a name that is not a token");

  unlink(file);
  rmdir(root);
  return t_done();
}
