/*
 * test_smuggling: a CR not followed by LF, or an LF without its CR, anywhere
 * in the framing of a request (request line, header lines, the blank line,
 * empty lines before a request, chunk-size lines and extensions, the CRLF
 * after chunk data, the last chunk, trailers, the final CRLF) is refused with
 * one 400 and the connection closed, and the handler never sees a request
 * that follows it; whatever llhttp release the engine is built with. CRs and
 * LFs inside body data are data. Every row is sent whole and split in two at
 * every byte (each half its own recv), so a CR at the end of one recv is
 * checked against the first byte of the next.
 *
 * Then the RFC 9112 rules on the request target and Host (3.2, 3.2.2-3.2.4):
 * Host missing or repeated, invalid Host, absolute-form (the target's
 * authority is the host; the handler sees the origin-form path), CONNECT,
 * asterisk-form.
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

/* clang-format off */
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
    /* an LF without its CR */
    {"LF alone ends the request line", "GET / HTTP/1.1\nHost: a\r\n\r\n", 0, 1, NULL},
    {"LF alone ends a header line", "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 0, 1, NULL},
    {"LF alone as the blank line", "GET / HTTP/1.1\r\nHost: a\r\n\n", 0, 1, NULL},
    {"LF alone as the blank line, smuggling a GET",
     "GET / HTTP/1.1\r\nHost: a\r\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"LF alone before the first request", "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    {"LF alone between two requests",
     "GET / HTTP/1.1\r\nHost: a\r\n\r\n\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", 1, 1, NULL},
    {"LF alone after a chunk size", CHUNKED "5\nhello\r\n0\r\n\r\n", 0, 1, NULL},
    {"LF alone after chunk data", CHUNKED "5\r\nhello\n0\r\n\r\n", 0, 1, NULL},
    {"LF alone in the last chunk", CHUNKED "5\r\nhello\r\n0\n\r\n", 0, 1, NULL},
    {"LF alone ends a trailer", CHUNKED "5\r\nhello\r\n0\r\nT: v\n\r\n", 0, 1, NULL},
    {"LF alone as the final line", CHUNKED "5\r\nhello\r\n0\r\n\n", 0, 1, NULL},
    {"LF alone as the final line, smuggling a GET",
     CHUNKED "5\r\nhello\r\n0\r\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, NULL},
    /* legitimate: CRs and LFs that are body data, CRLFs anywhere */
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
    {"legit: LFs in a Content-Length body, then a request",
     "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n\na\n\nb"
     "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n\n\r\n",
     2, 0, "\n\r\n"},
    {"legit: LFs in chunk data, first and last",
     CHUNKED "3\r\n\nab\r\n2\r\nc\n\r\n1\r\n\n\r\n0\r\n\r\n", 1, 0, "\nabc\n\n"},
};
/* clang-format on */

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
    t_sleep_ms(1);                                    /* its own recv */
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

/* ---- target and Host rules ---- */

typedef struct rule_case {
  const char *name;
  const char *request;
  int status;       /* 200: answered by the handler (then the fields below) */
  const char *path; /* as the handler sees it */
  const char *query;
  const char *host; /* pmu_request_header(request, "Host") */
  const char *target;
} rule_case_t;

/* clang-format off */
static const rule_case_t rules[] = {
    {"HTTP/1.1 without Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, NULL, NULL, NULL, NULL},
    {"HTTP/1.1 with two Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, NULL, NULL,
     NULL, NULL},
    {"HTTP/1.0 with two Host", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, NULL, NULL,
     NULL, NULL},
    {"HTTP/1.0 without Host", "GET /p HTTP/1.0\r\n\r\n", 200, "/p", "", "(none)", "/p"},
    {"empty Host, origin-form", "GET /p HTTP/1.1\r\nHost:\r\n\r\n", 200, "/p", "", "", "/p"},
    {"Host with port", "GET /p HTTP/1.1\r\nHost: a.b:8080\r\n\r\n", 200, "/p", "", "a.b:8080",
     "/p"},
    {"Host IPv6 literal", "GET /p HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 200, "/p", "", "[::1]:80",
     "/p"},
    {"Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, NULL, NULL, NULL, NULL},
    {"Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, NULL, NULL, NULL, NULL},
    {"Host with a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, NULL, NULL, NULL, NULL},
    {"Host with a bad port", "GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400, NULL, NULL, NULL,
     NULL},
    {"Host port only", "GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400, NULL, NULL, NULL, NULL},
    {"Host unclosed IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, NULL, NULL, NULL,
     NULL},
    {"absolute-form: the target's authority wins",
     "GET http://example.com:8080/p/a?x=1 HTTP/1.1\r\nHost: other\r\n\r\n", 200, "/p/a", "x=1",
     "example.com:8080", "/p/a?x=1"},
    {"absolute-form https, upper-case scheme, empty path",
     "GET HTTPS://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", 200, "/", "",
     "example.com", "/"},
    {"absolute-form, empty path with a query",
     "GET http://h?q=2 HTTP/1.1\r\nHost: h\r\n\r\n", 200, "/", "q=2", "h", "/?q=2"},
    {"absolute-form, HTTP/1.0 without Host: one is added",
     "GET http://h:1/x HTTP/1.0\r\n\r\n", 200, "/x", "", "h:1", "/x"},
    {"absolute-form, HTTP/1.1 without Host", "GET http://h/x HTTP/1.1\r\n\r\n", 400, NULL,
     NULL, NULL, NULL},
    {"absolute-form, ftp scheme", "GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400, NULL, NULL,
     NULL, NULL},
    {"absolute-form, empty authority", "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400, NULL,
     NULL, NULL, NULL},
    {"absolute-form, userinfo", "GET http://u:p@h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400, NULL,
     NULL, NULL, NULL},
    {"target without a leading slash", "GET p/a HTTP/1.1\r\nHost: h\r\n\r\n", 400, NULL, NULL,
     NULL, NULL},
    {"CONNECT (authority-form)",
     "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400, NULL, NULL, NULL,
     NULL},
    {"GET *", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400, NULL, NULL, NULL, NULL},
    {"empty field name", "GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n", 400, NULL, NULL, NULL,
     NULL},
    {"empty field name first", "GET / HTTP/1.1\r\n:\r\nHost: h\r\n\r\n", 400, NULL, NULL,
     NULL, NULL},
    {"empty Transfer-Encoding", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n",
     400, NULL, NULL, NULL, NULL},
    {"empty Transfer-Encoding with Content-Length",
     "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: \r\n\r\nab", 400,
     NULL, NULL, NULL, NULL},
    {"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 200, "*", "", "h", "*"},
    /* trailers are dropped, but their lines follow the header rules */
    {"trailers: empty field name", CHUNKED "1\r\na\r\n0\r\n: x\r\n\r\n", 400, NULL, NULL,
     NULL, NULL},
    {"trailers: empty name after a good one", CHUNKED "1\r\na\r\n0\r\nT: 1\r\n: x\r\n\r\n", 400,
     NULL, NULL, NULL, NULL},
    {"trailers: obs-fold", CHUNKED "1\r\na\r\n0\r\nT: x\r\n  folded\r\n\r\n", 400, NULL,
     NULL, NULL, NULL},
    {"obs-fold after an empty value", "GET / HTTP/1.1\r\nHost: h\r\nX:\r\n 0\r\n\r\n", 400, NULL, NULL,
     NULL, NULL},
    {"obs-fold after an empty Content-Length",
     "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n 5\r\n\r\nhello", 400, NULL, NULL, NULL, NULL},
    {"obs-fold after an empty Transfer-Encoding",
     "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400, NULL, NULL,
     NULL, NULL},
    {"an empty value, then a field", "GET /e HTTP/1.1\r\nHost: h\r\nX:\r\nY: 1\r\n\r\n", 200, "/e", "",
     "h", "/e"},
    {"trailers: obs-fold after an empty value", CHUNKED "1\r\na\r\n0\r\nT:\r\n 0\r\n\r\n", 400, NULL,
     NULL, NULL, NULL},
    {"trailers: whitespace before the colon", CHUNKED "1\r\na\r\n0\r\nT : x\r\n\r\n", 400,
     NULL, NULL, NULL, NULL},
    {"trailers: two good ones",
     "POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nT: 1\r\n"
     "U: 2\r\n\r\n",
     200, "/t", "", "a", "/t"},
};
/* clang-format on */

static bool run_rule(t_server_t *server, const rule_case_t *rc, char *why, size_t why_size) {
  size_t len = strlen(rc->request);
  if (rc->status != 200)
    return t_try_error_close(server, rc->request, len, rc->status, why, why_size);
  t_conn_t *conn = t_connect(server);
  t_send(conn, rc->request, len);
  t_response_t r;
  bool ok = false;
  if (t_read_response(conn, &r, T_IO_TIMEOUT_MS, false) < 0) {
    snprintf(why, why_size, "no response");
    t_conn_close(conn);
    return false;
  }
  const char *keys[] = {"path", "query", "host", "target"};
  const char *want[] = {rc->path, rc->query, rc->host, rc->target};
  if (r.status != 200) {
    snprintf(why, why_size, "status %d", r.status);
    goto out;
  }
  for (int k = 0; k < 4; k++) {
    char got[128] = "(absent)";
    t_describe_get(&r, keys[k], got, sizeof got);
    if (strcmp(got, want[k]) != 0) {
      snprintf(why, why_size, "%s \"%s\", expected \"%s\"", keys[k], got, want[k]);
      goto out;
    }
  }
  ok = true;
out:
  t_response_free(&r);
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
    snprintf(name, sizeof name, "%s: %s", cs->refused ? "refused" : "accepted", cs->name);
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

  for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
    char name[192], why[256];
    snprintf(name, sizeof name, "%d: %s", rules[i].status, rules[i].name);
    t_case(name);
    if (!run_rule(server, &rules[i], why, sizeof why))
      t_case_failed("%s", why);
  }

  t_case("Connection: close with trailing whitespace closes, what follows is never served");
  {
    t_conn_t *conn = t_connect(server);
    unsigned long seen0 = atomic_load(&server->seen);
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                     "Connection: keep-alive, close\t\r\n\r\nq=42"
                     "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(t_header(&r, "Connection"), "close");
    t_response_free(&r);
    t_expect_closed(conn, 2000);
    T_ASSERT_INT_EQ(atomic_load(&server->seen) - seen0, 1);
    t_conn_close(conn);
  }

  t_server_destroy(server);
  return t_done();
}
