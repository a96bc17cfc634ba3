/* ops_status: `statusctl status [--json]`, the state of every region of the
 * local deployment: each process up or down with its PID, readiness (GET
 * /ready of statusd-api) and per-peer replication lag.
 *
 * Lag comes from statusd-replicad's /metrics (https on the replication
 * port, with the region's own certificate, as a peer would connect): the
 * samples of LAG_METRIC (seconds, one per peer="..." label), shown in
 * milliseconds.  Until the daemon is built the lag reads
 * "n/a (replicad not built)".
 *
 * Exit status: 0 when every process that exists is up and every API is
 * ready, 1 otherwise.  JSON values are built and freed within the call.
 */
#include "ops.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_MAX (8u << 20)
#define LAG_METRIC "sp_repl_lag_seconds"

/* Adds {peer: milliseconds} to `lag` for each LAG_METRIC sample of a
 * Prometheus text body. */
static void parse_lag(const char *text, json_t *lag) {
  for (const char *line = text; line && *line;) {
    const char *nl = strchr(line, '\n');
    size_t len = nl ? (size_t)(nl - line) : strlen(line);
    char buf[512];
    if (len < sizeof buf && line[0] != '#') {
      memcpy(buf, line, len);
      buf[len] = '\0';
      char *brace = strchr(buf, '{');
      char *close = brace ? strchr(brace, '}') : NULL;
      char *peer = brace ? strstr(brace, "peer=\"") : NULL;
      if (brace && close && peer && peer < close) {
        *brace = '\0';
        peer += 6;
        char *q = strchr(peer, '"');
        char *end;
        double v = strtod(close + 1, &end);
        if (q && q < close && end != close + 1 && strcmp(buf, LAG_METRIC) == 0) {
          *q = '\0';
          json_object_set_new(lag, peer, json_real(round(v * 1000.0))); /* whole ms */
        }
      }
    }
    line = nl ? nl + 1 : NULL;
  }
}

/* The region's entry of the status; *healthy cleared when anything that
 * should run does not. */
static json_t *region_status(const ops_ctx *c, const sp_topo_region *r, int *healthy) {
  json_t *procs = json_object();
  int replicad_built = 0;
  for (ops_proc_kind k = OPS_POSTGRES; k < OPS_NPROCS; k++) {
    char prog[PATH_MAX];
    int built = ops_proc_program(c, k, prog, sizeof prog) == 0;
    if (k == OPS_REPLICAD)
      replicad_built = built;
    pid_t pid = ops_proc_pid(r, k);
    const char *state = pid > 0 ? "up" : (k == OPS_REPLICAD && !built) ? "not built" : "down";
    if (pid == 0 && built)
      *healthy = 0;
    json_object_set_new(procs, ops_proc_name(k),
                        json_pack("{s:s,s:o}", "state", state, "pid",
                                  pid > 0 ? json_integer(pid) : json_null()));
  }
  /* readiness */
  char url[512], err[256];
  ops_api_base(r, url, sizeof url);
  strncat(url, "/ready", sizeof url - strlen(url) - 1);
  sp_buf b;
  sp_buf_init(&b, 65536);
  long status = 0;
  int rc = ops_http("GET", url, NULL, NULL, NULL, 2000, &status, &b, err, sizeof err);
  char readiness[300];
  if (rc)
    snprintf(readiness, sizeof readiness, "unreachable");
  else if (status == 200)
    snprintf(readiness, sizeof readiness, "ready");
  else
    snprintf(readiness, sizeof readiness, "not ready (%ld %.200s)", status, b.base);
  sp_buf_release(&b);
  if (!(rc == 0 && status == 200))
    *healthy = 0;

  /* replication lag */
  json_t *lag = json_null();
  const char *why = NULL;
  if (!replicad_built) {
    why = "n/a (replicad not built)";
  } else if (ops_proc_pid(r, OPS_REPLICAD) == 0) {
    why = "n/a (replicad down)";
  } else {
    ops_replication_base(r, url, sizeof url);
    strncat(url, "/metrics", sizeof url - strlen(url) - 1);
    ops_http_tls tls = {c->topo->tls_ca_cert, r->tls_cert, r->tls_key};
    sp_buf_init(&b, METRICS_MAX);
    rc = ops_http("GET", url, NULL, NULL, c->topo->tls_ca_cert ? &tls : NULL, 2000, &status, &b,
                  err, sizeof err);
    if (rc || status != 200) {
      why = "n/a (metrics unreachable)";
    } else {
      lag = json_object();
      parse_lag(b.base, lag);
      if (json_object_size(lag) == 0) {
        json_decref(lag);
        lag = json_null();
        why = "n/a (no lag metric)";
      }
    }
    sp_buf_release(&b);
  }
  return json_pack("{s:s,s:o,s:b,s:s,s:o,s:s?}", "name", r->name, "processes", procs, "ready",
                   strcmp(readiness, "ready") == 0, "readiness", readiness, "replication_lag_ms",
                   lag, "replication", why);
}

static void print_table(json_t *regions) {
  printf("%-10s %-18s %-18s %-18s %-18s %s\n", "REGION", "POSTGRES", "REDIS", "STATUSD-API",
         "STATUSD-REPLICAD", "READY");
  size_t i;
  json_t *r;
  json_array_foreach(regions, i, r) {
    printf("%-10s", json_string_value(json_object_get(r, "name")));
    for (ops_proc_kind k = OPS_POSTGRES; k < OPS_NPROCS; k++) {
      json_t *p = json_object_get(json_object_get(r, "processes"), ops_proc_name(k));
      char cell[64];
      json_t *pid = json_object_get(p, "pid");
      if (json_is_integer(pid))
        snprintf(cell, sizeof cell, "%s (%lld)", json_string_value(json_object_get(p, "state")),
                 (long long)json_integer_value(pid));
      else
        snprintf(cell, sizeof cell, "%s", json_string_value(json_object_get(p, "state")));
      printf(" %-18s", cell);
    }
    printf(" %s\n", json_string_value(json_object_get(r, "readiness")));
  }
  printf("\nREPLICATION LAG\n");
  json_array_foreach(regions, i, r) {
    const char *name = json_string_value(json_object_get(r, "name"));
    json_t *lag = json_object_get(r, "replication_lag_ms");
    if (!json_is_object(lag)) {
      printf("%-10s %s\n", name, json_string_value(json_object_get(r, "replication")));
      continue;
    }
    const char *peer;
    json_t *v;
    json_object_foreach(lag, peer, v) {
      printf("%-10s -> %-10s %.0f ms\n", name, peer, json_real_value(v));
    }
  }
}

int ops_status(ops_ctx *c) {
  const sp_topo *t = c->topo;
  int healthy = 1;
  json_t *regions = json_array();
  for (size_t i = 0; i < t->nregions; i++)
    json_array_append_new(regions, region_status(c, &t->regions[i], &healthy));
  if (c->flags & OPS_F_JSON) {
    json_t *o = json_pack("{s:O,s:b}", "regions", regions, "healthy", healthy);
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (text)
      printf("%s\n", text);
    free(text);
  } else {
    print_table(regions);
  }
  json_decref(regions);
  return healthy ? OPS_EXIT_OK : OPS_EXIT_FAIL;
}
