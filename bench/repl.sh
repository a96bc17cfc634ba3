#!/usr/bin/env bash
# bench/repl.sh BUILD_DIR: issue 5's replication figures, on a real local
# three-region deployment (statusctl up: per region its own PostgreSQL,
# Redis, statusd-api and statusd-replicad on 127.0.0.11/.12/.13).
#
# The deployment uses a copy of config/topology.local.json in a temporary
# directory, every port moved up by $REPL_BENCH_PORT_SHIFT (default 13000:
# clear of `make run`, test_statusctl (+20000) and test_replicad (+21000)),
# and its own state dir; statusd-api gets SP_RATE_LIMIT=100000:100000 so the
# figures measure replication, not the per-key write limiter.
#
# 1. Convergence lag (BUILD_DIR/bench/repl_lag lag): writes through the
#    management API spread over the three regions, open loop at 100 and at
#    1000 writes/s for $REPL_BENCH_SECONDS (default 5) s each, each run on
#    a page of its own with 60 components (repl_lag PAGE "new"); the time from
#    a write's 2xx answer to its visibility in each other region's public
#    components.json (polled every 3 ms per region, or as soon as the last
#    poll is answered when that takes longer), p50/p99.
#    Target: p99 < 250 ms at 1000 writes/s (the design allows 500 ms).
# 2. Changes applied per second: eu-west's statusd-replicad is stopped
#    (SIGTERM by PID); a 2 s burst of PATCHes (three fields each) goes into
#    us-east's management API (its writes/s are printed), then a backlog of
#    20000 changes is written straight into us-east's PostgreSQL with
#    sp_write_batch (below: the API alone cannot build one worth timing
#    here); `statusctl up` restarts eu-west's daemon and repl_lag catchup
#    times eu-west's merged vector for us-east (GET /_internal/digest on
#    its statusd-api) from its first move to us-east's value: changes
#    received, applied, published and merged by eu-west's API, per second;
#    in the same loop it times sp_vclock in eu-west's PostgreSQL, what the
#    daemon applied: that is the "changes applied/s" figure.
#    Target: >= 20000 changes/s.
# There is no outside program to compare with, so the reference column is
# the target.  Every process is stopped by PID (statusctl down --purge, then
# SIGKILL for whatever a PID file still names).  Takes about 40-50 s.
# Benchmarks print figures; they do not fail on them.
set -euo pipefail
BUILD=${1:-build}
SHIFT=${REPL_BENCH_PORT_SHIFT:-13000}
SECS=${REPL_BENCH_SECONDS:-5}
CTL="$BUILD/statusctl"
LAG=${REPL_LAG_BIN:-"$BUILD/bench/repl_lag"}
for b in "$CTL" "$LAG" "$BUILD/statusd-api" "$BUILD/statusd-replicad"; do
  [ -x "$b" ] || { echo "repl: $b not built (make)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "repl: jq not installed" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/repl-bench.XXXXXX")
chmod 755 "$TMP"
TOPO="$TMP/topology.json"
STATE="$TMP/var"
REGIONS=(us-east eu-west ap-south)
CATCH_PID=""
ctl() { timeout 180 "$CTL" --topology "$TOPO" "$@"; }
pid_of() { cat "$STATE/$1/run/$2.pid" 2>/dev/null || true; }
cleanup() {
  if [ -n "$CATCH_PID" ]; then kill "$CATCH_PID" 2>/dev/null || true; wait "$CATCH_PID" 2>/dev/null || true; fi
  ctl down --purge --force >"$TMP/down.log" 2>&1 || cat "$TMP/down.log" >&2
  # whatever a PID file still names (a failed `up` leaves some behind)
  for r in "${REGIONS[@]}"; do
    for p in postgres redis statusd-api statusd-replicad; do
      pid=$(pid_of "$r" "$p")
      [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    done
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

jq --arg s "$STATE" --argjson shift "$SHIFT" '
  .state_dir = $s
  | .tls.ca_cert = ($s + "/tls/ca.pem") | .tls.ca_key = ($s + "/tls/ca.key")
  | .regions |= map(
      reduce ("api", "sse", "notify", "replication", "postgres", "redis") as $k
        (.; if .[$k] then .[$k].port += $shift else . end)
      | .tls.cert = ($s + "/tls/" + .name + ".pem")
      | .tls.key = ($s + "/tls/" + .name + ".key"))' config/topology.local.json >"$TOPO"
chmod 644 "$TOPO"

export SP_RATE_LIMIT=100000:100000
if ! ctl up >"$TMP/up.log" 2>&1; then
  cat "$TMP/up.log" >&2
  echo "repl: statusctl up failed" >&2
  exit 1
fi
ctl endpoints --json >"$TMP/endpoints.json"
KEY=$(jq -r .admin_key "$TMP/endpoints.json")
PAGE=$(jq -r .demo_page_id "$TMP/endpoints.json")
PORT=$(jq -r '.regions[0].api.port' "$TOPO")
ADDRS=($(jq -r '.regions[].address' "$TOPO"))
[ -n "$KEY" ] && [ "$KEY" != null ] && [ -n "$PAGE" ] && [ "$PAGE" != null ] ||
  { echo "repl: no admin key or demo page in statusctl endpoints" >&2; exit 1; }

# --- 1. convergence lag -------------------------------------------------------------
lag100=$("$LAG" lag "$PORT" "$KEY" new 100 "$SECS" "${ADDRS[@]}")
lag1000=$("$LAG" lag "$PORT" "$KEY" new 1000 "$SECS" "${ADDRS[@]}")

# --- 2. changes applied per second --------------------------------------------------
RPID=$(pid_of eu-west statusd-replicad)
[ -n "$RPID" ] || { echo "repl: no PID file for eu-west's statusd-replicad" >&2; exit 1; }
kill -TERM "$RPID"
for _ in $(seq 1 100); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$RPID" 2>/dev/null && { echo "repl: eu-west's statusd-replicad did not stop" >&2; exit 1; }
burst=$("$LAG" burst "${ADDRS[0]}" "$PORT" "$KEY" "$PAGE" 20000 2)
# The API's write rate here (fsync on, three PostgreSQL servers on one disk)
# cannot build a backlog worth timing, so the backlog is written straight
# into us-east's PostgreSQL with sp_write_batch, the function statusd-api's
# group commit calls: $SQL_BATCHES transactions of 500 writes, each setting
# a live component's description 10 times (10 changes in the log).
SQL_BATCHES=${REPL_BENCH_SQL_BATCHES:-4}
PGH=$(jq -r '.regions[0].postgres.host' "$TOPO")
PGP=$(jq -r '.regions[0].postgres.port' "$TOPO")
PGD=$(jq -r '.regions[0].postgres.dbname' "$TOPO")
psql_us() { timeout 120 psql -X -q -At -v ON_ERROR_STOP=1 -h "$PGH" -p "$PGP" -U postgres -d "$PGD" "$@"; }
ORIGIN=$(psql_us -c "SELECT region FROM sp_region_clock ORDER BY seq DESC LIMIT 1")
t0=$(date +%s.%N)
for b in $(seq 1 "$SQL_BATCHES"); do
  psql_us -v region="$ORIGIN" -v page="$PAGE" -v b="$b" >/dev/null <<'EOF'
SELECT sp_write_batch(:'region'::smallint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
  (SELECT jsonb_agg(jsonb_build_object(
            'outbox', '[]'::jsonb,
            'ops', (SELECT jsonb_agg(jsonb_build_object('op', 'set', 'p', e.page_id, 't', e.type,
                                                        'i', e.id, 'f', 'description',
                                                        'v', 'sql ' || :'b' || '.' || w || '.' || k))
                    FROM generate_series(1, 10) k)))
   FROM generate_series(1, 500) w,
        LATERAL (SELECT page_id, type, id FROM sp_entity
                 WHERE page_id = :'page' AND type = 'component' AND cl % 2 = 1
                 ORDER BY id OFFSET w % 20 LIMIT 1) e));
EOF
done
t1=$(date +%s.%N)
sqlrate=$(awk -v n="$((SQL_BATCHES * 5000))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
EUH=$(jq -r '.regions[1].postgres.host' "$TOPO")
EUP=$(jq -r '.regions[1].postgres.port' "$TOPO")
EUD=$(jq -r '.regions[1].postgres.dbname' "$TOPO")
"$LAG" catchup "${ADDRS[0]}" "${ADDRS[1]}" "$PORT" 30 \
  "host=$EUH port=$EUP dbname=$EUD user=postgres connect_timeout=5" >"$TMP/catchup.out" &
CATCH_PID=$!
# catchup waits for us-east's API to merge the backlog (its vector holds
# still for a second), reads eu-west's vector and says "ready"; only then
# does the daemon come back
for _ in $(seq 1 300); do
  grep -q '^ready' "$TMP/catchup.out" 2>/dev/null && break
  kill -0 "$CATCH_PID" 2>/dev/null || break
  sleep 0.1
done
ctl up >"$TMP/up2.log" 2>&1 || { cat "$TMP/up2.log" >&2; echo "repl: restart failed" >&2; }
wait "$CATCH_PID" || true
CATCH_PID=""
catch=$(grep -v '^ready' "$TMP/catchup.out" || true)

g() { sed -n "s/.*\b$2=\([^ ]*\).*/\1/p" <<<"$1"; }
printf '%-38s %12s %12s %8s  %s\n' figure ours reference ratio target
for pair in "100:$lag100" "1000:$lag1000"; do
  rate=${pair%%:*} line=${pair#*:}
  awk -v o="$(g "$line" p50_ms)" -v r="$rate" 'BEGIN {
    printf "%-38s %12.1f %12s %8s  (target is on p99)\n", "lag p50 (ms) at " r " writes/s offered", o, "-", "-" }'
  # the target holds at 1000 writes/s: a run the regions could not take
  # at (nearly) that rate does not meet it, whatever its p99
  awk -v o="$(g "$line" p99_ms)" -v r="$rate" -v a="$(g "$line" rate)" 'BEGIN {
    v = ""
    if (r == 1000) v = a < 900 ? " NOT MET (only " a " writes/s taken)" : (o < 250 ? " met" : " NOT MET")
    printf "%-38s %12.1f %12d %7.2fx  < 250 ms%s\n", "lag p99 (ms) at " r " writes/s offered", o, 250, o / 250, v }'
  awk -v a="$(g "$line" rate)" -v r="$rate" 'BEGIN {
    printf "%-38s %12d %12d %7.2fx\n", "writes/s taken (" r " offered)", a, r, a / r }'
done
awk -v o="$(g "$catch" db_rate)" 'BEGIN {
  printf "%-38s %12d %12d %7.2fx  >= 20000/s %s\n", "changes applied/s (eu-west database)", o,
         20000, o / 20000, (o >= 20000 ? "met" : "NOT MET") }'
awk -v o="$(g "$catch" rate)" 'BEGIN {
  printf "%-38s %12d %12d %7.2fx  (applied and merged by the API)\n", "changes visible/s (eu-west API)", o,
         20000, o / 20000 }'
echo "reference = the issue-5 target (no outside program to compare with)"
echo "lag at 100/s:  $lag100"
echo "lag at 1000/s: $lag1000"
echo "management API burst into us-east (16 conns, 2 s): $burst"
echo "backlog written in us-east's PostgreSQL: $((SQL_BATCHES * 5000)) changes at ${sqlrate}/s (origin $ORIGIN)"
echo "eu-west catch-up: $catch"
for line in "$lag100" "$lag1000"; do
  [ "$(g "$line" missing)" = 0 ] || echo "repl: some writes were not seen in every region" >&2
  [ "$(g "$line" errors)" = 0 ] || echo "repl: the lag run saw errors" >&2
done
[ "$(g "$catch" done)" = 1 ] || echo "repl: eu-west did not catch up within 30 s" >&2
exit 0
