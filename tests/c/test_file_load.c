/*
 * test_file_load: file sending under load and abuse, by the read path and by splice.
 *
 * - 200 connections download 1 MiB each at once: every byte right; afterwards the idle
 *   pipes are at most pipe_pool (the pool is bounded), and no descriptor outlives the
 *   server.
 * - A slow reader (16 KiB receive buffer, 16 KiB every 5 ms) of a 64 MiB file: the
 *   process's resident memory grows by far less than the file (the read path holds
 *   file_read_chunk, splice one pipe), and the whole file arrives right once it reads on.
 * - A client that stops reading mid-file: the send timeout closes the connection.
 * - A file truncated while it is sent: the bytes before the cut, right, then the close
 *   (file_errors, responses_aborted); never padding, never a hang.
 * - 30 clients that stop reading mid-splice hold no kernel (io-wq) thread: the splice into a
 *   full socket ends short and the next one polls for room; each completes once read.
 * - A client that resets mid-splice: the pipe that may still hold its bytes is never
 *   pooled (the next download through the pool is exact).
 * - The read path with the file out of the page cache (POSIX_FADV_DONTNEED): the ring reads
 *   it (file_reads_async), bytes right; a cold file shorter than promised still closes.
 * - Stopping the server waits for a file being sent (graceful stop).
 * - No pipe to be had (RLIMIT_NOFILE lowered until pipe2 fails): the piece goes by the
 *   read path, counted in pipe_fallbacks, bytes right.
 */
#include "testlib.h"

#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "filelib.h"

#define MIB ((uint64_t)1 << 20)

/* ---- many downloads at once, checked as they come ---- */

typedef struct dl {
  int fd;
  uint64_t off, len, got;
  char head[1024];
  size_t head_len;
  bool in_body, done, failed;
} dl_t;

static void many_downloads(t_server_t *s, size_t n, uint64_t len) {
  dl_t *d = calloc(n, sizeof *d);
  struct pollfd *p = calloc(n, sizeof *p);
  T_ASSERT(d && p);
  for (size_t i = 0; i < n; i++) {
    d[i].fd = t_connect_fd(s);
    T_ASSERT_MSG(d[i].fd >= 0, "connect %zu: %s", i, strerror(-d[i].fd));
    d[i].off = (i * 40961) % (f_main_size() - len);
    d[i].len = len;
    char req[128];
    int k = snprintf(req, sizeof req, "GET /f?o=%llu&n=%llu HTTP/1.1\r\nHost: x\r\n\r\n",
                     (unsigned long long)d[i].off, (unsigned long long)len);
    T_ASSERT(send(d[i].fd, req, (size_t)k, MSG_NOSIGNAL) == k);
  }
  size_t left = n;
  int64_t until = t_now_ms() + 60000;
  static char buf[65536];
  while (left && t_now_ms() < until) {
    size_t np = 0;
    for (size_t i = 0; i < n; i++)
      if (!d[i].done) {
        p[np].fd = d[i].fd;
        p[np].events = POLLIN;
        np++;
      }
    if (poll(p, np, 1000) <= 0)
      continue;
    for (size_t j = 0; j < np; j++) {
      if (!(p[j].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      dl_t *x = NULL;
      for (size_t i = 0; i < n; i++)
        if (d[i].fd == p[j].fd)
          x = &d[i];
      ssize_t got = recv(x->fd, buf, sizeof buf, MSG_DONTWAIT);
      if (got <= 0) {
        x->done = x->failed = true;
        left--;
        continue;
      }
      size_t at = 0;
      if (!x->in_body) {
        while (at < (size_t)got && x->head_len < sizeof x->head - 1) {
          x->head[x->head_len++] = buf[at++];
          if (x->head_len >= 4 && memcmp(x->head + x->head_len - 4, "\r\n\r\n", 4) == 0) {
            x->in_body = true;
            break;
          }
        }
        x->head[x->head_len] = 0;
        if (!x->in_body)
          continue;
        char want[64];
        snprintf(want, sizeof want, "Content-Length: %llu\r\n", (unsigned long long)x->len);
        T_ASSERT_MSG(strncmp(x->head, "HTTP/1.1 200", 12) == 0 && strstr(x->head, want), "head: %s",
                     x->head);
      }
      for (; at < (size_t)got; at++, x->got++)
        T_ASSERT_MSG(x->got < x->len && (uint8_t)buf[at] == f_byte(0, x->off + x->got),
                     "download %zu: byte %llu wrong or beyond the length", (size_t)(x - d),
                     (unsigned long long)x->got);
      if (x->got == x->len) {
        x->done = true;
        left--;
      }
    }
  }
  size_t failed = 0;
  for (size_t i = 0; i < n; i++) {
    if (!d[i].done || d[i].failed)
      failed++;
    close(d[i].fd);
  }
  T_ASSERT_MSG(failed == 0, "%zu of %zu downloads incomplete", failed, n);
  free(d);
  free(p);
}

static void wait_no_conns(t_server_t *s) {
  T_WAIT_UNTIL(t_stats(s, -1).connections_open == 0, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_stats(s, -1).connections_open, 0);
}

static void run_many(const pmu_config_t *base) {
  t_case("200 connections download 1 MiB each at once; the pipe pool stays bounded");
  int fds_before = t_count_fds();
  pmu_config_t cfg = *base;
  cfg.pipe_pool = 4;
  t_server_t *s = f_server_start(&cfg);
  int fds_running = t_count_fds();
  many_downloads(s, 200, MIB);
  wait_no_conns(s);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT(st.files_sent >= 200);
  if (base->file_splice_min == 0)
    T_ASSERT(st.file_bytes_spliced >= 200 * MIB);
  else
    T_ASSERT(st.file_bytes_read >= 200 * MIB);
  T_ASSERT_INT_EQ(st.file_errors, 0);
  /* Idle pipes: two descriptors each, at most pipe_pool of them. */
  T_ASSERT_MSG(t_count_fds() <= fds_running + 2 * (int)cfg.pipe_pool,
               "%d descriptors, %d before the downloads", t_count_fds(), fds_running);
  t_server_destroy(s);
  T_ASSERT_INT_EQ(f_releases_pending(), 0);
  T_ASSERT_INT_EQ(t_count_fds(), fds_before);
}

/* A client with a 16 KiB receive buffer. Set before connecting: shrunk after the
 * handshake, Linux may leave the window closed for seconds once the client reads again. */
static t_conn_t *connect_small(const t_server_t *s) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int small = 16384;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(s->port)};
  a.sin_addr.s_addr = htonl(0x7f000001);
  T_ASSERT(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  return t_conn_wrap(fd);
}

static void run_slow_reader(const pmu_config_t *base) {
  t_case("a slow reader of 64 MiB: memory stays bounded, then every byte arrives");
  t_server_t *s = f_server_start(base);
  t_conn_t *c = connect_small(s);
  uint64_t len = 64 * MIB;
  long rss0 = f_rss_kib();
  t_send_str(c, "GET /f?o=0&n=67108864&file=3 HTTP/1.1\r\nHost: x\r\n\r\n");
  f_expect_head(c, len);
  uint64_t got = 0;
  long rss_max = rss0;
  int64_t until = t_now_ms() + 1500;
  while (t_now_ms() < until) {
    uint64_t n = f_read_body(c, 3, got, 16384, T_IO_TIMEOUT_MS);
    T_ASSERT_INT_EQ(n, 16384);
    got += n;
    long rss = f_rss_kib();
    if (rss > rss_max)
      rss_max = rss;
    t_sleep_ms(5);
  }
  T_ASSERT(got < len / 4); /* it was slow: most of the file was still to come */
  T_ASSERT_MSG(rss_max - rss0 < 16 * 1024, "resident memory grew by %ld KiB reading %llu KiB",
               rss_max - rss0, (unsigned long long)(got >> 10));
  uint64_t rest = f_read_body(c, 3, got, len - got, 60000);
  T_ASSERT_INT_EQ(got + rest, len);
  t_conn_close(c);
  t_server_destroy(s);
}

/* Kernel worker threads (io-wq) of this process. */
static int iowq_threads(void) {
  DIR *d = opendir("/proc/self/task");
  T_ASSERT(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    char path[300], comm[64] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (f) {
      if (!fgets(comm, sizeof comm, f))
        comm[0] = 0;
      fclose(f);
    }
    n += strncmp(comm, "iou-wrk", 7) == 0;
  }
  closedir(d);
  return n;
}

static void run_stalled_readers(const pmu_config_t *base) {
  t_case("clients that stop reading mid-splice hold no kernel worker thread");
  t_server_t *s = f_server_start(base);
  enum { N = 30 };
  t_conn_t *c[N];
  for (int i = 0; i < N; i++) {
    c[i] = connect_small(s);
    t_send_str(c[i], "GET /f?o=0&n=67108864&file=3 HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  T_WAIT_UNTIL(t_stats(s, -1).file_bytes_spliced >= N * 65536, T_EVENT_MS);
  /* A splice that waited for room would keep its worker; idle ones leave after 5 s. */
  T_WAIT_UNTIL(iowq_threads() <= 2, 15000);
  T_ASSERT_MSG(iowq_threads() <= 2, "%d io-wq threads for %d stalled downloads", iowq_threads(), N);
  /* Each still completes once its client reads. */
  for (int i = 0; i < 3; i++) {
    f_expect_head(c[i], 64 * MIB);
    T_ASSERT_INT_EQ(f_read_body(c[i], 3, 0, 64 * MIB, 60000), 64 * MIB);
  }
  for (int i = 0; i < N; i++)
    t_conn_close(c[i]);
  t_server_destroy(s);
  T_ASSERT_INT_EQ(f_releases_pending(), 0);
}

static void run_send_timeout(const pmu_config_t *base) {
  t_case("a client that stops reading mid-file: the send timeout closes it");
  pmu_config_t cfg = *base;
  cfg.send_timeout_ms = 300;
  t_server_t *s = f_server_start(&cfg);
  t_conn_t *c = connect_small(s);
  t_send_str(c, "GET /f?o=0&n=67108864&file=3 HTTP/1.1\r\nHost: x\r\n\r\n");
  T_WAIT_UNTIL(t_stats(s, -1).timeouts >= 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_stats(s, -1).timeouts, 1);
  wait_no_conns(s);
  T_ASSERT(t_wait_closed(c, T_EVENT_MS)); /* what it had, then the end */
  t_conn_close(c);
  T_ASSERT_INT_EQ(f_releases_pending(), 0);
  t_server_destroy(s);
}

static void run_reset_mid_splice(const pmu_config_t *base) {
  t_case("a reset mid-file never leaves a dirty pipe in the pool");
  pmu_config_t cfg = *base;
  cfg.pipe_pool = 1;
  t_server_t *s = f_server_start(&cfg);
  for (int round = 0; round < 5; round++) {
    t_conn_t *a = t_connect(s);
    t_send_str(a, "GET /f?o=0&n=8388608&file=3 HTTP/1.1\r\nHost: x\r\n\r\n");
    f_expect_head(a, 8 * MIB);
    T_ASSERT_INT_EQ(f_read_body(a, 3, 0, 100000, T_IO_TIMEOUT_MS), 100000);
    t_conn_abort(a);
    wait_no_conns(s);
    t_conn_t *b = t_connect(s);
    char req[128];
    snprintf(req, sizeof req, "GET /f?o=%d&n=3000000 HTTP/1.1\r\nHost: x\r\n\r\n", 1 + round);
    t_send_str(b, req);
    f_expect_file_response(b, 0, (uint64_t)(1 + round), 3000000);
    t_conn_close(b);
  }
  t_server_destroy(s);
  T_ASSERT_INT_EQ(f_releases_pending(), 0);
}

static void run_graceful_stop(const pmu_config_t *base) {
  t_case("stopping waits for a file being sent");
  t_server_t *s = f_server_start(base);
  t_conn_t *c = t_connect(s);
  t_send_str(c, "GET /f?o=0&n=33554432&file=3 HTTP/1.1\r\nHost: x\r\n\r\n");
  f_expect_head(c, 32 * MIB);
  T_ASSERT_INT_EQ(f_read_body(c, 3, 0, MIB, T_IO_TIMEOUT_MS), MIB);
  pmu_server_stop(s->pmu);
  T_ASSERT_INT_EQ(f_read_body(c, 3, MIB, 31 * MIB, T_EVENT_MS), 31 * MIB);
  T_ASSERT(t_wait_closed(c, T_EVENT_MS));
  T_ASSERT_INT_EQ(c->len, 0);
  T_ASSERT_INT_EQ(pmu_server_wait(s->pmu, T_EVENT_MS), 0);
  t_conn_close(c);
  t_server_destroy(s);
}

static void run_truncated_mid_send(const pmu_config_t *base) {
  t_case("a file cut short while it is sent: right bytes, then the close; counted");
  t_server_t *s = f_server_start(base);
  uint64_t len = 16 * MIB;
  f_trunc_create(len);
  t_conn_t *c = connect_small(s);
  t_send_str(c, "GET /f?o=0&n=16777216&file=4 HTTP/1.1\r\nHost: x\r\n\r\n");
  f_expect_head(c, len);
  T_ASSERT_INT_EQ(f_read_body(c, 4, 0, MIB, T_IO_TIMEOUT_MS), MIB);
  /* The server is at most a pipe or a read chunk (plus the socket buffers) ahead. */
  T_ASSERT(truncate(f_path(4), (off_t)(2 * MIB)) == 0);
  uint64_t got = MIB + f_read_body(c, 4, MIB, len - MIB, T_EVENT_MS);
  T_ASSERT_MSG(got < len, "all %llu bytes came from a file cut to 2 MiB", (unsigned long long)got);
  T_ASSERT_INT_EQ(c->len, 0); /* the read stopped at the end, not at a wrong byte */
  T_ASSERT(c->eof || c->error);
  T_WAIT_UNTIL(t_stats(s, -1).file_errors == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_stats(s, -1).file_errors, 1);
  T_ASSERT_INT_EQ(t_stats(s, -1).responses_aborted, 1);
  t_conn_close(c);
  t_server_destroy(s);
  T_ASSERT_INT_EQ(f_releases_pending(), 0);
}

/* Drop file 3 from the page cache; true if a non-blocking read then says it is not there
 * (false on file systems that keep files in memory, such as tmpfs). The read that asks
 * is at the file's end, far from the bytes run_cold_reads requests: a RWF_NOWAIT read
 * may start readahead around its offset, and a readahead still in flight survives the
 * second DONTNEED (at offset 0 it made the first request warm now and then on a busy
 * machine: "3 ring reads for 4 cold files"). */
static bool evict_big(void) {
  int fd = open(f_path(3), O_RDONLY | O_CLOEXEC);
  T_ASSERT(fd >= 0);
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  char b[512];
  struct iovec iov = {b, sizeof b};
  off_t end = lseek(fd, 0, SEEK_END);
  T_ASSERT(end >= 8 * 1000003);
  bool evicted = preadv2(fd, &iov, 1, end - (off_t)sizeof b, RWF_NOWAIT) < 0 && errno == EAGAIN;
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  return evicted;
}

static void run_cold_reads(const pmu_config_t *base) {
  t_case("bytes not in the page cache are read by the ring, not on its thread");
  t_server_t *s = f_server_start(base);
  t_conn_t *c = t_connect(s);
  int cold = 0;
  for (int k = 0; k < 4; k++) {
    cold += evict_big();
    char req[128];
    snprintf(req, sizeof req, "GET /f?o=%d&n=300000&file=3 HTTP/1.1\r\nHost: x\r\n\r\n",
             k * 1000003);
    t_send_str(c, req);
    f_expect_file_response(c, 3, (uint64_t)k * 1000003, 300000);
  }
  pmu_stats_t st = t_stats(s, -1);
  if (cold)
    T_ASSERT_MSG(st.file_reads_async >= (uint64_t)cold, "%llu ring reads for %d cold files",
                 (unsigned long long)st.file_reads_async, cold);
  else
    fprintf(stderr, "# the file system keeps files in memory: no cold read to make\n");
  /* A cold file that is also shorter than promised: its bytes, then the close. */
  f_trunc_create(200000);
  int fd = open(f_path(4), O_RDONLY | O_CLOEXEC);
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  t_send_str(c, "GET /f?o=1000&n=500000&file=4 HTTP/1.1\r\nHost: x\r\n\r\n");
  f_expect_short_response(c, 4, 1000, 500000, 200000);
  t_conn_close(c);
  t_server_destroy(s);
  T_ASSERT_INT_EQ(f_releases_pending(), 0);
}

/* The highest open descriptor of this process. */
static int max_fd(void) {
  int m = -1;
  for (int fd = 0; fd < 65536; fd++)
    if (fcntl(fd, F_GETFD) >= 0)
      m = fd;
  return m;
}

static void run_no_pipe(void) {
  t_case("no pipe to be had (descriptors exhausted): the read path serves, counted");
  pmu_config_t cfg;
  t_config_init(&cfg);
  cfg.file_splice_min = 0; /* every piece would splice */
  cfg.pipe_pool = 0;       /* no idle pipe kept: each send needs a new one */
  t_server_t *s = f_server_start(&cfg);
  t_conn_t *c = t_connect(s);
  /* A round trip first: the server has accepted it (its descriptor is taken) before any
   * descriptor runs out. */
  t_send_str(c, "GET /warm HTTP/1.1\r\nHost: x\r\n\r\n");
  t_response_t warm;
  t_expect_response(c, &warm);
  T_ASSERT_INT_EQ(warm.status, 200);
  t_response_free(&warm);
  f_preopen(3);
  struct rlimit old;
  T_ASSERT(getrlimit(RLIMIT_NOFILE, &old) == 0);
  struct rlimit low = old;
  low.rlim_cur = (rlim_t)max_fd() + 1;
  T_ASSERT(setrlimit(RLIMIT_NOFILE, &low) == 0);
  /* Fill the holes below the limit: now no descriptor can be had at all. */
  int fillers[256], nf = 0;
  for (int fd; nf < 256 && (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;)
    fillers[nf++] = fd;
  int pfd[2];
  T_ASSERT(pipe(pfd) < 0 && errno == EMFILE);
  for (int k = 0; k < 3; k++) {
    char req[128];
    snprintf(req, sizeof req, "GET /pre?o=%d&n=300000 HTTP/1.1\r\nHost: x\r\n\r\n", 7 * k);
    t_send_str(c, req);
    f_expect_file_response(c, 0, (uint64_t)(7 * k), 300000);
    /* Its release closed a descriptor: take it again. */
    T_WAIT_UNTIL(f_releases_pending() == 0, T_EVENT_MS);
    for (int fd; nf < 256 && (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;)
      fillers[nf++] = fd;
  }
  while (nf)
    close(fillers[--nf]);
  T_ASSERT(setrlimit(RLIMIT_NOFILE, &old) == 0);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT_INT_EQ(st.pipe_fallbacks, 3);
  T_ASSERT_INT_EQ(st.file_bytes_spliced, 0);
  T_ASSERT_INT_EQ(st.file_bytes_read, 900000);
  /* With descriptors back, the next piece is spliced again. */
  t_send_str(c, "GET /f?o=0&n=300000 HTTP/1.1\r\nHost: x\r\n\r\n");
  f_expect_file_response(c, 0, 0, 300000);
  T_WAIT_UNTIL(t_stats(s, -1).file_bytes_spliced == 300000, T_EVENT_MS); /* counted at the
    splice's completion, which the client may beat */
  T_ASSERT_INT_EQ(t_stats(s, -1).file_bytes_spliced, 300000);
  t_conn_close(c);
  t_server_destroy(s);
}

int main(void) {
  t_init("test_file_load");
  T_ASSERT(t_raise_nofile(4096));
  f_files_create();
  f_big_create();
  const size_t mins[2] = {SIZE_MAX, 0};
  for (int m = 0; m < 2; m++) {
    fprintf(stderr, "# mode: %s\n", m ? "splice" : "read");
    pmu_config_t cfg;
    t_config_init(&cfg);
    cfg.file_splice_min = mins[m];
    run_many(&cfg);
    run_slow_reader(&cfg);
    run_send_timeout(&cfg);
    run_truncated_mid_send(&cfg);
    if (!m)
      run_cold_reads(&cfg);
    if (m) {
      run_reset_mid_splice(&cfg);
      run_stalled_readers(&cfg);
    }
    run_graceful_stop(&cfg);
  }
  run_no_pipe();
  f_files_remove();
  return t_done();
}
