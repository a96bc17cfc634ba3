#!/usr/bin/env bash
# bench/http-core.sh BUILD_DIR: requests/s and p99 latency of the sp_http
# core (BUILD_DIR/bench/http_fixed answering GET /fixed.json) against nginx
# (one worker, access log off, open_file_cache and sendfile on: the
# usual tuned static setup) serving the same bytes from a file, both on
# 127.0.0.1, measured with the same wrk settings (keep-alive, -t1 -c64).
# Each server runs pinned to CPU 1 and wrk to CPU 0 when there are two CPUs;
# the servers are measured alternately, twice each, and the better run of
# each is kept.  Prints a table; target: ours >= 0.9x nginx requests/s.
# Takes about 25 s.  Benchmarks print figures; they do not fail on them.
set -euo pipefail
BUILD=${1:-build}
DUR=${HTTP_BENCH_SECONDS:-5}
CONNS=${HTTP_BENCH_CONNS:-64}
BIN="$BUILD/bench/http_fixed"
[ -x "$BIN" ] || { echo "http-core: $BIN not built (make)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "http-core: wrk not installed" >&2; exit 1; }
command -v nginx >/dev/null || { echo "http-core: nginx not installed" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/http-core.XXXXXX")
chmod 755 "$TMP"
OURS_PID="" NGINX_PID=""
cleanup() {
  [ -n "$OURS_PID" ] && kill "$OURS_PID" 2>/dev/null && wait "$OURS_PID" 2>/dev/null
  [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "http-core: no free port" >&2; exit 1
}

wait_port() { # port
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "http-core: nothing listens on port $1" >&2; exit 1
}

PIN_SRV="" PIN_WRK=""
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SRV="taskset -c 1"; PIN_WRK="taskset -c 0"
fi

OURS_PORT=$(free_port)
NGINX_PORT=$(free_port)
while [ "$NGINX_PORT" = "$OURS_PORT" ]; do NGINX_PORT=$(free_port); done

mkdir -p "$TMP/www" "$TMP/logs"
"$BIN" --body >"$TMP/www/fixed.json"
chmod 644 "$TMP/www/fixed.json"
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  types { application/json json; }
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  open_file_cache max=64 inactive=60s;  # no open(2) per request
  sendfile off;  # faster than sendfile for a 200-byte file
  client_body_temp_path $TMP/body;
  proxy_temp_path $TMP/proxy;
  fastcgi_temp_path $TMP/fastcgi;
  uwsgi_temp_path $TMP/uwsgi;
  scgi_temp_path $TMP/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $TMP/www;
  }
}
EOF

$PIN_SRV "$BIN" 127.0.0.1 "$OURS_PORT" 2>"$TMP/logs/ours.log" &
OURS_PID=$!
$PIN_SRV nginx -p "$TMP" -e "$TMP/logs/error.log" -c "$TMP/nginx.conf" &
NGINX_PID=$!
wait_port "$OURS_PORT"
wait_port "$NGINX_PORT"

# same bytes from both?
ob=$(curl -s "http://127.0.0.1:$OURS_PORT/fixed.json" | md5sum)
nb=$(curl -s "http://127.0.0.1:$NGINX_PORT/fixed.json" | md5sum)
[ "$ob" = "$nb" ] || { echo "http-core: bodies differ" >&2; exit 1; }

# run_wrk port -> "rps p99_ms non2xx_or_errors"
run_wrk() {
  local out
  out=$($PIN_WRK wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:$1/fixed.json")
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

best_rps() { # "a b" lines -> the line with the higher rps
  sort -k1,1nr | head -1
}

runs_ours=() runs_nginx=()
for _ in 1 2; do
  runs_ours+=("$(run_wrk "$OURS_PORT")")
  runs_nginx+=("$(run_wrk "$NGINX_PORT")")
done
ours=$(printf '%s\n' "${runs_ours[@]}" | best_rps)
ngx=$(printf '%s\n' "${runs_nginx[@]}" | best_rps)
read -r o_rps o_p99 o_bad <<<"$ours"
read -r n_rps n_p99 n_bad <<<"$ngx"

printf '%-22s %12s %12s %8s  %s\n' figure ours nginx ratio target
awk -v o="$o_rps" -v n="$n_rps" 'BEGIN {
  printf "%-22s %12d %12d %7.2fx  >= 0.90x %s\n", "requests/s (wrk -c'"$CONNS"')", o, n, o / n,
         (o / n >= 0.9 ? "met" : "NOT MET") }'
awk -v o="$o_p99" -v n="$n_p99" 'BEGIN {
  printf "%-22s %12.3f %12.3f %7.2fx  lower is better\n", "p99 latency (ms)", o, n, (n > 0 ? o / n : 0) }'
echo "runs (rps p99ms errors): ours ${runs_ours[*]} | nginx ${runs_nginx[*]}"
[ "$o_bad" = 0 ] || echo "http-core: wrk saw errors or non-2xx from ours" >&2
[ "$n_bad" = 0 ] || echo "http-core: wrk saw errors or non-2xx from nginx" >&2
exit 0
