"""``vlm improve``: a VLM learns from unlabeled images by self-consistency and DPO.

Each round samples K chains per unlabeled item (one line of reasoning, then the JSON answer, constrained
so it always parses), takes a majority vote per attribute, keeps items whose chains agree enough, and pairs
a chain that matches the vote (chosen) with the one that disagrees most (rejected). DPO then trains a fresh
LoRA on the current model. The reference is that same model (trl keeps a frozen copy of the new adapter at
its zero initialisation), so every round stays close to the previous one; the adapter is merged and the
merged model is the next round's policy. Each round is scored on the labelled validation set and the best
round is recorded; round 0 is the starting model, so a round that hurts is never picked.

Layout of ``output_dir``::

    progress.json            settings, finished rounds, best round (atomic; a rerun skips finished rounds)
    round-0/metrics.json     the starting model on the validation set
    round-k/chains.parquet   K chains per pool item (text, values, confidences, errors); reused on a rerun
            val_chains.parquet   the same on the validation items (``improve.vote_check_val``)
            votes.parquet    majority value and agreement per item and attribute
            pairs.jsonl      the DPO data: image, category, chosen and rejected chain
            stats.json       pair statistics: agreement histogram, pairs, vote vs single-sample accuracy
            train_log.json   the trainer's log history
            adapter/         the round's LoRA (loads on top of the previous round's model)
            merged/          previous model + adapter, processor and metadata: the next round's policy
            metrics.json     validation score of ``merged/``
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from taxonomist.config import GenerateConfig, ImproveConfig, VLMConfig
from taxonomist.data.catalog import CATEGORY, ID, TEXT
from taxonomist.data.images import load_image
from taxonomist.data.prepare import chat_prompts
from taxonomist.data.schema import Schema
from taxonomist.inference.predictor import wide_named_frame
from taxonomist.inference.vlm import Generation, VLMPredictor, to_predictions
from taxonomist.io import ResumeError, atomic_write_frame, atomic_write_text
from taxonomist.metrics import attribute_score
from taxonomist.models.build import build_decoding, build_vlm
from taxonomist.models.vlm import read_metadata, write_metadata
from taxonomist.training.vlm_sft import (
    ADAPTER,
    MERGED,
    add_lora,
    loraplus_optimizer,
    shared_trainer_args,
    step_args,
)

IMAGE_PATH = "image_path"
"""Column of the pool and validation frames holding each item's image file."""
PROGRESS_FILE = "progress.json"
CHAINS_FILE, VAL_CHAINS_FILE = "chains.parquet", "val_chains.parquet"
VOTES_FILE, PAIRS_FILE, STATS_FILE = "votes.parquet", "pairs.jsonl", "stats.json"
METRICS_FILE, TRAIN_LOG_FILE = "metrics.json", "train_log.json"

log = logging.getLogger(__name__)


# --- voting and pairs (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    image: str
    title: str = ""
    """The listing's title; a model trained with titles samples and learns with them in its prompt."""


class Vote(NamedTuple):
    """Majority value per attribute and its share of the valid chains."""

    values: dict[str, str]
    agreement: dict[str, float]

    @property
    def mean_agreement(self) -> float:
        """The item's agreement: the per-attribute shares averaged (0 when no chain parsed)."""
        return float(np.mean(list(self.agreement.values()))) if self.agreement else 0.0


@dataclass
class Sampled:
    item: Item
    generations: list[Generation]
    vote: Vote


@dataclass(frozen=True)
class Pair:
    id: str
    category: str
    image: str
    chosen: str
    rejected: str
    chosen_chain: int
    rejected_chain: int
    chosen_matches: int
    """Attributes on which the chosen chain equals the vote."""
    rejected_matches: int
    agreement: float
    title: str = ""


def valid(generations: Sequence[Generation]) -> list[tuple[int, Generation]]:
    """(chain index, chain) of the chains whose answer parsed."""
    return [(k, g) for k, g in enumerate(generations) if g.error is None and g.values]


def majority_vote(generations: Sequence[Generation], attributes: Sequence[str]) -> Vote:
    """Most frequent value per attribute over the chains that parsed; a tie goes to the value that
    appeared first (chains are i.i.d. samples, so that is an unbiased pick)."""
    chains = [g for _, g in valid(generations)]
    values, agreement = {}, {}
    for attribute in attributes:
        answers = [g.values[attribute] for g in chains if attribute in g.values]
        if not answers:
            continue
        value, count = Counter(answers).most_common(1)[0]
        values[attribute], agreement[attribute] = value, count / len(answers)
    return Vote(values, agreement)


def matches(generation: Generation, vote: Vote) -> int:
    return sum(generation.values.get(a) == v for a, v in vote.values.items())


def build_pair(item: Item, generations: Sequence[Generation], vote: Vote, threshold: float) -> Pair | None:
    """Chosen = the first chain agreeing with the vote on the most attributes, rejected = the first chain
    agreeing on the fewest; None below the agreement threshold or when no chain disagrees more than the
    chosen one (unanimous items teach DPO nothing)."""
    if not vote.values or vote.mean_agreement < threshold:
        return None
    scored = [(matches(g, vote), k, g) for k, g in valid(generations)]
    best = max(m for m, _, _ in scored)
    worst = min(m for m, _, _ in scored)
    if worst == best:
        return None
    chosen = next((k, g) for m, k, g in scored if m == best)
    rejected = next((k, g) for m, k, g in scored if m == worst)
    return Pair(
        item.id,
        item.category,
        item.image,
        chosen[1].text,
        rejected[1].text,
        chosen[0],
        rejected[0],
        best,
        worst,
        vote.mean_agreement,
        item.title,
    )


def pair_statistics(
    sampled: Sequence[Sampled],
    pairs: Sequence[Pair],
    threshold: float,
    labels: pd.DataFrame | None = None,
    bins: int = 10,
) -> dict[str, Any]:
    """What a round's voting produced, and, on items that carry labels (``labels``: ``id`` + attribute
    columns, NaN = unlabelled), whether the vote beats one sample: per attribute the accuracy of the
    majority, the mean accuracy of a single chain, the majority's accuracy on the kept items, and the
    accuracy of the chosen vs the rejected chains of the pairs."""
    voted = [s for s in sampled if s.vote.values]
    kept = {s.item.id for s in voted if s.vote.mean_agreement >= threshold}
    counts, edges = np.histogram([s.vote.mean_agreement for s in voted], bins=np.linspace(0.0, 1.0, bins + 1))
    n_chains = sum(len(s.generations) for s in sampled)
    stats: dict[str, Any] = {
        "items_sampled": len(sampled),
        "items_without_chains": sum(not s.generations for s in sampled),
        "chains": n_chains,
        "invalid_chains": n_chains - sum(len(valid(s.generations)) for s in sampled),
        "items_voted": len(voted),
        "mean_agreement": float(np.mean([s.vote.mean_agreement for s in voted])) if voted else None,
        "agreement_histogram": {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()},
        "threshold": threshold,
        "items_kept": len(kept),
        "items_kept_without_pair": len(kept) - len(pairs),
        "pairs_built": len(pairs),
        "labelled_items": 0,
        "per_attribute": {},
    }
    if labels is None:
        return stats
    truth = labels.assign(**{ID: labels[ID].astype(str)}).set_index(ID)
    pair_of = {p.id: p for p in pairs}
    tallies: dict[str, dict[str, list[float]]] = {}
    labelled = set()
    for s in voted:
        if s.item.id not in truth.index:
            continue
        row = truth.loc[s.item.id]
        chains = [g for _, g in valid(s.generations)]
        for attribute, value in s.vote.values.items():
            if attribute not in truth.columns or pd.isna(row[attribute]):
                continue
            label = str(row[attribute])
            labelled.add(s.item.id)
            tally = tallies.setdefault(
                attribute, {k: [] for k in ("majority", "single", "kept", "ch", "rej")}
            )
            tally["majority"].append(value == label)
            tally["single"].append(np.mean([g.values.get(attribute) == label for g in chains]))
            if s.item.id in kept:
                tally["kept"].append(value == label)
            pair = pair_of.get(s.item.id)
            if pair is not None:
                tally["ch"].append(s.generations[pair.chosen_chain].values.get(attribute) == label)
                tally["rej"].append(s.generations[pair.rejected_chain].values.get(attribute) == label)
    stats["labelled_items"] = len(labelled)
    stats["per_attribute"] = {
        attribute: {
            "n": len(t["majority"]),
            "majority_accuracy": _mean(t["majority"]),
            "single_sample_accuracy": _mean(t["single"]),
            "n_kept": len(t["kept"]),
            "kept_majority_accuracy": _mean(t["kept"]),
            "n_pairs": len(t["ch"]),
            "chosen_accuracy": _mean(t["ch"]),
            "rejected_accuracy": _mean(t["rej"]),
        }
        for attribute, t in tallies.items()
    }
    return stats


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 6) if len(values) else None


def round_items(n: int, round_: int, limit: int | None, seed: int) -> np.ndarray:
    """Positions of round ``round_``'s items (rounds count from 1): consecutive, wrapping slices of one
    seeded shuffle, so rounds see fresh items until the pool is used up."""
    if limit is None or limit >= n:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    return np.take(order, np.arange(limit) + (round_ - 1) * limit, mode="wrap")


# --- chains on disk --------------------------------------------------------------------------------------


def chains_frame(items: Sequence[Item], generations: Sequence[Sequence[Generation]]) -> pd.DataFrame:
    rows = [
        {
            ID: item.id,
            CATEGORY: item.category,
            "chain": k,
            "text": g.text,
            "values": json.dumps(g.values, ensure_ascii=False),
            "confidences": json.dumps(g.confidences),
            "error": g.error,
        }
        for item, gens in zip(items, generations, strict=True)
        for k, g in enumerate(gens)
    ]
    return pd.DataFrame(rows, columns=[ID, CATEGORY, "chain", "text", "values", "confidences", "error"])


def read_chains(path: Path, items: Sequence[Item]) -> list[list[Generation]]:
    """Chains saved by an interrupted run, in item order (an item without rows had an unreadable image)."""
    frame = pd.read_parquet(path).sort_values([ID, "chain"])
    by_id: dict[str, list[Generation]] = {}
    for row in frame.to_dict("records"):
        by_id.setdefault(str(row[ID]), []).append(
            Generation(
                row["text"],
                json.loads(row["values"]),
                json.loads(row["confidences"]),
                None if pd.isna(row["error"]) else row["error"],
            )
        )
    return [by_id.get(item.id, []) for item in items]


def votes_frame(sampled: Sequence[Sampled]) -> pd.DataFrame:
    rows = [
        {
            ID: s.item.id,
            CATEGORY: s.item.category,
            "attribute": a,
            "value": v,
            "agreement": s.vote.agreement[a],
            "item_agreement": s.vote.mean_agreement,
        }
        for s in sampled
        for a, v in s.vote.values.items()
    ]
    return pd.DataFrame(rows, columns=[ID, CATEGORY, "attribute", "value", "agreement", "item_agreement"])


# --- one round -------------------------------------------------------------------------------------------


@dataclass
class RoundRecord:
    round: int
    model_dir: str
    """The model this round ends with (``merged/``, or the previous model when no pair was built)."""
    score: float | None
    trained: bool
    items: int
    pairs: int
    seconds: float


@dataclass
class ImproveReport:
    output_dir: str
    rounds: list[RoundRecord]
    best_round: int
    best_model_dir: str
    resumed_rounds: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def usable_pool(
    pool: pd.DataFrame, held_out_ids: Sequence[str], categories: Sequence[str]
) -> tuple[pd.DataFrame, list[str]]:
    """``pool`` less the rows DPO must not train on: ids of the run's dev and test parts (dev picks the
    best round; training on its images would flatter it) and rows of categories the model has no
    schema for (their prompts cannot be asked). Returns the rows kept and a note per kind left out."""
    held = pool[ID].astype(str).isin(set(map(str, held_out_ids)))
    unknown = ~held & ~pool[CATEGORY].astype(str).isin(list(categories))
    notes = []
    if held.any():
        notes.append(f"left {int(held.sum())} pool rows out: their ids are in the run's dev or test part")
    if unknown.any():
        counts = pool.loc[unknown, CATEGORY].astype(str).value_counts().to_dict()
        notes.append(f"left {int(unknown.sum())} pool rows out: categories the model does not know {counts}")
    return pool[~(held | unknown)].reset_index(drop=True), notes


def items_of(frame: pd.DataFrame) -> list[Item]:
    titles = frame[TEXT].fillna("").astype(str) if TEXT in frame.columns else [""] * len(frame)
    return [
        Item(str(i), str(c), str(p), t)
        for i, c, p, t in zip(frame[ID], frame[CATEGORY], frame[IMAGE_PATH], titles, strict=True)
    ]


def load_policy(
    path: str | Path, cfg: VLMConfig, generate: GenerateConfig, schema: Schema | None
) -> VLMPredictor:
    """A folder saved by taxonomist (its metadata gives schema and prompts), or a base model (hub id or
    folder without metadata) with ``cfg.model``, ``cfg.prompt`` and ``schema``."""
    if read_metadata(path):
        predictor = VLMPredictor.from_pretrained(path, decoding=build_decoding(generate))
    else:
        vlm = build_vlm(dataclasses.replace(cfg.model, name=str(path)))
        predictor = VLMPredictor(
            vlm,
            task="attributes",
            prompts=chat_prompts(cfg.prompt),
            decoding=build_decoding(generate),
            schema=schema,
        )
    if schema is not None:
        predictor.schema = schema
    if predictor.task != "attributes" or predictor.schema is None:
        raise ValueError(f"{path}: improve needs an attribute model with a schema (pass schema=...)")
    return predictor


def policy_metadata(path: str | Path, predictor: VLMPredictor, cfg: VLMConfig) -> dict[str, Any]:
    """The starting model's metadata (or one built from ``cfg`` for a base model), for the rounds' folders."""
    meta = read_metadata(path)
    if not meta:
        meta = {"task": "attributes", "prompt": dataclasses.asdict(predictor.prompts)}
        meta["model"] = dataclasses.asdict(dataclasses.replace(cfg.model, name=str(path)))
    assert predictor.schema is not None
    meta["schema"] = predictor.schema.to_dict()
    return meta


def sample(
    predictor: VLMPredictor, items: Sequence[Item], improve: ImproveConfig, seed: int
) -> list[list[Generation]]:
    """K reasoning chains per item (none for an unreadable image); top-p comes from the predictor's
    ``generate`` settings."""
    torch.manual_seed(seed)
    results = predictor.predict(
        [i.image for i in items],
        [i.category for i in items],
        [i.id for i in items],
        num_samples=improve.samples_per_item,
        reasoning=True,
        temperature=improve.temperature,
        titles=[i.title for i in items],
    )
    return [r.generations for r in results]


def vote_and_pair(
    generations: Sequence[list[Generation]], items: Sequence[Item], schema: Schema, threshold: float
) -> tuple[list[Sampled], list[Pair]]:
    sampled, pairs = [], []
    for item, gens in zip(items, generations, strict=True):
        vote = majority_vote(gens, schema.attributes_of(item.category))
        sampled.append(Sampled(item, gens, vote))
        pair = build_pair(item, gens, vote, threshold)
        if pair is not None:
            pairs.append(pair)
    return sampled, pairs


def chains_for(
    path: Path, predictor: VLMPredictor, items: Sequence[Item], improve: ImproveConfig, seed: int
) -> list[list[Generation]]:
    """Sampled chains, or the ones an interrupted run of this round already saved."""
    if path.is_file():
        return read_chains(path, items)
    generations = sample(predictor, items, improve, seed)
    atomic_write_frame(chains_frame(items, generations), path)
    return generations


def pair_dataset(pairs: Sequence[Pair], predictor: VLMPredictor) -> Any:
    """trl's vision preference rows (``images``, ``prompt``, ``chosen``, ``rejected``) under the exact
    prompt the chains were sampled with."""
    from datasets import Dataset

    records = [
        {
            IMAGE_PATH: p.image,
            "prompt": predictor.example(p.category, reasoning=True, title=p.title).messages(
                with_answer=False
            ),
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]
    return Dataset.from_list(records).with_transform(preference_rows)


def preference_rows(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Images are decoded only when a batch is drawn, with the loader prediction uses."""
    return {
        "images": [[load_image(path)] for path in batch[IMAGE_PATH]],
        **{k: batch[k] for k in ("prompt", "chosen", "rejected")},
    }


def dpo_args(cfg: VLMConfig, output_dir: Path, *, device: torch.device, progress: bool) -> Any:
    """trl ``DPOConfig``: DPO settings from ``cfg.improve``, the trainer's others from ``cfg.train``."""
    from trl import DPOConfig

    imp = cfg.improve
    return DPOConfig(
        output_dir=str(output_dir),
        beta=imp.beta,
        loss_type=[imp.loss_type],
        save_strategy="no",
        **step_args(imp),
        **shared_trainer_args(DPOConfig, cfg.train, device, progress),
    )


def train_dpo(
    cfg: VLMConfig, predictor: VLMPredictor, pairs: Sequence[Pair], round_dir: Path, *, progress: bool
) -> tuple[Any, list[dict[str, Any]]]:
    """DPO with a fresh LoRA on the predictor's model; returns the trained PeftModel and the log.

    The model is wrapped before the trainer sees it (so LoRA+ can build its optimizer); trl then keeps a
    frozen copy of the zero-initialised adapter as the reference, which equals the model before the round.
    """
    from peft import PeftModel
    from trl import DPOTrainer

    model = predictor.vlm.model
    if isinstance(model, PeftModel):  # an adapter folder as the starting model: fold it in first
        model = model.merge_and_unload()
    model = add_lora(model, cfg.lora, seed=cfg.improve.seed)
    device = predictor.vlm.device
    args = dpo_args(cfg, round_dir, device=device, progress=progress)
    ratio = cfg.lora.loraplus_lr_ratio
    optimizer = loraplus_optimizer(model, args, ratio) if ratio is not None else None
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=pair_dataset(pairs, predictor),
        processing_class=predictor.vlm.processor,
        optimizers=(optimizer, None),
    )
    trainer.train()
    return model, trainer.state.log_history


def save_round_model(
    model: Any, processor: Any, meta: Mapping[str, Any], base: str | Path, round_dir: Path, round_: int
) -> Path:
    """Adapter (on top of ``base``) and merged model, each with processor and metadata; returns merged/."""
    adapter_dir, merged_dir = round_dir / ADAPTER, round_dir / MERGED
    for folder in (adapter_dir, merged_dir):
        shutil.rmtree(folder, ignore_errors=True)  # leftovers of an interrupted run
    origin = {"round": round_, "previous_model": str(base)}
    model.save_pretrained(adapter_dir, selected_adapters=["default"])
    processor.save_pretrained(adapter_dir)
    model_meta = {**meta["model"], "name": str(base), "quantization": "none"}
    write_metadata(adapter_dir, {**meta, "format": ADAPTER, "model": model_meta, "improve": origin})
    merged = model.merge_and_unload(adapter_names=["default"])
    merged.save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
    write_metadata(merged_dir, {**meta, "format": MERGED, "model": model_meta, "improve": origin})
    return merged_dir


def evaluate(predictor: VLMPredictor, val: pd.DataFrame, *, reasoning: bool) -> dict[str, Any]:
    """The core metric on the validation items (greedy unless ``generate`` says otherwise); an item whose
    image or answer failed counts as predicted with nothing."""
    assert predictor.schema is not None
    items = items_of(val)
    results = predictor.predict(
        [i.image for i in items],
        [i.category for i in items],
        [i.id for i in items],
        reasoning=reasoning,
        titles=[i.title for i in items],
    )
    ok = [r for r in results if r.best is not None and not r.best.error]
    pred = wide_named_frame(to_predictions(ok), predictor.schema.attributes)
    done = {r.id for r in ok}
    failed = pd.DataFrame(
        [{ID: r.id, CATEGORY: r.category} for r in results if r.id not in done], columns=[ID, CATEGORY]
    )
    pred = pd.concat([pred, failed], ignore_index=True) if len(failed) else pred
    truth = val.drop(columns=[IMAGE_PATH]).assign(**{ID: val[ID].astype(str)})
    report = attribute_score(truth, pred, predictor.schema)
    return {**report.to_dict(), "failed_items": len(failed)}


def release() -> None:
    """Return the memory of models no longer referenced before the next one loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the loop --------------------------------------------------------------------------------------------


def _digest(ids: pd.Series) -> str:
    return hashlib.sha1("\n".join(ids.astype(str)).encode()).hexdigest()[:16]


def _check_frame(frame: pd.DataFrame, name: str) -> None:
    missing = [c for c in (ID, CATEGORY, IMAGE_PATH) if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}")


def _score(metrics: Mapping[str, Any]) -> float | None:
    score = metrics["score"]
    return None if score is None or math.isnan(score) else float(score)


def improve(
    cfg: VLMConfig,
    model_dir: str | Path,
    pool: pd.DataFrame,
    val: pd.DataFrame,
    output_dir: str | Path,
    *,
    schema: Schema | None = None,
    progress: bool = True,
) -> ImproveReport:
    """Run ``cfg.improve.rounds`` rounds from ``model_dir``; a rerun resumes after the last finished round.

    ``pool``: unlabeled items (``id``, ``category``, ``image_path``; attribute columns, if any, are only
    used to measure the vote). ``val``: labelled items (the same columns + attributes) that score every
    round. ``schema`` is needed only for a base model without taxonomist metadata.
    """
    imp = cfg.improve
    if cfg.model.quantization != "none":
        raise ValueError("improve merges each round's adapter into the model: use model.quantization=none")
    _check_frame(pool, "pool")
    _check_frame(val, "val")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": str(model_dir),
        "improve": {k: v for k, v in dataclasses.asdict(imp).items() if k != "rounds"},
        "lora": dataclasses.asdict(cfg.lora),
        # What shapes the chains and the DPO steps too (not how many are batched at once).
        "generate": {
            k: v for k, v in dataclasses.asdict(cfg.generate).items() if k not in ("batch_size", "chunk_size")
        },
        "train": dataclasses.asdict(cfg.train),
        "prompt": dataclasses.asdict(cfg.prompt),
        "pool": _digest(pool[ID]),
        "val": _digest(val[ID]),
    }
    progress_file = output_dir / PROGRESS_FILE
    state: dict[str, Any] = {"settings": settings, "rounds": []}
    if progress_file.is_file():
        state = json.loads(progress_file.read_text(encoding="utf-8"))
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise ResumeError(
                f"{output_dir} holds an improve run with other settings ({changed}); use a new folder"
            )
    records = [RoundRecord(**r) for r in state["rounds"]]
    resumed = len(records)
    sampling = dataclasses.replace(cfg.generate, temperature=imp.temperature, top_p=imp.top_p)
    pool = pool.reset_index(drop=True)
    for round_ in range(len(records), imp.rounds + 1):
        start = time.perf_counter()
        round_dir = output_dir / f"round-{round_}"
        round_dir.mkdir(exist_ok=True)
        if round_ == 0:
            predictor = load_policy(model_dir, cfg, cfg.generate, schema)
            metrics = evaluate(predictor, val, reasoning=imp.eval_reasoning)
            atomic_write_text(round_dir / METRICS_FILE, json.dumps({"round": 0, **metrics}, indent=1))
            record = RoundRecord(0, str(model_dir), _score(metrics), False, 0, 0, 0.0)
        else:
            record = run_round(
                cfg, records[-1], model_dir, pool, val, round_dir, round_, sampling, schema, progress=progress
            )
        record.seconds = round(time.perf_counter() - start, 2)
        records.append(record)
        state["rounds"] = [dataclasses.asdict(r) for r in records]
        best = max(records, key=lambda r: -math.inf if r.score is None else r.score)
        state["best_round"], state["best_model_dir"] = best.round, best.model_dir
        atomic_write_text(progress_file, json.dumps(state, indent=1))
        log.info("round %d: score %s, %d pairs", round_, record.score, record.pairs)
    best = records[state["best_round"]]
    return ImproveReport(str(output_dir), records, best.round, best.model_dir, resumed)


def run_round(
    cfg: VLMConfig,
    previous: RoundRecord,
    model_dir: str | Path,
    pool: pd.DataFrame,
    val: pd.DataFrame,
    round_dir: Path,
    round_: int,
    sampling: GenerateConfig,
    schema: Schema | None,
    *,
    progress: bool,
) -> RoundRecord:
    """Sample, vote, pair, train and score one round; the model it ends with is the next one's start."""
    imp = cfg.improve
    policy = previous.model_dir
    predictor = load_policy(policy, cfg, sampling, schema)
    assert predictor.schema is not None
    positions = round_items(len(pool), round_, imp.max_items_per_round, imp.seed)
    frame = pool.iloc[positions]
    items = items_of(frame)
    seed = imp.seed + round_
    generations = chains_for(round_dir / CHAINS_FILE, predictor, items, imp, seed)
    sampled, pairs = vote_and_pair(generations, items, predictor.schema, imp.agreement_threshold)
    labels = frame if set(frame.columns) & set(predictor.schema.attributes) else None
    stats = pair_statistics(sampled, pairs, imp.agreement_threshold, labels)
    if imp.vote_check_val:
        val_items = items_of(val)
        val_generations = chains_for(round_dir / VAL_CHAINS_FILE, predictor, val_items, imp, seed)
        val_sampled, val_pairs = vote_and_pair(
            val_generations, val_items, predictor.schema, imp.agreement_threshold
        )
        stats["val"] = pair_statistics(val_sampled, val_pairs, imp.agreement_threshold, val)
    atomic_write_frame(votes_frame(sampled), round_dir / VOTES_FILE)
    atomic_write_text(
        round_dir / PAIRS_FILE,
        "".join(json.dumps(dataclasses.asdict(p), ensure_ascii=False) + "\n" for p in pairs),
    )
    atomic_write_text(round_dir / STATS_FILE, json.dumps(stats, indent=1))
    if not pairs:
        log.warning("round %d built no pair (every kept item was unanimous): the model is unchanged", round_)
        return RoundRecord(round_, policy, previous.score, False, len(items), 0, 0.0)
    meta = policy_metadata(policy, predictor, cfg)
    model, history = train_dpo(cfg, predictor, pairs, round_dir, progress=progress)
    atomic_write_text(round_dir / TRAIN_LOG_FILE, json.dumps(history, indent=1))
    processor = predictor.vlm.processor
    merged_dir = save_round_model(model, processor, meta, policy, round_dir, round_)
    del model, predictor
    release()
    evaluator = load_policy(merged_dir, cfg, cfg.generate, schema)
    metrics = evaluate(evaluator, val, reasoning=imp.eval_reasoning)
    atomic_write_text(round_dir / METRICS_FILE, json.dumps({"round": round_, **metrics}, indent=1))
    return RoundRecord(round_, str(merged_dir), _score(metrics), True, len(items), len(pairs), 0.0)
