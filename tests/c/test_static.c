/*
 * test_static: engine mounts (config.statics) answer files by the HTTP rules,
 * over real sockets: paths decoded once and confined (every traversal form,
 * symlinks out of the root, dotfiles), index and the 301 to the slash form,
 * 405, HEAD, ETag / Last-Modified and the conditionals (304, 412), Range
 * (single, suffix, open-ended, multipart/byteranges, If-Range, 416, ignored
 * when invalid or too many, overlapping ranges coalesced), MIME types (built-in,
 * the system table, a mount's overrides), precompressed siblings by
 * Accept-Encoding, Cache-Control and extra headers, listings, fallthrough to
 * the handler, and a clear start failure for a missing root.
 */
#include "testlib.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

static void put_link(const char *target, const char *rel) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", base, rel);
  T_ASSERT_MSG(symlink(target, path) == 0, "symlink %s", path);
}

static t_response_t request(const t_server_t *server, const char *method, const char *target,
                            const char *headers) {
  char req[2048];
  snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: s\r\n%s\r\n", method, target,
           headers ? headers : "");
  t_conn_t *c = t_connect(server);
  t_send_str(c, req);
  t_response_t r;
  t_expect_response_at(__FILE__, __LINE__, c, &r, T_IO_TIMEOUT_MS, strcmp(method, "HEAD") == 0);
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

int main(void) {
  t_init("static");
  snprintf(base, sizeof base, "/tmp/files-static-test-%d", (int)getpid());
  T_ASSERT(mkdir(base, 0755) == 0);
  put_file("secret.txt", "SECRET outside the root\n");
  put_file("secret.txt.gz", "SECRET gz outside the root\n");
  put_dir("root");
  put_dir("root1");
  put_file("root1/x.txt", "SECRET of the sibling root\n");
  put_file("root/a.txt", A_TXT);
  put_file("root/style.css", "body{}\n");
  put_file("root/app.js", "console.log(1)\n");
  put_file("root/app.js.br", "BROTLI");
  put_file("root/app.js.gz", "GZIPPED");
  put_file("root/mod.wasm", "\0asm");
  put_file("root/data.unknownext", "?");
  put_file("root/x.foo", "foo");
  put_file("root/x.pmutest", "pmu");
  put_file("root/p.txt", "plain p\n");
  put_link("../secret.txt.gz", "root/p.txt.gz");
  put_file("root/.env", "DOTENV\n");
  put_dir("root/.git");
  put_file("root/.git/config", "SECRET git\n");
  put_dir("root/sub");
  put_file("root/sub/index.html", "<p>sub index</p>\n");
  put_dir("root/empty");
  put_file("root/%2e%2e", "a file named %2e%2e\n");
  put_link("../secret.txt", "root/out");
  char abs[512];
  snprintf(abs, sizeof abs, "%s/secret.txt", base);
  put_link(abs, "root/abs");
  put_link("a.txt", "root/in");
  put_link("sub", "root/linkdir");
  put_dir("list");
  put_file("list/b.txt", "b");
  put_file("list/a b.txt", "ab");
  put_file("list/<i>&\"x'.txt", "x");
  put_file("list/.hidden", "h");
  put_dir("list/zdir");
  put_file("mime.types", "# test table\napplication/x-pmu-test pmutest\n");
  char mt[512];
  snprintf(mt, sizeof mt, "%s/mime.types", base);
  setenv("PMU_MIME_TYPES", mt, 1);

  char root[512], list[512];
  snprintf(root, sizeof root, "%s/root", base);
  snprintf(list, sizeof list, "%s/list", base);
  pmu_static_t mounts[4];
  pmu_static_init(&mounts[0]);
  mounts[0].prefix = "/static";
  mounts[0].root = root;
  mounts[0].cache_control = "public, max-age=60";
  mounts[0].mime_types = "foo=text/x-foo,.bar=application/x-bar";
  static const pmu_header_t extra[] = {{"X-Mount", 7, "static", 6}};
  mounts[0].headers = extra;
  mounts[0].header_count = 1;
  pmu_static_init(&mounts[1]);
  mounts[1].prefix = "/nofollow";
  mounts[1].root = root;
  mounts[1].follow_symlinks = 0;
  mounts[1].dotfiles = 1;
  pmu_static_init(&mounts[2]);
  mounts[2].prefix = "/list/";
  mounts[2].root = list;
  mounts[2].listing = 1;
  pmu_static_init(&mounts[3]);
  mounts[3].prefix = "/";
  mounts[3].root = root;
  mounts[3].fallthrough = 1;
  mounts[3].precompressed = 0;

  pmu_config_t config;
  t_config_init(&config);
  config.statics = mounts;
  config.static_count = 4;
  config.max_ranges = 5;
  t_server_t *server = t_server_start(&config);

  t_case("a file: 200, its bytes, type, validators, Cache-Control and the mount's headers");
  t_response_t r = get(server, "/static/a.txt", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, A_TXT);
  T_ASSERT_STR_EQ(t_header(&r, "Content-Type"), "text/plain; charset=utf-8");
  T_ASSERT_STR_EQ(t_header(&r, "Cache-Control"), "public, max-age=60");
  T_ASSERT_STR_EQ(t_header(&r, "X-Mount"), "static");
  T_ASSERT_STR_EQ(t_header(&r, "Accept-Ranges"), "bytes");
  T_ASSERT_STR_EQ(t_header(&r, "Vary"), "Accept-Encoding");
  T_ASSERT(t_header(&r, "X-Seq") == NULL); /* never reached the handler */
  char etag[128], lastmod[64];
  T_ASSERT(t_header(&r, "ETag") && t_header(&r, "Last-Modified"));
  snprintf(etag, sizeof etag, "%s", t_header(&r, "ETag"));
  snprintf(lastmod, sizeof lastmod, "%s", t_header(&r, "Last-Modified"));
  struct stat st;
  char path[600];
  snprintf(path, sizeof path, "%s/a.txt", root);
  T_ASSERT(stat(path, &st) == 0);
  char want_etag[128];
  snprintf(want_etag, sizeof want_etag, "\"%llx-%llx-%llx\"", (unsigned long long)st.st_ino,
           (unsigned long long)st.st_size,
           (unsigned long long)st.st_mtim.tv_sec * 1000000000ull +
               (unsigned long long)st.st_mtim.tv_nsec);
  T_ASSERT_STR_EQ(etag, want_etag);
  t_response_free(&r);

  t_case("a path under no mount goes to the handler");
  r = get(server, "/other/path", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_FIELD(&r, "path", "/other/path");
  t_response_free(&r);

  t_case("HEAD: the GET's headers and length, no body; keep-alive goes on");
  {
    t_conn_t *c = t_connect(server);
    t_send_str(c, "HEAD /static/a.txt HTTP/1.1\r\nHost: s\r\n\r\n"
                  "GET /static/style.css HTTP/1.1\r\nHost: s\r\n\r\n");
    t_expect_head_response(c, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_INT_EQ(r.content_length, 20);
    T_ASSERT_STR_EQ(t_header(&r, "ETag"), etag);
    t_response_free(&r);
    t_expect_response(c, &r);
    T_ASSERT_STR_EQ(r.body, "body{}\n");
    T_ASSERT_STR_EQ(t_header(&r, "Content-Type"), "text/css; charset=utf-8");
    t_response_free(&r);
    t_conn_close(c);
  }

  t_case("traversal in every form is refused (400/404), never the secret");
  {
    static const struct {
      const char *target;
      int status;
    } rows[] = {
        {"/static/../secret.txt", 400},
        {"/static/%2e%2e/secret.txt", 400},
        {"/static/%2E%2E/secret.txt", 400},
        {"/static/.%2e/secret.txt", 400},
        {"/static/..%2fsecret.txt", 400},
        {"/static/%2e%2e%2fsecret.txt", 400},
        {"/static/sub%2f..%2f..%2fsecret.txt", 400},
        {"/static/..%5csecret.txt", 400},
        {"/static/..\\secret.txt", 400},
        {"/static/a.txt%00.png", 400},
        {"/static/%c0%ae%c0%ae/secret.txt", 400},
        {"/static/%e0%80%ae%e0%80%ae/secret.txt", 400},
        {"/static/....//secret.txt", 400},
        {"/static/.../secret.txt", 400},
        {"/static/./a.txt", 400},
        {"/static/%zz", 400},
        {"/static/%2", 400},
        {"/static/../root1/x.txt", 400},
        {"/static1/x.txt", 404}, /* the fallthrough "/" mount: no such file, handler: 200 */
        {"/static/out", 404},
        {"/static/abs", 404},
        {"/static/.env", 404},
        {"/static/.git/config", 404},
        {"/static/%2e%2e%2e%2e//secret.txt", 400},
    };
    for (size_t i = 0; i < T_COUNT(rows); i++) {
      t_response_t x = get(server, rows[i].target, NULL);
      int want = rows[i].status;
      if (strcmp(rows[i].target, "/static1/x.txt") == 0)
        want = 200; /* fell through to the handler */
      if (x.status != want || strstr(x.body, "SECRET"))
        t_case_failed("%s: got %d (body \"%.40s\"), expected %d", rows[i].target, x.status, x.body,
                      want);
      if (want == 200)
        T_ASSERT_FIELD(&x, "path", "/static1/x.txt");
      t_response_free(&x);
    }
  }

  t_case("decoded once: %252e%252e names a file called %2e%2e, nothing else");
  r = get(server, "/static/%252e%252e", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, "a file named %2e%2e\n");
  t_response_free(&r);
  expect_status(server, "/static/%252e%252e/secret.txt", 404);

  t_case("symlinks: inside the root followed; follow_symlinks=0 refuses them");
  r = get(server, "/static/in", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, A_TXT);
  t_response_free(&r);
  expect_status(server, "/nofollow/in", 404);
  expect_status(server, "/nofollow/a.txt", 200);
  expect_status(server, "/nofollow/out", 404);
  expect_status(server, "/static/linkdir/index.html", 200);   /* a directory symlink inside */
  expect_status(server, "/nofollow/linkdir/index.html", 404); /* any component */
  expect_status(server, "/nofollow/sub/index.html", 200);
  r = get(server, "/nofollow/.env", NULL); /* dotfiles allowed on this mount */
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, "DOTENV\n");
  t_response_free(&r);

  t_case("a symlinked precompressed sibling pointing out is not served");
  r = get(server, "/static/p.txt", "Accept-Encoding: gzip\r\n");
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, "plain p\n");
  T_ASSERT(t_header(&r, "Content-Encoding") == NULL);
  t_response_free(&r);

  t_case("index, the 301 to the slash form (query kept), no index and no listing: 404");
  r = get(server, "/static/sub/", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, "<p>sub index</p>\n");
  T_ASSERT_STR_EQ(t_header(&r, "Content-Type"), "text/html; charset=utf-8");
  t_response_free(&r);
  r = get(server, "/static/sub?x=1&y=2", NULL);
  T_ASSERT_INT_EQ(r.status, 301);
  T_ASSERT_STR_EQ(t_header(&r, "Location"), "/static/sub/?x=1&y=2");
  t_response_free(&r);
  r = get(server, "/static", NULL);
  T_ASSERT_INT_EQ(r.status, 301);
  T_ASSERT_STR_EQ(t_header(&r, "Location"), "/static/");
  t_response_free(&r);
  r = get(server, "//sub?q", NULL); /* the "/" mount: never a protocol-relative Location */
  T_ASSERT_INT_EQ(r.status, 301);
  T_ASSERT_STR_EQ(t_header(&r, "Location"), "/sub/?q");
  t_response_free(&r);
  r = get(server, "///static//sub", NULL);
  T_ASSERT_INT_EQ(r.status, 301);
  T_ASSERT_STR_EQ(t_header(&r, "Location"), "/static//sub/");
  t_response_free(&r);
  expect_status(server, "/static/empty/", 404);
  expect_status(server, "/static/a.txt/", 404);
  expect_status(server, "/static/missing.txt", 404);

  t_case("methods other than GET and HEAD: 405 with Allow");
  r = request(server, "POST", "/static/a.txt", "Content-Length: 0\r\n");
  T_ASSERT_INT_EQ(r.status, 405);
  T_ASSERT_STR_EQ(t_header(&r, "Allow"), "GET, HEAD");
  t_response_free(&r);
  r = request(server, "POST", "/echo", "Content-Length: 2\r\n\r\nhi");
  T_ASSERT_INT_EQ(r.status, 200); /* the fallthrough "/" mount leaves POSTs to the handler */
  t_response_free(&r);

  t_case("conditionals: If-None-Match (list, weak, *) and If-Modified-Since give 304");
  pmu_stats_t before = t_stats(server, -1);
  {
    char h[512];
    const char *fmts[] = {"If-None-Match: %s\r\n", "If-None-Match: \"zz\", %s\r\n",
                          "If-None-Match: W/%s\r\n", "If-None-Match: *\r\n",
                          "If-Modified-Since: %s\r\n"};
    for (size_t i = 0; i < T_COUNT(fmts); i++) {
      snprintf(h, sizeof h, fmts[i], i == 4 ? lastmod : etag);
      r = get(server, "/static/a.txt", h);
      if (r.status != 304)
        t_case_failed("%s: got %d", h, r.status);
      T_ASSERT_INT_EQ(r.body_len, 0);
      T_ASSERT_STR_EQ(t_header(&r, "ETag"), etag);
      T_ASSERT_STR_EQ(t_header(&r, "Cache-Control"), "public, max-age=60");
      t_response_free(&r);
    }
    r = get(server, "/static/a.txt", "If-None-Match: \"other\"\r\n");
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    r = get(server, "/static/a.txt", "If-Modified-Since: Thu, 01 Jan 1970 00:00:01 GMT\r\n");
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    /* If-None-Match wins over If-Modified-Since */
    snprintf(h, sizeof h, "If-None-Match: \"other\"\r\nIf-Modified-Since: %s\r\n", lastmod);
    r = get(server, "/static/a.txt", h);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
  }
  pmu_stats_t after = t_stats(server, -1);
  T_ASSERT_INT_EQ(after.not_modified - before.not_modified, 5);

  t_case("If-Match and If-Unmodified-Since: 412 when they fail");
  {
    char h[256];
    r = get(server, "/static/a.txt", "If-Match: \"nope\"\r\n");
    T_ASSERT_INT_EQ(r.status, 412);
    t_response_free(&r);
    snprintf(h, sizeof h, "If-Match: W/%s\r\n", etag); /* weak never matches If-Match */
    r = get(server, "/static/a.txt", h);
    T_ASSERT_INT_EQ(r.status, 412);
    t_response_free(&r);
    snprintf(h, sizeof h, "If-Match: \"x\", %s\r\n", etag);
    r = get(server, "/static/a.txt", h);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    r = get(server, "/static/a.txt", "If-Match: *\r\n");
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    r = get(server, "/static/a.txt", "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:01 GMT\r\n");
    T_ASSERT_INT_EQ(r.status, 412);
    t_response_free(&r);
    snprintf(h, sizeof h, "If-Unmodified-Since: %s\r\n", lastmod);
    r = get(server, "/static/a.txt", h);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
  }

  t_case("Range: single, suffix, open-ended");
  {
    static const struct {
      const char *range, *body, *content_range;
    } rows[] = {
        {"bytes=0-4", "01234", "bytes 0-4/20"},
        {"bytes=-3", "hij", "bytes 17-19/20"},
        {"bytes=15-", "fghij", "bytes 15-19/20"},
        {"bytes=18-100", "ij", "bytes 18-19/20"},
        {"bytes=-100", A_TXT, "bytes 0-19/20"},
        {"bytes=0-5,1-6,2-7", "01234567", "bytes 0-7/20"}, /* overlapping: coalesced */
        {"bytes=0-1,2-3", "0123", "bytes 0-3/20"},         /* adjacent: coalesced */
        {"bytes=1000-,3-4", "34", "bytes 3-4/20"},         /* the unsatisfiable one dropped */
        {"BYTES = 0-0", "0", "bytes 0-0/20"},
        /* Apache Killer's shape: the whole file asked many times over is sent once */
        {"bytes=0-,0-,1-,0-19,5-", A_TXT, "bytes 0-19/20"},
    };
    for (size_t i = 0; i < T_COUNT(rows); i++) {
      char h[128];
      snprintf(h, sizeof h, "Range: %s\r\n", rows[i].range);
      r = get(server, "/static/a.txt", h);
      if (r.status != 206 || strcmp(r.body, rows[i].body) ||
          !t_str_eq(t_header(&r, "Content-Range"), rows[i].content_range))
        t_case_failed("%s: got %d \"%s\" %s", rows[i].range, r.status, r.body,
                      t_header(&r, "Content-Range"));
      t_response_free(&r);
    }
  }

  t_case("Range: several ranges give 206 multipart/byteranges");
  {
    r = get(server, "/static/a.txt", "Range: bytes=0-1,5-6,-2\r\n");
    T_ASSERT_INT_EQ(r.status, 206);
    const char *ct = t_header(&r, "Content-Type");
    T_ASSERT(ct && strncmp(ct, "multipart/byteranges; boundary=", 31) == 0);
    const char *b = ct + 31;
    char want[1024];
    snprintf(want, sizeof want,
             "\r\n--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 0-1/20"
             "\r\n\r\n01"
             "\r\n--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 5-6/20"
             "\r\n\r\n56"
             "\r\n--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 18-19/20"
             "\r\n\r\nij"
             "\r\n--%s--\r\n",
             b, b, b, b);
    T_ASSERT_STR_EQ(r.body, want);
    T_ASSERT_INT_EQ(r.content_length, strlen(want));
    T_ASSERT(strlen(b) >= 16);
    t_response_t r2 = get(server, "/static/a.txt", "Range: bytes=0-1,5-6\r\n");
    T_ASSERT_MSG(strcmp(t_header(&r2, "Content-Type"), ct) != 0, "the boundary is not random");
    t_response_free(&r2);
    t_response_free(&r);
  }

  t_case("Range: invalid or too many ranges are ignored (200); unsatisfiable: 416");
  {
    static const char *ignored[] = {
        "bytes=5-1", "items=0-1", "bytes=a-b", "bytes=0-1,x",
        "bytes",     "bytes=",    "bytes=--1", "bytes=0-1,2-3,4-5,6-7,8-9,10-11"};
    for (size_t i = 0; i < T_COUNT(ignored); i++) {
      char h[128];
      snprintf(h, sizeof h, "Range: %s\r\n", ignored[i]);
      r = get(server, "/static/a.txt", h);
      if (r.status != 200 || strcmp(r.body, A_TXT))
        t_case_failed("%s: got %d", ignored[i], r.status);
      t_response_free(&r);
    }
    static const char *unsat[] = {"bytes=20-", "bytes=100-200", "bytes=-0", "bytes=20-21,30-"};
    for (size_t i = 0; i < T_COUNT(unsat); i++) {
      char h[128];
      snprintf(h, sizeof h, "Range: %s\r\n", unsat[i]);
      r = get(server, "/static/a.txt", h);
      if (r.status != 416 || !t_str_eq(t_header(&r, "Content-Range"), "bytes */20"))
        t_case_failed("%s: got %d %s", unsat[i], r.status, t_header(&r, "Content-Range"));
      t_response_free(&r);
    }
  }

  t_case("If-Range: a matching ETag or date keeps the Range, another sends it all");
  {
    char h[256];
    snprintf(h, sizeof h, "Range: bytes=0-1\r\nIf-Range: %s\r\n", etag);
    r = get(server, "/static/a.txt", h);
    T_ASSERT_INT_EQ(r.status, 206);
    T_ASSERT_STR_EQ(r.body, "01");
    t_response_free(&r);
    snprintf(h, sizeof h, "Range: bytes=0-1\r\nIf-Range: %s\r\n", lastmod);
    r = get(server, "/static/a.txt", h);
    T_ASSERT_INT_EQ(r.status, 206);
    t_response_free(&r);
    snprintf(h, sizeof h, "Range: bytes=0-1\r\nIf-Range: W/%s\r\n", etag);
    r = get(server, "/static/a.txt", h); /* a weak validator never matches If-Range */
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    r = get(server, "/static/a.txt", "Range: bytes=0-1\r\nIf-Range: *\r\n");
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    r = get(server, "/static/a.txt", "Range: bytes=0-1\r\nIf-Range: \"old\"\r\n");
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, A_TXT);
    t_response_free(&r);
    r = get(server, "/static/a.txt",
            "Range: bytes=0-1\r\nIf-Range: Thu, 01 Jan 1970 00:00:01 GMT\r\n");
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
  }

  t_case("MIME: built-in, the system table, the mount's overrides, octet-stream");
  {
    static const struct {
      const char *target, *type;
    } rows[] = {
        {"/static/app.js", "text/javascript; charset=utf-8"},
        {"/static/mod.wasm", "application/wasm"},
        {"/static/data.unknownext", "application/octet-stream"},
        {"/static/x.foo", "text/x-foo"},
        {"/static/x.pmutest", "application/x-pmu-test"},
        {"/x.foo", "application/octet-stream"}, /* the other mount has no overrides */
    };
    for (size_t i = 0; i < T_COUNT(rows); i++) {
      r = get(server, rows[i].target, NULL);
      if (r.status != 200 || !t_str_eq(t_header(&r, "Content-Type"), rows[i].type))
        t_case_failed("%s: %d %s", rows[i].target, r.status, t_header(&r, "Content-Type"));
      t_response_free(&r);
    }
  }

  t_case("precompressed siblings by Accept-Encoding q-values, with Vary and their own ETag");
  {
    static const struct {
      const char *ae, *body, *encoding;
    } rows[] = {
        {NULL, "console.log(1)\n", NULL},
        {"gzip, br", "BROTLI", "br"},
        {"gzip", "GZIPPED", "gzip"},
        {"br;q=0.5, gzip", "GZIPPED", "gzip"},
        {"br;q=0, gzip;q=0", "console.log(1)\n", NULL},
        {"identity", "console.log(1)\n", NULL},
        {"*", "BROTLI", "br"},
        {"*;q=0.2, identity;q=0.5", "console.log(1)\n", NULL},
        {"gzip;q=0.3, identity;q=0", "GZIPPED", "gzip"},
        {"x-gzip", "GZIPPED", "gzip"},
    };
    char id_etag[128] = "";
    for (size_t i = 0; i < T_COUNT(rows); i++) {
      char h[128] = "";
      if (rows[i].ae)
        snprintf(h, sizeof h, "Accept-Encoding: %s\r\n", rows[i].ae);
      r = get(server, "/static/app.js", h);
      if (r.status != 200 || strcmp(r.body, rows[i].body) ||
          !t_str_eq(t_header(&r, "Content-Encoding"), rows[i].encoding) ||
          !t_str_eq(t_header(&r, "Vary"), "Accept-Encoding") ||
          !t_str_eq(t_header(&r, "Content-Type"), "text/javascript; charset=utf-8"))
        t_case_failed("%s: %d \"%s\" %s", rows[i].ae ? rows[i].ae : "(none)", r.status, r.body,
                      t_header(&r, "Content-Encoding"));
      if (i == 0)
        snprintf(id_etag, sizeof id_etag, "%s", t_header(&r, "ETag"));
      else if (rows[i].encoding)
        T_ASSERT_MSG(strcmp(id_etag, t_header(&r, "ETag")) != 0, "the sibling shares the ETag");
      t_response_free(&r);
    }
  }

  t_case("listing: sorted, HTML-escaped, links percent-encoded, dotfiles hidden");
  {
    r = get(server, "/list/", NULL);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(t_header(&r, "Content-Type"), "text/html; charset=utf-8");
    const char *p1 = strstr(r.body, "&lt;i&gt;&amp;&quot;x&#39;.txt");
    const char *p2 = strstr(r.body, "href=\"a%20b.txt\"");
    const char *p3 = strstr(r.body, ">b.txt<");
    const char *p4 = strstr(r.body, "href=\"zdir/\"");
    T_ASSERT_MSG(p1 && p2 && p3 && p4, "listing: %s", r.body);
    T_ASSERT_MSG(p1 < p2 && p2 < p3 && p3 < p4, "not sorted: %s", r.body);
    T_ASSERT(strstr(r.body, "%3Ci%3E%26%22x%27.txt"));
    T_ASSERT(!strstr(r.body, "hidden"));
    T_ASSERT(!strstr(r.body, "<i>"));
    t_response_free(&r);
    r = get(server, "/list/zdir/", NULL);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT(strstr(r.body, "href=\"../\""));
    t_response_free(&r);
    r = get(server, "/list/a%20b.txt", NULL);
    T_ASSERT_STR_EQ(r.body, "ab");
    t_response_free(&r);
  }

  t_case("fallthrough: a file is served, a miss goes to the handler");
  r = get(server, "/a.txt", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_STR_EQ(r.body, A_TXT);
  T_ASSERT(t_header(&r, "Vary") == NULL); /* precompressed off on this mount */
  t_response_free(&r);
  r = get(server, "/nothing/here", NULL);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_FIELD(&r, "path", "/nothing/here");
  t_response_free(&r);

  t_case("pipelined: static answers and handler answers in request order");
  {
    t_conn_t *c = t_connect(server);
    t_send_str(c, "GET /static/a.txt HTTP/1.1\r\nHost: s\r\n\r\n"
                  "GET /defer?ms=30 HTTP/1.1\r\nHost: s\r\n\r\n"
                  "GET /static/style.css HTTP/1.1\r\nHost: s\r\n\r\n"
                  "GET /static/nope HTTP/1.1\r\nHost: s\r\n\r\n");
    t_expect_response(c, &r);
    T_ASSERT_STR_EQ(r.body, A_TXT);
    t_response_free(&r);
    t_expect_response(c, &r);
    T_ASSERT_FIELD(&r, "path", "/defer");
    t_response_free(&r);
    t_expect_response(c, &r);
    T_ASSERT_STR_EQ(r.body, "body{}\n");
    t_response_free(&r);
    t_expect_response(c, &r);
    T_ASSERT_INT_EQ(r.status, 404);
    t_response_free(&r);
    t_conn_close(c);
  }

  t_case("200 static requests pipelined in one send (turns of PIPELINE_TURN), then the handler");
  {
    size_t one = strlen("GET /static/a.txt HTTP/1.1\r\nHost: s\r\n\r\n");
    char *burst = malloc(one * 200 + 64);
    T_ASSERT(burst);
    for (int i = 0; i < 200; i++)
      memcpy(burst + one * (size_t)i, "GET /static/a.txt HTTP/1.1\r\nHost: s\r\n\r\n", one);
    strcpy(burst + one * 200, "GET /last HTTP/1.1\r\nHost: s\r\n\r\n");
    t_conn_t *c = t_connect(server);
    t_send_str(c, burst);
    for (int i = 0; i < 200; i++) {
      t_expect_response(c, &r);
      T_ASSERT_STR_EQ(r.body, A_TXT);
      t_response_free(&r);
    }
    t_expect_response(c, &r);
    T_ASSERT_FIELD(&r, "path", "/last");
    t_response_free(&r);
    t_conn_close(c);
    free(burst);
  }

  t_case("a 3 MiB file whole and in ranges: the exact bytes (file pieces, spliced)");
  {
    size_t big = 3u << 20;
    char *pattern = malloc(big);
    T_ASSERT(pattern);
    for (size_t i = 0; i < big; i++)
      pattern[i] = (char)('a' + (i * 7 + i / 4096) % 26);
    char bp[600];
    snprintf(bp, sizeof bp, "%s/big.bin", root);
    int fd = open(bp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    T_ASSERT(fd >= 0 && write(fd, pattern, big) == (ssize_t)big);
    close(fd);
    before = t_stats(server, -1);
    r = get(server, "/static/big.bin", NULL);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_INT_EQ(r.body_len, big);
    T_ASSERT(memcmp(r.body, pattern, big) == 0);
    t_response_free(&r);
    r = get(server, "/static/big.bin", "Range: bytes=1000000-2999999\r\n");
    T_ASSERT_INT_EQ(r.status, 206);
    T_ASSERT_INT_EQ(r.body_len, 2000000);
    T_ASSERT(memcmp(r.body, pattern + 1000000, 2000000) == 0);
    t_response_free(&r);
    r = get(server, "/static/big.bin", "Range: bytes=10-19,3000000-3000009\r\n");
    T_ASSERT_INT_EQ(r.status, 206);
    T_ASSERT(t_memmem(r.body, r.body_len, "Content-Range: bytes 3000000-3000009/3145728"));
    t_response_free(&r);
    /* files_sent counts when a send completes, which may be after the client has the bytes */
    T_WAIT_UNTIL(t_stats(server, -1).files_sent - before.files_sent >= 4, T_EVENT_MS);
    after = t_stats(server, -1);
    T_ASSERT_MSG(after.files_sent - before.files_sent >= 4, "no file pieces sent");
    free(pattern);
  }

  t_case("static_answers counts the mounts' answers");
  after = t_stats(server, -1);
  T_ASSERT(after.static_answers > 50);
  t_server_destroy(server);

  t_case("a root that cannot be opened fails the start, naming it");
  {
    pmu_static_t bad;
    pmu_static_init(&bad);
    bad.prefix = "/x";
    bad.root = "/nonexistent/files-static-root";
    t_config_init(&config);
    config.statics = &bad;
    config.static_count = 1;
    t_server_t *s2 = NULL;
    int rc = t_server_try_start(&config, &s2);
    T_ASSERT_INT_EQ(rc, -ENOENT);
    T_ASSERT(s2 && strstr(pmu_server_error(s2->pmu), "/nonexistent/files-static-root"));
    t_server_destroy(s2);
  }

  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  T_ASSERT(system(cmd) == 0);
  return t_done();
}
