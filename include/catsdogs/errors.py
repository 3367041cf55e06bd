"""Errors a user can act on: the CLI prints their message (no traceback) and exits non-zero."""


class UserError(Exception):
    """A problem with input, configuration or environment; the message names the fix."""

    exit_code = 2


class GateFailed(UserError):
    """A quality gate (e.g. data validation) refused the data; retrying will not help."""

    exit_code = 3


class MlflowUnavailable(UserError):
    """The MLflow server stopped answering in the middle of an operation (`catsdogs.tracking`);
    the message names the server, what was being done and the cause. Retrying later helps."""

    exit_code = 4
