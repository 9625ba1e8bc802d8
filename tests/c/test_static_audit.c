/*
 * test_static_audit: hostile requests and careless content against engine
 * mounts, over real sockets: multipart/byteranges parts with a long
 * Content-Type, open failures that are not "no such file" (EMFILE), a FIFO,
 * a socket and precompressed siblings that are not regular files, open
 * redirects through the 301, and Range edge cases.
 */
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
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

static inline void expect_status(const t_server_t *server, const char *target, int status) {
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

  memset(long_type, 0, sizeof long_type);
  strcpy(long_type, "application/x-");
  while (strlen(long_type) < 230)
    strcat(long_type, "long");
  long_type[230] = '\0';
  char overrides[300];
  snprintf(overrides, sizeof overrides, "big=%s", long_type);

  char root[512];
  snprintf(root, sizeof root, "%s/root", base);
  pmu_static_t mounts[2];
  pmu_static_init(&mounts[0]);
  mounts[0].prefix = "/s";
  mounts[0].root = root;
  mounts[0].mime_types = overrides;
  pmu_static_init(&mounts[1]);
  mounts[1].prefix = "/";
  mounts[1].root = root;

  pmu_config_t config;
  t_config_init(&config);
  config.statics = mounts;
  config.static_count = 2;
  t_server_t *server = t_server_start(&config);

  test_multipart_long_type(server);

  t_server_destroy(server);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  T_ASSERT(system(cmd) == 0);
  return t_done();
}
