/* connlib.c: see connlib.h. */
#include "connlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>

t_cn_state_t t_cn = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint16_t peer_port(const pmu_conn_t *h);
static void violation(const char *what, uint64_t id);

void t_cn_reset(void) {
  pthread_mutex_lock(&t_cn.lock);
  t_cn.n = 0;
  t_cn.nhandles = 0;
  t_cn.data_len = 0;
  pthread_mutex_unlock(&t_cn.lock);
  atomic_store(&t_cn.opens, 0);
  atomic_store(&t_cn.closes, 0);
  atomic_store(&t_cn.releases, 0);
  atomic_store(&t_cn.violations, 0);
  atomic_store(&t_cn.drains, 0);
  atomic_store(&t_cn.data_bytes, 0);
  atomic_store(&t_cn.read_bytes, 0);
  atomic_store(&t_cn.sent_bytes, 0);
  atomic_store(&t_cn.echo, 0);
  atomic_store(&t_cn.keep, 0);
  atomic_store(&t_cn.last_close_err, -1);
  atomic_store(&t_cn.echo_over, 0);
}

size_t t_cn_release_kept(void) {
  size_t n = 0;
  pthread_mutex_lock(&t_cn.lock);
  for (size_t i = 0; i < t_cn.nhandles; i++)
    if (t_cn.handles[i].closed && !t_cn.handles[i].released) {
      t_cn.handles[i].released = 1;
      pmu_conn_release(t_cn.handles[i].conn);
      atomic_fetch_add(&t_cn.releases, 1);
      n++;
    }
  pthread_mutex_unlock(&t_cn.lock);
  return n;
}

void t_cn_new_server(void) {
  pthread_mutex_lock(&t_cn.lock);
  for (size_t i = 0; i < t_cn.nhandles; i++)
    if (!t_cn.handles[i].closed)
      violation("a handle still open when the next server starts", t_cn.handles[i].id);
  t_cn.n = 0;
  t_cn.nhandles = 0;
  pthread_mutex_unlock(&t_cn.lock);
}

static void log_locked(uint64_t id, int type, int err, size_t len, unsigned thread) {
  if (t_cn.n < T_CN_LOG)
    t_cn.log[t_cn.n++] = (t_cn_entry_t){id, type, err, len, thread};
}

void t_cn_log(uint64_t conn_id, int type) {
  pthread_mutex_lock(&t_cn.lock);
  log_locked(conn_id, type, 0, 0, 0);
  pthread_mutex_unlock(&t_cn.lock);
}

static void violation(const char *what, uint64_t id) {
  fprintf(stderr, "connlib: %s (conn %llu)\n", what, (unsigned long long)id);
  atomic_fetch_add(&t_cn.violations, 1);
}

/* The handle's slot (under the lock), or -1. */
static long slot_of(const pmu_conn_t *conn) {
  for (size_t i = 0; i < t_cn.nhandles; i++)
    if (t_cn.handles[i].conn == conn && !t_cn.handles[i].closed)
      return (long)i;
  return -1;
}

void t_conn_events(void *handler_data, const pmu_conn_event_t *events, size_t count) {
  (void)handler_data;
  for (size_t i = 0; i < count; i++) {
    const pmu_conn_event_t *e = &events[i];
    if (t_cn.hook)
      t_cn.hook(e);
    uint64_t id = pmu_conn_id(e->conn);
    pthread_mutex_lock(&t_cn.lock);
    long slot = slot_of(e->conn);
    if (e->type == PMU_CONN_EV_OPEN) {
      if (slot >= 0)
        violation("OPEN twice", id);
      else if (t_cn.nhandles < T_CN_HANDLES)
        t_cn.handles[t_cn.nhandles++] =
            (typeof(t_cn.handles[0])){id, e->conn, 0, peer_port(e->conn), 0};
    } else if (slot < 0) {
      violation("an event before OPEN or after CLOSE", id);
    }
    if (e->type == PMU_CONN_EV_CLOSE && slot >= 0) {
      t_cn.handles[slot].closed = 1;
      t_cn.handles[slot].released = !atomic_load(&t_cn.keep);
    }
    if (e->type == PMU_CONN_EV_DATA && t_cn.data_len + e->len <= sizeof t_cn.data) {
      memcpy(t_cn.data + t_cn.data_len, e->data, e->len);
      t_cn.data_len += e->len;
    }
    log_locked(id, e->type, e->err, e->len, pmu_conn_thread(e->conn));
    pthread_mutex_unlock(&t_cn.lock);
    switch (e->type) {
    case PMU_CONN_EV_OPEN: atomic_fetch_add(&t_cn.opens, 1); break;
    case PMU_CONN_EV_DATA:
      atomic_fetch_add(&t_cn.data_bytes, e->len);
      if (atomic_load(&t_cn.echo) && pmu_conn_send(e->conn, e->data, e->len, NULL, NULL) == 1)
        atomic_fetch_add(&t_cn.echo_over, 1);
      break;
    case PMU_CONN_EV_READ: atomic_fetch_add(&t_cn.read_bytes, e->len); break;
    case PMU_CONN_EV_SENT: atomic_fetch_add(&t_cn.sent_bytes, e->len); break;
    case PMU_CONN_EV_DRAIN: atomic_fetch_add(&t_cn.drains, 1); break;
    case PMU_CONN_EV_CLOSE:
      atomic_store(&t_cn.last_close_err, e->err);
      atomic_fetch_add(&t_cn.closes, 1);
      if (!atomic_load(&t_cn.keep)) {
        pmu_conn_release(e->conn);
        atomic_fetch_add(&t_cn.releases, 1);
      }
      break;
    default: violation("an unknown event type", id); break;
    }
  }
}

long t_cn_find(uint64_t conn_id, int type, long from) {
  long found = -1;
  pthread_mutex_lock(&t_cn.lock);
  for (size_t i = from < 0 ? 0 : (size_t)from; i < t_cn.n; i++)
    if (t_cn.log[i].conn_id == conn_id && t_cn.log[i].type == type) {
      found = (long)i;
      break;
    }
  pthread_mutex_unlock(&t_cn.lock);
  return found;
}

size_t t_cn_count(uint64_t conn_id, int type) {
  size_t k = 0;
  pthread_mutex_lock(&t_cn.lock);
  for (size_t i = 0; i < t_cn.n; i++)
    k += t_cn.log[i].conn_id == conn_id && t_cn.log[i].type == type;
  pthread_mutex_unlock(&t_cn.lock);
  return k;
}

pmu_conn_t *t_cn_handle(uint64_t conn_id) {
  pmu_conn_t *h = NULL;
  pthread_mutex_lock(&t_cn.lock);
  for (size_t i = 0; i < t_cn.nhandles; i++)
    if (t_cn.handles[i].id == conn_id && !t_cn.handles[i].closed)
      h = t_cn.handles[i].conn;
  pthread_mutex_unlock(&t_cn.lock);
  return h;
}

uint64_t t_cn_nth_open(size_t n) {
  uint64_t id = 0;
  pthread_mutex_lock(&t_cn.lock);
  for (size_t i = 0; i < t_cn.n; i++)
    if (t_cn.log[i].type == PMU_CONN_EV_OPEN && n-- == 0) {
      id = t_cn.log[i].conn_id;
      break;
    }
  pthread_mutex_unlock(&t_cn.lock);
  return id;
}

uint16_t t_cn_client_port(const t_conn_t *conn) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(conn->fd, (struct sockaddr *)&ss, &len) != 0)
    return 0;
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static uint16_t peer_port(const pmu_conn_t *h) {
  const struct sockaddr_storage *ss = pmu_conn_peer(h);
  if (ss->ss_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

uint64_t t_cn_id_by_port(uint16_t port) {
  int64_t until = t_now_ms() + T_EVENT_MS;
  do {
    uint64_t id = 0;
    pthread_mutex_lock(&t_cn.lock);
    for (size_t i = 0; i < t_cn.nhandles; i++)
      if (t_cn.handles[i].port == port)
        id = t_cn.handles[i].id;
    pthread_mutex_unlock(&t_cn.lock);
    if (id)
      return id;
    t_sleep_ms(2);
  } while (t_now_ms() < until);
  return 0;
}

uint64_t t_cn_id_of_at(const char *file, int line, const t_conn_t *conn) {
  uint64_t id = t_cn_id_by_port(t_cn_client_port(conn));
  if (!id)
    t_fail_at(file, line, "no OPEN for the client's connection");
  return id;
}

int t_cn_close_err_at(const char *file, int line, uint64_t conn_id) {
  t_cn_wait_close_at(file, line, conn_id);
  pthread_mutex_lock(&t_cn.lock);
  int err = -1;
  for (size_t i = 0; i < t_cn.n; i++)
    if (t_cn.log[i].conn_id == conn_id && t_cn.log[i].type == PMU_CONN_EV_CLOSE)
      err = t_cn.log[i].err;
  pthread_mutex_unlock(&t_cn.lock);
  return err;
}

void t_cn_read_exactly_at(const char *file, int line, t_conn_t *conn, size_t n) {
  int64_t until = t_now_ms() + T_EVENT_MS;
  while (conn->len < n && t_now_ms() < until) {
    int rc = t_recv_some(conn, 1000);
    if (rc == 0 || (rc < 0 && rc != -ETIMEDOUT))
      break;
  }
  if (conn->len < n)
    t_fail_at(file, line, "read %zu of %zu bytes", conn->len, n);
}

void t_cn_expect_clean(int fds) {
  t_case("every handle had its events in order and was released; no descriptor left");
  T_ASSERT_INT_EQ(atomic_load(&t_cn.violations), 0);
  T_ASSERT_INT_EQ(atomic_load(&t_cn.releases), atomic_load(&t_cn.closes));
  T_ASSERT_INT_EQ(atomic_load(&t_cn.opens), atomic_load(&t_cn.closes));
  T_ASSERT_INT_EQ(t_count_fds(), fds);
}

void t_cn_pause_at_open(const pmu_conn_event_t *e) {
  if (e->type == PMU_CONN_EV_OPEN && pmu_conn_pause_reading(e->conn, 1) != 0)
    atomic_fetch_add(&t_cn.violations, 1);
}

void t_cn_small_rcvbuf(t_conn_t *conn) {
  int size = 64 * 1024;
  T_ASSERT(setsockopt(conn->fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size) == 0);
}

void t_cn_wait_close_at(const char *file, int line, uint64_t conn_id) {
  T_WAIT_UNTIL(t_cn_find(conn_id, PMU_CONN_EV_CLOSE, 0) >= 0, T_EVENT_MS);
  if (t_cn_find(conn_id, PMU_CONN_EV_CLOSE, 0) < 0)
    t_fail_at(file, line, "no CLOSE for conn %llu", (unsigned long long)conn_id);
}
