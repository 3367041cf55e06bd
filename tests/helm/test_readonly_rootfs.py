"""The chart's read-only root file system is one BentoML can run on: a real `bentoml serve`
(BentoML 1.4, same venv) runs in a private mount namespace where every mount is read-only and all
capabilities are dropped, and only the emptyDir paths the rendered Deployment mounts are writable
(tmpfs). It must start both of its services, answer /readyz, take a multipart upload (spooled to
/tmp), call the dependent service and serve /metrics.

Not covered here (needs the built image and a cluster): the real catsdogs service and model inside
the containerised Bento, uid 1034, and the kubelet's own emptyDir handling."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helm.conftest import Renderer
from tests.servers import free_port, open_local, start_process, stop_process, wait_http

# Two services like bentoservice/ (an entry service depending on a model service): BentoML runs
# them as separate processes talking over local sockets.
PROBE_SERVICE = '''\
from pathlib import Path

import bentoml


@bentoml.service
class Counter:
    @bentoml.api
    def double(self, n: int) -> int:
        return 2 * n


@bentoml.service
class Probe:
    counter = bentoml.depends(Counter)

    @bentoml.api
    def size(self, image: Path) -> int:
        return self.counter.double(n=image.stat().st_size) // 2
'''

# Runs as root inside `unshare -m`: make every mount read-only, mount tmpfs on the chart's writable
# paths, prove the root is read-only, then exec bentoml with all capabilities dropped.
NAMESPACE_SCRIPT = r'''
set -eu
service_dir="$1"; port="$2"; bentoml="$3"; shift 3
mount --make-rprivate /
mount --bind "$service_dir" /media
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue;; esac
  mount -o remount,bind,ro "$mp" 2>/dev/null || echo "note: $mp stays as it was" >&2
done
for writable in "$@"; do mount -t tmpfs -o mode=1777,size=256m tmpfs "$writable"; done
for probe in /media/.rw-probe /usr/.rw-probe "$HOME/.rw-probe"; do
  if touch "$probe" 2>/dev/null; then echo "root file system still writable at $probe" >&2; exit 3; fi
done
cd /media
exec setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all --no-new-privs \
  "$bentoml" serve service:Probe --host 127.0.0.1 --port "$port"
'''


STAND_INS = ("/srv", "/media")


def _namespaces_work() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.fixture
def read_only_pod(render: Renderer, tmp_path: Path) -> tuple[dict[str, str], list[str], Path]:
    """The rendered container's env and emptyDir mount paths, and a folder with the probe service."""
    if os.geteuid() != 0 or not _namespaces_work():
        pytest.skip("needs root and mount namespaces (unshare -m) to emulate a read-only root")
    for stand_in in STAND_INS:
        if not Path(stand_in).is_dir() or any(Path(stand_in).iterdir()):
            pytest.skip(f"needs the empty Debian directories {STAND_INS} as mount points")
    # A read-only root cannot get new mount points (in the cluster the container runtime makes
    # them), so the empty /srv stands in for BENTOML_HOME and /media holds the service code.
    objects = render(sets=["scratch.bentomlHome=/srv"])
    (deployment,) = [obj for obj in objects if obj["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = sorted(m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs)
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert writable == ["/srv", "/tmp"] and env["BENTOML_HOME"] == "/srv"
    venv = Path(sys.prefix).resolve()
    hidden_by = [path for path in writable if venv.is_relative_to(path)]
    if hidden_by:
        pytest.skip(f"the venv {venv} lies under {hidden_by[0]}, which the emulated pod's emptyDir "
                    "(a tmpfs) hides; run from a checkout outside it")
    service_dir = tmp_path / "service"
    service_dir.mkdir()
    (service_dir / "service.py").write_text(PROBE_SERVICE)
    return env, writable, service_dir


def start_read_only(env: dict[str, str], writable: list[str], service_dir: Path,
                    log_file: Path) -> tuple[subprocess.Popen, str]:
    """Start the probe service under the read-only root; its process and URL."""
    bentoml = Path(sys.executable).parent / "bentoml"
    port = free_port()
    process_env = {"PATH": f"{bentoml.parent}:/usr/bin:/bin", "HOME": str(Path.home()),
                   "LANG": "C.UTF-8", **env}
    process = start_process(
        ["unshare", "-m", "bash", "-c", NAMESPACE_SCRIPT, "ro-root", str(service_dir), str(port),
         str(bentoml), *writable], log_file, env=process_env)
    return process, f"http://127.0.0.1:{port}"


@pytest.mark.services
def test_bentoml_serves_on_a_read_only_root(read_only_pod: tuple[dict[str, str], list[str], Path],
                                            tmp_path: Path) -> None:
    env, writable, service_dir = read_only_pod
    log_file = tmp_path / "serve.log"
    process, url = start_read_only(env, writable, service_dir, log_file)
    try:
        wait_http(f"{url}/readyz", timeout=90, process=process, log_file=log_file)
        payload = os.urandom(300_000)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"blob.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + payload + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            f"{url}/size", data=body, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with open_local(request, timeout=30) as response:
            assert response.read().decode().strip() == str(len(payload))
        with open_local(f"{url}/metrics", timeout=10) as response:
            assert b"bentoml_service_request_total" in response.read()
        with open_local(f"{url}/livez", timeout=10) as response:
            assert response.status == 200
    finally:
        stop_process(process)
    assert "Read-only file system" not in log_file.read_text(errors="replace")


@pytest.mark.services
def test_bentoml_home_on_the_read_only_root_fails(
        read_only_pod: tuple[dict[str, str], list[str], Path], tmp_path: Path) -> None:
    """Control: without the BENTOML_HOME emptyDir, BentoML cannot start on a read-only root."""
    env, writable, service_dir = read_only_pod
    log_file = tmp_path / "serve.log"
    on_root = f"/var/lib/bentoml-{uuid.uuid4().hex}"  # not there: BentoML must create it
    process, _ = start_read_only({**env, "BENTOML_HOME": on_root},
                                 [path for path in writable if path != env["BENTOML_HOME"]],
                                 service_dir, log_file)
    try:
        process.wait(timeout=90)
    finally:
        stop_process(process)
    assert process.returncode != 0
    assert "Read-only file system" in log_file.read_text(errors="replace")
