"""Benchmark: the VLM self-consistency loop (``taxonomist vlm improve``, seed 003) on fashion-product-images.

Rounds start from ``--model``: an SFT run folder or model folder, or ``tiny`` / ``2b`` for a random-weight
Qwen2-VL built from a config (no VLM weights can be downloaded here). Each round samples K reasoning +
constrained-JSON chains per pool item, votes per attribute, builds (chosen, rejected) pairs from the items
whose agreement reaches the threshold, trains DPO with LoRA and scores the merged model on validation
items. The pool is a seeded slice of the training split: its labels are only used to check the vote
(majority vs single sample), never to train. With a random model every count and timing is real, but the
accuracies are a random model's: the CPU run shows the loop end to end, a lent GPU with a fine-tuned
model gives the figures that matter (docs/gpu.md).

Writes ``benchmarks/results/vlm-improve-fpi.json`` and a section of ``docs/benchmarks.md``.
Usage: ``python benchmarks/vlm_improve.py [--model tiny|2b|DIR] [--pool 48] [--val 24] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, replace_section

from taxonomist.config import VLMConfig, load_config
from taxonomist.data.prepare import prepare_catalog
from taxonomist.improve.vlm_dpo import IMAGE_PATH, STATS_FILE, improve
from taxonomist.models.vlm import random_vlm, write_metadata

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "vlm-improve-fpi.json"
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## VLM self-consistency rounds (fashion-product-images)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "vlm-attributes.yaml"))
    parser.add_argument("--model", default="2b" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--pool", type=int, default=48, help="Unlabeled items sampled per round.")
    parser.add_argument("--val", type=int, default=24, help="Validation items scoring every round.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="Chains per item (K).")
    parser.add_argument("--set", action="append", default=[], help="Extra config override.")
    parser.add_argument("--work", default=None, help="Run folder (a rerun resumes). Default: a temp dir.")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="taxonomist-vlm-improve-"))
    overrides = [
        f"improve.rounds={args.rounds}",
        f"improve.samples_per_item={args.samples}",
        f"improve.max_items_per_round={args.pool}",
        *(["model.max_pixels=50176", "generate.batch_size=8"] if args.model == "tiny" else []),
        *args.set,
    ]
    cfg = load_config(args.config, overrides, VLMConfig)

    data = prepare_catalog(cfg)
    catalog = data.catalog
    frame = catalog.frame.assign(**{IMAGE_PATH: [str(p) for p in catalog.image_paths()]})
    train_idx, val_idx = data.split.train, data.split.dev  # rounds are picked on dev
    rng = np.random.default_rng(cfg.improve.seed)
    pool = frame.iloc[rng.permutation(train_idx)[: args.pool * args.rounds]].reset_index(drop=True)
    val = frame.iloc[rng.permutation(val_idx)[: args.val]].reset_index(drop=True)

    model_dir = Path(args.model)
    random_weights = args.model in ("tiny", "2b")
    if random_weights:
        schema = catalog.infer_schema()
        model_dir = work / f"random-{args.model}"
        if not model_dir.is_dir():
            corpus = [cfg.prompt.system, cfg.prompt.attributes, json.dumps(schema.to_dict())]
            random_vlm(model_dir, corpus, size=args.model)
            meta = {
                "task": "attributes",
                "schema": schema.to_dict(),
                "model": {"max_pixels": cfg.model.max_pixels},
            }
            write_metadata(model_dir, meta)

    start = time.perf_counter()
    report = improve(cfg, model_dir, pool, val, work / "improve", progress=False)
    seconds = time.perf_counter() - start
    rounds = []
    for record in report.rounds:
        row = dataclasses.asdict(record)
        stats_file = work / "improve" / f"round-{record.round}" / STATS_FILE
        if stats_file.is_file():
            row["stats"] = json.loads(stats_file.read_text(encoding="utf-8"))
        rounds.append(row)
    out = {
        "report_split": "dev",
        "dataset": "fashion-product-images: seeded slices of the training part (pool) and dev part",
        "model": f"random-weight Qwen2-VL, {args.model} shapes" if random_weights else str(args.model),
        "random_weights": random_weights,
        "command_args": ["--model", args.model] + [x for o in args.set for x in ("--set", o)],
        "device": machine(),
        "pool_items_per_round": args.pool,
        "val_items": len(val),
        "improve": dataclasses.asdict(cfg.improve),
        "lora": dataclasses.asdict(cfg.lora),
        "rounds": rounds,
        "best_round": report.best_round,
        "seconds": seconds,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    write_docs(out)
    print(json.dumps([(r["round"], r["score"], r["pairs"]) for r in rounds]))


def write_docs(r: dict) -> None:
    imp = r["improve"]
    fmt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [
        HEADING,
        "",
        f"`python benchmarks/vlm_improve.py {' '.join(r['command_args'])}` ({r['model']}) on "
        f"{r['device']}; results in "
        f"`benchmarks/results/vlm-improve-fpi.json`. {r['pool_items_per_round']} new unlabeled items per "
        f"round, K = {imp['samples_per_item']} chains each (temperature {imp['temperature']}, top-p "
        f"{imp['top_p']}), agreement threshold {imp['agreement_threshold']}, DPO ({imp['loss_type']}, "
        f"β = {imp['beta']}) with LoRA r = {r['lora']['r']}; every round scored on {r['val_items']} "
        "dev items (reported split: **dev**, which also picks the best round). "
        f"Run time {r['seconds']:.0f} s.",
        "",
    ]
    if r["random_weights"]:
        lines += [
            "**The model has random weights** (no VLM weights are reachable from this machine): the loop "
            "runs end to end on real images and schema, and the counts below are real, but scores and "
            "vote accuracies are those of a random model. Its chains agree little (at the default threshold "
            "0.6 no item was kept, so no pair was built), hence the lower threshold of this run. On a "
            "lent GPU, run it from a fine-tuned model (`--model runs/vlm-sft`).",
            "",
        ]
    lines += [
        "| round | val score | items | chains (invalid) | mean agreement | kept | pairs | majority acc. | "
        "single-sample acc. | seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rounds"]:
        s = row.get("stats")
        if s is None:
            lines.append(f"| {row['round']} | {fmt(row['score'])} | | | | | | | | {row['seconds']:.0f} |")
            continue
        per = s["per_attribute"].values()
        majority = [a["majority_accuracy"] for a in per if a["majority_accuracy"] is not None]
        single = [a["single_sample_accuracy"] for a in per if a["single_sample_accuracy"] is not None]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        lines.append(
            f"| {row['round']} | {fmt(row['score'])} | {s['items_sampled']} | {s['chains']} "
            f"({s['invalid_chains']}) | {fmt(s['mean_agreement'])} | {s['items_kept']} | "
            f"{s['pairs_built']} | {fmt(mean(majority))} | {fmt(mean(single))} | {row['seconds']:.0f} |"
        )
    lines += [
        "",
        "Majority / single-sample accuracy: mean over attributes, on the pool items' hidden labels. Round "
        "0 is the starting model. Per-attribute figures, the agreement histogram and the chosen vs "
        "rejected chains' accuracy are in the JSON.",
        "",
    ]
    replace_section(DOCS, HEADING, "\n".join(lines))


if __name__ == "__main__":
    main()
