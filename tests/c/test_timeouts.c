/*
 * test_timeouts: every timeout fires with small settings, and only when it
 * should: header (total time to receive the headers: 408 then close),
 * keep-alive idle (silent close), body (silence while a body is due: 408
 * then close), send (no progress: close). Connections that keep making
 * progress, or wait on a slow handler, are not cut.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

#define TIMEOUT_MS 300
#define EARLY_MS 200 /* firing before this is too early */
#define LATE_MS 2500 /* firing after this is too late */

/* Read the 408 and the close that must follow; return ms since `t0`. */
static int64_t expect_408_close(t_conn_t *conn, int64_t t0) {
  t_response_t r;
  t_expect_response_at(__FILE__, __LINE__, conn, &r, LATE_MS, false);
  int64_t elapsed = t_now_ms() - t0;
  T_ASSERT_INT_EQ(r.status, 408);
  t_response_free(&r);
  T_ASSERT_MSG(t_wait_closed(conn, 2000), "still open after 408");
  return elapsed;
}

int main(void) {
  t_init("timeouts");
  pmu_config_t config;
  t_config_init(&config);
  config.header_timeout_ms = TIMEOUT_MS;
  config.keepalive_timeout_ms = TIMEOUT_MS;
  config.body_timeout_ms = TIMEOUT_MS;
  config.send_timeout_ms = TIMEOUT_MS;
  t_server_t *server = t_server_start(&config);

  t_case("header timeout: partial headers get 408, then the connection closes");
  {
    t_conn_t *conn = t_connect(server);
    int64_t t0 = t_now_ms();
    t_send_str(conn, "GET /partial HTTP/1.1\r\nHost: t\r\n");
    int64_t elapsed = expect_408_close(conn, t0);
    T_ASSERT_MSG(elapsed >= EARLY_MS, "408 after %lld ms, timeout is %d", (long long)elapsed,
                 TIMEOUT_MS);
    t_conn_close(conn);
  }

  t_case("header timeout is a deadline: headers trickling in forever still get 408");
  {
    t_conn_t *conn = t_connect(server);
    int64_t t0 = t_now_ms();
    t_send_str(conn, "GET /slowloris HTTP/1.1\r\nHost: t\r\n");
    bool answered = false;
    for (int i = 0; i < 60 && !answered; i++) {
      if (t_send_try(conn, "X", 1) < 0)
        break;
      answered = t_recv_some(conn, 50) != -ETIMEDOUT;
    }
    int64_t elapsed = expect_408_close(conn, t0);
    T_ASSERT_MSG(elapsed < LATE_MS, "slowloris headers held the connection %lld ms",
                 (long long)elapsed);
    t_conn_close(conn);
  }

  t_case("a connection that never sends anything is closed");
  {
    t_conn_t *conn = t_connect(server);
    int64_t t0 = t_now_ms();
    T_ASSERT_MSG(t_wait_closed(conn, LATE_MS), "silent connection kept open");
    int64_t elapsed = t_now_ms() - t0;
    T_ASSERT_MSG(elapsed >= EARLY_MS, "closed after %lld ms", (long long)elapsed);
    /* a 408 is allowed here, nothing else */
    if (conn->len) {
      t_response_t r;
      T_ASSERT_INT_EQ(t_parse_response(conn->buf, conn->len, false, true, &r) > 0, 1);
      T_ASSERT_INT_EQ(r.status, 408);
      t_response_free(&r);
    }
    t_conn_close(conn);
  }

  t_case("keep-alive timeout: an idle connection is closed without a response");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /once HTTP/1.1\r\nHost: t\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    int64_t t0 = t_now_ms();
    t_expect_closed(conn, LATE_MS);
    int64_t elapsed = t_now_ms() - t0;
    T_ASSERT_MSG(elapsed >= EARLY_MS, "idle close after %lld ms", (long long)elapsed);
    t_conn_close(conn);
  }

  t_case("body timeout: a Content-Length body that stops coming gets 408, then close");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    int64_t t0 = t_now_ms();
    int64_t elapsed = expect_408_close(conn, t0);
    T_ASSERT_MSG(elapsed >= EARLY_MS, "408 after %lld ms", (long long)elapsed);
    t_conn_close(conn);
  }

  t_case("body timeout: a chunked body that stops coming gets 408, then close");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nab");
    int64_t t0 = t_now_ms();
    int64_t elapsed = expect_408_close(conn, t0);
    T_ASSERT_MSG(elapsed >= EARLY_MS, "408 after %lld ms", (long long)elapsed);
    t_conn_close(conn);
  }

  t_case("an active keep-alive connection is not cut (requests every 150 ms for 1.2 s)");
  {
    t_conn_t *conn = t_connect(server);
    for (int i = 0; i < 8; i++) {
      char request[64];
      snprintf(request, sizeof request, "GET /active/%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
      t_send_str(conn, request);
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      t_response_free(&r);
      t_sleep_ms(150);
    }
    t_conn_close(conn);
  }

  t_case("a body that keeps coming (a byte every 100 ms for 1.2 s) is not cut");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n");
    t_send_pieces(conn, "slow-upload!", 12, 1, 100);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, "slow-upload!");
    t_response_free(&r);
    t_conn_close(conn);
  }

  t_case("a request waiting on a slow handler (600 ms) is not cut by any timeout");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /defer?ms=600 HTTP/1.1\r\nHost: t\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/defer");
    t_response_free(&r);
    /* and the keep-alive timer starts only now */
    t_send_str(conn, "GET /after-slow HTTP/1.1\r\nHost: t\r\n\r\n");
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    t_conn_close(conn);
  }

  t_case("send timeout: a client that stops reading a large response is dropped");
  {
    unsigned long releases_before = t_big_releases();
    int small = 16384;
    t_conn_t *conn = t_connect(server);
    setsockopt(conn->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    t_send_str(conn, "GET /big?n=50000000 HTTP/1.1\r\nHost: t\r\n\r\n");
    /* read nothing until the server drops the connection: the body handed
     * over with body_release is released then, though unsent */
    T_WAIT_UNTIL(t_big_releases() != releases_before, TIMEOUT_MS + T_EVENT_MS);
    t_response_t r;
    int rc = t_read_response(conn, &r, T_EVENT_MS, false);
    T_ASSERT_MSG(rc == -ECONNRESET,
                 "the stalled send was not dropped (read: %d, %zu bytes buffered)", rc, conn->len);
    t_conn_close(conn);
    T_ASSERT_INT_EQ(t_big_releases() - releases_before, 1);
  }

  t_case("the timeouts counter saw them");
  {
    pmu_stats_t stats = t_stats(server, -1);
    T_ASSERT_MSG(stats.timeouts >= 7, "timeouts = %llu", (unsigned long long)stats.timeouts);
  }

  t_case("timeouts of 0 are disabled");
  {
    pmu_config_t c2;
    t_config_init(&c2);
    c2.header_timeout_ms = 0;
    c2.keepalive_timeout_ms = 0;
    c2.body_timeout_ms = 0;
    t_server_t *s2 = t_server_start(&c2);
    t_conn_t *partial = t_connect(s2);
    t_send_str(partial, "GET /p HTTP/1.1\r\nHost: t\r\n");
    t_conn_t *idle = t_connect(s2);
    t_send_str(idle, "GET /i HTTP/1.1\r\nHost: t\r\n\r\n");
    t_response_t r;
    t_expect_response(idle, &r);
    t_response_free(&r);
    t_conn_t *body = t_connect(s2);
    t_send_str(body, "POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab");
    t_sleep_ms(800);
    T_ASSERT_MSG(!t_wait_closed(partial, 0), "partial headers cut with header_timeout_ms 0");
    T_ASSERT_MSG(!t_wait_closed(idle, 0), "idle cut with keepalive_timeout_ms 0");
    T_ASSERT_MSG(!t_wait_closed(body, 0), "partial body cut with body_timeout_ms 0");
    t_send_str(partial, "\r\n");
    t_expect_response(partial, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    t_send_str(body, "cde");
    t_expect_response(body, &r);
    T_ASSERT_FIELD(&r, "body", "abcde");
    t_response_free(&r);
    t_conn_close(partial);
    t_conn_close(idle);
    t_conn_close(body);
    t_server_destroy(s2);
  }

  t_server_destroy(server);
  return t_done();
}
