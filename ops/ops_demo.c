/* ops_demo: the demo page `statusctl up` creates on the first run, through
 * the management API v1 of one region, exactly as an operator would:
 *
 *   page "Acme Cloud (demo)"
 *   components API, Website, Database, CDN; group "Core services" = API +
 *   Database
 *   an open incident "Elevated API error rates" (API partial outage) with
 *   two updates: investigating, then identified
 *
 * The page id is chosen by the caller and every object's id is derived
 * from it, so running this again after a failure halfway finds what exists
 * (409) and adds only what is missing.  JSON values are built and freed
 * within each call.
 */
#include "ops.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_err.h"

#define BODY_MAX (4u << 20)

/* One management request with a JSON body built from `body` (stolen).
 * 0 when the status is `want`, 1 when it is `exists` (the object is there
 * already), else negative with err naming the request and the answer.
 * *out (may be NULL) receives the parsed answer on 0. */
static int call(const sp_topo_region *r, const char *key, const char *method, const char *path,
                json_t *body, long want, long exists, json_t **out, char *err, size_t errlen) {
  char url[512], herr[512];
  ops_api_base(r, url, sizeof url);
  strncat(url, path, sizeof url - strlen(url) - 1);
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  if (body && text == NULL) {
    snprintf(err, errlen, "%s %s: out of memory", method, path);
    return SP_ERR_NOMEM;
  }
  sp_buf resp;
  sp_buf_init(&resp, BODY_MAX);
  long status;
  int rc = ops_http(method, url, key, text, NULL, 10000, &status, &resp, herr, sizeof herr);
  free(text);
  if (rc) {
    snprintf(err, errlen, "%s", herr);
  } else if (status == want) {
    if (out) {
      *out = json_loadb(resp.base, resp.len, 0, NULL);
      if (*out == NULL) {
        snprintf(err, errlen, "%s %s: the answer is not JSON", method, url);
        rc = SP_ERR_PROTO;
      }
    }
  } else if (exists && status == exists) {
    rc = 1;
  } else {
    snprintf(err, errlen, "%s %s: status %ld (wanted %ld): %.300s", method, url, status, want,
             resp.base);
    rc = SP_ERR_PROTO;
  }
  sp_buf_release(&resp);
  return rc;
}

static const struct {
  const char *suffix, *name, *description;
} g_components[] = {
    {"api", "API", "The public REST API"},
    {"web", "Website", "www and the dashboard"},
    {"db", "Database", "Primary data store"},
    {"cdn", "CDN", "Static assets"},
};

static int has_group(json_t *list, const char *name) {
  size_t i;
  json_t *g;
  json_array_foreach(list, i, g) {
    const char *n = json_string_value(json_object_get(g, "name"));
    if (n && strcmp(n, name) == 0)
      return 1;
  }
  return 0;
}

int ops_demo_create(const sp_topo_region *r, const char *key, const char *page_id, char *err,
                    size_t errlen) {
  char path[256], api[64], db[64], inc[64];
  int rc;
  json_t *body = json_pack("{s:{s:s,s:s,s:s,s:s,s:s}}", "page", "id", page_id, "name",
                           "Acme Cloud (demo)", "page_description",
                           "Demo page of the local three-region deployment (statusctl up)",
                           "headline", "Acme Cloud status", "time_zone", "Etc/UTC");
  if ((rc = call(r, key, "POST", "/v1/pages", body, 201, 409, NULL, err, errlen)) < 0)
    return rc;
  snprintf(path, sizeof path, "/v1/pages/%s/components", page_id);
  for (size_t i = 0; i < sizeof g_components / sizeof g_components[0]; i++) {
    char id[64];
    snprintf(id, sizeof id, "%s%s", page_id, g_components[i].suffix);
    body = json_pack("{s:{s:s,s:s,s:s,s:b}}", "component", "id", id, "name",
                     g_components[i].name, "description", g_components[i].description,
                     "showcase", 1);
    if ((rc = call(r, key, "POST", path, body, 201, 409, NULL, err, errlen)) < 0)
      return rc;
  }
  snprintf(api, sizeof api, "%sapi", page_id);
  snprintf(db, sizeof db, "%sdb", page_id);

  /* groups take no client id: look for it by name first */
  json_t *list = NULL;
  snprintf(path, sizeof path, "/v1/pages/%s/component-groups", page_id);
  if ((rc = call(r, key, "GET", path, NULL, 200, 0, &list, err, errlen)) < 0)
    return rc;
  int have = has_group(list, "Core services");
  json_decref(list);
  if (!have) {
    body = json_pack("{s:s,s:{s:s,s:[s,s]}}", "description", "What everything else needs",
                     "component_group", "name", "Core services", "components", api, db);
    if ((rc = call(r, key, "POST", path, body, 201, 0, NULL, err, errlen)) < 0)
      return rc;
  }

  snprintf(inc, sizeof inc, "%sinc1", page_id);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page_id);
  body = json_pack("{s:{s:s,s:s,s:s,s:s,s:{s:s},s:[s],s:b}}", "incident", "id", inc, "name",
                   "Elevated API error rates", "status", "investigating", "body",
                   "We are investigating elevated error rates on the API.", "components", api,
                   "partial_outage", "component_ids", api, "deliver_notifications", 0);
  rc = call(r, key, "POST", path, body, 201, 409, NULL, err, errlen);
  if (rc < 0)
    return rc;
  if (rc == 1) /* made by an earlier run, updates included */
    return 0;
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", page_id, inc);
  body = json_pack("{s:{s:s,s:s,s:b}}", "incident", "status", "identified", "body",
                   "A failing database replica causes the errors; traffic is being moved "
                   "away from it.",
                   "deliver_notifications", 0);
  rc = call(r, key, "PATCH", path, body, 200, 0, NULL, err, errlen);
  return rc < 0 ? rc : 0;
}
