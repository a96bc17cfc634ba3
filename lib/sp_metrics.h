/* sp_metrics: a per-process registry of Prometheus metrics (counters, gauges,
 * histograms, each family with 0-8 labels) rendered in the text exposition
 * format 0.0.4 for /metrics.
 *
 * Model: a registry (sp_metrics_new; no global) holds families registered
 * once at start-up with a name, help text, type and label names.  A family
 * holds one series per combination of label values; getting a series
 * (sp_metrics_counter/gauge/histogram) finds or creates it by binary search
 * and returns a pointer that stays valid until sp_metrics_free, so hot paths
 * cache it and update with a plain add (sp_counter_add), no lookup.  A family
 * without labels has its one series from registration on, so it renders 0
 * before the first update; a labelled family renders nothing until its first
 * series exists.  A gauge series may instead carry a callback evaluated at
 * render time (pool sizes, queue depths owned by another module).
 *
 * Rendering writes families in registration order and series sorted by label
 * values: "# HELP" / "# TYPE" lines, label values escaped (\\, \", \n),
 * histograms as cumulative _bucket{le="..."} lines ending in le="+Inf", then
 * _sum and _count.  Numbers: integers without exponent, other values in the
 * shortest form that reads back exactly, NaN, +Inf, -Inf.
 *
 * Not thread-safe: a registry belongs to one loop thread.  Memory: the
 * registry owns every family, series and copied string; nothing returned to
 * callers needs freeing on its own.  Names follow Prometheus: metric names
 * [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* not starting
 * with "__" ("le" is reserved in histograms); by convention counters end in
 * _total and carry base units (_seconds, _bytes), which promtool checks.
 */
#ifndef SP_METRICS_H
#define SP_METRICS_H

#include "sp_buf.h"

#include <stddef.h>

#define SP_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define SP_METRICS_MAX_LABELS 8
#define SP_METRICS_MAX_BUCKETS 64
#define SP_METRICS_MAX_SERIES 10000 /* per family: caps label cardinality */

typedef struct sp_metrics sp_metrics;
typedef struct sp_metrics_family sp_metrics_family;
typedef struct sp_counter sp_counter;
typedef struct sp_gauge sp_gauge;
typedef struct sp_histogram sp_histogram;

/* Render-time gauge value; must not touch the registry. */
typedef double (*sp_gauge_fn)(void *arg);

/* Latency buckets in seconds, 0.5 ms to 10 s: the default histogram layout. */
extern const double sp_metrics_latency_buckets[];
extern const size_t sp_metrics_latency_buckets_len;

/* New empty registry in *out; free with sp_metrics_free.  0 or SP_ERR_NOMEM. */
int sp_metrics_new(sp_metrics **out);
/* Frees the registry and every family and series (cached pointers die).
 * NULL is a no-op. */
void sp_metrics_free(sp_metrics *m);

/* Register a family.  `name` and `help` (non-empty, valid UTF-8) and the
 * `nlabels` label names are copied.  *out (owned by the registry) is the
 * handle for getting series.
 * Returns 0; SP_ERR_INVAL (bad name or one over 200 bytes, label name, help, more than
 * SP_METRICS_MAX_LABELS labels, duplicate label names, "le" on a histogram,
 * bad buckets); SP_ERR_EXIST (a family already exposes this name, counting a
 * histogram's _bucket/_sum/_count); SP_ERR_NOMEM. */
int sp_metrics_add_counter(sp_metrics *m, const char *name, const char *help,
                           const char *const *label_names, size_t nlabels,
                           sp_metrics_family **out);
int sp_metrics_add_gauge(sp_metrics *m, const char *name, const char *help,
                         const char *const *label_names, size_t nlabels,
                         sp_metrics_family **out);
/* `buckets`: 1..SP_METRICS_MAX_BUCKETS finite upper bounds, strictly
 * increasing (copied; +Inf is implicit), or NULL for
 * sp_metrics_latency_buckets. */
int sp_metrics_add_histogram(sp_metrics *m, const char *name, const char *help,
                             const char *const *label_names, size_t nlabels,
                             const double *buckets, size_t nbuckets,
                             sp_metrics_family **out);

/* The series of family `f` for `label_values` (one UTF-8 string per label
 * name, in registration order; NULL when the family has no labels), created
 * on first use.  *out lives as long as the registry.
 * Returns 0; SP_ERR_INVAL (family of another type, NULL or invalid UTF-8
 * value); SP_ERR_TOOBIG (family already has SP_METRICS_MAX_SERIES series);
 * SP_ERR_NOMEM. */
int sp_metrics_counter(sp_metrics_family *f, const char *const *label_values,
                       sp_counter **out);
int sp_metrics_gauge(sp_metrics_family *f, const char *const *label_values, sp_gauge **out);
int sp_metrics_histogram(sp_metrics_family *f, const char *const *label_values,
                         sp_histogram **out);
/* Make the gauge series for `label_values` report fn(arg) at render time
 * (fn NULL: back to its stored value).  `arg` is borrowed and must outlive
 * the registry or the binding.  Returns as sp_metrics_gauge. */
int sp_metrics_gauge_fn(sp_metrics_family *f, const char *const *label_values,
                        sp_gauge_fn fn, void *arg);

/* Hot path: no lookup, no allocation, no failure. */
void sp_counter_add(sp_counter *c, double v); /* v < 0 or NaN is ignored */
double sp_counter_value(const sp_counter *c);
void sp_gauge_set(sp_gauge *g, double v);
void sp_gauge_add(sp_gauge *g, double v);
double sp_gauge_value(const sp_gauge *g); /* fn(arg) when a callback is bound */
void sp_histogram_observe(sp_histogram *h, double v);
/* Cumulative count of observations <= the i-th bound (i == nbuckets: all). */
unsigned long long sp_histogram_bucket_count(const sp_histogram *h, size_t i);
double sp_histogram_sum(const sp_histogram *h);
unsigned long long sp_histogram_count(const sp_histogram *h);

/* Append the whole registry in text format 0.0.4 to `out`.
 * 0, SP_ERR_TOOBIG (out's cap reached) or SP_ERR_NOMEM; on failure `out`
 * holds a partial rendering the caller discards (sp_buf_reset). */
int sp_metrics_render(const sp_metrics *m, sp_buf *out);

/* Append `v` as Prometheus prints numbers (see above).  0, TOOBIG, NOMEM. */
int sp_metrics_format_value(sp_buf *out, double v);

#endif
