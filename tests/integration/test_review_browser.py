"""The review page in headless Chromium: filter, move and correct with the keyboard, then export.

Needs the ``playwright`` package and a Chromium binary (``apt-get install chromium``, or ``$CHROMIUM``);
never ``playwright install``. Skipped when either is missing, but a failure under CI, which must never skip.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taxonomist.data.catalog import Catalog
from taxonomist.inference.evaluate import Evaluation, scored_rows
from taxonomist.metrics import attribute_score, majority_predictions
from taxonomist.report.evaluation import write_evaluation_report
from taxonomist.serve.review import create_review_app
from taxonomist.serve.storage import ReviewStore, export_training_rows

from ..unit.test_report import BY_CATEGORY, ROWS
from .review_data import ReviewInputs, write_review_inputs

if TYPE_CHECKING:
    from fastapi import FastAPI
    from playwright.sync_api import Browser

pytestmark = pytest.mark.integration
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture
def chromium() -> str:
    """Path of a Chromium binary, with Playwright importable; skip (fail under CI) otherwise."""
    problem = None
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install playwright)"
    if executable is None or not Path(executable).is_file():
        problem = f"no Chromium binary at {executable!r} (apt-get install chromium, or set $CHROMIUM)"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return executable


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, ReviewInputs, str]]:
    """(base URL, inputs, database URL) of a review app running in a background uvicorn thread."""
    inputs = write_review_inputs(tmp_path)
    database_url = f"sqlite:///{tmp_path / 'review.db'}"
    app = create_review_app(
        inputs.predictions, inputs.catalog.parent, schema=inputs.checkpoint, database_url=database_url
    )
    with _serve(app) as base:
        yield base, inputs, database_url


@contextmanager
def _serve(app: FastAPI) -> Iterator[str]:
    """Base URL of ``app`` running in a background uvicorn thread."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "review server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_keyboard_review_reaches_database_and_export(
    chromium: str, server: tuple[str, ReviewInputs, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    base, inputs, database_url = server
    with _browser(chromium) as browser:
        page = browser.new_page()
        page.goto(base)
        rows = page.locator("#rows tr")
        expect(rows.first).to_be_visible()

        # Filter: uncertain "fit" predictions of Tops.
        page.select_option("#category", "Tops")
        page.select_option("#attribute", "fit")
        unsure = inputs.long.query("category == 'Tops' and attribute == 'fit' and confidence < 0.5")
        unsure = unsure.sort_values(["confidence", "id"], kind="stable")
        expect(page.locator("#count")).to_have_text(f"1–{len(unsure)} of {len(unsure)} predictions")
        expect(rows.first.locator("td").nth(2)).to_have_text("fit")

        # j/k move; the image is fetched by id and loads.
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.keyboard.press("k")
        second = unsure.iloc[1]
        expect(page.locator("#rows tr.current td").first).to_have_text(second["id"])
        expect(page.locator("#image")).to_have_attribute("src", f"api/image?id={second['id']}")
        page.wait_for_function("document.getElementById('image').naturalWidth > 0")

        # A number key corrects to the n-th allowed value, then the page moves on.
        allowed = page.locator("#choices li").all_inner_texts()
        other = next(v for v in ("wide", "tall") if v != second["value"])
        key = next(t[1] for t in allowed if t.split(" · ")[0].endswith(f"] {other}"))
        page.keyboard.press(key)
        expect(rows.nth(1).locator("td").last).to_have_text(f"correct: {other}")
        expect(page.locator("#rows tr.current td").first).to_have_text(unsure.iloc[2]["id"])

        # Typing a value: "/" focuses the box, a unique prefix and Enter save it.
        third = unsure.iloc[2]
        typed = next(v for v in ("wide", "tall") if v != third["value"])
        page.keyboard.press("/")
        page.keyboard.type(typed[:2])
        page.keyboard.press("Enter")
        expect(rows.nth(2).locator("td").last).to_have_text(f"correct: {typed}")

        # "a" accepts the prediction of the next row.
        page.keyboard.press("a")
        fourth = unsure.iloc[3]
        expect(rows.nth(3).locator("td").last).to_have_text(f"accept: {fourth['value']}")
        expect(page.locator("#progress")).to_have_text(f"3 / {len(inputs.long)} reviewed")

        # The page's export link downloads the training rows.
        with page.expect_download() as download:
            page.click("#export")
        exported_csv = Path(download.value.path()).read_text()

    decisions = ReviewStore(database_url).decisions()
    assert {k: (d.action, d.value) for k, d in decisions.items()} == {
        (second["id"], "fit"): ("correct", other),
        (third["id"], "fit"): ("correct", typed),
        (fourth["id"], "fit"): ("accept", fourth["value"]),
    }
    exported = pd.read_csv(io.StringIO(exported_csv), dtype=str).set_index("id")
    assert exported.loc[second["id"], "fit"] == other and exported.loc[third["id"], "fit"] == typed
    assert export_training_rows(database_url, tmp_path / "rows.csv") == 3


def _watch(page) -> list[str]:
    """Console errors and uncaught exceptions of ``page``, collected as they happen."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def _images_rendered(page) -> None:
    broken = page.evaluate(
        "[...document.images].filter(i => !i.hidden && !(i.complete && i.naturalWidth > 0)).map(i => i.alt)"
    )
    assert page.evaluate("document.images.length") > 0 and broken == []


@contextmanager
def _browser(chromium: str) -> Iterator[Browser]:
    """Headless Chromium from ``chromium``, closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            browser.close()


def test_fast_repeated_keys_decide_once(chromium: str, server: tuple[str, ReviewInputs, str]) -> None:
    """Two quick presses of "a" during a slow save accept one item, never the row drawn next."""
    from playwright.sync_api import expect

    base, _, database_url = server
    with _browser(chromium) as browser:
        page = browser.new_page()
        errors = _watch(page)

        def slow(route) -> None:
            time.sleep(0.6)
            route.continue_()

        page.route("**/api/decisions", slow)
        page.goto(base)
        expect(page.locator("body[data-ready=true]")).to_be_attached()
        first = page.locator("#rows tr.current td").first.inner_text()
        second = page.locator("#rows tr").nth(1).locator("td").first.inner_text()
        page.keyboard.press("a")
        page.keyboard.press("a")
        page.keyboard.press("j")  # also dropped: the save is still in flight
        expect(page.locator("#rows tr").first.locator("td").last).to_have_text(re.compile("^accept: "))
        expect(page.locator("#rows tr.current td").first).to_have_text(second)
        expect(page.locator("body.busy")).to_have_count(0)
        assert [k[0] for k in ReviewStore(database_url).decisions()] == [first]

        # The item shows its image, title line and the other predicted attributes; "/" then Esc
        # leaves the box empty, and the next key is a shortcut again.
        _images_rendered(page)
        page.keyboard.press("/")
        page.keyboard.type("xyz")
        page.keyboard.press("Escape")
        assert page.input_value("#typed") == ""
        page.keyboard.press("1")  # the model's first choice for this item
        expect(page.locator("#rows tr").nth(1).locator("td").last).to_have_text(re.compile(": "))
        assert len(ReviewStore(database_url).decisions()) == 2
        assert errors == []


def test_a_second_tab_does_not_overwrite_what_the_first_decided(
    chromium: str, server: tuple[str, ReviewInputs, str]
) -> None:
    """Tab B, loaded before tab A's correction, accepts the same item: refused, shown, and kept."""
    from playwright.sync_api import expect

    base, _, database_url = server
    with _browser(chromium) as browser:
        tabs = [browser.new_page(), browser.new_page()]
        errors = [_watch(tab) for tab in tabs]
        for tab in tabs:
            tab.goto(base)
            expect(tab.locator("body[data-ready=true]")).to_be_attached()
        a, b = tabs
        item_id = a.locator("#rows tr.current td").first.inner_text()
        a.keyboard.press("2")  # the model's second choice: a correction
        row = a.locator("#rows tr").first.locator("td").last
        expect(row).to_have_text(re.compile("^correct: "))
        corrected = row.inner_text()
        b.keyboard.press("a")
        expect(b.locator("#error")).to_contain_text("decided meanwhile")
        expect(b.locator("#rows tr").first.locator("td").last).to_have_text(corrected)
        expect(b.locator("#decision")).to_have_text(corrected)
        expect(b.locator("#rows tr.current td").first).to_have_text(item_id)  # still on the item
        (decision,) = ReviewStore(database_url).decisions().values()
        assert f"correct: {decision.value}" == corrected
        # Now that tab B shows the correction, "a" replaces it on purpose.
        b.keyboard.press("a")
        expect(b.locator("#rows tr").first.locator("td").last).to_have_text(re.compile("^accept: "))
        assert [d.action for d in ReviewStore(database_url).decisions().values()] == ["accept"]
        expect(b.locator("#progress")).to_contain_text("1 / ")
        # The browser logs the refused request itself; the page's script raised nothing.
        assert errors[0] == [] and [e for e in errors[1] if "status of 409" not in e] == []


def test_a_typed_value_is_saved_as_typed_where_another_differs_only_in_case(
    chromium: str, tmp_path: Path
) -> None:
    """Messy catalogs allow "Red" and "red": typing "red" must not save "Red"."""
    from playwright.sync_api import expect

    predictions = tmp_path / "predictions_long.csv"
    predictions.write_text(
        "id,category,attribute,value,confidence\n1,Tops,color,blue,0.1\n2,Tops,color,Red,0.2\n"
        "3,Tops,color,red,0.3\n"
    )
    database_url = f"sqlite:///{tmp_path / 'review.db'}"
    with _serve(create_review_app(predictions, database_url=database_url)) as base, _browser(chromium) as b:
        page = b.new_page()
        page.goto(base)
        expect(page.locator("body[data-ready=true]")).to_be_attached()
        page.keyboard.press("/")
        page.keyboard.type("red")
        page.keyboard.press("Enter")
        expect(page.locator("#rows tr").first.locator("td").last).to_have_text("correct: red")
    assert ReviewStore(database_url).decisions()[("1", "color")].value == "red"


def test_docs_pages_render_offline(chromium: str, server: tuple[str, ReviewInputs, str]) -> None:
    from playwright.sync_api import expect

    base, _, _ = server
    with _browser(chromium) as browser:
        context = browser.new_context()
        # Offline as far as the page can tell: any request off this server fails.
        left: list[str] = []

        def refuse(route) -> None:
            left.append(route.request.url)
            route.abort()

        context.route(re.compile(r"^(?!http://127\.0\.0\.1).*"), refuse)
        page = context.new_page()
        errors = _watch(page)
        page.goto(f"{base}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("taxonomist review")
        expect(page.locator(".opblock").first).to_be_visible()
        page.wait_for_load_state("networkidle")  # leaving mid-fetch would log an aborted request
        assert errors == [] and left == []
        page.goto(f"{base}/redoc")
        expect(page.locator("h1").first).to_contain_text("taxonomist review")
        expect(page.locator("[role=menu]").first).to_be_visible()
        page.wait_for_load_state("networkidle")
        # ReDoc's bundle always asks for its maker's logo; offline the img hides itself (onError), and
        # the refused request is the only error the page logs.
        assert set(left) <= {REDOC_LOGO}
        # (its console line may arrive after this point: at most one per refused request)
        assert set(errors) <= {"Failed to load resource: net::ERR_FAILED"} and len(errors) <= len(left)


def test_evaluation_report_renders(chromium: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    images = tmp_path / "images"
    images.mkdir()
    for k, row in enumerate(ROWS):
        Image.new("RGB", (40, 30), (40 * k, 100, 200)).save(images / f"{row[0]}.jpg")
    frame = pd.DataFrame([r[:4] for r in ROWS], columns=["id", "category", "color", "sleeve"]).astype(object)
    frame = frame.where(frame.notna(), None)
    catalog = Catalog(frame, ["color", "sleeve"], tmp_path, "images/{id}.jpg", BY_CATEGORY)
    predicted = pd.DataFrame([(r[0], r[1], r[4], r[5]) for r in ROWS], columns=frame.columns)
    confidence = {a: np.array([r[6] for r in ROWS]) for a in ("color", "sleeve")}
    evaluation = Evaluation(
        attribute_score(frame, predicted, BY_CATEGORY),
        rows=scored_rows(catalog, predicted, confidence, {a: c * 0.8 for a, c in confidence.items()}),
        baseline=attribute_score(frame, majority_predictions(frame, frame, BY_CATEGORY), BY_CATEGORY),
        temperatures={"color": 1.2},
    )
    page_path = write_evaluation_report(evaluation, tmp_path / "report")
    with _browser(chromium) as browser:
        page = browser.new_page()
        errors = _watch(page)
        page.goto(page_path.as_uri())
        expect(page.locator("h1")).to_contain_text("Evaluation")
        page.wait_for_load_state("load")
        _images_rendered(page)
        assert page.locator(".card img").count() >= 2  # confident errors with thumbnails
        assert errors == []
