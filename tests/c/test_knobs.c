/*
 * test_knobs: every ring variant the config can ask for serves the same
 * traffic correctly: each of t_ring_modes (DEFER_TASKRUN, COOP_TASKRUN,
 * SQPOLL, registered files, both), SEND_ZC,
 * a tiny buffer pool (ENOBUFS must be counted and survived), batch_max 1,
 * and a tiny output high-water mark with a client that reads slowly (short
 * sends and receive pauses, never a wrong byte).
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#define CONNS 40
#define DEPTH 8

static char requests[CONNS][DEPTH * 64];

static const char *request_for(size_t index, size_t *len, void *arg) {
  (void)arg;
  *len = strlen(requests[index]);
  return requests[index];
}

static void check(size_t index, size_t nth, const t_response_t *r, void *arg) {
  (void)arg;
  T_ASSERT_INT_EQ(r->status, 200);
  if (nth % 2) {
    T_ASSERT_INT_EQ(r->body_len, 100000);          /* /big */
    for (size_t i = 0; i < r->body_len; i += 4099) /* the test handler's pattern */
      T_ASSERT_MSG(r->body[i] == (char)('a' + i % 26), "byte %zu of /big differs", i);
  } else {
    char want[64];
    snprintf(want, sizeof want, "/p/%zu/%zu", index, nth);
    T_ASSERT_FIELD(r, "path", want);
  }
}

/* 40 connections, each with 8 pipelined requests alternating small and 100 KB. */
static pmu_stats_t traffic(const pmu_config_t *config) {
  for (size_t c = 0; c < CONNS; c++) {
    char *p = requests[c];
    p[0] = 0;
    for (size_t k = 0; k < DEPTH; k++) {
      char one[64];
      if (k % 2)
        snprintf(one, sizeof one, "GET /big?n=100000 HTTP/1.1\r\nHost: k\r\n\r\n");
      else
        snprintf(one, sizeof one, "GET /p/%zu/%zu HTTP/1.1\r\nHost: k\r\n\r\n", c, k);
      strcat(p, one);
    }
  }
  t_server_t *server = t_server_start(config);
  size_t ok = t_many(server, CONNS, request_for, DEPTH, check, NULL, 20000);
  T_ASSERT_INT_EQ(ok, CONNS);
  pmu_stats_t stats = t_stats(server, -1);
  T_ASSERT_INT_EQ(stats.responses, CONNS * DEPTH);
  t_server_destroy(server);
  return stats;
}

int main(void) {
  t_init("knobs");
  pmu_config_t config;

  for (size_t m = 0; m < T_RING_MODES; m++) {
    t_case(t_ring_modes[m].name);
    t_config_ring_mode(&config, &t_ring_modes[m]);
    if (config.registered_files)
      config.max_connections = 200; /* the fixed-file table is sized by it */
    traffic(&config);
  }

  t_case("SEND_ZC for answers of 8 KiB and more");
  t_config_init(&config);
  config.send_zc_threshold = 8192;
  {
    pmu_stats_t s = traffic(&config);
    T_ASSERT_MSG(s.send_zc > 0, "no zero-copy send was made");
  }

  t_case("a pool of 8 tiny buffers runs dry: ENOBUFS counted, every request answered");
  t_config_init(&config);
  config.buf_count = 8;
  config.buf_size = 256;
  {
    pmu_stats_t s = traffic(&config);
    T_ASSERT_MSG(s.enobufs > 0, "the pool never ran dry");
  }

  t_case("batch_max 1: one request per handler call");
  t_config_init(&config);
  config.batch_max = 1;
  {
    pmu_stats_t s = traffic(&config);
    T_ASSERT_INT_EQ(s.batches, CONNS * DEPTH);
    T_ASSERT_INT_EQ(s.batch_hist[0], CONNS * DEPTH);
  }

  t_case("a client that reads late: short sends, receive pauses, exact bytes");
  t_config_init(&config);
  config.output_high_water = 16384;
  config.max_pipelined = 2;
  {
    t_server_t *server = t_server_start(&config);
    t_conn_t *conn = t_connect(server);
    /* 8 MB asked for: more than the kernel buffers between us. */
    char req[DEPTH * 64] = "";
    for (int k = 0; k < DEPTH; k++)
      strcat(req, "GET /big?n=1000000 HTTP/1.1\r\nHost: k\r\n\r\n");
    t_send_str(conn, req);
    t_sleep_ms(200); /* let the server fill the socket and stall */
    for (int k = 0; k < DEPTH; k++) {
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      T_ASSERT_INT_EQ(r.body_len, 1000000);
      T_ASSERT(r.body[999999] == (char)('a' + 999999 % 26));
      t_response_free(&r);
    }
    pmu_stats_t s = t_stats(server, -1);
    T_ASSERT_MSG(s.short_sends > 0, "no short send seen");
    T_ASSERT_MSG(s.recv_paused > 0, "reading was never paused");
    t_conn_close(conn);
    t_server_destroy(server);
  }
  return t_done();
}
