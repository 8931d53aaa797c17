"""A tiny synthetic catalog whose labels are learnable from the pixels, a config for it, and a tiny
sentence encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from taxonomist.cli.main import app

COLORS = {"red": (200, 30, 30), "blue": (30, 40, 200), "green": (30, 160, 50)}
SHAPES = ("wide", "tall")


def make_catalog(root: Path, n: int = 120, seed: int = 0, *, titles: bool = False) -> Path:
    """Products on white: colour → ``color`` label, aspect → ``fit``; two categories with own schemas.

    ``titles`` adds a ``title`` column that names the colour (also where the label is missing).
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        category = "Tops" if i % 2 == 0 else "Bags"
        color = rng.choice(list(COLORS) if category == "Tops" else ["red", "blue"])
        shape = rng.choice(SHAPES)
        img = np.full((48, 48, 3), 255, dtype=np.uint8)
        jitter = rng.integers(-20, 20, size=3)
        box = (slice(4, 44), slice(14, 34)) if shape == "tall" else (slice(14, 34), slice(4, 44))
        img[box] = np.clip(np.array(COLORS[color]) + jitter, 0, 255)
        Image.fromarray(img).save(root / "images" / f"{1000 + i}.jpg", quality=90)
        rows.append(
            {
                "sku": str(1000 + i),
                "type": category,
                "color": color if rng.random() > 0.1 else None,
                "fit": shape if category == "Tops" else None,
            }
        )
        if titles:
            rows[-1]["title"] = f"Acme {color.title()} {'top' if category == 'Tops' else 'bag'}"
    path = root / "catalog.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tiny_config(catalog: Path, cache: Path, **train: object) -> dict:
    return {
        "catalog": {
            "path": str(catalog),
            "id_column": "sku",
            "category_column": "type",
            "attributes": ["color", "fit"],
            "min_rows_per_category": 0,
        },
        "backbone": {"name": "efficientnet-lite0", "pretrained": False, "size": 64},
        "embed": {"batch_size": 16, "num_workers": 0, "cache_dir": str(cache)},
        "heads": {"hidden": [32], "category_dim": 4, "dropout": 0.0},
        "train": {
            "epochs": 30,
            "batch_size": 32,
            "lr": 0.01,
            "dev_fraction": 0.25,
            "test_fraction": 0.1,
            "patience": 30,
            **train,
        },
        "predict": {"chunk_size": 16},
    }


def listing_config(catalog: Path, cache: Path, text: dict | None = None, **train: object) -> dict:
    """:func:`tiny_config` for listing heads reading the catalog's ``title`` column (``make_catalog(...,
    titles=True)``); ``text``: the text section, over a small lexical bag."""
    cfg = tiny_config(catalog, cache, **train)
    cfg["catalog"]["text_columns"] = ["title"]
    cfg["heads"]["inputs"] = ["image", "text"]
    cfg["text"] = {"lexical_width": 16, **(text or {})}
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(catalog csv, config yaml) for a synthetic 120-product catalog, shared by a module's tests."""
    root = tmp_path_factory.mktemp("tiny")
    catalog = make_catalog(root / "data")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(catalog, root / "cache")))
    return catalog, config


def invoke(*args: str) -> str:
    """Run the CLI in-process; a non-zero exit fails the test with the command's output."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def tiny_sentence_encoder(root: Path, corpus: list[str]) -> Path:
    """A 2-layer BERT built from a config with a WordPiece vocabulary trained on ``corpus``, saved as a
    sentence-transformers folder under ``root``: loaded by path, it takes the same code path as a hub id."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    word = Transformer(str(root / "hf"), max_seq_length=32)
    pool = Pooling(word.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(root / "st"))
    return root / "st"
