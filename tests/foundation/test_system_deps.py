"""`scripts/ensure-system-deps.sh`, the first step of `make demo` and `make test`: for a user who
cannot install Debian packages, every missing one is named with the command that installs it,
and the script stops there (before the venv's minutes of work)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def run_as_user(argv: list[str], path: str) -> subprocess.CompletedProcess:
    """Run `argv` with PATH=`path`, as `nobody` when this process is root (so sudo and apt-get
    are out of reach, as for a user without root)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is missing: cannot drop root here")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60,
                          env={"PATH": path, "HOME": "/tmp"}, cwd=REPO_ROOT)


@pytest.mark.parametrize("profile", ["demo", "test"])
def test_missing_packages_are_named_with_their_install_command(profile: str) -> None:
    # a PATH with python3.11 and the shell's tools, no curl; in a folder `nobody` can reach
    # (pytest's tmp_path lies under a folder only its owner may enter)
    with tempfile.TemporaryDirectory(prefix="catsdogs-deps-") as folder:
        Path(folder).chmod(0o755)
        check_profile(Path(folder), profile)


def check_profile(bin_dir: Path, profile: str) -> None:
    for tool in ("bash", "id", "sudo"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3.11").symlink_to(sys.executable)
    done = run_as_user(["bash", "scripts/ensure-system-deps.sh", profile], str(bin_dir))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"missing Debian packages for 'make {profile}': "), lines
    assert "curl" in lines[0].split(": ", 1)[1].split(), lines
    assert lines[1].startswith("install them first:  sudo apt-get install -y"), lines
    assert set(lines[0].split(": ", 1)[1].split()) <= set(lines[1].split()), lines
    if profile == "test":
        assert "chromium" in lines[0], lines


def test_an_unknown_profile_is_refused() -> None:
    done = subprocess.run(["bash", "scripts/ensure-system-deps.sh", "everything"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr
