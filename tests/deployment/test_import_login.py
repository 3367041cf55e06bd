"""The model-image build's MLflow login (catsdogs.deployment.images): it reaches the import
container as a file that the container's own script sources and deletes before the import, so the
committed image holds it neither in its configuration nor in its layer. Run here with a real
`sh` and `tar` on the archive the engine would unpack."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

from catsdogs.deployment.images import SECRET_FILE, import_command, secret_archive, secret_script
from catsdogs.deployment.release import Release

LOGIN = {"MLFLOW_TRACKING_USERNAME": "catsdogs-pipeline",
         "MLFLOW_TRACKING_PASSWORD": "p4ss w'ord$(touch /tmp/x)"}


def test_archive_is_one_private_file_owned_by_the_container_user() -> None:
    with tarfile.open(fileobj=BytesIO(secret_archive(LOGIN, uid=50000))) as tar:
        [member] = tar.getmembers()
        assert member.name == Path(SECRET_FILE).name
        assert (member.mode, member.uid, member.gid) == (0o600, 50000, 0)


def test_the_script_exports_the_login_verbatim_and_deletes_the_file(tmp_path: Path) -> None:
    with tarfile.open(fileobj=BytesIO(secret_archive(LOGIN, uid=0))) as tar:
        tar.extractall(tmp_path, filter="data")
    path = tmp_path / Path(SECRET_FILE).name
    shown = subprocess.run(
        ["sh", "-c", f'set -e; {secret_script(str(path))}; '
                     'printf "%s\\n%s" "$MLFLOW_TRACKING_USERNAME" "$MLFLOW_TRACKING_PASSWORD"'],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    assert shown.stdout.split("\n") == list(LOGIN.values())  # quoted: nothing was run
    assert not path.exists()
    assert not (tmp_path / "x").exists()
    # without a file (an MLflow server with no login) the script goes on
    subprocess.run(["sh", "-c", f"set -e; {secret_script(str(path))}; true"], check=True)


def test_import_command_reads_the_login_before_importing() -> None:
    release = Release(name="CatsDogsCNN", version="3")
    script = import_command(release)[2]
    assert script.index(secret_script()) < script.index("python -m")
    assert "MLFLOW_TRACKING_PASSWORD" not in script
