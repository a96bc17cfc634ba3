#!/usr/bin/env bash
# make run: the main job.  It will start the local three-region deployment
# (statusctl up) once statusctl and the services exist (issues 4 and 5); until
# then it builds the project and says plainly what it cannot start yet.
set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.."
if [ -x "$BUILD/statusctl" ]; then
  exec "$BUILD/statusctl" up
fi
cat <<MSG
Built: the shared runtime library ($BUILD/libsp.a) and its tests.
Not started: the local three-region deployment needs statusd-api (issue 4),
statusd-replicad and statusctl (issue 5), which are not built yet.
The topology it will start is config/topology.local.json.
Run 'make test' to run every test that exists now.
MSG
