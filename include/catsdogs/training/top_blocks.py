"""The `top_blocks` recipe: the frozen bottom of the network runs once, the top is trained many
times on what it produced.

1. **Encode once**: every training picture (as evaluation sees it: the whole squashed frame;
   with `train.mirror` also its mirror image) and every validation picture goes once through the
   frozen bottom of the network (all blocks but the last `train.top_blocks`), in eval mode. The
   activations stay in memory (MobileNetV2, 3 top blocks: 160 x 7 x 7 floats = 31 KB a view;
   ResNet18: 200 KB).
2. **Head** (`train.head_epochs`, `train.head_lr`): the classifier alone on the pooled output
   of the (still frozen) top blocks, computed once: each epoch costs a few milliseconds.
3. **Top blocks** (`train.epochs`, `train.lr`): the top blocks and the head fine-tuned on the
   cached activations (one random view of each picture per epoch, when mirrored) with discriminative learning
   rates: the head and the last block at `lr`, each block below at `TOP_LR_DECAY` times the one
   above. Batch-norm layers keep their ImageNet statistics (eval mode) throughout.

Why: the seed recipe (`full`) re-ran the whole network forward and backward on every picture in
every epoch, and trained on random crops (zoomed 1.12x on average, aspect jittered) with batch-norm
statistics re-estimated on them, while evaluation and serving see the whole squashed frame (a
suspect for the biased decision of issue 20; docs/training.md has what was measured). Here
training sees exactly the evaluation geometry and statistics, and most of the arithmetic is done
once. Written here because no maintained library does feature caching for a torchvision model's
own blocks.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from catsdogs.config import TrainParams
from catsdogs.console import Progress
from catsdogs.inference.compute import Compute
from catsdogs.inference.scorer import Scorer
from catsdogs.training.loading import TensorBatches, TensorSplit, batch_bounds, epoch_order
from catsdogs.training.loop import FitResult
from catsdogs.training.metrics import classification_metrics

log = logging.getLogger(__name__)

TOP_LR_DECAY = 0.5


def network_blocks(model: nn.Module, arch: str) -> tuple[list[nn.Module], nn.Module]:
    """The network as a chain: feature blocks (picture -> last feature map, in order) and the
    head (pooled features N,D -> logits N,2). `model(x) == head(pool(blocks(x)))`."""
    if arch == "mobilenet_v2":
        return list(model.features), model.classifier
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, *model.layer1, *model.layer2, *model.layer3, *model.layer4], model.fc


def pool(features: torch.Tensor) -> torch.Tensor:
    """Global average pooling, N,C,H,W -> N,C (what both torchvision networks do)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)


def _encode(module: nn.Module, batches: Iterable[torch.Tensor], total: int, compute: Compute,
            desc: str) -> torch.Tensor:
    """`module`'s output (float32, on the CPU) for every batch of inputs, concatenated."""
    outputs: list[torch.Tensor] = []
    with Progress(desc, total) as counter, torch.inference_mode():
        for batch in batches:
            with compute.autocast():
                outputs.append(module(compute.inputs(batch)).float().contiguous().cpu())
            counter.update(len(batch))
    return torch.cat(outputs)


def _pictures(data: TensorSplit, batch_size: int, mirrored: bool) -> Iterator[torch.Tensor]:
    """Normalised pictures of a cached split in order (mirror images when `mirrored`)."""
    for images, _labels in TensorBatches(data, batch_size, shuffle=False):
        yield images.flip(-1) if mirrored else images


def _chunks(inputs: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start, stop in batch_bounds(len(inputs), batch_size, merge_single=False):
        yield inputs[start:stop]


def _val_metrics(network: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                 batch_size: int, compute: Compute) -> dict[str, float]:
    """Validation metrics of `network` (cached activations -> logits, ending in the head) on
    `inputs`, scored by `Scorer` (a copy of `network`: its training goes on unchanged)."""
    probabilities, _ = Scorer(network, compute).score_all(_chunks(inputs, batch_size * 4))
    return {f"val_{name}": value for name, value
            in classification_metrics(labels.tolist(), probabilities[:, 1].tolist()).items()}


def _epoch(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
           inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
           generator: torch.Generator, compute: Compute, desc: str,
           label_smoothing: float, weights: torch.Tensor | None) -> float:
    """One pass over one random view of each picture (`epoch_order`: each once, or with
    `weights` as many weighted draws as there are pictures); mean training loss (cross-entropy
    with `label_smoothing`)."""
    count = inputs.shape[1]
    order = epoch_order(count, generator, weights)
    view = torch.randint(inputs.shape[0], (count,), generator=generator)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    total = 0.0
    with Progress(desc, count) as counter:
        bounds = batch_bounds(count, batch_size, merge_single=True)
        for number, (start, stop) in enumerate(bounds, 1):
            index = order[start:stop]
            batch = inputs[view[index], index].to(compute.device)
            with compute.autocast():
                loss = loss_fn(forward(batch), labels[index].to(compute.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            total += value * len(index)
            counter.update(len(index), f"batch {number}/{len(bounds)}, loss {value:.4f}")
    return total / count


def fit_top_blocks(model: nn.Module, arch: str, train: TensorSplit, val: TensorSplit, *,
                   settings: TrainParams, compute: Compute,
                   weights: torch.Tensor | None = None,
                   on_epoch: Callable[[int, dict[str, float]], Any] | None = None,
                   on_head_epoch: Callable[[int, dict[str, float]], Any] | None = None
                   ) -> FitResult:
    """Train `model` (a `build_model` network) by the recipe above on `train` and `val` (uint8
    N,3,S,S pictures + N labels), encoding and training as `compute` says (device, autocast
    precision, memory layout); each head and fine-tune epoch draws the training pictures by
    `epoch_order` (`weights`: N sampling weights, `sampling_weights`; None: a plain shuffle);
    the best fine-tune epoch by validation F1 is kept (a deep copy of
    the whole state dict). `train.top_blocks` is at most 8 (config), which always leaves a frozen
    bottom (ResNet18: stem + 8 blocks; MobileNetV2: 19)."""
    blocks, head = network_blocks(model, arch)
    top_count = settings.top_blocks
    memory = compute.memory_format
    model.to(compute.device, memory_format=memory).eval()
    for parameter in model.parameters():
        parameter.requires_grad = False
    bottom, top = nn.Sequential(*blocks[:-top_count]), nn.Sequential(*blocks[-top_count:])
    started = time.perf_counter()
    size = settings.batch_size
    cached = torch.stack([_encode(bottom, _pictures(train, size, mirrored), len(train), compute,
                                  f"encode train{' mirrored' if mirrored else ''}")
                          for mirrored in ((False, True) if settings.mirror else (False,))])
    cached_val = _encode(bottom, _pictures(val, size, False), len(val), compute, "encode val")
    generator = torch.Generator().manual_seed(settings.seed)
    result = FitResult(best_state={}, best_epoch=0)

    if settings.head_epochs:
        top_pool = nn.Sequential(top, _Pool())
        pooled = torch.stack([_encode(top_pool, _chunks(view, size), len(view), compute,
                                      "pool train") for view in cached])
        pooled_val = _encode(top_pool, _chunks(cached_val, size), len(cached_val), compute,
                             "pool val")
        for parameter in head.parameters():
            parameter.requires_grad = True
        optimizer = torch.optim.Adam(head.parameters(), lr=settings.head_lr)
        best_f1, best_head = -1.0, copy.deepcopy(head.state_dict())
        for epoch in range(1, settings.head_epochs + 1):
            head.train()
            loss = _epoch(head, optimizer, pooled, train.labels, size, generator, compute,
                          f"head epoch {epoch}/{settings.head_epochs}", settings.label_smoothing,
                          weights)
            head.eval()
            metrics = {"train_loss": loss} | _val_metrics(nn.Sequential(head), pooled_val,
                                                          val.labels, size, compute)
            if on_head_epoch is not None:
                on_head_epoch(epoch, metrics)
            if metrics["val_f1"] > best_f1:
                best_f1, best_head = metrics["val_f1"], copy.deepcopy(head.state_dict())
        head.load_state_dict(best_head)
        log.info("head: best validation F1 %.4f after %d epochs", best_f1, settings.head_epochs)

    def forward(activations: torch.Tensor) -> torch.Tensor:
        return head(pool(top(activations.contiguous(memory_format=memory))))

    step_forward = torch.compile(forward) if settings.compile else forward
    groups = [{"params": list(head.parameters()), "lr": settings.lr}] + [
        {"params": list(block.parameters()), "lr": settings.lr * TOP_LR_DECAY ** depth}
        for depth, block in enumerate(reversed(blocks[-top_count:]))]
    for parameter in (p for group in groups for p in group["params"]):
        parameter.requires_grad = True
    optimizer = torch.optim.Adam(groups)
    best_f1 = -1.0
    for epoch in range(1, settings.epochs + 1):
        head.train()            # dropout in the head; batch-norm stays in eval mode
        loss = _epoch(step_forward, optimizer, cached, train.labels, size, generator, compute,
                      f"epoch {epoch}/{settings.epochs}", settings.label_smoothing, weights)
        head.eval()
        metrics = {"train_loss": loss} | _val_metrics(nn.Sequential(top, _Pool(), head),
                                                      cached_val, val.labels, size, compute)
        result.history.append(metrics)
        log.info("epoch %d/%d: %s", epoch, settings.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if metrics["val_f1"] > best_f1:
            best_f1, result.best_epoch = metrics["val_f1"], epoch
            result.best_state = copy.deepcopy(model.state_dict())
    for parameter in model.parameters():
        parameter.requires_grad = True
    result.train_seconds = time.perf_counter() - started
    result.train_images = len(train) * settings.epochs
    return result


class _Pool(nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return pool(features)

