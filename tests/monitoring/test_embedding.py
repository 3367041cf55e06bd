"""The served network's embedding: one forward pass of the prepared (folded, frozen) network
gives the same probabilities and penultimate-layer embedding as the plain eager network, and
the model service's packed answer splits back into them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bentoservice.runtime import pack_outputs, unpack_outputs
from catsdogs.inference.compute import Compute
from catsdogs.inference.scorer import Scorer, normalize, with_embedding
from catsdogs.monitoring import ood
from catsdogs.training.model import build_model
from tests.serving.networks import embed

SIZE = 64


@pytest.mark.parametrize(("arch", "size"), [("resnet18", 512), ("mobilenet_v2", 1280)])
def test_served_embedding_is_the_heads_input(arch: str, size: int) -> None:
    torch.manual_seed(0)
    net = build_model(arch, "none").eval()
    pixels = torch.randint(0, 256, (5, SIZE, SIZE, 3), dtype=torch.uint8)
    expected_embedding, expected_probs = embed(net, normalize(pixels.permute(0, 3, 1, 2)))
    predictor = Scorer(net, Compute.serving(torch.device("cpu")), serving=True, image_size=SIZE,
                       jit=True)
    assert predictor.embeds and isinstance(predictor.net, torch.jit.ScriptModule)
    probs, embedding = predictor.outputs(pixels)
    assert embedding is not None and embedding.shape == (5, size)
    np.testing.assert_allclose(embedding.numpy(), expected_embedding, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(probs.numpy(), expected_probs, atol=1e-4)
    np.testing.assert_allclose(predictor(pixels).numpy(), probs.numpy(), atol=1e-5)  # __call__


def test_with_embedding_leaves_the_network_alone() -> None:
    net = build_model("resnet18", "none").eval()
    wrapped = with_embedding(net)
    assert isinstance(net.fc, torch.nn.Linear) and isinstance(wrapped.body.fc, torch.nn.Identity)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        logits, _ = wrapped(x)
        torch.testing.assert_close(logits, net(x))


def test_a_network_without_a_linear_head_serves_probabilities_only() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    predictor = Scorer(net, Compute.serving(torch.device("cpu")), serving=True, image_size=SIZE,
                       jit=False)
    probs, embedding = predictor.outputs(torch.zeros(3, SIZE, SIZE, 3, dtype=torch.uint8))
    assert not predictor.embeds and embedding is None and probs.shape == (3, 2)
    packed = pack_outputs(probs.numpy(), None, None)
    split_probs, scores, split_embedding = unpack_outputs(packed, 2)
    assert packed.shape == (3, 3) and np.isnan(scores).all() and split_embedding is None
    np.testing.assert_array_equal(split_probs, probs.numpy())


def test_packed_answer_round_trips_with_scores() -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    detector = ood.fit(embeddings[:30], np.arange(30) % 2, embeddings[30:], ("cat", "dog"))
    probs = rng.dirichlet([1, 1], size=4).astype(np.float32)
    packed = pack_outputs(probs, embeddings[:4], detector)
    assert packed.dtype == np.float32 and packed.shape == (4, 2 + 1 + 8)
    split_probs, scores, split_embedding = unpack_outputs(packed, 2)
    np.testing.assert_array_equal(split_probs, probs)
    np.testing.assert_array_equal(split_embedding, embeddings[:4])
    np.testing.assert_allclose(scores, detector.score(embeddings[:4]))
