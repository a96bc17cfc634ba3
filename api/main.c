/* statusd-api: the status-page API process of one region.
 *
 *   statusd-api [--topology FILE] --region NAME [--test-clock]
 *               [--rate-limit RPS:BURST] [--durable-timeout-ms MS] [serve]
 *   statusd-api [--topology FILE] --region NAME migrate
 *   statusd-api [--topology FILE] --region NAME create-admin-key [--name NAME]
 *               [--key KEY]
 *
 * serve (the default) applies the schema migrations, loads the region's
 * state from PostgreSQL into the cache, and serves HTTP on the region's
 * address and API port until SIGTERM/SIGINT (graceful: in-flight requests
 * finish).  --rate-limit (or $SP_RATE_LIMIT) sets the management API's
 * per-key token bucket (default 10:100, see api/auth.h).  --durable-timeout-ms
 * (or $SP_DURABLE_TIMEOUT_MS, 1-600000, default 5000) bounds how long an
 * X-Durable write waits for another region (api_durable.c).
 * create-admin-key makes an organisation admin key and prints it once: the
 * bootstrap step that needs no database console.  --key KEY uses the given
 * key (20-100 characters of [A-Za-z0-9_-]) instead of a random
 * one, so a deployment tool can record the key before it exists.
 *
 * The one per-process struct is `g_api` (api/internal.h), set up here.
 */
#include "auth.h"
#include "internal.h"
#include "render.h"
#include "routes.h"

#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sp_alloc.h"
#include "sp_log.h"
#include "sp_migrate.h"

static api_server g_api;

static void usage(FILE *f) {
  fprintf(f, "usage: statusd-api [--topology FILE] --region NAME [--test-clock] "
             "[--rate-limit RPS:BURST] [--durable-timeout-ms MS] [serve | migrate | "
             "create-admin-key [--name NAME] [--key KEY]]\n");
}

/* The directory of SQL migrations: $SP_SQL_DIR, else lib/sql beside the
 * build directory holding this executable (build/statusd-api -> lib/sql). */
static void sql_dir(char *out, size_t len) {
  const char *env = getenv("SP_SQL_DIR");
  if (env && *env) {
    snprintf(out, len, "%s", env);
    return;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    snprintf(out, len, "lib/sql");
    return;
  }
  exe[n] = '\0';
  char *dir = dirname(exe);
  /* build/ or build/asan/: walk up until lib/sql exists */
  char cand[PATH_MAX];
  for (int up = 1; up <= 3; up++) {
    snprintf(cand, sizeof cand, "%s", dir);
    for (int i = 0; i < up; i++)
      strncat(cand, "/..", sizeof cand - strlen(cand) - 1);
    strncat(cand, "/lib/sql", sizeof cand - strlen(cand) - 1);
    if (access(cand, R_OK) == 0) {
      snprintf(out, len, "%s", cand);
      return;
    }
  }
  snprintf(out, len, "lib/sql");
}

static void conninfo(const sp_topo_region *r, char *out, size_t len) {
  snprintf(out, len, "host=%s port=%d dbname=%s user=%s connect_timeout=5 application_name=statusd-api",
           r->postgres.host, r->postgres.port, r->postgres.dbname, r->postgres.user);
}

static int do_migrate(const sp_topo_region *r) {
  char ci[1024], dir[PATH_MAX], err[512];
  conninfo(r, ci, sizeof ci);
  sql_dir(dir, sizeof dir);
  sp_migrate_report rep;
  int rc = sp_migrate_run(ci, dir, &rep, err, sizeof err);
  if (rc) {
    sp_log_error("migrations failed", "{s:s,s:s}", "dir", dir, "error", err);
    return rc;
  }
  sp_log_info("migrations applied", "{s:s,s:i,s:i}", "dir", dir, "applied", (int)rep.applied,
              "skipped", (int)rep.skipped);
  return 0;
}

/* ---- create-admin-key -------------------------------------------------------- */

/* 1 when `key` is acceptable for --key: 20-100 characters of [A-Za-z0-9_-]
 * (what a random key looks like, and safe in a header and a shell). */
static int admin_key_ok(const char *key) {
  size_t n = strlen(key);
  if (n < 20 || n > 100)
    return 0;
  return strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

static int do_create_admin_key(api_server *s, const char *name, const char *given) {
  if (do_migrate(s->region))
    return 1;
  char ci[1024];
  conninfo(s->region, ci, sizeof ci);
  char key[128], hash_hex[65];
  if (given) {
    snprintf(key, sizeof key, "%s", given);
  } else {
    uint8_t raw[24];
    if (RAND_bytes(raw, sizeof raw) != 1) {
      fprintf(stderr, "statusd-api: no randomness for a key\n");
      return 1;
    }
    static const char hexd[] = "0123456789abcdef";
    /* "sp_" + 48 hex characters */
    memcpy(key, "sp_", 3);
    for (size_t i = 0; i < sizeof raw; i++) {
      key[3 + 2 * i] = hexd[raw[i] >> 4];
      key[4 + 2 * i] = hexd[raw[i] & 15];
    }
    key[3 + 2 * sizeof raw] = '\0';
  }
  api_key_hash_hex(key, hash_hex);
  char now[40];
  api_format_time(api_now_ms(s), now, sizeof now);
  json_t *ops = api_ops_new();
  api_op_create(ops, API_ORG_PAGE, API_T_KEY, hash_hex);
  api_op_set(ops, API_ORG_PAGE, API_T_KEY, hash_hex, "scope", "org");
  api_op_set(ops, API_ORG_PAGE, API_T_KEY, hash_hex, "name", name ? name : "admin");
  api_op_set(ops, API_ORG_PAGE, API_T_KEY, hash_hex, "created_at", now);
  char *ops_json = json_dumps(ops, JSON_COMPACT);
  json_decref(ops);
  char region[16], wall[32];
  snprintf(region, sizeof region, "%d", s->region_id);
  snprintf(wall, sizeof wall, "%llu", (unsigned long long)api_now_ms(s));
  PGconn *db = PQconnectdb(ci);
  if (PQstatus(db) != CONNECTION_OK) {
    fprintf(stderr, "statusd-api: connecting to PostgreSQL: %s", PQerrorMessage(db));
    PQfinish(db);
    free(ops_json);
    return 1;
  }
  const char *params[4] = {region, wall, ops_json, NULL};
  PGresult *res = PQexecParams(db, "SELECT sp_write($1::smallint, $2::bigint, $3::jsonb, $4::jsonb)",
                               4, NULL, params, NULL, NULL, 0);
  int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
  if (!ok)
    fprintf(stderr, "statusd-api: creating the key: %s", PQerrorMessage(db));
  PQclear(res);
  PQfinish(db);
  free(ops_json);
  if (!ok)
    return 1;
  printf("%s\n", key);
  fflush(stdout);
  return 0;
}

/* ---- serve ---------------------------------------------------------------------- */

static void on_request_done(void *arg, const char *method, const char *route, int status,
                            uint64_t duration_ns) {
  api_server *s = arg;
  api_metrics_request(s, method, route, status, duration_ns);
}

static void on_shutdown(sp_http_server *srv, void *arg) {
  api_server *s = arg;
  (void)srv;
  sp_log_info("shutting down", NULL);
  api_ops_stop(s);
  api_durable_stop(s);
  api_cache_stop(s);
  if (s->redis)
    sp_redis_close(s->redis, NULL, NULL);
  sp_pg_pool_close(s->pg_write, NULL, NULL);
  sp_pg_pool_close(s->pg_read, NULL, NULL);
}

static int serve(api_server *s) {
  char ci[1024], err[512];
  conninfo(s->region, ci, sizeof ci);
  int rc = do_migrate(s->region);
  if (rc)
    return 1;
  if (api_cache_doc_new(&s->doc))
    return 1;
  rc = api_cache_load(s, ci, err, sizeof err);
  if (rc) {
    sp_log_error("cannot load the store", "{s:s}", "error", err);
    return 1;
  }
  sp_log_info("store loaded", "{s:i}", "entities", (int)crdt_doc_entity_count(s->doc));

  s->loop = uv_default_loop();
  if (sp_metrics_new(&s->metrics) || api_metrics_init(s))
    return 1;
  sp_pg_opts po;
  memset(&po, 0, sizeof po);
  po.conninfo = ci;
  po.size = 4;
  po.max_waiting = 4096;
  po.query_timeout_ms = 5000;
  po.connect_timeout_ms = 2000;
  if ((rc = sp_pg_pool_new(s->loop, &po, &s->pg_write))) {
    sp_log_error("cannot create the write pool", "{s:s}", "error", sp_strerror(rc));
    return 1;
  }
  po.size = 2;
  po.max_waiting = 64;
  if ((rc = sp_pg_pool_new(s->loop, &po, &s->pg_read))) {
    sp_log_error("cannot create the read pool", "{s:s}", "error", sp_strerror(rc));
    return 1;
  }
  sp_redis_opts ro;
  memset(&ro, 0, sizeof ro);
  ro.host = s->region->redis.host;
  ro.port = s->region->redis.port;
  if ((rc = sp_redis_new(s->loop, &ro, &s->redis))) {
    sp_log_error("cannot create the Redis client", "{s:s}", "error", sp_strerror(rc));
    return 1;
  }
  snprintf(s->changes_channel, sizeof s->changes_channel, "sp:%s:%s:changes", s->topo->cluster,
           s->region->name);

  sp_http_config hc;
  sp_http_config_init(&hc);
  hc.max_header_bytes = s->topo->http.max_header_bytes;
  hc.max_body_bytes = s->topo->http.max_body_bytes;
  hc.header_timeout_ms = s->topo->http.header_timeout_ms;
  hc.idle_timeout_ms = s->topo->http.idle_timeout_ms;
  hc.max_connections = s->topo->http.max_connections;
  hc.on_done = on_request_done;
  hc.on_done_arg = s;
  const sp_http_route *routes;
  size_t nroutes;
  if (api_routes(&routes, &nroutes))
    return 1;
  if ((rc = sp_http_server_new(s->loop, &hc, routes, nroutes, s, &s->http))) {
    sp_log_error("cannot create the HTTP server", "{s:s}", "error", sp_strerror(rc));
    return 1;
  }
  if ((rc = sp_http_server_listen(s->http, s->region->address, s->region->api.port))) {
    sp_log_error("cannot listen", "{s:s,s:i,s:s}", "address", s->region->address, "port",
                 s->region->api.port, "error", sp_strerror(rc));
    return 1;
  }
  if (api_cache_start(s) || api_durable_start(s) || api_ops_start(s))
    return 1;
  sp_http_server_handle_signals(s->http, on_shutdown, s);
  sp_log_info("listening", "{s:s,s:i,s:i}", "address", s->region->address, "port",
              sp_http_server_port(s->http), "pid", (int)getpid());
  uv_run(s->loop, UV_RUN_DEFAULT);
  sp_http_server_free(s->http);
  api_render_free(s);
  api_cache_free(s);
  crdt_doc_free(s->doc);
  sp_metrics_free(s->metrics);
  uv_loop_close(s->loop);
  sp_log_info("stopped", NULL);
  return 0;
}

int main(int argc, char **argv) {
  const char *topo_path = getenv("SP_TOPOLOGY");
  const char *region = getenv("SP_REGION");
  const char *key_name = NULL;
  const char *given_key = NULL;
  const char *rate_limit = getenv("SP_RATE_LIMIT");
  const char *durable_timeout = getenv("SP_DURABLE_TIMEOUT_MS");
  int test_clock = 0;
  static const struct option opts[] = {{"topology", required_argument, NULL, 't'},
                                       {"region", required_argument, NULL, 'r'},
                                       {"name", required_argument, NULL, 'n'},
                                       {"key", required_argument, NULL, 'k'},
                                       {"test-clock", no_argument, NULL, 'C'},
                                       {"rate-limit", required_argument, NULL, 'L'},
                                       {"durable-timeout-ms", required_argument, NULL, 'D'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "t:r:n:h", opts, NULL)) != -1) {
    switch (c) {
    case 't': topo_path = optarg; break;
    case 'r': region = optarg; break;
    case 'n': key_name = optarg; break;
    case 'k': given_key = optarg; break;
    case 'C': test_clock = 1; break;
    case 'L': rate_limit = optarg; break;
    case 'D': durable_timeout = optarg; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  const char *cmd = optind < argc ? argv[optind] : "serve";
  if (optind + 1 < argc) {
    fprintf(stderr, "statusd-api: unexpected argument '%s'\n", argv[optind + 1]);
    usage(stderr);
    return 2;
  }
  if (strcmp(cmd, "serve") && strcmp(cmd, "migrate") && strcmp(cmd, "create-admin-key")) {
    fprintf(stderr, "statusd-api: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
  }
  if (given_key && strcmp(cmd, "create-admin-key")) {
    fprintf(stderr, "statusd-api: --key is only for create-admin-key\n");
    usage(stderr);
    return 2;
  }
  if (given_key && !admin_key_ok(given_key)) {
    fprintf(stderr, "statusd-api: --key: expected 20-100 characters of [A-Za-z0-9_-]\n");
    return 2;
  }
  if (rate_limit && *rate_limit) {
    double rps, burst;
    if (api_auth_parse_rate(rate_limit, &rps, &burst)) {
      fprintf(stderr, "statusd-api: --rate-limit: expected RPS:BURST such as 10:100, got '%s'\n",
              rate_limit);
      return 2;
    }
    api_auth_configure(rps, burst, 0);
  }
  unsigned long long durable_ms = 5000;
  if (durable_timeout && *durable_timeout) {
    char *end;
    errno = 0;
    durable_ms = strtoull(durable_timeout, &end, 10);
    if (errno || *end || durable_timeout[0] == '-' || durable_ms < 1 || durable_ms > 600000) {
      fprintf(stderr,
              "statusd-api: --durable-timeout-ms: expected milliseconds 1-600000, got '%s'\n",
              durable_timeout);
      return 2;
    }
  }
  if (topo_path == NULL)
    topo_path = "config/topology.local.json";
  if (region == NULL) {
    fprintf(stderr, "statusd-api: --region is required\n");
    usage(stderr);
    return 2;
  }
  sp_topo *topo;
  char err[512];
  if (sp_topo_load(topo_path, &topo, err, sizeof err)) {
    fprintf(stderr, "statusd-api: %s\n", err);
    return 2;
  }
  api_server *s = &g_api;
  s->topo = topo;
  s->region = sp_topo_region_find(topo, region);
  if (s->region == NULL) {
    fprintf(stderr, "statusd-api: %s: --region: no region named '%s'\n", topo_path, region);
    sp_topo_free(topo);
    return 2;
  }
  s->region_id = (int)s->region->index;
  s->test_clock = test_clock;
  s->durable_timeout_ms = durable_ms;
  crdt_idgen_init(&s->ids, (crdt_region)s->region_id);
  sp_log_init("statusd-api", s->region->name, topo->log_level_name);

  int rc;
  if (strcmp(cmd, "migrate") == 0)
    rc = do_migrate(s->region) ? 1 : 0;
  else if (strcmp(cmd, "create-admin-key") == 0)
    rc = do_create_admin_key(s, key_name, given_key);
  else
    rc = serve(s);
  sp_topo_free(topo);
  return rc;
}
