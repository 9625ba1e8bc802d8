/*
 * test_fd_exhaustion: out of file descriptors, the engine backs off instead
 * of spinning. With RLIMIT_NOFILE lowered so that the server can accept only
 * a few of 200 waiting connections, its ring thread must stay nearly idle
 * (accept fails with EMFILE at once, so re-arming at once spins at 100%
 * CPU), count the failures in accept_errors, log one line a second at most
 * through config.log, and accept again as soon as a connection closes (here
 * long before accept_backoff_ms, set to a minute).
 */
#include "testlib.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define CLIENTS 200

int main(void) {
  t_init("fd_exhaustion");
  if (!t_raise_nofile(CLIENTS + 256))
    t_skip("RLIMIT_NOFILE cannot be raised to %d", CLIENTS + 256);

  t_case("EMFILE: accepts pause, nothing spins, one line a second, resumes on close");
  pmu_config_t config;
  t_config_init(&config);
  t_watch_config(&config);
  config.accept_backoff_ms = 60000; /* only a closing connection can resume it */
  config.header_timeout_ms = 0;     /* the held connections stay */
  /* Client sockets first, then the limit, then the server (an accept takes
   * the limit in force when it is armed): connecting takes no descriptor
   * here, but each accept takes one there. */
  int fds[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    T_ASSERT(fds[i] >= 0);
  }
  struct rlimit saved, low;
  T_ASSERT(getrlimit(RLIMIT_NOFILE, &saved) == 0);
  low = saved;
  low.rlim_cur = (rlim_t)(fds[CLIENTS - 1] + 1 + 24); /* the server's own and a few */
  T_ASSERT(setrlimit(RLIMIT_NOFILE, &low) == 0);
  t_server_t *server = t_server_start(&config);
  t_watch_cpu_ms(); /* the ring thread's clock is known */
  struct sockaddr_in to = {.sin_family = AF_INET,
                           .sin_port = htons(server->port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  for (int i = 0; i < CLIENTS; i++) {
    int rc = connect(fds[i], (struct sockaddr *)&to, sizeof to);
    T_ASSERT_MSG(rc == 0 || errno == EINPROGRESS, "connect %d: %s", i, strerror(errno));
  }
  T_WAIT_UNTIL(t_stats(server, -1).accept_errors > 0, T_EVENT_MS);
  pmu_stats_t s = t_stats(server, -1);
  T_ASSERT_MSG(s.accept_errors > 0, "no accept failed (accepted %llu)",
               (unsigned long long)s.connections_accepted);
  T_ASSERT_MSG(s.connections_accepted < CLIENTS, "accepted all %llu",
               (unsigned long long)s.connections_accepted);

  int64_t cpu0 = t_watch_cpu_ms(), wall0 = t_now_ms();
  uint64_t waits0 = s.waits;
  int lines0 = atomic_load(&t_watch.log_lines);
  t_sleep_ms(1200);
  int64_t cpu = t_watch_cpu_ms() - cpu0, wall = t_now_ms() - wall0;
  s = t_stats(server, -1);
  fprintf(stderr, "# ring thread CPU %lld ms in %lld ms; %llu waits; %llu accept errors\n",
          (long long)cpu, (long long)wall, (unsigned long long)(s.waits - waits0),
          (unsigned long long)s.accept_errors);
  T_ASSERT_MSG(cpu < 100, "the ring thread used %lld ms of CPU in %lld ms", (long long)cpu,
               (long long)wall);
  T_ASSERT_MSG(s.waits - waits0 < 100, "%llu ring waits in %lld ms",
               (unsigned long long)(s.waits - waits0), (long long)wall);
  int lines = atomic_load(&t_watch.log_lines);
  T_ASSERT_MSG(lines >= 1, "nothing was logged");
  T_ASSERT_MSG(lines - lines0 <= 2, "%d lines logged in %lld ms", lines - lines0, (long long)wall);
  T_ASSERT_INT_EQ(atomic_load(&t_watch.last_level), PMU_LOG_WARNING);
  T_ASSERT_CONTAINS(t_watch.last_log, strlen(t_watch.last_log), "accept failed: ");
  T_ASSERT_CONTAINS(t_watch.last_log, strlen(t_watch.last_log),
                    "(EMFILE); pausing accepts for 60000 ms");

  /* The clients go away: the server's connections close, freeing
   * descriptors, and it accepts again at once, not a minute later. */
  for (int i = 0; i < CLIENTS; i++)
    close(fds[i]);
  T_ASSERT(setrlimit(RLIMIT_NOFILE, &saved) == 0);
  int64_t t0 = t_now_ms();
  t_get_ok(server, "/after");
  T_ASSERT_MSG(t_now_ms() - t0 < 3000, "served only after %lld ms", (long long)(t_now_ms() - t0));
  t_server_destroy(server);

  t_case("the default log is on by default, and the backoff is 500 ms");
  pmu_config_init(&config);
  T_ASSERT(config.log == pmu_log_stderr);
  T_ASSERT_INT_EQ(config.accept_backoff_ms, 500);
  return t_done();
}
