/* Tests for sp_log: every call writes exactly one line that is one valid JSON
 * object with time/level/process/region/msg and the extra fields; level
 * filtering and the SP_LOG_LEVEL override; bad input (invalid UTF-8, bad
 * pack formats, allocation failures) never loses or corrupts the line.
 * Output goes to an unlinked temporary file via sp_log_set_fd.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int g_fd = -1;

static int setup(void **state) {
  (void)state;
  char path[] = "/tmp/sp_log_test.XXXXXX";
  g_fd = mkstemp(path);
  if (g_fd < 0)
    return -1;
  unlink(path);
  unsetenv("SP_LOG_LEVEL");
  sp_log_set_fd(g_fd);
  return sp_log_init("test-proc", "us-east", "debug");
}

static int teardown(void **state) {
  (void)state;
  sp_log_set_fd(2);
  close(g_fd);
  unsetenv("SP_LOG_LEVEL");
  return 0;
}

/* Everything written so far (caller frees), and the file emptied. */
static char *take_output(size_t *len) {
  off_t end = lseek(g_fd, 0, SEEK_END);
  assert_true(end >= 0);
  char *buf = malloc((size_t)end + 1);
  assert_non_null(buf);
  assert_int_equal(pread(g_fd, buf, (size_t)end, 0), end);
  buf[end] = '\0';
  assert_int_equal(ftruncate(g_fd, 0), 0);
  assert_int_equal(lseek(g_fd, 0, SEEK_SET), 0);
  if (len)
    *len = (size_t)end;
  return buf;
}

/* The output must be exactly `n` newline-terminated lines, each one JSON
 * object; returns them as a JSON array (caller decrefs). */
static json_t *take_lines(size_t n) {
  size_t len;
  char *out = take_output(&len);
  json_t *arr = json_array();
  size_t count = 0;
  char *p = out;
  while (p < out + len) {
    char *nl = memchr(p, '\n', (size_t)(out + len - p));
    if (nl == NULL)
      fail_msg("unterminated line: %s", p);
    json_error_t err;
    json_t *o = json_loadb(p, (size_t)(nl - p), 0, &err);
    if (o == NULL || !json_is_object(o))
      fail_msg("not a JSON object (%s): %.*s", err.text, (int)(nl - p), p);
    json_array_append_new(arr, o);
    count++;
    p = nl + 1;
  }
  free(out);
  if (count != n)
    fail_msg("expected %zu lines, got %zu", n, count);
  return arr;
}

static const char *str_field(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  if (!json_is_string(v))
    fail_msg("field %s missing or not a string", key);
  return json_string_value(v);
}

static void test_line_has_standard_fields_and_extras(void **state) {
  (void)state;
  sp_log_info("listening", "{s:i, s:s, s:b, s:s, s:s}", "port", 8080, "addr", "127.0.0.11",
              "tls", 1, "msg", "fields cannot replace msg", "level", "nor level");
  json_t *lines = take_lines(1);
  json_t *o = json_array_get(lines, 0);
  const char *t = str_field(o, "time");
  /* 2026-11-23T05:44:33.123Z */
  assert_int_equal(strlen(t), 24);
  assert_true(t[4] == '-' && t[7] == '-' && t[10] == 'T' && t[13] == ':' && t[16] == ':' &&
              t[19] == '.' && t[23] == 'Z');
  assert_true(atoi(t) >= 2024);
  assert_string_equal(str_field(o, "level"), "info");
  assert_string_equal(str_field(o, "process"), "test-proc");
  assert_string_equal(str_field(o, "region"), "us-east");
  assert_string_equal(str_field(o, "msg"), "listening");
  assert_int_equal(json_integer_value(json_object_get(o, "port")), 8080);
  assert_string_equal(str_field(o, "addr"), "127.0.0.11");
  assert_true(json_is_true(json_object_get(o, "tls")));
  assert_null(json_object_get(o, "log_error"));
  /* the first keys are in the documented order */
  const char *first = json_object_iter_key(json_object_iter(o));
  assert_string_equal(first, "time");
  json_decref(lines);

  /* no region configured: no region key; no fields: just the standard ones */
  assert_int_equal(sp_log_init("other", NULL, NULL), 0);
  sp_log_set_level(SP_LOG_DEBUG);
  sp_log_error("boom", NULL);
  lines = take_lines(1);
  o = json_array_get(lines, 0);
  assert_null(json_object_get(o, "region"));
  assert_string_equal(str_field(o, "level"), "error");
  assert_string_equal(str_field(o, "process"), "other");
  assert_int_equal(json_object_size(o), 4);
  json_decref(lines);
}

static void test_one_line_per_call(void **state) {
  (void)state;
  for (int i = 0; i < 50; i++)
    sp_log_warn("multi\nline \"message\"\r\t", "{s:i, s:s}", "i", i, "text", "a\nb");
  json_t *lines = take_lines(50);
  for (size_t i = 0; i < 50; i++) {
    json_t *o = json_array_get(lines, i);
    assert_string_equal(str_field(o, "msg"), "multi\nline \"message\"\r\t");
    assert_int_equal(json_integer_value(json_object_get(o, "i")), (json_int_t)i);
  }
  json_decref(lines);

  /* a large message is still one line (one write) */
  size_t n = 200000;
  char *big = malloc(n + 1);
  assert_non_null(big);
  memset(big, 'x', n);
  big[n] = '\0';
  sp_log_info(big, NULL);
  lines = take_lines(1);
  assert_int_equal(strlen(str_field(json_array_get(lines, 0), "msg")), n);
  json_decref(lines);
  free(big);
}

static void test_level_filtering(void **state) {
  (void)state;
  sp_log_set_level(SP_LOG_WARN);
  assert_int_equal(sp_log_get_level(), SP_LOG_WARN);
  sp_log_debug("d", NULL);
  sp_log_info("i", NULL);
  sp_log_warn("w", NULL);
  sp_log_error("e", NULL);
  json_t *lines = take_lines(2);
  assert_string_equal(str_field(json_array_get(lines, 0), "level"), "warn");
  assert_string_equal(str_field(json_array_get(lines, 1), "level"), "error");
  json_decref(lines);

  sp_log_level l;
  assert_int_equal(sp_log_level_parse("debug", &l), 0);
  assert_int_equal(l, SP_LOG_DEBUG);
  assert_int_equal(sp_log_level_parse("warning", &l), 0);
  assert_int_equal(l, SP_LOG_WARN);
  assert_int_equal(sp_log_level_parse("loud", &l), SP_ERR_INVAL);

  /* an unknown configured level is refused and leaves the level alone */
  assert_int_equal(sp_log_init("p", "r", "verbose"), SP_ERR_INVAL);
  assert_int_equal(sp_log_get_level(), SP_LOG_WARN);
  assert_int_equal(sp_log_init("p", "r", "info"), 0);
  assert_int_equal(sp_log_get_level(), SP_LOG_INFO);
}

static void test_env_overrides_configured_level(void **state) {
  (void)state;
  setenv("SP_LOG_LEVEL", "error", 1);
  assert_int_equal(sp_log_init("p", "r", "debug"), 0);
  assert_int_equal(sp_log_get_level(), SP_LOG_ERROR);
  sp_log_warn("dropped", NULL);
  sp_log_error("kept", NULL);
  json_t *lines = take_lines(1);
  assert_string_equal(str_field(json_array_get(lines, 0), "msg"), "kept");
  json_decref(lines);

  setenv("SP_LOG_LEVEL", "debug", 1);
  assert_int_equal(sp_log_init("p", "r", "error"), 0);
  assert_int_equal(sp_log_get_level(), SP_LOG_DEBUG);

  /* a bad override is ignored: the configured level applies */
  setenv("SP_LOG_LEVEL", "shouting", 1);
  assert_int_equal(sp_log_init("p", "r", "warn"), 0);
  assert_int_equal(sp_log_get_level(), SP_LOG_WARN);
  unsetenv("SP_LOG_LEVEL");
}

static void test_invalid_utf8_message_is_kept(void **state) {
  (void)state;
  sp_log_error("bad \xff\xfe utf8 \xc3 end \xed\xa0\x80 ok \xc3\xa9", "{s:i}", "n", 1);
  json_t *lines = take_lines(1);
  json_t *o = json_array_get(lines, 0);
  /* each bad byte became U+FFFD, good sequences kept */
  assert_string_equal(str_field(o, "msg"), "bad \xef\xbf\xbd\xef\xbf\xbd utf8 \xef\xbf\xbd end "
                                           "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd ok \xc3\xa9");
  assert_int_equal(json_integer_value(json_object_get(o, "n")), 1);
  json_decref(lines);
}

static void test_bad_fields_still_log_with_log_error(void **state) {
  (void)state;
  sp_log_info("truncated format", "{s:", "k");
  sp_log_info("not an object", "s", "just a string");
  sp_log_info("bad utf8 field", "{s:s}", "k", "\xff");
  sp_log_info("null string", "{s:s}", "k", (const char *)NULL);
  json_t *lines = take_lines(4);
  static const char *const msgs[] = {"truncated format", "not an object", "bad utf8 field",
                                     "null string"};
  for (size_t i = 0; i < 4; i++) {
    json_t *o = json_array_get(lines, i);
    assert_string_equal(str_field(o, "msg"), msgs[i]);
    assert_true(strlen(str_field(o, "log_error")) > 0);
    assert_null(json_object_get(o, "k"));
  }
  json_decref(lines);
}

/* With jansson's allocations failing one by one, each call still writes
 * exactly one valid JSON line (maybe a fallback line), and leaks nothing. */
static void test_allocation_failures_never_lose_a_line(void **state) {
  (void)state;
  json_set_alloc_funcs(sp_malloc, sp_free);
  sp_alloc_count_reset();
  sp_log_info("counting \xff", "{s:i, s:s}", "a", 1, "b", "two");
  long total = sp_alloc_count();
  sp_alloc_fail_after(-1);
  json_decref(take_lines(1));
  assert_true(total > 5);
  for (long k = 0; k < total; k++) {
    sp_alloc_fail_after(k);
    sp_log_info("counting \xff", "{s:i, s:s}", "a", 1, "b", "two");
    sp_alloc_fail_after(-1);
    json_t *lines = take_lines(1);
    assert_non_null(json_object_get(json_array_get(lines, 0), "msg"));
    json_decref(lines);
  }
  json_set_alloc_funcs(malloc, free);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_line_has_standard_fields_and_extras, setup, teardown),
      cmocka_unit_test_setup_teardown(test_one_line_per_call, setup, teardown),
      cmocka_unit_test_setup_teardown(test_level_filtering, setup, teardown),
      cmocka_unit_test_setup_teardown(test_env_overrides_configured_level, setup, teardown),
      cmocka_unit_test_setup_teardown(test_invalid_utf8_message_is_kept, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_fields_still_log_with_log_error, setup, teardown),
      cmocka_unit_test_setup_teardown(test_allocation_failures_never_lose_a_line, setup,
                                      teardown),
  };
  return cmocka_run_group_tests_name("sp_log", tests, NULL, NULL);
}
