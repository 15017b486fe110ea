#!/bin/sh
# Installs the Prometheus server and promtool that the Prometheus integration tests
# start (tests/prometheus_*.rs). Idempotent and non-interactive: does nothing when both
# are already on PATH. Debian/Ubuntu only (package `prometheus`, 2.42 on Debian 12).
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus is installed: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install Prometheus 2.x so that \`prometheus\` and" >&2
    echo "\`promtool\` are on PATH (https://prometheus.io/download/)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# The package's service is not needed: the tests start their own servers on loopback
# ports. --no-install-recommends skips prometheus-node-exporter.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

echo "installed: $(prometheus --version 2>&1 | head -n 1)"
