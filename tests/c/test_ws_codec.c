/*
 * test_ws_codec: core/ws_codec.c, the byte work of WebSocket, without a server.
 *   - unmasking against a byte-at-a-time reference: every phase, many lengths and
 *     alignments, in place and not, input ending at a guard page;
 *   - UTF-8: written vectors (Markus Kuhn's stress cases and Autobahn 6.x's ideas, written
 *     here) with the index where validation must fail (fail-fast), each split at every byte
 *     and fed byte by byte; every 1-, 2- and 3-byte sequence and the 4-byte ones against a
 *     reference decoder written independently of the DFA;
 *   - permessage-deflate negotiation: offers to accepted parameters and response strings,
 *     refusals included;
 *   - compress and inflate: round trips with and without context takeover, windows 8..15
 *     checked with plain zlib at the announced window, vectors made by Python's zlib
 *     (interop, a final block inside a message), many pieces, the bomb bound, corrupt and
 *     truncated data, the "does not fit" reset, threads' shared streams, memory figures.
 */
#include "ws_codec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

static int failures;

#define CHECK(cond)                                              \
  do {                                                           \
    if (!(cond)) {                                               \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                \
    }                                                            \
  } while (0)

#define CHECKF(cond, ...)                                        \
  do {                                                           \
    if (!(cond)) {                                               \
      fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                              \
      fputc('\n', stderr);                                       \
      failures++;                                                \
    }                                                            \
  } while (0)

/* A deterministic generator (xorshift64*), so that a failure is reproducible. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1dull;
}

/* Two pages, the second inaccessible: bytes placed to end at the first page's end make any
 * read past them fault (picohttpparser's trick). */
static uint8_t *guard_base;
static size_t page;
static void guard_init(void) {
  page = (size_t)sysconf(_SC_PAGESIZE);
  guard_base = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (guard_base == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  if (mprotect(guard_base + 2 * page, page, PROT_NONE) != 0) {
    perror("mprotect");
    exit(1);
  }
}
/* A copy of data ending right at the guard page (len <= 2 pages). */
static uint8_t *guarded(const void *data, size_t len) {
  uint8_t *p = guard_base + 2 * page - len;
  memcpy(p, data, len);
  return p;
}

/* ---- unmask ---------------------------------------------------------------------- */

static void test_unmask(void) {
  enum { MAX = 2 * 4096 - 64 };
  static uint8_t src[MAX + 64], ref[MAX + 64], dst[MAX + 96];
  size_t lens[200];
  size_t nlens = 0;
  for (size_t l = 0; l <= 140; l++)
    lens[nlens++] = l;
  while (nlens < sizeof lens / sizeof lens[0])
    lens[nlens++] = rnd() % MAX;
  for (size_t li = 0; li < nlens; li++) {
    size_t len = lens[li];
    for (size_t phase = 0; phase < 8; phase++) { /* phase is taken modulo 4 */
      uint8_t key[4];
      uint64_t r = rnd();
      memcpy(key, &r, 4);
      for (size_t i = 0; i < len; i++)
        src[i] = (uint8_t)rnd();
      for (size_t i = 0; i < len; i++)
        ref[i] = src[i] ^ key[(phase + i) % 4];
      /* Out of place, at an odd destination alignment, the source at the guard page. */
      size_t align = rnd() % 32;
      uint8_t *g = guarded(src, len);
      memset(dst, 0xa5, sizeof dst);
      pmu__ws_unmask(dst + align, g, len, key, phase);
      CHECKF(memcmp(dst + align, ref, len) == 0, "len %zu phase %zu", len, phase);
      /* Nothing written outside [align, align + len). */
      int clean = 1;
      for (size_t i = 0; i < align; i++)
        clean &= dst[i] == 0xa5;
      for (size_t i = align + len; i < sizeof dst; i++)
        clean &= dst[i] == 0xa5;
      CHECKF(clean, "len %zu wrote outside", len);
      /* In place, ending at the guard page. */
      pmu__ws_unmask(g, g, len, key, phase);
      CHECKF(memcmp(g, ref, len) == 0, "in place len %zu phase %zu", len, phase);
    }
  }
  /* A payload unmasked in pieces with the running phase equals one call. */
  {
    static uint8_t whole[5000], pieces[5000];
    const uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    for (size_t i = 0; i < sizeof whole; i++)
      whole[i] = pieces[i] = (uint8_t)(i * 7);
    pmu__ws_unmask(whole, whole, sizeof whole, key, 0);
    size_t off = 0;
    while (off < sizeof pieces) {
      size_t n = 1 + rnd() % 97;
      if (n > sizeof pieces - off)
        n = sizeof pieces - off;
      pmu__ws_unmask(pieces + off, pieces + off, n, key, off);
      off += n;
    }
    CHECK(memcmp(whole, pieces, sizeof whole) == 0);
  }
}

/* ---- UTF-8 ---------------------------------------------------------------------- */

/* The reference: is s[0..n) a prefix of some valid UTF-8 text? Decodes code points by
 * their bit patterns and judges by the ranges of RFC 3629, independently of the DFA. For a
 * trailing incomplete character, the code points it could still become form the range
 * [bits padded with zeros, bits padded with ones]: the prefix is viable when that range
 * meets the valid ones for its length. */
static int ref_prefix_ok(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t b = s[i];
    size_t need;
    uint32_t cp, min;
    if (b < 0x80) {
      i++;
      continue;
    } else if ((b & 0xe0) == 0xc0) {
      need = 2, cp = b & 0x1f, min = 0x80;
    } else if ((b & 0xf0) == 0xe0) {
      need = 3, cp = b & 0x0f, min = 0x800;
    } else if ((b & 0xf8) == 0xf0) {
      need = 4, cp = b & 0x07, min = 0x10000;
    } else {
      return 0; /* a continuation byte or F8..FF */
    }
    size_t have = 1;
    while (have < need && i + have < n) {
      if ((s[i + have] & 0xc0) != 0x80)
        return 0;
      cp = cp << 6 | (s[i + have] & 0x3f);
      have++;
    }
    unsigned missing_bits = (unsigned)(6 * (need - have));
    uint32_t lo = cp << missing_bits, hi = lo | ((1u << missing_bits) - 1);
    if (hi < min || lo > 0x10ffff || (lo >= 0xd800 && hi <= 0xdfff))
      return 0;
    if (have == need && (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)))
      return 0;
    i += have;
  }
  return 1;
}
static int ref_complete(const uint8_t *s, size_t n) {
  if (!ref_prefix_ok(s, n))
    return 0;
  /* Complete when the last character is: walk back over continuation bytes. */
  size_t k = 0;
  while (k < n && k < 4 && (s[n - 1 - k] & 0xc0) == 0x80)
    k++;
  if (k == n)
    return n == 0;
  uint8_t lead = s[n - 1 - k];
  size_t len = lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
  return k + 1 == len;
}

/* The index of the byte at which fail-fast validation must report -1: the first k with
 * s[0..k] not viable; n when the whole is a viable prefix. */
static size_t ref_fail_at(const uint8_t *s, size_t n) {
  for (size_t k = 1; k <= n; k++)
    if (!ref_prefix_ok(s, k))
      return k - 1;
  return n;
}

/* Feeds s byte by byte; the index of the byte whose feed returned -1, or n. */
static size_t dfa_fail_at(const uint8_t *s, size_t n) {
  pmu__utf8_t u;
  pmu__utf8_init(&u);
  for (size_t i = 0; i < n; i++)
    if (pmu__utf8_feed(&u, s + i, 1) < 0) {
      CHECK(pmu__utf8_feed(&u, (const uint8_t *)"a", 1) < 0); /* stays rejected */
      CHECK(!pmu__utf8_done(&u));
      return i;
    }
  return n;
}

typedef struct utf8_case {
  const char *name;
  const char *bytes;
  size_t len;  /* 0: strlen */
  int valid;   /* the whole is valid and complete */
  int fail_at; /* the first impossible byte's index; -1: none (valid, or incomplete) */
} utf8_case_t;

#define U(name, bytes, valid, fail_at) \
  { name, bytes, sizeof(bytes) - 1, valid, fail_at }
/* clang-format off */
static const utf8_case_t utf8_cases[] = {
    U("empty", "", 1, -1),
    U("ASCII", "Hello-µ@ßöäüàá-UTF-8!!", 1, -1),
    U("kosme (Greek)", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 1, -1),
    U("kosme, then an invalid byte, then more", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80" "edited", 0, 12),
    U("first of each length: U+0000", "\x00", 1, -1),
    U("first 2-byte U+0080", "\xc2\x80", 1, -1),
    U("first 3-byte U+0800", "\xe0\xa0\x80", 1, -1),
    U("first 4-byte U+10000", "\xf0\x90\x80\x80", 1, -1),
    U("last 1-byte U+007F", "\x7f", 1, -1),
    U("last 2-byte U+07FF", "\xdf\xbf", 1, -1),
    U("last 3-byte U+FFFF (noncharacter: valid)", "\xef\xbf\xbf", 1, -1),
    U("U+FFFE (noncharacter: valid)", "\xef\xbf\xbe", 1, -1),
    U("U+FDD0 (noncharacter: valid)", "\xef\xb7\x90", 1, -1),
    U("last valid U+10FFFF", "\xf4\x8f\xbf\xbf", 1, -1),
    U("U+D7FF, before the surrogates", "\xed\x9f\xbf", 1, -1),
    U("U+E000, after the surrogates", "\xee\x80\x80", 1, -1),
    U("U+FFFD", "\xef\xbf\xbd", 1, -1),
    U("first beyond: U+110000", "\xf4\x90\x80\x80", 0, 1),
    U("5-byte form U+200000", "\xf8\x88\x80\x80\x80", 0, 0),
    U("6-byte form U+4000000", "\xfc\x84\x80\x80\x80\x80", 0, 0),
    U("U+7FFFFFFF as 6 bytes", "\xfd\xbf\xbf\xbf\xbf\xbf", 0, 0),
    U("lone continuation 80", "\x80", 0, 0),
    U("lone continuation BF", "\xbf", 0, 0),
    U("two continuations", "\x80\xbf", 0, 0),
    U("continuation after ASCII", "ab\x80", 0, 2),
    U("continuation after a whole 2-byte char", "\xc3\xa9\xa9", 0, 2),
    U("lonely start C0 then space", "\xc0 ", 0, 0),
    U("lonely start C2 then space", "\xc2 ", 0, 1),
    U("lonely start E1 then space", "\xe1 ", 0, 1),
    U("lonely start F1 then space", "\xf1 ", 0, 1),
    U("2-byte missing its last byte", "\xc2", 0, -1),
    U("3-byte missing its last byte", "\xe1\x80", 0, -1),
    U("4-byte missing its last byte", "\xf1\x80\x80", 0, -1),
    U("truncated then ASCII", "\xe1\x80" "a", 0, 2),
    U("all truncated sequences in a row", "\xc2\xe0\xa0\xf0\x90\x80", 0, 1),
    U("impossible FE", "\xfe", 0, 0),
    U("impossible FF", "\xff", 0, 0),
    U("impossible FE FE FF FF", "\xfe\xfe\xff\xff", 0, 0),
    U("overlong '/' 2 bytes", "\xc0\xaf", 0, 0),
    U("overlong '/' 3 bytes", "\xe0\x80\xaf", 0, 1),
    U("overlong '/' 4 bytes", "\xf0\x80\x80\xaf", 0, 1),
    U("overlong '/' 5 bytes", "\xf8\x80\x80\x80\xaf", 0, 0),
    U("max overlong 2 bytes U+007F", "\xc1\xbf", 0, 0),
    U("max overlong 3 bytes U+07FF", "\xe0\x9f\xbf", 0, 1),
    U("max overlong 4 bytes U+FFFF", "\xf0\x8f\xbf\xbf", 0, 1),
    U("overlong NUL 2 bytes", "\xc0\x80", 0, 0),
    U("overlong NUL 3 bytes", "\xe0\x80\x80", 0, 1),
    U("surrogate U+D800", "\xed\xa0\x80", 0, 1),
    U("surrogate U+DB7F", "\xed\xad\xbf", 0, 1),
    U("surrogate U+DC00", "\xed\xb0\x80", 0, 1),
    U("surrogate U+DFFF", "\xed\xbf\xbf", 0, 1),
    U("surrogate pair U+D800 U+DC00", "\xed\xa0\x80\xed\xb0\x80", 0, 1),
    U("surrogate pair U+DBFF U+DFFF", "\xed\xaf\xbf\xed\xbf\xbf", 0, 1),
    U("F4 90: beyond U+10FFFF at the second byte", "\xf4\x90", 0, 1),
    U("F5: beyond at the lead byte", "\xf5\x80\x80\x80", 0, 0),
    U("a lead where a continuation was due", "\xe2\xc3\xa9", 0, 1),
    U("valid, then invalid in the last of 40 bytes (fast path then DFA)",
      "0123456789abcdef0123456789abcdef\xce\xba\xce\xba\xce\xba\xce\xff", 0, 39),
    U("ASCII 17 then a 4-byte char", "0123456789abcdefg\xf0\x9f\x98\x80", 1, -1),
    U("mixed scripts", "Gr\xc3\xbc\xc3\x9f Gott, \xe4\xb8\x96\xe7\x95\x8c, \xf0\x9f\x8c\x8d!", 1, -1),
};
/* clang-format on */
#undef U

static int utf8_feed_split(const uint8_t *s, size_t n, const size_t *cuts, size_t ncuts) {
  pmu__utf8_t u;
  pmu__utf8_init(&u);
  size_t prev = 0;
  int r = 0;
  for (size_t c = 0; c <= ncuts; c++) {
    size_t end = c < ncuts ? cuts[c] : n;
    if (pmu__utf8_feed(&u, s + prev, end - prev) < 0)
      r = -1;
    prev = end;
  }
  return r == 0 && pmu__utf8_done(&u);
}

static void test_utf8_cases(void) {
  for (size_t c = 0; c < sizeof utf8_cases / sizeof utf8_cases[0]; c++) {
    const utf8_case_t *t = &utf8_cases[c];
    const uint8_t *s = (const uint8_t *)t->bytes;
    size_t n = t->len;
    /* The table agrees with the reference (so the reference is checked too). */
    CHECKF(ref_complete(s, n) == t->valid, "%s: reference says %d", t->name, ref_complete(s, n));
    size_t want_fail = t->fail_at < 0 ? n : (size_t)t->fail_at;
    CHECKF(ref_fail_at(s, n) == want_fail, "%s: reference fails at %zu", t->name,
           ref_fail_at(s, n));
    /* Whole, at the guard page. */
    CHECKF(pmu__utf8_valid(guarded(s, n), n) == t->valid, "%s", t->name);
    /* Fail-fast: byte by byte, -1 exactly at the first impossible byte. */
    CHECKF(dfa_fail_at(s, n) == want_fail, "%s: failed at %zu, want %zu", t->name,
           dfa_fail_at(s, n), want_fail);
    /* Split at every byte (two pieces) and at every pair (three): the same verdict. */
    for (size_t i = 0; i <= n; i++) {
      CHECKF(utf8_feed_split(s, n, &i, 1) == t->valid, "%s split at %zu", t->name, i);
      for (size_t j = i; j <= n; j++) {
        size_t cuts[2] = {i, j};
        CHECKF(utf8_feed_split(s, n, cuts, 2) == t->valid, "%s split %zu %zu", t->name, i, j);
      }
    }
    /* Inside long ASCII context (the 16-byte path before and after): the same verdict,
     * failing at the same offset. */
    uint8_t big[200];
    memset(big, 'x', sizeof big);
    for (size_t pre = 0; pre < 40; pre += 13) {
      memcpy(big + pre, s, n);
      size_t total = pre + n + 37;
      int want = t->valid; /* an incomplete one is followed by ASCII: invalid too */
      CHECKF(pmu__utf8_valid(guarded(big, total), total) == want, "%s at %zu", t->name, pre);
      CHECKF(ref_complete(big, total) == want, "%s at %zu (reference)", t->name, pre);
      memset(big, 'x', sizeof big);
    }
  }
}

/* Every sequence of 1, 2 and 3 bytes and the 4-byte ones with all first three bytes (the
 * fourth from a set of edges): the DFA fed whole, the reference, and the fail-fast index. */
static void test_utf8_exhaustive(void) {
  unsigned long mismatches = 0;
  uint8_t s[4];
  for (unsigned a = 0; a < 256; a++) {
    s[0] = (uint8_t)a;
    mismatches += pmu__utf8_valid(s, 1) != ref_complete(s, 1);
    for (unsigned b = 0; b < 256; b++) {
      s[1] = (uint8_t)b;
      mismatches += pmu__utf8_valid(s, 2) != ref_complete(s, 2);
      mismatches += dfa_fail_at(s, 2) != ref_fail_at(s, 2);
      if (a < 0xe0)
        continue;
      for (unsigned c = 0; c < 256; c++) {
        s[2] = (uint8_t)c;
        mismatches += pmu__utf8_valid(s, 3) != ref_complete(s, 3);
        if (a < 0xf0)
          continue;
        static const uint8_t last[] = {0x00, 0x41, 0x7f, 0x80, 0x9f, 0xa0, 0xbf, 0xc0, 0xf4, 0xff};
        for (size_t d = 0; d < sizeof last; d++) {
          s[3] = last[d];
          mismatches += pmu__utf8_valid(s, 4) != ref_complete(s, 4);
          mismatches += dfa_fail_at(s, 4) != ref_fail_at(s, 4);
        }
      }
    }
  }
  /* Every 3-byte sequence fed byte by byte (fail-fast index), leads E0..F4. */
  for (unsigned a = 0xe0; a < 0xf5; a++)
    for (unsigned b = 0; b < 256; b++)
      for (unsigned c = 0; c < 256; c += (a < 0xf0 ? 1 : 5)) {
        s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = (uint8_t)c;
        mismatches += dfa_fail_at(s, 3) != ref_fail_at(s, 3);
      }
  CHECKF(mismatches == 0, "%lu mismatches with the reference", mismatches);
}

/* Random texts of valid characters of every length, with one random byte corrupted half
 * of the time, in random pieces: the DFA agrees with the reference. */
static void test_utf8_random(void) {
  static const uint32_t ranges[][2] = {
      {0x20, 0x7e}, {0x80, 0x7ff}, {0x800, 0xd7ff}, {0xe000, 0xffff}, {0x10000, 0x10ffff}};
  uint8_t buf[600];
  for (int round = 0; round < 3000; round++) {
    size_t n = 0;
    while (n < sizeof buf - 4 - (rnd() % 500)) {
      const uint32_t *r = ranges[rnd() % 5];
      uint32_t cp = r[0] + (uint32_t)(rnd() % (r[1] - r[0] + 1));
      if (rnd() % 3)
        cp = 0x20 + (uint32_t)(rnd() % 95); /* mostly ASCII, for the fast path */
      if (cp < 0x80) {
        buf[n++] = (uint8_t)cp;
      } else if (cp < 0x800) {
        buf[n++] = (uint8_t)(0xc0 | cp >> 6);
        buf[n++] = (uint8_t)(0x80 | (cp & 0x3f));
      } else if (cp < 0x10000) {
        buf[n++] = (uint8_t)(0xe0 | cp >> 12);
        buf[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        buf[n++] = (uint8_t)(0x80 | (cp & 0x3f));
      } else {
        buf[n++] = (uint8_t)(0xf0 | cp >> 18);
        buf[n++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
        buf[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        buf[n++] = (uint8_t)(0x80 | (cp & 0x3f));
      }
    }
    if (round & 1 && n)
      buf[rnd() % n] = (uint8_t)rnd();
    size_t cuts[3];
    for (int c = 0; c < 3; c++)
      cuts[c] = rnd() % (n + 1);
    for (int x = 0; x < 3; x++) /* sort the cuts */
      for (int y = x + 1; y < 3; y++)
        if (cuts[y] < cuts[x]) {
          size_t t = cuts[x];
          cuts[x] = cuts[y];
          cuts[y] = t;
        }
    int want = ref_complete(buf, n);
    CHECKF(utf8_feed_split(buf, n, cuts, 3) == want, "round %d", round);
    CHECKF(pmu__utf8_valid(guarded(buf, n), n) == want, "round %d whole", round);
  }
}

/* ---- negotiation ------------------------------------------------------------------ */

typedef struct neg_case {
  const char *name;
  const char *h1, *h2;  /* Sec-WebSocket-Extensions values (h2 may be NULL) */
  uint8_t no_takeover;  /* cfg.no_context_takeover */
  uint8_t window_bits;  /* cfg.window_bits; 0: 12 */
  const char *response; /* NULL: refused */
} neg_case_t;

#define PMD "permessage-deflate"
/* clang-format off */
static const neg_case_t neg_cases[] = {
    {"plain offer", PMD, NULL, 0, 0, PMD "; server_max_window_bits=12"},
    {"browser offer", PMD "; client_max_window_bits", NULL, 0, 0,
     PMD "; server_max_window_bits=12; client_max_window_bits=12"},
    {"python websockets' offer", PMD "; server_max_window_bits=12; client_max_window_bits=12",
     NULL, 0, 0, PMD "; server_max_window_bits=12; client_max_window_bits=12"},
    {"both windows larger than ours", PMD "; server_max_window_bits=15; client_max_window_bits=15",
     NULL, 0, 0, PMD "; server_max_window_bits=12; client_max_window_bits=12"},
    {"both windows smaller than ours", PMD "; server_max_window_bits=10; client_max_window_bits=9",
     NULL, 0, 0, PMD "; server_max_window_bits=10; client_max_window_bits=9"},
    {"window 8 (deflated with 9)", PMD "; server_max_window_bits=8; client_max_window_bits=8",
     NULL, 0, 0, PMD "; server_max_window_bits=8; client_max_window_bits=8"},
    {"our window 15", PMD "; client_max_window_bits", NULL, 0, 15,
     PMD "; server_max_window_bits=15; client_max_window_bits=15"},
    {"server_no_context_takeover asked", PMD "; server_no_context_takeover", NULL, 0, 0,
     PMD "; server_no_context_takeover; server_max_window_bits=12"},
    {"client_no_context_takeover offered", PMD "; client_no_context_takeover", NULL, 0, 0,
     PMD "; client_no_context_takeover; server_max_window_bits=12"},
    {"no_context_takeover knob", PMD, NULL, 1, 0,
     PMD "; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"},
    {"everything", PMD "; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=9; client_max_window_bits=10", NULL, 0, 0,
     PMD "; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; "
     "client_max_window_bits=10"},
    {"quoted value", PMD "; server_max_window_bits=\"10\"", NULL, 0, 0,
     PMD "; server_max_window_bits=10"},
    {"quoted value with an escape", PMD "; client_max_window_bits=\"1\\1\"", NULL, 0, 0,
     PMD "; server_max_window_bits=12; client_max_window_bits=11"},
    {"whitespace everywhere", " \t" PMD " ;\tclient_max_window_bits = 10 , foo", NULL, 0, 0,
     PMD "; server_max_window_bits=12; client_max_window_bits=10"},
    {"name in capitals", "Permessage-Deflate; Client_Max_Window_Bits", NULL, 0, 0,
     PMD "; server_max_window_bits=12; client_max_window_bits=12"},
    {"after another extension", "x-webkit-deflate-frame; a=1; b=\"q,;\", " PMD, NULL, 0, 0,
     PMD "; server_max_window_bits=12"},
    {"empty list elements", ", ," PMD ",", NULL, 0, 0, PMD "; server_max_window_bits=12"},
    {"first acceptable of several", PMD "; server_max_window_bits=7, " PMD "; bogus, "
     PMD "; client_max_window_bits=11, " PMD, NULL, 0, 0,
     PMD "; server_max_window_bits=12; client_max_window_bits=11"},
    {"first acceptable wins over later ones", PMD "; server_max_window_bits=10, " PMD, NULL, 0, 0,
     PMD "; server_max_window_bits=10"},
    {"second header line", "foo", PMD "; client_max_window_bits=9", 0, 0,
     PMD "; server_max_window_bits=12; client_max_window_bits=9"},
    {"first line's offer first", PMD "; server_max_window_bits=11", PMD, 0, 0,
     PMD "; server_max_window_bits=11"},
    {"a syntax error skips to the next offer", PMD "; =x, " PMD "; server_max_window_bits=9",
     NULL, 0, 0, PMD "; server_max_window_bits=9"},
    {"an overlong quoted value with a comma inside", PMD "; x=\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,"
     "b\", " PMD, NULL, 0, 0, PMD "; server_max_window_bits=12"},
    /* refusals */
    {"no header", NULL, NULL, 0, 0, NULL},
    {"another extension only", "x-webkit-deflate-frame", NULL, 0, 0, NULL},
    {"unknown parameter", PMD "; foo", NULL, 0, 0, NULL},
    {"duplicate server_no_context_takeover", PMD "; server_no_context_takeover; "
     "server_no_context_takeover", NULL, 0, 0, NULL},
    {"duplicate client_max_window_bits", PMD "; client_max_window_bits; client_max_window_bits=10",
     NULL, 0, 0, NULL},
    {"duplicate server_max_window_bits", PMD "; server_max_window_bits=10; "
     "server_max_window_bits=10", NULL, 0, 0, NULL},
    {"server_max_window_bits without a value", PMD "; server_max_window_bits", NULL, 0, 0, NULL},
    {"server_max_window_bits=7", PMD "; server_max_window_bits=7", NULL, 0, 0, NULL},
    {"server_max_window_bits=16", PMD "; server_max_window_bits=16", NULL, 0, 0, NULL},
    {"client_max_window_bits=0", PMD "; client_max_window_bits=0", NULL, 0, 0, NULL},
    {"leading zero", PMD "; client_max_window_bits=09", NULL, 0, 0, NULL},
    {"sign", PMD "; server_max_window_bits=+9", NULL, 0, 0, NULL},
    {"empty quoted value", PMD "; client_max_window_bits=\"\"", NULL, 0, 0, NULL},
    {"no_context_takeover with a value", PMD "; server_no_context_takeover=1", NULL, 0, 0, NULL},
    {"client_no_context_takeover with a value", PMD "; client_no_context_takeover=\"\"", NULL, 0,
     0, NULL},
    {"unterminated quote", PMD "; client_max_window_bits=\"10", NULL, 0, 0, NULL},
    {"missing semicolon", PMD " client_max_window_bits", NULL, 0, 0, NULL},
    {"name only prefix", "permessage-deflat", NULL, 0, 0, NULL},
    {"name with a suffix", "permessage-deflate-x", NULL, 0, 0, NULL},
    {"control byte in a quoted value", PMD "; client_max_window_bits=\"1\x01\"", NULL, 0, 0, NULL},
    {"every offer bad", PMD "; x, " PMD "; server_max_window_bits=20", "y", 0, 0, NULL},
};
/* clang-format on */
#undef PMD

static void test_negotiate(void) {
  for (size_t c = 0; c < sizeof neg_cases / sizeof neg_cases[0]; c++) {
    const neg_case_t *t = &neg_cases[c];
    pmu__ws_pmd_config_t cfg = {1, t->window_bits ? t->window_bits : 12, 5, t->no_takeover, 0};
    pmu_header_t h[4];
    size_t n = 0;
    h[n++] = (pmu_header_t){"Host", 4, "x", 1};
    if (t->h1)
      h[n++] = (pmu_header_t){"Sec-WebSocket-Extensions", 24, t->h1, strlen(t->h1)};
    h[n++] = (pmu_header_t){"Sec-WebSocket-Version", 21, "13", 2};
    if (t->h2)
      h[n++] = (pmu_header_t){"sec-websocket-extensions", 24, t->h2, strlen(t->h2)};
    pmu__ws_pmd_params_t p;
    memset(&p, 0xee, sizeof p);
    int r = pmu__ws_pmd_negotiate(&cfg, h, n, &p);
    CHECKF(r == (t->response != NULL), "%s: returned %d", t->name, r);
    if (r == 1 && t->response) {
      char buf[PMU__WS_PMD_RESPONSE_MAX];
      size_t len = pmu__ws_pmd_format(&p, buf, sizeof buf);
      CHECKF(strcmp(buf, t->response) == 0 && len == strlen(buf), "%s: got \"%s\"", t->name, buf);
    }
    /* Disabled: nothing is ever accepted. */
    cfg.enabled = 0;
    CHECKF(pmu__ws_pmd_negotiate(&cfg, h, n, &p) == 0, "%s: accepted while disabled", t->name);
  }
  /* The longest response fits, and a small buffer is cut with its NUL. */
  pmu__ws_pmd_params_t all = {1, 1, 15, 15};
  char buf[PMU__WS_PMD_RESPONSE_MAX], small[8];
  size_t len = pmu__ws_pmd_format(&all, buf, sizeof buf);
  CHECK(len < sizeof buf && strlen(buf) == len);
  CHECK(pmu__ws_pmd_format(&all, small, sizeof small) == len);
  CHECK(strcmp(small, "permess") == 0);
}

/* ---- compress and inflate --------------------------------------------------------- */

/* A text-like message: words from a small vocabulary with numbers, seeded. */
static size_t make_message(uint8_t *buf, size_t len, uint64_t seed) {
  static const char *words[] = {"{\"user\":", "\"alice\"", ",\"msg\":", "\"hello\"", " world ",
                                "price",      "\"bob\"",   "},",        "[1,2,3]",   "true"};
  uint64_t s = seed | 1;
  size_t n = 0;
  while (n < len) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    const char *w = words[s % 10];
    char num[24];
    if (s % 7 == 0) {
      snprintf(num, sizeof num, "%llu", (unsigned long long)(s % 100000));
      w = num;
    }
    for (size_t i = 0; w[i] && n < len; i++)
      buf[n++] = (uint8_t)w[i];
  }
  return n;
}

/* A server side and the client side that mirrors it: the client's "server" is us. Our
 * compressor's output is checked by the client's inflater (ours, with the params seen from
 * the other side) and by plain zlib. */
typedef struct pair {
  pmu__ws_pmd_config_t cfg;
  pmu__ws_pmd_shared_t shared;
  pmu__ws_pmd_t server, client;
} pair_t;

static void pair_init(pair_t *p, const pmu__ws_pmd_params_t *params, unsigned bits,
                      unsigned mem_level) {
  p->cfg = (pmu__ws_pmd_config_t){1, (uint8_t)bits, (uint8_t)mem_level, 0, 0};
  pmu__ws_pmd_shared_init(&p->shared, &p->cfg);
  pmu__ws_pmd_init(&p->server, params, &p->cfg, &p->shared);
  /* The client compresses with client_max_window_bits and no_context_takeover as agreed;
   * seen as "its own server side" the parameters swap. */
  pmu__ws_pmd_params_t mirror = {params->client_no_context_takeover,
                                 params->server_no_context_takeover, params->client_max_window_bits,
                                 params->server_max_window_bits};
  pmu__ws_pmd_init(&p->client, &mirror, &p->cfg, &p->shared);
}

static void pair_free(pair_t *p) {
  pmu__ws_pmd_free(&p->server);
  pmu__ws_pmd_free(&p->client);
  pmu__ws_pmd_shared_free(&p->shared);
  CHECK(p->shared.heap_bytes == 0 && p->server.heap_bytes == 0 && p->client.heap_bytes == 0);
}

/* Compress msg with `from`, inflate it with `to`; 1 if it came back equal. */
static int send_one(pmu__ws_pmd_t *from, pmu__ws_pmd_t *to, const uint8_t *msg, size_t len,
                    z_stream *plain) {
  size_t cap = pmu__ws_pmd_compress_bound(len);
  uint8_t *wire = malloc(cap + 4);
  size_t n = 0;
  int r = pmu__ws_pmd_compress(from, msg, len, wire, cap, &n);
  CHECKF(r == 0, "compress returned %d", r);
  if (r != 0) {
    free(wire);
    return 0;
  }
  int ok = 1;
  if (plain) { /* plain zlib at the announced window inflates it too */
    memcpy(wire + n, "\x00\x00\xff\xff", 4);
    uint8_t *back = malloc(len + 1);
    plain->next_in = wire;
    plain->avail_in = (uInt)(n + 4);
    plain->next_out = back;
    plain->avail_out = (uInt)(len + 1);
    int zr = inflate(plain, Z_SYNC_FLUSH);
    ok &= (zr == Z_OK || (zr == Z_BUF_ERROR && len == 0)) && plain->avail_in == 0 &&
          plain->avail_out == 1 && memcmp(back, msg, len) == 0;
    CHECKF(ok, "plain zlib: %d %s", zr, plain->msg ? plain->msg : "");
    free(back);
  }
  pmu__ws_buf_t out = {0};
  struct iovec iov = {wire, n};
  r = pmu__ws_pmd_inflate(to, &iov, 1, 0, &out);
  ok &= r == 0 && out.len == len && (len == 0 || memcmp(out.data, msg, len) == 0);
  free(out.data);
  free(wire);
  return ok;
}

/* Round trips, both directions, each window 8..15 (8 announced, 9 used), with and without
 * context takeover; our output also inflated by plain zlib at the announced window, which
 * fails on a distance beyond it (so window 8 checks the 250-byte claim). */
static void test_round_trips(void) {
  static uint8_t msg[70000];
  for (unsigned bits = 8; bits <= 15; bits++) {
    for (int takeover = 0; takeover < 2; takeover++) {
      pmu__ws_pmd_params_t params = {!takeover, !takeover, (uint8_t)bits, (uint8_t)bits};
      pair_t p;
      pair_init(&p, &params, bits < 9 ? 9 : bits, 5);
      z_stream plain;
      memset(&plain, 0, sizeof plain);
      CHECK(inflateInit2(&plain, -(int)bits) == Z_OK);
      size_t wire_total = 0, raw_total = 0;
      for (int m = 0; m < 12; m++) {
        size_t len = m == 0 ? 0 : m == 1 ? 1 : m == 11 ? sizeof msg : 100 + (size_t)m * 700;
        make_message(msg, len, (uint64_t)m % 3); /* repeats: takeover finds them */
        CHECKF(send_one(&p.server, &p.client, msg, len, &plain), "bits %u takeover %d msg %d", bits,
               takeover, m);
        if (!takeover)
          CHECK(inflateReset(&plain) == Z_OK);
        CHECKF(send_one(&p.client, &p.server, msg, len, NULL), "back: bits %u takeover %d msg %d",
               bits, takeover, m);
        raw_total += len;
        (void)wire_total;
      }
      /* Own streams exist exactly with takeover; the shared ones without. */
      CHECK((p.server.heap_bytes > 0) == takeover);
      CHECK((p.shared.heap_bytes > 0) == !takeover);
      inflateEnd(&plain);
      pair_free(&p);
    }
  }
}

/* Context takeover pays: the second identical message is much smaller than the first,
 * and without takeover it is not. */
static void test_takeover_ratio(void) {
  uint8_t msg[3000], wire[4000];
  make_message(msg, sizeof msg, 42);
  size_t first = 0, second = 0;
  for (int takeover = 0; takeover < 2; takeover++) {
    pmu__ws_pmd_params_t params = {!takeover, !takeover, 12, 12};
    pair_t p;
    pair_init(&p, &params, 12, 5);
    CHECK(pmu__ws_pmd_compress(&p.server, msg, sizeof msg, wire, sizeof wire, &first) == 0);
    CHECK(pmu__ws_pmd_compress(&p.server, msg, sizeof msg, wire, sizeof wire, &second) == 0);
    if (takeover)
      CHECKF(second * 4 < first, "takeover: %zu then %zu", first, second);
    else
      CHECKF(second == first, "no takeover: %zu then %zu", first, second);
    pair_free(&p);
  }
}

static int inflate_one(pmu__ws_pmd_t *st, const void *data, size_t len, size_t max_out,
                       pmu__ws_buf_t *out) {
  struct iovec iov = {(void *)(uintptr_t)data, len};
  return pmu__ws_pmd_inflate(st, &iov, 1, max_out, out);
}

/* Messages compressed by Python's zlib (zlib.compressobj(6, DEFLATED, -15), each message
 * compress() + flush(Z_SYNC_FLUSH) with the 00 00 FF FF removed), fixed here. */
#define M1 "Hello, WebSocket! permessage-deflate interop. "
#define M2 "Hello, WebSocket! permessage-deflate interop, again. "
static const char py_takeover1[] =
    "\xf2\x48\xcd\xc9\xc9\xd7\x51\x08\x4f\x4d\x0a\xce\x4f\xce\x4e\x2d\x51\x54\x28\x48\x2d\xca"
    "\x4d\x2d\x2e\x4e\x4c\x4f\xd5\x4d\x49\x4d\xcb\x49\x2c\x49\x55\xc8\xcc\x2b\x49\x2d\xca\x2f"
    "\xd0\x53\xf0\x18\x34\xaa\x01\x00";
/* The second message of the same stream: it refers to the first (context takeover). */
static const char py_takeover2[] = "\x22\x45\xb5\x8e\x42\x62\x7a\x62\x66\x1e\x3d\x35\x01\x00";
/* M2 alone, compressobj(9, DEFLATED, -9, 9): window 9. */
static const char py_w9[] =
    "\xf2\x48\xcd\xc9\xc9\xd7\x51\x08\x4f\x4d\x0a\xce\x4f\xce\x4e\x2d\x51\x54\x28\x48\x2d\xca"
    "\x4d\x2d\x2e\x4e\x4c\x4f\xd5\x4d\x49\x4d\xcb\x49\x2c\x49\x55\xc8\xcc\x2b\x49\x2d\xca\x2f"
    "\xd0\x51\x48\x4c\x4f\xcc\xcc\xd3\x53\xf0\xa0\x9b\x26\x00\x00";
/* M1 ended with flush(Z_FINISH): a final block (BFINAL) inside a message. */
static const char py_final[] =
    "\xf3\x48\xcd\xc9\xc9\xd7\x51\x08\x4f\x4d\x0a\xce\x4f\xce\x4e\x2d\x51\x54\x28\x48\x2d\xca"
    "\x4d\x2d\x2e\x4e\x4c\x4f\xd5\x4d\x49\x4d\xcb\x49\x2c\x49\x55\xc8\xcc\x2b\x49\x2d\xca\x2f"
    "\xd0\x53\xf0\x18\x34\xaa\x01";

static void test_python_vectors(void) {
  pmu__ws_pmd_config_t cfg = {1, 12, 5, 0, 0};
  pmu__ws_pmd_shared_t sh;
  pmu__ws_pmd_shared_init(&sh, &cfg);
  const char *m1 = M1 M1 M1 M1, *m2 = M2 M2 M2;
  /* Context takeover, the client at window 15 (it did not offer client_max_window_bits). */
  pmu__ws_pmd_params_t takeover = {0, 0, 12, 0};
  pmu__ws_pmd_t st;
  pmu__ws_pmd_init(&st, &takeover, &cfg, &sh);
  pmu__ws_buf_t out = {0};
  CHECK(inflate_one(&st, py_takeover1, sizeof py_takeover1 - 1, 0, &out) == 0);
  CHECK(out.len == strlen(m1) && memcmp(out.data, m1, out.len) == 0);
  out.len = 0;
  CHECK(inflate_one(&st, py_takeover2, sizeof py_takeover2 - 1, 0, &out) == 0);
  CHECK(out.len == strlen(m2) && memcmp(out.data, m2, out.len) == 0);
  /* A final block, then a message that refers to the window before it. */
  pmu__ws_pmd_free(&st);
  pmu__ws_pmd_init(&st, &takeover, &cfg, &sh);
  out.len = 0;
  CHECK(inflate_one(&st, py_final, sizeof py_final - 1, 0, &out) == 0);
  CHECK(out.len == strlen(m1) && memcmp(out.data, m1, out.len) == 0);
  out.len = 0;
  CHECK(inflate_one(&st, py_takeover2, sizeof py_takeover2 - 1, 0, &out) == 0);
  CHECK(out.len == strlen(m2) && memcmp(out.data, m2, out.len) == 0);
  pmu__ws_pmd_free(&st);
  /* Window 9, client_no_context_takeover: the shared inflater, twice. */
  pmu__ws_pmd_params_t w9 = {0, 1, 12, 9};
  pmu__ws_pmd_init(&st, &w9, &cfg, &sh);
  for (int i = 0; i < 2; i++) {
    out.len = 0;
    CHECK(inflate_one(&st, py_w9, sizeof py_w9 - 1, 0, &out) == 0);
    CHECK(out.len == strlen(m2) && memcmp(out.data, m2, out.len) == 0);
  }
  CHECK(st.heap_bytes == 0 && sh.heap_bytes > 0);
  /* An empty payload with RSV1 is the empty message; so is zlib's own empty message, 00. */
  out.len = 0;
  CHECK(pmu__ws_pmd_inflate(&st, NULL, 0, 0, &out) == 0 && out.len == 0);
  CHECK(inflate_one(&st, "", 0, 0, &out) == 0 && out.len == 0);
  CHECK(inflate_one(&st, "\x00", 1, 0, &out) == 0 && out.len == 0);
  /* Without takeover the second message of the takeover stream cannot be inflated: its
   * reference reaches before the start. */
  out.len = 0;
  CHECK(inflate_one(&st, py_takeover2, sizeof py_takeover2 - 1, 0, &out) == -EBADMSG);
  pmu__ws_pmd_free(&st);
  free(out.data);
  pmu__ws_pmd_shared_free(&sh);
}
#undef M1
#undef M2

/* A message in many pieces (every frame of a fragmented message, or one byte each)
 * inflates as in one. */
static void test_pieces(void) {
  static uint8_t msg[20000], wire[30000];
  make_message(msg, sizeof msg, 7);
  pmu__ws_pmd_params_t params = {0, 0, 12, 12};
  pair_t p;
  pair_init(&p, &params, 12, 5);
  size_t n;
  CHECK(pmu__ws_pmd_compress(&p.client, msg, sizeof msg, wire, sizeof wire, &n) == 0);
  struct iovec *iov = calloc(n, sizeof *iov);
  for (size_t i = 0; i < n; i++)
    iov[i] = (struct iovec){wire + i, 1};
  pmu__ws_buf_t out = {0};
  CHECK(pmu__ws_pmd_inflate(&p.server, iov, n, 0, &out) == 0);
  CHECK(out.len == sizeof msg && memcmp(out.data, msg, sizeof msg) == 0);
  /* Uneven pieces, empty ones included, appended after what out holds. */
  CHECK(pmu__ws_pmd_compress(&p.client, msg, sizeof msg, wire, sizeof wire, &n) == 0);
  size_t k = 0, off = 0;
  while (off < n) {
    size_t len = k % 3 == 1 ? 0 : 1 + rnd() % 50;
    if (len > n - off)
      len = n - off;
    iov[k++] = (struct iovec){wire + off, len};
    off += len;
  }
  CHECK(pmu__ws_pmd_inflate(&p.server, iov, k, sizeof msg, &out) == 0);
  CHECK(out.len == 2 * sizeof msg && memcmp(out.data + sizeof msg, msg, sizeof msg) == 0);
  free(out.data);
  free(iov);
  pair_free(&p);
}

/* A zip bomb: 64 MiB of zeros is ~64 KiB on the wire. With max_out 1 MiB inflation stops
 * just past 1 MiB: -EMSGSIZE, and the buffer never grew beyond max_out + 1. A message of
 * exactly max_out passes, one byte more does not. */
static void test_bomb(void) {
  size_t big = (size_t)64 << 20;
  uint8_t *zeros = calloc(1, big);
  size_t cap = pmu__ws_pmd_compress_bound(big);
  uint8_t *wire = malloc(cap);
  pmu__ws_pmd_params_t params = {0, 0, 15, 15};
  pair_t p;
  pair_init(&p, &params, 15, 8);
  size_t n = 0;
  CHECK(pmu__ws_pmd_compress(&p.client, zeros, big, wire, cap, &n) == 0);
  CHECKF(n < big / 100, "64 MiB of zeros compressed to %zu", n);
  pmu__ws_buf_t out = {0};
  size_t max_out = (size_t)1 << 20;
  CHECK(inflate_one(&p.server, wire, n, max_out, &out) == -EMSGSIZE);
  CHECKF(out.cap <= max_out + 1, "the buffer grew to %zu", out.cap);
  /* The state is broken now: the next message is refused. */
  CHECK(inflate_one(&p.server, wire, n, 0, &out) == -EBADMSG);
  pair_free(&p);

  for (int extra = 0; extra < 2; extra++) {
    pair_init(&p, &params, 15, 8);
    size_t len = 100000 + (size_t)extra;
    CHECK(pmu__ws_pmd_compress(&p.client, zeros, len, wire, cap, &n) == 0);
    out.len = 0;
    int r = inflate_one(&p.server, wire, n, 100000, &out);
    CHECKF(r == (extra ? -EMSGSIZE : 0), "len %zu: %d", len, r);
    pair_free(&p);
  }
  free(out.data);
  free(wire);
  free(zeros);
}

/* Corrupt data: -EBADMSG, never a crash; the connection's state is then broken, while the
 * shared inflater serves the next connection. */
static void test_corrupt(void) {
  pmu__ws_pmd_config_t cfg = {1, 12, 5, 0, 0};
  pmu__ws_pmd_shared_t sh;
  pmu__ws_pmd_shared_init(&sh, &cfg);
  pmu__ws_buf_t out = {0};
  pmu__ws_pmd_params_t own = {0, 0, 12, 12}, shared = {0, 1, 12, 12};
  pmu__ws_pmd_t st;
  /* BTYPE 11 (reserved). */
  pmu__ws_pmd_init(&st, &own, &cfg, &sh);
  CHECK(inflate_one(&st, "\xff\xff\xff", 3, 0, &out) == -EBADMSG);
  CHECK(inflate_one(&st, py_takeover1, sizeof py_takeover1 - 1, 0, &out) == -EBADMSG);
  CHECK(st.heap_bytes == 0); /* a broken state keeps nothing */
  pmu__ws_pmd_free(&st);
  /* A distance beyond the start of the data (a reference into a window never sent). */
  pmu__ws_pmd_init(&st, &shared, &cfg, &sh);
  CHECK(inflate_one(&st, py_takeover2, sizeof py_takeover2 - 1, 0, &out) == -EBADMSG);
  /* Truncated: the message stops inside a block. */
  out.len = 0;
  CHECK(inflate_one(&st, py_takeover1, 20, 0, &out) == -EBADMSG);
  /* The shared inflater was reset: the next message of another connection is fine. */
  pmu__ws_pmd_t other;
  pmu__ws_pmd_init(&other, &shared, &cfg, &sh);
  out.len = 0;
  CHECK(inflate_one(&other, py_w9, sizeof py_w9 - 1, 0, &out) == 0);
  CHECK(out.len == 3 * strlen("Hello, WebSocket! permessage-deflate interop, again. "));
  /* Random garbage of every length: any answer but a crash, and the shared stream still
   * works after each. */
  uint8_t junk[300];
  for (int round = 0; round < 2000; round++) {
    size_t len = rnd() % sizeof junk;
    for (size_t i = 0; i < len; i++)
      junk[i] = (uint8_t)rnd();
    out.len = 0;
    int r = inflate_one(&st, junk, len, 4096, &out);
    CHECK(r == 0 || r == -EBADMSG || r == -EMSGSIZE);
  }
  out.len = 0;
  CHECK(inflate_one(&other, py_w9, sizeof py_w9 - 1, 0, &out) == 0);
  pmu__ws_pmd_free(&st);
  pmu__ws_pmd_free(&other);
  pmu__ws_pmd_shared_free(&sh);
  CHECK(sh.heap_bytes == 0);
  free(out.data);
}

/* A message that does not shrink, with cap = its length: 1 ("send it raw"), and the
 * compressor was reset, so the next compressed message inflates at a peer that never saw
 * the raw one in its window. */
static void test_not_smaller(void) {
  uint8_t rand_msg[5000], text[5000], wire[6000];
  for (size_t i = 0; i < sizeof rand_msg; i++)
    rand_msg[i] = (uint8_t)rnd();
  make_message(text, sizeof text, 3);
  pmu__ws_pmd_params_t params = {0, 0, 12, 12};
  pair_t p;
  pair_init(&p, &params, 12, 5);
  CHECK(send_one(&p.server, &p.client, text, sizeof text, NULL));
  size_t n = 0;
  CHECK(pmu__ws_pmd_compress(&p.server, rand_msg, sizeof rand_msg, wire, sizeof rand_msg, &n) == 1);
  /* Not sent compressed; the peer's inflater never sees it. The next one: */
  CHECK(send_one(&p.server, &p.client, text, sizeof text, NULL));
  /* With the bound as cap, random data is compressed (stored blocks) and round-trips. */
  CHECK(send_one(&p.server, &p.client, rand_msg, sizeof rand_msg, NULL));
  pair_free(&p);
}

/* Every output size from 0 to the bound, for messages of many sizes and kinds: compress
 * returns 0 with output that inflates back, or 1 (did not fit), never an error; after a 1
 * the compressor goes on as if that message had not been. (Found by fuzz_ws: when the
 * output space ran out exactly where a block ended, the sync marker was still owed while
 * nothing was pending, and the message failed with -EIO: the connection closed 1011.) */
static void test_every_cap(void) {
  uint8_t msg[600], wire[800];
  for (int kind = 0; kind < 3; kind++) {
    for (size_t len = 0; len <= sizeof msg; len += len < 40 ? 1 : 37) {
      if (kind == 0)
        make_message(msg, len, len);
      else if (kind == 1)
        for (size_t i = 0; i < len; i++)
          msg[i] = (uint8_t)rnd();
      else
        memset(msg, 'a' + (int)(len % 26), len);
      size_t bound = pmu__ws_pmd_compress_bound(len);
      for (size_t cap = 0; cap <= bound; cap++) {
        pmu__ws_pmd_params_t params = {0, 0, 12, 12};
        pair_t p;
        pair_init(&p, &params, 12, 5);
        size_t n = 0;
        int r = pmu__ws_pmd_compress(&p.server, msg, len, wire, cap, &n);
        CHECKF(r == 0 || r == 1, "kind %d len %zu cap %zu: %d", kind, len, cap, r);
        if (r == 0) {
          pmu__ws_buf_t out = {0};
          CHECK(n <= cap && inflate_one(&p.client, wire, n, 0, &out) == 0 && out.len == len &&
                (len == 0 || memcmp(out.data, msg, len) == 0));
          free(out.data);
        }
        /* The next message goes through whatever happened to this one. */
        CHECKF(send_one(&p.server, &p.client, msg, len, NULL), "kind %d len %zu cap %zu", kind, len,
               cap);
        pair_free(&p);
        if (failures > 20)
          return;
      }
    }
  }
}

/* The bound holds for incompressible data of many sizes and levels. */
static void test_bound(void) {
  static uint8_t buf[200000];
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = (uint8_t)rnd();
  static uint8_t wire[300000];
  for (int level = 1; level <= 9; level += 4) {
    pmu__ws_pmd_config_t cfg = {1, 9, 1, 1, (uint8_t)level};
    pmu__ws_pmd_shared_t sh;
    pmu__ws_pmd_shared_init(&sh, &cfg);
    pmu__ws_pmd_params_t params = {1, 1, 9, 9};
    pmu__ws_pmd_t st;
    pmu__ws_pmd_init(&st, &params, &cfg, &sh);
    size_t lens[] = {0, 1, 5, 100, 4095, 16383, 65535, 65536, 131072, sizeof buf};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
      size_t n;
      int r =
          pmu__ws_pmd_compress(&st, buf, lens[i], wire, pmu__ws_pmd_compress_bound(lens[i]), &n);
      CHECKF(r == 0, "level %d len %zu: %d", level, lens[i], r);
    }
    pmu__ws_pmd_free(&st);
    pmu__ws_pmd_shared_free(&sh);
  }
}

/* Connections of one thread without context takeover share its streams: interleaved
 * messages of many connections all come back right, and they hold 0 bytes each. */
static void test_shared(void) {
  pmu__ws_pmd_config_t cfg = {1, 12, 5, 1, 0};
  pmu__ws_pmd_shared_t sh, peer_sh;
  pmu__ws_pmd_shared_init(&sh, &cfg);
  pmu__ws_pmd_shared_init(&peer_sh, &cfg);
  enum { CONNS = 20 };
  pmu__ws_pmd_t srv[CONNS], cli[CONNS];
  pmu__ws_pmd_params_t params = {1, 1, 12, 12};
  for (int i = 0; i < CONNS; i++) {
    pmu__ws_pmd_init(&srv[i], &params, &cfg, &sh);
    pmu__ws_pmd_init(&cli[i], &params, &cfg, &peer_sh);
  }
  uint8_t msg[4000];
  for (int round = 0; round < 100; round++) {
    int i = (int)(rnd() % CONNS);
    size_t len = make_message(msg, 200 + rnd() % 3000, rnd());
    CHECK(send_one(&srv[i], &cli[i], msg, len, NULL));
    CHECK(send_one(&cli[i], &srv[i], msg, len, NULL));
  }
  size_t per_conn = 0;
  for (int i = 0; i < CONNS; i++) {
    per_conn += srv[i].heap_bytes;
    pmu__ws_pmd_free(&srv[i]);
    pmu__ws_pmd_free(&cli[i]);
  }
  CHECK(per_conn == 0);
  printf("shared streams of a thread (window 12, memLevel 5): %zu bytes in all\n", sh.heap_bytes);
  pmu__ws_pmd_shared_free(&sh);
  pmu__ws_pmd_shared_free(&peer_sh);
}

/* Memory per connection after one compressed message each way, as zlib allocated it. */
static size_t memory_after_exchange(const pmu__ws_pmd_params_t *params, unsigned bits,
                                    unsigned mem_level) {
  pair_t p;
  pair_init(&p, params, bits, mem_level);
  CHECK(p.server.heap_bytes == 0); /* nothing before the first message */
  uint8_t msg[2000];
  make_message(msg, sizeof msg, 1);
  CHECK(send_one(&p.server, &p.client, msg, sizeof msg, NULL));
  CHECK(send_one(&p.client, &p.server, msg, sizeof msg, NULL));
  size_t bytes = p.server.heap_bytes;
  pair_free(&p);
  return bytes;
}

static void test_memory(void) {
  pmu__ws_pmd_params_t ours = {0, 0, 12, 12};  /* defaults, client offered its window */
  pmu__ws_pmd_params_t ours15 = {0, 0, 12, 0}; /* defaults, client window not limited */
  pmu__ws_pmd_params_t none = {1, 1, 12, 12};  /* no context takeover */
  pmu__ws_pmd_params_t uvicorn = {0, 0, 15, 0};
  size_t a = memory_after_exchange(&ours, 12, 5);
  size_t b = memory_after_exchange(&ours15, 12, 5);
  size_t c = memory_after_exchange(&none, 12, 5);
  size_t d = memory_after_exchange(&uvicorn, 15, 8);
  printf("zlib heap per connection after a message each way:\n"
         "  window 12 both ways, memLevel 5 (defaults): %zu bytes (%.1f KiB)\n"
         "  window 12 ours, 15 the client's:            %zu bytes (%.1f KiB)\n"
         "  no context takeover:                        %zu bytes\n"
         "  window 15, memLevel 8 (zlib's defaults):    %zu bytes (%.1f KiB)\n",
         a, a / 1024.0, b, b / 1024.0, c, d, d / 1024.0);
  CHECKF(a < 64 * 1024, "%zu", a);
  CHECK(c == 0);
  CHECK(a < b && b < d);
}

int main(void) {
  guard_init();
  test_unmask();
  test_utf8_cases();
  test_utf8_exhaustive();
  test_utf8_random();
  test_negotiate();
  test_round_trips();
  test_takeover_ratio();
  test_python_vectors();
  test_pieces();
  test_bomb();
  test_corrupt();
  test_not_smaller();
  test_every_cap();
  test_bound();
  test_shared();
  test_memory();
  if (failures) {
    fprintf(stderr, "test_ws_codec: %d failures\n", failures);
    return 1;
  }
  printf("test_ws_codec: ok\n");
  return 0;
}
