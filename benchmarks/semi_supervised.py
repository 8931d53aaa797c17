"""Benchmark: self-training the heads on fashion-product-images with 5% of the training labels.

On the seeded train/dev/test split of ``benchmarks/attributes.py`` (the shared data step):
- ``fully_supervised``: the heads recipe (``taxonomist train``) on the whole training split, the ceiling;
- each self-training variant (``taxonomist self-train``): round 0 = supervised on 5% of the training
  split, then rounds of view-consistent, confident pseudo-labels on the other 95% (labels hidden); the
  teacher reads the image and its mirror image, and in the "image + title" variants the product title
  too (``productDisplayName``); in these variants the student is the image heads alone;
- the variant reported is the one whose best round scores highest on the held-out labeled rows (dev),
  and its best round is also picked on dev: the test score never chooses anything;
- the fused student (``heads.inputs: [image, text]``): every round trains listing heads on labels ∪
  pseudo-labels, and the teacher is the fused model on each image view with the title; reported apart
  (its own variant picked on dev), against the fully supervised listing heads of
  ``benchmarks/multimodal.py`` (same split, same test rows) where that result exists.

Writes ``benchmarks/results/semi-supervised-fpi.json`` and a section of ``docs/benchmarks.md``.
Usage: ``python benchmarks/semi_supervised.py [--rounds 3] [--work DIR]``; a rerun with the same
``--work`` resumes finished rounds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import machine, replace_section

from taxonomist.config import load_config
from taxonomist.training.heads import train
from taxonomist.training.self_training import self_train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "semi-supervised-fpi.json"
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Self-training with 5% of the labels (fashion-product-images)"

# Overrides of ``self_training`` run side by side; "image + title, threshold 0.9" is the config default.
# This short list was drawn up after single-round exploration runs that also printed validation scores
# (see TRIED): the pick among these is by dev score, but the list itself is not blind to validation.
IMAGE_ONLY = "self_training.text_view=false"
VARIANTS: dict[str, list[str]] = {
    "image only, threshold 0.9": [IMAGE_ONLY],
    "image only, threshold 0.9, warm start": [IMAGE_ONLY, "self_training.warm_start=true"],
    "image only, threshold 0.5, top 50% per value": [
        IMAGE_ONLY,
        "self_training.threshold=0.5",
        "self_training.value_fraction=0.5",
    ],
    "image + title, threshold 0.9": [],
    "image + title, threshold 0.5": ["self_training.threshold=0.5"],
}
# The fused student: listing heads every round (the teacher reads the title through them).
FUSED = "heads.inputs=[image, text]"
FUSED_VARIANTS: dict[str, list[str]] = {
    "listing heads, threshold 0.9": [FUSED],
    "listing heads, threshold 0.5": [FUSED, "self_training.threshold=0.5"],
}
MULTIMODAL = ROOT / "benchmarks" / "results" / "multimodal-fpi.json"
# Exploration on the same split and round-0 model (one round each unless said; validation scores seen).
TRIED = [
    "threshold 0.7: more pseudo-labels (precision 0.90), val +0.004 over round 0",
    "top 30% / 70% / 100% of agreeing rows per value (no threshold): val -0.000 / +0.003 / +0.007",
    "labeled rows repeated 10x against the pseudo-labels: val +0.007",
    "both views of each pseudo-labelled row as training rows (augmentation): val +0.002",
    "distribution alignment (probabilities rescaled to the labeled prior) at 0.9 / 0.7: val -0.014 / -0.013",
    "prior correction of the student (labeled prior / training prior): val -0.005 to +0.005",
    "curriculum over 5 rounds (top 20%, 40% ... 100% per value): val +0.003 to +0.008",
    "label propagation on a kNN graph of the training split as teacher: worse than the heads on the pool "
    "(0.42 vs 0.47 pool score); mixed 50/50 with the heads 0.48",
    "oracle: the hidden true labels on the cells a 0.9 threshold selects: val 0.537 (+0.027), so even "
    "perfect pseudo-labels on the confident cells close only ~15% of the gap; true labels on the whole "
    "pool with the same dev protocol: 0.666",
    "(this and the next two: one round each, title probabilities not yet calibrated on dev) title "
    "classifier alone as teacher (no image views), threshold 0 / 0.5 / 0.7 / 0.9: val 0.562 / 0.577 / "
    "0.562 / 0.545",
    "title as a third view of a mean that every view's argmax must agree with, threshold 0.5 / 0.7: val "
    "0.531 / 0.519; without the agreement rule 0.521 / 0.526: agreement with the image model keeps only "
    "the cells it already gets right",
    "image x title product with the mirror-image agreement rule (the variant kept), threshold 0 / 0.5 / 0.7: "
    "val 0.581 / 0.580 / 0.574",
]


def round_row(r: dict) -> dict:
    return {
        "round": r["round"],
        "score": r["test_score"],
        "dev_score": r["dev_score"],
        "n_pseudo": sum(r.get("n_pseudo", {}).values()),
        "n_pseudo_per_attribute": r.get("n_pseudo", {}),
        "pseudo_label_precision": r.get("pseudo_label_precision", {}).get("all"),
        "pseudo_label_precision_per_attribute": r.get("pseudo_label_precision", {}),
        "supervised_accuracy_same_items": r.get("supervised_accuracy_same_items", {}).get("all"),
        "n_train_rows": r["n_train_rows"],
        "best_epoch": r["best_epoch"],
        "seconds": r["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fashion.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--work", default=None, help="Run folder (kept; a rerun resumes). Default: a temp dir."
    )
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="taxonomist-semi-"))

    full_cfg = load_config(args.config)
    full = train(full_cfg, work / "fully-supervised", progress=False)
    # The rounds are scored on test, so the ceiling is too (``full.score`` is its dev score).
    full_test = full.test_report.score
    print(f"fully supervised: test {full_test:.4f}, dev {full.score:.4f}", flush=True)

    variants = {name: run_variant(args, work, name, o) for name, o in VARIANTS.items()}
    fused_variants = {name: run_variant(args, work, name, o) for name, o in FUSED_VARIANTS.items()}

    chosen = max(variants, key=lambda v: variants[v]["best_dev_score"])
    v = variants[chosen]
    small = v["rounds"][0]["score"]
    for x in variants.values():
        x["gap_closed"] = (x["rounds"][x["best_round"]]["score"] - small) / (full_test - small)
    image_only = max(
        (n for n in variants if IMAGE_ONLY in VARIANTS[n]), key=lambda n: variants[n]["best_dev_score"]
    )
    best = v["rounds"][v["best_round"]]["score"]
    out = {
        "report_split": "test",
        "selection_split": "dev (held-out labeled rows of the training part)",
        "dataset": "fashion-product-images (category = masterCategory, 4 categories with >= 500 rows)",
        "backbone": f"{full_cfg.backbone.name} (frozen) + colour histogram",
        "teacher": "image + mirrored image" + (" + title classifier" if v["text_view"] else ""),
        "text_view": v["text_view"],
        "labeled_fraction": v["self_training"]["labeled_fraction"],
        "sizes": {**v["sizes"], "train_split": full.n_train},
        "supervised_small": small,
        "rounds": v["rounds"],
        "best_round": v["best_round"],
        "best_round_score": best,
        "fully_supervised": full_test,
        "fully_supervised_dev": full.score,
        "gap_closed": (best - small) / (full_test - small),
        "max_over_rounds_gap_closed": (max(r["score"] for r in v["rounds"]) - small) / (full_test - small),
        "max_over_variants_gap_closed": (
            max(r["score"] for x in variants.values() for r in x["rounds"]) - small
        )
        / (full_test - small),
        "image_only": {"variant": image_only, "gap_closed": variants[image_only]["gap_closed"]},
        "pseudo_label_precision": [r["pseudo_label_precision"] for r in v["rounds"][1:]],
        "supervised_accuracy_same_items": [r["supervised_accuracy_same_items"] for r in v["rounds"][1:]],
        "variant": chosen,
        "variants": variants,
        "selection": "variant and best round by the score on held-out labeled rows (dev); the variant "
        "short-list was drawn up after exploration runs whose validation scores were seen",
        "tried": TRIED,
        "fused_student": fused_summary(fused_variants, small),
        "device": machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    write_docs(out)
    print(json.dumps({k: out[k] for k in ("supervised_small", "best_round_score", "fully_supervised")}))
    print(f"gap closed {out['gap_closed']:.3f} ({chosen}, round {v['best_round']})")


def run_variant(args: argparse.Namespace, work: Path, name: str, overrides: list[str]) -> dict:
    cfg = load_config(args.config, [f"self_training.rounds={args.rounds}", *overrides])
    report = self_train(cfg, work / name.replace(" ", "-").replace(",", ""), progress=False)
    rounds = [round_row(r) for r in report.rounds]
    print(name, json.dumps([(r["round"], r["dev_score"], r["score"]) for r in rounds]), flush=True)
    return {
        "overrides": overrides,
        "self_training": cfg.self_training.__dict__,
        "student": report.student,
        "rounds": rounds,
        "best_round": report.best_round,
        "best_dev_score": rounds[report.best_round]["dev_score"],
        "text_view": report.text_view,
        "sizes": {
            "labeled_fit": report.n_fit,
            "labeled_dev": report.n_dev,
            "unlabeled": report.n_pool,
            "test": report.n_test,
        },
    }


def fused_summary(variants: dict, image_small: float) -> dict:
    """The fused student's variant picked on dev, its rounds, and the gap it closes to the fully
    supervised listing heads (``benchmarks/multimodal.py``'s fused score on the same test rows)."""
    chosen = max(variants, key=lambda v: variants[v]["best_dev_score"])
    v = variants[chosen]
    small, best = v["rounds"][0]["score"], v["rounds"][v["best_round"]]["score"]
    full = json.loads(MULTIMODAL.read_text())["score_fused"] if MULTIMODAL.exists() else None
    return {
        "variant": chosen,
        "supervised_small": small,
        "supervised_small_image_heads": image_small,
        "best_round": v["best_round"],
        "best_round_score": best,
        "fully_supervised": full,
        "fully_supervised_source": "benchmarks/results/multimodal-fpi.json score_fused (same split and "
        "test rows)",
        "gap_closed": None if full is None else (best - small) / (full - small),
        "pseudo_label_precision": [r["pseudo_label_precision"] for r in v["rounds"][1:]],
        "supervised_accuracy_same_items": [r["supervised_accuracy_same_items"] for r in v["rounds"][1:]],
        "variants": variants,
    }


def write_docs(r: dict) -> None:
    s = r["sizes"]
    st = r["variants"][r["variant"]]["self_training"]
    fresh = r["variants"]["image only, threshold 0.9"]
    warm = r["variants"]["image only, threshold 0.9, warm start"]
    fmt = lambda x: "" if x is None else f"{x:.4f}"  # noqa: E731
    teacher = (
        "the image heads on the original and the mirrored image, each multiplied with a title "
        "classifier's probabilities (product of the two views, renormalised)"
        if r["text_view"]
        else "the image heads on the original and the mirrored image"
    )
    # Self-training draws its labels and its pool from the shared train + dev parts (training_rows).
    pooled = s["labeled_fit"] + s["labeled_dev"] + s["unlabeled"]
    lines = [
        HEADING,
        "",
        f"`python benchmarks/semi_supervised.py` on {r['device']}; results in "
        "`benchmarks/results/semi-supervised-fpi.json`. Same seeded train/dev/test split and frozen "
        f"features as the image → attributes benchmark. Of the {pooled} rows of the shared train and dev "
        f"parts ({s['train_split']} + {pooled - s['train_split']}), "
        f"{r['labeled_fraction']:.0%} per category keep their labels ({s['labeled_fit']} to fit, "
        f"{s['labeled_dev']} held out as dev: epoch choice, temperature calibration, best round); the "
        f"other {s['unlabeled']} are the unlabeled pool, their labels hidden from training and used only "
        f"to score pseudo-labels. Scores: competition metric on the {s['test']} test rows of the shared "
        "data step, which no choice saw (variant and round are picked on dev).",
        "",
        f"Variant picked on dev: **{r['variant']}**. Teacher: {teacher}. A pseudo-label (row, attribute) "
        "is kept where the teacher's two views (original and mirrored image"
        + (", each with the title" if r["text_view"] else "")
        + f") give the same value with a calibrated probability ≥ {st['threshold']} (mean of the views)"
        + (
            f", then the top {st['value_fraction']:.0%} per value by confidence"
            if st["value_fraction"] < 1
            else ""
        )
        + ". The student, and every round's checkpoint, is the image heads alone: titles are read only "
        "while teaching. Precision = share of kept pseudo-labels equal to the hidden label; supervised "
        "accuracy = round 0's accuracy on those same cells.",
        "",
        "| model | test score | dev score | pseudo-labels | precision | supervised acc. (same cells) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rounds"]:
        name = (
            "supervised, 5% labels (round 0)" if row["round"] == 0 else f"self-training round {row['round']}"
        )
        if row["round"] == r["best_round"]:
            name += " ← best on dev"
        lines.append(
            f"| {name} | {row['score']:.4f} | {row['dev_score']:.4f} | {row['n_pseudo'] or ''} | "
            f"{fmt(row['pseudo_label_precision'])} | {fmt(row['supervised_accuracy_same_items'])} |"
        )
    lines += [
        f"| fully supervised (100% labels, `taxonomist train`) | {r['fully_supervised']:.4f} | | | | |",
        "",
        f"Gap closed by the round picked on dev: **{r['gap_closed']:.1%}** "
        f"(({r['best_round_score']:.4f} − {r['supervised_small']:.4f}) / "
        f"({r['fully_supervised']:.4f} − {r['supervised_small']:.4f})); target ≥ 30%: "
        f"**{'met' if r['gap_closed'] >= 0.3 else 'not met'}**. With the image views alone (best such "
        f"variant on dev, {r['image_only']['variant']}): {r['image_only']['gap_closed']:.1%}.",
        "",
        "Pseudo-label precision against round 0's accuracy on the same cells, per round: "
        + ", ".join(
            f"{p:.4f} vs {a:.4f}"
            for p, a in zip(r["pseudo_label_precision"], r["supervised_accuracy_same_items"], strict=True)
        )
        + ".",
        "",
    ]
    if r["text_view"]:
        tv = r["text_view"]
        lines += [
            "Title classifier (TF-IDF character and word n-grams + category → one logistic regression per "
            f"attribute, fit on the same {s['labeled_fit']} labeled rows, one temperature per attribute "
            "on dev), accuracy per attribute:",
            "",
            "| attribute | dev | pool (hidden labels) | temperature |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {a} | {fmt(tv['dev_accuracy'][a])} | {fmt(tv['pool_accuracy'][a])} | {t:.3f} |"
            for a, t in tv["temperature"].items()
        ]
        lines.append("")
    lines += [
        "Why the title matters: with the image views alone, the cells the teacher labels confidently are "
        "the cells it already gets right, mostly frequent values, so retraining on them moves little; "
        "with the hidden true labels on exactly the cells a 0.9 threshold selects, the student reached "
        "only 0.537 in an exploration run on the earlier split (about 15% of the gap). A title is a "
        "second view whose errors are not the image "
        "model's (co-training): it names the article type, colour and gender the image model misses, so "
        "the product of the two labels cells round 0 gets wrong, and the rare values that weigh as much "
        "as frequent ones in the macro-F1 half of the score. Requiring the image model to agree with the "
        "title instead (a mean with an agreement rule) throws exactly those cells away (see the list "
        "below). Catalogs that have images usually have titles; where one has none, the recipe falls "
        "back to the image views (`self_training.text_view`).",
        "",
        "Fresh init vs warm start (image-only variants): fresh init is the default. On dev neither wins "
        f"clearly (best dev {fresh['best_dev_score']:.4f} fresh, {warm['best_dev_score']:.4f} warm). Warm "
        "start carries the teacher's mistakes forward (best epochs per round: "
        + ", ".join(str(x["best_epoch"]) for x in warm["rounds"][1:])
        + "); a fresh student re-learns everything from labels ∪ pseudo-labels (as in Noisy Student).",
        "",
        "Variants (each picks its own best round on dev; the reported one has the best dev score; gap "
        "closed is measured from the shared round 0):",
        "",
        "| variant | best round (dev) | dev score | test score | gap closed |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, v in r["variants"].items():
        best = v["rounds"][v["best_round"]]
        lines.append(
            f"| {name} | {v['best_round']} | {best['dev_score']:.4f} | {best['score']:.4f} | "
            f"{v['gap_closed']:.1%} |"
        )
    lines += [
        "",
        "Also tried (exploration runs on the earlier 90/10 split, before the train/dev/test data step; "
        "their validation scores were seen, and the variant short-list above was drawn up from them):",
        "",
    ]
    lines += [f"- {t}" for t in r["tried"]]
    lines += ["", *fused_lines(r["fused_student"]), ""]
    replace_section(DOCS, HEADING, "\n".join(lines))


def fused_lines(f: dict) -> list[str]:
    fmt = lambda x: "" if x is None else f"{x:.4f}"  # noqa: E731
    v = f["variants"][f["variant"]]
    lines = [
        "### The fused student (listing heads)",
        "",
        "`heads.inputs: [image, text]`: every round trains listing heads (sentence embedding, lexical view "
        "and cross-fitted probe fitted on the labeled rows, image fallback first) on labels ∪ "
        "pseudo-labels; the teacher is the previous round's fused model on the original and the mirrored "
        "image, each with the row's title (no separate title classifier: the teacher reads the title "
        f"itself). Variant picked on dev: **{f['variant']}**. Same labeled, dev, pool and test rows as "
        "above.",
        "",
        "| model | test score | dev score | pseudo-labels | precision | supervised acc. (same cells) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in v["rounds"]:
        name = "listing heads, 5% labels (round 0)" if row["round"] == 0 else f"round {row['round']}"
        if row["round"] == f["best_round"]:
            name += " ← best on dev"
        lines.append(
            f"| {name} | {row['score']:.4f} | {row['dev_score']:.4f} | {row['n_pseudo'] or ''} | "
            f"{fmt(row['pseudo_label_precision'])} | {fmt(row['supervised_accuracy_same_items'])} |"
        )
    if f["fully_supervised"] is not None:
        lines.append(
            "| listing heads, 100% labels (`benchmarks/multimodal.py`) | "
            f"{f['fully_supervised']:.4f} | | | | |"
        )
        precision = f["pseudo_label_precision"][f["best_round"] - 1] if f["best_round"] else None
        same = f["supervised_accuracy_same_items"][f["best_round"] - 1] if f["best_round"] else None
        lines += [
            "",
            f"Gap closed by the fused student's round picked on dev: **{f['gap_closed']:.1%}**; its round 0 "
            f"({f['supervised_small']:.4f}) is already above the image heads' round 0 "
            f"({f['supervised_small_image_heads']:.4f}) on the same 5% of the labels. "
            + (
                f"The fused teacher's pseudo-labels are right as often as round 0 already is on the same "
                f"cells ({precision:.4f} vs {same:.4f}): it reads the title itself, so no second view with "
                "other errors corrects it (which is what the image student gets from the title), and "
                "retraining on its own confident cells moves little."
                if precision is not None
                else ""
            ),
        ]
    lines += [
        "",
        "Variants:",
        "",
        "| variant | best round (dev) | dev score | test score |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, x in f["variants"].items():
        best = x["rounds"][x["best_round"]]
        lines.append(f"| {name} | {x['best_round']} | {best['dev_score']:.4f} | {best['score']:.4f} |")
    return lines


if __name__ == "__main__":
    main()
