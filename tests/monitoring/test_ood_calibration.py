"""The out-of-distribution threshold with known out-of-distribution ("neither") pictures
(`catsdogs.monitoring.ood.calibrate`), on hand-made scores whose right answer is worked out in
each test, and through `fit`, `save` and `load`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from catsdogs.monitoring import ood

VAL = np.arange(1, 101, dtype=np.float64)   # 100 val scores 1..100: share(val <= s) = s / 100
Q = 0.99
T_Q = float(np.quantile(VAL, Q))            # 99.01: 99 of the 100 in distribution


def test_without_known_pictures_the_threshold_is_the_val_quantile() -> None:
    threshold, record = ood.calibrate(VAL, np.zeros(0), Q, min_known=20, min_in_distribution=0.9)
    assert threshold == T_Q
    assert record == {"pictures": 0, "min_pictures": 20, "used": False, "flagged_share": None,
                      "quantile_threshold": T_Q, "min_in_distribution": 0.9}


def test_fewer_than_the_minimum_are_reported_not_used() -> None:
    known = np.array([50.5] * 19 + [500.0])      # 20 pictures, minimum 21: the rule is off
    threshold, record = ood.calibrate(VAL, known, Q, min_known=21, min_in_distribution=0.4)
    assert threshold == T_Q and record["used"] is False
    assert record["flagged_share"] == pytest.approx(1 / 20)


def test_known_pictures_above_the_quantile_leave_it_where_it_is() -> None:
    # every known picture is flagged already: lowering would only lose val pictures
    threshold, record = ood.calibrate(VAL, np.full(30, 150.0), Q, 20, 0.5)
    assert threshold == T_Q and record["used"] is True and record["flagged_share"] == 1.0


def test_the_threshold_moves_down_to_flag_known_pictures_when_it_pays() -> None:
    known = np.full(30, 90.5)   # all between val scores 90 and 91
    # floor 0.85: t = 90 keeps 90% of val in distribution and flags all 30 (0.90 + 1 > 0.99 + 0);
    # 90 is the highest threshold below 90.5
    threshold, record = ood.calibrate(VAL, known, Q, 20, 0.85)
    assert threshold == 90.0 and record["flagged_share"] == 1.0
    assert record["quantile_threshold"] == T_Q
    # floor 0.95: going below 90.5 would keep only 90%: not allowed, the quantile stays
    threshold, record = ood.calibrate(VAL, known, Q, 20, 0.95)
    assert threshold == T_Q and record["flagged_share"] == 0.0


def test_the_threshold_stays_when_flagging_costs_more_than_it_gains() -> None:
    # one of 30 known pictures at 50.5: flagging it (+1/30) would cost 49% of val
    known = np.array([50.5] + [500.0] * 29)
    threshold, record = ood.calibrate(VAL, known, Q, 20, 0.4)
    assert threshold == T_Q and record["flagged_share"] == pytest.approx(29 / 30)
    # six of 30 at 96.5: t = 96 costs 3% of val and flags 20% more: it moves
    known = np.array([96.5] * 6 + [500.0] * 24)
    threshold, record = ood.calibrate(VAL, known, Q, 20, 0.9)
    assert threshold == 96.0 and record["flagged_share"] == 1.0


def test_the_rule_never_raises_the_threshold_nor_breaks_the_floor() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        val = rng.gamma(2.0, 10.0, size=int(rng.integers(5, 80)))
        known = rng.gamma(float(rng.uniform(1, 6)), 10.0, size=int(rng.integers(20, 60)))
        floor = float(rng.uniform(0.5, 0.99))
        threshold, record = ood.calibrate(val, known, Q, 20, floor)
        ceiling = float(np.quantile(val, Q))
        assert threshold <= ceiling
        if threshold < ceiling:
            assert np.mean(val <= threshold) >= floor
            # it moved because it pays: J at the chosen point beats J at the quantile
            assert (np.mean(val <= threshold) + np.mean(known > threshold)
                    > np.mean(val <= ceiling) + np.mean(known > ceiling))
        assert record["flagged_share"] == pytest.approx(np.mean(known > threshold))


def test_fit_records_the_known_pictures_and_load_reads_them_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16)) * 3
    labels = np.arange(120) % 2
    inside = centres[labels] + rng.normal(size=(120, 16))
    train, val = inside[:80], inside[80:]
    known = rng.normal(size=(25, 16)) * 3 - centres.sum(axis=0)   # other directions
    plain = ood.fit(train, labels[:80], val, ("cat", "dog"), Q)
    with_known = ood.fit(train, labels[:80], val, ("cat", "dog"), Q, known, 20, 0.9)
    assert plain.calibration["known_ood"]["pictures"] == 0
    record = with_known.calibration["known_ood"]
    assert record["pictures"] == 25 and record["used"] is True
    assert with_known.threshold <= plain.threshold == record["quantile_threshold"]
    flagged = ~with_known.in_distribution(with_known.score(known))
    assert record["flagged_share"] == pytest.approx(flagged.mean())
    with_known.save(tmp_path)
    assert json.loads((tmp_path / ood.JSON_FILE).read_text())["known_ood"] == record
    assert ood.OodDetector.load(tmp_path).calibration["known_ood"] == record
