/*
 * test_unix: a server on a Unix domain socket path answers; it reports port
 * 0, the handler sees AF_UNIX peers, several threads share the one socket,
 * and the path can be used again after the server is gone.
 */
#include "testlib.h"

#include <stdio.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void unix_handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    char body[64];
    int n = snprintf(body, sizeof body, "peer_family=%d local_family=%d",
                     requests[i]->peer.ss_family, requests[i]->local.ss_family);
    pmu_respond_simple(requests[i], 200, NULL, 0, body, (size_t)n);
  }
  (void)data;
}

int main(void) {
  t_init("unix");
  char path[108];
  snprintf(path, sizeof path, "/tmp/pmu-test-unix-%d.sock", (int)getpid());
  unlink(path);

  t_case("a request over a Unix socket is answered; port is 0");
  pmu_config_t config;
  t_config_init(&config);
  config.unix_path = path;
  config.host = "127.0.0.1"; /* unix_path wins */
  t_server_t *server = t_server_start(&config);
  T_ASSERT_INT_EQ(server->family, AF_UNIX);
  T_ASSERT_INT_EQ(pmu_server_port(server->pmu), 0);
  struct stat st;
  T_ASSERT_MSG(stat(path, &st) == 0 && S_ISSOCK(st.st_mode), "%s is not a socket", path);
  {
    t_conn_t *conn = t_connect(server);
    for (int i = 0; i < 3; i++) {
      t_send_str(conn, "POST /unix HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nunix");
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      T_ASSERT_FIELD(&r, "path", "/unix");
      T_ASSERT_FIELD(&r, "body", "unix");
      t_response_free(&r);
    }
    t_conn_close(conn);
  }
  t_server_destroy(server);

  t_case("the handler sees AF_UNIX peer and local addresses");
  {
    t_config_init(&config);
    config.unix_path = path;
    config.handler = unix_handler;
    t_server_t *s = NULL;
    int rc = t_server_try_start(&config, &s);
    T_ASSERT_MSG(rc == 0, "restart on the same path after destroy: %d (%s)", rc,
                 s ? pmu_server_error(s->pmu) : "");
    t_conn_t *conn = t_connect(s);
    t_send_str(conn, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    char expected[64];
    snprintf(expected, sizeof expected, "peer_family=%d local_family=%d", AF_UNIX, AF_UNIX);
    T_ASSERT_STR_EQ(r.body, expected);
    t_response_free(&r);
    t_conn_close(conn);
    t_server_destroy(s);
  }

  t_case("two threads share one Unix socket; connections go round both; all answered");
  {
    t_config_init(&config);
    config.unix_path = path;
    config.threads = 2;
    t_server_t *s = t_server_start(&config);
    for (int i = 0; i < 50; i++)
      t_get_ok(s, "/many");
    pmu_stats_t st2 = t_stats(s, -1);
    T_ASSERT_INT_EQ(st2.requests, 50);
    /* One accept at a time per thread: each goes to the back of the queue,
     * so of 50 connections one after another each thread takes 10 or more. */
    t_expect_accepts_alternate(s, 50, 10);
    t_server_destroy(s);
  }

  unlink(path);
  return t_done();
}
