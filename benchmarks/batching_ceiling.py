"""Benchmark: how much batching alone can speed up image backbones on this machine.

A batched pipeline cannot beat a one-image-at-a-time loop by more than the backbone's own
``images/s at its best batch size / images/s at batch 1``, whenever the backbone forward is most of a
one-image call (it is here: the single loop over ``Predictor.predict`` runs within 20% of the bare
batch-1 forward). This measures that ceiling for the shipped backbone (efficientnet-lite0, pretrained)
and for the seed systems' families at their real shapes with random weights built from configs
(ConvNeXt-T, CLIP ViT-B/16 and SigLIP-B/16 image towers; no hub weights are reachable here), loaded
through ``create_backbone`` like a user's model and optimised for inference as ``predict`` does.

Writes ``benchmarks/results/batching-ceiling.json`` and its table in ``docs/benchmarks.md``.
Usage: ``python benchmarks/batching_ceiling.py [--seconds 4] [--batch-sizes 1 8 32]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers
from common import machine, replace_section, sync

from taxonomist.models.backbones import Backbone, create_backbone

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "batching-ceiling.json"
DOCS = ROOT / "docs" / "benchmarks.md"

# Real shapes of the seed systems' backbone families (the configs' defaults are these sizes).
HF_CONFIGS = {
    "ConvNeXt-T (random weights)": lambda: transformers.ConvNextConfig(),
    "CLIP ViT-B/16 image tower (random weights)": lambda: transformers.CLIPConfig(
        vision_config={"patch_size": 16, "image_size": 224}
    ),
    "SigLIP-B/16 image tower (random weights)": lambda: transformers.SiglipConfig(
        vision_config={"patch_size": 16, "image_size": 224}
    ),
}


def images_per_s(backbone: Backbone, batch_size: int, seconds: float) -> float:
    """Steady-state throughput of the pooled-feature forward on random input, after one warm-up call."""
    size = backbone.preprocess.size
    x = torch.randn(batch_size, 3, size, size)
    with torch.inference_mode():
        backbone(x)
        sync()
        n, start = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - start < seconds:
            backbone(x)
            n += batch_size
        sync()
    return n / (time.perf_counter() - start)


def measure(backbone: Backbone, batch_sizes: list[int], seconds: float) -> dict:
    by_batch = {bs: images_per_s(backbone, bs, seconds) for bs in batch_sizes}
    best = max(by_batch, key=by_batch.__getitem__)
    return {
        "params_m": sum(p.numel() for p in backbone.parameters()) / 1e6,
        "image_size": backbone.preprocess.size,
        "images_per_s_by_batch": by_batch,
        "best_batch": best,
        "ceiling": by_batch[best] / by_batch[batch_sizes[0]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    if args.batch_sizes[0] != 1:
        parser.error("--batch-sizes must start with 1: the ceiling is relative to one image at a time")

    backbones = {}
    print("efficientnet-lite0 (pretrained) ...", flush=True)
    backbones["efficientnet-lite0 (pretrained)"] = measure(
        create_backbone("efficientnet-lite0"), args.batch_sizes, args.seconds
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, make_config in HF_CONFIGS.items():
            print(f"{name} ...", flush=True)
            path = Path(tmp) / name.split()[0]
            make_config().save_pretrained(path)
            backbone = create_backbone(str(path), pretrained=False)
            backbones[name] = measure(backbone, args.batch_sizes, args.seconds)
            del backbone

    result = {
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "seconds_per_point": args.seconds,
        "backbones": backbones,
        "max_ceiling": max(b["ceiling"] for b in backbones.values()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_docs(result, args.batch_sizes)
    print(json.dumps(result, indent=1))


def serving_bound(r: dict) -> list[str]:
    """The serving target's bound: even free HTTP, decoding and load clients leave the network's best."""
    serve = ROOT / "benchmarks" / "results" / "serve.json"
    if not serve.exists():
        return []
    batch1 = json.loads(serve.read_text(encoding="utf-8"))["runs"]["batch1"]["images_per_s"]
    best = max(r["backbones"]["efficientnet-lite0 (pretrained)"]["images_per_s_by_batch"].values())
    return [
        "",
        f"Serving (target ≥ 3× batch-size-1 serving): batch-1 serving measured {batch1:.1f} img/s "
        f"(benchmarks/results/serve.json), and the shipped backbone's best batched rate is {best:.1f} "
        f"img/s, so dynamic batching could reach at most {best / batch1:.2f}× even if HTTP, decoding, "
        "the heads and the 16 load clients sharing the 2 cores cost nothing.",
        "",
    ]


def write_docs(r: dict, batch_sizes: list[int]) -> None:
    head = "| backbone | params | px | " + " | ".join(f"img/s at batch {b}" for b in batch_sizes)
    lines = [
        "## How much batching can buy on this machine (backbones alone)",
        "",
        f"`python benchmarks/batching_ceiling.py` on {r['machine']}, {r['torch_threads']} torch threads, "
        f"{r['seconds_per_point']:.0f} s per point, random input, eval mode after "
        "torch eager mode.",
        "",
        head + " | best batch ÷ batch 1 |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in batch_sizes) + " | ---: |",
        *[
            f"| {name} | {b['params_m']:.1f} M | {b['image_size']} | "
            + " | ".join(f"{v:.1f}" for v in b["images_per_s_by_batch"].values())
            + f" | {b['ceiling']:.2f}× |"
            for name, b in r["backbones"].items()
        ],
        "",
        "A CPU's convolutions and matrix products already keep both cores busy at batch 1, so batching "
        f"buys at most {r['max_ceiling']:.2f}× on any of these networks here. That bounds "
        "`batched_vs_single` (image → attributes, target ≥ 5×) on this machine whatever the pipeline "
        "around the network does, since the one-image loop runs close to the bare batch-1 forward.",
        *serving_bound(r),
        "Both targets assume an accelerator, where batch 1 leaves most of the device idle.",
        "",
    ]
    replace_section(DOCS, "## How much batching can buy", "\n".join(lines))


if __name__ == "__main__":
    main()
