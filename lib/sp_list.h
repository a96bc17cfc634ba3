/* sp_list: an intrusive, circular, doubly-linked list (as libuv's queue and
 * the Linux kernel's list_head): the node is embedded in its owner, which
 * is recovered with a container-of.  No allocation, nothing to free.
 * A head is a node linked to itself when the list is empty.  sp_list_del
 * on a node that is not in a list (prev == NULL) does nothing. */
#ifndef SP_LIST_H
#define SP_LIST_H

typedef struct sp_list {
  struct sp_list *prev, *next;
} sp_list;

static inline void sp_list_init(sp_list *l) { l->prev = l->next = l; }
static inline int sp_list_empty(const sp_list *l) { return l->next == l; }

/* Appends l at the tail of head. */
static inline void sp_list_add(sp_list *head, sp_list *l) {
  l->prev = head->prev;
  l->next = head;
  head->prev->next = l;
  head->prev = l;
}

static inline void sp_list_del(sp_list *l) {
  if (l->prev == NULL)
    return;
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->prev = l->next = NULL;
}

#endif
