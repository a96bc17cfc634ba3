/* sp_metrics: Prometheus registry and text-format renderer (see sp_metrics.h).
 *
 * Ownership: the registry owns an array of family pointers; each family is
 * one sp_malloc block (struct, bucket bounds, name, help and label names)
 * plus a sorted array of series pointers; each series is one block (the
 * value union, its label values, and for histograms the per-bucket counts).
 * Series never move once created, which is what lets callers cache them.
 */
#include "sp_metrics.h"

#include "sp_alloc.h"
#include "sp_err.h"

#include <math.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_COUNTER, T_GAUGE, T_HISTOGRAM } family_type;

static const char *const type_names[] = {"counter", "gauge", "histogram"};

struct sp_counter {
  double value;
};

struct sp_gauge {
  double value;
  sp_gauge_fn fn;
  void *arg;
};

struct sp_histogram {
  const double *bounds; /* the family's */
  size_t nbounds;
  uint64_t *counts; /* nbounds + 1, non-cumulative; the last is (max, +Inf) */
  double sum;
};

typedef struct series {
  union {
    sp_counter counter;
    sp_gauge gauge;
    sp_histogram hist;
  } u;
  const char *values[SP_METRICS_MAX_LABELS];
} series;

struct sp_metrics_family {
  family_type type;
  const char *name;
  const char *help;
  const char *labels[SP_METRICS_MAX_LABELS];
  size_t nlabels;
  const double *bounds;
  size_t nbounds;
  series **series; /* sorted by label values */
  size_t nseries, cap;
};

struct sp_metrics {
  sp_metrics_family **families; /* registration order */
  size_t n, cap;
};

const double sp_metrics_latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                             0.025,  0.05,  0.1,    0.25,  0.5,
                                             1,      2.5,   5,      10};
const size_t sp_metrics_latency_buckets_len =
    sizeof sp_metrics_latency_buckets / sizeof sp_metrics_latency_buckets[0];

/* --- validation ---------------------------------------------------------- */

static int valid_metric_name(const char *s) {
  if (s == NULL || *s == '\0')
    return 0;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
             (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return 0;
  }
  return 1;
}

static int valid_label_name(const char *s) {
  if (s == NULL || *s == '\0' || (s[0] == '_' && s[1] == '_'))
    return 0;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
             (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return 0;
  }
  return 1;
}

/* Well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF):
 * the exposition format is UTF-8 and scrapers reject anything else. */
static int valid_utf8(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned char c = *p;
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      p++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      n = 1;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      cp = c & 0x07;
    } else {
      return 0;
    }
    for (size_t i = 1; i <= n; i++) {
      if ((p[i] & 0xc0) != 0x80)
        return 0; /* also catches the NUL terminator */
      cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return 0;
    p += n + 1;
  }
  return 1;
}

/* The sample names a family puts on the wire (and its own name). */
static size_t exposed_names(const char *name, family_type t, char out[4][256]) {
  snprintf(out[0], 256, "%s", name);
  if (t != T_HISTOGRAM)
    return 1;
  snprintf(out[1], 256, "%s_bucket", name);
  snprintf(out[2], 256, "%s_sum", name);
  snprintf(out[3], 256, "%s_count", name);
  return 4;
}

static int name_taken(const sp_metrics *m, const char *name, family_type t) {
  char mine[4][256], theirs[4][256];
  size_t nm = exposed_names(name, t, mine);
  for (size_t i = 0; i < m->n; i++) {
    size_t nt = exposed_names(m->families[i]->name, m->families[i]->type, theirs);
    for (size_t a = 0; a < nm; a++)
      for (size_t b = 0; b < nt; b++)
        if (strcmp(mine[a], theirs[b]) == 0)
          return 1;
  }
  return 0;
}

/* --- registry -------------------------------------------------------------- */

int sp_metrics_new(sp_metrics **out) {
  sp_metrics *m = sp_calloc(1, sizeof *m);
  *out = m;
  return m ? 0 : SP_ERR_NOMEM;
}

static void family_free(sp_metrics_family *f) {
  for (size_t i = 0; i < f->nseries; i++)
    sp_free(f->series[i]);
  sp_free(f->series);
  sp_free(f);
}

void sp_metrics_free(sp_metrics *m) {
  if (m == NULL)
    return;
  for (size_t i = 0; i < m->n; i++)
    family_free(m->families[i]);
  sp_free(m->families);
  sp_free(m);
}

static int series_get(sp_metrics_family *f, const char *const *values, series **out);

static int add_family(sp_metrics *m, family_type type, const char *name, const char *help,
                      const char *const *label_names, size_t nlabels, const double *buckets,
                      size_t nbuckets, sp_metrics_family **out) {
  *out = NULL;
  if (m == NULL || !valid_metric_name(name) || strlen(name) > 200 || help == NULL ||
      *help == '\0' || !valid_utf8(help) || nlabels > SP_METRICS_MAX_LABELS ||
      (nlabels > 0 && label_names == NULL))
    return SP_ERR_INVAL;
  for (size_t i = 0; i < nlabels; i++) {
    if (!valid_label_name(label_names[i]) ||
        (type == T_HISTOGRAM && strcmp(label_names[i], "le") == 0))
      return SP_ERR_INVAL;
    for (size_t j = 0; j < i; j++)
      if (strcmp(label_names[i], label_names[j]) == 0)
        return SP_ERR_INVAL;
  }
  if (type == T_HISTOGRAM) {
    if (buckets == NULL) {
      buckets = sp_metrics_latency_buckets;
      nbuckets = sp_metrics_latency_buckets_len;
    }
    if (nbuckets < 1 || nbuckets > SP_METRICS_MAX_BUCKETS)
      return SP_ERR_INVAL;
    for (size_t i = 0; i < nbuckets; i++)
      if (!isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1]))
        return SP_ERR_INVAL;
  } else {
    nbuckets = 0;
  }
  if (name_taken(m, name, type))
    return SP_ERR_EXIST;

  if (m->n == m->cap) {
    size_t ncap = m->cap ? 2 * m->cap : 16;
    sp_metrics_family **p = sp_realloc(m->families, ncap * sizeof *p);
    if (p == NULL)
      return SP_ERR_NOMEM;
    m->families = p;
    m->cap = ncap;
  }

  /* One block: struct, bounds (aligned right after it), then the strings. */
  size_t head = (sizeof(sp_metrics_family) + alignof(double) - 1) & ~(alignof(double) - 1);
  size_t size = head + nbuckets * sizeof(double) + strlen(name) + 1 + strlen(help) + 1;
  for (size_t i = 0; i < nlabels; i++)
    size += strlen(label_names[i]) + 1;
  sp_metrics_family *f = sp_calloc(1, size);
  if (f == NULL)
    return SP_ERR_NOMEM;
  f->type = type;
  double *bounds = (double *)(void *)((char *)f + head);
  if (nbuckets)
    memcpy(bounds, buckets, nbuckets * sizeof(double));
  f->bounds = nbuckets ? bounds : NULL;
  f->nbounds = nbuckets;
  char *p = (char *)(bounds + nbuckets);
  size_t n = strlen(name) + 1;
  f->name = memcpy(p, name, n);
  p += n;
  n = strlen(help) + 1;
  f->help = memcpy(p, help, n);
  p += n;
  for (size_t i = 0; i < nlabels; i++) {
    n = strlen(label_names[i]) + 1;
    f->labels[i] = memcpy(p, label_names[i], n);
    p += n;
  }
  f->nlabels = nlabels;

  if (nlabels == 0) { /* the one series exists from the start */
    series *s;
    int rc = series_get(f, NULL, &s);
    if (rc) {
      family_free(f);
      return rc;
    }
  }
  m->families[m->n++] = f;
  *out = f;
  return 0;
}

int sp_metrics_add_counter(sp_metrics *m, const char *name, const char *help,
                           const char *const *label_names, size_t nlabels,
                           sp_metrics_family **out) {
  return add_family(m, T_COUNTER, name, help, label_names, nlabels, NULL, 0, out);
}

int sp_metrics_add_gauge(sp_metrics *m, const char *name, const char *help,
                         const char *const *label_names, size_t nlabels,
                         sp_metrics_family **out) {
  return add_family(m, T_GAUGE, name, help, label_names, nlabels, NULL, 0, out);
}

int sp_metrics_add_histogram(sp_metrics *m, const char *name, const char *help,
                             const char *const *label_names, size_t nlabels,
                             const double *buckets, size_t nbuckets,
                             sp_metrics_family **out) {
  return add_family(m, T_HISTOGRAM, name, help, label_names, nlabels, buckets, nbuckets, out);
}

/* --- series ----------------------------------------------------------------- */

static int cmp_values(const sp_metrics_family *f, const char *const *a, const char *const *b) {
  for (size_t i = 0; i < f->nlabels; i++) {
    int c = strcmp(a[i], b[i]);
    if (c)
      return c;
  }
  return 0;
}

/* Find or create; binary search keeps the array sorted for rendering. */
static int series_get(sp_metrics_family *f, const char *const *values, series **out) {
  if (f->nlabels > 0 && values == NULL)
    return SP_ERR_INVAL;
  for (size_t i = 0; i < f->nlabels; i++)
    if (values[i] == NULL || !valid_utf8(values[i]))
      return SP_ERR_INVAL;
  size_t lo = 0, hi = f->nseries;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = cmp_values(f, f->series[mid]->values, values);
    if (c == 0) {
      *out = f->series[mid];
      return 0;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (f->nseries >= SP_METRICS_MAX_SERIES)
    return SP_ERR_TOOBIG;
  if (f->nseries == f->cap) {
    size_t ncap = f->cap ? 2 * f->cap : 4;
    series **p = sp_realloc(f->series, ncap * sizeof *p);
    if (p == NULL)
      return SP_ERR_NOMEM;
    f->series = p;
    f->cap = ncap;
  }
  /* One block: struct, histogram counts, label value strings. */
  size_t ncounts = f->type == T_HISTOGRAM ? f->nbounds + 1 : 0;
  size_t size = sizeof(series) + ncounts * sizeof(uint64_t);
  for (size_t i = 0; i < f->nlabels; i++)
    size += strlen(values[i]) + 1;
  series *s = sp_calloc(1, size);
  if (s == NULL)
    return SP_ERR_NOMEM;
  uint64_t *counts = (uint64_t *)(void *)(s + 1);
  char *p = (char *)(counts + ncounts);
  for (size_t i = 0; i < f->nlabels; i++) {
    size_t n = strlen(values[i]) + 1;
    s->values[i] = memcpy(p, values[i], n);
    p += n;
  }
  if (f->type == T_HISTOGRAM) {
    s->u.hist.bounds = f->bounds;
    s->u.hist.nbounds = f->nbounds;
    s->u.hist.counts = counts;
  }
  memmove(f->series + lo + 1, f->series + lo, (f->nseries - lo) * sizeof *f->series);
  f->series[lo] = s;
  f->nseries++;
  *out = s;
  return 0;
}

static int get_typed(sp_metrics_family *f, family_type t, const char *const *values,
                     series **s) {
  *s = NULL;
  if (f == NULL || f->type != t)
    return SP_ERR_INVAL;
  return series_get(f, values, s);
}

int sp_metrics_counter(sp_metrics_family *f, const char *const *label_values,
                       sp_counter **out) {
  series *s;
  int rc = get_typed(f, T_COUNTER, label_values, &s);
  *out = rc ? NULL : &s->u.counter;
  return rc;
}

int sp_metrics_gauge(sp_metrics_family *f, const char *const *label_values, sp_gauge **out) {
  series *s;
  int rc = get_typed(f, T_GAUGE, label_values, &s);
  *out = rc ? NULL : &s->u.gauge;
  return rc;
}

int sp_metrics_histogram(sp_metrics_family *f, const char *const *label_values,
                         sp_histogram **out) {
  series *s;
  int rc = get_typed(f, T_HISTOGRAM, label_values, &s);
  *out = rc ? NULL : &s->u.hist;
  return rc;
}

int sp_metrics_gauge_fn(sp_metrics_family *f, const char *const *label_values,
                        sp_gauge_fn fn, void *arg) {
  sp_gauge *g;
  int rc = sp_metrics_gauge(f, label_values, &g);
  if (rc == 0) {
    g->fn = fn;
    g->arg = fn ? arg : NULL;
  }
  return rc;
}

/* --- hot path ----------------------------------------------------------------- */

void sp_counter_add(sp_counter *c, double v) {
  if (v > 0) /* false for NaN too: a counter never goes down */
    c->value += v;
}

double sp_counter_value(const sp_counter *c) { return c->value; }
void sp_gauge_set(sp_gauge *g, double v) { g->value = v; }
void sp_gauge_add(sp_gauge *g, double v) { g->value += v; }
double sp_gauge_value(const sp_gauge *g) { return g->fn ? g->fn(g->arg) : g->value; }

void sp_histogram_observe(sp_histogram *h, double v) {
  /* first bound >= v; NaN compares false everywhere and lands in +Inf */
  size_t lo = 0, hi = h->nbounds;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (v <= h->bounds[mid])
      hi = mid;
    else
      lo = mid + 1;
  }
  if (isnan(v))
    lo = h->nbounds;
  h->counts[lo]++;
  h->sum += v;
}

unsigned long long sp_histogram_bucket_count(const sp_histogram *h, size_t i) {
  unsigned long long n = 0;
  for (size_t k = 0; k <= i && k <= h->nbounds; k++)
    n += h->counts[k];
  return n;
}

double sp_histogram_sum(const sp_histogram *h) { return h->sum; }

unsigned long long sp_histogram_count(const sp_histogram *h) {
  return sp_histogram_bucket_count(h, h->nbounds);
}

/* --- rendering ------------------------------------------------------------------ */

/* Prometheus number text into buf (>= 40 bytes); returns buf. */
static const char *format_value(char *buf, size_t len, double v) {
  if (isnan(v))
    return "NaN";
  if (isinf(v))
    return v > 0 ? "+Inf" : "-Inf";
  if (v == 0)
    return "0"; /* also -0 */
  if (v == trunc(v) && fabs(v) < 1e15) {
    snprintf(buf, len, "%.0f", v);
    return buf;
  }
  /* the shortest %g precision that reads back as the same double */
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(buf, len, "%.*g", prec, v);
    if (strtod(buf, NULL) == v)
      break;
  }
  return buf;
}

int sp_metrics_format_value(sp_buf *out, double v) {
  char buf[40];
  return sp_buf_adds(out, format_value(buf, sizeof buf, v));
}

/* HELP escapes backslash and newline; label values also the double quote. */
static int add_escaped(sp_buf *out, const char *s, int quote) {
  int rc = 0;
  const char *run = s;
  for (; *s && rc == 0; s++) {
    const char *esc = NULL;
    if (*s == '\\')
      esc = "\\\\";
    else if (*s == '\n')
      esc = "\\n";
    else if (*s == '"' && quote)
      esc = "\\\"";
    if (esc) {
      if ((rc = sp_buf_add(out, run, (size_t)(s - run))) == 0)
        rc = sp_buf_adds(out, esc);
      run = s + 1;
    }
  }
  return rc ? rc : sp_buf_add(out, run, (size_t)(s - run));
}

/* `{a="x",b="y"}` plus an optional le="..." last; nothing for no labels. */
static int add_labels(sp_buf *out, const sp_metrics_family *f, const series *s,
                      const char *le) {
  if (f->nlabels == 0 && le == NULL)
    return 0;
  int rc = sp_buf_adds(out, "{");
  for (size_t i = 0; i < f->nlabels && rc == 0; i++) {
    if ((rc = sp_buf_addf(out, "%s%s=\"", i ? "," : "", f->labels[i])) == 0 &&
        (rc = add_escaped(out, s->values[i], 1)) == 0)
      rc = sp_buf_adds(out, "\"");
  }
  if (rc == 0 && le)
    rc = sp_buf_addf(out, "%sle=\"%s\"", f->nlabels ? "," : "", le);
  return rc ? rc : sp_buf_adds(out, "}");
}

static int add_sample(sp_buf *out, const sp_metrics_family *f, const series *s,
                      const char *suffix, const char *le, double v) {
  int rc;
  if ((rc = sp_buf_adds(out, f->name)) || (rc = sp_buf_adds(out, suffix)) ||
      (rc = add_labels(out, f, s, le)) || (rc = sp_buf_adds(out, " ")) ||
      (rc = sp_metrics_format_value(out, v)))
    return rc;
  return sp_buf_adds(out, "\n");
}

static int render_histogram(sp_buf *out, const sp_metrics_family *f, const series *s) {
  const sp_histogram *h = &s->u.hist;
  uint64_t cum = 0;
  char le[40];
  int rc = 0;
  for (size_t i = 0; i <= h->nbounds && rc == 0; i++) {
    cum += h->counts[i];
    const char *bound = i < h->nbounds ? format_value(le, sizeof le, h->bounds[i]) : "+Inf";
    rc = add_sample(out, f, s, "_bucket", bound, (double)cum);
  }
  if (rc == 0)
    rc = add_sample(out, f, s, "_sum", NULL, h->sum);
  if (rc == 0)
    rc = add_sample(out, f, s, "_count", NULL, (double)cum);
  return rc;
}

int sp_metrics_render(const sp_metrics *m, sp_buf *out) {
  for (size_t i = 0; i < m->n; i++) {
    const sp_metrics_family *f = m->families[i];
    if (f->nseries == 0)
      continue; /* a labelled family before its first series */
    int rc;
    if ((rc = sp_buf_addf(out, "# HELP %s ", f->name)) || (rc = add_escaped(out, f->help, 0)) ||
        (rc = sp_buf_addf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type])))
      return rc;
    for (size_t k = 0; k < f->nseries; k++) {
      const series *s = f->series[k];
      switch (f->type) {
      case T_COUNTER:
        rc = add_sample(out, f, s, "", NULL, s->u.counter.value);
        break;
      case T_GAUGE:
        rc = add_sample(out, f, s, "", NULL, sp_gauge_value(&s->u.gauge));
        break;
      case T_HISTOGRAM:
        rc = render_histogram(out, f, s);
        break;
      }
      if (rc)
        return rc;
    }
  }
  return 0;
}
