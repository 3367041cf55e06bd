"""The local target's phase commands on a real HAProxy (its own rendered config and the shipped
`mirror.lua`), with two small HTTP servers in the slots' places: the live one answers at once,
the shadow takes SHADOW_S per request and records what it got.

- mirror off: the shadow gets nothing;
- mirror on: every client answer still comes from the live slot, no slower than without a
  shadow (the copy is queued, never waited on), and the shadow gets whole copies (same body
  length, the caller's headers, `x-catsdogs-mirror: 1`);
- a burst beyond the queue: copies are dropped, clients are not slowed;
- `shift(25)`: about a quarter of requests answered by the staged slot (server weights);
- `abandon`: all traffic back to the live slot, the mirror off, the staged process stopped.
The docker/proxy/haproxy.cfg of compose holds the same mirror rules (tests/e2e/test_static.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from catsdogs.deployment import proxy
from catsdogs.deployment.release import Release, wait_ready
from catsdogs.deployment.targets.local import SLOT_HEADER, LocalTarget, _Staged
from tests.servers import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="haproxy is not installed (scripts/ensure-system-deps.sh)")

SHADOW_S = 0.5
STUB = """
import http.server, json, sys, time
name, delay, record = sys.argv[2], float(sys.argv[3]), sys.argv[4]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self, body):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._answer(b"{}")
    def do_POST(self):
        got = self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(delay)
        with open(record, "a") as out:
            out.write(json.dumps({"length": len(got), "key": self.headers.get("x-api-key"),
                                  "mirror": self.headers.get("x-catsdogs-mirror")}) + "\\n")
        self._answer(json.dumps({"model": {"version": name}}).encode())
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _stub(port: int, name: str, delay: float, record: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", STUB, str(port), name, str(delay),
                                str(record)], start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/readyz", 30, alive=lambda: process.poll() is None)
    return process


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def staged(tmp_path: Path) -> Iterator[tuple[LocalTarget, Path, Path]]:
    target = LocalTarget(run_dir=tmp_path / "serving", data_dir=tmp_path,
                         public_port=free_port(), slots=(free_port(), free_port()))
    target.run_dir.mkdir()
    live_log, shadow_log = tmp_path / "live.jsonl", tmp_path / "shadow.jsonl"
    live = _stub(target.slots[0], "1", 0.0, live_log)
    shadow = _stub(target.slots[1], "2", SHADOW_S, shadow_log)
    target._write_proxy("a", "1")
    target._start_proxy()
    target._staged = _Staged(Release("m", "2"), "b", target.slots[1], shadow, "m:2",
                             {"slot": "a", "version": "1", "pid": live.pid}, time.monotonic())
    try:
        yield target, live_log, shadow_log
    finally:
        target.abandon()
        target._stop_proxy()
        for process in (live, shadow):
            if process.poll() is None:
                process.kill()
            process.wait()


def _post(session: requests.Session, target: LocalTarget, body: bytes) -> tuple[str, float]:
    started = time.monotonic()
    answer = session.post(target.endpoint() + "/predict", timeout=30,
                          headers={"x-api-key": "k1"},
                          files={"image": ("p.jpg", body, "image/jpeg")})
    answer.raise_for_status()
    return answer.headers[SLOT_HEADER], time.monotonic() - started


def test_mirror_copies_whole_requests_without_slowing_clients(
        staged: tuple[LocalTarget, Path, Path], sample_dir: Path) -> None:
    target, live_log, shadow_log = staged
    body = sorted((sample_dir / "cat").glob("*.jpg"))[0].read_bytes()
    session = requests.Session()
    for _ in range(5):
        assert _post(session, target, body)[0] == "a"
    time.sleep(SHADOW_S * 2)
    assert _records(shadow_log) == [], "a copy was sent with the mirror off"

    target.mirror(True)
    answers = [_post(session, target, body) for _ in range(20)]
    assert {slot for slot, _ in answers} == {"a"}, "a client got an answer from the shadow"
    slowest = max(seconds for _, seconds in answers)
    assert slowest < SHADOW_S, f"a client waited {slowest:.2f} s, the shadow's own delay"
    deadline = time.monotonic() + 30
    while len(_records(shadow_log)) < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    copies = _records(shadow_log)
    assert len(copies) == 20, copies
    first = _records(live_log)[-1]
    assert all(c == {"length": first["length"], "key": "k1", "mirror": "1"} for c in copies)

    # a burst beyond the queue (64): copies dropped, clients answered at the live slot's pace
    before = len(_records(shadow_log))
    started = time.monotonic()
    burst = [_post(session, target, body) for _ in range(150)]
    burst_s = time.monotonic() - started
    assert {slot for slot, _ in burst} == {"a"}
    assert burst_s < 150 * SHADOW_S / 4, burst_s
    time.sleep(SHADOW_S * 40)   # what was queued drains (2 workers)
    copied = len(_records(shadow_log)) - before
    assert 0 < copied < 150, copied

    target.mirror(False)
    time.sleep(SHADOW_S * 2)
    settled = len(_records(shadow_log))
    for _ in range(5):
        _post(session, target, body)
    time.sleep(SHADOW_S * 2)
    assert len(_records(shadow_log)) == settled


def test_shift_shares_traffic_by_weight_and_abandon_takes_it_back(
        staged: tuple[LocalTarget, Path, Path]) -> None:
    target, _, _ = staged
    session = requests.Session()
    target.shift(25)
    slots = [_post(session, target, b"x" * 100)[0] for _ in range(80)]
    share = slots.count("b") / len(slots)
    assert 0.1 <= share <= 0.4, share
    assert (target.run_dir / "mirror.lua").read_bytes() == proxy.MIRROR_LUA.read_bytes()
    staged_process = target._staging().process
    target.abandon()
    assert staged_process.wait(timeout=30) is not None
    assert {_post(session, target, b"x")[0] for _ in range(10)} == {"a"}
