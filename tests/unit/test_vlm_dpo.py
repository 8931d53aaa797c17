"""vlm improve: voting, pairs and statistics on hand-made chains; one round on a tiny random Qwen2-VL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("xgrammar")

from safetensors.torch import load_file

from taxonomist.config import GenerateConfig, ImproveConfig, PromptConfig, VLMConfig, VLMTrainConfig
from taxonomist.data.schema import Schema
from taxonomist.improve.vlm_dpo import (
    Item,
    Pair,
    Sampled,
    Vote,
    build_pair,
    dpo_args,
    improve,
    majority_vote,
    pair_statistics,
    round_items,
    usable_pool,
)
from taxonomist.inference.vlm import Generation
from taxonomist.io import ResumeError
from taxonomist.models.vlm import random_vlm, write_metadata

SCHEMA = Schema(
    {
        "Tops": {"colour": ["red", "blue", "navy blue"], "neck": ["round", "v-neck"]},
        "Shoes": {"colour": ["red", "black"], "sole": ["flat", "heel"]},
    }
)
ITEM = Item("a", "Tops", "a.jpg")


def chain(colour: str, neck: str, text: str = "") -> Generation:
    values = {"colour": colour, "neck": neck}
    return Generation(text or json.dumps(values), values, {"colour": 0.5, "neck": 0.5})


BROKEN = Generation("garbage", error="invalid_output: not JSON")
# Votes: colour red 2/3, neck v-neck 2/3; chain 1 matches both, chains 0 and 2 one each.
CHAINS = [chain("red", "round"), chain("red", "v-neck"), chain("blue", "v-neck"), BROKEN]


def test_majority_vote_counts_parsed_chains_and_breaks_ties_by_first_seen():
    vote = majority_vote(CHAINS, ["colour", "neck"])
    assert vote.values == {"colour": "red", "neck": "v-neck"}
    assert vote.agreement == pytest.approx({"colour": 2 / 3, "neck": 2 / 3})
    assert vote.mean_agreement == pytest.approx(2 / 3)
    tie = majority_vote([chain("blue", "round"), chain("red", "v-neck")], ["colour", "neck"])
    assert tie.values == {"colour": "blue", "neck": "round"} and tie.mean_agreement == 0.5
    assert majority_vote([BROKEN], ["colour"]) == Vote({}, {})
    assert Vote({}, {}).mean_agreement == 0.0


def test_pairs_take_the_majority_chain_against_the_most_disagreeing_one():
    vote = majority_vote(CHAINS, ["colour", "neck"])
    pair = build_pair(ITEM, CHAINS, vote, threshold=0.6)
    assert pair == Pair(
        "a", "Tops", "a.jpg", CHAINS[1].text, CHAINS[0].text, 1, 0, 2, 1, pytest.approx(2 / 3)
    )
    # The chain that disagrees on both attributes is rejected over one that disagrees on one.
    forced = [*CHAINS, chain("red", "v-neck"), chain("navy blue", "round", "worst")]
    assert build_pair(ITEM, forced, majority_vote(forced, ["colour", "neck"]), 0.0).rejected == "worst"
    assert build_pair(ITEM, CHAINS, vote, threshold=0.7) is None  # agreement 2/3 is below
    unanimous = [chain("red", "round")] * 3
    assert build_pair(ITEM, unanimous, majority_vote(unanimous, ["colour", "neck"]), 0.0) is None
    assert build_pair(ITEM, [BROKEN], majority_vote([BROKEN], ["colour", "neck"]), 0.0) is None


def test_pair_statistics_measure_vote_against_single_samples():
    unanimous = [chain("blue", "round")] * 3
    sampled = [
        Sampled(ITEM, CHAINS, majority_vote(CHAINS, ["colour", "neck"])),
        Sampled(Item("b", "Tops", "b.jpg"), unanimous, majority_vote(unanimous, ["colour", "neck"])),
        Sampled(Item("c", "Tops", "c.jpg"), [], Vote({}, {})),  # unreadable image: no chains
    ]
    pairs = [p for s in sampled if (p := build_pair(s.item, s.generations, s.vote, 0.6)) is not None]
    labels = pd.DataFrame(
        {"id": ["a", "b", "c"], "colour": ["red", "blue", "red"], "neck": ["round", None, "x"]}
    )
    stats = pair_statistics(sampled, pairs, 0.6, labels)
    assert {k: stats[k] for k in ("items_sampled", "items_without_chains", "chains", "invalid_chains")} == {
        "items_sampled": 3,
        "items_without_chains": 1,
        "chains": 7,
        "invalid_chains": 1,
    }
    assert stats["items_voted"] == 2 and stats["mean_agreement"] == pytest.approx((2 / 3 + 1) / 2)
    assert stats["agreement_histogram"]["counts"] == [0, 0, 0, 0, 0, 0, 1, 0, 0, 1]
    assert stats["agreement_histogram"]["edges"][6:8] == [0.6, 0.7]
    assert (stats["items_kept"], stats["items_kept_without_pair"], stats["pairs_built"]) == (2, 1, 1)
    assert stats["labelled_items"] == 2
    colour, neck = stats["per_attribute"]["colour"], stats["per_attribute"]["neck"]
    assert colour == {
        "n": 2,
        "majority_accuracy": 1.0,
        "single_sample_accuracy": pytest.approx((2 / 3 + 1) / 2, abs=1e-6),
        "n_kept": 2,
        "kept_majority_accuracy": 1.0,
        "n_pairs": 1,
        "chosen_accuracy": 1.0,
        "rejected_accuracy": 1.0,
    }
    # neck: only item a is labelled; the vote (v-neck) is wrong and the rejected chain (round) is right.
    assert neck["n"] == 1 and neck["majority_accuracy"] == 0.0
    assert neck["single_sample_accuracy"] == pytest.approx(1 / 3, abs=1e-6)
    assert (neck["chosen_accuracy"], neck["rejected_accuracy"]) == (0.0, 1.0)
    assert pair_statistics(sampled, pairs, 0.6)["per_attribute"] == {}


def test_round_items_walk_a_seeded_shuffle():
    assert round_items(5, 1, None, 0).tolist() == [0, 1, 2, 3, 4]
    first, second, third = (round_items(5, k, 2, 0).tolist() for k in (1, 2, 3))
    assert len(set(first + second)) == 4
    order = [*first, *second]
    assert third[1] == order[0] and third[0] not in order  # the 5th item, then wrap to the start


# --- one round on a tiny random Qwen2-VL -----------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("improve")
    model_dir = root / "model"
    random_vlm(model_dir, [json.dumps(SCHEMA.to_dict()), PromptConfig().attributes, PromptConfig().reasoning])
    write_metadata(
        model_dir, {"task": "attributes", "schema": SCHEMA.to_dict(), "model": {"max_pixels": 28 * 28 * 16}}
    )
    rows = []
    for k, (colour, category) in enumerate(
        [("red", "Tops"), ("blue", "Tops"), ("black", "Shoes"), ("navy", "Tops"), ("red", "Shoes")]
    ):
        path = root / f"{k}.png"
        Image.new("RGB", (56 + 8 * k, 48), colour).save(path)
        rows.append({"id": f"p{k}", "category": category, "image_path": str(path)})
    pool = pd.DataFrame(rows).assign(colour=["red", "blue", None, None, "red"])  # a few hidden labels
    val = pd.DataFrame(rows[:2]).assign(id=["v0", "v1"], colour=["red", "blue"], neck=["round", "v-neck"])
    return model_dir, pool, val


def config(**improve: object) -> VLMConfig:
    settings = {
        "rounds": 1,
        "samples_per_item": 3,
        "temperature": 1.0,
        "top_p": 1.0,
        "agreement_threshold": 0.0,
        "max_steps": 1,
        "batch_size": 2,
        "grad_accumulation": 1,
        **improve,
    }
    return VLMConfig(
        improve=ImproveConfig(**settings),  # type: ignore[arg-type]
        # Warmup would make the only step's learning rate 0; the first loss is logged alone.
        train=VLMTrainConfig(warmup_ratio=0.0, logging_steps=1),
        generate=GenerateConfig(reasoning_max_chars=16),
    )


def test_improve_refuses_greedy_sampling_up_front():
    """Regression: improve.temperature=0 was accepted, and the run failed in round 1, after round 0's
    evaluation, when generate refused K greedy chains per item (K identical chains vote nothing)."""
    from taxonomist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"improve\.temperature must be > 0"):
        load_config(None, ["improve.temperature=0"], VLMConfig)


def test_dpo_trainer_pins_loader_memory_only_with_an_accelerator(tmp_path):
    """DPO once took its loader settings without SFT's pinning switch: every CPU round warned."""
    args = dpo_args(config(), tmp_path, device=torch.device("cpu"), progress=False)
    assert args.dataloader_pin_memory is False


def test_one_round_samples_votes_pairs_trains_and_resumes(setup, tmp_path):
    model_dir, pool, val = setup
    out = tmp_path / "improve"
    report = improve(config(), model_dir, pool, val, out, progress=False)
    round_dir = out / "round-1"

    chains = pd.read_parquet(round_dir / "chains.parquet")
    assert len(chains) == 5 * 3 and chains["error"].isna().all(), chains["text"].tolist()
    for row in chains.to_dict("records"):
        values = json.loads(row["values"])
        assert set(values) == set(SCHEMA.attributes_of(row["category"]))
        assert all(SCHEMA.is_valid(row["category"], a, v) for a, v in values.items())
        assert row["text"].endswith(json.dumps(values))  # reasoning line, then the JSON answer

    stats = json.loads((round_dir / "stats.json").read_text())
    pairs = [json.loads(line) for line in (round_dir / "pairs.jsonl").read_text().splitlines()]
    assert stats["items_sampled"] == 5 and stats["chains"] == 15 and stats["invalid_chains"] == 0
    assert stats["pairs_built"] == len(pairs) >= 1
    assert stats["labelled_items"] == 3 and stats["per_attribute"]["colour"]["n"] == 3
    assert stats["val"]["items_sampled"] == 2 and stats["val"]["labelled_items"] == 2
    texts = dict(zip(zip(chains["id"], chains["chain"], strict=True), chains["text"], strict=True))
    for pair in pairs:
        assert pair["chosen_matches"] > pair["rejected_matches"]
        assert pair["chosen"] == texts[(pair["id"], pair["chosen_chain"])]
        assert pair["rejected"] == texts[(pair["id"], pair["rejected_chain"])]

    # The first DPO loss is log 2 exactly when the reference is the round's starting model.
    log = json.loads((round_dir / "train_log.json").read_text())
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    adapter = load_file(round_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # zero-initialised, so the step moved them
    assert not any(".ref." in name for name in adapter)  # trl's frozen reference copy is not saved
    before = load_file(model_dir / "model.safetensors")
    after = load_file(round_dir / "merged" / "model.safetensors")
    changed = [k for k in before if "q_proj.weight" in k and not before[k].equal(after[k])]
    assert changed

    for name in ("votes.parquet", "val_chains.parquet", "metrics.json", "adapter/adapter_config.json"):
        assert (round_dir / name).is_file(), name
    merged_meta = json.loads((round_dir / "merged" / "taxonomist_vlm.json").read_text())
    assert merged_meta["schema"] == SCHEMA.to_dict() and merged_meta["improve"]["round"] == 1
    metrics = json.loads((round_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["score"] <= 1.0 and metrics["failed_items"] == 0
    assert [r.round for r in report.rounds] == [0, 1] and report.rounds[1].trained
    assert report.rounds[1].model_dir == str(round_dir / "merged")
    progress = json.loads((out / "progress.json").read_text())
    assert progress["best_round"] == report.best_round
    best = max(report.rounds, key=lambda r: r.score)
    assert report.best_model_dir == best.model_dir

    stamp = (round_dir / "metrics.json").stat().st_mtime_ns
    again = improve(config(), model_dir, pool, val, out, progress=False)
    assert again.resumed_rounds == 2 and again.rounds == report.rounds
    assert (round_dir / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(ResumeError, match="improve"):
        improve(config(beta=0.5), model_dir, pool, val, out, progress=False)
    # Regression: decoding and training settings were not part of the run, so these resumed too.
    unconstrained = config()
    unconstrained.generate.constrained = False
    with pytest.raises(ResumeError, match=r"\['generate'\]"):
        improve(unconstrained, model_dir, pool, val, out, progress=False)

    # Killed after sampling: the round reruns from its saved chains, which give the same pairs.
    progress["rounds"] = progress["rounds"][:1]
    (out / "progress.json").write_text(json.dumps(progress))
    chains_stamp = (round_dir / "chains.parquet").stat().st_mtime_ns
    pairs_text = (round_dir / "pairs.jsonl").read_text()
    resumed = improve(config(), model_dir, pool, val, out, progress=False)
    assert resumed.resumed_rounds == 1 and resumed.rounds[1].trained
    assert (round_dir / "chains.parquet").stat().st_mtime_ns == chains_stamp
    assert (round_dir / "pairs.jsonl").read_text() == pairs_text


def test_a_pool_file_loses_the_run_s_held_out_rows_and_unknown_categories() -> None:
    """Regression: --pool with the whole catalog let DPO train on the dev rows that pick the best round
    (and the test rows), and a row of a category the model does not know crashed every rerun."""
    pool = pd.DataFrame(
        {"id": ["1", "2", "3", "4", "5"], "category": ["Tops", "Tops", "Shoes", "Bags", "Tops"]}
    )
    kept, notes = usable_pool(pool, held_out_ids=["2", "3"], categories=["Tops", "Shoes"])
    assert kept["id"].tolist() == ["1", "5"]
    assert notes == [
        "left 2 pool rows out: their ids are in the run's dev or test part",
        "left 1 pool rows out: categories the model does not know {'Bags': 1}",
    ]
