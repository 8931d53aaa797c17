"""``taxonomist taxonomy train | evaluate | predict`` end to end with a tiny sentence encoder.

The encoder is a 2-layer BERT built from a config with a WordPiece vocabulary trained on the titles here,
saved as a sentence-transformers folder and loaded by path: the same code path as a hub id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from taxonomist.cli.main import app
from taxonomist.data.catalog import CatalogError
from taxonomist.inference.taxonomy import TaxonomyCheckpointError, TaxonomyPredictor
from taxonomist.io import ResumeError
from taxonomist.training.taxonomy import NONE_THRESHOLDS

from .conftest import tiny_sentence_encoder

pytestmark = pytest.mark.integration

TREE = {
    ("Clothing", "Women's Clothing", "Western Wear"): ["Top", "Dress", "Skirt"],
    ("Clothing", "Men's Clothing", "T-Shirts"): ["T-Shirt", "Polo Neck T-Shirt"],
    ("Footwear", "Women's Footwear", "Heels"): ["Heels", "Wedges"],
    ("Footwear", "Men's Footwear", "Casual Shoes"): ["Sneakers", "Loafers"],
    ("Watches", "Wrist Watches", "Analog"): ["Analog Watch", "Chronograph Watch"],
}
# Many brands, each on a few titles, as in real catalogs (so some are unseen at prediction time).
BRANDS = [
    f"{a}{b}".title()
    for a in ("ka", "ro", "zi", "mu", "tel", "van")
    for b in ("po", "shi", "lum", "dex", "ra")
]


def make_products(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    paths = list(TREE)
    rows = []
    for i in range(n):
        path = paths[i % len(paths)]
        noun = TREE[path][rng.integers(len(TREE[path]))]
        brand = BRANDS[rng.integers(len(BRANDS))] if i % 4 else ""
        who = "Women's" if "Women" in path[1] else "Men's"
        title = f"{brand or 'Generic'} Solid {who} {noun}"
        tree = json.dumps([" >> ".join([*path, f"{brand} {noun}"])])
        rows.append(
            {"uniq_id": f"p{i}", "product_name": title, "product_category_tree": tree, "brand": brand}
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return tiny_sentence_encoder(
        tmp_path_factory.mktemp("tiny-encoder"), make_products(200, 0)["product_name"].tolist()
    )


def test_train_predict_evaluate(tmp_path: Path, tiny_encoder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_products(160, 1).to_csv(tmp_path / "products.csv", index=False)
    run = tmp_path / "run"
    sets = [
        f"encoder.name={tiny_encoder}",
        "encoder.finetune_epochs=3",
        "encoder.finetune_batch_size=8",
        "encoder.finetune_lr=1e-3",
        "heads.epochs=20",
        "heads.lr=1e-2",
        "retrieval.k=3",
    ]
    args = ["taxonomy", "train", "-o", str(run), "--data", str(tmp_path / "products.csv"), "-q"]
    result = CliRunner().invoke(app, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"retrieval", "heads", "lexical", "vote", "soft"}
    assert metrics["ensemble"] in ("soft", "vote")  # chosen on dev, as is the brand threshold
    assert metrics["brand_none_threshold"] in NONE_THRESHOLDS
    assert all(v == 0 for v in metrics["invalid_paths"].values())
    # Titles carry the category words, so even a tiny encoder gets most paths right.
    assert metrics["methods"]["soft"]["path_accuracy"] >= 0.8
    assert metrics["methods"]["soft"]["brand_accuracy"] >= 0.8
    for name in (
        "taxonomy.json",
        "brand.json",
        "brand.skops",
        "heads.safetensors",
        "retrieval.npz",
        "encoder",
        "config.yaml",
    ):
        assert (run / name).exists(), name

    titles = pd.DataFrame(
        {"id": ["a", "b", "c"], "title": ["Zorba Solid Women's Wedges", "", "Vanra Analog Watch"]}
    )
    titles.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app, ["taxonomy", "predict", str(run), "--data", str(tmp_path / "new.csv"), "-o", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert pred["id"].tolist() == ["a", "c"]
    predictor = TaxonomyPredictor.from_pretrained(run)
    assert all(
        p in predictor.taxonomy for p in pred[["supergroup", "group", "module"]].itertuples(index=False)
    )
    assert pred["brand"].tolist()[0] == "Zorba"  # a brand never seen in training
    assert pd.read_csv(out / "errors.csv")["line"].tolist() == [3]
    # A rerun finds every chunk done and rewrites the same predictions.
    again = CliRunner().invoke(
        app, ["taxonomy", "predict", str(run), "--data", str(tmp_path / "new.csv"), "-o", str(out), "-q"]
    )
    assert again.exit_code == 0
    assert pd.read_csv(out / "predictions.csv", keep_default_na=False).equals(pred)
    # Regression: a misspelled --id-column fell back to row numbers, which then passed for the file's ids.
    typo = ["--data", str(tmp_path / "new.csv"), "-o", str(tmp_path / "typo"), "--id-column", "sku", "-q"]
    refused = CliRunner().invoke(app, ["taxonomy", "predict", str(run), *typo])
    assert isinstance(refused.exception, CatalogError), refused.output
    assert (
        str(refused.exception) == f"{tmp_path / 'new.csv'}: no id column 'sku'; columns are ['id', 'title']"
    )
    # The encoder's numerics are part of the job: int8 into the fp32 job's folder is refused, and in
    # its own folder it runs on ONNX Runtime's dynamic int8 and gives valid paths.
    int8 = ["--runtime", "onnxruntime", "--precision", "int8", "-q"]
    mixed = CliRunner().invoke(
        app, ["taxonomy", "predict", str(run), "--data", str(tmp_path / "new.csv"), "-o", str(out), *int8]
    )
    assert isinstance(mixed.exception, ResumeError), mixed.output
    out8 = tmp_path / "pred8"
    result = CliRunner().invoke(
        app, ["taxonomy", "predict", str(run), "--data", str(tmp_path / "new.csv"), "-o", str(out8), *int8]
    )
    assert result.exit_code == 0, result.output
    pred8 = pd.read_csv(out8 / "predictions.csv", keep_default_na=False)
    assert pred8["id"].tolist() == ["a", "c"]
    assert all(
        p in predictor.taxonomy for p in pred8[["supergroup", "group", "module"]].itertuples(index=False)
    )
    # Regression: other titles under the same file name were answered with the old parts.
    titles.assign(title=["", "Kapo Men's Polo Neck T-Shirt", "Telra Heels"]).to_csv(
        tmp_path / "new.csv", index=False
    )
    stale = CliRunner().invoke(
        app, ["taxonomy", "predict", str(run), "--data", str(tmp_path / "new.csv"), "-o", str(out), "-q"]
    )
    assert isinstance(stale.exception, ResumeError), stale.output
    # Regression: the refused job's errors.csv replaced the finished one's.
    assert pd.read_csv(out / "errors.csv")["id"].tolist() == ["b"]
    # Regression: a latin-1 CSV and a Parquet file not named .parquet ended in UnicodeDecodeError tracebacks.
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,title\nx,Café Analog Watch\n".encode("latin-1"))
    refused = CliRunner().invoke(
        app, ["taxonomy", "predict", str(run), "--data", str(latin), "-o", str(tmp_path / "l")]
    )
    assert isinstance(refused.exception, CatalogError) and "--encoding latin-1" in str(refused.exception)
    for data, extra in ((latin, ["--encoding", "latin-1"]), (tmp_path / "titles.pq", [])):
        if data.suffix == ".pq":
            titles.to_parquet(data)
        out_other = tmp_path / f"pred-{data.name}"
        args = ["taxonomy", "predict", str(run), "--data", str(data), "-o", str(out_other), "-q", *extra]
        assert CliRunner().invoke(app, args).exit_code == 0
        assert len(pd.read_csv(out_other / "predictions.csv")) == (1 if data == latin else 2)
    # Only empty titles: zero predictions, but the file keeps its header.
    titles.assign(title="").to_csv(tmp_path / "empty.csv", index=False)
    none = CliRunner().invoke(
        app,
        ["taxonomy", "predict", str(run), "--data", str(tmp_path / "empty.csv"), "-o", str(tmp_path / "e")],
    )
    assert none.exit_code == 0, none.output
    header = (tmp_path / "e" / "predictions.csv").read_text().splitlines()
    assert header == [
        "id,supergroup,group,module,brand,supergroup_confidence,group_confidence,"
        "module_confidence,brand_confidence"
    ]
    # The ensembles a checkpoint accepts are all listed when a method is unknown.
    with pytest.raises(TaxonomyCheckpointError, match=r"'soft', 'vote'"):
        predictor.predict(["Kapo Polo"], method="bogus")

    # evaluate scores the run's test split by default; --split dev gives back train's own (dev) figures.
    for split in ("dev", "test"):
        out_json = tmp_path / f"{split}.json"
        args = ["taxonomy", "evaluate", str(run), "--split", split, "--output", str(out_json), "-q"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    dev = json.loads((tmp_path / "dev.json").read_text())
    assert dev["split"] == "dev" and metrics["split"] == "dev"
    assert dev["methods"]["soft"]["path_accuracy"] == pytest.approx(
        metrics["methods"]["soft"]["path_accuracy"]
    )
    test = json.loads((tmp_path / "test.json").read_text())
    assert test["split"] == "test" and test["methods"]["soft"]["n_rows"] == metrics["n_test"]
    result = CliRunner().invoke(
        app, ["taxonomy", "evaluate", str(run), "--output", str(tmp_path / "default.json"), "-q"]
    )
    default = json.loads((tmp_path / "default.json").read_text())
    assert (default["split"], default["methods"]) == ("test", test["methods"])

    # Regression: --output was written in place, so a run killed mid-write left half a file; it is now
    # renamed into place whole, and the earlier scores stay until then.
    def killed(*args: object) -> None:
        raise OSError("killed before the rename")

    monkeypatch.setattr("taxonomist.io.os.replace", killed)
    result = CliRunner().invoke(app, ["taxonomy", "evaluate", str(run), "--output", str(out_json), "-q"])
    assert isinstance(result.exception, OSError), result.output
    assert json.loads(out_json.read_text()) == test
    assert not list(tmp_path.glob(".test.json.*"))  # no temporary left beside it


def test_unknown_method_is_a_clear_error(tmp_path: Path, tiny_encoder: Path) -> None:
    make_products(60, 2).to_csv(tmp_path / "products.csv", index=False)
    args = ["taxonomy", "train", "-o", str(tmp_path / "r"), "--data", str(tmp_path / "products.csv"), "-q"]
    result = CliRunner().invoke(
        app, [*args, "--set", f"encoder.name={tiny_encoder}", "--set", "train.methods=[knn]"]
    )
    assert result.exit_code != 0
    # Refused when the config is read, before any data is loaded, naming the key and the choices.
    assert "train.methods[0]: 'knn' is not one of" in result.output


def test_model_fit_predict_save_load(tmp_path: Path, tiny_encoder: Path) -> None:
    """The model is a plain fitted object: parts from plain arguments, learned state after ``fit`` only,
    and a saved folder that predicts the same on its own."""
    from taxonomist.data.taxonomy import read_flipkart
    from taxonomist.models.brand import BrandExtractor
    from taxonomist.models.taxonomy import LexicalClassifier, RetrievalClassifier
    from taxonomist.models.taxonomy_model import HeadsClassifier, TaxonomyModel
    from taxonomist.models.text import TextEncoder

    make_products(80, 3).to_csv(tmp_path / "products.csv", index=False)
    data = read_flipkart(tmp_path / "products.csv")
    titles, paths, brands = data.frame["title"].tolist(), data.paths(), data.frame["brand"].tolist()
    model = TaxonomyModel(
        TextEncoder(str(tiny_encoder), max_length=32, batch_size=16),
        BrandExtractor(max_tokens=3),
        retrieval=RetrievalClassifier(k=3),
        heads=HeadsClassifier(epochs=3, lr=1e-2),
        lexical=LexicalClassifier(),
        ensemble="vote",
    )
    assert not hasattr(model, "taxonomy_") and not hasattr(model.heads, "module_")
    with pytest.raises(ValueError, match="not in the taxonomy"):
        model.fit(titles, [("Toys", "Cars", "Trucks"), *paths[1:]], brands, data.taxonomy())
    model.fit(titles, paths, brands, data.taxonomy())
    assert model.methods == ["retrieval", "heads", "lexical"]
    assert {"retrieval", "heads", "lexical", "brand"} <= set(model.fit_seconds_)
    assert len(model.heads.losses_) == 3
    pred = model.predict(titles[:6])
    assert len(pred) == 6 and all(p in model.taxonomy_ for p in pred[data.levels].itertuples(index=False))
    # Regression: no titles raised (kNN search's shape error, TF-IDF's); now no rows, the same columns.
    for method in [*model.methods, "soft", "vote"]:
        pd.testing.assert_frame_equal(model.predict([], method), pred.iloc[:0])

    model.save(tmp_path / "model")
    back = TaxonomyModel.load(tmp_path / "model")
    assert back.ensemble == "vote" and back.methods == model.methods
    pd.testing.assert_frame_equal(back.predict(titles[:6]), pred)
    pd.testing.assert_frame_equal(back.predict(titles[:6], "lexical"), model.predict(titles[:6], "lexical"))

    # A checkpoint of the earlier layout (settings in config.yaml, no format number) is refused clearly.
    manifest = json.loads((tmp_path / "model" / "taxonomist.json").read_text())
    del manifest["format"]
    (tmp_path / "model" / "taxonomist.json").write_text(json.dumps(manifest))
    with pytest.raises(TaxonomyCheckpointError, match="older taxonomist"):
        TaxonomyModel.load(tmp_path / "model")


def watch_products(brands: list[str], seed: int) -> pd.DataFrame:
    """Flipkart's layout for watches: each brand has its own leaf, "<Brand> Wrist Watches"."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, brand in enumerate(brands):
        kind = ("Analog", "Digital")[int(rng.integers(2))]
        title, tree = (
            f"{brand} {100 + i} {kind} Watch - For Men",
            f"Watches >> Wrist Watches >> {brand} Wrist Watches",
        )
        if i % 3 == 0:  # shorts: leaves that are not brand leaves
            title, tree = f"{brand} Solid Women's Shorts", "Clothing >> Women's Clothing >> Shorts"
        rows.append(
            {
                "uniq_id": f"w{seed}-{i}",
                "product_name": title,
                "product_category_tree": json.dumps([tree]),
                "brand": "",
            }
        )
    return pd.DataFrame(rows)


def test_brand_leaves_for_brands_never_seen(tmp_path: Path, tiny_encoder: Path) -> None:
    """A watch of a brand missing from training gets its own leaf; the leaf counts as valid; the choice
    is made on dev and survives save/load."""
    from taxonomist.config import TaxonomyConfig
    from taxonomist.data.taxonomy import read_flipkart
    from taxonomist.models.brand import BrandExtractor
    from taxonomist.models.leaf_templates import LeafTemplates
    from taxonomist.models.taxonomy import LexicalClassifier
    from taxonomist.models.taxonomy_model import TaxonomyModel
    from taxonomist.models.text import TextEncoder
    from taxonomist.training.taxonomy import _choose_on_dev, evaluate_model

    watch_products(BRANDS, 0).to_csv(tmp_path / "train.csv", index=False)
    unseen = [f"{b}x" for b in BRANDS[:12]]
    watch_products(unseen, 1).to_csv(tmp_path / "dev.csv", index=False)
    train, dev = read_flipkart(tmp_path / "train.csv"), read_flipkart(tmp_path / "dev.csv")

    def fitted() -> TaxonomyModel:
        model = TaxonomyModel(
            TextEncoder(str(tiny_encoder), max_length=32, batch_size=16),
            BrandExtractor(max_tokens=3),
            lexical=LexicalClassifier(),
            leaf_templates=LeafTemplates(),
        )
        return model.fit(
            train.frame["title"].tolist(), train.paths(), train.frame["brand"].tolist(), train.taxonomy()
        )

    model = fitted()
    assert model.leaf_templates.parents_ == {("Watches", "Wrist Watches"): 1.0}
    pred = model.predict(["Zipox 7 Analog Watch - For Men"])
    assert pred.loc[0, "module"] == "Zipox Wrist Watches"
    assert model.is_valid(
        "Zipox 7 Analog Watch - For Men", ("Watches", "Wrist Watches", "Zipox Wrist Watches")
    )
    assert not model.is_valid("Zipox 7 Analog Watch", ("Watches", "Wrist Watches", "Kapo Wrist Watches"))

    # Dev decides: every dev watch is of an unseen brand, so the leaves raise dev path accuracy and stay.
    cfg = TaxonomyConfig()
    result = _choose_on_dev(cfg, model, dev, progress=False)
    assert model.leaf_templates is not None
    assert result["reports"]["lexical"].path_accuracy == 1.0 and result["invalid"]["lexical"] == 0
    model.save(tmp_path / "model")
    back = TaxonomyModel.load(tmp_path / "model")
    pd.testing.assert_frame_equal(
        back.predict(dev.frame["title"].tolist()), model.predict(dev.frame["title"].tolist())
    )

    # Dev of shorts alone: the leaves change nothing there, so the tie leaves them off.
    shorts = dev.subset(np.flatnonzero(dev.frame["module"] == "Shorts"))
    other = fitted()
    without = evaluate_model(other, shorts)["reports"]["lexical"].path_accuracy
    assert _choose_on_dev(cfg, other, shorts, progress=False)["reports"]["lexical"].path_accuracy == without
    assert other.leaf_templates is None
    other.save(tmp_path / "off")
    assert not (tmp_path / "off" / "leaf_templates.json").exists()
    assert TaxonomyModel.load(tmp_path / "off").leaf_templates is None
    # Regression: saved over the folder of the run with leaves, the earlier leaf_templates.json came back.
    other.save(tmp_path / "model")
    assert TaxonomyModel.load(tmp_path / "model").leaf_templates is None
