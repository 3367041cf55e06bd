"""One-epoch GPU check on the real photo sample: images/s, loader efficiency, GPU memory and the
accuracy reached, for ResNet18 and MobileNetV2 (fp16 AMP + channels_last), plus the default
`top_blocks` recipe with MobileNetV2. Run through benchmarks/gpu_check.sh; `--device cpu --smoke`
runs the same code on a CPU at 64 px on a few pictures (to check the script, not the speed).

Data: the sample is split the way the transform stage splits (`assign_splits`, seed 42), squared
by `square_image` and cached per split as uint8 tensors (`catsdogs.training.cache`), as training
does. Loader: the CPU loader (`TensorBatches`, per-picture v2 crop + flip) is measured alone; when
it is slower than the GPU's compute-only ceiling, the epoch augments on the GPU instead (uint8
batch copied once, random resized crops of the whole batch in one `torchvision.ops.roi_align`
call, flips by mask), so no picture is decoded or resized on the CPU during training.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "petimages-sample"
log = logging.getLogger("gpu_check")


def build_splits(sample: Path, work: Path, size: int, per_class: int | None) -> Any:
    """transformed/{train,val,test}/{cat,dog} as the transform stage makes it."""
    from catsdogs.config import CLASSES, load_params
    from catsdogs.data.parallel import parallel_map
    from catsdogs.paths import DataPaths
    from catsdogs.stages.transform import assign_splits

    params = load_params(REPO / "params.yaml", [f"transform.image_size={size}"])
    paths = DataPaths(work / "data")
    rows = [{"path": str(path), "label": label}
            for label in CLASSES
            for path in sorted((sample / label).glob("*.jpg"))[:per_class]]
    jobs = []
    for split, row in assign_splits(rows, params):
        target = paths.split_dir(split) / row["label"] / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            jobs.append((row["path"], str(target), size))
    parallel_map(_square_one, jobs, desc="square")
    return paths


def _square_one(job: tuple[str, str, int]) -> None:
    from catsdogs.data.images import square_image

    source, target, size = job
    square_image(Path(source), size).save(target, "JPEG", quality=95)


def gpu_augment(pixels: Any, size: int, generator: Any) -> Any:
    """The `full` recipe's crop (scale 0.6-1, aspect 3/4-4/3) and flip for a whole uint8
    N,3,S,S batch on its device in two kernels: float32 N,3,S,S in 0-255."""
    import torch
    from torchvision.ops import roi_align

    count, device = len(pixels), pixels.device
    uniform = torch.rand(count, 4, generator=generator, device=device)
    area = 0.6 + 0.4 * uniform[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * uniform[:, 1])
    width = (size * torch.sqrt(area * ratio)).clamp(max=size)
    height = (size * torch.sqrt(area / ratio)).clamp(max=size)
    left, top = (size - width) * uniform[:, 2], (size - height) * uniform[:, 3]
    boxes = torch.stack([torch.arange(count, device=device, dtype=torch.float32), left, top,
                         left + width, top + height], dim=1)
    out = roi_align(pixels.float(), boxes, output_size=size, spatial_scale=1.0,
                    sampling_ratio=2, aligned=True)
    flip = torch.rand(count, generator=generator, device=device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def check_arch(arch: str, data: dict[str, Any], args: argparse.Namespace,
               compute: Any) -> dict[str, Any]:
    """`arch`, full recipe, one epoch as `compute` (device, precision, channels_last) says."""
    import torch

    from catsdogs.inference.scorer import IMAGENET_MEAN, IMAGENET_STD
    from catsdogs.training.loading import TensorBatches, seed_everything
    from catsdogs.training.loop import make_step, predict, train_mode
    from catsdogs.training.metrics import classification_metrics
    from catsdogs.training.model import build_model, train_augment

    device = compute.device
    seed_everything(42)
    weights = _weights(arch)
    model = build_model(arch, weights)
    train_mode(model)
    step = make_step(model, 1e-4, compute)
    size = args.size
    cpu_batches = TensorBatches(data["train"], args.batch, shuffle=True, seed=1,
                                augment=train_augment(size))
    started = time.perf_counter()
    loader_images = sum(len(labels) for _images, labels in cpu_batches)
    loader_img_s = loader_images / (time.perf_counter() - started)

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    generator = torch.Generator(device=device).manual_seed(1)
    order = torch.Generator().manual_seed(1)

    def gpu_batches() -> Any:
        pixels, labels = data["train"].pixels, data["train"].labels
        permutation = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), args.batch):
            index = permutation[start:start + args.batch].sort().values
            if len(index) < 2:
                continue
            batch = pixels[index].pin_memory().to(device, non_blocking=True) \
                if device.type == "cuda" else pixels[index]
            yield (gpu_augment(batch, size, generator) - mean) / std, labels[index]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    held = [(images.to(device), labels.to(device))
            for images, labels in list(TensorBatches(data["train"], args.batch, shuffle=True,
                                                     seed=2))[:args.steps + 1]]
    step(*held[-1])
    sync()
    ceiling_s = []
    for images, labels in held[:args.steps]:
        started = time.perf_counter()
        step(images, labels)
        sync()
        ceiling_s.append(time.perf_counter() - started)
    ceiling_img_s = args.batch / statistics.median(ceiling_s)
    on_gpu = args.gpu_augment == "on" or (args.gpu_augment == "auto" and device.type == "cuda"
                                          and loader_img_s < 1.1 * ceiling_img_s)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seen = 0
    sync()
    started = time.perf_counter()
    for images, labels in (gpu_batches() if on_gpu else cpu_batches):
        step(images, labels)
        seen += len(labels)
    sync()
    loop_img_s = seen / (time.perf_counter() - started)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    test = TensorBatches(data["test"], args.batch, shuffle=False)
    labels, probs = predict(model, test, compute)
    metrics = classification_metrics(labels, probs)
    return {"run": f"{arch} full, 1 epoch ({weights} weights)", "loader": "GPU" if on_gpu else "CPU",
            "cpu_loader_img_s": loader_img_s, "loop_img_s": loop_img_s,
            "ceiling_img_s": ceiling_img_s, "efficiency": loop_img_s / ceiling_img_s,
            "gpu_gib": memory, "accuracy": metrics["accuracy"], "f1": metrics["f1"]}


def check_top_blocks(data: dict[str, Any], args: argparse.Namespace,
                     compute: Any) -> dict[str, Any]:
    """MobileNetV2 by the default top_blocks recipe as `compute` says."""
    import torch

    from catsdogs.config import load_params
    from catsdogs.training.loading import TensorBatches, seed_everything
    from catsdogs.training.loop import predict
    from catsdogs.training.metrics import classification_metrics
    from catsdogs.training.model import build_model
    from catsdogs.training.top_blocks import fit_top_blocks

    device = compute.device
    seed_everything(42)
    settings = load_params(REPO / "params.yaml", [f"train.batch_size={args.batch}"]).train
    weights = _weights("mobilenet_v2")
    model = build_model("mobilenet_v2", weights)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = fit_top_blocks(model, "mobilenet_v2", data["train"], data["val"], settings=settings,
                            compute=compute)
    wall = time.perf_counter() - started
    model.load_state_dict(result.best_state)
    labels, probs = predict(model, TensorBatches(data["test"], args.batch, shuffle=False),
                            compute)
    metrics = classification_metrics(labels, probs)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return {"run": f"mobilenet_v2 top_blocks, default params ({weights} weights)",
            "loader": "cached activations", "cpu_loader_img_s": math.nan,
            "loop_img_s": len(data["train"]) * settings.epochs / wall, "ceiling_img_s": math.nan,
            "efficiency": math.nan, "gpu_gib": memory, "accuracy": metrics["accuracy"],
            "f1": metrics["f1"], "wall_s": wall}


def _weights(arch: str) -> str:
    """ImageNet weights when torchvision's cache holds them (nothing is downloaded), else none."""
    from catsdogs.training.weights import checkpoint_dir

    files = {"mobilenet_v2": "mobilenet_v2-b0353104.pth", "resnet18": "resnet18-f37072fd.pth"}
    return "imagenet" if (checkpoint_dir() / files[arch]).exists() else "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--smoke", action="store_true",
                        help="64 px, 40 pictures per class, batch 16: checks the script on a CPU")
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--work", type=Path, default=Path("/tmp/catsdogs-gpu-check"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps of the compute-only ceiling")
    parser.add_argument("--archs", default="resnet18,mobilenet_v2")
    parser.add_argument("--gpu-augment", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from catsdogs.inference.compute import Compute
    from catsdogs.training.cache import load_split

    if args.device == "cuda" and not torch.cuda.is_available():
        log.error("no CUDA device visible to torch %s; run with --device cpu --smoke to check "
                  "the script on a CPU", torch.__version__)
        return 2
    device = torch.device(args.device)
    compute = Compute(device, "fp16" if device.type == "cuda" else "fp32", channels_last=True)
    args.size, per_class = (64, 40) if args.smoke else (224, None)
    if args.smoke:
        args.batch, args.steps = 16, 2
    torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    paths = build_splits(args.sample, args.work / str(args.size), args.size, per_class)
    data = {split: load_split(paths, split, args.size) for split in ("train", "val", "test")}
    prep_s = time.perf_counter() - started
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke)"
    results = [check_arch(arch, data, args, compute) for arch in args.archs.split(",")]
    if "mobilenet_v2" in args.archs:
        results.append(check_top_blocks(data, args, compute))
    print(f"\n{name}; torch {torch.__version__}; {compute.precision} AMP + channels_last; batch "
          f"{args.batch}; {len(data['train'])}/{len(data['val'])}/{len(data['test'])} pictures; "
          f"split + tensor cache {prep_s:.0f} s\n")
    print("| run | loader | CPU loader alone | training loop | compute-only ceiling | "
          "loader efficiency | peak GPU memory | test accuracy | test F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['loader']} | {r['cpu_loader_img_s']:.0f} img/s | "
              f"{r['loop_img_s']:.0f} img/s | {r['ceiling_img_s']:.0f} img/s | "
              f"{r['efficiency']:.1%} | {r['gpu_gib']:.2f} GiB | {r['accuracy']:.4f} | "
              f"{r['f1']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
