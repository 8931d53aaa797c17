"""VLM SFT on a tiny random Qwen2-VL and 8 products: examples → masked batches → LoRA step → merge."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("trl")
pytest.importorskip("peft")

from safetensors.torch import load_file

from taxonomist.config import (
    CaptionDataConfig,
    CatalogConfig,
    LoraSettings,
    PromptConfig,
    VLMConfig,
    VLMModelConfig,
    VLMTrainConfig,
    load_config,
)
from taxonomist.data.chat import (
    TokenBudgetError,
    export_llamafactory,
    readable_examples,
    validate_llamafactory,
)
from taxonomist.data.prepare import build_examples
from taxonomist.io import ResumeError
from taxonomist.models.build import build_vlm
from taxonomist.models.vlm import random_vlm, read_metadata
from taxonomist.training.vlm_sft import (
    IGNORE_INDEX,
    ChatCollator,
    lora_targets,
    loraplus_optimizer,
    sft_args,
    train_sft,
)
from tests.conftest import solid_colour_images

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MAX_PIXELS = 28 * 28 * 16


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 solid-colour products (Tops with colour + fit, Bags with colour) in the generic CSV layout."""
    root = tmp_path_factory.mktemp("catalog")
    rows = []
    for i, colour in enumerate(solid_colour_images(root / "images", range(100, 108), (48, 40))):
        category = "Tops" if i < 4 else "Bags"
        fit = ("slim" if i % 2 else "loose") if category == "Tops" and i != 3 else None
        rows.append({"sku": 100 + i, "type": category, "colour": colour, "fit": fit})
    path = root / "catalog.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prompt = PromptConfig()
    corpus = [prompt.system, prompt.attributes, prompt.caption, '{"colour": "red", "fit": "slim"}']
    return random_vlm(tmp_path_factory.mktemp("vlm") / "model", corpus * 4)


def make_config(catalog: Path, model_dir: Path, **train: object) -> VLMConfig:
    return VLMConfig(
        catalog=CatalogConfig(
            path=str(catalog),
            id_column="sku",
            category_column="type",
            attributes=["colour", "fit"],
            min_rows_per_category=0,
        ),
        model=VLMModelConfig(name=str(model_dir), max_pixels=MAX_PIXELS, dtype="float32"),
        train=VLMTrainConfig(
            **{
                "max_steps": 1,
                "batch_size": 2,
                "grad_accumulation": 1,
                "lr": 1e-2,
                "dev_fraction": 0.25,
                "group_duplicate_images": False,  # the solid-colour images repeat on purpose
                "logging_steps": 1,
                "warmup_ratio": 0.0,  # one step with warmup would run at learning rate 0
                "merge": False,
                **train,
            }
        ),
    )


@pytest.fixture(scope="module")
def processor(model_dir: Path):
    return build_vlm(VLMModelConfig(name=str(model_dir), max_pixels=MAX_PIXELS), device="cpu").processor


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, catalog: Path, model_dir: Path):
    """One LoRA+ SFT step, adapter merged: shared by the checks on what a run leaves behind."""
    out = tmp_path_factory.mktemp("sft")
    cfg = make_config(catalog, model_dir, merge=True)
    return cfg, train_sft(cfg, out, progress=False)


def test_build_examples_split_schema_and_export(catalog: Path, model_dir: Path, tmp_path: Path) -> None:
    train, val, schema = build_examples(make_config(catalog, model_dir))
    assert (len(train), len(val)) == (6, 2)
    assert {e.category for e in val} == {"Tops", "Bags"}  # the split is per category
    assert schema is not None and set(schema.attributes_of("Tops")) == {"colour", "fit"}
    assert schema.attributes_of("Bags") == ["colour"]
    top = next(e for e in train + val if e.id == "100")
    assert json.loads(top.answer) == {"colour": "red", "fit": "loose"}
    assert Path(top.image).name == "100.jpg"
    limited, _, _ = build_examples(make_config(catalog, model_dir, limit=3))
    assert limited == train[:3]
    export_llamafactory(train, tmp_path)
    assert validate_llamafactory(tmp_path) == {"taxonomist": 6}


def test_missing_label_policy_applies_to_training_rows_only(catalog: Path, model_dir: Path) -> None:
    cfg = make_config(catalog, model_dir)
    cfg.missing_labels.policy = "drop"
    train, val, _ = build_examples(cfg)
    kept = {e.id for e in train} | {e.id for e in val}
    # 103 is the one Tops row without a fit: dropped from training, kept if it landed in validation.
    assert ("103" in kept) == any(e.id == "103" for e in val)


def test_build_examples_caption_task(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "images").mkdir()
    rows = []
    for k, split in enumerate(["train", "train", "val"]):
        Image.new("RGB", (40, 40), "red").save(tmp_path / "images" / f"{k:04d}.jpg")
        rows += [(f"{k:04d}.jpg", f"a red square number {k}", split), (f"{k:04d}.jpg", "a red thing", split)]
    pd.DataFrame(rows, columns=["image", "caption", "split"]).to_csv(tmp_path / "captions.csv", index=False)
    cfg = VLMConfig(task="caption", captions=CaptionDataConfig(path=str(tmp_path), limit=1))
    train, val, schema = build_examples(cfg)
    # limit=1 keeps the first image of each split, with all its captions
    assert (
        schema is None and [e.id for e in train] == ["0000", "0000"] and [e.id for e in val] == ["0002"] * 2
    )
    assert [e.answer for e in train] == ["a red square number 0", "a red thing"]
    assert train[0].prompt == cfg.prompt.caption
    cfg.captions.limit = None
    assert len(build_examples(cfg)[1]) == 2
    # Regression: the dataset entry mapped a system column caption records do not have, so `vlm export`
    # of every caption config failed its own validation.
    for formatting in ("sharegpt", "alpaca"):
        export_llamafactory(train, tmp_path / formatting, formatting=formatting)
        assert validate_llamafactory(tmp_path / formatting) == {"taxonomist": 2}


def test_collator_trains_only_the_answer_and_end_token(catalog: Path, model_dir: Path, processor) -> None:
    train, _, _ = build_examples(make_config(catalog, model_dir))
    batch = ChatCollator(processor)(train[:2])
    tokenizer = processor.tokenizer
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for row, example in enumerate(train[:2]):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert tokenizer.decode(kept) == example.answer + tokenizer.eos_token
        # right padding: real tokens first, the answer ends the row's real tokens
        n = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row][:n].all() and not batch["attention_mask"][row][n:].any()
        assert labels[n - 1] == tokenizer.eos_token_id and (labels[n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row][n:] == tokenizer.pad_token_id).all()
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    assert tokenizer.padding_side == "left"  # generation's setting is left alone


def test_unreadable_images_are_skipped_and_recorded(
    catalog: Path, model_dir: Path, processor, tmp_path: Path
) -> None:
    train, _, _ = build_examples(make_config(catalog, model_dir))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(train[0].image).read_bytes()[:-40])
    missing = dataclasses.replace(train[1], id="gone", image=str(tmp_path / "gone.jpg"))
    broken = dataclasses.replace(train[2], id="broken", image=str(truncated))
    kept, errors = readable_examples([train[0], missing, broken])
    assert [e.id for e in kept] == [train[0].id, "broken"]  # the header check cannot see truncation
    assert [(e.id, e.reason) for e in errors] == [("gone", "missing")]
    collator = ChatCollator(processor)
    batch = collator([train[0], broken])
    assert batch["input_ids"].shape[0] == 1
    assert [e.id for e in collator.errors] == ["broken"]
    only_bad = collator([broken])  # the last good example stands in, with nothing to learn from
    assert only_bad["input_ids"].shape[0] == 1 and (only_bad["labels"] == IGNORE_INDEX).all()


def test_lora_targets_skip_vision_tower_and_head(model_dir: Path) -> None:
    model = build_vlm(VLMModelConfig(name=str(model_dir)), device="cpu").model
    targets = lora_targets(model, train_vision=False)
    assert targets and all(".language_model." in t for t in targets)
    assert any(t.endswith("q_proj") for t in targets) and any(t.endswith("down_proj") for t in targets)
    with_vision = lora_targets(model, train_vision=True)
    assert set(targets) < set(with_vision) and any(".visual." in t for t in with_vision)
    assert not any("lm_head" in t for t in with_vision)


def test_loraplus_optimizer_gives_b_matrices_the_ratio(
    catalog: Path, model_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    cfg = make_config(catalog, model_dir)
    model = build_vlm(cfg.model, device="cpu").model
    model = get_peft_model(model, LoraConfig(r=4, target_modules=lora_targets(model, train_vision=False)))
    optimizer = loraplus_optimizer(model, sft_args(cfg, tmp_path, device=torch.device("cpu")), 16.0)
    lr = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    a = [lr[id(p)] for n, p in named.items() if "lora_A" in n]
    b = [lr[id(p)] for n, p in named.items() if "lora_B" in n]
    assert a and b and set(a) == {cfg.train.lr} and set(b) == {cfg.train.lr * 16}


def test_one_sft_step_trains_lora_weights(trained) -> None:
    cfg, report = trained
    assert report.global_step == 1 and (report.n_train, report.n_val) == (6, 2)
    assert report.train_loss is not None and math.isfinite(report.train_loss)
    assert report.eval_loss is not None and math.isfinite(report.eval_loss)
    weights = load_file(Path(report.adapter_dir) / "adapter_model.safetensors")
    b = [w for n, w in weights.items() if "lora_B" in n]
    assert b and all(".language_model." in n for n in weights)
    assert any(w.abs().sum() > 0 for w in b)  # LoRA starts with B = 0: any nonzero B was learned
    meta = read_metadata(report.adapter_dir)
    assert meta["task"] == "attributes" and meta["format"] == "adapter"
    assert meta["model"]["name"] == cfg.model.name
    assert set(meta["schema"]["categories"]["Bags"]["colour"]) == {"red", "blue"}
    metrics = json.loads((Path(report.output_dir) / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and metrics["merged_dir"] == report.merged_dir
    assert (Path(report.output_dir) / "config.yaml").is_file()


def test_merged_model_loads_and_generates(trained) -> None:
    _, report = trained
    merged = Path(report.merged_dir)
    assert read_metadata(merged)["format"] == "merged"
    vlm = build_vlm(VLMModelConfig(name=str(merged), max_pixels=MAX_PIXELS), device="cpu")
    assert not any("lora" in n for n, _ in vlm.model.named_parameters())
    text = vlm.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = vlm.processor(text=[text], images=[Image.new("RGB", (48, 40), "red")], return_tensors="pt")
    out = vlm.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_rerun_resumes_from_the_last_checkpoint(
    trained, catalog: Path, model_dir: Path, tmp_path: Path
) -> None:
    _, first = trained  # a one-step run leaves checkpoint-1 behind
    shutil.copytree(Path(first.output_dir) / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(Path(first.output_dir) / "run.json", tmp_path / "run.json")
    # Regression: checkpoints trained with other settings were restored and saved under the new ones.
    with pytest.raises(ResumeError, match="trained with other settings or training rows"):
        train_sft(
            make_config(catalog, model_dir, save_steps=1, max_steps=2, lr=1e-3), tmp_path, progress=False
        )
    cfg = make_config(catalog, model_dir, save_steps=1, max_steps=2)
    second = train_sft(cfg, tmp_path, progress=False)
    assert second.resumed_from is not None and Path(second.resumed_from).name == "checkpoint-1"
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert second.global_step == state["global_step"] == 2
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    # a rerun of a finished run loads its last checkpoint instead of stepping past the schedule's end
    third = train_sft(cfg, tmp_path, progress=False)
    assert third.global_step == 2 and third.train_loss is None
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    again = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(adapter[k], again[k]) for k in adapter)


def test_saved_folders_load_in_the_predictor(trained) -> None:
    pytest.importorskip("xgrammar")
    from taxonomist.inference.vlm import VLMPredictor

    _, report = trained
    for folder in (report.adapter_dir, report.merged_dir):
        predictor = VLMPredictor.from_pretrained(folder, device="cpu")
        assert predictor.task == "attributes" and predictor.schema is not None
        assert set(predictor.schema.categories) == {"Tops", "Bags"}


def test_token_budget_error_names_the_example(catalog: Path, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenBudgetError, match=r"example \d+ .*train.max_length=20"):
        train_sft(make_config(catalog, model_dir, max_length=20), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes 4-bit needs CUDA")
def test_qlora_step_and_merge(catalog: Path, model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    cfg = make_config(catalog, model_dir, optim="paged_adamw_8bit", merge=True)
    cfg.model = dataclasses.replace(cfg.model, quantization="4bit", dtype="bfloat16")
    report = train_sft(cfg, tmp_path, progress=False)
    assert report.global_step == 1 and math.isfinite(report.train_loss or math.nan)
    assert read_metadata(report.merged_dir)["model"]["quantization"] == "none"
    build_vlm(VLMModelConfig(name=str(report.merged_dir)))


@pytest.mark.parametrize(
    ("name", "task", "quantization"),
    [("vlm-attributes.yaml", "attributes", "none"), ("vlm-qlora-caption.yaml", "caption", "4bit")],
)
def test_shipped_configs_load(name: str, task: str, quantization: str) -> None:
    cfg = load_config(CONFIGS / name, cls=VLMConfig)
    assert cfg.task == task and cfg.model.quantization == quantization
    assert isinstance(cfg.lora, LoraSettings)


def test_training_answers_hold_only_values_a_supplied_schema_allows(tmp_path: Path) -> None:
    """Regression: labels outside a supplied schema were reported masked but stayed in the SFT answers,
    teaching values constrained decoding never lets the model write."""
    from taxonomist.data.prepare import prepare_catalog
    from taxonomist.data.schema import Schema

    (tmp_path / "images").mkdir()
    rows = []
    for i in range(20):
        Image.new("RGB", (40, 40), (i * 10, 30, 30)).save(tmp_path / "images" / f"{i}.jpg")
        rows.append({"sku": i, "type": "Tops", "colour": ["red", "blue"][i % 2] if i % 5 else "Crimson-typo"})
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    Schema({"Tops": {"colour": ["red", "blue"]}}).save(tmp_path / "schema.json")
    catalog = CatalogConfig(
        path=str(tmp_path / "c.csv"),
        id_column="sku",
        category_column="type",
        attributes=["colour"],
        min_rows_per_category=0,
        schema=str(tmp_path / "schema.json"),
    )
    cfg = VLMConfig(
        catalog=catalog,
        train=VLMTrainConfig(dev_fraction=0.2, test_fraction=0.0, group_duplicate_images=False),
    )
    data = prepare_catalog(cfg)
    assert (data.train["colour"] == "Crimson-typo").any()  # the training part has such labels
    train, _, _ = build_examples(cfg, data=data)
    answers = [json.loads(e.answer) for e in train]
    assert all(answers) and {a["colour"] for a in answers} == {"red", "blue"}
    assert len(train) == int((data.train["colour"] != "Crimson-typo").sum())  # label-less rows: no example


def test_export_leaves_out_an_example_whose_image_is_missing(
    catalog: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Regression: one missing image made `vlm export` fail its own validation, where `vlm train` skips
    such a row."""
    from typer.testing import CliRunner

    from taxonomist.cli.main import app

    rows = pd.read_csv(catalog, dtype=str)
    rows.loc[0, "sku"] = "999"  # no image 999.jpg
    edited = catalog.parent / "missing_one.csv"
    rows.to_csv(edited, index=False)
    cfg = make_config(edited, model_dir)
    cfg.save(tmp_path / "vlm.yaml")
    result = CliRunner().invoke(
        app, ["vlm", "export", "-c", str(tmp_path / "vlm.yaml"), "-o", str(tmp_path / "lf")]
    )
    assert result.exit_code == 0, result.output
    assert "left out 999: missing image" in " ".join(result.output.split())
    counts = validate_llamafactory(tmp_path / "lf")
    assert sum(counts.values()) == len(rows) - 1
