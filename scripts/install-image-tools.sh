#!/bin/sh
# Installs what the image test (tests/cluster_image.rs) reads the OCI archive with:
# `umoci` (unpacks the image into a root filesystem and derives the OCI runtime
# configuration from the image's config) and `skopeo` (inspects the archive as a registry
# client would). `make image` itself needs neither (scripts/build-image.py writes the
# archive with Python's standard library). Idempotent and non-interactive: does nothing
# when both are already on PATH. Debian/Ubuntu only (umoci 0.4.7 and skopeo 1.9 on Debian 12).
set -eu

if command -v umoci >/dev/null 2>&1 && command -v skopeo >/dev/null 2>&1; then
    echo "image tools are installed: $(umoci --version 2>&1 | head -n 1); $(skopeo --version 2>&1 | head -n 1)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install umoci (https://github.com/opencontainers/umoci)" >&2
    echo "and skopeo (https://github.com/containers/skopeo) so that both are on PATH" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends umoci skopeo

echo "installed: $(umoci --version 2>&1 | head -n 1); $(skopeo --version 2>&1 | head -n 1)"
