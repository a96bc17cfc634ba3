/* sp_pool: bump allocation from a caller block, then from heap blocks that
 * are freed together.  See sp_pool.h for ownership. */
#include "sp_pool.h"

#include "sp_alloc.h"

#include <stdint.h>
#include <string.h>

struct sp_pool_block {
  sp_pool_block *next;
  size_t size;
  max_align_t data[]; /* keeps the payload aligned */
};

#define ALIGN (sizeof(max_align_t))

void sp_pool_init(sp_pool *p, void *first, size_t first_size, size_t max) {
  p->blocks = NULL;
  p->heap = 0;
  p->max = max;
  p->first = first;
  p->first_size = first ? first_size : 0;
  sp_pool_reset(p);
}

void sp_pool_reset(sp_pool *p) {
  sp_pool_block *b = p->blocks;
  while (b) {
    sp_pool_block *next = b->next;
    sp_free(b);
    b = next;
  }
  p->blocks = NULL;
  p->heap = 0;
  p->cur = p->first;
  p->left = p->first_size;
  /* the caller's block may be unaligned; align its start once */
  if (p->cur) {
    size_t skip = (ALIGN - (uintptr_t)p->cur % ALIGN) % ALIGN;
    if (skip > p->left)
      skip = p->left;
    p->cur += skip;
    p->left -= skip;
  }
}

void sp_pool_release(sp_pool *p) { sp_pool_reset(p); }

void *sp_pool_alloc(sp_pool *p, size_t n) {
  size_t need = (n + ALIGN - 1) / ALIGN * ALIGN;
  if (need < n) /* overflow */
    return NULL;
  if (need == 0)
    need = ALIGN;
  if (need > p->left) {
    size_t size = need > SP_POOL_BLOCK ? need : SP_POOL_BLOCK;
    if (size > p->max || p->heap > p->max - size)
      return NULL;
    sp_pool_block *b = sp_malloc(sizeof *b + size);
    if (b == NULL)
      return NULL;
    b->next = p->blocks;
    b->size = size;
    p->blocks = b;
    p->heap += size;
    p->cur = (char *)b->data;
    p->left = size;
  }
  void *r = p->cur;
  p->cur += need;
  p->left -= need;
  return r;
}

char *sp_pool_strndup(sp_pool *p, const char *s, size_t n) {
  if (n == (size_t)-1)
    return NULL;
  char *d = sp_pool_alloc(p, n + 1);
  if (d == NULL)
    return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}
