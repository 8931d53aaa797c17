"""The HTTP app around a model stub: what responses and metrics report, without training a checkpoint."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from taxonomist.inference.predictor import AttributeValue
from taxonomist.models.checkpoint import CheckpointError
from taxonomist.serve import create_app
from taxonomist.serve.model import ModelInfo


class TitleListings:
    """A listing model that predicts from titles alone (as heads trained with text.image_dropout > 0)."""

    info = ModelInfo("listing", "abc123", "attribute-heads", "tiny", "fp", runtime="openvino fp32")
    categories: Sequence[str] = ("Tops",)
    reads_text = True
    predicts_without_image = True

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def prepare(self, data: bytes, category: str, *, name: str, title: str = "") -> tuple[str, str]:
        return category, title

    def prepare_title(self, category: str, title: str) -> tuple[str, str]:
        return category, title

    def predict_batch(self, items: Sequence[tuple[str, str]]) -> list[dict[str, AttributeValue]]:
        time.sleep(self.delay_s)
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


def outcomes(client: TestClient) -> dict[tuple[str, str], float]:
    """(counter, outcome) -> count, for the listing and image outcome counters."""
    return {
        (s.name, s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name in ("taxonomist_listings_total", "taxonomist_images_total")
    }


def test_title_only_listings_are_counted_as_listings_not_images(client: TestClient) -> None:
    titles = {"category": "Tops", "title": ["Acme red top", "Acme blue top", "Acme green top"]}
    assert client.post("/v1/predict", data=titles).status_code == 200
    assert client.post("/v1/predict", data={**titles, "category": "Hats"}).status_code == 422
    counts = outcomes(client)
    assert counts[("taxonomist_listings_total", "predicted")] == 3
    assert counts[("taxonomist_listings_total", "unknown-category")] == 3
    assert counts.get(("taxonomist_images_total", "predicted"), 0) == 0
    assert counts.get(("taxonomist_images_total", "unknown-category"), 0) == 0


def test_a_title_only_request_that_times_out_counts_its_listings() -> None:
    with TestClient(create_app(TitleListings(delay_s=0.5), request_timeout_s=0.1)) as client:
        late = client.post("/v1/predict", data={"category": "Tops", "title": ["Acme red top", "Acme bag"]})
        assert late.status_code == 504
        assert outcomes(client)[("taxonomist_listings_total", "timeout")] == 2


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"json": {"category": "Tops", "title": ["Acme red top"]}}, "not application/json"),
        ({"content": b"Tops", "headers": {"content-type": "text/plain"}}, "not text/plain"),
        ({}, "not a body without a content type"),
    ],
)
def test_a_body_that_is_no_form_is_415_naming_its_content_type(
    client: TestClient, body: dict, named: str
) -> None:
    """Regression: a JSON body was answered 422 "category: Field required", though it held a category."""
    answer = client.post("/v1/predict", **body)
    assert answer.status_code == 415, answer.text
    assert answer.json()["detail"].startswith("send the request as multipart/form-data")
    assert answer.json()["detail"].endswith(named)


class FailingListings(TitleListings):
    """Raises on the title "boom", as a model may on an input it cannot handle."""

    def predict_batch(self, items: Sequence[tuple[str, str]]) -> list[dict[str, AttributeValue]]:
        if any(title == "boom" for _, title in items):
            raise RuntimeError("cannot handle this one")
        return super().predict_batch(items)


def test_a_model_error_is_a_json_500_and_its_listings_are_counted() -> None:
    """Regression: the model's exception gave a plain-text 500 and its listings were counted nowhere."""
    with TestClient(create_app(FailingListings(), max_wait_ms=1)) as client:
        answer = client.post("/v1/predict", data={"category": "Tops", "title": ["boom", "Acme bag"]})
        assert answer.status_code == 500
        assert answer.json() == {
            "detail": "prediction failed: the model raised an error (see the server log)"
        }
        assert client.post("/v1/predict", data={"category": "Tops", "title": ["Acme top"]}).status_code == 200
        counts = outcomes(client)
        assert counts[("taxonomist_listings_total", "error")] == 2
        assert counts[("taxonomist_listings_total", "predicted")] == 1


@pytest.mark.parametrize(
    ("manifest", "message"),
    [("{not json", "not valid JSON"), ("[1]", "not a checkpoint manifest (a JSON object)")],
)
def test_an_edited_manifest_is_refused_naming_its_file(tmp_path: Path, manifest: str, message: str) -> None:
    """Regression: serve read taxonomist.json itself, so a broken one failed unnamed ("Expecting property
    name ...: line 1 column 2") or, for JSON other than an object, in an AttributeError traceback."""
    (tmp_path / "taxonomist.json").write_text(manifest)
    with pytest.raises(
        CheckpointError, match=f"^{re.escape(str(tmp_path / 'taxonomist.json'))}: {re.escape(message)}"
    ):
        create_app(tmp_path)


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"data": {"category": "Tops", "title": "Acme red top", "Title": "Acme red top"}}, "Title"),
        ({"data": {"category": "Tops", "title": "Acme red top"}, "files": {"images": b"\xff"}}, "images"),
    ],
)
def test_a_form_field_the_server_does_not_read_is_refused(client: TestClient, form: dict, field: str) -> None:
    """Regression: unknown fields were ignored, so an image sent as ``images`` was answered from the title
    alone, and a title sent as ``Title`` from the image alone, as if they had not been sent."""
    answer = client.post("/v1/predict", **form)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["type"] == "unknown-field" and error["loc"] == ["body", field]
    assert (
        error["msg"]
        == f"unknown form field {field!r}; this server reads ['category', 'id', 'image', 'title']"
    )


class SlowDecodes(TitleListings):
    """Counts the uploads being prepared (decoded) at the same time; each takes a while."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.now = self.most = 0

    def prepare(self, data: bytes, category: str, *, name: str, title: str = "") -> tuple[str, str]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.3)
        with self.lock:
            self.now -= 1
        return category, title


def test_a_timed_out_request_keeps_its_decode_slot_until_the_decode_ends() -> None:
    """Regression: a request's timeout freed its decode slot while its thread went on decoding, so under
    timeouts more uploads were decoded at once (and held in memory) than max_decodes allows."""
    model = SlowDecodes()
    with TestClient(create_app(model, max_decodes=1, request_timeout_s=0.1)) as client:
        for _ in range(3):
            answer = client.post("/v1/predict", data={"category": "Tops"}, files={"image": b"\xff"})
            assert answer.status_code == 504, answer.text
        time.sleep(0.4)  # the first decode ends
    assert model.most == 1


URLENCODED = {"content-type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    "title",
    [
        b"%ff%fe",  # not UTF-8 at all: Starlette made it "\ufffd\ufffd" and it was predicted
        b"caf%E9",  # latin-1: "caf\ufffd"
        b"Acme+red+top&title=%C0%AF",  # an overlong "/", in the second title
    ],
)
def test_form_text_that_is_not_utf8_is_422_naming_the_field(client: TestClient, title: bytes) -> None:
    answer = client.post("/v1/predict", content=b"category=Tops&title=" + title, headers=URLENCODED)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["type"] == "not-utf8" and error["loc"] == ["body", "title"], error
    assert "not UTF-8" in error["msg"], error


@pytest.mark.parametrize("title", ["café crème top", "Acme 红色 上衣", "Acme top 👕"])
def test_utf8_form_text_is_still_served(client: TestClient, title: str) -> None:
    for body in ({"category": "Tops", "title": [title]}, {"category": "Tops", "title": title}):
        answer = client.post("/v1/predict", data=body)
        assert answer.status_code == 200, answer.text
    files = {"category": (None, "Tops"), "title": (None, title)}
    assert client.post("/v1/predict", files=files).status_code == 200


class EchoTitles(TitleListings):
    """Answers each listing's title as its value: what the model was given to read."""

    def predict_batch(self, items: Sequence[tuple[str, str]]) -> list[dict[str, AttributeValue]]:
        return [{"title": AttributeValue(title, 0.9)} for _, title in items]


@pytest.mark.parametrize(
    ("body", "content_type", "title"),
    [
        # curl -d sends text unescaped: Starlette read its UTF-8 as latin-1 and served "cafÃ©".
        ("category=Tops&title=café crème".encode(), "application/x-www-form-urlencoded", "café crème"),
        ("category=Tops&title=红色".encode(), "application/x-www-form-urlencoded; charset=UTF-8", "红色"),
        (b"category=Tops&title=caf%C3%A9", "application/x-www-form-urlencoded", "café"),
        # A charset declared other than UTF-8 is left to Starlette, which reads latin-1.
        (b"category=Tops&title=caf\xe9", "application/x-www-form-urlencoded; charset=iso-8859-1", "café"),
    ],
)
def test_urlencoded_text_is_read_as_utf8(body: bytes, content_type: str, title: str) -> None:
    with TestClient(create_app(EchoTitles(), max_wait_ms=1)) as client:
        answer = client.post("/v1/predict", content=body, headers={"content-type": content_type})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["attributes"]["title"]["value"] == title


def test_unescaped_urlencoded_bytes_that_are_not_utf8_are_422(client: TestClient) -> None:
    answer = client.post("/v1/predict", content=b"category=Tops&title=\xff\xfe", headers=URLENCODED)
    assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "not-utf8", answer.text
