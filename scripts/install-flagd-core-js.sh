#!/bin/sh
# Installs the JavaScript flagd evaluator (@openfeature/flagd-core, pinned with its peer
# @openfeature/core) that the mixed-fleet test (tests/mixed_fleet.rs) runs with node,
# into $SLUICE_NPM_CACHE (default ~/.cache/sluice-npm), once; reused when present.
set -eu

FLAGD_CORE=4.0.1
CORE=1.12.0
DIR="${SLUICE_NPM_CACHE:-$HOME/.cache/sluice-npm}/flagd-core-$FLAGD_CORE"

if [ -f "$DIR/node_modules/@openfeature/flagd-core/package.json" ] &&
    grep -q "\"version\": \"$FLAGD_CORE\"" "$DIR/node_modules/@openfeature/flagd-core/package.json"; then
    echo "@openfeature/flagd-core $FLAGD_CORE is installed in $DIR"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "error: npm not found; install Node.js (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
mkdir -p "$DIR"
npm install --prefix "$DIR" --no-audit --no-fund --silent \
    "@openfeature/flagd-core@$FLAGD_CORE" "@openfeature/core@$CORE"
echo "installed @openfeature/flagd-core $FLAGD_CORE in $DIR"
