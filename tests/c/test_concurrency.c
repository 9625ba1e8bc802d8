/*
 * test_concurrency: 1,000 connections open at once, each sending a request
 * (then three pipelined ones, one of them deferred), all answered correctly;
 * the server's connection gauge returns to zero when they are gone.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#define WANTED 1000

typedef struct requests {
  char **text;
  size_t *len;
  size_t n;
  size_t per_conn;
  atomic_size_t checked;
} requests_t;

static const char *request_for(size_t index, size_t *len, void *arg) {
  requests_t *reqs = arg;
  *len = reqs->len[index];
  return reqs->text[index];
}

/* The nth response of connection `index` must answer the nth request of that
 * connection: its query starts with "i=<index>&n=<nth>". */
static void check_response(size_t index, size_t nth, const t_response_t *r, void *arg) {
  requests_t *reqs = arg;
  T_ASSERT_MSG(r->status == 200, "conn %zu response %zu: status %d", index, nth, r->status);
  char expected[64], query[64];
  snprintf(expected, sizeof expected, "i=%zu&n=%zu", index, nth);
  T_ASSERT_MSG(t_describe_get(r, "query", query, sizeof query), "no query field");
  size_t el = strlen(expected);
  T_ASSERT_MSG(strncmp(query, expected, el) == 0 && (query[el] == '\0' || query[el] == '&'),
               "conn %zu response %zu: query %s, expected %s", index, nth, query, expected);
  atomic_fetch_add(&reqs->checked, 1);
}

static void build(requests_t *reqs, size_t n, size_t per_conn) {
  reqs->n = n;
  reqs->per_conn = per_conn;
  reqs->text = calloc(n, sizeof *reqs->text);
  reqs->len = calloc(n, sizeof *reqs->len);
  atomic_store(&reqs->checked, 0);
  for (size_t i = 0; i < n; i++) {
    char buf[512];
    size_t len = 0;
    for (size_t k = 0; k < per_conn; k++) {
      const char *path = (per_conn > 1 && k == 1) ? "/defer" : "/c";
      len += (size_t)snprintf(buf + len, sizeof buf - len,
                              "GET %s?i=%zu&n=%zu%s HTTP/1.1\r\nHost: c\r\n\r\n", path, i, k,
                              path[1] == 'd' ? "&ms=10" : "");
    }
    reqs->text[i] = strdup(buf);
    reqs->len[i] = len;
  }
}

static void release(requests_t *reqs) {
  for (size_t i = 0; i < reqs->n; i++)
    free(reqs->text[i]);
  free(reqs->text);
  free(reqs->len);
}

int main(void) {
  t_init("concurrency");
  size_t n = WANTED;
  if (!t_raise_nofile(2 * WANTED + 256)) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    n = rl.rlim_cur > 512 ? (size_t)(rl.rlim_cur - 256) / 2 : 100;
    printf("# RLIMIT_NOFILE is %llu and cannot be raised: using %zu connections\n",
           (unsigned long long)rl.rlim_cur, n);
  }

  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);

  t_case("1000 connections at once, one request each");
  {
    requests_t reqs;
    build(&reqs, n, 1);
    size_t ok = t_many(server, n, request_for, 1, check_response, &reqs, 20000);
    T_ASSERT_INT_EQ(ok, n);
    T_ASSERT_INT_EQ(atomic_load(&reqs.checked), n);
    release(&reqs);
  }

  t_case("1000 connections at once, three pipelined requests each (one deferred)");
  {
    requests_t reqs;
    build(&reqs, n, 3);
    size_t ok = t_many(server, n, request_for, 3, check_response, &reqs, 20000);
    T_ASSERT_INT_EQ(ok, n);
    T_ASSERT_INT_EQ(atomic_load(&reqs.checked), 3 * n);
    release(&reqs);
  }

  t_case("the server counted every connection and closes them all");
  {
    T_WAIT_UNTIL(t_stats(server, -1).connections_open == 0, T_EVENT_MS);
    pmu_stats_t stats = t_stats(server, -1);
    T_ASSERT_INT_EQ(stats.connections_open, 0);
    T_ASSERT_INT_EQ(stats.connections_accepted, 2 * n);
    T_ASSERT_INT_EQ(stats.requests, 4 * n);
    T_ASSERT_INT_EQ(stats.responses, 4 * n);
    T_ASSERT_INT_EQ(stats.connections_rejected, 0);
  }

  t_server_destroy(server);
  return t_done();
}
