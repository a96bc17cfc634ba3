#!/usr/bin/env bash
# Builds every libFuzzer target tests/fuzz/fuzz_<name>.c with clang
# (fuzzer + ASan + UBSan) into build/fuzz/ and runs each for FUZZ_SECONDS
# (default 20) from its seed corpus tests/fuzz/corpus/<name>/.  A crash,
# leak or sanitizer report fails the run and leaves the reproducer in
# build/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-20}
OUT=build/fuzz
mkdir -p "$OUT"
# The protobuf-c code of proto/*.proto, generated as the Makefile does.
GEN=$OUT/gen
mkdir -p "$GEN"
protoc-c --c_out="$GEN" -Iproto proto/*.proto
PKGS="libuv libpq hiredis libnghttp2 openssl jansson libcurl libprotobuf-c"
CFLAGS="-g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Ilib -Icrdt -Ireplication -I$GEN -I. $(pkg-config --cflags $PKGS)"
LIBS="$(pkg-config --libs $PKGS) -lhttp_parser -lm -lpthread"
shopt -s nullglob
targets=(tests/fuzz/fuzz_*.c)
if [ ${#targets[@]} -eq 0 ]; then echo "fuzz: no targets"; exit 1; fi
fail=0
for src in "${targets[@]}"; do
  name=$(basename "$src" .c); name=${name#fuzz_}
  bin="$OUT/fuzz_$name"
  # Link the target with every library source except the fuzz entry points.
  clang $CFLAGS "$src" lib/*.c crdt/*.c replication/repl_*.c "$GEN"/*.pb-c.c $LIBS -o "$bin"
  corpus="$OUT/corpus-$name"
  mkdir -p "$corpus"
  seeds=tests/fuzz/corpus/$name
  echo "fuzz: $name for ${SECS}s"
  if ! "$bin" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$OUT/$name-" "$corpus" ${seeds:+"$seeds"} \
        >"$OUT/$name.log" 2>&1; then
    echo "fuzz: $name FAILED"; tail -40 "$OUT/$name.log"; fail=1
  else
    grep -E '^Done|#[0-9]+.*DONE' "$OUT/$name.log" | tail -1 || true
  fi
done
exit $fail
