#!/usr/bin/env bash
# make bench: runs every benchmark section bench/*.sh in order.  Each prints
# its figures beside the reference it names, measured in the same run, as a
# ratio.  Benchmarks print; they do not pass or fail on time.
set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.."
status=0
for sec in bench/*.sh; do
  echo "== $(basename "$sec" .sh)"
  bash "$sec" "$BUILD" || { echo "bench section $sec failed"; status=1; }
  echo
done
exit $status
