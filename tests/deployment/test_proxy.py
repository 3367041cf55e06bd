"""The public endpoint's HAProxy (catsdogs.deployment.proxy). The local target's, on its own (no
slot up): its limits (header size, connections per client, request time) answer in the service's
`{"error", "reason"}` JSON, a stalled upload is cut at the request timeout, the runtime API
switches and refuses what it does not know, and `stop` leaves nothing listening. Compose's
(docker/proxy/haproxy.cfg): the same limits and mirror rules verbatim, accepted by HAProxy,
routing by its map: `live`, then at run time a `canary` share and a `shadow` copy (two small HTTP
servers in the colours' places).
The switch under real slots and keep-alive clients is in test_local_rollout.py; compose's, in
tests/e2e/test_compose_e2e.py."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from catsdogs.deployment import proxy as proxy_module
from catsdogs.deployment.proxy import HEADER_LIMIT, PER_CLIENT_CONNECTIONS, REQUEST_TIMEOUT_S
from catsdogs.deployment.targets.compose import ROUTE_FILE, parse_route, route
from catsdogs.deployment.targets.local import LocalTarget, _listener
from catsdogs.errors import UserError
from tests.servers import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="haproxy is not installed (scripts/ensure-system-deps.sh)")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[LocalTarget]:
    target = LocalTarget(run_dir=tmp_path / "serving", data_dir=tmp_path,
                         public_port=free_port(), slots=(free_port(), free_port()))
    target.run_dir.mkdir()
    target._route("a", "1")
    yield target
    target.stop()


def _exchange(port: int, request: bytes, timeout: float = 60.0) -> tuple[int, dict, float]:
    """Send raw `request` bytes; (status, JSON body, seconds until the answer came)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    took = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), took


def test_the_proxy_answers_its_limits_in_json(proxy: LocalTarget) -> None:
    port = proxy.public_port
    status, body, _ = _exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body["reason"]) == (503, "unavailable"), body      # no slot is up

    big = b"X-Big: " + b"a" * (HEADER_LIMIT + 1) + b"\r\n"
    status, body, took = _exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert (status, body["reason"]) == (431, "headers_too_large"), body
    assert took < 5

    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(PER_CLIENT_CONNECTIONS)]
    time.sleep(1.0)                              # all of them accepted and counted
    try:
        status, body, took = _exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body["reason"]) == (429, "too_many_connections"), body
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    status, body, _ = _exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503, body                   # the address's connections closed: let in again

    stalled = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
               b"Content-Length: 100000\r\n\r\n" + b"\xff\xd8" * 10)
    status, body, took = _exchange(port, stalled)
    assert (status, body["reason"]) == (408, "request_timeout"), body
    assert REQUEST_TIMEOUT_S - 1 < took < REQUEST_TIMEOUT_S + 10, took


def test_the_runtime_api_switches_and_refuses_unknown_servers(proxy: LocalTarget) -> None:
    proxy._route("b", "2")                                   # the running HAProxy, no restart
    config = (proxy.run_dir / "haproxy.cfg").read_text()
    assert f"server a 127.0.0.1:{proxy.slots[0]} weight 100 disabled" in config
    assert f"server b 127.0.0.1:{proxy.slots[1]} weight 100\n" in config
    with pytest.raises(UserError, match="haproxy refused"):
        proxy._admin("set server catsdogs/c state ready")
    assert (proxy.run_dir / "haproxy.sock").stat().st_mode & 0o077 == 0   # only this user
    pid = proxy._proxy_pid()
    proxy.stop()
    assert _listener(proxy.public_port) is None and not proxy._proxy_running(), pid


COMPOSE_CONFIG = Path(__file__).resolve().parents[2] / "docker" / "proxy" / "haproxy.cfg"


def _compose_admin(sock_path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(command.encode() + b"\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer.decode().strip()


def test_the_compose_proxy_routes_by_its_map_with_the_same_limits(tmp_path: Path) -> None:
    from tests.deployment.test_mirror import _records, _stub

    text = COMPOSE_CONFIG.read_text()
    assert proxy_module.defaults() in text and proxy_module.limits() in text
    assert proxy_module.mirror_rules(ROUTE_FILE) in text
    assert ROUTE_FILE in text
    blue, green = free_port(), free_port()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "route.map").write_text("live none\nversion none\n")
    port = free_port()
    local = (text.replace(str(Path(ROUTE_FILE).parent), str(routes))
             .replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock"))
             .replace("bind :8080", f"bind 127.0.0.1:{port}")
             .replace("  user haproxy\n  group haproxy\n", "")
             .replace("127.0.0.11:53", "127.0.0.1:1")    # no Docker DNS here
             .replace("bento-blue:3000", f"127.0.0.1:{blue}")
             .replace("bento-green:3000", f"127.0.0.1:{green}")
             .replace("/usr/local/etc/haproxy/mirror.lua", str(proxy_module.MIRROR_LUA)))
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(local)
    binary = shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin")
    assert binary is not None
    checked = subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    process = subprocess.Popen([binary, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    stubs: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 10
        while _listener(port) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/proxy-health", timeout=10) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(f"http://127.0.0.1:{port}/predict", timeout=10)
        assert refused.value.code == 503
        assert "no model deployed yet" in json.loads(refused.value.read())["error"]
        stubs += [_stub(blue, "1", 0.0, tmp_path / "blue.jsonl"),
                  _stub(green, "2", 0.0, tmp_path / "green.jsonl")]
        admin, routes_map = tmp_path / "admin.sock", str(routes / "route.map")
        assert _compose_admin(admin, f"set map {routes_map} live blue") == ""

        def colours(n: int) -> list[str]:
            got = []
            for _ in range(n):
                request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", b"x" * 64,
                                                 {"content-type": "image/jpeg"})
                with opener.open(request, timeout=10) as response:
                    got.append(response.headers["X-Catsdogs-Slot"])
            return got

        assert set(colours(10)) == {"blue"}
        for key, value in (("canary", "green"), ("canary_percent", "30"),
                           ("shadow", f"127.0.0.1:{green}")):
            assert _compose_admin(admin, f"add map {routes_map} {key} {value}") == ""
        shared = colours(100)
        assert 10 <= shared.count("green") <= 50, shared.count("green")
        deadline = time.monotonic() + 10
        while len(_records(tmp_path / "green.jsonl")) < 100 + shared.count("green") \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        copies = [r for r in _records(tmp_path / "green.jsonl") if r["mirror"] == "1"]
        assert len(copies) == 100, len(copies)   # every request copied, whoever answered it
    finally:
        process.terminate()
        process.wait(timeout=10)
        for stub in stubs:
            stub.kill()
            stub.wait()
    assert parse_route(route("green", "7")) == ("green", "7")
    assert parse_route("live none\nversion none\n") is None
