/*
 * fuzz_static: the two parsers static file serving trusts (core/static_path.c),
 * called directly, each with the properties its callers rely on.
 *
 * Input: byte 0 picks the parser (even: path, odd: Range); then
 *   path:  byte 1 bit 0: percent-decode; the rest is the URL path.
 *   Range: bytes 1-4 the file size (little-endian, 32 bits), byte 5 max_ranges,
 *          the rest the header value.
 *
 * Path: a refusal, or a relative path with no "/" at either end, no empty
 * segment, no segment of dots only ("." ".." "...."), no NUL, control byte or
 * backslash, valid UTF-8; cleaning it again (undecoded) gives it back unchanged;
 * *dotfile says exactly whether a segment begins with '.'; without decoding,
 * an input holding "/../" or "\\" is refused. Range: every range inside the
 * file, sorted, apart from each other (merged when they touched), at most
 * max_ranges of them, their total at most the file's size; UNSATISFIABLE only
 * when the size is 0 or some range was asked; a plain "bytes=A-B" inside the
 * file is exactly [A, B].
 */
#include "../../core/static.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      fprintf(stderr, "fuzz check failed: %s: ", #cond); \
      fprintf(stderr, __VA_ARGS__);                      \
      fprintf(stderr, "\n");                             \
      abort();                                           \
    }                                                    \
  } while (0)

static int utf8_ok(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || i + len > n)
      return 0;
    unsigned cp = len == 1 ? c : c & (0x7Fu >> len);
    for (size_t k = 1; k < len; k++) {
      if ((p[i + k] & 0xC0) != 0x80)
        return 0;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += len;
  }
  return 1;
}

static void check_path(const uint8_t *data, size_t size) {
  if (size < 1)
    return;
  int flags = data[0] & 1 ? PMU__PATH_DECODE : 0;
  const char *in = (const char *)data + 1;
  size_t len = size - 1;
  char *out = malloc(len + 1);
  int dir = -1, dot = -1;
  long n = pmu__static_clean_path(in, len, flags, out, len + 1, &dir, &dot);
  if (n < 0) {
    CHECK(n == -EINVAL, "refusal %ld", n);
    free(out);
    return;
  }
  CHECK((size_t)n <= len, "longer than the input: %ld > %zu", n, len);
  CHECK(out[n] == '\0', "not terminated");
  CHECK(dir == 0 || dir == 1, "dir %d", dir);
  if (n) {
    CHECK(out[0] != '/' && out[n - 1] != '/', "slash at an end: %s", out);
  }
  int saw_dot = 0;
  for (long s = 0; s < n;) {
    long e = s;
    int dots = 1;
    while (e < n && out[e] != '/') {
      unsigned char c = (unsigned char)out[e];
      CHECK(c >= 0x20 && c != 0x7f && c != '\\', "byte %02x in %s", c, out);
      if (c != '.')
        dots = 0;
      e++;
    }
    CHECK(e > s, "empty segment in %s", out);
    CHECK(!dots, "dots-only segment in %s", out);
    if (out[s] == '.')
      saw_dot = 1;
    s = e + 1;
  }
  CHECK(dot == saw_dot, "dotfile %d, saw %d", dot, saw_dot);
  CHECK(utf8_ok((const unsigned char *)out, (size_t)n), "not UTF-8");
  if (!flags) {
    CHECK(!memmem(in, len, "/../", 4) && !memchr(in, '\\', len), "accepted a way up");
  }
  /* Idempotent: the cleaned path cleans to itself (nothing is decoded twice). */
  char *again = malloc((size_t)n + 1);
  int dir2, dot2;
  long m = pmu__static_clean_path(out, (size_t)n, 0, again, (size_t)n + 1, &dir2, &dot2);
  CHECK(m == n && memcmp(again, out, (size_t)n) == 0, "not stable: %s -> %ld", out, m);
  free(again);
  free(out);
}

static void check_range(const uint8_t *data, size_t size) {
  if (size < 6)
    return;
  uint64_t fsize = (uint64_t)data[1] | (uint64_t)data[2] << 8 | (uint64_t)data[3] << 16 |
                   (uint64_t)data[4] << 24;
  unsigned max = data[5];
  const char *v = (const char *)data + 6;
  size_t len = size - 6;
  pmu__range_t *r = malloc(sizeof *r * (max ? max : 1));
  int n = pmu__static_parse_range(v, len, fsize, max, r);
  if (n == PMU__RANGE_IGNORE || n == PMU__RANGE_UNSATISFIABLE) {
    free(r);
    return;
  }
  CHECK(n >= 1 && (unsigned)n <= max, "%d ranges, max %u", n, max);
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    CHECK(r[i].first <= r[i].last && r[i].last < fsize, "range %d: %llu-%llu of %llu", i,
          (unsigned long long)r[i].first, (unsigned long long)r[i].last, (unsigned long long)fsize);
    if (i)
      CHECK(r[i].first > r[i - 1].last + 1, "ranges %d and %d touch or overlap", i - 1, i);
    total += r[i].last - r[i].first + 1;
  }
  CHECK(total <= fsize, "total %llu > size %llu", (unsigned long long)total,
        (unsigned long long)fsize);
  /* "bytes=A-B" plain, inside the file: exactly that. */
  unsigned long long a, b;
  int used = 0;
  char buf[64];
  if (len < sizeof buf) {
    memcpy(buf, v, len);
    buf[len] = '\0';
    if (sscanf(buf, "bytes=%llu-%llu%n", &a, &b, &used) == 2 && (size_t)used == len &&
        buf[6] >= '0' && buf[6] <= '9' && a <= b && b < fsize && !strchr(buf, '+') &&
        !strchr(buf, ' ')) {
      CHECK(n == 1 && r[0].first == a && r[0].last == b, "bytes=%llu-%llu gave %d ranges", a, b, n);
    }
  }
  free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  if (data[0] & 1)
    check_range(data, size);
  else
    check_path(data + 1, size - 1);
  return 0;
}
