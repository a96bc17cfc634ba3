/* Tests for sp_buf, sp_err and sp_alloc: the byte types, the size cap, the
 * JSON escaper and every allocation-failure path of the buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "sp_alloc.h"
#include "sp_buf.h"
#include "sp_err.h"

static void test_empty_buffer_is_valid_string(void **state) {
  (void)state;
  sp_buf b;
  sp_buf_init(&b, 100);
  assert_non_null(b.base);
  assert_string_equal(b.base, "");
  assert_int_equal(b.len, 0);
  sp_buf_release(&b);
  assert_string_equal(b.base, "");
}

static void test_add_and_format(void **state) {
  (void)state;
  sp_buf b;
  sp_buf_init(&b, SP_BUF_UNLIMITED);
  assert_int_equal(sp_buf_adds(&b, "hello"), 0);
  assert_int_equal(sp_buf_addf(&b, " %d-%s", 42, "x"), 0);
  assert_string_equal(b.base, "hello 42-x");
  /* a formatted string longer than the stack scratch area */
  char big[1000];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(sp_buf_addf(&b, "[%s]", big), 0);
  assert_int_equal(b.len, 10 + 2 + 999);
  assert_int_equal(b.base[b.len], '\0');
  sp_buf_consume(&b, 6);
  assert_memory_equal(b.base, "42-x[a", 6);
  size_t n;
  char *s = sp_buf_detach(&b, &n);
  assert_int_equal(n, 4 + 2 + 999);
  assert_int_equal(b.len, 0);
  sp_free(s);
  sp_buf_release(&b);
}

static void test_cap_is_enforced_and_leaves_buffer_unchanged(void **state) {
  (void)state;
  sp_buf b;
  sp_buf_init(&b, 8);
  assert_int_equal(sp_buf_adds(&b, "12345678"), 0);
  assert_int_equal(sp_buf_adds(&b, "9"), SP_ERR_TOOBIG);
  assert_string_equal(b.base, "12345678");
  assert_int_equal(sp_buf_addf(&b, "%s", "x"), SP_ERR_TOOBIG);
  assert_int_equal(sp_buf_grow(&b, (size_t)-1), SP_ERR_TOOBIG);
  sp_buf_release(&b);
}

static void test_json_escaping(void **state) {
  (void)state;
  sp_buf b;
  sp_buf_init(&b, 1024);
  const char in[] = "a\"b\\c\n\x01\x7f";
  assert_int_equal(sp_buf_add_json_str(&b, in, sizeof in - 1), 0);
  assert_string_equal(b.base, "a\\\"b\\\\c\\n\\u0001\\u007f");
  sp_buf_release(&b);
  /* escaping that hits the cap rolls back to the previous content */
  sp_buf_init(&b, 6);
  assert_int_equal(sp_buf_adds(&b, "ok"), 0);
  assert_int_equal(sp_buf_add_json_str(&b, "\x01\x02", 2), SP_ERR_TOOBIG);
  assert_string_equal(b.base, "ok");
  sp_buf_release(&b);
}

static void test_allocation_failure_sweep(void **state) {
  (void)state;
  /* Fail each allocation in turn: every call must report NOMEM cleanly and
   * the buffer must stay a valid string; cmocka/ASan catch leaks. */
  long total;
  {
    sp_buf b;
    sp_buf_init(&b, SP_BUF_UNLIMITED);
    sp_alloc_count_reset();
    for (int i = 0; i < 200; i++)
      assert_int_equal(sp_buf_addf(&b, "%04d-0123456789abcdef", i), 0);
    total = sp_alloc_count();
    sp_buf_release(&b);
  }
  assert_true(total > 3);
  for (long k = 0; k < total; k++) {
    sp_buf b;
    sp_buf_init(&b, SP_BUF_UNLIMITED);
    sp_alloc_fail_after(k);
    int saw_nomem = 0;
    for (int i = 0; i < 200; i++) {
      int rc = sp_buf_addf(&b, "%04d-0123456789abcdef", i);
      if (rc == SP_ERR_NOMEM) {
        saw_nomem = 1;
        assert_int_equal(b.base[b.len], '\0');
      } else {
        assert_int_equal(rc, 0);
      }
    }
    sp_alloc_fail_after(-1);
    assert_true(saw_nomem);
    sp_buf_release(&b);
  }
}

static void test_err_strings(void **state) {
  (void)state;
  assert_int_equal(SP_ERR_NOMEM, -ENOMEM);
  assert_string_equal(sp_strerror(SP_ERR_TOOBIG), "size limit exceeded");
  assert_string_equal(sp_err_name(SP_ERR_DB_DOWN), "SP_ERR_DB_DOWN");
  assert_string_equal(sp_strerror(0), "success");
  assert_non_null(sp_strerror(-EPIPE)); /* plain errno passes through */
  assert_string_equal(sp_err_name(12345), "SP_ERR_UNKNOWN");
}

static void test_iov(void **state) {
  (void)state;
  sp_iov v = SP_IOV_LIT("Content-Length");
  assert_true(sp_iov_eq(v, "Content-Length"));
  assert_false(sp_iov_eq(v, "content-length"));
  assert_true(sp_iov_case_eq(v, "content-LENGTH"));
  assert_false(sp_iov_case_eq(v, "content-len"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_buffer_is_valid_string),
      cmocka_unit_test(test_add_and_format),
      cmocka_unit_test(test_cap_is_enforced_and_leaves_buffer_unchanged),
      cmocka_unit_test(test_json_escaping),
      cmocka_unit_test(test_allocation_failure_sweep),
      cmocka_unit_test(test_err_strings),
      cmocka_unit_test(test_iov),
  };
  return cmocka_run_group_tests_name("sp_buf", tests, NULL, NULL);
}
