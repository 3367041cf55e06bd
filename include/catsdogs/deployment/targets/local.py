"""Local target (`make demo`, scripts/serve.sh): two `bentoml serve` slots behind a local HAProxy.

    callers -> HAProxy :BENTO_PORT -> slot a (:3010) | slot b (:3011)

A rollout imports the version into the Bento model store, starts `bentoml serve` for it on the
idle slot, waits for its /readyz, then moves traffic with HAProxy's runtime API on its admin
socket (`set server catsdogs/<new> state ready`, then `... <old> state maint`; why HAProxy and
what the proxy enforces: catsdogs.deployment.proxy). The admin socket is a Unix socket of mode
600 (only this user can switch traffic), spoken to in a few lines (`_admin`). It waits
`deploy.drain_s`, then stops the old slot. Debian package `haproxy`
(scripts/ensure-system-deps.sh).

With a version live, the rollout runs it in steps instead (`Phased`, catsdogs.deployment.phases):
`stage` (started and ready beside the live slot, no traffic), `mirror` (a copy of live /predict
requests through HAProxy's Lua action, `set map mirror.map shadow 127.0.0.1:<port>`), `shift`
(`set server catsdogs/<slot> weight <percent>`, the old slot the rest; 100 is the switch),
`finish` (drain and stop the old slot) or `abandon` (traffic back, the new slot stopped).

State lives in $CATSDOGS_SERVE_DIR (default `<data dir>/serving`): haproxy.cfg (rewritten at each
switch, so a restarted HAProxy comes back on the live slot), haproxy.pid and its admin socket,
mirror.lua and mirror.map (the shadow's copies: catsdogs.deployment.phases),
active.json (the live slot: slot, port, pid, version, Bento model tag), `slots/<slot>.json` (every
slot process, written the moment it starts, before it is ready) and one log per slot.

Each slot runs with its own BENTOML_HOME (`slots/<slot>-home`, its `models` a link to the shared
Bento model store): `bentoml serve` empties `$BENTOML_HOME/prometheus_multiproc_dir` when it
starts, so with one home a starting slot would reset the live slot's counters and each slot's
/metrics would report the union of both slots' requests.
`python -m catsdogs.deployment.targets.local stop` stops all of it.

Nothing is left behind, and nothing of ours is mistaken for a stranger:
- `preflight` checks HAProxy and the ports before the import (a minute of work) starts;
- a deploy that fails (or is interrupted: SIGTERM, Ctrl-C) stops the slot it started and points
  HAProxy back at the slot that was live (or stops HAProxy when none was);
- a slot process left by an earlier deploy that was killed (SIGKILL cannot be caught) is ours when
  it is recorded in `slots/`, or carries this serve dir in its environment
  ($CATSDOGS_SERVING_OF, set on the slots and HAProxy only), or is `bentoml serve` of the service
  (`service_entry.SERVICE`) started from this project: the next deploy replaces it. Any other
  process on a slot or public port is refused,
  named with its PID and command line. Processes and sockets are read with psutil (a BentoML
  dependency), not by parsing /proc by hand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.deployment import proxy
from catsdogs.deployment.release import Release, http_status, scrape, wait_ready
from catsdogs.deployment.service_entry import IMPORT_MODEL, SERVICE, project_dir
from catsdogs.errors import UserError
from catsdogs.paths import DATA_DIR_ENV, DataPaths
from catsdogs.settings import LocalTargetSettings, load

log = logging.getLogger(__name__)

SLOT_HEADER = proxy.SLOT_HEADER
# Set on the serving processes only (the slots and HAProxy): the serve dir they belong to. How a
# leftover is recognised as ours, and what `make demo-stop`'s sweep of task processes leaves alone.
SERVING_MARKER_ENV = "CATSDOGS_SERVING_OF"

PROXY_CONF = """\
# written by catsdogs.deployment.targets.local: live slot {slot} (v{version})
global
  maxconn 4096
  stats socket {dir}/haproxy.sock mode 600 level admin
  tune.bufsize 65536
  lua-load {dir}/mirror.lua
{defaults}frontend public
  bind {host}:{public_port}
{limits}{mirror}  http-error status 503 content-type application/json string '{{"error": "no model is being served here", "reason": "unavailable"}}'
  default_backend catsdogs
backend catsdogs
  http-response set-header {header} %[srv_name]
  server a 127.0.0.1:{port_a} weight 100{disabled_a}
  server b 127.0.0.1:{port_b} weight 100{disabled_b}
"""


def _alive(pid: int | None) -> bool:
    """Whether process `pid` runs: a zombie (exited, not yet reaped by a parent or an init that
    does not reap, as in some containers) counts as gone."""
    import psutil

    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _stop_group(pid: int | None, timeout: float = 30.0) -> None:
    """SIGTERM the process group `pid` leads (bentoml serve and its workers), then SIGKILL."""
    if not _alive(pid):
        return
    assert pid is not None
    own_group = pid == os.getpgrp()   # never signal the group this process belongs to
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig) if own_group else os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)   # reap it when it is our child
            if not _alive(pid):
                return
            time.sleep(0.2)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: the child gets SIGKILL when the deploy that started it dies (even by SIGKILL),
    so a killed deploy leaves no import running on its own (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class PortHolder:
    """The process listening on a port: its PID, the process group to stop, its command line,
    and whether it is one of ours (see the module docstring)."""

    pid: int
    group: int
    command: str
    ours: bool


def _listener(port: int) -> int | None:
    """The PID of a process listening on TCP `port` (any address), or None."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                and conn.pid:
            return int(conn.pid)
    return None


@dataclass
class _Staged:
    """A version started beside the live slot (`LocalTarget.stage`), until `finish`/`abandon`."""

    release: Release
    slot: str
    port: int
    process: subprocess.Popen
    model_tag: str
    old: dict[str, Any] | None
    started: float


@dataclass
class LocalTarget:
    """HAProxy on `host:public_port` in front of slot ports `slots` (two), state in `run_dir`."""

    run_dir: Path
    data_dir: Path
    host: str = "127.0.0.1"
    public_port: int = 3000
    slots: tuple[int, int] = (3010, 3011)
    ready_timeout_s: float = 300.0
    drain_s: float = 5.0
    haproxy: str = "haproxy"
    name: str = "local"
    _staged: _Staged | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_env(cls, paths: DataPaths, params: Params) -> LocalTarget:
        """The target from `LocalTargetSettings` (BENTO_HOST, BENTO_PORT, the slots' ports, the
        serve dir, the HAProxy binary; docs/rollout.md); SettingsError for bad values."""
        settings = load(LocalTargetSettings)
        run_dir = settings.serve_dir or paths.root / "serving"
        return cls(run_dir=run_dir.resolve(), data_dir=paths.root, host=settings.bento_host,
                   public_port=settings.bento_port, slots=settings.bento_slot_ports,
                   ready_timeout_s=params.deploy.ready_timeout_s,
                   drain_s=params.deploy.drain_s, haproxy=settings.haproxy)

    # --- state ----------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.run_dir / "active.json"

    def active(self) -> dict[str, Any] | None:
        """The live slot's record (slot, port, pid, version, model_tag), or None."""
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    @property
    def slots_dir(self) -> Path:
        return self.run_dir / "slots"

    def _slot_records(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        for path in sorted(self.slots_dir.glob("*.json")):
            try:
                yield path, json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)

    def _record_slot(self, slot: str, record: dict[str, Any]) -> None:
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.slots_dir / f".{slot}.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.slots_dir / f"{slot}.json")

    def _forget_slot(self, slot: str) -> None:
        (self.slots_dir / f"{slot}.json").unlink(missing_ok=True)

    def _stop_slot(self, slot: str, leftover: bool = False) -> None:
        """Stop the slot's recorded process (if any) and forget it; `leftover`: it is what a
        deploy that did not finish left, said in a log line when it still runs."""
        for path, record in self._slot_records():
            if record.get("slot") == slot:
                if leftover and _alive(record.get("pid")):
                    log.warning("local: replacing a leftover slot %s process (pid %s, v%s, "
                                "recorded by a deploy that did not finish)", slot,
                                record.get("pid"), record.get("version"))
                _stop_group(record.get("pid"))
                path.unlink(missing_ok=True)

    def holder(self, port: int) -> PortHolder | None:
        """Who listens on `port` (None: nobody), and whether it is ours."""
        import psutil

        pid = _listener(port)
        if pid is None:
            return None
        try:
            process = psutil.Process(pid)
            command = " ".join(process.cmdline()) or process.name()
            group = os.getpgid(pid)
        except (psutil.Error, ProcessLookupError):
            return None
        recorded = {r.get("pid") for _, r in self._slot_records()} | \
            {(self.active() or {}).get("pid")}
        ours = group in recorded or pid in recorded
        if not ours:
            with contextlib.suppress(psutil.Error):
                ours = process.environ().get(SERVING_MARKER_ENV) == str(self.run_dir)
        if not ours and "haproxy" in command and str(self.run_dir) in command:
            ours = True   # our HAProxy, its pid file lost
        if not ours and SERVICE in command:
            with contextlib.suppress(psutil.Error):
                ours = Path(process.cwd()).resolve() == project_dir()
        return PortHolder(pid=pid, group=group, command=command[:300], ours=ours)

    def _next_slot(self) -> tuple[str, int, dict[str, Any] | None]:
        """(idle slot, its port, the live slot's record or None)."""
        old = self.active()
        old_live = bool(old and _alive(old.get("pid")))
        slot = "b" if old_live and old and old.get("slot") == "a" else "a"
        return slot, self.slots[0 if slot == "a" else 1], old if old_live else None

    def _haproxy_binary(self) -> str:
        """The HAProxy to run: $CATSDOGS_HAPROXY as given when it is a path, else found on PATH
        or in /usr/sbin (not on a non-root user's PATH). UserError when there is none."""
        if os.sep in self.haproxy:
            binary = self.haproxy if os.access(self.haproxy, os.X_OK) else None
        else:
            binary = shutil.which(self.haproxy) or shutil.which(self.haproxy,
                                                                path="/usr/sbin:/sbin")
        if not binary:
            raise UserError("haproxy is not installed: the local rollout switches traffic with "
                            "it (`apt-get install haproxy`, or scripts/ensure-system-deps.sh)")
        return binary

    def preflight(self) -> None:
        """Everything the rollout needs, checked before any work: HAProxy installed, the serve
        dir writable, the public port free or our own HAProxy's, the idle slot's port free or held by
        a leftover of ours. Raises UserError naming the problem (a foreign process: its PID and
        command line)."""
        self._haproxy_binary()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"the serve dir {self.run_dir} cannot be created ({exc}); set "
                            "CATSDOGS_SERVE_DIR") from None
        if not self._proxy_running():
            holder = self.holder(self.public_port)
            if holder is not None and not holder.ours:
                raise UserError(f"port {self.public_port} (the public endpoint) is taken by "
                                f"another process (pid {holder.pid}: {holder.command}); stop it "
                                "or set BENTO_PORT")
        if not self._proxy_running():
            holder = self.holder(self.public_port)
            if holder is not None and holder.ours:
                log.warning("local: stopping a leftover HAProxy of ours on :%d (pid %d)",
                            self.public_port, holder.pid)
                _stop_group(holder.group)
        slot, port, _ = self._next_slot()
        holder = self.holder(port)
        if holder is not None and not holder.ours:
            raise UserError(f"port {port} (slot {slot}) is taken by another process (pid "
                            f"{holder.pid}: {holder.command}); stop it or set "
                            "CATSDOGS_BENTO_SLOT_PORTS")

    def _claim(self, slot: str, port: int) -> None:
        """Stop what of ours still holds `slot` or its port (a leftover of a deploy that did not
        finish: recorded in `slots/`, or recognised on the port), saying so; UserError when a
        foreign process listens there."""
        self._stop_slot(slot, leftover=True)
        holder = self.holder(port)
        if holder is None:
            return
        if not holder.ours:
            raise UserError(f"port {port} (slot {slot}) is taken by another process (pid "
                            f"{holder.pid}: {holder.command}); stop it or set "
                            "CATSDOGS_BENTO_SLOT_PORTS")
        log.warning("local: replacing a leftover slot %s process on :%d (pid %d, from a deploy "
                    "that did not finish): %s", slot, port, holder.pid, holder.command)
        _stop_group(holder.group)

    def endpoint(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.public_port}"

    def serving(self) -> str | None:
        record = self.active()
        if not record or not _alive(record.get("pid")):
            return None
        if http_status(self.endpoint() + "/readyz") != 200:
            return None
        return str(record["version"])

    # --- the rollout ----------------------------------------------------------------------------
    def _import(self, release: Release) -> str:
        """Import the version into the Bento model store; its Bento model tag."""
        project = project_dir()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(project / "include"), str(project), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(
            [sys.executable, "-m", IMPORT_MODEL, "--model-uri", release.model_uri,
             "--data-dir", str(self.data_dir), "--json"],
            cwd=project, env=env, capture_output=True, text=True, check=False,
            preexec_fn=_die_with_parent)
        try:
            return str(json.loads(done.stdout.strip().splitlines()[-1])["tag"])
        except (IndexError, KeyError, ValueError):
            raise UserError(f"importing {release.model_uri} into the Bento store failed: "
                            f"{(done.stderr or done.stdout).strip()[-800:]}") from None

    def _slot_home(self, slot: str) -> Path:
        """The slot's own BENTOML_HOME (see the module docstring), its `models` a link to the
        shared model store ($BENTOML_HOME, BentoML's default ~/bentoml), made afresh."""
        store = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"
        store.mkdir(parents=True, exist_ok=True)
        home = self.slots_dir / f"{slot}-home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        (home / "models").symlink_to(store.resolve(), target_is_directory=True)
        return home

    def _start_slot(self, port: int, model_tag: str, slot: str) -> subprocess.Popen:
        project = project_dir()
        # both slots log to the deploy's data dir, where the phases read the prediction log
        env = {**os.environ, "CATSDOGS_BENTO_MODEL": model_tag, "CATSDOGS_SLOT": slot,
               DATA_DIR_ENV: str(self.data_dir), "BENTOML_HOME": str(self._slot_home(slot)),
               SERVING_MARKER_ENV: str(self.run_dir), "PYTHONPATH": os.pathsep.join(
            [str(project / "include"), str(project), os.environ.get("PYTHONPATH", "")])}
        bentoml_bin = Path(sys.executable).parent / "bentoml"
        log_file = (self.run_dir / f"bento-{slot}.log").open("ab")
        return subprocess.Popen(
            [str(bentoml_bin), "serve", SERVICE, "--host", "127.0.0.1",
             "--port", str(port)], cwd=project, env=env, stdout=log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def _write_proxy(self, slot: str, version: str) -> Path:
        """haproxy.cfg with `slot` the live server (the other `disabled`), written atomically."""
        conf = self.run_dir / "haproxy.cfg"
        text = PROXY_CONF.format(
            dir=self.run_dir, slot=slot, version=version, host=self.host,
            public_port=self.public_port, header=SLOT_HEADER, port_a=self.slots[0],
            port_b=self.slots[1], disabled_a="" if slot == "a" else " disabled",
            disabled_b="" if slot == "b" else " disabled", defaults=proxy.defaults(),
            limits=proxy.limits(), mirror=proxy.mirror_rules(str(self._mirror_map)))
        shutil.copyfile(proxy.MIRROR_LUA, self.run_dir / "mirror.lua")
        self._mirror_map.write_text(f"{proxy.MIRROR_KEY} off\n")   # a restart mirrors nothing
        tmp = conf.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(conf)
        return conf

    @property
    def _mirror_map(self) -> Path:
        return self.run_dir / "mirror.map"

    def _start_proxy(self) -> None:
        """Start HAProxy on the written haproxy.cfg (checked first: `haproxy -c`), in its own
        session like the slots; UserError when it does not come up."""
        binary = self._haproxy_binary()
        conf = self.run_dir / "haproxy.cfg"
        checked = subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True,
                                 text=True, check=False)
        if checked.returncode != 0:
            said = (checked.stderr + checked.stdout).strip()
            raise UserError(f"haproxy refused {conf}: {said[-800:]}")
        (self.run_dir / "haproxy.sock").unlink(missing_ok=True)
        log_file = (self.run_dir / "haproxy.log").open("ab")
        process = subprocess.Popen(
            [binary, "-f", str(conf)], stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, SERVING_MARKER_ENV: str(self.run_dir)})
        (self.run_dir / "haproxy.pid").write_text(f"{process.pid}\n")
        deadline = time.monotonic() + 30
        while not (self.run_dir / "haproxy.sock").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"haproxy did not start on {self.host}:{self.public_port}; see "
                                f"{self.run_dir / 'haproxy.log'}")
            time.sleep(0.05)

    def _admin(self, command: str) -> None:
        """One command on HAProxy's runtime API (its admin socket); UserError when refused."""
        import socket

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(self.run_dir / "haproxy.sock"))
                sock.sendall(command.encode() + b"\n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
        except OSError as exc:
            raise UserError(f"haproxy's admin socket did not take {command!r}: {exc}") from None
        text = answer.decode(errors="replace").strip()
        if text:
            raise UserError(f"haproxy refused {command!r}: {text[:300]}")

    def _route(self, slot: str, version: str) -> None:
        """All new requests to `slot`: the config rewritten (what a restart comes back to), then
        the running HAProxy switched through its runtime API, or started when none runs."""
        self._write_proxy(slot, version)
        if not self._proxy_running():
            self._start_proxy()
            return
        other = "b" if slot == "a" else "a"
        self._admin(f"set server catsdogs/{slot} weight 100")
        self._admin(f"set server catsdogs/{slot} state ready")
        self._admin(f"set server catsdogs/{other} state maint")
        self._admin(f"set server catsdogs/{other} weight 100")

    def _proxy_pid(self) -> int | None:
        try:
            return int((self.run_dir / "haproxy.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _proxy_running(self) -> bool:
        return _alive(self._proxy_pid())

    def _stop_proxy(self) -> None:
        _stop_group(self._proxy_pid())
        (self.run_dir / "haproxy.pid").unlink(missing_ok=True)

    def _slot_live(self, slot: str) -> bool:
        """True once a request through HAProxy is answered by `slot` (the switch took effect)."""
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.endpoint() + "/readyz", timeout=5) as response:
                return response.headers.get(SLOT_HEADER) == slot
        except OSError:
            return False

    def stage(self, release: Release) -> dict[str, Any]:
        """Import `release`, start it on the idle slot and wait for its /readyz; no traffic
        moves. UserError (after stopping it) when it never gets ready; SIGTERM or Ctrl-C stop it
        too."""
        self.preflight()
        started = time.monotonic()
        model_tag = self._import(release)
        slot, port, old = self._next_slot()
        self._claim(slot, port)
        process = self._start_slot(port, model_tag, slot)
        self._record_slot(slot, {"slot": slot, "port": port, "pid": process.pid,
                                 "version": release.version, "model_tag": model_tag})
        try:
            ready_s = wait_ready(f"http://127.0.0.1:{port}/readyz", self.ready_timeout_s,
                                 alive=lambda: process.poll() is None,
                                 what=f"bentoml serve of v{release.version} (slot {slot}, log "
                                      f"{self.run_dir / f'bento-{slot}.log'})")
        except BaseException:
            self._undo(slot, process, old, switched=False)
            raise
        self._staged = _Staged(release, slot, port, process, model_tag, old, started)
        return {"slot": slot, "model_tag": model_tag, "ready_s": round(ready_s, 1)}

    def _staging(self) -> _Staged:
        if self._staged is None:
            raise UserError("local: no version is staged (stage() first)")
        return self._staged

    def staged_metrics(self) -> str:
        """The staged slot's own /metrics (`release.scrape`). UserError when it does not answer."""
        return scrape(f"http://127.0.0.1:{self._staging().port}/metrics", "the staged slot's")

    def mirror(self, on: bool) -> None:
        """Copies of live /predict requests to the staged slot (`on`), or none."""
        shadow = f"127.0.0.1:{self._staging().port}" if on else "off"
        self._admin(f"set map {self._mirror_map} {proxy.MIRROR_KEY} {shadow}")

    def shift(self, percent: int) -> None:
        """`percent` of new requests to the staged slot, the rest to the live one (HAProxy
        server weights); 100 is the switch, confirmed through the public endpoint."""
        staged = self._staging()
        if percent >= 100:
            self._route(staged.slot, staged.release.version)
            deadline = time.monotonic() + 30
            while not self._slot_live(staged.slot):
                if time.monotonic() > deadline:
                    raise UserError(f"haproxy did not switch to slot {staged.slot} within 30 s; "
                                    f"see {self.run_dir / 'haproxy.log'}")
                time.sleep(0.2)
            return
        if staged.old is None:
            raise UserError("local: a traffic share needs a live slot beside the staged one")
        self._admin(f"set server catsdogs/{staged.slot} weight {percent}")
        self._admin(f"set server catsdogs/{staged.old['slot']} weight {100 - percent}")
        self._admin(f"set server catsdogs/{staged.slot} state ready")

    def finish(self) -> dict[str, Any]:
        """The staged slot is the live one: recorded in active.json, the old slot drained
        (`drain_s`) and stopped. The rollout's facts."""
        staged = self._staging()
        record = {"slot": staged.slot, "port": staged.port, "pid": staged.process.pid,
                  "version": staged.release.version, "model_tag": staged.model_tag,
                  "name": staged.release.name}
        self.state_file.write_text(json.dumps(record))
        switched_s = time.monotonic() - staged.started
        old = staged.old
        self._staged = None
        if old:
            time.sleep(self.drain_s)
            self._stop_slot(str(old.get("slot")))
            _stop_group(old.get("pid"))
        log.info("local: v%s live on slot %s (:%d) behind HAProxy %s", staged.release.version,
                 staged.slot, staged.port, self.endpoint())
        return {"slot": staged.slot, "switch_s": round(switched_s, 1),
                "previous_slot": old.get("slot") if old else None}

    def abandon(self) -> None:
        """Mirror off, traffic back to the slot that was live (HAProxy stopped when none was),
        the staged slot stopped and forgotten. Never raises."""
        staged, self._staged = self._staged, None
        if staged is None:
            return
        if self._proxy_running():
            with contextlib.suppress(UserError):
                self._admin(f"set map {self._mirror_map} {proxy.MIRROR_KEY} off")
        self._undo(staged.slot, staged.process, staged.old, switched=True)

    def deploy(self, release: Release) -> dict[str, Any]:
        """Stage, switch all traffic, finish: the plain blue/green rollout (nothing live yet,
        or the rollback after a failed post-deploy check)."""
        facts = self.stage(release)
        try:
            self.shift(100)
        except BaseException:   # a failure, SIGTERM or Ctrl-C: undo, then let it through
            self.abandon()
            raise
        return {**facts, **self.finish()}

    def _undo(self, slot: str, process: subprocess.Popen, old: dict[str, Any] | None,
              switched: bool) -> None:
        """A deploy that did not finish: traffic back to `old` (or HAProxy stopped when nothing
        served before), the new slot stopped and forgotten. Never raises."""
        try:
            if switched and old:
                self._route(str(old["slot"]), str(old["version"]))
            elif switched:
                self._stop_proxy()
        except (UserError, OSError, KeyError, ValueError) as exc:
            log.error("local: could not point HAProxy back after the failed deploy: %s", exc)
        _stop_group(process.pid)
        self._forget_slot(slot)

    def stop(self) -> None:
        """Stop HAProxy, every recorded slot and any leftover slot process of ours (idempotent)."""
        record = self.active() or {}
        self._stop_proxy()
        _stop_group(record.get("pid"))
        for slot, port in zip(("a", "b"), self.slots, strict=True):
            self._stop_slot(slot)
            holder = self.holder(port)
            if holder is not None and holder.ours:
                _stop_group(holder.group)
        self.state_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m catsdogs.deployment.targets.local stop|status`."""
    import argparse

    from catsdogs.config import load_params

    parser = argparse.ArgumentParser(prog="python -m catsdogs.deployment.targets.local")
    parser.add_argument("action", choices=("stop", "status"))
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    target = LocalTarget.from_env(DataPaths.resolve(args.data_dir), load_params())
    if args.action == "stop":
        target.stop()
        print("stopped the local service (HAProxy and its Bento slots)")
    else:
        version = target.serving()
        print(f"v{version} serving at {target.endpoint()}" if version else "nothing serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
