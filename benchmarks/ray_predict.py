"""Benchmark: batch prediction with the local engine against the Ray engine, on the same rows.

Takes ``--rows`` seeded rows of fashion-product-images (from ``--config``; data dir via
``taxonomist.data.catalog.data_dir()``), predicts them with ``Predictor.predict_catalog`` and with
``predict_with_ray`` (a local Ray of ``--num-cpus`` CPUs, one 1-CPU actor per CPU unless
``--num-actors``), checks that both give the same rows and values (confidences within ``--atol``) and the
same errors, and reports each engine's images/s, wall time included model loading (and, for Ray, actor
start-up; starting Ray itself is reported apart). Both start with a cold feature cache.

Throughput does not depend on how good the heads are: without ``--checkpoint`` a throwaway checkpoint
is trained on ``--train-rows`` rows for a few epochs. On a GPU machine the Ray actors take a GPU each
(``--gpus-per-actor``); the local engine stays on the CPU, so pass ``--gpus-per-actor 0`` (or a looser
``--atol``) for the equality check.

Writes ``benchmarks/results/ray-predict.json`` and the "Batch prediction on Ray" section of
``docs/benchmarks.md``. Usage: ``python benchmarks/ray_predict.py [--rows 1000] [--checkpoint runs/fpi]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import torch
from common import machine, replace_section

from taxonomist.config import load_config
from taxonomist.data.images import read_errors
from taxonomist.data.prepare import load_catalog
from taxonomist.features.build import embed_options
from taxonomist.inference.predictor import Predictor
from taxonomist.inference.ray_engine import predict_with_ray, read_ray_output
from taxonomist.training.heads import train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "ray-predict.json"
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Batch prediction on Ray"
KEY = ["id", "category", "attribute", "value"]


def compare(local_dir: Path, ray_dir: Path) -> dict:
    """Same rows, values and errors; the largest confidence difference."""
    local = pd.read_csv(local_dir / "predictions_long.csv", dtype=str, keep_default_na=False)
    remote = read_ray_output(ray_dir)
    same_rows = len(local) == len(remote) and local[KEY].equals(remote[KEY])
    diff = (
        float(np.abs(local["confidence"].astype(float).to_numpy() - remote["confidence"].to_numpy()).max())
        if same_rows and len(local)
        else float("inf")
    )
    local_errors = {(e.id, e.reason) for e in read_errors(local_dir / "errors.csv")}
    remote_errors = set(
        read_ray_output(ray_dir, "errors")[["id", "reason"]].itertuples(index=False, name=None)
    )
    return {
        "prediction_rows": len(remote),
        "same_rows_and_values": same_rows,
        "same_errors": local_errors == remote_errors,
        "max_confidence_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fashion.yaml"))
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--num-actors", type=int, default=None)
    parser.add_argument("--gpus-per-actor", type=float, default=None)
    parser.add_argument("--shard-rows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--docs", type=Path, default=DOCS)
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="taxonomist-ray-bench-"))

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = work / "ckpt"
        train_cfg = load_config(args.config, [f"catalog.limit={args.train_rows}", "train.epochs=3"])
        train(train_cfg, checkpoint, progress=False)
    cfg = load_config(args.config, [f"catalog.limit={args.rows}", f"embed.batch_size={args.batch_size}"])
    catalog = load_catalog(cfg.catalog, seed=1)  # another seed than training, for other rows

    t0 = time.perf_counter()
    predictor = Predictor.from_pretrained(checkpoint)
    local = predictor.predict_catalog(
        catalog, work / "local", **embed_options(cfg.embed), chunk_size=args.shard_rows, progress=False
    )
    local_seconds = time.perf_counter() - t0

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    ray_init_seconds = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        predict_with_ray(
            checkpoint,
            catalog,
            work / "ray",
            batch_size=args.batch_size,
            shard_rows=args.shard_rows,
            num_actors=args.num_actors,
            num_gpus_per_actor=args.gpus_per_actor,
            progress=False,
        )
        ray_seconds = time.perf_counter() - t0
        resources = ray.cluster_resources()
    finally:
        ray.shutdown()

    check = compare(work / "local", work / "ray")
    identical = (
        check["same_rows_and_values"] and check["same_errors"] and check["max_confidence_diff"] <= args.atol
    )
    n = len(catalog)
    out = {
        "dataset": "fashion-product-images (category = masterCategory, 4 categories with >= 500 rows)",
        "rows": n,
        "image_errors": local.errors,
        "checkpoint": str(args.checkpoint)
        if args.checkpoint
        else f"throwaway, {args.train_rows} rows, 3 epochs",
        "local": {"seconds": local_seconds, "images_per_s": n / local_seconds},
        "ray": {
            "seconds": ray_seconds,
            "images_per_s": n / ray_seconds,
            "init_seconds": ray_init_seconds,
            "num_cpus": args.num_cpus,
            "num_actors": args.num_actors or "auto (one per GPU, else one per CPU)",
            "gpus": resources.get("GPU", 0),
            "shard_rows": args.shard_rows,
            "batch_size": args.batch_size,
        },
        "check": {**check, "atol": args.atol, "identical": identical},
        "machine": f"{machine()}, ray {ray.__version__}",
    }
    print(json.dumps(out, indent=1))
    if not identical:
        raise SystemExit(f"the engines disagree ({check}); outputs kept in {work}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=1))
    write_docs(out, args.docs, args.results)


def write_docs(r: dict, docs: Path, results: Path) -> None:
    local, ray_ = r["local"], r["ray"]
    section = [
        HEADING,
        "",
        f"`python benchmarks/ray_predict.py --rows {r['rows']}` on {r['machine']}; results in "
        f"`{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}`. "
        f"Checkpoint: {r['checkpoint']}. Both engines: cold feature cache, wall time including model "
        "loading; Ray also includes actor start-up, not the cluster start.",
        "",
        "| engine | images/s | wall time |",
        "| --- | ---: | ---: |",
        f"| local (`Predictor.predict_catalog`) | {local['images_per_s']:.1f} | {local['seconds']:.1f} s |",
        f"| Ray ({ray_['num_actors']} actors on {ray_['num_cpus']} CPUs, {ray_['gpus']:g} GPUs, "
        f"shards of {ray_['shard_rows']}) | {ray_['images_per_s']:.1f} | {ray_['seconds']:.1f} s |",
        "",
        f"Outputs identical: same {r['check']['prediction_rows']} (id, attribute, value) rows and the same "
        f"{r['image_errors']} errors; largest confidence difference {r['check']['max_confidence_diff']:.1e} "
        f"(tolerance {r['check']['atol']:g}). Starting the local Ray took {ray_['init_seconds']:.1f} s.",
        "",
    ]
    replace_section(docs, HEADING, "\n".join(section))


if __name__ == "__main__":
    main()
