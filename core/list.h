/*
 * list.h: the engine's one intrusive list, circular and doubly linked.
 *
 * A list is an anchor (a pmu__list_t that belongs to no element) whose next
 * and prev are the first and last elements, or the anchor itself when the
 * list is empty. An element embeds one pmu__list_t per list it may be on;
 * PMU__LIST_ENTRY turns a link back into the element. A link that is on no
 * list has next == NULL (zeroed memory is an unlinked link), so "is it on
 * that list" needs no flag of its own.
 *
 * Nothing allocates and every operation is O(1): inserting or unlinking
 * touches the element and its two neighbours, as the hand-written lists it
 * replaced did. An anchor points to itself: it must be initialised in the
 * place it lives and never copied.
 */
#ifndef PMU_LIST_H
#define PMU_LIST_H

#include <stddef.h>

typedef struct pmu__list pmu__list_t;
struct pmu__list {
  pmu__list_t *next, *prev;
};

/* The element of type `type` whose member `member` is the link l. */
#define PMU__LIST_ENTRY(l, type, member) ((type *)((char *)(l)-offsetof(type, member)))

static inline void pmu__list_init(pmu__list_t *anchor) { anchor->next = anchor->prev = anchor; }

static inline int pmu__list_is_empty(const pmu__list_t *anchor) { return anchor->next == anchor; }

/* Whether the link is on a list (any list: a link serves only one). */
static inline int pmu__list_is_linked(const pmu__list_t *l) { return l->next != NULL; }

/* Link l (unlinked) before `at`, which is an anchor or a linked element. */
static inline void pmu__list_insert_before(pmu__list_t *at, pmu__list_t *l) {
  l->prev = at->prev;
  l->next = at;
  at->prev->next = l;
  at->prev = l;
}

/* Append l (unlinked) at the tail of the list anchored at anchor. */
static inline void pmu__list_insert_tail(pmu__list_t *anchor, pmu__list_t *l) {
  pmu__list_insert_before(anchor, l);
}

/* Prepend l (unlinked) at the head of the list anchored at anchor. */
static inline void pmu__list_insert_head(pmu__list_t *anchor, pmu__list_t *l) {
  pmu__list_insert_before(anchor->next, l);
}

/* Take l (linked) off its list; it reads as unlinked afterwards. */
static inline void pmu__list_unlink(pmu__list_t *l) {
  l->next->prev = l->prev;
  l->prev->next = l->next;
  l->next = l->prev = NULL;
}

/* The first link of the list, or NULL when it is empty. */
static inline pmu__list_t *pmu__list_first(const pmu__list_t *anchor) {
  return anchor->next == anchor ? NULL : anchor->next;
}

/* Move every element of `from` to `to` (empty), in order; from is left empty.
 * The loop takes a pending-work list this way, so that work queued while it
 * walks goes to the next pass. */
static inline void pmu__list_move(pmu__list_t *from, pmu__list_t *to) {
  if (pmu__list_is_empty(from)) {
    pmu__list_init(to);
    return;
  }
  to->next = from->next;
  to->prev = from->prev;
  to->next->prev = to;
  to->prev->next = to;
  pmu__list_init(from);
}

/* Walk the list anchored at anchor; l is each link in turn, and n the next
 * one, read before the body runs: the body may unlink l (but not n). */
#define PMU__LIST_FOREACH_SAFE(anchor, l, n) \
  for ((l) = (anchor)->next, (n) = (l)->next; (l) != (anchor); (l) = (n), (n) = (l)->next)

#endif /* PMU_LIST_H */
