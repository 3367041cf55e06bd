"""The MLflow server's accounts besides its admin (docker-compose.yaml's one-shot `mlflow-users`):
the pipeline's service account and a read-only account for people who only browse.

Run with the admin's login against a `mlflow server --app-name basic-auth`:

    MLFLOW_TRACKING_URI=http://mlflow:5000 \\
    MLFLOW_TRACKING_USERNAME=<admin> MLFLOW_TRACKING_PASSWORD=<admin password> \\
    MLFLOW_SERVICE_USER=catsdogs-pipeline MLFLOW_SERVICE_PASSWORD=... \\
    MLFLOW_READER_USER=reader MLFLOW_READER_PASSWORD=... python users.py

Each account is created when missing, else its password is set to the one given (so `.env`
stays the source of truth); neither is an admin. With docker/mlflow/basic_auth.ini's
`default_permission = READ` the reader browses everything and changes nothing; the service
account gets MANAGE on the experiments and registered models it creates (the pipeline creates
them all). Exits 1 with one line when a variable is missing or the server refuses the admin.
Passwords are never printed.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("mlflow-users")

ACCOUNTS = (("MLFLOW_SERVICE_USER", "MLFLOW_SERVICE_PASSWORD"),
            ("MLFLOW_READER_USER", "MLFLOW_READER_PASSWORD"))


def ensure_account(client, username: str, password: str) -> str:
    """Create `username` (not an admin) or set its password; "created" or "updated".
    `client` is an `mlflow.server.auth.client.AuthServiceClient`."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_user(username)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_user(username, password)
        return "created"
    client.update_user_password(username, password)
    client.update_user_admin(username, False)
    return "updated"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    required = ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                *(name for pair in ACCOUNTS for name in pair)]
    missing = [name for name in required if not os.environ.get(name)]
    if missing:
        log.error("missing: %s", ", ".join(missing))
        return 1
    admin = os.environ["MLFLOW_TRACKING_USERNAME"]
    if admin in {os.environ[user_var] for user_var, _ in ACCOUNTS}:
        log.error("the service and reader accounts must not be the admin %r", admin)
        return 1
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    client = get_app_client("basic-auth", tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    try:
        for user_var, password_var in ACCOUNTS:
            username = os.environ[user_var]
            outcome = ensure_account(client, username, os.environ[password_var])
            log.info("account %r %s", username, outcome)
    except MlflowException as exc:
        log.error("the MLflow server refused (%s): %s", exc.error_code, str(exc).splitlines()[0])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
