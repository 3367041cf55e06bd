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

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class ComposeProxy:
    """docker/proxy/haproxy.cfg run here: its paths moved into `tmp`, the colours two stub
    servers (tests.deployment.test_mirror) recording what they get in <colour>.jsonl."""

    tmp: Path
    port: int
    routes_map: Path
    admin: Path
    ports: dict[str, int]

    def colours(self, n: int) -> list[str]:
        """Which colour answered each of `n` POST /predict (a new connection each)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        got = []
        for _ in range(n):
            request = urllib.request.Request(f"http://127.0.0.1:{self.port}/predict", b"x" * 64,
                                             {"content-type": "image/jpeg"})
            with opener.open(request, timeout=10) as response:
                got.append(response.headers["X-Catsdogs-Slot"])
        return got


@contextlib.contextmanager
def compose_proxy(tmp_path: Path) -> Iterator[ComposeProxy]:
    from tests.deployment.test_mirror import _stub

    text = COMPOSE_CONFIG.read_text()
    ports = {"blue": free_port(), "green": free_port()}
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "route.map").write_text("live none\nversion none\n")
    port = free_port()
    local = (text.replace(str(Path(ROUTE_FILE).parent), str(routes))
             .replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock"))
             .replace("bind :8080", f"bind 127.0.0.1:{port}")
             .replace("  user haproxy\n  group haproxy\n", "")
             .replace("127.0.0.11:53", "127.0.0.1:1")    # no Docker DNS here
             .replace("bento-blue:3000", f"127.0.0.1:{ports['blue']}")
             .replace("bento-green:3000", f"127.0.0.1:{ports['green']}")
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
    stubs = [_stub(ports[c], str(i + 1), 0.0, tmp_path / f"{c}.jsonl")
             for i, c in enumerate(("blue", "green"))]
    try:
        deadline = time.monotonic() + 10
        while _listener(port) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield ComposeProxy(tmp_path, port, routes / "route.map", tmp_path / "admin.sock", ports)
    finally:
        process.terminate()
        process.wait(timeout=10)
        for stub in stubs:
            if stub.poll() is None:
                stub.kill()
            stub.wait()


def test_the_compose_proxy_routes_by_its_map_with_the_same_limits(tmp_path: Path) -> None:
    from tests.deployment.test_mirror import _records

    text = COMPOSE_CONFIG.read_text()
    assert proxy_module.defaults() in text and proxy_module.limits() in text
    assert proxy_module.mirror_rules(ROUTE_FILE) in text
    assert ROUTE_FILE in text
    with compose_proxy(tmp_path) as compose:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{compose.port}/proxy-health", timeout=10) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(f"http://127.0.0.1:{compose.port}/predict", timeout=10)
        assert refused.value.code == 503
        assert "no model deployed yet" in json.loads(refused.value.read())["error"]
        routes_map = compose.routes_map
        assert _compose_admin(compose.admin, f"set map {routes_map} live blue") == ""
        assert set(compose.colours(10)) == {"blue"}
        for key, value in (("canary", "green"), ("canary_percent", "30"),
                           ("shadow", f"127.0.0.1:{compose.ports['green']}")):
            assert _compose_admin(compose.admin, f"add map {routes_map} {key} {value}") == ""
        shared = compose.colours(100)
        assert 10 <= shared.count("green") <= 50, shared.count("green")
        deadline = time.monotonic() + 10
        while len(_records(tmp_path / "green.jsonl")) < 100 + shared.count("green") \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        copies = [r for r in _records(tmp_path / "green.jsonl") if r["mirror"] == "1"]
        assert len(copies) == 100, len(copies)   # every request copied, whoever answered it
    assert parse_route(route("green", "7")) == ("green", "7")
    assert parse_route("live none\nversion none\n") is None


class _Done:
    def __init__(self, exit_code: int, output: bytes) -> None:
        self.exit_code, self.output = exit_code, output


class _ProxyContainer:
    """The compose proxy container as the compose target drives it (`exec_run` of `cat`, the
    route file's rewrite, and socat on the admin socket), carried out here on `compose`."""

    def __init__(self, compose: ComposeProxy) -> None:
        self.compose = compose

    def exec_run(self, command: list[str], environment: dict[str, str] | None = None) -> _Done:
        environment = environment or {}
        if command[0] == "cat":
            return _Done(0, self.compose.routes_map.read_bytes())
        if "ROUTE" in environment:
            self.compose.routes_map.write_text(environment["ROUTE"])
            return _Done(0, b"")
        assert "socat" in command[-1], command
        command_here = environment["COMMAND"].replace(ROUTE_FILE, str(self.compose.routes_map))
        return _Done(0, _compose_admin(self.compose.admin, command_here).encode())


class _Container:
    def __init__(self, network: str) -> None:
        self.attrs = {"NetworkSettings": {"Networks": {network: {"IPAddress": "127.0.0.1"}}}}
        self.removed = False

    def reload(self) -> None:
        pass

    def remove(self, force: bool = False) -> None:
        self.removed = True


class _Containers:
    def __init__(self, proxy: _ProxyContainer) -> None:
        self.proxy = proxy

    def list(self, filters: dict) -> list[_ProxyContainer]:
        return [self.proxy]


class _Docker:
    def __init__(self, proxy: _ProxyContainer) -> None:
        self.containers = _Containers(proxy)


def test_the_compose_target_phase_commands_on_its_proxy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ComposeTarget's mirror, shift and abandon through docker/proxy/haproxy.cfg's runtime API
    (the Docker engine replaced by a stand-in that runs its exec_run calls here): the copies go
    to the staged colour's address, a 30% canary shares traffic, abandon sets everything back;
    a full switch that is abandoned points `live` back at the old colour."""
    from catsdogs.deployment.release import Release
    from catsdogs.deployment.targets import compose as compose_target
    from tests.deployment.test_mirror import _records

    with compose_proxy(tmp_path) as compose:
        monkeypatch.setattr(compose_target, "SERVICE_PORT", compose.ports["green"])
        compose.routes_map.write_text(route("blue", "1"))
        assert _compose_admin(compose.admin, f"set map {compose.routes_map} live blue") == ""
        target = compose_target.ComposeTarget(
            project="p", network="net", runtime_image="r", image_template="m:{version}",
            service_url=f"http://127.0.0.1:{compose.port}", drain_s=0,
            _docker=_Docker(_ProxyContainer(compose)))

        def stage() -> _Container:
            green = _Container("net")
            target._staged = compose_target._Staged(Release("m", "2"), "green", green,
                                                    ("blue", "1"), time.monotonic())
            return green

        green = stage()
        target.mirror(True)
        assert set(compose.colours(20)) == {"blue"}
        target.shift(30)
        shared = compose.colours(100)
        assert 10 <= shared.count("green") <= 50, shared.count("green")
        target.abandon()
        assert green.removed and target._staged is None
        time.sleep(1)
        copies = len([r for r in _records(tmp_path / "green.jsonl") if r["mirror"] == "1"])
        assert copies == 120, copies
        assert set(compose.colours(20)) == {"blue"}
        time.sleep(1)
        assert len([r for r in _records(tmp_path / "green.jsonl") if r["mirror"] == "1"]) == 120
        assert parse_route(compose.routes_map.read_text()) == ("blue", "1")

        stage()
        target.shift(100)
        assert set(compose.colours(10)) == {"green"}
        assert parse_route(compose.routes_map.read_text()) == ("green", "2")
        target.abandon()
        assert set(compose.colours(10)) == {"blue"}
        assert parse_route(compose.routes_map.read_text()) == ("blue", "1")
