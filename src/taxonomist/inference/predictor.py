"""``Predictor.from_pretrained(dir).predict(...)``: checkpoint → valid attributes with confidences."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from taxonomist.data.catalog import CATEGORY, ID, MEESHO_MAX_ATTRS, TEXT, Catalog, join_text
from taxonomist.data.images import DEFAULT_MAX_PIXELS, REASONS, ImageError, load_image
from taxonomist.data.schema import SchemaError
from taxonomist.data.taxonomy import normalize_text
from taxonomist.devices import module_device, resolve_device
from taxonomist.features.cache import FeatureCache, default_cache_dir
from taxonomist.features.embed import embed_images
from taxonomist.features.text import ListingText, TextFeatures, load_listing_text
from taxonomist.io import ChunkedWriter, atomic_write_frame, atomic_write_text
from taxonomist.metrics import apply_temperature
from taxonomist.models.build import checkpoint_backbone, load_heads_checkpoint
from taxonomist.models.checkpoint import (
    CheckpointError,
    HeadsCheckpoint,
    calibrated_probs,
    checkpoint_version,
    decision_scores,
)
from taxonomist.models.fusion import lexical_batch, listing_heads
from taxonomist.models.heads import allowed_masks
from taxonomist.models.runtime import exports_root, on_runtime, runtime_device
from taxonomist.progress import progress_bar

ImageInput = Image.Image | str | os.PathLike
ListingTexts = Sequence[str | None] | Mapping[str, Sequence[str | None]] | None
"""What :meth:`Predictor.predict` reads as listing text: titles, or one list per text column."""


TOP_K = 9
"""Alternatives kept per predicted attribute: the review page's keys 1-9."""


@dataclass(frozen=True)
class AttributeValue:
    value: str
    confidence: float
    alternatives: tuple[tuple[str, float], ...] = ()
    """The values in the order the model ranks them (the value first), with their probabilities."""


@dataclass
class Prediction:
    id: str
    category: str
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


ROW_ERROR_COLUMNS = ["id", "line", "path", "reason", "detail"]
"""errors.csv of a batch job: every row not predicted, with its line in the input file and why."""

RETRIED_REASONS = frozenset(REASONS)
"""The errors a rerun of a batch job tries again in its finished chunks: an image's (missing, unreadable,
...), which the user can fix without changing the input rows. A row's own errors (an unknown category)
would come back the same, so they stay as the chunk has them."""


@dataclass
class PredictSummary:
    out_dir: str
    rows: int
    predicted: int
    errors: int
    resumed_chunks: int
    seconds: float
    images_per_s: float | None
    """Rows predicted in this run per second; None when this run predicted nothing (no figure to give)."""
    error_reasons: dict[str, int] = field(default_factory=dict)
    predicted_by_inputs: dict[str, int] | None = None
    """Listing heads: predicted rows by what they were predicted from (``image + text``, ``image``,
    ``text``: an unreadable image with ``allow_missing_image``); None for image-only heads."""
    retried_rows: int = 0
    """Rows of chunks finished by an earlier run tried again because their image had failed (see
    :data:`RETRIED_REASONS`): the user may have fixed the images since."""
    recovered_rows: int = 0
    """Of the retried rows, those no longer in errors.csv."""
    text_note: str | None = None
    """Listing heads on rows without (some of) their text columns: what the rows were predicted from."""

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        for optional in ("predicted_by_inputs", "text_note"):
            if d[optional] is None:
                del d[optional]
        return d

    def failure(self, max_error_share: float) -> str | None:
        """Why this job should count as failed (every row, or more than ``max_error_share`` of them, in
        errors.csv), in one line; None when it did its work. A rerun that retried rows whose image had
        failed says how many came back, so a user who fixed the images sees that they were looked at."""
        if not self.rows or self.errors == 0:
            return None
        if self.predicted and self.errors / self.rows <= max_error_share:
            return None
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.error_reasons.items(), key=lambda x: -x[1]))
        share = "every row" if not self.predicted else f"more than {max_error_share:.0%} of the rows"
        retried = ""
        if self.retried_rows:
            retried = (
                f"; {self.retried_rows} rows whose image had failed in an earlier run were tried again "
                f"({self.recovered_rows} recovered)"
            )
        return (
            f"{self.errors} of {self.rows} rows failed{f' ({reasons})' if reasons else ''}, {share}; see "
            f"{Path(self.out_dir) / 'errors.csv'}{retried}"
        )


class Predictor:
    """Frozen backbone + attribute heads + calibration, loaded from a checkpoint directory."""

    def __init__(
        self,
        checkpoint: HeadsCheckpoint,
        heads,
        backbone,
        *,
        version: str = "",
        text: ListingText | None = None,
    ) -> None:
        """``version``: the checkpoint's content digest (set by :meth:`from_pretrained`); batch jobs
        record it so a resume never mixes rows predicted by two models. ``text``: the text features of
        a listing checkpoint (``heads.inputs`` has ``text``)."""
        self.checkpoint = checkpoint
        self.text = text
        self.version = version
        self.heads = heads
        self.backbone = backbone
        self.schema = checkpoint.schema
        self._category_index = {c: i for i, c in enumerate(checkpoint.categories)}
        self._vocab = {a: self.schema.values(a) for a in self.schema.attributes}

    @property
    def device(self) -> torch.device:
        return module_device(self.backbone)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        runtime: str | None = "auto",
        precision: str | None = None,
    ) -> Predictor:
        """``device``: auto (the GPU when there is one), cpu, cuda or cuda:N, for backbone and heads.
        ``runtime``: auto, torch, onnxruntime or openvino (see :mod:`taxonomist.models.runtime`), None =
        the one the heads were fitted on; ``precision``: default the heads' own. A runtime other than
        torch loads the run's export, exporting into ``RUN/exports`` (or the cache when the run is
        read-only) first."""
        checkpoint, heads = load_heads_checkpoint(path)
        precision = precision or checkpoint.precision
        # A runtime other than torch runs on the CPU: so do the heads and text encoder around it.
        resolved, target = runtime_device(runtime or checkpoint.runtime, precision, resolve_device(device))
        backbone = checkpoint_backbone(checkpoint)
        state = HeadsCheckpoint.backbone_state(path)
        if state is not None:
            backbone.load_state_dict(state)
        if backbone.fingerprint() != checkpoint.weights_fingerprint:
            raise RuntimeError(
                f"{path}: backbone {checkpoint.backbone['name']!r} now loads other weights or preprocessing "
                f"(fingerprint {backbone.fingerprint()} != {checkpoint.weights_fingerprint}); the heads were "
                "trained on the old features"
            )
        version = checkpoint_version(path)
        # Listing heads (image + text) take more inputs than the exported graph: they stay on torch.
        exported_heads = None if checkpoint.text else heads.to(target)
        root = exports_root(path, default_cache_dir() / "exports" / version)
        backbone, runtime_heads, _ = on_runtime(
            backbone.to(target),
            exported_heads,
            runtime=resolved,
            precision=precision,
            device=target,
            root=root,
            feature_dim=checkpoint.feature_dim,
            extra={"checkpoint": version},
        )
        text = None
        if checkpoint.text:  # the sentence encoder runs fp32 (its numerics when the heads were fitted)
            text_runtime = "torch" if resolved == "torch" else "auto"
            text = load_listing_text(path, checkpoint, target, runtime=text_runtime, export_root=root)
        return cls(checkpoint, runtime_heads or heads.to(target).eval(), backbone, version=version, text=text)

    @property
    def runtime(self) -> str:
        """Where the backbone runs, e.g. ``openvino bf16`` or ``torch fp32``."""
        return f"{getattr(self.backbone, 'runtime', 'torch')} {getattr(self.backbone, 'precision', 'fp32')}"

    @property
    def reads_text(self) -> bool:
        """Whether the heads read listing text (the checkpoint was trained on image + text)."""
        return self.text is not None

    @property
    def text_columns(self) -> list[str]:
        """The catalog columns listing heads learned from, joined (:func:`join_text`) in this order;
        empty for image-only heads and for listing checkpoints older than this record."""
        return self.checkpoint.text_columns if self.reads_text else []

    def listing_texts(self, texts: ListingTexts, n: int) -> Sequence[str | None] | None:
        """``texts`` as :meth:`predict` takes them → one listing text per row, joined from the
        checkpoint's columns as training joined them. A plain list is refused for a model of several
        columns: it would be read as their join, and a title alone is not what that model learned from."""
        if not isinstance(texts, Mapping):
            columns = self.text_columns
            if texts is not None and len(columns) > 1:
                raise ValueError(
                    f"this checkpoint read its listing text from the columns {columns}, joined: pass "
                    f"texts={{{', '.join(f'{c!r}: [...]' for c in columns)}}}, one list per column (a column "
                    "may be left out or hold None where a listing has none)"
                )
            return texts
        # Image-only heads take the mapping as it is: text_features refuses any text in it.
        columns = self.text_columns if self.reads_text else list(texts)
        unknown = [c for c in texts if c not in columns]
        if unknown:
            known = f"its columns are {columns}" if columns else "it records no text columns: pass one list"
            raise ValueError(f"texts names columns {unknown} this checkpoint did not learn from; {known}")
        for column, values in texts.items():
            if isinstance(values, str) or len(values) != n:
                got = "one string" if isinstance(values, str) else f"{len(values)} texts"
                raise ValueError(f"texts[{column!r}] must be a list of {n} texts, one per image; got {got}")
        # By position, as a plain list is read: a pandas Series from a sorted or filtered frame has labels.
        values = {c: list(texts[c]) for c in columns if c in texts}
        return [join_text(values[c][row] if c in values else None for c in columns) for row in range(n)]

    def text_features(
        self, texts: Sequence[str | None] | None, categories: Sequence[str]
    ) -> TextFeatures | None:
        """The texts of rows of ``categories`` (normalised here; None = every row blank) → the text
        features of listing heads; None for image-only heads.

        Giving texts to image-only heads is an error: they would be ignored, silently."""
        if not self.reads_text:
            if texts is not None and any(normalize_text(t) for t in texts):
                raise CheckpointError(
                    "this checkpoint was trained on images only (heads.inputs: [image]); it cannot read "
                    "listing text: leave the texts out, or train with heads.inputs: [image, text]"
                )
            return None
        return self.text.features(
            _normal_texts(texts, len(categories)), self.category_indices(categories).numpy()
        )

    def probe_probs(
        self, texts: Sequence[str | None] | None, categories: Sequence[str]
    ) -> dict[str, np.ndarray] | None:
        """Listing heads with a lexical probe: attribute → (n, n_values) probabilities of that probe alone
        (TF-IDF n-grams ⊕ category, fitted on the training rows), zero outside each row's category: the
        text-only model the listing heads are measured against. None without a probe."""
        probe = self.text.probe if self.reads_text else None
        if probe is None:
            return None
        if not len(categories):  # no titled row to score (sklearn refuses zero rows)
            return {
                a: np.zeros((0, len(self.schema.values(a))), dtype=np.float32) for a in self.schema.attributes
            }
        index = self.category_indices(categories)
        masks = allowed_masks(self.schema, self.categories)
        log_probs = probe.model_.log_probs(_normal_texts(texts, len(categories)), index.numpy())
        return {a: apply_temperature(z, 1.0, masks[a][index].numpy()) for a, z in log_probs.items()}

    @property
    def categories(self) -> list[str]:
        return list(self.checkpoint.categories)

    def category_indices(self, categories: Sequence[str]) -> torch.Tensor:
        unknown = sorted({c for c in categories if c not in self._category_index})
        if unknown:
            raise SchemaError(f"unknown categories {unknown}; this model knows {self.categories}")
        return torch.tensor([self._category_index[c] for c in categories], dtype=torch.long)

    @torch.inference_mode()
    def predict_features(
        self,
        features: np.ndarray | torch.Tensor,
        categories: Sequence[str],
        text: TextFeatures | None = None,
        *,
        has_image: np.ndarray | None = None,
        calibrated: bool = True,
    ) -> dict[str, np.ndarray]:
        """attribute → (n, n_values) calibrated probabilities (zeros where the attribute does not apply);
        ``calibrated=False``: without the fitted temperature, for reliability diagrams before/after.

        ``text`` (listing heads): :meth:`text_features` of the rows; None = no row has text.
        ``has_image`` (listing heads): False for rows whose image could not be read (their features are
        ignored)."""
        device = module_device(self.heads)
        features = torch.as_tensor(features, dtype=torch.float32).to(device)
        category = self.category_indices(categories).to(device)
        if not self.reads_text:
            logits = self.heads(features, category)
            probs = calibrated_probs(logits, self.checkpoint.temperatures if calibrated else {})
            return {a: p.cpu().numpy() for a, p in probs.items()}
        text = text if text is not None else self.text_features(None, categories)
        present = torch.as_tensor(self.inputs_present(text, len(features), has_image))
        lexical = lexical_batch(text.lexical, device) if text.lexical is not None else None
        dense = torch.as_tensor(text.dense, dtype=torch.float32).to(device)
        logits = self.heads(features, dense, category, present.to(device), lexical)
        ckpt = self.checkpoint
        probs = calibrated_probs(
            logits,
            ckpt.temperatures if calibrated else {},
            by_inputs=ckpt.temperatures_by_inputs if calibrated else None,
            present=present,
        )
        return {a: p.cpu().numpy() for a, p in probs.items()}

    def inputs_present(
        self, text: TextFeatures | None, n: int, has_image: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Listing heads: (n, 2) image/text flags of the rows (``text`` None = no row has text,
        ``has_image`` None = every image read); None for image-only heads."""
        if not self.reads_text:
            return None
        texts = np.zeros(n, dtype=bool) if text is None else np.asarray(text.present, dtype=bool)
        images = np.ones(n, dtype=bool) if has_image is None else np.asarray(has_image, dtype=bool)
        return np.stack([images, texts], axis=1)

    def ranked(
        self, probs: Mapping[str, np.ndarray], present: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """attribute → (n, k) value indices, best first by :func:`decision_scores`: column 0 is the value
        each row gets. Without a prior correction that is the most probable value.

        ``present``: :meth:`inputs_present` of the rows, which listing heads with a correction per set
        of inputs need (a row without its title is decided as the image heads alone would be)."""
        by_inputs = self.checkpoint.logit_adjustment_by_inputs
        if by_inputs and present is None:
            raise ValueError("this checkpoint corrects rows by the inputs they have: pass present=")
        scores = decision_scores(
            {a: torch.from_numpy(p) for a, p in probs.items()},
            self.checkpoint.logit_adjustment,
            by_inputs=by_inputs,
            present=None if present is None else torch.as_tensor(present),
        )
        return {a: np.argsort(-z.numpy(), axis=1, kind="stable") for a, z in scores.items()}

    def decode(
        self,
        probs: dict[str, np.ndarray],
        ids: Sequence[str],
        categories: Sequence[str],
        *,
        present: np.ndarray | None = None,
        ranked: Mapping[str, np.ndarray] | None = None,
        min_confidence: float = 0.0,
        placeholder: str = "",
    ) -> list[Prediction]:
        """Each row's value, its calibrated probability as confidence, and up to ``TOP_K`` alternatives in
        the order the values were ranked; disallowed values (probability 0) never become alternatives.
        ``present``: as for :meth:`ranked`; ``ranked``: that method's answer for these ``probs`` where the
        caller already has it (it then decides the values, and ``present`` is not needed)."""
        ranked = ranked if ranked is not None else self.ranked(probs, present)
        out = []
        for row, (item_id, category) in enumerate(zip(ids, categories, strict=True)):
            pred = Prediction(str(item_id), category)
            for attribute in self.schema.attributes_of(category):
                p, order = probs[attribute][row], ranked[attribute][row]
                conf = float(p[order[0]])
                value = self._vocab[attribute][order[0]] if conf >= min_confidence else placeholder
                top = tuple(
                    (self._vocab[attribute][k], round(float(p[k]), 6)) for k in order[:TOP_K] if p[k] > 0
                )
                pred.attributes[attribute] = AttributeValue(value, conf, top)
            out.append(pred)
        return out

    def predict_rows(
        self,
        features: np.ndarray | torch.Tensor,
        categories: Sequence[str],
        ids: Sequence[str],
        text: TextFeatures | None = None,
        *,
        has_image: np.ndarray | None = None,
        min_confidence: float = 0.0,
        placeholder: str = "",
    ) -> list[Prediction]:
        """:meth:`predict_features` then :meth:`decode`, with the inputs each row had deciding its values:
        the path every caller with backbone features takes (batch jobs, serving, export checks)."""
        probs = self.predict_features(features, categories, text, has_image=has_image)
        present = self.inputs_present(text, len(categories), has_image)
        return self.decode(
            probs, ids, categories, present=present, min_confidence=min_confidence, placeholder=placeholder
        )

    @torch.inference_mode()
    def predict(
        self,
        images: Sequence[ImageInput | None],
        categories: Sequence[str],
        ids: Sequence[str] | None = None,
        *,
        texts: ListingTexts = None,
        min_confidence: float = 0.0,
        placeholder: str = "",
    ) -> list[Prediction]:
        """In-memory prediction for a few images (PIL images or paths); raises on an unreadable image.

        ``texts``: the listings' text for listing heads (None or "" where a listing has none), an error
        for image-only heads: a list of titles for a model of one text column (``catalog.text_columns``,
        :attr:`text_columns`), and for a model of several a mapping column → one text per image, e.g.
        ``{"title": [...], "description": [...]}``, joined as training joined them.

        An image may be None (a listing without a photo yet) for listing heads trained with
        ``text.image_dropout`` > 0: that row is predicted from its text alone, as
        ``predict.allow_missing_image`` does in batch jobs. A row with neither is refused (ValueError),
        as serve refuses it: the heads would answer from its category alone, with confidences no
        calibration covered."""
        for name, seq in (("images", images), ("categories", categories), ("ids", ids), ("texts", texts)):
            if isinstance(seq, str | os.PathLike | Image.Image):
                raise TypeError(f"{name} must be a list, got one {type(seq).__name__}: wrap it in [...]")
        ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
        if not len(images) == len(categories) == len(ids):
            raise ValueError(f"{len(images)} images, {len(categories)} categories and {len(ids)} ids")
        if texts is not None and not isinstance(texts, Mapping) and len(texts) != len(images):
            raise ValueError(f"{len(images)} images and {len(texts)} texts")
        texts = self.listing_texts(texts, len(images))
        if not images:
            return []
        has_image = np.array([im is not None for im in images])
        if not has_image.all():
            missing = np.flatnonzero(~has_image).tolist()
            self.checkpoint.check_predicts_without_image(
                f"images {missing} are None: predicting without them", "give each listing its image"
            )
            blank = [r for r in missing if texts is None or not normalize_text(texts[r])]
            if blank:
                raise ValueError(
                    f"listings {blank} have no image and a blank title: nothing to read (give each its "
                    "image or its title)"
                )
        self.category_indices(categories)  # fail before any decoding
        text = self.text_features(texts, categories)
        # PIL images go through the same loader as files: same orientation, mode and size rules.
        pixels = [None if im is None else self.backbone.preprocess(load_image(im)) for im in images]
        features, has_image = self.pixel_features(pixels)
        return self.predict_rows(
            features,
            categories,
            ids,
            text,
            has_image=has_image,
            min_confidence=min_confidence,
            placeholder=placeholder,
        )

    @torch.inference_mode()
    def pixel_features(self, pixels: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, np.ndarray | None]:
        """One backbone forward over preprocessed images: (features, zeros where a listing has no image;
        which rows had one, None where all did), as :meth:`predict_rows` takes them."""
        has_image = np.array([p is not None for p in pixels])
        if has_image.all():
            return self.backbone(torch.stack(list(pixels)).to(self.device, non_blocking=True)).float(), None
        features = torch.zeros(len(pixels), self.checkpoint.feature_dim, device=self.device)
        if has_image.any():
            present = torch.stack([p for p in pixels if p is not None]).to(self.device, non_blocking=True)
            features[torch.from_numpy(has_image).to(self.device)] = self.backbone(present).float()
        return features, has_image

    def predict_chunk(
        self,
        ids: Sequence[str],
        categories: Sequence[str],
        paths: Sequence[str | os.PathLike],
        *,
        texts: Sequence[str] | None = None,
        allow_missing_image: bool = False,
        cache: FeatureCache | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_confidence: float = 0.0,
        placeholder: str = "",
    ) -> tuple[list[Prediction], list[ImageError]]:
        """One chunk of a batch job: rows with an unknown category and unreadable images become errors,
        the rest predictions. Shared by the local and the Ray engine so both give the same numbers.

        Listing heads read ``texts``; with ``allow_missing_image`` a row whose image cannot be read is
        still predicted from its text (and still reported in the errors), unless its text is blank too:
        that row is only an error, its detail saying so, never predicted from its category alone."""
        self.checkpoint.check_allow_missing_image(allow_missing_image)
        rows, errors = [], []
        for r, category in enumerate(categories):
            if category in self._category_index:
                rows.append(r)
            else:  # reported and skipped, like a bad image
                detail = f"category {category!r} is not one of this model's {self.categories}"
                near = [c for c in self.categories if c.casefold() == str(category).casefold()]
                detail += f"; did you mean {near[0]!r}?" if near else ""
                errors.append(ImageError(ids[r], str(paths[r]), "unknown-category", detail))
        result = embed_images(
            [ids[r] for r in rows],
            [paths[r] for r in rows],
            self.backbone,
            cache=cache,
            batch_size=batch_size,
            num_workers=num_workers,
            max_pixels=max_pixels,
            progress=False,
        )
        keep, image_errors = result.ok, result.errors
        if allow_missing_image:
            titled = np.array(
                [texts is not None and bool(normalize_text(texts[r])) for r in rows], dtype=bool
            )
            keep = result.ok | titled
            unread = {ids[rows[i]] for i in np.flatnonzero(~keep)}
            image_errors = [
                dataclasses.replace(e, detail=f"{e.detail}; the title is blank too: not predicted")
                if e.id in unread
                else e
                for e in image_errors
            ]
        good = [rows[i] for i in np.flatnonzero(keep)]
        good_ids, good_cats = [ids[r] for r in good], [categories[r] for r in good]
        text = self.text_features([texts[r] for r in good] if texts is not None else None, good_cats)
        preds = self.predict_rows(
            result.features[keep],
            good_cats,
            good_ids,
            text,
            has_image=result.ok[keep],
            min_confidence=min_confidence,
            placeholder=placeholder,
        )
        return preds, errors + image_errors

    def predict_catalog(
        self,
        catalog: Catalog,
        out_dir: str | os.PathLike,
        *,
        batch_size: int = 32,
        num_workers: int = 2,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_dir: str | None = None,
        min_confidence: float = 0.0,
        placeholder: str = "",
        chunk_size: int = 512,
        use_cache: bool = False,
        progress: bool = True,
        allow_missing_image: bool = False,
    ) -> PredictSummary:
        """Batch job: Meesho-layout and long-layout CSVs, errors file, resumable after a crash. A rerun
        also retries the rows of finished chunks whose image failed (:data:`RETRIED_REASONS`), replacing
        their rows in the chunk's parts, so fixing the images and rerunning the command recovers them.

        errors.csv lists every row not predicted with its line in the input: the rows the catalog reader
        set aside (blank id or category, repeated id), unknown categories and unreadable images.

        Listing heads read the catalog's ``text`` column (a catalog without one: every row blank);
        image-only heads never read it."""
        self.checkpoint.check_allow_missing_image(allow_missing_image)  # before the job folder is claimed
        start = time.perf_counter()
        out_dir = Path(out_dir)
        frame = catalog.frame
        settings = {
            "model": self.version,
            "fingerprint": self.checkpoint.fingerprint,
            "features": self.backbone.fingerprint(),
            "min_confidence": min_confidence,
            "placeholder": placeholder,
        }
        all_ids = frame[ID].astype(str).tolist()
        all_cats = frame[CATEGORY].astype(str).tolist()
        paths = catalog.image_paths()
        rows_in = pd.DataFrame({ID: all_ids, CATEGORY: all_cats, "path": [os.path.abspath(p) for p in paths]})
        all_texts = None
        if self.reads_text:  # a resumed job must have read the same texts
            settings["allow_missing_image"] = allow_missing_image
            all_texts = frame[TEXT].tolist() if TEXT in frame.columns else [""] * len(frame)
            rows_in[TEXT] = all_texts
        writer = ChunkedWriter(out_dir, rows_in, chunk_size, settings)
        resumed = writer.n_chunks - len(writer.pending())
        jobs, retry = chunks_to_predict(writer, all_ids)
        cache = FeatureCache(cache_dir, self.backbone.fingerprint()) if use_cache else None
        predicted_now = 0
        done_before = len(frame) - sum(len(rows) for _, rows in jobs)
        with progress_bar("row", disable=not progress) as bar:
            task = bar.add_task("predict", total=len(frame), completed=done_before)
            for k, rows in jobs:
                preds, errors = self.predict_chunk(
                    [all_ids[r] for r in rows],
                    [all_cats[r] for r in rows],
                    [paths[r] for r in rows],
                    texts=[all_texts[r] for r in rows] if all_texts is not None else None,
                    allow_missing_image=allow_missing_image,
                    cache=cache,
                    batch_size=batch_size,
                    num_workers=num_workers,
                    max_pixels=max_pixels,
                    min_confidence=min_confidence,
                    placeholder=placeholder,
                )
                frames = {
                    "meesho": meesho_frame(preds, self.schema, catalog.attributes_by_category),
                    "long": long_frame(preds),
                    "errors": pd.DataFrame(
                        [e.__dict__ for e in errors], columns=["id", "path", "reason", "detail"]
                    ),
                }
                if k in retry:  # errors last (see ChunkedWriter.replace)
                    writer.replace(k, frames, retry[k])
                else:
                    writer.write(k, frames)
                predicted_now += len(preds)
                bar.advance(task, len(rows))
        meesho = writer.read("meesho", empty=meesho_frame([], self.schema, catalog.attributes_by_category))
        long, errors = writer.read("long", empty=long_frame([])), writer.read("errors")
        # The predicted rows' own failures: the rows the reader set aside may share a predicted row's id.
        own_errors = errors[ID] if len(errors) else ()
        counts = retry_counts(retry, own_errors)
        by_inputs = None
        if all_texts is not None:
            by_inputs = predicted_by_inputs(
                dict(zip(all_ids, all_texts, strict=True)), meesho[ID], own_errors
            )
        atomic_write_frame(meesho, out_dir / "predictions.csv")
        atomic_write_frame(long, out_dir / "predictions_long.csv")
        errors = row_errors(catalog, errors)
        atomic_write_frame(errors, out_dir / "errors.csv")
        seconds = time.perf_counter() - start
        summary = PredictSummary(
            str(out_dir),
            len(frame) + len(catalog.rejected),
            len(meesho),
            len(errors),
            resumed,
            seconds,
            predicted_now / seconds if predicted_now and seconds > 0 else None,
            {str(r): int(n) for r, n in errors["reason"].value_counts().items()},
            by_inputs,
            **counts,
            text_note=catalog.text_note if self.reads_text else None,
        )
        atomic_write_text(out_dir / "summary.json", json.dumps(summary.to_dict(), indent=1))
        return summary


def retried_ids(errors: pd.DataFrame) -> set[str]:
    """The ids in a finished chunk's ``errors`` part that a rerun tries again (:data:`RETRIED_REASONS`)."""
    return set(errors.loc[errors["reason"].isin(RETRIED_REASONS), "id"].astype(str))


def retry_counts(retry: Mapping[int, set[str]], failing: Iterable[object]) -> dict[str, int]:
    """:class:`PredictSummary`'s ``retried_rows`` and ``recovered_rows`` of a job that retried ``retry``
    (ids by chunk or shard), ``failing``: the ids its predicted rows' errors part holds afterwards."""
    retried = set().union(*retry.values())
    return {"retried_rows": len(retried), "recovered_rows": len(retried - {str(i) for i in failing})}


def chunks_to_predict(
    writer: ChunkedWriter, ids: Sequence[str]
) -> tuple[list[tuple[int, list[int]]], dict[int, set[str]]]:
    """A batch job's work on a rerun: (chunk, rows to predict) of each pending chunk, then of each finished
    chunk with rows whose image failed (``ids``: every row's id); and those retried ids by chunk."""
    retry = {}
    for k in range(writer.n_chunks):
        if writer.done(k) and (failed := retried_ids(pd.read_parquet(writer.part_path(k, "errors")))):
            retry[k] = failed
    jobs = [(k, list(writer.chunk_rows(k))) for k in writer.pending()]
    jobs += [(k, [r for r in writer.chunk_rows(k) if ids[r] in failed]) for k, failed in retry.items()]
    return jobs, retry


def row_errors(catalog: Catalog, errors: pd.DataFrame) -> pd.DataFrame:
    """``errors`` (id, path, reason, detail of rows that were read) and the rows the reader set aside, as
    one frame of :data:`ROW_ERROR_COLUMNS` in input order."""
    line_by_id = dict(zip(catalog.frame[ID].astype(str), catalog.lines or [], strict=False))
    errors = errors.reindex(columns=["id", "path", "reason", "detail"])
    errors.insert(1, "line", [line_by_id.get(str(i)) for i in errors["id"]])
    rejected = catalog.rejected.assign(path="")[ROW_ERROR_COLUMNS]
    out = pd.concat([f for f in (errors, rejected) if len(f)], ignore_index=True) if len(rejected) else errors
    out["line"] = out["line"].astype("Int64")
    return out.sort_values("line", kind="stable", na_position="last").reset_index(drop=True)[
        ROW_ERROR_COLUMNS
    ]


def predicted_by_inputs(
    texts: Mapping[str, str | None], predicted: Iterable[str], errors: Iterable[str]
) -> dict[str, int]:
    """Listing jobs: the predicted rows by what they were predicted from. ``texts``: id → listing text
    of every row; ``predicted``, ``errors``: the ids with a prediction and those in the errors (a row in
    both was predicted without its image)."""
    failed = {str(i) for i in errors}
    counts = {"image + text": 0, "image": 0, "text": 0}
    for item in predicted:
        item = str(item)
        counts["text" if item in failed else "image + text" if normalize_text(texts[item]) else "image"] += 1
    return counts


def with_row_errors(
    summary: PredictSummary, catalog: Catalog, errors: pd.DataFrame, out_dir: str | os.PathLike
) -> PredictSummary:
    """For engines that only see the rows read (Ray shards, the VLM batch job): ``errors.csv`` in
    ``out_dir`` rewritten with each row's line and the rows the reader set aside, and ``summary``
    counting them too, in ``summary.json`` as well (the engine's own counted the rows read only)."""
    table = row_errors(catalog, errors)
    atomic_write_frame(table, Path(out_dir) / "errors.csv")
    summary = dataclasses.replace(
        summary,
        rows=summary.rows + len(catalog.rejected),
        errors=len(table),
        error_reasons={str(r): int(n) for r, n in table["reason"].value_counts().items()},
    )
    atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary.to_dict(), indent=1))
    return summary


def meesho_frame(
    preds: Sequence[Prediction], schema, declared: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """id, Category, len, attr_1..attr_N: the category's k-th attribute in attr_k (competition layout).

    ``declared``: category → its attribute names in the file's own order (a Meesho catalog's
    ``category_attributes.parquet``), where attr_k must be that k-th name: an attribute the model left
    out (no training label) stays blank instead of moving the next one into its column."""
    order = {c: _layout(list(a), (declared or {}).get(c, ())) for c, a in schema.categories.items()}
    width = max([MEESHO_MAX_ATTRS, *(len(a) for a in order.values())])
    rows = []
    for p in preds:
        values = [p.attributes[a].value if a in p.attributes else None for a in order[p.category]]
        rows.append([p.id, p.category, len(values), *values, *[None] * (width - len(values))])
    return pd.DataFrame(rows, columns=["id", "Category", "len", *[f"attr_{k}" for k in range(1, width + 1)]])


def _layout(attributes: list[str], declared: Sequence[str]) -> list[str]:
    """A category's attr_k order: the declared names where they name every attribute the model predicts
    for it (a file that declares fewer, e.g. a generic one read without labels, keeps the model's)."""
    return list(declared) if set(attributes) <= set(declared) else attributes


def long_frame(preds: Sequence[Prediction]) -> pd.DataFrame:
    """One row per (item, attribute) with its confidence; ``top``: the model's best values as JSON
    ``[[value, probability], ...]`` (empty where the model gives none), which the review page offers."""
    rows = [
        (
            p.id,
            p.category,
            a,
            v.value,
            round(v.confidence, 6),
            json.dumps([list(t) for t in v.alternatives], ensure_ascii=False) if v.alternatives else "",
        )
        for p in preds
        for a, v in p.attributes.items()
    ]
    return pd.DataFrame(rows, columns=["id", "category", "attribute", "value", "confidence", "top"])


def _normal_texts(texts: Sequence[str | None] | None, n: int) -> list[str]:
    """Listing texts as the text features and the probe read them (None = ``n`` blank rows)."""
    return [normalize_text(t) for t in texts] if texts is not None else [""] * n


def wide_named_frame(preds: Sequence[Prediction], attributes: Sequence[str]) -> pd.DataFrame:
    """id, category, one column per attribute name: the layout the metric compares with labels."""
    return pd.DataFrame(
        [{ID: p.id, CATEGORY: p.category, **{a: v.value for a, v in p.attributes.items()}} for p in preds],
        columns=[ID, CATEGORY, *attributes],
    )


class ImagesToLogits(torch.nn.Module):
    """A checkpoint's backbone + heads as one module on preprocessed images (for efficiency reports), on
    the predictor's runtime.

    Every image is given category 0: the category only selects masks, so the cost is the same. Listing
    heads read, with each image, a title of ``title_tokens`` tokens (special tokens included) through the
    checkpoint's sentence encoder, so that the report counts the whole listing; ``title_tokens=0`` runs
    them as for listings without a title (the encoder is then neither run nor counted). An encoder on an
    inference runtime reads the title as text, as prediction hands it over. The lexical view and probe
    (scikit-learn, outside torch) are never counted; their probe columns are left at zero.
    """

    def __init__(self, predictor: Predictor, title_tokens: int = 0) -> None:
        super().__init__()
        self.backbone = predictor.backbone
        self.heads = predictor.heads
        self.runtime = predictor.runtime
        """Where one call runs, for the report: the predictor's runtime, and the title encoder's."""
        self.encoder = None
        self._text_encoder = None
        if listing_heads(self.heads) is not None and title_tokens > 0:
            encoder = predictor.text.encoder
            if title_tokens > encoder.max_length:
                raise ValueError(f"title_tokens {title_tokens} is over the encoder's {encoder.max_length}")
            self.encoder = encoder.model
            self.encoder_dim = encoder.dim
            # A fixed title of exactly ``title_tokens`` tokens: the cost depends on its length only.
            tokens = encoder.tokenizer(
                " ".join(["shirt"] * title_tokens),
                truncation=True,
                max_length=title_tokens,
                return_tensors="pt",
            )
            self.register_buffer("input_ids", tokens["input_ids"], persistent=False)
            self.register_buffer("attention_mask", tokens["attention_mask"], persistent=False)
            if encoder.runtime != "torch":
                self._text_encoder = encoder
                self._title = encoder.tokenizer.decode(tokens["input_ids"][0], skip_special_tokens=True)
            self.runtime += f", title encoder {encoder.runtime} {encoder.precision}"
        self.eval()

    @property
    def inputs(self) -> str:
        """What one call per image reads, for the report."""
        if self.encoder is not None:
            return f"image + title ({self.input_ids.shape[1]} tokens)"
        return "image" if listing_heads(self.heads) is None else "image (listing heads, no title)"

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        n, device = len(pixels), pixels.device
        category = torch.zeros(n, dtype=torch.long, device=device)
        features = self.backbone(pixels)
        listing = listing_heads(self.heads)
        if listing is None:
            return self.heads(features, category)
        text = torch.zeros(n, listing.text_mean.shape[0], device=device, dtype=features.dtype)
        present = torch.tensor([[True, self.encoder is not None]], device=device).expand(n, 2)
        if self._text_encoder is not None:
            text[:, : self.encoder_dim] = torch.from_numpy(self._text_encoder.encode([self._title] * n))
        elif self.encoder is not None:
            tokens = {
                "input_ids": self.input_ids.expand(n, -1),
                "attention_mask": self.attention_mask.expand(n, -1),
            }
            text[:, : self.encoder_dim] = self.encoder(tokens)["sentence_embedding"]
        lexical = None
        if listing.lexical is not None:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            offsets = torch.zeros(n, dtype=torch.long, device=device)
            lexical = (empty, offsets, torch.zeros(0, device=device))
        return self.heads(features, text, category, present, lexical)
