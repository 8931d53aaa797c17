"""A checkpoint directory carries everything needed to predict, and nothing that needs the training data.

Layout: ``model.safetensors`` (heads), ``taxonomist.json`` (backbone spec with its preprocessing and
fingerprint, categories, calibration, head sizes, metrics), ``schema.json`` (allowed values, which is
also each head's vocabulary) and ``config.yaml`` (the resolved run config, for the record).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from taxonomist.data.schema import Schema, SchemaError
from taxonomist.io import atomic_write
from taxonomist.models.fusion import HAS_IMAGE, HAS_TEXT, ListingEnsemble, ListingHeads
from taxonomist.models.heads import AttributeHeads, HeadsEnsemble, allowed_masks

FORMAT_VERSION = 1
META_FILE = "taxonomist.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_FILE = "backbone.safetensors"
SCHEMA_FILE = "schema.json"
PREDICTING_FILES = (META_FILE, WEIGHTS_FILE, SCHEMA_FILE, BACKBONE_FILE)
"""The files that decide a heads checkpoint's predictions (``config.yaml`` is a record, not an input)."""

SectionCheck = Callable[[str, Mapping[str, Any]], dict[str, Any]]
"""Checks a recorded config section (``backbone`` or ``heads``) by name and fills the keys it lacks:
:func:`taxonomist.models.build.checked_section`, so that this module reads no config."""


class CheckpointError(ValueError):
    """A directory that is not a readable taxonomist checkpoint, or a checkpoint asked for what it was
    not trained to do (listing text for image-only heads, predicting without the image)."""


@dataclass
class HeadsCheckpoint:
    backbone: dict[str, Any]
    """The ``backbone`` section the features come from (``models.build.checkpoint_backbone`` rebuilds it)."""
    preprocess: dict[str, Any]
    fingerprint: str
    feature_dim: int
    schema: Schema
    categories: list[str]
    heads: dict[str, Any]
    """The ``heads`` section: ``hidden``, ``category_dim``, ``dropout``, ``inputs``."""
    temperatures: dict[str, float] = field(default_factory=dict)
    logit_adjustment: dict[str, list[float]] = field(default_factory=dict)
    """Per attribute additive logit bias (prior correction that favours macro-F1); empty = none."""
    metrics: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    """Listing heads only (``heads.inputs`` has ``text``): the text settings (``TextConfig``), the
    encoder's ``fingerprint`` (and its ``fingerprint_scheme``: absent = 1), the text feature ``dim`` and
    the catalog's ``text_columns`` the listing text was joined from (absent before they were recorded);
    empty for image-only heads."""
    temperatures_by_inputs: dict[str, dict[str, float]] = field(default_factory=dict)
    """Listing heads: temperatures per set of inputs a row has (``image``, ``text``); a row with both
    uses ``temperatures``."""
    logit_adjustment_by_inputs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Listing heads with ``train.class_balance: dev``: the prior correction chosen for rows with those
    inputs only (an attribute left out has none); a set not named here takes ``logit_adjustment``."""
    runtime: str = "torch"
    """Runtime and precision of the features the heads were fitted on; prediction keeps the precision."""
    precision: str = "fp32"
    weights_fingerprint: str = ""
    """The torch backbone's own fingerprint (``fingerprint`` is the feature key: it adds runtime and
    precision, except for torch fp32 where both are equal)."""

    def __post_init__(self) -> None:
        self.weights_fingerprint = self.weights_fingerprint or self.fingerprint

    @property
    def inputs(self) -> list[str]:
        """The modalities the heads were trained on: ``["image"]`` or ``["image", "text"]``."""
        return list(self.heads["inputs"])

    @property
    def text_columns(self) -> list[str]:
        """The catalog columns listing heads learned from, joined in this order; empty for image-only heads
        and for listing checkpoints older than this record (their text is one whole listing text)."""
        return list(self.text.get("text_columns", []))

    @property
    def predicts_without_image(self) -> bool:
        """Listing heads trained to predict from the text alone (``text.image_dropout`` > 0)."""
        return "text" in self.inputs and self.text.get("image_dropout", 0.0) > 0

    def check_allow_missing_image(self, allow_missing_image: bool) -> None:
        """Refuse ``predict.allow_missing_image`` for heads that never learned to predict without the
        image; batch jobs call this before they write anything, so a corrected rerun is not blocked."""
        if allow_missing_image:
            self.check_predicts_without_image("predict.allow_missing_image", "leave the setting false")

    def check_predicts_without_image(self, asked: str, remedy: str) -> None:
        """Refuse what ``asked`` names (a prediction without the image) for heads never trained for it."""
        if not self.predicts_without_image:
            raise CheckpointError(
                f"{asked} needs listing heads trained with text.image_dropout > 0; "
                f"this checkpoint never learned to predict without the image ({remedy})"
            )

    def build_model(self) -> AttributeHeads | HeadsEnsemble | ListingHeads:
        masks = allowed_masks(self.schema, self.categories)
        shape = {k: self.heads[k] for k in ("hidden", "category_dim", "dropout")}
        n = int(self.heads.get("members", 1))
        if "text" in self.inputs:
            listing = [
                ListingHeads(
                    self.feature_dim,
                    int(self.text["dim"]),
                    masks,
                    **shape,
                    fusion=self.text.get("fusion", "concat"),
                    lexical_dim=int(self.text.get("lexical_dim", 0)),
                    lexical_width=int(self.text.get("lexical_width", 128)),
                    probe_offset=self.text.get("probe_offset"),
                    image_fallback=bool(self.text.get("image_fallback", False)),
                )
                for _ in range(n)
            ]
            return listing[0] if n == 1 else ListingEnsemble(listing)
        members = [AttributeHeads(self.feature_dim, masks, **shape) for _ in range(n)]
        return members[0] if n == 1 else HeadsEnsemble(members)

    def save(
        self,
        directory: str | os.PathLike,
        model: AttributeHeads | HeadsEnsemble | ListingHeads,
        backbone_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """``backbone_state``: weights that cannot be rebuilt from ``backbone.name`` (random init, tuned).

        Saving over an earlier checkpoint: its description goes first and comes back last, so a crash in
        between leaves a folder that does not load (rather than new weights beside the old temperatures
        and corrections), and a backbone file this model does not have is removed, not loaded with it.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / META_FILE).unlink(missing_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "attribute-heads",
            "backbone": dict(self.backbone),
            "preprocess": self.preprocess,
            "fingerprint": self.fingerprint,
            "feature_dim": self.feature_dim,
            "categories": self.categories,
            "heads": dict(self.heads),
            "temperatures": self.temperatures,
            "logit_adjustment": self.logit_adjustment,
            "metrics": self.metrics,
            "features": {
                "runtime": self.runtime,
                "precision": self.precision,
                "weights_fingerprint": self.weights_fingerprint,
            },
        }
        if self.text:
            meta["text"] = self.text
            meta["temperatures_by_inputs"] = self.temperatures_by_inputs
            meta["logit_adjustment_by_inputs"] = self.logit_adjustment_by_inputs
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
        if backbone_state is not None:
            tensors = {k: v.detach().contiguous() for k, v in backbone_state.items()}
            atomic_write(directory / BACKBONE_FILE, lambda p: save_file(tensors, str(p)))
        else:
            (directory / BACKBONE_FILE).unlink(missing_ok=True)
        self.schema.save(directory / SCHEMA_FILE)
        atomic_write(
            directory / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        )

    @classmethod
    def load(
        cls, directory: str | os.PathLike, check: SectionCheck
    ) -> tuple[HeadsCheckpoint, AttributeHeads | HeadsEnsemble | ListingHeads]:
        """``check`` reads the recorded sections (``models.build.load_heads_checkpoint`` passes it)."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            unfinished = (directory / WEIGHTS_FILE).is_file()
            why = "its save did not finish: train again" if unfinished else "not a taxonomist checkpoint"
            raise CheckpointError(f"{directory}: {why} (no {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{meta_path}: not valid JSON ({err}); was it edited?") from err
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise CheckpointError(f"{meta_path}: format version {version} is not supported")
        # An edited file fails here with a key or type error deep inside; say which file instead.
        try:
            ckpt = cls._from_meta(meta, directory, check)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, CheckpointError | SchemaError):  # these name their own file
                raise
            what = f"no {err}" if isinstance(err, KeyError) else str(err)
            raise CheckpointError(f"{meta_path}: not a valid checkpoint description ({what})") from err
        if ckpt.metrics.get("head") == "attention":
            # Its heads read the backbone's feature map, which no predictor runs: say so, not "weights from
            # two different runs" when the MLP heads built here do not fit them.
            raise CheckpointError(
                f"{directory}: its heads are attention heads over the backbone's feature map "
                "(finetune.head: attention), which predict, evaluate, serve and bench do not run; its "
                "scores are in metrics.json. Train with finetune.head: mlp for a checkpoint they load"
            )
        model = ckpt.build_model()
        weights = directory / WEIGHTS_FILE
        try:
            model.load_state_dict(_load_tensors(weights))
        except RuntimeError as err:  # weights of another shape: files from two different runs
            raise CheckpointError(
                f"{weights}: does not fit {META_FILE} ({str(err).splitlines()[0]})"
            ) from err
        return ckpt, model.eval()

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], directory: Path, check: SectionCheck) -> HeadsCheckpoint:
        return cls(
            backbone=check("backbone", meta["backbone"]),
            preprocess=meta["preprocess"],
            fingerprint=meta["fingerprint"],
            feature_dim=meta["feature_dim"],
            schema=Schema.load(directory / SCHEMA_FILE),
            categories=meta["categories"],
            heads=check("heads", meta["heads"]),
            temperatures=meta.get("temperatures", {}),
            logit_adjustment=meta.get("logit_adjustment", {}),
            metrics=meta.get("metrics", {}),
            text=meta.get("text", {}),
            temperatures_by_inputs=meta.get("temperatures_by_inputs", {}),
            logit_adjustment_by_inputs=meta.get("logit_adjustment_by_inputs", {}),
            **meta.get("features", {}),
        )

    @staticmethod
    def backbone_state(directory: str | os.PathLike) -> dict[str, torch.Tensor] | None:
        path = Path(directory) / BACKBONE_FILE
        return _load_tensors(path) if path.is_file() else None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a :class:`CheckpointError` naming it (missing, truncated, not one)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); copy it again") from err


def input_rows(present: torch.Tensor) -> dict[str, torch.Tensor]:
    """Listing heads' (n, 2) image/text flags → the rows missing an input, by the inputs they have:
    ``image`` (no title) and ``text`` (no readable image). Rows with both are in neither."""
    present = present.bool()
    return {"image": present[:, HAS_IMAGE] & ~present[:, HAS_TEXT], "text": ~present[:, HAS_IMAGE]}


def calibrated_probs(
    logits: Mapping[str, torch.Tensor],
    temperatures: Mapping[str, float],
    *,
    by_inputs: Mapping[str, Mapping[str, float]] | None = None,
    present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """softmax(logits / T): the confidences the checkpoint stands behind (``{}`` = T = 1, "before").

    ``present`` (listing heads: (n, 2) image/text flags) picks each row's temperature from ``by_inputs``
    by the inputs it had: a row predicted from its image alone is less sure than one with its title too.
    The prior correction is not in here: it changes which value a row gets (:func:`decision_scores`),
    not how likely each value is, so the probabilities stay calibrated with or without it.
    """
    out = {}
    groups = input_rows(present) if present is not None and by_inputs else {}
    for attribute, z in logits.items():
        t = temperatures.get(attribute, 1.0)
        if groups:
            t = torch.full((len(z), 1), t, dtype=z.dtype, device=z.device)
            for key, rows in groups.items():
                t_key = by_inputs.get(key, {}).get(attribute)
                if t_key is not None:
                    t[rows.to(z.device)] = t_key
        out[attribute] = torch.softmax(z / t, dim=-1)
    return out


def decision_scores(
    probs: Mapping[str, torch.Tensor],
    adjustment: Mapping[str, Sequence[float]],
    *,
    by_inputs: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """log p plus the prior correction (``-s · log prior``, where the checkpoint has one); -inf where a
    value is not allowed. A row's value is the argmax, its confidence that value's probability.

    The correction lifts rare values, which macro-F1 weighs as much as common ones, as a decision rule:
    applied before the temperature it would also skew the confidences, and four-seed listing heads with
    it missed the 0.02 ECE target on season (``benchmarks/multimodal.py``). ``by_inputs`` and
    ``present`` (listing heads) give rows missing an input the correction chosen for them: a row
    without its title is decided as the image heads alone would be."""
    groups = input_rows(present) if present is not None and by_inputs else {}
    out = {}
    for attribute, p in probs.items():
        bias = torch.zeros_like(p)
        if attribute in adjustment:
            bias[:] = torch.tensor(adjustment[attribute], dtype=p.dtype, device=p.device)
        for key, rows in groups.items():
            if key in by_inputs:
                chosen = by_inputs[key].get(attribute)
                bias[rows.to(p.device)] = (
                    0.0 if chosen is None else torch.tensor(chosen, dtype=p.dtype, device=p.device)
                )
        out[attribute] = torch.log(p) + bias
    return out


def checkpoint_digest(directory: str | os.PathLike, patterns: Iterable[str] = ("*",)) -> str:
    """Short sha256 of a model's content: the files in ``directory`` matching the glob ``patterns``.

    Content, not location: a model retrained into the same folder gets a new digest, so a served model
    reports which weights answered and a resumed batch job never mixes parts from two models. Name only
    the files the model loads: outputs written inside the folder must not change it.
    """
    directory = Path(directory)
    files = sorted({p for pattern in patterns for p in directory.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode())
        with open(path, "rb") as fp:
            while chunk := fp.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def checkpoint_version(directory: str | os.PathLike) -> str:
    """A heads checkpoint's version: the digest of the files that decide its predictions."""
    return checkpoint_digest(directory, PREDICTING_FILES)
