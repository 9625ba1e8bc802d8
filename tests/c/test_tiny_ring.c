/*
 * test_tiny_ring: no path of the engine may assume it gets an SQE. A ring of
 * 8 submission entries and a small completion queue serves 300 connections
 * each pipelining 8 requests, while another thread keeps connecting, asking
 * and closing (accept/close churn), in every ring mode the config can ask
 * for: DEFER_TASKRUN (the default), COOP_TASKRUN, SQPOLL, registered files,
 * and SQPOLL with registered files. Every request must be answered right.
 * Each mode runs twice: as the kernel gives SQEs, and with every 7th SQE
 * refused (the engine's fault point), so that each caller's way of living
 * without one (retry next turn) is exercised too.
 */
#include "testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The engine's test-only fault switch (core/faults.c); point 0 is the SQE. */
void pmu_test_fault(int point, unsigned long first, unsigned long every, unsigned long times);
#define FAULT_SQE 0

#define CONNS 300
#define DEPTH 8

static char requests[CONNS][DEPTH * 48];

static const char *request_for(size_t index, size_t *len, void *arg) {
  (void)arg;
  *len = strlen(requests[index]);
  return requests[index];
}

static void check(size_t index, size_t nth, const t_response_t *r, void *arg) {
  (void)arg;
  T_ASSERT_INT_EQ(r->status, 200);
  char want[48];
  snprintf(want, sizeof want, "/t/%zu/%zu", index, nth);
  T_ASSERT_FIELD(r, "path", want);
}

typedef struct churn {
  const t_server_t *server;
  atomic_int stop;
  atomic_ulong rounds;
} churn_t;

/* Connect, ask once, read the answer, close; again and again. */
static void *churn_main(void *arg) {
  churn_t *ch = arg;
  while (!atomic_load(&ch->stop)) {
    t_conn_t *conn = t_connect(ch->server);
    t_send_str(conn, "GET /churn HTTP/1.1\r\nHost: c\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/churn");
    t_response_free(&r);
    t_conn_close(conn);
    atomic_fetch_add(&ch->rounds, 1);
  }
  return NULL;
}

static void traffic_once(pmu_config_t *config) {
  config->ring_entries = 8;
  config->cq_entries = 16;
  config->max_connections = 1000;
  t_server_t *server = t_server_start(config);
  churn_t ch = {.server = server};
  pthread_t th;
  T_ASSERT_INT_EQ(pthread_create(&th, NULL, churn_main, &ch), 0);
  size_t ok = t_many(server, CONNS, request_for, DEPTH, check, NULL, 30000);
  atomic_store(&ch.stop, 1);
  pthread_join(th, NULL);
  T_ASSERT_INT_EQ(ok, CONNS);
  T_ASSERT_MSG(atomic_load(&ch.rounds) > 0, "the churn thread was never served");
  /* Still serving after the storm. */
  t_get_ok(server, "/after");
  pmu_stats_t stats = t_stats(server, -1);
  T_ASSERT_INT_EQ(stats.responses, CONNS * DEPTH + atomic_load(&ch.rounds) + 1);
  t_server_destroy(server);
}

static void traffic(pmu_config_t *config) {
  traffic_once(config);
  pmu_test_fault(FAULT_SQE, 3, 7, (unsigned long)-1);
  traffic_once(config);
  pmu_test_fault(FAULT_SQE, 0, 0, 0);
}

int main(void) {
  t_init("tiny_ring");
  if (!t_raise_nofile(CONNS * 2 + 256))
    t_skip("RLIMIT_NOFILE cannot be raised to %d", CONNS * 2 + 256);
  for (size_t c = 0; c < CONNS; c++) {
    char *p = requests[c];
    p[0] = 0;
    for (size_t k = 0; k < DEPTH; k++) {
      char one[48];
      snprintf(one, sizeof one, "GET /t/%zu/%zu HTTP/1.1\r\nHost: k\r\n\r\n", c, k);
      strcat(p, one);
    }
  }
  pmu_config_t config;

  for (size_t m = 0; m < T_RING_MODES; m++) {
    char name[64];
    snprintf(name, sizeof name, "8-entry ring, %s", t_ring_modes[m].name);
    t_case(name);
    t_config_ring_mode(&config, &t_ring_modes[m]);
    traffic(&config);
  }
  return t_done();
}
