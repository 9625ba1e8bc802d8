/*
 * test_min_rate: min_recv_rate (Apache's MinRate). A client trickling a body
 * or a head, one byte at a time, well inside body_timeout_ms and
 * header_timeout_ms of silence, is answered 408 and closed soon after
 * min_rate_grace_ms; a slow client above the rate is served; 0 disables it.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

/* Send `prefix`, then one byte of `drip` every interval_ms, watching for the
 * server's answer. Returns the milliseconds until a response came (parsed
 * into *out) or -1 if none came within max_ms or all of drip was sent. */
static long trickle(t_conn_t *conn, const char *prefix, const char *drip, unsigned interval_ms,
                    int max_ms, t_response_t *out) {
  int64_t t0 = t_now_ms();
  t_send_str(conn, prefix);
  for (size_t i = 0; drip[i] && t_now_ms() - t0 < max_ms; i++) {
    if (t_send_try(conn, drip + i, 1) < 0)
      break;
    int64_t until = t_now_ms() + interval_ms;
    while (t_now_ms() < until) {
      int n = t_recv_some(conn, (int)(until - t_now_ms()));
      if (n == 0 || n == -ECONNRESET || (n > 0 && t_memmem(conn->buf, conn->len, "\r\n\r\n")))
        goto answered;
    }
  }
  return -1;
answered:;
  long ms = (long)(t_now_ms() - t0);
  T_ASSERT_MSG(t_read_response(conn, out, 1000, false) == 0, "no complete response");
  return ms;
}

static char drip[4096];

int main(void) {
  t_init("min_rate");
  memset(drip, 'x', sizeof drip - 1);

  pmu_config_t config;
  t_config_init(&config);
  config.min_recv_rate = 500;
  config.min_rate_grace_ms = 1000;
  config.header_timeout_ms = 5000;
  config.body_timeout_ms = 5000;
  t_server_t *server = t_server_start(&config);

  t_case("a body trickling a byte every 100 ms gets 408 after the grace");
  {
    t_conn_t *conn = t_connect(server);
    t_response_t r;
    long ms = trickle(conn, "POST /echo HTTP/1.1\r\nHost: r\r\nContent-Length: 1000\r\n\r\n", drip,
                      100, 3000, &r);
    T_ASSERT_MSG(ms >= 0, "no answer to a body at 10 bytes/s within 3 s");
    T_ASSERT_INT_EQ(r.status, 408);
    T_ASSERT_MSG(ms >= 900 && ms < 2000, "408 after %ld ms, grace 1000", ms);
    t_response_free(&r);
    T_ASSERT(t_wait_closed(conn, 2000));
    t_conn_close(conn);
  }

  t_case("a head trickling a byte every 100 ms gets 408 after the grace");
  {
    t_conn_t *conn = t_connect(server);
    t_response_t r;
    long ms = trickle(conn, "GET / HTTP/1.1\r\nHost: r\r\nX-Slow: ", drip, 100, 3000, &r);
    T_ASSERT_MSG(ms >= 0, "no answer to a head at 10 bytes/s within 3 s");
    T_ASSERT_INT_EQ(r.status, 408);
    T_ASSERT_MSG(ms >= 900 && ms < 2000, "408 after %ld ms, grace 1000", ms);
    t_response_free(&r);
    t_conn_close(conn);
  }

  t_case("a body sent slowly but above the rate is served");
  {
    /* 2500 bytes at about 1000 bytes/s: 100 bytes every 100 ms. */
    char *req = malloc(3000);
    int n = snprintf(req, 3000, "POST /echo HTTP/1.1\r\nHost: r\r\nContent-Length: 2500\r\n\r\n");
    memset(req + n, 'y', 2500);
    t_conn_t *conn = t_connect(server);
    t_send_pieces(conn, req, (size_t)n + 2500, 100, 100);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_INT_EQ(r.body_len, 2500);
    t_response_free(&r);
    /* The connection is kept, and the next request has a fresh window. */
    t_send_str(conn, "GET / HTTP/1.1\r\nHost: r\r\n\r\n");
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    t_conn_close(conn);
    free(req);
  }
  t_server_destroy(server);

  t_case("min_recv_rate 0 leaves only the timeouts of silence");
  {
    config.min_recv_rate = 0;
    server = t_server_start(&config);
    t_conn_t *conn = t_connect(server);
    t_response_t r;
    char body[16];
    memset(body, 'z', 15);
    body[15] = 0;
    long ms = trickle(conn, "POST /echo HTTP/1.1\r\nHost: r\r\nContent-Length: 15\r\n\r\n", body,
                      100, 3000, &r);
    T_ASSERT_MSG(ms >= 0, "no answer once the 15 bytes were sent");
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_INT_EQ(r.body_len, 15);
    t_response_free(&r);
    t_conn_close(conn);
    t_server_destroy(server);
  }
  return t_done();
}
