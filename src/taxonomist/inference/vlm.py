"""VLM prediction: attributes (schema-constrained JSON with per-attribute confidences) or captions.

Batches are padding-aware (rows sorted by image tokens, so a batch holds similar lengths), images are
capped by the processor's pixel limits, one unreadable image becomes an error record instead of ending
the batch, and file jobs write atomic, resumable chunks like the core predictor.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image

from taxonomist.data.chat import ChatExample, ChatPrompts, attribute_prompt, image_token_count
from taxonomist.data.images import ImageError, ImageLoadError, load_image, write_errors
from taxonomist.data.prepare import saved_prompts
from taxonomist.data.schema import Schema
from taxonomist.data.taxonomy import normalize_text
from taxonomist.inference.constrained import (
    AnswerError,
    SchemaGrammars,
    parse_answer,
    token_log_probs,
    value_confidences,
)
from taxonomist.inference.predictor import (
    AttributeValue,
    Prediction,
    PredictSummary,
    chunks_to_predict,
    long_frame,
    meesho_frame,
    retry_counts,
)
from taxonomist.io import ChunkedWriter, atomic_write_frame, atomic_write_text
from taxonomist.models.build import build_decoding, saved_vlm
from taxonomist.models.vlm import VLM, Decoding, read_metadata, resolve_model_dir
from taxonomist.progress import progress_bar

ImageInput = Image.Image | str | os.PathLike


@dataclass
class Generation:
    """One generated answer: raw text, parsed values with confidences (attributes task), or an error."""

    text: str
    values: dict[str, str] = field(default_factory=dict)
    confidences: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    n_tokens: int = 0


@dataclass
class VLMResult:
    id: str
    category: str | None
    generations: list[Generation] = field(default_factory=list)
    error: ImageError | None = None

    @property
    def best(self) -> Generation | None:
        return self.generations[0] if self.generations else None


class VLMPredictor:
    def __init__(
        self,
        vlm: VLM,
        *,
        task: str,
        prompts: ChatPrompts,
        decoding: Decoding,
        schema: Schema | None = None,
        version: str = "",
    ) -> None:
        """``version``: the model's content digest (set by :meth:`from_pretrained`); batch jobs record
        it so a resume never mixes rows answered by two models."""
        if task == "attributes" and schema is None:
            raise ValueError("the attributes task needs a schema (category → attribute → allowed values)")
        self.vlm = vlm
        self.version = version
        self.task = task
        self.prompts = prompts
        self.decoding = decoding
        self.schema = schema
        self._grammars: SchemaGrammars | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        decoding: Decoding | None = None,
        device: torch.device | str | None = None,
    ) -> VLMPredictor:
        """A ``taxonomist vlm train`` output folder (its merged model, or adapter + base), or any model
        folder with a ``taxonomist_vlm.json`` beside the weights. ``decoding``: default, the ``generate``
        section's defaults (``models.build.build_decoding``)."""
        path = resolve_model_dir(path)
        meta = read_metadata(path)
        vlm, version = saved_vlm(path, meta.get("model", {}), device=device)
        schema = Schema.from_dict(meta["schema"]) if meta.get("schema") else None
        return cls(
            vlm,
            task=meta.get("task", "attributes"),
            prompts=saved_prompts(meta.get("prompt", {})),
            decoding=decoding or build_decoding(),
            schema=schema,
            version=version,
        )

    @property
    def grammars(self) -> SchemaGrammars:
        if self._grammars is None:
            assert self.schema is not None
            vocab = self.vlm.model.get_output_embeddings().weight.shape[0]
            self._grammars = SchemaGrammars(
                self.vlm.tokenizer, vocab, self.schema, self.decoding.reasoning_max_chars
            )
        return self._grammars

    def example(self, category: str | None, *, reasoning: bool = False, title: str = "") -> ChatExample:
        """The chat a row is asked with; ``title``: the listing's title (attributes task only)."""
        if self.task == "caption":
            text = self.prompts.caption
        else:
            assert self.schema is not None and category is not None
            text = attribute_prompt(self.prompts, category, self.schema.attributes_of(category), title)
            if reasoning:
                text = f"{text} {self.prompts.reasoning}"
        # Caption examples are trained without the (JSON-answer) system prompt: served the same way.
        system = self.prompts.system if self.task == "attributes" else ""
        return ChatExample(id="", image="", prompt=text, answer="", system=system, category=category)

    def inputs(
        self,
        images: Sequence[Image.Image],
        categories: Sequence[str | None],
        *,
        reasoning: bool = False,
        titles: Sequence[str] | None = None,
    ) -> Any:
        """Model inputs of one batch: chat prompts, left-padded, with pixel values under the caps."""
        processor = self.vlm.processor
        titles = titles if titles is not None else [""] * len(categories)
        texts = [
            processor.apply_chat_template(
                self.example(c, reasoning=reasoning, title=t).messages(with_answer=False),
                add_generation_prompt=True,
                tokenize=False,
            )
            for c, t in zip(categories, titles, strict=True)
        ]
        processor.tokenizer.padding_side = "left"
        batch = processor(text=texts, images=list(images), padding=True, return_tensors="pt")
        return batch.to(self.vlm.device)

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[Image.Image],
        categories: Sequence[str | None],
        *,
        num_samples: int = 1,
        reasoning: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        titles: Sequence[str] | None = None,
    ) -> list[list[Generation]]:
        """One forward batch: ``num_samples`` generations per image (sampling when temperature > 0);
        ``titles``: the listings' titles, asked with the image where given."""
        if self.task == "attributes":
            unknown = sorted({str(c) for c in categories if c not in self.schema.categories})  # type: ignore[union-attr]
            if unknown:
                raise ValueError(f"categories not in the model's schema: {unknown}")
        decoding = self.decoding
        temperature = decoding.temperature if temperature is None else temperature
        top_p = decoding.top_p if top_p is None else top_p
        model = self.vlm.model
        inputs = self.inputs(images, categories, reasoning=reasoning, titles=titles)
        kwargs: dict[str, Any] = {
            "max_new_tokens": decoding.max_new_tokens,
            "num_return_sequences": num_samples,
            # Raw logits, not the scores sampling drew from: a confidence must not depend on temperature,
            # top-p or a repetition penalty in the model's generation_config (Qwen's is 1.05).
            "output_logits": True,
            "return_dict_in_generate": True,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        grammar = None
        if self.task == "attributes" and decoding.constrained:
            rows = [c for c in categories for _ in range(num_samples)]
            grammar = self.grammars.logits_processor(rows, reasoning=reasoning)  # type: ignore[arg-type]
            kwargs["logits_processor"] = [grammar]
            kwargs["max_new_tokens"] = max(
                self.grammars.max_new_tokens(c, reasoning=reasoning) for c in set(categories)
            )  # type: ignore[arg-type]
        out = model.generate(**inputs, **kwargs)
        tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
        # The grammar's mask (where there is one) stays: a value's confidence is among the allowed ones.
        logprobs = (
            grammar.log_probs(out.logits, tokens)
            if grammar is not None
            else token_log_probs(out.logits, tokens)
        ).cpu()
        tokens = tokens.cpu()
        results: list[list[Generation]] = []
        for i, category in enumerate(categories):
            row = []
            for j in range(num_samples):
                k = i * num_samples + j
                row.append(self._decode(tokens[k], logprobs[k], category))
            results.append(row)
        return results

    def _decode(self, token_ids: torch.Tensor, logprobs: torch.Tensor, category: str | None) -> Generation:
        tokenizer = self.vlm.tokenizer
        ids = token_ids.tolist()
        stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        n = next((t for t, token in enumerate(ids) if token in stop), len(ids))
        ids, logprobs = ids[:n], logprobs[:n]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if self.task == "caption":
            return Generation(text.strip(), n_tokens=n)
        assert self.schema is not None and category is not None
        try:
            values = parse_answer(text, self.schema, category)
        except AnswerError as err:
            return Generation(text, error=f"invalid_output: {err}", n_tokens=n)
        confidences = value_confidences(text, values, ids, logprobs, tokenizer)
        return Generation(text, values, confidences, n_tokens=n)

    def order_by_length(self, images: Sequence[Image.Image]) -> list[int]:
        """Row order that groups similar image-token counts, so batches carry little padding."""
        processor = self.vlm.processor
        if not hasattr(processor.image_processor, "merge_size"):
            return sorted(range(len(images)), key=lambda i: images[i].width * images[i].height)
        counts = [image_token_count(processor, im.width, im.height) for im in images]
        return sorted(range(len(images)), key=counts.__getitem__)

    def predict(
        self,
        images: Sequence[ImageInput],
        categories: Sequence[str | None] | None = None,
        ids: Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
        num_samples: int = 1,
        reasoning: bool = False,
        temperature: float | None = None,
        titles: Sequence[str | None] | None = None,
    ) -> list[VLMResult]:
        """Results in input order; unreadable images and categories outside the schema come back with
        ``error`` set and no generation. ``titles``: the listings' titles (None or "" where none)."""
        ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(images))]
        categories = list(categories) if categories is not None else [None] * len(images)
        if not len(ids) == len(categories) == len(images):
            raise ValueError(f"{len(images)} images, {len(categories)} categories and {len(ids)} ids differ")
        titles = [normalize_text(t) for t in titles] if titles is not None else [""] * len(images)
        if len(titles) != len(images):
            raise ValueError(f"{len(images)} images and {len(titles)} titles differ")
        results = [VLMResult(i, c) for i, c in zip(ids, categories, strict=True)]
        loaded: dict[int, Image.Image] = {}
        for k, item in enumerate(images):
            if (
                self.schema is not None
                and self.task == "attributes"
                and categories[k] not in self.schema.categories
            ):
                # Reported and skipped, like an unreadable image (the heads predictor does the same).
                detail = (
                    f"category {categories[k]!r} is not one of this model's {sorted(self.schema.categories)}"
                )
                path = "" if isinstance(item, Image.Image) else str(item)
                results[k].error = ImageError(ids[k], path, "unknown-category", detail)
                continue
            try:
                # An opened image gets its file's treatment (upright, transparency on white), as in
                # training: a plain convert("RGB") turned transparent areas black.
                loaded[k] = load_image(item)
            except ImageLoadError as err:
                results[k].error = ImageError.from_load_error(ids[k], err)
        good = list(loaded)
        order = [good[i] for i in self.order_by_length([loaded[k] for k in good])]
        batch_size = batch_size or self.decoding.batch_size
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            generations = self.generate(
                [loaded[k] for k in batch],
                [categories[k] for k in batch],
                num_samples=num_samples,
                reasoning=reasoning,
                temperature=temperature,
                titles=[titles[k] for k in batch],
            )
            for k, gens in zip(batch, generations, strict=True):
                results[k].generations = gens
        return results

    def predict_file(
        self,
        ids: Sequence[str],
        image_paths: Sequence[str | os.PathLike],
        categories: Sequence[str | None],
        out_dir: str | os.PathLike,
        *,
        progress: bool = True,
        titles: Sequence[str | None] | None = None,
        attribute_order: Mapping[str, Sequence[str]] | None = None,
    ) -> PredictSummary:
        """Batch job over many images: chunked atomic parts, resumable after a crash, errors kept; a rerun
        retries the rows of finished chunks whose image failed, as the heads' batch job does.
        ``titles``: the listings' titles, asked with the images (part of the job's identity).
        ``attribute_order``: category → its attribute names as the catalog declares them (Meesho's
        ``category_attributes.parquet``), the attr_k columns of predictions.csv (see ``meesho_frame``)."""
        start = time.perf_counter()
        out_dir = Path(out_dir)
        decoding = self.decoding
        settings = {
            "model": self.version,
            "task": self.task,
            "constrained": decoding.constrained,
            "max_new_tokens": decoding.max_new_tokens,
            "temperature": decoding.temperature,
            # Sampling draws from the top-p nucleus; greedy ignores it (and keeps its jobs' digest).
            **({"top_p": decoding.top_p} if decoding.temperature > 0 else {}),
        }
        ids = [str(i) for i in ids]
        titles = [normalize_text(t) for t in titles] if titles is not None else [""] * len(ids)
        rows_in = pd.DataFrame(
            {
                "id": ids,
                "category": ["" if c is None else str(c) for c in categories],
                "path": [os.path.abspath(p) for p in image_paths],
                **({"title": titles} if any(titles) else {}),  # no-title jobs keep their digest
            }
        )
        writer = ChunkedWriter(out_dir, rows_in, decoding.chunk_size, settings)
        resumed = writer.n_chunks - len(writer.pending())
        jobs, retry = chunks_to_predict(writer, ids)
        done_before = len(ids) - sum(len(rows) for _, rows in jobs)
        predicted_now = 0
        with progress_bar("image", disable=not progress) as bar:
            task = bar.add_task(f"vlm {self.task}", total=len(ids), completed=done_before)
            for k, rows in jobs:
                results = self.predict(
                    [image_paths[r] for r in rows],
                    [categories[r] for r in rows],
                    [ids[r] for r in rows],
                    titles=[titles[r] for r in rows],
                )
                frames = self.result_frames(results, attribute_order)
                if k in retry:
                    writer.replace(k, frames, retry[k])
                else:
                    writer.write(k, frames)
                predicted_now += sum(r.best is not None and not r.best.error for r in results)
                bar.advance(task, len(rows))
        empty = self.result_frames([], attribute_order)
        errors = writer.read("errors")
        if self.task == "caption":
            captions = writer.read("captions", empty=empty["captions"])
            atomic_write_frame(captions, out_dir / "captions.csv")
            predicted = len(captions)
        else:
            meesho = writer.read("meesho", empty=empty["meesho"])
            atomic_write_frame(meesho, out_dir / "predictions.csv")
            atomic_write_frame(writer.read("long", empty=empty["long"]), out_dir / "predictions_long.csv")
            predicted = len(meesho)
        write_errors(
            [ImageError(**r) for r in errors.to_dict("records")] if len(errors) else [],
            out_dir / "errors.csv",
        )
        seconds = time.perf_counter() - start
        summary = PredictSummary(
            str(out_dir),
            len(ids),
            predicted,
            len(errors),
            resumed,
            seconds,
            predicted_now / seconds if predicted_now and seconds > 0 else None,
            {str(r): int(n) for r, n in errors["reason"].value_counts().items()} if len(errors) else {},
            **retry_counts(retry, errors["id"] if len(errors) else ()),
        )
        atomic_write_text(out_dir / "summary.json", json.dumps(summary.to_dict(), indent=1))
        return summary

    def result_frames(
        self, results: Sequence[VLMResult], attribute_order: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, pd.DataFrame]:
        """One chunk's output frames, errors last (see ``ChunkedWriter.replace``); a generation that failed
        to parse is an error row too."""
        errors = [r.error.__dict__ for r in results if r.error is not None]
        errors += [
            {"id": r.id, "path": "", "reason": "invalid_output", "detail": r.best.error}
            for r in results
            if r.best is not None and r.best.error
        ]
        ok = [r for r in results if r.best is not None and not r.best.error]
        if self.task == "caption":
            frames = {
                "captions": pd.DataFrame(
                    [(r.id, r.best.text) for r in ok if r.best is not None], columns=["id", "caption"]
                )
            }
        else:
            preds = to_predictions(ok)
            frames = {"meesho": meesho_frame(preds, self.schema, attribute_order), "long": long_frame(preds)}
        return {**frames, "errors": pd.DataFrame(errors, columns=["id", "path", "reason", "detail"])}


def to_predictions(results: Sequence[VLMResult]) -> list[Prediction]:
    """The core's Prediction objects, so the core's writers and metric apply unchanged."""
    preds = []
    for r in results:
        best = r.best
        assert best is not None and r.category is not None
        preds.append(
            Prediction(
                r.id,
                r.category,
                {a: AttributeValue(v, best.confidences.get(a, 0.0)) for a, v in best.values.items()},
            )
        )
    return preds
