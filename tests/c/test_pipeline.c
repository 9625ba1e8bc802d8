/*
 * test_pipeline: requests pipelined on one connection are answered strictly
 * in request order, whatever order their answers are produced in, beyond
 * max_pipelined and output_high_water, with bodies, and whatever way the
 * bytes are split.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

/* Append one GET for `target` to a growing buffer. */
static void add_get(char **buf, size_t *len, const char *target) {
  char line[256];
  int n = snprintf(line, sizeof line, "GET %s HTTP/1.1\r\nHost: pipe\r\n\r\n", target);
  *buf = realloc(*buf, *len + (size_t)n + 1);
  if (!*buf)
    abort();
  memcpy(*buf + *len, line, (size_t)n + 1);
  *len += (size_t)n;
}

/* Read `count` responses and check each one's path is paths[i]. */
static void expect_paths(t_conn_t *conn, const char *const *paths, size_t count) {
  char conn_id[32] = "";
  for (size_t i = 0; i < count; i++) {
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_MSG(r.status == 200, "response %zu: status %d", i, r.status);
    char path[256];
    T_ASSERT_MSG(t_describe_get(&r, "path", path, sizeof path), "response %zu: no path", i);
    T_ASSERT_MSG(strcmp(path, paths[i]) == 0, "response %zu: path %s, expected %s", i, path,
                 paths[i]);
    if (i == 0)
      snprintf(conn_id, sizeof conn_id, "%s", t_header(&r, "X-Conn"));
    T_ASSERT_STR_EQ(t_header(&r, "X-Conn"), conn_id);
    t_response_free(&r);
  }
}

/* Pipeline n GETs of /p/0../p/(n-1), sent in pieces of `piece` bytes (0:
 * one write), and check every answer comes back in order. */
static void pipeline_numbered(const t_server_t *server, size_t n, size_t piece) {
  char *buf = NULL;
  size_t len = 0;
  char **paths = calloc(n, sizeof *paths);
  for (size_t i = 0; i < n; i++) {
    char target[32];
    snprintf(target, sizeof target, "/p/%zu", i);
    paths[i] = strdup(target);
    add_get(&buf, &len, target);
  }
  t_conn_t *conn = t_connect(server);
  if (piece)
    t_send_pieces(conn, buf, len, piece, 0);
  else
    t_send(conn, buf, len);
  expect_paths(conn, (const char *const *)paths, n);
  T_ASSERT_MSG(!t_wait_closed(conn, 50), "connection closed after pipelined requests");
  T_ASSERT_INT_EQ(conn->len, 0);
  t_conn_close(conn);
  for (size_t i = 0; i < n; i++)
    free(paths[i]);
  free(paths);
  free(buf);
}

int main(void) {
  t_init("pipeline");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);

  t_case("100 requests in one write are answered in order");
  pipeline_numbered(server, 100, 0);

  t_case("100 requests sent in 7-byte pieces are answered in order");
  pipeline_numbered(server, 100, 7);

  t_case("600 requests in one write (beyond max_pipelined 128) are answered in order");
  pipeline_numbered(server, 600, 0);

  t_case("deferred answers finishing in reverse order are sent in request order");
  {
    char *buf = NULL;
    size_t len = 0;
    const char *paths[20];
    for (int i = 0; i < 10; i++) {
      char target[64];
      /* Earlier requests wait longer: the handler answers them last. */
      snprintf(target, sizeof target, "/defer?ms=%d&i=%d", (10 - i) * 30, i);
      add_get(&buf, &len, target);
      paths[2 * i] = "/defer";
      snprintf(target, sizeof target, "/now/%d", i);
      add_get(&buf, &len, target);
      paths[2 * i + 1] = strdup(target);
    }
    t_conn_t *conn = t_connect(server);
    t_send(conn, buf, len);
    char conn_id[32] = "";
    for (int i = 0; i < 20; i++) {
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      char path[64], query[64], expected_query[64];
      T_ASSERT(t_describe_get(&r, "path", path, sizeof path));
      T_ASSERT_MSG(strcmp(path, paths[i]) == 0, "response %d: path %s, expected %s", i, path,
                   paths[i]);
      if (i % 2 == 0) {
        T_ASSERT(t_describe_get(&r, "query", query, sizeof query));
        snprintf(expected_query, sizeof expected_query, "ms=%d&i=%d", (10 - i / 2) * 30, i / 2);
        T_ASSERT_STR_EQ(query, expected_query);
      }
      if (i == 0)
        snprintf(conn_id, sizeof conn_id, "%s", t_header(&r, "X-Conn"));
      T_ASSERT_STR_EQ(t_header(&r, "X-Conn"), conn_id);
      t_response_free(&r);
    }
    t_conn_close(conn);
    for (int i = 0; i < 10; i++)
      free((char *)paths[2 * i + 1]);
    free(buf);
  }

  t_case("pipelined POSTs keep their bodies apart, even bodies that look like requests");
  {
    char *buf = NULL;
    size_t len = 0;
    char *bodies[50];
    for (int i = 0; i < 50; i++) {
      size_t body_len = (size_t)(i * 97) % 5000;
      bodies[i] = malloc(body_len + 1);
      for (size_t k = 0; k < body_len; k++)
        bodies[i][k] = (char)('A' + (k + (size_t)i) % 26);
      if (body_len > 40)
        memcpy(bodies[i] + 10, "GET /x HTTP/1.1\r\n\r\n", 19);
      bodies[i][body_len] = '\0';
      char head[128];
      int n = snprintf(head, sizeof head,
                       "POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: %zu\r\n\r\n", body_len);
      buf = realloc(buf, len + (size_t)n + body_len);
      memcpy(buf + len, head, (size_t)n);
      memcpy(buf + len + n, bodies[i], body_len);
      len += (size_t)n + body_len;
    }
    t_conn_t *conn = t_connect(server);
    t_send(conn, buf, len);
    for (int i = 0; i < 50; i++) {
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      T_ASSERT_MSG(r.body_len == strlen(bodies[i]) && memcmp(r.body, bodies[i], r.body_len) == 0,
                   "response %d: echoed body differs (%zu bytes, expected %zu)", i, r.body_len,
                   strlen(bodies[i]));
      t_response_free(&r);
      free(bodies[i]);
    }
    t_conn_close(conn);
    free(buf);
  }

  t_case("pipelined large answers (beyond output_high_water) interleaved with small ones");
  {
    char *buf = NULL;
    size_t len = 0;
    unsigned long releases_before = t_big_releases();
    for (int i = 0; i < 20; i++) {
      add_get(&buf, &len, "/big?n=200000");
      add_get(&buf, &len, "/big?n=10");
    }
    t_conn_t *conn = t_connect(server);
    t_send(conn, buf, len);
    for (int i = 0; i < 40; i++) {
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      size_t expected = i % 2 == 0 ? 200000 : 10;
      T_ASSERT_INT_EQ(r.body_len, expected);
      for (size_t k = 0; k < r.body_len; k += 4099)
        T_ASSERT_MSG(r.body[k] == (char)('a' + k % 26), "response %d: byte %zu wrong", i, k);
      T_ASSERT_INT_EQ(r.body[r.body_len - 1], (char)('a' + (r.body_len - 1) % 26));
      t_response_free(&r);
    }
    t_conn_close(conn);
    free(buf);
    /* every 200000-byte body was handed over with body_release: each
     * released exactly once once on the wire */
    T_WAIT_UNTIL(t_big_releases() - releases_before >= 20, T_EVENT_MS);
    T_ASSERT_INT_EQ(t_big_releases() - releases_before, 20);
  }

  t_case("pipelined requests from many connections at once stay in order per connection");
  {
    t_conn_t *conns[8];
    char *bufs[8] = {0};
    size_t lens[8] = {0};
    char **paths[8];
    for (int c = 0; c < 8; c++) {
      paths[c] = calloc(50, sizeof(char *));
      for (int i = 0; i < 50; i++) {
        char target[32];
        snprintf(target, sizeof target, "/c%d/%d", c, i);
        paths[c][i] = strdup(target);
        add_get(&bufs[c], &lens[c], target);
      }
      conns[c] = t_connect(server);
    }
    for (int c = 0; c < 8; c++)
      t_send(conns[c], bufs[c], lens[c]);
    for (int c = 7; c >= 0; c--) {
      expect_paths(conns[c], (const char *const *)paths[c], 50);
      t_conn_close(conns[c]);
      for (int i = 0; i < 50; i++)
        free(paths[c][i]);
      free(paths[c]);
      free(bufs[c]);
    }
  }

  t_server_destroy(server);
  return t_done();
}
