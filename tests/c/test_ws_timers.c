/*
 * test_ws_timers: the WebSocket timers (keepalive ping and its timeout, idle,
 * the wait for the peer's close), the HTTP timers stopping after the
 * handshake, and the graceful stop (1001 to every WebSocket).
 */
#include "wslib.h"

#include <stdlib.h>
#include <string.h>

static t_server_t *start(unsigned ping, unsigned pong, unsigned idle, unsigned close_ms) {
  pmu_config_t cfg;
  t_ws_config_init(&cfg);
  cfg.ws_ping_interval_ms = ping;
  cfg.ws_ping_timeout_ms = pong;
  cfg.ws_idle_timeout_ms = idle;
  cfg.ws_close_timeout_ms = close_ms;
  cfg.header_timeout_ms = 100; /* an HTTP timer that must not touch a WebSocket */
  cfg.keepalive_timeout_ms = 100;
  cfg.min_rate_grace_ms = 100;
  return t_server_start(&cfg);
}

static void test_ping(void) {
  t_server_t *s = start(200, 400, 0, 5000);

  t_case("a silent WebSocket is pinged after ws_ping_interval_ms; a pong keeps it");
  t_conn_t *c = t_ws_connect(s, "/ws");
  int64_t t0 = t_now_ms();
  t_ws_frame_t f;
  T_ASSERT_INT_EQ(t_ws_read(c, &f, 3000), 0);
  int64_t took = t_now_ms() - t0;
  T_ASSERT_INT_EQ(f.opcode, PMU_WS_PING);
  T_ASSERT_MSG(took >= 150, "pinged after %lld ms", (long long)took);
  t_ws_frame_free(&f);
  t_ws_send(c, 0x8A, "", 0);
  T_ASSERT_INT_EQ(t_ws_read(c, &f, 3000), 0); /* the next interval: another ping */
  T_ASSERT_INT_EQ(f.opcode, PMU_WS_PING);
  t_ws_frame_free(&f);
  t_ws_send(c, 0x8A, "", 0);
  T_WAIT_UNTIL(atomic_load(&t_ws.pongs) >= 2, T_EVENT_MS);
  T_ASSERT(atomic_load(&t_ws.pongs) >= 2);

  t_case("traffic postpones the ping");
  uint64_t pings = t_stats(s, -1).ws_pings_sent;
  for (int i = 0; i < 8; i++) {
    t_ws_send(c, 0x81, "x", 1);
    t_ws_expect(c, PMU_WS_TEXT, "x", 1);
    t_sleep_ms(50);
  }
  T_ASSERT_INT_EQ(t_stats(s, -1).ws_pings_sent, pings);

  t_case("no answer to the ping: dropped after ws_ping_timeout_ms, GONE 1006");
  unsigned long gones = atomic_load(&t_ws.gones);
  unsigned skipped = 0;
  t0 = t_now_ms();
  T_ASSERT_INT_EQ(t_ws_read_close(c, 5000, &skipped), -1); /* no close frame: the end */
  took = t_now_ms() - t0;
  T_ASSERT_MSG(took >= 500, "dropped after %lld ms", (long long)took);
  T_ASSERT(skipped >= 1); /* the ping */
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1006);
  t_conn_close(c);
  t_server_destroy(s);
}

static void test_http_timers_stop(void) {
  t_case("after the handshake the HTTP timers stop (no ping, no idle)");
  t_server_t *s = start(0, 0, 0, 5000);
  t_conn_t *c = t_ws_connect(s, "/ws");
  t_sleep_ms(600); /* header_timeout_ms and keepalive_timeout_ms are 100 */
  t_ws_send(c, 0x81, "alive", 5);
  t_ws_expect(c, PMU_WS_TEXT, "alive", 5);
  T_ASSERT_INT_EQ(t_stats(s, -1).ws_pings_sent, 0);
  t_conn_close(c);
  t_server_destroy(s);
}

static void test_idle(void) {
  t_case("no message either way for ws_idle_timeout_ms: close 1001");
  t_server_t *s = start(0, 0, 300, 5000);
  t_conn_t *c = t_ws_connect(s, "/ws");
  for (int i = 0; i < 4; i++) { /* messages keep it */
    t_sleep_ms(150);
    t_ws_send(c, 0x81, "x", 1);
    t_ws_expect(c, PMU_WS_TEXT, "x", 1);
  }
  int64_t t0 = t_now_ms();
  T_ASSERT_INT_EQ(t_ws_read_close(c, 3000, NULL), 1001);
  T_ASSERT(t_now_ms() - t0 >= 250);
  unsigned long gones = atomic_load(&t_ws.gones);
  t_ws_send(c, 0x88, "\x03\xe9", 2);
  T_ASSERT(t_wait_closed(c, 2000));
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1001);
  t_conn_close(c);
  t_server_destroy(s);
}

static void test_close_timeout(void) {
  t_case("our close unanswered: dropped after ws_close_timeout_ms, GONE 1006");
  t_server_t *s = start(0, 0, 0, 300);
  unsigned long gones = atomic_load(&t_ws.gones);
  t_conn_t *c = t_ws_connect(s, "/ws/close?code=1000");
  int64_t t0 = t_now_ms();
  T_ASSERT_INT_EQ(t_ws_read_close(c, 3000, NULL), 1000);
  T_ASSERT(t_wait_closed(c, 3000)); /* the client never answers */
  int64_t took = t_now_ms() - t0;
  T_ASSERT_MSG(took >= 250, "closed after %lld ms", (long long)took);
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1006);
  t_conn_close(c);
  t_server_destroy(s);
}

static void test_stop(void) {
  t_case("graceful stop: close 1001 to every WebSocket, then the threads exit");
  t_server_t *s = start(0, 0, 0, 5000);
  t_conn_t *a = t_ws_connect(s, "/ws");
  t_conn_t *b = t_ws_connect(s, "/ws");
  t_ws_send(a, 0x81, "x", 1);
  t_ws_expect(a, PMU_WS_TEXT, "x", 1);
  unsigned long gones = atomic_load(&t_ws.gones);
  pmu_server_stop(s->pmu);
  T_ASSERT_INT_EQ(t_ws_read_close(a, 3000, NULL), 1001);
  T_ASSERT_INT_EQ(t_ws_read_close(b, 3000, NULL), 1001);
  t_ws_send(a, 0x88, "\x03\xe9", 2); /* a answers; b does not */
  T_ASSERT(t_wait_closed(a, 2000));
  /* b is cut at shutdown_timeout_ms (3000 in the tests). */
  T_ASSERT_INT_EQ(pmu_server_wait(s->pmu, 6000), 0);
  T_ASSERT(t_wait_closed(b, 1000));
  T_ASSERT_INT_EQ(atomic_load(&t_ws.gones), gones + 2);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT_INT_EQ(st.ws_open, 0);
  T_ASSERT_INT_EQ(st.ws_closes[1], 2); /* a's answer and b's unanswered close, both 1001 */
  t_conn_close(a);
  t_conn_close(b);
  t_server_destroy(s);
}

static void test_pause(void) {
  t_case("pmu_ws_pause_reading holds messages back until resumed; no keepalive meanwhile");
  /* Pings every 100 ms, dropped 100 ms after an unanswered one: a keepalive
   * running while the engine does not read would drop it before the resume. */
  t_server_t *s = start(100, 100, 0, 5000);
  unsigned long before = atomic_load(&t_ws.messages);
  t_conn_t *c = t_ws_connect(s, "/ws/pause");
  int64_t t0 = t_now_ms();
  t_ws_send(c, 0x81, "held", 4);
  t_ws_expect(c, PMU_WS_TEXT, "held", 4); /* only after the resume, 300 ms on */
  int64_t took = t_now_ms() - t0;
  T_ASSERT_MSG(took >= 200, "echoed after %lld ms: not held back", (long long)took);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.messages), before + 1);
  t_conn_close(c);
  t_server_destroy(s);
}

int main(void) {
  t_init("test_ws_timers");
  test_ping();
  test_http_timers_stop();
  test_idle();
  test_close_timeout();
  test_stop();
  test_pause();
  return t_done();
}
