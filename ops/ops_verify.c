/* ops_verify: `statusctl verify [--json]`, have the regions converged?
 *
 * Fetches every region's state digest from statusd-api (GET
 * /_internal/digest: {"digest": "<hex>", "pages": {"<page>": "<hex>"}}, the
 * crdt/ digest of its in-memory document) and compares them: exit 0 and
 * "converged" when all are equal; otherwise exit 1 naming each page whose
 * digests differ and which regions hold which digest ("-" = the page is
 * absent there).  A region that does not answer is an error (exit 1).
 *
 * Tombstones are collected in each region on its own schedule (at causal
 * stability, crdt/DESIGN.md), so for a moment one region may still hold a
 * deleted entity that another has forgotten.  For each page whose digests
 * differ, verify asks every region for the page's entities
 * (/_internal/digest?page=ID) and forgives exactly that: an entity absent
 * in some regions that every region holding it holds as the same tombstone
 * (even causal length, equal digests), where each region lacking it has
 * seen at least everything the holders have (its merged vector covers
 * theirs, so it collected the entity rather than never saw it).  Any other
 * difference, including two different tombstones, is reported.
 * JSON values are built and freed within the call.
 */
#include "ops.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIGEST_MAX (64u << 20)

/* The region's digest document, or NULL (reported).  page: NULL for the
 * whole state, else that page's entities. */
static json_t *fetch(const sp_topo_region *r, const char *page) {
  char url[1024], err[512];
  ops_api_base(r, url, sizeof url);
  strncat(url, "/_internal/digest", sizeof url - strlen(url) - 1);
  if (page) {
    static const char hexd[] = "0123456789ABCDEF";
    size_t n = strlen(url);
    n += (size_t)snprintf(url + n, sizeof url - n, "?page=");
    for (const unsigned char *p = (const unsigned char *)page; *p && n + 4 < sizeof url; p++) {
      if (isalnum(*p) || strchr("-_.~", *p)) {
        url[n++] = (char)*p;
      } else {
        url[n++] = '%';
        url[n++] = hexd[*p >> 4];
        url[n++] = hexd[*p & 15];
      }
    }
    url[n] = '\0';
  }
  sp_buf b;
  sp_buf_init(&b, DIGEST_MAX);
  long status;
  int rc = ops_http("GET", url, NULL, NULL, NULL, OPS_HTTP_MS, &status, &b, err, sizeof err);
  json_t *o = NULL;
  if (rc)
    fprintf(stderr, "statusctl: %s: %s\n", r->name, err);
  else if (status != 200)
    fprintf(stderr, "statusctl: %s: GET %s: status %ld: %.200s\n", r->name, url, status, b.base);
  else if ((o = json_loadb(b.base, b.len, 0, NULL)) == NULL ||
           (page ? !json_is_array(json_object_get(o, "entities"))
                 : !json_is_string(json_object_get(o, "digest")) ||
                       !json_is_object(json_object_get(o, "pages")))) {
    fprintf(stderr, "statusctl: %s: GET %s: not a digest document\n", r->name, url);
    json_decref(o);
    o = NULL;
  }
  sp_buf_release(&b);
  return o;
}

/* 1 when vector a covers b (JSON objects {"origin": seq}). */
static int vector_covers(json_t *a, json_t *b) {
  const char *k;
  json_t *v;
  json_object_foreach(b, k, v) {
    if (json_integer_value(json_object_get(a, k)) < json_integer_value(v))
      return 0;
  }
  return 1;
}

/* Whether the differences of `page` are only tombstones some regions have
 * collected already (see the top): 1, and *tombstones counts them; 0 when
 * anything else differs; -1 when a region could not be asked (reported). */
static int only_uncollected_tombstones(const sp_topo *t, const char *page, size_t *tombstones) {
  json_t *pd[SP_TOPO_MAX_REGIONS] = {0};
  int res = 1;
  for (size_t i = 0; i < t->nregions && res == 1; i++)
    if ((pd[i] = fetch(&t->regions[i], page)) == NULL)
      res = -1;
  /* (type, id) -> {region index: entity} */
  json_t *all = json_object();
  for (size_t i = 0; i < t->nregions && res == 1; i++) {
    size_t k;
    json_t *e;
    json_array_foreach(json_object_get(pd[i], "entities"), k, e) {
      char key[512], ri[24];
      snprintf(key, sizeof key, "%s\t%s", json_string_value(json_object_get(e, "type")),
               json_string_value(json_object_get(e, "id")));
      snprintf(ri, sizeof ri, "%zu", i);
      if (json_object_get(all, key) == NULL)
        json_object_set_new(all, key, json_object());
      json_object_set(json_object_get(all, key), ri, e);
    }
  }
  size_t found = 0;
  const char *key;
  json_t *per;
  json_object_foreach(all, key, per) {
    if (res != 1)
      break;
    const char *first = NULL;
    int same = 1, tomb = 1;
    for (size_t i = 0; i < t->nregions; i++) {
      char ri[24];
      snprintf(ri, sizeof ri, "%zu", i);
      json_t *e = json_object_get(per, ri);
      if (e == NULL)
        continue;
      const char *d = json_string_value(json_object_get(e, "digest"));
      if (first == NULL)
        first = d;
      else if (d == NULL || strcmp(d, first) != 0)
        same = 0;
      json_int_t cl = json_integer_value(json_object_get(e, "cl"));
      tomb = tomb && cl > 0 && cl % 2 == 0;
    }
    if (!same) {
      res = 0;
      break;
    }
    if (json_object_size(per) == t->nregions)
      continue;
    /* absent somewhere: forgiven only for a tombstone the lacking regions
     * collected (they have seen all the holders have) */
    for (size_t i = 0; i < t->nregions && tomb; i++) {
      char ri[24];
      snprintf(ri, sizeof ri, "%zu", i);
      if (json_object_get(per, ri))
        continue;
      for (size_t j = 0; j < t->nregions && tomb; j++) {
        snprintf(ri, sizeof ri, "%zu", j);
        if (json_object_get(per, ri))
          tomb = vector_covers(json_object_get(pd[i], "vector"), json_object_get(pd[j], "vector"));
      }
    }
    if (!tomb)
      res = 0;
    else
      found++;
  }
  /* nothing to forgive: the page changed since the digests were read, so
   * the verdict must come from a fresh look (the caller asks again) */
  if (res == 1 && found == 0)
    res = 0;
  if (res == 1)
    *tombstones += found;
  json_decref(all);
  for (size_t i = 0; i < t->nregions; i++)
    json_decref(pd[i]);
  return res;
}

int ops_verify(ops_ctx *c) {
  const sp_topo *t = c->topo;
  json_t *docs[SP_TOPO_MAX_REGIONS] = {0};
  int rc = OPS_EXIT_OK;
  for (size_t i = 0; i < t->nregions; i++)
    if ((docs[i] = fetch(&t->regions[i], NULL)) == NULL)
      rc = OPS_EXIT_FAIL;
  if (rc) {
    for (size_t i = 0; i < t->nregions; i++)
      json_decref(docs[i]);
    return rc;
  }
  /* every page any region has, with each region's digest of it */
  json_t *pages = json_object();
  for (size_t i = 0; i < t->nregions; i++) {
    const char *page;
    json_t *v;
    json_object_foreach(json_object_get(docs[i], "pages"), page, v) {
      if (json_object_get(pages, page) == NULL)
        json_object_set_new(pages, page, json_object());
    }
  }
  json_t *differ = json_object();
  const char *page;
  json_t *per;
  json_object_foreach(pages, page, per) {
    const char *first = NULL;
    int same = 1;
    for (size_t i = 0; i < t->nregions; i++) {
      const char *d = json_string_value(json_object_get(json_object_get(docs[i], "pages"), page));
      json_object_set_new(per, t->regions[i].name, d ? json_string(d) : json_null());
      if (i == 0)
        first = d;
      else if (!(d && first && strcmp(d, first) == 0))
        same = 0;
    }
    if (!same)
      json_object_set(differ, page, per);
  }
  const char *root0 = json_string_value(json_object_get(docs[0], "digest"));
  int converged = 1;
  json_t *roots = json_object();
  for (size_t i = 0; i < t->nregions; i++) {
    const char *d = json_string_value(json_object_get(docs[i], "digest"));
    json_object_set_new(roots, t->regions[i].name, json_string(d));
    if (strcmp(d, root0) != 0)
      converged = 0;
  }
  /* digests that differ only by tombstones not collected everywhere yet */
  size_t tombstones = 0;
  if (!converged && json_object_size(differ) > 0) {
    json_t *real = json_object();
    json_object_foreach(differ, page, per) {
      int r = only_uncollected_tombstones(t, page, &tombstones);
      if (r != 1)
        json_object_set(real, page, per);
    }
    converged = json_object_size(real) == 0;
    json_decref(differ);
    differ = real;
  }
  if (c->flags & OPS_F_JSON) {
    json_t *o = json_pack("{s:b,s:O,s:O,s:I}", "converged", converged, "digests", roots,
                          "differing_pages", differ, "uncollected_tombstones",
                          (json_int_t)tombstones);
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (text)
      printf("%s\n", text);
    free(text);
  } else if (converged && tombstones) {
    printf("converged: %zu regions, %zu pages; %zu tombstones not yet collected in every "
           "region (the digests differ only by them)\n",
           t->nregions, json_object_size(pages), tombstones);
  } else if (converged) {
    printf("converged: %zu regions, digest %s, %zu pages\n", t->nregions, root0,
           json_object_size(pages));
  } else {
    printf("NOT converged:\n");
    for (size_t i = 0; i < t->nregions; i++)
      printf("  %-10s digest %s\n", t->regions[i].name,
             json_string_value(json_object_get(roots, t->regions[i].name)));
    json_object_foreach(differ, page, per) {
      printf("  page %s differs:", page);
      for (size_t i = 0; i < t->nregions; i++) {
        const char *d = json_string_value(json_object_get(per, t->regions[i].name));
        printf(" %s=%.12s", t->regions[i].name, d ? d : "-");
      }
      printf("\n");
    }
    if (json_object_size(differ) == 0)
      printf("  (no single page differs: the pages agree but the whole-state digests do "
             "not)\n");
  }
  json_decref(differ);
  json_decref(roots);
  json_decref(pages);
  for (size_t i = 0; i < t->nregions; i++)
    json_decref(docs[i]);
  return converged ? OPS_EXIT_OK : OPS_EXIT_FAIL;
}
