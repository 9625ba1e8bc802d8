/*
 * file.c: how a file piece of a streamed answer (pmu_respond_write_file) leaves.
 *
 * A piece is pre (a chunk-size line), the file's bytes, post (CRLF); its pre and post go
 * with the memory iovecs of the connection's send. Its bytes leave one of two ways, chosen
 * once per piece by its length against config.file_splice_min:
 *
 * - read: at most file_read_chunk bytes into the connection's buffer, which joins the send
 *   like a memory piece, with what comes before and after it; read on the ring thread
 *   when they are in the page cache (preadv2 RWF_NOWAIT), else by the ring
 *   (IORING_OP_READ), the output waiting for it, so that a disk read stalls no other
 *   connection;
 * - splice: once every byte before it is on the wire, a pipe from the loop's pool takes
 *   at most a pipe's worth from the file, linked to a splice from the pipe to the socket
 *   (two SQEs, one submission); a short splice leaves bytes in the pipe, which the next
 *   step sends before it reads more, after a poll for the socket's room (linked too). The
 *   socket is made O_NONBLOCK for it: a splice into a full socket ends short rather than
 *   wait in a kernel worker thread for as long as its client does not read. The pipe goes back to
 * the pool once empty; one that still holds bytes when the connection dies is closed, never pooled.
 *
 * Either way a connection holds at most file_read_chunk bytes, or one pipe, for a file.
 * A file that ends before its range does (it shrank) or fails to read closes the
 * connection after what was sent: never a byte of padding.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

/* A buffer this small stays with its connection for the next file; larger ones are
 * freed when their piece is done, so that idle keep-alive connections hold none. */
#define FBUF_KEEP 16384

static pmu__pipe_t *pipe_get(pmu__loop_t *loop) {
  pmu__pipe_t *p = loop->free_pipes;
  if (p) {
    loop->free_pipes = p->next;
    loop->nfree_pipes--;
    return p;
  }
  if (PMU__FAULT(PMU__FAULT_SEG))
    return NULL;
  p = malloc(sizeof *p);
  if (!p)
    return NULL;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) {
    free(p);
    return NULL; /* EMFILE, ENFILE: the read path serves */
  }
  size_t want = loop->server->cfg.pipe_size;
  if (want)
    (void)fcntl(fds[1], F_SETPIPE_SZ, want > INT_MAX ? INT_MAX : (int)want); /* EPERM over
      pipe-max-size or pipe-user-pages-soft: the pipe keeps the size it was made with */
  int cap = fcntl(fds[1], F_GETPIPE_SZ);
  p->rfd = fds[0];
  p->wfd = fds[1];
  p->cap = cap > 0 ? (size_t)cap : 4096;
  p->next = NULL;
  return p;
}

static void pipe_close(pmu__pipe_t *p) {
  close(p->rfd);
  close(p->wfd);
  free(p);
}

/* Back to the pool, or closed: when it still holds bytes (they belong to a connection
 * that died) or the pool is full. */
static void pipe_put(pmu__loop_t *loop, pmu__pipe_t *p, int dirty) {
  if (dirty || loop->nfree_pipes >= loop->server->cfg.pipe_pool) {
    pipe_close(p);
    return;
  }
  p->next = loop->free_pipes;
  loop->free_pipes = p;
  loop->nfree_pipes++;
}

static void fbuf_drop(pmu__conn_t *c) {
  free(c->fbuf);
  c->fbuf = NULL;
  c->fbuf_cap = c->fbuf_len = 0;
  c->fbuf_seg = NULL;
}

/* The piece cannot be sent whole: what went out stays out; the connection closes without
 * another byte (lingering, so that the client reads what was sent). */
static void file_failed(pmu__conn_t *c) {
  pmu__loop_t *loop = c->loop;
  STAT_ADD(loop, file_errors, 1);
  STAT_ADD(loop, responses_aborted, 1);
  c->out_dead = 1;
  c->no_more = 1;
  c->linger_on_close = 1;
  pmu__conn_linger(c);
}

/* Data bytes of the piece already sent. */
static size_t data_sent(const pmu__seg_t *g) {
  return g->sent > g->pre_len ? g->sent - g->pre_len : 0;
}

static int splice_step(pmu__conn_t *c, pmu__seg_t *g) {
  pmu__loop_t *loop = c->loop;
  size_t pos = data_sent(g);
  int in = c->pipe_fill == 0;
  size_t len;
  if (in) {
    /* Page cache pages go into the pipe one slot per page: a range that starts inside a
     * page spans one page more than its length says. */
    uint64_t at = g->foff + pos;
    size_t room = c->pipe->cap - (size_t)(at & 4095u);
    len = g->len - pos < room ? g->len - pos : room;
  } else {
    len = c->pipe_fill;
  }
  if (len > UINT_MAX)
    len = UINT_MAX & ~(size_t)4095u;
  if (!c->nonblock) {
    /* A splice into a socket waits for room unless the socket is O_NONBLOCK (the splice's
     * own flag covers only the pipe): it would hold a kernel worker thread for as long as
     * its client does not read. Non-blocking, it ends short (or -EAGAIN), and the next
     * step polls for room first. The ring's own sends and receives poll either way. */
    int fl = fcntl(c->fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
      (void)fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
    c->nonblock = 1;
  }
  if (pmu__prep_splice(&loop->ring, in ? g->fd : -1, g->foff + pos, c->pipe->wfd, c->pipe->rfd,
                       c->fd, c->fixed, (unsigned)len, PMU__UD(c, OP_SPLICE_IN),
                       PMU__UD(c, OP_SPLICE_OUT)) < 0) {
    loop->sqe_short = 1; /* flushed again at the end of a later turn */
    pmu__loop_mark_dirty(loop, c);
    return -1;
  }
  c->splicing = 2; /* the splice in, or the poll for room, then the splice out */
  c->splice_in = (uint8_t)in;
  c->splice_len = len;
  c->splice_in_res = c->splice_out_res = 0;
  c->ops = (uint16_t)(c->ops + c->splicing);
  c->send_inflight = 1;
  c->send_len = len;
  STAT_ADD(loop, sends, 1);
  pmu__conn_timer_update(c);
  return -1;
}

/* Read the piece's bytes at pos into the buffer through the ring; the output waits. */
static int read_async(pmu__conn_t *c, pmu__seg_t *g, size_t pos, size_t want) {
  pmu__loop_t *loop = c->loop;
  if (want > UINT_MAX)
    want = UINT_MAX;
  if (pmu__prep_read(&loop->ring, g->fd, c->fbuf, (unsigned)want, g->foff + pos,
                     PMU__UD(c, OP_SPLICE_IN)) < 0) {
    loop->sqe_short = 1;
    pmu__loop_mark_dirty(loop, c);
    return -1;
  }
  c->fbuf_seg = g;
  c->fbuf_pos = pos;
  c->fbuf_len = 0;
  c->reading = 1;
  c->ops++;
  c->send_inflight = 1;
  c->send_len = 0;
  STAT_ADD(loop, file_reads_async, 1);
  pmu__conn_timer_update(c);
  return -1;
}

int pmu__file_gather(pmu__conn_t *c, pmu__seg_t *g, int n, size_t *total, int *more) {
  pmu__loop_t *loop = c->loop;
  const pmu_config_t *cfg = &loop->server->cfg;
  *more = 0;
  if (!(g->flags & FSEG_PATH_SET)) {
    g->flags |= FSEG_PATH_SET;
    /* Over TLS in user space the bytes must be encrypted: read, never spliced. */
    if (g->len >= cfg->file_splice_min && cfg->file_splice_min != SIZE_MAX &&
        (!c->tls || pmu__tls_ktls_tx(c)))
      g->flags |= FSEG_SPLICE;
  }
  if (g->flags & FSEG_SPLICE) {
    if (n > 0)
      return n; /* what comes before it leaves first */
    if (!c->pipe) {
      c->pipe = pipe_get(loop);
      c->pipe_fill = 0;
    }
    if (c->pipe)
      return splice_step(c, g);
    STAT_ADD(loop, pipe_fallbacks, 1); /* no pipe to be had: this piece is read */
    g->flags &= (uint8_t)~FSEG_SPLICE;
  }

  size_t pos = data_sent(g);
  if (c->fbuf_seg != g || pos < c->fbuf_pos || pos >= c->fbuf_pos + c->fbuf_len) {
    if (c->fbuf_seg && c->fbuf_seg != g && n > 0)
      return n; /* the buffer is in this send already (an earlier piece's bytes) */
    size_t want = g->len - pos;
    if (want > cfg->file_read_chunk)
      want = cfg->file_read_chunk;
    if (c->fbuf_cap < want) {
      char *b = PMU__FAULT(PMU__FAULT_SEG) ? NULL : malloc(want);
      if (!b) {
        if (n > 0)
          return n;
        file_failed(c);
        return -2;
      }
      free(c->fbuf);
      c->fbuf = b;
      c->fbuf_cap = want;
    }
    ssize_t got;
    struct iovec iov = {c->fbuf, want};
    do
      got = preadv2(g->fd, &iov, 1, (off_t)(g->foff + pos), RWF_NOWAIT);
    while (got < 0 && errno == EINTR);
    if (got < 0 && errno == EAGAIN) {
      /* Not in the page cache: a read on this thread would stall all its connections. */
      if (n > 0)
        return n; /* what precedes it leaves first */
      return read_async(c, g, pos, want);
    }
    if (got < 0 && errno == EOPNOTSUPP) {
      do /* a file system without RWF_NOWAIT */
        got = pread(g->fd, c->fbuf, want, (off_t)(g->foff + pos));
      while (got < 0 && errno == EINTR);
    }
    if (got <= 0) {
      /* The file ended early (it shrank) or cannot be read. */
      c->fbuf_seg = NULL;
      c->fbuf_len = 0;
      if (n > 0)
        return n; /* send what precedes it; the next flush fails it */
      file_failed(c);
      return -2;
    }
    c->fbuf_seg = g;
    c->fbuf_pos = pos;
    c->fbuf_len = (size_t)got;
  }
  size_t off = pos - c->fbuf_pos;
  c->sb->iov[n].iov_base = c->fbuf + off;
  c->sb->iov[n].iov_len = c->fbuf_len - off;
  *total += c->fbuf_len - off;
  *more = c->fbuf_pos + c->fbuf_len == g->len;
  return n + 1;
}

/* An asynchronous read (read_async) completed: its bytes join the next send. */
static void on_read(pmu__conn_t *c, int res) {
  c->ops--;
  c->reading = 0;
  c->send_inflight = 0;
  if (c->closing) {
    pmu__conn_try_release(c);
    return;
  }
  if (res <= 0) {
    c->fbuf_seg = NULL; /* the file ended early (it shrank), or cannot be read */
    file_failed(c);
    return;
  }
  c->fbuf_len = (size_t)res;
  pmu__conn_on_send(c, 0); /* as a send of nothing: the next flush takes the bytes */
}

void pmu__file_sent(pmu__conn_t *c, pmu__seg_t *g, size_t data_bytes, int done) {
  pmu__loop_t *loop = c->loop;
  if (data_bytes && !(g->flags & FSEG_SPLICE))
    STAT_ADD(loop, file_bytes_read, data_bytes);
  if (!done)
    return;
  STAT_ADD(loop, files_sent, 1);
  if (c->fbuf_seg == g) {
    c->fbuf_seg = NULL;
    c->fbuf_len = 0;
    if (c->fbuf_cap > FBUF_KEEP)
      fbuf_drop(c);
  }
}

void pmu__file_on_splice(pmu__conn_t *c, int in, int res) {
  pmu__loop_t *loop = c->loop;
  if (in && c->reading) {
    on_read(c, res);
    return;
  }
  c->ops--;
  if (in)
    c->splice_in_res = res;
  else
    c->splice_out_res = res;
  if (--c->splicing)
    return; /* the other half of the pair is still to come */
  int in_res = c->splice_in ? c->splice_in_res : 0;
  int out_res = c->splice_out_res;
  if (in_res > 0)
    c->pipe_fill += (size_t)in_res;
  if (out_res > 0) {
    c->pipe_fill -= (size_t)out_res;
    STAT_ADD(loop, file_bytes_spliced, out_res);
  }
  if (c->closing) {
    c->send_inflight = 0;
    pmu__conn_try_release(c); /* the pipe goes (closed if not empty) at release */
    return;
  }
  if (c->pipe_fill == 0) {
    pipe_put(loop, c->pipe, 0);
    c->pipe = NULL;
  }
  if (!c->splice_in && c->splice_in_res < 0 && out_res == -ECANCELED) {
    /* The poll for room failed: the socket is gone. */
    pmu__conn_on_send(c, c->splice_in_res);
    return;
  }
  if (c->splice_in && in_res <= 0) {
    /* Nothing came from the file: it ended before its range (it shrank), or failed. The
     * splice out was cancelled with it. */
    c->send_inflight = 0;
    pmu__seg_t *g = c->head ? c->head->seg_head : NULL;
    if (in_res == -EINVAL && g && g->kind == SEG_FILE && data_sent(g) == 0) {
      /* A file the kernel cannot splice from: read it instead. */
      g->flags &= (uint8_t)~FSEG_SPLICE;
      pmu__loop_mark_dirty(loop, c);
      return;
    }
    file_failed(c);
    return;
  }
  if (out_res == -ENODATA) {
    /* The pages in the pipe were truncated away from the file before they left. */
    c->send_inflight = 0;
    file_failed(c); /* the pipe still holds bytes: closed at release, never pooled */
    return;
  }
  if (out_res == -ECANCELED && in_res > 0)
    out_res = 0; /* a short read into the pipe broke the link: its bytes go next */
  if (out_res == -EAGAIN)
    out_res = 0; /* no room in the socket: the next step polls for it first */
  /* As a send's completion: the bytes are accounted, and the next step goes out. */
  pmu__conn_on_send(c, out_res);
}

void pmu__file_conn_released(pmu__conn_t *c) {
  fbuf_drop(c);
  if (c->pipe) {
    pipe_put(c->loop, c->pipe, c->pipe_fill != 0);
    c->pipe = NULL;
    c->pipe_fill = 0;
  }
}

void pmu__file_loop_exit(pmu__loop_t *loop) {
  while (loop->free_pipes) {
    pmu__pipe_t *p = loop->free_pipes;
    loop->free_pipes = p->next;
    pipe_close(p);
  }
  loop->nfree_pipes = 0;
}
