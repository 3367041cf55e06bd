"""Where and how a network runs: the device, the precision and the memory layout (`Compute`), the
rules that choose them per machine, and the CPU facts those rules read (bfloat16 support, a
one-line description for measurements).

Training, evaluation, the reference profile and serving all take one `Compute` instead of a
(device, precision, channels_last) triple. Training *measures* which precision and layout is
fastest (`catsdogs.training.loop.choose`); the rules here give the candidates and the defaults.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from catsdogs.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# `train.precision: auto` on a CPU with native bfloat16 (AVX512-BF16/AMX): measured by
# benchmarks/train_quality.py on the real sample (see docs/training.md for the figures).
CPU_AUTO_PRECISION_BF16 = True


@dataclass(frozen=True)
class Compute:
    """How a network runs: on `device`, in `precision` (fp32, bf16 or fp16: mixed precision by
    autocast for training and evaluation; the serving scorer casts weights instead), with
    activations in channels_last memory layout or not."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        object.__setattr__(self, "device", torch.device(self.device))

    @classmethod
    def resolve(cls, requested: str, device: torch.device | None = None,
                channels_last: bool | None = None) -> Compute:
        """`requested` (`train.precision`: auto, fp32, bf16, fp16) on `device` (default:
        `pick_device`) by `resolve_precision`; `channels_last` None: `uses_channels_last`.
        Raises UserError for fp16 without CUDA."""
        device = pick_device() if device is None else device
        precision = resolve_precision(requested, device)
        return cls(device, precision,
                   uses_channels_last(device, precision) if channels_last is None
                   else channels_last)

    @classmethod
    def serving(cls, device: torch.device, precision: str = "fp32") -> Compute:
        """The serving network's: channels_last always (the service's uint8 N,H,W,3 pixels
        already are), fp32 or bf16."""
        return cls(device, precision, channels_last=True)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def dtype(self) -> torch.dtype:
        """The precision's torch dtype (float32, bfloat16, float16)."""
        return DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Mixed precision for this precision on this device (fp32: a no-op)."""
        return autocast(self.device, self.precision)

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """`batch` on the device, a 4-d one in this memory layout (other shapes as they are)."""
        batch = batch.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=self.memory_format) if batch.dim() == 4 else batch


def pick_device() -> torch.device:
    """CUDA when torch sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def serving_device(wanted: str) -> torch.device:
    """The service's device for `CATSDOGS_DEVICE` (auto, cpu, cuda): auto takes CUDA when
    torch sees a GPU; cuda without a GPU and anything else mean the CPU."""
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto`: fp16 AMP on CUDA, bf16 on CPUs with native bfloat16, else fp32. Raises
    UserError for fp16 on a CPU."""
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if CPU_AUTO_PRECISION_BF16 and cpu_supports_bf16() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs a CUDA GPU; on a CPU use auto, bf16 or fp32")
    return requested


def uses_channels_last(device: torch.device, precision: str) -> bool:
    """The default layout: channels_last on CUDA and with bf16 (oneDNN's bf16 kernels want it)."""
    return device.type == "cuda" or precision == "bf16"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for `precision` in {fp32, bf16, fp16} on `device` (fp32: a no-op)."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


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
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in ISA_WITHOUT_BF16:
        return False
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
