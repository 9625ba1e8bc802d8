/*
 * test_static_cache: the open-file cache of the ring threads (hits and
 * misses counted, an entry trusted for file_cache_valid_ms, a file replaced
 * or rewritten in place seen with its new bytes and ETag after that, LRU
 * eviction at file_cache_entries, a deleted file gone, every fd closed at
 * stop), and pmu_serve_file / pmu_serve_static called by a handler, on the
 * ring thread and from another thread (by path, by fd the engine then owns,
 * with a fixed status, a mount not given at start).
 */
#include "testlib.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char base[256], root[300];

static void put_file(const char *rel, const char *content) {
  char path[600], tmp[620];
  snprintf(path, sizeof path, "%s/%s", root, rel);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  t_write_file(tmp, content, strlen(content));
  T_ASSERT(rename(tmp, path) == 0); /* a new inode, as deployments replace files */
}

static void rewrite_in_place(const char *rel, const char *content) {
  char path[600];
  snprintf(path, sizeof path, "%s/%s", root, rel);
  int fd = open(path, O_WRONLY | O_TRUNC);
  T_ASSERT(fd >= 0);
  T_ASSERT_INT_EQ(write(fd, content, strlen(content)), (long long)strlen(content));
  close(fd);
}

static pmu_static_t mount_started, mount_other;

static void *serve_off_thread(void *arg) {
  pmu_request_t *q = arg;
  char path[600];
  snprintf(path, sizeof path, "%s/a.txt", root);
  pmu_serve_file(q, path, -1, NULL);
  return NULL;
}

/* /sf/NAME: pmu_serve_file(root/NAME); /sfd/NAME: by fd; /sfs/NAME: status 201
 * and a given type; /sft: from another thread; /ss/...: pmu_serve_static with a
 * mount not given at start; /sst/...: with the started mount (rel given). */
static void handler(void *data, pmu_request_t *const *reqs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    pmu_request_t *q = reqs[i];
    char path[600];
    if (q->path_len > 4 && memcmp(q->path, "/sf/", 4) == 0) {
      snprintf(path, sizeof path, "%s/%.*s", root, (int)q->path_len - 4, q->path + 4);
      pmu_serve_file(q, path, -1, NULL);
    } else if (q->path_len > 5 && memcmp(q->path, "/sfd/", 5) == 0) {
      snprintf(path, sizeof path, "%s/%.*s", root, (int)q->path_len - 5, q->path + 5);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      pmu_file_opts_t o = {.cache_control = "no-cache"};
      if (fd < 0)
        pmu_respond_simple(q, 500, NULL, 0, "open", 4);
      else
        pmu_serve_file(q, NULL, fd, &o);
    } else if (q->path_len > 5 && memcmp(q->path, "/sfs/", 5) == 0) {
      snprintf(path, sizeof path, "%s/%.*s", root, (int)q->path_len - 5, q->path + 5);
      static const pmu_header_t h[] = {{"X-Extra", 7, "1", 1}};
      pmu_file_opts_t o = {
          .content_type = "application/x-custom", .status = 201, .headers = h, .header_count = 1};
      pmu_serve_file(q, path, -1, &o);
    } else if (q->path_len == 4 && memcmp(q->path, "/sft", 4) == 0) {
      pthread_t t;
      T_ASSERT(pthread_create(&t, NULL, serve_off_thread, q) == 0);
      pthread_detach(t);
    } else if (q->path_len >= 4 && memcmp(q->path, "/ss/", 4) == 0) {
      int rc = pmu_serve_static(q, &mount_other, NULL, 0);
      if (rc == -ENOENT)
        pmu_respond_simple(q, 299, NULL, 0, "fell through", 12);
    } else if (q->path_len >= 5 && memcmp(q->path, "/sst/", 5) == 0) {
      pmu_serve_static(q, &mount_started, q->path + 5, q->path_len - 5);
    } else {
      t_handle_request(data, q);
    }
  }
}

/* Many connections: each asks for the big file, a range of it, and the small one,
 * pipelined; every body is checked. */
static char *big_pattern;
static const size_t BIG = 300000;

static const char *many_request(size_t index, size_t *len, void *arg) {
  (void)index;
  (void)arg;
  static const char req[] = "GET /static/big.bin HTTP/1.1\r\nHost: m\r\n\r\n"
                            "GET /static/big.bin HTTP/1.1\r\nHost: m\r\nRange: bytes=100000-"
                            "199999\r\n\r\n"
                            "GET /static/b.txt HTTP/1.1\r\nHost: m\r\n\r\n";
  *len = sizeof req - 1;
  return req;
}

static atomic_int many_bad, many_seen;

static void many_check(size_t index, size_t nth, const t_response_t *r, void *arg) {
  (void)index;
  (void)arg;
  atomic_fetch_add(&many_seen, 1);
  int ok = nth == 0
               ? r->status == 200 && r->body_len == BIG && memcmp(r->body, big_pattern, BIG) == 0
           : nth == 1 ? r->status == 206 && r->body_len == 100000 &&
                            memcmp(r->body, big_pattern + 100000, 100000) == 0
                      : r->status == 200 && strcmp(r->body, "bbbb") == 0;
  if (!ok)
    atomic_fetch_add(&many_bad, 1);
}

static t_response_t get(const t_server_t *server, const char *target, const char *headers) {
  char req[1024];
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: c\r\n%s\r\n", target, headers ? headers : "");
  t_conn_t *c = t_connect(server);
  t_send_str(c, req);
  t_response_t r;
  t_expect_response(c, &r);
  t_conn_close(c);
  return r;
}

static void expect_body(const t_server_t *server, const char *target, int status,
                        const char *body) {
  t_response_t r = get(server, target, NULL);
  T_ASSERT_MSG(r.status == status && strcmp(r.body, body) == 0,
               "GET %s: %d \"%s\", expected %d \"%s\"", target, r.status, r.body, status, body);
  t_response_free(&r);
}

int main(void) {
  t_init("static_cache");
  snprintf(base, sizeof base, "/tmp/files-static-cache-%d", (int)getpid());
  snprintf(root, sizeof root, "%s/root", base);
  T_ASSERT(mkdir(base, 0755) == 0 && mkdir(root, 0755) == 0);
  put_file("a.txt", "aaaa");
  put_file("b.txt", "bbbb");
  put_file("c.txt", "cccc");
  put_file("d.txt", "dddd");
  put_file("n.js", "console.log(2)\n");
  char sub[600];
  snprintf(sub, sizeof sub, "%s/dir", root);
  T_ASSERT(mkdir(sub, 0755) == 0);

  int fds_before = t_count_fds();
  pmu_static_init(&mount_started);
  mount_started.prefix = "/static";
  mount_started.root = root;
  mount_started.precompressed = 0;
  pmu_static_init(&mount_other);
  mount_other.prefix = "/ss";
  mount_other.root = root;
  mount_other.fallthrough = 1;
  mount_other.cache_control = "max-age=5";
  pmu_static_t mounts[2] = {mount_started, mount_started};
  mounts[1].prefix = "/pc";
  mounts[1].precompressed = 1;
  mounts[1].cache_control = "pc"; /* not equal to /static's: pmu_serve_static tells them apart */
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  config.statics = mounts;
  config.static_count = 2;
  config.file_cache_entries = 2;
  config.file_cache_valid_ms = 300;
  config.max_ranges = 1u << 30; /* room for ranges follows the header, not this */
  t_server_t *server = t_server_start(&config);

  t_case("a second answer within file_cache_valid_ms comes from the cache");
  pmu_stats_t s0 = t_stats(server, -1);
  expect_body(server, "/static/a.txt", 200, "aaaa");
  expect_body(server, "/static/a.txt", 200, "aaaa");
  pmu_stats_t s1 = t_stats(server, -1);
  T_ASSERT_INT_EQ(s1.file_cache_misses - s0.file_cache_misses, 1);
  T_ASSERT_INT_EQ(s1.file_cache_hits - s0.file_cache_hits, 1);
  T_ASSERT_MSG(t_count_fds() > fds_before + 1, "the cache holds no fd");

  t_case("a replaced file: its new bytes and ETag once the entry expires");
  t_response_t r = get(server, "/static/a.txt", NULL);
  char etag1[128];
  snprintf(etag1, sizeof etag1, "%s", t_header(&r, "ETag"));
  t_response_free(&r);
  put_file("a.txt", "new contents of a");
  t_sleep_ms(350);
  r = get(server, "/static/a.txt", NULL);
  T_ASSERT_STR_EQ(r.body, "new contents of a");
  T_ASSERT_MSG(strcmp(etag1, t_header(&r, "ETag")) != 0, "same ETag after a change");
  char etag2[128];
  snprintf(etag2, sizeof etag2, "%s", t_header(&r, "ETag"));
  t_response_free(&r);

  t_case("a file rewritten in place (same inode): new bytes and ETag after the interval");
  rewrite_in_place("a.txt", "rewritten");
  t_sleep_ms(350);
  r = get(server, "/static/a.txt", NULL);
  T_ASSERT_STR_EQ(r.body, "rewritten");
  T_ASSERT_MSG(strcmp(etag2, t_header(&r, "ETag")) != 0, "same ETag after a rewrite");
  t_response_free(&r);

  t_case("an unchanged file rechecked after the interval stays cached (a hit, same ETag)");
  r = get(server, "/static/a.txt", NULL);
  char etag3[128];
  snprintf(etag3, sizeof etag3, "%s", t_header(&r, "ETag"));
  t_response_free(&r);
  t_sleep_ms(350);
  s0 = t_stats(server, -1);
  r = get(server, "/static/a.txt", NULL);
  T_ASSERT_STR_EQ(t_header(&r, "ETag"), etag3);
  t_response_free(&r);
  r = get(server, "/static/a.txt", NULL);
  t_response_free(&r);
  s1 = t_stats(server, -1);
  T_ASSERT_INT_EQ(s1.file_cache_hits - s0.file_cache_hits, 1);

  t_case("LRU: a third file evicts the least recently used of two");
  expect_body(server, "/static/b.txt", 200, "bbbb");
  expect_body(server, "/static/c.txt", 200, "cccc"); /* evicts a.txt */
  s0 = t_stats(server, -1);
  expect_body(server, "/static/c.txt", 200, "cccc");      /* hit */
  expect_body(server, "/static/a.txt", 200, "rewritten"); /* miss: evicted */
  s1 = t_stats(server, -1);
  T_ASSERT_INT_EQ(s1.file_cache_hits - s0.file_cache_hits, 1);
  T_ASSERT_INT_EQ(s1.file_cache_misses - s0.file_cache_misses, 1);

  t_case("a deleted file is 404 once its entry expires");
  char path[600];
  snprintf(path, sizeof path, "%s/c.txt", root);
  expect_body(server, "/static/c.txt", 200, "cccc");
  T_ASSERT(unlink(path) == 0);
  t_sleep_ms(350);
  r = get(server, "/static/c.txt", NULL);
  T_ASSERT_INT_EQ(r.status, 404);
  t_response_free(&r);

  t_case("a file replaced while a slow client downloads it: that client gets the old file whole");
  {
    size_t n = 32u << 20; /* beyond what the socket buffers hold */
    char *old_bytes = malloc(n), *new_bytes = malloc(n);
    T_ASSERT(old_bytes && new_bytes);
    memset(old_bytes, 'o', n);
    memset(new_bytes, 'N', n);
    char fp[600], tmp[620];
    snprintf(fp, sizeof fp, "%s/dl.bin", root);
    snprintf(tmp, sizeof tmp, "%s.tmp", fp);
    t_write_file(fp, old_bytes, n);
    t_conn_t *slow = t_connect(server);
    t_send_str(slow, "GET /static/dl.bin HTTP/1.1\r\nHost: c\r\n\r\n");
    T_ASSERT(t_recv_some(slow, T_IO_TIMEOUT_MS) > 0); /* begun, far from done */
    t_write_file(tmp, new_bytes, n);
    T_ASSERT(rename(tmp, fp) == 0);
    t_sleep_ms(350);
    r = get(server, "/static/dl.bin", NULL);
    T_ASSERT_INT_EQ(r.body_len, n);
    T_ASSERT(memcmp(r.body, new_bytes, n) == 0);
    t_response_free(&r);
    t_expect_response(slow, &r);
    T_ASSERT_INT_EQ(r.body_len, n);
    T_ASSERT_MSG(memcmp(r.body, old_bytes, n) == 0, "the slow download mixed in the new file");
    t_response_free(&r);
    t_conn_close(slow);
    free(old_bytes);
    free(new_bytes);
    T_ASSERT(unlink(fp) == 0);
  }

  t_case("a missing sibling is remembered (no open per request), then found once made");
  r = get(server, "/pc/n.js", "Accept-Encoding: gzip\r\n"); /* looks for n.js.gz once */
  T_ASSERT_STR_EQ(r.body, "console.log(2)\n");
  t_response_free(&r);
  s0 = t_stats(server, -1);
  r = get(server, "/pc/n.js", "Accept-Encoding: gzip\r\n");
  T_ASSERT_STR_EQ(r.body, "console.log(2)\n");
  T_ASSERT(t_header(&r, "Content-Encoding") == NULL);
  t_response_free(&r);
  s1 = t_stats(server, -1);
  T_ASSERT_INT_EQ(s1.file_cache_misses - s0.file_cache_misses, 0);
  T_ASSERT_INT_EQ(s1.file_cache_hits - s0.file_cache_hits, 2); /* the file, no .gz */
  put_file("n.js.gz", "GZ");
  t_sleep_ms(350);
  r = get(server, "/pc/n.js", "Accept-Encoding: gzip\r\n");
  T_ASSERT_STR_EQ(r.body, "GZ");
  T_ASSERT_STR_EQ(t_header(&r, "Content-Encoding"), "gzip");
  t_response_free(&r);

  t_case("pmu_serve_file by path: the rules apply (ETag, 304, Range, 404)");
  expect_body(server, "/sf/b.txt", 200, "bbbb");
  r = get(server, "/sf/b.txt", NULL);
  char h[256];
  snprintf(h, sizeof h, "If-None-Match: %s\r\n", t_header(&r, "ETag"));
  t_response_free(&r);
  r = get(server, "/sf/b.txt", h);
  T_ASSERT_INT_EQ(r.status, 304);
  t_response_free(&r);
  r = get(server, "/sf/b.txt", "Range: bytes=1-2\r\n");
  T_ASSERT_INT_EQ(r.status, 206);
  T_ASSERT_STR_EQ(r.body, "bb");
  T_ASSERT_STR_EQ(t_header(&r, "Content-Range"), "bytes 1-2/4");
  t_response_free(&r);
  expect_body(server, "/sf/missing.txt", 404, "404 Not Found\n");
  expect_body(server, "/sf/dir", 404, "404 Not Found\n");

  t_case("pmu_serve_file by an absolute path on the ring thread: through the cache, rechecked");
  {
    put_file("sfc.txt", "cc");
    pmu_stats_t c0 = t_stats(server, -1);
    expect_body(server, "/sf/sfc.txt", 200, "cc");
    expect_body(server, "/sf/sfc.txt", 200, "cc");
    pmu_stats_t c1 = t_stats(server, -1);
    T_ASSERT_INT_EQ(c1.file_cache_misses - c0.file_cache_misses, 1);
    T_ASSERT_INT_EQ(c1.file_cache_hits - c0.file_cache_hits, 1);
    put_file("sfc.txt", "changed");
    t_sleep_ms(350); /* file_cache_valid_ms */
    expect_body(server, "/sf/sfc.txt", 200, "changed");
    expect_body(server, "/sf/c-missing.txt", 404, "404 Not Found\n");
    put_file("c-missing.txt", "here now");
    t_sleep_ms(350);
    expect_body(server, "/sf/c-missing.txt", 200, "here now");
  }

  t_case("pmu_serve_file by fd: served, and the engine closes the fd");
  {
    int before = t_count_fds();
    for (int i = 0; i < 20; i++) {
      r = get(server, "/sfd/d.txt", NULL);
      T_ASSERT_INT_EQ(r.status, 200);
      T_ASSERT_STR_EQ(r.body, "dddd");
      T_ASSERT_STR_EQ(t_header(&r, "Cache-Control"), "no-cache");
      t_response_free(&r);
    }
    T_WAIT_UNTIL(t_count_fds() <= before, T_EVENT_MS);
    T_ASSERT_MSG(t_count_fds() <= before, "fds leaked: %d > %d", t_count_fds(), before);
  }

  t_case("30 ranges under a huge max_ranges: 206 with 30 parts");
  {
    put_file("r.txt", "0123456789012345678901234567890123456789012345678901234567890123");
    char hdr[512] = "Range: bytes=";
    for (int i = 0; i < 30; i++) {
      char one[16];
      snprintf(one, sizeof one, "%s%d-%d", i ? "," : "", 2 * i, 2 * i);
      strcat(hdr, one);
    }
    strcat(hdr, "\r\n");
    r = get(server, "/static/r.txt", hdr);
    T_ASSERT_INT_EQ(r.status, 206);
    size_t parts = 0;
    for (const char *p = r.body; (p = strstr(p, "Content-Range: bytes ")); p++)
      parts++;
    T_ASSERT_INT_EQ(parts, 30);
    T_ASSERT(strstr(r.body, "Content-Range: bytes 58-58/64"));
    t_response_free(&r);
  }

  t_case("a 5 GiB sparse file: a Range near its end, HEAD's length (64-bit sizes)");
  {
    char sp[600];
    snprintf(sp, sizeof sp, "%s/sparse.bin", root);
    int fd = open(sp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    T_ASSERT(fd >= 0);
    uint64_t size = 5ull << 30;
    T_ASSERT(pwrite(fd, "THE END", 7, (off_t)(size - 7)) == 7);
    close(fd);
    r = get(server, "/static/sparse.bin", "Range: bytes=-7\r\n");
    T_ASSERT_INT_EQ(r.status, 206);
    T_ASSERT_STR_EQ(r.body, "THE END");
    T_ASSERT_STR_EQ(t_header(&r, "Content-Range"), "bytes 5368709113-5368709119/5368709120");
    t_response_free(&r);
    t_conn_t *c = t_connect(server);
    t_send_str(c, "HEAD /static/sparse.bin HTTP/1.1\r\nHost: c\r\n\r\n");
    t_expect_head_response(c, &r);
    T_ASSERT_INT_EQ(r.content_length, 5368709120ull);
    t_response_free(&r);
    t_conn_close(c);
    T_ASSERT(unlink(sp) == 0);
  }

  t_case("pmu_serve_file with a status: the whole file, the given type, no Range");
  r = get(server, "/sfs/b.txt", "Range: bytes=0-0\r\n");
  T_ASSERT_INT_EQ(r.status, 201);
  T_ASSERT_STR_EQ(r.body, "bbbb");
  T_ASSERT_STR_EQ(t_header(&r, "Content-Type"), "application/x-custom");
  T_ASSERT_STR_EQ(t_header(&r, "X-Extra"), "1");
  t_response_free(&r);

  t_case("pmu_serve_file from another thread");
  expect_body(server, "/sft", 200, "rewritten");

  t_case("pmu_serve_static: a mount not given at start (root opened per call), fallthrough");
  r = get(server, "/ss/b.txt", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, "bbbb");
  T_ASSERT_STR_EQ(t_header(&r, "Cache-Control"), "max-age=5");
  t_response_free(&r);
  expect_body(server, "/ss/nothing", 299, "fell through");
  expect_body(server, "/ss/../x", 400, "400 Bad Request\n");

  t_case("pmu_serve_static with the started mount and a relative path (cache used)");
  s0 = t_stats(server, -1);
  expect_body(server, "/sst/b.txt", 200, "bbbb");
  expect_body(server, "/sst/b.txt", 200, "bbbb");
  s1 = t_stats(server, -1);
  T_ASSERT_MSG(s1.file_cache_hits > s0.file_cache_hits, "no hit");
  expect_body(server, "/sst/%62.txt", 404, "404 Not Found\n"); /* rel is not decoded again */

  t_case("every fd is closed at stop");
  t_server_destroy(server);
  T_WAIT_UNTIL(t_count_fds() == fds_before, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_count_fds(), fds_before);

  t_case("two ring threads, 200 connections at once sharing cached files: every byte right");
  {
    big_pattern = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
      big_pattern[i] = (char)('A' + (i * 13 + i / 1000) % 26);
    char bp[600];
    snprintf(bp, sizeof bp, "%s/big.bin", root);
    t_write_file(bp, big_pattern, BIG);
    t_config_init(&config);
    config.threads = 2;
    config.statics = &mount_started;
    config.static_count = 1;
    server = t_server_start(&config);
    size_t ok = t_many(server, 200, many_request, 3, many_check, NULL, 30000);
    T_ASSERT_INT_EQ(ok, 200);
    T_ASSERT_INT_EQ(atomic_load(&many_seen), 600);
    T_ASSERT_INT_EQ(atomic_load(&many_bad), 0);
    pmu_stats_t st = t_stats(server, -1);
    T_ASSERT_MSG(st.file_cache_hits >= 590, "hits %llu", (unsigned long long)st.file_cache_hits);
    t_server_destroy(server);
    T_WAIT_UNTIL(t_count_fds() == fds_before, T_EVENT_MS);
    T_ASSERT_INT_EQ(t_count_fds(), fds_before);
    free(big_pattern);
  }

  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  T_ASSERT(system(cmd) == 0);
  return t_done();
}
