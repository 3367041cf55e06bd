"""params.yaml loading: defaults, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs.config import CLASSES, Params, load_params, parse_override
from catsdogs.errors import UserError

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_repo_params_match_the_documented_defaults() -> None:
    params = load_params(REPO_PARAMS)
    assert params.data.source == "kaggle:bhavikjikadara/dog-and-cat-classification-dataset"
    assert params.data.classes == ["cat", "dog"]
    assert params.transform.image_size == 224
    assert (params.split.train, params.split.val, params.split.test) == (0.8, 0.1, 0.1)
    assert params.split.seed == 42
    assert (params.train.batch_size, params.train.epochs, params.train.lr) == (32, 5, 1e-4)


def test_repo_params_file_sets_every_field() -> None:
    """params.yaml is the one place to read every knob: no field silently falls back to code."""
    import yaml

    raw = yaml.safe_load(REPO_PARAMS.read_text())
    for section, model in Params.model_fields.items():
        assert section in raw, f"section {section} missing from params.yaml"
        assert set(raw[section]) == set(model.annotation.model_fields), section


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    params = load_params(REPO_PARAMS, ["train.epochs=1", "train.lr=3e-4",
                                       "validation.allowed_extensions=[jpg, webp]",
                                       "model.freeze_backbone=true"])
    assert params.train.epochs == 1
    assert params.train.lr == pytest.approx(3e-4)
    assert params.validation.allowed_extensions == ["jpg", "webp"]
    assert params.model.freeze_backbone is True


@pytest.mark.parametrize("classes", ["[cat, dog, fox]", "[dog, cat]", "[a, b]"])
def test_a_class_list_the_model_cannot_train_is_refused_up_front(classes: str) -> None:
    """One class list (catsdogs.config.CLASSES): data stages and the model agree, or nothing runs."""
    with pytest.raises(UserError, match=r"data\.classes: .*must be \['cat', 'dog'\]"):
        load_params(REPO_PARAMS, [f"data.classes={classes}"])
    assert load_params(REPO_PARAMS, ["data.classes=[cat, dog]"]).data.classes == list(CLASSES)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochs=abc", "train.epochs"),
        ("train.nope=1", "train.nope"),
        ("nope.key=1", "unknown section 'nope'"),
        ("train.epochs", "expected section.key=value"),
        ("model.arch=vgg", "model.arch"),
        ("split.train=0.9", "must equal 1"),
    ],
)
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        load_params(REPO_PARAMS, [override])


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: 2\n  epoch_count: 3\n")
    with pytest.raises(UserError, match=r"train\.epoch_count"):
        load_params(bad)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_params(tmp_path / "absent.yaml")


def test_flat_and_fingerprint() -> None:
    params = load_params(REPO_PARAMS)
    flat = params.flat()
    assert flat["train.epochs"] == 5 and flat["mlflow.registered_model_name"] == "CatsDogsCNN"
    changed = load_params(REPO_PARAMS, ["train.epochs=2"])
    assert params.fingerprint("split") == changed.fingerprint("split")
    assert params.fingerprint("train") != changed.fingerprint("train")


def test_parse_override_keeps_strings() -> None:
    assert parse_override("data.source=dir:/tmp/x") == ("data", "source", "dir:/tmp/x")
