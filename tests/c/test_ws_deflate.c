/*
 * test_ws_deflate: permessage-deflate (RFC 7692) end to end: the offer and
 * the 101's answer, compressed messages in (with context takeover across
 * messages) and out, small messages left uncompressed, a zip bomb cut at
 * ws_max_message (1009), corrupt data (1007), RSV1 on a continuation (1002),
 * and the counters. The client side is plain zlib.
 */
#include "wslib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define MAX_MESSAGE (256u * 1024u)

static uint64_t echoed_raw; /* bytes of the messages the server sent compressed */

typedef struct {
  z_stream def, inf;
} client_z;

static void client_init(client_z *z) {
  memset(z, 0, sizeof *z);
  T_ASSERT(deflateInit2(&z->def, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  T_ASSERT(inflateInit2(&z->inf, -15) == Z_OK);
}

static void client_free(client_z *z) {
  deflateEnd(&z->def);
  inflateEnd(&z->inf);
}

/* Compress one message as a client does (sync flush, the 4-byte tail cut). */
static size_t compress_msg(z_stream *d, const void *in, size_t len, char *out, size_t cap) {
  d->next_in = (Bytef *)in;
  d->avail_in = (uInt)len;
  d->next_out = (Bytef *)out;
  d->avail_out = (uInt)cap;
  T_ASSERT(deflate(d, Z_SYNC_FLUSH) == Z_OK);
  T_ASSERT(d->avail_in == 0 && d->avail_out > 0);
  size_t n = cap - d->avail_out;
  T_ASSERT(n >= 4 && memcmp(out + n - 4, "\x00\x00\xff\xff", 4) == 0);
  return n - 4;
}

static size_t inflate_msg(z_stream *z, const char *in, size_t len, char *out, size_t cap) {
  char *buf = malloc(len + 4);
  memcpy(buf, in, len);
  memcpy(buf + len, "\x00\x00\xff\xff", 4);
  z->next_in = (Bytef *)buf;
  z->avail_in = (uInt)(len + 4);
  z->next_out = (Bytef *)out;
  z->avail_out = (uInt)cap;
  int rc = inflate(z, Z_SYNC_FLUSH);
  T_ASSERT_MSG(rc == Z_OK || rc == Z_BUF_ERROR, "inflate: %d", rc);
  free(buf);
  return cap - z->avail_out;
}

/* Connect offering permessage-deflate; returns the 101's extension value. */
static t_conn_t *connect_pmd(const t_server_t *s, const char *offer, char *ext, size_t ext_cap) {
  char req[1024], extra[256];
  snprintf(extra, sizeof extra, "Sec-WebSocket-Extensions: %s\r\n", offer);
  size_t n = t_ws_request(req, sizeof req, "/ws", extra);
  t_conn_t *c = t_connect(s);
  t_send(c, req, n);
  t_response_t r;
  t_expect_head_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 101);
  const char *v = t_header(&r, "Sec-WebSocket-Extensions");
  snprintf(ext, ext_cap, "%s", v ? v : "");
  t_response_free(&r);
  return c;
}

static void test_round_trip(const t_server_t *s) {
  t_case("negotiated: the 101 answers the offer");
  char ext[256];
  t_conn_t *c = connect_pmd(s, "permessage-deflate; client_max_window_bits", ext, sizeof ext);
  T_ASSERT_STR_EQ(ext, "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12");
  client_z z;
  client_init(&z);
  /* The client's window must not exceed the 12 bits granted. */
  deflateEnd(&z.def);
  T_ASSERT(deflateInit2(&z.def, 6, Z_DEFLATED, -12, 8, Z_DEFAULT_STRATEGY) == Z_OK);

  t_case("compressed messages both ways, the context carried across messages");
  char text[4096], comp[8192], back[8192];
  for (int round = 0; round < 3; round++) {
    int n = 0;
    while (n < 3000)
      n += snprintf(text + n, sizeof text - (size_t)n, "{\"round\":%d,\"k\":\"value %d\"},", round,
                    n);
    size_t cn = compress_msg(&z.def, text, (size_t)n, comp, sizeof comp);
    t_ws_send(c, 0xC1, comp, cn); /* FIN, RSV1, text */
    t_ws_frame_t f;
    T_ASSERT_INT_EQ(t_ws_read(c, &f, T_IO_TIMEOUT_MS), 0);
    T_ASSERT_INT_EQ(f.opcode, PMU_WS_TEXT);
    T_ASSERT_INT_EQ(f.rsv, 4); /* RSV1: the echo is compressed */
    T_ASSERT(f.len < (size_t)n / 2);
    size_t bn = inflate_msg(&z.inf, f.data, f.len, back, sizeof back);
    T_ASSERT_INT_EQ(bn, n);
    T_ASSERT(memcmp(back, text, (size_t)n) == 0);
    t_ws_frame_free(&f);
    echoed_raw += (uint64_t)n;
  }

  t_case("a compressed message in fragments (RSV1 on the first only)");
  size_t cn = compress_msg(&z.def, text, 3000, comp, sizeof comp);
  size_t half = cn / 2;
  t_ws_send(c, 0x41, comp, half);
  t_ws_send(c, 0x80, comp + half, cn - half);
  t_ws_frame_t f;
  T_ASSERT_INT_EQ(t_ws_read(c, &f, T_IO_TIMEOUT_MS), 0);
  size_t bn = inflate_msg(&z.inf, f.data, f.len, back, sizeof back);
  T_ASSERT_INT_EQ(bn, 3000);
  T_ASSERT(memcmp(back, text, 3000) == 0);
  T_ASSERT_INT_EQ(f.rsv, 4);
  t_ws_frame_free(&f);
  echoed_raw += 3000;

  t_case("a message under ws_deflate_min_size goes uncompressed");
  t_ws_send(c, 0x81, "tiny", 4);
  t_ws_expect(c, PMU_WS_TEXT, "tiny", 4); /* t_ws_expect checks rsv == 0 */

  t_case("RSV1 on a continuation frame: 1002");
  t_ws_send(c, 0x01, "a", 1);
  t_ws_send(c, 0xC0, "b", 1);
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), 1002);
  client_free(&z);
  t_conn_close(c);
}

static void test_bomb(const t_server_t *s) {
  t_case("a zip bomb is cut at ws_max_message: 1009, never inflated whole");
  char ext[256];
  t_conn_t *c = connect_pmd(s, "permessage-deflate", ext, sizeof ext);
  T_ASSERT(strncmp(ext, "permessage-deflate", 18) == 0);
  client_z z;
  client_init(&z);
  size_t big = 64u * 1024 * 1024; /* 64 MiB of zeros: about 64 KiB compressed */
  char *zeros = calloc(1, 1 << 20);
  size_t cap = 256 * 1024, cn = 0;
  char *comp = malloc(cap);
  for (size_t done = 0; done < big; done += 1 << 20) {
    z.def.next_in = (Bytef *)zeros;
    z.def.avail_in = 1 << 20;
    z.def.next_out = (Bytef *)comp + cn;
    z.def.avail_out = (uInt)(cap - cn);
    T_ASSERT(deflate(&z.def, done + (1 << 20) >= big ? Z_SYNC_FLUSH : Z_NO_FLUSH) == Z_OK);
    cn = cap - z.def.avail_out;
  }
  cn -= 4;
  T_ASSERT(cn < MAX_MESSAGE); /* the wire size alone would pass */
  t_ws_send(c, 0xC2, comp, cn);
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), 1009);
  free(zeros);
  free(comp);
  client_free(&z);
  t_conn_close(c);

  t_case("a small bomb, whole in one receive: 1009 too");
  c = connect_pmd(s, "permessage-deflate", ext, sizeof ext);
  client_init(&z);
  zeros = calloc(1, 1 << 20); /* 1 MiB of zeros: about 1 KiB compressed */
  comp = malloc(1 << 16);
  cn = compress_msg(&z.def, zeros, 1 << 20, comp, 1 << 16);
  T_ASSERT(cn < 2048);
  t_ws_send(c, 0xC2, comp, cn);
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), 1009);
  free(zeros);
  free(comp);
  client_free(&z);
  t_conn_close(c);

  t_case("corrupt deflate data: 1007");
  c = connect_pmd(s, "permessage-deflate", ext, sizeof ext);
  t_ws_send(c, 0xC2, "\xff\xff\xff\xff\xff", 5);
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), 1007);
  t_conn_close(c);
}

static void test_no_takeover(void) {
  t_case("ws_deflate_no_context_takeover: both asked to reset; messages still round-trip");
  pmu_config_t cfg;
  t_ws_config_init(&cfg);
  cfg.ws_deflate_no_context_takeover = 1;
  t_server_t *s = t_server_start(&cfg);
  char ext[256];
  t_conn_t *c = connect_pmd(s, "permessage-deflate", ext, sizeof ext);
  T_ASSERT_CONTAINS(ext, strlen(ext), "server_no_context_takeover");
  T_ASSERT_CONTAINS(ext, strlen(ext), "client_no_context_takeover");
  char text[2000], comp[4096], back[4096];
  memset(text, 'q', sizeof text);
  for (int i = 0; i < 3; i++) {
    z_stream d;
    memset(&d, 0, sizeof d);
    T_ASSERT(deflateInit2(&d, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    size_t cn = compress_msg(&d, text, sizeof text, comp, sizeof comp);
    deflateEnd(&d);
    t_ws_send(c, 0xC2, comp, cn);
    t_ws_frame_t f;
    T_ASSERT_INT_EQ(t_ws_read(c, &f, T_IO_TIMEOUT_MS), 0);
    T_ASSERT_INT_EQ(f.rsv, 4);
    z_stream inf;
    memset(&inf, 0, sizeof inf);
    T_ASSERT(inflateInit2(&inf, -15) == Z_OK);
    size_t bn = inflate_msg(&inf, f.data, f.len, back, sizeof back); /* a fresh window each */
    inflateEnd(&inf);
    T_ASSERT_INT_EQ(bn, sizeof text);
    t_ws_frame_free(&f);
  }
  t_conn_close(c);
  t_server_destroy(s);
}

static void test_off(void) {
  t_case("ws_deflate 0: the offer is declined, RSV1 is a protocol error");
  pmu_config_t cfg;
  t_ws_config_init(&cfg);
  cfg.ws_deflate = 0;
  t_server_t *s = t_server_start(&cfg);
  char ext[256];
  t_conn_t *c = connect_pmd(s, "permessage-deflate", ext, sizeof ext);
  T_ASSERT_STR_EQ(ext, "");
  t_ws_send(c, 0xC1, "x", 1);
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), 1002);
  t_conn_close(c);
  t_server_destroy(s);
}

int main(void) {
  t_init("test_ws_deflate");
  pmu_config_t cfg;
  t_ws_config_init(&cfg);
  cfg.ws_max_message = MAX_MESSAGE;
  t_server_t *s = t_server_start(&cfg);
  test_round_trip(s);
  test_bomb(s);
  t_case("counters: the deflate bytes both ways");
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT(st.ws_deflate_in_wire > 0 && st.ws_deflate_in_raw > 3 * st.ws_deflate_in_wire);
  T_ASSERT(st.ws_deflate_out_wire > 0 && st.ws_deflate_out_raw > 3 * st.ws_deflate_out_wire);
  T_ASSERT_INT_EQ(st.ws_deflate_out_raw, echoed_raw); /* "tiny" went uncompressed */
  t_server_destroy(s);
  test_no_takeover();
  test_off();
  return t_done();
}
