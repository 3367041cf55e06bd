"""`--max-isa` of the benchmarks: cap the instruction set that oneDNN and torch's own kernels use,
so a figure measured on an AVX-512 machine can be compared with one from an AVX2-only machine.

Set before anything loads torch; every child process inherits the caps."""

from __future__ import annotations

import os

# oneDNN's names (ONEDNN_MAX_CPU_ISA), lowest first, and torch's own kernels' level
MAX_ISA = {"SSE41": "default", "AVX": "default", "AVX2": "avx2", "AVX2_VNNI": "avx2",
           "AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512", "AVX512_CORE_BF16": "avx512",
           "AVX512_CORE_AMX": "avx512"}


def cap_isa(max_isa: str) -> None:
    """Cap oneDNN (ONEDNN_MAX_CPU_ISA) and torch's kernels (ATEN_CPU_CAPABILITY) at `max_isa`, one
    of `MAX_ISA`'s keys. Raises KeyError for another name."""
    capability = MAX_ISA[max_isa]
    os.environ["ONEDNN_MAX_CPU_ISA"] = max_isa
    os.environ["ATEN_CPU_CAPABILITY"] = capability
