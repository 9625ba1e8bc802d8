/*
 * test_refused: where the kernel refuses io_uring (here: a seccomp filter
 * making io_uring_setup fail with EPERM, as Docker's default profile does),
 * pmu_probe() and pmu_server_start() fail with -EPERM and say why and how to
 * fix it, and nothing leaks. Runs in a child process: the filter is for good.
 */
#include "testlib.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int block_io_uring(void) {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof filter / sizeof filter[0], .filter = filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

static int child(void) {
  if (block_io_uring() < 0) {
    fprintf(stderr, "cannot install a seccomp filter: skip\n");
    return T_EXIT_SKIP;
  }
  t_case("pmu_probe names seccomp and the fix");
  pmu_probe_t probe;
  int rc = pmu_probe(&probe);
  T_ASSERT_INT_EQ(rc, -EPERM);
  T_ASSERT(!probe.available);
  T_ASSERT_MSG(strstr(probe.message, "seccomp") && strstr(probe.message, "io_uring_disabled"),
               "message: %s", probe.message);

  t_case("pmu_server_start fails with -EPERM and explains; no fd left open");
  int fds = t_count_fds();
  pmu_config_t config;
  t_config_init(&config);
  pmu_server_t *server = NULL;
  rc = pmu_server_start(&config, &server);
  T_ASSERT_INT_EQ(rc, -EPERM);
  T_ASSERT(server != NULL);
  const char *why = pmu_server_error(server);
  T_ASSERT_MSG(strstr(why, "seccomp") && strstr(why, "EPERM"), "error: %s", why);
  pmu_server_destroy(server);
  T_ASSERT_INT_EQ(t_count_fds(), fds);
  return t_done();
}

int main(void) {
  t_init("refused");
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0)
    _exit(child());
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) {
    fprintf(stderr, "child died (status %d)\n", status);
    return T_EXIT_FAIL;
  }
  return WEXITSTATUS(status);
}
