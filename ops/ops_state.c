/* ops_state: what `statusctl up` made once and must never make again: the
 * admin key and the demo page id, with how far their creation got.
 *
 * Kept in <state_dir>/statusctl.json, mode 0600 (it holds the admin key):
 *   {"admin_key": "sp_...", "demo_page_id": "...", "demo_done": true,
 *    "seeded": true}
 * Each value is written BEFORE the thing it names is created, so an `up`
 * interrupted halfway finishes the same key and page next time instead of
 * making new ones.  The struct is plain data in the caller's memory.
 */
#include "ops.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_err.h"

void ops_state_path(const sp_topo *t, char *out, size_t len) {
  snprintf(out, len, "%s/statusctl.json", t->state_dir);
}

static int copy_str(json_t *o, const char *key, char *out, size_t len) {
  json_t *v = json_object_get(o, key);
  if (v == NULL || json_is_null(v))
    return 0;
  if (!json_is_string(v) || json_string_length(v) >= len)
    return -1;
  memcpy(out, json_string_value(v), json_string_length(v) + 1);
  return 0;
}

int ops_state_load(const sp_topo *t, ops_state *st, char *err, size_t errlen) {
  memset(st, 0, sizeof *st);
  char path[PATH_MAX + 32];
  ops_state_path(t, path, sizeof path);
  json_error_t je;
  json_t *o = json_load_file(path, 0, &je);
  if (o == NULL) {
    FILE *f = fopen(path, "r");
    if (f == NULL && errno == ENOENT)
      return 0;
    if (f)
      fclose(f);
    snprintf(err, errlen, "%s: %s (remove it to start over, or fix it)", path, je.text);
    return SP_ERR_CONFIG;
  }
  int rc = 0;
  if (!json_is_object(o) || copy_str(o, "admin_key", st->admin_key, sizeof st->admin_key) ||
      copy_str(o, "demo_page_id", st->demo_page_id, sizeof st->demo_page_id)) {
    snprintf(err, errlen, "%s: not a statusctl state file", path);
    rc = SP_ERR_CONFIG;
  }
  st->demo_done = json_is_true(json_object_get(o, "demo_done"));
  st->seeded = json_is_true(json_object_get(o, "seeded"));
  json_decref(o);
  return rc;
}

int ops_state_save(const sp_topo *t, const ops_state *st, char *err, size_t errlen) {
  char path[PATH_MAX + 32];
  ops_state_path(t, path, sizeof path);
  json_t *o = json_pack("{s:s?,s:s?,s:b,s:b}", "admin_key",
                        st->admin_key[0] ? st->admin_key : NULL, "demo_page_id",
                        st->demo_page_id[0] ? st->demo_page_id : NULL, "demo_done",
                        st->demo_done, "seeded", st->seeded);
  char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  json_decref(o);
  if (text == NULL) {
    snprintf(err, errlen, "%s: out of memory", path);
    return SP_ERR_NOMEM;
  }
  sp_buf b;
  sp_buf_init(&b, SP_BUF_UNLIMITED);
  int rc = sp_buf_adds(&b, text);
  if (rc == 0)
    rc = sp_buf_adds(&b, "\n");
  free(text);
  if (rc == 0)
    rc = ops_write_file(path, b.base, b.len, 0600);
  sp_buf_release(&b);
  if (rc)
    snprintf(err, errlen, "writing %s: %s", path, sp_strerror(rc));
  return rc;
}

int ops_state_new_key(char *out, size_t len) {
  unsigned char raw[24];
  if (len < 3 + 2 * sizeof raw + 1)
    return SP_ERR_INVAL;
  if (RAND_bytes(raw, sizeof raw) != 1)
    return SP_ERR_INTERNAL;
  static const char hexd[] = "0123456789abcdef";
  memcpy(out, "sp_", 3);
  for (size_t i = 0; i < sizeof raw; i++) {
    out[3 + 2 * i] = hexd[raw[i] >> 4];
    out[4 + 2 * i] = hexd[raw[i] & 15];
  }
  out[3 + 2 * sizeof raw] = '\0';
  return 0;
}

int ops_state_new_id(char *out, size_t len) {
  static const char b36[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  unsigned char raw[12];
  if (len < sizeof raw + 1)
    return SP_ERR_INVAL;
  if (RAND_bytes(raw, sizeof raw) != 1)
    return SP_ERR_INTERNAL;
  /* 252 = 7 * 36: drawing again above it keeps the characters uniform */
  for (size_t i = 0; i < sizeof raw; i++) {
    while (raw[i] >= 252)
      if (RAND_bytes(&raw[i], 1) != 1)
        return SP_ERR_INTERNAL;
    out[i] = b36[raw[i] % 36];
  }
  out[sizeof raw] = '\0';
  return 0;
}
