"""The serving network (bentoservice.runtime.Predictor) against the plain eager network: batch-norm
folding, the frozen TorchScript graph and bf16 must not change what the model says."""

from __future__ import annotations

import logging

import pytest
import torch

from bentoservice.runtime import Predictor, fold_batch_norms
from catsdogs.training.model import cpu_supports_bf16, normalize
from tests.serving.networks import trained_looking

SIZE = 64
CPU = torch.device("cpu")


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
    predictor = Predictor(net, CPU, "fp32", SIZE, jit=jit)
    assert isinstance(predictor.net, torch.jit.ScriptModule) == jit
    pixels = _pixels(5)
    torch.testing.assert_close(predictor(pixels), _reference(net, pixels), atol=1e-4, rtol=1e-3)


def test_each_picture_gets_the_same_answer_whatever_batch_it_is_in() -> None:
    predictor = Predictor(trained_looking("resnet18"), CPU, "fp32", SIZE)
    predictor.warm_up(6, SIZE)
    pixels = _pixels(6, seed=1)
    together = predictor(pixels)
    alone = torch.cat([predictor(pixels[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_path_stays_close_to_fp32() -> None:
    net = trained_looking("mobilenet_v2")
    pixels = _pixels(8, seed=2)
    bf16 = Predictor(net, CPU, "bf16", SIZE)
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
    with caplog.at_level(logging.WARNING, logger="bentoservice.runtime"):
        assert fold_batch_norms(net) is net
    assert "without batch-norm folding" in caplog.text
