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

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_server_start();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_plan_t plan;
  fuzz_plan(data, size, &plan);
  if (plan.len == 0)
    return 0;
  size_t out_len = 0;
  char *out = fuzz_exchange(NULL, 0, &plan, &out_len);
  if (!out)
    fuzz_fail("the server kept the connection open after the client half-closed", data,
              size, NULL, 0);
  fuzz_responses_t rs;
  fuzz_parse_responses(out, out_len, &rs, data, size);
  size_t heads = fuzz_count_head_ends(plan.payload, plan.len);
  if (rs.count > heads + 1) {
    char why[160];
    snprintf(why, sizeof why, "%zu final responses for at most %zu requests (+1 error)",
             rs.count, heads);
    fuzz_fail(why, data, size, out, out_len);
  }
  fuzz_responses_free(&rs);
  free(out);
  return 0;
}
