/*
 * tls_info.c: what a request or connection handle tells of its TLS session
 * (pmu_request_tls_info and the rest). Plain connections only until the
 * transport (core/tls.c) attaches snapshots to connections and requests.
 */
#include "internal.h"
#include "tls.h"

#include <errno.h>

int pmu_request_tls_info(const pmu_request_t *request, pmu_tls_info_t *out) { return -EINVAL; }

int pmu_request_tls_peer_cert(const pmu_request_t *request, unsigned index,
                              const unsigned char **der, size_t *len) {
  return -EINVAL;
}

int pmu_conn_tls_info(const pmu_conn_t *conn, pmu_tls_info_t *out) { return -EINVAL; }
