"""Regenerate the README's screenshots from a real run on fashion-product-images.

    python scripts/screenshots.py            # trains runs/demo (configs/demo.yaml) first if it is missing

Makes, in order: the evaluation report of the run (``evaluate --report``), the catalog inspection
(``inspect``), predictions on a few hundred held-out rows and the review page over them; then opens each
page in headless Chromium (system binary: ``apt-get install chromium`` or ``$CHROMIUM``) and writes
``docs/img/evaluation-report.png``, ``docs/img/inspect.png`` and ``docs/img/review.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TITLE = "catalog.text_column=productDisplayName"
VIEWPORT = {"width": 1400, "height": 900}


def taxonomist(*args: str) -> None:
    """Run a CLI command as a user would, failing loudly."""
    print("$ taxonomist", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "taxonomist.cli", *args], check=True, cwd=ROOT)


def review_sample(run: Path, rows: int) -> tuple[Path, Path]:
    """(a catalog file of the last ``rows`` rows of the run's catalog in its larger categories, the folder
    its images are under): something new-ish to predict and review without predicting 32k rows."""
    import yaml

    from taxonomist.data.catalog import expand_path

    catalog = yaml.safe_load((run / "config.yaml").read_text())["catalog"]
    source = expand_path(catalog["path"])
    frame = pd.read_csv(source, dtype=str)
    frame = frame[frame[catalog["category_column"]].isin(["Apparel", "Footwear", "Accessories"])]
    sample = run / "review-sample.csv"
    frame.tail(rows).to_csv(sample, index=False)
    return sample, source.parent


def serve_review(predictions: Path, database: Path) -> tuple[object, str]:
    import uvicorn

    from taxonomist.inference.inputs import recorded_input
    from taxonomist.serve.review import create_review_app

    catalog, checkpoint = recorded_input(predictions)
    app = create_review_app(
        predictions, catalog, schema=checkpoint, database_url=f"sqlite:///{database}", threshold=0.6
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def shoot(chromium: str, pages: dict[str, str], out: Path, review: str | None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            for name, url in pages.items():
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(url)
                page.wait_for_load_state("load")
                page.screenshot(path=str(out / name))
                print("wrote", out / name)
            if review:
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(review)
                page.wait_for_selector("body[data-ready=true]")
                page.select_option("#category", "Apparel")
                page.wait_for_selector("#rows tr.current")
                for key in ("a", "j", "2", "j"):  # accept one, skip one, correct one to the 2nd choice
                    page.keyboard.press(key)
                    page.wait_for_function("!document.body.classList.contains('busy')")
                page.wait_for_function("document.getElementById('image').naturalWidth > 0")
                page.screenshot(path=str(out / "review.png"))
                print("wrote", out / "review.png")
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="Trained heads run folder.")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml", help="Its config.")
    parser.add_argument("--rows", type=int, default=300, help="Rows to predict for the review page.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="Where the PNGs go.")
    parser.add_argument(
        "--reuse", action="store_true", help="Keep report, inspection and predictions already in the run."
    )
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no Chromium binary: apt-get install chromium, or set $CHROMIUM")
    run, out = args.run.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not (run / "model.safetensors").is_file():
        taxonomist("train", "-c", str(args.config), "-o", str(run), "-q")
    report = run / "evaluation-val"
    if not (args.reuse and (report / "report.html").is_file()):
        taxonomist("evaluate", str(run), "--report", "--output", str(report), "--set", TITLE, "-q")
    if not (args.reuse and (run / "inspect" / "index.html").is_file()):
        taxonomist("inspect", "-c", str(args.config), "-o", str(run / "inspect"), "-q")
    sample, images = review_sample(run, args.rows)
    predictions = run / "review-predictions"
    if not (args.reuse and (predictions / "predictions_long.csv").is_file()):
        shutil.rmtree(predictions, ignore_errors=True)
        taxonomist(
            "predict", str(run), "-o", str(predictions), "--data", str(sample),
            "--set", f"catalog.image_root={images}", "--set", TITLE, "-q",
        )  # fmt: skip
    database = run / "review-screenshot.db"
    database.unlink(missing_ok=True)
    server, base = serve_review(predictions, database)
    try:
        shoot(
            chromium,
            {
                "evaluation-report.png": (report / "report.html").as_uri(),
                "inspect.png": (run / "inspect" / "index.html").as_uri(),
            },
            out,
            base,
        )
    finally:
        server.should_exit = True


if __name__ == "__main__":
    main()
