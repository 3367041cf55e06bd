"""Traffic switch under keep-alive clients: nginx reload against HAProxy's runtime API.

    python benchmarks/switch_keepalive.py [--switches 200] [--clients 8] [--proxy nginx haproxy]

The question (issue 29): does moving traffic from one Bento slot to the other lose requests of
clients that keep their connections open (a `requests.Session`, a browser, any HTTP/1.1 pool)?
For each proxy it starts two slots, the proxy in front of them, `--clients` threads that each
POST a real photo through one `requests.Session` (keep-alive) with a 10 ms pause between
calls, and switches the live slot `--switches` times (`--interval-s` apart), then prints the
requests sent, the failed ones (a connection reset or a non-200 answer: clients do not retry a
POST) and how often the answering slot changed.

- nginx: the configuration the local target used until December 2026 (`NGINX_CONF` below, kept
  here as the baseline), switched as it switched: the upstream rewritten, then `nginx -s reload`.
  A reload starts new workers and shuts the old ones down gracefully, which closes their idle
  keep-alive client connections: a client that sends its next POST at that moment gets a reset.
- haproxy: the local target itself (`LocalTarget._route`: its configuration, limits included,
  and its runtime API commands, `set server catsdogs/<slot> state ready|maint`): no reload, no
  process change, so no client connection is closed; every request is routed on its own, so the
  next request on an open connection goes to the new slot. Debian 12 package `haproxy` (2.6).

The slots are two small ASGI apps under uvicorn (the server BentoML runs) that read the whole
upload and answer JSON naming the slot: what is measured is the proxy's switch, so the slots are
kept cheap and both proxies get the same ones (a real `bentoml serve` pair would spend the two
cores on the model and make fewer switches fit in the same time; the rollout tests use real
slots). The clients are the rollout tests' (`tests.deployment.load.Load`, keep-alive). Photos:
../shared/data/petimages-sample (a generated JPEG when it is absent).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "include"), str(REPO)]

from catsdogs.deployment.targets.local import LocalTarget  # noqa: E402
from tests.deployment.load import Load  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "petimages-sample" / "cat"

SLOT_APP = '''
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = ('{"model": {"version": "%s"}}' % os.environ["SLOT"]).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
'''

# The local target's nginx configuration until December 2026: the baseline.
NGINX_CONF = """\
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
    listen 127.0.0.1:{public_port};
    location / {{
      proxy_pass http://catsdogs;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_read_timeout 300s;
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def photo() -> bytes:
    """A real photo from the sample, or a generated JPEG without ../shared."""
    photos = sorted(SAMPLE.glob("*.jpg"))
    if photos:
        return photos[0].read_bytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 90, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on :{port} after {timeout} s")


class Nginx:
    """The local target's nginx configuration, switched by rewriting it and `nginx -s reload`."""

    def __init__(self, run_dir: Path, public_port: int, ports: dict[str, int]) -> None:
        self.dir, self.public_port, self.ports = run_dir, public_port, ports
        self.binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if not self.binary:
            raise SystemExit("nginx is not installed (apt-get install nginx-light)")
        (run_dir / "nginx-tmp").mkdir(parents=True, exist_ok=True)

    def _write(self, slot: str) -> None:
        (self.dir / "nginx.conf").write_text(NGINX_CONF.format(
            dir=self.dir, port=self.ports[slot], public_port=self.public_port,
            user="user root;\n" if os.geteuid() == 0 else ""))

    def _run(self, *args: str) -> None:
        subprocess.run([self.binary, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir),
                        *args], check=True, capture_output=True)

    def start(self, slot: str) -> None:
        self._write(slot)
        self._run()

    def switch(self, slot: str) -> None:
        self._write(slot)
        self._run("-s", "reload")

    def stop(self) -> None:
        subprocess.run([self.binary, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir),
                        "-s", "quit"], check=False, capture_output=True)


class Haproxy:
    """The local target's HAProxy (its configuration and runtime API), slot a live first."""

    def __init__(self, run_dir: Path, public_port: int, ports: dict[str, int]) -> None:
        self.target = LocalTarget(run_dir=run_dir, data_dir=run_dir, public_port=public_port,
                                  slots=(ports["a"], ports["b"]))

    def start(self, slot: str) -> None:
        self.target._route(slot, "bench")

    def switch(self, slot: str) -> None:
        self.target._route(slot, "bench")

    def stop(self) -> None:
        self.target._stop_proxy()


def measure(proxy_name: str, switches: int, clients: int, interval_s: float) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"switch-{proxy_name}-"))
    ports = {"a": free_port(), "b": free_port()}
    public_port = free_port()
    (run_dir / "slot_app.py").write_text(SLOT_APP)
    slots = [subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "slot_app:app", "--host", "127.0.0.1", "--port",
         str(port), "--log-level", "warning"], cwd=run_dir, env={**os.environ, "SLOT": slot},
        start_new_session=True) for slot, port in ports.items()]
    picture = run_dir / "photo.jpg"
    picture.write_bytes(photo())
    proxy = Nginx(run_dir, public_port, ports) if proxy_name == "nginx" \
        else Haproxy(run_dir, public_port, ports)
    try:
        for port in ports.values():
            wait_port(port)
        proxy.start("a")
        wait_port(public_port)
        started = time.monotonic()
        with Load(f"http://127.0.0.1:{public_port}", picture, threads=clients, pause_s=0.01,
                  keep_alive=True) as load:
            time.sleep(1.0)
            for i in range(switches):
                proxy.switch("b" if i % 2 == 0 else "a")
                time.sleep(interval_s)
            time.sleep(1.0)
        seconds = time.monotonic() - started
    finally:
        proxy.stop()
        for process in slots:
            process.terminate()
            process.wait(timeout=30)
        time.sleep(0.5)
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"proxy": proxy_name, "switches": switches, "clients": clients,
            "requests": load.sent, "failed": len(load.failures),
            "slot_changes_seen": len(load.changes) - 1, "seconds": round(seconds, 1),
            "failures_seen": sorted(set(load.failures))[:5]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--interval-s", type=float, default=0.25)
    parser.add_argument("--proxy", nargs="+", default=["nginx", "haproxy"],
                        choices=["nginx", "haproxy"])
    parser.add_argument("--json", action="store_true", help="one JSON object per proxy")
    args = parser.parse_args(argv)
    print(f"# CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.clients} keep-alive clients, {args.switches} switches {args.interval_s} s apart")
    rows = [measure(name, args.switches, args.clients, args.interval_s) for name in args.proxy]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'proxy':8} {'switches':>8} {'requests':>9} {'failed':>7} {'seconds':>8} "
          f"{'slot changes seen':>18}")
    for row in rows:
        print(f"{row['proxy']:8} {row['switches']:8d} {row['requests']:9d} {row['failed']:7d} "
              f"{row['seconds']:8.1f} {row['slot_changes_seen']:18d}")
        for failure in row["failures_seen"]:
            print(f"         e.g. {failure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
