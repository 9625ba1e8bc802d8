/*
 * faults.c: the test-only fault switchboard (see faults.h). Compiled into
 * pmu_core_faults only.
 */
#include "faults.h"

#include <stdatomic.h>

/* Declared by the tests that use it. */
void pmu_test_fault(int point, unsigned long first, unsigned long every, unsigned long times);

static struct {
  atomic_ulong calls, failed;
  atomic_ulong first, every, times;
} points[PMU__FAULT_POINTS];

/* From now on, calls number first, first + every, first + 2 * every, ... (counted
 * from 1 at this call) fail, `times` of them at most; times 0 turns it off. */
void pmu_test_fault(int point, unsigned long first, unsigned long every, unsigned long times) {
  if (point < 0 || point >= PMU__FAULT_POINTS)
    return;
  atomic_store(&points[point].times, 0);
  atomic_store(&points[point].calls, 0);
  atomic_store(&points[point].failed, 0);
  atomic_store(&points[point].first, first ? first : 1);
  atomic_store(&points[point].every, every ? every : 1);
  atomic_store(&points[point].times, times);
}

int pmu__fault(int point) {
  unsigned long times = atomic_load(&points[point].times);
  if (!times)
    return 0;
  unsigned long k = atomic_fetch_add(&points[point].calls, 1) + 1;
  unsigned long first = atomic_load(&points[point].first);
  if (k < first || (k - first) % atomic_load(&points[point].every))
    return 0;
  return atomic_fetch_add(&points[point].failed, 1) < times;
}
