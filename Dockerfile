# The controller image for those who build with a container daemon: the equivalent of
# `make image` (scripts/build-image.py), from the same release binary. UNTESTED HERE: the
# project's machines have no daemon and pull from no image registry; `make image` is the
# tested way, and tests/cluster_image.rs runs what it builds.
#
#   cargo build --locked --release --bin sluice
#   docker build -t YOUR-REGISTRY/sluice:0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) .
#
# The base is Debian 12's distroless "cc" image (glibc, libgcc, CA certificates, user
# nonroot 65532): the binary is built on Debian 12 and links against that glibc. Pin it
# by digest for a reproducible build. .dockerignore sends only the binary as context.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --chmod=0755 target/release/sluice /usr/local/bin/sluice
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["controller"]
