# The project's commands. `make test` is the test command: on a fresh machine it
# installs what the tests need, then checks formatting and lints and runs every test.

VENV      := .venv
PYTHON    := $(VENV)/bin/python
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: test demo venv prometheus build lint crd clean-venv

test: venv prometheus
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
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

# A real Prometheus server (Debian's package) for the analysis tests.
prometheus:
	scripts/install-prometheus.sh

build:
	cargo build --locked --release

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

# Regenerates the committed CRD from the Rust types (a test fails when they differ).
crd:
	cargo run --quiet -- crd > crds/featurerollout.yaml

clean-venv:
	rm -rf $(VENV)
