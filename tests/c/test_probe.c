/*
 * test_probe: pmu_probe() on this machine reports a usable io_uring, fills
 * every field it documents, and agrees with uname.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/utsname.h>

/* Kernel version from a "major.minor..." release string as major*1000+minor. */
static int kernel_version(const char *release) {
  int major = 0, minor = 0;
  if (sscanf(release, "%d.%d", &major, &minor) != 2)
    return 0;
  return major * 1000 + minor;
}

int main(void) {
  t_init("probe");

  t_case("probe reports io_uring available and fills the message");
  pmu_probe_t probe;
  memset(&probe, 0x5a, sizeof probe); /* garbage in: every field must be written */
  int rc = pmu_probe(&probe);
  T_ASSERT_INT_EQ(rc, 0);
  T_ASSERT_INT_EQ(probe.available, 1);
  T_ASSERT_INT_EQ(probe.error, 0);
  T_ASSERT_MSG(memchr(probe.message, '\0', sizeof probe.message) != NULL,
               "message is not NUL-terminated");
  T_ASSERT_MSG(strlen(probe.message) > 0, "message is empty");
  T_ASSERT_MSG(memchr(probe.kernel, '\0', sizeof probe.kernel) != NULL,
               "kernel is not NUL-terminated");
  printf("# probe message: %s\n", probe.message);

  t_case("probe's kernel matches uname -r");
  struct utsname uts;
  T_ASSERT(uname(&uts) == 0);
  T_ASSERT_STR_EQ(probe.kernel, uts.release);

  t_case("probe's feature flags are booleans and match the kernel version");
  int flags[] = {probe.single_issuer,
                 probe.defer_taskrun,
                 probe.coop_taskrun,
                 probe.multishot_accept,
                 probe.multishot_recv,
                 probe.provided_buffer_ring,
                 probe.send_zc,
                 probe.msg_ring,
                 probe.recv_bundle,
                 probe.incremental_buffers,
                 probe.registered_ring_fd,
                 probe.ext_arg};
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    T_ASSERT_MSG(flags[i] == 0 || flags[i] == 1, "flag %zu is %d, not 0 or 1", i, flags[i]);
  T_ASSERT_MSG(probe.features != 0, "no IORING_FEAT_* reported");
  int version = kernel_version(uts.release);
  /* The engine cannot run without these (multishot accept and recv, provided
   * buffer rings): a kernel that passes the probe must have them. */
  T_ASSERT_INT_EQ(probe.multishot_accept, 1);
  T_ASSERT_INT_EQ(probe.multishot_recv, 1);
  T_ASSERT_INT_EQ(probe.provided_buffer_ring, 1);
  if (version >= 6001) {
    T_ASSERT_INT_EQ(probe.single_issuer, 1);
    T_ASSERT_INT_EQ(probe.defer_taskrun, 1);
    T_ASSERT_INT_EQ(probe.coop_taskrun, 1);
    T_ASSERT_INT_EQ(probe.send_zc, 1);
    T_ASSERT_INT_EQ(probe.msg_ring, 1);
    T_ASSERT_INT_EQ(probe.registered_ring_fd, 1);
    T_ASSERT_INT_EQ(probe.ext_arg, 1);
  }
  if (version >= 6010)
    T_ASSERT_INT_EQ(probe.recv_bundle, 1);
  if (version >= 6012)
    T_ASSERT_INT_EQ(probe.incremental_buffers, 1);

  t_case("probe is repeatable and accepts being called twice");
  pmu_probe_t again;
  memset(&again, 0, sizeof again);
  T_ASSERT_INT_EQ(pmu_probe(&again), 0);
  T_ASSERT_INT_EQ(again.available, probe.available);
  T_ASSERT_INT_EQ(again.features, probe.features);

  return t_done();
}
