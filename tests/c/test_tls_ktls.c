/*
 * test_tls_ktls.c: the kernel TLS hand-off (core/tls.c's BIO answering
 * OpenSSL's kTLS controls). After the handshake the kernel encrypts what the
 * connection sends: the session says ktls_tx, tls_ktls counts it, answers
 * (memory and files, which now splice) arrive intact through an ordinary TLS
 * client, close_notify still ends a closing answer; with ssl_ktls 0 the same
 * server stays in user space.
 *
 * It needs a kernel with CONFIG_TLS (TCP_ULP "tls") and an OpenSSL built with
 * kTLS: pmu_probe() says whether this host has both, and the test skips with
 * its reason otherwise (a kernel without CONFIG_TLS answers TCP_ULP "tls" with
 * ENOENT).
 */
#include "testlib.h"
#include "tlslib.h"

#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static t_tls_cert_t ca, leaf;
static char file_path[600];
static const size_t file_len = 2 * 1024 * 1024 + 77; /* above file_splice_min */

static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (t_path_is(r, "/tlsinfo")) {
      pmu_tls_info_t info;
      char body[128];
      int rc = pmu_request_tls_info(r, &info);
      int n = snprintf(body, sizeof body, "rc=%d\nktls_tx=%d\n", rc, rc ? -1 : info.ktls_tx);
      pmu_response_t resp = {.status = 200, .body = body, .body_len = (size_t)n};
      pmu_respond(r, &resp);
    } else if (t_path_is(r, "/file")) {
      int fd = open(file_path, O_RDONLY | O_CLOEXEC);
      T_ASSERT(fd >= 0);
      T_ASSERT_INT_EQ(pmu_respond_file(r, 200, NULL, 0, fd, 0, file_len, NULL, NULL), 0);
    } else {
      t_handle_request(data, r);
    }
  }
}

/* One request on ssl, its whole response (Content-Length framed) into *out. */
static void get(SSL *ssl, int fd, const char *target, t_response_t *out) {
  char req[256];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", target);
  T_ASSERT(t_tls_write_all(ssl, req, (size_t)n));
  size_t cap = 4 << 20, len = 0;
  char *buf = malloc(cap + 1);
  T_ASSERT(buf);
  long used;
  while ((used = t_parse_response(buf, len, false, false, out)) == 0) {
    T_ASSERT(len < cap);
    int k = SSL_read(ssl, buf + len, (int)(cap - len));
    if (k > 0) {
      len += (size_t)k;
      continue;
    }
    T_ASSERT_INT_EQ(SSL_get_error(ssl, k), SSL_ERROR_WANT_READ);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    T_ASSERT(poll(&p, 1, T_IO_TIMEOUT_MS) == 1);
  }
  T_ASSERT(used > 0);
  free(buf);
}

static void run(int ktls) {
  pmu_config_t cfg;
  t_config_init(&cfg);
  cfg.handler = handler;
  cfg.threads = 1;
  cfg.ssl_certfile = leaf.cert_path;
  cfg.ssl_keyfile = leaf.key_path;
  cfg.ssl_ktls = ktls;
  t_server_t *s = t_server_start(&cfg);
  char why[256];
  int fd;
  t_tls_client_opts_t opts = {.ciphersuites = "TLS_AES_128_GCM_SHA256"};
  SSL *ssl = t_tls_connect(s->port, &opts, T_IO_TIMEOUT_MS, &fd, why, sizeof why);
  T_ASSERT_MSG(ssl, "handshake failed: %s", why);
  t_response_t resp;
  get(ssl, fd, "/tlsinfo", &resp);
  T_ASSERT_FIELD(&resp, "ktls_tx", ktls ? "1" : "0");
  t_response_free(&resp);
  get(ssl, fd, "/big?n=3000000", &resp);
  T_ASSERT_INT_EQ(resp.body_len, 3000000);
  for (size_t i = 0; i < resp.body_len; i += 997)
    T_ASSERT(resp.body[i] == (char)('a' + i % 26));
  t_response_free(&resp);
  get(ssl, fd, "/file", &resp);
  T_ASSERT_INT_EQ(resp.body_len, file_len);
  for (size_t i = 0; i < file_len; i += 991)
    T_ASSERT(resp.body[i] == (char)(i * 13 % 253));
  t_response_free(&resp);
  get(ssl, fd, "/close", &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  t_response_free(&resp);
  char b;
  int k;
  for (;;) {
    k = SSL_read(ssl, &b, 1);
    if (k <= 0 && SSL_get_error(ssl, k) == SSL_ERROR_WANT_READ) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      T_ASSERT(poll(&p, 1, T_IO_TIMEOUT_MS) == 1);
      continue;
    }
    break;
  }
  T_ASSERT_MSG(k == 0 && SSL_get_error(ssl, k) == SSL_ERROR_ZERO_RETURN,
               "no close_notify after a closing answer");
  t_tls_close(ssl, fd);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT_INT_EQ(st.tls_ktls, ktls ? 1 : 0);
  T_ASSERT_INT_EQ(st.file_bytes_spliced > 0, ktls ? 1 : 0);
  t_server_destroy(s);
}

int main(void) {
  t_init("test_tls_ktls");
  pmu_probe_t probe;
  T_ASSERT_INT_EQ(pmu_probe(&probe), 0);
  if (!probe.ktls)
    t_skip("kernel TLS is not usable on this host: %s", probe.ktls_message);
  t_tls_make_ca("ca", &ca);
  const char *const dns[] = {"localhost", NULL};
  t_tls_cert_opts_t o = {.kind = T_TLS_ECDSA_P256, .dns = dns};
  t_tls_make_cert(&ca, "leaf", &o, &leaf);
  snprintf(file_path, sizeof file_path, "%s/file.bin", t_tls_dir());
  char *data = malloc(file_len);
  for (size_t i = 0; i < file_len; i++)
    data[i] = (char)(i * 13 % 253);
  t_write_file(file_path, data, file_len);
  free(data);

  t_case("kTLS: the kernel encrypts after the handshake; memory, files (spliced), close_notify");
  run(1);
  t_case("ssl_ktls 0: the same server in user space");
  run(0);
  t_tls_cert_free(&leaf);
  t_tls_cert_free(&ca);
  return t_done();
}
