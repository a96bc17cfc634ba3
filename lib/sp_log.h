/* sp_log: structured logging, one JSON object per line on stderr.
 *
 *   {"time":"2026-11-23T05:44:33.123Z","level":"info","process":"statusd-api",
 *    "region":"us-east","msg":"listening","port":8080}
 *
 * Each line is written with a single write(2), so lines from several
 * processes sharing a file never interleave.  Extra fields are given as a
 * jansson json_pack format plus its arguments ("{s:s, s:i}", ...), or NULL.
 *
 * The process name, region and level are per-process settings held in this
 * module (set once in main by sp_log_init); the level comes from the
 * configuration and can be overridden by the SP_LOG_LEVEL environment
 * variable (debug, info, warn, error).  Nothing here allocates memory the
 * caller must free.
 */
#ifndef SP_LOG_H
#define SP_LOG_H

typedef enum sp_log_level {
  SP_LOG_DEBUG = 0,
  SP_LOG_INFO = 1,
  SP_LOG_WARN = 2,
  SP_LOG_ERROR = 3,
} sp_log_level;

/* Sets the process name and region stamped on every line (copied) and the
 * level from `level_name` (NULL = "info"); SP_LOG_LEVEL wins when set.
 * Returns 0 or SP_ERR_INVAL for an unknown level name (level unchanged). */
int sp_log_init(const char *process, const char *region, const char *level_name);

/* Parse "debug"/"info"/"warn"/"error" into *out.  0 or SP_ERR_INVAL. */
int sp_log_level_parse(const char *name, sp_log_level *out);
void sp_log_set_level(sp_log_level level);
sp_log_level sp_log_get_level(void);
/* Redirect output to another fd (tests); default 2. */
void sp_log_set_fd(int fd);

/* Log `msg` at `level` with optional fields from json_pack(fields_fmt, ...).
 * A bad format never loses the line: the message is logged with a
 * "log_error" field instead. */
void sp_log(sp_log_level level, const char *msg, const char *fields_fmt, ...);

#define sp_log_debug(...) sp_log(SP_LOG_DEBUG, __VA_ARGS__)
#define sp_log_info(...) sp_log(SP_LOG_INFO, __VA_ARGS__)
#define sp_log_warn(...) sp_log(SP_LOG_WARN, __VA_ARGS__)
#define sp_log_error(...) sp_log(SP_LOG_ERROR, __VA_ARGS__)

#endif
