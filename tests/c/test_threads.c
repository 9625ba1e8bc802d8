/*
 * test_threads: a server with several worker threads answers connections
 * on all of them; a connection stays on one thread; conn_id is unique across
 * threads; per-thread stats add up to the total.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

#define CONNS 400

typedef struct seen {
  unsigned long long conn_id[CONNS];
  unsigned thread[CONNS];
  unsigned per_thread[8];
} seen_t;

static char requests[CONNS][256];

static const char *request_for(size_t index, size_t *len, void *arg) {
  (void)arg;
  *len = strlen(requests[index]);
  return requests[index];
}

static void record(size_t index, size_t nth, const t_response_t *r, void *arg) {
  seen_t *seen = arg;
  T_ASSERT_INT_EQ(r->status, 200);
  const char *thread = t_header(r, "X-Thread"), *conn = t_header(r, "X-Conn");
  T_ASSERT(thread && conn);
  unsigned t = (unsigned)strtoul(thread, NULL, 10);
  unsigned long long c = strtoull(conn, NULL, 10);
  T_ASSERT_MSG(t < 8, "X-Thread %u", t);
  if (nth == 0) {
    seen->thread[index] = t;
    seen->conn_id[index] = c;
    seen->per_thread[t]++;
  } else {
    T_ASSERT_MSG(seen->thread[index] == t, "connection %zu moved from thread %u to %u", index,
                 seen->thread[index], t);
    T_ASSERT_INT_EQ(seen->conn_id[index], c);
  }
}

static int cmp_ull(const void *a, const void *b) {
  unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
  return x < y ? -1 : x > y;
}

/* Run CONNS connections of three requests each against `threads` workers. */
static void run(unsigned threads) {
  pmu_config_t config;
  t_config_init(&config);
  config.threads = threads;
  t_server_t *server = t_server_start(&config);
  T_ASSERT_INT_EQ(pmu_server_threads(server->pmu), threads);

  for (size_t i = 0; i < CONNS; i++)
    snprintf(requests[i], sizeof requests[i],
             "GET /t/%zu/0 HTTP/1.1\r\nHost: t\r\n\r\nGET /defer?ms=1 HTTP/1.1\r\nHost: t\r\n\r\n"
             "GET /t/%zu/2 HTTP/1.1\r\nHost: t\r\n\r\n",
             i, i);
  seen_t *seen = calloc(1, sizeof *seen);
  size_t ok = t_many(server, CONNS, request_for, 3, record, seen, 20000);
  T_ASSERT_INT_EQ(ok, CONNS);

  for (unsigned t = 0; t < threads; t++) {
    printf("# thread %u served %u connections\n", t, seen->per_thread[t]);
    T_ASSERT_MSG(seen->per_thread[t] > 0, "thread %u served no connection of %d", t, CONNS);
  }
  qsort(seen->conn_id, CONNS, sizeof seen->conn_id[0], cmp_ull);
  for (size_t i = 1; i < CONNS; i++)
    T_ASSERT_MSG(seen->conn_id[i] != seen->conn_id[i - 1], "conn_id %llu used twice",
                 seen->conn_id[i]);

  /* Totals, once every connection is closed. */
  pmu_stats_t all;
  T_WAIT_UNTIL((all = t_stats(server, -1), all.connections_open == 0 && all.responses == 3 * CONNS),
               T_EVENT_MS);
  T_ASSERT_INT_EQ(all.connections_open, 0);
  T_ASSERT_INT_EQ(all.connections_accepted, CONNS);
  T_ASSERT_INT_EQ(all.requests, 3 * CONNS);
  T_ASSERT_INT_EQ(all.responses, 3 * CONNS);
  T_ASSERT_INT_EQ(all.deferred, CONNS);

  pmu_stats_t sum;
  memset(&sum, 0, sizeof sum);
  for (unsigned t = 0; t < threads; t++) {
    pmu_stats_t one = t_stats(server, (int)t);
    T_ASSERT_INT_EQ(one.connections_accepted, seen->per_thread[t]);
    sum.connections_accepted += one.connections_accepted;
    sum.requests += one.requests;
    sum.responses += one.responses;
    sum.bytes_in += one.bytes_in;
    sum.bytes_out += one.bytes_out;
    sum.batches += one.batches;
    sum.deferred += one.deferred;
    for (int b = 0; b < PMU_BATCH_BUCKETS; b++)
      sum.batch_hist[b] += one.batch_hist[b];
  }
  T_ASSERT_INT_EQ(sum.connections_accepted, all.connections_accepted);
  T_ASSERT_INT_EQ(sum.requests, all.requests);
  T_ASSERT_INT_EQ(sum.responses, all.responses);
  T_ASSERT_INT_EQ(sum.bytes_in, all.bytes_in);
  T_ASSERT_INT_EQ(sum.bytes_out, all.bytes_out);
  T_ASSERT_INT_EQ(sum.batches, all.batches);
  T_ASSERT_INT_EQ(sum.deferred, all.deferred);
  for (int b = 0; b < PMU_BATCH_BUCKETS; b++)
    T_ASSERT_INT_EQ(sum.batch_hist[b], all.batch_hist[b]);

  free(seen);
  t_server_destroy(server);
}

int main(void) {
  t_init("threads");
  t_case("threads=2: 400 connections answered on both threads, stats add up");
  run(2);
  t_case("threads=4 (more threads than this machine may have cores)");
  run(4);
  return t_done();
}
