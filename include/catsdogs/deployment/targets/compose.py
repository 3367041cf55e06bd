"""Compose target: a blue/green pair of Bento containers behind compose's HAProxy (`bento-proxy`).

    callers -> :BENTO_PORT -> bento-proxy (HAProxy) -> bento-blue | bento-green  (one live)

A rollout (run by the deploy stage's container, which gets the Docker engine's socket):
1. the version's image: the runtime image + one model layer (catsdogs.deployment.images);
2. the idle colour's container starts from it on the compose network (alias `bento-<colour>`),
   labelled as part of the compose project so `docker compose down` removes it too;
3. its /readyz must answer 200 (deploy.ready_timeout_s), else it is removed and traffic stays;
4. once HAProxy has resolved the new colour's container (its runtime API's `show servers
   state`), the route map (/var/lib/haproxy/routes/route.map, a named volume: what a restarted
   proxy comes back to) is rewritten and its `live` entry set at run time (`set map`): no reload,
   no client connection closed (catsdogs.deployment.proxy says why); the switch is confirmed by
   the `X-Catsdogs-Slot` header on a request through it. The runtime API is reached with
   `docker exec` and socat in the proxy container: its admin socket is published nowhere;
5. after deploy.drain_s the old colour is stopped (SIGTERM, BentoML finishes in-flight requests)
   and removed.

With a version live, the rollout runs steps 1-3, then the live-traffic phases
(catsdogs.deployment.phases), then 4-5 (`Phased`). Both are entries of the same route map, set
at run time only (a restarted proxy mirrors nothing and sends all to `live`): `shadow` (the new
container's address on the compose network, read by docker/proxy/haproxy.cfg's Lua mirror,
`mirror.lua`), `canary` and `canary_percent` (that share of requests, `rand(100)`, goes to the
`canary` colour's backend). A failed gate (or any error) sets them back, points `live` back
when it had moved, and removes the new container.

Settings ($CATSDOGS_*, set by docker-compose.yaml on the Airflow services and passed to the
deploy stage): COMPOSE_PROJECT, DOCKER_NETWORK, DATA_VOLUME, SERVICE_RUNTIME_IMAGE,
MODEL_IMAGE (with `{version}`), SERVICE_URL (the proxy as the stage reaches it), PROXY_SERVICE,
SERVICE_API_KEYS_FILE (the API keys file on the Docker host, bind-mounted read-only into each
Bento container at `API_KEYS_TARGET`: the keys are in no image, environment or command).
"""

from __future__ import annotations

import logging
import re
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from catsdogs.config import Params
from catsdogs.deployment import proxy
from catsdogs.deployment.images import model_image
from catsdogs.deployment.release import (
    Release,
    Skipped,
    http_status,
    scrape,
    wait_ready,
)
from catsdogs.errors import UserError
from catsdogs.settings import (
    PICTURES_MOUNT,
    SERVICE_ENV_PREFIX,
    ComposeTargetSettings,
    DockerSettings,
    load,
    prefixed,
)

log = logging.getLogger(__name__)

COLORS = ("blue", "green")
ROUTE_FILE = "/var/lib/haproxy/routes/route.map"   # docker/proxy/haproxy.cfg's route map
ADMIN_SOCKET = "/run/haproxy/admin.sock"
SERVICE_PORT = 3000   # the Bento containers' port on the compose network
SLOT_HEADER = proxy.SLOT_HEADER
ROUTE = "live {color}\nversion {version}\n"
CANARY, CANARY_PERCENT = "canary", "canary_percent"   # the route map's canary entries
API_KEYS_TARGET = "/run/secrets/catsdogs-api-keys"   # where a Bento container reads its keys
_ROUTE_RE = re.compile(r"^live (\S+)\nversion (\S+)$", re.MULTILINE)
# Passed to each Bento container as <NAME> (the service's own settings, docs/serving.md); the
# docker runner hands them to the deploy container privately (runners.docker.service_environment).


def route(color: str, version: str) -> str:
    """The proxy's route map for `color` serving `version`."""
    return ROUTE.format(color=color, version=version)


def parse_route(text: str) -> tuple[str, str] | None:
    """(colour, version) the route map points at; None for the no-model route."""
    found = _ROUTE_RE.search(text)
    if not found or found.group(1) not in COLORS:
        return None
    return found.group(1), found.group(2)


@dataclass
class _Staged:
    """A version started beside the live colour (`ComposeTarget.stage`), until finish/abandon."""

    release: Release
    color: str
    container: Any
    live: tuple[str, str] | None
    started: float


@dataclass
class ComposeTarget:
    project: str
    network: str
    runtime_image: str
    image_template: str
    service_url: str
    data_volume: str | None = None
    pictures_volume: str = "catsdogs-pictures"
    proxy_service: str = "bento-proxy"
    ready_timeout_s: float = 300.0
    drain_s: float = 5.0
    mlflow_uri: str = "http://mlflow:5000"
    # the MLflow login of the image build (MLFLOW_TRACKING_USERNAME/PASSWORD; never in its config)
    mlflow_login: dict[str, str] = field(default_factory=dict, repr=False)
    service_env: dict[str, str] = field(default_factory=dict)
    api_keys_file: str | None = None   # on the Docker host; None: no key needed
    name: str = "compose"
    _docker: Any = None
    _staged: _Staged | None = None

    @classmethod
    def from_env(cls, params: Params) -> ComposeTarget:
        """The target from `ComposeTargetSettings` and `DockerSettings` (docs/rollout.md).
        Raises UserError without CATSDOGS_COMPOSE_PROJECT, SettingsError for bad values."""
        settings, docker = load(ComposeTargetSettings), load(DockerSettings)
        if not settings.compose_project:
            raise UserError("CATSDOGS_COMPOSE_PROJECT is not set: the compose target needs the "
                            "compose project's name (docker-compose.yaml sets it)")
        return cls(
            project=settings.compose_project, network=docker.docker_network,
            runtime_image=settings.service_runtime_image, image_template=settings.model_image,
            service_url=settings.service_url, data_volume=docker.data_volume,
            pictures_volume=docker.pictures_volume,
            proxy_service=settings.proxy_service,
            ready_timeout_s=params.deploy.ready_timeout_s, drain_s=params.deploy.drain_s,
            mlflow_uri=settings.mlflow_tracking_uri, mlflow_login=settings.mlflow_login(),
            service_env=prefixed(SERVICE_ENV_PREFIX),
            api_keys_file=(str(settings.service_api_keys_file)
                           if settings.service_api_keys_file else None))

    def service_options(self, color: str) -> dict[str, Any]:
        """The `color` Bento container's `environment` (the CATSDOGS_SERVICE_ENV_ settings, its
        slot label CATSDOGS_SLOT, its kept pictures' folder) and `mounts`: the pictures volume
        read-write at `PICTURES_MOUNT` (shared by both colours and read by the stage containers,
        so a picture kept before a rollout is still there for review and ingest after it) and,
        with an API keys file, that file read-only at `API_KEYS_TARGET`, named there by
        CATSDOGS_API_KEYS_FILE (the service then answers 401 without a key: docs/serving.md)."""
        from docker.types import Mount

        environment = {**self.service_env, "CATSDOGS_SLOT": color,
                       "CATSDOGS_PREDICTION_LOG_SAMPLE_DIR": PICTURES_MOUNT}
        mounts = [Mount(target=PICTURES_MOUNT, source=self.pictures_volume, type="volume")]
        if self.api_keys_file:
            environment["CATSDOGS_API_KEYS_FILE"] = API_KEYS_TARGET
            mounts.append(Mount(target=API_KEYS_TARGET, source=self.api_keys_file, type="bind",
                                read_only=True))
        return {"environment": environment, "mounts": mounts}

    # --- Docker -------------------------------------------------------------------------------
    @property
    def docker(self) -> Any:
        if self._docker is None:
            import docker

            try:
                self._docker = docker.from_env()
                self._docker.ping()
            except docker.errors.DockerException as exc:
                raise Skipped(f"no Docker engine reachable from here ({exc}); the compose "
                              "deploy task needs the engine's socket") from None
        return self._docker

    def _proxy(self) -> Any:
        found = self.docker.containers.list(filters={"label": [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={self.proxy_service}"]})
        if not found:
            raise UserError(f"compose project {self.project!r} has no running "
                            f"{self.proxy_service} container: `docker compose up -d "
                            f"{self.proxy_service}` first")
        return found[0]

    def _container_name(self, color: str) -> str:
        return f"{self.project}-bento-{color}"

    def _container(self, color: str) -> Any | None:
        import docker

        try:
            return self.docker.containers.get(self._container_name(color))
        except docker.errors.NotFound:
            return None

    def live_route(self) -> tuple[str, str] | None:
        """(colour, version) the proxy routes to now, or None."""
        result = self._proxy().exec_run(["cat", ROUTE_FILE])
        return parse_route(result.output.decode(errors="replace")) if result.exit_code == 0 \
            else None

    # --- Target -------------------------------------------------------------------------------
    def endpoint(self) -> str:
        return self.service_url

    def serving(self) -> str | None:
        live = self.live_route()
        if live is None:
            return None
        container = self._container(live[0])
        if container is None or container.status != "running":
            return None
        return live[1] if http_status(self.service_url + "/readyz") == 200 else None

    def _admin(self, container: Any, command: str) -> str:
        """One command on the proxy's HAProxy runtime API (socat in its container); its answer.
        UserError when it cannot be run or HAProxy refuses it."""
        done = container.exec_run(
            ["sh", "-c", f'printf "%s\\n" "$COMMAND" | socat -t 10 stdio unix-connect:{ADMIN_SOCKET}'],
            environment={"COMMAND": command})
        answer = done.output.decode(errors="replace").strip()
        if done.exit_code != 0 or (command.startswith(("set ", "add ")) and answer):
            raise UserError(f"the proxy's runtime API refused {command!r}: {answer[-800:]}")
        return answer

    def _wait_resolved(self, container: Any, color: str, timeout_s: float = 30.0) -> None:
        """Until HAProxy has resolved bento-<color> and counts it up (`show servers state`:
        an address, operational state 2), so the switch never lands on an unresolved server."""
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            state = self._admin(container, f"show servers state bento-{color}")
            for line in state.splitlines():
                fields = line.split()
                if len(fields) > 5 and fields[1] == f"bento-{color}" and fields[4] != "-" \
                        and fields[5] == "2":
                    return
            time.sleep(0.5)
        raise UserError(f"the proxy did not resolve bento-{color} within {timeout_s:.0f} s: "
                        f"{state[-400:]}")

    def _switch(self, color: str, version: str) -> None:
        proxy_container = self._proxy()
        self._wait_resolved(proxy_container, color)
        done = proxy_container.exec_run(
            ["sh", "-c", f'printf "%s" "$ROUTE" > {ROUTE_FILE}.new && mv {ROUTE_FILE}.new '
                         f'{ROUTE_FILE}'], environment={"ROUTE": route(color, version)})
        if done.exit_code != 0:
            raise UserError(f"the proxy's route map could not be written: "
                            f"{done.output.decode(errors='replace')[-800:]}")
        self._admin(proxy_container, f"set map {ROUTE_FILE} version {version}")
        self._admin(proxy_container, f"set map {ROUTE_FILE} live {color}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with opener.open(self.service_url + "/readyz", timeout=5) as response:
                    if response.headers.get(SLOT_HEADER) == color:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise UserError(f"the proxy did not switch to {color} within 30 s")

    def preflight(self) -> None:
        """The Docker engine answers (Skipped otherwise) and the proxy container runs
        (UserError otherwise)."""
        self._proxy()

    def stage(self, release: Release) -> dict[str, Any]:
        """Steps 1-3 of the module docstring: the version's image, its container on the idle
        colour, its /readyz; no traffic moves. UserError (the container removed) otherwise."""
        self.preflight()
        started = time.monotonic()
        built = model_image(self.docker, self.runtime_image, self.image_template, release,
                            network=self.network,
                            environment={"MLFLOW_TRACKING_URI": self.mlflow_uri},
                            secret_env=self.mlflow_login,
                            data_volume=self.data_volume)
        live = self.live_route()
        old_color = live[0] if live else None
        color = "green" if old_color == "blue" else "blue"
        stale = self._container(color)
        if stale is not None:
            stale.remove(force=True)
        from docker.errors import APIError
        from docker.types import EndpointConfig

        try:
            container = self.docker.containers.run(
                built.image, name=self._container_name(color), detach=True,
                network=self.network, **self.service_options(color),
                networking_config={self.network: EndpointConfig(
                    self.docker.api._version, aliases=[f"bento-{color}"])},
                restart_policy={"Name": "unless-stopped"},
                labels={"com.docker.compose.project": self.project,
                        "com.docker.compose.service": f"bento-{color}",
                        "com.docker.compose.oneoff": "False",
                        "org.catsdogs.model.version": release.version})
        except APIError as exc:
            keys = (f" (CATSDOGS_SERVICE_API_KEYS_FILE={self.api_keys_file} must be a file on "
                    "the Docker host)" if self.api_keys_file else "")
            raise UserError(f"the {color} container of v{release.version} could not start: "
                            f"{exc.explanation or exc}{keys}; traffic stays where it was"
                            ) from None

        def alive() -> bool:
            container.reload()
            return container.status in ("created", "running")

        try:
            ready_s = wait_ready(f"http://bento-{color}:{SERVICE_PORT}/readyz",
                                 self.ready_timeout_s, alive=alive, what=f"{built.image} ({color})")
        except UserError as exc:
            tail = container.logs(tail=30).decode(errors="replace")
            container.remove(force=True)
            raise UserError(f"{exc}; its log ends:\n{tail}") from None
        self._staged = _Staged(release, color, container, live, started)
        return {**built.facts(), "color": color, "ready_s": round(ready_s, 1)}

    def _staging(self) -> _Staged:
        if self._staged is None:
            raise UserError("compose: no version is staged (stage() first)")
        return self._staged

    def _set_route(self, proxy_container: Any, key: str, value: str) -> None:
        """Set one route map entry at run time (`del map` then `add map`: entries the file
        of an older proxy lacks are added); the file itself keeps what a restart comes back to."""
        self._admin(proxy_container, f"del map {ROUTE_FILE} {key}")
        self._admin(proxy_container, f"add map {ROUTE_FILE} {key} {value}")

    def staged_metrics(self) -> str:
        """The staged container's own /metrics (`release.scrape`). UserError when it does not
        answer."""
        return scrape(f"http://bento-{self._staging().color}:{SERVICE_PORT}/metrics",
                      "the staged container's")

    def mirror(self, on: bool) -> None:
        """Copies of live /predict requests to the staged container (by its address on the
        compose network: the Lua client resolves no names), or none."""
        staged = self._staging()
        shadow = "off"
        if on:
            staged.container.reload()
            address = staged.container.attrs["NetworkSettings"]["Networks"][self.network][
                "IPAddress"]
            shadow = f"{address}:{SERVICE_PORT}"
        self._set_route(self._proxy(), proxy.MIRROR_KEY, shadow)

    def shift(self, percent: int) -> None:
        """`percent` of requests to the staged colour (the route map's canary entries); 100 is
        the switch (step 4)."""
        staged = self._staging()
        proxy_container = self._proxy()
        if percent >= 100:
            self._switch(staged.color, staged.release.version)
            self._set_route(proxy_container, CANARY_PERCENT, "0")
            return
        self._wait_resolved(proxy_container, staged.color)
        self._set_route(proxy_container, CANARY, staged.color)
        self._set_route(proxy_container, CANARY_PERCENT, str(percent))

    def finish(self) -> dict[str, Any]:
        """Step 5: after deploy.drain_s the old colour is stopped and removed. Its facts."""
        staged = self._staging()
        self._staged = None
        switch_s = time.monotonic() - staged.started
        old_color = staged.live[0] if staged.live else None
        if old_color:
            time.sleep(self.drain_s)
            old = self._container(old_color)
            if old is not None:
                old.stop(timeout=30)
                old.remove(force=True)
        log.info("compose: v%s live on %s behind %s", staged.release.version, staged.color,
                 self.service_url)
        return {"previous_color": old_color, "switch_s": round(switch_s, 1)}

    def abandon(self) -> None:
        """Mirror and canary off, `live` back to the old colour when it had moved, the staged
        container removed. Never raises (what fails is logged)."""
        from docker.errors import DockerException

        staged, self._staged = self._staged, None
        if staged is None:
            return
        try:
            proxy_container = self._proxy()
            self._set_route(proxy_container, proxy.MIRROR_KEY, "off")
            self._set_route(proxy_container, CANARY_PERCENT, "0")
            now = self.live_route()
            if staged.live and now and now[0] == staged.color:
                self._switch(*staged.live)
        except (UserError, DockerException, OSError) as exc:
            log.error("compose: could not point the proxy back after the failed deploy: %s", exc)
        try:
            staged.container.remove(force=True)
        except DockerException as exc:
            log.error("compose: could not remove the %s container: %s", staged.color, exc)

    def deploy(self, release: Release) -> dict[str, Any]:
        """Steps 1-5 at once: the plain blue/green rollout (nothing live yet, or the rollback
        after a failed post-deploy check)."""
        facts = self.stage(release)
        try:
            self.shift(100)
        except BaseException:   # a failure, SIGTERM or Ctrl-C: traffic back, then let it through
            self.abandon()
            raise
        return {**facts, **self.finish()}
