/* Unit tests for crdt/: the hybrid logical clock (wall clock jumping both
 * ways, the drift guard), vector clocks and their encoding, LWW registers,
 * causal-length existence (resurrection, delete-then-recreate), the
 * grow-only set, deltas and their encoding (malformed input), tombstone GC at
 * causal stability, digests, ids, and allocation-failure sweeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"

/* ---- a failing allocator ----------------------------------------------- */
typedef struct failalloc {
  long allowed; /* allocations left before failing; -1 = never fail */
  long count;
} failalloc;

static void *fa_malloc(size_t n, void *ctx) {
  failalloc *f = ctx;
  f->count++;
  if (f->allowed >= 0 && f->allowed-- == 0) {
    f->allowed = 0;
    return NULL;
  }
  return malloc(n);
}
static void *fa_realloc(void *p, size_t n, void *ctx) {
  failalloc *f = ctx;
  f->count++;
  if (f->allowed >= 0 && f->allowed-- == 0) {
    f->allowed = 0;
    return NULL;
  }
  return realloc(p, n);
}
static void fa_free(void *p, void *ctx) {
  (void)ctx;
  free(p);
}

/* ---- helpers ---------------------------------------------------------------- */
static crdt_change field_change(const char *page, const char *type, const char *id,
                                const char *fieldname, const char *value, crdt_hlc hlc,
                                crdt_region region, uint64_t seq) {
  crdt_change c;
  memset(&c, 0, sizeof c);
  c.kind = CRDT_FIELD;
  c.page = page;
  c.type = type;
  c.id = id;
  c.field = fieldname;
  c.value = (const uint8_t *)value;
  c.value_len = value ? strlen(value) : 0;
  c.value_null = value == NULL;
  c.cl = 1; /* written in the entity's first life */
  c.stamp.hlc = hlc;
  c.stamp.region = region;
  c.origin = region;
  c.seq = seq;
  return c;
}

static crdt_change exist_change(const char *page, const char *type, const char *id, uint32_t cl,
                                crdt_hlc hlc, crdt_region region, uint64_t seq) {
  crdt_change c;
  memset(&c, 0, sizeof c);
  c.kind = CRDT_EXIST;
  c.page = page;
  c.type = type;
  c.id = id;
  c.cl = cl;
  c.stamp.hlc = hlc;
  c.stamp.region = region;
  c.origin = region;
  c.seq = seq;
  return c;
}

static const char *get_str(crdt_doc *d, const char *id, const char *fieldname) {
  static char buf[256];
  const uint8_t *v;
  size_t n;
  if (crdt_doc_field(d, "p", "component", id, fieldname, &v, &n, NULL) != 0)
    return "<none>";
  if (v == NULL)
    return "<null>";
  snprintf(buf, sizeof buf, "%.*s", (int)n, (const char *)v);
  return buf;
}

#define H(ms, l) CRDT_HLC_MAKE(ms, l)

/* ---- HLC -------------------------------------------------------------------- */
static void test_hlc_monotonic_when_wall_steps_back(void **s) {
  (void)s;
  crdt_clock c;
  crdt_clock_init(&c, 500, 0);
  crdt_hlc a = crdt_clock_now(&c, 1000);
  assert_int_equal(CRDT_HLC_MS(a), 1000);
  assert_int_equal(CRDT_HLC_LOGICAL(a), 0);
  crdt_hlc b = crdt_clock_now(&c, 1000);
  assert_true(b > a);
  crdt_hlc x = crdt_clock_now(&c, 400); /* wall clock stepped back 600 ms */
  assert_true(x > b);
  assert_int_equal(CRDT_HLC_MS(x), 1000);
  crdt_hlc y = crdt_clock_now(&c, 5000); /* and forward */
  assert_int_equal(y, H(5000, 0));
  /* counter exhaustion borrows the next millisecond, still monotonic */
  crdt_clock_init(&c, 500, H(7000, 0xfffe));
  crdt_hlc p = crdt_clock_now(&c, 7000);
  crdt_hlc q = crdt_clock_now(&c, 7000);
  assert_int_equal(p, H(7000, 0xffff));
  assert_int_equal(q, H(7001, 0));
}

static void test_hlc_receive_and_drift_guard(void **s) {
  (void)s;
  crdt_clock c;
  crdt_clock_init(&c, 500, 0);
  crdt_clock_now(&c, 10000);
  /* a remote stamp 300 ms ahead is within the bound: adopted */
  assert_int_equal(crdt_clock_observe(&c, H(10300, 5), 10000), 0);
  assert_true(crdt_clock_now(&c, 10000) > H(10300, 5));
  /* exactly at the bound is accepted, one ms past it is refused */
  assert_int_equal(crdt_clock_check(&c, H(10500, 0), 10000), 0);
  assert_int_equal(crdt_clock_check(&c, H(10501, 0), 10000), SP_ERR_SKEW);
  /* a rogue stamp 1 h ahead is refused and never feeds the clock */
  crdt_hlc before = c.last;
  assert_int_equal(crdt_clock_observe(&c, H(10000 + 3600000, 0), 10000), SP_ERR_SKEW);
  assert_int_equal(c.last, before);
  crdt_hlc next = crdt_clock_now(&c, 10001);
  assert_true(CRDT_HLC_MS(next) < 10000 + 1000);
  /* stamps in the past are always fine */
  assert_int_equal(crdt_clock_observe(&c, H(1, 0), 10000), 0);
  assert_int_equal(c.last, next);
}

static void test_stamp_order(void **s) {
  (void)s;
  crdt_stamp a = {H(5, 0), 2}, b = {H(5, 0), 3}, c = {H(5, 1), 0};
  assert_true(crdt_stamp_cmp(a, b) < 0);
  assert_true(crdt_stamp_cmp(b, c) < 0);
  assert_true(crdt_stamp_cmp(c, a) > 0);
  assert_int_equal(crdt_stamp_cmp(a, a), 0);
}

/* ---- vector clocks -------------------------------------------------------- */
static void test_vclock_ops(void **s) {
  (void)s;
  crdt_vclock a, b;
  crdt_vclock_init(&a);
  crdt_vclock_init(&b);
  assert_int_equal(crdt_vclock_compare(&a, &b), CRDT_EQUAL);
  assert_int_equal(crdt_vclock_increment(&a, 1), 1);
  assert_int_equal(crdt_vclock_compare(&a, &b), CRDT_AFTER);
  assert_int_equal(crdt_vclock_compare(&b, &a), CRDT_BEFORE);
  crdt_vclock_increment(&b, 2);
  assert_int_equal(crdt_vclock_compare(&a, &b), CRDT_CONCURRENT);
  crdt_vclock m = a;
  crdt_vclock_merge(&m, &b);
  assert_int_equal(m.seq[1], 1);
  assert_int_equal(m.seq[2], 1);
  assert_int_equal(crdt_vclock_compare(&m, &a), CRDT_AFTER);
  crdt_vclock_min(&m, &a);
  assert_int_equal(crdt_vclock_compare(&m, &a), CRDT_EQUAL);
  assert_true(crdt_vclock_covers(&b, 2, 1));
  assert_false(crdt_vclock_covers(&b, 2, 2));
  assert_false(crdt_vclock_covers(&b, 99, 0));
  assert_int_equal(crdt_vclock_increment(&b, CRDT_MAX_REGIONS), 0);
}

static void test_vclock_encoding(void **s) {
  (void)s;
  crdt_vclock v, w;
  crdt_vclock_init(&v);
  v.seq[0] = 1;
  v.seq[5] = 300;
  v.seq[63] = UINT64_MAX;
  uint8_t buf[700];
  int n = crdt_vclock_encode(&v, buf, sizeof buf);
  assert_true(n > 0);
  assert_true((size_t)n <= crdt_vclock_encoded_size(&v));
  assert_int_equal(crdt_vclock_encode(&v, buf, 3), SP_ERR_TOOBIG);
  assert_int_equal(crdt_vclock_decode(&w, buf, (size_t)n), 0);
  assert_int_equal(crdt_vclock_compare(&v, &w), CRDT_EQUAL);
  /* every truncation is rejected and leaves the output alone */
  for (int len = 0; len < n; len++) {
    crdt_vclock_init(&w);
    w.seq[7] = 77;
    assert_int_not_equal(crdt_vclock_decode(&w, buf, (size_t)len), 0);
    assert_int_equal(w.seq[7], 77);
  }
  uint8_t bad_version[] = {2, 0};
  assert_int_equal(crdt_vclock_decode(&w, bad_version, 2), SP_ERR_PROTO);
  uint8_t too_many[] = {1, 65};
  assert_int_equal(crdt_vclock_decode(&w, too_many, 2), SP_ERR_PARSE);
  uint8_t bad_region[] = {1, 1, 64, 1};
  assert_int_equal(crdt_vclock_decode(&w, bad_region, 4), SP_ERR_PARSE);
  uint8_t unsorted[] = {1, 2, 5, 1, 3, 1};
  assert_int_equal(crdt_vclock_decode(&w, unsorted, 6), SP_ERR_PARSE);
  uint8_t trailing[] = {1, 1, 3, 1, 0};
  assert_int_equal(crdt_vclock_decode(&w, trailing, 5), SP_ERR_PARSE);
  uint8_t overflow[] = {1, 1, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
  assert_int_equal(crdt_vclock_decode(&w, overflow, sizeof overflow), SP_ERR_PARSE);
}

/* ---- LWW registers and entities ------------------------------------------ */
static void test_lww_register_total_order(void **s) {
  (void)s;
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  crdt_change c1 = field_change("p", "component", "c1", "status", "operational", H(100, 0), 1, 1);
  crdt_change c2 = field_change("p", "component", "c1", "status", "major_outage", H(100, 0), 2, 1);
  crdt_change c3 = field_change("p", "component", "c1", "status", "degraded", H(99, 9), 3, 1);
  assert_int_equal(crdt_doc_merge(d, &c1), 1);
  assert_int_equal(crdt_doc_merge(d, &c3), 0); /* older stamp loses */
  assert_int_equal(crdt_doc_merge(d, &c2), 1); /* same hlc, higher region wins */
  assert_int_equal(crdt_doc_merge(d, &c1), 0);
  assert_int_equal(crdt_doc_merge(d, &c2), 0); /* idempotent */
  assert_string_equal(get_str(d, "c1", "status"), "major_outage");
  /* NULL is a value like any other */
  crdt_change cn = field_change("p", "component", "c1", "description", NULL, H(200, 0), 1, 2);
  assert_int_equal(crdt_doc_merge(d, &cn), 1);
  assert_string_equal(get_str(d, "c1", "description"), "<null>");
  /* an empty string is a value, not NULL (a new register and an existing one) */
  crdt_change ce = field_change("p", "component", "c1", "group_id", "", H(200, 0), 1, 3);
  assert_int_equal(crdt_doc_merge(d, &ce), 1);
  assert_string_equal(get_str(d, "c1", "group_id"), "");
  crdt_change ce2 = field_change("p", "component", "c1", "description", "", H(201, 0), 1, 4);
  assert_int_equal(crdt_doc_merge(d, &ce2), 1);
  assert_string_equal(get_str(d, "c1", "description"), "");
  crdt_doc_free(d);
}

static void test_transaction_fields_win_or_lose_together(void **s) {
  (void)s;
  /* Two transactions write name+status; whichever stamp is higher wins both
   * fields on every replica, whatever the arrival order. */
  crdt_change t1[] = {field_change("p", "component", "c", "name", "API", H(50, 1), 1, 1),
                      field_change("p", "component", "c", "status", "degraded", H(50, 1), 1, 2)};
  crdt_change t2[] = {field_change("p", "component", "c", "name", "Api v2", H(50, 0), 2, 1),
                      field_change("p", "component", "c", "status", "operational", H(50, 0), 2, 2)};
  crdt_change *order[2][4] = {{&t1[0], &t2[0], &t2[1], &t1[1]}, {&t2[1], &t1[0], &t2[0], &t1[1]}};
  for (int o = 0; o < 2; o++) {
    crdt_doc *d;
    assert_int_equal(crdt_doc_new(NULL, &d), 0);
    for (int i = 0; i < 4; i++)
      assert_true(crdt_doc_merge(d, order[o][i]) >= 0);
    assert_string_equal(get_str(d, "c", "name"), "API");
    assert_string_equal(get_str(d, "c", "status"), "degraded");
    crdt_doc_free(d);
  }
}

static void test_delayed_update_never_resurrects(void **s) {
  (void)s;
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  crdt_change create = exist_change("p", "component", "c", 1, H(10, 0), 1, 1);
  crdt_change upd_old = field_change("p", "component", "c", "status", "degraded", H(15, 0), 2, 1);
  crdt_change del = exist_change("p", "component", "c", 2, H(20, 0), 1, 2);
  crdt_change upd_new = field_change("p", "component", "c", "status", "major", H(30, 0), 3, 1);
  assert_int_equal(crdt_doc_merge(d, &create), 1);
  assert_int_equal(crdt_doc_merge(d, &del), 1);
  assert_false(crdt_doc_alive(d, "p", "component", "c"));
  /* an older write delivered late, and even a newer concurrent field write
   * (both from the first life), do not bring the entity back */
  assert_int_equal(crdt_doc_merge(d, &upd_old), 0);
  assert_int_equal(crdt_doc_merge(d, &upd_new), 0);
  assert_false(crdt_doc_alive(d, "p", "component", "c"));
  assert_int_equal(crdt_doc_field(d, "p", "component", "c", "status", NULL, NULL, NULL),
                   SP_ERR_NOENT);
  /* nor does a stale create delivered again */
  assert_int_equal(crdt_doc_merge(d, &create), 0);
  assert_false(crdt_doc_alive(d, "p", "component", "c"));
  uint32_t cl;
  assert_int_equal(crdt_doc_cl(d, "p", "component", "c", &cl), 0);
  assert_int_equal(cl, 2);
  crdt_doc_free(d);
}

static void test_delete_drops_fields_of_the_old_life(void **s) {
  (void)s;
  crdt_change create = exist_change("p", "component", "c", 1, H(10, 0), 1, 1);
  crdt_change name1 = field_change("p", "component", "c", "name", "old", H(10, 0), 1, 2);
  crdt_change desc1 = field_change("p", "component", "c", "description", "old", H(10, 0), 1, 3);
  crdt_change del = exist_change("p", "component", "c", 2, H(20, 0), 2, 1);
  crdt_change recreate = exist_change("p", "component", "c", 3, H(30, 0), 1, 4);
  crdt_change name3 = field_change("p", "component", "c", "name", "new", H(30, 0), 1, 5);
  name3.cl = 3;
  /* replica A sees everything in order; replica B gets the new life first */
  const crdt_change *a[] = {&create, &name1, &desc1, &del, &recreate, &name3};
  const crdt_change *b[] = {&name3, &recreate, &desc1, &create, &del, &name1};
  crdt_doc *da, *db;
  assert_int_equal(crdt_doc_new(NULL, &da), 0);
  assert_int_equal(crdt_doc_new(NULL, &db), 0);
  for (int i = 0; i < 6; i++) {
    assert_true(crdt_doc_merge(da, a[i]) >= 0);
    assert_true(crdt_doc_merge(db, b[i]) >= 0);
  }
  crdt_doc *docs[] = {da, db};
  for (int k = 0; k < 2; k++) {
    const uint8_t *v;
    size_t n;
    assert_true(crdt_doc_alive(docs[k], "p", "component", "c"));
    assert_int_equal(crdt_doc_field(docs[k], "p", "component", "c", "name", &v, &n, NULL), 0);
    assert_memory_equal(v, "new", 3);
    /* the description belonged to the deleted life */
    assert_int_equal(crdt_doc_field(docs[k], "p", "component", "c", "description", NULL, NULL,
                                    NULL),
                     SP_ERR_NOENT);
  }
  uint8_t ga[32], gb[32];
  assert_int_equal(crdt_doc_digest(da, ga), 0);
  assert_int_equal(crdt_doc_digest(db, gb), 0);
  assert_memory_equal(ga, gb, 32);
  crdt_doc_free(da);
  crdt_doc_free(db);
}

static void test_delete_then_recreate(void **s) {
  (void)s;
  crdt_change create = exist_change("p", "component", "c", 1, H(10, 0), 1, 1);
  crdt_change del = exist_change("p", "component", "c", 2, H(20, 0), 2, 1);
  /* the re-create has an OLDER hlc than the delete (skewed clock) but a
   * higher causal length: an explicit re-create after seeing the delete wins */
  crdt_change recreate = exist_change("p", "component", "c", 3, H(19, 0), 3, 1);
  crdt_change concurrent_del = exist_change("p", "component", "c", 2, H(25, 0), 1, 2);
  const crdt_change *orders[3][4] = {{&create, &del, &recreate, &concurrent_del},
                                     {&recreate, &concurrent_del, &del, &create},
                                     {&concurrent_del, &create, &recreate, &del}};
  for (int o = 0; o < 3; o++) {
    crdt_doc *d;
    assert_int_equal(crdt_doc_new(NULL, &d), 0);
    for (int i = 0; i < 4; i++)
      assert_true(crdt_doc_merge(d, orders[o][i]) >= 0);
    assert_true(crdt_doc_alive(d, "p", "component", "c"));
    uint32_t cl;
    assert_int_equal(crdt_doc_cl(d, "p", "component", "c", &cl), 0);
    assert_int_equal(cl, 3);
    crdt_doc_free(d);
  }
}

static void test_grow_only_set(void **s) {
  (void)s;
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  assert_int_equal(crdt_doc_grow_only(d, "incident_update"), 0);
  assert_int_equal(crdt_doc_grow_only(d, "incident_update"), 0);
  crdt_change add = exist_change("p", "incident_update", "u1", 1, H(10, 0), 1, 1);
  crdt_change body = field_change("p", "incident_update", "u1", "body", "Investigating", H(10, 0), 1, 2);
  crdt_change edit = field_change("p", "incident_update", "u1", "body", "Identified", H(12, 0), 2, 1);
  crdt_change del = exist_change("p", "incident_update", "u1", 2, H(20, 0), 2, 2);
  assert_int_equal(crdt_doc_merge(d, &edit), 1); /* an edit may arrive first */
  assert_int_equal(crdt_doc_merge(d, &add), 1);
  assert_int_equal(crdt_doc_merge(d, &body), 0);
  assert_int_equal(crdt_doc_merge(d, &del), SP_ERR_INVAL);
  assert_true(crdt_doc_alive(d, "p", "incident_update", "u1"));
  const uint8_t *v;
  size_t n;
  assert_int_equal(crdt_doc_field(d, "p", "incident_update", "u1", "body", &v, &n, NULL), 0);
  assert_memory_equal(v, "Identified", n);
  crdt_doc_free(d);
}

static void test_malformed_changes_rejected(void **s) {
  (void)s;
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  crdt_change c = field_change("p", "component", "c", "name", "x", H(1, 0), 1, 1);
  crdt_change bad = c;
  bad.page = NULL;
  assert_int_equal(crdt_doc_merge(d, &bad), SP_ERR_INVAL);
  bad = c;
  bad.field = "";
  assert_int_equal(crdt_doc_merge(d, &bad), SP_ERR_INVAL);
  char longname[CRDT_MAX_NAME + 2];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  bad = c;
  bad.id = longname;
  assert_int_equal(crdt_doc_merge(d, &bad), SP_ERR_TOOBIG);
  bad = c;
  bad.value_len = CRDT_MAX_VALUE + 1;
  assert_int_equal(crdt_doc_merge(d, &bad), SP_ERR_TOOBIG);
  bad = c;
  bad.stamp.region = CRDT_MAX_REGIONS;
  assert_int_equal(crdt_doc_merge(d, &bad), SP_ERR_INVAL);
  bad = c;
  bad.kind = (crdt_change_kind)9;
  assert_int_equal(crdt_doc_merge(d, &bad), SP_ERR_INVAL);
  crdt_change e0 = exist_change("p", "component", "c", 0, H(1, 0), 1, 1);
  assert_int_equal(crdt_doc_merge(d, &e0), SP_ERR_INVAL);
  assert_int_equal(crdt_doc_entity_count(d), 0);
  crdt_doc_free(d);
}

/* ---- deltas ---------------------------------------------------------------- */
static void build_delta(crdt_delta *dl) {
  crdt_change cs[] = {
      exist_change("page1", "component", "c1", 1, H(100, 0), 1, 1),
      field_change("page1", "component", "c1", "name", "API", H(100, 0), 1, 2),
      field_change("page1", "component", "c1", "description", NULL, H(100, 0), 1, 3),
      field_change("page1", "incident", "i1", "body", "", H(101, 7), 2, 1),
  };
  for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
    assert_int_equal(crdt_delta_add(dl, &cs[i]), 0);
  /* a binary value with NUL bytes */
  crdt_change bin = field_change("page1", "incident", "i1", "blob", NULL, H(102, 0), 3, 9);
  static const uint8_t blob[] = {0, 1, 2, 0, 255};
  bin.value = blob;
  bin.value_len = sizeof blob;
  bin.value_null = 0;
  assert_int_equal(crdt_delta_add(dl, &bin), 0);
}

static void test_delta_roundtrip(void **s) {
  (void)s;
  crdt_delta *a, *b;
  assert_int_equal(crdt_delta_new(NULL, &a), 0);
  assert_int_equal(crdt_delta_new(NULL, &b), 0);
  build_delta(a);
  uint8_t *enc;
  size_t len;
  assert_int_equal(crdt_delta_encode(a, &enc, &len), 0);
  assert_int_equal(crdt_delta_decode(b, enc, len), 0);
  assert_int_equal(crdt_delta_count(b), crdt_delta_count(a));
  for (size_t i = 0; i < crdt_delta_count(a); i++) {
    const crdt_change *x = crdt_delta_get(a, i), *y = crdt_delta_get(b, i);
    assert_int_equal(x->kind, y->kind);
    assert_string_equal(x->page, y->page);
    assert_string_equal(x->type, y->type);
    assert_string_equal(x->id, y->id);
    if (x->kind == CRDT_FIELD) {
      assert_string_equal(x->field, y->field);
      assert_int_equal(x->value_null, y->value_null);
      assert_int_equal(x->value_len, y->value_len);
      if (x->value_len)
        assert_memory_equal(x->value, y->value, x->value_len);
    } else {
      assert_int_equal(x->cl, y->cl);
    }
    assert_int_equal(x->stamp.hlc, y->stamp.hlc);
    assert_int_equal(x->stamp.region, y->stamp.region);
    assert_int_equal(x->origin, y->origin);
    assert_int_equal(x->seq, y->seq);
  }
  assert_null(crdt_delta_get(a, crdt_delta_count(a)));
  /* re-encoding the decoded delta gives the same bytes */
  uint8_t *enc2;
  size_t len2;
  assert_int_equal(crdt_delta_encode(b, &enc2, &len2), 0);
  assert_int_equal(len, len2);
  assert_memory_equal(enc, enc2, len);
  crdt_free_bytes(NULL, enc2);

  /* every truncation fails and leaves b as it was */
  size_t before = crdt_delta_count(b);
  for (size_t n = 0; n < len; n++)
    assert_int_not_equal(crdt_delta_decode(b, enc, n), 0);
  assert_int_equal(crdt_delta_count(b), before);
  /* wrong magic / version */
  enc[3] = 2;
  assert_int_equal(crdt_delta_decode(b, enc, len), SP_ERR_PROTO);
  enc[3] = 1;
  enc[0] = 'X';
  assert_int_equal(crdt_delta_decode(b, enc, len), SP_ERR_PROTO);
  enc[0] = 'C';
  /* trailing garbage */
  uint8_t *longer = malloc(len + 1);
  memcpy(longer, enc, len);
  longer[len] = 0;
  assert_int_equal(crdt_delta_decode(b, longer, len + 1), SP_ERR_PARSE);
  free(longer);
  assert_int_equal(crdt_delta_count(b), before);
  crdt_free_bytes(NULL, enc);
  crdt_delta_free(a);
  crdt_delta_free(b);
}

static void test_delta_decode_rejects_lies(void **s) {
  (void)s;
  crdt_delta *d;
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  /* a count of 2^60 changes in a 10-byte message */
  uint8_t huge_count[] = {'C', 'D', 'L', 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10};
  assert_int_equal(crdt_delta_decode(d, huge_count, sizeof huge_count), SP_ERR_PARSE);
  /* a name length far past the end */
  uint8_t long_name[] = {'C', 'D', 'L', 1, 1, 1, 0x7f, 'p', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  assert_int_equal(crdt_delta_decode(d, long_name, sizeof long_name), SP_ERR_PARSE);
  /* an unknown kind */
  uint8_t bad_kind[] = {'C', 'D', 'L', 1, 1, 7, 1, 'p', 1, 't', 1, 'i', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  assert_int_equal(crdt_delta_decode(d, bad_kind, sizeof bad_kind), SP_ERR_PARSE);
  /* a value claiming 2 GiB */
  uint8_t big_value[] = {'C', 'D', 'L', 1, 1, 1, 1, 'p', 1, 't', 1, 'i', 1, 'f', 0,
                         0x80, 0x80, 0x80, 0x80, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  assert_int_equal(crdt_delta_decode(d, big_value, sizeof big_value), SP_ERR_TOOBIG);
  /* a control byte in a name */
  uint8_t ctl[] = {'C', 'D', 'L', 1, 1, 2, 1, 'p', 1, 't', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  assert_int_equal(sizeof ctl, 24);
  assert_int_equal(crdt_delta_decode(d, ctl, sizeof ctl), SP_ERR_PARSE);
  assert_int_equal(crdt_delta_count(d), 0);
  crdt_delta_free(d);
}

static void collect_changed(const crdt_change *c, void *arg) {
  int *n = arg;
  (void)c;
  (*n)++;
}

static void test_merge_delta_reports_exactly_changed(void **s) {
  (void)s;
  crdt_doc *d;
  crdt_delta *dl;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  assert_int_equal(crdt_delta_new(NULL, &dl), 0);
  build_delta(dl);
  int n = 0;
  assert_int_equal(crdt_doc_merge_delta(d, dl, collect_changed, &n), 0);
  assert_int_equal(n, (int)crdt_delta_count(dl));
  n = 0;
  assert_int_equal(crdt_doc_merge_delta(d, dl, collect_changed, &n), 0);
  assert_int_equal(n, 0); /* nothing changes the second time */
  crdt_delta_clear(dl);
  crdt_change win = field_change("page1", "component", "c1", "name", "API v2", H(200, 0), 2, 5);
  crdt_change lose = field_change("page1", "component", "c1", "description", "old", H(50, 0), 2, 6);
  assert_int_equal(crdt_delta_add(dl, &win), 0);
  assert_int_equal(crdt_delta_add(dl, &lose), 0);
  n = 0;
  assert_int_equal(crdt_doc_merge_delta(d, dl, collect_changed, &n), 0);
  assert_int_equal(n, 1);
  crdt_delta_free(dl);
  crdt_doc_free(d);
}

/* ---- GC -------------------------------------------------------------------- */
static void record_gc(const crdt_change *c, void *arg) {
  char *out = arg;
  strcat(out, c->id);
  strcat(out, ";");
}

static void test_gc_only_at_causal_stability(void **s) {
  (void)s;
  /* three regions 0,1,2; region 0 deletes c (its seq 5) */
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  crdt_change create = exist_change("p", "component", "c", 1, H(10, 0), 1, 1);
  crdt_change del = exist_change("p", "component", "c", 2, H(20, 0), 0, 5);
  crdt_change alive = exist_change("p", "component", "keep", 1, H(10, 0), 1, 2);
  assert_int_equal(crdt_doc_merge(d, &create), 1);
  assert_int_equal(crdt_doc_merge(d, &alive), 1);
  assert_int_equal(crdt_doc_merge(d, &del), 1);
  crdt_vclock acks[3];
  for (int i = 0; i < 3; i++)
    crdt_vclock_init(&acks[i]);
  acks[0].seq[0] = 5;
  acks[0].seq[1] = 2;
  acks[1].seq[0] = 5;
  acks[1].seq[1] = 4; /* region 1 wrote seq 3,4 before it saw the delete */
  acks[2].seq[0] = 4; /* region 2 has not applied the delete yet */
  acks[2].seq[1] = 2;
  char got[256] = "";
  assert_int_equal(crdt_doc_gc(d, acks, 3, record_gc, got), 0);
  assert_string_equal(got, "");
  assert_int_equal(crdt_doc_entity_count(d), 2);
  /* now everyone has the delete, but region 1's writes 3..4 are not yet
   * everywhere: not stable */
  acks[2].seq[0] = 5;
  assert_int_equal(crdt_doc_gc(d, acks, 3, record_gc, got), 0);
  assert_int_equal(crdt_doc_entity_count(d), 2);
  /* region 1 keeps writing after it saw the delete: not needed for stability */
  acks[1].seq[1] = 9;
  acks[0].seq[1] = 4;
  acks[2].seq[1] = 4;
  assert_int_equal(crdt_doc_gc(d, acks, 3, record_gc, got), 1);
  assert_string_equal(got, "c;");
  assert_int_equal(crdt_doc_entity_count(d), 1);
  assert_true(crdt_doc_alive(d, "p", "component", "keep"));
  assert_int_equal(crdt_doc_gc(d, acks, 0, NULL, NULL), SP_ERR_INVAL);
  crdt_doc_free(d);
}

/* A type declared with crdt_doc_gc_keep keeps its tombstones: its ids are
 * chosen, and a create after collection would lose to an uncollected
 * tombstone elsewhere. */
static void test_gc_keep_types(void **s) {
  (void)s;
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  assert_int_equal(crdt_doc_gc_keep(d, "domain"), 0);
  assert_int_equal(crdt_doc_gc_keep(d, "domain"), 0); /* twice is harmless */
  assert_int_equal(crdt_doc_gc_keep(d, ""), SP_ERR_INVAL);
  crdt_change c1 = exist_change("p", "domain", "x", 1, H(10, 0), 0, 1);
  crdt_change d1 = exist_change("p", "domain", "x", 2, H(11, 0), 0, 2);
  crdt_change c2 = exist_change("p", "component", "y", 1, H(10, 0), 0, 3);
  crdt_change d2 = exist_change("p", "component", "y", 2, H(11, 0), 0, 4);
  assert_int_equal(crdt_doc_merge(d, &c1), 1);
  assert_int_equal(crdt_doc_merge(d, &d1), 1);
  assert_int_equal(crdt_doc_merge(d, &c2), 1);
  assert_int_equal(crdt_doc_merge(d, &d2), 1);
  crdt_vclock acks[1];
  crdt_vclock_init(&acks[0]);
  acks[0].seq[0] = 4;
  char got[64] = "";
  assert_int_equal(crdt_doc_gc(d, acks, 1, record_gc, got), 1);
  assert_string_equal(got, "y;");
  uint32_t cl = 0;
  assert_int_equal(crdt_doc_cl(d, "p", "domain", "x", &cl), 0);
  assert_int_equal(cl, 2);
  crdt_doc_free(d);
}

/* ---- digests ------------------------------------------------------------- */
typedef struct page_list {
  char names[8][32];
  uint8_t digests[8][CRDT_DIGEST_LEN];
  int n;
} page_list;

static void on_page(const char *pg, const uint8_t dg[CRDT_DIGEST_LEN], void *arg) {
  page_list *l = arg;
  snprintf(l->names[l->n], sizeof l->names[0], "%s", pg);
  memcpy(l->digests[l->n], dg, CRDT_DIGEST_LEN);
  l->n++;
}

static void test_digest_equal_iff_state_equal(void **s) {
  (void)s;
  crdt_doc *a, *b;
  assert_int_equal(crdt_doc_new(NULL, &a), 0);
  assert_int_equal(crdt_doc_new(NULL, &b), 0);
  crdt_change cs[] = {
      field_change("p1", "component", "c1", "name", "API", H(1, 0), 1, 1),
      field_change("p1", "component", "c2", "name", "Web", H(2, 0), 1, 2),
      field_change("p2", "component", "c3", "name", "DB", H(3, 0), 2, 1),
      exist_change("p2", "component", "c3", 1, H(3, 0), 2, 2),
  };
  for (int i = 0; i < 4; i++)
    assert_int_equal(crdt_doc_merge(a, &cs[i]), 1);
  for (int i = 3; i >= 0; i--)
    assert_int_equal(crdt_doc_merge(b, &cs[i]), 1);
  uint8_t da[32], db[32];
  assert_int_equal(crdt_doc_digest(a, da), 0);
  assert_int_equal(crdt_doc_digest(b, db), 0);
  assert_memory_equal(da, db, 32);
  /* a different stamp with the same value is a different state */
  crdt_change same_value_newer = field_change("p2", "component", "c3", "name", "DB", H(4, 0), 2, 3);
  assert_int_equal(crdt_doc_merge(b, &same_value_newer), 1);
  assert_int_equal(crdt_doc_digest(b, db), 0);
  assert_memory_not_equal(da, db, 32);
  /* the page tree points at p2 only */
  page_list la = {0}, lb = {0};
  assert_int_equal(crdt_doc_page_digests(a, on_page, &la), 0);
  assert_int_equal(crdt_doc_page_digests(b, on_page, &lb), 0);
  assert_int_equal(la.n, 2);
  assert_string_equal(la.names[0], "p1");
  assert_string_equal(la.names[1], "p2");
  assert_memory_equal(la.digests[0], lb.digests[0], 32);
  assert_memory_not_equal(la.digests[1], lb.digests[1], 32);
  uint8_t pd[32];
  assert_int_equal(crdt_doc_page_digest(a, "nope", pd), SP_ERR_NOENT);
  /* catching up makes them equal again */
  assert_int_equal(crdt_doc_merge(a, &same_value_newer), 1);
  assert_int_equal(crdt_doc_digest(a, da), 0);
  assert_memory_equal(da, db, 32);
  crdt_doc_free(a);
  crdt_doc_free(b);
}

static void on_page_name(const char *pg, void *arg) {
  strcat((char *)arg, pg);
  strcat((char *)arg, ";");
}
static void on_entity(const char *type, const char *id, uint32_t cl, void *arg) {
  char tmp[64];
  snprintf(tmp, sizeof tmp, "%s/%s/%u;", type, id, cl);
  strcat((char *)arg, tmp);
}

static void test_iteration(void **s) {
  (void)s;
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  crdt_change cs[] = {exist_change("p2", "incident", "i1", 1, H(1, 0), 1, 1),
                      exist_change("p1", "component", "c2", 2, H(1, 0), 1, 2),
                      exist_change("p1", "component", "c1", 1, H(1, 0), 1, 3),
                      exist_change("p1", "incident", "i9", 1, H(1, 0), 1, 4)};
  for (int i = 0; i < 4; i++)
    assert_int_equal(crdt_doc_merge(d, &cs[i]), 1);
  char out[256] = "";
  assert_int_equal(crdt_doc_pages(d, on_page_name, out), 0);
  assert_string_equal(out, "p1;p2;");
  out[0] = '\0';
  assert_int_equal(crdt_doc_page_entities(d, "p1", NULL, on_entity, out), 0);
  assert_string_equal(out, "component/c1/1;component/c2/2;incident/i9/1;");
  out[0] = '\0';
  assert_int_equal(crdt_doc_page_entities(d, "p1", "incident", on_entity, out), 0);
  assert_string_equal(out, "incident/i9/1;");
  assert_int_equal(crdt_doc_page_entities(d, "zz", NULL, on_entity, out), SP_ERR_NOENT);
  crdt_doc_free(d);
}

/* Collects index hits as "id;" sorted, for comparison. */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
typedef struct hits { char ids[16][16]; int n; } hits;
static void on_hit(const char *type, const char *id, uint32_t cl, void *arg) {
  (void)type; (void)cl;
  hits *h = arg;
  snprintf(h->ids[h->n++], 16, "%s", id);
}
static const char *found(crdt_doc *d, const char *page, const char *value) {
  static char out[256];
  hits h = {.n = 0};
  assert_int_equal(crdt_doc_index_find(d, page, "component", "group_id", (const uint8_t *)value,
                                       strlen(value), on_hit, &h), 0);
  char *p[16];
  for (int i = 0; i < h.n; i++)
    p[i] = h.ids[i];
  qsort(p, (size_t)h.n, sizeof p[0], cmp_str);
  out[0] = '\0';
  for (int i = 0; i < h.n; i++) {
    strcat(out, p[i]);
    strcat(out, ";");
  }
  return out;
}

static void test_secondary_index(void **s) {
  (void)s;
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  assert_int_equal(crdt_doc_index(d, "component", "group_id"), 0);
  crdt_change a = field_change("p", "component", "c1", "group_id", "g1", H(10, 0), 1, 1);
  crdt_change b = field_change("p", "component", "c2", "group_id", "g1", H(10, 0), 1, 2);
  crdt_change c = field_change("q", "component", "c3", "group_id", "g1", H(10, 0), 1, 3);
  crdt_change other = field_change("p", "incident", "i1", "group_id", "g1", H(10, 0), 1, 4);
  assert_int_equal(crdt_doc_merge(d, &a), 1);
  assert_int_equal(crdt_doc_merge(d, &b), 1);
  assert_int_equal(crdt_doc_merge(d, &c), 1);
  assert_int_equal(crdt_doc_merge(d, &other), 1);
  /* declaring on a non-empty document is refused */
  assert_int_equal(crdt_doc_index(d, "component", "name"), SP_ERR_BUSY);
  assert_int_equal(crdt_doc_index_find(d, "p", "component", "name", NULL, 0, on_hit, NULL),
                   SP_ERR_INVAL);
  assert_string_equal(found(d, "p", "g1"), "c1;c2;"); /* per page, per type */
  assert_string_equal(found(d, "q", "g1"), "c3;");
  assert_string_equal(found(d, "zz", "g1"), "");
  /* a newer value moves it; a losing write does not */
  crdt_change move = field_change("p", "component", "c1", "group_id", "g2", H(20, 0), 1, 5);
  crdt_change stale = field_change("p", "component", "c2", "group_id", "g9", H(5, 0), 1, 6);
  assert_int_equal(crdt_doc_merge(d, &move), 1);
  assert_int_equal(crdt_doc_merge(d, &stale), 0);
  assert_string_equal(found(d, "p", "g1"), "c2;");
  assert_string_equal(found(d, "p", "g2"), "c1;");
  assert_string_equal(found(d, "p", "g9"), "");
  /* NULL is not indexed */
  crdt_change nul = field_change("p", "component", "c2", "group_id", NULL, H(30, 0), 1, 7);
  assert_int_equal(crdt_doc_merge(d, &nul), 1);
  assert_string_equal(found(d, "p", "g1"), "");
  /* a delete drops the old life's fields from the index; GC removes the rest */
  crdt_change create = exist_change("p", "component", "c1", 1, H(1, 0), 1, 8);
  crdt_change del = exist_change("p", "component", "c1", 2, H(40, 0), 1, 9);
  assert_int_equal(crdt_doc_merge(d, &create), 1);
  assert_int_equal(crdt_doc_merge(d, &del), 1);
  assert_string_equal(found(d, "p", "g2"), "");
  crdt_vclock acks[2];
  crdt_vclock_init(&acks[0]);
  crdt_vclock_init(&acks[1]);
  acks[0].seq[0] = acks[0].seq[1] = 100;
  assert_int_equal(crdt_doc_gc(d, acks, 2, NULL, NULL), 0); /* region 1 has not acked */
  acks[1].seq[0] = acks[1].seq[1] = 100;
  assert_int_equal(crdt_doc_gc(d, acks, 2, NULL, NULL), 1);
  assert_string_equal(found(d, "p", "g2"), "");
  crdt_doc_free(d);
}

/* ---- ids -------------------------------------------------------------------- */
static void test_ids_sortable_and_unique(void **s) {
  (void)s;
  crdt_idgen g1, g2;
  assert_int_equal(crdt_idgen_init(&g1, 1), 0);
  assert_int_equal(crdt_idgen_init(&g2, 2), 0);
  assert_int_equal(crdt_idgen_init(&g2, 64), SP_ERR_INVAL);
  assert_int_equal(crdt_idgen_init(&g2, 2), 0);
  char prev[CRDT_ID_LEN + 1] = "", id[CRDT_ID_LEN + 1], other[CRDT_ID_LEN + 1];
  uint64_t wall = 1795000000000ull;
  for (int i = 0; i < 100000; i++) {
    /* the wall clock sometimes steps back */
    uint64_t w = wall + (uint64_t)(i / 100) - (i % 1000 == 999 ? 5000 : 0);
    crdt_idgen_next(&g1, w, id);
    crdt_idgen_next(&g2, w, other);
    assert_int_equal(strlen(id), CRDT_ID_LEN);
    assert_true(strcmp(id, prev) > 0);
    assert_string_not_equal(id, other);
    memcpy(prev, id, sizeof id);
  }
  uint64_t ms;
  uint32_t counter;
  crdt_region region;
  crdt_idgen_next(&g2, wall + 10000, id);
  assert_int_equal(crdt_id_parse(id, &ms, &counter, &region), 0);
  assert_int_equal(ms, wall + 10000);
  assert_int_equal(region, 2);
  assert_int_equal(crdt_id_parse("ABC", &ms, NULL, NULL), SP_ERR_PARSE);
  assert_int_equal(crdt_id_parse("zzzzzzzzzzzz", &ms, NULL, NULL), SP_ERR_PARSE);
  assert_int_equal(crdt_id_parse("0000000000001", &ms, NULL, NULL), SP_ERR_PARSE);
}

/* ---- allocation failure sweeps ------------------------------------------- */
static void run_merges(const crdt_allocator *a, int *failures) {
  crdt_doc *d;
  if (crdt_doc_new(a, &d) != 0) {
    (*failures)++;
    return;
  }
  if (crdt_doc_index(d, "component", "f3") != 0) {
    (*failures)++;
    crdt_doc_free(d);
    return;
  }
  uint8_t before[32], after[32];
  for (int i = 0; i < 60; i++) {
    char id[16], fld[16];
    snprintf(id, sizeof id, "c%d", i % 23);
    snprintf(fld, sizeof fld, "f%d", i % 7);
    crdt_change c = field_change(i % 2 ? "p1" : "p2", "component", id, fld, "some value",
                                 H(100 + (uint64_t)i, 0), 1, (uint64_t)i + 1);
    crdt_change e = exist_change(i % 2 ? "p1" : "p2", "component", id, 1 + (uint32_t)(i % 3),
                                 H(100 + (uint64_t)i, 0), 1, (uint64_t)i + 1);
    int have_before = crdt_doc_digest(d, before) == 0;
    int rc = crdt_doc_merge(d, i % 5 ? &c : &e);
    if (rc == SP_ERR_NOMEM) {
      (*failures)++;
      /* the document is exactly as before the failed merge */
      if (have_before && crdt_doc_digest(d, after) == 0)
        assert_memory_equal(before, after, 32);
    } else {
      assert_true(rc >= 0);
    }
  }
  crdt_delta *dl;
  if (crdt_delta_new(a, &dl) == 0) {
    int rc = crdt_doc_export(d, dl);
    if (rc)
      (*failures)++;
    crdt_vclock acks[1];
    crdt_vclock_init(&acks[0]);
    acks[0].seq[1] = 1000;
    rc = crdt_doc_gc(d, acks, 1, NULL, NULL);
    if (rc < 0)
      (*failures)++;
    crdt_delta_free(dl);
  } else {
    (*failures)++;
  }
  crdt_doc_free(d);
}

static void test_doc_allocation_failure_sweep(void **s) {
  (void)s;
  failalloc fa = {-1, 0};
  crdt_allocator a = {fa_malloc, fa_realloc, fa_free, &fa};
  int failures = 0;
  run_merges(&a, &failures);
  assert_int_equal(failures, 0);
  long total = fa.count;
  assert_true(total > 20);
  for (long k = 0; k < total; k++) {
    fa.allowed = k;
    fa.count = 0;
    failures = 0;
    run_merges(&a, &failures); /* ASan/LeakSanitizer check nothing leaks */
    assert_true(failures > 0);
  }
}

static void test_delta_allocation_failure_sweep(void **s) {
  (void)s;
  uint8_t *enc;
  size_t len;
  {
    crdt_delta *a;
    assert_int_equal(crdt_delta_new(NULL, &a), 0);
    build_delta(a);
    assert_int_equal(crdt_delta_encode(a, &enc, &len), 0);
    crdt_delta_free(a);
  }
  for (long k = 0; k < 6; k++) {
    failalloc fa = {k, 0};
    crdt_allocator al = {fa_malloc, fa_realloc, fa_free, &fa};
    crdt_delta *d;
    if (crdt_delta_new(&al, &d) != 0)
      continue;
    int rc = crdt_delta_decode(d, enc, len);
    assert_true(rc == 0 || rc == SP_ERR_NOMEM);
    if (rc == SP_ERR_NOMEM)
      assert_int_equal(crdt_delta_count(d), 0);
    uint8_t *e2;
    size_t l2;
    rc = crdt_delta_encode(d, &e2, &l2);
    if (rc == 0)
      crdt_free_bytes(&al, e2);
    crdt_delta_free(d);
  }
  crdt_free_bytes(NULL, enc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hlc_monotonic_when_wall_steps_back),
      cmocka_unit_test(test_hlc_receive_and_drift_guard),
      cmocka_unit_test(test_stamp_order),
      cmocka_unit_test(test_vclock_ops),
      cmocka_unit_test(test_vclock_encoding),
      cmocka_unit_test(test_lww_register_total_order),
      cmocka_unit_test(test_transaction_fields_win_or_lose_together),
      cmocka_unit_test(test_delayed_update_never_resurrects),
      cmocka_unit_test(test_delete_then_recreate),
      cmocka_unit_test(test_delete_drops_fields_of_the_old_life),
      cmocka_unit_test(test_grow_only_set),
      cmocka_unit_test(test_malformed_changes_rejected),
      cmocka_unit_test(test_delta_roundtrip),
      cmocka_unit_test(test_delta_decode_rejects_lies),
      cmocka_unit_test(test_merge_delta_reports_exactly_changed),
      cmocka_unit_test(test_gc_only_at_causal_stability),
      cmocka_unit_test(test_gc_keep_types),
      cmocka_unit_test(test_digest_equal_iff_state_equal),
      cmocka_unit_test(test_iteration),
      cmocka_unit_test(test_secondary_index),
      cmocka_unit_test(test_ids_sortable_and_unique),
      cmocka_unit_test(test_doc_allocation_failure_sweep),
      cmocka_unit_test(test_delta_allocation_failure_sweep),
  };
  return cmocka_run_group_tests_name("crdt", tests, NULL, NULL);
}
