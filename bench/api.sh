#!/usr/bin/env bash
# bench/api.sh BUILD_DIR: statusd-api's two issue-4 figures, in one run.
#
# 1. GET /pages/{id}/api/v2/summary.json for a page with 20 components and
#    3 open incidents (created through the management API first: two groups
#    of 5, one degraded component, each incident with 2 updates), served by
#    one statusd-api process, against nginx (one worker, access log off,
#    open_file_cache on) serving the very same bytes from a file with the
#    same caching/CORS headers.  wrk keep-alive -t1 -c64, alternately twice
#    each, the better run of each kept; statusd-api and nginx pinned to CPU
#    1 and wrk to CPU 0 when there are two CPUs (as bench/http-core.sh).
#    Targets: >= 0.8x nginx requests/s, p99 < 5 ms.
# 2. Incident updates per second through the management API (PATCH with a
#    new body on 16 keep-alive connections, at most 20000 updates or 5 s),
#    with their p99 (bench/api_write_bench).  Target: >= 1000/s.
#
# The environment (PostgreSQL, Redis, statusd-api started with a high
# --rate-limit so the bench measures writes, not the limiter) and the read
# page come from BUILD_DIR/tests/tools/api_bench_env --bench-page.  Every process is stopped by PID.
# Takes about 40 s.  Benchmarks print figures; they do not fail on them.
set -euo pipefail
BUILD=${1:-build}
DUR=${API_BENCH_SECONDS:-5}
CONNS=${API_BENCH_CONNS:-64}
ENV_BIN="$BUILD/tests/tools/api_bench_env"
WRITE_BIN="$BUILD/bench/api_write_bench"
API_BIN="$BUILD/statusd-api"
for b in "$ENV_BIN" "$WRITE_BIN" "$API_BIN"; do
  [ -x "$b" ] || { echo "api: $b not built (make)" >&2; exit 1; }
done
for c in wrk nginx curl; do
  command -v "$c" >/dev/null || { echo "api: $c not installed" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/api-bench.XXXXXX")
chmod 755 "$TMP"
ENV_PID="" NGINX_PID=""
cleanup() {
  if [ -n "$NGINX_PID" ]; then kill -QUIT "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  if [ -n "$ENV_PID" ]; then kill "$ENV_PID" 2>/dev/null || true; wait "$ENV_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PIN_SRV="" PIN_WRK=""
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SRV="taskset -c 1"; PIN_WRK="taskset -c 0"
fi

# --- the environment --------------------------------------------------------------
RATE_ARGS=()
if "$API_BIN" --help 2>&1 | grep -q -- '--rate-limit'; then
  RATE_ARGS=(--rate-limit 100000:100000)
else
  echo "api: statusd-api has no --rate-limit; the write figure is capped by the default limit" >&2
fi
export SP_STATUSD_API="$API_BIN"
"$ENV_BIN" --bench-page "${RATE_ARGS[@]}" >"$TMP/env.out" 2>"$TMP/env.err" </dev/null &
ENV_PID=$!
for _ in $(seq 1 600); do
  grep -q '^port=' "$TMP/env.out" 2>/dev/null && break
  kill -0 "$ENV_PID" 2>/dev/null || { cat "$TMP/env.err" >&2; echo "api: environment failed" >&2; exit 1; }
  sleep 0.1
done
line=$(grep '^port=' "$TMP/env.out") || { echo "api: environment did not start in 60 s" >&2; exit 1; }
PORT=$(sed 's/.*port=\([0-9]*\).*/\1/' <<<"$line")
KEY=$(sed 's/.*key=\([^ ]*\).*/\1/' <<<"$line")
PAGE=$(sed -n 's/.*page=\([a-z0-9]*\).*/\1/p' <<<"$line")
API_PID=$(sed 's/.*pid=\([0-9]*\).*/\1/' <<<"$line")
# statusd-api on the servers' CPU like nginx; PostgreSQL and Redis float
[ -n "$PIN_SRV" ] && taskset -cp 1 "$API_PID" >/dev/null
BASE="http://127.0.0.1:$PORT"

[ -n "$PAGE" ] || { echo "api: no bench page" >&2; exit 1; }

# --- the same bytes for nginx ------------------------------------------------------------
DOC="/pages/$PAGE/api/v2/summary.json"
mkdir -p "$TMP/www/pages/$PAGE/api/v2" "$TMP/logs"
curl -sS -f --max-time 10 -D "$TMP/headers" -o "$TMP/www$DOC" "$BASE$DOC"
chmod -R a+rX "$TMP/www"
SIZE=$(stat -c %s "$TMP/www$DOC")
hdr() { grep -i "^$1:" "$TMP/headers" | head -1 | cut -d' ' -f2- | tr -d '\r'; }
CC_HDR=$(hdr Cache-Control); CC_HDR=${CC_HDR:-"max-age=10, public"}
# nginx on a port below the ephemeral range (a client socket can hold a
# port nothing listens on); a few attempts in case one is taken anyway
start_nginx() {
  local tries
  for tries in 1 2 3 4 5; do
    NGINX_PORT=$((10000 + RANDOM % 20000))
    [ "$NGINX_PORT" = "$PORT" ] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null && continue
    cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  types { application/json json; }
  charset utf-8;
  charset_types application/json;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  open_file_cache max=64 inactive=60s;
  sendfile on;
  etag on;
  client_body_temp_path $TMP/body;
  proxy_temp_path $TMP/proxy;
  fastcgi_temp_path $TMP/fastcgi;
  uwsgi_temp_path $TMP/uwsgi;
  scgi_temp_path $TMP/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $TMP/www;
    add_header Cache-Control "$CC_HDR";
    add_header Vary "Accept, Accept-Encoding";
    add_header Access-Control-Allow-Origin "*";
    add_header Access-Control-Expose-Headers "ETag";
    add_header X-Cache-Status "fresh";
  }
}
EOF
    $PIN_SRV nginx -p "$TMP" -e "$TMP/logs/error.log" -c "$TMP/nginx.conf" 2>>"$TMP/logs/start.log" &
    NGINX_PID=$!
    for _ in $(seq 1 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null && return 0
      kill -0 "$NGINX_PID" 2>/dev/null || break
      sleep 0.05
    done
    kill -QUIT "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
  done
  cat "$TMP/logs/start.log" >&2
  echo "api: nginx did not start" >&2
  exit 1
}
start_nginx
ob=$(curl -sS "$BASE$DOC" | md5sum)
nb=$(curl -sS "http://127.0.0.1:$NGINX_PORT$DOC" | md5sum)
[ "$ob" = "$nb" ] || { echo "api: nginx and statusd-api bodies differ" >&2; exit 1; }

run_wrk() { # base -> "rps p99_ms errors"
  local out
  out=$($PIN_WRK wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$1$DOC")
  awk '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
      return v
    }
    /Requests\/sec:/ { rps = $2 }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx|Socket errors/ { bad = 1 }
    END { printf "%.0f %.3f %d\n", rps, p99, bad }' <<<"$out"
}
runs_ours=() runs_nginx=()
for _ in 1 2; do
  runs_ours+=("$(run_wrk "$BASE")")
  runs_nginx+=("$(run_wrk "http://127.0.0.1:$NGINX_PORT")")
done
read -r o_rps o_p99 o_bad <<<"$(printf '%s\n' "${runs_ours[@]}" | sort -k1,1nr | head -1)"
read -r n_rps n_p99 n_bad <<<"$(printf '%s\n' "${runs_nginx[@]}" | sort -k1,1nr | head -1)"
kill -QUIT "$NGINX_PID" 2>/dev/null || true
wait "$NGINX_PID" 2>/dev/null || true
NGINX_PID=""

# --- writes ----------------------------------------------------------------------------
wline=$($PIN_WRK "$WRITE_BIN" "$PORT" "$KEY" 16 20000 "$DUR")
w() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$wline"; }

printf '%-34s %12s %12s %8s  %s\n' figure ours reference ratio target
awk -v o="$o_rps" -v n="$n_rps" 'BEGIN {
  printf "%-34s %12d %12d %7.2fx  >= 0.80x nginx %s\n", "summary.json requests/s (-c'"$CONNS"')", o, n, o / n,
         (o / n >= 0.8 ? "met" : "NOT MET") }'
awk -v o="$o_p99" -v n="$n_p99" 'BEGIN {
  printf "%-34s %12.3f %12.3f %7.2fx  < 5 ms %s\n", "summary.json p99 latency (ms)", o, n, (n > 0 ? o / n : 0),
         (o < 5 ? "met" : "NOT MET") }'
awk -v o="$(w rate)" 'BEGIN {
  printf "%-34s %12d %12d %7.2fx  >= 1000/s %s\n", "incident updates/s (16 conns)", o, 1000, o / 1000,
         (o >= 1000 ? "met" : "NOT MET") }'
awk -v o="$(w p99_ms)" -v p="$(w p50_ms)" 'BEGIN {
  printf "%-34s %12.3f %12s %8s  (p50 %.3f ms)\n", "incident update p99 latency (ms)", o, "-", "-", p }'
echo "summary.json: $SIZE bytes, 20 components, 3 open incidents; runs (rps p99ms errors): ours ${runs_ours[*]} | nginx ${runs_nginx[*]}"
echo "writes: $wline"
[ "$o_bad" = 0 ] || echo "api: wrk saw errors or non-2xx from statusd-api" >&2
[ "$n_bad" = 0 ] || echo "api: wrk saw errors or non-2xx from nginx" >&2
[ "$(w errors)" = 0 ] || echo "api: the write bench saw errors" >&2
exit 0
