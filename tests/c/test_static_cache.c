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
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  T_ASSERT(fd >= 0);
  T_ASSERT_INT_EQ(write(fd, content, strlen(content)), (long long)strlen(content));
  close(fd);
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
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  config.statics = &mount_started;
  config.static_count = 1;
  config.file_cache_entries = 2;
  config.file_cache_valid_ms = 300;
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

  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  T_ASSERT(system(cmd) == 0);
  return t_done();
}
