/* crdt_bench: field merges per second on one core, and delta encode/decode
 * throughput.  Prints one line per figure: name, value, unit, target, ratio.
 *
 * Workload: a document of 2,000 entities (20 pages x 100) with 8 fields each;
 * a stream of changes to random fields of random entities, half of them
 * newer than the stored value (they win and replace it), half older (they
 * lose) — the mix a replica sees when deltas are re-sent or relayed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crdt.h"

#include <jansson.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

#define PAGES 20
#define PER_PAGE 100
#define FIELDS 8
#define STREAM 2000000

int main(int argc, char **argv) {
  double min_seconds = argc > 1 ? atof(argv[1]) : 2.0;
  static char pages[PAGES][16], ids[PAGES * PER_PAGE][16];
  static const char *fields[FIELDS] = {"name", "status", "description", "position",
                                       "group_id", "showcase", "only_show_if_degraded",
                                       "start_date"};
  for (int p = 0; p < PAGES; p++)
    snprintf(pages[p], sizeof pages[p], "page%04d", p);
  for (int e = 0; e < PAGES * PER_PAGE; e++)
    snprintf(ids[e], sizeof ids[e], "cmp%08d", e);

  crdt_doc *doc;
  if (crdt_doc_new(NULL, &doc))
    return 1;
  crdt_change c;
  memset(&c, 0, sizeof c);
  c.kind = CRDT_FIELD;
  c.type = "component";
  c.cl = 1;
  c.value = (const uint8_t *)"operational";
  c.value_len = 11;
  c.stamp.region = 1;
  c.origin = 1;
  uint64_t hlc = CRDT_HLC_MAKE(1790000000000ull, 0);
  for (int e = 0; e < PAGES * PER_PAGE; e++)
    for (int f = 0; f < FIELDS; f++) {
      c.page = pages[e / PER_PAGE];
      c.id = ids[e];
      c.field = fields[f];
      c.stamp.hlc = hlc;
      c.seq++;
      crdt_doc_merge(doc, &c);
    }

  /* the change stream, prepared up front so only merging is timed */
  crdt_change *stream = malloc(sizeof *stream * STREAM);
  static const char *values[] = {"operational", "degraded_performance", "partial_outage",
                                 "major_outage"};
  uint64_t s = 88172645463325252ull;
  for (int i = 0; i < STREAM; i++) {
    int e = (int)(rnd(&s) % (PAGES * PER_PAGE));
    crdt_change *x = &stream[i];
    *x = c;
    x->page = pages[e / PER_PAGE];
    x->id = ids[e];
    x->field = fields[rnd(&s) % FIELDS];
    const char *v = values[rnd(&s) % 4];
    x->value = (const uint8_t *)v;
    x->value_len = strlen(v);
    /* half newer (win), half older (lose) */
    x->stamp.hlc = (i & 1) ? hlc + 1 + (uint64_t)i : hlc - 1;
    x->stamp.region = (crdt_region)(rnd(&s) % 3);
    x->seq = (uint64_t)i + 100000;
  }

  long merges = 0, won = 0;
  double t0 = now_s(), t1;
  do {
    for (int i = 0; i < STREAM; i++) {
      int rc = crdt_doc_merge(doc, &stream[i]);
      won += rc == 1;
    }
    merges += STREAM;
    /* later rounds must win too: move the newer half forward */
    for (int i = 1; i < STREAM; i += 2)
      stream[i].stamp.hlc += STREAM;
    t1 = now_s();
  } while (t1 - t0 < min_seconds);
  double mps = (double)merges / (t1 - t0);
  printf("%-34s %12.0f %-9s target %10.0f  ratio %5.2fx  (%ld merges, %.0f%% won)\n",
         "crdt field merges/s (1 core)", mps, "merges/s", 5e6, mps / 5e6, merges,
         100.0 * (double)won / (double)merges);

  /* encode / decode: a delta of 10,000 changes */
  crdt_delta *d, *d2;
  crdt_delta_new(NULL, &d);
  crdt_delta_new(NULL, &d2);
  for (int i = 0; i < 10000; i++)
    crdt_delta_add(d, &stream[i]);
  uint8_t *enc = NULL;
  size_t len = 0;
  long rounds = 0;
  t0 = now_s();
  do {
    crdt_free_bytes(NULL, enc);
    crdt_delta_encode(d, &enc, &len);
    rounds++;
    t1 = now_s();
  } while (t1 - t0 < min_seconds / 2);
  double enc_mbs = (double)len * (double)rounds / (t1 - t0) / 1e6;
  rounds = 0;
  t0 = now_s();
  do {
    crdt_delta_clear(d2);
    if (crdt_delta_decode(d2, enc, len))
      return 2;
    rounds++;
    t1 = now_s();
  } while (t1 - t0 < min_seconds / 2);
  double dec_mbs = (double)len * (double)rounds / (t1 - t0) / 1e6;
  /* The reference for both: the same changes as JSON with jansson, the
   * obvious alternative wire format, measured now on this machine. */
  size_t nch = crdt_delta_count(d);
  char *js = NULL;
  size_t jlen = 0;
  rounds = 0;
  t0 = now_s();
  do {
    free(js);
    json_t *arr = json_array();
    for (size_t i = 0; i < nch; i++) {
      const crdt_change *x = crdt_delta_get(d, i);
      json_array_append_new(
          arr, json_pack("{s:i,s:s,s:s,s:s,s:s,s:s%,s:I,s:I,s:i,s:i,s:I}", "kind", x->kind,
                         "page", x->page, "type", x->type, "id", x->id, "field", x->field,
                         "value", (const char *)x->value, x->value_len, "cl", (json_int_t)x->cl,
                         "hlc", (json_int_t)x->stamp.hlc, "region", x->stamp.region, "origin",
                         x->origin, "seq", (json_int_t)x->seq));
    }
    js = json_dumps(arr, JSON_COMPACT);
    jlen = strlen(js);
    json_decref(arr);
    rounds++;
    t1 = now_s();
  } while (t1 - t0 < min_seconds / 2);
  double jenc_cps = (double)nch * (double)rounds / (t1 - t0);
  rounds = 0;
  t0 = now_s();
  do {
    crdt_delta_clear(d2);
    json_t *arr = json_loadb(js, jlen, 0, NULL);
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o) {
      crdt_change x;
      memset(&x, 0, sizeof x);
      json_int_t kind, cl, h, region, origin, seq;
      size_t vlen;
      const char *val;
      json_unpack(o, "{s:I,s:s,s:s,s:s,s:s,s:s%,s:I,s:I,s:I,s:I,s:I}", "kind", &kind, "page",
                  &x.page, "type", &x.type, "id", &x.id, "field", &x.field, "value", &val, &vlen,
                  "cl", &cl, "hlc", &h, "region", &region, "origin", &origin, "seq", &seq);
      x.kind = (crdt_change_kind)kind;
      x.value = (const uint8_t *)val;
      x.value_len = vlen;
      x.cl = (uint32_t)cl;
      x.stamp.hlc = (uint64_t)h;
      x.stamp.region = (crdt_region)region;
      x.origin = (crdt_region)origin;
      x.seq = (uint64_t)seq;
      crdt_delta_add(d2, &x);
    }
    json_decref(arr);
    rounds++;
    t1 = now_s();
  } while (t1 - t0 < min_seconds / 2);
  double jdec_cps = (double)nch * (double)rounds / (t1 - t0);
  if (crdt_delta_count(d2) != nch)
    return 3;
  double enc_cps = enc_mbs * 1e6 / ((double)len / (double)nch);
  double dec_cps = dec_mbs * 1e6 / ((double)len / (double)nch);
  printf("%-34s %12.1f %-9s (%.2fM changes/s)  JSON %.2fM changes/s  ratio %5.1fx\n",
         "crdt delta encode", enc_mbs, "MB/s", enc_cps / 1e6, jenc_cps / 1e6,
         enc_cps / jenc_cps);
  printf("%-34s %12.1f %-9s (%.2fM changes/s)  JSON %.2fM changes/s  ratio %5.1fx\n",
         "crdt delta decode", dec_mbs, "MB/s", dec_cps / 1e6, jdec_cps / 1e6,
         dec_cps / jdec_cps);
  printf("%-34s %zu changes: binary %zu bytes, JSON %zu bytes\n", "  (delta size)", nch, len,
         jlen);
  free(js);
  crdt_free_bytes(NULL, enc);
  crdt_delta_free(d);
  crdt_delta_free(d2);
  free(stream);
  crdt_doc_free(doc);
  return 0;
}
