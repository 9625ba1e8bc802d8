/*
 * fuzz_chunked: the input (after the control bytes, see fuzz_common.h) is
 * the body framing of "POST /echo" with Transfer-Encoding: chunked. The
 * server echoes the de-chunked body it received. A strict reference
 * de-chunker (RFC 9112 7.1, written here) reads the same bytes; the server
 * must answer exactly as it says:
 *   complete, within the body limit   200 and the same bytes
 *   complete or invalid, over limit   413 (or 400 if invalid first)
 *   invalid                           400 (or 413)
 *   incomplete                        no answer (the client half-closed)
 * A body already being streamed to the handler (more than
 * FUZZ_STREAM_THRESHOLD bytes decoded) cannot be answered with an error:
 * the engine closes instead, so no answer is right there too. Trailer
 * fields count against max_header_bytes: 431 is right when they are large.
 * Every response is also checked for framing as in fuzz_request.
 */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char head[] = "POST /echo HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n";

typedef enum { REF_COMPLETE, REF_INCOMPLETE, REF_INVALID, REF_TOO_BIG } ref_outcome_t;

typedef struct ref {
  ref_outcome_t outcome;
  const char *why; /* for INVALID */
  char *body;      /* decoded */
  size_t body_len;
  size_t trailer_bytes; /* names + values, as the engine counts them */
  int saw_ext;          /* ext_loose: a chunk extension (or BWS) was read */
  int line_open;        /* the input ends inside the line where the verdict fell */
  int section_open;     /* the input does not end with an empty line */
} ref_t;

static int hexval(uint8_t c) {
  return c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

static int tchar(uint8_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A line ending at i: 2 = CRLF (its length), 0 = input ends first, -1 = not.
 * Only CRLF: RFC 9112 2.2 lets a recipient also take a bare LF, and llhttp
 * in strict mode does not in chunk framing. */
static int eol(const uint8_t *p, size_t len, size_t i) {
  if (i >= len)
    return 0;
  if (p[i] != '\r')
    return -1;
  if (i + 1 >= len)
    return 0;
  return p[i + 1] == '\n' ? 2 : -1;
}

#define SET(o, w)                                                   \
  do {                                                              \
    ref->outcome = (o);                                             \
    ref->why = (w);                                                 \
    ref->line_open = i < len && !memmem(p + i, len - i, "\r\n", 2); \
    return;                                                         \
  } while (0)

/* The line must end at i with CRLF (else INCOMPLETE, or INVALID for why);
 * i moves past it. */
#define CRLF(why)                \
  do {                           \
    int e_ = eol(p, len, i);     \
    if (e_ == 0)                 \
      SET(REF_INCOMPLETE, NULL); \
    if (e_ < 0)                  \
      SET(REF_INVALID, (why));   \
    i += (size_t)e_;             \
  } while (0)

static void skip_bws(const uint8_t *p, size_t len, size_t *i) {
  while (*i < len && (p[*i] == ' ' || p[*i] == '\t'))
    (*i)++;
}

/* Past the field-value bytes at i (VCHAR, obs-text, SP, HTAB): where they end. */
static size_t skip_value(const uint8_t *p, size_t len, size_t i) {
  while (i < len && (p[i] >= 0x20 || p[i] == '\t') && p[i] != 0x7f)
    i++;
  return i;
}

static void body_add(ref_t *ref, const uint8_t *p, size_t n) {
  char *b = realloc(ref->body, ref->body_len + n + 1);
  if (!b)
    abort();
  memcpy(b + ref->body_len, p, n);
  ref->body = b;
  ref->body_len += n;
}

/* ext_loose: a chunk extension is ';' and anything but a C0 control byte
 * up to the CR (and with FUZZ_KNOWN_EMPTY_FIELD_NAME, a trailer may have an
 * empty name; with FUZZ_KNOWN_TRAILER_OBS_FOLD, trailer lines may be
 * folded). llhttp checks extensions with its own grammar, stricter than
 * this and in places stricter than RFC 9112 (no BWS, "5;a=b;c" refused), so
 * where this reading finds an extension the engine may also refuse (400).
 * Either way the chunk-size line ends at the same CRLF: no framing
 * difference can hide in an extension. */
static void reference(const uint8_t *p, size_t len, ref_t *ref, int ext_loose) {
  memset(ref, 0, sizeof *ref);
  ref->section_open = len < 4 || memcmp(p + len - 4, "\r\n\r\n", 4) != 0;
  size_t i = 0, total = 0;
  for (;;) {
    /* chunk-size */
    uint64_t size = 0;
    size_t digits = 0;
    int v;
    while (i < len && (v = hexval(p[i])) >= 0) {
      if (size > (UINT64_MAX >> 4))
        SET(REF_INVALID, "chunk size overflows 64 bits");
      size = size * 16 + (uint64_t)v;
      i++, digits++;
    }
    if (i == len)
      SET(REF_INCOMPLETE, NULL);
    if (!digits)
      SET(REF_INVALID, "chunk size is not hex digits");
    if (ext_loose && i < len && p[i] == ';') {
      ref->saw_ext = 1;
      while (i < len && p[i] != '\r') {
        if (p[i] < 0x20 && p[i] != '\t') /* llhttp takes DEL in a quoted value */
          SET(REF_INVALID, "control byte in a chunk extension");
        i++;
      }
    } else if (ext_loose && i < len && (p[i] == ' ' || p[i] == '\t')) {
      ref->saw_ext = 1; /* BWS before ';': llhttp refuses it */
    }
    /* chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ) */
    for (;;) {
      size_t j = i;
      skip_bws(p, len, &j);
      if (j == len)
        SET(REF_INCOMPLETE, NULL);
      if (p[j] != ';') {
        if (j != i)
          SET(REF_INVALID, "whitespace after a chunk size without an extension");
        break;
      }
      i = j + 1;
      skip_bws(p, len, &i);
      size_t n0 = i;
      while (i < len && tchar(p[i]))
        i++;
      if (i == len)
        SET(REF_INCOMPLETE, NULL);
      if (i == n0)
        SET(REF_INVALID, "chunk extension without a name");
      j = i;
      skip_bws(p, len, &j);
      if (j == len)
        SET(REF_INCOMPLETE, NULL);
      if (p[j] != '=')
        continue;
      i = j + 1;
      skip_bws(p, len, &i);
      if (i == len)
        SET(REF_INCOMPLETE, NULL);
      if (p[i] == '"') {
        i++;
        for (;;) {
          if (i >= len)
            SET(REF_INCOMPLETE, NULL);
          uint8_t c = p[i];
          if (c == '"') {
            i++;
            break;
          }
          if (c == '\\') {
            if (i + 1 >= len)
              SET(REF_INCOMPLETE, NULL);
            uint8_t d = p[i + 1];
            if (d != '\t' && (d < 0x20 || d == 0x7f))
              SET(REF_INVALID, "control byte in a quoted-pair of a chunk extension");
            i += 2;
            continue;
          }
          if (c != '\t' && (c < 0x20 || c == 0x7f))
            SET(REF_INVALID, "control byte in a quoted chunk extension value");
          i++;
        }
      } else {
        size_t v0 = i;
        while (i < len && tchar(p[i]))
          i++;
        if (i == len)
          SET(REF_INCOMPLETE, NULL);
        if (i == v0)
          SET(REF_INVALID, "chunk extension '=' without a value");
      }
    }
    CRLF("chunk-size line not ended by CRLF");
    if (size > FUZZ_MAX_BODY || total + size > FUZZ_MAX_BODY)
      SET(REF_TOO_BIG, NULL);
    if (size == 0)
      break;
    if (len - i < size) {
      body_add(ref, p + i, len - i);
      SET(REF_INCOMPLETE, NULL);
    }
    body_add(ref, p + i, (size_t)size);
    i += (size_t)size;
    total += (size_t)size;
    CRLF("chunk data not followed by CRLF");
  }
  /* trailer-section CRLF; field-line = name ":" OWS value OWS */
  int fields = 0, last_empty = 0;
  for (;;) {
    int e = eol(p, len, i); /* the engine takes no bare LF, not even here */
    if (e == 0)
      SET(REF_INCOMPLETE, NULL);
    if (e > 0)
      SET(REF_COMPLETE, NULL);
    if (fields && last_empty && (p[i] == ' ' || p[i] == '\t')) {
      /* A known leniency of the engine (llhttp's): a fold line of nothing
       * but whitespace after an empty value adds nothing to it and is
       * taken; the trailer section still ends at the same empty line. A
       * fold with bytes in it is refused (core/http.c folded_before_value). */
      size_t w = i;
      while (w < len && (p[w] == ' ' || p[w] == '\t'))
        w++;
      if (w == len)
        SET(REF_INCOMPLETE, NULL);
      if (p[w] == '\r') {
        i = w;
        CRLF("a whitespace fold line not ended by CRLF");
        continue;
      }
    }
    if (FUZZ_KNOWN_TRAILER_OBS_FOLD && ext_loose && fields && (p[i] == ' ' || p[i] == '\t')) {
      /* obs-fold: a continuation of the previous field's value */
      size_t f0 = i;
      i = skip_value(p, len, i);
      ref->trailer_bytes += i - f0;
      CRLF("control byte in a folded trailer line");
      continue;
    }
    fields++;
    size_t n0 = i;
    while (i < len && tchar(p[i]))
      i++;
    if (i == len)
      SET(REF_INCOMPLETE, NULL);
    if (i == n0 && !(FUZZ_KNOWN_EMPTY_FIELD_NAME && ext_loose && p[i] == ':'))
      SET(REF_INVALID, "trailer line not starting with a field name (obs-fold, junk)");
    if (p[i] != ':')
      SET(REF_INVALID, "trailer field name not followed by ':'");
    ref->trailer_bytes += i - n0;
    i++;
    skip_bws(p, len, &i);
    size_t v0 = i;
    i = skip_value(p, len, i);
    ref->trailer_bytes += i - v0;
    last_empty = 1;
    for (size_t k = v0; k < i; k++)
      if (p[k] != ' ' && p[k] != '\t')
        last_empty = 0;
    CRLF("control byte in a trailer field value");
  }
}

/* Does the server's first answer agree with the reference? Returns 0, or 1
 * with why filled in. */
static int judge(const ref_t *ref, const fuzz_response_t *first, char *why, size_t cap) {
  int status = first ? first->status : 0;
  int streaming = ref->body_len > FUZZ_STREAM_THRESHOLD;
  /* The engine counts trailer bytes with the head's (34 bytes of names,
   * values and target) against max_header_bytes (1024): near it (the two
   * counts may differ by a few bytes) a 431 is right whatever follows, and
   * well over it an answer other than 431 is wrong. */
  size_t counted = ref->trailer_bytes + 34;
  int trailers_near = counted + 64 > 1024, trailers_over = counted > 1024 + 64;
  why[0] = 0;
  if (trailers_near && (status == 431 || (!first && streaming)))
    return 0;
  if (trailers_over && first) {
    snprintf(why, cap, "%zu trailer bytes over max_header_bytes; the server answered %d",
             ref->trailer_bytes, status);
    return 1;
  }
  switch (ref->outcome) {
  case REF_COMPLETE:
    if (status != 200)
      snprintf(why, cap, "the reference accepts the body; the server answered %d", status);
    else if (first->body_len != ref->body_len ||
             memcmp(first->body, ref->body ? ref->body : "", ref->body_len) != 0)
      snprintf(why, cap, "echoed body differs: %zu bytes, the reference's %zu", first->body_len,
               ref->body_len);
    break;
  case REF_TOO_BIG:
  case REF_INVALID:
    if (status == 400 || status == 413 || (!first && streaming))
      break;
    /* The engine judges a field line once it has all of it, and a field
     * once no fold can follow: when the input ends inside the bad line or
     * before the section's empty line (a fold begun, say), it waits, then
     * closes at EOF without answering, which is as safe as the 400. */
    if (!first && ref->outcome == REF_INVALID && (ref->line_open || ref->section_open))
      break;
    snprintf(why, cap, "the reference refuses (%s); the server answered %d",
             ref->outcome == REF_TOO_BIG ? "over the body limit" : ref->why, status);
    break;
  case REF_INCOMPLETE:
    if (first)
      snprintf(why, cap, "the reference finds the body incomplete; the server answered %d", status);
    break;
  }
  return why[0] != 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_plan_t plan;
  fuzz_plan(data, size, &plan);
  ref_t ref;
  reference(plan.payload, plan.len, &ref, 0);
  size_t out_len = 0;
  fuzz_responses_t rs;
  char *out = fuzz_exchange_checked(head, sizeof head - 1, &plan, data, size, &rs, &out_len);
  const fuzz_response_t *first = rs.count ? &rs.r[0] : NULL;
  char why[256];
  ref_t loose;
  if (judge(&ref, first, why, sizeof why)) {
    reference(plan.payload, plan.len, &loose, 1);
    if (!judge(&loose, first, why, sizeof why) || (loose.saw_ext && first && first->status == 400))
      why[0] = 0; /* a difference inside a chunk extension */
    free(loose.body);
  }
  if (why[0])
    fuzz_fail(why, data, size, out, out_len);
  free(ref.body);
  fuzz_responses_free(&rs);
  free(out);
  return 0;
}
