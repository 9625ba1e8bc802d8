/*
 * fuzz_ws: WebSocket frames, split at arbitrary points, sent over TCP after a valid opening
 * handshake to the echo endpoint of the fuzz server (fuzz_common.c: /ws, every message
 * echoed, pings answered by the engine), and what comes back checked against a reference
 * reading of the same bytes written here from RFC 6455 and RFC 7692.
 *
 * Payload byte 0 chooses:
 *   bits 0-1  the Sec-WebSocket-Extensions offer: none; "permessage-deflate;
 *             client_max_window_bits"; "permessage-deflate; server_no_context_takeover;
 *             client_no_context_takeover"; or the input's next bytes up to a NUL (at most
 *             80, printable only: the engine's negotiation parser fuzzed)
 *   bit 2     structured: the rest is a list of frame descriptions that the harness
 *             serialises (masked, lengths right, data messages compressed by the client's
 *             zlib when asked and negotiated), so that deep states are reached; else the
 *             rest is sent as it is (raw frames)
 * A structured frame: byte A (bits 0-3 opcode, 4 FIN, 5 compress this message / RSV1,
 * 6 RSV2 and RSV3, 7 no mask), byte B (payload length; 254: two more bytes, little endian),
 * then the payload bytes (from the input, as many as remain).
 *
 * The checks (any failing is a crash with the input and the output):
 *   - the server answers 101 with the right Sec-WebSocket-Accept and a permessage-deflate
 *     response that fits the offer (RFC 7692 7.1), then closes once the client half-closed;
 *   - every server frame is well formed: unmasked, no RSV2/RSV3, RSV1 only on the first
 *     frame of a data message and only with deflate negotiated, control frames final and
 *     <= 125 bytes, nothing after a close frame, a close code never 1005, 1006 or 1015;
 *     compressed messages inflate (the harness's own zlib, honouring context takeover);
 *     text messages are UTF-8;
 *   - against the reference: the echoed messages are a prefix of the messages the input
 *     holds before its first error, in order; the pongs a prefix of its pings; a close for
 *     an error (1002, 1007, 1009) only where the reference finds one; the reply to the
 *     client's close carries its code. The client half-closes only once the answers the
 *     reference expects are in, or a close frame (a second at most: answers_in), so then
 *     they must be complete: every message echoed and every ping answered when the input
 *     has no error and no close, and a close frame when it has. Where the RFC leaves the server a
 * choice (a length in more bytes than needed, a compressed message longer on the wire than
 *     ws_max_message, a final deflate block inside a message) the reference stops judging.
 */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- bytes ------------------------------------------------------------------------- */

typedef struct bytes {
  uint8_t *p;
  size_t len, cap;
} bytes_t;

static void put(bytes_t *b, const void *p, size_t n) {
  if (b->cap - b->len < n) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n)
      cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p)
      abort();
    b->cap = cap;
  }
  if (n)
    memcpy(b->p + b->len, p, n);
  b->len += n;
}

/* ---- UTF-8, the reference's own (by code point ranges, not by table) ------------------ */

/* 1 when s[0..n) could begin valid UTF-8 text (an incomplete last character allowed):
 * for a character still missing bytes, the code points it could become are a range (its
 * bits padded with zeros, or ones), which must meet the valid ones for its length. */
static int utf8_prefix_ok(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t b = s[i];
    size_t need;
    uint32_t cp, min;
    if (b < 0x80) {
      i++;
      continue;
    }
    if ((b & 0xe0) == 0xc0)
      need = 2, cp = b & 0x1f, min = 0x80;
    else if ((b & 0xf0) == 0xe0)
      need = 3, cp = b & 0x0f, min = 0x800;
    else if ((b & 0xf8) == 0xf0)
      need = 4, cp = b & 0x07, min = 0x10000;
    else
      return 0;
    size_t have = 1;
    while (have < need && i + have < n) {
      if ((s[i + have] & 0xc0) != 0x80)
        return 0;
      cp = cp << 6 | (s[i + have] & 0x3f);
      have++;
    }
    unsigned missing = (unsigned)(6 * (need - have));
    uint32_t lo = cp << missing, hi = lo | ((1u << missing) - 1);
    if (hi < min || lo > 0x10ffff || (lo >= 0xd800 && hi <= 0xdfff))
      return 0;
    if (have == need && (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)))
      return 0;
    i += have;
  }
  return 1;
}

/* 1 when s[0..n) is valid and complete. */
static int utf8_ok(const uint8_t *s, size_t n) {
  if (!utf8_prefix_ok(s, n))
    return 0;
  size_t k = 0; /* trailing continuation bytes */
  while (k < n && k < 4 && (s[n - 1 - k] & 0xc0) == 0x80)
    k++;
  if (k == n)
    return n == 0;
  uint8_t lead = s[n - 1 - k];
  return k + 1 == (size_t)(lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4);
}

/* ---- the reference: what the server must do with the client's bytes ----------------- */

enum { LIMIT_MESSAGE = FUZZ_WS_MAX_MESSAGE, LIMIT_FRAME = FUZZ_WS_MAX_FRAME };

typedef struct item {
  uint8_t opcode; /* TEXT/BINARY: an echo; PING: a pong is due */
  bytes_t data;
} item_t;

typedef struct expect {
  item_t echoes[256];
  size_t n_echoes;
  bytes_t pongs[256];
  size_t n_pongs;
  int end;           /* what ended the reading: see below */
  int close_code;    /* END_CLOSE: the client's code, 0 without one */
  int uncertain;     /* the RFC leaves the server a choice from here: stop judging */
  int error_partial; /* the input ends inside a frame that may already be judged bad */
} expect_t;

enum { END_INPUT, END_ERROR, END_CLOSE };

typedef struct params {
  int deflate, server_nct, client_nct, client_bits;
} params_t;

/* Inflates a whole message as RFC 7692 7.2.2 says, with the reference's own stream. Returns
 * 0 and the bytes, 1 for "too big", -1 for bad data, 2 for "the server may choose" (a final
 * block inside, or data that ends inside a block). */
static int ref_inflate(z_stream *z, int reset_after, const bytes_t *in, bytes_t *out) {
  static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
  bytes_t all = {0};
  put(&all, in->p, in->len);
  put(&all, tail, 4);
  uint8_t buf[4096];
  z->next_in = all.p;
  z->avail_in = (uInt)all.len;
  int rc = 0;
  for (;;) {
    z->next_out = buf;
    z->avail_out = sizeof buf;
    int ret = inflate(z, Z_SYNC_FLUSH);
    put(out, buf, sizeof buf - z->avail_out);
    if (out->len > LIMIT_MESSAGE) {
      rc = 1;
      break;
    }
    if (ret == Z_STREAM_END) {
      rc = 2;
      break;
    }
    if (ret == Z_DATA_ERROR || ret == Z_NEED_DICT || ret == Z_MEM_ERROR || ret == Z_STREAM_ERROR) {
      rc = -1;
      break;
    }
    if (z->avail_in == 0 && z->avail_out != 0)
      break;
  }
  /* After a whole message and the tail, inflate waits for a block header (data_type 128);
   * anywhere else the message ended inside a block, which a server may refuse or not. */
  if (rc == 0 && !(z->data_type & 128))
    rc = 2;
  free(all.p);
  if (reset_after || rc != 0)
    inflateReset(z);
  return rc;
}

static int close_code_ok(int code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

/* Reads the client's bytes as the server must. */
static void reference(const uint8_t *w, size_t n, const params_t *pm, expect_t *ex) {
  memset(ex, 0, sizeof *ex);
  /* Our inflater's window: the client's as negotiated when the server keeps a context (a
   * distance beyond it is an error), 15 without (the server's shared stream takes any). */
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, -(pm->client_nct ? 15 : pm->client_bits)) != Z_OK)
    abort();
  size_t off = 0;
  int in_msg = 0, msg_op = 0, msg_z = 0;
  bytes_t msg = {0};
  ex->end = END_INPUT;
  while (off < n) {
    if (n - off < 2)
      break;
    uint8_t b0 = w[off], b1 = w[off + 1];
    int fin = b0 >> 7, rsv1 = (b0 >> 6) & 1, rsv23 = (b0 >> 4) & 3, op = b0 & 15;
    int masked = b1 >> 7, control = op >= 8;
    uint64_t len = b1 & 127;
    /* What the first two bytes tell already (a control frame with a 16- or 64-bit length is
     * too long, or a short one written long: judged below). */
    int error = rsv23 || (op >= 3 && op <= 7) || op >= 11 || !masked ||
                (rsv1 && (!pm->deflate || control || op == 0)) || (control && !fin) ||
                (op == 0 && !in_msg) || ((op == 1 || op == 2) && in_msg);
    size_t hlen = 2 + (len == 126 ? 2 : len == 127 ? 8 : 0) + (masked ? 4 : 0);
    if (n - off < hlen) {
      /* The input ends inside the header: a server may judge what it has or wait. */
      ex->error_partial = error || (control && len > 125);
      break;
    }
    int minimal = 1;
    if (len == 126) {
      len = (uint64_t)w[off + 2] << 8 | w[off + 3];
      minimal = len >= 126;
    } else if (len == 127) {
      len = 0;
      for (int i = 0; i < 8; i++)
        len = len << 8 | w[off + 2 + i];
      minimal = len >= 65536;
    }
    error |= (len >> 63) != 0 || len > LIMIT_FRAME || (control && len > 125);
    if (!error && !minimal) {
      ex->uncertain = 1; /* RFC 6455 5.2: "minimal number of bytes MUST be used"; some take it */
      break;
    }
    int z_msg = op == 0 ? msg_z : rsv1;
    size_t so_far = op == 0 ? msg.len : 0;
    if (!error && !control && !z_msg && so_far + len > LIMIT_MESSAGE)
      error = 1; /* an uncompressed message grows beyond the limit */
    if (error) {
      ex->end = END_ERROR;
      break;
    }
    if (n - off < hlen + len) {
      /* The input ends inside this frame: an uncompressed text payload may already be
       * invalid UTF-8 (fail-fast), and the server may judge that. */
      if (n - off >= hlen && !control && !z_msg && (op == 1 || (op == 0 && msg_op == 1))) {
        bytes_t t = {0};
        if (op == 0)
          put(&t, msg.p, msg.len);
        size_t have = n - off - hlen;
        for (size_t i = 0; i < have; i++) {
          uint8_t c = w[off + hlen + i] ^ w[off + hlen - 4 + (i & 3)];
          put(&t, &c, 1);
        }
        if (!utf8_prefix_ok(t.p, t.len))
          ex->error_partial = 1;
        free(t.p);
      }
      break;
    }
    bytes_t pl = {0};
    for (uint64_t i = 0; i < len; i++) {
      uint8_t c = w[off + hlen + i] ^ w[off + hlen - 4 + (i & 3)];
      put(&pl, &c, 1);
    }
    off += hlen + (size_t)len;
    if (op == 9) {
      if (ex->n_pongs < 256) {
        ex->pongs[ex->n_pongs++] = pl;
      } else {
        free(pl.p);
        ex->uncertain = 1; /* more than the reference keeps: stop judging */
        break;
      }
      continue;
    }
    if (op == 10) {
      free(pl.p);
      continue;
    }
    if (op == 8) {
      int bad = pl.len == 1;
      int code = 0;
      if (pl.len >= 2) {
        code = pl.p[0] << 8 | pl.p[1];
        bad |= !close_code_ok(code) || !utf8_ok(pl.p + 2, pl.len - 2);
      }
      free(pl.p);
      ex->end = bad ? END_ERROR : END_CLOSE;
      ex->close_code = code;
      break;
    }
    /* A data frame. */
    if (op != 0) {
      in_msg = 1, msg_op = op, msg_z = rsv1;
      msg.len = 0;
    }
    put(&msg, pl.p, pl.len);
    free(pl.p);
    if (msg_z && msg.len > LIMIT_MESSAGE) {
      ex->uncertain = 1; /* compressed bytes beyond the limit: a server may stop here */
      break;
    }
    if (!msg_z && msg_op == 1 && !utf8_prefix_ok(msg.p, msg.len)) {
      ex->end = END_ERROR; /* fail-fast inside a fragmented text message */
      break;
    }
    if (!fin)
      continue;
    in_msg = 0;
    bytes_t body = {0};
    if (msg_z) {
      int r = ref_inflate(&z, pm->client_nct, &msg, &body);
      if (r == 2) {
        ex->uncertain = 1;
        free(body.p);
        break;
      }
      if (r != 0) {
        ex->end = END_ERROR;
        free(body.p);
        break;
      }
    } else {
      put(&body, msg.p, msg.len);
    }
    if (msg_op == 1 && !utf8_ok(body.p, body.len)) {
      ex->end = END_ERROR;
      free(body.p);
      break;
    }
    if (ex->n_echoes < 256) {
      ex->echoes[ex->n_echoes].opcode = (uint8_t)msg_op;
      ex->echoes[ex->n_echoes++].data = body;
    } else {
      free(body.p);
      ex->uncertain = 1;
      break;
    }
  }
  free(msg.p);
  inflateEnd(&z);
}

static void expect_free(expect_t *ex) {
  for (size_t i = 0; i < ex->n_echoes; i++)
    free(ex->echoes[i].data.p);
  for (size_t i = 0; i < ex->n_pongs; i++)
    free(ex->pongs[i].p);
}

/* ---- the client's side: handshake and structured frames -------------------------------- */

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" /* RFC 6455 1.3's example */

/* The handshake request for the offer; *rest is advanced past bytes the offer took. */
static size_t handshake(char *buf, size_t cap, int variant, const uint8_t **rest, size_t *left,
                        char *offer, size_t offer_cap) {
  offer[0] = 0;
  if (variant == 1)
    snprintf(offer, offer_cap, "permessage-deflate; client_max_window_bits");
  else if (variant == 2)
    snprintf(offer, offer_cap,
             "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  else if (variant == 3) {
    size_t k = 0;
    while (*left && k < 80 && k + 1 < offer_cap) {
      uint8_t c = **rest;
      (*rest)++, (*left)--;
      if (c == 0)
        break;
      if (c >= 0x20 && c < 0x7f)
        offer[k++] = (char)c;
    }
    offer[k] = 0;
  }
  int n = snprintf(buf, cap,
                   "GET /ws HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                   offer[0] ? "Sec-WebSocket-Extensions: " : "", offer, offer[0] ? "\r\n" : "");
  return (size_t)n;
}

/* Structured descriptions to wire bytes. The compressor follows the negotiated client
 * window and context takeover. */
static void serialise(const uint8_t *p, size_t n, const params_t *pm, bytes_t *wire) {
  z_stream z;
  memset(&z, 0, sizeof z);
  int bits = pm->client_bits < 9 ? 9 : pm->client_bits;
  if (deflateInit2(&z, 6, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    abort();
  int compressing = 0; /* inside a message the client compresses */
  size_t off = 0;
  uint32_t key_seed = 0x9e3779b9u;
  while (off + 2 <= n) {
    uint8_t a = p[off], b = p[off + 1];
    off += 2;
    size_t len = b;
    if (b == 254 && off + 2 <= n) {
      len = p[off] | (size_t)p[off + 1] << 8;
      off += 2;
    }
    if (len > n - off)
      len = n - off;
    const uint8_t *payload = p + off;
    off += len;
    int op = a & 15, fin = (a >> 4) & 1, want_z = (a >> 5) & 1, rsv23 = (a >> 6) & 1;
    int unmasked = a >> 7;
    int rsv1 = 0;
    bytes_t body = {0};
    if ((op == 1 || op == 2) && want_z && pm->deflate)
      compressing = 1, rsv1 = 1;
    else if (op == 1 || op == 2)
      compressing = 0;
    else if (op != 0 && want_z)
      rsv1 = 1; /* RSV1 on a control frame, or without deflate: an error to provoke */
    if (op <= 2 && compressing) {
      uint8_t out[4096];
      z.next_in = (Bytef *)(uintptr_t)payload;
      z.avail_in = (uInt)len;
      do {
        z.next_out = out;
        z.avail_out = sizeof out;
        deflate(&z, fin ? Z_SYNC_FLUSH : Z_NO_FLUSH);
        put(&body, out, sizeof out - z.avail_out);
      } while (z.avail_out == 0);
      if (fin) {
        if (body.len >= 4 && memcmp(body.p + body.len - 4, "\0\0\xff\xff", 4) == 0) {
          body.len -= 4; /* the 00 00 FF FF of the sync flush (RFC 7692 7.2.1) */
        } else if (body.len == 0) {
          /* An empty message right after a flush: zlib emits nothing; the empty message
           * is an empty stored block, 00 once its tail is removed. */
          put(&body, "", 1);
        } else {
          abort(); /* zlib ended a message without its sync marker */
        }
        if (pm->client_nct)
          deflateReset(&z);
        compressing = 0;
      }
    } else {
      put(&body, payload, len);
    }
    uint8_t h[14];
    size_t hl = 2;
    h[0] = (uint8_t)(fin << 7 | rsv1 << 6 | (rsv23 ? 0x30 : 0) | op);
    if (body.len < 126) {
      h[1] = (uint8_t)body.len;
    } else if (body.len < 65536) {
      h[1] = 126, h[2] = (uint8_t)(body.len >> 8), h[3] = (uint8_t)body.len, hl = 4;
    } else {
      h[1] = 127, hl = 10;
      for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)((uint64_t)body.len >> (56 - 8 * i));
    }
    if (!unmasked) {
      h[1] |= 0x80;
      key_seed = key_seed * 1103515245u + 12345u;
      memcpy(h + hl, &key_seed, 4);
      for (size_t i = 0; i < body.len; i++)
        body.p[i] ^= h[hl + (i & 3)];
      hl += 4;
    }
    put(wire, h, hl);
    put(wire, body.p, body.len);
    free(body.p);
  }
  deflateEnd(&z);
}

/* ---- the checker of the server's bytes --------------------------------------------- */

static const uint8_t *g_input;
static size_t g_input_len;
static const char *g_out;
static size_t g_out_len;

_Noreturn static void fail(const char *why) {
  fuzz_fail(why, g_input, g_input_len, g_out, g_out_len);
}

static int header_value(const char *head, size_t len, const char *name, char *val, size_t cap) {
  size_t nl = strlen(name);
  for (size_t i = 0; i + nl + 1 < len; i++) {
    if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, name, nl) == 0 &&
        head[i + nl] == ':') {
      size_t s = i + nl + 1;
      while (s < len && head[s] == ' ')
        s++;
      size_t e = s;
      while (e < len && head[e] != '\r')
        e++;
      size_t k = e - s < cap - 1 ? e - s : cap - 1;
      memcpy(val, head + s, k);
      val[k] = 0;
      return 1;
    }
  }
  return 0;
}

/* The negotiated parameters from the 101's Sec-WebSocket-Extensions, checked against the
 * offer: the response holds only what RFC 7692 lets a server answer. */
static void read_params(const char *ext, const char *offer, params_t *pm) {
  memset(pm, 0, sizeof *pm);
  pm->client_bits = 15;
  if (!ext[0])
    return;
  if (strncmp(ext, "permessage-deflate", 18) != 0)
    fail("an extension other than permessage-deflate was answered");
  pm->deflate = 1;
  const char *p = ext + 18;
  int smwb = 0;
  while (*p) {
    if (strncmp(p, "; ", 2) != 0)
      fail("malformed Sec-WebSocket-Extensions answer");
    p += 2;
    if (strncmp(p, "server_no_context_takeover", 26) == 0)
      pm->server_nct = 1, p += 26;
    else if (strncmp(p, "client_no_context_takeover", 26) == 0)
      pm->client_nct = 1, p += 26;
    else if (strncmp(p, "server_max_window_bits=", 23) == 0)
      smwb = atoi(p + 23), p += 23 + strspn(p + 23, "0123456789");
    else if (strncmp(p, "client_max_window_bits=", 23) == 0) {
      pm->client_bits = atoi(p + 23), p += 23 + strspn(p + 23, "0123456789");
      if (!strstr(offer, "client_max_window_bits") && !strstr(offer, "CLIENT_MAX_WINDOW_BITS"))
        fail("client_max_window_bits answered to an offer without it (RFC 7692 7.1.2.2)");
    } else
      fail("an unknown parameter in the extension answer");
  }
  if ((smwb && (smwb < 8 || smwb > 15)) || pm->client_bits < 8 || pm->client_bits > 15)
    fail("a window size out of 8..15 in the extension answer");
}

/* What the exchange needs once the 101 is in: the input's frames and how to send them. */
typedef struct ws_ctx {
  const uint8_t *rest; /* the input after the mode byte and a fuzzed offer */
  size_t left;
  int structured;
  const char *offer;
  const fuzz_plan_t *plan; /* the input's cuts and pause */
  params_t pm;             /* read from the 101 */
  int upgraded;
  bytes_t wire; /* what was sent after the handshake */
  fuzz_plan_t send;
  size_t head_len;
  expect_t ex; /* the reference's reading of wire */
} ws_ctx_t;

/* The 101 is in: check it, read what it negotiated, make the frames. */
static const fuzz_plan_t *on_head(void *arg, const char *head, size_t len) {
  ws_ctx_t *c = arg;
  g_out = head, g_out_len = len;
  if (len < 13 || memcmp(head, "HTTP/1.1 101 ", 13) != 0)
    fail("the handshake was not answered 101");
  char val[200];
  if (!header_value(head, len, "Sec-WebSocket-Accept", val, sizeof val) || strcmp(val, ACCEPT) != 0)
    fail("a wrong Sec-WebSocket-Accept");
  char ext[200] = "";
  header_value(head, len, "Sec-WebSocket-Extensions", ext, sizeof ext);
  read_params(ext, c->offer, &c->pm);
  if (!c->offer[0] && c->pm.deflate)
    fail("permessage-deflate answered without an offer");
  c->upgraded = 1;
  if (c->structured)
    serialise(c->rest, c->left, &c->pm, &c->wire);
  else
    put(&c->wire, c->rest, c->left);
  /* The pieces: the input's cuts, scaled onto the wire bytes. */
  c->send = *c->plan;
  c->send.payload = c->wire.p ? c->wire.p : (const uint8_t *)"";
  c->send.len = c->wire.len;
  for (unsigned i = 0; i < c->plan->ncuts; i++)
    c->send.cuts[i] = c->plan->len ? c->plan->cuts[i] * c->wire.len / c->plan->len : 0;
  c->head_len = len;
  reference(c->wire.p, c->wire.len, &c->pm, &c->ex);
  g_out = NULL, g_out_len = 0;
  return &c->send;
}

/* Have all the answers the reference expects come (or a close frame)? Counts the server's
 * complete data messages and pongs so far; the client half-closes once this says 1, so
 * that an EOF does not cut the answers short. */
static int answers_in(void *arg, const char *out, size_t len) {
  ws_ctx_t *c = arg;
  if (len < c->head_len)
    return 0;
  const uint8_t *o = (const uint8_t *)out + c->head_len;
  size_t n = len - c->head_len, off = 0, messages = 0, pongs = 0;
  while (n - off >= 2) {
    uint8_t b0 = o[off], b1 = o[off + 1];
    uint64_t plen = b1 & 127;
    size_t hl = 2;
    if (plen == 126) {
      if (n - off < 4)
        break;
      plen = (uint64_t)o[off + 2] << 8 | o[off + 3], hl = 4;
    } else if (plen == 127) {
      if (n - off < 10)
        break;
      plen = 0;
      for (int i = 0; i < 8; i++)
        plen = plen << 8 | o[off + 2 + i];
      hl = 10;
    }
    if (b1 & 0x80)
      hl += 4; /* a masked frame (an error the checker reports) */
    if (n - off - hl < plen)
      break;
    off += hl + (size_t)plen;
    int op = b0 & 15;
    if (op == 8)
      return 1;
    if (op == 10)
      pongs++;
    else if (op < 8 && (b0 & 0x80))
      messages++;
  }
  return (c->ex.end == END_INPUT || c->ex.uncertain) && messages >= c->ex.n_echoes &&
         pongs >= c->ex.n_pongs;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_ws_enable();
  fuzz_plan_t plan;
  fuzz_plan(data, size, &plan);
  if (plan.len == 0)
    return 0;
  g_input = data, g_input_len = size;
  ws_ctx_t c;
  memset(&c, 0, sizeof c);
  c.rest = plan.payload + 1;
  c.left = plan.len - 1;
  c.structured = (plan.payload[0] >> 2) & 1;
  c.plan = &plan;
  char req[512], offer[96];
  size_t req_len =
      handshake(req, sizeof req, plan.payload[0] & 3, &c.rest, &c.left, offer, sizeof offer);
  c.offer = offer;

  size_t out_len = 0;
  char *out = fuzz_exchange_after_head(req, req_len, on_head, answers_in, &c, &out_len);
  g_out = out, g_out_len = out_len;
  if (!out)
    fail("the server kept the connection open after the client half-closed");
  if (!c.upgraded)
    fail("no response head to the handshake");
  const char *end = memmem(out, out_len, "\r\n\r\n", 4);
  size_t head_len = (size_t)(end - out) + 4;
  params_t pm = c.pm;
  bytes_t wire = c.wire;
  expect_t ex = c.ex;

  /* The server's frames. */
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, -15) != Z_OK)
    abort();
  const uint8_t *o = (const uint8_t *)out + head_len;
  size_t on = out_len - head_len, off = 0;
  size_t echoes = 0, pongs = 0;
  int in_msg = 0, msg_op = 0, msg_z = 0, closed = 0, close_code = -1;
  bytes_t msg = {0};
  while (off < on) {
    if (closed)
      fail("bytes after the server's close frame");
    if (on - off < 2)
      fail("a truncated frame header from the server");
    uint8_t b0 = o[off], b1 = o[off + 1];
    int fin = b0 >> 7, rsv1 = (b0 >> 6) & 1, op = b0 & 15;
    uint64_t len = b1 & 127;
    size_t hl = 2;
    if (b1 & 0x80)
      fail("a masked frame from the server");
    if (b0 & 0x30)
      fail("RSV2/RSV3 set by the server");
    if (len == 126) {
      if (on - off < 4)
        fail("truncated length");
      len = (uint64_t)o[off + 2] << 8 | o[off + 3], hl = 4;
    } else if (len == 127) {
      if (on - off < 10)
        fail("truncated length");
      len = 0;
      for (int i = 0; i < 8; i++)
        len = len << 8 | o[off + 2 + i];
      hl = 10;
    }
    if (on - off - hl < len)
      fail("a truncated frame from the server");
    const uint8_t *pl = o + off + hl;
    off += hl + (size_t)len;
    if (op >= 8) {
      if (!fin || len > 125 || rsv1)
        fail("a bad control frame from the server");
      if (op == 8) {
        closed = 1;
        if (len == 1)
          fail("a close frame of 1 byte");
        if (len >= 2) {
          close_code = pl[0] << 8 | pl[1];
          if (!close_code_ok(close_code))
            fail("a close code the wire must not carry");
          if (!utf8_ok(pl + 2, (size_t)len - 2))
            fail("a close reason that is not UTF-8");
        } else {
          close_code = 0;
        }
      } else if (op == 10) {
        if (!ex.uncertain && (pongs >= ex.n_pongs || ex.pongs[pongs].len != len ||
                              (len && memcmp(ex.pongs[pongs].p, pl, len) != 0)))
          fail("a pong that answers no ping of the input (or with another payload)");
        pongs++;
      } else if (op != 9) {
        fail("a control opcode the server must not send");
      }
      continue;
    }
    if (op == 0 ? !in_msg : (op > 2 || in_msg))
      fail("bad data framing from the server");
    if (rsv1 && (op == 0 || !pm.deflate))
      fail("RSV1 where the server may not set it");
    if (op != 0)
      in_msg = 1, msg_op = op, msg_z = rsv1, msg.len = 0;
    put(&msg, pl, (size_t)len);
    if (!fin)
      continue;
    in_msg = 0;
    bytes_t body = {0};
    if (msg_z) {
      if (ref_inflate(&z, pm.server_nct, &msg, &body) != 0)
        fail("a compressed message from the server does not inflate");
    } else {
      put(&body, msg.p, msg.len);
    }
    if (msg_op == 1 && !utf8_ok(body.p, body.len))
      fail("a text message from the server that is not UTF-8");
    if (!ex.uncertain) {
      if (echoes >= ex.n_echoes)
        fail("an echo of a message the input does not hold (before its first error)");
      const item_t *want = &ex.echoes[echoes];
      if (want->opcode != msg_op || want->data.len != body.len ||
          (body.len && memcmp(want->data.p, body.p, body.len) != 0))
        fail("an echo that differs from the message sent");
    }
    echoes++;
    free(body.p);
  }
  if (in_msg)
    fail("the server left a message unfinished");
  /* The client half-closed only once the answers were in (answers_in), so where the
   * reference is sure they are all there. */
  if (!ex.uncertain && !ex.error_partial) {
    if (ex.end == END_INPUT && (echoes != ex.n_echoes || pongs != ex.n_pongs))
      fail("not every message echoed or every ping answered within a second");
    if (ex.end != END_INPUT && !closed)
      fail("no close frame after the client's close or an error in its frames");
  }
  if (closed && !ex.uncertain) {
    int error_close = close_code == 1002 || close_code == 1007 || close_code == 1009;
    if (ex.end == END_ERROR && !error_close)
      fail("an error in the input, closed with another code");
    if (ex.end == END_INPUT && error_close && !ex.error_partial)
      fail("closed for an error the input does not have");
    if (ex.end == END_CLOSE && close_code != ex.close_code &&
        !(ex.close_code == 0 && close_code == 1000))
      fail("the reply to the client's close does not carry its code");
  }
  if (getenv("FUZZ_WS_VERBOSE")) /* replaying one input: what was compared */
    fprintf(stderr,
            "fuzz_ws: deflate %d (nct %d/%d, client window %d); sent %zu bytes; reference: %zu "
            "messages, %zu pings, end %s%s; server: %zu echoes, %zu pongs, close %d\n",
            pm.deflate, pm.server_nct, pm.client_nct, pm.client_bits, wire.len, ex.n_echoes,
            ex.n_pongs,
            ex.end == END_ERROR   ? "error"
            : ex.end == END_CLOSE ? "close"
                                  : "input",
            ex.uncertain ? " (uncertain)" : "", echoes, pongs, close_code);
  free(msg.p);
  inflateEnd(&z);
  expect_free(&ex);
  free(wire.p);
  free(out);
  return 0;
}
