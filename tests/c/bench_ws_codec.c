/*
 * bench_ws_codec: how fast core/ws_codec.c unmasks, validates UTF-8 and deflates, against
 * byte-at-a-time loops. Not a test (speed is never asserted); built beside the tests:
 *   build/test/tests/c/bench_ws_codec [MiB per measurement, default 256]
 * Each figure is the best of 5 runs over a buffer that stays in cache (16 KiB) and one
 * that does not (4 MiB).
 */
#include "ws_codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile uint64_t sink;

/* The byte-at-a-time loops, kept from being vectorised (a compiler may do that for the
 * unmask loop, which is the point of comparing). */
__attribute__((noinline, optimize("no-tree-vectorize"))) static void
unmask_bytewise(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4], size_t phase) {
  for (size_t i = 0; i < len; i++)
    dst[i] = src[i] ^ key[(phase + i) & 3];
}

/* A classic branchy validator, one byte per step: what a first version looks like. */
__attribute__((noinline)) static int utf8_bytewise(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t b = s[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    size_t need;
    uint32_t cp;
    if (b >= 0xc2 && b <= 0xdf)
      need = 1, cp = b & 0x1f;
    else if (b >= 0xe0 && b <= 0xef)
      need = 2, cp = b & 0x0f;
    else if (b >= 0xf0 && b <= 0xf4)
      need = 3, cp = b & 0x07;
    else
      return 0;
    if (n - i - 1 < need)
      return 0;
    for (size_t k = 1; k <= need; k++) {
      if ((s[i + k] & 0xc0) != 0x80)
        return 0;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if ((need == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (need == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return 0;
    i += need + 1;
  }
  return 1;
}

typedef void (*run_fn)(uint8_t *buf, size_t len);

static uint8_t *scratch;
static void run_unmask(uint8_t *buf, size_t len) {
  static const uint8_t key[4] = {1, 2, 3, 4};
  pmu__ws_unmask(scratch, buf, len, key, 1);
  sink += scratch[len - 1];
}
static void run_unmask_bytewise(uint8_t *buf, size_t len) {
  static const uint8_t key[4] = {1, 2, 3, 4};
  unmask_bytewise(scratch, buf, len, key, 1);
  sink += scratch[len - 1];
}
static void run_utf8(uint8_t *buf, size_t len) { sink += (uint64_t)pmu__utf8_valid(buf, len); }
static void run_utf8_bytewise(uint8_t *buf, size_t len) {
  sink += (uint64_t)utf8_bytewise(buf, len);
}

/* GB/s (1e9 bytes) of fn over buf, best of 5 runs of `total` bytes each. */
static double measure(run_fn fn, uint8_t *buf, size_t len, size_t total) {
  double best = 1e30;
  for (int r = 0; r < 5; r++) {
    size_t reps = total / len ? total / len : 1;
    double t0 = now();
    for (size_t i = 0; i < reps; i++)
      fn(buf, len);
    double t = now() - t0;
    if (t < best)
      best = t;
  }
  return (double)(total / len * len) / best / 1e9;
}

static void fill_text(uint8_t *buf, size_t len, const char *sample) {
  size_t sl = strlen(sample), n = 0;
  while (n + sl <= len) {
    memcpy(buf + n, sample, sl);
    n += sl;
  }
  memset(buf + n, ' ', len - n);
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 256;
  size_t total = mib << 20;
  size_t big = (size_t)4 << 20, small = 16 << 10;
  uint8_t *buf = malloc(big);
  scratch = malloc(big);
  for (size_t i = 0; i < big; i++)
    buf[i] = (uint8_t)(i * 131 + 7);
  printf("%-40s %10s %10s\n", "GB/s", "16 KiB", "4 MiB");
  printf("%-40s %10.2f %10.2f\n", "unmask, pmu__ws_unmask", measure(run_unmask, buf, small, total),
         measure(run_unmask, buf, big, total));
  printf("%-40s %10.2f %10.2f\n", "unmask, byte at a time",
         measure(run_unmask_bytewise, buf, small, total / 8),
         measure(run_unmask_bytewise, buf, big, total / 8));
  static const struct {
    const char *name, *sample;
  } texts[] = {
      {"ASCII (JSON)", "{\"user\":\"alice\",\"msg\":\"hello world\",\"n\":12345},"},
      {"Greek/Latin mix", "Καλημέρα κόσμε, grüß Gott! "},
      {"Chinese", "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82"},
      {"emoji", "\xf0\x9f\x98\x80\xf0\x9f\x8c\x8d\xf0\x9f\x9a\x80"},
  };
  for (size_t t = 0; t < sizeof texts / sizeof texts[0]; t++) {
    fill_text(buf, big, texts[t].sample);
    if (!pmu__utf8_valid(buf, big) || !utf8_bytewise(buf, big)) {
      fprintf(stderr, "sample %s not valid\n", texts[t].name);
      return 1;
    }
    char name[64];
    snprintf(name, sizeof name, "UTF-8 %s, pmu__utf8", texts[t].name);
    printf("%-40s %10.2f %10.2f\n", name, measure(run_utf8, buf, small, total / 2),
           measure(run_utf8, buf, big, total / 2));
    snprintf(name, sizeof name, "UTF-8 %s, byte at a time", texts[t].name);
    printf("%-40s %10.2f %10.2f\n", name, measure(run_utf8_bytewise, buf, small, total / 8),
           measure(run_utf8_bytewise, buf, big, total / 8));
  }

  /* permessage-deflate: compress and inflate JSON-like messages of 128 B .. 8 KiB, window
   * 12, memLevel 5, context takeover or not (the thread's shared stream, reset per
   * message), levels 1 and 6: microseconds per message each way, and the ratio. */
  printf("\n%-44s %9s %9s %7s\n", "deflate, JSON messages, window 12, memLevel 5", "comp us",
         "infl us", "ratio");
  size_t max_len = 8192;
  uint8_t *msgs = malloc(max_len * 64), *wire = malloc(pmu__ws_pmd_compress_bound(max_len));
  for (size_t m = 0; m < 64; m++) {
    char *p = (char *)msgs + m * max_len;
    size_t n = 0;
    unsigned x = (unsigned)m * 2654435761u;
    while (n < max_len) {
      x = x * 1103515245u + 12345u;
      int w = snprintf(p + n, max_len - n, "{\"id\":%u,\"user\":\"u%u\",\"score\":%u,\"ok\":%s},",
                       x % 100000, x % 37, x % 1000, x & 1 ? "true" : "false");
      n += (size_t)w < max_len - n ? (size_t)w : max_len - n;
    }
  }
  static const size_t sizes[] = {128, 512, 2048, 8192};
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
    for (int takeover = 1; takeover >= 0; takeover--)
      for (int level = 1; level <= 6; level += 5) {
        size_t msg_len = sizes[si];
        pmu__ws_pmd_config_t cfg = {1, 12, 5, 0, (uint8_t)level};
        pmu__ws_pmd_shared_t sh, sh2;
        pmu__ws_pmd_shared_init(&sh, &cfg);
        pmu__ws_pmd_shared_init(&sh2, &cfg);
        pmu__ws_pmd_params_t params = {!takeover, !takeover, 12, 12};
        pmu__ws_pmd_t tx, rx;
        pmu__ws_pmd_init(&tx, &params, &cfg, &sh);
        pmu__ws_pmd_init(&rx, &params, &cfg, &sh2);
        size_t rounds = (size_t)(40u << 20) / msg_len / 8, wire_total = 0;
        double tc = 0, ti = 0;
        pmu__ws_buf_t out = {0};
        for (size_t r = 0; r < rounds; r++) {
          uint8_t *msg = msgs + (r % 64) * max_len;
          size_t n;
          double t0 = now();
          if (pmu__ws_pmd_compress(&tx, msg, msg_len, wire, pmu__ws_pmd_compress_bound(msg_len),
                                   &n) != 0)
            return 1;
          double t1 = now();
          struct iovec iov = {wire, n};
          out.len = 0;
          if (pmu__ws_pmd_inflate(&rx, &iov, 1, 0, &out) != 0 || out.len != msg_len)
            return 1;
          ti += now() - t1;
          tc += t1 - t0;
          wire_total += n;
        }
        char name[64];
        snprintf(name, sizeof name, "%5zu B, %s, level %d", msg_len,
                 takeover ? "context takeover" : "no takeover     ", level);
        printf("%-44s %9.2f %9.2f %7.2f\n", name, tc / (double)rounds * 1e6,
               ti / (double)rounds * 1e6, (double)(rounds * msg_len) / (double)wire_total);
        free(out.data);
        pmu__ws_pmd_free(&tx);
        pmu__ws_pmd_free(&rx);
        pmu__ws_pmd_shared_free(&sh);
        pmu__ws_pmd_shared_free(&sh2);
      }
  free(msgs);
  free(wire);
  free(buf);
  free(scratch);
  return (int)(sink & 0);
}
