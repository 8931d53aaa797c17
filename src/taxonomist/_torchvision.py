"""Make PyPI's CUDA-built torchvision importable next to a CPU-only torch.

transformers' Qwen2-VL processor needs torchvision (its video processor), and PyPI only ships a CUDA
build of torchvision 0.28, whose ``_C.so`` cannot load against the CPU torch wheel; its import then dies
with ``operator torchvision::nms does not exist``. When (and only when) ``_C.so`` fails to load, this
module defines the ``nms``/``qnms`` op schemas with a pure-PyTorch CPU kernel before torchvision runs,
so everything the processors use imports. On a CUDA machine ``_C.so`` loads and nothing is changed.

:func:`install_hook` is lazy (torch is imported only when something imports torchvision) and is called
from ``taxonomist/__init__.py`` so the fix is in place before any code path can import torchvision.
Adapted from the shim in the project's environment notes.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Any

_state: dict[str, Any] = {"done": False, "library": None}


def _nms_cpu(dets, scores, iou_threshold: float):
    import torch

    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    xx1 = torch.maximum(x1[:, None], x1[None, :])
    yy1 = torch.maximum(y1[:, None], y1[None, :])
    xx2 = torch.minimum(x2[:, None], x2[None, :])
    yy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _define_missing_ops() -> None:
    _state["done"] = True
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    so = os.path.join(next(iter(spec.submodule_search_locations)), "_C.so")
    try:
        torch.ops.load_library(so)  # a torchvision built for this torch: nothing to fix
        return
    except (OSError, ImportError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", _nms_cpu, "CPU")
    _state["library"] = library


def _allow_python_nms() -> None:
    if _state["library"] is not None:
        import torchvision.ops.boxes as boxes

        boxes._assert_has_ops = lambda: None


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        # transformers also calls find_spec only to test availability, so the hook stays in place
        # until the module is really executed.
        if name != "torchvision":
            return None
        if not _state["done"]:
            _define_missing_ops()
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("torchvision")
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        hook = self

        def exec_then_patch(module):
            if hook in sys.meta_path:
                sys.meta_path.remove(hook)
            exec_module(module)
            _allow_python_nms()

        spec.loader.exec_module = exec_then_patch
        return spec


def install_hook() -> None:
    """Fix torchvision's import when it happens; a no-op if it already happened."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
