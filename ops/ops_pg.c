/* ops_pg: the PostgreSQL cluster of each region of the local deployment,
 * and the one-off seeding of regions from another region's change log.
 *
 * A cluster lives in the region's pg dir (initdb on first use, as the
 * service user; superuser "postgres", trust authentication for loopback
 * TCP only, no Unix socket).  Its settings come from the topology and are
 * rewritten on every `up` into statusctl.conf, which postgresql.conf
 * includes, and pg_hba.conf; so the data directory can also be started by
 * hand with `postgres -D <dir>`.  fsync stays on: this is the deployment's
 * data, not a test's.
 *
 * Seeding (until statusd-replicad exists): the change-log rows a region
 * lacks are copied, with their original origin, sequence and stamps, from
 * another region through sp_apply_remote (lib/sql/0003_apply_remote.sql),
 * the function the replication daemon will call.
 *
 * Connections are opened and closed within each call; nothing is kept.
 */
#include "ops.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sp_alloc.h"
#include "sp_err.h"

#define SUPERUSER "postgres"
#define SEED_BATCH 2000
#define STR_(x) #x
#define STR(x) STR_(x)

void ops_pg_conninfo(const sp_topo_region *r, const char *dbname, const char *user, char *out,
                     size_t len) {
  snprintf(out, len, "host=%s port=%u dbname=%s user=%s connect_timeout=5 application_name=statusctl",
           r->postgres.host, (unsigned)r->postgres.port, dbname ? dbname : r->postgres.dbname,
           user ? user : r->postgres.user);
}

/* Write `text` to pg_dir/name, owned by the service user (PostgreSQL
 * reads it as that user). */
static int write_owned(const ops_ctx *c, const sp_topo_region *r, const char *name,
                       const char *text, char *err, size_t errlen) {
  char path[PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/%s", r->pg_dir, name);
  int rc = ops_write_file(path, text, strlen(text), 0600);
  if (rc == 0 && c->user.drop && chown(path, c->user.uid, c->user.gid) != 0)
    rc = -errno;
  if (rc)
    snprintf(err, errlen, "writing %s: %s", path, sp_strerror(rc));
  return rc;
}

/* Make postgresql.conf include statusctl.conf (once). */
static int include_ours(const sp_topo_region *r, char *err, size_t errlen) {
  static const char line[] = "\n# settings from the topology, written by statusctl up\n"
                             "include_if_exists = 'statusctl.conf'\n";
  char path[PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/postgresql.conf", r->pg_dir);
  FILE *f = fopen(path, "r+");
  if (f == NULL) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return SP_ERR_IO;
  }
  char buf[512];
  int found = 0;
  while (fgets(buf, sizeof buf, f))
    if (strncmp(buf, "include_if_exists = 'statusctl.conf'", 36) == 0)
      found = 1;
  int rc = 0;
  if (!found && (fseek(f, 0, SEEK_END) != 0 || fputs(line, f) == EOF))
    rc = SP_ERR_IO;
  if (fclose(f) != 0)
    rc = SP_ERR_IO;
  if (rc)
    snprintf(err, errlen, "%s: cannot add the include line", path);
  return rc;
}

int ops_pg_init(const ops_ctx *c, const sp_topo_region *r, char *err, size_t errlen) {
  char probe[PATH_MAX + 32];
  snprintf(probe, sizeof probe, "%s/PG_VERSION", r->pg_dir);
  int created = 0;
  if (access(probe, F_OK) != 0) {
    int rc = ops_mkdir(r->pg_dir, 0700, &c->user, err, errlen);
    if (rc)
      return rc;
    char bindir[PATH_MAX], prog[PATH_MAX + 16], logfile[PATH_MAX + 32];
    ops_pg_bindir(bindir, sizeof bindir);
    snprintf(prog, sizeof prog, "%s/initdb", bindir);
    snprintf(logfile, sizeof logfile, "%s/initdb.log", r->log_dir);
    char *const argv[] = {prog,          "-D",          (char *)r->pg_dir, "--auth=trust",
                          "--username=" SUPERUSER, "--encoding=UTF8", "--locale=C", NULL};
    rc = ops_run(c, 1, logfile, 1, argv, 120000);
    if (rc != 0) {
      snprintf(err, errlen, "initdb of %s failed (%s %d); its output is in %s", r->pg_dir,
               rc < 0 ? "error" : "exit", rc, logfile);
      return rc < 0 ? rc : SP_ERR_IO;
    }
    created = 1;
  }
  char conf[2048];
  snprintf(conf, sizeof conf,
           "# Written by statusctl up from the topology %s\n"
           "# (region %s); rewritten on every up, so edit the topology instead.\n"
           "listen_addresses = '%s'\n"
           "port = %u\n"
           "unix_socket_directories = ''\n"
           "max_connections = 60\n"
           "shared_buffers = 32MB\n"
           "fsync = on\n"
           "synchronous_commit = on\n"
           "timezone = 'UTC'\n"
           "log_timezone = 'UTC'\n"
           "log_line_prefix = '%%m [%%p] '\n"
           "log_min_messages = warning\n",
           c->topo->display_name, r->name, r->postgres.host, (unsigned)r->postgres.port);
  static const char hba[] =
      "# Written by statusctl up: the local deployment listens on loopback\n"
      "# addresses only and trusts them; there is no Unix socket.\n"
      "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
      "host    all       all   127.0.0.0/8   trust\n"
      "host    all       all   ::1/128       trust\n";
  int rc;
  if ((rc = write_owned(c, r, "statusctl.conf", conf, err, errlen)) ||
      (rc = write_owned(c, r, "pg_hba.conf", hba, err, errlen)) ||
      (rc = include_ours(r, err, errlen)))
    return rc;
  return created;
}

void ops_pg_argv_init(const ops_ctx *c, const sp_topo_region *r, ops_pg_argv *store) {
  ops_proc_program(c, OPS_POSTGRES, store->prog, sizeof store->prog);
  snprintf(store->data, sizeof store->data, "%s", r->pg_dir);
  store->argv[0] = store->prog;
  store->argv[1] = "-D";
  store->argv[2] = store->data;
  store->argv[3] = NULL;
}

int ops_pg_ping(const sp_topo_region *r) {
  char ci[1024];
  ops_pg_conninfo(r, "postgres", SUPERUSER, ci, sizeof ci);
  /* only OK: NO_RESPONSE covers "starting up" */
  return PQping(ci) == PQPING_OK;
}

/* 1 when `sql` with one parameter returns a row, 0 when none, -1 on error. */
static int exists(PGconn *db, const char *sql, const char *param) {
  PGresult *res = PQexecParams(db, sql, 1, NULL, &param, NULL, NULL, 0);
  int rc = PQresultStatus(res) != PGRES_TUPLES_OK ? -1 : PQntuples(res) > 0;
  PQclear(res);
  return rc;
}

static int exec_ok(PGconn *db, const char *sql, char *err, size_t errlen) {
  PGresult *res = PQexec(db, sql);
  int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
  if (!ok)
    snprintf(err, errlen, "%s: %s", sql, PQerrorMessage(db));
  PQclear(res);
  return ok ? 0 : SP_ERR_DB;
}

int ops_pg_bootstrap(const sp_topo_region *r, char *err, size_t errlen) {
  err[0] = '\0';
  char ci[1024];
  ops_pg_conninfo(r, "postgres", SUPERUSER, ci, sizeof ci);
  PGconn *db = PQconnectdb(ci);
  if (PQstatus(db) != CONNECTION_OK) {
    snprintf(err, errlen, "%s: connecting to PostgreSQL: %s", r->name, PQerrorMessage(db));
    PQfinish(db);
    return SP_ERR_DB_DOWN;
  }
  int rc = 0;
  char *user = PQescapeIdentifier(db, r->postgres.user, strlen(r->postgres.user));
  char *dbname = PQescapeIdentifier(db, r->postgres.dbname, strlen(r->postgres.dbname));
  char sql[1024];
  int e;
  if (user == NULL || dbname == NULL) {
    snprintf(err, errlen, "%s: %s", r->name, PQerrorMessage(db));
    rc = SP_ERR_DB;
    goto out;
  }
  e = exists(db, "SELECT 1 FROM pg_roles WHERE rolname = $1", r->postgres.user);
  if (e == 0) {
    snprintf(sql, sizeof sql, "CREATE ROLE %s LOGIN", user);
    rc = exec_ok(db, sql, err, errlen);
  } else if (e < 0) {
    rc = SP_ERR_DB;
  }
  if (rc == 0) {
    e = exists(db, "SELECT 1 FROM pg_database WHERE datname = $1", r->postgres.dbname);
    if (e == 0) {
      snprintf(sql, sizeof sql, "CREATE DATABASE %s OWNER %s", dbname, user);
      rc = exec_ok(db, sql, err, errlen);
    } else if (e < 0) {
      rc = SP_ERR_DB;
    }
  }
  if (rc == SP_ERR_DB && err[0] == '\0')
    snprintf(err, errlen, "%s: %s", r->name, PQerrorMessage(db));
out:
  PQfreemem(user);
  PQfreemem(dbname);
  PQfinish(db);
  err[strcspn(err, "\n")] = '\0';
  return rc;
}

/* ---- seeding -------------------------------------------------------------- */

static PGconn *connect_region(const sp_topo_region *r, char *err, size_t errlen) {
  char ci[1024];
  ops_pg_conninfo(r, NULL, NULL, ci, sizeof ci);
  PGconn *db = PQconnectdb(ci);
  if (PQstatus(db) != CONNECTION_OK) {
    snprintf(err, errlen, "%s: connecting to PostgreSQL: %s", r->name, PQerrorMessage(db));
    PQfinish(db);
    return NULL;
  }
  return db;
}

int ops_pg_seed(const sp_topo_region *from, const sp_topo_region *to, long *applied, char *err,
                size_t errlen) {
  *applied = 0;
  err[0] = '\0';
  PGconn *src = connect_region(from, err, errlen);
  if (src == NULL)
    return SP_ERR_DB_DOWN;
  PGconn *dst = connect_region(to, err, errlen);
  if (dst == NULL) {
    PQfinish(src);
    return SP_ERR_DB_DOWN;
  }
  int rc = 0;
  char *vec = NULL;
  /* what the target has: only the rows beyond its vector are read */
  PGresult *res =
      PQexec(dst, "SELECT coalesce(jsonb_object_agg(origin::text, seq), '{}')::text FROM sp_vclock");
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    snprintf(err, errlen, "%s: reading sp_vclock: %s", to->name, PQerrorMessage(dst));
    PQclear(res);
    rc = SP_ERR_DB;
    goto out;
  }
  vec = sp_strdup(PQgetvalue(res, 0, 0));
  PQclear(res);
  if (vec == NULL) {
    rc = SP_ERR_NOMEM;
    goto out;
  }
  static const char batch_sql[] =
      "WITH b AS (SELECT * FROM sp_change_log"
      "  WHERE (origin, seq) > ($1::smallint, $2::bigint)"
      "    AND seq > coalesce(($3::jsonb ->> origin::text)::bigint, 0)"
      "  ORDER BY origin, seq LIMIT " STR(SEED_BATCH) ")"
      "SELECT coalesce(jsonb_agg(jsonb_build_object('k', kind, 'p', page_id, 't', type, 'i', id,"
      "         'f', field, 'v', value, 'cl', cl, 'hlc', hlc, 'region', region,"
      "         'origin', origin, 'seq', seq) ORDER BY origin, seq), '[]')::text,"
      "       count(*), max(origin), max(seq) FILTER (WHERE origin = (SELECT max(origin) FROM b))"
      "  FROM b";
  char last_origin[16] = "-1", last_seq[32] = "0", local[16];
  snprintf(local, sizeof local, "%zu", to->index);
  for (;;) {
    const char *p[3] = {last_origin, last_seq, vec};
    res = PQexecParams(src, batch_sql, 3, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
      snprintf(err, errlen, "%s: reading the change log: %s", from->name, PQerrorMessage(src));
      PQclear(res);
      rc = SP_ERR_DB;
      goto out;
    }
    long n = atol(PQgetvalue(res, 0, 1));
    if (n > 0) {
      snprintf(last_origin, sizeof last_origin, "%s", PQgetvalue(res, 0, 2));
      snprintf(last_seq, sizeof last_seq, "%s", PQgetvalue(res, 0, 3));
      const char *ap[2] = {PQgetvalue(res, 0, 0), local};
      PGresult *ar = PQexecParams(dst, "SELECT sp_apply_remote($1::jsonb, $2::smallint)", 2, NULL,
                                  ap, NULL, NULL, 0);
      if (PQresultStatus(ar) != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "%s: sp_apply_remote: %s", to->name, PQerrorMessage(dst));
        PQclear(ar);
        PQclear(res);
        rc = SP_ERR_DB;
        goto out;
      }
      *applied += atol(PQgetvalue(ar, 0, 0));
      PQclear(ar);
    }
    PQclear(res);
    if (n < SEED_BATCH)
      break;
  }
out:
  sp_free(vec);
  PQfinish(src);
  PQfinish(dst);
  /* libpq messages end with a newline; the caller prints one line */
  err[strcspn(err, "\n")] = '\0';
  return rc;
}
