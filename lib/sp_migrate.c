/* sp_migrate: schema migration runner (see sp_migrate.h).
 *
 * Order of work: list and validate the directory, read every file and hash
 * it, then connect, take the advisory lock, read schema_migrations, check
 * every applied file's checksum, and only then apply what is pending.  So a
 * bad directory or an edited migration changes nothing in the database.
 *
 * Memory: one array of `mig` entries (sp_realloc-grown) holding each file's
 * name and content (sp_malloc), all freed before sp_migrate_run returns.
 */
#include "sp_migrate.h"

#include <dirent.h>
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_log.h"

#define LOCK_TIMEOUT "120s"

typedef struct mig {
  int version;
  char name[NAME_MAX + 1];
  char *sql;         /* file content, NUL-terminated */
  size_t len;
  char sha256[65];   /* lowercase hex */
  int applied;       /* recorded in schema_migrations */
} mig;

typedef struct mig_set {
  mig *v;
  int n, cap;
} mig_set;

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* keep it one line: libpq messages end in newlines */
    for (char *p = err; *p; p++)
      if (*p == '\n' || *p == '\t')
        *p = ' ';
    size_t n = strlen(err);
    while (n > 0 && err[n - 1] == ' ')
      err[--n] = '\0';
  }
  return code;
}

static void set_release(mig_set *s) {
  for (int i = 0; i < s->n; i++)
    sp_free(s->v[i].sql);
  sp_free(s->v);
  s->v = NULL;
  s->n = s->cap = 0;
}

/* Parse "NNNN_name.sql".  1 and *version on success, 0 when malformed. */
static int parse_name(const char *name, int *version) {
  const char *p = name;
  long v = 0;
  int digits = 0;
  while (*p >= '0' && *p <= '9') {
    v = v * 10 + (*p - '0');
    p++;
    if (++digits > 9)
      return 0; /* keeps the version inside a PostgreSQL int */
  }
  if (digits < 4 || *p != '_')
    return 0;
  p++;
  const char *start = p;
  while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
         (*p >= '0' && *p <= '9') || *p == '_' || *p == '-')
    p++;
  if (p == start || strcmp(p, ".sql") != 0)
    return 0;
  *version = (int)v;
  return 1;
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int cmp_version(const void *a, const void *b) {
  const mig *x = a, *y = b;
  return (x->version > y->version) - (x->version < y->version);
}

static int sha256_hex(const char *data, size_t len, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
    return SP_ERR_INTERNAL;
  static const char hex[] = "0123456789abcdef";
  for (unsigned i = 0; i < mdlen; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[64] = '\0';
  return 0;
}

static int read_file(const char *dir, mig *m, char *err, size_t errlen) {
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s", dir, m->name) >= (int)sizeof path)
    return fail(err, errlen, SP_ERR_TOOBIG, "%s: path too long", m->name);
  FILE *f = fopen(path, "rb");
  if (!f)
    return fail(err, errlen, SP_ERR_IO, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) != 0) {
    int e = errno;
    fclose(f);
    return fail(err, errlen, SP_ERR_IO, "%s: %s", path, strerror(e));
  }
  if ((unsigned long long)st.st_size > SP_MIGRATE_MAX_FILE) {
    fclose(f);
    return fail(err, errlen, SP_ERR_TOOBIG, "%s: larger than %u bytes", path,
                SP_MIGRATE_MAX_FILE);
  }
  size_t size = (size_t)st.st_size;
  m->sql = sp_malloc(size + 1);
  if (!m->sql) {
    fclose(f);
    return fail(err, errlen, SP_ERR_NOMEM, "%s: out of memory", path);
  }
  size_t got = fread(m->sql, 1, size, f);
  int bad = ferror(f) || got != size;
  fclose(f);
  if (bad)
    return fail(err, errlen, SP_ERR_IO, "%s: short read", path);
  m->sql[size] = '\0';
  m->len = size;
  if (memchr(m->sql, '\0', size))
    return fail(err, errlen, SP_ERR_PARSE, "%s: contains a NUL byte", path);
  if (sha256_hex(m->sql, size, m->sha256) != 0)
    return fail(err, errlen, SP_ERR_INTERNAL, "%s: sha256 failed", path);
  return 0;
}

/* List, validate, sort and read the migration files of `dir`. */
static int load_dir(const char *dir, mig_set *s, char *err, size_t errlen) {
  DIR *d = opendir(dir);
  if (!d)
    return fail(err, errlen, errno == ENOENT ? SP_ERR_NOENT : SP_ERR_IO,
                "migrations directory %s: %s", dir, strerror(errno));
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || !ends_with(e->d_name, ".sql"))
      continue;
    char path[PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >=
            (int)sizeof path ||
        stat(path, &st) != 0 || !S_ISREG(st.st_mode))
      continue;
    int version;
    if (!parse_name(e->d_name, &version)) {
      rc = fail(err, errlen, SP_ERR_PARSE,
                "%s: malformed migration file name (want NNNN_name.sql: "
                "4-9 digits, '_', letters/digits/_/-)",
                e->d_name);
      break;
    }
    if (s->n == s->cap) {
      int cap = s->cap ? s->cap * 2 : 16;
      mig *v = sp_realloc(s->v, (size_t)cap * sizeof *v);
      if (!v) {
        rc = fail(err, errlen, SP_ERR_NOMEM, "out of memory");
        break;
      }
      s->v = v;
      s->cap = cap;
    }
    mig *m = &s->v[s->n++];
    memset(m, 0, sizeof *m);
    m->version = version;
    snprintf(m->name, sizeof m->name, "%s", e->d_name);
  }
  closedir(d);
  if (rc != 0)
    return rc;
  if (s->n > 1)
    qsort(s->v, (size_t)s->n, sizeof *s->v, cmp_version);
  for (int i = 1; i < s->n; i++)
    if (s->v[i].version == s->v[i - 1].version)
      return fail(err, errlen, SP_ERR_EXIST,
                  "%s and %s: duplicate migration version %d", s->v[i - 1].name,
                  s->v[i].name, s->v[i].version);
  for (int i = 0; i < s->n; i++)
    if ((rc = read_file(dir, &s->v[i], err, errlen)) != 0)
      return rc;
  return 0;
}

/* 1-based line of a 1-based character position in `sql`, for messages. */
static int line_of(const char *sql, const char *pos_str) {
  long pos = pos_str ? strtol(pos_str, NULL, 10) : 0;
  if (pos <= 0)
    return 0;
  int line = 1;
  long chars = 0;
  for (const unsigned char *p = (const unsigned char *)sql; *p; p++) {
    if ((*p & 0xC0) != 0x80 && ++chars >= pos)
      break;
    if (*p == '\n')
      line++;
  }
  return line;
}

/* Server warnings raised by a migration go to the log, not raw stderr. */
static void on_notice(void *arg, const char *message) {
  (void)arg;
  char msg[512];
  fail(msg, sizeof msg, 0, "%s", message);
  sp_log_warn("migration notice", "{s:s}", "notice", msg);
}

/* Run a bookkeeping statement; 0 or SP_ERR_DB with the message in err. */
static int exec_ok(PGconn *c, const char *sql, int n, const char *const *vals,
                   char *err, size_t errlen) {
  PGresult *r = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  int rc = 0;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    rc = fail(err, errlen,
              PQstatus(c) == CONNECTION_BAD ? SP_ERR_DB_DOWN
              : state && strcmp(state, "55P03") == 0 ? SP_ERR_TIMEDOUT
                                                      : SP_ERR_DB,
              "migrations: %s: %s", sql, PQerrorMessage(c));
  }
  PQclear(r);
  return rc;
}

/* Apply one file and record it, in one transaction. */
static int apply_one(PGconn *c, const mig *m, char *err, size_t errlen) {
  int rc = exec_ok(c, "BEGIN", 0, NULL, err, errlen);
  if (rc != 0)
    return rc;
  PGresult *r = PQexec(c, m->sql);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK &&
      st != PGRES_EMPTY_QUERY) {
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    int line = line_of(m->sql, PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION));
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)
      msg = "COPY is not supported in migrations";
    char where[32] = "";
    if (line > 0)
      snprintf(where, sizeof where, " (line %d)", line);
    rc = fail(err, errlen,
              PQstatus(c) == CONNECTION_BAD ? SP_ERR_DB_DOWN : SP_ERR_DB,
              "migration %s failed%s: %s%s%s%s", m->name, where,
              msg ? msg : PQerrorMessage(c), state ? " [SQLSTATE " : "",
              state ? state : "", state ? "]" : "");
    PQclear(r);
    /* After COPY or a lost connection the session is unusable; the caller
     * closes it, which rolls back too. */
    PGresult *rb = PQexec(c, "ROLLBACK");
    PQclear(rb);
    return rc;
  }
  PQclear(r);
  if (PQtransactionStatus(c) != PQTRANS_INTRANS) {
    /* The file ran COMMIT/ROLLBACK itself: part of it may be committed
     * without its schema_migrations row.  Say so loudly. */
    rc = fail(err, errlen, SP_ERR_DB,
              "migration %s ended the transaction itself (remove BEGIN/"
              "COMMIT/ROLLBACK from it); it is not recorded as applied and "
              "may be partly committed",
              m->name);
    if (PQtransactionStatus(c) != PQTRANS_IDLE) {
      PGresult *rb = PQexec(c, "ROLLBACK");
      PQclear(rb);
    }
    return rc;
  }
  char version[16];
  snprintf(version, sizeof version, "%d", m->version);
  const char *vals[] = {version, m->name, m->sha256};
  rc = exec_ok(c,
               "INSERT INTO schema_migrations(version, name, sha256, "
               "applied_at) VALUES ($1, $2, $3, now())",
               3, vals, err, errlen);
  if (rc == 0)
    rc = exec_ok(c, "COMMIT", 0, NULL, err, errlen);
  if (rc != 0) {
    PGresult *rb = PQexec(c, "ROLLBACK");
    PQclear(rb);
  }
  return rc;
}

/* Mark files already recorded; any checksum mismatch is an error. */
static int check_applied(PGconn *c, mig_set *s, sp_migrate_report *rep,
                         char *err, size_t errlen) {
  PGresult *r = PQexec(c, "SELECT version, name, sha256 FROM "
                          "schema_migrations ORDER BY version");
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    int rc = fail(err, errlen, SP_ERR_DB, "migrations: reading "
                  "schema_migrations: %s", PQerrorMessage(c));
    PQclear(r);
    return rc;
  }
  int rc = 0;
  for (int row = 0; row < PQntuples(r) && rc == 0; row++) {
    int version = atoi(PQgetvalue(r, row, 0));
    if (version > rep->version)
      rep->version = version;
    for (int i = 0; i < s->n; i++) {
      mig *m = &s->v[i];
      if (m->version != version)
        continue;
      if (strcmp(m->sha256, PQgetvalue(r, row, 2)) != 0)
        rc = fail(err, errlen, SP_ERR_CONFLICT,
                  "migration %s was changed after it was applied (as %s): "
                  "sha256 %s, recorded %s; add a new migration instead",
                  m->name, PQgetvalue(r, row, 1), m->sha256,
                  PQgetvalue(r, row, 2));
      m->applied = 1;
      rep->skipped++;
    }
  }
  PQclear(r);
  return rc;
}

int sp_migrate_run(const char *conninfo, const char *dir,
                   sp_migrate_report *out, char *err, size_t errlen) {
  sp_migrate_report rep = {0};
  if (err && errlen)
    err[0] = '\0';
  if (!conninfo || !dir) {
    if (out)
      *out = rep;
    return fail(err, errlen, SP_ERR_INVAL, "migrations: NULL argument");
  }
  mig_set s = {0};
  int rc = load_dir(dir, &s, err, errlen);
  rep.files = s.n;
  if (rc != 0)
    goto fail_dir;

  /* Keywords first, then the caller's string: its settings win. */
  const char *const keys[] = {"connect_timeout", "dbname", NULL};
  const char *const vals[] = {"10", conninfo, NULL};
  PGconn *c = PQconnectdbParams(keys, vals, 1);
  if (!c || PQstatus(c) != CONNECTION_OK) {
    rc = fail(err, errlen, c ? SP_ERR_DB_DOWN : SP_ERR_NOMEM,
              "migrations: cannot connect: %s",
              c ? PQerrorMessage(c) : "out of memory");
    goto fail_conn;
  }
  PQsetNoticeProcessor(c, on_notice, NULL);
  PGresult *r = PQexec(c, "SET client_min_messages = warning");
  PQclear(r);
  /* Session lock: held across the per-file transactions, released by
   * unlock or, if we die, by the connection closing. */
  char key[32];
  snprintf(key, sizeof key, "%lld", (long long)SP_MIGRATE_LOCK_KEY);
  const char *kv[] = {key};
  if ((rc = exec_ok(c, "SET lock_timeout = '" LOCK_TIMEOUT "'", 0, NULL, err,
                    errlen)) != 0 ||
      (rc = exec_ok(c, "SELECT pg_advisory_lock($1::bigint)", 1, kv, err,
                    errlen)) != 0 ||
      (rc = exec_ok(c, "RESET lock_timeout", 0, NULL, err, errlen)) != 0)
    goto fail_lock;
  rc = exec_ok(c,
               "CREATE TABLE IF NOT EXISTS schema_migrations ("
               "version int PRIMARY KEY, name text NOT NULL, "
               "sha256 text NOT NULL, "
               "applied_at timestamptz NOT NULL DEFAULT now())",
               0, NULL, err, errlen);
  if (rc == 0)
    rc = check_applied(c, &s, &rep, err, errlen);
  for (int i = 0; rc == 0 && i < s.n; i++) {
    if (s.v[i].applied)
      continue;
    rc = apply_one(c, &s.v[i], err, errlen);
    if (rc == 0) {
      rep.applied++;
      if (s.v[i].version > rep.version)
        rep.version = s.v[i].version;
    }
  }
  if (PQstatus(c) == CONNECTION_OK) {
    r = PQexecParams(c, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL, kv,
                     NULL, NULL, 0);
    PQclear(r);
  }
fail_lock:
fail_conn:
  PQfinish(c);
fail_dir:
  set_release(&s);
  if (out)
    *out = rep;
  return rc;
}
