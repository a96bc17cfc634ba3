/* Tombstone collection in the store (lib/sql/0008_tombstone_gc.sql) against
 * crdt/: for random changes (creates, deletes, re-creates, fields of the
 * current, an older and a coming life, a type whose tombstones are kept)
 * merged into PostgreSQL and into a crdt_doc in the same order, and random
 * acknowledged vectors that grow, sp_gc_tombstones must collect exactly the
 * tombstones crdt_doc_gc collects, call after call: same count, same
 * entities left, including when the number of regions changes (which
 * restarts the barriers).
 *
 * Also: sp_gc_tombstones_local reads this region's sp_vclock and each
 * peer's sp_peer_ack (a peer never heard from blocks everything, a peer's
 * own writes before it saw the delete hold the tombstone until everyone
 * has them); malformed acks are refused with SQLSTATE 22023 and a message;
 * after collection, a duplicate of the entity's old changes from a peer
 * (sp_apply_remote) or in a snapshot chunk (sp_apply_snapshot) does not
 * bring it back, while a snapshot's new rows still apply. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"
#include "store_fixture.h"

/* sp_gc_tombstones with acks[0..n) as an n x CRDT_MAX_REGIONS array (every
 * origin, as crdt_doc_gc sees them).  Returns its count. */
static long sql_gc(PGconn *db, const crdt_vclock *acks, size_t n) {
  static char arr[CRDT_MAX_REGIONS * CRDT_MAX_REGIONS * 22 + 64];
  size_t len = 0;
  len += (size_t)snprintf(arr + len, sizeof arr - len, "{");
  for (size_t i = 0; i < n; i++) {
    len += (size_t)snprintf(arr + len, sizeof arr - len, "%s{", i ? "," : "");
    for (int o = 0; o < CRDT_MAX_REGIONS; o++)
      len += (size_t)snprintf(arr + len, sizeof arr - len, "%s%llu", o ? "," : "",
                              (unsigned long long)acks[i].seq[o]);
    len += (size_t)snprintf(arr + len, sizeof arr - len, "}");
  }
  snprintf(arr + len, sizeof arr - len, "}");
  const char *p[1] = {arr};
  return (long)sf_int_params(db, "SELECT sp_gc_tombstones($1::bigint[])", 1, p);
}

/* The entities with a causal length, as "page/type/id:cl" lines in strcmp
 * order, from the document and from sp_entity. */
typedef struct lines {
  char v[64][64];
  int n;
  const char *page;
} lines;

static void on_entity(const char *type, const char *id, uint32_t cl, void *arg) {
  lines *l = arg;
  if (cl == 0)
    return; /* fields without an entity row: not an sp_entity row either */
  assert_true(l->n < 64);
  snprintf(l->v[l->n++], sizeof l->v[0], "%s/%s/%s:%u", l->page, type, id, cl);
}

static void on_page_name(const char *page, void *arg) {
  lines *pages = arg;
  assert_true(pages->n < 64);
  snprintf(pages->v[pages->n++], sizeof pages->v[0], "%s", page);
}

static int cmp_line(const void *a, const void *b) { return strcmp(a, b); }

static void doc_lines(crdt_doc *d, lines *out) {
  lines pages = {.n = 0};
  out->n = 0;
  assert_int_equal(crdt_doc_pages(d, on_page_name, &pages), 0);
  for (int i = 0; i < pages.n; i++) {
    out->page = pages.v[i];
    assert_int_equal(crdt_doc_page_entities(d, pages.v[i], NULL, on_entity, out), 0);
  }
  qsort(out->v, (size_t)out->n, sizeof out->v[0], cmp_line);
}

static void db_lines(PGconn *db, lines *out) {
  PGresult *r = PQexec(db, "SELECT page_id || '/' || type || '/' || id || ':' || cl FROM sp_entity");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  out->n = 0;
  for (int i = 0; i < PQntuples(r); i++) {
    assert_true(out->n < 64);
    snprintf(out->v[out->n++], sizeof out->v[0], "%s", PQgetvalue(r, i, 0));
  }
  PQclear(r);
  qsort(out->v, (size_t)out->n, sizeof out->v[0], cmp_line);
}

static void expect_same_entities(PGconn *db, crdt_doc *d, int round, int step) {
  lines a, b;
  doc_lines(d, &a);
  db_lines(db, &b);
  int same = a.n == b.n;
  for (int i = 0; same && i < a.n; i++)
    same = strcmp(a.v[i], b.v[i]) == 0;
  if (same)
    return;
  for (int i = 0; i < a.n; i++)
    fprintf(stderr, "  crdt: %s\n", a.v[i]);
  for (int i = 0; i < b.n; i++)
    fprintf(stderr, "  sql:  %s\n", b.v[i]);
  fail_msg("round %d step %d: the entities left differ", round, step);
}

static void test_gc_matches_crdt(void **state) {
  (void)state;
  PGconn *db = sf_connect();
  static const char *pages[] = {"pa", "pb"}, *ids[] = {"e1", "e2", "e3", "e4", "e5", "e6"};
  static const char *types[] = {"component", "component", "component",
                                "component", "component", "domain"};
  static const char *fields[] = {"name", "status"};
  static const char *values[] = {"a", "b", "ab"};
  enum { ORIGINS = 4 };
  uint64_t seed = 2024;
  long collected_total = 0, gc_calls = 0, membership_changes = 0;
  for (int round = 0; round < 30; round++) {
    sf_exec(db, "TRUNCATE sp_entity, sp_field, sp_tombstone_barrier");
    crdt_doc *d;
    assert_int_equal(crdt_doc_new(NULL, &d), 0);
    assert_int_equal(crdt_doc_gc_keep(d, "domain"), 0); /* as seeded in sp_gc_keep */
    uint64_t next[ORIGINS] = {0};
    crdt_vclock acks[ORIGINS];
    for (int i = 0; i < ORIGINS; i++)
      crdt_vclock_init(&acks[i]);
    size_t n = 3;
    uint64_t hlc_ms = 1000;
    /* each round its own mix: busy or quiet writers, acks that catch up in
     * one go or bit by bit */
    uint64_t p_write = 15 + sf_rnd(&seed) % 45, p_full = sf_rnd(&seed) % 60;
    for (int step = 0; step < 200; step++) {
      uint64_t what = sf_rnd(&seed) % 100;
      if (what < p_write) {
        /* a change from a random origin, with the next sequence number */
        crdt_change c;
        memset(&c, 0, sizeof c);
        int e = (int)(sf_rnd(&seed) % 6);
        c.page = pages[sf_rnd(&seed) % 2];
        c.type = types[e];
        c.id = ids[e];
        uint32_t cur = 0;
        if (crdt_doc_cl(d, c.page, c.type, c.id, &cur))
          cur = 0;
        c.kind = sf_rnd(&seed) % 2 ? CRDT_EXIST : CRDT_FIELD;
        if (c.kind == CRDT_EXIST) {
          /* mostly the next life (create, delete, re-create); sometimes a
           * stale or concurrent one */
          uint64_t k = sf_rnd(&seed) % 5;
          c.cl = k < 3 ? cur + 1 : k == 3 ? (cur ? cur : 1) : 1 + (uint32_t)(sf_rnd(&seed) % 5);
        } else {
          /* the current life, an older one, or the next (a re-create's
           * field arriving before the re-create) */
          uint64_t k = sf_rnd(&seed) % 10;
          c.cl = k < 7 ? (cur ? cur : 1) : k == 7 ? cur + 1 : 1 + (uint32_t)(sf_rnd(&seed) % 4);
          c.field = fields[sf_rnd(&seed) % 2];
          const char *v = values[sf_rnd(&seed) % 3];
          c.value = (const uint8_t *)v;
          c.value_len = strlen(v);
        }
        hlc_ms += sf_rnd(&seed) % 3;
        c.stamp.hlc = CRDT_HLC_MAKE(hlc_ms, sf_rnd(&seed) % 2);
        /* origins 0 and 1 write most, 3 (a region only when n is 4) least */
        static const crdt_region pick[] = {0, 0, 0, 1, 1, 1, 2, 2, 3};
        crdt_region o = pick[sf_rnd(&seed) % (sizeof pick / sizeof pick[0])];
        c.stamp.region = o;
        c.origin = o;
        c.seq = ++next[o];
        acks[o].seq[o] = next[o]; /* a region has applied its own writes */
        int a = crdt_doc_merge(d, &c);
        int b = sf_merge(db, &c);
        assert_true(a >= 0);
        if (a != b)
          fail_msg("round %d step %d: merge: crdt %d, SQL %d", round, step, a, b);
      } else if (what < 85) {
        /* acknowledgements grow: region i has applied more of origin o
         * (part of the way, or all of it) */
        int i = (int)(sf_rnd(&seed) % ORIGINS), o = (int)(sf_rnd(&seed) % ORIGINS);
        uint64_t gap = next[o] - acks[i].seq[o];
        acks[i].seq[o] += sf_rnd(&seed) % 100 < p_full ? gap : sf_rnd(&seed) % (gap + 1);
      } else {
        /* collect; now and then with another number of regions */
        if (sf_rnd(&seed) % 8 == 0) {
          n = n == 3 ? 2 + (size_t)(sf_rnd(&seed) % 2) * 2 : 3; /* 3 -> 2 or 4 -> 3 */
          membership_changes++;
        }
        int a = crdt_doc_gc(d, acks, n, NULL, NULL);
        long b = sql_gc(db, acks, n);
        assert_true(a >= 0);
        gc_calls++;
        collected_total += a;
        if (a != b)
          fail_msg("round %d step %d: crdt collected %d, SQL %ld", round, step, a, b);
        expect_same_entities(db, d, round, step);
      }
    }
    /* everyone has everything: whatever is a pure tombstone goes, in both */
    for (int i = 0; i < ORIGINS; i++)
      for (int o = 0; o < ORIGINS; o++)
        acks[i].seq[o] = next[o];
    int a = crdt_doc_gc(d, acks, 3, NULL, NULL);
    long b = sql_gc(db, acks, 3);
    assert_int_equal(a, b);
    collected_total += a;
    expect_same_entities(db, d, round, -1);
    /* no barrier left behind for an entity that is gone */
    assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_tombstone_barrier b WHERE NOT EXISTS "
                                "(SELECT 1 FROM sp_entity e WHERE (e.page_id, e.type, e.id) = "
                                "(b.page_id, b.type, b.id))"),
                     0);
    crdt_doc_free(d);
  }
  /* the schedule must have exercised what it claims to */
  assert_true(collected_total > 40);
  assert_true(gc_calls > 200);
  assert_true(membership_changes > 5);
  PQfinish(db);
}

static long gc_local(PGconn *db, int local, int nregions) {
  char l[8], n[8];
  snprintf(l, sizeof l, "%d", local);
  snprintf(n, sizeof n, "%d", nregions);
  const char *p[2] = {l, n};
  return (long)sf_int_params(db, "SELECT sp_gc_tombstones_local($1::smallint, $2::integer)", 2, p);
}

static void set_ack(PGconn *db, int peer, const long seqs[3]) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "INSERT INTO sp_peer_ack (peer, origin, seq) VALUES (%d,0,%ld),(%d,1,%ld),(%d,2,%ld) "
           "ON CONFLICT (peer, origin) DO UPDATE SET seq = EXCLUDED.seq",
           peer, seqs[0], peer, seqs[1], peer, seqs[2]);
  sf_exec(db, sql);
}

static void reset_store(PGconn *db) {
  sf_exec(db, "TRUNCATE sp_entity, sp_field, sp_change_log, sp_vclock, sp_peer_ack, "
              "sp_tombstone_barrier, sp_log_floor, sp_region_clock");
}

/* Region 0 of three.  Region 1 created c (its seq 1) and deleted it (seq 2);
 * region 2 wrote its seq 1..3 before it saw the delete. */
static void test_gc_local_vectors(void **state) {
  (void)state;
  PGconn *db = sf_connect();
  reset_store(db);
  sf_exec(db, "SELECT sp_apply_remote('["
              "{\"k\":2,\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"cl\":1,\"hlc\":100,"
              "\"region\":1,\"origin\":1,\"seq\":1},"
              "{\"k\":2,\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"cl\":2,\"hlc\":200,"
              "\"region\":1,\"origin\":1,\"seq\":2},"
              "{\"k\":2,\"p\":\"p\",\"t\":\"domain\",\"i\":\"d\",\"cl\":1,\"hlc\":100,"
              "\"region\":2,\"origin\":2,\"seq\":1},"
              "{\"k\":2,\"p\":\"p\",\"t\":\"domain\",\"i\":\"d\",\"cl\":2,\"hlc\":150,"
              "\"region\":2,\"origin\":2,\"seq\":2},"
              "{\"k\":2,\"p\":\"p\",\"t\":\"component\",\"i\":\"x\",\"cl\":1,\"hlc\":160,"
              "\"region\":2,\"origin\":2,\"seq\":3}]'::jsonb, 0::smallint)");
  assert_int_equal(sf_int(db, "SELECT seq FROM sp_vclock WHERE origin = 1"), 2);
  /* peer 2 never heard from: nothing, not even a barrier */
  set_ack(db, 1, (long[]){0, 2, 3});
  assert_int_equal(gc_local(db, 0, 3), 0);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_tombstone_barrier"), 0);
  /* peer 2 has the delete too: the barrier is B = {0, 2, 3} and everyone
   * already has all of it, so c goes at once; the domain claim's tombstone
   * stays (a kept type) */
  set_ack(db, 2, (long[]){0, 2, 3});
  long before = sf_int(db, "SELECT count(*) FROM sp_entity");
  assert_int_equal(gc_local(db, 0, 3), 1);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_entity WHERE id = 'c'"), 0);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_entity"), before - 1);
  assert_int_equal(sf_int(db, "SELECT cl FROM sp_entity WHERE type = 'domain' AND id = 'd'"), 2);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_tombstone_barrier"), 0);

  /* a second delete, by region 1 (seq 4, after its seq 3 below); region 2
   * wrote its seq 4 and 5 before it saw the delete: the tombstone waits for
   * everyone to have region 2's writes up to 5 */
  sf_exec(db, "SELECT sp_apply_remote('["
              "{\"k\":2,\"p\":\"p\",\"t\":\"component\",\"i\":\"y\",\"cl\":1,\"hlc\":300,"
              "\"region\":1,\"origin\":1,\"seq\":3},"
              "{\"k\":2,\"p\":\"p\",\"t\":\"component\",\"i\":\"y\",\"cl\":2,\"hlc\":400,"
              "\"region\":1,\"origin\":1,\"seq\":4},"
              "{\"k\":1,\"p\":\"p\",\"t\":\"component\",\"i\":\"x\",\"f\":\"name\",\"v\":\"a\","
              "\"cl\":1,\"hlc\":310,\"region\":2,\"origin\":2,\"seq\":4}]'::jsonb, 0::smallint)");
  set_ack(db, 1, (long[]){0, 4, 4});
  set_ack(db, 2, (long[]){0, 4, 5}); /* region 2: has the delete, and its own 5 */
  assert_int_equal(gc_local(db, 0, 3), 0);
  assert_int_equal(sf_int(db, "SELECT barrier[3] FROM sp_tombstone_barrier WHERE id = 'y'"), 5);
  /* region 2's seq 5 reaches region 1 but not us (region 0): still held */
  set_ack(db, 1, (long[]){0, 4, 5});
  assert_int_equal(gc_local(db, 0, 3), 0);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_entity WHERE id = 'y'"), 1);
  /* and here: collected; later writes of region 2 were not needed */
  sf_exec(db, "SELECT sp_apply_remote('["
              "{\"k\":1,\"p\":\"p\",\"t\":\"component\",\"i\":\"x\",\"f\":\"name\",\"v\":\"b\","
              "\"cl\":1,\"hlc\":320,\"region\":2,\"origin\":2,\"seq\":5}]'::jsonb, 0::smallint)");
  assert_int_equal(gc_local(db, 0, 3), 1);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_entity WHERE id = 'y'"), 0);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_tombstone_barrier"), 0);
  PQfinish(db);
}

static void expect_refused(PGconn *db, const char *sql, const char *words) {
  PGresult *r = PQexec(db, sql);
  if (PQresultStatus(r) != PGRES_FATAL_ERROR)
    fail_msg("%s: not refused", sql);
  assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22023");
  const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  if (msg == NULL || strstr(msg, words) == NULL)
    fail_msg("%s: message \"%s\" lacks \"%s\"", sql, msg ? msg : "", words);
  PQclear(r);
}

static void test_gc_bad_input(void **state) {
  (void)state;
  PGconn *db = sf_connect();
  expect_refused(db, "SELECT sp_gc_tombstones(NULL)", "two-dimensional");
  expect_refused(db, "SELECT sp_gc_tombstones('{1,2}'::bigint[])", "two-dimensional");
  expect_refused(db, "SELECT sp_gc_tombstones('{{1},{2}}'::bigint[])", "a column for each");
  expect_refused(db, "SELECT sp_gc_tombstones('{{1,-1},{2,2}}'::bigint[])", "non-negative");
  expect_refused(db, "SELECT sp_gc_tombstones('{{1,NULL},{2,2}}'::bigint[])", "non-negative");
  expect_refused(db, "SELECT sp_gc_tombstones('[0:1][0:1]={{1,1},{2,2}}'::bigint[])",
                 "indexed from 1");
  expect_refused(db, "SELECT sp_gc_tombstones_local(3::smallint, 3)", "region 3 of 3");
  expect_refused(db, "SELECT sp_gc_tombstones_local(0::smallint, 0)", "region 0 of 0");
  PQfinish(db);
}

/* After collection, old changes of the entity that come again stay out. */
static void test_gc_no_resurrection(void **state) {
  (void)state;
  PGconn *db = sf_connect();
  reset_store(db);
  static const char *create =
      "{\"k\":2,\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"cl\":1,\"hlc\":100,"
      "\"region\":1,\"origin\":1,\"seq\":1}";
  static const char *field =
      "{\"k\":1,\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"f\":\"name\",\"v\":\"old\","
      "\"cl\":1,\"hlc\":100,\"region\":1,\"origin\":1,\"seq\":2}";
  static const char *del =
      "{\"k\":2,\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"cl\":2,\"hlc\":200,"
      "\"region\":1,\"origin\":1,\"seq\":3}";
  char sql[2048];
  snprintf(sql, sizeof sql, "SELECT sp_apply_remote('[%s,%s,%s]'::jsonb, 0::smallint)", create,
           field, del);
  sf_exec(db, sql);
  set_ack(db, 1, (long[]){0, 3, 0});
  assert_int_equal(gc_local(db, 0, 2), 1);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_entity"), 0);
  /* a peer sends the old changes again: skipped, at or below sp_vclock */
  assert_int_equal(sf_int(db, sql), 0);
  /* a snapshot chunk read before its source applied the delete */
  snprintf(sql, sizeof sql, "SELECT sp_apply_snapshot('[%s,%s]'::jsonb, 0::smallint, NULL)",
           create, field);
  assert_int_equal(sf_int(db, sql), 0);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_entity"), 0);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_field"), 0);
  /* ... while its rows this region lacks still apply, and its vector is
   * adopted as before */
  assert_int_equal(sf_int(db, "SELECT sp_apply_snapshot('["
                              "{\"k\":2,\"p\":\"p\",\"t\":\"component\",\"i\":\"n\",\"cl\":1,"
                              "\"hlc\":300,\"region\":1,\"origin\":1,\"seq\":4},"
                              "{\"k\":1,\"p\":\"p\",\"t\":\"component\",\"i\":\"n\",\"f\":\"name\","
                              "\"v\":\"new\",\"cl\":1,\"hlc\":300,\"region\":1,\"origin\":1,"
                              "\"seq\":5}]'::jsonb, 0::smallint, '{\"1\": 5}'::jsonb)"),
                   2);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_entity WHERE id = 'n' AND cl = 1"), 1);
  assert_int_equal(sf_int(db, "SELECT seq FROM sp_vclock WHERE origin = 1"), 5);
  assert_int_equal(sf_int(db, "SELECT seq FROM sp_log_floor WHERE origin = 1"), 5);
  PQfinish(db);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gc_matches_crdt),
      cmocka_unit_test(test_gc_local_vectors),
      cmocka_unit_test(test_gc_bad_input),
      cmocka_unit_test(test_gc_no_resurrection),
  };
  return cmocka_run_group_tests_name("store_gc", tests, sf_setup, sf_teardown);
}
