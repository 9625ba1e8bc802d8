/*
 * ws_codec.c: unmasking, UTF-8 validation and permessage-deflate for the WebSocket
 * frame parser and sender (see ws_codec.h for the contracts and the memory figures).
 */
#include "ws_codec.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

/* ---- Masking ----------------------------------------------------------------------- */

/* GCC/clang vector extension: 32 bytes, two SSE2 registers on baseline x86-64 (one AVX2
 * register where the build allows it). memcpy in and out keeps every access unaligned-safe
 * and compiles to plain vector loads and stores. */
typedef uint8_t v32u8 __attribute__((vector_size(32)));

void pmu__ws_unmask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4],
                    size_t phase) {
  /* The key rotated so that k[j] applies to byte j of this piece; k repeats with period 4,
   * so k[i % 32] applies to byte i, and so does k[i & 3]. */
  uint8_t k[32];
  for (size_t j = 0; j < sizeof k; j++)
    k[j] = key[(phase + j) & 3];
  v32u8 kv;
  memcpy(&kv, k, sizeof kv);
  size_t i = 0;
  for (; len - i >= 64; i += 64) {
    v32u8 a, b;
    memcpy(&a, src + i, 32);
    memcpy(&b, src + i + 32, 32);
    a ^= kv;
    b ^= kv;
    memcpy(dst + i, &a, 32);
    memcpy(dst + i + 32, &b, 32);
  }
  if (len - i >= 32) {
    v32u8 a;
    memcpy(&a, src + i, 32);
    a ^= kv;
    memcpy(dst + i, &a, 32);
    i += 32;
  }
  if (len - i >= 8) { /* up to three words: the key's first 8 bytes fit any 4-aligned i */
    uint64_t k8;
    memcpy(&k8, k, 8);
    do {
      uint64_t w;
      memcpy(&w, src + i, 8);
      w ^= k8;
      memcpy(dst + i, &w, 8);
      i += 8;
    } while (len - i >= 8);
  }
  for (; i < len; i++)
    dst[i] = src[i] ^ k[i & 3];
}

/* ---- UTF-8 ------------------------------------------------------------------------- */

/* A DFA written from Unicode's table 3-7 of well-formed byte sequences, in the "shift"
 * form: a state is a bit offset (a multiple of 6), and utf8_row[byte] holds, at each
 * state's offset, the 6-bit offset of the state that byte leads to. One step is
 * s = utf8_row[byte] >> (s & 63): a load that does not depend on s and one shift that
 * does, so a run of non-ASCII bytes costs about a cycle each. */
enum {
  ACCEPT = 0, /* at a character boundary */
  REJECT = 6, /* invalid: absorbing */
  NEED1 = 12, /* one continuation byte to go */
  NEED2 = 18, /* two to go */
  E0_2 = 24,  /* after E0: A0..BF (no overlong), then one */
  ED_2 = 30,  /* after ED: 80..9F (no surrogate), then one */
  NEED3 = 36, /* three to go */
  F0_3 = 42,  /* after F0: 90..BF (no overlong), then two */
  F4_3 = 48,  /* after F4: 80..8F (at most U+10FFFF), then two */
};

/* The row of a byte class: where each state goes (REJECT always stays). */
#define ROW(acc, n1, n2, e0, ed, n3, f0, f4)                                          \
  ((uint64_t)(acc) << ACCEPT | (uint64_t)REJECT << REJECT | (uint64_t)(n1) << NEED1 | \
   (uint64_t)(n2) << NEED2 | (uint64_t)(e0) << E0_2 | (uint64_t)(ed) << ED_2 |        \
   (uint64_t)(n3) << NEED3 | (uint64_t)(f0) << F0_3 | (uint64_t)(f4) << F4_3)
#define R REJECT
/*                        ACCEPT  NEED1   NEED2  E0_2   ED_2   NEED3  F0_3   F4_3 */
#define ROW_ASCII ROW(ACCEPT, R, R, R, R, R, R, R)
#define ROW_80_8F ROW(R, ACCEPT, NEED1, R, NEED1, NEED2, R, NEED2)
#define ROW_90_9F ROW(R, ACCEPT, NEED1, R, NEED1, NEED2, NEED2, R)
#define ROW_A0_BF ROW(R, ACCEPT, NEED1, NEED1, R, NEED2, NEED2, R)
#define ROW_BAD ROW(R, R, R, R, R, R, R, R) /* C0, C1: overlong; F5..FF: beyond U+10FFFF */
#define ROW_LEAD2 ROW(NEED1, R, R, R, R, R, R, R)
#define ROW_E0 ROW(E0_2, R, R, R, R, R, R, R)
#define ROW_LEAD3 ROW(NEED2, R, R, R, R, R, R, R)
#define ROW_ED ROW(ED_2, R, R, R, R, R, R, R)
#define ROW_F0 ROW(F0_3, R, R, R, R, R, R, R)
#define ROW_LEAD4 ROW(NEED3, R, R, R, R, R, R, R)
#define ROW_F4 ROW(F4_3, R, R, R, R, R, R, R)

/* clang-format off */
static const uint64_t utf8_row[256] = {
    [0x00 ... 0x7f] = ROW_ASCII, [0x80 ... 0x8f] = ROW_80_8F, [0x90 ... 0x9f] = ROW_90_9F,
    [0xa0 ... 0xbf] = ROW_A0_BF, [0xc0 ... 0xc1] = ROW_BAD,   [0xc2 ... 0xdf] = ROW_LEAD2,
    [0xe0] = ROW_E0,             [0xe1 ... 0xec] = ROW_LEAD3, [0xed] = ROW_ED,
    [0xee ... 0xef] = ROW_LEAD3, [0xf0] = ROW_F0,             [0xf1 ... 0xf3] = ROW_LEAD4,
    [0xf4] = ROW_F4,             [0xf5 ... 0xff] = ROW_BAD,
};
/* clang-format on */
#undef R

void pmu__utf8_init(pmu__utf8_t *u) { u->state = ACCEPT; }

static int ascii16(const uint8_t *p) {
  uint64_t a, b;
  memcpy(&a, p, 8);
  memcpy(&b, p + 8, 8);
  return ((a | b) & 0x8080808080808080ull) == 0;
}

int pmu__utf8_feed(pmu__utf8_t *u, const uint8_t *p, size_t n) {
  uint64_t s = u->state;
  size_t i = 0;
  if (s == REJECT)
    return -1;
  while (i < n) {
    /* At a boundary, ASCII goes 16 bytes per step. */
    if (s == ACCEPT && n - i >= 16 && ascii16(p + i)) {
      i += 16;
      while (n - i >= 16 && ascii16(p + i))
        i += 16;
      continue;
    }
    /* Else up to 16 bytes through the DFA, then a check: REJECT absorbs, so checking once
     * per block still reports -1 in the call that brought the impossible byte. */
    size_t end = n - i > 16 ? i + 16 : n;
    for (; i < end; i++)
      s = utf8_row[p[i]] >> (s & 63);
    s &= 63;
    if (s == REJECT) {
      u->state = REJECT;
      return -1;
    }
  }
  u->state = (uint32_t)s;
  return 0;
}

int pmu__utf8_done(const pmu__utf8_t *u) { return u->state == ACCEPT; }

int pmu__utf8_valid(const uint8_t *data, size_t len) {
  pmu__utf8_t u;
  pmu__utf8_init(&u);
  return pmu__utf8_feed(&u, data, len) == 0 && pmu__utf8_done(&u);
}

/* ---- permessage-deflate: negotiation ------------------------------------------------ */

/* RFC 6455 9.1 with RFC 7230's list rule:
 *   Sec-WebSocket-Extensions = 1#extension
 *   extension = token *( OWS ";" OWS token [ OWS "=" OWS ( token / quoted-string ) ] )
 * A cursor over one header value. */
typedef struct cursor {
  const char *p;
  const char *end;
} cursor_t;

static int is_tchar(unsigned char c) {
  /* RFC 7230 3.2.6: ALPHA / DIGIT / "!#$%&'*+-.^_`|~" */
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void skip_ows(cursor_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
    c->p++;
}

/* A token at the cursor: its bytes in [*s, *s + *n). 0 if none. */
static int take_token(cursor_t *c, const char **s, size_t *n) {
  const char *start = c->p;
  while (c->p < c->end && is_tchar((unsigned char)*c->p))
    c->p++;
  *s = start;
  *n = (size_t)(c->p - start);
  return *n > 0;
}

/* A parameter value: a token or a quoted-string, unescaped into buf (its first cap bytes;
 * the whole value is consumed either way). Returns its full length, -1 if malformed. */
static int take_value(cursor_t *c, char *buf, size_t cap) {
  size_t n = 0;
  if (c->p < c->end && *c->p == '"') {
    c->p++;
    for (;;) {
      if (c->p >= c->end)
        return -1; /* unterminated */
      unsigned char ch = (unsigned char)*c->p++;
      if (ch == '"')
        break;
      if (ch == '\\') {
        if (c->p >= c->end)
          return -1;
        ch = (unsigned char)*c->p++;
      }
      /* qdtext / quoted-pair: HTAB, SP, VCHAR, obs-text; never a control byte. */
      if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
        return -1;
      if (n < cap)
        buf[n] = (char)ch;
      if (n < INT_MAX)
        n++;
    }
    return (int)n;
  }
  const char *s;
  size_t len;
  if (!take_token(c, &s, &len))
    return -1;
  memcpy(buf, s, len < cap ? len : cap);
  return len < INT_MAX ? (int)len : INT_MAX;
}

/* Window bits: "8".."15" in decimal, no sign, no leading zero. 0 if not that. */
static unsigned window_bits_value(const char *v, int n) {
  if (n == 1 && v[0] >= '8' && v[0] <= '9')
    return (unsigned)(v[0] - '0');
  if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
    return 10u + (unsigned)(v[1] - '0');
  return 0;
}

static int token_is(const char *s, size_t n, const char *lit) {
  return n == strlen(lit) && strncasecmp(s, lit, n) == 0;
}

/* One permessage-deflate offer's parameters as read. */
typedef struct offer {
  uint8_t snct, cnct; /* server_/client_no_context_takeover present */
  uint8_t smwb_seen, cmwb_seen;
  uint8_t smwb, cmwb; /* values; cmwb 0: present without a value */
} offer_t;

/* Parses one extension (the cursor at its name, after OWS) up to the comma that ends it or
 * the end. Returns 1 when it is a permessage-deflate offer with valid parameters (filled
 * into *o), 0 when it is another extension or an invalid offer, -1 on a syntax error
 * (the caller skips to the next comma). */
static int parse_extension(cursor_t *c, offer_t *o) {
  const char *name;
  size_t name_len;
  if (!take_token(c, &name, &name_len))
    return -1;
  int pmd = token_is(name, name_len, "permessage-deflate");
  int valid = 1;
  memset(o, 0, sizeof *o);
  for (;;) {
    skip_ows(c);
    if (c->p == c->end || *c->p == ',')
      return pmd && valid;
    if (*c->p != ';')
      return -1;
    c->p++;
    skip_ows(c);
    const char *pn;
    size_t pn_len;
    if (!take_token(c, &pn, &pn_len))
      return -1;
    skip_ows(c);
    char value[16];
    int vlen = -2; /* no value */
    if (c->p < c->end && *c->p == '=') {
      c->p++;
      skip_ows(c);
      vlen = take_value(c, value, sizeof value);
      if (vlen < 0)
        return -1;
    }
    if (!pmd)
      continue; /* another extension's parameters: only their syntax matters */
    if (token_is(pn, pn_len, "server_no_context_takeover")) {
      valid &= !o->snct && vlen == -2;
      o->snct = 1;
    } else if (token_is(pn, pn_len, "client_no_context_takeover")) {
      valid &= !o->cnct && vlen == -2;
      o->cnct = 1;
    } else if (token_is(pn, pn_len, "server_max_window_bits")) {
      unsigned bits = vlen >= 0 ? window_bits_value(value, vlen) : 0;
      valid &= !o->smwb_seen && bits != 0; /* a value is required */
      o->smwb_seen = 1;
      o->smwb = (uint8_t)bits;
    } else if (token_is(pn, pn_len, "client_max_window_bits")) {
      unsigned bits = vlen >= 0 ? window_bits_value(value, vlen) : 0;
      valid &= !o->cmwb_seen && (vlen == -2 || bits != 0); /* the value is optional */
      o->cmwb_seen = 1;
      o->cmwb = (uint8_t)bits;
    } else {
      valid = 0; /* RFC 7692 5.1: an unknown parameter declines the offer */
    }
  }
}

/* Skips to the comma that ends the current list element (outside quoted strings), or to
 * the end. */
static void skip_element(cursor_t *c) {
  int quoted = 0;
  while (c->p < c->end) {
    char ch = *c->p;
    if (quoted && ch == '\\' && c->p + 1 < c->end) {
      c->p += 2;
      continue;
    }
    if (ch == '"')
      quoted = !quoted;
    else if (ch == ',' && !quoted)
      return;
    c->p++;
  }
}

static uint8_t min_u8(unsigned a, unsigned b) { return (uint8_t)(a < b ? a : b); }

int pmu__ws_pmd_negotiate(const pmu__ws_pmd_config_t *cfg, const pmu_header_t *headers,
                          size_t count, pmu__ws_pmd_params_t *out) {
  if (!cfg->enabled)
    return 0;
  for (size_t h = 0; h < count; h++) {
    if (!token_is(headers[h].name, headers[h].name_len, "sec-websocket-extensions"))
      continue;
    cursor_t c = {headers[h].value, headers[h].value + headers[h].value_len};
    while (c.p < c.end) {
      skip_ows(&c);
      if (c.p < c.end && *c.p == ',') { /* empty list elements are allowed and ignored */
        c.p++;
        continue;
      }
      if (c.p == c.end)
        break;
      offer_t o;
      int r = parse_extension(&c, &o);
      if (r < 0) {
        skip_element(&c);
        continue;
      }
      if (r == 0)
        continue; /* the cursor is at the comma or the end */
      unsigned wb = cfg->window_bits;
      out->server_no_context_takeover = o.snct || cfg->no_context_takeover;
      out->client_no_context_takeover = o.cnct || cfg->no_context_takeover;
      out->server_max_window_bits = o.smwb_seen ? min_u8(o.smwb, wb) : (uint8_t)wb;
      out->client_max_window_bits = o.cmwb_seen ? min_u8(o.cmwb ? o.cmwb : 15, wb) : 0;
      return 1;
    }
  }
  return 0;
}

size_t pmu__ws_pmd_format(const pmu__ws_pmd_params_t *params, char *buf, size_t cap) {
  char tmp[PMU__WS_PMD_RESPONSE_MAX];
  size_t n = 0;
#define ADD(s)              \
  do {                      \
    size_t l_ = strlen(s);  \
    memcpy(tmp + n, s, l_); \
    n += l_;                \
  } while (0)
  ADD("permessage-deflate");
  if (params->server_no_context_takeover)
    ADD("; server_no_context_takeover");
  if (params->client_no_context_takeover)
    ADD("; client_no_context_takeover");
  char num[4];
  if (params->server_max_window_bits) {
    ADD("; server_max_window_bits=");
    snprintf(num, sizeof num, "%u", (unsigned)params->server_max_window_bits);
    ADD(num);
  }
  if (params->client_max_window_bits) {
    ADD("; client_max_window_bits=");
    snprintf(num, sizeof num, "%u", (unsigned)params->client_max_window_bits);
    ADD(num);
  }
#undef ADD
  if (cap == 0)
    return n;
  size_t copy = n < cap - 1 ? n : cap - 1;
  memcpy(buf, tmp, copy);
  buf[copy] = 0;
  return n;
}

/* ---- permessage-deflate: zlib streams ------------------------------------------------ */

/* zlib's allocations go through these, so that every state knows its heap bytes: each
 * block carries its size in a 16-byte header (16 keeps malloc's alignment). */
#define HDR 16

static void *counted_alloc(size_t *counter, size_t n) {
  unsigned char *p = malloc(n + HDR);
  if (!p)
    return NULL;
  memcpy(p, &n, sizeof n);
  *counter += n + HDR;
  return p + HDR;
}

static void counted_free(size_t *counter, void *ptr) {
  if (!ptr)
    return;
  unsigned char *p = (unsigned char *)ptr - HDR;
  size_t n;
  memcpy(&n, p, sizeof n);
  *counter -= n + HDR;
  free(p);
}

static voidpf z_alloc(voidpf opaque, uInt items, uInt size) {
  return counted_alloc(opaque, (size_t)items * size);
}

static void z_free(voidpf opaque, voidpf ptr) { counted_free(opaque, ptr); }

/* A raw deflate stream (RFC 7692 wants raw DEFLATE, hence the negative windowBits). */
static z_stream *deflater_new(size_t *counter, int bits, int mem_level, int level) {
  z_stream *z = counted_alloc(counter, sizeof *z);
  if (!z)
    return NULL;
  memset(z, 0, sizeof *z);
  z->zalloc = z_alloc;
  z->zfree = z_free;
  z->opaque = counter;
  if (deflateInit2(z, level, Z_DEFLATED, -bits, mem_level, Z_DEFAULT_STRATEGY) != Z_OK) {
    counted_free(counter, z);
    return NULL;
  }
  return z;
}

static z_stream *inflater_new(size_t *counter, int bits) {
  z_stream *z = counted_alloc(counter, sizeof *z);
  if (!z)
    return NULL;
  memset(z, 0, sizeof *z);
  z->zalloc = z_alloc;
  z->zfree = z_free;
  z->opaque = counter;
  if (inflateInit2(z, -bits) != Z_OK) {
    counted_free(counter, z);
    return NULL;
  }
  return z;
}

static void deflater_free(size_t *counter, z_stream **zp) {
  if (*zp) {
    deflateEnd(*zp);
    counted_free(counter, *zp);
    *zp = NULL;
  }
}

static void inflater_free(size_t *counter, z_stream **zp) {
  if (*zp) {
    inflateEnd(*zp);
    counted_free(counter, *zp);
    *zp = NULL;
  }
}

/* zlib deflates with windowBits 9..15 only (1.2.9 and later refuse 8 for raw deflate);
 * with 9 its matches reach at most 2^9 - 262 = 250 bytes back (MAX_DIST), so a peer that
 * asked for server_max_window_bits=8 can inflate what we send. */
static uint8_t deflate_bits_for(unsigned announced) {
  return (uint8_t)(announced < 9 ? 9 : announced > 15 ? 15 : announced);
}

static uint8_t level_for(const pmu__ws_pmd_config_t *cfg) {
  return cfg->level >= 1 && cfg->level <= 9 ? cfg->level : PMU__WS_PMD_LEVEL;
}

static uint8_t mem_level_for(const pmu__ws_pmd_config_t *cfg) {
  return cfg->mem_level >= 1 && cfg->mem_level <= 9 ? cfg->mem_level : 5;
}

void pmu__ws_pmd_shared_init(pmu__ws_pmd_shared_t *sh, const pmu__ws_pmd_config_t *cfg) {
  memset(sh, 0, sizeof *sh);
  sh->mem_level = mem_level_for(cfg);
  sh->level = level_for(cfg);
}

void pmu__ws_pmd_shared_free(pmu__ws_pmd_shared_t *sh) {
  for (size_t i = 0; i < sizeof sh->deflate / sizeof sh->deflate[0]; i++)
    deflater_free(&sh->heap_bytes, &sh->deflate[i]);
  inflater_free(&sh->heap_bytes, &sh->inflate);
}

void pmu__ws_pmd_init(pmu__ws_pmd_t *st, const pmu__ws_pmd_params_t *params,
                      const pmu__ws_pmd_config_t *cfg, pmu__ws_pmd_shared_t *shared) {
  memset(st, 0, sizeof *st);
  st->params = *params;
  unsigned smwb = params->server_max_window_bits ? params->server_max_window_bits : 15;
  st->deflate_bits = deflate_bits_for(smwb);
  st->inflate_bits = params->client_max_window_bits ? params->client_max_window_bits : 15;
  st->mem_level = mem_level_for(cfg);
  st->level = level_for(cfg);
  st->shared = shared;
}

void pmu__ws_pmd_free(pmu__ws_pmd_t *st) {
  deflater_free(&st->heap_bytes, &st->deflater);
  inflater_free(&st->heap_bytes, &st->inflater);
}

size_t pmu__ws_pmd_heap_bytes(const pmu__ws_pmd_t *st) { return st->heap_bytes; }

size_t pmu__ws_pmd_compress_bound(size_t len) {
  /* zlib's deflateBound() for non-default parameters is len + len/8 + len/64 + 5 (stored
   * blocks at worst, 5 bytes each per block of the pending buffer's size), plus the sync
   * flush: an empty stored block, 3 bits and padding, and its 4 bytes, and room for the
   * bits still pending from the last block. */
  return len + (len >> 3) + (len >> 6) + 5 + 16;
}

/* Largest piece handed to zlib at once (its counts are uInt). */
#define Z_CHUNK ((size_t)1 << 30)

static const uint8_t sync_tail[4] = {0x00, 0x00, 0xff, 0xff};

int pmu__ws_pmd_compress(pmu__ws_pmd_t *st, const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                         size_t *out_len) {
  if (st->broken)
    return -EIO;
  if (len == 0) {
    /* The empty message: an empty stored block's first byte (the rest is the tail the
     * receiver appends). zlib itself would emit nothing right after a sync flush. */
    if (cap < 1)
      return 1;
    out[0] = 0x00;
    *out_len = 1;
    return 0;
  }
  pmu__ws_pmd_shared_t *sh = st->shared;
  int own = !st->params.server_no_context_takeover;
  z_stream **zp = own ? &st->deflater : &sh->deflate[st->deflate_bits - 9];
  size_t *counter = own ? &st->heap_bytes : &sh->heap_bytes;
  int level = own ? st->level : sh->level;
  int mem_level = own ? st->mem_level : sh->mem_level;
  if (!*zp && !(*zp = deflater_new(counter, st->deflate_bits, mem_level, level)))
    return -ENOMEM;
  z_stream *z = *zp;

  size_t in_left = len, out_left = cap;
  z->next_in = (Bytef *)(uintptr_t)in; /* zlib's z_const is off by default */
  z->next_out = out;
  z->avail_in = 0;
  z->avail_out = 0;
  int result = 0;
  for (;;) {
    /* Top up zlib's view of the input and the output (they are at most Z_CHUNK). */
    if (z->avail_in == 0 && in_left) {
      z->avail_in = (uInt)(in_left < Z_CHUNK ? in_left : Z_CHUNK);
      in_left -= z->avail_in;
    }
    if (z->avail_out == 0) {
      if (out_left == 0) {
        result = 1; /* does not fit */
        break;
      }
      z->avail_out = (uInt)(out_left < Z_CHUNK ? out_left : Z_CHUNK);
      out_left -= z->avail_out;
    }
    int flush = in_left ? Z_NO_FLUSH : Z_SYNC_FLUSH;
    int ret = deflate(z, flush);
    if (ret != Z_OK && ret != Z_BUF_ERROR) {
      result = -EIO;
      break;
    }
    /* The flush is complete once deflate returns with output space left; with none left it
     * may still owe bytes, even the sync marker itself, though nothing is pending yet. */
    if (flush == Z_SYNC_FLUSH && z->avail_in == 0 && z->avail_out != 0)
      break;
  }
  /* Whatever the end, the output written is out[0 .. cap - out_left - avail_out). */
  size_t written = cap - out_left - z->avail_out;
  if (result == 0) {
    /* Z_SYNC_FLUSH ends with an empty stored block: 00 00 FF FF, removed here (7.2.1). */
    if (written < 4 || memcmp(out + written - 4, sync_tail, 4) != 0)
      result = -EIO;
    else
      *out_len = written - 4;
  }
  z->next_in = z->next_out = NULL;
  z->avail_in = z->avail_out = 0;
  if (result == -EIO) {
    /* zlib broke: a compressor whose history the peer does not share cannot go on. */
    deflater_free(counter, zp);
    if (own)
      st->broken = 1;
    return -EIO;
  }
  /* Without context takeover, and after a message that goes out uncompressed, the next
   * message must not refer to this one. */
  if (!own || result == 1)
    deflateReset(z);
  return result;
}

/* Grows out so that at least one byte is free, to at most limit bytes in all (limit is
 * out->len's bound plus one: the byte that tells "too big"). 0 or -ENOMEM. */
static int buf_grow(pmu__ws_buf_t *out, size_t want, size_t limit) {
  size_t cap = out->cap ? out->cap : 256;
  while (cap - out->len < want && cap < limit)
    cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
  if (cap > limit)
    cap = limit;
  if (cap <= out->cap)
    return 0;
  uint8_t *p = realloc(out->data, cap);
  if (!p)
    return -ENOMEM;
  out->data = p;
  out->cap = cap;
  return 0;
}

/* After a final block (BFINAL) ended the deflate stream inside a message: start a new
 * stream over the same window, which is what the peer's next message may refer to. */
static int inflater_restart(z_stream *z, unsigned bits) {
  uInt n = 0;
  uint8_t *win = malloc((size_t)1 << bits);
  if (!win)
    return -ENOMEM;
  int ok = inflateGetDictionary(z, win, &n) == Z_OK && inflateReset(z) == Z_OK &&
           (n == 0 || inflateSetDictionary(z, win, n) == Z_OK);
  free(win);
  return ok ? 0 : -EIO;
}

int pmu__ws_pmd_inflate(pmu__ws_pmd_t *st, const struct iovec *pieces, size_t count, size_t max_out,
                        pmu__ws_buf_t *out) {
  if (st->broken)
    return -EBADMSG;
  pmu__ws_pmd_shared_t *sh = st->shared;
  int own = !st->params.client_no_context_takeover;
  z_stream **zp = own ? &st->inflater : &sh->inflate;
  size_t *counter = own ? &st->heap_bytes : &sh->heap_bytes;
  unsigned bits = own ? st->inflate_bits : 15;
  if (!*zp && !(*zp = inflater_new(counter, (int)bits)))
    return -ENOMEM;
  z_stream *z = *zp;

  /* out->len may grow to start + max_out; one byte more means "too big". */
  size_t start = out->len;
  size_t limit = max_out && max_out < SIZE_MAX - start - 1 ? start + max_out + 1 : SIZE_MAX;
  size_t in_total = 0;
  for (size_t i = 0; i < count; i++)
    in_total += pieces[i].iov_len;
  if (in_total == 0)
    return 0; /* RSV1 on an empty payload: the empty message (the tail alone is no block) */
  int result = 0, ended = 0;
  for (size_t i = 0; i <= count && !ended && result == 0; i++) {
    const uint8_t *p = i < count ? pieces[i].iov_base : sync_tail;
    size_t left = i < count ? pieces[i].iov_len : sizeof sync_tail;
    z->next_in = (Bytef *)(uintptr_t)p;
    z->avail_in = 0;
    for (;;) {
      if (z->avail_in == 0 && left) {
        z->avail_in = (uInt)(left < Z_CHUNK ? left : Z_CHUNK);
        left -= z->avail_in;
      }
      if (out->cap == out->len) {
        /* First guess for a message: 4x its compressed size, then doubling. */
        size_t guess = in_total < SIZE_MAX / 4 - 64 ? in_total * 4 + 64 : SIZE_MAX;
        if (out->len >= limit || buf_grow(out, out->len == start ? guess : 1, limit)) {
          result = -ENOMEM;
          break;
        }
      }
      size_t room = (out->cap < limit ? out->cap : limit) - out->len;
      z->next_out = out->data + out->len;
      z->avail_out = (uInt)(room < Z_CHUNK ? room : Z_CHUNK);
      uInt before = z->avail_out;
      /* Z_BLOCK returns at each block's end, so that the end of the message can be checked
       * to be a block boundary (data_type & 128) after the tail. */
      int ret = inflate(z, Z_BLOCK);
      out->len += before - z->avail_out;
      if (out->len - start > max_out && max_out) {
        result = -EMSGSIZE;
        break;
      }
      if (ret == Z_STREAM_END) {
        ended = 1; /* a final block: the rest of the message is padding */
        break;
      }
      if (ret == Z_BUF_ERROR) { /* no progress possible: all input used, output flushed */
        if (z->avail_in == 0 && left == 0)
          break;
        result = -EIO;
        break;
      }
      if (ret == Z_MEM_ERROR) {
        result = -ENOMEM;
        break;
      }
      if (ret != Z_OK) { /* Z_DATA_ERROR, Z_NEED_DICT (never in raw), Z_STREAM_ERROR */
        result = -EBADMSG;
        break;
      }
      if (z->avail_in == 0 && left == 0 && z->avail_out != 0)
        break; /* this piece is all in and all its output out */
    }
  }
  if (result == 0 && !ended && !(z->data_type & 128))
    result = -EBADMSG; /* the message stopped inside a block: truncated data */
  z->next_in = z->next_out = NULL;
  z->avail_in = z->avail_out = 0;
  if (result == 0 && ended && own)
    result = inflater_restart(z, bits);
  if (result != 0 && own) {
    st->broken = 1; /* the peer's next message refers to a window we no longer have */
    inflater_free(counter, zp);
  } else if (!own && inflateReset(z) != Z_OK) {
    inflater_free(counter, zp);
  }
  return result;
}
