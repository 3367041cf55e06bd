"""Where training time goes, and the two training recipes side by side, on the real photo sample.

One run, on one machine, so the ratios hold even when absolute speeds vary:
1. The sample (../shared/data/petimages-sample) goes through the real ingest (dir:), validate,
   prepare and transform stages into a data dir (reused on the next run: the stages skip), and
   each split into the uint8 tensor cache.
2. Loader: the `full` recipe's training loop (tensor cache + crop/flip augmentation, then a full
   MobileNetV2 step) next to the compute-only ceiling (the same steps on batches already in
   memory), interleaved step by step, and the loader alone. Loader efficiency = loop / ceiling.
3. Precision and memory layout, chosen as training chooses them (`catsdogs.training.loop.choose`):
   the median training step of fp32, fp32 + channels_last and (only on a CPU with native
   bfloat16) bf16 + channels_last; `--compile` adds eager vs torch.compile for the chosen one.
4. Recipes: `top_blocks` (the default), `full` (the seed: 5 epochs, every layer, Adam 1e-4) and
   `top_blocks` with `train.mirror`,
   with MobileNetV2 ImageNet weights on the same split and the same precision: test accuracy,
   F1, ROC-AUC, confusion (the decision bias), wall time and the time to >= 98% test accuracy.
   Test accuracy is measured after every epoch (its time is left out of the wall).

Usage: .venv/bin/python benchmarks/train_speed.py [--work DIR] [--seed-epochs 5] [--steps 8]
       [--compile] [--skip-speed] [--skip-recipes] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "petimages-sample"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
TARGET = 0.98
log = logging.getLogger("train_speed")


def machine() -> str:
    """CPU model, the flags that decide precision, torch's kernel set, threads, load."""
    import torch

    from catsdogs.inference.compute import cpu_flags

    model = next((line.partition(":")[2].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = cpu_flags()
    present = ", ".join(f for f in FLAGS if f in flags) or "none of " + ", ".join(FLAGS)
    return (f"CPU {model}; flags {present}; torch {torch.__version__} kernels "
            f"{torch.backends.cpu.get_cpu_capability()}; {torch.get_num_threads()} threads; "
            f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")


def prepare(work: Path, params: Any) -> Any:
    """The pipeline's own stages on the sample: transformed/{train,val,test} as it splits."""
    from catsdogs.paths import DataPaths
    from catsdogs.stages import ingest, transform, validate
    from catsdogs.stages import prepare as prepare_stage

    paths = DataPaths(work / "data")
    for summary in (ingest.run(params, paths, source=f"dir:{SAMPLE}"),
                    validate.run(params, paths), prepare_stage.run(params, paths),
                    transform.run(params, paths)):
        log.info("%s: %s", summary.stage, summary.message)
    return paths


def load(paths: Any, size: int) -> tuple[dict[str, Any], float]:
    from catsdogs.training.cache import load_split

    started = time.perf_counter()
    data = {split: load_split(paths, split, size) for split in ("train", "val", "test")}
    return data, time.perf_counter() - started


def loader_efficiency(data: dict[str, Any], params: Any, compute: Any,
                      steps: int) -> dict[str, float]:
    """Loop vs compute-only ceiling (interleaved), and the loader alone, for the full recipe
    trained as `compute` (the chosen device, precision and layout) says."""
    import torch

    from catsdogs.training.loading import TensorBatches
    from catsdogs.training.loop import make_step, train_mode
    from catsdogs.training.model import build_model, train_augment

    size, batch = params.transform.image_size, params.train.batch_size
    batches = TensorBatches(data["train"], batch, shuffle=True, seed=1,
                            augment=train_augment(size))
    sum(len(labels) for _images, labels in batches)        # warm: the memory map is paged in
    started = time.perf_counter()
    count = sum(len(labels) for _images, labels in batches)
    loader = count / (time.perf_counter() - started)
    model = build_model("mobilenet_v2", "imagenet")
    train_mode(model)
    step = make_step(model, 1e-4, compute)
    stream = iter(batches)
    held = [next(stream) for _ in range(steps + 1)]
    step(*held[-1])                                        # warm-up
    loop_s: list[float] = []
    ceiling_s: list[float] = []
    for index in range(steps):
        started = time.perf_counter()
        inputs, labels = next(stream)
        step(inputs, labels)
        loop_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        step(*held[index])
        ceiling_s.append(time.perf_counter() - started)
    if compute.device.type == "cuda":
        torch.cuda.synchronize()
    loop, ceiling = statistics.median(loop_s), statistics.median(ceiling_s)
    return {"loader_img_s": loader, "loop_img_s": batch / loop, "ceiling_img_s": batch / ceiling,
            "efficiency": ceiling / loop,
            "bound": 1 / (1 + (batch / ceiling) / loader)}   # if loading never overlapped compute


def compile_speed(data: dict[str, Any], params: Any, compute: Any,
                  steps: int) -> dict[str, float]:
    """The chosen `compute` eager vs torch.compile (first step = compile time), interleaved."""
    from catsdogs.training.loading import TensorBatches
    from catsdogs.training.loop import make_step, train_mode
    from catsdogs.training.model import build_model

    inputs, labels = next(iter(TensorBatches(data["train"], params.train.batch_size,
                                             shuffle=True, seed=2)))
    stepper, first = {}, {}
    for compiled in (False, True):
        model = build_model("mobilenet_v2", "imagenet")
        train_mode(model)
        stepper[compiled] = make_step(model, 1e-4, compute, compiled)
        started = time.perf_counter()
        stepper[compiled](inputs, labels)
        first[compiled] = time.perf_counter() - started
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(steps):
        for compiled, step in stepper.items():
            started = time.perf_counter()
            step(inputs, labels)
            times[compiled].append(time.perf_counter() - started)
    return {"eager_img_s": len(labels) / statistics.median(times[False]),
            "compiled_img_s": len(labels) / statistics.median(times[True]),
            "compile_first_step_s": first[True], "eager_first_step_s": first[False]}


def run_recipe(name: str, params: Any, data: dict[str, Any], compute: Any) -> dict[str, Any]:
    """Train by `params.train.recipe` as `compute` says; test accuracy after each epoch, wall
    without it."""
    from catsdogs.training.loading import TensorBatches, seed_everything
    from catsdogs.training.loop import fit, predict
    from catsdogs.training.metrics import classification_metrics, confusion
    from catsdogs.training.model import build_model, train_augment
    from catsdogs.training.top_blocks import fit_top_blocks

    settings, size = params.train, params.transform.image_size
    seed_everything(settings.seed)
    test = TensorBatches(data["test"], settings.batch_size, shuffle=False)
    val = TensorBatches(data["val"], settings.batch_size, shuffle=False)
    points: list[tuple[str, float, float, float]] = []
    clock = {"start": time.perf_counter(), "excluded": 0.0,
             "cpu_start": time.process_time(), "cpu_excluded": 0.0}

    def elapsed() -> float:
        return time.perf_counter() - clock["start"] - clock["excluded"]

    def cpu() -> float:
        return time.process_time() - clock["cpu_start"] - clock["cpu_excluded"]

    def score(label: str) -> None:
        at, at_cpu = elapsed(), cpu()
        started, started_cpu = time.perf_counter(), time.process_time()
        labels, probs = predict(model, test, compute)
        accuracy = classification_metrics(labels, probs)["accuracy"]
        points.append((label, at, at_cpu, accuracy))
        log.info("%s %s: %.1f s (CPU %.1f s), test accuracy %.4f", name, label, at, at_cpu,
                 accuracy)
        clock["excluded"] += time.perf_counter() - started
        clock["cpu_excluded"] += time.process_time() - started_cpu

    model = build_model(params.model.arch, params.model.weights, 2, params.model.freeze_backbone)
    if settings.recipe == "full":
        train = TensorBatches(data["train"], settings.batch_size, shuffle=True,
                              seed=settings.seed, augment=train_augment(size))
        result = fit(model, train, val, epochs=settings.epochs, lr=settings.lr, compute=compute,
                     compile_model=settings.compile, on_epoch=lambda epoch, _m: score(f"epoch {epoch}"))
    else:
        result = fit_top_blocks(
            model, params.model.arch, data["train"], data["val"], settings=settings,
            compute=compute, on_epoch=lambda epoch, _m: score(f"epoch {epoch}"),
            on_head_epoch=lambda epoch, _m: (score("head") if epoch == settings.head_epochs
                                             else None))
    wall, cpu_s = elapsed(), cpu()
    model.load_state_dict(result.best_state)
    labels, probs = predict(model, test, compute)
    val_labels, val_probs = predict(model, val, compute)
    reached = next(((at, at_cpu) for _label, at, at_cpu, accuracy in points
                    if accuracy >= TARGET), (None, None))
    return {"recipe": name, "wall_s": wall, "cpu_s": cpu_s, "time_to_target_s": reached[0],
            "cpu_to_target_s": reached[1],
            "best_epoch": result.best_epoch, "points": points,
            "test": classification_metrics(labels, probs),
            "test_confusion": confusion(labels, probs),
            "val_confusion": confusion(val_labels, val_probs)}


def recipe_table(results: list[dict[str, Any]]) -> str:
    rows = ["| recipe | test accuracy | test F1 | ROC-AUC | test cats called dog | "
            "test dogs called cat | val cats→dog / dogs→cat | best epoch | wall (CPU) | "
            f"time to ≥ {TARGET:.0%}, wall (CPU) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        (tn, fp), (fn, tp) = r["test_confusion"]
        (vtn, vfp), (vfn, vtp) = r["val_confusion"]
        reached = (f"{r['time_to_target_s']:.0f} s ({r['cpu_to_target_s']:.0f} s)"
                   if r["time_to_target_s"] else "not reached")
        rows.append(f"| {r['recipe']} | {r['test']['accuracy']:.4f} | {r['test']['f1']:.4f} | "
                    f"{r['test']['roc_auc']:.4f} | {fp}/{tn + fp} | {fn}/{fn + tp} | "
                    f"{vfp}/{vtn + vfp} / {vfn}/{vfn + vtp} | {r['best_epoch']} | "
                    f"{r['wall_s']:.0f} s ({r['cpu_s']:.0f} s) | {reached} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/catsdogs-train-speed"))
    parser.add_argument("--seed-epochs", type=int, default=5,
                        help="epochs of the seed (full) recipe; 5 is the seed's own")
    parser.add_argument("--steps", type=int, default=8, help="steps per speed measurement")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-recipes", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="params override for both recipes (section.key=value)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not SAMPLE.is_dir():
        log.error("real photo sample not found at %s", SAMPLE)
        return 1
    from catsdogs.config import load_params
    from catsdogs.inference.compute import pick_device
    from catsdogs.training.loading import TensorBatches
    from catsdogs.training.loop import choose, probe_step
    from catsdogs.training.model import build_model
    from catsdogs.training.weights import seed_cache

    seed_cache()
    base = ["model.arch=mobilenet_v2", "model.weights=imagenet", *args.overrides]
    params = load_params(REPO / "params.yaml", base)
    device = pick_device()
    report: dict[str, Any] = {"machine": machine(), "device": str(device)}
    paths = prepare(args.work, params)
    data, report["cache_s"] = load(paths, params.transform.image_size)
    images, labels = next(iter(TensorBatches(data["train"], params.train.batch_size,
                                             shuffle=True)))
    choice = choose(params.train.precision, device, probe_step(
        build_model("mobilenet_v2", "imagenet"), images, labels, steps=args.steps // 2))
    report["choice"] = choice
    compute = choice.compute(device)
    if not args.skip_speed:
        report["loader"] = loader_efficiency(data, params, compute, args.steps)
        if args.compile:
            report["compile"] = compile_speed(data, params, compute, args.steps // 2)
    if not args.skip_recipes:
        seed = load_params(REPO / "params.yaml", [*base, "train.recipe=full",
                                                  f"train.epochs={args.seed_epochs}"])
        mirrored = load_params(REPO / "params.yaml", [*base, "train.mirror=true"])
        report["recipes"] = [run_recipe("top_blocks (default)", params, data, compute),
                             run_recipe(f"full (seed, {args.seed_epochs} epochs)", seed, data,
                                        compute),
                             run_recipe("top_blocks + mirror", mirrored, data, compute)]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{report['machine']}\ndevice {device}, chosen {choice.precision}"
          f"{' + channels_last' if choice.channels_last else ''}; tensor cache "
          f"(build or load) {report['cache_s']:.1f} s; load average now {os.getloadavg()[0]:.1f}")
    if "loader" in report:
        lo = report["loader"]
        print("\n| loader alone | training loop | compute-only ceiling | loader efficiency "
              "(loop / ceiling) | ceiling / (1 + ceiling / loader) |\n|---|---|---|---|---|\n"
              f"| {lo['loader_img_s']:.0f} img/s | {lo['loop_img_s']:.1f} img/s | "
              f"{lo['ceiling_img_s']:.1f} img/s | {lo['efficiency']:.1%} | {lo['bound']:.1%} |")
    print("\n| full MobileNetV2 training step (batch, median) | img/s |\n|---|---|\n" + "\n".join(
        f"| {k} | {v:.1f} |" for k, v in choice.measured.items()))
    if "compile" in report:
        print("\n" + ", ".join(f"{k} {v:.1f}" for k, v in report["compile"].items()))
    if "recipes" in report:
        print("\n" + recipe_table(report["recipes"]))
        fast, seed_run = report["recipes"][:2]
        if fast["time_to_target_s"] and seed_run["time_to_target_s"]:
            print(f"\ntime to ≥ {TARGET:.0%}: top_blocks "
                  f"{seed_run['time_to_target_s'] / fast['time_to_target_s']:.1f}x faster (wall), "
                  f"{seed_run['cpu_to_target_s'] / fast['cpu_to_target_s']:.1f}x (CPU time)")
        print(f"whole recipe: top_blocks {seed_run['wall_s'] / fast['wall_s']:.1f}x faster "
              f"(wall), {seed_run['cpu_s'] / fast['cpu_s']:.1f}x (CPU time)")
        for r in report["recipes"]:
            print(f"{r['recipe']}: " + "; ".join(
                f"{label} {at:.0f} s (CPU {at_cpu:.0f} s) acc {acc:.4f}"
                for label, at, at_cpu, acc in r["points"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
