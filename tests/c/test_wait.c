/*
 * test_wait: the two waits of the engine.
 * - pmu_server_wait() with a timeout counts on the monotonic clock (its
 *   deadline is computed there), and returns -ETIMEDOUT after about that long.
 * - The ring's own wait failing (EFAULT from the engine's fault point) is
 *   counted in wait_errors, logged once a second at most, and does not spin
 *   the ring thread; the server serves on once the wait works again.
 */
#include "testlib.h"

#include <stdio.h>
#include <time.h>

/* Test-only entry points of the engine (core/faults.c, core/server.c). */
void pmu_test_fault(int point, unsigned long first, unsigned long every, unsigned long times);
void pmu__deadline_after(int timeout_ms, struct timespec *out);
#define FAULT_WAIT 2

static int64_t ts_ms(const struct timespec *ts) {
  return (int64_t)ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
}

int main(void) {
  t_init("wait");

  t_case("pmu_server_wait's deadline is on CLOCK_MONOTONIC, normalised");
  {
    int cases[] = {0, 1, 999, 1000, 1001, 2500, 86400000};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      struct timespec before, deadline, after;
      clock_gettime(CLOCK_MONOTONIC, &before);
      pmu__deadline_after(cases[i], &deadline);
      clock_gettime(CLOCK_MONOTONIC, &after);
      T_ASSERT(deadline.tv_nsec >= 0 && deadline.tv_nsec < 1000000000L);
      T_ASSERT_MSG(ts_ms(&deadline) >= ts_ms(&before) + cases[i] &&
                       ts_ms(&deadline) <= ts_ms(&after) + cases[i],
                   "timeout %d ms: deadline %lld, monotonic now %lld", cases[i],
                   (long long)ts_ms(&deadline), (long long)ts_ms(&before));
    }
  }

  t_case("pmu_server_wait(300 ms) on a running server times out after about 300 ms");
  {
    pmu_config_t config;
    t_config_init(&config);
    t_server_t *server = t_server_start(&config);
    t_expect_wait_times_out(server, 300);
    t_server_destroy(server);
  }

  t_case("the ring's wait failing: counted, logged once a second, no spin, serves on");
  {
    pmu_config_t config;
    t_config_init(&config);
    t_watch_config(&config);
    t_server_t *server = t_server_start(&config);
    t_get_ok(server, "/before");
    /* The next 60 waits fail. A request wakes the ring into them. */
    pmu_test_fault(FAULT_WAIT, 1, 1, 60);
    int64_t c0 = t_watch_cpu_ms();
    int64_t t0 = t_now_ms();
    t_get_ok(server, "/during");
    while (t_stats(server, -1).wait_errors < 60 && t_now_ms() - t0 < 10000)
      t_sleep_ms(20);
    int64_t wall = t_now_ms() - t0, cpu = t_watch_cpu_ms() - c0;
    pmu_stats_t s = t_stats(server, -1);
    fprintf(stderr, "# 60 failed waits: %lld ms of ring CPU in %lld ms\n", (long long)cpu,
            (long long)wall);
    T_ASSERT_INT_EQ(s.wait_errors, 60);
    T_ASSERT_MSG(wall >= 500, "60 failed waits passed in %lld ms: no pause", (long long)wall);
    T_ASSERT_MSG(cpu < 200, "the ring thread used %lld ms of CPU", (long long)cpu);
    int lines = atomic_load(&t_watch.log_lines);
    T_ASSERT_MSG(lines >= 1 && lines <= 1 + wall / 1000, "%d lines in %lld ms", lines,
                 (long long)wall);
    T_ASSERT_INT_EQ(atomic_load(&t_watch.last_level), PMU_LOG_ERROR);
    T_ASSERT_CONTAINS(t_watch.last_log, strlen(t_watch.last_log),
                      "io_uring wait failed: Bad address");
    t_get_ok(server, "/after");
    t_server_destroy(server);
  }
  t_case("a start whose ring thread fails at once: the wait sees it exit, 300 times");
  {
    /* A thread that fails and exits before pmu_server_start had counted it
     * running used to leave the count at 1 forever: destroy hung. */
    for (int i = 0; i < 300; i++) {
      pmu_config_t config;
      t_config_init(&config);
      config.cq_entries = 1u << 31; /* the kernel refuses the ring: EINVAL */
      config.threads = 8;           /* the first may be gone before the last starts */
      pmu_server_t *s = NULL;
      int rc = pmu_server_start(&config, &s);
      T_ASSERT_MSG(rc < 0, "start %d: a ring with 2^31 CQ entries was made", i);
      T_ASSERT(s != NULL);
      T_ASSERT_MSG(pmu_server_wait(s, 2000) == 0,
                   "start %d: the failed thread is still "
                   "counted running",
                   i);
      pmu_server_destroy(s);
    }
  }
  return t_done();
}
