"""The review loop closes: predict → review decisions over HTTP → export → train with the corrections →
the new model has learned the corrected labels."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import typer
import uvicorn
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from taxonomist.cli.review import review

from .conftest import invoke, make_catalog, tiny_config

pytestmark = pytest.mark.integration
SWAP = {"red": "blue", "blue": "red"}


def _predictions(folder: Path) -> pd.DataFrame:
    long = pd.read_csv(folder / "predictions_long.csv", dtype={"id": str})
    return long.set_index(["id", "attribute"])["value"]


def test_corrections_reviewed_in_the_page_are_learned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = make_catalog(tmp_path / "data")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(catalog, tmp_path / "cache")))
    invoke("train", "-c", str(config), "-o", str(tmp_path / "before"), "-q")
    invoke("predict", str(tmp_path / "before"), "-o", str(tmp_path / "pred"), "-q")

    # `review RUN` with no other flag: the predictions folder names its catalog and checkpoint.
    served: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    command = typer.Typer()
    command.command()(review)
    database = f"sqlite:///{tmp_path / 'review.db'}"
    result = CliRunner().invoke(command, [str(tmp_path / "pred"), "--database-url", database])
    assert result.exit_code == 0, result.output

    # A reviewer decides that every bag's colour is the other one (the kind of systematic label
    # fix review is for), by correcting each Bags/color prediction.
    labels = pd.read_csv(catalog, dtype=str).set_index("sku")
    bags = labels[(labels["type"] == "Bags") & labels["color"].notna()]
    with TestClient(served["app"]) as client:
        assert client.get("/api/meta").json()["images"]
        listed = client.get("/api/predictions", params={"category": "Bags", "limit": 500}).json()["items"]
        assert {i["id"] for i in listed} == set(labels.index[labels["type"] == "Bags"])
        for item in listed:
            if item["id"] in bags.index:
                wanted = SWAP[bags.at[item["id"], "color"]]
                response = client.post(
                    "/api/decisions", json={"id": item["id"], "attribute": "color", "value": wanted}
                )
                assert response.status_code == 200, response.text
        exported = client.get("/api/export.csv").text
    corrections = tmp_path / "reviewed.csv"
    corrections.write_text(exported)
    assert list(pd.read_csv(io.StringIO(exported)).columns[:2]) == ["sku", "type"]

    invoke("train", "-c", str(config), "--corrections", str(corrections), "-o", str(tmp_path / "after"), "-q")
    invoke("predict", str(tmp_path / "after"), "-o", str(tmp_path / "pred-after"), "-q")
    before, after = _predictions(tmp_path / "pred"), _predictions(tmp_path / "pred-after")
    wanted = pd.Series({(i, "color"): SWAP[c] for i, c in bags["color"].items()})
    agree_before = (before.reindex(wanted.index) == wanted).mean()
    agree_after = (after.reindex(wanted.index) == wanted).mean()
    assert agree_before < 0.3 and agree_after > 0.8, (agree_before, agree_after)
