/* The store's SQL (lib/sql/0001_store.sql) against crdt/: sp_merge_change
 * must pick exactly the winners crdt_doc_merge picks, and report "changed"
 * exactly when crdt does, for random changes in random orders (ties on hlc,
 * NULLs, lives going up and stale lives, duplicates).  After each round the
 * rows in PostgreSQL, loaded into a fresh crdt_doc, must have the same
 * digest as the document that merged the same changes in memory.
 * sp_apply_remote (set-based since lib/sql/0006: one winner per register
 * per batch) must reach the same state as crdt_doc_merge of every change,
 * for random batches that split, repeat and reorder the changes of three
 * origins.
 * Also: sp_write's intents (create / set / delete / recreate / require),
 * its errors, the dense per-region sequence and the change log. */
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

/* Loads sp_entity + sp_field into a new document. */
static crdt_doc *load_doc(PGconn *db) {
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  const char *q[2] = {"SELECT page_id, type, id, NULL, NULL, cl, hlc, region, origin, seq FROM sp_entity",
                      "SELECT page_id, type, id, field, value, cl, hlc, region, origin, seq FROM sp_field"};
  for (int k = 0; k < 2; k++) {
    PGresult *r = PQexec(db, q[k]);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(r); i++) {
      crdt_change c;
      memset(&c, 0, sizeof c);
      c.kind = k == 0 ? CRDT_EXIST : CRDT_FIELD;
      c.page = PQgetvalue(r, i, 0);
      c.type = PQgetvalue(r, i, 1);
      c.id = PQgetvalue(r, i, 2);
      if (k == 1) {
        c.field = PQgetvalue(r, i, 3);
        c.value_null = PQgetisnull(r, i, 4);
        c.value = c.value_null ? NULL : (const uint8_t *)PQgetvalue(r, i, 4);
        c.value_len = c.value_null ? 0 : (size_t)PQgetlength(r, i, 4);
      }
      c.cl = (uint32_t)atoi(PQgetvalue(r, i, 5));
      c.stamp.hlc = strtoull(PQgetvalue(r, i, 6), NULL, 10);
      c.stamp.region = (crdt_region)atoi(PQgetvalue(r, i, 7));
      c.origin = (crdt_region)atoi(PQgetvalue(r, i, 8));
      c.seq = strtoull(PQgetvalue(r, i, 9), NULL, 10);
      assert_int_equal(crdt_doc_merge(d, &c), 1);
    }
    PQclear(r);
  }
  return d;
}

/* Fails unless the rows in PostgreSQL, loaded into a fresh document, have
 * the digest of `mem`. */
static void expect_db_equals(PGconn *db, crdt_doc *mem, int round) {
  crdt_doc *fromdb = load_doc(db);
  uint8_t d1[CRDT_DIGEST_LEN], d2[CRDT_DIGEST_LEN];
  assert_int_equal(crdt_doc_digest(mem, d1), 0);
  assert_int_equal(crdt_doc_digest(fromdb, d2), 0);
  crdt_doc_free(fromdb);
  if (memcmp(d1, d2, sizeof d1) != 0)
    fail_msg("round %d: PostgreSQL state differs from crdt state", round);
}

/* A random register change on a tiny key space (two pages, three
 * entities, three fields, six values, many stamp ties, NULLs, lives 1-4);
 * the caller sets stamp.region, origin and seq. */
static void random_change(uint64_t *seed, crdt_change *c) {
  static const char *pages[] = {"pa", "pb"}, *ids[] = {"e1", "e2", "e3"};
  static const char *fields[] = {"name", "status", "body"};
  static const char *values[] = {"a", "b", "ab", "", "B", "\xc3\xa9"};
  memset(c, 0, sizeof *c);
  c->kind = sf_rnd(seed) % 3 == 0 ? CRDT_EXIST : CRDT_FIELD;
  c->page = pages[sf_rnd(seed) % 2];
  c->type = "component";
  c->id = ids[sf_rnd(seed) % 3];
  c->cl = 1 + (uint32_t)(sf_rnd(seed) % 4);
  c->stamp.hlc = CRDT_HLC_MAKE(1000 + sf_rnd(seed) % 4, sf_rnd(seed) % 2); /* many ties */
  if (c->kind == CRDT_FIELD) {
    c->field = fields[sf_rnd(seed) % 3];
    c->value_null = sf_rnd(seed) % 6 == 0;
    if (!c->value_null) {
      const char *v = values[sf_rnd(seed) % 6];
      c->value = (const uint8_t *)v;
      c->value_len = strlen(v);
    }
  }
}

static void test_sql_merge_matches_crdt(void **state) {
  (void)state;
  PGconn *db = sf_connect();
  uint64_t seed = 42;
  for (int round = 0; round < 40; round++) {
    sf_exec(db, "TRUNCATE sp_entity, sp_field");
    crdt_doc *mem;
    assert_int_equal(crdt_doc_new(NULL, &mem), 0);
    crdt_change cs[120];
    int n = 20 + (int)(sf_rnd(&seed) % 100);
    for (int i = 0; i < n; i++) {
      crdt_change *c = &cs[i];
      random_change(&seed, c);
      c->stamp.region = (crdt_region)(sf_rnd(&seed) % 3);
      c->origin = c->stamp.region;
      c->seq = 1 + sf_rnd(&seed) % 5;
    }
    /* each change once, then everything again in another order (duplicates) */
    for (int pass = 0; pass < 2; pass++) {
      for (int k = 0; k < n; k++) {
        int i = pass == 0 ? k : (int)(sf_rnd(&seed) % (uint64_t)n);
        int a = crdt_doc_merge(mem, &cs[i]);
        int b = sf_merge(db, &cs[i]);
        assert_true(a >= 0);
        if (a != b)
          fail_msg("round %d change %d: crdt says %d, SQL says %d", round, i, a, b);
      }
    }
    expect_db_equals(db, mem, round);
    crdt_doc_free(mem);
  }
  PQfinish(db);
}

static PGresult *write_ops(PGconn *db, const char *ops) {
  const char *p[4] = {"3", "1790000000000", ops, NULL};
  return PQexecParams(db, "SELECT sp_write($1::smallint, $2::bigint, $3::jsonb, $4::jsonb)", 4, NULL,
                      p, NULL, NULL, 0);
}

static void expect_error(PGconn *db, const char *ops, const char *sqlstate) {
  PGresult *r = write_ops(db, ops);
  assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
  assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), sqlstate);
  PQclear(r);
}

static void test_sp_write_intents(void **state) {
  (void)state;
  PGconn *db = sf_connect();
  sf_exec(db, "TRUNCATE sp_entity, sp_field, sp_change_log, sp_outbox, sp_region_clock, sp_vclock");
  PGresult *r = write_ops(db, "[{\"op\":\"create\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\"},"
                              "{\"op\":\"set\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"f\":\"name\",\"v\":\"API\"}]");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  PQclear(r);
  /* create of an existing entity, set on a missing one, delete of a missing
   * one, recreate of a live one, a malformed op: refused, nothing written */
  long log_before = sf_int(db, "SELECT count(*) FROM sp_change_log");
  expect_error(db, "[{\"op\":\"create\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\"}]", "23505");
  expect_error(db, "[{\"op\":\"set\",\"p\":\"p\",\"t\":\"component\",\"i\":\"zz\",\"f\":\"name\",\"v\":\"x\"}]", "P0002");
  expect_error(db, "[{\"op\":\"delete\",\"p\":\"p\",\"t\":\"component\",\"i\":\"zz\"}]", "P0002");
  expect_error(db, "[{\"op\":\"recreate\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\"}]", "P0002");
  expect_error(db, "[{\"op\":\"explode\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\"}]", "22023");
  expect_error(db, "[{\"op\":\"set\",\"t\":\"component\",\"i\":\"c\"}]", "22023");
  /* a failing op after a good one rolls the good one back too */
  expect_error(db, "[{\"op\":\"set\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"f\":\"name\",\"v\":\"half\"},"
                   "{\"op\":\"require\",\"p\":\"p\",\"t\":\"incident\",\"i\":\"nope\"}]", "P0002");
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_change_log"), log_before);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_field WHERE value = 'half'"), 0);
  /* delete drops the fields; a set on the deleted entity is refused;
   * recreate brings it back in a new life */
  r = write_ops(db, "[{\"op\":\"delete\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\"}]");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  PQclear(r);
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_field"), 0);
  expect_error(db, "[{\"op\":\"set\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"f\":\"name\",\"v\":\"x\"}]", "P0002");
  r = write_ops(db, "[{\"op\":\"recreate\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\"},"
                    "{\"op\":\"set\",\"p\":\"p\",\"t\":\"component\",\"i\":\"c\",\"f\":\"name\",\"v\":\"again\"}]");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  PQclear(r);
  assert_int_equal(sf_int(db, "SELECT cl FROM sp_entity WHERE id = 'c'"), 3);
  /* sequence numbers are dense, stamps strictly increase, the vector follows */
  assert_int_equal(sf_int(db, "SELECT count(*) FROM sp_change_log WHERE origin = 3"), 5);
  assert_int_equal(sf_int(db, "SELECT max(seq) FROM sp_change_log WHERE origin = 3"), 5);
  assert_int_equal(sf_int(db, "SELECT seq FROM sp_vclock WHERE origin = 3"), 5);
  assert_int_equal(sf_int(db, "SELECT count(DISTINCT hlc) FROM sp_change_log"), 3);
  PQfinish(db);
}

/* Appends change c to a JSON array being built in buf (sp_apply_remote's
 * shape; the test's values need no escaping). */
static void json_change(char *buf, size_t cap, const crdt_change *c) {
  size_t n = strlen(buf);
  n += (size_t)snprintf(buf + n, cap - n, "%s{\"k\":%d,\"p\":\"%s\",\"t\":\"%s\",\"i\":\"%s\"",
                        buf[1] ? "," : "", c->kind == CRDT_FIELD ? 1 : 2, c->page, c->type, c->id);
  if (c->kind == CRDT_FIELD) {
    if (c->value_null)
      n += (size_t)snprintf(buf + n, cap - n, ",\"f\":\"%s\",\"v\":null", c->field);
    else
      n += (size_t)snprintf(buf + n, cap - n, ",\"f\":\"%s\",\"v\":\"%.*s\"", c->field,
                            (int)c->value_len, (const char *)c->value);
  }
  snprintf(buf + n, cap - n, ",\"cl\":%u,\"hlc\":%llu,\"region\":%u,\"origin\":%u,\"seq\":%llu}",
           c->cl, (unsigned long long)c->stamp.hlc, c->stamp.region, c->origin,
           (unsigned long long)c->seq);
}

static long apply_json(PGconn *db, const char *json) {
  const char *p[1] = {json};
  return (long)sf_int_params(db, "SELECT sp_apply_remote($1::jsonb)", 1, p);
}

static void test_apply_remote_matches_crdt(void **state) {
  (void)state;
  PGconn *db = sf_connect();
  enum { MAXC = 150, ORIGINS = 3 };
  static char batch[MAXC * 256 + 8];
  uint64_t seed = 7;
  for (int round = 0; round < 40; round++) {
    sf_exec(db, "TRUNCATE sp_entity, sp_field, sp_change_log, sp_vclock, sp_region_clock");
    crdt_doc *mem;
    assert_int_equal(crdt_doc_new(NULL, &mem), 0);
    crdt_change cs[MAXC];
    int order[MAXC];
    uint64_t next_seq[ORIGINS] = {0, 0, 0};
    int n = 20 + (int)(sf_rnd(&seed) % (MAXC - 20));
    for (int i = 0; i < n; i++) {
      crdt_change *c = &cs[i];
      random_change(&seed, c);
      c->origin = (crdt_region)(1 + sf_rnd(&seed) % ORIGINS);
      c->stamp.region =
          sf_rnd(&seed) % 4 ? c->origin : (crdt_region)(sf_rnd(&seed) % 3); /* relays */
      c->seq = ++next_seq[c->origin - 1];
      assert_true(crdt_doc_merge(mem, c) >= 0);
      order[i] = i;
    }
    for (int i = n - 1; i > 0; i--) { /* shuffle: gaps, reversals */
      int j = (int)(sf_rnd(&seed) % (uint64_t)(i + 1)), t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    /* batches of 1..40 changes in the shuffled order; a batch sometimes
     * also repeats a few changes sent before; each change new to the
     * store counts once in what sp_apply_remote returns */
    long applied = 0;
    for (int at = 0; at < n;) {
      int len = 1 + (int)(sf_rnd(&seed) % 40);
      if (len > n - at)
        len = n - at;
      strcpy(batch, "[");
      for (int k = 0; k < len; k++) {
        json_change(batch, sizeof batch, &cs[order[at + k]]);
        if (at > 0 && sf_rnd(&seed) % 4 == 0)
          json_change(batch, sizeof batch, &cs[order[sf_rnd(&seed) % (uint64_t)at]]);
      }
      strcat(batch, "]");
      applied += apply_json(db, batch);
      at += len;
    }
    assert_int_equal(applied, n);
    for (int o = 1; o <= ORIGINS; o++) {
      char sql[96];
      snprintf(sql, sizeof sql, "SELECT coalesce(max(seq), 0) FROM sp_vclock WHERE origin = %d", o);
      assert_int_equal(sf_int(db, sql), (long)next_seq[o - 1]);
    }
    expect_db_equals(db, mem, round);
    crdt_doc_free(mem);
  }
  PQfinish(db);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sql_merge_matches_crdt),
      cmocka_unit_test(test_sp_write_intents),
      cmocka_unit_test(test_apply_remote_matches_crdt),
  };
  return cmocka_run_group_tests_name("store_sql", tests, sf_setup, sf_teardown);
}
