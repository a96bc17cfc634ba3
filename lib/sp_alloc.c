/* sp_alloc: malloc wrappers with a failure-injection hook for tests. */
#include "sp_alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long fail_after = -1; /* test hook; -1 = never fail */
static long attempts;

static int should_fail(void) {
  long n = attempts++;
  return fail_after >= 0 && n >= fail_after;
}

void sp_alloc_fail_after(long k) {
  fail_after = k;
  attempts = 0;
}

long sp_alloc_count(void) { return attempts; }
void sp_alloc_count_reset(void) { attempts = 0; }

void *sp_malloc(size_t n) {
  if (should_fail())
    return NULL;
  return malloc(n ? n : 1);
}

void *sp_calloc(size_t count, size_t size) {
  if (should_fail())
    return NULL;
  return calloc(count ? count : 1, size ? size : 1);
}

void *sp_realloc(void *p, size_t n) {
  if (should_fail())
    return NULL;
  return realloc(p, n ? n : 1);
}

void sp_free(void *p) { free(p); }

char *sp_strndup(const char *s, size_t n) {
  char *d = sp_malloc(n + 1);
  if (d == NULL)
    return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

char *sp_strdup(const char *s) {
  if (s == NULL)
    return NULL;
  return sp_strndup(s, strlen(s));
}

static void oom(size_t n) {
  fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", n);
  abort();
}

void *sp_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (p == NULL)
    oom(n);
  return p;
}

void *sp_xcalloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (p == NULL)
    oom(count * size);
  return p;
}

char *sp_xstrdup(const char *s) {
  size_t n = strlen(s);
  char *d = sp_xmalloc(n + 1);
  memcpy(d, s, n + 1);
  return d;
}
