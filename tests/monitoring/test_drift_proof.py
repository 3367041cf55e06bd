"""The drift proof on real photos: held-out clean photos over 20 windows raise at most one false
alarm; the same photos darkened, turned grayscale, blurred, rotated, and a stream of non-pet
pictures each raise drift within one window. Writes the table to test-artifacts/drift-table.md
and a figure to test-artifacts/drift-proof.png."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs.config import MonitorParams, load_params
from catsdogs.monitoring.drift import EMBEDDING, SIGNALS, compare
from tests.conftest import REPO_ROOT
from tests.monitoring.conftest import CLEAN_WINDOWS, WINDOW, PhotoFeatures

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def settings() -> MonitorParams:
    """The shipped thresholds (params.yaml), not test-tuned ones."""
    return load_params(REPO_ROOT / "params.yaml").monitor


def _write_table(path: Path, clean: list, shifted: dict, settings: MonitorParams) -> None:
    alarms = sum(result.detected for result in clean)
    lines = [f"Drift on real photos: {WINDOW} pictures per window, reference "
             f"{clean[0].reference_rows} held-out photos; embedding method "
             f"`{settings.embedding_method}` (threshold {settings.embedding_threshold}), column "
             f"tests at p < {settings.p_value}, decision: embedding drift or a share of drifted "
             f"deciding signals >= {settings.threshold} (width, height: informational).", "",
             "| kind of shift | drift score (share of deciding signals) | embedding score | "
             "drifted signals | detected |", "|---|---|---|---|---|"]
    scores = sorted(result.signal(EMBEDDING).score for result in clean)
    lines.append(f"| none: {CLEAN_WINDOWS} clean windows | max "
                 f"{max(r.score for r in clean):.3f} | {scores[0]:.3f} .. {scores[-1]:.3f} | - | "
                 f"{alarms} of {CLEAN_WINDOWS} (false-alarm rate {alarms / CLEAN_WINDOWS:.2f}) |")
    for kind, result in shifted.items():
        drifted = ", ".join(s.name + (" (informational)" if s.informational else "")
                            for s in result.signals if s.drifted) or "-"
        lines.append(f"| {kind} | {result.score:.3f} | {result.signal(EMBEDDING).score:.3f} | "
                     f"{drifted} | {'yes' if result.detected else 'no'} |")
    path.write_text("\n".join(lines) + "\n")


def _plot(path: Path, clean: list, shifted: dict, settings: MonitorParams) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"clean {i + 1}" for i in range(len(clean))] + list(shifted)
    values = [r.signal(EMBEDDING).score for r in clean] + [
        r.signal(EMBEDDING).score for r in shifted.values()]
    colours = ["tab:red" if r.detected else "tab:blue" for r in [*clean, *shifted.values()]]
    figure, axis = plt.subplots(figsize=(11, 4))
    axis.bar(names, values, color=colours)
    axis.axhline(settings.embedding_threshold, color="black", linestyle="--",
                 label=f"threshold {settings.embedding_threshold}")
    axis.set_ylabel(f"embedding drift ({settings.embedding_method}: ROC AUC)")
    axis.set_title("Embedding drift per window (red: drift detected)")
    axis.tick_params(axis="x", rotation=70)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def test_drift_false_alarms_and_shifts_on_real_photos(photo_features: PhotoFeatures,
                                                       settings: MonitorParams,
                                                       artifacts_dir: Path) -> None:
    # report=False: the same scores without the HTML report's t-SNE map (test_monitor_stage.py
    # covers the report).
    clean = [compare(photo_features.reference, window, settings, report=False)
             for window in photo_features.clean]
    shifted = {kind: compare(photo_features.reference, rows, settings, report=False)
               for kind, rows in photo_features.shifted.items()}
    _write_table(artifacts_dir / "drift-table.md", clean, shifted, settings)
    _plot(artifacts_dir / "drift-proof.png", clean, shifted, settings)

    false_alarms = sum(result.detected for result in clean)
    assert false_alarms <= CLEAN_WINDOWS // 20, (
        f"{false_alarms} false alarms in {CLEAN_WINDOWS} clean windows: "
        f"{[round(r.signal(EMBEDDING).score, 3) for r in clean]}")
    missed = [kind for kind, result in shifted.items() if not result.detected]
    assert not missed, f"no drift detected for {missed}"
    assert all(len(result.signals) == len(SIGNALS) for result in shifted.values())
    # The image properties say what changed, beside the embedding.
    assert shifted["darkened"].signal("brightness").drifted
    assert shifted["grayscale"].signal("saturation").drifted
    assert shifted["non-pet pictures"].signal("confidence").drifted
