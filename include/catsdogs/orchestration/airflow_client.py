"""A small client for Airflow 3's REST API v2 (token auth): log in, wait for a DAG, unpause,
trigger with `conf`, follow a run task by task, read task summaries from XCom.

One client for `make demo` (`demo.steps`), the tests' real Airflow services and the compose
end-to-end test; the runners use `dag_run_url` for the MLflow run's link back to its DAG run. Standard library only (urllib), so it runs anywhere the package does;
loopback servers are reached without the environment's proxy.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

FINAL_RUN_STATES = ("success", "failed")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def dag_run_url(base: str, dag_id: str, run_id: str) -> str:
    """A DAG run's page in the Airflow UI at `base` (the api-server's public URL)."""
    return f"{base.rstrip('/')}/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}"


class AirflowError(RuntimeError):
    """A non-2xx answer (`status` holds the HTTP code) or a run that did not end in time."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AirflowClient:
    """REST API v2 of the api-server at `url` (e.g. http://127.0.0.1:8080), as `username`.

    Every call returns the decoded JSON body; an expired token is renewed once, transparently.
    Errors: `AirflowError` with the status code and the server's answer.
    """

    def __init__(self, url: str, username: str, password: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self.token = ""
        host = urllib.parse.urlsplit(self.url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    def _send(self, method: str, path: str, body: Any, auth: bool) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise AirflowError(f"{method} {path}: HTTP {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise AirflowError(f"{method} {path}: Airflow at {self.url} is not reachable "
                               f"({getattr(exc, 'reason', exc)}); is the api-server running?"
                               ) from None
        return json.loads(payload) if payload else None

    def request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        """JSON in, JSON out; logs in first when needed and once more on a 401."""
        if auth and not self.token:
            self.login()
        try:
            return self._send(method, path, body, auth)
        except AirflowError as exc:
            if not auth or exc.status != 401:
                raise
        self.login()
        return self._send(method, path, body, auth)

    def login(self) -> None:
        """`POST /auth/token` → the bearer token for the REST API."""
        answer = self._send("POST", "/auth/token",
                            {"username": self.username, "password": self._password}, auth=False)
        self.token = answer["access_token"]

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> dict[str, Any]:
        """The DAG once the dag-processor has parsed it; its import errors are raised at once."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("GET", f"/api/v2/dags/{dag_id}")
            except AirflowError as exc:
                if exc.status != 404:
                    raise
            errors = self.request("GET", "/api/v2/importErrors")
            if errors.get("total_entries"):
                raise AirflowError(f"the DAGs do not import: {errors['import_errors']}")
            if time.monotonic() > deadline:
                raise AirflowError(f"DAG {dag_id} not parsed after {timeout:.0f} s; see the "
                                   "dag-processor's log")
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        """New DAGs start paused; a paused DAG's runs stay queued."""
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> str:
        """Start a run now with `conf` (checked against the DAG's params: HTTP 400 if refused);
        its run id."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def _run_path(self, dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The DAG run (`state`, `start_date`, `end_date`, `conf`...)."""
        return self.request("GET", self._run_path(dag_id, run_id))

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """Task id → task instance (`state`, `try_number`, `hostname`, `queue`...)."""
        answer = self.request("GET", f"{self._run_path(dag_id, run_id)}/taskInstances")
        return {ti["task_id"]: ti for ti in answer["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """An XCom value (the stage's summary document for `return_value`), None when absent."""
        path = f"{self._run_path(dag_id, run_id)}/taskInstances/{task_id}/xcomEntries/{key}"
        try:
            value = self.request("GET", path)["value"]
        except AirflowError as exc:
            if exc.status == 404:
                return None
            raise
        if isinstance(value, str):  # stored serialised: decode JSON documents
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def task_links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, str | None]:
        """A task instance's extra links: button name → URL."""
        path = f"{self._run_path(dag_id, run_id)}/taskInstances/{task_id}/links"
        return self.request("GET", path)["extra_links"]

    def task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Every try of a task instance, oldest first (`try_number`, `state`, `hostname`,
        `queue`, `start_date`, `end_date`...)."""
        path = f"{self._run_path(dag_id, run_id)}/taskInstances/{task_id}/tries"
        tries = self.request("GET", path)["task_instances"]
        return sorted(tries, key=lambda t: t["try_number"])

    def event_logs(self, dag_id: str, run_id: str, task_id: str | None = None,
                   event: str | None = None) -> list[dict[str, Any]]:
        """The audit log's entries of a DAG run (`event`, `when`, `try_number`, `extra`...),
        oldest first; e.g. event "heartbeat timeout" when the scheduler failed a lost try."""
        query = {"dag_id": dag_id, "run_id": run_id, "order_by": "when", "limit": 100}
        query.update({k: v for k, v in (("task_id", task_id), ("event", event)) if v})
        path = f"/api/v2/eventLogs?{urllib.parse.urlencode(query)}"
        return self.request("GET", path)["event_logs"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The text of one try's log."""
        path = (f"{self._run_path(dag_id, run_id)}/taskInstances/{task_id}/logs/{try_number}"
                "?full_content=true")
        content = self.request("GET", path).get("content", [])
        return "\n".join(str(e.get("event", e)) if isinstance(e, dict) else str(e)
                         for e in content)

    def follow(self, dag_id: str, run_id: str, timeout: float = 3600, poll_s: float = 3,
               on_change: Callable[[str, str], None] | None = None) -> str:
        """Poll the run until it ends; call `on_change(task_id, state)` whenever a task's state
        changes. Its final state (`success` or `failed`); AirflowError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while True:
            state = self.run(dag_id, run_id)["state"]
            for task_id, ti in self.task_instances(dag_id, run_id).items():
                if ti["state"] and seen.get(task_id) != ti["state"]:
                    seen[task_id] = ti["state"]
                    if on_change is not None:
                        on_change(task_id, ti["state"])
            if state in FINAL_RUN_STATES:
                return state
            if time.monotonic() > deadline:
                raise AirflowError(f"run {run_id} of {dag_id} still {state} after "
                                   f"{timeout:.0f} s")
            time.sleep(poll_s)

    def run_url(self, dag_id: str, run_id: str) -> str:
        """The run's page in the Airflow UI."""
        return dag_run_url(self.url, dag_id, run_id)
