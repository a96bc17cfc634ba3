/* ops_endpoints: `statusctl endpoints [--json]`, where the local deployment
 * answers, for scripts and tests:
 *
 *   {"regions": [{"name": "us-east", "api": "http://127.0.0.11:8080",
 *                 "replication": "https://127.0.0.11:8443",
 *                 "ready": "http://127.0.0.11:8080/ready",
 *                 "metrics": "http://127.0.0.11:8080/metrics"}, ...],
 *    "admin_key": "sp_...", "demo_page_id": "..."}
 *
 * Read from the topology and the state file only (nothing is contacted);
 * admin_key and demo_page_id are null before the first `up`.
 */
#include "ops.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ops_endpoints(ops_ctx *c) {
  const sp_topo *t = c->topo;
  ops_state st;
  char err[512];
  if (ops_state_load(t, &st, err, sizeof err)) {
    fprintf(stderr, "statusctl: %s\n", err);
    return OPS_EXIT_FAIL;
  }
  if (c->flags & OPS_F_JSON) {
    json_t *regions = json_array();
    for (size_t i = 0; i < t->nregions; i++) {
      const sp_topo_region *r = &t->regions[i];
      char api[256], repl[256], ready[300], metrics[300];
      ops_api_base(r, api, sizeof api);
      ops_replication_base(r, repl, sizeof repl);
      snprintf(ready, sizeof ready, "%s/ready", api);
      snprintf(metrics, sizeof metrics, "%s/metrics", api);
      json_array_append_new(regions, json_pack("{s:s,s:s,s:s,s:s,s:s}", "name", r->name, "api",
                                               api, "replication", repl, "ready", ready,
                                               "metrics", metrics));
    }
    json_t *o = json_pack("{s:o,s:s?,s:s?}", "regions", regions, "admin_key",
                          st.admin_key[0] ? st.admin_key : NULL, "demo_page_id",
                          st.demo_page_id[0] && st.demo_done ? st.demo_page_id : NULL);
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (text == NULL) {
      fprintf(stderr, "statusctl: out of memory\n");
      return OPS_EXIT_FAIL;
    }
    printf("%s\n", text);
    free(text);
    return OPS_EXIT_OK;
  }
  int demo = st.demo_page_id[0] && st.demo_done;
  if (demo) {
    printf("Demo page %s, in every region:\n", st.demo_page_id);
    for (size_t i = 0; i < t->nregions; i++) {
      char api[256];
      ops_api_base(&t->regions[i], api, sizeof api);
      printf("  %-10s %s/pages/%s\n", t->regions[i].name, api, st.demo_page_id);
      printf("  %-10s %s/pages/%s/api/v2/summary.json\n", "", api, st.demo_page_id);
    }
  }
  printf("Admin key (management API: Authorization: OAuth <key>): %s\n",
         st.admin_key[0] ? st.admin_key : "(none yet: run statusctl up)");
  printf("Endpoints:\n");
  for (size_t i = 0; i < t->nregions; i++) {
    const sp_topo_region *r = &t->regions[i];
    char api[256], repl[256];
    ops_api_base(r, api, sizeof api);
    ops_replication_base(r, repl, sizeof repl);
    printf("  %-10s api %s  ready %s/ready  metrics %s/metrics  replication %s\n", r->name, api,
           api, api, repl);
  }
  return OPS_EXIT_OK;
}
