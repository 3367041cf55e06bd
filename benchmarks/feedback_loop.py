"""The feedback loop, measured (issue 30 part 6): labelled production pictures make the next
champion better on what users now send, with no regression on the fixed test split.

1. Splits the photo folder (default: the real sample, ../shared/data/petimages-sample) by a hash
   of each file's bytes: the "unseen" share never reaches the champion's training.
2. Trains the champion with the real stages (`catsdogs ingest` ... `train`, `promote`) on the
   rest, against a real `mlflow server`.
3. Production traffic shifts: the unseen photos, made darker and blurred with Pillow (`--shift
   dark-blur`, a phone camera indoors at night: the commonest shift of pet photos, and it takes
   away the fur texture an ImageNet network leans on; `turn-blur` is the test's). Half of them (by hash) are the traffic,
   the other half the shifted pictures no model ever trains on.
4. The traffic goes to a real `bentoml serve` of the champion (every upload kept as a picture);
   `--labels` of the answers are labelled through `POST /feedback`.
5. The next training run (the same stages) merges them; `promote` judges the challenger on the
   fixed test split and on the held-out recent-production set.
6. `catsdogs evaluate` scores the champion (before) and the challenger the labels trained
   (after, promoted or not: the table says which, and promote's reason follows it) on the
   held-out shifted pictures and on the fixed test split; accuracy with 95 % Wilson intervals,
   and the gain after - before with its paired bootstrap interval (the same pictures).

Usage: .venv/bin/python benchmarks/feedback_loop.py [--labels 150] [--unseen-share 0.3]
       [--shift dark-blur] [--set section.key=value ...] [--max-isa AVX2] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from PIL import Image, ImageEnhance, ImageFilter

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "include"), str(REPO_ROOT)]

from benchmarks.isa import MAX_ISA, cap_isa  # noqa: E402
from catsdogs.config import CLASSES  # noqa: E402
from catsdogs.data.lineage import from_run  # noqa: E402
from catsdogs.deployment.service_entry import IMPORT_MODEL, SERVICE  # noqa: E402
from catsdogs.monitoring.prediction_log import default_url  # noqa: E402
from catsdogs.training.metrics import paired_difference, wilson  # noqa: E402
from tests.servers import (  # noqa: E402
    free_port,
    mlflow_env,
    start_mlflow_server,
    start_process,
    stop_process,
    wait_http,
)

SAMPLE = REPO_ROOT.parent / "shared" / "data" / "petimages-sample"
CATSDOGS = Path(sys.executable).with_name("catsdogs")
BENTOML = Path(sys.executable).with_name("bentoml")
TIMEOUT = 60
log = logging.getLogger("feedback_loop")
# the benchmark's model (what fits a shared 2-core machine twice in about half an hour): ImageNet
# mobilenet_v2 (torchvision's cached file) at 128 px, its last block and head trained
DEFAULT_SET = ("model.arch=mobilenet_v2", "transform.image_size=128", "train.epochs=1",
               "train.head_epochs=15", "train.top_blocks=1")


def dark_blur(image: Image.Image) -> Image.Image:
    """A photo taken in poor light: a third of the brightness, half the contrast, blurred by 1.5 %
    of the shorter side (about 1.7 px once resized to 224)."""
    image = ImageEnhance.Brightness(image.convert("RGB")).enhance(0.35)
    image = ImageEnhance.Contrast(image).enhance(0.5)
    return image.filter(ImageFilter.GaussianBlur(radius=0.015 * min(image.size)))


def turn_blur(image: Image.Image) -> Image.Image:
    """Colour channels turned (R, G, B) -> (B, R, G) and a blur of 8 % of the shorter side: a
    camera with another colour pipeline, out of focus. On the generated stand-in set (warm cats
    with triangles, cool dogs with ellipses) the blur wipes out the shapes an ImageNet network
    reads and the turn inverts the colour rule that is left, while the turned classes stay apart
    by colour: a few labels teach them (the test's shift)."""
    red, green, blue = image.convert("RGB").split()
    turned = Image.merge("RGB", (blue, red, green))
    return turned.filter(ImageFilter.GaussianBlur(radius=0.08 * min(image.size)))


SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {"dark-blur": dark_blur,
                                                            "turn-blur": turn_blur}


def share_of(data: bytes) -> float:
    """Where `data`'s SHA-256 falls in [0, 1): a fixed, content-based draw."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2 ** 64


@dataclass
class Score:
    """A model's accuracy on one folder: `correct` of `total`, its 95 % Wilson interval;
    `paths`, `labels` (0 cat, 1 dog) and `prob_dog` per picture, in `catsdogs evaluate`'s
    order, for the paired gain."""

    paths: list[str]
    labels: list[int]
    prob_dog: list[float]
    correct: int = 0
    total: int = 0
    accuracy: float = 0.0
    low: float = 0.0
    high: float = 0.0

    def __post_init__(self) -> None:
        self.total = len(self.labels)
        self.correct = sum((p >= 0.5) == (y == 1) for y, p in zip(self.labels, self.prob_dog,
                                                                 strict=True))
        self.accuracy = self.correct / self.total
        self.low, self.high = wilson(self.correct, self.total)

    def shown(self) -> str:
        return (f"{self.accuracy:6.1%} [{self.low:.1%}, {self.high:.1%}] "
                f"({self.correct}/{self.total})")


@dataclass
class Gain:
    """accuracy(after) - accuracy(before) on the same pictures (points of a share, e.g. 0.084)
    and its 95 % paired percentile bootstrap interval (`catsdogs.training.metrics.
    paired_difference`, the statistic `promote` uses): both models are scored on the same
    resampled pictures, so the pictures' shared difficulty leaves the noise. Independent Wilson
    intervals of the two accuracies can touch while the paired interval excludes 0."""

    point: float
    low: float
    high: float

    @classmethod
    def between(cls, before: Score, after: Score) -> Gain:
        """ValueError when the two scores are not of the same pictures in the same order."""
        if before.paths != after.paths or before.labels != after.labels:
            raise ValueError("the two scores are not of the same pictures")
        interval = paired_difference("accuracy", before.labels, after.prob_dog,
                                     before.prob_dog)
        return cls(after.accuracy - before.accuracy, interval.low, interval.high)

    def shown(self) -> str:
        return f"{100 * self.point:+.1f} points [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


@dataclass
class LoopResult:
    """What one run of the loop measured: `*_before` the champion's scores, `*_after` the
    challenger's (`promoted` or not); `cpu_s`/`wall_s` per phase (seconds)."""

    champion: str
    challenger: str
    promoted: bool
    labels_sent: int
    feedback_merged: int
    production_lineage: dict
    shifted_before: Score
    shifted_after: Score
    clean_before: Score
    clean_after: Score
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    ingest: dict = field(default_factory=dict)
    promote: dict = field(default_factory=dict)
    shifted_gain: Gain | None = None
    clean_gain: Gain | None = None

    def __post_init__(self) -> None:
        self.shifted_gain = Gain.between(self.shifted_before, self.shifted_after)
        self.clean_gain = Gain.between(self.clean_before, self.clean_after)


class Clock:
    """CPU seconds of this process and its waited-for children, and wall seconds, per phase."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def time(self, phase: str, action: Callable[[], object]) -> object:
        before, start = os.times(), time.monotonic()
        result = action()
        after = os.times()
        used = (after.user + after.system + after.children_user + after.children_system
                - before.user - before.system - before.children_user - before.children_system)
        self.cpu[phase] = self.cpu.get(phase, 0.0) + used
        self.wall[phase] = self.wall.get(phase, 0.0) + time.monotonic() - start
        return result


class Loop:
    """One run of the loop in `work`, on the MLflow server at `mlflow_url`."""

    def __init__(self, work: Path, mlflow_url: str, overrides: list[str]) -> None:
        self.work = work
        self.data = work / "data"
        self.overrides = overrides
        self.log_url = default_url(self.data)
        self.env = mlflow_env(mlflow_url, CATSDOGS_PREDICTION_LOG_URL=self.log_url,
                              BENTOML_HOME=str(work / "bentoml"))

    def stage(self, name: str, *args: str) -> dict:
        """Run `catsdogs <name>` as a process; its JSON summary (`Summary.to_dict`)."""
        summary_file = self.work / "summaries" / f"{name}-{time.monotonic_ns()}.json"
        summary_file.parent.mkdir(parents=True, exist_ok=True)
        sets = [arg for item in self.overrides for arg in ("--set", item)]
        done = _run([str(CATSDOGS), name, "--data-dir", str(self.data), *sets,
                     "--summary-file", str(summary_file), *args], self.env)
        if done.returncode != 0:
            raise RuntimeError(f"catsdogs {name} failed ({done.returncode}):\n"
                               f"{done.stderr[-4000:]}")
        return json.loads(summary_file.read_text())

    def train_and_promote(self, source: Path) -> tuple[dict, dict, dict]:
        """ingest ... promote on `source` plus the labelled production pictures: the ingest,
        train and promote summaries."""
        ingest = self.stage("ingest", "--source", f"dir:{source}")
        for name in ("validate", "prepare", "transform"):
            self.stage(name)
        return ingest, self.stage("train"), self.stage("promote")

    def lineage(self, run_id: str) -> dict:
        """The production pictures the MLflow run `run_id` logged in its data set's profile
        (`catsdogs.data.lineage`): per_split counts, labelled_from / labelled_to."""
        from mlflow import MlflowClient

        data = from_run(MlflowClient(tracking_uri=self.env["MLFLOW_TRACKING_URI"]).get_run(run_id))
        return {} if data is None else data.production

    def score(self, images: Path, model: str | None = None) -> tuple[Score, str]:
        """The accuracy of `model` (default: @champion) on `images` (cat/ and dog/ folders) and
        its version."""
        result = self.stage("evaluate", "--images", str(images),
                            *(("--model", model) if model else ()))
        rows = result["predictions"]
        return Score([r["path"] for r in rows], [CLASSES.index(r["label"]) for r in rows],
                     [float(r["prob_dog"]) for r in rows]), str(result["version"])

    def serve_and_label(self, traffic: list[tuple[Path, str]], labels: int) -> int:
        """Import the champion, serve it (every upload kept), send `traffic`, label the first
        `labels` answers through /feedback; the number of labels recorded."""
        env = {**self.env, "CATSDOGS_PREDICTION_LOG_SAMPLE_RATE": "1",
               "CATSDOGS_PREDICTION_LOG_SAMPLE_DIR": str(self.data / "monitoring" / "pictures"),
               "CATSDOGS_PREDICTION_LOG_FLUSH_S": "0.2"}
        imported = _run([sys.executable, "-m", IMPORT_MODEL, "--model-uri",
                         "models:/CatsDogsCNN@champion", "--calibration-images", "0",
                         "--data-dir", str(self.data)], env)
        if imported.returncode != 0:
            raise RuntimeError(f"model import failed:\n{imported.stderr[-4000:]}")
        port, log_file = free_port(), self.work / "serve.log"
        process = start_process([str(BENTOML), "serve", SERVICE, "--host", "127.0.0.1",
                                 "--port", str(port)], log_file, env=env, cwd=REPO_ROOT)
        url = f"http://127.0.0.1:{port}"
        session = requests.Session()
        session.trust_env = False   # a loopback server: never through a proxy
        try:
            wait_http(f"{url}/readyz", timeout=180, process=process, log_file=log_file)
            answers = []
            for path, label in traffic:
                response = session.post(f"{url}/predict", timeout=TIMEOUT,
                                        files={"image": (path.name, path.read_bytes())})
                response.raise_for_status()
                answers.append((response.json()["prediction_id"], label))
            return sum(_feedback(session, url, pid, label) for pid, label in answers[:labels])
        finally:
            stop_process(process)


def _run(argv: list[str], env: dict[str, str]):  # noqa: ANN202 (subprocess.CompletedProcess)
    import subprocess

    return subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          check=False)


def _feedback(session: requests.Session, url: str, prediction_id: str, label: str) -> int:
    """POST /feedback; a row still on its way to the log (404) is retried for 10 s. 1 when
    recorded."""
    deadline = time.monotonic() + 10
    while True:
        answer = session.post(f"{url}/feedback", timeout=TIMEOUT,
                              json={"prediction_id": prediction_id, "label": label})
        if answer.status_code != 404 or time.monotonic() > deadline:
            answer.raise_for_status()
            return 1
        time.sleep(0.2)


def prepare_folders(photos: Path, work: Path, unseen_share: float, shift: str
                    ) -> tuple[Path, list[tuple[Path, str]], Path]:
    """The champion's source (photos outside the unseen share), the shifted traffic (half the
    unseen photos, by hash) and the shifted held-out folder (the other half): paths in `work`."""
    source, traffic_dir, held = work / "source", work / "traffic", work / "shifted-held-out"
    traffic: list[tuple[Path, str]] = []
    for label in CLASSES:
        for path in sorted((photos / label).iterdir()):
            data = path.read_bytes()
            draw = share_of(data)
            if draw >= unseen_share:
                target = source / label / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                continue
            to_traffic = draw < unseen_share / 2
            folder = (traffic_dir if to_traffic else held) / label
            folder.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                shifted = SHIFTS[shift](image)
            target = folder / f"{path.stem}.jpg"
            shifted.save(target, quality=90)
            if to_traffic:
                traffic.append((target, label))
    # the two classes interleaved, so any prefix of the traffic (the labelled part) has both
    by_class = [sorted(p for p in traffic if p[1] == label) for label in CLASSES]
    mixed = [item for pair in zip(*by_class, strict=False) for item in pair]
    mixed += [item for group in by_class for item in group[len(min(by_class, key=len)):]]
    return source, mixed, held


def run_loop(photos: Path, work: Path, mlflow_url: str, labels: int, unseen_share: float,
             shift: str, overrides: list[str]) -> LoopResult:
    """The whole loop (module docstring, steps 1-6) in `work`; `labels` answers labelled."""
    clock = Clock()
    source, traffic, held = prepare_folders(photos, work, unseen_share, shift)
    if labels > len(traffic):
        raise ValueError(f"--labels {labels}: only {len(traffic)} shifted traffic pictures "
                         f"(raise --unseen-share)")
    loop = Loop(work, mlflow_url, overrides)
    clock.time("champion: ingest..promote", lambda: loop.train_and_promote(source))
    fixed_test = work / "fixed-test"   # the fixed split, kept: the second transform rewrites it
    shutil.copytree(loop.data / "transformed" / "test", fixed_test)
    shifted_before, champion = clock.time("evaluate", lambda: loop.score(held))
    clean_before, _ = clock.time("evaluate", lambda: loop.score(fixed_test))
    sent = clock.time("serve + feedback", lambda: loop.serve_and_label(traffic, labels))
    ingest, train, promote = clock.time("retrain: ingest..promote",
                                        lambda: loop.train_and_promote(source))
    # the challenger itself, promoted or not: what the labels taught, and what promote weighed
    challenger = f"models:/CatsDogsCNN/{train['version']}"
    shifted_after, _ = clock.time("evaluate", lambda: loop.score(held, challenger))
    clean_after, _ = clock.time("evaluate", lambda: loop.score(fixed_test, challenger))
    return LoopResult(
        champion=champion, challenger=str(train["version"]),
        promoted=bool(promote.get("promoted")),
        labels_sent=sent, feedback_merged=int(ingest["feedback"]),
        production_lineage=loop.lineage(str(train["run_id"])),
        shifted_before=shifted_before, shifted_after=shifted_after, clean_before=clean_before,
        clean_after=clean_after, cpu_s=clock.cpu, wall_s=clock.wall,
        ingest={k: ingest.get(k) for k in ("feedback", "feedback_cat", "feedback_dog",
                                           "feedback_neither", "feedback_labelled_from",
                                           "feedback_labelled_to")},
        promote={k: promote.get(k) for k in ("promoted", "message", "production")})


def print_table(result: LoopResult) -> None:
    """The before/after table, then CPU and wall time per phase."""
    verdict = "promoted" if result.promoted else "not promoted"
    print(f"\n{'':32} {'champion v' + result.champion:34} "
          f"{'challenger v' + result.challenger + ' (' + verdict + ')':34}")
    print(f"{'shifted, never trained on':32} {result.shifted_before.shown():34} "
          f"{result.shifted_after.shown():34}")
    print(f"{'clean, the fixed test split':32} {result.clean_before.shown():34} "
          f"{result.clean_after.shown():34}")
    print(f"{'gain, paired (95% bootstrap)':32} {'shifted ' + result.shifted_gain.shown():34} "
          f"{'clean ' + result.clean_gain.shown():34}")
    print(f"{'labels used':32} {'0':34} {result.labels_sent} sent, "
          f"{result.feedback_merged} merged by ingest")
    print(f"promote: {result.promote.get('message')}")
    print(f"the challenger's data set's production pictures: {result.production_lineage}")
    print(f"\n{'phase':32} {'CPU min':>8} {'wall min':>9}")
    for phase, cpu in result.cpu_s.items():
        print(f"{phase:32} {cpu / 60:8.1f} {result.wall_s[phase] / 60:9.1f}")
    print(f"{'total':32} {sum(result.cpu_s.values()) / 60:8.1f} "
          f"{sum(result.wall_s.values()) / 60:9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=SAMPLE,
                        help="folder with cat/ and dog/ photos (default: the real sample)")
    parser.add_argument("--labels", type=int, default=150,
                        help="shifted answers labelled through /feedback")
    parser.add_argument("--unseen-share", type=float, default=0.3,
                        help="share of the photos (by content hash) the champion never sees")
    parser.add_argument("--shift", choices=list(SHIFTS), default="dark-blur")
    parser.add_argument("--set", dest="overrides", action="append", default=list(DEFAULT_SET),
                        metavar="SECTION.KEY=VALUE", help="a params.yaml override for every "
                        f"stage (repeatable; default: {' '.join(DEFAULT_SET)})")
    parser.add_argument("--max-isa", choices=list(MAX_ISA), default=None,
                        help="cap the instruction set of oneDNN and torch's kernels")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (args.photos / "cat").is_dir():
        print(f"photos not found at {args.photos}; the benchmark needs them", file=sys.stderr)
        return 2
    if args.max_isa:  # before anything loads torch; every child inherits it
        cap_isa(args.max_isa)
    from catsdogs.inference.compute import cpu_description  # after the caps: torch reads them

    print(f"CPU: {cpu_description()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="feedback-loop-"))
    process, url = start_mlflow_server(work / "mlflow", Path(sys.executable))
    try:
        result = run_loop(args.photos, work, url, args.labels, args.unseen_share, args.shift,
                          args.overrides)
    finally:
        stop_process(process)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"shift {args.shift}; overrides {' '.join(args.overrides)}")
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
