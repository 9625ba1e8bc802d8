/*
 * test_stats: pmu_server_stats counts what happened: connections, requests,
 * responses, bytes both ways (exactly what the client sent and received),
 * handler calls and their size histogram, errors, deferred answers, final
 * responses by status class; and batches respect batch_max.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

/* Poll the stats until at least `responses` responses were counted and
 * `connections_open` connections are open, or 3 s pass; returns the last read. */
static pmu_stats_t stats_when(const t_server_t *server, uint64_t responses,
                              uint64_t connections_open) {
  pmu_stats_t s;
  T_WAIT_UNTIL(
      (s = t_stats(server, -1), s.responses >= responses && s.connections_open == connections_open),
      T_EVENT_MS);
  return s;
}

int main(void) {
  t_init("stats");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);

  t_case("a fresh server counts nothing");
  {
    pmu_stats_t s = t_stats(server, -1);
    T_ASSERT_INT_EQ(s.connections_accepted, 0);
    T_ASSERT_INT_EQ(s.connections_open, 0);
    T_ASSERT_INT_EQ(s.requests, 0);
    T_ASSERT_INT_EQ(s.responses, 0);
    T_ASSERT_INT_EQ(s.bytes_in, 0);
    T_ASSERT_INT_EQ(s.bytes_out, 0);
    T_ASSERT_INT_EQ(s.batches, 0);
    T_ASSERT_INT_EQ(s.parse_errors, 0);
  }

  size_t sent = 0, received = 0;
  t_case("traffic on three connections is counted exactly");
  {
    t_conn_t *a = t_connect(server), *b = t_connect(server), *c = t_connect(server);
    for (int i = 0; i < 10; i++) {
      char req[128];
      int n = snprintf(req, sizeof req,
                       "POST /a/%d HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabc", i);
      t_send(a, req, (size_t)n);
      sent += (size_t)n;
      t_response_t r;
      t_expect_response(a, &r);
      received += r.wire_len;
      t_response_free(&r);
    }
    const char *five = "GET /b/0 HTTP/1.1\r\nHost: s\r\n\r\nGET /b/1 HTTP/1.1\r\nHost: s\r\n\r\n"
                       "GET /b/2 HTTP/1.1\r\nHost: s\r\n\r\nGET /b/3 HTTP/1.1\r\nHost: s\r\n\r\n"
                       "GET /big?n=100000 HTTP/1.1\r\nHost: s\r\n\r\n";
    t_send_str(b, five);
    sent += strlen(five);
    for (int i = 0; i < 5; i++) {
      t_response_t r;
      t_expect_response(b, &r);
      received += r.wire_len;
      t_response_free(&r);
    }
    const char *ten = "GET /c HTTP/1.0\r\n\r\n";
    t_send_str(c, ten);
    sent += strlen(ten);
    t_response_t r;
    t_expect_response(c, &r);
    received += r.wire_len;
    t_response_free(&r);
    T_ASSERT(t_wait_closed(c, 2000));
    T_ASSERT_INT_EQ(c->len, 0);

    pmu_stats_t s = stats_when(server, 16, 2);
    T_ASSERT_INT_EQ(s.connections_accepted, 3);
    T_ASSERT_INT_EQ(s.connections_open, 2);
    T_ASSERT_INT_EQ(s.requests, 16);
    T_ASSERT_INT_EQ(s.responses, 16);
    T_ASSERT_INT_EQ(s.bytes_in, sent);
    T_ASSERT_INT_EQ(s.bytes_out, received);
    T_ASSERT_INT_EQ(s.parse_errors, 0);
    T_ASSERT_INT_EQ(s.timeouts, 0);
    T_ASSERT_INT_EQ(s.connections_rejected, 0);
    T_ASSERT_INT_EQ(s.deferred, 0);
    T_ASSERT_MSG(s.batches >= 1 && s.batches <= 16, "batches = %llu",
                 (unsigned long long)s.batches);
    T_ASSERT_INT_EQ(s.batches, atomic_load(&server->batches));
    uint64_t hist = 0;
    for (int i = 0; i < PMU_BATCH_BUCKETS; i++)
      hist += s.batch_hist[i];
    T_ASSERT_INT_EQ(hist, s.batches);
    T_ASSERT_MSG(s.sends >= 1, "sends = 0");
    T_ASSERT_MSG(s.cqes >= s.waits && s.cqes > 0, "cqes %llu waits %llu",
                 (unsigned long long)s.cqes, (unsigned long long)s.waits);
    T_ASSERT_INT_EQ(s.cq_overflows, 0);

    t_conn_close(a);
    t_conn_close(b);
    t_conn_close(c);
    s = stats_when(server, 16, 0);
    T_ASSERT_INT_EQ(s.connections_open, 0);
  }

  t_case("per-thread stats of the only thread equal the total");
  {
    pmu_stats_t all = t_stats(server, -1), one = t_stats(server, 0);
    T_ASSERT_INT_EQ(one.requests, all.requests);
    T_ASSERT_INT_EQ(one.bytes_in, all.bytes_in);
    T_ASSERT_INT_EQ(one.bytes_out, all.bytes_out);
    T_ASSERT_INT_EQ(one.connections_accepted, all.connections_accepted);
    T_ASSERT_INT_EQ(one.batches, all.batches);
  }

  t_case("parse errors and deferred answers are counted");
  {
    const char *bad = "GET / HTTP/1.1\r\nHost: s\r\nBad Header: x\r\n\r\n";
    t_expect_error_close(server, bad, strlen(bad), 400);
    t_get_ok(server, "/defer?ms=5");
    pmu_stats_t s = stats_when(server, 17, 0);
    T_ASSERT_INT_EQ(s.parse_errors, 1);
    T_ASSERT_INT_EQ(s.deferred, 1);
    T_ASSERT_INT_EQ(s.connections_accepted, 5);
  }

  t_case("final responses are counted by status class, the engine's own 4xx included");
  {
    pmu_stats_t before = t_stats(server, -1);
    t_conn_t *conn = t_connect(server);
    const char *three = "GET /status?code=404 HTTP/1.1\r\nHost: s\r\n\r\n"
                        "GET /status?code=302 HTTP/1.1\r\nHost: s\r\n\r\n"
                        "GET /status?code=503 HTTP/1.1\r\nHost: s\r\n\r\n";
    t_send_str(conn, three);
    for (int i = 0; i < 3; i++) {
      t_response_t r;
      t_expect_response(conn, &r);
      t_response_free(&r);
    }
    t_conn_close(conn);
    const char *bad = "GET / HTTP/1.1\r\nHost: s\r\nBad Header: x\r\n\r\n";
    t_expect_error_close(server, bad, strlen(bad), 400);
    t_get_ok(server, "/");
    pmu_stats_t s = stats_when(server, before.responses + 4, 0);
    T_ASSERT_INT_EQ(s.status_classes[2] - before.status_classes[2], 1);
    T_ASSERT_INT_EQ(s.status_classes[3] - before.status_classes[3], 1);
    T_ASSERT_INT_EQ(s.status_classes[4] - before.status_classes[4], 2); /* 404, and the 400 */
    T_ASSERT_INT_EQ(s.status_classes[5] - before.status_classes[5], 1);
    uint64_t all = 0;
    for (int i = 0; i < PMU_STATUS_CLASSES; i++)
      all += s.status_classes[i];
    T_ASSERT_INT_EQ(all, s.responses + s.parse_errors); /* every answer, once */
  }

  t_case("50 pipelined requests in one write reach the handler in batches, not one by one");
  {
    char buf[4096];
    size_t len = 0;
    for (int i = 0; i < 50; i++)
      len +=
          (size_t)snprintf(buf + len, sizeof buf - len, "GET /%d HTTP/1.1\r\nHost: s\r\n\r\n", i);
    atomic_store(&server->largest_batch, 0);
    t_conn_t *conn = t_connect(server);
    t_send(conn, buf, len);
    for (int i = 0; i < 50; i++) {
      t_response_t r;
      t_expect_response(conn, &r);
      t_response_free(&r);
    }
    t_conn_close(conn);
    T_ASSERT_MSG(atomic_load(&server->largest_batch) >= 2,
                 "largest handler batch was %lu for 50 requests in one segment",
                 atomic_load(&server->largest_batch));
    pmu_stats_t s = t_stats(server, -1);
    uint64_t hist_big = 0;
    for (int i = 1; i < PMU_BATCH_BUCKETS; i++)
      hist_big += s.batch_hist[i];
    T_ASSERT_MSG(hist_big >= 1, "batch histogram shows no batch of 2 or more");
  }
  t_server_destroy(server);

  t_case("batch_max caps the handler's batch size");
  {
    pmu_config_t c2;
    t_config_init(&c2);
    c2.batch_max = 4;
    t_server_t *s2 = t_server_start(&c2);
    char buf[4096];
    size_t len = 0;
    for (int i = 0; i < 50; i++)
      len +=
          (size_t)snprintf(buf + len, sizeof buf - len, "GET /%d HTTP/1.1\r\nHost: s\r\n\r\n", i);
    t_conn_t *conn = t_connect(s2);
    t_send(conn, buf, len);
    for (int i = 0; i < 50; i++) {
      t_response_t r;
      t_expect_response(conn, &r);
      T_ASSERT_INT_EQ(r.status, 200);
      t_response_free(&r);
    }
    t_conn_close(conn);
    T_ASSERT_MSG(atomic_load(&s2->largest_batch) <= 4, "a batch of %lu with batch_max 4",
                 atomic_load(&s2->largest_batch));
    pmu_stats_t s = t_stats(s2, -1);
    for (int i = 3; i < PMU_BATCH_BUCKETS; i++)
      T_ASSERT_MSG(s.batch_hist[i] == 0, "batch_hist[%d] = %llu with batch_max 4", i,
                   (unsigned long long)s.batch_hist[i]);
    T_ASSERT_MSG(s.batches >= 13, "%llu batches for 50 requests at most 4 each",
                 (unsigned long long)s.batches);
    t_server_destroy(s2);
  }

  return t_done();
}
