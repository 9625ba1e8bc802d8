/*
 * test_list: core/list.h, the intrusive list every connection list of the
 * loop uses: order, unlink anywhere, "linked" without a flag, taking a whole
 * list while new work is queued, and the safe walk.
 */
#include "list.h"

#include <stdio.h>
#include <string.h>

typedef struct item {
  int value;
  pmu__list_t link;
} item_t;

static int failures;

#define CHECK(cond)                                              \
  do {                                                           \
    if (!(cond)) {                                               \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                \
    }                                                            \
  } while (0)

/* The values in list order, as a string ("" when empty); checks that the
 * links agree both ways. */
static const char *order(const pmu__list_t *anchor) {
  static char out[64];
  size_t n = 0;
  const pmu__list_t *prev = anchor;
  for (const pmu__list_t *l = anchor->next; l != anchor; l = l->next) {
    CHECK(l->prev == prev);
    out[n++] = (char)('0' + PMU__LIST_ENTRY(l, item_t, link)->value);
    prev = l;
  }
  CHECK(anchor->prev == prev);
  out[n] = 0;
  return out;
}

int main(void) {
  item_t it[6];
  memset(it, 0, sizeof it); /* zeroed links read as unlinked */
  for (int i = 0; i < 6; i++) {
    it[i].value = i;
    CHECK(!pmu__list_is_linked(&it[i].link));
  }

  pmu__list_t a;
  pmu__list_init(&a);
  CHECK(pmu__list_is_empty(&a));
  CHECK(pmu__list_first(&a) == NULL);
  CHECK(strcmp(order(&a), "") == 0);

  pmu__list_insert_tail(&a, &it[1].link);
  pmu__list_insert_tail(&a, &it[2].link);
  pmu__list_insert_head(&a, &it[0].link);
  pmu__list_insert_tail(&a, &it[3].link);
  CHECK(strcmp(order(&a), "0123") == 0);
  CHECK(!pmu__list_is_empty(&a));
  CHECK(PMU__LIST_ENTRY(pmu__list_first(&a), item_t, link) == &it[0]);
  CHECK(pmu__list_is_linked(&it[2].link));

  /* Unlink in the middle, at the head, at the tail. */
  pmu__list_unlink(&it[2].link);
  CHECK(!pmu__list_is_linked(&it[2].link));
  CHECK(strcmp(order(&a), "013") == 0);
  pmu__list_unlink(&it[0].link);
  CHECK(strcmp(order(&a), "13") == 0);
  pmu__list_unlink(&it[3].link);
  CHECK(strcmp(order(&a), "1") == 0);
  pmu__list_unlink(&it[1].link);
  CHECK(pmu__list_is_empty(&a));
  CHECK(strcmp(order(&a), "") == 0);

  /* Take a whole list; what is queued meanwhile stays for the next pass. */
  for (int i = 0; i < 4; i++)
    pmu__list_insert_tail(&a, &it[i].link);
  pmu__list_t taken;
  pmu__list_move(&a, &taken);
  CHECK(pmu__list_is_empty(&a));
  CHECK(strcmp(order(&taken), "0123") == 0);
  pmu__list_insert_tail(&a, &it[4].link);
  pmu__list_t *l;
  int seen = 0;
  while ((l = pmu__list_first(&taken))) {
    pmu__list_unlink(l);
    item_t *x = PMU__LIST_ENTRY(l, item_t, link);
    CHECK(x->value == seen);
    seen++;
    if (x->value == 1) /* work done on one item queues it again */
      pmu__list_insert_tail(&a, l);
  }
  CHECK(seen == 4);
  CHECK(strcmp(order(&a), "41") == 0);
  pmu__list_move(&taken, &a); /* an empty list moved empties the target */
  CHECK(pmu__list_is_empty(&a));
  it[1].link.next = it[4].link.next = NULL;

  /* The safe walk lets the body unlink the element it is on. */
  for (int i = 0; i < 6; i++)
    pmu__list_insert_tail(&a, &it[i].link);
  pmu__list_t *n;
  PMU__LIST_FOREACH_SAFE(&a, l, n) {
    if (PMU__LIST_ENTRY(l, item_t, link)->value % 2)
      pmu__list_unlink(l);
  }
  CHECK(strcmp(order(&a), "024") == 0);
  seen = 0;
  PMU__LIST_FOREACH_SAFE(&a, l, n)
  seen++;
  CHECK(seen == 3);

  if (failures)
    return 1;
  printf("list: ok\n");
  return 0;
}
