/*
 * static_path.c: what static file serving reads from a request, as pure
 * functions: the path (decoded once, then refused or made a relative path),
 * the Range header, HTTP dates. The fuzzers (tests/fuzz/fuzz_static.c) check
 * their properties; core/static.c acts on the results.
 */
#include "static.h"

#include <errno.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static int hexval(unsigned char c) {
  return c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

/* Length of the well-formed UTF-8 sequence at p[0..n), or 0 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *p, size_t n) {
  unsigned char c = p[0];
  if (c < 0x80)
    return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF)
    len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else
    return 0;
  if (n < len || p[1] < lo || p[1] > hi)
    return 0;
  for (size_t i = 2; i < len; i++)
    if (p[i] < 0x80 || p[i] > 0xBF)
      return 0;
  return len;
}

long pmu__static_clean_path(const char *in, size_t len, int flags, char *out, size_t cap, int *dir,
                            int *dotfile) {
  *dir = 0;
  *dotfile = 0;
  if (cap < len + 1)
    return -ENAMETOOLONG;
  /* Decode into out first (decoding only shrinks), marking the bad bytes. */
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)in[i];
    if (c == '%' && (flags & PMU__PATH_DECODE)) {
      if (i + 2 >= len)
        return -EINVAL;
      int h = hexval((unsigned char)in[i + 1]), l = hexval((unsigned char)in[i + 2]);
      if (h < 0 || l < 0)
        return -EINVAL;
      c = (unsigned char)(h * 16 + l);
      i += 2;
      if (c == '/')
        return -EINVAL; /* %2f: a separator the client hid from the prefix match */
    }
    if (c < 0x20 || c == 0x7f || c == '\\')
      return -EINVAL;
    out[n++] = (char)c;
  }
  /* Well-formed UTF-8 (overlong "%c0%ae" is a '.' in disguise). */
  for (size_t i = 0; i < n;) {
    size_t k = utf8_seq((const unsigned char *)out + i, n - i);
    if (!k)
      return -EINVAL;
    i += k;
  }
  /* Segments: empty ones dropped, all-dots ones refused, rejoined with '/'. */
  size_t w = 0;
  size_t i = 0;
  int last_slash = 1; /* "" asks for the directory itself */
  while (i < n) {
    if (out[i] == '/') {
      i++;
      last_slash = 1;
      continue;
    }
    size_t s = i;
    int dots = 1;
    while (i < n && out[i] != '/') {
      if (out[i] != '.')
        dots = 0;
      i++;
    }
    if (dots)
      return -EINVAL; /* ".", "..", "...": never a way up, in any spelling */
    if (out[s] == '.')
      *dotfile = 1;
    if (w)
      out[w++] = '/';
    memmove(out + w, out + s, i - s);
    w += i - s;
    last_slash = 0;
  }
  out[w] = '\0';
  *dir = last_slash;
  return (long)w;
}

/* Digits at *p..end into *v; 0 when none or the value does not fit in 63 bits. */
static int read_u63(const char **p, const char *end, uint64_t *v) {
  const char *s = *p;
  uint64_t x = 0;
  while (*p < end && **p >= '0' && **p <= '9') {
    if (x > (UINT64_MAX >> 1) / 10)
      return 0;
    x = x * 10 + (uint64_t)(**p - '0');
    (*p)++;
  }
  *v = x;
  return *p > s;
}

static void skip_ows(const char **p, const char *end) {
  while (*p < end && (**p == ' ' || **p == '\t'))
    (*p)++;
}

int pmu__static_parse_range(const char *value, size_t len, uint64_t size, unsigned max_ranges,
                            pmu__range_t *out) {
  const char *p = value, *end = value + len;
  if (max_ranges == 0)
    return PMU__RANGE_IGNORE;
  skip_ows(&p, end);
  if (end - p < 6 || strncasecmp(p, "bytes", 5) != 0)
    return PMU__RANGE_IGNORE;
  p += 5;
  skip_ows(&p, end);
  if (p >= end || *p != '=')
    return PMU__RANGE_IGNORE;
  p++;
  unsigned specs = 0, n = 0;
  for (;;) {
    skip_ows(&p, end);
    if (p < end && *p == ',') { /* an empty list element (RFC 9110 5.6.1) */
      p++;
      continue;
    }
    if (p >= end)
      break;
    uint64_t a = 0, b = 0;
    int suffix = 0, open = 0;
    if (*p == '-') {
      p++;
      if (!read_u63(&p, end, &b))
        return PMU__RANGE_IGNORE;
      suffix = 1;
    } else {
      if (!read_u63(&p, end, &a) || p >= end || *p != '-')
        return PMU__RANGE_IGNORE;
      p++;
      if (p < end && *p >= '0' && *p <= '9') {
        if (!read_u63(&p, end, &b) || b < a)
          return PMU__RANGE_IGNORE;
      } else {
        open = 1;
      }
    }
    skip_ows(&p, end);
    if (p < end && *p != ',')
      return PMU__RANGE_IGNORE;
    /* More ranges than allowed: the header is ignored as a whole (nginx
     * max_ranges), before any of them costs more than this count. */
    if (++specs > max_ranges)
      return PMU__RANGE_IGNORE;
    /* Satisfiable part of this range, if any. */
    uint64_t first, last;
    if (suffix) {
      if (b == 0 || size == 0)
        continue;
      first = b >= size ? 0 : size - b;
      last = size - 1;
    } else {
      if (a >= size)
        continue;
      first = a;
      last = open || b >= size ? size - 1 : b;
    }
    out[n].first = first;
    out[n].last = last;
    n++;
  }
  if (specs == 0)
    return PMU__RANGE_IGNORE;
  if (n == 0)
    return PMU__RANGE_UNSATISFIABLE;
  /* Sort (insertion: n <= max_ranges and usually tiny) and merge ranges that
   * overlap or touch: the bytes sent never exceed the file (Apache Killer,
   * CVE-2011-3192, asked for the whole file hundreds of times over). */
  for (unsigned i = 1; i < n; i++) {
    pmu__range_t t = out[i];
    unsigned j = i;
    while (j > 0 && out[j - 1].first > t.first) {
      out[j] = out[j - 1];
      j--;
    }
    out[j] = t;
  }
  unsigned m = 0;
  for (unsigned i = 1; i < n; i++) {
    if (out[i].first <= out[m].last + 1) {
      if (out[i].last > out[m].last)
        out[m].last = out[i].last;
    } else {
      out[++m] = out[i];
    }
  }
  return (int)(m + 1);
}

static int month_index(const char *s) {
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  for (int i = 0; i < 12; i++)
    if (strncmp(s, months + 3 * i, 3) == 0)
      return i;
  return -1;
}

/* Digits at s[0..n) exactly; -1 when not all digits. */
static int num(const char *s, size_t n) {
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

static int64_t make_time(int year, int mon, int day, int hh, int mm, int ss) {
  if (year < 1970 || mon < 0 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 || hh < 0 ||
      mm < 0 || ss < 0)
    return -1;
  struct tm tm = {.tm_year = year - 1900,
                  .tm_mon = mon,
                  .tm_mday = day,
                  .tm_hour = hh,
                  .tm_min = mm,
                  .tm_sec = ss};
  return (int64_t)timegm(&tm);
}

int64_t pmu__http_date_parse(const char *s, size_t len) {
  char b[64];
  while (len && (*s == ' ' || *s == '\t')) {
    s++;
    len--;
  }
  while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
    len--;
  if (len >= sizeof b || len < 24)
    return -1;
  memcpy(b, s, len);
  b[len] = '\0';
  const char *comma = memchr(b, ',', len);
  if (comma && len == 29 && comma == b + 3) {
    /* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" */
    if (b[4] != ' ' || b[7] != ' ' || b[11] != ' ' || b[16] != ' ' || b[19] != ':' ||
        b[22] != ':' || b[25] != ' ' || strcmp(b + 26, "GMT") != 0)
      return -1;
    return make_time(num(b + 12, 4), month_index(b + 8), num(b + 5, 2), num(b + 17, 2),
                     num(b + 20, 2), num(b + 23, 2));
  }
  if (comma) {
    /* RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT" */
    const char *d = comma + 2;
    size_t rest = len - (size_t)(d - b);
    if (comma[1] != ' ' || rest != 22 || d[2] != '-' || d[6] != '-' || d[9] != ' ' ||
        d[12] != ':' || d[15] != ':' || strcmp(d + 18, " GMT") != 0)
      return -1;
    int yy = num(d + 7, 2);
    if (yy < 0)
      return -1;
    return make_time(yy < 70 ? 2000 + yy : 1900 + yy, month_index(d + 3), num(d, 2), num(d + 10, 2),
                     num(d + 13, 2), num(d + 16, 2));
  }
  /* asctime: "Sun Nov  6 08:49:37 1994" */
  if (len != 24 || b[3] != ' ' || b[7] != ' ' || b[10] != ' ' || b[13] != ':' || b[16] != ':' ||
      b[19] != ' ')
    return -1;
  int day = b[8] == ' ' ? num(b + 9, 1) : num(b + 8, 2);
  return make_time(num(b + 20, 4), month_index(b + 4), day, num(b + 11, 2), num(b + 14, 2),
                   num(b + 17, 2));
}
