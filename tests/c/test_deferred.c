/*
 * test_deferred: answers given with pmu_respond from a thread the engine
 * does not own. Many of them, mixed with immediate answers, arrive in
 * request order; answering a request whose client has gone is safe and
 * releases everything; body_release runs once, on the worker thread.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define CONNS 20
#define PER_CONN 25

static char *requests[CONNS];
static size_t request_lens[CONNS];

static const char *request_for(size_t index, size_t *len, void *arg) {
  (void)arg;
  *len = request_lens[index];
  return requests[index];
}

static void check(size_t index, size_t nth, const t_response_t *r, void *arg) {
  atomic_size_t *checked = arg;
  T_ASSERT_INT_EQ(r->status, 200);
  char query[64], expected[64];
  T_ASSERT(t_describe_get(r, "query", query, sizeof query));
  /* query is "ms=D&i=I&n=N" or "i=I&n=N": the suffix names the request */
  snprintf(expected, sizeof expected, "i=%zu&n=%zu", index, nth);
  size_t ql = strlen(query), el = strlen(expected);
  T_ASSERT_MSG(ql >= el && strcmp(query + ql - el, expected) == 0,
               "conn %zu answer %zu is for \"%s\"", index, nth, query);
  atomic_fetch_add(checked, 1);
}

/* Wait until the server's connections are all closed. */
static void wait_no_connections(const t_server_t *server) {
  T_WAIT_UNTIL(t_stats(server, -1).connections_open == 0, T_EVENT_MS);
  pmu_stats_t stats = t_stats(server, -1);
  if (stats.connections_open == 0)
    return;
  T_FAIL("%llu connections still open", (unsigned long long)stats.connections_open);
}

int main(void) {
  t_init("deferred");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);
  uint64_t seed = 12345;

  t_case("500 requests on 20 connections, mostly answered from a foreign thread, in order");
  {
    for (size_t c = 0; c < CONNS; c++) {
      char buf[8192];
      size_t len = 0;
      for (size_t n = 0; n < PER_CONN; n++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        unsigned ms = (unsigned)(seed >> 60); /* 0..15 */
        if (n % 5 == 4)
          len += (size_t)snprintf(buf + len, sizeof buf - len,
                                  "GET /now?i=%zu&n=%zu HTTP/1.1\r\nHost: d\r\n\r\n", c, n);
        else
          len += (size_t)snprintf(buf + len, sizeof buf - len,
                                  "GET /defer?ms=%u&i=%zu&n=%zu HTTP/1.1\r\nHost: d\r\n\r\n", ms, c,
                                  n);
      }
      requests[c] = strdup(buf);
      request_lens[c] = len;
    }
    atomic_size_t checked;
    atomic_init(&checked, 0);
    size_t ok = t_many(server, CONNS, request_for, PER_CONN, check, &checked, 15000);
    T_ASSERT_INT_EQ(ok, CONNS);
    T_ASSERT_INT_EQ(atomic_load(&checked), CONNS * PER_CONN);
    for (size_t c = 0; c < CONNS; c++)
      free(requests[c]);
    pmu_stats_t stats = t_stats(server, -1);
    T_ASSERT_MSG(stats.deferred >= CONNS * PER_CONN * 4 / 5, "deferred = %llu, expected >= %d",
                 (unsigned long long)stats.deferred, CONNS * PER_CONN * 4 / 5);
  }

  t_case("deferred answers for clients that already closed (FIN or RST) are safe");
  {
    unsigned long seen_before = atomic_load(&server->seen);
    t_conn_t *conns[20];
    for (int i = 0; i < 20; i++) {
      conns[i] = t_connect(server);
      t_send_str(conns[i], "GET /defer?ms=200 HTTP/1.1\r\nHost: d\r\n\r\n");
    }
    T_WAIT_UNTIL(atomic_load(&server->seen) >= seen_before + 20, T_EVENT_MS);
    T_ASSERT_INT_EQ(atomic_load(&server->seen), seen_before + 20);
    for (int i = 0; i < 20; i++) {
      if (i % 2)
        t_conn_abort(conns[i]);
      else
        t_conn_close(conns[i]);
    }
    t_defer_drain(); /* the deferrer has answered them all */
    t_get_ok(server, "/after-gone");
    wait_no_connections(server);
  }

  t_case("deferred large bodies with body_release for gone clients are released once");
  {
    unsigned long releases_before = t_big_releases();
    unsigned long seen_before = atomic_load(&server->seen);
    t_conn_t *conns[10];
    for (int i = 0; i < 10; i++) {
      conns[i] = t_connect(server);
      t_send_str(conns[i], "GET /defer?ms=150&big=300000 HTTP/1.1\r\nHost: d\r\n\r\n");
    }
    T_WAIT_UNTIL(atomic_load(&server->seen) >= seen_before + 10, T_EVENT_MS);
    for (int i = 0; i < 10; i++)
      t_conn_abort(conns[i]);
    T_WAIT_UNTIL(t_big_releases() - releases_before >= 10, T_EVENT_MS);
    T_ASSERT_INT_EQ(t_big_releases() - releases_before, 10);
    T_ASSERT_INT_EQ(t_big_releases_on_deferrer(), 0);
    wait_no_connections(server);
  }

  t_case("deferred large bodies, client reads half then leaves mid-send");
  {
    unsigned long releases_before = t_big_releases();
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /defer?ms=10&big=8000000 HTTP/1.1\r\nHost: d\r\n\r\n");
    size_t got = 0;
    while (got < 100000) {
      int rc = t_recv_some(conn, 3000);
      T_ASSERT_MSG(rc > 0, "recv: %d", rc);
      got += (size_t)rc;
    }
    t_conn_abort(conn);
    T_WAIT_UNTIL(t_big_releases() != releases_before, T_EVENT_MS);
    T_ASSERT_INT_EQ(t_big_releases() - releases_before, 1);
    T_ASSERT_INT_EQ(t_big_releases_on_deferrer(), 0);
    wait_no_connections(server);
  }

  t_case("deferred large bodies delivered intact");
  {
    unsigned long releases_before = t_big_releases();
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /defer?ms=20&big=1000000 HTTP/1.1\r\nHost: d\r\n\r\n"
                     "GET /defer?ms=0&big=70000 HTTP/1.1\r\nHost: d\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.body_len, 1000000);
    for (size_t k = 0; k < r.body_len; k += 997)
      T_ASSERT_MSG(r.body[k] == (char)('a' + k % 26), "byte %zu wrong", k);
    t_response_free(&r);
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.body_len, 70000);
    t_response_free(&r);
    t_conn_close(conn);
    T_WAIT_UNTIL(t_big_releases() - releases_before >= 2, T_EVENT_MS);
    T_ASSERT_INT_EQ(t_big_releases() - releases_before, 2);
    T_ASSERT_INT_EQ(t_big_releases_on_deferrer(), 0);
  }

  t_case("a deferred answer's Date is the second it was given, on every call (kept a second)");
  {
    /* The answering thread formats the date once a second and keeps it; an answer
     * after the second changed must not carry the kept one. Three answers 600 ms
     * apart cross at least one second. */
    t_conn_t *conn = t_connect(server);
    for (int i = 0; i < 3; i++) {
      time_t before = time(NULL);
      t_send_str(conn, "GET /defer?ms=0 HTTP/1.1\r\nHost: d\r\n\r\n");
      t_response_t r;
      t_expect_response(conn, &r);
      time_t after = time(NULL);
      const char *date = t_header(&r, "Date");
      T_ASSERT_MSG(date != NULL, "no Date");
      struct tm tm = {0};
      const char *end = strptime(date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
      T_ASSERT_MSG(end != NULL && *end == '\0', "Date \"%s\" is not an IMF-fixdate", date);
      time_t said = timegm(&tm);
      T_ASSERT_MSG(said >= before && said <= after,
                   "Date \"%s\" is %lld, answered within %lld..%lld", date, (long long)said,
                   (long long)before, (long long)after);
      t_response_free(&r);
      usleep(600 * 1000);
    }
    t_conn_close(conn);
  }

  t_server_destroy(server);
  return t_done();
}
