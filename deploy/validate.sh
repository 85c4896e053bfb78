#!/usr/bin/env bash
# Validates the install manifests offline, against the Kubernetes OpenAPI schemas in
# strict mode (unknown fields are errors):
#   - the manager's kustomize base (deploy/kube-manager, with manager.env.example),
#   - the server-rendered single file, without and with an extra CA
#     (cargo run -p lapdev-kube --example render-manifest),
#   - the example server install (deploy/server, with server.env.example).
# Needs kubectl (for `kubectl kustomize`), cargo, and python3 with pip: the PyPI
# package kubernetes-validate is installed when missing.
#
# Usage: deploy/validate.sh            (from anywhere; CI: bash deploy/validate.sh)
# Env:   KUBERNETES_VERSION (default 1.33.0: the k8s-openapi feature the code pins)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.33.0}"
KUBERNETES_VALIDATE_VERSION="1.37.0"

if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "installing kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
fi
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is required" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A kustomize directory copied with its example env file standing in for the real,
# .gitignored one.
kustomize_with_example() { # SRC ENV_NAME OUT
    local src="$1" env_name="$2" out="$3" dir
    dir="$work/$(basename "$src")"
    mkdir -p "$dir"
    cp "$src"/*.yaml "$dir"/
    cp "$src/$env_name.example" "$dir/$env_name"
    kubectl kustomize "$dir" >"$out"
}

kustomize_with_example deploy/kube-manager manager.env "$work/kube-manager.kustomize.yaml"
kustomize_with_example deploy/server server.env "$work/server.kustomize.yaml"

cargo run --quiet -p lapdev-kube --example render-manifest >"$work/kube-manager.rendered.yaml"

# The same with an extra CA; the renderer only checks the PEM markers.
cat >"$work/ca.pem" <<'PEM'
-----BEGIN CERTIFICATE-----
MIIBdGVzdCBjZXJ0aWZpY2F0ZSBmb3IgdGhlIG1hbmlmZXN0IHZhbGlkYXRpb24=
-----END CERTIFICATE-----
PEM
cargo run --quiet -p lapdev-kube --example render-manifest -- \
    --server-url 'https://lapdev.example.com:8443/base' \
    --cluster-name $'prod "eu" {{ x }}\n---\n# 集群' \
    --ca-file "$work/ca.pem" >"$work/kube-manager.rendered-ca.yaml"

files=(
    "$work/kube-manager.kustomize.yaml"
    "$work/kube-manager.rendered.yaml"
    "$work/kube-manager.rendered-ca.yaml"
    "$work/server.kustomize.yaml"
)
for f in "${files[@]}"; do
    docs="$(grep -c '^kind:' "$f")"
    echo "validating $(basename "$f") ($docs objects) against Kubernetes $KUBERNETES_VERSION"
done
kubernetes-validate --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" "${files[@]}"
echo "deploy/validate.sh: all manifests valid"
