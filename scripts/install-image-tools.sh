#!/bin/sh
# Installs what the image test (tests/cluster_image.rs) reads the OCI archive with:
# `umoci` (unpacks the image into a root filesystem and derives the OCI runtime
# configuration from the image's config) and `skopeo` (inspects the archive as a registry
# client would). `make image` itself needs neither (scripts/build-image.py writes the
# archive with Python's standard library). Idempotent and non-interactive: does nothing
# when both are already on PATH. Debian/Ubuntu only (umoci 0.4.7 and skopeo 1.9 on Debian 12).
set -eu
. "$(dirname "$0")/apt-install.sh"

apt_install "image tools" \
    'echo "$(umoci --version 2>&1 | head -n 1); $(skopeo --version 2>&1 | head -n 1)"' \
    'install umoci (https://github.com/opencontainers/umoci) and skopeo (https://github.com/containers/skopeo) so that both are on PATH' \
    "umoci skopeo" \
    umoci skopeo
