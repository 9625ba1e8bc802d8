/*
 * probe.c: what the kernel's io_uring can do, asked once at start-up or by
 * pmu_probe(), with a message that names the cause and the fix when the
 * answer is "nothing".
 */
#include "internal.h"
#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

static void explain(pmu_probe_t *out, int err) {
  switch (err) {
  case -EPERM:
    snprintf(out->message, sizeof out->message,
             "io_uring is refused (EPERM): kernel.io_uring_disabled is set (fix: sysctl -w "
             "kernel.io_uring_disabled=0) or a seccomp profile blocks it (Docker's default "
             "does: run with --security-opt seccomp=unconfined or allow io_uring_setup, "
             "io_uring_enter and io_uring_register)");
    break;
  case -ENOSYS:
    snprintf(out->message, sizeof out->message,
             "io_uring is not in this kernel (ENOSYS, kernel %s): use Linux 6.0 or newer "
             "built with CONFIG_IO_URING=y",
             out->kernel);
    break;
  default:
    snprintf(out->message, sizeof out->message, "io_uring_setup failed: %s (kernel %s)",
             strerror(-err), out->kernel);
  }
}

int pmu_probe(pmu_probe_t *out) {
  memset(out, 0, sizeof *out);
  struct utsname u;
  if (uname(&u) == 0)
    snprintf(out->kernel, sizeof out->kernel, "%.63s", u.release);

  out->ktls = pmu__ktls_probe(out->ktls_message, sizeof out->ktls_message);
  int rc = pmu__ring_probe(out);
  if (rc < 0) {
    out->error = rc;
    explain(out, rc);
    return rc;
  }

  /* Multishot accept came with 5.19, multishot recv with 6.0; bundles with
   * 6.10 and incremental buffer consumption with 6.12. Opcodes do not reveal
   * these flags, so the release number does. */
  unsigned major = 0, minor = 0;
  sscanf(out->kernel, "%u.%u", &major, &minor);
  unsigned v = major * 100 + minor;
  out->multishot_accept = v >= 519;
  out->multishot_recv = v >= 600 && out->provided_buffer_ring;
  out->recv_bundle = v >= 610;
  out->incremental_buffers = v >= 612;
  out->available = out->multishot_recv && out->ext_arg;

  if (!out->available) {
    out->error = -EINVAL;
    snprintf(out->message, sizeof out->message,
             "io_uring is present but too old for this engine (kernel %s): multishot receive "
             "with provided-buffer rings needs Linux 6.0 or newer",
             out->kernel);
    return -EINVAL;
  }
  snprintf(out->message, sizeof out->message,
           "io_uring ready on kernel %s: DEFER_TASKRUN %s, SEND_ZC %s, bundles %s, "
           "incremental buffers %s",
           out->kernel, out->defer_taskrun ? "yes" : "no", out->send_zc ? "yes" : "no",
           out->recv_bundle ? "yes" : "no", out->incremental_buffers ? "yes" : "no");
  return 0;
}
