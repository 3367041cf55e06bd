"""Per-machine choices (precision on a CPU without bfloat16), the top_blocks recipe's pieces, and
progress lines in a non-terminal log within an epoch (issue 16, item 3)."""

from __future__ import annotations

import logging

import pytest
import torch

from catsdogs import console
from catsdogs.errors import UserError
from catsdogs.inference import compute as compute_module
from catsdogs.inference.compute import Compute, resolve_precision, uses_channels_last
from catsdogs.training.cache import load_split
from catsdogs.training.loading import TensorBatches
from catsdogs.training.loop import fit
from catsdogs.training.model import build_model, train_augment
from catsdogs.training.top_blocks import fit_top_blocks, network_blocks, pool
from tests.training.conftest import IMAGE_SIZE, tiny_params

CPU = torch.device("cpu")
AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}


def test_auto_precision_is_fp32_on_a_cpu_without_bfloat16(monkeypatch) -> None:
    monkeypatch.setattr(compute_module, "cpu_flags", lambda: AVX2_ONLY)
    assert not compute_module.cpu_supports_bf16()
    assert resolve_precision("auto", CPU) == "fp32"
    assert not uses_channels_last(CPU, "fp32")
    monkeypatch.setattr(compute_module, "cpu_flags", lambda: AVX2_ONLY | {"avx512_bf16"})
    assert resolve_precision("auto", CPU) == "bf16" and uses_channels_last(CPU, "bf16")
    monkeypatch.setattr(compute_module, "cpu_flags", lambda: AVX2_ONLY | {"amx_bf16"})
    assert resolve_precision("auto", CPU) == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)


def test_cpu_flags_are_read_from_the_flags_line() -> None:
    flags = compute_module.cpu_flags()
    assert not flags or "fpu" in flags or "neon" in flags or "fp" in flags


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_network_blocks_chain_to_the_same_logits(arch: str) -> None:
    torch.manual_seed(0)
    net = build_model(arch, "none").eval()
    blocks, head = network_blocks(net, arch)
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        chained = head(pool(torch.nn.Sequential(*blocks)(images)))
        assert torch.allclose(chained, net(images), atol=1e-5)


def test_top_blocks_recipe_trains_only_the_top_blocks(tiny_data) -> None:
    train, val = (load_split(tiny_data, split, IMAGE_SIZE) for split in ("train", "val"))
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    settings = tiny_params("train.epochs=2", "train.head_epochs=3", "train.top_blocks=2").train
    heads: list[int] = []
    result = fit_top_blocks(net, "mobilenet_v2", train, val, settings=settings,
                            compute=Compute.resolve("fp32", CPU),
                            on_head_epoch=lambda epoch, _m: heads.append(epoch))
    assert heads == [1, 2, 3] and len(result.history) == 2 and result.best_epoch in (1, 2)
    changed = {k for k, v in result.best_state.items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("features.17.", "features.18.", "classifier."))
                           for k in changed), changed
    assert not any("running_" in k for k in changed)       # batch-norm statistics stay ImageNet's


def test_training_logs_progress_within_an_epoch_in_a_log(tiny_data, monkeypatch, caplog) -> None:
    monkeypatch.setattr(console, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    train, val = (load_split(tiny_data, split, IMAGE_SIZE) for split in ("train", "val"))
    with caplog.at_level(logging.INFO, logger="catsdogs.progress"):
        fit(build_model("mobilenet_v2", "none"),
            TensorBatches(train, 8, shuffle=True, augment=train_augment(IMAGE_SIZE)),
            TensorBatches(val, 8, shuffle=False), epochs=1, lr=1e-3,
            compute=Compute.resolve("fp32", CPU))
    lines = [r.getMessage() for r in caplog.records if r.name == "catsdogs.progress"]
    assert any(line.startswith("epoch 1/1: 8/18 img") for line in lines), lines
    first = next(line for line in lines if line.startswith("epoch 1/1:"))
    assert "img/s" in first and "ETA " in first and "batch 1/3, loss " in first


def test_parallel_work_logs_progress_in_a_log(monkeypatch, caplog) -> None:
    from catsdogs.data.parallel import parallel_map

    monkeypatch.setattr(console, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="catsdogs.progress"):
        assert parallel_map(abs, [-1, -2, -3], desc="transform", workers=1) == [1, 2, 3]
    assert "transform: 3/3 img" in caplog.text and "ETA 0:00:00" in caplog.text


def test_a_download_without_a_loop_of_its_own_logs_a_heartbeat(tmp_path, caplog) -> None:
    import time

    from catsdogs.data.kaggle import _downloaded

    (tmp_path / "part.zip").write_bytes(b"\0" * 2**20)
    with (caplog.at_level(logging.INFO, logger="catsdogs.progress"),
          console.heartbeat("kaggle download a/b", lambda: _downloaded(tmp_path), 0.01)):
        time.sleep(0.2)
    assert "kaggle download a/b: 1.0 MiB downloaded after 0:00:00" in caplog.text


def test_the_measured_choice_is_fp32_without_bfloat16_and_survives_a_damaged_store(
        monkeypatch, tmp_path) -> None:
    """Training's choice (by measurement): bf16 is not even a candidate on a CPU without native
    bfloat16; a kept choice is reused; a damaged store is measured again, not a traceback."""
    from catsdogs.training.loop import candidates, choose

    monkeypatch.setattr(compute_module, "cpu_flags", lambda: AVX2_ONLY)
    assert {precision for precision, _ in candidates("auto", CPU)} == {"fp32"}
    speeds = {(False,): 10.0, (True,): 12.0}
    probed: list[tuple[str, bool]] = []

    def probe(compute: Compute) -> float:
        assert compute.device == CPU
        probed.append((compute.precision, compute.channels_last))
        return speeds[(compute.channels_last,)]

    store = tmp_path / "choices.json"
    first = choose("auto", CPU, probe, store, key="k")
    assert (first.precision, first.channels_last) == ("fp32", True) and len(probed) == 2
    assert first.compute(CPU) == Compute(CPU, "fp32", channels_last=True)
    assert choose("auto", CPU, probe, store, key="k").channels_last and len(probed) == 2
    store.write_text("{not json")
    assert choose("auto", CPU, probe, store, key="k").precision == "fp32" and len(probed) == 4
    store.write_text('{"k": {"precision": "fp32"}}')      # an entry missing its fields
    assert choose("auto", CPU, probe, store, key="k").precision == "fp32" and len(probed) == 6
