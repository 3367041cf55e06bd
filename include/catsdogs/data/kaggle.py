"""Download a Kaggle dataset with the official `kaggle` client.

Credentials come from `KAGGLE_USERNAME` + `KAGGLE_KEY` (or `KAGGLE_API_TOKEN`) in the environment,
or from `kaggle.json` in `$KAGGLE_CONFIG_DIR`, `~/.kaggle/` or `~/.config/kaggle/`. They are checked
here first, because the client itself prints help and calls `exit(1)` when they are missing.
The key is never logged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from catsdogs.console import heartbeat
from catsdogs.errors import UserError

log = logging.getLogger(__name__)

MISSING_CREDENTIALS = (
    "Kaggle credentials not found. Either export KAGGLE_USERNAME and KAGGLE_KEY in the "
    "environment, or save the kaggle.json token (kaggle.com > Settings > API > Create New Token) "
    "as ~/.kaggle/kaggle.json with `chmod 600`. Without Kaggle, ingest a local copy with "
    "--source dir:PATH or --source archive:PATH."
)


def _config_dirs() -> list[Path]:
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    dirs = [home / ".kaggle", xdg / "kaggle"]
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        dirs.insert(0, Path(os.environ["KAGGLE_CONFIG_DIR"]))
    return dirs


def has_credentials() -> bool:
    """True when the client will find a username + key or an access token."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    return any((folder / name).is_file() for folder in _config_dirs()
               for name in ("kaggle.json", "access_token"))


def _downloaded(dest: Path) -> str:
    """Bytes written under `dest` so far, for the download's progress lines."""
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return f"{total / 2**20:.1f} MiB downloaded"


def download(dataset: str, dest: Path) -> Path:
    """Download `OWNER/DATASET` as a zip into `dest`; returns the zip's path."""
    if not has_credentials():
        raise UserError(MISSING_CREDENTIALS)
    dest.mkdir(parents=True, exist_ok=True)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
            with heartbeat(f"kaggle download {dataset}", lambda: _downloaded(dest)):
                api.dataset_download_files(dataset, path=str(dest), quiet=True, unzip=False,
                                           force=True)
    except SystemExit as exc:
        raise UserError(f"the Kaggle client refused the credentials. {MISSING_CREDENTIALS}") \
            from exc
    except Exception as exc:  # the client raises requests/urllib3/ValueError alike
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = {401: "the credentials were rejected: create a new token",
                403: "access denied: accept the dataset's rules on kaggle.com first",
                404: f"dataset {dataset!r} not found: check OWNER/DATASET"}.get(
                    status, "check the network and retry; the previous raw/ is unchanged")
        raise UserError(f"Kaggle download of {dataset} failed ({type(exc).__name__}: "
                        f"{str(exc)[:200]}): {hint}") from exc
    finally:
        if chatter.getvalue().strip():
            log.debug("kaggle client: %s", chatter.getvalue().strip())
    archives = sorted(dest.glob("*.zip"))
    if not archives:
        raise UserError(f"Kaggle returned no archive for {dataset}; retry later")
    return archives[0]
