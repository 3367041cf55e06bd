"""The compose platform's secrets: `make up` fills the missing ones of `.env` with strong random
values on first run, and the compose tests make their throwaway stacks' secrets with the same code.

docker-compose.yaml has no default for any of them (`${VAR:?...}`): compose refuses to start
while one is missing or empty, naming it. Standard library only (runs before any venv exists):

    python3 -m demo.compose_env .env      # fills .env, prints which values it wrote and where

A value already in the file is never changed; the file is created from `.env.example` when
absent, and its mode is set to 600 (owner read/write only) either way.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("compose-env")

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / ".env.example"


def _token() -> str:
    """32 random bytes, URL-safe base64 (43 characters; safe inside the stack's database URLs)."""
    return secrets.token_urlsafe(32)


def _fernet_key() -> str:
    """A Fernet key (32 random bytes, URL-safe base64 with padding: 44 characters) for Airflow."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


# Every secret docker-compose.yaml requires, and how a fresh value is made.
SECRETS: dict[str, Callable[[], str]] = {
    "POSTGRES_PASSWORD": _token,
    "REDIS_PASSWORD": _token,
    "AIRFLOW_ADMIN_PASSWORD": _token,
    "AIRFLOW_JWT_SECRET": _token,
    "AIRFLOW_API_SECRET_KEY": _token,
    "AIRFLOW_FERNET_KEY": _fernet_key,
    "GRAFANA_ADMIN_PASSWORD": _token,
    "MLFLOW_ADMIN_PASSWORD": _token,
    "MLFLOW_SERVICE_PASSWORD": _token,
    "MLFLOW_READER_PASSWORD": _token,
    "MLFLOW_FLASK_SECRET_KEY": _token,
}

_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def generate_secrets() -> dict[str, str]:
    """A fresh random value for every secret of SECRETS (name -> value)."""
    return {name: make() for name, make in SECRETS.items()}


def ensure_env_file(path: Path) -> list[str]:
    """Give every secret of SECRETS a value in the env file `path`, keeping those already set.

    The file is created from `.env.example` when absent. A secret assigned an empty value
    (`NAME=`) gets its value on that line; one not assigned at all is appended. The file's mode
    becomes 600. Returns the names written (empty when every secret was already set).
    """
    if not path.exists():
        text = EXAMPLE.read_text() if EXAMPLE.is_file() else ""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    os.chmod(path, 0o600)
    lines = path.read_text().splitlines()
    assigned: dict[str, int] = {}
    for index, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if match and not line.lstrip().startswith("#"):
            assigned[match.group(1)] = index
    written: list[str] = []
    for name, make in SECRETS.items():
        if name in assigned:
            match = _ASSIGNMENT.match(lines[assigned[name]])
            if match and match.group(2).strip("'\""):
                continue
            lines[assigned[name]] = f"{name}={make()}"
        else:
            lines.append(f"{name}={make()}")
        written.append(name)
    if written:
        path.write_text("\n".join(lines) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m demo.compose_env [ENV_FILE]` (default `.env` of the repository)."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else REPO_ROOT / ".env"
    written = ensure_env_file(path)
    where = path.resolve()
    if written:
        log.info("generated %d secret(s) into %s (mode 600): %s", len(written), where,
                 ", ".join(written))
    else:
        log.info("every secret is set in %s (mode 600)", where)
    log.info("the Airflow, Grafana and MLflow logins are the *_USER / *_PASSWORD lines there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
