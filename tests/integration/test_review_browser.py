"""The review page in headless Chromium: filter, move and correct with the keyboard, then export.

Needs the ``playwright`` package and a Chromium binary (``apt-get install chromium``, or ``$CHROMIUM``);
never ``playwright install``. Skipped when either is missing, but a failure under CI, which must never skip.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from taxonomist.serve.review import create_review_app
from taxonomist.serve.storage import ReviewStore, export_training_rows

from .review_data import ReviewInputs, write_review_inputs

pytestmark = pytest.mark.integration


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
    import uvicorn

    inputs = write_review_inputs(tmp_path)
    database_url = f"sqlite:///{tmp_path / 'review.db'}"
    app = create_review_app(
        inputs.predictions, inputs.catalog.parent, schema=inputs.checkpoint, database_url=database_url
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "review server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", inputs, database_url
    finally:
        server.should_exit = True
        thread.join(10)


def test_keyboard_review_reaches_database_and_export(
    chromium: str, server: tuple[str, ReviewInputs, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, inputs, database_url = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
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
            key = next(t[1] for t in allowed if t.endswith(f"] {other}"))
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
        finally:
            browser.close()

    decisions = ReviewStore(database_url).decisions()
    assert {k: (d.action, d.value) for k, d in decisions.items()} == {
        (second["id"], "fit"): ("correct", other),
        (third["id"], "fit"): ("correct", typed),
        (fourth["id"], "fit"): ("accept", fourth["value"]),
    }
    exported = pd.read_csv(io.StringIO(exported_csv), dtype=str).set_index("id")
    assert exported.loc[second["id"], "fit"] == other and exported.loc[third["id"], "fit"] == typed
    assert export_training_rows(database_url, tmp_path / "rows.csv") == 3
