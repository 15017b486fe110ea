# The project's commands. `make test` is the test command: on a fresh machine it
# installs what the tests need, then checks formatting and lints and runs every test.

VENV      := .venv
PYTHON    := $(VENV)/bin/python
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: test demo venv helm prometheus kube image image-tools flagd-core-js build lint helm-lint crd clean-venv

# The image test (tests/cluster_image.rs) runs the archive `make image` writes.
test: venv helm prometheus kube image-tools image flagd-core-js
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	$(PYTHON) scripts/helm.py lint charts/sluice
	SLUICE_PYTHON=$(abspath $(PYTHON)) cargo test --locked

# The end-to-end demo: a Python service, Prometheus, load and `sluice standalone` rolling
# two flags out side by side (one promoted, one rolled back); about a minute. A debug build,
# shared with `make test`. CARGO_TARGET_DIR is honoured.
demo: venv prometheus
	cargo build --locked
	$(PYTHON) examples/demo/demo.py --sluice $${CARGO_TARGET_DIR:-target}/debug/sluice

# The real OpenFeature Python SDK and flagd provider, which read what Sluice writes.
venv: $(VENV)/.installed

$(VENV)/.installed: tests/python/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -r tests/python/requirements.txt
	touch $@

# Helm's library for `helm lint` and offline rendering of charts/sluice (scripts/helm.py).
# helm-sdkpy declares Python >= 3.12 but works on 3.11, hence --ignore-requires-python.
helm: $(VENV)/.helm-installed

$(VENV)/.helm-installed: tests/python/helm-requirements.txt $(VENV)/.installed
	$(VENV)/bin/pip install $(PIP_FLAGS) --ignore-requires-python -r tests/python/helm-requirements.txt
	touch $@

helm-lint: helm
	$(PYTHON) scripts/helm.py lint charts/sluice

# A real Prometheus server (Debian's package) for the analysis tests.
prometheus:
	scripts/install-prometheus.sh

# The JavaScript flagd evaluator (@openfeature/flagd-core, pinned) for the mixed-fleet
# test (tests/mixed_fleet.rs), from npm into $${SLUICE_NPM_CACHE:-~/.cache/sluice-npm}, once.
flagd-core-js:
	scripts/install-flagd-core-js.sh

# A real kube-apiserver and etcd for the cluster tests (tests/cluster*.rs), built from
# source with Go at the releases pinned in scripts/kube/go.mod, once, into
# $${SLUICE_KUBE_CACHE:-~/.cache/sluice-kube}; reused when present.
kube:
	scripts/install-kube.sh

build:
	cargo build --locked --release

# The controller's OCI image archive, from the release binary, without a daemon or a
# registry: $${CARGO_TARGET_DIR:-target}/image/sluice-<version>.oci.tar and its digest
# (scripts/build-image.py; reproducible: the same commit gives the same digest).
image:
	cargo build --locked --release --bin sluice
	python3 scripts/build-image.py --binary $${CARGO_TARGET_DIR:-target}/release/sluice \
		--out $${CARGO_TARGET_DIR:-target}/image

# Debian's skopeo and umoci, which the image test reads the archive with.
image-tools:
	scripts/install-image-tools.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

# Regenerates the committed CRD from the Rust types, and the chart's copy (tests fail
# when either differs).
crd:
	cargo run --quiet -- crd > crds/featurerollout.yaml
	cp crds/featurerollout.yaml charts/sluice/crds/featurerollout.yaml

clean-venv:
	rm -rf $(VENV)
