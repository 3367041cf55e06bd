"""The serving network (catsdogs.inference.scorer.Scorer, serving=True) against the plain eager
network: batch-norm folding, the frozen TorchScript graph and bf16 must not change what the model
says."""

from __future__ import annotations

import logging

import pytest
import torch

from catsdogs.inference.compute import Compute, cpu_supports_bf16
from catsdogs.inference.scorer import Scorer, fold_batch_norms, normalize
from tests.serving.networks import trained_looking

SIZE = 64
CPU = torch.device("cpu")


def _serving(net: torch.nn.Module, precision: str, jit: bool = True) -> Scorer:
    """The serving scorer on the CPU, as the service builds it for a torch variant."""
    return Scorer(net, Compute.serving(CPU, precision), serving=True, image_size=SIZE, jit=jit)


def _pixels(batch: int, seed: int = 0) -> torch.Tensor:
    """N,H,W,3 uint8, the layout the API process sends."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, SIZE, SIZE, 3), dtype=torch.uint8, generator=generator)


def _reference(net: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The training-side arithmetic: contiguous N,3,H,W, normalised, eager fp32 network."""
    with torch.inference_mode():
        nchw = pixels.permute(0, 3, 1, 2).contiguous()
        return torch.softmax(net.eval()(normalize(nchw)), dim=1)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("jit", [True, False])
def test_fp32_serving_network_matches_the_eager_network(arch: str, jit: bool) -> None:
    net = trained_looking(arch)
    predictor = _serving(net, "fp32", jit=jit)
    assert isinstance(predictor.net, torch.jit.ScriptModule) == jit
    pixels = _pixels(5)
    torch.testing.assert_close(predictor(pixels), _reference(net, pixels), atol=1e-4, rtol=1e-3)


def test_each_picture_gets_the_same_answer_whatever_batch_it_is_in() -> None:
    predictor = _serving(trained_looking("resnet18"), "fp32")
    predictor.warm_up(6, SIZE)
    pixels = _pixels(6, seed=1)
    together = predictor(pixels)
    alone = torch.cat([predictor(pixels[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_path_stays_close_to_fp32() -> None:
    net = trained_looking("mobilenet_v2")
    pixels = _pixels(8, seed=2)
    bf16 = _serving(net, "bf16")
    assert bf16.dtype == torch.bfloat16 and isinstance(bf16.net, torch.jit.ScriptModule)
    assert (bf16(pixels) - _reference(net, pixels)).abs().max() < 0.05


def test_untraceable_network_is_served_unfolded(caplog: pytest.LogCaptureFixture) -> None:
    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)
            self.norm = torch.nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.norm(self.conv(x))
            return (y if y.sum() > 0 else -y).mean((2, 3))

    net = DataDependent().eval()
    with caplog.at_level(logging.WARNING, logger="catsdogs.inference.scorer"):
        assert fold_batch_norms(net) is net
    assert "without batch-norm folding" in caplog.text
