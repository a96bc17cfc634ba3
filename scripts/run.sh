#!/usr/bin/env bash
# make run: the main job.  The Makefile has installed the packages (make deps)
# and built everything; this starts the local three-region deployment of
# config/topology.local.json with statusctl (idempotent: a second run finds
# everything running and changes nothing), then prints where the demo page
# reads in every region and the admin key.  State lives in var/; stop with
# `build/statusctl down` (data kept) or `down --purge` (data removed).
# runbooks/local-deployment.md says more.
set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.."
if [ ! -x "$BUILD/statusctl" ] || [ ! -x "$BUILD/statusd-api" ]; then
  echo "run: $BUILD/statusctl or $BUILD/statusd-api is missing: run 'make' first" >&2
  exit 1
fi
if ! "$BUILD/statusctl" up; then
  echo >&2
  echo "run: the local deployment did not come up (see above)." >&2
  echo "run: '$BUILD/statusctl status' shows what runs; '$BUILD/statusctl down' stops it." >&2
  exit 1
fi
cat <<MSG

The local deployment runs in the background (three regions on 127.0.0.11-13).
  $BUILD/statusctl status     processes, readiness, replication lag
  $BUILD/statusctl verify     do the regions hold the same state?
  $BUILD/statusctl down       stop everything (data kept in var/)
MSG
