"""The CNN: architecture factory, THE evaluation transform, the training augmentation, the CPU's
bfloat16 support and mixed precision.

Used by train (val/test), evaluate and the Bento service, so a picture is preprocessed the same
way everywhere. Stage modules import this module inside their functions (it imports torch).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ARCHES: tuple[str, ...] = ("resnet18", "mobilenet_v2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(arch: str = "resnet18", weights: str = "imagenet", num_classes: int = 2,
                freeze_backbone: bool = False) -> torch.nn.Module:
    """A torchvision `arch` with its classifier head replaced by `num_classes` outputs.

    `weights`: "imagenet" (torchvision's weights, from the $TORCH_HOME cache or downloaded),
    "none" (random init) or a path to a state-dict file for the full network (either the
    ImageNet 1000-class network or this 2-class one). `freeze_backbone` trains only the head.
    """
    from catsdogs.training.weights import backbone_weights, load_state_dict_file

    if arch not in ARCHES:
        from catsdogs.errors import UserError

        raise UserError(f"model.arch={arch!r} is not supported; use one of {', '.join(ARCHES)}")
    import torchvision

    factory = getattr(torchvision.models, arch)
    net = factory(weights=backbone_weights(arch, weights))
    state = load_state_dict_file(weights) if weights not in ("imagenet", "none") else None
    if state is not None and _head_outputs(state) != num_classes:
        net.load_state_dict(state)
        state = None
    if freeze_backbone:
        for parameter in net.parameters():
            parameter.requires_grad = False
    _replace_head(net, arch, num_classes)
    if state is not None:
        net.load_state_dict(state)
    return net


def _head_outputs(state: dict[str, torch.Tensor]) -> int:
    """Number of classes a state dict's last layer predicts."""
    last_bias = [key for key in state if key.endswith(".bias")][-1]
    return int(state[last_bias].shape[0])


def _replace_head(net: torch.nn.Module, arch: str, num_classes: int) -> None:
    if arch == "resnet18":
        net.fc = torch.nn.Linear(net.fc.in_features, num_classes)
    else:
        last = net.classifier[-1]
        net.classifier[-1] = torch.nn.Linear(last.in_features, num_classes)


def square_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """The geometric half of the evaluation transform for an already decoded picture: RGB and
    `catsdogs.data.images.square` (the transform stage's resize, so a presized picture passes
    unchanged), as an H,W,3 uint8 array: the pixels `catsdogs.data.images.square_image` gives the
    service for the same file. `normalize` is the other half."""
    from catsdogs.data.images import square, to_rgb

    return np.array(square(to_rgb(image), image_size))


def eval_resize(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """`square_pixels` as a 3,H,W uint8 tensor (for datasets; picklable for loader workers)."""
    return functools.partial(_square_chw, image_size=image_size)


def _square_chw(image: Image.Image, image_size: int) -> torch.Tensor:
    return torch.from_numpy(square_pixels(image, image_size)).permute(2, 0, 1).contiguous()


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """The other half: uint8 pixels (3,H,W or N,3,H,W, any memory layout) to float32 scaled to
    [0, 1] and ImageNet-normalised; the same arithmetic as torchvision's ToTensor + Normalize."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return pixels.float().div_(255).sub_(mean).div_(std)


def eval_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """THE evaluation transform: `eval_resize` then `normalize` (float32 3,H,W)."""
    from torchvision import transforms

    return transforms.Compose([eval_resize(image_size), normalize])


def train_augment(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The `full` recipe's augmentation on one uint8 3,S,S picture (torchvision transforms v2):
    random resized crop (scale 0.6-1.0) and horizontal flip. The crop zooms in by 1.12x on
    average while evaluation sees the whole squashed frame (see docs/training.md, bias)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
                       v2.RandomHorizontalFlip()])


def train_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """`train_augment` for a PIL picture, then normalisation (float32 3,S,S)."""
    from torchvision.transforms import v2

    from catsdogs.data.images import to_rgb

    return v2.Compose([to_rgb, v2.PILToTensor(), train_augment(image_size), normalize])


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags")
            for flag in line.partition(":")[2].split()}


CPU_FLAGS_OF_INTEREST = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                         "amx_int8")  # what decides the kernels fp32, bf16 and INT8 get
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")  # caps on oneDNN's / ATen's kernels


def cpu_description(cpuinfo: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """One line: the CPU model, the `CPU_FLAGS_OF_INTEREST` it has (bf16 needs avx512_bf16 or
    AMX; INT8 gains from VNNI/AMX), its core count and the instruction-set caps in force
    (`ISA_CAPS`: oneDNN in torch and OpenVINO honours ONEDNN_MAX_CPU_ISA, ATen's own kernels
    ATEN_CPU_CAPABILITY). `cpuinfo`/`environ`: default /proc/cpuinfo and os.environ."""
    import os

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    environ = os.environ if environ is None else environ
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    wanted = " ".join(f for f in CPU_FLAGS_OF_INTEREST if f in flags)
    caps = [f"{name}={environ[name]}" for name in ISA_CAPS if environ.get(name)]
    return (f"{model}, {os.cpu_count()} CPUs, flags: "
            + (wanted or "none of " + "/".join(CPU_FLAGS_OF_INTEREST))
            + (f"; capped: {' '.join(caps)}" if caps else ""))


# ONEDNN_MAX_CPU_ISA values below which oneDNN (torch's and OpenVINO's) uses no bf16 instructions
ISA_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                    "AVX512_CORE_VNNI")


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bfloat16 matrix support (AVX512-BF16 or AMX) that oneDNN may use
    (ONEDNN_MAX_CPU_ISA, when set, can cap it below); emulated bf16 (AVX2 only) is several times
    slower than fp32."""
    import os

    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in ISA_WITHOUT_BF16:
        return False
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for `precision` in {fp32, bf16, fp16} on `device` (fp32: a no-op)."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
