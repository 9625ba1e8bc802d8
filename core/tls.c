/*
 * tls.c: HTTPS on the rings. One SSL object per connection of a TLS listener,
 * over a BIO of our own that never touches the socket: its reads take the
 * ciphertext the ring received, its writes append to the connection's
 * ciphertext buffer, which the ring sends. OpenSSL therefore never blocks a
 * loop, and the ring does every socket read and write.
 *
 * A connection's TLS life:
 * - accepted: it takes one of the ring's handshake slots (ssl_max_handshakes)
 *   and its receive is armed; with no slot free it waits unread, its bytes in
 *   the kernel, its handshake timer running (tls_handshakes_waiting);
 * - handshake: ciphertext is kept (hs_in) and the handshake runs once a turn,
 *   after the requests of established connections were dispatched and their
 *   answers flushed (pmu__tls_run_handshakes), so that a flood of handshakes
 *   cannot starve them; the first bytes tell plain HTTP (answered 400) from
 *   TLS;
 * - open: received ciphertext is decrypted at once and the plaintext goes to
 *   pmu__conn_on_recv, where the HTTP, WebSocket and raw paths take it as on
 *   plain TCP; what pmu__conn_flush gathers is encrypted (at most TLS_FLUSH_MAX
 *   plaintext bytes a send) and the plaintext is accounted (consume_sent) when
 *   its ciphertext is all on the wire;
 * - closing: a graceful close sends close_notify first (pmu__tls_close_notify).
 *
 * ssl_cert_per_conn: the SSL_CTX has no certificate; the connection's handle
 * is opened at accept (OPEN before the handshake), and the ClientHello
 * callback (pmu__tls_client_hello) suspends the handshake
 * (SSL_ERROR_WANT_CLIENT_HELLO_CB: the slot and the handshake timer stay)
 * until the handler's pmu_conn_tls_use or _decline reaches the loop
 * (pmu__tls_answer), which queues the handshake's next step.
 *
 * Output discipline: `acc` gathers what OpenSSL writes (handshake flights,
 * records, alerts, tickets); a send takes it whole as `out`, which nobody
 * touches until the send is done (SEND_ZC may still read it), while OpenSSL
 * may go on appending to a new `acc`. One send in flight per connection, as
 * for plain TCP: the connection's send_inflight covers both.
 *
 * Kernel TLS: when the context asks for it (SSL_OP_ENABLE_KTLS, set by
 * core/tls_ctx.c only when pmu__ktls_probe says the kernel and OpenSSL can),
 * OpenSSL hands the negotiated transmit keys to our BIO (BIO_CTRL_SET_KTLS),
 * which installs them on the socket (TCP_ULP "tls", then SOL_TLS TLS_TX): from
 * then on the connection sends plaintext like plain TCP, file splices
 * included; records OpenSSL still writes itself (tickets, alerts) go with
 * their record type in a control message. Receive stays in user space (a
 * kTLS receive reports non-data records through control messages that a
 * multishot ring receive cannot carry).
 */
#include "internal.h"
#include "tls.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#if !defined(OPENSSL_NO_KTLS) && defined(__linux__)
#include <linux/tls.h>
#define PMU_HAVE_KTLS 1
#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif
/* OpenSSL's internal BIO controls for kTLS (include/internal/bio.h), stable
 * since 3.0: install keys (larg 1: transmit), and the record type of the next
 * write. */
#define CTRL_SET_KTLS 72
#define CTRL_SET_KTLS_TX_SEND_CTRL_MSG 74
#define CTRL_CLEAR_KTLS_TX_CTRL_MSG 75
#endif

/* Most plaintext encrypted for one send: a connection with a large answer
 * holds at most this much ciphertext (plus framing) at a time. 32 KiB (two
 * records) measured cheapest for 1 MiB answers on 16 connections over
 * loopback (hello_server, server CPU per answer, medians of 8 rotated rounds:
 * 16 KiB 864 us, 32 KiB 757 us, 64 KiB 1022 us), client CPU included too. */
#define TLS_FLUSH_MAX 32768
/* One record's plaintext at most (RFC 8446 5.1). */
#define TLS_RECORD 16384
/* Ciphertext kept for a handshake not processed yet: a ClientHello of a few
 * records at most (a client certificate chain with it in TLS 1.2). */
#define TLS_HS_IN_MAX (256 * 1024)
/* Ciphertext buffers larger than this leave the connection once sent: an
 * idle keep-alive connection keeps at most two of this size (with
 * SSL_MODE_RELEASE_BUFFERS, OpenSSL keeps none of its own). */
#define TLS_BUF_KEEP 4096
/* Framing OpenSSL may add to one record, at most in practice: header 5,
 * TLS 1.3 content type 1, AEAD tag 16, TLS 1.2 explicit nonce 8; a CBC suite's
 * IV, MAC and padding stay under this too. Only the size reserved up front:
 * a record larger still grows the buffer in bio_write. */
#define TLS_RECORD_OVERHEAD 128
/* The ciphertext buffer of a full send: TLS_FLUSH_MAX of plaintext in records
 * (the staged pieces may add two), page-rounded (36 KiB). */
#define TLS_SEND_BUF \
  ((TLS_FLUSH_MAX + (TLS_FLUSH_MAX / TLS_RECORD + 2) * TLS_RECORD_OVERHEAD + 4095) & ~(size_t)4095)
/* Spare buffers of TLS_SEND_BUF bytes a loop keeps: a send done gives its
 * buffer back there and the next send of any connection takes the last one
 * given (still in the cache from the kernel's copy), instead of a free and a
 * malloc per send, which now and then let malloc give the pages back to the
 * kernel and the next sends fault them in again (about 20 page faults per 1 MiB
 * answer with 16 connections). At most 32 x 36 KiB a loop, kept until it
 * exits; connections keep none of them when idle. */
#define TLS_SPARE_MAX 32

enum tls_state {
  TLS_WAITING,   /* accepted, waiting for a handshake slot: nothing read */
  TLS_HANDSHAKE, /* holds a slot; handshake in progress */
  TLS_OPEN,      /* handshake done */
  TLS_CLOSED,    /* no more TLS: failed (an alert may be going out) or close_notify sent */
};

/* What to do once the ciphertext queued is out. */
enum tls_after { AFTER_NOTHING, AFTER_CLOSE, AFTER_LINGER };

struct pmu__tls_conn {
  SSL *ssl;
  pmu__conn_t *conn;
  uint8_t state;     /* enum tls_state */
  uint8_t sending;   /* the send in flight is `out` */
  uint8_t after;     /* enum tls_after */
  uint8_t sniffed;   /* the first byte was looked at */
  uint8_t queued;    /* on loop->tls_ready */
  uint8_t ktls_tx;   /* the kernel encrypts what this connection sends */
  uint8_t ctrl_type; /* kTLS: record type of OpenSSL's next write (0: application data) */
  uint8_t per_conn;  /* ssl_cert_per_conn: the handler gives the certificate */
  uint8_t answer;    /* enum tls_answer */
  uint8_t suspended; /* the handshake waits in the ClientHello callback for the answer */
  pmu__list_t link;  /* loop->tls_waiting or loop->tls_ready */

  /* Ciphertext the BIO reads from: the bytes being fed now. */
  const unsigned char *in;
  size_t in_len;
  /* Ciphertext of a handshake in progress, until the turn's handshake pass. */
  char *hs_in;
  size_t hs_len, hs_cap;

  /* Ciphertext out: `out` is being sent (out_sent of out_len written), and
   * stands for out_plain plaintext bytes of the connection's queue; `acc`
   * gathers OpenSSL's writes meanwhile. */
  char *out;
  size_t out_len, out_sent, out_cap, out_plain;
  char *acc;
  size_t acc_len, acc_cap, acc_plain;
  struct iovec iov;
  struct msghdr msg;

  pmu__tls_snap_t *snap;  /* taken when the handshake finished */
  pmu_tls_certs_t *certs; /* ssl_cert_per_conn: the handler's certificate (a reference) */
};

/* ssl_cert_per_conn: what the handler said about the connection. */
enum tls_answer { ANSWER_NONE, ANSWER_USE, ANSWER_DECLINE };

/* ---- the BIO over the ring's buffers ---- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int grow(char **buf, size_t *cap, size_t need) { return pmu__grow(buf, cap, need, 4096); }

/* The spare given back last (the loop keeps a list through their first bytes). */
static char *spare_take(pmu__loop_t *loop) {
  char *p = loop->tls_spare;
  memcpy(&loop->tls_spare, p, sizeof(char *));
  loop->tls_nspare--;
  return p;
}

/* Make room for `need` bytes (`used` of them taken) in one step: an empty
 * buffer takes a spare of TLS_SEND_BUF bytes when that is enough, else the
 * size is rounded up to a page (no doubling: the ciphertext of a send is known
 * in advance), or to TLS_SEND_BUF past half of it, so that it can be a spare
 * later. */
static int reserve(pmu__loop_t *loop, char **buf, size_t *cap, size_t used, size_t need) {
  if (need <= *cap)
    return 0;
  if (!used && need <= TLS_SEND_BUF && loop->tls_spare) {
    free(*buf); /* NULL, or the small buffer of earlier answers */
    *buf = spare_take(loop);
    *cap = TLS_SEND_BUF;
    return 0;
  }
  size_t n = (need + 4095) & ~(size_t)4095;
  if (n < TLS_SEND_BUF && n > TLS_SEND_BUF / 2)
    n = TLS_SEND_BUF;
  char *p = realloc(*buf, n);
  if (!p)
    return -ENOMEM;
  *buf = p;
  *cap = n;
  return 0;
}

/* An empty buffer larger than TLS_BUF_KEEP leaves its connection: a spare of
 * the loop, or freed. */
static void give_back(pmu__loop_t *loop, char **buf, size_t *cap) {
  if (*cap <= TLS_BUF_KEEP)
    return;
  if (*cap == TLS_SEND_BUF && loop->tls_nspare < TLS_SPARE_MAX) {
    memcpy(*buf, &loop->tls_spare, sizeof(char *));
    loop->tls_spare = *buf;
    loop->tls_nspare++;
  } else {
    free(*buf);
  }
  *buf = NULL;
  *cap = 0;
}

#ifdef PMU_HAVE_KTLS
/* Send a record OpenSSL writes after the kernel took the transmit keys: on the
 * socket at once, with its record type when it is not application data. The
 * ring has nothing of this connection in flight then (the handshake's flight
 * went out before the keys were installed; close_notify goes only when
 * nothing is in flight), so the order on the wire holds. */
static int ktls_write(pmu__tls_conn_t *t, const char *data, int len) {
  struct iovec iov = {(void *)data, (size_t)len};
  char cbuf[CMSG_SPACE(sizeof(unsigned char))];
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (t->ctrl_type) {
    memset(cbuf, 0, sizeof cbuf);
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_TLS;
    cm->cmsg_type = TLS_SET_RECORD_TYPE;
    cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
    *CMSG_DATA(cm) = t->ctrl_type;
  }
  ssize_t n;
  do
    n = sendmsg(t->conn->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  t->ctrl_type = 0;           /* the type is asked for before each record that needs one */
  return n == len ? len : -1; /* a record cut short cannot be finished later */
}

/* The length of the kernel's crypto_info for the cipher OpenSSL chose. */
static size_t ktls_info_len(const struct tls_crypto_info *ci) {
  switch (ci->cipher_type) {
  case TLS_CIPHER_AES_GCM_128: return sizeof(struct tls12_crypto_info_aes_gcm_128);
  case TLS_CIPHER_AES_GCM_256: return sizeof(struct tls12_crypto_info_aes_gcm_256);
#ifdef TLS_CIPHER_AES_CCM_128
  case TLS_CIPHER_AES_CCM_128: return sizeof(struct tls12_crypto_info_aes_ccm_128);
#endif
#ifdef TLS_CIPHER_CHACHA20_POLY1305
  case TLS_CIPHER_CHACHA20_POLY1305: return sizeof(struct tls12_crypto_info_chacha20_poly1305);
#endif
  default: return 0;
  }
}

/* OpenSSL offers the transmit keys (is_tx) or the receive keys. Transmit: the
 * ciphertext queued so far must be on the wire first (sent here, without
 * waiting: a handshake flight fits the socket's buffer), then the keys go to
 * the kernel. Returns 1 when the kernel took them; 0 leaves OpenSSL in charge. */
static long ktls_install(pmu__tls_conn_t *t, int is_tx, void *info) {
  pmu__conn_t *c = t->conn;
  if (!is_tx || !info || c->send_inflight || t->out_len)
    return 0;
  size_t len = ktls_info_len(info);
  if (!len)
    return 0;
  size_t off = 0;
  while (off < t->acc_len) {
    ssize_t n = send(c->fd, t->acc + off, t->acc_len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      /* Part of the flight may be out: keep what is not, in user space. */
      memmove(t->acc, t->acc + off, t->acc_len - off);
      t->acc_len -= off;
      return 0;
    }
    off += (size_t)n;
  }
  t->acc_len = 0;
  if (setsockopt(c->fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0 ||
      setsockopt(c->fd, SOL_TLS, TLS_TX, info, (socklen_t)len) < 0)
    return 0;
  t->ktls_tx = 1;
  return 1;
}
#endif

static int bio_write(BIO *b, const char *data, int len) {
  pmu__tls_conn_t *t = BIO_get_data(b);
  BIO_clear_retry_flags(b);
#ifdef PMU_HAVE_KTLS
  if (t->ktls_tx)
    return ktls_write(t, data, len);
#endif
  if (len <= 0)
    return 0;
  if (grow(&t->acc, &t->acc_cap, t->acc_len + (size_t)len) < 0)
    return -1;
  memcpy(t->acc + t->acc_len, data, (size_t)len);
  t->acc_len += (size_t)len;
  return len;
}

static int bio_read(BIO *b, char *buf, int len) {
  pmu__tls_conn_t *t = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (t->in_len == 0) {
    BIO_set_retry_read(b); /* more comes with the next receive */
    return -1;
  }
  size_t n = t->in_len < (size_t)len ? t->in_len : (size_t)len;
  memcpy(buf, t->in, n);
  t->in += n;
  t->in_len -= n;
  return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long larg, void *parg) {
  pmu__tls_conn_t *t = BIO_get_data(b);
  (void)larg;
  (void)parg;
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1; /* the ring sends what was written */
  case BIO_CTRL_PENDING: return (long)t->in_len;
  case BIO_CTRL_WPENDING: return 0;
  case BIO_CTRL_GET_KTLS_SEND: return t->ktls_tx;
  case BIO_CTRL_GET_KTLS_RECV: return 0;
#ifdef PMU_HAVE_KTLS
  case CTRL_SET_KTLS: return ktls_install(t, (int)larg, parg);
  case CTRL_SET_KTLS_TX_SEND_CTRL_MSG: t->ctrl_type = (uint8_t)larg; return 1;
  case CTRL_CLEAR_KTLS_TX_CTRL_MSG: t->ctrl_type = 0; return 1;
#endif
  default: return 0;
  }
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static void make_bio_method(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pmu ring");
  if (!m)
    return;
  if (!BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
      !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
    BIO_meth_free(m);
    return;
  }
  bio_method = m;
}

/* ---- handshake slots ---- */

static void set_waiting_gauge(pmu__loop_t *loop, long delta) {
  __atomic_store_n(&loop->stats.tls_handshakes_waiting,
                   __atomic_load_n(&loop->stats.tls_handshakes_waiting, __ATOMIC_RELAXED) +
                       (uint64_t)delta,
                   __ATOMIC_RELAXED);
}

static void start_reading(pmu__conn_t *c) {
  c->tls->state = TLS_HANDSHAKE;
  c->loop->tls_hs_active++;
  pmu__conn_arm_recv(c);
}

/* A handshake slot is free: the longest waiting connection takes it. */
static void slot_free(pmu__loop_t *loop) {
  loop->tls_hs_active--;
  unsigned max = loop->server->cfg.ssl_max_handshakes;
  pmu__list_t *l;
  while ((max == 0 || loop->tls_hs_active < max) && (l = pmu__list_first(&loop->tls_waiting))) {
    pmu__list_unlink(l);
    set_waiting_gauge(loop, -1);
    pmu__tls_conn_t *t = PMU__LIST_ENTRY(l, pmu__tls_conn_t, link);
    if (t->conn->closing)
      continue; /* released at the end of the turn */
    start_reading(t->conn);
  }
}

/* The connection's handshake is over (finished, failed, or the connection is
 * going): its slot goes to the next one waiting. */
static void handshake_over(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  if (pmu__list_is_linked(&t->link)) {
    pmu__list_unlink(&t->link);
    if (t->state == TLS_WAITING)
      set_waiting_gauge(c->loop, -1);
  }
  t->queued = 0;
  free(t->hs_in);
  t->hs_in = NULL;
  t->hs_len = t->hs_cap = 0;
  if (t->state == TLS_HANDSHAKE)
    slot_free(c->loop);
}

/* ---- connections ---- */

int pmu__tls_accept(pmu__conn_t *c) {
  pmu__loop_t *loop = c->loop;
  pthread_once(&bio_once, make_bio_method);
  if (!bio_method)
    return -ENOMEM;
  if (!loop->tls_buf && !(loop->tls_buf = malloc(2 * TLS_RECORD)))
    return -ENOMEM;
  pmu__tls_conn_t *t = calloc(1, sizeof *t);
  if (!t)
    return -ENOMEM;
  pmu__tls_ctx_t *ctx = pmu__tls_ctx_acquire(loop->server);
  t->ssl = ctx ? pmu__tls_ssl_new(ctx) : NULL;
  if (ctx)
    pmu__tls_ctx_release(ctx);
  BIO *bio = t->ssl ? BIO_new(bio_method) : NULL;
  if (!bio) {
    SSL_free(t->ssl);
    free(t);
    return -ENOMEM;
  }
  BIO_set_data(bio, t);
  SSL_set_bio(t->ssl, bio, bio); /* the SSL owns it (and takes the second reference itself) */
  t->conn = c;
  t->state = TLS_WAITING;
  t->per_conn = loop->server->cfg.ssl_cert_per_conn ? 1 : 0;
  c->tls = t;
  unsigned max = loop->server->cfg.ssl_max_handshakes;
  if (max && loop->tls_hs_active >= max) {
    pmu__list_insert_tail(&loop->tls_waiting, &t->link);
    set_waiting_gauge(loop, 1);
  } else {
    start_reading(c);
  }
  pmu__conn_timer_update(c);
  return 0;
}

void pmu__tls_conn_released(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  if (t->state <= TLS_HANDSHAKE)
    handshake_over(c);
  SSL_free(t->ssl);
  free(t->out);
  free(t->acc);
  if (t->snap)
    pmu__tls_snap_unref(t->snap);
  pmu_tls_certs_release(t->certs);
  free(t);
  c->tls = NULL;
}

void pmu__tls_loop_exit(pmu__loop_t *loop) {
  free(loop->tls_buf);
  loop->tls_buf = NULL;
  while (loop->tls_spare)
    free(spare_take(loop));
}

int pmu__tls_handshaking(const pmu__conn_t *c) { return c->tls->state <= TLS_HANDSHAKE; }

int pmu__tls_ktls_tx(const pmu__conn_t *c) { return c->tls->ktls_tx; }

pmu__tls_snap_t *pmu__tls_conn_snap(const pmu__conn_t *c) {
  pmu__tls_snap_t *snap = c->tls ? c->tls->snap : NULL;
  if (snap)
    pmu__tls_snap_ref(snap);
  return snap;
}

/* ---- sending ---- */

/* Send `out` (what is left of it) through the ring. */
static void send_out(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  pmu__loop_t *loop = c->loop;
  size_t len = t->out_len - t->out_sent;
  t->iov.iov_base = t->out + t->out_sent;
  t->iov.iov_len = len;
  memset(&t->msg, 0, sizeof t->msg);
  t->msg.msg_iov = &t->iov;
  t->msg.msg_iovlen = 1;
  const pmu_config_t *cfg = &loop->server->cfg;
  int zc = cfg->send_zc_threshold && len >= cfg->send_zc_threshold;
  if (pmu__prep_send(&loop->ring, c->fd, c->fixed, &t->msg, zc, PMU__UD(c, OP_SEND)) < 0) {
    loop->sqe_short = 1; /* flushed again at the end of a later turn */
    pmu__loop_mark_dirty(loop, c);
    return;
  }
  t->sending = 1;
  c->send_inflight = 1;
  c->send_len = len;
  c->ops++;
  STAT_ADD(loop, sends, 1);
  if (zc)
    STAT_ADD(loop, send_zc, 1);
  pmu__conn_timer_update(c);
}

/* `acc` becomes `out` and goes. */
static void send_acc(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  char *b = t->out;
  size_t cap = t->out_cap;
  t->out = t->acc;
  t->out_cap = t->acc_cap;
  t->out_len = t->acc_len;
  t->out_sent = 0;
  t->out_plain = t->acc_plain;
  t->acc = b;
  t->acc_cap = cap;
  t->acc_len = 0;
  t->acc_plain = 0;
  send_out(c);
}

int pmu__tls_flush(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  if (t->out_len) {
    send_out(c); /* the rest of a short send */
    return 1;
  }
  if (t->state != TLS_OPEN) {
    if (t->acc_len)
      send_acc(c);
    return 1; /* no plaintext before the handshake, or after TLS ended */
  }
  return 0;
}

int pmu__tls_send_pending(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  if (!t->acc_len || t->ktls_tx)
    return 0;
  send_acc(c);
  return 1;
}

int pmu__tls_encrypt(pmu__conn_t *c, const struct iovec *iov, int n, size_t total) {
  pmu__tls_conn_t *t = c->tls;
  char *stage = c->loop->tls_buf + TLS_RECORD;
  size_t staged = 0, budget = total < TLS_FLUSH_MAX ? total : TLS_FLUSH_MAX;
  size_t done = 0;
  /* Room for all of this send's records at once (bio_write appends them). */
  size_t records = budget / TLS_RECORD + 2;
  if (reserve(c->loop, &t->acc, &t->acc_cap, t->acc_len,
              t->acc_len + budget + records * TLS_RECORD_OVERHEAD) < 0)
    return -ENOMEM;
  ERR_clear_error();
  for (int i = 0; i < n && done < budget; i++) {
    const char *p = iov[i].iov_base;
    size_t left = iov[i].iov_len;
    if (left > budget - done)
      left = budget - done;
    done += left;
    while (left) {
      size_t k;
      if (staged == 0 && left >= TLS_RECORD) {
        /* Whole records straight from the caller's memory. */
        k = left - left % TLS_RECORD;
        if (SSL_write(t->ssl, p, (int)k) != (int)k)
          return -ENOMEM;
      } else {
        /* Small pieces (a head, a chunk line) share records. */
        k = TLS_RECORD - staged < left ? TLS_RECORD - staged : left;
        memcpy(stage + staged, p, k);
        staged += k;
        if (staged == TLS_RECORD) {
          if (SSL_write(t->ssl, stage, TLS_RECORD) != TLS_RECORD)
            return -ENOMEM;
          staged = 0;
        }
      }
      p += k;
      left -= k;
    }
  }
  if (staged && SSL_write(t->ssl, stage, (int)staged) != (int)staged)
    return -ENOMEM;
  t->acc_plain += done;
  send_acc(c);
  return 0;
}

int pmu__tls_sent(pmu__conn_t *c, int res) {
  pmu__tls_conn_t *t = c->tls;
  if (!t->sending)
    return res; /* a file read completion, or plaintext under kTLS */
  t->sending = 0;
  t->out_sent += (size_t)res;
  if (res > 0)
    pmu__conn_timer_touch(c);
  if (t->out_sent < t->out_len) {
    STAT_ADD(c->loop, short_sends, 1);
    send_out(c);
    return -1;
  }
  size_t plain = t->out_plain;
  t->out_len = t->out_sent = t->out_plain = 0;
  /* Back to the loop's spares at once: the next send of any connection takes
   * it (last in, first out), while the kernel's copy left it in the cache. */
  give_back(c->loop, &t->out, &t->out_cap);
  if (t->after && !t->acc_len) {
    /* The alert or close_notify is out: now the TCP side. */
    if (t->after == AFTER_LINGER)
      pmu__conn_linger(c);
    else
      pmu__conn_close(c);
    return -1;
  }
  c->send_len = plain; /* what the caller accounts: no short send */
  return (int)plain;
}

/* ---- closing ---- */

int pmu__tls_close_notify(pmu__conn_t *c, int linger) {
  pmu__tls_conn_t *t = c->tls;
  if (t->after)
    return 1; /* already on its way */
  if (t->state != TLS_OPEN || c->send_inflight)
    return 0;
  ERR_clear_error();
  int rc = SSL_shutdown(t->ssl);
  t->state = TLS_CLOSED;
  c->no_more = 1;
  if (rc < 0 || (!t->acc_len && !t->ktls_tx))
    return 0; /* nothing to send: close now */
  STAT_ADD(c->loop, tls_close_notify, 1);
  if (t->ktls_tx) {
    return 0; /* written by the kernel already (ktls_write) */
  }
  t->after = linger ? AFTER_LINGER : AFTER_CLOSE;
  pmu__loop_mark_dirty(c->loop, c);
  pmu__conn_timer_update(c);
  return 1;
}

/* ---- receiving ---- */

/* Decrypt what the BIO holds and hand the plaintext on, until OpenSSL needs
 * more ciphertext. */
static void decrypt(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  char *buf = c->loop->tls_buf;
  while (!c->closing && t->state == TLS_OPEN) {
    ERR_clear_error();
    int n = SSL_read(t->ssl, buf, TLS_RECORD);
    if (n > 0) {
      pmu__conn_on_recv(c, buf, (size_t)n);
      if (t->in_len == 0 && !SSL_has_pending(t->ssl))
        break; /* all of it read: no call that would only say WANT_READ */
      continue;
    }
    int err = SSL_get_error(t->ssl, n);
    if (err == SSL_ERROR_WANT_READ)
      break;
    if (err == SSL_ERROR_ZERO_RETURN) {
      /* The client's close_notify: as its end of stream. */
      t->in_len = 0;
      pmu__conn_on_eof(c);
      break;
    }
    pmu__conn_fail(c, EPROTO); /* a bad record: nothing more can be trusted */
    break;
  }
  t->in_len = 0;
  if (t->acc_len && !c->closing)
    pmu__loop_mark_dirty(c->loop, c); /* a KeyUpdate's answer, say */
}

/* The plain HTTP request to a TLS port: nginx's 400, in plain text, and the
 * connection is plain from here (what follows is discarded). */
static void plain_http(pmu__conn_t *c) {
  pmu__loop_t *loop = c->loop;
  STAT_ADD(loop, tls_plain_http, 1);
  pmu__tls_conn_released(c);
  c->no_more = 1;
  c->linger_on_close = 1;
  c->served = 1;
  pmu__req_t *r = pmu__req_alloc(loop);
  if (!r) {
    pmu__conn_close(c);
    return;
  }
  static const char body[] = "The plain HTTP request was sent to HTTPS port\n";
  static const pmu_header_t ct = {"Content-Type", 12, "text/plain; charset=utf-8", 25};
  pmu_response_t resp = {
      .status = 400, .headers = &ct, .header_count = 1, .body = body, .body_len = sizeof body - 1};
  r->kind = REQ_ENGINE;
  r->conn = c;
  r->pub.http_major = 1;
  r->pub.http_minor = 1;
  r->pub.keep_alive = 0;
  if (pmu__serialize(r, &resp, 1) < 0) {
    pmu__req_free(r);
    pmu__conn_close(c);
    return;
  }
  r->close_after = 1;
  r->answered = 1;
  STAT_ADD(loop, status_classes[4], 1);
  pmu__conn_enqueue(c, r);
  pmu__conn_answered(c, r);
  pmu__conn_timer_update(c);
}

static void handshake_failed(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  STAT_ADD(c->loop, tls_handshake_errors, 1);
  handshake_over(c);
  t->state = TLS_CLOSED;
  c->no_more = 1;
  if (!c->close_err)
    c->close_err = EPROTO;
  if (!t->acc_len) {
    pmu__conn_close(c);
    return;
  }
  t->after = AFTER_LINGER; /* the alert, then no more */
  pmu__loop_mark_dirty(c->loop, c);
  pmu__conn_timer_update(c);
}

static void handshake_done(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  pmu__loop_t *loop = c->loop;
  handshake_over(c);
  t->state = TLS_OPEN;
  t->snap = pmu__tls_snap_new(t->ssl);
  if (!t->snap) {
    pmu__conn_fail(c, ENOMEM);
    return;
  }
  STAT_ADD(loop, tls_handshakes, 1);
  if (SSL_session_reused(t->ssl))
    STAT_ADD(loop, tls_resumed, 1);
  if (t->ktls_tx)
    STAT_ADD(loop, tls_ktls, 1);
  if (c->h) {
    pmu__connh_tls_done(c); /* opened at accept (ssl_cert_per_conn) */
    if (c->head)
      pmu__loop_mark_dirty(loop, c); /* what pmu_conn_send queued meanwhile */
  } else if (loop->server->cfg.conn_handler && pmu__connh_open(c) < 0) {
    pmu__conn_close(c); /* no handle, no events: as if never accepted */
    return;
  }
  pmu__conn_timer_update(c); /* the header timer starts now */
}

/* ---- the certificate given per connection (ssl_cert_per_conn) ---- */

int pmu__tls_client_hello(SSL *ssl, int *alert, void *arg) {
  (void)arg;
  pmu__tls_conn_t *t = BIO_get_data(SSL_get_rbio(ssl));
  switch (t->answer) {
  case ANSWER_USE:
    t->suspended = 0;
    if (pmu__tls_certs_apply(ssl, t->certs))
      return SSL_CLIENT_HELLO_SUCCESS;
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  case ANSWER_DECLINE:
    t->suspended = 0;
    *alert = SSL_AD_HANDSHAKE_FAILURE;
    return SSL_CLIENT_HELLO_ERROR;
  default: t->suspended = 1; return SSL_CLIENT_HELLO_RETRY; /* until the handler answers */
  }
}

void pmu__tls_answer(pmu__conn_t *c, pmu_tls_certs_t *certs) {
  pmu__tls_conn_t *t = c->tls;
  if (!t || !t->per_conn || t->answer != ANSWER_NONE || t->state > TLS_HANDSHAKE || c->closing) {
    pmu_tls_certs_release(certs); /* answered already, or too late */
    return;
  }
  t->certs = certs;
  t->answer = certs ? ANSWER_USE : ANSWER_DECLINE;
  if (!certs)
    c->close_err = ECONNREFUSED;
  if (t->suspended) {
    /* The handshake goes on in this turn's handshake pass. */
    if (!t->queued) {
      t->queued = 1;
      pmu__list_insert_tail(&c->loop->tls_ready, &t->link);
    }
  } else if (!certs && !t->sniffed && !t->hs_len) {
    pmu__conn_close(c); /* no ClientHello yet to answer with an alert */
  }
}

/* One step of a handshake over the ciphertext kept for it. */
static void handshake_step(pmu__conn_t *c) {
  pmu__tls_conn_t *t = c->tls;
  if (!t->sniffed && t->hs_len) {
    t->sniffed = 1;
    unsigned char first = (unsigned char)t->hs_in[0];
    if (first >= 'A' && first <= 'Z') {
      plain_http(c); /* a TLS record starts with its type, 20 to 24 */
      return;
    }
  }
  /* The BIO reads from hs_in, which lives until the step is over. */
  char *hs = t->hs_in;
  size_t len = t->hs_len;
  t->hs_in = NULL;
  t->hs_len = t->hs_cap = 0;
  t->in = (const unsigned char *)hs;
  t->in_len = len;
  ERR_clear_error();
  int rc = SSL_do_handshake(t->ssl);
  if (rc == 1) {
    handshake_done(c);
    if (!c->closing && t->in_len)
      decrypt(c); /* a request right behind the Finished */
  } else {
    int err = SSL_get_error(t->ssl, rc);
    if (err == SSL_ERROR_WANT_CLIENT_HELLO_CB && t->in_len) {
      /* Waiting for the handler's certificate: what came after the ClientHello
       * is kept for the next step. */
      if (grow(&t->hs_in, &t->hs_cap, t->in_len) < 0) {
        handshake_failed(c);
      } else {
        memcpy(t->hs_in, t->in, t->in_len);
        t->hs_len = t->in_len;
      }
    } else if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_CLIENT_HELLO_CB)
      handshake_failed(c);
    else if (t->acc_len)
      pmu__loop_mark_dirty(c->loop, c); /* the server's flight */
  }
  t->in_len = 0;
  free(hs);
  if (c->tls == t && t->acc_len && !c->closing)
    pmu__loop_mark_dirty(c->loop, c);
}

void pmu__tls_on_recv(pmu__conn_t *c, const char *data, size_t len) {
  pmu__tls_conn_t *t = c->tls;
  if (t->state == TLS_OPEN && !c->no_more && !c->lingering) {
    t->in = (const unsigned char *)data;
    t->in_len = len;
    decrypt(c);
    return;
  }
  if (t->state != TLS_HANDSHAKE) {
    c->rx += len;
    c->linger_on_close = 1; /* discarded: close without a reset */
    return;
  }
  c->rx += len;
  if (t->hs_len + len > TLS_HS_IN_MAX || grow(&t->hs_in, &t->hs_cap, t->hs_len + len) < 0) {
    handshake_failed(c);
    return;
  }
  memcpy(t->hs_in + t->hs_len, data, len);
  t->hs_len += len;
  if (!t->queued) {
    t->queued = 1;
    pmu__list_insert_tail(&c->loop->tls_ready, &t->link);
  }
}

void pmu__tls_run_handshakes(pmu__loop_t *loop) {
  pmu__list_t taken, *l;
  pmu__list_move(&loop->tls_ready, &taken);
  while ((l = pmu__list_first(&taken))) {
    pmu__list_unlink(l);
    pmu__tls_conn_t *t = PMU__LIST_ENTRY(l, pmu__tls_conn_t, link);
    t->queued = 0;
    if (!t->conn->closing && t->state == TLS_HANDSHAKE)
      handshake_step(t->conn);
  }
}

/* ---- the public accessors ---- */

int pmu_request_tls_info(const pmu_request_t *request, pmu_tls_info_t *out) {
  const pmu__req_t *r = (const pmu__req_t *)request;
  if (!r->tls_snap)
    return -EINVAL;
  pmu__tls_snap_info(r->tls_snap, out);
  return 0;
}

int pmu_request_tls_peer_cert(const pmu_request_t *request, unsigned index,
                              const unsigned char **der, size_t *len) {
  const pmu__req_t *r = (const pmu__req_t *)request;
  if (!r->tls_snap)
    return -EINVAL;
  return pmu__tls_snap_peer_cert(r->tls_snap, index, der, len);
}
