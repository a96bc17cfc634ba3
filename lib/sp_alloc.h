/* sp_alloc: the one allocator every module goes through.
 *
 * Libraries call sp_malloc/sp_calloc/sp_realloc/sp_free and handle NULL by
 * returning SP_ERR_NOMEM.  Only process start-up (main, config loading before
 * the loop runs) uses the sp_x* wrappers, which abort on exhaustion.
 *
 * Tests can make allocation N fail (sp_alloc_fail_after) to sweep every
 * allocation failure path of an API; the counter is process-wide test state,
 * the one documented exception to "no mutable globals" (it is inert unless a
 * test arms it).
 */
#ifndef SP_ALLOC_H
#define SP_ALLOC_H

#include <stddef.h>

void *sp_malloc(size_t n);
void *sp_calloc(size_t count, size_t size);
void *sp_realloc(void *p, size_t n);
void sp_free(void *p);

/* Copies of a string / of `n` bytes plus a NUL.  Caller frees with sp_free.
 * NULL on allocation failure (or when s is NULL for sp_strdup). */
char *sp_strdup(const char *s);
char *sp_strndup(const char *s, size_t n);

/* Abort-on-failure variants, for start-up code only. */
void *sp_xmalloc(size_t n);
void *sp_xcalloc(size_t count, size_t size);
char *sp_xstrdup(const char *s);

/* Test hooks.  After sp_alloc_fail_after(k), the first k allocations succeed
 * and every later one fails until sp_alloc_fail_after(-1) disarms it.
 * sp_alloc_count() is the number of allocations attempted since the last
 * sp_alloc_fail_after/sp_alloc_count_reset call. */
void sp_alloc_fail_after(long k);
long sp_alloc_count(void);
void sp_alloc_count_reset(void);

#endif
