# runlog-relay developer tasks. `make help` lists them.
# Every target that needs Python first makes sure .venv exists with the right extras,
# so `make demo` and `make test` work from a fresh clone with nothing else installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; else on=''; off=''; fi; \
	awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n\n"} /^[a-zA-Z_-]+:.*?##/ { printf "  %s%-18s%s %s\n", on, $$1, off, $$2 }' $(MAKEFILE_LIST)

$(BIN)/.installed-%: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$*]'
	@rm -f $(BIN)/.installed-*
	@touch $@

.PHONY: install
install: $(BIN)/.installed-test ## Create .venv with runlog-relay and every extra (operator, demo, docs, test).

.PHONY: demo
demo: $(BIN)/.installed-test ## Run the main job locally: S3 server, sidecar, a real runnable pipeline, the mirror.
	$(BIN)/runlog-relay demo

.PHONY: browser
browser: ## Install Debian's Chromium and ChromeDriver (the HTML timeline test opens pages in them).
	@hack/install_chromium.sh

.PHONY: test
test: $(BIN)/.installed-test browser ## Run the whole test suite (starts its own S3 and Kubernetes API servers on 127.0.0.1).
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(BIN)/.installed-test ## Unit tests only (seconds).
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: $(BIN)/.installed-test browser ## Integration tests only (real servers on 127.0.0.1).
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

.PHONY: lint
lint: $(BIN)/.installed-test ## ruff, mypy and the import-layer contracts.
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: typecheck
typecheck: $(BIN)/.installed-test ## mypy alone (also part of lint).
	$(BIN)/mypy

.PHONY: docs
docs: $(BIN)/.installed-test ## Build the docs site into site/ (mkdocs build --strict).
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

.PHONY: docs-serve
docs-serve: $(BIN)/.installed-test ## Serve the docs site on http://127.0.0.1:8000, rebuilt as you edit.
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

.PHONY: docs-reference
docs-reference: $(BIN)/.installed-test ## Regenerate docs/reference/ (settings, CRD fields, metrics, exit codes) from the code.
	$(BIN)/python hack/docs_reference.py

.PHONY: format
format: $(BIN)/.installed-test ## Format and auto-fix with ruff.
	$(BIN)/ruff format daemon tests bench
	$(BIN)/ruff check --fix daemon tests bench

.PHONY: bench
bench: $(BIN)/.installed-test ## Run the sidecar benchmark, one table of figures (about 15 min; ONLY=startup,torn for some).
	@# The rclone scenario compares with Debian's rclone; without it that row says "skipped".
	@command -v rclone >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get install -y -q rclone >/dev/null; } || echo "rclone not installed: bench rclone skips it"
	$(BIN)/python -m bench $(if $(ONLY),--only $(ONLY))

.PHONY: bench-operator
bench-operator: $(BIN)/.installed-test ## Operator benchmark: RSS with 10,000 Secrets elsewhere, and HA failover time (a few minutes).
	$(BIN)/python -m bench.operator $(BENCH_ARGS)

.PHONY: crd
crd: $(BIN)/.installed-test ## Regenerate the committed CRD from the pydantic models.
	$(BIN)/runlog-relay crd > manifests/crds/runlogstores.runlog-relay.dev.yaml

.PHONY: settings-fields
settings-fields: $(BIN)/.installed-test ## Regenerate the sidecar's settings table (config/settings_fields.py) from the pydantic schema.
	$(BIN)/python -m runlog_relay.config.fieldgen

.PHONY: clean
clean: ## Remove the virtualenv and caches.
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site

.PHONY: manifests
manifests: $(BIN)/.installed-test ## Regenerate the chart's CRD copy and values table, and manifests/install.yaml, from the chart.
	$(BIN)/python hack/render_manifests.py

.PHONY: helm-lint
helm-lint: $(BIN)/.installed-test ## helm lint --strict the chart with every ci/ values file (Helm's Go SDK; no helm binary needed).
	$(BIN)/python -m pytest tests/integration/test_helm.py -k lint $(PYTEST_ARGS)

.PHONY: lock
lock: $(BIN)/.installed-test ## Rewrite requirements/runtime.lock (the image's pins) from the versions installed in .venv.
	$(BIN)/python hack/lock_requirements.py

VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= runlog-relay:$(VERSION)

.PHONY: image
image: ## Build the container image with docker (IMAGE=registry/name:tag).
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$$(git rev-parse HEAD) -t $(IMAGE) .
