"""HTTP serving end to end on a tiny trained checkpoint: predictions, batching, limits, probes, metrics."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from taxonomist.cli.main import app as cli
from taxonomist.cli.serve import MAX_PIXELS_HELP, serve
from taxonomist.data.images import pixel_limits
from taxonomist.inference.predictor import Predictor
from taxonomist.serve import AttributeModel, JsonFormatter, create_app

pytestmark = pytest.mark.integration
runner = CliRunner()

MAX_UPLOAD = 64 * 1024
MAX_IMAGES = 4


@pytest.fixture(scope="module")
def checkpoint(tiny_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, config = tiny_run
    ckpt = tmp_path_factory.mktemp("serve") / "ckpt"
    result = runner.invoke(cli, ["train", "-c", str(config), "-o", str(ckpt), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return ckpt


@pytest.fixture(scope="module")
def images(tiny_run: tuple[Path, Path]) -> Path:
    return tiny_run[0].parent / "images"  # 1000.jpg, 1002.jpg, ... are Tops; odd ids are Bags


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> Iterator[TestClient]:
    app = create_app(
        checkpoint,
        max_wait_ms=5,
        max_upload_bytes=MAX_UPLOAD,
        max_pixels=64 * 64,  # 48 px catalog images pass; 64x the pixels is rejected
        max_images_per_request=MAX_IMAGES,
    )
    with TestClient(app) as c:
        yield c


def upload(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (name, data, "image/jpeg")) for name, data in files]


def jpg(images: Path, item: int) -> tuple[str, bytes]:
    return f"{item}.jpg", (images / f"{item}.jpg").read_bytes()


def png(size: int) -> tuple[str, bytes]:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return "big.png", buf.getvalue()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def assert_healthy(client: TestClient, images: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    ok = client.post("/v1/predict", files=upload(jpg(images, 1001)), data={"category": "Bags"})
    assert ok.status_code == 200, ok.text


def test_predict_one_image(client: TestClient, images: Path, checkpoint: Path) -> None:
    response = client.post("/v1/predict", files=upload(jpg(images, 1000)), data={"category": "Tops"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    meta = json.loads((checkpoint / "taxonomist.json").read_text())
    assert body["model"]["fingerprint"] == meta["fingerprint"] and body["model"]["name"] == "ckpt"
    assert len(body["model"]["version"]) == 12
    [pred] = body["predictions"]
    assert pred["id"] == "1000.jpg" and pred["category"] == "Tops"
    schema = json.loads((checkpoint / "schema.json").read_text())["categories"]["Tops"]
    assert set(pred["attributes"]) == set(schema)
    for attribute, out in pred["attributes"].items():
        assert out["value"] in schema[attribute] and 0 < out["confidence"] <= 1


def test_several_images_match_the_python_api(client: TestClient, images: Path, checkpoint: Path) -> None:
    items, cats = [1000, 1001, 1002], ["Tops", "Bags", "Tops"]
    response = client.post(
        "/v1/predict",
        files=upload(*(jpg(images, i) for i in items)),
        data={"category": cats, "id": ["a", "b", "c"]},
    )
    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    assert [p["id"] for p in preds] == ["a", "b", "c"] and [p["category"] for p in preds] == cats
    assert set(preds[1]["attributes"]) == {"color"}
    expected = Predictor.from_pretrained(checkpoint).predict([images / f"{i}.jpg" for i in items], cats)
    for got, want in zip(preds, expected, strict=True):
        assert {a: v["value"] for a, v in got["attributes"].items()} == {
            a: v.value for a, v in want.attributes.items()
        }
        for a, v in want.attributes.items():
            assert got["attributes"][a]["confidence"] == pytest.approx(v.confidence, abs=1e-4)


def test_one_category_applies_to_every_image(client: TestClient, images: Path) -> None:
    response = client.post(
        "/v1/predict", files=upload(jpg(images, 1001), jpg(images, 1003)), data={"category": "Bags"}
    )
    assert response.status_code == 200, response.text
    assert [p["category"] for p in response.json()["predictions"]] == ["Bags", "Bags"]


async def _concurrent(app, files: Sequence[tuple[str, bytes]]) -> tuple[list[httpx.Response], str]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
            responses = await asyncio.gather(
                *(http.post("/v1/predict", files=upload(f), data={"category": "Tops"}) for f in files)
            )
            return list(responses), (await http.get("/metrics")).text


def test_concurrent_requests_share_a_forward(checkpoint: Path, images: Path) -> None:
    app = create_app(checkpoint, max_batch_size=8, max_wait_ms=300)
    files = [jpg(images, 1000 + 2 * k) for k in range(8)]
    responses, metrics = asyncio.run(_concurrent(app, files))
    assert [r.status_code for r in responses] == [200] * 8
    assert [r.json()["predictions"][0]["id"] for r in responses] == [name for name, _ in files]
    samples = metric_samples(metrics)
    assert samples[("taxonomist_batch_size_sum", ())] == 8
    # 8 single-image requests in fewer forwards than requests: they were batched together.
    assert samples[("taxonomist_batch_size_count", ())] < 8


@pytest.mark.parametrize(
    ("files", "data", "status", "expect"),
    [
        ([("x.jpg", b"\xff" * (MAX_UPLOAD + 1))], {"category": "Tops"}, 413, "over the limit"),
        # Refused from Content-Length alone: the body limit is MAX_IMAGES x (MAX_UPLOAD + part overhead).
        (
            [(f"{k}.jpg", b"\xff" * 90_000) for k in range(MAX_IMAGES)],
            {"category": "Tops"},
            413,
            "Content Too",
        ),
        ([("notes.jpg", b"this is not an image")], {"category": "Tops"}, 422, "not an image"),
        ([png(600)], {"category": "Tops"}, 422, "too many pixels"),
        ([("1000.jpg", None)], {"category": "Shoes"}, 422, "'Shoes' is not one this model knows"),
        ([("1000.jpg", None)], {}, 422, "category"),
        ([], {"category": "Tops"}, 422, "image"),
        ([("1000.jpg", None)], {"category": ["Tops", "Bags"]}, 422, "1 category or one per image"),
        ([("1000.jpg", None)], {"category": "Tops", "id": ["a", "b"]}, 422, "one id per image"),
        (
            [(f"{k}.jpg", b"\xff") for k in range(MAX_IMAGES + 1)],
            {"category": "Tops"},
            413,
            f"too many images: at most {MAX_IMAGES} per request",
        ),
        (
            [("1000.jpg", None)],
            {"category": "Tops", "id": [str(k) for k in range(3 * MAX_IMAGES)]},
            413,
            f"too many form fields: at most {3 * MAX_IMAGES}",  # a category, an id and a title per image
        ),
    ],
    ids=[
        "image-too-large",
        "body-too-large",
        "not-an-image",
        "too-many-pixels",
        "unknown-category",
        "missing-category",
        "missing-image",
        "category-count",
        "id-count",
        "too-many-images",
        "too-many-fields",
    ],
)
def test_bad_requests_are_rejected_and_the_server_stays_healthy(
    client: TestClient,
    images: Path,
    files: list[tuple[str, bytes | None]],
    data: dict[str, Any],
    status: int,
    expect: str,
) -> None:
    files = [(n, (images / n).read_bytes() if d is None else d) for n, d in files]
    response = client.post("/v1/predict", files=upload(*files), data=data)
    assert response.status_code == status, response.text
    assert expect in response.text
    assert response.headers["content-type"] == "application/json" and response.json()["detail"]
    assert_healthy(client, images)


def test_body_limits_answer_413_in_json_without_content_length(client: TestClient, images: Path) -> None:
    boundary = "limit"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="category"\r\n\r\nTops\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    ).encode() + b"\xff" * (MAX_IMAGES * (MAX_UPLOAD + 16 * 1024))

    def chunks() -> Iterator[bytes]:  # streamed: no Content-Length to refuse it up front
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = client.post(
        "/v1/predict",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413 and response.headers["content-type"] == "application/json"
    assert "over the limit of" in response.json()["detail"]
    assert_healthy(client, images)


def test_oversized_form_field_is_413(checkpoint: Path, images: Path) -> None:
    with TestClient(create_app(checkpoint)) as client:  # a body limit well above the field limit
        response = client.post(
            "/v1/predict", files=upload(jpg(images, 1000)), data={"category": "x" * (1024 * 1024 + 1)}
        )
        assert response.status_code == 413, response.text
        assert response.json() == {"detail": "a form field is over the limit of 1048576 bytes"}
        assert_healthy(client, images)


class _CountingDecodes(AttributeModel):
    """Records how many uploads are being prepared (decoded) at the same time."""

    def __init__(self, model: AttributeModel) -> None:
        super().__init__(model.predictor, model.info)
        self.lock = threading.Lock()
        self.now = self.most = 0

    def prepare(self, data: bytes, category: str, *, name: str) -> Any:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.05)
            return super().prepare(data, category, name=name)
        finally:
            with self.lock:
                self.now -= 1


def test_decodes_at_once_are_bounded(checkpoint: Path, images: Path) -> None:
    # Decoding is where memory peaks; more requests or images must not mean more decodes at once.
    model = _CountingDecodes(AttributeModel.load(checkpoint))
    with TestClient(create_app(model, max_decodes=2)) as client:
        files = upload(*(jpg(images, 1000 + 2 * k) for k in range(6)))
        response = client.post("/v1/predict", files=files, data={"category": "Tops"})
        assert response.status_code == 200, response.text
    assert model.most == 2


AT_LEAST_1 = "Input should be greater than or equal to 1"
LIMITS = [
    ("max_pixels", 0, "--max-pixels", AT_LEAST_1),
    ("max_upload_bytes", 0, "--max-upload-mb", "Input should be at least one byte (1/1048576 MiB), got 0.0"),
    ("max_images_per_request", 0, "--max-images", AT_LEAST_1),
    ("request_timeout_s", 0, "--timeout", "Input should be greater than 0, got 0.0"),
    ("request_timeout_s", -1, "--timeout", "Input should be greater than 0, got -1.0"),
    ("max_queue", 0, "--max-queue", AT_LEAST_1),
    ("max_decodes", 0, "--max-decodes", AT_LEAST_1),
    ("max_batch_size", 0, "--max-batch-size", AT_LEAST_1),
    ("max_wait_ms", -1, "--max-wait-ms", "Input should be greater than or equal to 0"),
]


@pytest.mark.parametrize(("setting", "value", "flag", "message"), LIMITS)
def test_limits_that_refuse_every_request_are_refused(
    checkpoint: Path, setting: str, value: int, flag: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each of these used to start a server that said ready and then answered every request 4xx or 5xx.
    with pytest.raises(ValueError, match=f"^{setting} must be"):
        create_app(checkpoint, **{setting: value})

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("served with a bad limit"))
    app = typer.Typer()
    app.command()(serve)
    result = runner.invoke(app, [str(checkpoint), flag, str(value)], env={"COLUMNS": "300"})
    # The flag typed, in its own units: the CLI once said "max_upload_bytes ..., got -1048576".
    assert result.exit_code == 2 and f"Invalid value for '{flag}': {message}" in result.output, result.output
    assert setting not in result.output, result.output


def test_max_pixels_help_states_the_real_rule() -> None:
    app = typer.Typer()
    app.command()(serve)
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "1000"})
    help_text = " ".join(result.output.replace("│", " ").split())
    assert "64x above are rejected" not in help_text
    assert MAX_PIXELS_HELP in help_text, help_text
    # What the help says, checked against the loader's own limits, where each part of the rule binds.
    assert "rejected (422) above 64x this" in help_text
    assert pixel_limits(1_000_000)[0] == 64_000_000
    assert "above 4x this or 16777216 pixels, whichever is more" in help_text
    assert pixel_limits(1_000_000)[1] == 16_777_216 and pixel_limits(10_000_000)[1] == 40_000_000
    assert f"Never above PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels" in help_text
    assert pixel_limits(10_000_000)[0] == Image.MAX_IMAGE_PIXELS


class _Slow(AttributeModel):
    """Another ServedModel: the server only needs the protocol, so a wrapper plugs in unchanged."""

    def predict_batch(self, items):
        time.sleep(0.5)
        return super().predict_batch(items)


def test_slow_prediction_gives_504_and_worker_survives(checkpoint: Path, images: Path) -> None:
    model = AttributeModel.load(checkpoint)
    slow = _Slow(model.predictor, model.info)
    with TestClient(create_app(slow, request_timeout_s=0.1)) as client:
        response = client.post("/v1/predict", files=upload(jpg(images, 1000)), data={"category": "Tops"})
        assert response.status_code == 504 and "no prediction within 0.1 s" in response.text
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        assert 'taxonomist_images_total{outcome="timeout"} 1.0' in metrics
        assert 'taxonomist_listings_total{outcome="timeout"} 1.0' in metrics


def test_probes_docs_metrics_and_logs(
    client: TestClient, images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="taxonomist.serve"):
        response = client.post(
            "/v1/predict",
            files=upload(("bad.jpg", b"nope")),
            data={"category": "Tops"},
            headers={"x-request-id": "req-42"},
        )
    assert response.status_code == 422 and response.headers["x-request-id"] == "req-42"
    [record] = [r for r in caplog.records if getattr(r, "request_id", None) == "req-42"]
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "request" and line["status"] == 422 and line["path"] == "/v1/predict"
    assert line["images"] == line["listings"] == 1 and line["ms"] > 0

    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"]["kind"] == "attribute-heads"
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    # A request of its own, so the 200 and batch samples do not depend on which tests ran before on this
    # client (under xdist, the module's other tests may run in another worker).
    assert_healthy(client, images)

    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    samples = metric_samples(metrics.text)
    requests = ("taxonomist_http_requests_total", (("method", "POST"), ("route", "/v1/predict")))
    assert samples[(requests[0], (*requests[1], ("status", "422")))] >= 1
    assert samples[(requests[0], (*requests[1], ("status", "200")))] >= 1
    assert samples[("taxonomist_images_total", (("outcome", "corrupt"),))] >= 1
    assert samples[("taxonomist_batch_size_count", ())] >= 1
    assert ("taxonomist_http_request_duration_seconds_count", (("route", "/v1/predict"),)) in samples


def test_unknown_methods_share_one_metrics_label(client: TestClient) -> None:
    # The method comes from the client: as a label, each made-up one would be a new series for good.
    for method in ("ZZ123", "ZZ124", "get"):
        assert client.request(method, "/v1/predict").status_code == 405
    samples = metric_samples(client.get("/metrics").text)
    methods = {dict(labels)["method"] for name, labels in samples if name == "taxonomist_http_requests_total"}
    standard = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
    assert "other" in methods and methods <= {*standard, "other"}


def test_not_ready_without_a_running_worker(checkpoint: Path) -> None:
    client = TestClient(create_app(checkpoint))  # no `with`: lifespan (and so the worker) never starts
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503


def test_cli_rejects_a_directory_that_is_no_checkpoint(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(serve)
    result = runner.invoke(app, [str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "not a taxonomist checkpoint" in result.output, result.output


def test_docs_pages_load_nothing_from_the_network(client: TestClient) -> None:
    """/docs and /redoc were blank offline: both loaded their scripts from a CDN."""
    assert client.get("/", follow_redirects=False).headers["location"].endswith("docs")
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html
        sources = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
        assert sources, html
        for source in sources:
            assert not source.startswith("http"), source
            response = client.get(source)
            assert response.status_code == 200 and len(response.content) > 10_000, source


def test_an_image_sent_as_a_text_field_is_named_and_not_echoed(client: TestClient, images: Path) -> None:
    """Regression: ``curl -F 'image=<shirt.jpg'`` (a text part, not a file) got pydantic's "Expected
    UploadFile" and the whole upload back as escaped text, about twice its size."""
    body = (next(images.glob("*.jpg"))).read_bytes().decode("latin-1")
    response = client.post("/v1/predict", data={"image": body, "category": "Tops"})
    assert response.status_code == 422
    assert len(response.content) < 1000
    [error] = response.json()["detail"]
    assert error["msg"] == "image must be a file upload (curl -F image=@photo.jpg), not a text field"
    assert_healthy(client, images)


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_non_finite_upload_limit_is_one_line(checkpoint: Path, value: str) -> None:
    """Regression: ``--max-upload-mb inf`` crashed with an OverflowError traceback."""
    app = typer.Typer()
    app.command()(serve)
    result = runner.invoke(app, [str(checkpoint), "--max-upload-mb", value], env={"COLUMNS": "300"})
    message = f"Invalid value for '--max-upload-mb': Input should be a finite number, got {value}"
    assert result.exit_code == 2 and message in result.output, result.output
