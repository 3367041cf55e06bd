"""Local target (`make demo`, scripts/serve.sh): two `bentoml serve` slots behind a local nginx.

    callers -> nginx :BENTO_PORT -> slot a (:3010) | slot b (:3011)

A rollout imports the version into the Bento model store, starts `bentoml serve` for it on the
idle slot, waits for its /readyz, points nginx's upstream at it and reloads nginx (`nginx -s
reload`: the master keeps the listening socket, new workers take new connections and the old ones
finish the requests they hold, so no request is refused), waits `deploy.drain_s`, then stops the
old slot. nginx rather than our own proxy: a reload that never drops a connection is exactly what
it is built for (Debian package `nginx`, see scripts/ensure-system-deps.sh).

State lives in $CATSDOGS_SERVE_DIR (default `<data dir>/serving`): nginx.conf, active.json (slot,
port, pid, version, Bento model tag), one log per slot. `python -m catsdogs.deployment.targets.local
stop` stops all of it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.deployment.targets import Release, http_status, wait_ready
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths

log = logging.getLogger(__name__)

PROJECT_DIR = Path(os.environ.get("CATSDOGS_PROJECT_DIR") or Path(__file__).resolve().parents[4])
SLOT_HEADER = "X-Catsdogs-Slot"

NGINX_CONF = """\
# written by catsdogs.deployment.targets.local: live slot {slot} (v{version})
daemon on;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
{user}worker_processes 1;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_max_body_size 64m;
  client_body_temp_path {dir}/nginx-tmp/body;
  proxy_temp_path {dir}/nginx-tmp/proxy;
  fastcgi_temp_path {dir}/nginx-tmp/fastcgi;
  uwsgi_temp_path {dir}/nginx-tmp/uwsgi;
  scgi_temp_path {dir}/nginx-tmp/scgi;
  upstream catsdogs {{ server 127.0.0.1:{port}; keepalive 16; }}
  server {{
    listen {host}:{public_port};
    location / {{
      proxy_pass http://catsdogs;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_read_timeout 300s;
      add_header {header} {slot} always;
    }}
  }}
}}
"""


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pid: int | None, timeout: float = 30.0) -> None:
    """SIGTERM the process group `pid` leads (bentoml serve and its workers), then SIGKILL."""
    if not _alive(pid):
        return
    assert pid is not None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)   # reap it when it is our child
            if not _alive(pid):
                return
            time.sleep(0.2)


@dataclass
class LocalTarget:
    """nginx on `host:public_port` in front of slot ports `slots` (two), state in `run_dir`."""

    run_dir: Path
    data_dir: Path
    host: str = "127.0.0.1"
    public_port: int = 3000
    slots: tuple[int, int] = (3010, 3011)
    ready_timeout_s: float = 300.0
    drain_s: float = 5.0
    nginx: str = "nginx"
    name: str = "local"

    @classmethod
    def from_env(cls, paths: DataPaths, params: Params) -> LocalTarget:
        """BENTO_HOST, BENTO_PORT (public), CATSDOGS_BENTO_SLOT_PORTS ("3010,3011"),
        CATSDOGS_SERVE_DIR (default <data dir>/serving), CATSDOGS_NGINX (the binary)."""
        slots = tuple(int(p) for p in
                      os.environ.get("CATSDOGS_BENTO_SLOT_PORTS", "3010,3011").split(","))
        if len(slots) != 2 or len(set(slots)) != 2:
            raise UserError(f"CATSDOGS_BENTO_SLOT_PORTS={slots}: expected two different ports")
        run_dir = Path(os.environ.get("CATSDOGS_SERVE_DIR") or paths.root / "serving")
        return cls(run_dir=run_dir.resolve(), data_dir=paths.root,
                   host=os.environ.get("BENTO_HOST", "127.0.0.1"),
                   public_port=int(os.environ.get("BENTO_PORT", "3000")),
                   slots=(slots[0], slots[1]), ready_timeout_s=params.deploy.ready_timeout_s,
                   drain_s=params.deploy.drain_s,
                   nginx=os.environ.get("CATSDOGS_NGINX", "nginx"))

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
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(PROJECT_DIR / "include"), str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(
            [sys.executable, "-m", "bentoservice.import_model", "--model-uri", release.model_uri,
             "--data-dir", str(self.data_dir), "--json"],
            cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=False)
        try:
            return str(json.loads(done.stdout.strip().splitlines()[-1])["tag"])
        except (IndexError, KeyError, ValueError):
            raise UserError(f"importing {release.model_uri} into the Bento store failed: "
                            f"{(done.stderr or done.stdout).strip()[-800:]}") from None

    def _start_slot(self, port: int, model_tag: str, slot: str) -> subprocess.Popen:
        env = {**os.environ, "CATSDOGS_BENTO_MODEL": model_tag, "PYTHONPATH": os.pathsep.join(
            [str(PROJECT_DIR / "include"), str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")])}
        bentoml_bin = Path(sys.executable).parent / "bentoml"
        log_file = (self.run_dir / f"bento-{slot}.log").open("ab")
        return subprocess.Popen(
            [str(bentoml_bin), "serve", "bentoservice.service:CatsDogs", "--host", "127.0.0.1",
             "--port", str(port)], cwd=PROJECT_DIR, env=env, stdout=log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def _write_nginx(self, slot: str, port: int, version: str) -> Path:
        (self.run_dir / "nginx-tmp").mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "nginx.conf"
        text = NGINX_CONF.format(
            dir=self.run_dir, slot=slot, version=version, port=port, host=self.host,
            public_port=self.public_port, header=SLOT_HEADER,
            user="user root;\n" if os.geteuid() == 0 else "")
        tmp = conf.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(conf)
        return conf

    def _nginx(self, *args: str) -> None:
        binary = shutil.which(self.nginx) or shutil.which("nginx", path="/usr/sbin:/sbin")
        if not binary:
            raise UserError("nginx is not installed: the local rollout switches traffic with it "
                            "(`apt-get install nginx`, or scripts/ensure-system-deps.sh)")
        conf = self.run_dir / "nginx.conf"
        done = subprocess.run([binary, "-c", str(conf), "-p", str(self.run_dir), *args],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UserError(f"nginx {' '.join(args) or 'start'} failed: {done.stderr.strip()}")

    def _nginx_running(self) -> bool:
        try:
            return _alive(int((self.run_dir / "nginx.pid").read_text().strip()))
        except (OSError, ValueError):
            return False

    def _slot_live(self, slot: str) -> bool:
        """True once a request through nginx is answered by `slot` (the reload took effect)."""
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.endpoint() + "/readyz", timeout=5) as response:
                return response.headers.get(SLOT_HEADER) == slot
        except OSError:
            return False

    def deploy(self, release: Release) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        model_tag = self._import(release)
        old = self.active()
        old_live = bool(old and _alive(old.get("pid")))
        slot = "b" if old_live and old and old.get("slot") == "a" else "a"
        port = self.slots[0 if slot == "a" else 1]
        if http_status(f"http://127.0.0.1:{port}/livez", timeout=2) is not None:
            raise UserError(f"port {port} (slot {slot}) is taken by another process; free it or "
                            "set CATSDOGS_BENTO_SLOT_PORTS")
        process = self._start_slot(port, model_tag, slot)
        try:
            ready_s = wait_ready(f"http://127.0.0.1:{port}/readyz", self.ready_timeout_s,
                                 alive=lambda: process.poll() is None,
                                 what=f"bentoml serve of v{release.version} (slot {slot}, log "
                                      f"{self.run_dir / f'bento-{slot}.log'})")
        except UserError:
            _stop_group(process.pid)
            raise
        self._write_nginx(slot, port, release.version)
        self._nginx("-s", "reload") if self._nginx_running() else self._nginx()
        deadline = time.monotonic() + 30
        while not self._slot_live(slot):
            if time.monotonic() > deadline:
                raise UserError(f"nginx did not switch to slot {slot} within 30 s; see "
                                f"{self.run_dir / 'nginx-error.log'}")
            time.sleep(0.2)
        switched_s = time.monotonic() - started
        record = {"slot": slot, "port": port, "pid": process.pid, "version": release.version,
                  "model_tag": model_tag, "name": release.name}
        self.state_file.write_text(json.dumps(record))
        if old_live and old:
            time.sleep(self.drain_s)
            _stop_group(old.get("pid"))
        log.info("local: v%s live on slot %s (:%d) behind nginx %s", release.version, slot,
                 port, self.endpoint())
        return {"slot": slot, "model_tag": model_tag, "ready_s": round(ready_s, 1),
                "switch_s": round(switched_s, 1),
                "previous_slot": old.get("slot") if old_live and old else None}

    def stop(self) -> None:
        """Stop nginx and both slots (idempotent)."""
        record = self.active() or {}
        if self._nginx_running():
            self._nginx("-s", "quit")
        _stop_group(record.get("pid"))
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
        print("stopped the local service (nginx and its Bento slots)")
    else:
        version = target.serving()
        print(f"v{version} serving at {target.endpoint()}" if version else "nothing serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
