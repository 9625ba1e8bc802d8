/*
 * http.c: the llhttp glue. Spans the parser reports are copied once into
 * the request's own memory (so the receive buffer can go back at once);
 * limits are enforced while parsing; complete requests join the batch.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_FREE_REQS 4096
/* Pooled requests keep their buffers; those above SMALL_BUF count against a
 * per-loop budget, so a burst of large bodies cannot pin memory for good,
 * while a steady stream of them does not pay malloc+page faults each time. */
#define SMALL_BUF (64 * 1024)
#define BIG_BUF_MAX (4u << 20)
#define BIG_POOL_BUDGET (32u << 20)

/* ---- requests ---- */

static size_t big_bytes(const pmu__req_t *r) {
  return (r->data_cap > SMALL_BUF ? r->data_cap : 0) + (r->out_cap > SMALL_BUF ? r->out_cap : 0);
}

pmu__req_t *pmu__req_alloc(pmu__loop_t *loop) {
  pmu__req_t *r = loop->free_reqs;
  if (r) {
    loop->free_reqs = r->next;
    loop->nfree_reqs--;
    loop->pool_big_bytes -= big_bytes(r);
  } else {
    r = calloc(1, sizeof *r);
    if (!r)
      return NULL;
  }
  r->loop = loop;
  return r;
}

static void req_drop_output(pmu__req_t *r) {
  if (r->ext_release)
    r->ext_release(r->ext_ctx);
  r->ext_release = NULL;
  while (r->seg_head) {
    pmu__seg_t *g = r->seg_head;
    r->seg_head = g->next;
    pmu__seg_done(g);
  }
  r->seg_tail = NULL;
}

/* Reset a request for reuse, keeping its buffers. */
static void req_reset(pmu__req_t *r) {
  req_drop_output(r);
  char *data = r->data, *out = r->out;
  pmu__hoff_t *hoff = r->hoff;
  pmu_header_t *headers = r->headers;
  size_t data_cap = r->data_cap, out_cap = r->out_cap, hcap = r->hcap;
  size_t headers_cap = r->headers_cap;
  memset(r, 0, sizeof *r);
  r->data = data;
  r->data_cap = data_cap;
  r->hoff = hoff;
  r->hcap = hcap;
  r->headers = headers;
  r->headers_cap = headers_cap;
  r->out = out;
  r->out_cap = out_cap;
}

static void req_destroy(pmu__req_t *r) {
  req_drop_output(r);
  free(r->data);
  free(r->hoff);
  free(r->headers);
  free(r->out);
  free(r);
}

void pmu__req_free(pmu__req_t *r) {
  pmu__loop_t *loop = r->loop;
  size_t big = big_bytes(r);
  if (pmu__current_loop != loop || loop->nfree_reqs >= MAX_FREE_REQS ||
      r->data_cap > BIG_BUF_MAX || r->out_cap > BIG_BUF_MAX ||
      loop->pool_big_bytes + big > BIG_POOL_BUDGET) {
    req_destroy(r);
    return;
  }
  loop->pool_big_bytes += big;
  req_reset(r);
  r->next = loop->free_reqs;
  loop->free_reqs = r;
  loop->nfree_reqs++;
}

int pmu__grow(char **buf, size_t *cap, size_t need, size_t first_cap) {
  if (need <= *cap)
    return 0;
  size_t n = *cap ? *cap : first_cap;
  while (n < need)
    n *= 2;
  char *p = realloc(*buf, n);
  if (!p)
    return -ENOMEM;
  *buf = p;
  *cap = n;
  return 0;
}

static int data_reserve(pmu__req_t *r, size_t extra) {
  return pmu__grow(&r->data, &r->data_cap, r->data_len + extra, 512);
}

static int data_append(pmu__req_t *r, const char *at, size_t len) {
  if (data_reserve(r, len) < 0)
    return -ENOMEM;
  memcpy(r->data + r->data_len, at, len);
  r->data_len += len;
  return 0;
}

/* ---- callbacks ---- */

#define CONN(p) ((pmu__conn_t *)(p)->data)

static int fail(pmu__conn_t *c, int status) {
  c->error_status = (uint16_t)status;
  return -1;
}

static int count_header_bytes(pmu__conn_t *c, size_t len) {
  c->header_bytes += len;
  return c->header_bytes > c->loop->server->cfg.max_header_bytes;
}

static int on_message_begin(llhttp_t *p) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = pmu__req_alloc(c->loop);
  if (!r)
    return fail(c, 503);
  r->conn = c;
  r->kind = REQ_USER;
  c->cur = r;
  c->pstate = PS_HEADERS;
  c->served = 1;
  c->header_bytes = 0;
  c->body_bytes = 0;
  c->last_cb = 0;
  pmu__conn_timer_update(c);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  if (r->url_len + len > c->loop->server->cfg.max_url_bytes)
    return fail(c, 414);
  if (count_header_bytes(c, len))
    return fail(c, 431);
  if (r->url_len == 0)
    r->url_off = (uint32_t)r->data_len;
  r->url_len += (uint32_t)len;
  return data_append(r, at, len) < 0 ? fail(c, 503) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  if (count_header_bytes(c, len))
    return fail(c, 431);
  if (c->pstate == PS_BODY)
    return 0; /* a trailer of a chunked body: accepted, counted, not kept */
  /* RFC 9112 5.1: no whitespace between the field name and the colon. */
  for (size_t i = 0; i < len; i++)
    if (at[i] == ' ' || at[i] == '\t')
      return fail(c, 400);
  if (c->last_cb != 1) {
    if (r->hcount >= c->loop->server->cfg.max_headers)
      return fail(c, 431);
    if (r->hcount == r->hcap) {
      size_t cap = r->hcap ? r->hcap * 2 : 16;
      pmu__hoff_t *h = realloc(r->hoff, cap * sizeof *h);
      if (!h)
        return fail(c, 503);
      r->hoff = h;
      r->hcap = cap;
    }
    pmu__hoff_t *h = &r->hoff[r->hcount++];
    h->name_off = (uint32_t)r->data_len;
    h->name_len = 0;
    h->value_off = 0;
    h->value_len = 0;
    c->last_cb = 1;
  }
  r->hoff[r->hcount - 1].name_len += (uint32_t)len;
  return data_append(r, at, len) < 0 ? fail(c, 503) : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  if (count_header_bytes(c, len))
    return fail(c, 431);
  if (c->pstate == PS_BODY)
    return 0; /* trailer */
  pmu__hoff_t *h = &r->hoff[r->hcount - 1];
  uint64_t start = c->fed + (uint64_t)(at - c->chunk);
  if (c->last_cb != 2) {
    h->value_off = (uint32_t)r->data_len;
    c->last_cb = 2;
  } else if (len && h->value_len && start != c->value_end) {
    /* llhttp skipped bytes inside one value: a CRLF, i.e. obs-fold
     * (RFC 9112 5.2), which we refuse. */
    return fail(c, 400);
  }
  if (len)
    c->value_end = start + len;
  h->value_len += (uint32_t)len;
  return data_append(r, at, len) < 0 ? fail(c, 503) : 0;
}

static int finalize(pmu__conn_t *c, pmu__req_t *r, llhttp_t *p);
static void join_batch(pmu__conn_t *c, pmu__req_t *r);

/* Hand the request to the handler now, before its body: the body follows
 * through config.on_body. */
static int start_body_stream(pmu__conn_t *c, pmu__req_t *r, llhttp_t *p) {
  size_t keep = r->data_len;
  r->data_len = c->body_off; /* the request as seen has no body */
  if (finalize(c, r, p) < 0)
    return -ENOMEM;
  r->data_len = keep;
  r->pub.body_streaming = 1;
  r->pub.body = NULL;
  r->pub.body_len = 0;
  join_batch(c, r);
  /* The handler must see the request before its first piece. */
  pmu__loop_dispatch(c->loop);
  return 0;
}

static int value_is(const pmu__req_t *r, const pmu__hoff_t *h, const char *want) {
  size_t n = strlen(want), len = h->value_len;
  const char *v = r->data + h->value_off;
  while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
    len--; /* trailing OWS is not part of the value (RFC 9110 5.5) */
  return len == n && strncasecmp(v, want, n) == 0;
}

static int name_is(const pmu__req_t *r, const pmu__hoff_t *h, const char *want) {
  size_t n = strlen(want);
  return h->name_len == n && strncasecmp(r->data + h->name_off, want, n) == 0;
}

static int on_headers_complete(llhttp_t *p) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  const pmu_config_t *cfg = &c->loop->server->cfg;
  int has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  int chunked = (p->flags & F_CHUNKED) != 0;
  if (has_length && p->content_length > cfg->max_body_bytes)
    return fail(c, 413);
  int expects_body = chunked || (has_length && p->content_length > 0);
  if (p->http_major != 1)
    return fail(c, p->http_major == 0 ? 400 : 505); /* HTTP/0.9 or 2+ on this port */

  for (size_t i = 0; i < r->hcount; i++) {
    const pmu__hoff_t *h = &r->hoff[i];
    if (!name_is(r, h, "expect"))
      continue;
    if (!value_is(r, h, "100-continue"))
      return fail(c, 417);
    if (expects_body && p->http_major == 1 && p->http_minor >= 1) {
      /* Tell the client to send the body, ahead of the final answer. */
      pmu__req_t *msg = pmu__req_alloc(c->loop);
      if (!msg)
        return fail(c, 503);
      msg->kind = REQ_ENGINE;
      msg->conn = c;
      pmu__engine_message(msg, 100, 1);
      pmu__conn_enqueue(c, msg);
      pmu__conn_answered(c, msg);
    }
  }

  c->body_off = r->data_len;
  if (expects_body) {
    c->pstate = PS_BODY;
    if (cfg->on_body && cfg->body_stream_threshold && has_length &&
        p->content_length > cfg->body_stream_threshold) {
      if (start_body_stream(c, r, p) < 0)
        return fail(c, 503);
    } else if (has_length && data_reserve(r, (size_t)p->content_length) < 0) {
      return fail(c, 503);
    }
  }
  pmu__conn_timer_update(c);
  return 0;
}

/* Hand a streamed-body piece to the handler. */
static void deliver_body(pmu__conn_t *c, pmu__req_t *r, const char *at, size_t len, int last) {
  const pmu_config_t *cfg = &c->loop->server->cfg;
  atomic_fetch_add(&r->body_delivered, len);
  cfg->on_body(cfg->handler_data, &r->pub, at, len, last);
}

/* A chunk announced beyond the body limit is refused before its data. */
static int on_chunk_header(llhttp_t *p) {
  pmu__conn_t *c = CONN(p);
  if (c->body_bytes + p->content_length > c->loop->server->cfg.max_body_bytes)
    return fail(c, 413);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  const pmu_config_t *cfg = &c->loop->server->cfg;
  c->body_bytes += len;
  if (c->body_bytes > cfg->max_body_bytes)
    return fail(c, 413);
  pmu__conn_timer_touch(c);
  if (r->pub.body_streaming) {
    if (!r->body_dropped)
      deliver_body(c, r, at, len, 0);
    return 0;
  }
  if (data_append(r, at, len) < 0)
    return fail(c, 503);
  size_t buffered = r->data_len - c->body_off;
  if (cfg->on_body && cfg->body_stream_threshold && buffered > cfg->body_stream_threshold) {
    /* A chunked body outgrew the threshold: stream from here on, starting
     * with what was buffered. */
    if (start_body_stream(c, r, p) < 0)
      return fail(c, 503);
    r->data_len = c->body_off;
    if (!r->body_dropped)
      deliver_body(c, r, r->data + c->body_off, buffered, 0);
  }
  return 0;
}

/* Turn offsets into the pointers the handler sees. */
static int finalize(pmu__conn_t *c, pmu__req_t *r, llhttp_t *p) {
  pmu_request_t *q = &r->pub;
  if (r->headers_cap < r->hcount) {
    pmu_header_t *hs = realloc(r->headers, r->hcount * sizeof *hs);
    if (!hs)
      return -ENOMEM;
    r->headers = hs;
    r->headers_cap = r->hcount;
  }
  for (size_t i = 0; i < r->hcount; i++) {
    const pmu__hoff_t *h = &r->hoff[i];
    r->headers[i].name = r->data + h->name_off;
    r->headers[i].name_len = h->name_len;
    /* RFC 9110 5.5: a field value has no trailing whitespace (llhttp
     * already skipped the leading). */
    size_t vlen = h->value_len;
    const char *v = r->data + h->value_off;
    while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
      vlen--;
    r->headers[i].value = v;
    r->headers[i].value_len = vlen;
  }
  q->headers = r->headers;
  q->header_count = r->hcount;
  q->method = llhttp_method_name((llhttp_method_t)p->method);
  q->method_len = strlen(q->method);
  q->target = r->data + r->url_off;
  q->target_len = r->url_len;
  const char *qm = memchr(q->target, '?', q->target_len);
  q->path = q->target;
  if (qm) {
    q->path_len = (size_t)(qm - q->target);
    q->query = qm + 1;
    q->query_len = q->target_len - q->path_len - 1;
  } else {
    q->path_len = q->target_len;
    q->query = "";
    q->query_len = 0;
  }
  q->body_len = r->data_len - c->body_off;
  q->body = q->body_len ? r->data + c->body_off : NULL;
  q->http_major = p->http_major;
  q->http_minor = p->http_minor;
  q->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade && !c->loop->stopping;
  q->is_head = p->method == HTTP_HEAD;
  q->thread = (uint16_t)c->loop->index;
  q->conn_id = c->id;
  memcpy(&q->peer, &c->peer, sizeof c->peer);
  memcpy(&q->local, &c->local, sizeof c->local);
  return 0;
}

/* The request joins its connection's queue and the loop's batch. */
static void join_batch(pmu__conn_t *c, pmu__req_t *r) {
  pmu__loop_t *loop = c->loop;
  pmu__conn_enqueue(c, r);
  r->with_handler = 1;
  loop->batch[loop->batch_len++] = &r->pub;
  STAT_ADD(loop, requests, 1);
  if (loop->batch_len >= loop->server->cfg.batch_max)
    pmu__loop_dispatch(loop); /* a long pipeline: answer in slices */
}

static int on_message_complete(llhttp_t *p) {
  pmu__conn_t *c = CONN(p);
  pmu__loop_t *loop = c->loop;
  pmu__req_t *r = c->cur;
  c->cur = NULL;
  c->pstate = PS_IDLE;
  if (r->pub.body_streaming) {
    if (!r->body_dropped)
      deliver_body(c, r, NULL, 0, 1);
    else
      c->no_more = 1; /* answered early: the connection closes after it */
    if (r->detached)
      pmu__req_free(r); /* its answer is already out */
  } else {
    if (finalize(c, r, p) < 0) {
      c->cur = r; /* freed with the error below */
      return fail(c, 503);
    }
    join_batch(c, r);
  }
  pmu__conn_timer_update(c); /* an answer is owed: no timer runs */
  if (!r->pub.keep_alive || c->no_more) {
    c->no_more = 1; /* whatever follows a closing request is ignored */
    return HPE_PAUSED;
  }
  if (c->pending >= loop->server->cfg.max_pipelined ||
      c->out_queued > loop->server->cfg.output_high_water)
    return HPE_PAUSED;
  return 0;
}

const llhttp_settings_t pmu__llhttp_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

void pmu__http_init(pmu__conn_t *c) {
  llhttp_init(&c->parser, HTTP_REQUEST, &pmu__llhttp_settings);
  c->parser.data = c;
}

void pmu__conn_send_error(pmu__conn_t *c, int status) {
  if (c->cur && c->cur->pub.body_streaming) {
    /* The handler holds this request and owes its answer: no error can go
     * in its place. Close; on_disconnect tells the handler. */
    c->cur = NULL;
    pmu__conn_close(c);
    return;
  }
  if (c->cur) {
    pmu__req_free(c->cur);
    c->cur = NULL;
  }
  c->pstate = PS_IDLE;
  c->no_more = 1;
  c->linger_on_close = 1;
  if (status != 408 && status != 503)
    STAT_ADD(c->loop, parse_errors, 1);
  pmu__req_t *r = pmu__req_alloc(c->loop);
  if (!r) {
    pmu__conn_close(c);
    return;
  }
  r->kind = REQ_ENGINE;
  r->conn = c;
  pmu__engine_message(r, status, 0);
  pmu__conn_enqueue(c, r);
  pmu__conn_answered(c, r);
  pmu__conn_timer_update(c);
}

size_t pmu__http_feed(pmu__conn_t *c, const char *data, size_t len) {
  c->chunk = data;
  enum llhttp_errno err = llhttp_execute(&c->parser, data, len);
  size_t used = len;
  switch (err) {
  case HPE_OK:
    break;
  case HPE_PAUSED:
    used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
    c->llhttp_paused = 1;
    break;
  case HPE_PAUSED_UPGRADE:
    /* Upgrades are not supported: answer this request, then close. */
    used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
    c->no_more = 1;
    break;
  default:
    pmu__conn_send_error(c, c->error_status ? c->error_status : 400);
    break;
  }
  c->fed += used;
  return used;
}

void pmu_request_body_consumed(pmu_request_t *request, size_t n) {
  pmu__req_t *r = (pmu__req_t *)request;
  size_t consumed = atomic_fetch_add(&r->body_consumed, n) + n;
  size_t low = r->loop->server->cfg.output_high_water / 2;
  if (atomic_load(&r->body_wait) && atomic_load(&r->body_delivered) - consumed <= low &&
      atomic_exchange(&r->body_wait, 0))
    pmu__loop_wake(r->loop); /* the loop looks at its paused reads */
}
