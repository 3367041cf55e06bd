"""`catsdogs labels`: the labelled production pictures newer than the last ingest, counted on a
real SQLite prediction log written by `PredictionLog` (kept pictures, feedback labels), pushed to
a real Pushgateway; the real `ingest` reads them and the count starts again from zero."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from catsdogs.cli import main
from catsdogs.config import load_params
from catsdogs.monitoring.prediction_log import default_url
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, labels
from tests.conftest import REPO_ROOT
from tests.data.helpers import label_pictures, smooth_jpeg, write_tree
from tests.monitoring.logs import pushgateway, scrape


def test_new_labels_are_counted_pushed_and_reset_by_ingest(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    params = load_params(REPO_ROOT / "params.yaml", ["feedback.retrain_labels=4",
                                                     "feedback.min_labels=1"])
    paths = DataPaths(tmp_path / "data")
    url = default_url(paths.root)
    source = write_tree(tmp_path / "source", {f"{label}/{label}.{i}.jpg": smooth_jpeg(i + 50 * n)
                                              for n, label in enumerate(("cat", "dog"))
                                              for i in range(3)})
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)
    with pushgateway(tmp_path) as gateway:
        monkeypatch.setenv(labels.PUSHGATEWAY_ENV, gateway)
        nothing = labels.run(params, paths).to_dict()
        assert (nothing["new_labels"], nothing["enough"], nothing["since"]) == (0, False, None)

        # 3 labelled production pictures: 3 new labels, one short of feedback.retrain_labels
        label_pictures(url, tmp_path / "kept", [(smooth_jpeg(100 + i), "cat") for i in range(3)], 0, start)
        few = labels.run(params, paths).to_dict()
        assert (few["new_labels"], few["needed"], few["enough"]) == (3, 4, False)
        assert "1 more needed" in few["message"]
        metrics = scrape(gateway)
        assert 'catsdogs_labels_waiting{instance="",job="catsdogs_labels"} 3' in metrics
        assert 'catsdogs_labels_needed{instance="",job="catsdogs_labels"} 4' in metrics

        label_pictures(url, tmp_path / "kept", [(smooth_jpeg(200), "neither")], 10, start)
        enough = labels.run(params, paths).to_dict()
        assert (enough["new_labels"], enough["enough"]) == (4, True)

        merged = ingest.run(params, paths, source=f"dir:{source}").to_dict()
        assert merged["feedback"] == 3 and merged["feedback_neither"] == 1
        after = labels.run(params, paths).to_dict()
        assert (after["new_labels"], after["enough"]) == (0, False)
        assert after["since"] is not None
        assert 'catsdogs_labels_waiting{instance="",job="catsdogs_labels"} 0' in scrape(gateway)

    # the CLI command (its JSON summary), with no Pushgateway configured: a log line, no push
    monkeypatch.delenv(labels.PUSHGATEWAY_ENV)
    assert main(["labels", "--data-dir", str(paths.root), "--json"]) == 0
    assert '"new_labels": 0' in capsys.readouterr().out
