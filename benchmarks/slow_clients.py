"""Latency normal clients see while slow clients attack: the catsdogs service under half-sent
uploads (issue 35).

    python benchmarks/slow_clients.py [--url URL] [--attackers 600] [--requests 200]
        [--clients 4]

Normal clients (`--clients` threads, each a keep-alive session) upload real photos
(../shared/data/petimages-sample) to /predict, `--requests` in all, first with no attack, then
while `--attackers` connections each hold a half-sent upload (full headers, Content-Length
200 KB, 100 KB of body sent, then silence: what locked every client out before the service took
request slots only after a body is read). Prints, for both phases: requests answered 200 and any
other status, p50, p99 and max latency. Without `--url` it serves a small trained model itself
(a real MLflow server, the project's import, `bentoml serve`, as tests/serving does); the attack
must end before the service's body deadline (CATSDOGS_BODY_TIMEOUT_S, 60 s by default), so the
second phase stops there and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "include"), str(REPO)]

from tests.servers import start_mlflow_server, stop_process  # noqa: E402
from tests.serving.hostile import half_sent_uploads, percentile, timed_uploads  # noqa: E402

PHOTOS = REPO.parent / "shared" / "data" / "petimages-sample"


@contextlib.contextmanager
def tiny_service() -> Iterator[str]:
    """A small trained model served by `bentoml serve` (tests/serving/conftest.py); its URL."""
    from tests.serving.conftest import serve_tiny

    with tempfile.TemporaryDirectory(prefix="slow-clients-") as work:
        mlflow, tracking = start_mlflow_server(Path(work) / "mlflow", Path(sys.executable))
        try:
            with serve_tiny(tracking, Path(work) / "bento") as server:
                yield server.url
        finally:
            stop_process(mlflow)


def phase(url: str, photos: list[bytes], requests: int, clients: int, deadline_s: float
          ) -> list[tuple[int, float]]:
    """`requests` uploads from `clients` threads, stopping at `deadline_s` from now."""
    stop = time.monotonic() + deadline_s
    share = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(index: int) -> list[tuple[int, float]]:
        found: list[tuple[int, float]] = []
        for n in range(share[index]):
            if time.monotonic() > stop:
                break
            found += timed_uploads(url, photos[(index + n * clients) % len(photos)], 1)
        return found

    with ThreadPoolExecutor(clients) as pool:
        return [answer for part in pool.map(client, range(clients)) for answer in part]


def report(name: str, answers: list[tuple[int, float]]) -> None:
    statuses: dict[int, int] = {}
    for status, _ in answers:
        statuses[status] = statuses.get(status, 0) + 1
    ms = [seconds * 1000 for status, seconds in answers if status == 200]
    shown = " ".join(f"{status}x{count}" for status, count in sorted(statuses.items()))
    timing = (f"{percentile(ms, 50):8.0f} {percentile(ms, 99):8.0f} {max(ms):8.0f}" if ms
              else f"{'-':>8} {'-':>8} {'-':>8}")
    print(f"{name:<32} {len(answers):>8} {shown:<16} {timing}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service (default: serve a small model here)")
    parser.add_argument("--attackers", type=int, default=600)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--deadline-s", type=float, default=50.0,
                        help="longest the attacked phase runs (under the body deadline)")
    args = parser.parse_args()
    files = sorted(PHOTOS.glob("*/*.jpg"))[:args.photos]
    if not files:
        raise SystemExit(f"no photos under {PHOTOS}")
    photos = [f.read_bytes() for f in files]
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(tiny_service())
        phase(url, photos, 2 * args.clients, args.clients, 60)   # warm-up
        print(f"{'phase':<32} {'requests':>8} {'statuses':<16} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8}")
        report("no attack", phase(url, photos, args.requests, args.clients, args.deadline_s))
        started = time.perf_counter()
        with half_sent_uploads(url, args.attackers):
            held_s = time.perf_counter() - started
            answers = phase(url, photos, args.requests, args.clients, args.deadline_s)
        report(f"{args.attackers} half-sent uploads held", answers)
        print(f"(the attackers' connections opened in {held_s:.2f} s; {args.clients} normal "
              f"clients, real photos from {PHOTOS})")
        if len(answers) < args.requests:
            print(f"the attacked phase stopped at {args.deadline_s:.0f} s with {len(answers)} "
                  "requests sent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
