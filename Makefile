# The verbs a person types. Each target is a thin call; see deploy/local/.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
# How many of every service `make up` runs (tenx-dev --instances).
INSTANCES ?= 1
BUF   ?= $(CURDIR)/.tools/npm/node_modules/.bin/buf

.PHONY: help deps tools build test lint breaking fmt up bench migrate check-deploy deploy-tests chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  \1\t/' | expand -t 12

deps: ## start/create local Postgres (+ replica on 5433), Redis, RabbitMQ, SMTP sink
	deploy/local/deps.sh

tools: ## install dev tools (buf, Python venv) into .tools/
	deploy/local/tools.sh

build: ## build everything
	$(CARGO) build --workspace --all-targets

test: deps ## run all tests (nextest when installed), then check-deploy
	@deploy/local/tools.sh venv
	@deploy/local/tools.sh fonts
	@deploy/local/tools.sh browser
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  echo "$(CARGO) nextest run --workspace --no-fail-fast"; \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  echo "$(CARGO) test --workspace"; \
	  $(CARGO) test --workspace; \
	fi
	@$(MAKE) --no-print-directory check-deploy

# The services: every crate with a src/defaults.toml.
SERVICES := $(sort $(patsubst crates/%/src/defaults.toml,%,$(wildcard crates/*/src/defaults.toml)))
# Where cargo put them: CARGO_TARGET_DIR when set (a shared target dir).
TENX_BIN_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release

check-deploy: ## release-build the services, then the deployment checks (chart, images, compose, workflows)
	$(CARGO) build --release --locked --bins $(addprefix -p tenx-,$(SERVICES))
	@$(MAKE) --no-print-directory deploy-tests

deploy-tests: ## the deployment checks alone, on the binaries in TENX_BIN_DIR (default target/release)
	@deploy/local/tools.sh deploy
	cd deploy/tests && TENX_BIN_DIR="$(TENX_BIN_DIR)" $(CURDIR)/.tools/venv/bin/python -m unittest -v test_chart test_repo test_images 2>&1 \
	  | tee $(CURDIR)/.tools/deploy-tests.log | grep -E '(FAIL|ERROR|^Ran |^OK|^FAILED)'; \
	  status=$${PIPESTATUS[0]}; \
	  [[ $$status -eq 0 ]] || { echo "deploy checks failed; full log: .tools/deploy-tests.log"; cat $(CURDIR)/.tools/deploy-tests.log | sed -n '/^====/,$$p'; }; \
	  exit $$status

lint: tools ## rustfmt check, clippy -D warnings, buf lint, buf breaking against main
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd proto && $(BUF) lint
	@$(MAKE) --no-print-directory breaking

breaking: tools ## buf breaking-change check of proto/ against branch main
	@cd proto && \
	if git rev-parse -q --verify 'refs/heads/main^{commit}' >/dev/null && git cat-file -e main:proto/buf.yaml 2>/dev/null; then \
	  against='../.git#branch=main,subdir=proto'; \
	elif git rev-parse -q --verify 'refs/remotes/origin/main^{commit}' >/dev/null && git cat-file -e origin/main:proto/buf.yaml 2>/dev/null; then \
	  against='../.git#ref=origin/main,subdir=proto'; \
	else \
	  echo "breaking: no main branch with proto/buf.yaml yet; nothing to compare against"; exit 0; \
	fi; \
	echo "buf breaking --against '$$against'"; \
	$(BUF) breaking --against "$$against"

fmt: ## format all Rust code
	$(CARGO) fmt --all

up: deps ## run the whole system locally (tenx-dev); INSTANCES=2 runs two of every service
	$(CARGO) run -p tenx-dev --release -- run --instances $(INSTANCES)

chaos: deps ## the fault suite with tenx-load traffic, each scenario printing its row of docs/RELIABILITY.md
	$(CARGO) nextest run -p tenx-load --features chaos --test chaos --test faults --no-capture --test-threads 1 2>&1 \
	  | tee .tools/chaos.log | grep -E '^\| |PASS|FAIL|Summary'; exit $${PIPESTATUS[0]}
	$(CARGO) nextest run -p tenx-notification --test it chaos:: --no-capture 2>&1 | grep -E '^\| |PASS|FAIL|Summary'; exit $${PIPESTATUS[0]}

bench: deps ## benchmarks, each compared with its committed baseline
	@deploy/local/tools.sh bench
	$(CARGO) bench -p tenx-common -p tenx-auth -p tenx-notification -p tenx-gateway -p tenx-billing

migrate: deps ## apply every service's database migrations
	$(CARGO) run -p tenx-dev -- migrate
