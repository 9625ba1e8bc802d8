/*
 * test_ws_framing: every framing rule of RFC 6455 as a table: the frames a
 * client sends, and the close code that must come back (or the echo that
 * must). Then frames split at every byte across receives.
 */
#include "wslib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows name only the fields they need. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define MAX_FRAME 1000
#define MAX_MESSAGE 3000

/* One frame of a row: first byte, payload, and how it is sent. */
typedef struct {
  int b0;
  const char *data;
  size_t len;   /* 0 with data: strlen */
  int unmasked; /* sent without a mask */
  int len64;    /* the length as a 64-bit field whose top bit is set */
  size_t fill;  /* a payload of this many 'a' instead of data */
} t_fr_t;

typedef struct {
  const char *name;
  t_fr_t frames[4];
  int close;        /* the close code the server must send, or 0: none */
  const char *echo; /* a text message that must come back first (NULL: none) */
  int send_more;    /* 0: after the frames, nothing more is sent (fail fast) */
  size_t echo_len;  /* the echo's length when it is not strlen(echo) (its bytes unchecked) */
  const char *raw;  /* bytes sent instead of the frames */
  size_t raw_len;
} t_row_t;

#define T(b, s) \
  { .b0 = (b), .data = (s) }
#define TL(b, s, l) \
  { .b0 = (b), .data = (s), .len = (l) }

static const t_row_t rows[] = {
    /* masking */
    {"an unmasked frame", {{.b0 = 0x81, .data = "hi", .unmasked = 1}}, 1002, NULL, 0},
    /* reserved bits and opcodes */
    {"RSV1 without permessage-deflate", {T(0xC1, "hi")}, 1002, NULL, 0},
    {"RSV2", {T(0xA1, "hi")}, 1002, NULL, 0},
    {"RSV3", {T(0x91, "hi")}, 1002, NULL, 0},
    {"opcode 3 (reserved, data)", {T(0x83, "hi")}, 1002, NULL, 0},
    {"opcode 0xB (reserved, control)", {T(0x8B, "")}, 1002, NULL, 0},
    /* lengths */
    {"a 64-bit length with the top bit set", {{.b0 = 0x82, .len64 = 1}}, 1002, NULL, 0},
    {"a frame over ws_max_frame", {{.b0 = 0x82, .fill = MAX_FRAME + 1}}, 1009, NULL, 0},
    {"a message over ws_max_message in fragments",
     {{.b0 = 0x02, .fill = MAX_FRAME},
      {.b0 = 0x00, .fill = MAX_FRAME},
      {.b0 = 0x00, .fill = MAX_FRAME},
      {.b0 = 0x80, .fill = 1}},
     1009,
     NULL,
     0},
    {"a message of exactly ws_max_message",
     {{.b0 = 0x01, .fill = MAX_FRAME},
      {.b0 = 0x00, .fill = MAX_FRAME},
      {.b0 = 0x80, .fill = MAX_FRAME}},
     0,
     "",
     1,
     MAX_MESSAGE},
    /* control frames */
    {"a ping of 126 bytes", {{.b0 = 0x89, .fill = 126}}, 1002, NULL, 0},
    {"a fragmented ping", {T(0x09, "p")}, 1002, NULL, 0},
    {"a fragmented close", {T(0x08, "")}, 1002, NULL, 0},
    {"a close with RSV1", {T(0xC8, "")}, 1002, NULL, 0},
    /* fragmentation */
    {"a continuation with nothing to continue", {T(0x80, "x")}, 1002, NULL, 0},
    {"a continuation, not final, with nothing to continue", {T(0x00, "x")}, 1002, NULL, 0},
    {"a new message inside a fragmented one", {T(0x01, "a"), T(0x81, "b")}, 1002, NULL, 0},
    {"a binary start inside a text message", {T(0x01, "a"), T(0x02, "b")}, 1002, NULL, 0},
    {"a close inside a fragmented message is a close",
     {T(0x01, "a"), TL(0x88, "\x03\xe8", 2)},
     1000,
     NULL,
     0},
    /* close frames */
    {"a close payload of 1 byte", {TL(0x88, "\x03", 1)}, 1002, NULL, 0},
    {"close code 999", {TL(0x88, "\x03\xe7", 2)}, 1002, NULL, 0},
    {"close code 1004", {TL(0x88, "\x03\xec", 2)}, 1002, NULL, 0},
    {"close code 1005", {TL(0x88, "\x03\xed", 2)}, 1002, NULL, 0},
    {"close code 1006", {TL(0x88, "\x03\xee", 2)}, 1002, NULL, 0},
    {"close code 1015", {TL(0x88, "\x03\xf7", 2)}, 1002, NULL, 0},
    {"close code 1016", {TL(0x88, "\x03\xf8", 2)}, 1002, NULL, 0},
    {"close code 2999", {TL(0x88, "\x0b\xb7", 2)}, 1002, NULL, 0},
    {"close code 5000", {TL(0x88, "\x13\x88", 2)}, 1002, NULL, 0},
    {"close code 65535", {TL(0x88, "\xff\xff", 2)}, 1002, NULL, 0},
    {"close code 1000, echoed", {TL(0x88, "\x03\xe8", 2)}, 1000, NULL, 0},
    {"close code 1003, echoed", {TL(0x88, "\x03\xeb", 2)}, 1003, NULL, 0},
    {"close code 1007, echoed", {TL(0x88, "\x03\xef", 2)}, 1007, NULL, 0},
    {"close code 1014, echoed", {TL(0x88, "\x03\xf6", 2)}, 1014, NULL, 0},
    {"close code 3000, echoed", {TL(0x88, "\x0b\xb8", 2)}, 3000, NULL, 0},
    {"close code 4999, echoed", {TL(0x88, "\x13\x87", 2)}, 4999, NULL, 0},
    {"a close reason in valid UTF-8", {TL(0x88, "\x03\xe8h\xc3\xa9", 5)}, 1000, NULL, 0},
    {"a close reason in invalid UTF-8", {TL(0x88, "\x03\xe8\xc3\x28", 4)}, 1007, NULL, 0},
    /* UTF-8 of text messages */
    {"text of invalid UTF-8", {T(0x81, "ok\xff")}, 1007, NULL, 0},
    {"text of an overlong encoding", {T(0x81, "\xc0\xaf")}, 1007, NULL, 0},
    {"text of a UTF-16 surrogate", {T(0x81, "\xed\xa0\x80")}, 1007, NULL, 0},
    {"text above U+10FFFF", {T(0x81, "\xf4\x90\x80\x80")}, 1007, NULL, 0},
    {"text ending inside a character", {T(0x81, "\xe2\x82")}, 1007, NULL, 0},
    {"invalid UTF-8 in a first fragment fails before the rest comes",
     {T(0x01, "a\xff")},
     1007,
     NULL,
     0},
    {"a character split across fragments",
     {T(0x01, "\xe2"), T(0x00, "\x82"), T(0x80, "\xac")},
     0,
     "\xe2\x82\xac",
     1},
    {"binary need not be UTF-8", {TL(0x82, "\xff\xfe", 2)}, 0, NULL, 1},
    {"an unsolicited pong is no error", {T(0x8A, "p"), T(0x81, "after")}, 0, "after", 1},
    {"a 16-bit length for a short payload (not minimal) is accepted",
     {{0}},
     0,
     "abc",
     1,
     0,
     "\x81\xfe\x00\x03\x00\x00\x00\x00"
     "abc",
     11},
};

/* The bytes of one frame of a row into out; returns the length. */
static size_t build(char *out, const t_fr_t *f) {
  if (f->len64) {
    uint8_t *o = (uint8_t *)out;
    o[0] = (uint8_t)f->b0;
    o[1] = 0x80 | 127;
    o[2] = 0x80; /* 2^63 and more */
    memset(o + 3, 0, 7);
    memset(o + 10, 0x11, 4);
    return 14;
  }
  if (f->fill) {
    char *buf = malloc(f->fill);
    memset(buf, 'a', f->fill);
    size_t n = t_ws_build(out, f->b0, buf, f->fill, 1);
    free(buf);
    return n;
  }
  size_t len = f->len ? f->len : strlen(f->data);
  return t_ws_build(out, f->b0, f->data, len, !f->unmasked);
}

static void run_row(const t_server_t *s, const t_row_t *row) {
  t_case(row->name);
  t_conn_t *c = t_ws_connect(s, "/ws");
  char *buf = malloc(4 * (MAX_FRAME + 20));
  size_t n = 0;
  for (int i = 0; i < 4; i++) {
    const t_fr_t *f = &row->frames[i];
    if (!f->b0 && !f->data && !f->fill && !f->len64)
      break;
    n += build(buf + n, f);
  }
  if (row->raw) {
    memcpy(buf, row->raw, row->raw_len);
    n = row->raw_len;
  }
  t_send(c, buf, n);
  free(buf);
  if (row->echo) {
    t_ws_frame_t f;
    int rc = t_ws_read(c, &f, T_IO_TIMEOUT_MS);
    if (rc < 0) {
      t_case_failed("no echo: %d", rc);
      t_conn_close(c);
      return;
    }
    size_t want = row->echo_len ? row->echo_len : strlen(row->echo);
    if (f.opcode != PMU_WS_TEXT || f.len != want ||
        (!row->echo_len && memcmp(f.data, row->echo, want) != 0))
      t_case_failed("echo: opcode %d, %zu bytes", f.opcode, f.len);
    t_ws_frame_free(&f);
  }
  if (row->close) {
    int code = t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL);
    if (code != row->close)
      t_case_failed("close code %d, expected %d", code, row->close);
    else if (!t_wait_closed(c, 3000))
      t_case_failed("the connection stayed open after the close");
  } else {
    /* Still open and well: a message goes round (after the row's echoes). */
    t_ws_send(c, 0x81, "still", 5);
    t_ws_frame_t f;
    int rc;
    while ((rc = t_ws_read(c, &f, T_IO_TIMEOUT_MS)) == 0) {
      int done = f.opcode == PMU_WS_TEXT && f.len == 5 && memcmp(f.data, "still", 5) == 0;
      int other = f.opcode == PMU_WS_CLOSE;
      t_ws_frame_free(&f);
      if (done || other) {
        if (other)
          rc = -EPROTO;
        break;
      }
    }
    if (rc < 0)
      t_case_failed("the connection did not go on: %d", rc);
  }
  t_conn_close(c);
}

/* A fragmented message with a ping between its fragments and a whole one
 * after, sent in two pieces split at every byte. */
static void test_splits(const t_server_t *s) {
  t_case("frames split at every byte: fragments, an interleaved ping, 16-bit lengths");
  char bytes[1024];
  size_t n = 0;
  char mid[200];
  memset(mid, 'm', sizeof mid);
  n += t_ws_build(bytes + n, 0x01, "fir", 3, 1);
  n += t_ws_build(bytes + n, 0x89, "ping", 4, 1);
  n += t_ws_build(bytes + n, 0x00, mid, sizeof mid, 1); /* a 16-bit length */
  n += t_ws_build(bytes + n, 0x80, "st", 2, 1);
  n += t_ws_build(bytes + n, 0x82, "\x01\x02", 2, 1);
  char want[205];
  memcpy(want, "fir", 3);
  memcpy(want + 3, mid, sizeof mid);
  memcpy(want + 203, "st", 2);
  for (size_t i = 1; i < n; i++) {
    t_conn_t *c = t_ws_connect(s, "/ws");
    t_send(c, bytes, i);
    t_sleep_ms(2); /* two receives, as far as the kernel lets us */
    t_send(c, bytes + i, n - i);
    t_ws_expect(c, PMU_WS_PONG, "ping", 4);
    t_ws_expect(c, PMU_WS_TEXT, want, sizeof want);
    t_ws_expect(c, PMU_WS_BINARY, "\x01\x02", 2);
    t_conn_close(c);
  }
}

int main(void) {
  t_init("test_ws_framing");
  pmu_config_t cfg;
  t_ws_config_init(&cfg);
  cfg.ws_max_frame = MAX_FRAME;
  cfg.ws_max_message = MAX_MESSAGE;
  cfg.ws_deflate = 0;
  t_server_t *s = t_server_start(&cfg);
  for (size_t i = 0; i < T_COUNT(rows); i++)
    run_row(s, &rows[i]);
  test_splits(s);
  t_case("counters: protocol closes counted by class");
  T_WAIT_UNTIL(t_stats(s, -1).ws_open == 0, T_EVENT_MS);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT(st.ws_closes[2] >= 20); /* 1002 and 1007 */
  T_ASSERT(st.ws_closes[3] >= 2);  /* 1009 */
  t_server_destroy(s);
  return t_done();
}
