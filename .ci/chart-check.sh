#!/usr/bin/env bash
# `make chart-check`: lints the Helm chart and validates what it renders, offline.
#   - helm lint --strict, with the default values and with ci/full-values.yaml;
#   - helm template (CRD included) with both, validated by kubernetes-validate --strict against
#     the Kubernetes versions at both ends of the supported range (the chart's kubeVersion floor
#     and the newest schemas kubernetes-validate bundles).
#   - the Prometheus Operator objects (PrometheusRule, ServiceMonitor) in both, by
#     .ci/validate-crs.py against the operator's CRD schemas (unknown fields are errors).
# kubernetes-validate only knows built-in kinds: for any other kind it prints "Couldn't find
# schema" and still passes. That would also hide a misspelt apiVersion of a built-in kind, so
# such a warning fails this check, except for the kinds validate-crs.py validates instead. The
# VipBinding CRD itself is a built-in kind (apiextensions.k8s.io/v1 CustomResourceDefinition) and
# is validated; its CEL rules are tested by tests/crd.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM="${HELM:-helm}"
KUBERNETES_VALIDATE="${KUBERNETES_VALIDATE:-kubernetes-validate}"
# The venv of .ci/install-tools.sh (pinned jsonschema, PyYAML) and the CRD schemas it extracts.
TOOLS_PYTHON="${TOOLS_PYTHON:-.helm-tools/venv/bin/python}"
CRD_SCHEMAS="${CRD_SCHEMAS:-.helm-tools/schemas}"
CHART=charts/vip-operator
# Fall back to the tools installed by .ci/install-tools.sh.
[[ -d .helm-tools/bin ]] && PATH="$PATH:$PWD/.helm-tools/bin"
FULL="$CHART/ci/full-values.yaml"
KUBE_MIN=1.31.0   # Chart.yaml kubeVersion
KUBE_MAX=1.37.0   # newest schemas in kubernetes-validate 1.37
# Exactly the kinds .ci/validate-crs.py checks (it fails on any other monitoring.coreos.com one).
ALLOWED_UNKNOWN=(
  'kind PrometheusRule with api version monitoring.coreos.com/v1 '
  'kind ServiceMonitor with api version monitoring.coreos.com/v1 '
)

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "-- helm lint"
"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" --values "$FULL"

echo "-- helm template"
"$HELM" template vip-operator "$CHART" --namespace vip-system --include-crds --kube-version "$KUBE_MIN" \
  > "$out/default.yaml"
"$HELM" template vip-operator "$CHART" --namespace vip-system --include-crds --kube-version "$KUBE_MIN" \
  --values "$FULL" > "$out/full.yaml"

echo "-- kubernetes-validate"
"$KUBERNETES_VALIDATE" --version
status=0
for version in "$KUBE_MIN" "$KUBE_MAX"; do
  report="$out/report-$version.txt"
  "$KUBERNETES_VALIDATE" --strict --quiet --kubernetes-version "$version" "$out/default.yaml" "$out/full.yaml" \
    > "$report" 2>&1 || status=1
  cat "$report"
  unknown="$(grep "Couldn't find schema" "$report" | grep -vFf <(printf '%s\n' "${ALLOWED_UNKNOWN[@]}") || true)"
  if [[ -n "$unknown" ]]; then
    echo "chart-check: a rendered object has a kind/apiVersion unknown to Kubernetes $version (see above)" >&2
    status=1
  fi
done

echo "-- Prometheus Operator objects (validate-crs.py)"
[[ -x "$TOOLS_PYTHON" ]] || { echo "chart-check: no $TOOLS_PYTHON: run .ci/install-tools.sh" >&2; exit 1; }
"$TOOLS_PYTHON" .ci/validate-crs.py "$CRD_SCHEMAS" "$out/default.yaml" "$out/full.yaml" || status=1

count() { grep -c '^kind: ' "$1"; }
echo "validated $(count "$out/default.yaml") (default) + $(count "$out/full.yaml") (full values) objects"
exit "$status"
