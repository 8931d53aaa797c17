"""Benchmark: schema-constrained VLM attribute output vs unconstrained generation, batched.

No VLM weights are reachable from this machine or the lent GPU machines, so the model is a random-weight
Qwen2-VL built from a config: ``--size tiny`` (CPU smoke: hidden 64, 2 layers) or ``--size 2b``
(Qwen2-VL-2B-Instruct's real shapes and vocabulary, for GPU throughput). The schema and images are real:
fashion-product-images rows, categories and attribute values.

Per batch of the same images:
- constrained: ``VLMPredictor.generate`` (prompt build, xgrammar-masked decoding, parse, per-attribute
  confidences), i.e. the structured output a user gets;
- unconstrained: the same inputs through plain ``model.generate`` for exactly as many new tokens as the
  constrained batch took (forced with min/max_new_tokens), plus decoding to text.
``constrained_over_unconstrained`` = total constrained time / total unconstrained time. Every constrained
output must parse and be valid for its category (asserted).

Writes ``benchmarks/results/vlm.json`` and the VLM section of ``docs/benchmarks.md``.
Usage: ``python benchmarks/vlm.py [--size tiny|2b] [--images 64] [--batch-size 16]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import machine, replace_section, sync

from taxonomist.config import CatalogConfig, GenerateConfig, PromptConfig
from taxonomist.data.catalog import CATEGORY
from taxonomist.data.images import load_image
from taxonomist.data.prepare import load_catalog
from taxonomist.inference.vlm import VLMPredictor
from taxonomist.models.build import build_decoding
from taxonomist.models.vlm import random_vlm, write_metadata

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "vlm.json"
DOCS = ROOT / "docs" / "benchmarks.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size", choices=["tiny", "2b"], default="2b" if torch.cuda.is_available() else "tiny"
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-pixels", type=int, default=256 * 28 * 28)
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes; the fastest per batch counts.")
    args = parser.parse_args()

    catalog = load_catalog(CatalogConfig(limit=None, min_rows_per_category=0))
    schema = catalog.infer_schema()
    sample = catalog.subset(list(range(args.images)))
    paths = sample.image_paths()
    categories = sample.frame[CATEGORY].astype(str).tolist()
    images = [load_image(p) for p in paths]

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_vlm(
            Path(tmp) / "model", [json.dumps(schema.to_dict()), PromptConfig().attributes], size=args.size
        )
        write_metadata(
            model_dir,
            {"task": "attributes", "schema": schema.to_dict(), "model": {"max_pixels": args.max_pixels}},
        )
        predictor = VLMPredictor.from_pretrained(
            model_dir, decoding=build_decoding(GenerateConfig(batch_size=args.batch_size))
        )
        model, tokenizer = predictor.vlm.model, predictor.vlm.tokenizer
        order = predictor.order_by_length(images)
        batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]

        def constrained(batch: list[int]):
            return predictor.generate([images[k] for k in batch], [categories[k] for k in batch])

        def unconstrained(batch: list[int], n_tokens: int) -> None:
            inputs = predictor.inputs([images[k] for k in batch], [categories[k] for k in batch])
            with torch.no_grad():
                out = model.generate(
                    **inputs, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False
                )
            tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

        # Warm-up (kernels, grammar compilation) and the new-token count of each batch: greedy decoding is
        # deterministic, so the timed constrained passes produce the same counts.
        n_tokens = [max(g[0].n_tokens for g in constrained(batch)) for batch in batches]
        valid = total = tokens = 0
        # Per batch, the fastest of the repeats for each mode (timeit's rule: other load only adds time),
        # with the two modes alternating first so neither always runs on a warmer cache.
        best_c = [float("inf")] * len(batches)
        best_u = [float("inf")] * len(batches)
        for repeat in range(args.repeats):
            for b, batch in enumerate(batches):
                for mode in "cu" if (repeat + b) % 2 == 0 else "uc":
                    sync()
                    start = time.perf_counter()
                    if mode == "c":
                        results = constrained(batch)
                    else:
                        unconstrained(batch, n_tokens[b])
                    sync()
                    elapsed = time.perf_counter() - start
                    if mode == "c":
                        best_c[b] = min(best_c[b], elapsed)
                        n_tokens[b] = max(g[0].n_tokens for g in results)
                        for k, gens in zip(batch, results, strict=True):
                            g = gens[0]
                            total += 1
                            tokens += g.n_tokens
                            valid += int(
                                g.error is None
                                and set(g.values) == set(schema.attributes_of(categories[k]))
                                and all(schema.is_valid(categories[k], a, v) for a, v in g.values.items())
                            )
                    else:
                        best_u[b] = min(best_u[b], elapsed)
        t_constrained, t_unconstrained = sum(best_c), sum(best_u)
        params = sum(p.numel() for p in model.parameters())

    result = {
        "device": machine(),
        "model": f"random-weight Qwen2-VL, {args.size} shapes ({params / 1e6:.1f}M params)",
        "note": (
            "tiny random model on CPU: validity and relative cost of constraints only, not real-model speed"
            if args.size == "tiny"
            else "Qwen2-VL-2B-Instruct shapes with random weights (no hub weights reachable)"
        ),
        "dtype": str(model.dtype),
        "images": args.images,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "max_pixels": args.max_pixels,
        "categories": sorted(set(categories)),
        "constrained_valid_fraction": valid / total,
        "constrained_seconds": t_constrained,
        "unconstrained_seconds": t_unconstrained,
        "constrained_over_unconstrained": t_constrained / t_unconstrained,
        "images_per_s": args.images / t_constrained,
        "unconstrained_images_per_s": args.images / t_unconstrained,
        "tokens_per_s": tokens / args.repeats / t_constrained,
        "mean_answer_tokens": tokens / total,
    }
    assert result["constrained_valid_fraction"] == 1.0, result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_docs(result)
    print(json.dumps(result, indent=1))


def write_docs(r: dict) -> None:
    text = (
        "## VLM structured attribute output (schema-constrained decoding)\n\n"
        f"`python benchmarks/vlm.py --size {r['model'].split(', ')[1].split(' ')[0]}` on {r['device']}: "
        f"{r['model']}, {r['dtype']}; {r['images']} fashion-product-images images, "
        f"fastest of {r['repeats']} passes per batch, "
        f"batch {r['batch_size']}, max_pixels {r['max_pixels']}; {r['note']}.\n\n"
        "| metric | value |\n| --- | ---: |\n"
        f"| constrained outputs valid for their category | {r['constrained_valid_fraction']:.0%} |\n"
        f"| constrained / unconstrained time (same images, same new-token count) | "
        f"{r['constrained_over_unconstrained']:.2f}× |\n"
        f"| images/s, constrained structured output | {r['images_per_s']:.1f} |\n"
        f"| images/s, unconstrained | {r['unconstrained_images_per_s']:.1f} |\n"
        f"| generated tokens/s (constrained) | {r['tokens_per_s']:.0f} |\n"
        f"| mean answer tokens | {r['mean_answer_tokens']:.1f} |\n"
    )
    replace_section(DOCS, "## VLM structured attribute output", text)


if __name__ == "__main__":
    main()
