/*
 * uring.c: ring and buffer-ring setup, SQE preparation, the wait and the
 * kernel probe. The only file that calls liburing directly (besides the
 * inline accessors of uring.h).
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>

int pmu__ring_setup(struct io_uring *ring, const pmu_config_t *cfg, pmu_ring_info_t *info) {
  const unsigned base = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
  unsigned tries[3];
  int ntries = 0;

  if (cfg->sqpoll) {
    tries[ntries++] = base | IORING_SETUP_SQPOLL;
  } else {
    if (cfg->defer_taskrun)
      tries[ntries++] = base | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    tries[ntries++] = base | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
  }
  tries[ntries++] = base; /* the oldest kernels this engine can run on */

  int rc = -EINVAL;
  for (int i = 0; i < ntries; i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = tries[i];
    p.cq_entries = cfg->cq_entries;
    if (tries[i] & IORING_SETUP_SQPOLL)
      p.sq_thread_idle = cfg->sqpoll_idle_ms;
    rc = io_uring_queue_init_params(cfg->ring_entries, ring, &p);
    if (rc == 0) {
      memset(info, 0, sizeof *info);
      info->setup_flags = p.flags;
      info->features = p.features;
      info->defer_taskrun = !!(p.flags & IORING_SETUP_DEFER_TASKRUN);
      info->sqpoll = !!(p.flags & IORING_SETUP_SQPOLL);
      break;
    }
    if (rc != -EINVAL)
      return rc; /* EPERM, ENOSYS, ENOMEM: no flag choice will help */
  }
  if (rc < 0)
    return rc;

  /* Saves an fget/fput per io_uring_enter; harmless to lack. */
  info->registered_ring_fd = io_uring_register_ring_fd(ring) == 1;

  if (cfg->registered_files) {
    unsigned slots = cfg->max_connections + 64;
    rc = io_uring_register_files_sparse(ring, slots);
    if (rc < 0) {
      io_uring_queue_exit(ring);
      return rc;
    }
    info->registered_files = 1;
  }
  return 0;
}

int pmu__bufring_setup(struct io_uring *ring, pmu__bufring_t *b, unsigned count, unsigned size) {
  memset(b, 0, sizeof *b);
  b->count = count;
  b->size = size;
  b->mask = (unsigned)io_uring_buf_ring_mask(count);
  b->bgid = 0;
  b->br_bytes = (size_t)count * sizeof(struct io_uring_buf);
  b->mem_bytes = (size_t)count * size;

  /* liburing 2.3 has no io_uring_setup_buf_ring: map and register by hand. */
  void *br = mmap(NULL, b->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (br == MAP_FAILED)
    return -errno;
  void *mem = mmap(NULL, b->mem_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) {
    int err = -errno;
    munmap(br, b->br_bytes);
    return err;
  }
  b->br = br;
  b->mem = mem;

  struct io_uring_buf_reg reg;
  memset(&reg, 0, sizeof reg);
  reg.ring_addr = (unsigned long)(uintptr_t)br;
  reg.ring_entries = count;
  reg.bgid = b->bgid;
  int rc = io_uring_register_buf_ring(ring, &reg, 0);
  if (rc < 0) {
    munmap(mem, b->mem_bytes);
    munmap(br, b->br_bytes);
    memset(b, 0, sizeof *b);
    return rc;
  }
  io_uring_buf_ring_init(b->br);
  for (unsigned i = 0; i < count; i++)
    pmu__bufring_recycle(b, i);
  pmu__bufring_publish(b);
  return 0;
}

void pmu__bufring_free(struct io_uring *ring, pmu__bufring_t *b) {
  if (!b->br)
    return;
  if (ring)
    io_uring_unregister_buf_ring(ring, b->bgid);
  munmap(b->mem, b->mem_bytes);
  munmap(b->br, b->br_bytes);
  memset(b, 0, sizeof *b);
}

struct io_uring_sqe *pmu__get_sqe(struct io_uring *ring) {
  if (PMU__FAULT(PMU__FAULT_SQE))
    return NULL;
  struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
  if (sqe)
    return sqe;
  /* The SQ is full: hand what is queued to the kernel and try again. Under
   * SQPOLL submitting only publishes the tail (and wakes the SQ thread if
   * it sleeps): the entries free up when that thread has taken them, so
   * wait for it. Without SQPOLL the submit frees them, unless the kernel
   * refuses it (EBUSY, EAGAIN, ENOMEM). */
  int rc = io_uring_submit(ring);
  if ((ring->flags & IORING_SETUP_SQPOLL) && rc >= 0)
    io_uring_sqring_wait(ring);
  return io_uring_get_sqe(ring);
}

int pmu__prep_accept(struct io_uring *ring, int listen_fd, int multishot, uint64_t ud) {
  struct io_uring_sqe *sqe = pmu__get_sqe(ring);
  if (!sqe)
    return -EBUSY;
  if (multishot)
    io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC);
  else
    io_uring_prep_accept(sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, ud);
  return 0;
}

int pmu__prep_recv(struct io_uring *ring, int fd, int fixed, uint16_t bgid, uint64_t ud) {
  struct io_uring_sqe *sqe = pmu__get_sqe(ring);
  if (!sqe)
    return -EBUSY;
  io_uring_prep_recv_multishot(sqe, fixed >= 0 ? fixed : fd, NULL, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT | (fixed >= 0 ? IOSQE_FIXED_FILE : 0);
  sqe->buf_group = bgid;
  io_uring_sqe_set_data64(sqe, ud);
  return 0;
}

int pmu__prep_send(struct io_uring *ring, int fd, int fixed, struct msghdr *msg, int zc,
                   uint64_t ud) {
  struct io_uring_sqe *sqe = pmu__get_sqe(ring);
  if (!sqe)
    return -EBUSY;
  int target = fixed >= 0 ? fixed : fd;
  if (msg->msg_iovlen == 1) {
    void *base = msg->msg_iov[0].iov_base;
    size_t len = msg->msg_iov[0].iov_len;
    if (zc)
      io_uring_prep_send_zc(sqe, target, base, len, MSG_NOSIGNAL, 0);
    else
      io_uring_prep_send(sqe, target, base, len, MSG_NOSIGNAL);
  } else if (zc) {
    io_uring_prep_sendmsg_zc(sqe, target, msg, MSG_NOSIGNAL);
  } else {
    io_uring_prep_sendmsg(sqe, target, msg, MSG_NOSIGNAL);
  }
  if (fixed >= 0)
    sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(sqe, ud);
  return 0;
}

int pmu__prep_poll_in(struct io_uring *ring, int fd, uint64_t ud) {
  struct io_uring_sqe *sqe = pmu__get_sqe(ring);
  if (!sqe)
    return -EBUSY;
  io_uring_prep_poll_multishot(sqe, fd, POLLIN);
  io_uring_sqe_set_data64(sqe, ud);
  return 0;
}

int pmu__prep_cancel(struct io_uring *ring, uint64_t target, uint64_t ud) {
  struct io_uring_sqe *sqe = pmu__get_sqe(ring);
  if (!sqe)
    return -EBUSY;
  io_uring_prep_cancel64(sqe, target, 0);
  io_uring_sqe_set_data64(sqe, ud);
  return 0;
}

int pmu__prep_splice(struct io_uring *ring, int file_fd, uint64_t file_off, int pipe_w, int pipe_r,
                     int fd, int fixed, unsigned len, uint64_t ud_in, uint64_t ud_out) {
  /* The two SQEs of a link must go in one submission: make room for both first. */
  unsigned need = 2;
  if (io_uring_sq_space_left(ring) < need) {
    if (PMU__FAULT(PMU__FAULT_SQE))
      return -EBUSY;
    int rc = io_uring_submit(ring);
    if ((ring->flags & IORING_SETUP_SQPOLL) && rc >= 0)
      io_uring_sqring_wait(ring);
    if (io_uring_sq_space_left(ring) < need)
      return -EBUSY;
  }
  struct io_uring_sqe *sqe;
  if (file_fd >= 0) {
    sqe = pmu__get_sqe(ring);
    if (!sqe)
      return -EBUSY;
    io_uring_prep_splice(sqe, file_fd, (int64_t)file_off, pipe_w, -1, len, 0);
    sqe->flags |= IOSQE_IO_LINK;
    io_uring_sqe_set_data64(sqe, ud_in);
  } else {
    sqe = pmu__get_sqe(ring);
    if (!sqe)
      return -EBUSY;
    io_uring_prep_poll_add(sqe, fixed >= 0 ? fixed : fd, POLLOUT);
    sqe->flags |= IOSQE_IO_LINK | (fixed >= 0 ? IOSQE_FIXED_FILE : 0);
    io_uring_sqe_set_data64(sqe, ud_in);
  }
  sqe = io_uring_get_sqe(ring); /* room was made above */
  if (!sqe)
    return -EBUSY;
  /* For a splice the SQE's fd is the out side: a fixed socket takes IOSQE_FIXED_FILE
   * (SPLICE_F_FD_IN_FIXED would be the in side's, the pipe's, which is not fixed). */
  io_uring_prep_splice(sqe, pipe_r, -1, fixed >= 0 ? fixed : fd, -1, len,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (fixed >= 0)
    sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(sqe, ud_out);
  return 0;
}

int pmu__prep_read(struct io_uring *ring, int fd, void *buf, unsigned len, uint64_t off,
                   uint64_t ud) {
  struct io_uring_sqe *sqe = pmu__get_sqe(ring);
  if (!sqe)
    return -EBUSY;
  io_uring_prep_read(sqe, fd, buf, len, off);
  io_uring_sqe_set_data64(sqe, ud);
  return 0;
}

int pmu__files_update(struct io_uring *ring, unsigned slot, int fd) {
  int rc = io_uring_register_files_update(ring, slot, &fd, 1);
  return rc < 0 ? rc : 0;
}

int pmu__submit_and_wait(struct io_uring *ring, int64_t timeout_ms) {
  if (timeout_ms >= 0)
    return pmu__submit_and_wait_n(ring, 1, timeout_ms * 1000);
  if (PMU__FAULT(PMU__FAULT_WAIT))
    return -EFAULT;
  return io_uring_submit_and_wait(ring, 1);
}

int pmu__submit_and_wait_n(struct io_uring *ring, unsigned nr, int64_t timeout_us) {
  if (PMU__FAULT(PMU__FAULT_WAIT))
    return -EFAULT;
  struct __kernel_timespec ts = {
      .tv_sec = timeout_us / 1000000,
      .tv_nsec = (long long)(timeout_us % 1000000) * 1000LL,
  };
  struct io_uring_cqe *cqe = NULL;
  return io_uring_submit_and_wait_timeout(ring, &cqe, nr, &ts, NULL);
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

int pmu__ring_probe(pmu_probe_t *out) {
  struct io_uring ring;
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  int rc = io_uring_queue_init_params(8, &ring, &p);
  if (rc < 0)
    return rc;
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
  out->defer_taskrun = ring_accepts(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
  out->coop_taskrun = ring_accepts(IORING_SETUP_COOP_TASKRUN);
  return 0;
}
