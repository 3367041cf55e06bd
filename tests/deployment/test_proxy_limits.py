"""The compose proxy (docker/proxy/nginx.conf) enforces the local target's HAProxy limits
(catsdogs.deployment.targets.local: header size, request time, connections per client), and
nginx accepts the file. tests/serving/test_hostile_clients.py tries them with real sockets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from catsdogs.deployment.targets.local import (
    HEADER_LIMIT,
    PER_CLIENT_CONNECTIONS,
    REQUEST_TIMEOUT_S,
)

COMPOSE_PROXY = Path(__file__).resolve().parents[2] / "docker" / "proxy"


def _directive(text: str, name: str) -> str:
    found = re.search(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)
    assert found, f"{name} is missing from docker/proxy/nginx.conf"
    return found.group(1).strip()


def test_the_compose_proxy_has_the_local_proxys_limits() -> None:
    text = (COMPOSE_PROXY / "nginx.conf").read_text()
    assert _directive(text, "large_client_header_buffers").split()[1] == f"{HEADER_LIMIT // 1024}k"
    assert _directive(text, "client_header_timeout") == f"{REQUEST_TIMEOUT_S}s"
    assert _directive(text, "client_body_timeout") == f"{REQUEST_TIMEOUT_S}s"
    assert _directive(text, "limit_conn") == f"per_client {PER_CLIENT_CONNECTIONS}"
    assert _directive(text, "proxy_request_buffering") == "on"
    assert f"more than {PER_CLIENT_CONNECTIONS} requests" in text
    assert f"{HEADER_LIMIT // 1024} KB" in text


def compose_proxy_conf(run_dir: Path, route: str, listen: str = "8080") -> Path:
    """docker/proxy/nginx.conf runnable on this machine: `route` as its route.conf, pid and
    temporary files in `run_dir`, listening on `listen`; the written file's path."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    for kind in kinds:
        (run_dir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    (run_dir / "route.conf").write_text(route)
    temp = "".join(f"  {kind}_temp_path {run_dir / 'tmp' / kind};\n" for kind in kinds)
    text = ((COMPOSE_PROXY / "nginx.conf").read_text()
            .replace("/etc/nginx/catsdogs/route.conf", str(run_dir / "route.conf"))
            .replace("pid /run/nginx.pid;", f"pid {run_dir / 'nginx.pid'};\n"
                     f"error_log {run_dir / 'error.log'} warn;\n"
                     + ("user root;" if os.geteuid() == 0 else ""))
            .replace("http {\n", "http {\n" + temp, 1)
            .replace("listen 8080;", f"listen {listen};"))
    conf = run_dir / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return found


def test_nginx_accepts_the_compose_proxy_config(tmp_path: Path) -> None:
    conf = compose_proxy_conf(tmp_path, (COMPOSE_PROXY / "route-none.conf").read_text())
    checked = subprocess.run([nginx_binary(), "-t", "-c", str(conf), "-p", str(tmp_path)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
