/*
 * uring.h: every io_uring call the engine makes goes through here, the way
 * Redis keeps each poller behind ae_epoll.c. loop.c and conn.c speak in
 * terms of "arm a receive", "send these iovecs", "wait for completions",
 * "is this operation still armed". No other file names an IORING_ flag
 * (tests/python/test_layout.py checks it).
 */
#ifndef PMU_URING_H
#define PMU_URING_H

#include <liburing.h>
#include <stdint.h>
#include <sys/socket.h>

#include <pmu/pmu.h>

/* Flags newer than liburing 2.3's headers; the kernel (6.18 here) has them. */
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif

/* What a completion is about: a tag in the low 3 bits of user_data; the
 * rest is a pointer (loops and connections are 8-byte aligned). */
enum pmu__op {
  OP_ACCEPT = 1,     /* ptr: loop */
  OP_RECV = 2,       /* ptr: conn */
  OP_SEND = 3,       /* ptr: conn */
  OP_WAKE = 4,       /* ptr: loop; multishot poll on the wake eventfd */
  OP_CANCEL = 5,     /* ptr: conn, or loop for the accept cancel */
  OP_SPLICE_IN = 6,  /* ptr: conn; file -> pipe, the poll before a splice out, or a read */
  OP_SPLICE_OUT = 7, /* ptr: conn; pipe -> socket */
};
#define PMU__UD(ptr, op) ((uint64_t)(uintptr_t)(ptr) | (uint64_t)(op))
#define PMU__UD_OP(ud) ((unsigned)((ud)&7u))
#define PMU__UD_PTR(ud) ((void *)(uintptr_t)((ud) & ~(uint64_t)7u))

/* A provided-buffer ring and the memory behind it. */
typedef struct pmu__bufring {
  struct io_uring_buf_ring *br;
  size_t br_bytes;
  char *mem;
  size_t mem_bytes;
  unsigned count, size, mask;
  unsigned pending_returns; /* added since the last advance */
  uint16_t bgid;
} pmu__bufring_t;

/* Create a ring as the config asks, falling back from DEFER_TASKRUN to
 * COOP_TASKRUN where the kernel refuses it. Fills *info. Returns 0 or -errno. */
int pmu__ring_setup(struct io_uring *ring, const pmu_config_t *cfg, pmu_ring_info_t *info);

/* mmap, register and fill a buffer ring of cfg->buf_count x cfg->buf_size. */
int pmu__bufring_setup(struct io_uring *ring, pmu__bufring_t *b, unsigned count, unsigned size);
void pmu__bufring_free(struct io_uring *ring, pmu__bufring_t *b);

static inline char *pmu__bufring_addr(const pmu__bufring_t *b, unsigned bid) {
  return b->mem + (size_t)bid * b->size;
}

/* Give buffer bid back; visible to the kernel after pmu__bufring_publish. */
static inline void pmu__bufring_recycle(pmu__bufring_t *b, unsigned bid) {
  io_uring_buf_ring_add(b->br, pmu__bufring_addr(b, bid), b->size, (unsigned short)bid,
                        (int)b->mask, (int)b->pending_returns++);
}

static inline void pmu__bufring_publish(pmu__bufring_t *b) {
  if (b->pending_returns) {
    io_uring_buf_ring_advance(b->br, (int)b->pending_returns);
    b->pending_returns = 0;
  }
}

/* An SQE, submitting what is queued first if the SQ is full (and, under
 * SQPOLL, waiting for the SQ thread to take it). NULL when the kernel
 * refused the submit: the SQ is still full. */
struct io_uring_sqe *pmu__get_sqe(struct io_uring *ring);

/* Each returns 0, or -EBUSY when no SQE could be had: nothing was queued,
 * and the caller must retry later (the loop's next turn) or give up on
 * that connection. No caller may assume an SQE. */
int pmu__prep_accept(struct io_uring *ring, int listen_fd, int multishot, uint64_t ud);
int pmu__prep_recv(struct io_uring *ring, int fd, int fixed, uint16_t bgid, uint64_t ud);
int pmu__prep_send(struct io_uring *ring, int fd, int fixed, struct msghdr *msg, int zc,
                   uint64_t ud);
int pmu__prep_poll_in(struct io_uring *ring, int fd, uint64_t ud);
int pmu__prep_cancel(struct io_uring *ring, uint64_t target, uint64_t ud);

/* Splice len bytes of file_fd at file_off into the pipe (pipe_w), linked to a splice of
 * the same len from the pipe (pipe_r) to the socket (fd, or the fixed-file slot fixed >= 0);
 * or, with file_fd < 0, a poll for the socket's room (POLLOUT) linked to the splice out of
 * the pipe. The splice out does not wait for room (SPLICE_F_NONBLOCK: -EAGAIN or a short
 * count instead), so that a slow reader never holds a kernel worker thread; ud_in tags the
 * first SQE (the splice in, or the poll). Both SQEs or neither: -EBUSY. */
int pmu__prep_splice(struct io_uring *ring, int file_fd, uint64_t file_off, int pipe_w, int pipe_r,
                     int fd, int fixed, unsigned len, uint64_t ud_in, uint64_t ud_out);

/* Read len bytes of fd at off into buf (a file piece's bytes not in the page cache). */
int pmu__prep_read(struct io_uring *ring, int fd, void *buf, unsigned len, uint64_t off,
                   uint64_t ud);

/* Register fd at slot in the fixed-file table (fd < 0 clears the slot). */
int pmu__files_update(struct io_uring *ring, unsigned slot, int fd);

/* What a completion says besides its result. */

/* The multishot operation (accept, recv, poll) is still armed; on a SEND_ZC,
 * a notification completion follows this one. */
static inline int pmu__cqe_more(const struct io_uring_cqe *cqe) {
  return (cqe->flags & IORING_CQE_F_MORE) != 0;
}

/* A SEND_ZC's notification: the kernel is done with the send's buffers. */
static inline int pmu__cqe_notif(const struct io_uring_cqe *cqe) {
  return (cqe->flags & IORING_CQE_F_NOTIF) != 0;
}

/* The provided buffer a receive filled (valid when its result is > 0). */
static inline unsigned pmu__cqe_buffer_id(const struct io_uring_cqe *cqe) {
  return cqe->flags >> IORING_CQE_BUFFER_SHIFT;
}

/* Completions the kernel could not post for want of CQ room, since the ring
 * was made. */
static inline uint32_t pmu__ring_overflows(const struct io_uring *ring) {
  return *ring->cq.koverflow;
}

/* Completions ready to be reaped. */
static inline unsigned pmu__ring_cq_ready(const struct io_uring *ring) {
  return io_uring_cq_ready(ring);
}

/* Walk the completions ready (head: an unsigned cursor), then hand the n
 * seen back with pmu__ring_cq_advance. */
#define pmu__ring_for_each_cqe(ring, head, cqe) io_uring_for_each_cqe(ring, head, cqe)
static inline void pmu__ring_cq_advance(struct io_uring *ring, unsigned n) {
  io_uring_cq_advance(ring, n);
}

static inline void pmu__ring_exit(struct io_uring *ring) { io_uring_queue_exit(ring); }

/* Fill the io_uring part of *out (features, ext_arg, opcodes, setup flags,
 * provided-buffer rings, registered ring fd). Returns 0, or the -errno of a
 * ring that could not be made at all (nothing else is filled then). */
int pmu__ring_probe(pmu_probe_t *out);

/* Submit queued SQEs and wait for at least one completion, at most
 * timeout_ms (< 0: no limit). Returns >= 0, -ETIME, -EINTR or -errno. */
int pmu__submit_and_wait(struct io_uring *ring, int64_t timeout_ms);
/* Submit, then wait until nr completions are there or timeout_us (>= 0) has
 * passed: -ETIME then, with whatever came meanwhile left to reap. */
int pmu__submit_and_wait_n(struct io_uring *ring, unsigned nr, int64_t timeout_us);

#endif /* PMU_URING_H */
