"""``taxonomist export``: a run's backbone and heads on an inference runtime, checked against torch.

The export is built in a candidate folder, scored against the torch model on the run's validation rows
(score and per-attribute accuracy: the parity report), and only then renamed into ``RUN/exports``; an
export whose score drops by more than ``tolerance`` is refused with that report (int8 calibrated on
too few or unrepresentative images is the usual reason). int8 is calibrated on the user's own training
rows, never on the validation rows it is judged on.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from taxonomist.config import RunConfig
from taxonomist.data.catalog import CATEGORY, ID, TEXT, describe_counts
from taxonomist.data.images import ImageLoadError, load_image
from taxonomist.data.prepare import prepare_catalog
from taxonomist.features.cache import FeatureCache, default_cache_dir
from taxonomist.features.embed import embed_images
from taxonomist.features.text import TextFeatures
from taxonomist.inference.predictor import Predictor, wide_named_frame
from taxonomist.metrics import attribute_score
from taxonomist.models import runtime as rt

PARITY_FILE = "parity.json"
_CANDIDATE = ".candidate-"
_CALIBRATION_BATCH = 16


class ExportRefused(RuntimeError):
    """The export scored more than the tolerance below torch; ``report`` says by how much, where."""

    def __init__(self, report: ParityReport) -> None:
        drops = "; ".join(
            f"{f'{name}: ' if name else ''}{export:.4f} vs torch {torch_:.4f} (drop {torch_ - export:.4f})"
            for name, torch_, export in report.scores()
            if torch_ - export > report.tolerance
        )
        super().__init__(
            f"export refused: score {drops} > tolerance {report.tolerance:.4f} on {report.rows} "
            "validation rows; calibrate on more rows (--calibrate) or use a higher precision\n"
            + report.to_markdown()
        )
        self.report = report


@dataclass
class ParityReport:
    """An export against the torch fp32 model on the same validation rows.

    ``torch_score``/``export_score`` score the rows from their images alone (listing heads: as listings
    without a title, the path the backbone weighs most); listing heads are also scored with the rows'
    titles (``with_text``), as they will mostly be used. Both must stay within ``tolerance``."""

    runtime: str
    precision: str
    rows: int
    torch_score: float
    export_score: float
    tolerance: float
    per_attribute: dict[str, dict[str, float]]
    """attribute → {"torch": accuracy, "export": accuracy}."""
    min_feature_cosine: float
    calibration_rows: int = 0
    with_text: dict[str, float] | None = None
    """Listing heads: {"torch": score, "export": score} of the same rows with their titles."""

    @property
    def score_drop(self) -> float:
        return self.torch_score - self.export_score

    def scores(self) -> list[tuple[str, float, float]]:
        """(view, torch score, export score) of each view scored."""
        out = [("without text" if self.with_text else "", self.torch_score, self.export_score)]
        if self.with_text:
            out.append(("with text", self.with_text["torch"], self.with_text["export"]))
        return out

    @property
    def passed(self) -> bool:
        return all(torch_ - export <= self.tolerance for _, torch_, export in self.scores())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "score_drop": self.score_drop, "passed": self.passed}

    def to_markdown(self) -> str:
        lines = [
            f"| {self.runtime} {self.precision} vs torch fp32, {self.rows} rows | torch | export |",
            "| --- | ---: | ---: |",
        ]
        lines += [
            f"| score{f' ({name})' if name else ''} | {torch_:.4f} | {export:.4f} |"
            for name, torch_, export in self.scores()
        ]
        view = " (without text)" if self.with_text else ""
        lines += [
            f"| accuracy {a}{view} | {v['torch']:.4f} | {v['export']:.4f} |"
            for a, v in self.per_attribute.items()
        ]
        lines.append(f"| min feature cosine | | {self.min_feature_cosine:.5f} |")
        return "\n".join(lines) + "\n"


def _accuracy(truth: pd.DataFrame, predicted: pd.DataFrame, attributes: list[str]) -> dict[str, float]:
    merged = truth.merge(predicted, on=ID, suffixes=("", "_pred"))
    out = {}
    for attribute in attributes:
        if attribute not in truth.columns:
            continue
        labelled = merged[attribute].notna()
        if labelled.any():
            hits = merged.loc[labelled, attribute].astype(str) == merged.loc[labelled, f"{attribute}_pred"]
            out[attribute] = float(hits.mean())
    return out


def _score(
    predictor: Predictor, features: np.ndarray, frame: pd.DataFrame, text: TextFeatures | None = None
) -> tuple[float, dict, Any]:
    cats = frame[CATEGORY].astype(str).tolist()
    # Listing heads: as listings without a title unless ``text`` is given.
    preds = predictor.predict_rows(features, cats, frame[ID].astype(str).tolist(), text)
    predicted = wide_named_frame(preds, predictor.schema.attributes)
    truth = frame.assign(**{ID: frame[ID].astype(str)})
    report = attribute_score(truth, predicted, predictor.schema.categories)
    return report.score, _accuracy(truth, predicted, predictor.schema.attributes), predicted


def parity(
    reference: Predictor,
    candidate: Predictor,
    frame: pd.DataFrame,
    paths: list[str],
    cfg: RunConfig,
    *,
    tolerance: float,
    progress: bool = True,
) -> ParityReport:
    """Score both predictors on the same rows (torch features come from the cache when warm)."""
    ids = frame[ID].astype(str).tolist()
    cache = FeatureCache(cfg.embed.cache_dir, reference.backbone.fingerprint())
    common = {"batch_size": cfg.embed.batch_size, "num_workers": cfg.embed.num_workers, "progress": progress}
    ref = embed_images(ids, paths, reference.backbone, cache=cache, description="parity (torch)", **common)
    new = embed_images(ids, paths, candidate.backbone, description="parity (export)", **common)
    ok = ref.ok & new.ok
    if not ok.any():  # nothing to compare: not a precision problem, so no refusal report either
        reasons = describe_counts(Counter(e.reason for e in ref.errors or new.errors))
        raise ValueError(
            f"parity check: none of the {len(ids)} dev images could be read ({reasons}), e.g. {paths[0]}; "
            "point catalog.image_root at the run's images (--set catalog.image_root=FOLDER)"
        )
    rows = frame[ok].reset_index(drop=True)
    a, b = ref.features[ok], new.features[ok]
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    torch_score, torch_acc, _ = _score(reference, a, rows)
    export_score, export_acc, _ = _score(candidate, b, rows)
    with_text = None
    if reference.reads_text and TEXT in rows.columns:
        # Both share the checkpoint's text features: only the image side differs.
        text = reference.text_features(rows[TEXT].tolist(), rows[CATEGORY].astype(str).tolist())
        with_text = {
            "torch": _score(reference, a, rows, text)[0],
            "export": _score(candidate, b, rows, text)[0],
        }
    runtime = getattr(candidate.backbone, "runtime", "torch")
    return ParityReport(
        runtime=runtime,
        precision=getattr(candidate.backbone, "precision", "fp32"),
        rows=len(rows),
        torch_score=float(torch_score),
        export_score=float(export_score),
        tolerance=tolerance,
        per_attribute={
            k: {"torch": torch_acc[k], "export": export_acc.get(k, float("nan"))} for k in torch_acc
        },
        min_feature_cosine=float(cosine.min()) if len(cosine) else float("nan"),
        with_text={k: float(v) for k, v in with_text.items()} if with_text else None,
    )


def calibration_batches(predictor: Predictor, paths: list[str], seed: int) -> list[np.ndarray]:
    """Preprocessed training images in batches, the way the exported backbone will see them."""
    order = np.random.default_rng(seed).permutation(len(paths))
    pixels = []
    for i in order:
        try:
            pixels.append(predictor.backbone.preprocess(load_image(paths[i])))
        except ImageLoadError:  # an unreadable training image is just not used
            continue
    stacked = torch.stack(pixels).numpy() if pixels else np.zeros((0,))
    return [stacked[i : i + _CALIBRATION_BATCH] for i in range(0, len(stacked), _CALIBRATION_BATCH)]


def _answers(
    manifest: dict[str, Any], calibration_rows: int | None, parity_rows: int, tolerance: float
) -> bool:
    """Whether an existing export is the one asked for: int8 calibrated on as many rows, and (unless the
    check is skipped) checked against torch within ``tolerance``. An export ``predict`` or ``serve`` built
    on first load has no check; one checked at a looser tolerance does not pass a tighter one."""
    if calibration_rows is not None and manifest.get("calibration_rows") != calibration_rows:
        return False
    if parity_rows <= 0:
        return True
    checked = manifest.get("parity")
    return checked is not None and checked["tolerance"] <= tolerance


def export_run(
    run_dir: str | os.PathLike,
    cfg: RunConfig,
    *,
    runtime: str = "auto",
    precision: str = "fp32",
    calibration_rows: int = 0,
    parity_rows: int = 1000,
    tolerance: float = 0.005,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Export ``run_dir`` for ``runtime``/``precision`` after a parity check; returns folder and manifest.

    ``calibration_rows``: training rows int8 is calibrated on (required for int8). ``parity_rows``: how
    many validation rows the parity report scores (0 = skip the check). Raises :class:`ExportRefused`
    when the score drops by more than ``tolerance``.
    """
    run_dir = Path(run_dir)
    resolved = rt.resolve_runtime(runtime, precision, "cpu")
    if resolved == "torch":
        raise ValueError("runtime torch runs the checkpoint as it is: nothing to export")
    if precision == "int8" and calibration_rows <= 0:
        raise ValueError(
            "int8 needs calibration images from your training rows: pass --calibrate N (e.g. 256)"
        )
    # The reference is torch fp32 whatever numerics the heads were fitted on (a bf16 run included).
    reference = Predictor.from_pretrained(run_dir, device="cpu", runtime="torch", precision="fp32")
    root = rt.exports_root(run_dir, default_cache_dir() / "exports" / reference.version)
    folder = root / f"{resolved}-{precision}"
    manifest = None if force else rt.read_manifest(folder)
    current = (reference.backbone.fingerprint(), reference.version)
    if (
        manifest is not None
        and (manifest.get("fingerprint"), manifest.get("checkpoint")) == current
        and _answers(manifest, calibration_rows if precision == "int8" else None, parity_rows, tolerance)
    ):
        return folder, manifest
    # Calibration images from the training part, parity on the dev part: the run's own split.
    data = prepare_catalog(cfg)
    catalog = data.catalog
    known = catalog.frame[CATEGORY].astype(str).isin(reference.categories).to_numpy()
    train_idx, val_idx = data.split.train[known[data.split.train]], data.split.dev[known[data.split.dev]]
    paths = [str(p) for p in catalog.image_paths()]
    rng = np.random.default_rng(cfg.train.seed)
    calibration = None
    if precision == "int8":
        chosen = rng.choice(train_idx, size=min(calibration_rows, len(train_idx)), replace=False)
        calibration = calibration_batches(reference, [paths[i] for i in chosen], cfg.train.seed)
    # Built and checked in a folder of this process's own, so that the next export can tell the folders
    # of exports killed midway and remove them.
    rt.remove_stale(root, _CANDIDATE)
    work = root / f"{_CANDIDATE}{resolved}-{precision}-{os.getpid()}"
    candidate_dir = work / "export"
    # Listing heads take more inputs than the exported graph: they stay on torch, as the predictor runs them.
    heads = None if reference.reads_text else reference.heads
    with rt.private_folder(work):
        manifest = rt.export(
            candidate_dir,
            reference.backbone,
            heads,
            reference.checkpoint.feature_dim,
            resolved,
            precision,
            calibration=calibration,
            extra={"checkpoint": reference.version, "calibration_rows": calibration_rows},
            replace=True,
        )
        report = None
        if parity_rows > 0:
            backbone, exported, _ = rt.load_export(candidate_dir, reference.backbone, heads)
            candidate = Predictor(
                reference.checkpoint,
                exported or reference.heads,
                backbone,
                version=reference.version,
                text=reference.text,
            )
            rows = (
                val_idx if len(val_idx) <= parity_rows else np.sort(rng.choice(val_idx, parity_rows, False))
            )
            frame = catalog.frame.iloc[rows].reset_index(drop=True)
            report = parity(
                reference,
                candidate,
                frame,
                [paths[i] for i in rows],
                cfg,
                tolerance=tolerance,
                progress=progress,
            )
            report.calibration_rows = calibration_rows
            (candidate_dir / PARITY_FILE).write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
            if not report.passed:
                (root / f"{folder.name}.refused.json").write_text(
                    json.dumps(report.to_dict(), indent=1), encoding="utf-8"
                )
                raise ExportRefused(report)
            manifest["parity"] = report.to_dict()
            (candidate_dir / rt.MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        rt.install(candidate_dir, folder)
    return folder, manifest
