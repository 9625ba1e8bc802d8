/*
 * wsload: a WebSocket load client for the benchmarks, single-threaded on epoll.
 *
 *   wsload --port P [--host 127.0.0.1] [--path /ws/echo] [--mode echo|broadcast]
 *          [--connections N] [--size BYTES] [--depth D] [--duration S] [--warmup S]
 *          [--timeout S] [--procs P]
 *
 * echo: N connections each keep D binary messages of BYTES in flight; every echo
 * that comes back is checked (same bytes, same order) and answered with one more
 * message. broadcast: N subscribers and one publisher connect to the same path;
 * whatever the publisher sends the server fans out to every connection (the
 * publisher included); the publisher keeps D messages not yet delivered to all N
 * subscribers, and every subscriber checks that it gets every message, in order.
 *
 * The frames it sends are masked with one fixed key, the payload's constant part
 * masked once at start ("pre-masked"): per message only the 16-byte header of the
 * payload (a magic, the connection id, a sequence number) is masked. The
 * server's frames are parsed in the receive buffer without copying the payload:
 * each piece is compared with what it must be as it arrives.
 *
 * --procs P (echo only) forks P processes sharing the connections; they connect and warm
 * up, start counting together and their figures are summed into one result: a check
 * that one process is not what limits the rate (give the client more CPUs with taskset).
 *
 * Stdout, one line each, as they happen:
 *   WSLOAD_START <CLOCK_MONOTONIC seconds>   connected and warmed up; counting
 *   WSLOAD_END <CLOCK_MONOTONIC seconds>     counting stopped (then drain, close)
 *   WSLOAD_RESULT {json}                     the figures, or "error"
 * Exit status 0; 2 when anything the server sent was wrong (bad handshake,
 * protocol error, a wrong, missing or extra message, a close not answered),
 * with the reason on stderr and in the result's "error"; 1 for bad usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum mode { ECHO, BROADCAST };
enum role { R_ECHO, R_SUB, R_PUB };
enum cstate { C_IDLE, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_CLOSING, C_CLOSED };
enum phase { P_CONNECT, P_SYNC, P_WARMUP, P_RUN, P_DRAIN, P_CLOSE, P_DONE };

#define ID_BYTES 16        /* magic(4) conn id(4) seq(8) at the start of a payload */
#define PUB_ID 0xFFFFFFFFu /* the publisher's connection id in a payload */
#define MAX_PENDING_HANDSHAKES 64
#define RBUF_SIZE (256 * 1024)
#define HS_MAX 4096

static const uint8_t MASK[4] = {0x37, 0xfa, 0x21, 0x3d};
/* RFC 6455 1.3's example key and its accept value: the key need not be random
 * for a server, and a fixed one lets the answer be checked without SHA-1. */
static const char KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/* ---- options ---- */
static const char *opt_host = "127.0.0.1";
static int opt_port;
static const char *opt_path = NULL;
static enum mode opt_mode = ECHO;
static unsigned opt_conns = 64;
static size_t opt_size = 32;
static unsigned opt_depth = 16;
static double opt_duration = 2.0, opt_warmup = 1.0, opt_timeout = 30.0;
static unsigned opt_procs = 1;
static int go_fd = -1; /* a child of --procs: start counting when a byte arrives here */
/* --procs: the parent's sums, printed instead of its own (it has no connections) */
static int merged;
static double merged_secs, merged_cpu;

/* ---- connections ---- */
struct conn {
  int fd;
  enum cstate state;
  enum role role;
  uint32_t id;
  /* handshake answer, until its blank line */
  char *hs;
  size_t hs_len;
  /* frame parser */
  uint8_t hdr[14];
  size_t hdr_have, hdr_need;
  uint64_t pay_left; /* of the current frame */
  uint8_t op;        /* of the current frame */
  int fin;
  int in_msg;       /* inside a fragmented data message */
  uint64_t msg_off; /* payload bytes of the current message so far */
  uint8_t idb[ID_BYTES];
  uint8_t ctrl[125];
  size_t ctrl_len;
  /* message counts */
  uint64_t sent_seq; /* echo: messages sent */
  uint64_t recv_seq; /* next sequence number expected */
  int synced;        /* broadcast: received its first message */
  double *sent_at;   /* echo: send time of seq % depth */
  /* output */
  uint8_t *out;
  size_t out_len, out_off, out_cap;
  int want_out;
};

static struct conn *conns;
static unsigned nconns; /* subscribers/echo connections, plus the publisher */
static struct conn *pub;
static int ep;
static enum phase phase = P_CONNECT;
static double now_s;
static uint8_t *fill, *fill_masked; /* payload bytes after the id block */

/* ---- counters ---- */
static uint64_t window_msgs, window_bytes, total_msgs, window_published;
static unsigned open_count, closed_count, synced_count, pending_hs, next_to_connect;
static double t_connected, t_start, t_end, phase_deadline, t_begin;
static struct rusage ru_start, ru_end;

/* broadcast flow control: deliveries of each sequence number from first_seq on */
static uint64_t pub_seq, first_seq, low_seq; /* next to publish, first counted, lowest incomplete */
static unsigned *delivered;                  /* ring of opt_depth counters */
static double *pub_at;                       /* ring of opt_depth publish times */
static unsigned nsubs;

/* ---- latency histogram: 32 linear sub-buckets per power of two of nanoseconds ---- */
#define HBUCKETS (64 * 32)
static uint64_t hist[HBUCKETS];
static uint64_t hist_n;
static double lat_sum, lat_max;

static void record_latency(double seconds) {
  if (seconds < 0)
    seconds = 0;
  uint64_t ns = (uint64_t)(seconds * 1e9);
  unsigned idx;
  if (ns < 32) {
    idx = (unsigned)ns;
  } else {
    unsigned e = 63 - (unsigned)__builtin_clzll(ns);
    idx = (e - 4) * 32 + (unsigned)((ns >> (e - 5)) & 31);
  }
  if (idx >= HBUCKETS)
    idx = HBUCKETS - 1;
  hist[idx]++;
  hist_n++;
  lat_sum += seconds;
  if (seconds > lat_max)
    lat_max = seconds;
}

/* The lower bound of bucket idx, in microseconds. */
static double bucket_us(unsigned idx) {
  if (idx < 32)
    return idx / 1000.0;
  unsigned e = idx / 32 + 4, sub = idx % 32;
  return (double)(((uint64_t)(32 + sub)) << (e - 5)) / 1000.0;
}

static double percentile_us(double q) {
  if (!hist_n)
    return 0;
  uint64_t want = (uint64_t)(q * (double)hist_n);
  if (want >= hist_n)
    want = hist_n - 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < HBUCKETS; i++) {
    seen += hist[i];
    if (seen > want)
      return bucket_us(i);
  }
  return bucket_us(HBUCKETS - 1);
}

/* ---- output and failure ---- */
static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(const struct rusage *a, const struct rusage *b) {
  return (double)(b->ru_utime.tv_sec - a->ru_utime.tv_sec) +
         (double)(b->ru_utime.tv_usec - a->ru_utime.tv_usec) / 1e6 +
         (double)(b->ru_stime.tv_sec - a->ru_stime.tv_sec) +
         (double)(b->ru_stime.tv_usec - a->ru_stime.tv_usec) / 1e6;
}

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

static const char *mode_name(void) { return opt_mode == ECHO ? "echo" : "broadcast"; }
static const char *phase_names[] = {"connect", "sync", "warmup", "run", "drain", "close", "done"};

static void print_result(const char *error) {
  double secs = merged ? merged_secs : t_end > t_start ? t_end - t_start : 0;
  double client_cpu = merged ? merged_cpu : (t_end > t_start) ? cpu_seconds(&ru_start, &ru_end) : 0;
  printf("WSLOAD_RESULT {\"mode\":\"%s\",\"path\":", mode_name());
  json_string(opt_path);
  printf(",\"connections\":%u,\"size\":%zu,\"depth\":%u", opt_conns, opt_size, opt_depth);
  printf(",\"duration_s\":%.6f,\"messages\":%llu,\"bytes\":%llu,\"msgs_per_s\":%.1f", secs,
         (unsigned long long)window_msgs, (unsigned long long)window_bytes,
         secs > 0 ? (double)window_msgs / secs : 0.0);
  printf(",\"published\":%llu,\"total_messages\":%llu", (unsigned long long)window_published,
         (unsigned long long)total_msgs);
  printf(",\"t_start\":%.6f,\"t_end\":%.6f,\"connect_s\":%.3f", t_start, t_end,
         t_connected > 0 ? t_connected - t_begin : -1.0);
  printf(",\"latency_us\":{\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"max\":%.1f,"
         "\"samples\":%llu}",
         hist_n ? lat_sum / (double)hist_n * 1e6 : 0.0, percentile_us(0.5), percentile_us(0.9),
         percentile_us(0.99), lat_max * 1e6, (unsigned long long)hist_n);
  printf(",\"client_cpu_s\":%.4f,\"client_cpu_util\":%.4f", client_cpu,
         secs > 0 ? client_cpu / secs : 0.0);
  if (go_fd >= 0) { /* a child of --procs: the histogram, for the parent to merge */
    printf(",\"hist\":[");
    const char *comma = "";
    for (unsigned i = 0; i < HBUCKETS; i++)
      if (hist[i]) {
        printf("%s%u,%llu", comma, i, (unsigned long long)hist[i]);
        comma = ",";
      }
    printf("]");
  }
  printf(",\"procs\":%u,\"phase\":\"%s\",\"error\":", opt_procs, phase_names[phase]);
  if (error)
    json_string(error);
  else
    printf("null");
  printf("}\n");
  fflush(stdout);
}

static void fail(struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void fail(struct conn *c, const char *fmt, ...) {
  char msg[600], full[700];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c)
    snprintf(full, sizeof full, "connection %u (%s): %s", c->id,
             c->role == R_PUB   ? "publisher"
             : c->role == R_SUB ? "subscriber"
                                : "echo",
             msg);
  else
    snprintf(full, sizeof full, "%s", msg);
  if (t_end == 0 && t_start > 0) {
    t_end = mono();
    getrusage(RUSAGE_SELF, &ru_end);
  }
  fprintf(stderr, "wsload: error in phase %s: %s\n", phase_names[phase], full);
  print_result(full);
  exit(2);
}

/* ---- sending ---- */
static void out_reserve(struct conn *c, size_t more) {
  if (c->out_off && c->out_off == c->out_len)
    c->out_off = c->out_len = 0;
  if (c->out_len + more <= c->out_cap)
    return;
  if (c->out_off) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
    if (c->out_len + more <= c->out_cap)
      return;
  }
  size_t cap = c->out_cap ? c->out_cap : 4096;
  while (cap < c->out_len + more)
    cap *= 2;
  c->out = realloc(c->out, cap);
  if (!c->out)
    fail(c, "out of memory");
  c->out_cap = cap;
}

/* Append a masked frame header for a payload of len bytes. */
static uint8_t *frame_header(struct conn *c, uint8_t first, size_t len) {
  out_reserve(c, 14 + len);
  uint8_t *p = c->out + c->out_len;
  *p++ = first;
  if (len < 126) {
    *p++ = (uint8_t)(0x80 | len);
  } else if (len < 65536) {
    *p++ = 0x80 | 126;
    *p++ = (uint8_t)(len >> 8);
    *p++ = (uint8_t)len;
  } else {
    *p++ = 0x80 | 127;
    for (int i = 7; i >= 0; i--)
      *p++ = (uint8_t)((uint64_t)len >> (8 * i));
  }
  memcpy(p, MASK, 4);
  return p + 4;
}

static void id_block(uint8_t *b, uint32_t id, uint64_t seq) {
  memcpy(b, "WSLD", 4);
  for (int i = 0; i < 4; i++)
    b[4 + i] = (uint8_t)(id >> (8 * i));
  for (int i = 0; i < 8; i++)
    b[8 + i] = (uint8_t)(seq >> (8 * i));
}

/* Queue one binary message: the id block (masked here), then the pre-masked fill. */
static void send_message(struct conn *c, uint32_t id, uint64_t seq) {
  uint8_t *p = frame_header(c, 0x82, opt_size), idb[ID_BYTES];
  id_block(idb, id, seq);
  size_t n = opt_size < ID_BYTES ? opt_size : ID_BYTES;
  for (size_t i = 0; i < n; i++)
    p[i] = idb[i] ^ MASK[i & 3];
  if (opt_size > ID_BYTES)
    memcpy(p + ID_BYTES, fill_masked + ID_BYTES, opt_size - ID_BYTES);
  c->out_len = (size_t)(p + opt_size - c->out);
}

static void send_control(struct conn *c, uint8_t op, const uint8_t *data, size_t len) {
  uint8_t *p = frame_header(c, (uint8_t)(0x80 | op), len);
  for (size_t i = 0; i < len; i++)
    p[i] = data[i] ^ MASK[i & 3];
  c->out_len = (size_t)(p + len - c->out);
}

static void set_events(struct conn *c, int want_out) {
  if (c->want_out == want_out)
    return;
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
    fail(c, "epoll_ctl: %s", strerror(errno));
  c->want_out = want_out;
}

static void flush(struct conn *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c->out_off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_events(c, 1);
      return;
    }
    fail(c, "send: %s", n < 0 ? strerror(errno) : "wrote nothing");
  }
  c->out_off = c->out_len = 0;
  set_events(c, 0);
}

/* ---- connecting and the opening handshake ---- */
static struct sockaddr_storage addr;
static socklen_t addr_len;

static void resolve(void) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
  char port[16];
  snprintf(port, sizeof port, "%d", opt_port);
  int rc = getaddrinfo(opt_host, port, &hints, &res);
  if (rc) {
    fprintf(stderr, "wsload: %s: %s\n", opt_host, gai_strerror(rc));
    exit(1);
  }
  memcpy(&addr, res->ai_addr, res->ai_addrlen);
  addr_len = res->ai_addrlen;
  freeaddrinfo(res);
}

static void start_connect(struct conn *c) {
  c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    fail(c, "socket: %s (raise ulimit -n?)", strerror(errno));
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&addr, addr_len) < 0 && errno != EINPROGRESS)
    fail(c, "connect: %s", strerror(errno));
  c->state = C_CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
  c->want_out = 1;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
    fail(c, "epoll_ctl: %s", strerror(errno));
  pending_hs++;
}

static void connect_more(void) {
  while (next_to_connect < nconns && pending_hs < MAX_PENDING_HANDSHAKES)
    start_connect(&conns[next_to_connect++]);
}

static void connected(struct conn *c) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err)
    fail(c, "connect: %s", strerror(err));
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n",
                   opt_path, opt_host, opt_port, KEY);
  out_reserve(c, (size_t)n);
  memcpy(c->out + c->out_len, req, (size_t)n);
  c->out_len += (size_t)n;
  c->state = C_HANDSHAKE;
  c->hs = malloc(HS_MAX);
  if (!c->hs)
    fail(c, "out of memory");
  c->want_out = -1; /* force the epoll_ctl */
  flush(c);
}

/* Value of header `name` in the handshake answer (NUL-terminated, lines CRLF), or NULL. */
static const char *header_value(char *head, const char *name, char *buf, size_t buflen) {
  size_t nlen = strlen(name);
  for (char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
    char *l = line + 2;
    if (strncasecmp(l, name, nlen) == 0 && l[nlen] == ':') {
      char *v = l + nlen + 1, *e = strstr(v, "\r\n");
      while (*v == ' ' || *v == '\t')
        v++;
      size_t len = e ? (size_t)(e - v) : strlen(v);
      while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
      if (len >= buflen)
        len = buflen - 1;
      memcpy(buf, v, len);
      buf[len] = 0;
      return buf;
    }
  }
  return NULL;
}

static void frames(struct conn *c, const uint8_t *p, size_t len);

static void on_open(struct conn *c);

/* Feed bytes of the handshake answer; once complete, check it and go on with frames. */
static void handshake_bytes(struct conn *c, const uint8_t *p, size_t len) {
  size_t take = len < HS_MAX - 1 - c->hs_len ? len : HS_MAX - 1 - c->hs_len;
  memcpy(c->hs + c->hs_len, p, take);
  size_t old = c->hs_len;
  c->hs_len += take;
  c->hs[c->hs_len] = 0;
  char *end = strstr(c->hs, "\r\n\r\n");
  if (!end) {
    if (c->hs_len >= HS_MAX - 1)
      fail(c, "handshake answer longer than %d bytes", HS_MAX);
    return;
  }
  size_t head_len = (size_t)(end - c->hs) + 4;
  end[2] = 0; /* keep the last header's CRLF for header_value */
  char first[128], v[256];
  char *eol = strstr(c->hs, "\r\n");
  size_t fl = (size_t)(eol - c->hs) < sizeof first - 1 ? (size_t)(eol - c->hs) : sizeof first - 1;
  memcpy(first, c->hs, fl);
  first[fl] = 0;
  if (strncmp(first, "HTTP/1.1 101", 12) != 0)
    fail(c, "handshake for %s answered %s", opt_path, first);
  if (!header_value(c->hs, "upgrade", v, sizeof v) || strcasecmp(v, "websocket") != 0)
    fail(c, "101 without Upgrade: websocket");
  if (!header_value(c->hs, "connection", v, sizeof v) || !strcasestr(v, "upgrade"))
    fail(c, "101 without Connection: upgrade");
  if (!header_value(c->hs, "sec-websocket-accept", v, sizeof v) || strcmp(v, ACCEPT) != 0)
    fail(c, "Sec-WebSocket-Accept is %s, not %s",
         header_value(c->hs, "sec-websocket-accept", v, sizeof v) ? v : "missing", ACCEPT);
  if (header_value(c->hs, "sec-websocket-extensions", v, sizeof v))
    fail(c, "the server chose extensions none was offered: %s", v);
  free(c->hs);
  c->hs = NULL;
  c->state = C_OPEN;
  c->hdr_need = 2;
  pending_hs--;
  open_count++;
  on_open(c);
  size_t rest = take - (head_len - old);
  if (rest)
    frames(c, p + (head_len - old), rest);
  if (len > take)
    frames(c, p + take, len - take);
}

/* ---- receiving ---- */
static void check_id(struct conn *c) {
  size_t n = opt_size < ID_BYTES ? opt_size : ID_BYTES;
  uint8_t want[ID_BYTES];
  if (c->role != R_ECHO && !c->synced) {
    /* A broadcast receiver's first message: any sequence number, then every next one. */
    if (memcmp(c->idb, "WSLD", 4) != 0 || c->idb[4] != 0xFF || c->idb[5] != 0xFF ||
        c->idb[6] != 0xFF || c->idb[7] != 0xFF)
      fail(c, "first message is not one the publisher sent");
    uint64_t seq = 0;
    for (int i = 7; i >= 0; i--)
      seq = (seq << 8) | c->idb[8 + i];
    c->recv_seq = seq;
    c->synced = 1;
    if (c->role == R_SUB)
      synced_count++;
  }
  id_block(want, c->role == R_ECHO ? c->id : PUB_ID, c->recv_seq);
  if (memcmp(c->idb, want, n) != 0) {
    uint64_t got = 0;
    for (int i = 7; i >= 0; i--)
      got = (got << 8) | c->idb[8 + i];
    fail(c,
         "message %llu: got id block of message %llu (conn %02x%02x%02x%02x): lost, "
         "reordered or foreign",
         (unsigned long long)c->recv_seq, (unsigned long long)got, c->idb[7], c->idb[6], c->idb[5],
         c->idb[4]);
  }
}

static void publish(void);

static void on_message(struct conn *c) {
  int counted = phase == P_RUN;
  if (c->role == R_ECHO) {
    if (c->recv_seq >= c->sent_seq)
      fail(c, "an echo of a message never sent (%llu)", (unsigned long long)c->recv_seq);
    if (counted) {
      record_latency(now_s - c->sent_at[c->recv_seq % opt_depth]);
      window_msgs++;
      window_bytes += opt_size;
    }
    c->recv_seq++;
    total_msgs++;
    if (phase == P_WARMUP || phase == P_RUN) {
      c->sent_at[c->sent_seq % opt_depth] = now_s;
      send_message(c, c->id, c->sent_seq++);
    }
    return;
  }
  uint64_t seq = c->recv_seq++;
  if (c->role == R_PUB || seq < first_seq || first_seq == 0)
    return; /* the publisher's own copy, or a message before counting began */
  if (seq >= pub_seq)
    fail(c, "message %llu was never published", (unsigned long long)seq);
  unsigned slot = (unsigned)(seq % opt_depth);
  if (counted) {
    record_latency(now_s - pub_at[slot]);
    window_msgs++;
    window_bytes += opt_size;
  }
  total_msgs++;
  if (++delivered[slot] > nsubs)
    fail(c, "message %llu delivered more than %u times", (unsigned long long)seq, nsubs);
  while (low_seq < pub_seq && delivered[low_seq % opt_depth] == nsubs) {
    delivered[low_seq % opt_depth] = 0;
    low_seq++;
  }
  if (phase == P_WARMUP || phase == P_RUN)
    publish();
}

/* The publisher sends while fewer than depth messages are not yet delivered to every subscriber. */
static void publish(void) {
  while (pub_seq - low_seq < opt_depth) {
    pub_at[pub_seq % opt_depth] = now_s;
    if (phase == P_RUN)
      window_published++;
    send_message(pub, PUB_ID, pub_seq++);
  }
  flush(pub);
}

static void on_control(struct conn *c) {
  if (c->op == 0x9) { /* ping: answer, unless our close went out (nothing may follow it) */
    if (c->state != C_CLOSING)
      send_control(c, 0xA, c->ctrl, c->ctrl_len);
    return;
  }
  if (c->op == 0xA)
    return;
  /* close */
  unsigned code = c->ctrl_len >= 2 ? (unsigned)(c->ctrl[0] << 8 | c->ctrl[1]) : 1005;
  if (c->ctrl_len == 1)
    fail(c, "close frame with a 1-byte payload");
  if (c->state != C_CLOSING)
    fail(c, "the server closed the connection (code %u, reason \"%.*s\")", code,
         (int)(c->ctrl_len > 2 ? c->ctrl_len - 2 : 0), (const char *)c->ctrl + 2);
  if (code != 1000)
    fail(c, "our close (1000) answered with code %u", code);
  if (c->role == R_ECHO && c->recv_seq != c->sent_seq)
    fail(c, "%llu message(s) sent, %llu echoed before the close", (unsigned long long)c->sent_seq,
         (unsigned long long)c->recv_seq);
  c->state = C_CLOSED;
  closed_count++;
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
}

/* Parse the server's frames in place; payload pieces are checked as they come. */
static void frames(struct conn *c, const uint8_t *p, size_t len) {
  while (len && c->state != C_CLOSED) {
    if (c->hdr_have < c->hdr_need) {
      size_t n = c->hdr_need - c->hdr_have;
      if (n > len)
        n = len;
      memcpy(c->hdr + c->hdr_have, p, n);
      c->hdr_have += n;
      p += n;
      len -= n;
      if (c->hdr_have < c->hdr_need)
        return;
      if (c->hdr_need == 2) {
        uint8_t l7 = c->hdr[1] & 0x7f;
        if (c->hdr[1] & 0x80)
          fail(c, "the server masked a frame");
        c->hdr_need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
        if (c->hdr_have < c->hdr_need)
          continue;
      }
      /* A whole header. */
      uint8_t b0 = c->hdr[0], l7 = c->hdr[1] & 0x7f;
      uint64_t plen = l7;
      if (l7 == 126)
        plen = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
      else if (l7 == 127)
        for (int i = 0; i < 8; i++)
          plen = (i ? plen << 8 : 0) | c->hdr[2 + i];
      c->fin = b0 >> 7;
      c->op = b0 & 0x0f;
      if (b0 & 0x70)
        fail(c, "reserved bits set (0x%02x) with no extension negotiated", b0);
      if (c->op >= 0x8) {
        if (c->op > 0xA)
          fail(c, "reserved control opcode 0x%x", c->op);
        if (!c->fin || plen > 125)
          fail(c, "control frame 0x%x fragmented or longer than 125 bytes", c->op);
        c->ctrl_len = 0;
      } else {
        if (c->op == 0x0 && !c->in_msg)
          fail(c, "continuation frame outside a message");
        if (c->op != 0x0 && c->in_msg)
          fail(c, "new message (opcode 0x%x) inside a fragmented one", c->op);
        if (c->op != 0x0 && c->op != 0x2)
          fail(c, "opcode 0x%x: expected binary messages only", c->op);
        if (c->op == 0x2) {
          c->in_msg = 1;
          c->msg_off = 0;
        }
        if (c->msg_off + plen > opt_size)
          fail(c, "message longer than the %zu bytes sent", opt_size);
      }
      c->pay_left = plen;
    }
    size_t n = c->pay_left < len ? (size_t)c->pay_left : len;
    if (c->op >= 0x8) {
      memcpy(c->ctrl + c->ctrl_len, p, n);
      c->ctrl_len += n;
    } else {
      size_t done = 0;
      while (c->msg_off + done < ID_BYTES && done < n) {
        c->idb[c->msg_off + done] = p[done];
        done++;
      }
      if (done < n && memcmp(p + done, fill + c->msg_off + done, n - done) != 0)
        fail(c, "message %llu: payload differs from what was sent (bytes %llu..%llu)",
             (unsigned long long)c->recv_seq, (unsigned long long)(c->msg_off + done),
             (unsigned long long)(c->msg_off + n));
      c->msg_off += n;
    }
    p += n;
    len -= n;
    c->pay_left -= n;
    if (c->pay_left)
      return;
    /* The frame is complete. */
    c->hdr_have = 0;
    c->hdr_need = 2;
    if (c->op >= 0x8) {
      on_control(c);
    } else if (c->fin) {
      if (c->msg_off != opt_size)
        fail(c, "message of %llu bytes, %zu sent", (unsigned long long)c->msg_off, opt_size);
      c->in_msg = 0;
      check_id(c);
      on_message(c);
    }
  }
}

static uint8_t rbuf[RBUF_SIZE];

static void readable(struct conn *c) {
  ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
      return;
    fail(c, "recv: %s", strerror(errno));
  }
  if (n == 0)
    fail(c, "the server closed the TCP connection without a close frame");
  if (c->state == C_HANDSHAKE)
    handshake_bytes(c, rbuf, (size_t)n);
  else
    frames(c, rbuf, (size_t)n);
  if (c->state != C_CLOSED && c->out_len > c->out_off)
    flush(c);
}

/* ---- phases ---- */
static void on_open(struct conn *c) {
  (void)c;
  connect_more();
}

static void begin_load(void);

static void all_open(void) {
  t_connected = now_s;
  if (opt_mode == BROADCAST) {
    phase = P_SYNC;
    phase_deadline = now_s + opt_timeout;
  } else {
    begin_load();
  }
}

static double next_sync;

/* Broadcast: one message every 20 ms until every subscriber (and the publisher) got one, so
 * that every connection is known to be in the server's set before anything is counted. */
static void sync_tick(void) {
  if (synced_count == nsubs && pub->synced) {
    begin_load();
    return;
  }
  if (now_s >= next_sync) {
    pub_at[pub_seq % opt_depth] = now_s;
    send_message(pub, PUB_ID, pub_seq++);
    flush(pub);
    next_sync = now_s + 0.02;
  }
}

static void begin_load(void) {
  phase = P_WARMUP;
  phase_deadline = now_s + opt_warmup;
  if (opt_mode == ECHO) {
    for (unsigned i = 0; i < nconns; i++) {
      struct conn *c = &conns[i];
      for (unsigned d = 0; d < opt_depth; d++) {
        c->sent_at[c->sent_seq % opt_depth] = now_s;
        send_message(c, c->id, c->sent_seq++);
      }
      flush(c);
    }
  } else {
    first_seq = low_seq = pub_seq;
    publish();
  }
}

static void start_counting(void) {
  if (go_fd >= 0) { /* wait until every process of --procs is ready */
    char b;
    printf("WSLOAD_READY\n");
    fflush(stdout);
    if (read(go_fd, &b, 1) != 1)
      fail(NULL, "the parent process went away");
    now_s = mono();
  }
  phase = P_RUN;
  getrusage(RUSAGE_SELF, &ru_start);
  t_start = mono();
  printf("WSLOAD_START %.6f\n", t_start);
  fflush(stdout);
  phase_deadline = t_start + opt_duration;
}

static void stop_counting(void) {
  t_end = mono();
  getrusage(RUSAGE_SELF, &ru_end);
  printf("WSLOAD_END %.6f\n", t_end);
  fflush(stdout);
  phase = P_DRAIN;
  phase_deadline = t_end + opt_timeout;
}

static int drained(void) {
  if (opt_mode == BROADCAST)
    return low_seq == pub_seq;
  for (unsigned i = 0; i < nconns; i++)
    if (conns[i].recv_seq != conns[i].sent_seq)
      return 0;
  return 1;
}

static void begin_close(void) {
  phase = P_CLOSE;
  phase_deadline = now_s + opt_timeout;
  static const uint8_t normal[2] = {0x03, 0xE8};
  for (unsigned i = 0; i < nconns; i++) {
    struct conn *c = &conns[i];
    send_control(c, 0x8, normal, 2);
    c->state = C_CLOSING;
    flush(c);
  }
}

static void usage(void) {
  fprintf(stderr, "usage: wsload --port P [--host H] [--path PATH] [--mode echo|broadcast]\n"
                  "              [--connections N] [--size BYTES] [--depth D] [--duration S]\n"
                  "              [--warmup S] [--timeout S] [--procs P]\n");
  exit(1);
}

static void parse(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help"))
      usage();
    if (!v)
      usage();
    i++;
    char *end = NULL;
    if (!strcmp(a, "--host"))
      opt_host = v;
    else if (!strcmp(a, "--port"))
      opt_port = (int)strtol(v, &end, 10);
    else if (!strcmp(a, "--path"))
      opt_path = v;
    else if (!strcmp(a, "--mode")) {
      if (!strcmp(v, "echo"))
        opt_mode = ECHO;
      else if (!strcmp(v, "broadcast"))
        opt_mode = BROADCAST;
      else
        usage();
    } else if (!strcmp(a, "--connections"))
      opt_conns = (unsigned)strtoul(v, &end, 10);
    else if (!strcmp(a, "--size"))
      opt_size = (size_t)strtoull(v, &end, 10);
    else if (!strcmp(a, "--depth"))
      opt_depth = (unsigned)strtoul(v, &end, 10);
    else if (!strcmp(a, "--duration"))
      opt_duration = strtod(v, &end);
    else if (!strcmp(a, "--warmup"))
      opt_warmup = strtod(v, &end);
    else if (!strcmp(a, "--procs"))
      opt_procs = (unsigned)strtoul(v, &end, 10);
    else if (!strcmp(a, "--timeout"))
      opt_timeout = strtod(v, &end);
    else
      usage();
    if (end && *end) {
      fprintf(stderr, "wsload: %s: not a number: %s\n", a, v);
      exit(1);
    }
  }
  if (opt_port <= 0 || opt_port > 65535 || opt_conns == 0 || opt_depth == 0 || opt_size == 0 ||
      opt_duration <= 0 || opt_warmup < 0 || opt_timeout <= 0 || opt_size > (64u << 20) ||
      opt_procs == 0 || opt_procs > opt_conns) {
    fprintf(stderr, "wsload: need a port, and connections, depth, size (<= 64 MiB), "
                    "duration > 0\n");
    exit(1);
  }
  if (opt_mode == BROADCAST && opt_procs > 1) {
    fprintf(stderr, "wsload: --procs needs --mode echo\n");
    exit(1);
  }
  if (opt_mode == BROADCAST && opt_size < ID_BYTES) {
    fprintf(stderr, "wsload: broadcast needs --size >= %d\n", ID_BYTES);
    exit(1);
  }
  if (!opt_path)
    opt_path = opt_mode == ECHO ? "/ws/echo" : "/ws/broadcast";
}

static void raise_nofile(unsigned want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want + 64) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want + 64 ? want + 64 : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* ---- --procs: a parent that forks the load and sums it ---- */
struct child {
  pid_t pid;
  int fd;
  char line[1 << 16];
  size_t len;
  int ready, ended, done;
};

static double json_number(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(json, pat);
  return p ? strtod(p + strlen(pat), NULL) : 0;
}

/* One child's WSLOAD_RESULT: its error (NULL if none), its sums and histogram merged in. */
static const char *merge_result(char *json) {
  static char error[700];
  const char *e = strstr(json, "\"error\":\"");
  if (e) {
    e += 9;
    size_t n = 0;
    while (e[n] && e[n] != '"' && n < sizeof error - 1)
      n++;
    memcpy(error, e, n);
    error[n] = 0;
    return error;
  }
  window_msgs += (uint64_t)json_number(json, "messages");
  window_bytes += (uint64_t)json_number(json, "bytes");
  total_msgs += (uint64_t)json_number(json, "total_messages");
  merged_cpu += json_number(json, "client_cpu_s");
  double secs = json_number(json, "duration_s");
  if (secs > merged_secs)
    merged_secs = secs;
  double max_us = json_number(strstr(json, "\"latency_us\"") ?: json, "max");
  if (max_us / 1e6 > lat_max)
    lat_max = max_us / 1e6;
  const char *h = strstr(json, "\"hist\":[");
  for (char *p = h ? (char *)h + 8 : NULL; p && *p && *p != ']';) {
    unsigned long idx = strtoul(p, &p, 10);
    if (*p == ',')
      p++;
    unsigned long long count = strtoull(p, &p, 10);
    if (*p == ',')
      p++;
    if (idx < HBUCKETS) {
      hist[idx] += count;
      hist_n += count;
      lat_sum += (double)count * bucket_us((unsigned)idx) / 1e6;
    }
  }
  return NULL;
}

static int run_parent(void) {
  struct child *kids = calloc(opt_procs, sizeof *kids);
  int go[2];
  if (!kids || pipe2(go, O_CLOEXEC) < 0)
    fail(NULL, "pipe: %s", strerror(errno));
  unsigned total = opt_conns;
  fflush(stdout);
  for (unsigned k = 0; k < opt_procs; k++) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) < 0)
      fail(NULL, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
      fail(NULL, "fork: %s", strerror(errno));
    if (pid == 0) {
      dup2(out[1], STDOUT_FILENO);
      go_fd = dup(go[0]);
      opt_conns = total / opt_procs + (k < total % opt_procs);
      return -1; /* the child goes on as a load client */
    }
    close(out[1]);
    kids[k].pid = pid;
    kids[k].fd = out[0];
  }
  close(go[0]);
  t_begin = mono();
  unsigned ready = 0, ended = 0, done = 0;
  const char *error = NULL;
  while (done < opt_procs && !error) {
    fd_set fds;
    FD_ZERO(&fds);
    int maxfd = -1;
    for (unsigned k = 0; k < opt_procs; k++)
      if (!kids[k].done) {
        FD_SET(kids[k].fd, &fds);
        if (kids[k].fd > maxfd)
          maxfd = kids[k].fd;
      }
    if (select(maxfd + 1, &fds, NULL, NULL, NULL) < 0 && errno != EINTR)
      fail(NULL, "select: %s", strerror(errno));
    for (unsigned k = 0; k < opt_procs && !error; k++) {
      struct child *c = &kids[k];
      if (c->done || !FD_ISSET(c->fd, &fds))
        continue;
      ssize_t n = read(c->fd, c->line + c->len, sizeof c->line - 1 - c->len);
      if (n <= 0) {
        c->done = 1;
        done++;
        if (!error && !c->ended)
          error = "a load process ended without a result";
        continue;
      }
      c->len += (size_t)n;
      c->line[c->len] = 0;
      char *nl;
      while ((nl = strchr(c->line, '\n'))) {
        *nl = 0;
        if (!strcmp(c->line, "WSLOAD_READY") && ++ready == opt_procs) {
          char bytes[256] = {0};
          for (unsigned left = opt_procs; left;) {
            unsigned n1 = left < sizeof bytes ? left : (unsigned)sizeof bytes;
            if (write(go[1], bytes, n1) != (ssize_t)n1)
              fail(NULL, "write: %s", strerror(errno));
            left -= n1;
          }
          t_connected = mono();
          phase = P_RUN;
          t_start = mono();
          printf("WSLOAD_START %.6f\n", t_start);
          fflush(stdout);
        } else if (!strncmp(c->line, "WSLOAD_END ", 11) && ++ended == opt_procs) {
          t_end = mono();
          phase = P_DRAIN;
          printf("WSLOAD_END %.6f\n", t_end);
          fflush(stdout);
        } else if (!strncmp(c->line, "WSLOAD_RESULT ", 14)) {
          c->ended = 1;
          if (!error)
            error = merge_result(c->line + 14);
        }
        size_t used = (size_t)(nl + 1 - c->line);
        memmove(c->line, nl + 1, c->len - used + 1);
        c->len -= used;
      }
    }
  }
  int failed = error != NULL;
  for (unsigned k = 0; k < opt_procs; k++) {
    if (failed)
      kill(kids[k].pid, SIGTERM);
    int st;
    waitpid(kids[k].pid, &st, 0);
    if (!failed && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
      failed = 1;
      error = "a load process failed";
    }
  }
  opt_conns = total;
  merged = 1;
  phase = failed ? phase : P_DONE;
  if (failed) {
    fprintf(stderr, "wsload: error: %s\n", error);
    print_result(error);
    return 2;
  }
  print_result(NULL);
  return 0;
}

int main(int argc, char **argv) {
  parse(argc, argv);
  if (opt_procs > 1) {
    int rc = run_parent();
    if (rc >= 0)
      return rc;
  }
  signal(SIGPIPE, SIG_IGN);
  resolve();
  nsubs = opt_mode == BROADCAST ? opt_conns : 0;
  nconns = opt_conns + (opt_mode == BROADCAST ? 1 : 0);
  raise_nofile(nconns);
  conns = calloc(nconns, sizeof *conns);
  fill = malloc(opt_size + ID_BYTES);
  fill_masked = malloc(opt_size + ID_BYTES);
  if (!conns || !fill || !fill_masked)
    fail(NULL, "out of memory");
  for (size_t i = 0; i < opt_size + ID_BYTES; i++) {
    fill[i] = (uint8_t)(i * 7 + (i >> 8) * 13 + 0x5A);
    fill_masked[i] = fill[i] ^ MASK[i & 3];
  }
  for (unsigned i = 0; i < nconns; i++) {
    conns[i].id = i;
    conns[i].fd = -1;
    conns[i].role = opt_mode == ECHO ? R_ECHO : R_SUB;
    if (opt_mode == ECHO && !(conns[i].sent_at = calloc(opt_depth, sizeof(double))))
      fail(NULL, "out of memory");
  }
  if (opt_mode == BROADCAST) {
    pub = &conns[nconns - 1];
    pub->role = R_PUB;
    delivered = calloc(opt_depth, sizeof *delivered);
    pub_at = calloc(opt_depth, sizeof *pub_at);
    if (!delivered || !pub_at)
      fail(NULL, "out of memory");
  }
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0)
    fail(NULL, "epoll_create1: %s", strerror(errno));
  t_begin = now_s = mono();
  phase_deadline = now_s + opt_timeout;
  connect_more();

  struct epoll_event evs[512];
  for (;;) {
    int timeout_ms = (int)((phase_deadline - now_s) * 1000) + 1;
    if (phase == P_SYNC && timeout_ms > 20)
      timeout_ms = 20;
    if (timeout_ms < 0)
      timeout_ms = 0;
    int n = epoll_wait(ep, evs, 512, timeout_ms);
    if (n < 0 && errno != EINTR)
      fail(NULL, "epoll_wait: %s", strerror(errno));
    now_s = mono();
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if (c->state == C_CLOSED)
        continue;
      if (c->state == C_CONNECTING) {
        connected(c);
        continue;
      }
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        readable(c);
      if (c->state != C_CLOSED && (evs[i].events & EPOLLOUT))
        flush(c);
    }
    switch (phase) {
    case P_CONNECT:
      if (open_count == nconns)
        all_open();
      else if (now_s >= phase_deadline)
        fail(NULL, "%u of %u connections open after %.0f s", open_count, nconns, opt_timeout);
      break;
    case P_SYNC:
      if (now_s >= phase_deadline)
        fail(NULL,
             "after %.0f s, %u of %u subscribers got a broadcast message, the publisher %s "
             "(the server must send each message to every connection, the sender included)",
             opt_timeout, synced_count, nsubs, pub->synced ? "did too" : "did not");
      sync_tick();
      break;
    case P_WARMUP:
      if (now_s >= phase_deadline)
        start_counting();
      break;
    case P_RUN:
      if (now_s >= phase_deadline)
        stop_counting();
      break;
    case P_DRAIN:
      if (drained())
        begin_close();
      else if (now_s >= phase_deadline)
        fail(NULL, "messages still undelivered %.0f s after the end", opt_timeout);
      break;
    case P_CLOSE:
      if (closed_count == nconns) {
        phase = P_DONE;
        print_result(NULL);
        return 0;
      }
      if (now_s >= phase_deadline)
        fail(NULL, "%u of %u close frames answered after %.0f s", closed_count, nconns,
             opt_timeout);
      break;
    default: break;
    }
  }
}
