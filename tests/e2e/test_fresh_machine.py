"""The fresh-machine check: the README's `make demo` on a bare Debian 12, as a new user runs it.

A container of the project's own bare Debian root file system (debootstrap minbase, built by
`scripts/docker-base-images.sh debian`) with only the README's prerequisites (python3.11, make:
tests/e2e/fresh-machine.Dockerfile) gets a clean clone of this checkout's HEAD. In it:

1. `make demo` (small settings) must install the Debian packages it needs before the venv's
   minutes, and end with the champion answering a real request;
2. `make demo-stop` must leave no process of the demo running in the container.

A deploy killed with SIGKILL and the next deploy replacing what it left is tested on this machine
with real slots (tests/deployment/test_local_rollout.py); here it would cost two more pipeline
runs.

Nothing is installed in the container by hand: the Debian packages, the venv and the weights come
from `make demo`. What it shares with this machine is only this kind of machine's package set-up,
mounted read-only: pip's configuration and local package mirrors (`/etc/pip.conf`, `/opt/wheels`,
`/opt/pypi*`, where they exist) and the CA bundle for the network's TLS proxy. Host networking, on
ports chosen free here. About 10 minutes on 2 cores (the venv is most of it); CATSDOGS_E2E=0 or
CATSDOGS_FRESH_MACHINE=0 skips it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600),
              pytest.mark.skipif(os.environ.get("CATSDOGS_FRESH_MACHINE", "1") == "0",
                                 reason="CATSDOGS_FRESH_MACHINE=0: the fresh-machine check is off")]

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IMAGE = "catsdogs-fresh-machine:bookworm"
FREE_GIB = 12  # the container's venv (torch and its CUDA wheels) with pip's unpacking, and apt
SRC = "/src/catsdogs"
# this kind of machine's package set-up, shared read-only when it exists (see the docstring)
MACHINE_SETUP = ("/etc/pip.conf", "/etc/xdg/pip", "/opt/wheels", "/opt/pypi", "/opt/pypi-more")
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
# PID 1 of the container: an init that reaps orphans, as a machine's init does (`docker run --init`
# needs docker-init, which Debian's docker.io does not ship)
INIT = r"""
import os, signal, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
"""
# the processes left in the container after `make demo-stop`: lines of `pid command`
LEFT = r"""
import os, psutil
me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
for p in psutil.process_iter(["pid", "cmdline", "status"]):
    if p.pid != 1 and p.pid not in me and p.info["status"] != psutil.STATUS_ZOMBIE:
        print(p.pid, " ".join(p.info["cmdline"] or [])[:200])
"""
def sh(argv: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:8])} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


class Machine:
    """The running container: `make TARGET` in the clone, anything else by `docker exec`."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.env, self.log_dir = name, env, log_dir
        self.timings: dict[str, float] = {}

    def exec(self, command: str, timeout: float, env: dict[str, str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        flags = [f"--env={k}={v}" for k, v in {**self.env, **(env or {})}.items()]
        return sh(["docker", "exec", "-w", SRC, *flags, self.name, "bash", "-c", command],
                  timeout, check)

    def make(self, step: str, target: str, timeout: float, env: dict[str, str] | None = None,
             ) -> tuple[int, str]:
        """`make TARGET` in the container; (exit status, its output's tail), output kept in
        `<log dir>/<step>.log`."""
        started = time.monotonic()
        done = self.exec(f"make {target} > /tmp/{step}.log 2>&1; echo $?", timeout, env)
        self.timings[step] = round(time.monotonic() - started, 1)
        status = int(done.stdout.strip().splitlines()[-1])
        log = self.exec(f"cat /tmp/{step}.log", 60).stdout
        (self.log_dir / f"{step}.log").write_text(log)
        return status, log[-4000:]

    def python(self, code: str, *args: str, timeout: float = 120) -> str:
        quoted = " ".join(shlex.quote(a) for a in args)
        return self.exec(f".venv/bin/python -c {shlex.quote(code)} {quoted}", timeout).stdout


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, artifacts_dir: Path) -> Iterator[Machine]:
    sh(["bash", "scripts/docker-engine.sh"], 600)
    root = sh(["docker", "info", "-f", "{{.DockerRootDir}}"], 60).stdout.strip()
    for path in {root, str(tmp_path_factory.getbasetemp())}:
        free_gib = shutil.disk_usage(path).free / 2**30
        assert free_gib >= FREE_GIB, (
            f"the fresh machine's venv (torch with CUDA) and Debian packages need about {FREE_GIB} "
            f"GiB free under {path}; {free_gib:.1f} GiB are free")
    debian = sh(["bash", "scripts/docker-base-images.sh", "debian"], 900).stdout.split("=", 1)[1]
    sh(["docker", "build", "--network", "host", "--build-arg", f"DEBIAN_IMAGE={debian.strip()}",
        "-t", IMAGE, "-f", str(HERE / "fresh-machine.Dockerfile"), str(HERE)], 900)
    clone = tmp_path_factory.mktemp("fresh") / "catsdogs"
    sh(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(clone)], 300)
    name = f"catsdogs-fresh-{uuid.uuid4().hex[:8]}"
    mounts = [f"--volume={clone}:{SRC}"]
    mounts += [f"--volume={p}:{p}:ro" for p in MACHINE_SETUP if os.path.exists(p)]
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    if os.path.exists(HOST_CA):
        mounts.append(f"--volume={HOST_CA}:/host-ca/ca-certificates.crt:ro")
        env.update(PIP_CERT="/host-ca/ca-certificates.crt",
                   SSL_CERT_FILE="/host-ca/ca-certificates.crt",
                   REQUESTS_CA_BUNDLE="/host-ca/ca-certificates.crt")
    ports = {"AIRFLOW_PORT": free_port(), "MLFLOW_PORT": free_port(), "BENTO_PORT": free_port()}
    env.update({k: str(v) for k, v in ports.items()},
               CATSDOGS_BENTO_SLOT_PORTS=f"{free_port()},{free_port()}",
               DEMO_IMAGE_SIZE="96", DEMO_EPOCHS="1", BENTOML_DO_NOT_TRACK="true")
    sh(["docker", "run", "-d", "--name", name, "--network", "host", "--shm-size", "1g",
        *mounts, IMAGE, "python3.11", "-c", INIT], 120)
    log_dir = artifacts_dir / "fresh-machine"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield Machine(name, env, log_dir)
    finally:
        sh(["docker", "rm", "-f", name], 120, check=False)
        # the clone holds root-owned files written in the container: remove them from there
        sh(["docker", "run", "--rm", f"--volume={clone.parent}:/x", IMAGE, "rm", "-rf",
            "/x/catsdogs"], 300, check=False)


def answer(port: str) -> dict:
    """A real request to the demo's public endpoint: a generated picture's prediction."""
    import io

    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 120, 40)).save(picture, "PNG")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=picture.getvalue(),
                                     headers={"Content-Type": "image/png"}, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        return json.loads(response.read())


def test_make_demo_on_a_fresh_machine(machine: Machine, artifacts_dir: Path) -> None:
    port = machine.env["BENTO_PORT"]
    status, tail = machine.make("1-demo", "demo", 3000)
    assert status == 0, tail
    log = (machine.log_dir / "1-demo.log").read_text()
    installed = log.find("installing Debian packages for 'make demo'")   # before the venv's work
    assert 0 <= installed < log.find("python3.11 -m venv"), log[:3000]
    assert "haproxy" in log[installed:installed + 200], log[installed:installed + 200]
    first = answer(port)
    assert first["label"] in ("cat", "dog"), first

    status, tail = machine.make("2-demo-stop", "demo-stop", 300)
    assert status == 0, tail
    left = machine.python(LEFT).strip()
    assert left == "", f"processes of the demo still running after make demo-stop:\n{left}"
    (artifacts_dir / "fresh-machine" / "timings.json").write_text(json.dumps(
        {"seconds": machine.timings, "answer": first}, indent=2))
