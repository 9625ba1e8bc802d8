/*
 * test_static_audit: hostile requests and careless content against engine
 * mounts, over real sockets: multipart/byteranges parts with a long
 * Content-Type, traversal and odd paths (after a prefix without a slash, ; ? #,
 * overlong and surrogate UTF-8, long paths), the 301's Location, Range and
 * conditional edge cases, a FIFO, a socket and precompressed siblings that are
 * not regular files, a symlink out of the root swapped in while cached, open
 * failures that are not "no such file" (EMFILE), huge directories and symlinks
 * in listings, memory held by clients that pipeline many-range requests and
 * never read, and pmu_serve_static with a mount like a started one.
 */
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static char base[256];

static void put_file(const char *rel, const char *content) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", base, rel);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  T_ASSERT_MSG(fd >= 0, "cannot create %s", path);
  size_t len = strlen(content);
  T_ASSERT_INT_EQ(write(fd, content, len), (long long)len);
  close(fd);
}

static void put_dir(const char *rel) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", base, rel);
  T_ASSERT_MSG(mkdir(path, 0755) == 0, "mkdir %s", path);
}

static t_response_t request_on(t_conn_t *c, const char *method, const char *target,
                               const char *headers) {
  char req[4096];
  snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: s\r\n%s\r\n", method, target,
           headers ? headers : "");
  t_send_str(c, req);
  t_response_t r;
  t_expect_response_at(__FILE__, __LINE__, c, &r, T_IO_TIMEOUT_MS, strcmp(method, "HEAD") == 0);
  return r;
}

static t_response_t request(const t_server_t *server, const char *method, const char *target,
                            const char *headers) {
  t_conn_t *c = t_connect(server);
  t_response_t r = request_on(c, method, target, headers);
  t_conn_close(c);
  return r;
}

static t_response_t get(const t_server_t *server, const char *target, const char *headers) {
  return request(server, "GET", target, headers);
}

static void expect_status(const t_server_t *server, const char *target, int status) {
  t_response_t r = get(server, target, NULL);
  T_ASSERT_MSG(r.status == status, "GET %s: got %d, expected %d (body \"%.60s\")", target, r.status,
               status, r.body);
  T_ASSERT_MSG(!strstr(r.body, "SECRET"), "GET %s leaked the secret", target);
  t_response_free(&r);
}

static const char A_TXT[] = "0123456789abcdefghij"; /* 20 bytes */

/* A Content-Type of 230 bytes (a mount's override, or an app's FileResponse):
 * every part of a multipart/byteranges answer carries it whole. */
static char long_type[256];

static void test_multipart_long_type(const t_server_t *server) {
  t_case("multipart/byteranges with a 230-byte Content-Type: each part whole, no stray bytes");
  t_response_t r = get(server, "/s/f.big", "Range: bytes=0-0,5-5,-1\r\n");
  T_ASSERT_INT_EQ(r.status, 206);
  T_ASSERT_INT_EQ(r.body_len, r.content_length);
  const char *ct = t_header(&r, "Content-Type");
  T_ASSERT(ct && strncmp(ct, "multipart/byteranges; boundary=", 31) == 0);
  char want[512];
  const char *ranges[] = {"0-0", "5-5", "19-19"};
  const char bytes[] = {'0', '5', 'j'};
  const char *p = r.body;
  for (int i = 0; i < 3; i++) {
    snprintf(want, sizeof want,
             "\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %s/20\r\n\r\n", ct + 31,
             long_type, ranges[i]);
    size_t wl = strlen(want);
    T_ASSERT_MSG((size_t)(r.body + r.body_len - p) >= wl + 1 && memcmp(p, want, wl) == 0,
                 "part %d is not whole: \"%.300s\"", i, p);
    p += wl;
    T_ASSERT_INT_EQ(*p, bytes[i]);
    p++;
  }
  snprintf(want, sizeof want, "\r\n--%s--\r\n", ct + 31);
  T_ASSERT_STR_EQ(p, want);
  t_response_free(&r);

  /* HEAD announces the GET's length. */
  t_response_t h = request(server, "HEAD", "/s/f.big", "Range: bytes=0-0,5-5,-1\r\n");
  T_ASSERT_INT_EQ(h.status, 206);
  r = get(server, "/s/f.big", "Range: bytes=0-0,5-5,-1\r\n");
  T_ASSERT_INT_EQ(h.content_length, r.body_len);
  t_response_free(&h);
  t_response_free(&r);
}

static void test_paths_and_redirects(const t_server_t *server) {
  t_case("traversal and odd paths after a prefix without a slash, ; ? # and long paths");
  static const struct {
    const char *target;
    int status;
  } rows[] = {
      {"/sX%2e%2e%2fsecret.txt", 400},   /* under "/": %2f refused */
      {"/s%2e%2e/secret.txt", 404},      /* "s..": a name under "/", no way up */
      {"/s/%2E%2E/secret.txt", 400},     /* uppercase hex */
      {"/s/%252e%252e/secret.txt", 404}, /* decoded once: a file named "%2e%2e" */
      {"/s/..;/secret.txt", 404},        /* "..;" is a name, not a way up */
      {"/s/a.txt;x=1", 404},
      {"/s/a.txt%3f", 404},
      {"/s/a.txt%23", 404},
      {"/s/a.txt#frag", 404},
      {"/s/a.txt?x=../../secret.txt", 200},
      {"/s/%c0%ae%c0%ae/secret.txt", 400},
      {"/s/%e0%80%ae/secret.txt", 400},
      {"/s/%ed%a0%80", 400},    /* a surrogate */
      {"/s/%f4%90%80%80", 400}, /* above U+10FFFF */
      {"/s/\xc3\xa9", 400},     /* raw UTF-8: the parser refuses it */
      {"/s/\xff", 400},
      {"/s/a.txt%00.png", 400},
      {"/s/.%2e/secret.txt", 400},
      {"/s/sub/..%5csecret.txt", 400},
      {"/s%5c..%5csecret.txt", 400},
      {"/s//////////a.txt", 200},
      {"/s/./a.txt", 400},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
    expect_status(server, rows[i].target, rows[i].status);
  char longp[3000];
  strcpy(longp, "/s/");
  while (strlen(longp) < 2900)
    strcat(longp, "aaaaaaaaa/");
  expect_status(server, longp, 404);
  strcpy(longp, "/s/");
  while (strlen(longp) < 2900)
    strcat(longp, "a");
  expect_status(server, longp, 404); /* a component over NAME_MAX */

  t_case("the 301 to the slash form never leaves the host (Location path-absolute)");
  static const char *const dirs[] = {"//sub",         "///sub",
                                     "/s//sub",       "//s/sub?next=//evil.com",
                                     "http://s//sub", "http://s/sub?//evil.com"};
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
    t_response_t r = get(server, dirs[i], NULL);
    T_ASSERT_MSG(r.status == 301, "GET %s: %d", dirs[i], r.status);
    const char *loc = t_header(&r, "Location");
    T_ASSERT_MSG(loc && loc[0] == '/' && loc[1] != '/' && loc[1] != '\\', "GET %s: Location %s",
                 dirs[i], loc ? loc : "(none)");
    t_response_free(&r);
  }
}

static void test_ranges(const t_server_t *server) {
  t_case("Range edge cases: -0, 0-0,-1, huge numbers, near 2^63, whitespace, empty elements");
  static const struct {
    const char *range;
    int status;
    const char *body; /* for a single 206 or 200, NULL for multipart/416 */
  } rows[] = {
      {"bytes=-0", 416, NULL},
      {"bytes=0-0", 206, "0"},
      {"bytes=0-0,-1", 206, NULL},
      {"bytes=99999999999999999999-", 200, A_TXT},
      {"bytes=0-99999999999999999999", 200, A_TXT},
      {"bytes=9223372036854775807-", 416, NULL},
      {"bytes=9223372036854775806-9223372036854775807", 416, NULL},
      {"bytes=-9223372036854775807", 206, A_TXT},
      {"bytes=18446744073709551615-", 200, A_TXT},
      {"bytes= 1-2 ,, 3-3", 206, NULL},
      {"bytes=1-0", 200, A_TXT},
      {"bytes=--1", 200, A_TXT},
      {"bytes=0x1-2", 200, A_TXT},
      {"bytes=1-2;", 200, A_TXT},
      {"Bytes=19-", 206, "j"},
      {"bytes=,", 200, A_TXT},
      {"items=0-1", 200, A_TXT},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    char h[256];
    snprintf(h, sizeof h, "Range: %s\r\n", rows[i].range);
    t_response_t r = get(server, "/s/a.txt", h);
    T_ASSERT_MSG(r.status == rows[i].status, "Range %s: %d", rows[i].range, r.status);
    T_ASSERT_INT_EQ(r.body_len, r.content_length);
    if (rows[i].body)
      T_ASSERT_STR_EQ(r.body, rows[i].body);
    if (r.status == 416)
      T_ASSERT_STR_EQ(t_header(&r, "Content-Range"), "bytes */20");
    t_response_free(&r);
  }
  /* 100 one-byte ranges (the default max_ranges): 206, each part once; 101: ignored. */
  char big[2000] = "Range: bytes=";
  for (int i = 0; i < 101; i++) {
    char one[16];
    snprintf(one, sizeof one, "%s%d-%d", i ? "," : "", (i % 10) * 2, (i % 10) * 2);
    strcat(big, one);
    if (i == 99) {
      t_response_t r = get(server, "/s/a.txt", strcat(strcpy((char[2000]){0}, big), "\r\n"));
      T_ASSERT_INT_EQ(r.status, 206);
      T_ASSERT_INT_EQ(r.body_len, r.content_length);
      T_ASSERT(r.body_len < 2000); /* ten distinct parts, merged */
      t_response_free(&r);
    }
  }
  strcat(big, "\r\n");
  t_response_t r = get(server, "/s/a.txt", big);
  T_ASSERT_INT_EQ(r.status, 200);
  t_response_free(&r);

  t_case("conditionals: overlong dates, garbage ETags, If-Range by date");
  r = get(server, "/s/a.txt", NULL);
  char lm[64], etag[128];
  snprintf(lm, sizeof lm, "%s", t_header(&r, "Last-Modified"));
  snprintf(etag, sizeof etag, "%s", t_header(&r, "ETag"));
  t_response_free(&r);
  char h[1200];
  memset(h, 0, sizeof h);
  strcpy(h, "If-Modified-Since: ");
  strcat(h, lm);
  memset(h + strlen(h), ' ', 900);
  strcat(h, "x\r\n");
  r = get(server, "/s/a.txt", h);
  T_ASSERT_INT_EQ(r.status, 200);
  t_response_free(&r);
  static const char *const garbage[] = {"If-None-Match: \"",
                                        "If-None-Match: W/",
                                        "If-None-Match: ,,,,",
                                        "If-Match: \"\"\"",
                                        "If-None-Match: W/\"x\"W/\"y\"",
                                        "If-Range: W/"};
  for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
    snprintf(h, sizeof h, "%s\r\nRange: bytes=0-0\r\n", garbage[i]);
    r = get(server, "/s/a.txt", h);
    T_ASSERT_MSG(r.status == 200 || r.status == 206 || r.status == 412, "%s: %d", garbage[i],
                 r.status);
    t_response_free(&r);
  }
  snprintf(h, sizeof h, "If-Range: %s\r\nRange: bytes=0-0\r\n", lm);
  r = get(server, "/s/a.txt", h);
  T_ASSERT_INT_EQ(r.status, 206);
  t_response_free(&r);
  snprintf(h, sizeof h, "If-Range: Thu, 01 Jan 1970 00:00:00 GMT\r\nRange: bytes=0-0\r\n");
  r = get(server, "/s/a.txt", h);
  T_ASSERT_INT_EQ(r.status, 200);
  t_response_free(&r);
  (void)etag;

  t_case("If-Range by date on every day of the week (a Wednesday's \"Wed,\" is no W/ ETag)");
  for (int d = 0; d < 7; d++) {
    char rel[32], target[40], path[600];
    snprintf(rel, sizeof rel, "root/day%d.txt", d);
    snprintf(target, sizeof target, "/s/day%d.txt", d);
    put_file(rel, "0123");
    snprintf(path, sizeof path, "%s/%s", base, rel);
    /* 2026-11-30 (a Monday) 12:00:00 UTC plus d days */
    struct timespec when[2] = {{.tv_sec = 1796040000 + d * 86400},
                               {.tv_sec = 1796040000 + d * 86400}};
    T_ASSERT(utimensat(AT_FDCWD, path, when, 0) == 0);
    r = get(server, target, NULL);
    snprintf(lm, sizeof lm, "%s", t_header(&r, "Last-Modified"));
    t_response_free(&r);
    snprintf(h, sizeof h, "If-Range: %s\r\nRange: bytes=1-2\r\n", lm);
    r = get(server, target, h);
    T_ASSERT_MSG(r.status == 206, "If-Range: %s: got %d", lm, r.status);
    T_ASSERT_STR_EQ(r.body, "12");
    t_response_free(&r);
  }
}

static void test_special_files(const t_server_t *server) {
  t_case("a FIFO, a socket, FIFO and directory siblings: answered at once, never hanging");
  char path[600];
  snprintf(path, sizeof path, "%s/root/fifo", base);
  T_ASSERT(mkfifo(path, 0644) == 0);
  snprintf(path, sizeof path, "%s/root/a.txt.gz", base);
  T_ASSERT(mkfifo(path, 0644) == 0);
  snprintf(path, sizeof path, "%s/root/a.txt.br", base);
  T_ASSERT(mkdir(path, 0755) == 0);
  put_dir("root/fdir");
  snprintf(path, sizeof path, "%s/root/fdir/index.html", base);
  T_ASSERT(mkfifo(path, 0644) == 0);
  int us = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  T_ASSERT(snprintf(sa.sun_path, sizeof sa.sun_path, "%.80s/root/sock", base) <
           (int)sizeof sa.sun_path);
  T_ASSERT(bind(us, (struct sockaddr *)&sa, sizeof sa) == 0);
  expect_status(server, "/s/fifo", 404);
  expect_status(server, "/s/sock", 404);
  expect_status(server, "/s/fdir/", 404);
  t_response_t r = get(server, "/s/a.txt", "Accept-Encoding: gzip, br\r\n");
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, A_TXT);
  T_ASSERT(t_header(&r, "Content-Encoding") == NULL);
  t_response_free(&r);
  close(us);
}

static void test_symlink_swap(const t_server_t *server) {
  t_case("a symlink out of the root swapped in after the cache opened the file: refused once due");
  put_file("root/swap.txt", "inside\n");
  t_response_t r = get(server, "/s/swap.txt", NULL);
  T_ASSERT_STR_EQ(r.body, "inside\n");
  t_response_free(&r);
  char path[600], tmp[600];
  snprintf(path, sizeof path, "%s/root/swap.txt", base);
  snprintf(tmp, sizeof tmp, "%s/root/swap.tmp", base);
  T_ASSERT(symlink("../secret.txt", tmp) == 0);
  T_ASSERT(rename(tmp, path) == 0);
  t_sleep_ms(150); /* file_cache_valid_ms is 100 here */
  expect_status(server, "/s/swap.txt", 404);
  /* A directory swapped for a symlink out of the root, with a file below. */
  put_dir("root/swapdir");
  put_file("root/swapdir/x.txt", "in dir\n");
  r = get(server, "/s/swapdir/x.txt", NULL);
  T_ASSERT_STR_EQ(r.body, "in dir\n");
  t_response_free(&r);
  snprintf(path, sizeof path, "%s/root/swapdir", base);
  snprintf(tmp, sizeof tmp, "%s/root/swapdir.old", base);
  T_ASSERT(rename(path, tmp) == 0);
  put_file("x.txt", "SECRET x\n");
  T_ASSERT(symlink("..", path) == 0);
  t_sleep_ms(150);
  expect_status(server, "/s/swapdir/x.txt", 404);
}

/* Lower RLIMIT_NOFILE and fill every descriptor: the ring thread's next open
 * fails with EMFILE. Returns how many were opened (closed by fds_free). */
static int fds[70000];
static int fds_fill(void) {
  int n = 0;
  while (n < (int)(sizeof fds / sizeof fds[0])) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      break;
    fds[n++] = fd;
  }
  return n;
}

static void fds_free(int n) {
  for (int i = 0; i < n; i++)
    close(fds[i]);
}

static void test_emfile(const t_server_t *server) {
  t_case("EMFILE while opening a file: 503 (retry later), not a 404 a cache would keep");
  struct rlimit old, low;
  T_ASSERT(getrlimit(RLIMIT_NOFILE, &old) == 0);
  low = old;
  low.rlim_cur = (rlim_t)t_count_fds() + 64;
  T_ASSERT(setrlimit(RLIMIT_NOFILE, &low) == 0);
  put_file("root/cold.txt", "cold\n");
  t_conn_t *c = t_connect(server);
  t_response_t r = request_on(c, "GET", "/s/a.txt", NULL); /* accepted, round trip done */
  T_ASSERT_INT_EQ(r.status, 200);
  t_response_free(&r);
  int n = fds_fill();
  r = request_on(c, "GET", "/s/cold.txt", NULL); /* not in the cache: an openat2 */
  fds_free(n);
  T_ASSERT(setrlimit(RLIMIT_NOFILE, &old) == 0);
  T_ASSERT_MSG(r.status == 503, "EMFILE answered %d", r.status);
  t_response_free(&r);
  t_conn_close(c);
  r = get(server, "/s/cold.txt", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, "cold\n");
  t_response_free(&r);
}

static void test_huge_listing(const t_server_t *server) {
  t_case("a listing of a huge directory is bounded: 10,000 entries at most, then a note");
  char path[600];
  for (int i = 0; i < 10050; i++) {
    snprintf(path, sizeof path, "%s/big/f%05d", base, i);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    T_ASSERT(fd >= 0);
    close(fd);
  }
  int64_t t0 = t_now_ms();
  t_response_t r = get(server, "/big/", NULL);
  int64_t took = t_now_ms() - t0;
  T_ASSERT_INT_EQ(r.status, 200);
  size_t items = 0;
  for (const char *p = r.body; (p = strstr(p, "<li><a href=\"f")); p++)
    items++;
  T_ASSERT_INT_EQ(items, 10000);
  T_ASSERT(strstr(r.body, "more entries not listed") != NULL);
  T_ASSERT(r.body_len < 1024 * 1024);
  printf("# 10,050 entries listed in %lld ms\n", (long long)took);
  t_response_free(&r);
}

/* Heap bytes in use in this process (the server runs in it). */
static size_t heap_used(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

static void test_many_range_memory(const t_server_t *server) {
  t_case("clients that pipeline 100-range requests and never read hold about output_high_water "
         "each, not several times it");
  /* 1 MiB with 100 one-byte ranges 1,000 bytes apart, the default max_ranges. */
  put_dir("root/m");
  char path[600];
  snprintf(path, sizeof path, "%s/root/m/f.bin", base);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  T_ASSERT(fd >= 0);
  T_ASSERT(ftruncate(fd, 1 << 20) == 0);
  close(fd);
  static char req[4096];
  int k = snprintf(req, sizeof req, "GET /s/m/f.bin HTTP/1.1\r\nHost: s\r\nRange: bytes=");
  for (int i = 0; i < 100; i++)
    k += snprintf(req + k, sizeof req - (size_t)k, "%s%d-%d", i ? "," : "", i * 1000, i * 1000);
  k += snprintf(req + k, sizeof req - (size_t)k, "\r\n\r\n");
  size_t rl = (size_t)k, nreq = 128;
  char *many = malloc(rl * nreq);
  T_ASSERT(many != NULL);
  for (size_t i = 0; i < nreq; i++)
    memcpy(many + i * rl, req, rl);
  enum { NCONN = 40 };
  t_conn_t *cs[NCONN];
  size_t before = heap_used();
  for (int i = 0; i < NCONN; i++) {
    cs[i] = t_connect(server);
    ssize_t n = send(cs[i]->fd, many, rl * nreq, MSG_DONTWAIT | MSG_NOSIGNAL);
    T_ASSERT(n > 0);
  }
  t_sleep_ms(1500);
  size_t grown = heap_used() - before;
  printf("# %d stalled connections: %zu KiB more heap, %zu KiB each\n", NCONN, grown / 1024,
         grown / 1024 / NCONN);
  T_ASSERT_MSG(grown / NCONN < 2 * 1024 * 1024, "%zu KiB per stalled connection",
               grown / 1024 / NCONN);
  for (int i = 0; i < NCONN; i++)
    t_conn_abort(cs[i]);
  free(many);
}

/* /other/NAME: pmu_serve_static with a mount equal to the started "/s" one
 * but for its extra header's value. */
static pmu_static_t mount_twin;

static void handler(void *data, pmu_request_t *const *reqs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    pmu_request_t *q = reqs[i];
    if (q->path_len > 7 && memcmp(q->path, "/other/", 7) == 0)
      pmu_serve_static(q, &mount_twin, q->path + 7, q->path_len - 7);
    else
      t_handle_request(data, q);
  }
}

static void test_twin_mount_headers(const pmu_static_t *started) {
  t_case("pmu_serve_static with a mount like a started one but other header values: its own");
  pmu_config_t config;
  t_config_init(&config);
  config.statics = started;
  config.static_count = 1;
  config.handler = handler;
  t_server_t *server = t_server_start(&config);
  t_response_t r = get(server, "/s/a.txt", NULL);
  T_ASSERT_STR_EQ(t_header(&r, "X-Policy"), "started");
  t_response_free(&r);
  r = get(server, "/other/a.txt", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, A_TXT);
  T_ASSERT_MSG(t_header(&r, "X-Policy") && !strcmp(t_header(&r, "X-Policy"), "twin"),
               "X-Policy: %s", t_header(&r, "X-Policy") ? t_header(&r, "X-Policy") : "(none)");
  t_response_free(&r);
  t_server_destroy(server);
}

static void test_listing_symlinks(const t_server_t *server) {
  t_case("a listing names no symlink that cannot be served (out of the root, dangling, or any "
         "with follow_symlinks 0), and never stats outside the root");
  put_dir("lst/sub");
  put_file("lst/file.txt", "f");
  put_dir("outdir");
  char path[600];
  snprintf(path, sizeof path, "%s/lst/out", base);
  T_ASSERT(symlink("../outdir", path) == 0);
  snprintf(path, sizeof path, "%s/lst/dangling", base);
  T_ASSERT(symlink("nothing-here", path) == 0);
  snprintf(path, sizeof path, "%s/lst/in", base);
  T_ASSERT(symlink("sub", path) == 0);
  t_response_t r = get(server, "/lst/", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT(strstr(r.body, "href=\"sub/\"") && strstr(r.body, "href=\"file.txt\""));
  T_ASSERT_MSG(strstr(r.body, "href=\"in/\"") != NULL, "%s", r.body);
  T_ASSERT_MSG(!strstr(r.body, "out") && !strstr(r.body, "dangling"), "%s", r.body);
  t_response_free(&r);
  expect_status(server, "/lst/in/", 200);
  r = get(server, "/lstn/", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT(strstr(r.body, "href=\"sub/\"") && strstr(r.body, "href=\"file.txt\""));
  T_ASSERT_MSG(!strstr(r.body, "href=\"in") && !strstr(r.body, "out") &&
                   !strstr(r.body, "dangling"),
               "%s", r.body);
  t_response_free(&r);
}

int main(void) {
  t_init("static_audit");
  snprintf(base, sizeof base, "/tmp/files-audit-static-%d", (int)getpid());
  T_ASSERT(mkdir(base, 0755) == 0);
  put_file("secret.txt", "SECRET outside the root\n");
  put_dir("root");
  put_file("root/a.txt", A_TXT);
  put_file("root/f.big", A_TXT);
  put_dir("root/sub");
  put_file("root/sub/x.txt", "x");
  put_dir("big");
  put_dir("lst");

  memset(long_type, 0, sizeof long_type);
  strcpy(long_type, "application/x-");
  while (strlen(long_type) < 230)
    strcat(long_type, "long");
  long_type[230] = '\0';
  char overrides[300];
  snprintf(overrides, sizeof overrides, "big=%s", long_type);

  char root[512];
  snprintf(root, sizeof root, "%s/root", base);
  char big[512];
  snprintf(big, sizeof big, "%s/big", base);
  char lst[512];
  snprintf(lst, sizeof lst, "%s/lst", base);
  pmu_static_t mounts[5];
  pmu_static_init(&mounts[0]);
  mounts[0].prefix = "/s";
  mounts[0].root = root;
  mounts[0].mime_types = overrides;
  static const pmu_header_t started_h[] = {{"X-Policy", 8, "started", 7}};
  static const pmu_header_t twin_h[] = {{"X-Policy", 8, "twin", 4}};
  mounts[0].headers = started_h;
  mounts[0].header_count = 1;
  mount_twin = mounts[0];
  mount_twin.headers = twin_h;
  pmu_static_init(&mounts[1]);
  mounts[1].prefix = "/";
  mounts[1].root = root;

  pmu_static_init(&mounts[2]);
  mounts[2].prefix = "/big";
  mounts[2].root = big;
  mounts[2].listing = 1;
  pmu_static_init(&mounts[3]);
  mounts[3].prefix = "/lst";
  mounts[3].root = lst;
  mounts[3].listing = 1;
  pmu_static_init(&mounts[4]);
  mounts[4].prefix = "/lstn";
  mounts[4].root = lst;
  mounts[4].listing = 1;
  mounts[4].follow_symlinks = 0;

  pmu_config_t config;
  t_config_init(&config);
  config.statics = mounts;
  config.static_count = 5;
  config.file_cache_valid_ms = 100;
  t_server_t *server = t_server_start(&config);

  test_multipart_long_type(server);
  test_paths_and_redirects(server);
  test_ranges(server);
  test_special_files(server);
  test_symlink_swap(server);
  test_emfile(server);
  test_huge_listing(server);
  test_listing_symlinks(server);
  test_many_range_memory(server);

  t_server_destroy(server);
  test_twin_mount_headers(&mounts[0]);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  T_ASSERT(system(cmd) == 0);
  return t_done();
}
