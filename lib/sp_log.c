/* sp_log: JSON-lines logger (see sp_log.h). */
#include "sp_log.h"

#include "sp_alloc.h"
#include "sp_err.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Per-process logger settings: written in main before any loop runs. */
static struct {
  char process[64];
  char region[64];
  sp_log_level level;
  int fd;
} g_log = {"unknown", "", SP_LOG_INFO, 2};

static const char *level_names[] = {"debug", "info", "warn", "error"};

int sp_log_level_parse(const char *name, sp_log_level *out) {
  for (int i = 0; i < 4; i++) {
    if (strcmp(name, level_names[i]) == 0) {
      *out = (sp_log_level)i;
      return 0;
    }
  }
  if (strcmp(name, "warning") == 0) {
    *out = SP_LOG_WARN;
    return 0;
  }
  return SP_ERR_INVAL;
}

int sp_log_init(const char *process, const char *region, const char *level_name) {
  snprintf(g_log.process, sizeof g_log.process, "%s", process ? process : "unknown");
  snprintf(g_log.region, sizeof g_log.region, "%s", region ? region : "");
  sp_log_level lvl = SP_LOG_INFO;
  int rc = 0;
  if (level_name && sp_log_level_parse(level_name, &lvl) != 0)
    rc = SP_ERR_INVAL;
  else
    g_log.level = lvl;
  const char *env = getenv("SP_LOG_LEVEL");
  if (env && *env && sp_log_level_parse(env, &lvl) == 0)
    g_log.level = lvl;
  return rc;
}

void sp_log_set_level(sp_log_level level) { g_log.level = level; }
sp_log_level sp_log_get_level(void) { return g_log.level; }
void sp_log_set_fd(int fd) { g_log.fd = fd; }

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0)
      return; /* nowhere better to report a failing log sink */
    p += w;
    n -= (size_t)w;
  }
}

/* Length of the well-formed UTF-8 sequence at p (1-4), or 0. */
static size_t utf8_seq(const unsigned char *p) {
  unsigned char c = p[0];
  size_t n;
  unsigned cp;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf)
    n = 2, cp = c & 0x1f;
  else if (c >= 0xe0 && c <= 0xef)
    n = 3, cp = c & 0x0f;
  else if (c >= 0xf0 && c <= 0xf4)
    n = 4, cp = c & 0x07;
  else
    return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) /* also stops at the NUL */
      return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

/* A JSON string of `s` with each byte that is not valid UTF-8 replaced by
 * U+FFFD, so a message with bad bytes is still logged (and still one valid
 * JSON line).  NULL on allocation failure. */
static json_t *string_lossy(const char *s) {
  size_t len = strlen(s);
  char *d = sp_malloc(3 * len + 1);
  if (d == NULL)
    return NULL;
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    size_t n = utf8_seq(p);
    if (n == 0) {
      memcpy(d + o, "\xef\xbf\xbd", 3);
      o += 3;
      p++;
    } else {
      memcpy(d + o, p, n);
      o += n;
      p += n;
    }
  }
  json_t *j = json_stringn(d, o);
  sp_free(d);
  return j;
}

void sp_log(sp_log_level level, const char *msg, const char *fields_fmt, ...) {
  if (level < g_log.level)
    return;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[96];
  snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
           (long)(tv.tv_usec / 1000) % 1000);

  json_t *o = json_object();
  if (o == NULL) {
    static const char oom[] = "{\"level\":\"error\",\"msg\":\"log: out of memory\"}\n";
    write_all(g_log.fd, oom, sizeof oom - 1);
    return;
  }
  json_object_set_new(o, "time", json_string(ts));
  json_object_set_new(o, "level", json_string(level_names[level & 3]));
  json_object_set_new(o, "process", json_string(g_log.process));
  if (g_log.region[0])
    json_object_set_new(o, "region", json_string(g_log.region));
  /* json_string rejects invalid UTF-8 (and json_dumps would refuse an
   * unchecked one, losing the line): keep the line with U+FFFD instead. */
  json_t *m = json_string(msg ? msg : "");
  if (m == NULL && msg)
    m = string_lossy(msg);
  json_object_set_new(o, "msg", m ? m : json_string("(unloggable message)"));
  if (fields_fmt) {
    va_list ap;
    va_start(ap, fields_fmt);
    json_error_t err;
    json_t *f = json_vpack_ex(&err, 0, fields_fmt, ap);
    va_end(ap);
    if (f && json_is_object(f)) {
      const char *k;
      json_t *v;
      json_object_foreach(f, k, v) {
        /* the standard keys are not overwritten by fields */
        if (json_object_get(o, k) == NULL)
          json_object_set(o, k, v);
      }
    } else if (f) {
      json_object_set_new(o, "log_error", json_string("fields format must build an object"));
    } else {
      json_object_set_new(o, "log_error", json_string(err.text));
    }
    json_decref(f);
  }
  char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  if (line == NULL) {
    static const char oom[] = "{\"level\":\"error\",\"msg\":\"log: cannot encode line\"}\n";
    write_all(g_log.fd, oom, sizeof oom - 1);
    return;
  }
  size_t n = strlen(line);
  line[n] = '\n'; /* json_dumps leaves room for the NUL we overwrite ... */
  write_all(g_log.fd, line, n + 1);
  json_free_t jfree; /* jansson's allocator, whichever the process set */
  json_get_alloc_funcs(NULL, &jfree);
  jfree(line);
}
