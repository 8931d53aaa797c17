"""Review app over HTTP: list and filter predictions, accept and correct them, export training rows."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from taxonomist.cli.main import app as cli
from taxonomist.config import CatalogConfig
from taxonomist.data.prepare import catalog_columns, catalog_titles, load_catalog, load_for_prediction
from taxonomist.serve.review import create_review_app, image_locator
from taxonomist.serve.storage import ReviewStore, export_training_rows

from .conftest import make_catalog, tiny_config
from .review_data import ReviewInputs, schema_of, write_review_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> ReviewInputs:
    return write_review_inputs(tmp_path_factory.mktemp("review"))


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'review.db'}"


@pytest.fixture
def client(inputs: ReviewInputs, database_url: str) -> Iterator[TestClient]:
    app = create_review_app(
        inputs.predictions, inputs.catalog.parent, schema=inputs.checkpoint, database_url=database_url
    )
    with TestClient(app) as client:
        yield client


def page(client: TestClient, **params: object) -> dict:
    response = client.get("/api/predictions", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return response.json()


def decide(client: TestClient, item_id: str, attribute: str, value: str | None = None) -> dict:
    response = client.post("/api/decisions", json={"id": item_id, "attribute": attribute, "value": value})
    assert response.status_code == 200, response.text
    return response.json()


def test_page_and_meta(client: TestClient, inputs: ReviewInputs) -> None:
    html = client.get("/")
    assert html.status_code == 200 and "review.js" in html.text
    assert client.get("/static/review.js").status_code == 200
    meta = client.get("/api/meta").json()
    assert meta["categories"] == {"Bags": ["color"], "Tops": ["color", "fit"]}
    assert meta["attributes"] == ["color", "fit"] and meta["threshold"] == 0.5
    assert meta["predictions"] == len(inputs.long) and meta["reviewed"] == 0 and meta["images"]


def test_list_filters_and_order(client: TestClient, inputs: ReviewInputs) -> None:
    everything = page(client)
    assert everything["total"] == len(inputs.long)
    confidences = [i["confidence"] for i in everything["items"]]
    assert confidences == sorted(confidences), "least confident first"

    bags = page(client, category="Bags")
    assert bags["total"] == (inputs.long["category"] == "Bags").sum()
    assert {(i["category"], i["attribute"]) for i in bags["items"]} == {("Bags", "color")}
    schema_values = schema_of(inputs).allowed("Bags", "color")
    assert sorted(schema_values) == ["blue", "red"]
    assert all(i["allowed"] == schema_values for i in bags["items"]), "allowed values come from the schema"

    unsure = page(client, attribute="fit", below=0.5)
    expected = inputs.long[(inputs.long["attribute"] == "fit") & (inputs.long["confidence"] < 0.5)]
    assert unsure["total"] == len(expected) > 0
    assert all(i["attribute"] == "fit" and i["confidence"] < 0.5 for i in unsure["items"])

    second = page(client, limit=10, offset=10)
    assert [i["id"] for i in second["items"]] == [i["id"] for i in everything["items"][10:20]]
    assert client.get("/api/predictions", params={"limit": 501}).status_code == 422


def test_accept_correct_and_status(client: TestClient, inputs: ReviewInputs, database_url: str) -> None:
    first, second = page(client, category="Tops", attribute="fit", limit=2)["items"]
    accepted = decide(client, first["id"], "fit")
    assert accepted["decision"]["action"] == "accept" and accepted["decision"]["value"] == first["value"]
    other = next(v for v in second["allowed"] if v != second["value"])
    corrected = decide(client, second["id"], "fit", other)
    assert corrected["decision"] == {
        **corrected["decision"],
        "action": "correct",
        "value": other,
        "predicted": second["value"],
    }
    # A later decision replaces the earlier one.
    assert decide(client, second["id"], "fit", second["value"])["decision"]["action"] == "accept"
    corrected = decide(client, second["id"], "fit", other)

    reviewed = page(client, status="reviewed")
    assert {(i["id"], i["decision"]["value"]) for i in reviewed["items"]} == {
        (first["id"], first["value"]),
        (second["id"], other),
    }
    assert page(client, status="pending")["total"] == len(inputs.long) - 2
    assert client.get("/api/meta").json()["reviewed"] == 2
    stored = ReviewStore(database_url).decisions()
    assert stored[(second["id"], "fit")].action == "correct" and len(stored) == 2


def test_bad_decisions_are_refused(client: TestClient) -> None:
    item = page(client, category="Bags", limit=1)["items"][0]
    bad_value = client.post("/api/decisions", json={"id": item["id"], "attribute": "color", "value": "green"})
    assert bad_value.status_code == 422 and "not allowed for Bags/color" in bad_value.json()["detail"]
    wrong_attribute = client.post("/api/decisions", json={"id": item["id"], "attribute": "fit"})
    assert wrong_attribute.status_code == 404
    assert client.post("/api/decisions", json={"id": "nope", "attribute": "color"}).status_code == 404
    assert page(client, status="reviewed")["total"] == 0


def test_images_are_served_by_id_only(client: TestClient, inputs: ReviewInputs, tmp_path: Path) -> None:
    item_id = inputs.long["id"].iloc[0]
    image = client.get("/api/image", params={"id": item_id})
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == (inputs.catalog.parent / "images" / f"{item_id}.jpg").read_bytes()
    assert client.get("/api/image", params={"id": "999999"}).status_code == 404
    assert client.get("/api/image", params={"id": "../catalog.csv"}).status_code == 404
    # Even an id from the (server-side) predictions file cannot leave the image folder.
    (tmp_path / "images").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    locate = image_locator(tmp_path / "images", "{id}.jpg")
    with pytest.raises(FileNotFoundError, match="outside the image root"):
        locate("../secret", "")


def test_images_from_a_catalog_config(inputs: ReviewInputs, database_url: str) -> None:
    config = CatalogConfig(path=str(inputs.catalog), id_column="sku", category_column="type")
    app = create_review_app(
        inputs.predictions / "predictions_long.csv",
        load_for_prediction(config),
        titles=catalog_titles(config),
        columns=catalog_columns(config),
        database_url=database_url,
    )
    with TestClient(app) as client:
        item_id = inputs.long["id"].iloc[-1]
        assert client.get("/api/image", params={"id": item_id}).status_code == 200
        # Without a schema, the values predicted somewhere are the choices.
        item = page(client, category="Bags", limit=1)["items"][0]
        assert item["allowed"] == sorted(inputs.long.query("category == 'Bags'")["value"].unique())


def review_everything(client: TestClient) -> dict[tuple[str, str], str]:
    """Accept two of three predictions and correct the third, as a reviewer would."""
    chosen = {}
    for k, item in enumerate(page(client)["items"]):
        value = next(v for v in item["allowed"] if v != item["value"]) if k % 3 == 0 else None
        saved = decide(client, item["id"], item["attribute"], value)
        chosen[(item["id"], item["attribute"])] = saved["decision"]["value"]
    return chosen


def test_export_is_a_loadable_catalog(client: TestClient, inputs: ReviewInputs, database_url: str) -> None:
    items = page(client, category="Tops", limit=6)["items"]
    decide(client, items[0]["id"], items[0]["attribute"])
    for item in items[1:]:
        decide(client, item["id"], item["attribute"], next(v for v in item["allowed"] if v != item["value"]))
    response = client.get("/api/export.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    exported = pd.read_csv(io.StringIO(response.text), dtype=str)
    out = inputs.predictions.parent / "export.csv"
    assert export_training_rows(database_url, out) == len(exported)
    # The page's export also names each item's image file, which the store alone cannot know.
    assert all(Path(p).is_file() for p in exported.pop("image_path"))
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype=str), exported)
    assert list(exported.columns[:2]) == ["id", "category"]

    only_corrections = pd.read_csv(io.StringIO(client.get("/api/export.csv?include_accepted=false").text))
    assert len(only_corrections.dropna(how="all", subset=only_corrections.columns[2:])) <= 5

    catalog = load_catalog(
        CatalogConfig(
            path=str(out),
            id_column="id",
            category_column="category",
            attributes=[],
            image_root=str(inputs.catalog.parent),
            min_rows_per_category=0,
        )
    )
    schema = schema_of(inputs)
    for row in catalog.frame.itertuples(index=False):
        for attribute in ("color", "fit"):
            value = getattr(row, attribute, None)
            if isinstance(value, str):
                assert schema.is_valid(row.category, attribute, value)
    assert all(p.is_file() for p in catalog.image_paths())


def test_partial_review_exports_every_attribute(
    client: TestClient, inputs: ReviewInputs, database_url: str, tmp_path: Path
) -> None:
    # Only Bags/color reviewed: "fit" still needs its (empty) column, or training with the model's own
    # attribute list fails with "attribute columns not found: ['fit']".
    item = page(client, category="Bags", limit=1)["items"][0]
    decide(client, item["id"], "color")
    exports = {
        query: pd.read_csv(io.StringIO(client.get(f"/api/export.csv{query}").text), dtype=str)
        for query in ("", "?include_accepted=false")
    }
    columns = ["id", "category", "color", "fit", "image_path"]
    assert [list(e.columns) for e in exports.values()] == [columns] * 2
    out = tmp_path / "partial.csv"
    assert export_training_rows(database_url, out, ["fit", "color"]) == 1
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype=str), exports[""].drop(columns="image_path"))

    catalog = load_catalog(
        CatalogConfig(
            path=str(out),
            id_column="id",
            category_column="category",
            attributes=["color", "fit"],
            image_root=str(inputs.catalog.parent),
            min_rows_per_category=0,
        )
    )
    [row] = catalog.frame.to_dict("records")
    assert (row["id"], row["color"]) == (item["id"], item["value"]) and pd.isna(row["fit"])

    empty = ReviewStore("sqlite://").training_frame(["fit", "color"])
    assert list(empty.columns) == ["id", "category", "color", "fit"] and empty.empty


def test_storage_persists_in_an_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub.db'}"
    store = ReviewStore(url)
    store.record("1", "Tops", "color", "red", predicted="red", confidence=0.4)
    store.record("1", "Tops", "fit", "tall", predicted="wide", confidence=0.3)
    store.record("2", "Bags", "color", "blue", predicted="red", confidence=0.2)
    store.record("2", "Bags", "color", "red", predicted="red", confidence=0.2)  # changed their mind
    store.close()
    again = ReviewStore(url)
    decisions = again.decisions()
    assert {k: (d.value, d.action) for k, d in decisions.items()} == {
        ("1", "color"): ("red", "accept"),
        ("1", "fit"): ("tall", "correct"),
        ("2", "color"): ("red", "accept"),
    }
    frame = again.training_frame(include_accepted=False)
    assert frame.to_dict("records") == [{"id": "1", "category": "Tops", "fit": "tall"}]
    again.close()
    assert export_training_rows(url, tmp_path / "out" / "rows.csv") == 2
    assert (tmp_path / "sub.db").is_file()


def test_in_memory_sqlite_is_shared_between_threads(inputs: ReviewInputs) -> None:
    app = create_review_app(inputs.predictions, schema=inputs.checkpoint, database_url="sqlite://")
    with TestClient(app) as client:
        item = page(client, limit=1)["items"][0]
        decide(client, item["id"], item["attribute"], item["allowed"][-1])
        assert page(client, status="reviewed")["total"] == 1
        assert client.get("/api/image", params={"id": item["id"]}).status_code == 404


@pytest.mark.integration
def test_exported_rows_train(client: TestClient, inputs: ReviewInputs, tmp_path: Path) -> None:
    chosen = review_everything(client)
    exported = tmp_path / "reviewed.csv"
    exported.write_text(client.get("/api/export.csv").text)
    config = tmp_path / "config.yaml"
    cfg = tiny_config(exported, tmp_path / "cache", epochs=2)
    cfg["catalog"].update(id_column="id", category_column="category", image_root=str(inputs.catalog.parent))
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(
        cli, ["train", "-c", str(config), "-o", str(tmp_path / "ckpt"), "-q"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    trained = load_catalog(CatalogConfig(**cfg["catalog"]))
    assert len(trained) == len({item_id for item_id, _ in chosen})


def test_review_command_builds_the_app_from_a_checkpoint(
    inputs: ReviewInputs, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    import uvicorn

    from taxonomist.cli.review import review

    command = typer.Typer()
    command.command()(review)
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    # The checkpoint's config.yaml names the catalog that was predicted, as `taxonomist predict` reads it.
    cfg = tiny_config(inputs.catalog, inputs.checkpoint / "cache")
    (inputs.checkpoint / "config.yaml").write_text(yaml.safe_dump(cfg))
    args = [str(inputs.predictions), "--checkpoint", str(inputs.checkpoint), "--database-url", database_url]
    result = CliRunner().invoke(command, [*args, "--port", "9123"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert served["port"] == 9123
    with TestClient(served["app"]) as client:
        item = page(client, category="Bags", limit=1)["items"][0]
        assert item["allowed"] == schema_of(inputs).allowed("Bags", "color")
        assert client.get("/api/image", params={"id": item["id"]}).status_code == 200

    missing = CliRunner().invoke(command, [str(inputs.checkpoint)])
    assert missing.exit_code == 2 and "predictions_long.csv" in missing.output


@pytest.mark.parametrize(
    ("url", "message"),
    [("review.db", "expected an SQLAlchemy URL"), ("sqlite:///{tmp}/no-such-folder/r.db", "cannot open")],
)
def test_a_bad_database_url_is_a_usage_error_naming_it(
    inputs: ReviewInputs, tmp_path: Path, url: str, message: str
) -> None:
    import typer

    from taxonomist.cli.review import review

    command = typer.Typer()
    command.command()(review)
    url = url.format(tmp=tmp_path)
    result = CliRunner().invoke(command, [str(inputs.predictions), "--database-url", url])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.replace("│", " ").split())
    assert message in output and url.rsplit("/", 1)[-1] in output


def test_pending_pages_by_cursor_skip_nothing(client: TestClient, inputs: ReviewInputs) -> None:
    """Deciding a page's rows shrinks the pending list; the next page must still start right after them."""
    everything = [(i["id"], i["attribute"]) for i in page(client, status="pending")["items"]]
    first = page(client, status="pending", limit=5)
    for item in first["items"]:
        decide(client, item["id"], item["attribute"])
    second = page(client, status="pending", limit=5, after=first["next"])
    assert [(i["id"], i["attribute"]) for i in second["items"]] == everything[5:10]
    assert second["offset"] == 0 and second["total"] == len(everything) - 5
    back = page(client, status="all", limit=5, before=second["items"][0]["cursor"])
    assert [(i["id"], i["attribute"]) for i in back["items"]] == everything[:5]
    assert client.get("/api/predictions", params={"after": "nonsense"}).status_code == 422


def test_item_shows_top_values_title_and_other_attributes(
    inputs: ReviewInputs, database_url: str, tmp_path: Path
) -> None:
    long = inputs.long.copy()
    schema = schema_of(inputs)
    # The model's ranking: the predicted value, then the schema's values in reverse order.
    long["top"] = [
        json.dumps([[v, 0.5]] + [[a, 0.1] for a in reversed(schema.allowed(c, a)) if a != v])
        for c, a, v in zip(long["category"], long["attribute"], long["value"], strict=True)
    ]
    predictions = tmp_path / "pred"
    predictions.mkdir()
    long.to_csv(predictions / "predictions_long.csv", index=False)
    titled = make_catalog(tmp_path / "data", titles=True)
    catalog = CatalogConfig(path=str(titled), id_column="sku", category_column="type", text_column="title")
    app = create_review_app(
        predictions,
        load_for_prediction(catalog),
        titles=catalog_titles(catalog),
        columns=catalog_columns(catalog),
        schema=inputs.checkpoint,
        database_url=database_url,
    )
    with TestClient(app) as client:
        item = page(client, category="Tops", attribute="color", limit=1)["items"][0]
        allowed = schema.allowed("Tops", "color")
        assert item["choices"] == [item["value"], *[v for v in reversed(allowed) if v != item["value"]]]
        assert item["probabilities"][item["value"]] == 0.5
        assert item["title"].startswith("Acme ")
        assert [o["attribute"] for o in item["others"]] == ["fit"]
        decide(client, item["id"], "color", item["choices"][1])
        exported = pd.read_csv(io.StringIO(client.get("/api/export.csv").text), dtype=str)
    # The catalog's own column names, so the export reads with the same catalog settings.
    assert list(exported.columns) == ["sku", "type", "color", "fit", "image_path"]
    assert exported.loc[0, "image_path"].endswith(f"images/{item['id']}.jpg")


def test_a_shared_database_exports_only_this_review_s_decisions(
    inputs: ReviewInputs, database_url: str, tmp_path: Path
) -> None:
    """Regression: with one database for the reviews of two runs (``review.db`` in the working folder by
    default), a page's export held the other run's decisions, which ``train --corrections`` then added as
    rows with another product's image or none."""
    other = pd.read_csv(inputs.predictions / "predictions_long.csv", dtype=str)
    other["id"] = "other-" + other["id"]
    other_path = tmp_path / "other" / "predictions_long.csv"
    other_path.parent.mkdir()
    other.to_csv(other_path, index=False)
    apps = {
        name: create_review_app(
            path, inputs.catalog.parent, schema=inputs.checkpoint, database_url=database_url
        )
        for name, path in (("this", inputs.predictions), ("other", other_path))
    }
    with TestClient(apps["other"]) as client:
        item = page(client, limit=1)["items"][0]
        decide(client, item["id"], item["attribute"])
    with TestClient(apps["this"]) as client:
        assert client.get("/api/meta").json()["reviewed"] == 0
        exported = pd.read_csv(io.StringIO(client.get("/api/export.csv").text), dtype=str)
    assert exported.empty
    assert export_training_rows(database_url, tmp_path / "all.csv") == 1  # the store's own export: all


def test_repeated_id_attribute_rows_are_refused_by_name(inputs: ReviewInputs, tmp_path: Path) -> None:
    """Regression: a file repeating an (id, attribute) row (joined from two runs) served pages whose
    "pending" and "reviewed" filters failed with a 500; a decision could only reach one of the rows."""
    rows = pd.read_csv(inputs.predictions / "predictions_long.csv", dtype=str)
    path = tmp_path / "joined.csv"
    pd.concat([rows, rows.head(2)]).to_csv(path, index=False)
    first = rows.iloc[0]
    with pytest.raises(
        ValueError, match=r"4 rows repeat an \(id, attribute\) pair, e.g. \[\('" + first["id"]
    ):
        create_review_app(path, inputs.catalog.parent, schema=inputs.checkpoint, database_url="sqlite://")


def test_an_id_the_image_template_cannot_take_is_no_image_not_a_failed_export(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "000012.jpg").write_bytes(b"\xff\xd8\xff")
    predictions = tmp_path / "predictions_long.csv"
    predictions.write_text(
        "id,category,attribute,value,confidence\n12,Tops,color,red,0.1\nSKU-7,Tops,color,red,0.2\n"
    )
    app = create_review_app(predictions, images, image_template="{id:06d}.jpg", database_url="sqlite://")
    with TestClient(app) as client:
        assert client.get("/api/image", params={"id": "12"}).status_code == 200
        misfit = client.get("/api/image", params={"id": "SKU-7"})
        assert misfit.status_code == 404 and "not a whole number" in misfit.json()["detail"]
        decide(client, "12", "color")
        decide(client, "SKU-7", "color")
        export = client.get("/api/export.csv")
        assert export.status_code == 200, export.text
    rows = pd.read_csv(io.StringIO(export.text), dtype=str, keep_default_na=False).set_index("id")
    assert rows.loc["12", "image_path"] == str((images / "000012.jpg").resolve())
    assert rows.loc["SKU-7", "image_path"] == ""


def test_a_save_from_a_stale_page_does_not_overwrite_a_decision_made_meanwhile(
    client: TestClient, database_url: str
) -> None:
    """Two tabs show the same undecided item; the second save must not silently replace the first."""
    item = page(client, category="Tops", attribute="fit", limit=1)["items"][0]
    other = next(v for v in item["allowed"] if v != item["value"])
    shown = {"id": item["id"], "attribute": "fit", "replaces": None}
    assert client.post("/api/decisions", json={**shown, "value": other}).status_code == 200  # tab A
    stale = client.post("/api/decisions", json=shown)  # tab B accepts, not having seen tab A's correction
    assert stale.status_code == 409
    detail = stale.json()["detail"]
    assert f"now correct {other!r}" in detail and f"{item['value']!r} was not saved" in detail
    assert stale.json()["item"]["decision"]["value"] == other
    assert ReviewStore(database_url).decisions()[(item["id"], "fit")].value == other
    # The same label from a stale page loses nothing: saved, not a conflict.
    same = client.post("/api/decisions", json={**shown, "value": other})
    assert same.status_code == 200 and same.json()["decision"]["value"] == other
    # Having seen it, the reviewer may replace it; without `replaces` the last save wins, as before.
    seen = client.post("/api/decisions", json={**shown, "replaces": other})
    assert seen.status_code == 200 and seen.json()["decision"]["action"] == "accept"
    assert decide(client, item["id"], "fit", other)["decision"]["action"] == "correct"


def test_a_page_loads_only_its_own_items_decisions(tmp_path: Path) -> None:
    """Each page and the progress count read every stored decision before: seconds per page once a large
    review holds 100k of them. The status filter needs only the keys; a page, its own rows' decisions."""
    from sqlalchemy import event

    from taxonomist.serve.storage import _Decision

    n = 400
    predictions = tmp_path / "predictions_long.csv"
    long = pd.DataFrame(
        {"id": [f"{k:04d}" for k in range(n)], "category": "Tops", "attribute": "fit"}
        | {"value": "wide", "confidence": [k / n for k in range(n)]}
    )
    long.to_csv(predictions, index=False)
    database_url = f"sqlite:///{tmp_path / 'review.db'}"
    store = ReviewStore(database_url)
    for item_id in long["id"][: n // 2]:
        store.record(item_id, "Tops", "fit", "wide", predicted="wide", confidence=0.5)
    loaded: list[str] = []

    def count(row: _Decision, _: object) -> None:
        loaded.append(row.item_id)

    event.listen(_Decision, "load", count)
    try:
        with TestClient(create_review_app(predictions, database_url=database_url)) as client:
            assert client.get("/api/meta").json()["reviewed"] == n // 2
            assert [i["id"] for i in page(client, status="pending", limit=5)["items"]] == list(
                long["id"][200:205]
            )
            reviewed = page(client, status="reviewed", limit=5)["items"]
            assert [i["decision"]["action"] for i in reviewed] == ["accept"] * 5
            assert page(client, limit=3)["total"] == n
    finally:
        event.remove(_Decision, "load", count)
    assert sorted(loaded) == sorted([f"{k:04d}" for k in range(5)] + [f"{k:04d}" for k in range(3)])


def test_a_schema_lacking_the_predicted_attributes_is_refused_by_name(
    inputs: ReviewInputs, tmp_path: Path
) -> None:
    """Another model's checkpoint started a page on which every decision was refused ('...: []')."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "schema.json").write_text(json.dumps({"categories": {"Tops": {"color": ["red", "blue"]}}}))
    with pytest.raises(ValueError, match=r"no values for 2 predicted .*\('Bags', 'color'\)") as err:
        create_review_app(inputs.predictions, schema=other, database_url="sqlite://")
    assert "checkpoint" in str(err.value)
