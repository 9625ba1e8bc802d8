/*
 * test_chunked: chunked request bodies (RFC 9112 section 7.1) are de-chunked
 * before the handler sees them: extensions and trailers skipped, any chunk
 * sizes, any way the bytes are split across sends, followed by more requests.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct buf {
  char *data;
  size_t len;
} buf_t;

static void buf_add(buf_t *b, const void *p, size_t n) {
  b->data = realloc(b->data, b->len + n + 1);
  if (!b->data)
    abort();
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
}

static void buf_str(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

/* Build a chunked POST /echo of `body` cut into chunks of sizes from `sizes`
 * (cycled), with a trailer section. */
static buf_t chunked_request(const char *body, size_t body_len, const size_t *sizes,
                             size_t nsizes) {
  buf_t b = {0};
  buf_str(&b, "POST /echo HTTP/1.1\r\nHost: ch\r\nTransfer-Encoding: chunked\r\n\r\n");
  size_t off = 0, k = 0;
  while (off < body_len) {
    size_t n = sizes[k++ % nsizes];
    if (n > body_len - off)
      n = body_len - off;
    char line[32];
    snprintf(line, sizeof line, "%zx\r\n", n);
    buf_str(&b, line);
    buf_add(&b, body + off, n);
    buf_str(&b, "\r\n");
    off += n;
  }
  buf_str(&b, "0\r\nX-Checksum: none\r\nX-Other: 1\r\n\r\n");
  return b;
}

static void expect_echo(t_conn_t *conn, const char *body, size_t body_len) {
  t_response_t r;
  t_expect_response(conn, &r);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_INT_EQ(r.body_len, body_len);
  T_ASSERT_MSG(memcmp(r.body, body, body_len) == 0, "echoed body differs");
  t_response_free(&r);
}

int main(void) {
  t_init("chunked");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);
  t_conn_t *conn = t_connect(server);

  t_case("chunked upload with extensions and trailers is de-chunked");
  {
    t_send_str(conn, "POST /describe HTTP/1.1\r\nHost: ch\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "4\r\nWiki\r\n"
                     "6;ext=\"quoted;value\"\r\npedia \r\n"
                     "E;a;b=c\r\nin \r\n\r\nchunks.\r\n"
                     "000\r\nX-Trailer-One: 1\r\nX-Trailer-Two: two\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "body_len", "24");
    T_ASSERT_FIELD(&r, "body", "Wikipedia in \r\n\r\nchunks.");
    t_response_free(&r);
  }

  t_case("hex chunk sizes in either case with leading zeros");
  {
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: ch\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "0000a\r\n0123456789\r\nB\r\nabcdefghijk\r\n0\r\n\r\n");
    expect_echo(conn, "0123456789abcdefghijk", 21);
  }

  t_case("empty chunked body");
  {
    t_send_str(conn, "POST /describe HTTP/1.1\r\nHost: ch\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "0\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "body_len", "0");
    t_response_free(&r);
  }

  /* A body every byte of which is checkable. */
  size_t big_len = 300000;
  char *big = malloc(big_len);
  for (size_t i = 0; i < big_len; i++)
    big[i] = (char)(' ' + (i * 7 + i / 251) % 90);

  t_case("a 300 KB chunked upload with irregular chunk sizes in one write");
  {
    static const size_t sizes[] = {1, 4095, 4096, 4097, 7, 8000, 65536, 3, 12345};
    buf_t req = chunked_request(big, big_len, sizes, sizeof sizes / sizeof sizes[0]);
    t_send(conn, req.data, req.len);
    expect_echo(conn, big, big_len);
    free(req.data);
  }

  t_case("a chunked upload split across many sends");
  {
    static const size_t sizes[] = {10, 1, 33};
    buf_t req = chunked_request(big, 600, sizes, 3);
    t_send_pieces(conn, req.data, req.len, 3, 1);
    expect_echo(conn, big, 600);
    free(req.data);
  }

  t_case("a large chunked upload sent in uneven pieces");
  {
    static const size_t sizes[] = {1000, 20000};
    buf_t req = chunked_request(big, big_len, sizes, 2);
    size_t off = 0, piece = 1;
    while (off < req.len) {
      size_t n = piece < req.len - off ? piece : req.len - off;
      t_send(conn, req.data + off, n);
      off += n;
      piece = piece * 3 % 9973 + 1;
    }
    expect_echo(conn, big, big_len);
    free(req.data);
  }

  t_case("a chunked request followed by pipelined requests");
  {
    static const size_t sizes[] = {5};
    buf_t req = chunked_request("0123456789abcdefghij", 20, sizes, 1);
    buf_str(&req, "GET /after HTTP/1.1\r\nHost: ch\r\n\r\n");
    buf_t second = chunked_request("XYZ", 3, sizes, 1);
    buf_add(&req, second.data, second.len);
    t_send(conn, req.data, req.len);
    expect_echo(conn, "0123456789abcdefghij", 20);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_FIELD(&r, "path", "/after");
    T_ASSERT_FIELD(&r, "body_len", "0");
    t_response_free(&r);
    expect_echo(conn, "XYZ", 3);
    free(req.data);
    free(second.data);
  }

  t_case("Transfer-Encoding: chunked in another case is still chunked");
  {
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: ch\r\ntransfer-encoding: Chunked\r\n\r\n"
                     "3\r\nabc\r\n0\r\n\r\n");
    expect_echo(conn, "abc", 3);
  }

  T_ASSERT_MSG(!t_wait_closed(conn, 50), "connection closed");
  t_conn_close(conn);
  free(big);
  t_server_destroy(server);
  return t_done();
}
