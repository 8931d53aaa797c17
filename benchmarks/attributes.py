"""Benchmark: image → attributes on fashion-product-images with frozen efficientnet-lite0 features.

One run measures, on the same seeded per-category train/dev/test split of the shared data step (every
choice — the heads' epoch, temperatures — is made on dev; every figure below is on test unless named):
- the heads model (``taxonomist train``) score with the competition metric, per attribute, on test and dev;
- two baselines: majority value per (category, attribute), and a logistic-regression linear probe on the
  same frozen features; plus the heads without the colour features (ablation);
- heads training time on cached features;
- cold-cache prediction throughput (decode + encode + heads + writing) batched, against a
  one-image-at-a-time loop over ``Predictor.predict``; peak memory of a predict process.

Writes ``benchmarks/results/attributes-fpi.json`` and the table in ``docs/benchmarks.md``.
Usage: ``python benchmarks/attributes.py [--predict-images 1000] [--single-images 150]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import machine, replace_section, score_row, score_table_head, sync
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from taxonomist.config import load_config
from taxonomist.data.catalog import CATEGORY, ID
from taxonomist.data.prepare import prepare_catalog
from taxonomist.features.build import embed_options, runtime_options
from taxonomist.features.embed import embed_catalog, runtime_backbone
from taxonomist.inference.predictor import Predictor
from taxonomist.metrics import attribute_score
from taxonomist.models.build import build_backbone
from taxonomist.models.color import COLOR_FEATURE_DIM
from taxonomist.training.heads import train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "attributes-fpi.json"
DOCS = ROOT / "docs" / "benchmarks.md"


def majority_baseline(train_frame: pd.DataFrame, test_frame: pd.DataFrame, by_cat: dict) -> float:
    pred = test_frame[[ID, CATEGORY]].copy()
    for attribute in {a for attrs in by_cat.values() for a in attrs}:
        modes = train_frame.groupby(CATEGORY)[attribute].agg(
            lambda s: s.mode().iat[0] if s.notna().any() else None
        )
        pred[attribute] = test_frame[CATEGORY].map(modes)
    return attribute_score(test_frame, pred, by_cat).score


def linear_probe(
    features: np.ndarray, frame: pd.DataFrame, train_idx, test_idx, by_cat: dict
) -> tuple[float, dict[str, float]]:
    """One multinomial logistic regression per (category, attribute) on standardised frozen features."""
    pred = frame.iloc[test_idx][[ID, CATEGORY]].reset_index(drop=True)
    for attribute in {a for attrs in by_cat.values() for a in attrs}:
        pred[attribute] = None
    for category, attrs in by_cat.items():
        tr = train_idx[frame[CATEGORY].to_numpy()[train_idx] == category]
        te_mask = frame[CATEGORY].to_numpy()[test_idx] == category
        scaler = StandardScaler().fit(features[tr])
        x_tr, x_te = scaler.transform(features[tr]), scaler.transform(features[test_idx[te_mask]])
        for attribute in attrs:
            y = frame[attribute].to_numpy()[tr]
            has = pd.notna(y)
            if len(set(y[has])) < 2:
                pred.loc[te_mask, attribute] = y[has][0] if has.any() else None
                continue
            clf = LogisticRegression(max_iter=300, C=0.5)
            clf.fit(x_tr[has], y[has].astype(str))
            pred.loc[te_mask, attribute] = clf.predict(x_te)
    report = attribute_score(frame.iloc[test_idx].reset_index(drop=True), pred, by_cat)
    return report.score, dict(
        zip(report.per_attribute["attribute"], report.per_attribute["harmonic"], strict=True)
    )


def single_image_loop(predictor: Predictor, paths: list[str], cats: list[str]) -> float:
    """What a user writes first: one call per image (decode, encode, heads each time)."""
    start = time.perf_counter()
    for path, category in zip(paths, cats, strict=True):
        predictor.predict([path], [category])
    return len(paths) / (time.perf_counter() - start)


def predict_subprocess(
    checkpoint: Path, cfg_path: Path, out_dir: Path, *, sample_memory: bool
) -> tuple[float, float, float]:
    """Cold-cache batched predict in a fresh process: (images/s, peak RSS MiB, peak tree PSS MiB).

    With ``sample_memory``, sampled every 50 ms from /proc: the predict process's RSS, and the summed PSS
    (proportional set size) of it and its decoding workers (summed RSS would count the pages forked
    workers share several times). ``ru_maxrss`` is no use here: Linux carries it over from the parent
    across fork and exec. Reading ``smaps_rollup`` takes the process's memory-map lock, which slowed the
    sampled run to about half speed, so images/s comes from a run without sampling.
    """
    code = (
        "import json,sys;"
        "from taxonomist.config import load_config;"
        "from taxonomist.data.prepare import load_catalog;"
        "from taxonomist.features.build import embed_options;"
        "from taxonomist.inference.predictor import Predictor;"
        f"cfg=load_config({str(cfg_path)!r});cfg.catalog.attributes=[];"
        "cat=load_catalog(cfg.catalog);"
        f"p=Predictor.from_pretrained({str(checkpoint)!r});"
        f"s=p.predict_catalog(cat,{str(out_dir)!r},**embed_options(cfg.embed),progress=False);"
        "print(json.dumps({'ips':s.images_per_s}))"
    )
    shutil.rmtree(out_dir, ignore_errors=True)  # cold: nothing to resume
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0.0
    while proc.poll() is None:
        if sample_memory:
            peak_rss = max(peak_rss, _rollup_mib(proc.pid, "Rss:"))
            peak_pss = max(peak_pss, _tree_pss_mib(proc.pid))
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"predict subprocess failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])["ips"], peak_rss, peak_pss


def _rollup_mib(pid: int, field: str) -> float:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        return next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith(field)) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


def _tree_pss_mib(pid: int) -> float:
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _rollup_mib(p, "Pss:")
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def backbone_throughput(
    predictor: Predictor, batch_sizes=(1, 8, 32), seconds: float = 3.0
) -> dict[str, float]:
    """Images/s of the optimised backbone alone on random input: how much batching can buy here. Keyed
    by the batch size as text, as the results file stores it, so the docs read a fresh run and a reloaded
    one alike."""
    size = predictor.backbone.preprocess.size
    out = {}
    with torch.inference_mode():
        for bs in batch_sizes:
            x = torch.randn(bs, 3, size, size, device=predictor.device)
            predictor.backbone(x)
            sync()
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                predictor.backbone(x)
                n += bs
            sync()
            out[str(bs)] = n / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fashion.yaml"))
    parser.add_argument("--predict-images", type=int, default=1000)
    parser.add_argument("--single-images", type=int, default=150)
    parser.add_argument("--members", type=int, default=4, help="Seeds of the heads.members row (1: skip).")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="taxonomist-bench-"))

    # 1. Heads (embeds through the cache first; cold or warm, the embed time is reported separately).
    result = train(cfg, work / "ckpt", progress=True)
    print(result.report.to_markdown())
    test = result.test_report
    out = {
        "dataset": "fashion-product-images (category = masterCategory, 4 categories with >= 500 rows)",
        "backbone": f"{cfg.backbone.name} (frozen) + colour histogram"
        if cfg.backbone.color_features
        else cfg.backbone.name,
        "selection_split": "dev",
        "report_split": "test",
        "test_score": test.score,
        "dev_score": result.score,
        "rows": {
            "train": result.n_train,
            "dev": result.n_dev,
            "test": result.n_test,
            "image_errors": result.image_errors,
        },
        "split": {k: v for k, v in result.data.split.items() if k != "ids"},
        "score": test.score,
        "per_attribute": _per_attribute(test),
        "dev_per_attribute": _per_attribute(result.report),
        "per_category": test.to_dict()["per_category"],
        "calibration": result.calibration,
        "train_seconds": result.train_seconds,
        "best_epoch": result.history.best_epoch,
        "embed_seconds": result.embed_seconds,
        "machine": machine(),
        "complete": False,
    }
    save(out)  # each stage lands on disk as it finishes: a cut-short run still records its figures

    # 2. Baselines on the same split and the same cached features, scored on test.
    data = prepare_catalog(cfg)
    catalog = data.catalog
    train_idx, test_idx = data.split.train, data.split.test
    backbone = runtime_backbone(build_backbone(cfg.backbone), **runtime_options(cfg.embed))
    embedded = embed_catalog(catalog, backbone, **embed_options(cfg.embed), progress=False)
    ok = embedded.ok
    train_idx, test_idx = train_idx[ok[train_idx]], test_idx[ok[test_idx]]
    by_cat = catalog.attributes_by_category
    majority = majority_baseline(
        catalog.frame.iloc[train_idx], catalog.frame.iloc[test_idx].reset_index(drop=True), by_cat
    )
    t0 = time.perf_counter()
    probe, probe_attr = linear_probe(embedded.features, catalog.frame, train_idx, test_idx, by_cat)
    probe_cnn, probe_cnn_attr = linear_probe(
        embedded.features[:, :-COLOR_FEATURE_DIM], catalog.frame, train_idx, test_idx, by_cat
    )
    out["baselines"] = {
        "majority": majority,
        "linear_probe": probe,
        "linear_probe_per_attribute": probe_attr,
        "linear_probe_cnn_only": probe_cnn,
        "linear_probe_cnn_only_per_attribute": probe_cnn_attr,
        "linear_probe_seconds": time.perf_counter() - t0,
    }
    save(out)

    # 3. Prediction throughput, cold cache, on test images: batched in a fresh process (so its
    # memory is its own), then a one-image-at-a-time loop over ``Predictor.predict``.
    test_catalog = catalog.subset(test_idx)
    n_pred = min(args.predict_images, len(test_catalog))
    subset_csv = work / "predict_rows.csv"
    test_catalog.frame.iloc[:n_pred].to_csv(subset_csv, index=False)
    cfg_pred = load_config(
        args.config,
        [
            f"catalog.path={subset_csv}",
            "catalog.id_column=id",
            "catalog.category_column=category",
            f"catalog.image_root={test_catalog.image_root}",
            "catalog.min_rows_per_category=0",
            # The rows are written with the frame's own column names; the image heads read no text.
            "catalog.text_column=null",
            "catalog.text_columns=[]",
        ],
    )
    cfg_pred.save(work / "predict.yaml")
    args_pred = (work / "ckpt", work / "predict.yaml", work / "pred")
    _, peak_rss, peak_pss = predict_subprocess(*args_pred, sample_memory=True)
    batched_ips, _, _ = predict_subprocess(*args_pred, sample_memory=False)
    predictor = Predictor.from_pretrained(work / "ckpt")
    single = test_catalog.subset(list(range(n_pred - args.single_images, n_pred)))
    single_paths = [str(p) for p in single.image_paths()]
    single_ips = single_image_loop(predictor, single_paths, single.frame[CATEGORY].tolist())
    out |= {
        "predict_images_per_s": batched_ips,
        "single_images_per_s": single_ips,
        "batched_vs_single": batched_ips / single_ips,
        "backbone_images_per_s_by_batch": backbone_throughput(predictor),
        "predict_runtime": predictor.runtime,
        "predict_images": n_pred,
        "peak_rss_mib": peak_rss,
        "peak_tree_pss_mib": peak_pss,
    }
    save(out)

    # 4. Ablation: the heads without the colour features. Their feature cache is cold, so it embeds on
    # ONNX Runtime fp32: the same numerics as torch here (runtimes benchmark: score_delta_exact 0) at
    # about 5x the speed.
    overrides = ["backbone.color_features=false", "embed.runtime=onnxruntime", "embed.precision=fp32"]
    no_color = train(load_config(args.config, overrides), work / "no-color")
    out["baselines"] |= {
        "heads_without_colour_features_embed": "onnxruntime fp32",
        "heads_without_colour_features": no_color.test_report.score,
        "heads_without_colour_features_per_attribute": _per_attribute(no_color.test_report),
    }
    save(out)

    # 5. The same heads from ``--members`` seeds, their mean probability the prediction (heads.members).
    if args.members > 1:
        members = train(load_config(args.config, [f"heads.members={args.members}"]), work / "members")
        out["ensemble"] = {
            "members": args.members,
            "test_score": members.test_report.score,
            "dev_score": members.score,
            "per_attribute": _per_attribute(members.test_report),
            "train_seconds": members.train_seconds,
            "member_best_epochs": members.history.best_epochs,
        }
    out["complete"] = True
    save(out)
    write_docs(out)
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}, indent=1))


def save(out: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))


def _per_attribute(report) -> dict[str, float]:
    return dict(zip(report.per_attribute["attribute"], report.per_attribute["harmonic"], strict=True))


def batching_gain(r: dict) -> float:
    """Best backbone images/s over any batch ÷ images/s at batch 1."""
    rates = r["backbone_images_per_s_by_batch"]
    return max(rates.values()) / rates["1"]


def write_docs(r: dict) -> None:
    order = list(r["per_attribute"])
    e = r.get("ensemble")  # the heads.members row, when the run had one
    b = r["baselines"]
    section = [
        "## Image → attributes (fashion-product-images)",
        "",
        f"`python benchmarks/attributes.py` on {r['machine']}; "
        "results in `benchmarks/results/attributes-fpi.json`.",
        f"Backbone: {r['backbone']}. Split: the shared data step's seeded train/dev/test per category "
        f"({r['split']['dev_fraction']:.0%} dev, {r['split']['test_fraction']:.0%} test, byte-identical "
        f"images kept in one part: {r['split']['duplicate_image_rows']} rows share an image); "
        f"{r['rows']['train']} train / {r['rows']['dev']} dev / {r['rows']['test']} test rows. "
        "Score = mean over (category, attribute) of the harmonic mean of F1-micro and F1-macro (the "
        "Meesho metric).",
        "",
        "What was chosen on which split: the heads' best epoch, the per-attribute temperatures (and any "
        "prior correction) on **dev**; the schema's values from the **training** rows only (test values "
        "it lacks count as wrong); the baselines choose nothing. Every score in the table is on **test**, "
        f"which no choice saw: heads {r['test_score']:.4f} on test, {r['dev_score']:.4f} on dev."
        + (
            f" The {e['members']}-seed row: each seed's epoch on dev; {e['members']} seeds was set before "
            "this run, after an exploration on the cached features that printed test scores beside dev "
            "(single seeds 0.665-0.677, their mean probability 0.690)."
            if e
            else ""
        ),
        "",
        *score_table_head(order, "model (test)"),
        score_row("heads (frozen features + colour)", r["score"], r["per_attribute"], order),
        *(
            [
                score_row(
                    f"heads, mean of {e['members']} seeds (`heads.members: {e['members']}`)",
                    e["test_score"],
                    e["per_attribute"],
                    order,
                )
            ]
            if e
            else []
        ),
        score_row(
            f"heads without colour features (embedded on {b['heads_without_colour_features_embed']})",
            b["heads_without_colour_features"],
            b["heads_without_colour_features_per_attribute"],
            order,
        ),
        score_row("linear probe (same features)", b["linear_probe"], b["linear_probe_per_attribute"], order),
        score_row(
            "linear probe (CNN features only)",
            b["linear_probe_cnn_only"],
            b["linear_probe_cnn_only_per_attribute"],
            order,
        ),
        f"| majority per (category, attribute) | {b['majority']:.4f} |" + " |" * len(order),
        "",
        "| measure | value | target |",
        "| --- | ---: | ---: |",
        f"| heads training on cached features | {r['train_seconds']:.1f} s | ≤ 120 s |",
        *(
            [
                f"| the same, {e['members']} seeds (`heads.members`; dev {e['dev_score']:.4f}, best epochs "
                f"{'/'.join(map(str, e['member_best_epochs']))}) | {e['train_seconds']:.1f} s | |"
            ]
            if e
            else []
        ),
        f"| predict, cold cache, batched (decode + encode + heads + write) | "
        f"{r['predict_images_per_s']:.1f} img/s | ≥ 40 |",
        f"| predict, one image at a time | {r['single_images_per_s']:.1f} img/s | |",
        f"| batched vs single | {r['batched_vs_single']:.2f}× | ≥ 5× |",
        f"| peak RSS of the predict process | {r['peak_rss_mib']:.0f} MiB | ≤ 2048 MiB |",
        f"| peak PSS of predict + its decoding workers | {r['peak_tree_pss_mib']:.0f} MiB | ≤ 2048 MiB |",
        f"| embedding for training (feature cache, warm after a first run) | {r['embed_seconds']:.1f} s | |",
        "",
        "Batched vs single: the backbone alone runs at "
        + ", ".join(f"{v:.0f} img/s at batch {k}" for k, v in r["backbone_images_per_s_by_batch"].items())
        + f" on this CPU, on {r.get('predict_runtime', 'onnxruntime fp32')}, which `predict --runtime auto` "
        "took (`benchmarks/runtimes.py` compares every runtime with eager torch)"
        + f". Batching lifts the network itself by at most {batching_gain(r):.1f}× on 2 cores, so the "
        "≥ 5× target is not reachable here; it is a GPU-shaped target and stays open until measured on a "
        "lent GPU. The batched figure comes from its own run: sampling "
        "memory from /proc (the peak rows) slows the sampled run.",
        "",
        "Calibration (dev, temperature per attribute, ECE cross-fitted on two halves):",
        "",
        "| attribute | T | ECE before | ECE after |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {a} | {c['temperature']:.2f} | {c['ece_before']:.4f} | {c['ece_after']:.4f} |"
            for a, c in r["calibration"].items()
        ],
        "",
    ]
    replace_section(DOCS, "## Image → attributes (fashion-product-images)", "\n".join(section))


if __name__ == "__main__":
    main()
