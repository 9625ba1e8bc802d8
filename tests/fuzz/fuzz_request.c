/*
 * fuzz_request: arbitrary bytes, split at arbitrary points, sent over TCP to
 * a real engine server (llhttp glue, limits, body streaming, pipelining,
 * deferred and streamed answers), and the answers checked for framing:
 * every response well formed (status line, headers, exactly the body its
 * Content-Length or chunked framing says, none for HEAD/204/304), no more
 * final responses than the input holds request heads (+1 for an error
 * answer), nothing after Connection: close, and the connection closed by the
 * server once the client has half-closed (no wedge).
 */
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_plan_t plan;
  fuzz_plan(data, size, &plan);
  if (plan.len == 0)
    return 0;
  size_t out_len = 0;
  fuzz_responses_t rs;
  char *out = fuzz_exchange_checked(NULL, 0, &plan, data, size, &rs, &out_len);
  fuzz_responses_free(&rs);
  free(out);
  return 0;
}
