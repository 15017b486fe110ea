#!/bin/sh
# Installs the Prometheus server and promtool that the Prometheus integration tests
# start (tests/prometheus_*.rs). Idempotent and non-interactive: does nothing when both
# are already on PATH. Debian/Ubuntu only (package `prometheus`, 2.42 on Debian 12).
# The package's service is not needed: the tests start their own servers on loopback
# ports (apt-get's --no-install-recommends skips prometheus-node-exporter).
set -eu
. "$(dirname "$0")/apt-install.sh"

apt_install prometheus \
    'prometheus --version 2>&1 | head -n 1' \
    'install Prometheus 2.x so that `prometheus` and `promtool` are on PATH (https://prometheus.io/download/)' \
    prometheus \
    prometheus promtool
