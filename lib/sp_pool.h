/* sp_pool: a bump allocator for memory that lives exactly as long as one
 * owner (an HTTP request, a parse), freed all at once.
 *
 * Allocations come first from an optional caller-provided block (usually an
 * array inside the owner, so a small request needs no malloc at all), then
 * from heap blocks of at least SP_POOL_BLOCK bytes.  Pointers stay valid
 * until sp_pool_reset/sp_pool_release: blocks never move.  Every pool has a
 * hard `max` on heap bytes so input-driven allocations cannot grow without
 * bound.  Embedded: sp_pool_init / sp_pool_reset (free the heap blocks, keep
 * the first block) / sp_pool_release (same; the pool stays usable).
 */
#ifndef SP_POOL_H
#define SP_POOL_H

#include <stddef.h>

#define SP_POOL_BLOCK 4096

typedef struct sp_pool_block sp_pool_block;

typedef struct sp_pool {
  char *cur;             /* private: next free byte of the current block */
  size_t left;           /* private: bytes left in the current block */
  sp_pool_block *blocks; /* private: heap blocks, newest first */
  char *first;           /* private: caller's block or NULL */
  size_t first_size;     /* private */
  size_t heap;           /* private: heap bytes held */
  size_t max;            /* private: limit on `heap` */
} sp_pool;

/* `first` (may be NULL) is used before any heap block and is owned by the
 * caller; it must outlive the pool.  `max` limits heap bytes. */
void sp_pool_init(sp_pool *p, void *first, size_t first_size, size_t max);

/* Frees the heap blocks; the pool is empty and usable again. */
void sp_pool_reset(sp_pool *p);
void sp_pool_release(sp_pool *p);

/* `n` bytes aligned for any scalar type, valid until reset.  NULL when the
 * heap limit would be passed or malloc fails. */
void *sp_pool_alloc(sp_pool *p, size_t n);

/* A NUL-terminated copy of `n` bytes of `s`.  NULL as sp_pool_alloc. */
char *sp_pool_strndup(sp_pool *p, const char *s, size_t n);

#endif
