"""Catalog rows → chat examples for vision-language models, and their LLaMA-Factory export.

One :class:`ChatExample` per image: system prompt, a user turn (image + question) and the assistant's
answer, which for attributes is compact JSON of the category's labelled attributes in schema order. A
missing label leaves its key out of both the question and the answer (the ``mask`` policy), or is filled
beforehand by the core's policies. The same examples feed taxonomist's own SFT and the ShareGPT/Alpaca
files LLaMA-Factory trains from.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from PIL import Image

from taxonomist.data.catalog import CATEGORY, ID, TEXT
from taxonomist.data.images import ImageError
from taxonomist.data.schema import Schema
from taxonomist.io import atomic_write_json

IMAGE_TAG = "<image>"
"""LLaMA-Factory's image placeholder in ShareGPT/Alpaca text."""
JSON_SEPARATORS = (", ", ": ")
"""The one JSON layout of answers, in training data and in the constrained decoder alike."""


@dataclass(frozen=True)
class ChatPrompts:
    """The texts around every example: what a VLM is trained with and asked with (``data/prepare.py``
    fills it from the ``prompt`` section or a model's saved prompts)."""

    system: str
    attributes: str
    """User turn of the attribute task; ``{category}`` and ``{attributes}`` (comma-joined) are filled in."""
    caption: str
    reasoning: str
    """Appended to the attribute prompt when sampling reasoning chains."""
    title: str = ""
    """Appended to the attribute prompt of a listing with a title; ``{title}`` is filled in."""


class TokenBudgetError(ValueError):
    """An example whose image tokens would be cut by the sequence length."""


@dataclass(frozen=True)
class ChatExample:
    id: str
    image: str
    prompt: str
    answer: str
    system: str = ""
    category: str | None = None
    title: str = ""
    """The listing's title where the prompt includes it (evaluation asks the model the same way)."""

    def messages(self, *, with_answer: bool = True) -> list[dict[str, Any]]:
        """transformers chat-template messages (content parts), image first as Qwen's examples do."""
        turns: list[dict[str, Any]] = []
        if self.system:
            turns.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        turns.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]})
        if with_answer:
            turns.append({"role": "assistant", "content": [{"type": "text", "text": self.answer}]})
        return turns


def answer_json(values: Mapping[str, str]) -> str:
    return json.dumps(dict(values), ensure_ascii=False, separators=JSON_SEPARATORS)


_MARKUP = re.compile(r"<(?=\||(?:image|video|audio)>)")
"""The opening of Qwen's chat tokens (``<|im_end|>``, ``<|image_pad|>``, ...) and of LLaMA-Factory's
media placeholders (``<image>``, ...)."""


def attribute_prompt(prompts: ChatPrompts, category: str, attributes: Sequence[str], title: str = "") -> str:
    """The attribute question; with a (normalised) listing title, the title is part of it.

    The tokenizer reads chat tokens inside the prompt text as the tokens themselves, so a title holding
    ``<|im_end|>`` would end the user turn (and could write the assistant's answer), and one holding
    ``<|image_pad|>`` would fail its whole batch (more image tokens than images); LLaMA-Factory counts
    an ``<image>`` in the text as an image. A space after their ``<`` keeps the title's text readable and
    lets it form none of them."""
    text = prompts.attributes.format(category=category, attributes=", ".join(attributes))
    if title and prompts.title:
        text = f"{text} {prompts.title.format(title=_MARKUP.sub('< ', title))}"
    return text


def attribute_examples(
    frame: pd.DataFrame,
    schema: Schema,
    image_paths: Sequence[str | os.PathLike],
    prompts: ChatPrompts,
    *,
    in_schema_only: bool = False,
) -> tuple[list[ChatExample], int]:
    """One example per row that has at least one label; returns the examples and the rows skipped.

    ``in_schema_only`` (training examples): a label the schema does not allow is left out of the
    answer, as the heads mask it: the model would be taught a value constrained decoding never lets it
    write. Held-out rows keep theirs, scored as wrong as the heads' evaluation does."""
    examples, skipped = [], 0
    for row, image in zip(frame.to_dict("records"), image_paths, strict=True):
        category = str(row[CATEGORY])
        title = str(row.get(TEXT) or "") if prompts.title else ""
        values = {a: str(row[a]) for a in schema.attributes_of(category) if a in row and not pd.isna(row[a])}
        if in_schema_only:
            values = {a: v for a, v in values.items() if schema.is_valid(category, a, v)}
        if not values:
            skipped += 1
            continue
        examples.append(
            ChatExample(
                id=str(row[ID]),
                image=str(image),
                prompt=attribute_prompt(prompts, category, list(values), title),
                answer=answer_json(values),
                system=prompts.system,
                category=category,
                title=title,
            )
        )
    return examples, skipped


def caption_examples(frame: pd.DataFrame, prompts: ChatPrompts) -> list[ChatExample]:
    """Rows with ``id, image_path, caption`` (one row per reference caption) → caption examples."""
    return [
        ChatExample(
            id=str(r["id"]), image=str(r["image_path"]), prompt=prompts.caption, answer=str(r["caption"])
        )
        for r in frame.to_dict("records")
    ]


def readable_examples(examples: Sequence[ChatExample]) -> tuple[list[ChatExample], list[ImageError]]:
    """Drop examples whose image header cannot be read (missing, not an image): a cheap pre-filter, so
    epochs and the token budget count only usable rows. Files that open but fail to decode are caught
    later by :class:`ChatCollator`."""
    kept, errors = [], []
    for example in examples:
        try:
            with Image.open(example.image) as image:
                image.size  # noqa: B018 - reading the header is the check
        except FileNotFoundError as err:
            errors.append(ImageError(example.id, example.image, "missing", err.strerror or "no such file"))
        except (OSError, Image.DecompressionBombError) as err:
            errors.append(ImageError(example.id, example.image, "unreadable", str(err)))
        else:
            kept.append(example)
    return kept, errors


# --- LLaMA-Factory export ----------------------------------------------------------------------------


def export_llamafactory(
    examples: Iterable[ChatExample],
    output_dir: str | os.PathLike,
    *,
    name: str = "taxonomist",
    formatting: Literal["sharegpt", "alpaca"] = "sharegpt",
) -> Path:
    """Write ``{name}.json`` and a ``dataset_info.json`` entry LLaMA-Factory reads (``dataset: name``).

    Image paths are absolute, so ``dataset_dir`` can be this folder wherever the images live.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    examples, records = list(examples), []
    system = any(ex.system for ex in examples)  # caption examples have none: no column to map then
    for ex in examples:
        image = str(Path(ex.image).resolve())
        if formatting == "sharegpt":
            record: dict[str, Any] = {
                "messages": [
                    {"role": "user", "content": IMAGE_TAG + ex.prompt},
                    {"role": "assistant", "content": ex.answer},
                ],
                "images": [image],
            }
        else:
            record = {
                "instruction": IMAGE_TAG + ex.prompt,
                "input": "",
                "output": ex.answer,
                "images": [image],
            }
        if system:
            record["system"] = ex.system
        records.append(record)
    data_file = output_dir / f"{name}.json"
    atomic_write_json(data_file, records, ensure_ascii=False, indent=1)
    info_file = output_dir / "dataset_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    info[name] = dataset_info_entry(data_file.name, formatting, system=system)
    atomic_write_json(info_file, info, ensure_ascii=False, indent=1)
    return data_file


def dataset_info_entry(
    file_name: str, formatting: Literal["sharegpt", "alpaca"], *, system: bool = True
) -> dict[str, Any]:
    """LLaMA-Factory's dataset_info entry; ``system``: whether the records have a system prompt (a
    mapped column the records lack fails LLaMA-Factory's loader, and this module's validation)."""
    with_system = {"system": "system"} if system else {}
    if formatting == "sharegpt":
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images", **with_system},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    return {
        "file_name": file_name,
        "formatting": "alpaca",
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            **with_system,
            "images": "images",
        },
    }


def validate_llamafactory(dataset_dir: str | os.PathLike) -> dict[str, int]:
    """Check a dataset folder against LLaMA-Factory's documented data format; returns rows per dataset.

    The rules (LLaMA-Factory ``data/README.md``): every entry of ``dataset_info.json`` names an existing
    file and a ``formatting`` of alpaca or sharegpt; the columns it maps exist in every record; ShareGPT
    turns alternate user/assistant starting with the user and end with the assistant; the number of
    ``<image>`` tags in a record equals its number of images, and each image file exists.
    """
    dataset_dir = Path(dataset_dir)
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    counts = {}
    for name, entry in info.items():
        where = f"dataset_info.json[{name!r}]"
        formatting = entry.get("formatting", "alpaca")
        if formatting not in {"alpaca", "sharegpt"}:
            raise ValueError(f"{where}: formatting {formatting!r} is not alpaca or sharegpt")
        file = dataset_dir / entry["file_name"]
        if not file.is_file():
            raise ValueError(f"{where}: file_name {entry['file_name']!r} does not exist in {dataset_dir}")
        records = json.loads(file.read_text(encoding="utf-8"))
        columns = entry.get("columns", {})
        tags = entry.get("tags", {})
        for i, record in enumerate(records):
            at = f"{file.name} record {i}"
            for column in columns.values():
                if column not in record:
                    raise ValueError(f"{at}: column {column!r} (from {where}) is missing")
            if formatting == "sharegpt":
                turns = record[columns.get("messages", "conversations")]
                role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
                expected = [tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")]
                roles = [t[role] for t in turns]
                if len(roles) % 2 or any(r != expected[k % 2] for k, r in enumerate(roles)):
                    raise ValueError(f"{at}: turns must alternate {expected[0]}/{expected[1]}, got {roles}")
                text = "".join(t[content] for t in turns)
            else:
                text = "".join(
                    str(record[columns[c]]) for c in ("prompt", "query", "response") if c in columns
                )
            images = record.get(columns.get("images", "images"), [])
            if text.count(IMAGE_TAG) != len(images):
                raise ValueError(f"{at}: {text.count(IMAGE_TAG)} {IMAGE_TAG} tags but {len(images)} images")
            for image in images:
                if not (dataset_dir / image).is_file():
                    raise ValueError(f"{at}: image {image} does not exist")
        counts[name] = len(records)
    return counts


# --- sequence-length check ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenCount:
    id: str
    image_tokens: int
    total_tokens: int


def image_token_count(processor: Any, width: int, height: int) -> int:
    """Image tokens Qwen-style processors emit for a ``width × height`` image under their pixel caps."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image_processor = processor.image_processor
    patch, merge = image_processor.patch_size, image_processor.merge_size
    size = image_processor.size
    h, w = smart_resize(
        height,
        width,
        factor=patch * merge,
        min_pixels=size["shortest_edge"],
        max_pixels=size["longest_edge"],
    )
    return (h // patch) * (w // patch) // (merge * merge)


def count_tokens(example: ChatExample, processor: Any) -> TokenCount:
    """Tokens of the full training sequence, read from the image header (no decode) and the template."""
    with Image.open(example.image) as image:
        width, height = image.size
    image_tokens = image_token_count(processor, width, height)
    text = processor.apply_chat_template(example.messages(), tokenize=False)
    # The template holds one image placeholder token that the processor expands to image_tokens.
    text_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return TokenCount(example.id, image_tokens, text_tokens - 1 + image_tokens)


def check_token_budget(
    examples: Sequence[ChatExample], processor: Any, max_length: int, *, max_pixels: int
) -> list[TokenCount]:
    """Fail before training when an example would be truncated inside or after its image tokens.

    Truncating image tokens is the classic "image features and image tokens do not match" crash; cutting
    the answer silently trains on half a JSON object. Unreadable images are left to the loader's errors.
    """
    counts = []
    for example in examples:
        try:
            count = count_tokens(example, processor)
        except OSError:
            continue
        if count.total_tokens > max_length:
            ratio = max_length / count.total_tokens
            raise TokenBudgetError(
                f"example {example.id} ({example.image}): {count.total_tokens} tokens "
                f"({count.image_tokens} image tokens) exceed train.max_length={max_length}, so its image "
                f"tokens or answer would be cut. Fix: set train.max_length >= {count.total_tokens}, or lower "
                f"model.max_pixels (e.g. to {int(max_pixels * ratio * 0.9)}) to shrink the image."
            )
        counts.append(count)
    return counts


def examples_to_records(examples: Iterable[ChatExample]) -> list[dict[str, Any]]:
    return [asdict(e) for e in examples]
