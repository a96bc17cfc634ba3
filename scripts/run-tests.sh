#!/usr/bin/env bash
# Runs every test binary under $1/tests (default build/), one after another,
# each with a time limit.  Prints each binary's cmocka summary, keeps the full
# output in $1/test-logs/, and ends with "N passed, N failed" (binaries).
# Exit status: 0 only when every binary passed.
set -u
BUILD=${1:-build}
LOGS="$BUILD/test-logs"
export SP_TEST_TMPDIR
SP_TEST_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/sp-test.XXXXXX")
chmod 755 "$SP_TEST_TMPDIR"
trap 'rm -rf "$SP_TEST_TMPDIR"' EXIT
mkdir -p "$LOGS"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

pass=0 fail=0 failed=()
mapfile -t bins < <(find "$BUILD/tests" -type f -name 'test_*' -perm -u+x | sort)
if [ ${#bins[@]} -eq 0 ]; then
  echo "run-tests: no test binaries under $BUILD/tests" >&2
  exit 1
fi
for bin in "${bins[@]}"; do
  name=${bin#"$BUILD/tests/"}
  log="$LOGS/${name//\//_}.log"
  start=$(date +%s)
  timeout --kill-after=10 "${SP_TEST_TIMEOUT:-300}" "$bin" >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then
    pass=$((pass + 1))
    printf 'PASS %-40s %3ss  %s\n' "$name" "$secs" "$(grep -E '^\[  PASSED  \]' "$log" | tail -1)"
  else
    fail=$((fail + 1)); failed+=("$name")
    printf 'FAIL %-40s %3ss  exit %s\n' "$name" "$secs" "$rc"
    [ $rc -eq 124 ] && echo "     (timed out after ${SP_TEST_TIMEOUT:-300}s)"
    # cmocka's own words on what failed first (a sanitizer's leak report
    # after a failed assertion would push them out of the tail)
    grep -E '^\[  (ERROR   |FAILED  |  LINE  |   LINE   )\]|^\[ RUN      \]|Failure!|error:' "$log" |
      grep -B1 -vE '^\[ RUN      \]' | grep -v '^--$' | head -30 | sed 's/^/     ! /'
    sed 's/^/     | /' "$log" | tail -40
  fi
done
echo
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "tests: $pass passed, $fail failed"
[ $fail -eq 0 ]
