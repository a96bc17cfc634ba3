/* ops_verify: `statusctl verify [--json]`, have the regions converged?
 *
 * Fetches every region's state digest from statusd-api (GET
 * /_internal/digest: {"digest": "<hex>", "pages": {"<page>": "<hex>"}}, the
 * crdt/ digest of its in-memory document) and compares them: exit 0 and
 * "converged" when all are equal; otherwise exit 1 naming each page whose
 * digests differ and which regions hold which digest ("-" = the page is
 * absent there).  A region that does not answer is an error (exit 1).
 * JSON values are built and freed within the call.
 */
#include "ops.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIGEST_MAX (64u << 20)

/* The region's digest document, or NULL (reported). */
static json_t *fetch(const sp_topo_region *r) {
  char url[512], err[512];
  ops_api_base(r, url, sizeof url);
  strncat(url, "/_internal/digest", sizeof url - strlen(url) - 1);
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
           !json_is_string(json_object_get(o, "digest")) ||
           !json_is_object(json_object_get(o, "pages"))) {
    fprintf(stderr, "statusctl: %s: GET %s: not a digest document\n", r->name, url);
    json_decref(o);
    o = NULL;
  }
  sp_buf_release(&b);
  return o;
}

int ops_verify(ops_ctx *c) {
  const sp_topo *t = c->topo;
  json_t *docs[SP_TOPO_MAX_REGIONS] = {0};
  int rc = OPS_EXIT_OK;
  for (size_t i = 0; i < t->nregions; i++)
    if ((docs[i] = fetch(&t->regions[i])) == NULL)
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
  if (c->flags & OPS_F_JSON) {
    json_t *o = json_pack("{s:b,s:O,s:O}", "converged", converged, "digests", roots,
                          "differing_pages", differ);
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (text)
      printf("%s\n", text);
    free(text);
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
