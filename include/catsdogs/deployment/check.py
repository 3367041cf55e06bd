"""The post-deploy check: labelled test pictures sent to the LIVE endpoint after a switch.

`labelled_pictures` picks a balanced, seeded sample of `<data dir>/transformed/test/{cat,dog}`;
`run_check` posts each to `<endpoint>/predict` (a few at a time, one connection per request, as
callers do) and counts failures, correct answers and the `model.version` of each answer;
`verdict` turns that into the reason to roll back, or None.

Plain `urllib` (no proxies: the endpoint is the platform's own service): the check must run in
the worker image and the Airflow image alike, with nothing more installed.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from catsdogs.config import CLASSES
from catsdogs.errors import UserError

log = logging.getLogger(__name__)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class CheckResult:
    """What the live endpoint answered: `sent` requests, `failures` (non-2xx or no answer, with
    up to 5 `errors` quoted), `correct` labels, answers per `model.version`, and seconds taken."""

    sent: int
    failures: int
    correct: int
    versions: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        """Correct answers / requests sent (a failed request counts as wrong); 0 when none."""
        return self.correct / self.sent if self.sent else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"sent": self.sent, "failures": self.failures, "correct": self.correct,
                "accuracy": round(self.accuracy, 4), "versions": self.versions,
                "errors": list(self.errors), "seconds": round(self.seconds, 2)}


def labelled_pictures(test_dir: Path, count: int, seed: int = 0) -> list[tuple[Path, str]]:
    """`count` (path, label) pairs, as balanced over the classes as the split allows, seeded.

    Raises UserError when the split is missing or holds fewer than `count` pictures."""
    per_class: dict[str, list[Path]] = {}
    for label in CLASSES:
        folder = test_dir / label
        per_class[label] = sorted(p for p in folder.glob("*") if p.suffix.lower() in _SUFFIXES) \
            if folder.is_dir() else []
    available = sum(len(files) for files in per_class.values())
    if available < count:
        raise UserError(f"the post-deploy check needs {count} labelled pictures but {test_dir} "
                        f"holds {available}; run `catsdogs transform` or lower "
                        "deploy.check_images (at least 50)")
    rng = random.Random(seed)
    for files in per_class.values():
        rng.shuffle(files)
    chosen: list[tuple[Path, str]] = []
    while len(chosen) < count:  # round-robin over the classes: balanced while both last
        for label in CLASSES:
            if per_class[label] and len(chosen) < count:
                chosen.append((per_class[label].pop(), label))
    return chosen


def predict(endpoint: str, picture: Path, timeout: float = 60.0) -> dict:
    """POST one picture to `<endpoint>/predict` (multipart field `image`); the JSON answer.
    Raises OSError (URLError, HTTPError) when the request fails."""
    boundary = uuid.uuid4().hex
    kind = "image/png" if picture.suffix.lower() == ".png" else "image/jpeg"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{picture.name}\"\r\nContent-Type: {kind}\r\n\r\n").encode()
    body += picture.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(endpoint.rstrip("/") + "/predict", data=body, method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with _OPENER.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def run_check(endpoint: str, pictures: list[tuple[Path, str]], concurrency: int = 4,
              timeout: float = 60.0) -> CheckResult:
    """Send every picture to the live endpoint; never raises for a failed request (it counts)."""

    def one(item: tuple[Path, str]) -> tuple[str | None, str | None, str | None]:
        path, _label = item
        try:
            answer = predict(endpoint, path, timeout)
        except (OSError, ValueError) as exc:
            detail = exc.code if isinstance(exc, urllib.error.HTTPError) else exc
            return None, None, f"{path.name}: {detail}"
        return answer.get("label"), str((answer.get("model") or {}).get("version")), None

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(one, pictures))
    errors = [error for _, _, error in answers if error]
    correct = sum(1 for (label, _, _), (_, truth) in zip(answers, pictures, strict=True)
                  if label == truth)
    versions = Counter(version for _, version, error in answers if not error)
    result = CheckResult(sent=len(pictures), failures=len(errors), correct=correct,
                         versions=dict(versions), errors=tuple(errors[:5]),
                         seconds=time.monotonic() - started)
    log.info("post-deploy check on %s: %d sent, %d failed, accuracy %.3f, versions %s",
             endpoint, result.sent, result.failures, result.accuracy, result.versions)
    return result


def verdict(result: CheckResult, version: str, recorded_accuracy: float | None,
            tolerance: float, floor: float = 0.0) -> str | None:
    """Why the deployed `version` must be rolled back, or None when it passed: any failed
    request, an answer from another version, or accuracy below `recorded_accuracy - tolerance`
    (the version's test accuracy from its training run; None: not judged) or below `floor`."""
    if result.failures:
        return (f"{result.failures} of {result.sent} requests to the live endpoint failed "
                f"({'; '.join(result.errors)})")
    others = {v: n for v, n in result.versions.items() if v != str(version)}
    if others:
        return f"answers came from other versions than v{version}: {others}"
    if recorded_accuracy is not None and result.accuracy < recorded_accuracy - tolerance:
        return (f"live accuracy {result.accuracy:.3f} on {result.sent} test pictures is below "
                f"v{version}'s recorded test accuracy {recorded_accuracy:.3f} minus the "
                f"tolerance {tolerance} (deploy.accuracy_tolerance)")
    if result.accuracy < floor:
        return (f"live accuracy {result.accuracy:.3f} on {result.sent} test pictures is below "
                f"the floor {floor} (deploy.min_accuracy)")
    return None
