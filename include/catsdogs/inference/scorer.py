"""THE forward pass: pixels -> normalise -> network -> softmax, with the penultimate-layer
embedding from the same pass (`Scorer`). Training's validation and test scores, the evaluate and
promote stages, the reference profile, the serving import's measurement and the service all score
through it, so a picture gives the same numbers everywhere.

- `normalize`: the arithmetic half of THE evaluation transform (uint8 -> ImageNet-normalised
  float32); `catsdogs.training.model` has the geometric half.
- `pixels_to_inputs`: uint8 N,H,W,3 pixels to the network's inputs (also Grad-CAM's,
  `catsdogs.inference.explain`, which needs gradients and so runs the eager network itself).
- `with_embedding`: the network rearranged to return (logits, embedding) from one pass.
- `Scorer`: a network prepared once for a `Compute`, then batches in, (probabilities, embedding)
  out. Eager (training, evaluation, the reference profile: autocast in the chosen precision) or
  prepared for serving (`serving=True`: batch norms folded, weights in the precision's dtype, on
  CPU a frozen TorchScript graph).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterable

import numpy as np
import torch

from catsdogs.inference.compute import Compute

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
JIT_SPECIALISATIONS = 64  # batch shapes TorchScript compiles statically (then it goes dynamic)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (3,H,W or N,3,H,W, any memory layout) to float32 scaled to [0, 1] and
    ImageNet-normalised; the same arithmetic as torchvision's ToTensor + Normalize."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return pixels.float().div_(255).sub_(mean).div_(std)


def pixels_to_inputs(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N,H,W,3 pixels (`catsdogs.data.images.square_image`'s) on `device` as the network's
    N,3,H,W float32 inputs (`normalize`d): the preprocessing of every forward pass, the scorer's
    and Grad-CAM's (`catsdogs.inference.explain`)."""
    return normalize(batch.to(device, non_blocking=True).permute(0, 3, 1, 2))


class WithEmbedding(torch.nn.Module):
    """body(x) -> N,D embedding; head(embedding) -> N,C logits; forward returns both."""

    def __init__(self, body: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.body(x)
        return self.head(embedding), embedding


def head_of(net: torch.nn.Module) -> torch.nn.Linear:
    """The network's last `torch.nn.Linear` (the classifier head of ResNet / MobileNetV2).
    ValueError when it has none."""
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no Linear layer to take an embedding from")
    return linears[-1]


def with_embedding(net: torch.nn.Module) -> WithEmbedding:
    """A copy of `net` (eval mode) whose forward returns (N,C logits, N,D embedding) from ONE
    pass: the last `Linear` (the head) is taken out of the body and applied to the body's output,
    which is the head's input. Holds for networks whose head is the last operation of `forward`
    (ResNet's `fc`, MobileNetV2's `classifier[-1]`: what `build_model` makes). ValueError when
    `net` has no Linear layer (e.g. an exported graph)."""
    head = head_of(net)
    body = copy.deepcopy(net)
    name = next(n for n, m in net.named_modules() if m is head)
    parent_name, _, attribute = name.rpartition(".")
    parent = body.get_submodule(parent_name) if parent_name else body
    setattr(parent, attribute, torch.nn.Identity())
    return WithEmbedding(body, copy.deepcopy(head)).eval()


class Scorer:
    """A network prepared once for `compute`, then THE batched forward (`outputs`).

    Eager (default): `with_embedding(net)` (a copy: `net` is left alone but set to eval mode)
    in float32 weights, on the device and in the layout of `compute`, run under autocast in its
    precision.

    `serving=True`: prepared for fast inference: batch norms folded into the preceding
    convolutions, weights and inputs in the precision's dtype (bf16 throughout on AMX CPUs,
    several times faster than fp32 at every batch size), and on CPU, with `jit`, a frozen
    TorchScript graph whose conv+ReLU chains oneDNN fuses (`image_size`: the example traced).

    Either way a network without a Linear head (an exported graph that could not be rebuilt, a
    hand-made test network) gives probabilities only (`embeds` False, logged).
    """

    def __init__(self, net: torch.nn.Module, compute: Compute, *, serving: bool = False,
                 image_size: int = 224, jit: bool = True) -> None:
        self.compute = compute
        self.serving = serving
        self.dtype = compute.dtype if serving else torch.float32
        try:
            module: torch.nn.Module = with_embedding(net.eval())
            self.embeds = True
        except ValueError as exc:
            logger.log(logging.WARNING if serving else logging.DEBUG,
                       "%s without embedding (no out-of-distribution score): %s",
                       "serving" if serving else "scoring", exc)
            module, self.embeds = copy.deepcopy(net), False
        if serving:
            module = fold_batch_norms(module.eval())
        self.net = module.to(compute.device, dtype=self.dtype).to(
            memory_format=compute.memory_format)
        if serving and jit and compute.device.type == "cpu":
            example = torch.zeros(2, 3, image_size, image_size, dtype=self.dtype)
            self.net = freeze_graph(self.net, example.contiguous(
                memory_format=compute.memory_format))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """`outputs(batch)`'s probabilities only."""
        return self.outputs(batch)[0]

    @torch.inference_mode()
    def outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward pass of a batch: uint8 N,H,W,3 pixels (`catsdogs.data.images.square_image`,
        what the service decodes; normalised here) or float32 N,3,H,W already normalised inputs
        (THE evaluation transform's) -> (N,C softmax probabilities, N,D penultimate-layer
        embedding, None when `embeds` is False), float32 on the CPU."""
        if batch.dtype == torch.uint8:
            batch = pixels_to_inputs(batch, self.compute.device)
        inputs = self.compute.inputs(batch.to(self.dtype))
        with contextlib.nullcontext() if self.serving else self.compute.autocast():
            result = self.net(inputs)
        logits, embedding = result if self.embeds else (result, None)
        return (torch.softmax(logits.float(), dim=1).cpu(),
                None if embedding is None else embedding.float().cpu())

    def score_all(self, batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """`outputs` of every batch, concatenated: (N,C probabilities, N,D embedding), float32
        numpy arrays. ValueError for a scorer without embedding."""
        if not self.embeds:
            raise ValueError("this scorer's network gives no embedding")
        probabilities, embeddings = [], []
        for batch in batches:
            probs, embedding = self.outputs(batch)
            probabilities.append(probs.numpy())
            embeddings.append(embedding.numpy())
        return np.concatenate(probabilities), np.concatenate(embeddings)

    def warm_up(self, max_batch_size: int, image_size: int) -> None:
        """Run every batch size once (twice for a TorchScript graph), so the first real requests
        don't pay for oneDNN kernel selection or TorchScript's per-shape specialisation."""
        for batch in range(1, max_batch_size + 1):
            for _ in range(2 if isinstance(self.net, torch.jit.ScriptModule) else 1):
                self(torch.zeros(batch, image_size, image_size, 3, dtype=torch.uint8))


def freeze_graph(net: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """TorchScript trace + freeze with oneDNN Graph fusion on: conv+ReLU(+add) fused, weights
    prepacked, one static specialisation per batch size (bf16 resnet18 on one AMX core: ~150
    vs ~60 img/s eager). TorchScript is deprecated in favour of torch.compile, whose CPU
    compile takes minutes per batch size here; a network that cannot be traced stays eager."""
    torch.jit.enable_onednn_fusion(True)
    torch.jit.set_fusion_strategy([("STATIC", JIT_SPECIALISATIONS)])
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.freeze(torch.jit.trace(net, example))
    except Exception as exc:  # noqa: BLE001 (any tracing failure: serve the eager network)
        logger.warning("serving the eager network (TorchScript: %s: %s)", type(exc).__name__, exc)
        return net


def fold_batch_norms(net: torch.nn.Module) -> torch.nn.Module:
    """Conv+BatchNorm pairs folded into one convolution (same maths in eval mode, one pass over
    the activations fewer: ~1.5-2x on CPU). Networks torch.fx cannot trace are returned as-is."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(net))
    except Exception as exc:  # noqa: BLE001 (any tracing failure: serve the unfolded network)
        logger.warning("serving without batch-norm folding (%s: %s)", type(exc).__name__, exc)
        return net
