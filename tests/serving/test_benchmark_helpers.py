"""The pure helpers of benchmarks/serve_load.py (the per-request CPU split, the targets as
ratios, the CPU description) and benchmarks/decode_cost.py (the pixel parity measure). No
timing: speed lives in the benchmarks themselves."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from catsdogs.inference.compute import cpu_description

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


serve_load = load("serve_load")
decode_cost = load("decode_cost")


def test_cpu_split_assigns_each_part_per_request() -> None:
    sample = serve_load.CpuSample
    before = sample(api=10.0, decode=2.0, model=20.0, model_main=1.0, other=0.5, generator=3.0)
    after = sample(api=10.5, decode=2.2, model=21.0, model_main=1.1, other=0.52, generator=3.05)
    split = serve_load.cpu_split(before, after, 100)
    expected = {"decode": 2.0, "network": 9.0, "api_http": 3.0, "model_loop": 1.0,
                "supervisor": 0.2, "generator": 0.5, "http_batching": 4.2, "total": 15.2}
    assert split == pytest.approx(expected)
    # the parts add up to the service's total
    assert split["decode"] + split["network"] + split["http_batching"] \
        == pytest.approx(split["total"])
    with pytest.raises(ValueError, match="requests must be >= 1"):
        serve_load.cpu_split(before, after, 0)


def test_decode_counter_is_read_from_a_real_exposition() -> None:
    registry = CollectorRegistry()
    counter = Counter(serve_load.DECODE_METRIC, "decode CPU", ["worker"], registry=registry)
    counter.labels(worker="1").inc(1.25)
    counter.labels(worker="2").inc(0.5)
    other = Counter("catsdogs_predictions", "other", registry=registry)
    other.inc(7)
    text = generate_latest(registry).decode()
    assert serve_load.counter_total(text, serve_load.DECODE_METRIC) == pytest.approx(1.75)
    with pytest.raises(KeyError, match="not in the metrics"):
        serve_load.counter_total(text, "catsdogs_missing")


def test_service_name_and_cpu_sample_of_a_real_process_tree() -> None:
    assert serve_load.service_name(["python", "-m", "x", "--service-name", "catsdogs_model",
                                    "--fd", "3"]) == "catsdogs_model"
    assert serve_load.service_name(["python", "-m", "x"]) is None
    # this process is no BentoML worker: everything it used is `other`, and a busy second
    # thread's CPU counts in the process total although only totals are read
    stop = threading.Event()
    worker = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
    before = serve_load.sample_cpu(os.getpid(), None)
    worker.start()
    time.sleep(0.2)
    stop.set()
    worker.join()
    after = serve_load.sample_cpu(os.getpid(), None)
    assert after.other > before.other and after.api == after.model == after.decode == 0.0


def test_targets_are_ratios_of_the_same_run() -> None:
    results = {"bentoml": {1: (50.0, 19.0, 30.0, 0), 32: (150.0, 200.0, 300.0, 0)},
               "flask": {1: (40.0, 20.0, 25.0, 0), 32: (35.0, 900.0, 1000.0, 0)}}
    lines = serve_load.target_lines(results)
    assert lines[0].startswith("target c=32 throughput >= 4x the baseline: met (4.29x)")
    assert lines[1].startswith("target c=32 p99 <= 1/3 of the baseline's: met (0.30")
    assert lines[2].startswith("target c=1 p50 no worse than the baseline: met")
    results["bentoml"][32] = (130.0, 200.0, 400.0, 0)
    assert [line.split(":")[1].split()[0] for line in serve_load.target_lines(results)[:2]] \
        == ["MISSED", "MISSED"]
    assert serve_load.target_lines({"bentoml": {8: (1.0, 1.0, 1.0, 0)},
                                    "flask": {8: (1.0, 1.0, 1.0, 0)}}) == []


def test_network_ceiling_is_cpus_over_the_network_cost() -> None:
    # the figures: 149 req/s, 5.82 network CPU-ms a request on 2 CPUs -> 344 req/s, 43%
    line = serve_load.ceiling_line(149.0, 5.82, 2)
    assert line.startswith("target c=32 throughput >= 60% of the network-only ceiling: MISSED "
                           "(149 of 344 req/s, 43%;")
    assert "met (250 of 400 req/s, 62%" in serve_load.ceiling_line(250.0, 10.0, 4)
    with pytest.raises(ValueError, match="network_ms > 0"):
        serve_load.ceiling_line(149.0, 0.0, 2)
    with pytest.raises(ValueError, match="cpus >= 1"):
        serve_load.ceiling_line(149.0, 5.82, 0)


def test_cpu_description_names_the_flags_and_the_isa_cap() -> None:
    cpuinfo = ("model name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_bf16 "
               "amx_int8\n")
    text = cpu_description(cpuinfo, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert text.startswith("Some CPU, ")
    assert "flags: avx2 avx512f avx512_vnni amx_bf16 amx_int8" in text
    assert text.endswith("capped: ONEDNN_MAX_CPU_ISA=AVX2")
    assert "capped" not in cpu_description(cpuinfo, {})


def test_parity_counts_differences_and_skips_failures() -> None:
    reference = [np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 200, np.uint8)]
    same = [r.copy() for r in reference]
    assert decode_cost.parity(reference, same) == (0, 0.0, 0)
    changed = [r.copy() for r in reference]
    changed[1][0, 0, 0] = 203
    worst, share, pictures = decode_cost.parity(reference, [None, changed[1]])
    assert (worst, pictures) == (3, 1) and share == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match="shape"):
        decode_cost.parity(reference, [np.zeros((3, 3, 3), np.uint8), None])
