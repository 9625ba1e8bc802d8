/*
 * test_api: the parts of pmu.h that are not about HTTP on the wire: config
 * defaults, start-up failures and their explanations, thread callbacks,
 * ring info, stop/wait semantics, the config being copied, server_header.
 */
#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static atomic_uint thread_starts, thread_stops;
static atomic_uint thread_index_bad;

/* Each ring thread's scheduling policy and name, as on_start saw them. */
static int thread_policy[2];
static char thread_name[2][16];

static void on_start(void *data, unsigned index) {
  t_server_t *server = data;
  if (index >= server->config.threads)
    atomic_fetch_add(&thread_index_bad, 1);
  if (index < 2) {
    thread_policy[index] = sched_getscheduler(0);
    pthread_getname_np(pthread_self(), thread_name[index], sizeof thread_name[index]);
  }
  atomic_fetch_add(&thread_starts, 1);
}

static void on_stop(void *data, unsigned index) {
  t_server_t *server = data;
  if (index >= server->config.threads)
    atomic_fetch_add(&thread_index_bad, 1);
  atomic_fetch_add(&thread_stops, 1);
}

/* One GET on a fresh connection; returns the response (caller frees). */
static t_response_t get_once(const t_server_t *server, const char *target) {
  t_conn_t *conn = t_connect(server);
  char request[256];
  snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: api\r\n\r\n", target);
  t_send_str(conn, request);
  t_response_t response;
  t_expect_response(conn, &response);
  t_conn_close(conn);
  return response;
}

/* Start with *c must fail with -EINVAL and an error naming `name`. */
static int refused_checks;
static void expect_refused(const pmu_config_t *c, const char *name) {
  pmu_server_t *s = NULL;
  int rc = pmu_server_start(c, &s);
  T_ASSERT_MSG(rc == -EINVAL, "%s out of range: rc %d", name, rc);
  T_ASSERT_MSG(s && strstr(pmu_server_error(s), name), "%s: error '%s'", name,
               s ? pmu_server_error(s) : "");
  pmu_server_destroy(s);
  refused_checks++;
}

int main(void) {
  t_init("api");

  t_case("pmu_config_init fills the documented defaults");
  {
    pmu_config_t c;
    memset(&c, 0xff, sizeof c);
    pmu_config_init(&c);
    T_ASSERT_STR_EQ(c.host, "127.0.0.1");
    T_ASSERT_INT_EQ(c.port, 8000);
    T_ASSERT(c.unix_path == NULL);
    T_ASSERT_INT_EQ(c.backlog, 4096);
    T_ASSERT_INT_EQ(c.threads, 1);
    T_ASSERT_INT_EQ(c.ring_entries, 1024);
    /* "8 * ring_entries": stored either as that number or as 0, resolved at
     * start (so that a changed ring_entries carries the CQ size along). */
    T_ASSERT_MSG(c.cq_entries == 8 * c.ring_entries || c.cq_entries == 0, "cq_entries = %u",
                 c.cq_entries);
    T_ASSERT_INT_EQ(c.buf_count, 1024);
    T_ASSERT_INT_EQ(c.buf_size, 4096);
    T_ASSERT_INT_EQ(c.defer_taskrun, 1);
    T_ASSERT_INT_EQ(c.sqpoll, 0);
    T_ASSERT_INT_EQ(c.sqpoll_idle_ms, 1000);
    T_ASSERT_INT_EQ(c.registered_files, 0);
    T_ASSERT_INT_EQ(c.send_zc_threshold, 0);
    T_ASSERT_INT_EQ(c.batch_max, 256);
    T_ASSERT_INT_EQ(c.max_header_bytes, 16384);
    T_ASSERT_INT_EQ(c.max_headers, 100);
    T_ASSERT_INT_EQ(c.max_url_bytes, 8192);
    T_ASSERT_INT_EQ(c.max_body_bytes, 1024 * 1024);
    T_ASSERT_INT_EQ(c.max_connections, 10000);
    T_ASSERT_INT_EQ(c.max_pipelined, 128);
    T_ASSERT_INT_EQ(c.output_high_water, 1024 * 1024);
    T_ASSERT_INT_EQ(c.header_timeout_ms, 10000);
    T_ASSERT_INT_EQ(c.keepalive_timeout_ms, 5000);
    T_ASSERT_INT_EQ(c.body_timeout_ms, 30000);
    T_ASSERT_INT_EQ(c.send_timeout_ms, 30000);
    T_ASSERT_INT_EQ(c.shutdown_timeout_ms, 10000);
    T_ASSERT_STR_EQ(c.server_header, "pymongoose_uring");
    T_ASSERT(c.handler == NULL);
    T_ASSERT(c.on_thread_start == NULL);
    T_ASSERT(c.on_thread_stop == NULL);
  }

  t_case("pmu_status_reason knows the common codes and says Unknown otherwise");
  T_ASSERT_STR_EQ(pmu_status_reason(200), "OK");
  T_ASSERT_STR_EQ(pmu_status_reason(100), "Continue");
  T_ASSERT_STR_EQ(pmu_status_reason(404), "Not Found");
  T_ASSERT_STR_EQ(pmu_status_reason(400), "Bad Request");
  T_ASSERT_STR_EQ(pmu_status_reason(408), "Request Timeout");
  T_ASSERT_STR_EQ(pmu_status_reason(414), "URI Too Long");
  T_ASSERT_STR_EQ(pmu_status_reason(431), "Request Header Fields Too Large");
  T_ASSERT_STR_EQ(pmu_status_reason(500), "Internal Server Error");
  T_ASSERT_STR_EQ(pmu_status_reason(503), "Service Unavailable");
  {
    const char *r413 = pmu_status_reason(413);
    T_ASSERT_MSG(t_str_eq(r413, "Content Too Large") || t_str_eq(r413, "Payload Too Large"),
                 "413 reason: %s", r413);
  }
  T_ASSERT_STR_EQ(pmu_status_reason(599), "Unknown");
  T_ASSERT_STR_EQ(pmu_status_reason(999), "Unknown");
  T_ASSERT_STR_EQ(pmu_status_reason(0), "Unknown");
  T_ASSERT_STR_EQ(pmu_status_reason(-1), "Unknown");

  t_case("start without a handler fails with -EINVAL");
  {
    pmu_config_t c;
    pmu_config_init(&c);
    c.host = "127.0.0.1";
    c.port = 0;
    c.handler = NULL;
    pmu_server_t *s = NULL;
    int rc = pmu_server_start(&c, &s);
    T_ASSERT_INT_EQ(rc, -EINVAL);
    if (s) {
      T_ASSERT_MSG(strlen(pmu_server_error(s)) > 0, "no explanation for -EINVAL");
      pmu_server_destroy(s);
    }
  }

  t_case("a knob outside its PMU_CONFIG_KNOBS range fails with -EINVAL naming it");
  {
    /* Every knob whose table range is narrower than its type, just outside
     * both ends, one at a time. */
#define OUT_OF_RANGE(type, name, def, unit, lo, hi, doc) OOR_##type(name, lo, hi)
#define OOR_STR(name, lo, hi)  /* not range-checked */
#define OOR_BOOL(name, lo, hi) /* any nonzero value is on */
#define OOR_NUM(ctype, name, lo, hi, tmin, tmax)    \
  if ((long long)(lo) > (tmin)) {                   \
    pmu_config_t c;                                 \
    t_config_init(&c);                              \
    c.name = (ctype)((long long)(lo)-1);            \
    expect_refused(&c, #name);                      \
  }                                                 \
  if ((unsigned long long)(hi) < (tmax)) {          \
    pmu_config_t c;                                 \
    t_config_init(&c);                              \
    c.name = (ctype)((unsigned long long)(hi) + 1); \
    expect_refused(&c, #name);                      \
  }
#define OOR_INT(name, lo, hi) OOR_NUM(int, name, lo, hi, INT_MIN, INT_MAX)
#define OOR_PORT(name, lo, hi) OOR_NUM(uint16_t, name, lo, hi, 0, UINT16_MAX)
#define OOR_UINT(name, lo, hi) OOR_NUM(unsigned, name, lo, hi, 0, UINT_MAX)
#define OOR_SIZE(name, lo, hi) OOR_NUM(size_t, name, lo, hi, 0, SIZE_MAX)
    PMU_CONFIG_KNOBS(OUT_OF_RANGE)
#undef OUT_OF_RANGE
    T_ASSERT_MSG(refused_checks >= 8, "only %d out-of-range values tried", refused_checks);
    pmu_config_t c;
    t_config_init(&c);
    c.buf_count = 3;
    pmu_server_t *s = NULL;
    T_ASSERT_INT_EQ(pmu_server_start(&c, &s), -EINVAL);
    T_ASSERT_MSG(s && strstr(pmu_server_error(s), "power of two"), "buf_count 3 accepted");
    pmu_server_destroy(s);
  }

  t_case("start on a port already taken fails with -EADDRINUSE and explains");
  {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_ASSERT(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    T_ASSERT(bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
    T_ASSERT(listen(fd, 4) == 0);
    socklen_t len = sizeof addr;
    T_ASSERT(getsockname(fd, (struct sockaddr *)&addr, &len) == 0);
    pmu_config_t c;
    t_config_init(&c);
    c.port = ntohs(addr.sin_port);
    t_server_t *s = NULL;
    int rc = t_server_try_start(&c, &s);
    T_ASSERT_INT_EQ(rc, -EADDRINUSE);
    T_ASSERT_MSG(s != NULL, "pmu_server_start did not set *out on failure");
    const char *why = pmu_server_error(s->pmu);
    T_ASSERT_MSG(why && strlen(why) > 0, "pmu_server_error is empty after -EADDRINUSE");
    printf("# explained as: %s\n", why);
    t_server_destroy(s);
    close(fd);
  }

  t_case("start with a host that is not an address fails and explains");
  {
    pmu_config_t c;
    t_config_init(&c);
    c.host = "not an address";
    t_server_t *s = NULL;
    int rc = t_server_try_start(&c, &s);
    T_ASSERT_MSG(rc < 0, "start succeeded with host \"not an address\"");
    if (s) {
      T_ASSERT_MSG(strlen(pmu_server_error(s->pmu)) > 0, "no explanation");
      t_server_destroy(s);
    }
  }

  t_case("thread callbacks run once per thread, ring info and stats are per thread");
  {
    pmu_config_t c;
    t_config_init(&c);
    c.threads = 2;
    c.on_thread_start = on_start;
    c.on_thread_stop = on_stop;
    t_server_t *s = t_server_start(&c);
    T_ASSERT_INT_EQ(pmu_server_threads(s->pmu), 2);
    T_WAIT_UNTIL(atomic_load(&thread_starts) >= 2, T_EVENT_MS);
    T_ASSERT_INT_EQ(atomic_load(&thread_starts), 2);
    T_ASSERT_INT_EQ(atomic_load(&thread_stops), 0);

    pmu_probe_t probe;
    T_ASSERT_INT_EQ(pmu_probe(&probe), 0);
    for (unsigned i = 0; i < 2; i++) {
      pmu_ring_info_t info;
      memset(&info, 0xff, sizeof info);
      T_ASSERT_INT_EQ(pmu_server_ring_info(s->pmu, i, &info), 0);
      T_ASSERT_MSG(info.features != 0, "thread %u: no ring features", i);
      T_ASSERT_INT_EQ(info.sqpoll, 0);
      T_ASSERT_INT_EQ(info.registered_files, 0);
      if (probe.defer_taskrun)
        T_ASSERT_INT_EQ(info.defer_taskrun, 1);
      T_ASSERT_INT_EQ(info.sched_batch, 0); /* config.sched_batch is off by default */
      T_ASSERT_INT_EQ(thread_policy[i], SCHED_OTHER);
      char want[16];
      snprintf(want, sizeof want, "pmu-ring-%u", i);
      T_ASSERT_STR_EQ(thread_name[i], want);
    }
    pmu_ring_info_t info;
    T_ASSERT_MSG(pmu_server_ring_info(s->pmu, 2, &info) < 0, "ring_info(2) of 2 threads");
    pmu_stats_t stats;
    T_ASSERT_INT_EQ(pmu_server_stats(s->pmu, 2, &stats), -EINVAL);
    T_ASSERT_INT_EQ(pmu_server_stats(s->pmu, -2, &stats), -EINVAL);
    T_ASSERT_INT_EQ(pmu_server_stats(s->pmu, 0, &stats), 0);
    T_ASSERT_INT_EQ(pmu_server_stats(s->pmu, 1, &stats), 0);
    T_ASSERT_INT_EQ(pmu_server_stats(s->pmu, -1, &stats), 0);
    t_get_ok(s, "/");

    t_server_destroy(s);
    T_ASSERT_INT_EQ(atomic_load(&thread_stops), 2);
    T_ASSERT_INT_EQ(atomic_load(&thread_index_bad), 0);
  }

  t_case("sched_batch: the ring threads run under SCHED_BATCH and ring info says so");
  {
    pmu_config_t c;
    t_config_init(&c);
    c.threads = 2;
    c.sched_batch = 1;
    c.on_thread_start = on_start;
    atomic_store(&thread_starts, 0);
    t_server_t *s = t_server_start(&c);
    T_WAIT_UNTIL(atomic_load(&thread_starts) >= 2, T_EVENT_MS);
    for (unsigned i = 0; i < 2; i++) {
      pmu_ring_info_t info;
      T_ASSERT_INT_EQ(pmu_server_ring_info(s->pmu, i, &info), 0);
      T_ASSERT_INT_EQ(info.sched_batch, 1);
      T_ASSERT_INT_EQ(thread_policy[i], SCHED_BATCH);
    }
    t_get_ok(s, "/");
    t_server_destroy(s);
    /* The caller's thread was never moved. */
    T_ASSERT_INT_EQ(sched_getscheduler(0), SCHED_OTHER);
  }

  t_case("wait times out on a running server, stop is idempotent, then wait returns");
  {
    pmu_config_t c;
    t_config_init(&c);
    t_server_t *s = t_server_start(&c);
    t_expect_wait_times_out(s, 100);
    pmu_server_stop(s->pmu);
    pmu_server_stop(s->pmu);
    T_ASSERT_INT_EQ(pmu_server_wait(s->pmu, 3000), 0);
    T_ASSERT_INT_EQ(pmu_server_wait(s->pmu, 0), 0);
    pmu_server_stop(s->pmu); /* after the threads are gone: still harmless */
    t_server_destroy(s);
  }

  t_case("destroy without an explicit stop stops the server");
  {
    pmu_config_t c;
    t_config_init(&c);
    t_server_t *s = t_server_start(&c);
    t_get_ok(s, "/");
    t_server_destroy(s);
  }

  t_case("the config is copied, strings included");
  {
    char host[32] = "127.0.0.1";
    char server_header[32] = "copied/1.0";
    pmu_config_t c;
    t_config_init(&c);
    c.host = host;
    c.server_header = server_header;
    pmu_server_t *pmu = NULL;
    t_server_t fake; /* handler_data for t_handler */
    memset(&fake, 0, sizeof fake);
    c.handler_data = &fake;
    T_ASSERT_INT_EQ(pmu_server_start(&c, &pmu), 0);
    memset(host, 'x', sizeof host - 1);
    memset(server_header, 'y', sizeof server_header - 1);
    memset(&c, 0, sizeof c);
    fake.pmu = pmu;
    fake.family = AF_INET;
    fake.port = pmu_server_port(pmu);
    snprintf(fake.host, sizeof fake.host, "127.0.0.1");
    t_response_t r = get_once(&fake, "/");
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(t_header(&r, "Server"), "copied/1.0");
    t_response_free(&r);
    pmu_server_destroy(pmu);
  }

  t_case("server_header: default, custom, NULL and empty");
  {
    const char *values[] = {"pymongoose_uring", "custom-server/2", NULL, ""};
    for (int i = 0; i < 4; i++) {
      pmu_config_t c;
      t_config_init(&c);
      if (i > 0)
        c.server_header = values[i];
      t_server_t *s = t_server_start(&c);
      t_response_t r = get_once(s, "/");
      T_ASSERT_INT_EQ(r.status, 200);
      if (i < 2) {
        T_ASSERT_STR_EQ(t_header(&r, "Server"), values[i]);
        T_ASSERT_INT_EQ(t_header_count_named(&r, "Server"), 1);
      } else {
        T_ASSERT_MSG(t_header(&r, "Server") == NULL, "server_header %s still sent Server: %s",
                     values[i] ? "\"\"" : "NULL", t_header(&r, "Server"));
      }
      t_response_free(&r);
      t_server_destroy(s);
    }
  }

  return t_done();
}
