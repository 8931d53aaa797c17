"""Diagnostic: OpenVINO int8 parity on the dev part under NNCF settings, to choose them on dev (issue 17).

Copies a heads run (without its exports) once per setting, exports OpenVINO int8 through
``taxonomist.inference.export.export_run`` with ``nncf.quantize`` given that setting, and prints the
parity report's score drop against torch on every dev row. The choice it informs is made on dev; the
runtimes benchmark reports on test. Usage: ``python benchmarks/int8_settings.py RUN [--config C]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import tempfile
from pathlib import Path

import nncf

from taxonomist.config import load_config
from taxonomist.inference.export import export_run

SETTINGS = {
    "fast bias correction, 256 rows": ({"fast_bias_correction": True}, 256),
    "fast bias correction, 512 rows": ({"fast_bias_correction": True}, 512),
    "mixed preset, 256 rows": ({"fast_bias_correction": True, "preset": nncf.QuantizationPreset.MIXED}, 256),
    "full bias correction, 256 rows": ({"fast_bias_correction": False}, 256),
}


def _forced(quantize, options: dict, *args, **kwargs):
    return quantize(*args, **{**kwargs, **options})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--config", default="configs/fashion.yaml")
    args = parser.parse_args()
    cfg = load_config(args.config, ["embed.runtime=torch", "embed.precision=fp32"])
    quantize = nncf.quantize
    for name, (options, rows) in SETTINGS.items():
        work = Path(tempfile.mkdtemp()) / "run"
        shutil.copytree(args.run, work, ignore=shutil.ignore_patterns("exports"))
        # The library's own export path, with this setting forced over what it passes.
        nncf.quantize = functools.partial(_forced, quantize, options)
        try:
            _, manifest = export_run(
                work, cfg, runtime="openvino", precision="int8", calibration_rows=rows,
                parity_rows=10**9, tolerance=1.0, progress=False,
            )  # fmt: skip
        finally:
            nncf.quantize = quantize
            shutil.rmtree(work.parent, ignore_errors=True)
        parity = manifest["parity"]
        keys = ("rows", "torch_score", "export_score", "score_drop")
        print(name, json.dumps({k: parity[k] for k in keys if k in parity}), flush=True)


if __name__ == "__main__":
    main()
