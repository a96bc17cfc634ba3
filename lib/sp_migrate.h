/* sp_migrate: applies a directory of SQL schema migrations to PostgreSQL.
 *
 * Run once at process start-up, before any event loop, so it uses blocking
 * libpq.  A migration is a file `NNNN_name.sql` in one directory: a version
 * of four or more digits (at most 9), an underscore, a name of letters,
 * digits, '_' or '-', and the `.sql` suffix.  Other files (README, dotfiles,
 * editor backups, subdirectories) are ignored; a `.sql` file whose name is
 * malformed, or two files with the same version, are an error naming them.
 *
 * Files are applied in version order, each in its own transaction together
 * with its row in schema_migrations(version, name, sha256, applied_at):
 * a file that fails leaves nothing behind.  A file already recorded is
 * skipped, unless its SHA-256 changed since, which is an error (a migration
 * is never re-applied or silently edited); all checksums are checked before
 * anything is applied.  Runners are serialised with a session advisory
 * lock on SP_MIGRATE_LOCK_KEY, so processes starting together apply each
 * migration once.  A file with a lower version than ones already applied
 * (merged late) is applied too.
 *
 * A migration file must not contain transaction control (BEGIN/COMMIT) or
 * statements that cannot run inside a transaction (CREATE INDEX
 * CONCURRENTLY), nor COPY FROM STDIN.
 *
 * Memory: nothing returned needs freeing; the error text is written into
 * the caller's buffer.
 */
#ifndef SP_MIGRATE_H
#define SP_MIGRATE_H

#include <stddef.h>

/* pg_advisory_lock key held while migrating ("spmigr" in ASCII). */
#define SP_MIGRATE_LOCK_KEY 0x73706d696772LL

/* Largest migration file accepted. */
#define SP_MIGRATE_MAX_FILE (16u * 1024u * 1024u)

typedef struct sp_migrate_report {
  int files;    /* migration files found in the directory */
  int applied;  /* applied by this run */
  int skipped;  /* already applied before this run */
  int version;  /* highest version recorded after this run; 0 if none */
} sp_migrate_report;

/* Apply the pending migrations of `dir` to the database of `conninfo`
 * (libpq keyword/value string or URI; a connect_timeout of 10 s is used
 * unless it sets one).  `out` (may be NULL) is filled on success and, as far
 * as it got, on failure.  On failure a one-line message naming the file
 * (and PostgreSQL's message and line for SQL errors) is written to `err`
 * (may be NULL when errlen is 0).
 * Returns 0, or:
 *   SP_ERR_INVAL     NULL conninfo or dir
 *   SP_ERR_NOENT     dir cannot be opened
 *   SP_ERR_PARSE     a malformed migration file name, or a NUL byte inside
 *   SP_ERR_EXIST     two files with the same version
 *   SP_ERR_TOOBIG    a file larger than SP_MIGRATE_MAX_FILE
 *   SP_ERR_IO        a file cannot be read
 *   SP_ERR_CONFLICT  an applied file's content changed
 *   SP_ERR_DB_DOWN   cannot connect
 *   SP_ERR_TIMEDOUT  another runner held the lock for more than 120 s
 *   SP_ERR_DB        a migration (or the bookkeeping) failed in PostgreSQL
 *   SP_ERR_NOMEM */
int sp_migrate_run(const char *conninfo, const char *dir,
                   sp_migrate_report *out, char *err, size_t errlen);

#endif
