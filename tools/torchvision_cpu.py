"""Environment fix: PyPI's CUDA-built torchvision importable next to a CPU-only torch.

transformers imports torchvision whenever it is installed (the ``vlm`` extra installs it for the Qwen2-VL
processors), and PyPI only ships a CUDA build of torchvision 0.28, whose ``_C.so`` cannot load against
the CPU torch wheel: every transformers model import (peft, sentence-transformers, the VLMs) then dies
with ``operator torchvision::nms does not exist``. When (and only when) ``_C.so`` fails to load, this
hook defines the ``nms``/``qnms`` op schemas with a pure-PyTorch CPU kernel before torchvision runs. On
a CUDA machine ``_C.so`` loads and nothing is changed.

It belongs to the environment, not to taxonomist: ``python tools/torchvision_cpu.py install`` (run by
``make install`` on CPU-only torch with torchvision present) copies this file into site-packages with a
``.pth`` line that installs the hook at interpreter start, so ``import peft`` works in any script and
``import taxonomist`` changes nothing. The hook is lazy: torch is imported only when something imports
torchvision. ``python tools/torchvision_cpu.py uninstall`` removes it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

MODULE = "torchvision_cpu"

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
    if "taxonomist._torchvision" in sys.modules:
        # A taxonomist from before this fix installs its own hook on import; it defines the same ops,
        # and a second registration of the namespace would fail, so leave the job to it.
        return
    import torch

    with contextlib.suppress(AttributeError, RuntimeError):
        torch.ops.torchvision.nms  # noqa: B018 - already there (a real build, or defined by another hook)
        return

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


def _needed() -> bool:
    """CPU-only torch with torchvision installed: the one environment where the import breaks."""
    import torch

    return torch.version.cuda is None and importlib.util.find_spec("torchvision") is not None


def main(argv: list[str]) -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    module, pth = site / f"{MODULE}.py", site / f"{MODULE}.pth"
    command = argv[0] if argv else ""
    if command == "install":
        if not _needed():
            print("torchvision_cpu: not needed here (CUDA torch, or no torchvision); nothing installed")
            return 0
        shutil.copyfile(__file__, module)
        pth.write_text(f"import {MODULE}; {MODULE}.install_hook()\n", encoding="utf-8")
        print(f"torchvision_cpu: hook installed in {site}")
        return 0
    if command == "uninstall":
        for path in (module, pth):
            path.unlink(missing_ok=True)
        return 0
    print("usage: python tools/torchvision_cpu.py install|uninstall", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
