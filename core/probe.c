/*
 * probe.c: what the kernel's io_uring can do, asked once at start-up or by
 * pmu_probe(), with a message that names the cause and the fix when the
 * answer is "nothing".
 */
#include "internal.h"

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

/* Try a ring with these flags; 1 if the kernel takes them. */
static int ring_accepts(unsigned flags) {
  struct io_uring ring;
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = flags;
  if (io_uring_queue_init_params(8, &ring, &p) < 0)
    return 0;
  io_uring_queue_exit(&ring);
  return 1;
}

int pmu_probe(pmu_probe_t *out) {
  memset(out, 0, sizeof *out);
  struct utsname u;
  if (uname(&u) == 0)
    snprintf(out->kernel, sizeof out->kernel, "%.63s", u.release);

  struct io_uring ring;
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  int rc = io_uring_queue_init_params(8, &ring, &p);
  if (rc < 0) {
    out->error = rc;
    explain(out, rc);
    return rc;
  }
  out->features = p.features;
  out->ext_arg = !!(p.features & IORING_FEAT_EXT_ARG);

  struct io_uring_probe *pr = io_uring_get_probe_ring(&ring);
  if (pr) {
    out->send_zc = io_uring_opcode_supported(pr, IORING_OP_SEND_ZC);
    out->msg_ring = io_uring_opcode_supported(pr, IORING_OP_MSG_RING);
    io_uring_free_probe(pr);
  }

  /* Provided-buffer rings (5.19) and, with them, multishot recv (6.0). */
  pmu__bufring_t b;
  if (pmu__bufring_setup(&ring, &b, 8, 256) == 0) {
    out->provided_buffer_ring = 1;
    pmu__bufring_free(&ring, &b);
  }
  out->registered_ring_fd = io_uring_register_ring_fd(&ring) == 1;
  io_uring_queue_exit(&ring);

  out->single_issuer = ring_accepts(IORING_SETUP_SINGLE_ISSUER);
  out->defer_taskrun =
      ring_accepts(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
  out->coop_taskrun = ring_accepts(IORING_SETUP_COOP_TASKRUN);

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
