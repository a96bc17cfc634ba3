#!/usr/bin/env bash
# Installs the Debian packages the project needs, when any is missing, and
# creates the unprivileged user that runs PostgreSQL (it refuses to run as
# root).  Idempotent; takes a fraction of a second when everything is there.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config
  libuv1-dev libpq-dev libhiredis-dev libprotobuf-c-dev protobuf-c-compiler
  libnghttp2-dev libssl-dev libcmocka-dev libjansson-dev libhttp-parser-dev
  libcurl4-openssl-dev
  postgresql redis-server
  openssl ca-certificates procps iproute2
  prometheus                       # promtool checks our /metrics output
  clang libclang-rt-14-dev         # libFuzzer targets
  wrk nginx-light                  # make bench: load generator and reference
)
SP_USER=${SP_USER:-statuspage}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "deps: need root or sudo to run: $*" >&2; exit 1
  fi
}

installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null |
  awk '$2 == "installed" { print $1 }' || true)
missing=()
for p in "${PACKAGES[@]}"; do
  grep -qx "$p" <<<"$installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q >/dev/null
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! id "$SP_USER" >/dev/null 2>&1; then
  echo "deps: creating user $SP_USER (runs PostgreSQL and Redis for tests and the local deployment)"
  as_root useradd --system --user-group --create-home --home-dir "/var/lib/$SP_USER" \
    --shell /usr/sbin/nologin "$SP_USER"
fi
