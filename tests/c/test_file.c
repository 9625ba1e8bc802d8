/*
 * test_file: file pieces in the output queue (pmu_respond_write_file, pmu_respond_file),
 * over real sockets, by each way a piece leaves: read into memory (file_splice_min =
 * SIZE_MAX), splice through a pipe (file_splice_min = 0), the default split (also with
 * SEND_ZC for the memory around), and with the connections in the ring's fixed-file table
 * and under SQPOLL.
 *
 * What each case proves: the bytes of any range (offset unaligned, 1 byte to MiBs, a
 * 2 GiB sparse file's tail) arrive exact; a file answer between memory answers of
 * pipelined requests keeps their order; a file piece between memory pieces of one
 * streamed answer, chunked or with a Content-Length, frames right; HEAD, 204 and 304 drop
 * the piece and release its fd at once; a file shorter than promised closes the
 * connection after its real bytes (counted in file_errors and responses_aborted), never
 * padded or hung; no descriptor (file or pipe) outlives the server.
 */
#include "testlib.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "filelib.h"

static const char *mode_name;

static void check_range(t_conn_t *c, uint64_t off, uint64_t len, const char *extra_req) {
  char req[256];
  snprintf(req, sizeof req, "GET /f?o=%llu&n=%llu HTTP/1.1\r\nHost: x\r\n%s\r\n",
           (unsigned long long)off, (unsigned long long)len, extra_req ? extra_req : "");
  t_send_str(c, req);
  f_expect_file_response(c, 0, off, len);
}

static void run_basic(const pmu_config_t *base) {
  int fds_before = t_count_fds();
  t_server_t *s = f_server_start(base);
  uint64_t size = f_main_size();

  t_case("ranges arrive exact on one keep-alive connection");
  t_conn_t *c = t_connect(s);
  const uint64_t cases[][2] = {
      {0, 1},          {0, 100},        {1, 4095}, {4095, 2},     {0, 65535},      {0, 65536},
      {3, 65536 + 17}, {12345, 300000}, {0, size}, {size - 1, 1}, {4097, 1 << 20}, {777, 3 << 20},
  };
  for (size_t i = 0; i < T_COUNT(cases); i++)
    check_range(c, cases[i][0], cases[i][1], NULL);
  t_conn_close(c);

  t_case("a zero-length range is an empty body");
  c = t_connect(s);
  t_send_str(c, "GET /f?o=10&n=0 HTTP/1.1\r\nHost: x\r\n\r\n");
  f_expect_file_response(c, 0, 10, 0);
  t_conn_close(c);

  t_case("pipelined: memory, file, memory, file, memory answers in order");
  c = t_connect(s);
  t_send_str(c, "GET /m1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /f?o=5&n=200000 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /m2 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /f?o=99&n=1000 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /m3 HTTP/1.1\r\nHost: x\r\n\r\n");
  t_response_t r;
  t_expect_response(c, &r);
  T_ASSERT_FIELD(&r, "path", "/m1");
  t_response_free(&r);
  f_expect_file_response(c, 0, 5, 200000);
  t_expect_response(c, &r);
  T_ASSERT_FIELD(&r, "path", "/m2");
  t_response_free(&r);
  f_expect_file_response(c, 0, 99, 1000);
  t_expect_response(c, &r);
  T_ASSERT_FIELD(&r, "path", "/m3");
  t_response_free(&r);
  t_conn_close(c);

  t_case("a file piece between memory pieces, Content-Length and chunked");
  c = t_connect(s);
  for (int chunked = 0; chunked <= 1; chunked++) {
    for (int k = 0; k < 3; k++) {
      uint64_t off = k == 0 ? 0 : k == 1 ? 4093 : 1000000;
      uint64_t len = k == 0 ? 10 : k == 1 ? 70000 : 2000000;
      char req[160];
      snprintf(req, sizeof req, "GET /mix?o=%llu&n=%llu&chunked=%d HTTP/1.1\r\nHost: x\r\n\r\n",
               (unsigned long long)off, (unsigned long long)len, chunked);
      t_send_str(c, req);
      f_expect_mix_response(c, off, len, chunked);
    }
  }
  /* And the connection still serves a plain answer after them. */
  t_send_str(c, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
  t_expect_response(c, &r);
  T_ASSERT_FIELD(&r, "path", "/after");
  t_response_free(&r);
  t_conn_close(c);

  t_case("HEAD, 204 and 304 drop the piece and release the fd at once");
  c = t_connect(s);
  unsigned long rel = f_releases();
  t_send_str(c, "HEAD /f?o=0&n=5000 HTTP/1.1\r\nHost: x\r\n\r\n");
  t_expect_head_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(t_header(&r, "Content-Length"), "5000");
  t_response_free(&r);
  T_ASSERT_INT_EQ(f_releases(), rel + 1);
  t_send_str(c, "GET /f?o=0&n=5000&st=204 HTTP/1.1\r\nHost: x\r\n\r\n");
  t_expect_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 204);
  T_ASSERT_INT_EQ(r.body_len, 0);
  T_ASSERT(t_header(&r, "Content-Length") == NULL);
  t_response_free(&r);
  t_send_str(c, "GET /f?o=0&n=5000&st=304 HTTP/1.1\r\nHost: x\r\n\r\n");
  t_expect_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 304);
  T_ASSERT_INT_EQ(r.body_len, 0);
  t_response_free(&r);
  T_ASSERT_INT_EQ(f_releases(), rel + 3);
  check_range(c, 1, 10, NULL); /* the connection is still in step */
  t_conn_close(c);

  t_case("a 2 GiB sparse file: the range at 2 GiB - 100");
  c = t_connect(s);
  uint64_t big = f_sparse_size();
  char req[160];
  snprintf(req, sizeof req, "GET /f?o=%llu&n=100&file=1 HTTP/1.1\r\nHost: x\r\n\r\n",
           (unsigned long long)(big - 100));
  t_send_str(c, req);
  f_expect_file_response(c, 1, big - 100, 100);
  /* A range across the hole's end: zeros, then the written tail. */
  snprintf(req, sizeof req, "GET /f?o=%llu&n=300000&file=1 HTTP/1.1\r\nHost: x\r\n\r\n",
           (unsigned long long)(big - 300000));
  t_send_str(c, req);
  f_expect_file_response(c, 1, big - 300000, 300000);
  t_conn_close(c);

  t_case("a file shorter than promised: its bytes, then the close; counted");
  pmu_stats_t st0 = t_stats(s, -1);
  for (int k = 0; k < 2; k++) {
    c = t_connect(s);
    /* file=2 is 100000 bytes long: ask for more than it has. */
    uint64_t off = k ? 0 : 99000, len = k ? 400000 : 5000;
    snprintf(req, sizeof req, "GET /f?o=%llu&n=%llu&file=2 HTTP/1.1\r\nHost: x\r\n\r\n",
             (unsigned long long)off, (unsigned long long)len);
    t_send_str(c, req);
    f_expect_short_response(c, 2, off, len, f_short_size());
    t_conn_close(c);
  }
  pmu_stats_t st1 = t_stats(s, -1);
  T_ASSERT_INT_EQ(st1.file_errors - st0.file_errors, 2);
  T_ASSERT_INT_EQ(st1.responses_aborted - st0.responses_aborted, 2);

  t_case("counters: pieces sent, bytes by the way they left");
  /* Counted as the last send completes, which the client may beat. */
  T_WAIT_UNTIL(t_stats(s, -1).files_sent >= T_COUNT(cases) + 11, T_EVENT_MS);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT(st.files_sent >= T_COUNT(cases) + 11);
  if (base->file_splice_min == SIZE_MAX) {
    T_ASSERT_INT_EQ(st.file_bytes_spliced, 0);
    T_ASSERT(st.file_bytes_read > (3u << 20));
  } else if (base->file_splice_min == 0) {
    T_ASSERT(st.file_bytes_spliced > (3u << 20));
    T_ASSERT_INT_EQ(st.file_bytes_read, 0);
  } else {
    T_ASSERT(st.file_bytes_spliced > 0 && st.file_bytes_read > 0);
  }
  T_ASSERT_INT_EQ(st.pipe_fallbacks, 0);

  t_server_destroy(s);
  t_case("no descriptor outlives the server (files and pipes)");
  T_ASSERT_INT_EQ(f_releases_pending(), 0);
  T_ASSERT_INT_EQ(t_count_fds(), fds_before);
}

int main(void) {
  t_init("test_file");
  f_files_create();
  struct {
    const char *name;
    size_t splice_min;
    int ring_mode; /* t_ring_modes */
    size_t zc;     /* send_zc_threshold */
  } modes[] = {
      {"read", SIZE_MAX, 0, 0},
      {"splice", 0, 0, 0},
      {"default split", 64 * 1024, 0, 0},
      {"default split, SEND_ZC for memory", 64 * 1024, 0, 1},
      {"splice, registered files", 0, 3, 0},
      {"read, registered files", SIZE_MAX, 3, 0},
      {"splice, SQPOLL", 0, 2, 0},
  };
  for (size_t i = 0; i < T_COUNT(modes); i++) {
    mode_name = modes[i].name;
    fprintf(stderr, "# mode: %s\n", mode_name);
    pmu_config_t cfg;
    t_config_ring_mode(&cfg, &t_ring_modes[modes[i].ring_mode]);
    cfg.file_splice_min = modes[i].splice_min;
    cfg.send_zc_threshold = modes[i].zc;
    run_basic(&cfg);
  }
  f_files_remove();
  return t_done();
}
