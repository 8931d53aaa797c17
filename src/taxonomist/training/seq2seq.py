"""Fine-tuning a :class:`Seq2SeqTaxonomyModel` on (title → "path | brand") with ``Seq2SeqTrainer``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from taxonomist.data.taxonomy import DEFAULT_LEVELS, NO_BRAND, Taxonomy, normalize_text
from taxonomist.devices import resolve_device, resolve_precision
from taxonomist.models.seq2seq import Seq2SeqTaxonomyModel

LORA_TARGETS = (("q", "v"), ("q_proj", "v_proj"), ("query", "value"), ("c_attn",), ("qkv_proj",))
"""Attention projections LoRA adapts, by architecture family (T5, Llama/BART/Qwen, BERT, GPT-2, Phi-3)."""


def _lora_targets(model: torch.nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for group in LORA_TARGETS:
        if all(t in names for t in group):
            return list(group)
    raise ValueError(
        f"no known attention projections for LoRA in {type(model).__name__}; tried {LORA_TARGETS}"
    )


class _PadCollator:
    """Right-pads ``input_ids``/``attention_mask``/``labels`` (labels with -100, ignored by the loss)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        label_width = max(len(f["labels"]) for f in features)

        def pad(key: str, value: int, n: int) -> torch.Tensor:
            return torch.tensor([f[key] + [value] * (n - len(f[key])) for f in features], dtype=torch.long)

        return {
            "input_ids": pad("input_ids", self.pad_id, width),
            "attention_mask": pad("attention_mask", 0, width),
            "labels": pad("labels", -100, label_width),
        }


def fit_seq2seq(
    model: Seq2SeqTaxonomyModel,
    titles: Sequence[str],
    paths: Sequence[Sequence[str]],
    brands: Sequence[str] | None,
    output_dir: str | os.PathLike,
    *,
    epochs: float = 3,
    learning_rate: float = 5e-4,
    batch_size: int = 32,
    lora: bool = False,
    lora_rank: int = 8,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
    max_steps: int = -1,
    logging_steps: int = 10,
    seed: int = 0,
    bf16: bool | None = None,
) -> list[float]:
    """Fine-tune ``model`` in place and save it to ``output_dir``; returns the logged training losses.

    Without a taxonomy, one is built from ``paths``/``brands``. With ``lora`` only LoRA adapters on the
    attention projections train, and are merged into the weights afterwards, so the saved model loads
    as a plain checkpoint. ``bf16`` None = on where the GPU supports it.
    """
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

    brands = list(brands) if brands is not None else [NO_BRAND] * len(titles)
    if not len(titles) == len(paths) == len(brands):
        raise ValueError(f"{len(titles)} titles, {len(paths)} paths and {len(brands)} brands")
    norm_paths = [tuple(normalize_text(x) for x in p) for p in paths]
    if model.taxonomy is None:
        depth = len(norm_paths[0]) if norm_paths else len(DEFAULT_LEVELS)
        levels = DEFAULT_LEVELS if depth == len(DEFAULT_LEVELS) else [f"level_{k + 1}" for k in range(depth)]
        model.taxonomy = Taxonomy.from_paths(norm_paths, levels, brands)
    path_ids = [model.taxonomy.path_id(p) for p in norm_paths]  # type: ignore[union-attr]
    missing = [p for p, i in zip(norm_paths, path_ids, strict=True) if i < 0]
    if missing:
        raise ValueError(f"{len(missing)} training paths are not in the taxonomy, e.g. {missing[:3]}")
    unreachable = set(model.trie.unreachable)
    if unreachable:  # their rows would be taught tokens the decoder reads back as another path
        rows = sum(p in unreachable for p in norm_paths)
        raise ValueError(
            f"{len(unreachable)} taxonomy paths spell the same tokens as another path under this model's "
            f"tokenizer, so they could never be predicted ({rows} training rows carry them), e.g. "
            f"{sorted(unreachable)[:3]}: labels with characters the tokenizer does not know (CJK or "
            "Devanagari for flan-t5: use a multilingual model such as an mT5), or with '>' or '|' in them "
            "(rename those labels)"
        )
    model.max_source_length = max_source_length or model.max_source_length
    model.max_target_length = max_target_length or model.max_target_length
    dataset = [model.example(t, i, b) for t, i, b in zip(titles, path_ids, brands, strict=True)]

    set_seed(seed)
    network = model.model
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        targets = _lora_targets(network)
        task = TaskType.SEQ_2_SEQ_LM if model.is_encoder_decoder else TaskType.CAUSAL_LM
        config = LoraConfig(
            task_type=task,
            r=lora_rank,
            lora_alpha=2 * lora_rank,
            lora_dropout=0.05,
            target_modules=targets,
            fan_in_fan_out=targets == ["c_attn"],  # GPT-2's Conv1D stores weights transposed
        )
        network = get_peft_model(network, config)
    if bf16 is None:
        bf16 = resolve_precision("auto", resolve_device("auto")) == "bf16"
    args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        logging_steps=logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=seed,
        bf16=bf16,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Seq2SeqTrainer(
        model=network,
        args=args,
        train_dataset=dataset,
        data_collator=_PadCollator(model.tokenizer.pad_token_id),
        processing_class=model.tokenizer,
    )
    trainer.train()
    network = trainer.model
    if lora:
        network = network.merge_and_unload()
    model.model = network.eval()
    model.save(output_dir)
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
