/*
 * test_smuggling: a CR not followed by LF anywhere in the framing of a
 * request (request line, header lines, the blank line, empty lines before a
 * request, chunk-size lines and extensions, the CRLF after chunk data, the
 * last chunk, trailers, the final CRLF) is refused with one 400 and the
 * connection closed, and the handler never sees a request that follows it;
 * whatever llhttp release the engine is built with. CRs inside body data
 * are data. Every row is sent whole and split in two at every byte (each
 * half its own recv), so a CR at the end of one recv is checked against the
 * first byte of the next.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

#define CHUNKED "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"

typedef struct cr_case {
  const char *name;
  const char *request;
  unsigned ok_before; /* requests answered 200 before the refusal (or all of them) */
  int refused;        /* 1: then one 400 and the close; 0: the connection stays */
  const char *echo;   /* for legitimate /echo rows: the body the last one echoes */
} cr_case_t;

static const cr_case_t cases[] = {
    /* the request line */
    {"in the method", "GE\rT / HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"between method and target", "GET\r/ HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"in the target", "GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"between target and version", "GET /\rHTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"in the version", "GET / HTTP/1.\r1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"as the request line's end", "GET / HTTP/1.1\rHost: a\r\n\r\n", 0, 1, NULL},
    {"before the request line's CRLF", "GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", 0, 1, NULL},
    /* header lines */
    {"in a name", "GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n", 0, 1, NULL},
    {"before the colon", "GET / HTTP/1.1\r\nHost\r: a\r\n\r\n", 0, 1, NULL},
    {"after the colon", "GET / HTTP/1.1\r\nHost:\r a\r\n\r\n", 0, 1, NULL},
    {"in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 0, 1, NULL},
    {"before a header line's CRLF", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\r\n\r\n", 0, 1, NULL},
    {"as the first header's line end", "GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n", 0, 1, NULL},
    {"as the last header's line end", "GET / HTTP/1.1\r\nX-A: b\r\nHost: a\rX\r\n\r\n", 0, 1,
     NULL},
    {"as the line end of Content-Length",
     "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\rX: y\r\n\r\nhello", 0, 1, NULL},
    /* the blank line (CVE-2025-23167) */
    {"blank line \\r\\n\\rX smuggling a GET",
     "GET / HTTP/1.1\r\nHost: a\r\n\rXGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"blank line \\r\\n\\r before Content-Length",
     "POST /echo HTTP/1.1\r\nHost: a\r\n\rContent-Length: 5\r\n\r\nhello", 0, 1, NULL},
    {"blank line \\r\\n\\r before Transfer-Encoding",
     "POST /echo HTTP/1.1\r\nHost: a\r\n\rTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     0, 1, NULL},
    {"blank line \\r\\r\\n", "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", 0, 1, NULL},
    /* before a request */
    {"before the first request", "\rXGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"alone before the first request", "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"between two requests",
     "GET / HTTP/1.1\r\nHost: a\r\n\r\n\rXGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 1, 1, NULL},
    {"after a Content-Length body, before the next request",
     "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab\rGET /smuggled HTTP/1.1\r\n"
     "Host: a\r\n\r\n", 1, 1, NULL},
    /* chunked framing */
    {"in a chunk size", CHUNKED "5\rXhello\r\n0\r\n\r\n", 0, 1, NULL},
    {"inside a chunk size", CHUNKED "1\r0\r\nhello\r\n0\r\n\r\n", 0, 1, NULL},
    {"before a chunk size's CRLF", CHUNKED "5\r\r\nhello\r\n0\r\n\r\n", 0, 1, NULL},
    {"in a chunk extension", CHUNKED "5;a=b\rXhello\r\n0\r\n\r\n", 0, 1, NULL},
    {"inside a chunk extension", CHUNKED "5;a=\rb\r\nhello\r\n0\r\n\r\n", 0, 1, NULL},
    {"after chunk data", CHUNKED "5\r\nhello\rX0\r\n\r\n", 0, 1, NULL},
    {"after chunk data, CR CR LF", CHUNKED "5\r\nhello\r\r\n0\r\n\r\n", 0, 1, NULL},
    {"in the last chunk", CHUNKED "5\r\nhello\r\n0\rX\r\n\r\n", 0, 1, NULL},
    {"in the last chunk's extension", CHUNKED "5\r\nhello\r\n0;e\rX\r\n\r\n", 0, 1, NULL},
    {"in a trailer's value", CHUNKED "5\r\nhello\r\n0\r\nT: v\rw\r\n\r\n", 0, 1, NULL},
    {"as a trailer's line end", CHUNKED "5\r\nhello\r\n0\r\nT: v\rX\r\n\r\n", 0, 1, NULL},
    {"in a trailer's name", CHUNKED "5\r\nhello\r\n0\r\nT\r: v\r\n\r\n", 0, 1, NULL},
    {"in the final CRLF", CHUNKED "5\r\nhello\r\n0\r\n\rX", 0, 1, NULL},
    {"in the final CRLF, smuggling a GET",
     CHUNKED "5\r\nhello\r\n0\r\n\rGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    /* legitimate: CRs that are body data, CRLFs anywhere */
    {"legit: an empty line before a request (RFC 9112 2.2)",
     "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 1, 0, NULL},
    {"legit: an empty line between requests",
     "GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", 2, 0, NULL},
    {"legit: two requests", "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
     2, 0, NULL},
    {"legit: CRs in a Content-Length body, then a request",
     "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n\ra\r\rb\r\r"
     "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nx\ry",
     2, 0, "x\ry"},
    {"legit: a body that is one CR", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n\r",
     1, 0, "\r"},
    {"legit: CRs in chunk data, one ending a chunk",
     CHUNKED "3\r\nab\r\r\n2;x=y\r\n\r\r\r\n1\r\n\r\r\n0\r\nT: v\r\n\r\n", 1, 0, "ab\r\r\r\r"},
    {"legit: chunk data that looks like a CRLF", CHUNKED "2\r\n\r\n\r\n0\r\n\r\n", 1, 0,
     "\r\n"},
};

/* Send `req` whole (split 0) or in two recvs split at byte `split`; check
 * the answers. Returns false with the reason in `why`. */
static bool run_case(t_server_t *server, const cr_case_t *cs, size_t split, char *why,
                     size_t why_size) {
  const char *req = cs->request;
  size_t len = strlen(req);
  unsigned long seen0 = atomic_load(&server->seen);
  t_conn_t *conn = t_connect(server);
  bool ok = false;
  if (split) {
    t_send(conn, req, split);
    t_sleep_ms(1); /* its own recv */
    (void)t_send_try(conn, req + split, len - split); /* may find the connection closed */
  } else {
    t_send(conn, req, len);
  }
  for (unsigned i = 0; i < cs->ok_before; i++) {
    t_response_t r;
    int rc = t_read_response(conn, &r, T_IO_TIMEOUT_MS, false);
    if (rc < 0) {
      snprintf(why, why_size, "response %u of %u: none (%d)", i + 1, cs->ok_before, rc);
      goto out;
    }
    int status = r.status;
    bool body_ok = !cs->echo || i + 1 < cs->ok_before ||
                   (r.body_len == strlen(cs->echo) && memcmp(r.body, cs->echo, r.body_len) == 0);
    t_response_free(&r);
    if (status != 200 || !body_ok) {
      snprintf(why, why_size, "response %u: status %d%s", i + 1, status,
               body_ok ? "" : ", body not echoed");
      goto out;
    }
  }
  if (cs->refused) {
    t_response_t r;
    int rc = t_read_response(conn, &r, T_IO_TIMEOUT_MS, false);
    if (rc < 0) {
      snprintf(why, why_size, "no 400 (%d)", rc);
      goto out;
    }
    int status = r.status;
    t_response_free(&r);
    if (status != 400) {
      snprintf(why, why_size, "status %d instead of 400", status);
      goto out;
    }
    if (!t_wait_closed(conn, 2000)) {
      snprintf(why, why_size, "connection not closed after the 400");
      goto out;
    }
    if (conn->len) {
      snprintf(why, why_size, "%zu bytes after the 400", conn->len);
      goto out;
    }
  } else {
    /* still open and in step: one more request gets its own answer */
    t_send_str(conn, "GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
    t_response_t r;
    int rc = t_read_response(conn, &r, T_IO_TIMEOUT_MS, false);
    if (rc < 0) {
      snprintf(why, why_size, "no answer to a request after (%d)", rc);
      goto out;
    }
    char path[32] = "";
    t_describe_get(&r, "path", path, sizeof path);
    t_response_free(&r);
    if (strcmp(path, "/after") != 0) {
      snprintf(why, why_size, "the request after was answered with path \"%s\"", path);
      goto out;
    }
  }
  unsigned long seen = atomic_load(&server->seen) - seen0;
  unsigned long want = cs->ok_before + (cs->refused ? 0 : 1);
  if (seen != want) {
    snprintf(why, why_size, "the handler saw %lu requests, expected %lu", seen, want);
    goto out;
  }
  ok = true;
out:
  t_conn_close(conn);
  return ok;
}

int main(void) {
  t_init("smuggling");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);

  size_t runs = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const cr_case_t *cs = &cases[i];
    char name[192];
    snprintf(name, sizeof name, "%s %s", cs->refused ? "bare CR" : "CR", cs->name);
    t_case(name);
    size_t len = strlen(cs->request);
    for (size_t split = 0; split < len; split++) {
      char why[256];
      runs++;
      if (!run_case(server, cs, split, why, sizeof why)) {
        t_case_failed("%s (split at %zu of %zu)", why, split, len);
        break; /* one report per row */
      }
    }
  }
  printf("# %zu rows, %zu connections (each row whole and split at every byte)\n",
         sizeof cases / sizeof cases[0], runs);

  t_server_destroy(server);
  return t_done();
}
