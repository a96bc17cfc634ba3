#!/usr/bin/env bash
# crdt/ benchmark: field merges per second on one core (target 5 million/s),
# and delta encode/decode throughput beside the same changes as JSON
# (jansson), measured in the same run.
set -eu
BUILD=${1:-build}
exec "$BUILD/bench/crdt_bench" "${CRDT_BENCH_SECONDS:-3}"
