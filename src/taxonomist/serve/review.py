"""Review UI: people check predictions, and their accepts and corrections become training rows.

``create_review_app(predictions, images)`` serves one page (``/``, plain HTML + JS from ``static/``) and a
small JSON API over ``predictions_long.csv`` (from ``taxonomist predict``). Predictions are listed least
confident first, one row per (item, attribute), so a reviewer spends the time where the model is unsure.
Images are served by item id only (``/api/image?id=``): the server maps the id to a file through the
catalog's image template, so no client-given path ever reaches the file system. Decisions go to any
SQLAlchemy database (:mod:`taxonomist.serve.storage`); ``/api/export.csv`` and
:func:`~taxonomist.serve.storage.export_training_rows` write them in the generic catalog layout.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from taxonomist.config import CatalogConfig
from taxonomist.data.catalog import (
    CATEGORY,
    ID,
    Catalog,
    format_image_path,
    load_for_prediction,
    read_table,
)
from taxonomist.data.schema import Schema
from taxonomist.serve.storage import DEFAULT_DATABASE_URL, Decision, ReviewStore

STATIC = Path(__file__).parent / "static"
PREDICTIONS_FILE = "predictions_long.csv"
_COLUMNS = [ID, CATEGORY, "attribute", "value", "confidence"]

ImageLocator = Callable[[str, str], Path]
"""(item id, category) → image file."""


class DecisionOut(BaseModel):
    value: str = Field(description="The label to train on.")
    action: Literal["accept", "correct"]
    predicted: str | None
    confidence: float | None
    decided_at: datetime


class ReviewItem(BaseModel):
    id: str
    category: str
    attribute: str
    value: str | None = Field(
        description="Predicted value (missing when predict wrote an empty placeholder)."
    )
    confidence: float
    allowed: list[str] = Field(description="Values a correction may pick, in schema order.")
    decision: DecisionOut | None = Field(description="The stored decision, if any.")


class ItemsPage(BaseModel):
    total: int = Field(description="Predictions matching the filters.")
    offset: int
    items: list[ReviewItem]


class DecisionIn(BaseModel):
    id: str
    attribute: str
    value: str | None = Field(None, description="The correct value; leave out to accept the prediction.")


class Meta(BaseModel):
    categories: dict[str, list[str]] = Field(description="Category → its attributes.")
    attributes: list[str]
    threshold: float = Field(description="Default 'confidence below' filter.")
    images: bool = Field(description="Whether /api/image can serve images.")
    predictions: int
    reviewed: int


def load_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """``predictions_long.csv`` (or the ``predict`` output folder holding it), least confident first."""
    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    frame = read_table(path)
    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; expected the long layout of `taxonomist predict`"
        )
    frame = frame[_COLUMNS].astype({"confidence": float})
    frame["value"] = frame["value"].astype(object).where(frame["value"].notna(), None)
    return frame.sort_values(["confidence", ID, "attribute"], kind="stable").reset_index(drop=True)


def allowed_values(
    predictions: pd.DataFrame, schema: Schema | None = None
) -> dict[tuple[str, str], list[str]]:
    """(category, attribute) → values a reviewer may pick: the schema's, else those predicted somewhere."""
    if schema is not None:
        return {(c, a): list(v) for c, attrs in schema.categories.items() for a, v in attrs.items()}
    allowed: dict[tuple[str, str], list[str]] = {}
    for (category, attribute), rows in predictions.groupby([CATEGORY, "attribute"], sort=False):
        allowed[(str(category), str(attribute))] = sorted(rows["value"].dropna().unique())
    return allowed


def image_locator(
    images: str | os.PathLike | CatalogConfig | Catalog | None, image_template: str = "images/{id}.jpg"
) -> ImageLocator | None:
    """How ids map to image files: a folder + template, or the catalog (config) that was predicted."""
    if images is None:
        return None
    if isinstance(images, CatalogConfig):
        # As `predict` does: labels and training-time row filters do not matter for finding images.
        images = load_for_prediction(images)
    if isinstance(images, Catalog):
        return _contained(images.image_path, images.image_root)
    root = Path(images)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {root}")
    return _contained(lambda i, c: root / format_image_path(image_template, i, c), root)


def _contained(locate: ImageLocator, root: Path | None) -> ImageLocator:
    """Refuse ids that would leave the image root (an id like ``../x`` in a predictions file)."""
    if root is None:
        return locate
    base = root.resolve()

    def inside(item_id: str, category: str) -> Path:
        path = locate(item_id, category).resolve()
        if not path.is_relative_to(base):
            raise FileNotFoundError(f"{item_id!r} maps outside the image root")
        return path

    return inside


def create_review_app(
    predictions: str | os.PathLike,
    images: str | os.PathLike | CatalogConfig | Catalog | None = None,
    *,
    image_template: str = "images/{id}.jpg",
    schema: str | os.PathLike | Schema | None = None,
    database_url: str = DEFAULT_DATABASE_URL,
    threshold: float = 0.5,
) -> FastAPI:
    """Build the review app over a ``predict`` output (folder or ``predictions_long.csv``).

    ``images``: a folder (ids map to files through ``image_template``), or the catalog (config) that was
    predicted. ``schema``: a checkpoint folder or schema file; it bounds corrections to the values the
    model can learn (default: the values seen in the predictions). ``threshold`` is the page's default
    "confidence below" filter.
    """
    frame = load_predictions(predictions)
    loaded_schema = _load_schema(schema)
    allowed = allowed_values(frame, loaded_schema)
    # Every attribute the model predicts is an export column, reviewed or not.
    attributes = sorted({*frame["attribute"], *(loaded_schema.attributes if loaded_schema else ())})
    locate = image_locator(images, image_template)
    store = ReviewStore(database_url)
    rows = frame.to_dict("records")
    position = {(r[ID], r["attribute"]): k for k, r in enumerate(rows)}
    category_of = dict(zip(frame[ID], frame[CATEGORY], strict=True))
    attributes_by_category = {
        str(c): list(dict.fromkeys(g["attribute"])) for c, g in frame.groupby(CATEGORY, sort=True)
    }

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="taxonomist review",
        summary="Accept or correct predicted attributes; export the decisions as training rows.",
        lifespan=lifespan,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def item(k: int, decisions: dict[tuple[str, str], Decision]) -> ReviewItem:
        r = rows[k]
        decision = decisions.get((r[ID], r["attribute"]))
        return ReviewItem(
            id=r[ID],
            category=r[CATEGORY],
            attribute=r["attribute"],
            value=r["value"],
            confidence=r["confidence"],
            allowed=allowed.get((r[CATEGORY], r["attribute"]), []),
            decision=DecisionOut(**decision.to_dict()) if decision else None,
        )

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "review.html", media_type="text/html")

    @app.get("/api/meta", response_model=Meta)
    def meta() -> Meta:
        """What the filters can offer, and how far the review has come."""
        return Meta(
            categories=attributes_by_category,
            attributes=sorted(frame["attribute"].unique()),
            threshold=threshold,
            images=locate is not None,
            predictions=len(rows),
            reviewed=sum(key in position for key in store.decisions()),
        )

    @app.get("/api/predictions", response_model=ItemsPage)
    def predictions_page(
        category: str | None = None,
        attribute: str | None = None,
        below: Annotated[float | None, Query(description="Only confidences below this.")] = None,
        status: Literal["all", "pending", "reviewed"] = "all",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> ItemsPage:
        """Predictions matching the filters, least confident first."""
        mask = pd.Series(True, index=frame.index)
        if category:
            mask &= frame[CATEGORY] == category
        if attribute:
            mask &= frame["attribute"] == attribute
        if below is not None:
            mask &= frame["confidence"] < below
        decisions = store.decisions()
        if status != "all":
            done = pd.Series([key in decisions for key in position], index=frame.index)
            mask &= done if status == "reviewed" else ~done
        hits = mask.to_numpy().nonzero()[0]
        page = hits[offset : offset + limit]
        return ItemsPage(total=len(hits), offset=offset, items=[item(int(k), decisions) for k in page])

    @app.post("/api/decisions", response_model=ReviewItem, responses={404: {}, 422: {}})
    def decide(body: DecisionIn) -> ReviewItem:
        """Accept the prediction (no ``value``) or correct it to one of the allowed values."""
        k = position.get((body.id, body.attribute))
        if k is None:
            raise HTTPException(404, detail=f"no prediction for id {body.id!r}, attribute {body.attribute!r}")
        r = rows[k]
        value = r["value"] if body.value is None else body.value
        choices = allowed.get((r[CATEGORY], r["attribute"]), [])
        if value not in choices:
            what = "the predicted value" if body.value is None else "value"
            raise HTTPException(
                422, detail=f"{what} {value!r} is not allowed for {r[CATEGORY]}/{r['attribute']}: {choices}"
            )
        decision = store.record(
            r[ID], r[CATEGORY], r["attribute"], value, predicted=r["value"], confidence=r["confidence"]
        )
        return item(k, {(r[ID], r["attribute"]): decision})

    @app.get("/api/image", response_class=FileResponse, responses={404: {"description": "No such image."}})
    def image(item_id: Annotated[str, Query(alias="id")]) -> FileResponse:
        """The image of a listed item, looked up by its id."""
        if locate is None:
            raise HTTPException(404, detail="the review app was started without images")
        if item_id not in category_of:
            raise HTTPException(404, detail=f"no prediction for id {item_id!r}")
        try:
            path = locate(item_id, category_of[item_id])
        except FileNotFoundError as err:
            raise HTTPException(404, detail=str(err)) from None
        if not path.is_file():
            raise HTTPException(404, detail=f"image of {item_id!r} not found")
        return FileResponse(path)

    @app.get("/api/export.csv", response_class=Response)
    def export(include_accepted: bool = True) -> Response:
        """Decisions as training rows (id, category, one column per attribute, empty where not reviewed)
        for ``taxonomist train``."""
        csv = store.training_frame(attributes, include_accepted=include_accepted).to_csv(index=False)
        return Response(
            csv,
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="review-training-rows.csv"'},
        )

    return app


def _load_schema(schema: str | os.PathLike | Schema | None) -> Schema | None:
    if schema is None or isinstance(schema, Schema):
        return schema
    path = Path(schema)
    return Schema.load(path / "schema.json" if path.is_dir() else path)
