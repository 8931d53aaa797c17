"""The HTTP app around a model stub: what responses and metrics report, without training a checkpoint."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from fastapi.testclient import TestClient

from taxonomist.inference.predictor import AttributeValue
from taxonomist.serve import create_app
from taxonomist.serve.model import ModelInfo


class TitleListings:
    """A listing model that predicts from titles alone (as heads trained with text.image_dropout > 0)."""

    info = ModelInfo("listing", "abc123", "attribute-heads", "tiny", "fp", runtime="openvino fp32")
    categories: Sequence[str] = ("Tops",)
    reads_text = True
    predicts_without_image = True

    def prepare(self, data: bytes, category: str, *, name: str, title: str = "") -> tuple[str, str]:
        return category, title

    def prepare_title(self, category: str, title: str) -> tuple[str, str]:
        return category, title

    def predict_batch(self, items: Sequence[tuple[str, str]]) -> list[dict[str, AttributeValue]]:
        return [{"color": AttributeValue("red", 0.9)} for _ in items]


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(TitleListings(), max_wait_ms=1)) as c:
        yield c


def test_predictions_name_the_runtime_that_answered(client: TestClient) -> None:
    answer = client.post("/v1/predict", data={"category": "Tops", "title": ["Acme red top"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"]["runtime"] == "openvino fp32"
    assert answer.json()["model"] == client.get("/readyz").json()["model"]
