/*
 * test_fuzz: random bytes, mutated requests and truncated requests on many
 * connections never crash the server or wedge it; afterwards it still
 * answers a normal request, and every connection it kept is one a client
 * still holds. Deterministic: the seed is printed, T_SEED overrides it.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

#define ROUNDS 12
#define BATCH 40

static uint64_t rng_state;

static uint64_t rng(void) {
  /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ULL;
}

static size_t rng_below(size_t n) { return n ? (size_t)(rng() % n) : 0; }

static const char *templates[] = {
    "GET /fuzz?a=1&b=2 HTTP/1.1\r\nHost: fuzz\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    "POST /echo HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 11\r\n\r\nhello world",
    "POST /echo HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n",
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "HEAD /big?n=100 HTTP/1.1\r\nHost: fuzz\r\n\r\n",
    "POST /x HTTP/1.1\r\nHost: fuzz\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "GET /defer?ms=5 HTTP/1.1\r\nHost: fuzz\r\n\r\nGET /p HTTP/1.1\r\nHost: fuzz\r\n\r\n",
};

/* Bytes that tend to matter to an HTTP parser. */
static const char interesting[] = "\r\n:; \t\0,=?/%-0123456789aAfFxX\x7f\x80\xff";

/* Produce one fuzz input into out (capacity cap); returns its length. */
static size_t make_input(char *out, size_t cap) {
  unsigned kind = (unsigned)rng_below(5);
  const char *t = templates[rng_below(sizeof templates / sizeof templates[0])];
  size_t len = strlen(t);
  if (kind == 0) { /* pure random bytes */
    len = 1 + rng_below(cap - 1);
    for (size_t i = 0; i < len; i++)
      out[i] = (char)rng();
    return len;
  }
  memcpy(out, t, len);
  if (kind == 1) /* truncated */
    return 1 + rng_below(len - 1);
  /* mutated: flip, insert or delete a few bytes */
  unsigned edits = 1 + (unsigned)rng_below(kind == 4 ? 12 : 3);
  for (unsigned e = 0; e < edits; e++) {
    size_t at = rng_below(len);
    unsigned op = (unsigned)rng_below(3);
    char c = rng_below(2) ? interesting[rng_below(sizeof interesting - 1)] : (char)rng();
    if (op == 0) {
      out[at] = c;
    } else if (op == 1 && len + 1 < cap) {
      memmove(out + at + 1, out + at, len - at);
      out[at] = c;
      len++;
    } else if (len > 1) {
      memmove(out + at, out + at + 1, len - at - 1);
      len--;
    }
  }
  /* sometimes a valid request after the damage, sometimes lots of one byte */
  if (rng_below(4) == 0 && len + 40 < cap) {
    const char *tail = "GET /tail HTTP/1.1\r\nHost: fuzz\r\n\r\n";
    memcpy(out + len, tail, strlen(tail));
    len += strlen(tail);
  }
  if (rng_below(10) == 0) {
    size_t n = rng_below(cap - len);
    memset(out + len, interesting[rng_below(sizeof interesting - 1)], n);
    len += n;
  }
  return len;
}

int main(void) {
  t_init("fuzz");
  uint64_t seed = 0x9e3779b97f4a7c15ULL ^ (uint64_t)t_now_ms();
  if (getenv("T_SEED"))
    seed = strtoull(getenv("T_SEED"), NULL, 0);
  rng_state = seed ? seed : 1;
  printf("# seed 0x%llx (set T_SEED to repeat)\n", (unsigned long long)seed);

  pmu_config_t config;
  t_config_init(&config);
  config.header_timeout_ms = 2000;
  config.body_timeout_ms = 2000;
  config.max_body_bytes = 64 * 1024;
  t_server_t *server = t_server_start(&config);

  t_case("random and mutated input on many connections");
  char *input = malloc(8192);
  unsigned long sent_total = 0;
  for (int round = 0; round < ROUNDS; round++) {
    t_conn_t *conns[BATCH];
    for (int i = 0; i < BATCH; i++) {
      conns[i] = t_connect(server);
      size_t len = make_input(input, 8192);
      /* send in one go or in a few pieces */
      size_t pieces = 1 + rng_below(4), off = 0;
      for (size_t p = 0; p < pieces && off < len; p++) {
        size_t n = p + 1 == pieces ? len - off : rng_below(len - off + 1);
        if (t_send_try(conns[i], input + off, n) < 0)
          break;
        off += n;
      }
      sent_total += len;
    }
    /* read what comes for a short while; every response must parse */
    int64_t deadline = t_now_ms() + 150;
    for (int i = 0; i < BATCH; i++) {
      int64_t left = deadline - t_now_ms();
      (void)t_wait_closed(conns[i], left > 0 ? (int)left : 0);
      size_t off = 0;
      while (off < conns[i]->len) {
        t_response_t r;
        long n = t_parse_response(conns[i]->buf + off, conns[i]->len - off, false, true, &r);
        if (n <= 0)
          break; /* a response to HEAD, or a body cut by our own deadline */
        T_ASSERT_MSG(r.status >= 100 && r.status <= 599, "status %d", r.status);
        t_response_free(&r);
        off += (size_t)n;
      }
      /* end the connection in different ways */
      if (i % 3 == 0)
        t_conn_abort(conns[i]);
      else
        t_conn_close(conns[i]);
    }
  }
  free(input);
  printf("# sent %lu fuzz bytes on %d connections\n", sent_total, ROUNDS * BATCH);

  t_case("the server still answers normal requests afterwards");
  for (int i = 0; i < 5; i++)
    t_get_ok(server, "/after-fuzz");

  t_case("every fuzz connection is eventually closed by the server");
  {
    T_WAIT_UNTIL(t_stats(server, -1).connections_open == 0, T_EVENT_MS);
    pmu_stats_t stats = t_stats(server, -1);
    T_ASSERT_INT_EQ(stats.connections_open, 0);
    T_ASSERT_INT_EQ(stats.connections_accepted, ROUNDS * BATCH + 5);
  }

  t_case("truncated requests of every length, each on its own connection");
  {
    const char *full = "POST /echo HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n0\r\n\r\n";
    size_t len = strlen(full);
    for (size_t cut = 1; cut < len; cut++) {
      t_conn_t *conn = t_connect(server);
      t_send(conn, full, cut);
      if (cut % 2)
        t_conn_abort(conn);
      else
        t_conn_close(conn);
    }
    t_get_ok(server, "/after-truncation");
  }

  t_server_destroy(server);
  return t_done();
}
