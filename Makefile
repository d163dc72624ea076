# vip-operator developer tasks. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
CRD_FILE := crds/vipbindings.vipoperator.dev.yaml
CHART_CRD_FILE := charts/vip-operator/crds/vipbindings.vipoperator.dev.yaml

.PHONY: help run simulator test lint fmt crds check-crds chart-check tools e2e bench build release

help: ## This list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

run: ## Run the operator against the current kubeconfig, with the bundled ECS simulator as Huawei Cloud
	$(CARGO) run --release -- run --simulator --install-crd

simulator: ## Serve the ECS simulator on 127.0.0.1:18080 (admin API under /sim/)
	$(CARGO) run --release -- simulator --listen 127.0.0.1:18080 --latency-ms 200

test: ## Run the whole test suite (no cluster needed)
	$(CARGO) nextest run --no-fail-fast

lint: ## rustfmt check + clippy with warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt

crds: ## Regenerate the CRD YAML (crds/ and the Helm chart's copy) from the code
	$(CARGO) run -q -- crd > $(CRD_FILE)
	cp $(CRD_FILE) $(CHART_CRD_FILE)

check-crds: crds ## Fail if the committed CRD files differ from what the code generates
	git diff --exit-code -- $(CRD_FILE) $(CHART_CRD_FILE)

tools: ## Install helm, kubectl and kubernetes-validate into .helm-tools/bin (put that on PATH)
	.ci/install-tools.sh

chart-check: ## helm lint --strict the chart and validate its rendered manifests offline
	.ci/chart-check.sh

e2e: ## End-to-end suite against the cluster in VIPOP_E2E_KUBECONFIG (says so and uses the fake API without it)
	@if [ -z "$$VIPOP_E2E_KUBECONFIG" ]; then \
	  echo "e2e: real-cluster mode SKIPPED: set VIPOP_E2E_KUBECONFIG=/path/to/kubeconfig to run against a cluster."; \
	  echo "e2e: running the suite against the in-repo fake API server instead."; \
	else \
	  echo "e2e: real-cluster mode against $$VIPOP_E2E_KUBECONFIG"; \
	fi
	$(CARGO) nextest run --test e2e --no-fail-fast

bench: ## Fleet benchmark: release operator + simulator, N bindings (BENCH_N, BENCH_LATENCY_MS, BENCH_QPS, BENCH_CONCURRENCY)
	$(CARGO) bench --bench operator

build: ## Debug build
	$(CARGO) build

release: ## Release build
	$(CARGO) build --release
