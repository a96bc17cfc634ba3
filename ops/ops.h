/* ops: statusctl's internals, shared by the ops_*.c files of ops/.
 *
 * statusctl runs the local deployment described by a topology file: per
 * region a PostgreSQL cluster, a Redis server, statusd-api and (once it is
 * built) statusd-replicad, each a background process with its log in the
 * region's log dir and its PID file in <region state dir>/run/.  This is a
 * command-line tool, so everything here blocks (libpq, hiredis, libcurl,
 * fork/exec + waitpid) and reports to stdout/stderr.
 *
 * Memory: an ops_ctx is set up by main (statusctl.c) and lives for the run;
 * it borrows the sp_topo.  Functions write results into caller buffers;
 * the few that return heap memory say so and how to free it.  Functions
 * return 0 or a negative sp_err code unless they say otherwise; those that
 * fail for a reason the operator must read also fill an `err` buffer (one
 * line, no trailing newline).
 */
#ifndef OPS_H
#define OPS_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "sp_buf.h"
#include "sp_topo.h"

/* Exit statuses of statusctl. */
#define OPS_EXIT_OK 0
#define OPS_EXIT_FAIL 1  /* something is down, differs, or did not come up */
#define OPS_EXIT_USAGE 2 /* bad command line or topology */

/* Subcommand flags (statusctl.c parses them into ops_ctx.flags). */
#define OPS_F_JSON 1u
#define OPS_F_PURGE 2u
#define OPS_F_FORCE 4u

/* Waits (milliseconds). */
#define OPS_PG_START_MS 30000
#define OPS_READY_MS 60000
#define OPS_STOP_MS 15000
#define OPS_HTTP_MS 5000

/* The processes of a region, in start order. */
typedef enum ops_proc_kind {
  OPS_POSTGRES,
  OPS_REDIS,
  OPS_API,
  OPS_REPLICAD,
  OPS_NPROCS
} ops_proc_kind;

/* Who runs PostgreSQL and Redis: when statusctl runs as root, the
 * unprivileged $SP_USER ("statuspage", made by `make deps`), because
 * PostgreSQL refuses root; otherwise the caller.  statusd-api and
 * statusd-replicad always run as the caller. */
typedef struct ops_user {
  char name[64];
  uid_t uid;
  gid_t gid;
  int drop; /* 1: setuid/setgid in the child, chown what it must write */
} ops_user;

typedef struct ops_ctx {
  const sp_topo *topo;           /* borrowed from main */
  char bin_dir[PATH_MAX];        /* where statusd-api/-replicad live: statusctl's dir */
  char repo_var[PATH_MAX];       /* <repo>/var, or "" when no repo was found */
  ops_user user;
  unsigned flags;                /* OPS_F_* */
} ops_ctx;

/* ---- ops_fs.c: directories, files, the clock ---------------------------- */

long long ops_now_ms(void);
void ops_sleep_ms(long ms);
/* mkdir -p `path`; the last component gets `mode` and, when owner is not
 * NULL and owner->drop, owner's uid/gid.  0 or -errno (err filled). */
int ops_mkdir(const char *path, mode_t mode, const ops_user *owner, char *err, size_t errlen);
/* Write `len` bytes to `path` atomically (temp file + rename) with `mode`.
 * 0 or -errno. */
int ops_write_file(const char *path, const void *data, size_t len, mode_t mode);
/* Print the last `lines` lines of `path` to `out`, each prefixed with
 * "  | " (a missing file says so). */
void ops_log_tail(FILE *out, const char *path, int lines);
/* rm -rf `path` (not following symlinks).  0 or -errno of the first
 * failure. */
int ops_remove_tree(const char *path);
/* 1 when `path` is `dir` or inside it (both absolute and normalised). */
int ops_path_within(const char *path, const char *dir);
/* Take <state_dir>/statusctl.lock (flock, exclusive, not waiting), so two
 * statusctl runs never start or stop the same deployment at once.  The
 * lock lasts until the process exits.  0; SP_ERR_BUSY when another
 * statusctl holds it (err says so); SP_ERR_NOENT when the state dir does
 * not exist; another -errno. */
int ops_lock(const sp_topo *t, char *err, size_t errlen);

/* ---- ops_proc.c: background processes and PID files ---------------------- */

/* "postgres", "redis", "statusd-api", "statusd-replicad". */
const char *ops_proc_name(ops_proc_kind k);
/* The program to run: for the services the file in ctx->bin_dir, for
 * PostgreSQL the server binary in its bindir, for Redis "redis-server"
 * from PATH.  0, or SP_ERR_NOENT when it does not exist (out still set). */
int ops_proc_program(const ops_ctx *c, ops_proc_kind k, char *out, size_t len);
/* PostgreSQL's bindir (pg_config --bindir, else the Debian 12 one). */
void ops_pg_bindir(char *out, size_t len);
void ops_proc_pidfile(const sp_topo_region *r, ops_proc_kind k, char *out, size_t len);
void ops_proc_logfile(const sp_topo_region *r, ops_proc_kind k, char *out, size_t len);
/* The PID of the region's running process of kind k: read from its PID
 * file and accepted only when that process exists, is not a zombie, and
 * runs the expected program (a stale file after a reboot names some other
 * process).  0 when not running. */
pid_t ops_proc_pid(const sp_topo_region *r, ops_proc_kind k);
/* 1 when `pid` is alive (exists and is not a zombie). */
int ops_pid_alive(pid_t pid);
/* Start argv (argv[0] is the program path) in the background: its own
 * session, stdin /dev/null, stdout+stderr appended to the kind's log file,
 * run as ctx->user, working directory `cwd`; the PID file is written.
 * *pid receives the child.  0 or -errno. */
int ops_proc_start(const ops_ctx *c, const sp_topo_region *r, ops_proc_kind k, const char *cwd,
                   char *const argv[], pid_t *pid);
/* Send the kind's stop signal (SIGINT for PostgreSQL's fast shutdown,
 * SIGTERM otherwise) to the running process.  The PID, or 0 when it was
 * not running. */
pid_t ops_proc_signal(const sp_topo_region *r, ops_proc_kind k);
/* Wait up to timeout_ms for `pid` to end, then SIGKILL it and wait 5 s
 * more; removes the kind's PID file once it is gone.  0, or
 * SP_ERR_TIMEDOUT when it survived even SIGKILL. */
int ops_proc_wait_stop(const sp_topo_region *r, ops_proc_kind k, pid_t pid, unsigned timeout_ms);
/* Run argv to completion (as ctx->user when drop_user), stderr appended to
 * `logfile` and stdout too when keep_stdout (else discarded: a secret it
 * prints stays out of the log); SIGKILL after timeout_ms.  The exit status
 * (>= 0), or a negative code when it could not run or timed out. */
int ops_run(const ops_ctx *c, int drop_user, const char *logfile, int keep_stdout,
            char *const argv[], unsigned timeout_ms);
/* 0 when nothing listens on address:port (a probe bind succeeds), else
 * SP_ERR_BUSY (in use) or another -errno. */
int ops_port_free(const char *address, uint16_t port);
/* Fill *u for the current user (see ops_user).  0 or SP_ERR_CONFIG. */
int ops_user_resolve(ops_user *u, char *err, size_t errlen);

/* ---- ops_http.c: a small blocking HTTP client (libcurl) ------------------ */

typedef struct ops_http_tls {
  const char *ca, *cert, *key; /* PEM files; cert/key may be NULL */
} ops_http_tls;

/* One request.  key: sent as "Authorization: OAuth <key>" (NULL = none);
 * body: JSON (NULL = none); tls for https URLs (NULL = system defaults).
 * *status receives the HTTP status; `resp` (initialised by the caller,
 * capped) receives the body.  0, or a negative code when no answer came
 * (err says why: refused, timeout, ...). */
int ops_http(const char *method, const char *url, const char *key, const char *body,
             const ops_http_tls *tls, long timeout_ms, long *status, sp_buf *resp, char *err,
             size_t errlen);
/* "http://<address>:<api port>" with IPv6 addresses bracketed. */
void ops_api_base(const sp_topo_region *r, char *out, size_t len);
void ops_replication_base(const sp_topo_region *r, char *out, size_t len);

/* ---- ops_tls.c: the cluster CA and region certificates ------------------- */

/* Create what is missing: the CA (key + self-signed certificate) and, per
 * region, a key and a certificate signed by it (CN and DNS name = the
 * region's name, IP = its address; server and client use).  Keys are EC
 * P-256, mode 0600; region keys belong to ctx->user (the services read
 * them), the CA key to the caller.  Nothing to do when the topology has no
 * tls block.  `log` gets one line per file made.  0 or SP_ERR_* (err). */
int ops_tls_ensure(const ops_ctx *c, FILE *log, char *err, size_t errlen);

/* ---- ops_pg.c: the regions' PostgreSQL clusters -------------------------- */

/* libpq conninfo for the region's server and `dbname` (NULL = the
 * topology's database), as `user` (NULL = the topology's user). */
void ops_pg_conninfo(const sp_topo_region *r, const char *dbname, const char *user, char *out,
                     size_t len);
/* initdb into r->pg_dir when it holds no cluster yet (1 = created, 0 =
 * existed), then (re)write its statusctl.conf and pg_hba.conf from the
 * topology.  Negative on failure (err; the log names the initdb output). */
int ops_pg_init(const ops_ctx *c, const sp_topo_region *r, char *err, size_t errlen);
/* The argv that starts the region's postmaster (static storage inside
 * `store`, valid while it lives). */
typedef struct ops_pg_argv {
  char prog[PATH_MAX], data[PATH_MAX];
  char *argv[8];
} ops_pg_argv;
void ops_pg_argv_init(const ops_ctx *c, const sp_topo_region *r, ops_pg_argv *store);
/* 1 when the server accepts connections. */
int ops_pg_ping(const sp_topo_region *r);
/* Create the topology's role and database when missing.  0 or SP_ERR_DB. */
int ops_pg_bootstrap(const sp_topo_region *r, char *err, size_t errlen);
/* Copy the changes `to` lacks from `from`'s change log into `to` with
 * sp_apply_remote (original origin/seq/stamps; batches of 2000).  *applied
 * receives how many were new.  0 or SP_ERR_DB (err). */
int ops_pg_seed(const sp_topo_region *from, const sp_topo_region *to, long *applied, char *err,
                size_t errlen);

/* ---- ops_redis.c --------------------------------------------------------- */

typedef struct ops_redis_argv {
  char prog[PATH_MAX];
  char port[16];
  char *argv[20];
} ops_redis_argv;
void ops_redis_argv_init(const ops_ctx *c, const sp_topo_region *r, ops_redis_argv *store);
/* 1 when the server answers PING. */
int ops_redis_ping(const sp_topo_region *r);

/* ---- ops_state.c: what `up` made once (state_dir/statusctl.json, 0600) ---- */

typedef struct ops_state {
  char admin_key[128];   /* "" until made */
  char demo_page_id[40]; /* "" until chosen */
  int demo_done;         /* the demo page is complete */
  int seeded;            /* the other regions were seeded from the first */
} ops_state;

void ops_state_path(const sp_topo *t, char *out, size_t len);
/* Read the state; a missing file is an empty state (0).  0, or
 * SP_ERR_CONFIG for a damaged file (err). */
int ops_state_load(const sp_topo *t, ops_state *st, char *err, size_t errlen);
int ops_state_save(const sp_topo *t, const ops_state *st, char *err, size_t errlen);
/* A new random admin key ("sp_" + 48 hex digits) into out[>= 52]. */
int ops_state_new_key(char *out, size_t len);
/* A new random page id (12 characters a-z0-9) into out[>= 13]. */
int ops_state_new_id(char *out, size_t len);

/* ---- ops_demo.c ----------------------------------------------------------- */

/* Create (or finish creating) the demo page `page_id` through the
 * management API of region r with `key`: components (two in a group), an
 * open incident with two updates.  Every object has an id derived from the
 * page id, so a second run after a failure completes it without
 * duplicates.  0 or SP_ERR_* (err names the request that failed). */
int ops_demo_create(const sp_topo_region *r, const char *key, const char *page_id, char *err,
                    size_t errlen);

/* ---- the subcommands (ops_up.c, ops_down.c, ops_status.c, ops_endpoints.c,
 *      ops_verify.c); each returns an OPS_EXIT_* status ---------------------- */

int ops_up(ops_ctx *c);
int ops_down(ops_ctx *c);
int ops_status(ops_ctx *c);
int ops_endpoints(ops_ctx *c);
int ops_verify(ops_ctx *c);

#endif
