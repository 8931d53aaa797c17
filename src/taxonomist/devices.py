"""Which torch device a job runs on: ``auto`` takes the GPU when there is one, one config for both."""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["no", "bf16", "fp16"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None → ``cuda`` if torch sees a GPU, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given,
    refused with a clear error when that GPU is not there (rather than failing at the first tensor)."""
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA GPU (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (CPU for a module without any)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def resolve_precision(setting: str, device: str | torch.device) -> Precision:
    """Mixed precision for a run: ``auto`` = bf16 on a GPU that has it, fp16 on older GPUs, ``no`` (fp32)
    elsewhere; ``no``/``bf16``/``fp16`` as given."""
    if setting != "auto":
        if setting not in ("no", "bf16", "fp16"):
            raise ValueError(f"unknown mixed precision {setting!r}: use auto, no, bf16 or fp16")
        return setting  # type: ignore[return-value]
    if torch.device(device).type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


PRECISION_DTYPES: dict[str, torch.dtype] = {
    "no": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""The weights' dtype of each precision."""
