/*
 * test_ws_backpressure: sends to a client that does not read. pmu_ws_send
 * reports the high water (1, then DRAIN once the bytes go), and
 * ws_send_limit bounds what a connection may hold: beyond it the unsent
 * messages are dropped and the connection closed 1008, or dropped at once.
 * Also a broadcast message queued on many connections is framed and held
 * once, not once per connection.
 */
#include "wslib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024u * 1024u)

static t_server_t *start(size_t high, size_t limit, int limit_close) {
  pmu_config_t cfg;
  t_ws_config_init(&cfg);
  cfg.ws_send_high_water = high;
  cfg.ws_send_limit = limit;
  cfg.ws_send_limit_close = limit_close;
  cfg.ws_ping_interval_ms = 0;
  return t_server_start(&cfg);
}

/* Read frames until the end; count the data bytes; the close code or -1. */
static int drain_all(t_conn_t *c, size_t *data_bytes) {
  for (;;) {
    t_ws_frame_t f;
    int rc = t_ws_read(c, &f, 10000);
    if (rc < 0)
      return -1;
    if (f.opcode == PMU_WS_CLOSE) {
      int code = f.len >= 2 ? ((uint8_t)f.data[0] << 8 | (uint8_t)f.data[1]) : 1005;
      t_ws_frame_free(&f);
      return code;
    }
    *data_bytes += f.len;
    t_ws_frame_free(&f);
  }
}

static void test_drain(void) {
  t_case("over ws_send_high_water: pmu_ws_send returns 1, DRAIN once the bytes leave");
  t_ws_reset();
  t_server_t *s = start(1 * MIB, 64 * MIB, 1);
  t_conn_t *c = t_ws_connect(s, "/ws/flood?n=400"); /* 25 MiB at once: more than the socket takes */
  T_WAIT_UNTIL(atomic_load(&t_ws.sent_ok) + atomic_load(&t_ws.sent_over) == 400, T_EVENT_MS);
  T_ASSERT(atomic_load(&t_ws.sent_over) > 0);
  T_ASSERT(atomic_load(&t_ws.sent_ok) > 0); /* the first ones were under it */
  T_ASSERT_INT_EQ(atomic_load(&t_ws.drains), 0);
  size_t got = 0;
  for (int i = 0; i < 400; i++) {
    t_ws_frame_t f;
    T_ASSERT_INT_EQ(t_ws_read(c, &f, 10000), 0);
    T_ASSERT_INT_EQ(f.opcode, PMU_WS_BINARY);
    got += f.len;
    t_ws_frame_free(&f);
  }
  T_ASSERT_INT_EQ(got, 400u * 65536u);
  T_WAIT_UNTIL(atomic_load(&t_ws.drains) == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.drains), 1);
  t_conn_close(c);
  t_server_destroy(s);
}

static void test_limit_close(void) {
  t_case("over ws_send_limit: -ENOBUFS, the unsent dropped, close 1008; memory bounded");
  t_ws_reset();
  t_server_t *s = start(1 * MIB, 4 * MIB, 1);
  t_conn_t *c = t_ws_connect(s, "/ws/flood?n=400"); /* 25 MiB offered */
  T_WAIT_UNTIL(atomic_load(&t_ws.sent_nobufs) + atomic_load(&t_ws.sent_ok) +
                       atomic_load(&t_ws.sent_over) + atomic_load(&t_ws.sent_epipe) ==
                   400,
               T_EVENT_MS);
  T_ASSERT(atomic_load(&t_ws.sent_nobufs) >= 1);
  /* What was taken is bounded by the limit (plus what the socket took meanwhile). */
  unsigned long taken = atomic_load(&t_ws.sent_ok) + atomic_load(&t_ws.sent_over);
  T_ASSERT_MSG(taken * 65536u <= 4 * MIB + 8 * MIB, "%lu messages of 64 KiB taken", taken);
  size_t data = 0;
  T_ASSERT_INT_EQ(drain_all(c, &data), 1008);
  T_ASSERT(data < 12 * MIB);
  T_ASSERT(t_wait_closed(c, 3000));
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_stats(s, -1).ws_closes[3], 1); /* 1008 */
  t_conn_close(c);
  t_server_destroy(s);
}

static void test_limit_drop(void) {
  t_case("over ws_send_limit with ws_send_limit_close 0: dropped at once, GONE 1006");
  t_ws_reset();
  t_server_t *s = start(1 * MIB, 4 * MIB, 0);
  /* The flood runs inside the handler, before even the 101 is out: the
   * connection goes with it. */
  char req[512];
  size_t n = t_ws_request(req, sizeof req, "/ws/flood?n=400", NULL);
  t_conn_t *c = t_connect(s);
  t_send(c, req, n);
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1006);
  T_ASSERT(t_wait_closed(c, 3000));
  T_ASSERT_INT_EQ(atomic_load(&t_ws.sent_nobufs), 1);
  T_ASSERT_INT_EQ(t_stats(s, -1).ws_closes[5], 1);
  t_conn_close(c);
  t_server_destroy(s);
}

/* ---- broadcast ---- */

#define BCAST_CONNS 32
#define BCAST_SIZE (4u * MIB)

static pmu_ws_t *handles[BCAST_CONNS];
static atomic_int nhandles;
static atomic_int bcast_gones;

static void bcast_handler(void *data, pmu_request_t *const *requests, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    pmu_ws_t *ws = pmu_ws_accept(requests[i], NULL);
    if (ws)
      handles[atomic_fetch_add(&nhandles, 1)] = ws;
  }
}

static void bcast_events(void *data, const pmu_ws_event_t *events, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++)
    if (events[i].type == PMU_WS_EV_GONE) {
      atomic_fetch_add(&bcast_gones, 1);
      pmu_ws_release(events[i].ws);
    }
}

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long size = 0, resident = 0;
  if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2)
    abort();
  fclose(f);
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void test_broadcast(void) {
  t_case("a broadcast message is framed once and held once for all connections");
  pmu_config_t cfg;
  t_config_init(&cfg);
  cfg.handler = bcast_handler;
  cfg.ws_handler = bcast_events;
  cfg.ws_send_limit = 0;
  cfg.ws_ping_interval_ms = 0;
  t_server_t *s = t_server_start(&cfg);
  t_conn_t *conns[BCAST_CONNS];
  for (int i = 0; i < BCAST_CONNS; i++)
    conns[i] = t_ws_connect(s, "/");
  T_WAIT_UNTIL(atomic_load(&nhandles) == BCAST_CONNS, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&nhandles), BCAST_CONNS);

  char *payload = malloc(BCAST_SIZE);
  for (size_t i = 0; i < BCAST_SIZE; i++)
    payload[i] = (char)(i * 7);
  long before = rss_kib();
  pmu_ws_msg_t *m = pmu_ws_msg_new(PMU_WS_BINARY, payload, BCAST_SIZE);
  T_ASSERT(m != NULL);
  T_ASSERT(pmu_ws_msg_new(PMU_WS_PING, "x", 1) == NULL); /* messages only */
  for (int i = 0; i < BCAST_CONNS; i++)
    T_ASSERT(pmu_ws_send_msg(handles[i], m) >= 0);
  pmu_ws_msg_release(m);
  /* Every connection now holds it unsent (the clients have not read). */
  T_WAIT_UNTIL(t_stats(s, -1).ws_messages_out == BCAST_CONNS, T_EVENT_MS);
  long grown = rss_kib() - before;
  printf("# broadcast: %d connections hold a %u KiB message unsent; RSS grew %ld KiB\n",
         BCAST_CONNS, BCAST_SIZE / 1024, grown);
  T_ASSERT_MSG(grown < 3 * (long)(BCAST_SIZE / 1024),
               "RSS grew %ld KiB for %d connections of a %u KiB message: copied per connection",
               grown, BCAST_CONNS, BCAST_SIZE / 1024);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT_INT_EQ(st.ws_bytes_out, (uint64_t)BCAST_CONNS * BCAST_SIZE);
  for (int i = 0; i < BCAST_CONNS; i++) {
    t_ws_frame_t f;
    T_ASSERT_INT_EQ(t_ws_read(conns[i], &f, 20000), 0);
    T_ASSERT_INT_EQ(f.opcode, PMU_WS_BINARY);
    T_ASSERT_INT_EQ(f.len, BCAST_SIZE);
    T_ASSERT(memcmp(f.data, payload, BCAST_SIZE) == 0);
    t_ws_frame_free(&f);
    t_conn_close(conns[i]);
  }
  T_WAIT_UNTIL(atomic_load(&bcast_gones) == BCAST_CONNS, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&bcast_gones), BCAST_CONNS);
  free(payload);
  t_server_destroy(s);
}

int main(void) {
  t_init("test_ws_backpressure");
  test_drain();
  test_limit_close();
  test_limit_drop();
  test_broadcast();
  return t_done();
}
