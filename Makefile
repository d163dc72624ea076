# vip-operator developer tasks. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
CRD_NAMES := vipbindings.vipoperator.dev vipgroups.vipoperator.dev
CRD_FILES := $(foreach n,$(CRD_NAMES),crds/$(n).yaml)
CHART_CRD_FILES := $(foreach n,$(CRD_NAMES),charts/vip-operator/crds/$(n).yaml)

# The real control plane for tests (etcd, kube-apiserver, kube-controller-manager v1.36), unpacked
# into an envtest-style KUBEBUILDER_ASSETS folder by `make k8s-assets`.
K8S_BIN ?= ../shared/k8s/bin.tar.xz
K8S_ASSETS ?= $(CURDIR)/target/k8s-assets

.PHONY: help run simulator test lint fmt crds check-crds chart-check tools e2e e2e-real chaos k8s-assets bench bench-fake build release

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
	for n in $(CRD_NAMES); do $(CARGO) run -q -- crd --name $$n > crds/$$n.yaml && cp crds/$$n.yaml charts/vip-operator/crds/$$n.yaml; done

check-crds: crds ## Fail if the committed CRD files differ from what the code generates
	git diff --exit-code -- $(CRD_FILES) $(CHART_CRD_FILES)

tools: ## Install helm, kubectl, kubernetes-validate and the Prometheus Operator CRD schemas into .helm-tools (put .helm-tools/bin on PATH)
	.ci/install-tools.sh

chart-check: ## helm lint --strict the chart and validate its rendered manifests offline
	.ci/chart-check.sh

e2e: ## End-to-end suite on VIPOP_E2E_KUBECONFIG, else a private control plane from KUBEBUILDER_ASSETS, else the fake API server
	@if [ -n "$$VIPOP_E2E_KUBECONFIG" ]; then \
	  echo "e2e: against the existing cluster in $$VIPOP_E2E_KUBECONFIG"; \
	elif [ -n "$$KUBEBUILDER_ASSETS" ]; then \
	  echo "e2e: against a private control plane started from $$KUBEBUILDER_ASSETS"; \
	else \
	  echo "e2e: real-cluster mode SKIPPED: set KUBEBUILDER_ASSETS (see make e2e-real) or VIPOP_E2E_KUBECONFIG."; \
	  echo "e2e: running the suite against the in-repo fake API server instead (scenarios needing a real server skip)."; \
	fi
	$(CARGO) nextest run --test e2e --no-fail-fast

k8s-assets: ## Unpack the real control plane ($(K8S_BIN)) into $(K8S_ASSETS)
	@test -f "$(K8S_BIN)" || { echo "k8s-assets: $(K8S_BIN) not found (set K8S_BIN)"; exit 1; }
	@if [ ! -x "$(K8S_ASSETS)/kube-apiserver" ] || [ "$(K8S_BIN)" -nt "$(K8S_ASSETS)/.unpacked" ]; then \
	  mkdir -p "$(K8S_ASSETS)" && tar -xJf "$(K8S_BIN)" -C "$(K8S_ASSETS)" && touch "$(K8S_ASSETS)/.unpacked"; \
	fi
	@echo "KUBEBUILDER_ASSETS=$(K8S_ASSETS)"

e2e-real: k8s-assets ## The e2e suite on a private real control plane; fails rather than fall back to the fake
	KUBEBUILDER_ASSETS=$(K8S_ASSETS) VIPOP_E2E_REQUIRE_REAL=1 $(MAKE) --no-print-directory e2e

# The chaos test, long: CHAOS_RUNS random seeds, or the seeds in CHAOS_SEEDS ("7 42"), of
# CHAOS_STEPS steps each. The e2e suite runs it too, short, with one random seed.
CHAOS_STEPS ?= 600
CHAOS_RUNS ?= 10

chaos: k8s-assets ## Seeded random mix on a private real control plane, CHAOS_RUNS seeds (or CHAOS_SEEDS) of CHAOS_STEPS steps; stops at the first failure
	@seeds="$(CHAOS_SEEDS)"; \
	if [ -z "$$seeds" ]; then seeds=$$(for i in $$(seq $(CHAOS_RUNS)); do od -An -N8 -tu8 /dev/urandom | tr -d ' '; done); fi; \
	for seed in $$seeds; do \
	  echo "chaos: seed $$seed, $(CHAOS_STEPS) steps"; \
	  KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(K8S_ASSETS)} VIPOP_E2E_REQUIRE_REAL=1 VIPOP_CHAOS_SEED=$$seed VIPOP_CHAOS_STEPS=$(CHAOS_STEPS) \
	    $(CARGO) nextest run --test e2e --no-capture chaos_random_mix_keeps_the_invariants \
	    || { echo "chaos: seed $$seed FAILED; replay: make chaos CHAOS_SEEDS=$$seed CHAOS_STEPS=$(CHAOS_STEPS)"; exit 1; }; \
	done

bench: k8s-assets ## Fleet benchmark on a private real control plane (BENCH_N, BENCH_LATENCY_MS, BENCH_QPS, BENCH_CONCURRENCY)
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(K8S_ASSETS)} $(CARGO) bench --bench operator
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(K8S_ASSETS)} $(CARGO) bench --bench drift
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(K8S_ASSETS)} $(CARGO) bench --bench group
	$(CARGO) bench --bench metrics

bench-fake: ## The same benchmark on the in-repo fake API server
	$(CARGO) bench --bench operator
	$(CARGO) bench --bench drift

build: ## Debug build
	$(CARGO) build

release: ## Release build
	$(CARGO) build --release
