"""Efficiency report for any image model: size, FLOPs, throughput, latency and peak memory.

What a deployment decision needs beside the score: weight MB, memory MB and images/s.
FLOPs come from ``torch.utils.flop_counter`` (matmuls and convolutions, a multiply-add counted as 2;
elementwise ops are not counted). Timings run under ``torch.inference_mode`` after a warm-up, with a
CUDA synchronize around every timed call on GPU, so queued kernels are not mistaken for finished ones.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_MB = 1024**2


@dataclass
class EfficiencyReport:
    """One model at one image size on one device; throughput maps batch size → images/s."""

    device: str
    image_size: int
    dtype: str
    params_total: int
    params_trainable: int
    weight_mb: float
    gflops_per_image: float
    images_per_s_batch1: float
    best_batch_size: int
    images_per_s_best: float
    latency_ms_p50: float
    latency_ms_p95: float
    peak_memory_mb: float
    memory_increase_mb: float
    memory_kind: str
    """``cpu-peak-rss`` (process peak resident set) or ``cuda-max-allocated`` (tensors on the GPU)."""
    throughput: dict[int, float]
    inputs: str = "image"
    """What each timed item is: ``image``, or ``image + title (16 tokens)`` for listing heads."""
    runtime: str = "torch"
    """What the timings ran on, e.g. ``openvino bf16``; params, weight MB and GFLOPs are always counted on
    the torch modules."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: throughput keys become strings."""
        d = asdict(self)
        d["throughput"] = {str(k): v for k, v in self.throughput.items()}
        return d

    def to_markdown(self) -> str:
        rows = [
            ("device", self.device),
            ("runtime", self.runtime),
            ("inputs", self.inputs),
            ("image size", f"{self.image_size}×{self.image_size}"),
            ("dtype", self.dtype),
            ("params_total", f"{self.params_total:,}"),
            ("params_trainable", f"{self.params_trainable:,}"),
            ("weight_mb", f"{self.weight_mb:.2f}"),
            ("gflops_per_image", f"{self.gflops_per_image:.4g}"),
            ("images_per_s_batch1", f"{self.images_per_s_batch1:.1f}"),
            ("images_per_s_best", f"{self.images_per_s_best:.1f} (batch {self.best_batch_size})"),
            ("latency_ms_p50", f"{self.latency_ms_p50:.2f}"),
            ("latency_ms_p95", f"{self.latency_ms_p95:.2f}"),
            ("peak_memory_mb", f"{self.peak_memory_mb:.1f} ({self.memory_kind})"),
            ("memory_increase_mb", f"{self.memory_increase_mb:.1f}"),
        ]
        rows += [(f"images/s @ batch {b}", f"{v:.1f}") for b, v in self.throughput.items()]
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        return "\n".join(lines) + "\n"


def measure_efficiency(
    model: nn.Module,
    image_size: int,
    batch_sizes: Sequence[int] = (1, 8, 32),
    seconds: float = 2.0,
    device: str | torch.device | None = None,
    *,
    warmup: int = 3,
    inputs: str = "image",
    timed: nn.Module | None = None,
    runtime: str = "torch",
) -> EfficiencyReport:
    """Measure ``model`` called as ``model(images)`` on ``(B, 3, image_size, image_size)`` random inputs.

    ``device`` moves the model there (default: where its parameters are). Each batch size is timed for
    about ``seconds`` (at least 3 calls) after ``warmup`` untimed calls; batch 1 is always measured, for
    latency. Inputs take the dtype of the model's first floating parameter. Memory: on CPU the process
    peak RSS (``getrusage``, a lifetime peak) and how much this run raised it; on CUDA the peak of
    allocated tensor memory and its rise over what was allocated before the run. ``inputs``: what the
    model reads with each image (the report's label; a listing model brings its own title).

    ``timed``: the module timed instead of ``model``, e.g. the same network on an inference runtime,
    whose graphs hold no parameters or FLOPs torch can count: ``model`` then gives only those.
    ``runtime``: what ``timed`` runs on, for the report.
    """
    bad = [b for b in batch_sizes if b < 1]
    if bad:  # batch 0 timed empty calls and reported 0 images/s; a negative one failed inside torch
        raise ValueError(f"batch sizes must be at least 1, got {bad}")
    timed = model if timed is None else timed
    if device is not None:
        timed = timed.to(torch.device(device))
    device, dtype = _placement(timed)
    on_cuda = device.type == "cuda"
    params = list(model.parameters())
    tensors = params + list(model.buffers())
    modules = [model] if timed is model else [model, timed]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()

    def random_images(batch: int, where: tuple[torch.device, torch.dtype] = (device, dtype)) -> torch.Tensor:
        return torch.randn(batch, 3, image_size, image_size, device=where[0], dtype=where[1])

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    if on_cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        memory_before = torch.cuda.memory_allocated(device)
    else:
        memory_before = _peak_rss_bytes()
    try:
        with torch.inference_mode():
            counter = FlopCounterMode(display=False)
            with counter:
                model(random_images(1, _placement(model)))
            throughput, batch1_times = {}, []
            for batch in sorted({1, *batch_sizes}):
                times = _call_times(timed, random_images(batch), seconds, warmup, sync)
                throughput[batch] = batch * len(times) / sum(times)
                if batch == 1:
                    batch1_times = times
    finally:
        for m, mode in zip(modules, was_training, strict=True):
            m.train(mode)
    if on_cuda:
        peak = torch.cuda.max_memory_allocated(device)
        memory_kind = "cuda-max-allocated"
    else:
        peak = _peak_rss_bytes()
        memory_kind = "cpu-peak-rss"
    best = max(throughput, key=throughput.__getitem__)
    latency_ms = np.asarray(batch1_times) * 1000
    return EfficiencyReport(
        device=_device_name(device),
        image_size=image_size,
        dtype=str(dtype).removeprefix("torch."),
        params_total=sum(p.numel() for p in params),
        params_trainable=sum(p.numel() for p in params if p.requires_grad),
        weight_mb=sum(t.numel() * t.element_size() for t in tensors) / _MB,
        gflops_per_image=counter.get_total_flops() / 1e9,
        images_per_s_batch1=throughput[1],
        best_batch_size=best,
        images_per_s_best=throughput[best],
        latency_ms_p50=float(np.percentile(latency_ms, 50)),
        latency_ms_p95=float(np.percentile(latency_ms, 95)),
        peak_memory_mb=peak / _MB,
        memory_increase_mb=max(0, peak - memory_before) / _MB,
        memory_kind=memory_kind,
        throughput=throughput,
        inputs=inputs,
        runtime=runtime,
    )


def _placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of ``module``'s first floating parameter (CPU, float32 without one)."""
    floating = next((p for p in module.parameters() if p.is_floating_point()), None)
    return (floating.device, floating.dtype) if floating is not None else (torch.device("cpu"), torch.float32)


def _call_times(model: nn.Module, x: torch.Tensor, seconds: float, warmup: int, sync) -> list[float]:
    """Seconds of each timed call: ``warmup`` untimed calls, then at least 3 over about ``seconds``."""
    for _ in range(warmup):
        model(x)
    sync()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - start)
    return times


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({_cpu_model()}, {torch.get_num_threads()} threads)"
    return str(device)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
