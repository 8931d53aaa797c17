"""Supervised fine-tuning of vision-language models with LoRA or QLoRA (peft + trl's ``SFTTrainer``).

The defaults are the LLaMA-Factory recipe for Qwen2-VL (LoRA on every linear layer of the language model,
LoRA+ ratio 16, cosine schedule, warmup 0.1, batch 2 × accumulation 4); QLoRA captioning (4-bit NF4,
paged AdamW 8-bit) is ``configs/vlm-qlora-caption.yaml``. The loss covers only the assistant's answer
and its end-of-turn token, so the model learns to answer and to stop, not to repeat the prompt.

Layout of ``output_dir``::

    checkpoints/       trainer checkpoints; a rerun resumes from the last one
    adapter/           LoRA weights + processor + taxonomist_vlm.json (loads on top of the base model)
    merged/            base model with the adapter merged in (train.merge) + processor + metadata
    config.yaml        the run's VLMConfig
    metrics.json       example counts, losses, steps
    image_errors.csv   images that could not be read (skipped, not fatal)
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from taxonomist.config import ImproveConfig, LoraSettings, VLMConfig, VLMTrainConfig
from taxonomist.data.chat import ChatExample, check_token_budget, examples_to_records, readable_examples
from taxonomist.data.images import DEFAULT_MAX_PIXELS, ImageError, ImageLoadError, load_image, write_errors
from taxonomist.data.prepare import DATA_REPORT, build_examples, prepare_catalog
from taxonomist.data.schema import Schema
from taxonomist.devices import resolve_device, resolve_precision
from taxonomist.io import ResumeError, atomic_write_text
from taxonomist.models.build import build_vlm
from taxonomist.models.vlm import read_metadata, write_metadata

IGNORE_INDEX = -100
"""Label of tokens the loss skips (PyTorch's cross-entropy ``ignore_index``)."""
CHECKPOINTS, ADAPTER, MERGED = "checkpoints", "adapter", "merged"

log = logging.getLogger(__name__)


# --- examples --------------------------------------------------------------------------------------------


# --- batches ---------------------------------------------------------------------------------------------


class ChatCollator:
    """Chat examples → a right-padded training batch whose labels are the answer and its end token only.

    Each row is ``prompt ids (processor: template + image tokens) + answer ids (tokenizer)``: exactly the
    prompt generation continues from, so training and prediction see the same tokens. The processor's
    tokenizer is left untouched (left padding for generation); rows are cut out by attention mask and
    padded here. An image that fails to decode drops its example from the batch and is recorded in
    :attr:`errors`; a batch whose images all fail reuses the last good example with every label masked
    (zero loss), so a bad file never ends a run.
    """

    def __init__(self, processor: Any, *, max_image_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.processor = processor
        self.max_image_pixels = max_image_pixels
        self.errors: list[ImageError] = []
        self._fallback: tuple[ChatExample, Image.Image] | None = None

    def __call__(self, features: Sequence[ChatExample | Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        examples, images = [], []
        for feature in features:
            example = feature if isinstance(feature, ChatExample) else ChatExample(**feature)
            try:
                images.append(load_image(example.image, max_pixels=self.max_image_pixels))
            except ImageLoadError as err:
                self.errors.append(ImageError.from_load_error(example.id, err))
                log.warning("skipping example %s: %s", example.id, err)
                continue
            examples.append(example)
        if examples:
            self._fallback = (examples[-1], images[-1])
            return self.encode(examples, images)
        if self._fallback is None:
            raise RuntimeError(
                f"no image of this batch or any before it loaded: {self.errors[-len(features) :]}"
            )
        batch = self.encode([self._fallback[0]], [self._fallback[1]])
        batch["labels"].fill_(IGNORE_INDEX)
        return batch

    def encode(
        self, examples: Sequence[ChatExample], images: Sequence[Image.Image]
    ) -> dict[str, torch.Tensor]:
        processor, tokenizer = self.processor, self.processor.tokenizer
        prompts, answers = [], []
        for example in examples:
            prompt = processor.apply_chat_template(
                example.messages(with_answer=False), tokenize=False, add_generation_prompt=True
            )
            full = processor.apply_chat_template(example.messages(), tokenize=False)
            if not full.startswith(prompt):
                raise ValueError(
                    "the chat template's generation prompt is not a prefix of the conversation with the "
                    f"answer, so the answer tokens cannot be located (example {example.id})"
                )
            # The answer and the template's end-of-turn token; trailing newlines are not worth learning.
            prompts.append(prompt)
            answers.append(full[len(prompt) :].rstrip())
        inputs = processor(text=prompts, images=list(images), padding=True, return_tensors="pt")
        answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
        keep = inputs["attention_mask"].bool()
        per_token = [k for k, v in inputs.items() if torch.is_tensor(v) and v.shape == keep.shape]
        rows = []
        for i, answer in enumerate(answer_ids):
            answer = torch.tensor(answer, dtype=torch.long)
            ids = torch.cat([inputs["input_ids"][i][keep[i]], answer])
            row = {k: torch.cat([inputs[k][i][keep[i]], torch.zeros_like(answer)]) for k in per_token}
            row.update(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                labels=torch.cat([torch.full((len(ids) - len(answer),), IGNORE_INDEX), answer]),
            )
            rows.append(row)
        pad = {"input_ids": tokenizer.pad_token_id, "labels": IGNORE_INDEX}
        batch = {
            k: torch.nn.utils.rnn.pad_sequence(
                [r[k] for r in rows], batch_first=True, padding_value=pad.get(k, 0)
            )
            for k in rows[0]
        }
        batch.update({k: v for k, v in inputs.items() if k not in per_token})
        return batch


# --- model pieces ----------------------------------------------------------------------------------------


def lora_targets(model: torch.nn.Module, *, train_vision: bool) -> list[str]:
    """Full names of the linear layers to adapt: the language model's (plus the vision tower and
    projector with ``train_vision``), never the output head. peft's own ``all-linear`` would also adapt
    the vision tower, which LLaMA-Factory keeps frozen."""
    head = model.get_output_embeddings()
    names = {id(module): name for name, module in model.named_modules()}
    decoder = names[id(model.get_decoder())]  # "" when the model is its own decoder (text-only)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and (train_vision or not decoder or name.startswith(decoder + "."))
    ]


def add_lora(model: torch.nn.Module, lora: LoraSettings, *, seed: int) -> Any:
    """``model`` wrapped in a fresh peft LoRA; ``seed`` fixes the random init of the A matrices."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    if targets == "all-linear":
        targets = lora_targets(model, train_vision=lora.train_vision)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def loraplus_optimizer(model: torch.nn.Module, args: Any, ratio: float) -> torch.optim.Optimizer:
    """LoRA+ (Hayou et al. 2024): B matrices learn ``ratio`` times faster than A; the optimizer class
    and its settings (``args.optim``: adamw_torch, paged_adamw_8bit, …) come from the trainer args."""
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs.pop("lr", None)
    return create_loraplus_optimizer(
        model,
        optimizer_cls,
        lr=args.learning_rate,
        loraplus_lr_ratio=ratio,
        loraplus_weight_decay=args.weight_decay,
        **kwargs,
    )


def mixed_precision(setting: str, device: torch.device) -> tuple[bool, bool]:
    """(bf16, fp16) for the trainer's arguments."""
    precision = resolve_precision(setting, device)
    return precision == "bf16", precision == "fp16"


def step_args(section: VLMTrainConfig | ImproveConfig) -> dict:
    """The optimisation steps a config section sets (``train`` for SFT, ``improve`` for DPO): rate, epochs
    or steps, batch, accumulation, and the seed for the trainer and its data order."""
    return {
        "learning_rate": section.lr,
        "num_train_epochs": section.epochs,
        "max_steps": section.max_steps,
        "per_device_train_batch_size": section.batch_size,
        "gradient_accumulation_steps": section.grad_accumulation,
        "seed": section.seed,
        "data_seed": section.seed,
    }


def shared_trainer_args(cfg_cls: type, train: VLMTrainConfig, device: torch.device, progress: bool) -> dict:
    """Trainer settings SFT and DPO both take from ``train`` (schedule, clipping, optimizer, precision)."""
    if not 0 <= train.warmup_ratio < 1:
        raise ValueError(f"train.warmup_ratio must be in [0, 1), got {train.warmup_ratio}")
    bf16, fp16 = mixed_precision(train.mixed_precision, device)
    # Recent transformers renamed gradient_checkpointing (now a deprecated alias) activation_checkpointing.
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    checkpointing = (
        "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    )
    return {
        "lr_scheduler_type": train.scheduler,
        "warmup_steps": train.warmup_ratio,  # a float below 1 is a share of the total steps
        "max_grad_norm": train.max_grad_norm,
        "weight_decay": train.weight_decay,
        "optim": train.optim,
        "bf16": bf16,
        "fp16": fp16,
        checkpointing: train.gradient_checkpointing,
        "max_length": train.max_length,
        "logging_steps": train.logging_steps,
        "remove_unused_columns": False,
        "report_to": "none",
        "disable_tqdm": not progress,
        "dataloader_pin_memory": device.type == "cuda",  # pinning needs an accelerator
    }


def sft_args(cfg: VLMConfig, output_dir: Path, *, device: torch.device, progress: bool = True) -> Any:
    """trl ``SFTConfig`` from ``cfg.train``; dataset preparation is skipped (the collator tokenizes)."""
    from trl import SFTConfig

    train = cfg.train
    return SFTConfig(
        output_dir=str(output_dir / CHECKPOINTS),
        per_device_eval_batch_size=train.batch_size,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        eval_strategy="no",
        dataset_kwargs={"skip_prepare_dataset": True},
        **step_args(train),
        **shared_trainer_args(SFTConfig, train, device, progress),
    )


# --- training --------------------------------------------------------------------------------------------


@dataclass
class SFTReport:
    """What a run did (also written to ``metrics.json``); ``train_loss`` is None when a rerun found the
    run already finished and only reloaded its last checkpoint."""

    output_dir: str
    adapter_dir: str
    merged_dir: str | None
    task: str
    n_train: int
    n_val: int
    image_errors: int
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    resumed_from: str | None
    trainable_params: int
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def metadata(cfg: VLMConfig, schema: Schema | None, kind: str, *, titled: bool) -> dict[str, Any]:
    """What predict needs beside the weights: task, schema, prompts and the model settings.

    ``model`` is a :class:`VLMModelConfig` as a dict (its ``name`` is the base model); merged weights are
    full precision, so a merged folder records ``quantization: none``. ``titled``: whether training
    prompts carried listing titles; if not, the saved title prompt is empty, so predict never asks a
    model with titles it was not trained on.
    """
    model = dataclasses.asdict(cfg.model)
    prompt = {**dataclasses.asdict(cfg.prompt), **({} if titled else {"title": ""})}
    if kind == MERGED:
        model["quantization"] = "none"
    return {
        "format": kind,
        "task": cfg.task,
        "schema": schema.to_dict() if schema is not None else None,
        "prompt": prompt,
        "model": model,
        "base_model": cfg.model.name,
        "lora": dataclasses.asdict(cfg.lora),
        "max_length": cfg.train.max_length,
    }


def last_checkpoint(output_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(output_dir) / CHECKPOINTS
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train_sft(cfg: VLMConfig, output_dir: str | Path, *, progress: bool = True) -> SFTReport:
    """Fine-tune ``cfg.model`` on the task's examples; resumes from ``output_dir/checkpoints`` if present."""
    from datasets import Dataset
    from peft import prepare_model_for_kbit_training
    from transformers import PrinterCallback
    from trl import SFTTrainer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_catalog(cfg) if cfg.task == "attributes" else None
    if data is not None:
        atomic_write_text(output_dir / DATA_REPORT, data.report.to_json())
    train_examples, val_examples, schema = build_examples(cfg, data=data)
    train_examples, errors = readable_examples(train_examples)
    val_examples, val_errors = readable_examples(val_examples)
    errors += val_errors
    if not train_examples:
        raise ValueError(f"no training examples with a readable image ({len(errors)} image errors)")
    device = resolve_device()
    args = sft_args(cfg, output_dir, device=device, progress=progress)
    vlm = build_vlm(cfg.model, device=device)
    check_token_budget(
        [*train_examples, *val_examples], vlm.processor, cfg.train.max_length, max_pixels=cfg.model.max_pixels
    )
    model = vlm.model
    if cfg.model.quantization == "4bit":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing
        )
    model = add_lora(model, cfg.lora, seed=cfg.train.seed)
    optimizer = (
        loraplus_optimizer(model, args, cfg.lora.loraplus_lr_ratio)
        if cfg.lora.loraplus_lr_ratio is not None
        else None
    )
    collator = ChatCollator(vlm.processor)
    trainer = SFTTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=Dataset.from_list(examples_to_records(train_examples)),
        eval_dataset=Dataset.from_list(examples_to_records(val_examples)) if val_examples else None,
        processing_class=vlm.processor,
        optimizers=(optimizer, None),
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)  # without a progress bar, transformers prints every log
    resume = last_checkpoint(output_dir)
    _claim_run(output_dir, cfg, train_examples, resumed=resume is not None)
    start = time.perf_counter()
    train_loss = _train_or_restore(trainer, resume)
    seconds = time.perf_counter() - start
    eval_loss = trainer.evaluate()["eval_loss"] if val_examples else None

    adapter_dir = output_dir / ADAPTER
    model.save_pretrained(adapter_dir)
    vlm.processor.save_pretrained(adapter_dir)
    titled = any(e.title for e in train_examples)
    write_metadata(adapter_dir, metadata(cfg, schema, ADAPTER, titled=titled))
    cfg.save(output_dir / "config.yaml")
    errors += collator.errors
    write_errors(errors, output_dir / "image_errors.csv")
    report = SFTReport(
        output_dir=str(output_dir),
        adapter_dir=str(adapter_dir),
        merged_dir=None,
        task=cfg.task,
        n_train=len(train_examples),
        n_val=len(val_examples),
        image_errors=len(errors),
        global_step=trainer.state.global_step,
        train_loss=train_loss,
        eval_loss=eval_loss,
        resumed_from=resume,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        train_seconds=seconds,
    )
    del trainer, model, vlm, optimizer
    if cfg.train.merge:
        report.merged_dir = str(merge_adapter(cfg, adapter_dir, output_dir / MERGED, schema, device=device))
    atomic_write_text(output_dir / "metrics.json", json.dumps(report.to_dict(), indent=1))
    return report


_FREE_ON_RESUME = ("epochs", "max_steps", "save_steps", "save_total_limit", "logging_steps", "merge")
RUN_FILE = "run.json"
"""What a run folder's checkpoints were trained from: settings and a digest of the training examples."""


def _claim_run(output_dir: Path, cfg: VLMConfig, examples: Sequence[ChatExample], *, resumed: bool) -> None:
    """Record what this run trains from, or (resuming) refuse checkpoints trained from anything else:
    restored under another config, the adapter would be saved with a schema and prompts it never saw.
    Only the schedule's length (train.epochs, train.max_steps) may change on a resume, beside what
    does not shape the weights (how often it saves and logs, the merge after it, decoding)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("generate", "improve")}
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in _FREE_ON_RESUME}
    digest = hashlib.sha256(
        json.dumps([(e.id, e.image, e.prompt, e.answer) for e in examples]).encode()
    ).hexdigest()[:16]
    identity = json.loads(json.dumps({"settings": settings, "examples": digest}, default=str))
    path = output_dir / RUN_FILE
    if resumed:
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if recorded != identity:
            what = "an older taxonomist" if recorded is None else "other settings or training rows"
            raise ResumeError(
                f"{output_dir} holds checkpoints trained with {what}; use another output folder or "
                "delete this one (a longer train.epochs or train.max_steps alone resumes)"
            )
    else:
        atomic_write_text(path, json.dumps(identity, indent=1))


def _train_or_restore(trainer: Any, checkpoint: str | None) -> float | None:
    """Train (resuming from ``checkpoint``); returns the mean training loss, None if nothing was left.

    A checkpoint that already reached the planned steps is only loaded: transformers would otherwise run
    one more optimizer step past the end of the schedule.
    """
    from peft import load_peft_weights, set_peft_model_state_dict
    from transformers import TrainerState

    if checkpoint is not None:
        state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        planned = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
        if state.global_step >= planned:
            set_peft_model_state_dict(trainer.model, load_peft_weights(checkpoint))
            trainer.state = state
            return None
    return trainer.train(resume_from_checkpoint=checkpoint).training_loss


def merge_adapter(
    cfg: VLMConfig,
    adapter_dir: str | Path,
    merged_dir: str | Path,
    schema: Schema | None,
    *,
    device: torch.device | str | None = None,
) -> Path:
    """Base model + adapter → one plain model folder that :func:`build_vlm` reads like a hub model.

    The base is reloaded unquantized (``model.dtype``; auto = bf16 on GPU) even after QLoRA: LoRA deltas
    cannot be folded into 4-bit weights without a lossy requantization, so the merged model is full
    precision (quantize it again at load time if memory is short).
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    merged_dir = Path(merged_dir)
    base = dataclasses.replace(cfg.model, quantization="none")
    vlm = build_vlm(base, device=device, adapter=adapter_dir)
    vlm.model.merge_and_unload().save_pretrained(merged_dir)
    vlm.processor.save_pretrained(merged_dir)
    titled = bool(read_metadata(adapter_dir).get("prompt", {}).get("title"))
    write_metadata(merged_dir, metadata(cfg, schema, MERGED, titled=titled))
    return merged_dir
