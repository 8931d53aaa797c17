"""Review UI: people check predictions, and their accepts and corrections become training rows.

``create_review_app(predictions, images)`` serves one page (``/``, plain HTML + JS from ``static/``) and a
small JSON API over ``predictions_long.csv`` (from ``taxonomist predict``). Predictions are listed least
confident first, one row per (item, attribute), so a reviewer spends the time where the model is unsure.
Images are served by item id only (``/api/image?id=``): the server maps the id to a file through the
catalog's image template, so no client-given path ever reaches the file system. Decisions go to any
SQLAlchemy database (:mod:`taxonomist.serve.storage`); ``/api/export.csv`` and
:func:`~taxonomist.serve.storage.export_training_rows` write them in the generic catalog layout (with the
catalog's own id and category column names and an image path, where the predicted catalog is known).

Pages of a filtered list are addressed by a cursor, the (confidence, id, attribute) key of the last row
seen, not by an offset: on the "pending" filter every decision shrinks the list, and an offset would skip
as many rows as were decided.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from taxonomist.data.catalog import CATEGORY, ID, Catalog, CatalogError, format_image_path, read_table
from taxonomist.data.schema import Schema
from taxonomist.serve.storage import DEFAULT_DATABASE_URL, Decision, DecisionConflict, ReviewStore

STATIC = Path(__file__).parent / "static"
PREDICTIONS_FILE = "predictions_long.csv"
_COLUMNS = [ID, CATEGORY, "attribute", "value", "confidence"]
IMAGE_PATH = "image_path"
"""Export column with each reviewed item's image file."""

ImageLocator = Callable[[str, str], Path]
"""(item id, category) → image file."""


class DecisionOut(BaseModel):
    value: str = Field(description="The label to train on.")
    action: Literal["accept", "correct"]
    predicted: str | None
    confidence: float | None
    decided_at: datetime


class OtherAttribute(BaseModel):
    attribute: str
    value: str | None
    confidence: float


class ReviewItem(BaseModel):
    id: str
    category: str
    attribute: str
    value: str | None = Field(
        description="Predicted value (missing when predict wrote an empty placeholder)."
    )
    confidence: float
    allowed: list[str] = Field(description="Values a correction may pick, in schema order.")
    choices: list[str] = Field(
        description="The allowed values in the order keys 1-9 pick them: the model's most probable first."
    )
    probabilities: dict[str, float] = Field(
        default_factory=dict, description="The model's probability of each of its most probable values."
    )
    title: str | None = Field(None, description="The listing's title, where the catalog has one.")
    others: list[OtherAttribute] = Field(description="The item's other predicted attributes.")
    cursor: str = Field(description="Pass as `after` (or `before`) to page from this row.")
    decision: DecisionOut | None = Field(description="The stored decision, if any.")


class ItemsPage(BaseModel):
    total: int = Field(description="Predictions matching the filters.")
    offset: int = Field(description="Matching rows before this page's first.")
    items: list[ReviewItem]
    next: str | None = Field(description="Cursor of the next page (`after`), none at the end.")


class DecisionIn(BaseModel):
    id: str
    attribute: str
    value: str | None = Field(None, description="The correct value; leave out to accept the prediction.")
    replaces: str | None = Field(
        None,
        description="The value of the decision the page showed (null: none). When given, a decision made "
        "meanwhile by someone else (another tab, another reviewer) is not overwritten: 409 with the "
        "current `item`. Leave out to replace whatever is stored.",
    )


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
    # ``top``: the model's best values as JSON (predictions of older versions lack it).
    top = frame["top"] if "top" in frame.columns else pd.Series(None, index=frame.index, dtype=object)
    repeated = frame.duplicated([ID, "attribute"], keep=False)
    if repeated.any():  # a decision is keyed by (id, attribute): it could not tell such rows apart
        examples = frame.loc[repeated, [ID, "attribute"]].drop_duplicates().head(3)
        raise ValueError(
            f"{path}: {int(repeated.sum())} rows repeat an (id, attribute) pair, e.g. "
            f"{list(examples.itertuples(index=False, name=None))}; review needs one prediction per id and "
            "attribute (a file joined from several predict runs? keep one row of each)"
        )
    frame = frame[_COLUMNS].astype({"confidence": float})
    frame["value"] = frame["value"].astype(object).where(frame["value"].notna(), None)
    frame["top"] = [
        {str(v): float(p) for v, p in json.loads(t)} if isinstance(t, str) and t else {} for t in top
    ]
    return frame.sort_values(["confidence", ID, "attribute"], kind="stable").reset_index(drop=True)


def allowed_values(
    predictions: pd.DataFrame, schema: Schema | None = None
) -> dict[tuple[str, str], list[str]]:
    """(category, attribute) → values a reviewer may pick: the schema's, else those predicted somewhere.

    Predicted pairs the schema lacks (the checkpoint of another model) are a ValueError naming them: their
    every decision would be refused, on a page that starts as if nothing were wrong."""
    if schema is not None:
        allowed = {(c, a): list(v) for c, attrs in schema.categories.items() for a, v in attrs.items()}
        predicted = zip(predictions[CATEGORY].astype(str), predictions["attribute"].astype(str), strict=True)
        unknown = sorted(set(predicted) - allowed.keys())
        if unknown:
            raise ValueError(
                f"the schema has no values for {len(unknown)} predicted (category, attribute) pairs, e.g. "
                f"{unknown[:3]}: no correction of them could be saved; give the checkpoint (schema) of the "
                "model that made the predictions"
            )
        return allowed
    allowed: dict[tuple[str, str], list[str]] = {}
    for (category, attribute), rows in predictions.groupby([CATEGORY, "attribute"], sort=False):
        allowed[(str(category), str(attribute))] = sorted(rows["value"].dropna().unique())
    return allowed


def image_locator(
    images: str | os.PathLike | Catalog | None, image_template: str = "images/{id}.jpg"
) -> ImageLocator | None:
    """How ids map to image files: a folder + template, or the catalog that was predicted."""
    if images is None:
        return None
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
    images: str | os.PathLike | Catalog | None = None,
    *,
    titles: Mapping[str, str] | None = None,
    columns: tuple[str, str] = (ID, CATEGORY),
    image_template: str = "images/{id}.jpg",
    schema: str | os.PathLike | Schema | None = None,
    database_url: str = DEFAULT_DATABASE_URL,
    threshold: float = 0.5,
) -> FastAPI:
    """Build the review app over a ``predict`` output (folder or ``predictions_long.csv``).

    ``images``: a folder (ids map to files through ``image_template``), or the catalog that was predicted
    (``data.prepare.load_for_prediction``). ``titles`` (id → listing title) are shown on the page;
    ``columns`` are the catalog file's own id and category column names, used by the export. ``schema``:
    a checkpoint folder or schema file; it bounds corrections to the values the model can learn (default:
    the values seen in the predictions). ``threshold`` is the page's default "confidence below" filter.
    """
    review = _Review(
        load_predictions(predictions),
        _load_schema(schema),
        images,
        image_template,
        titles or {},
        columns,
        ReviewStore(database_url),
        threshold,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        review.store.close()

    app = FastAPIOffline(  # /docs and /redoc from installed files, not a CDN
        title="taxonomist review",
        summary="Accept or correct predicted attributes; export the decisions as training rows.",
        lifespan=lifespan,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.get("/", include_in_schema=False)(review.page)
    app.get("/api/meta", response_model=Meta)(review.meta)
    app.get("/api/predictions", response_model=ItemsPage)(review.predictions_page)
    app.post("/api/decisions", response_model=ReviewItem, responses={404: {}, 409: {}, 422: {}})(
        review.decide
    )
    app.get("/api/image", response_class=FileResponse, responses={404: {"description": "No such image."}})(
        review.image
    )
    app.get("/api/export.csv", response_class=Response)(review.export)
    return app


class _Review:
    """The predictions under review, indexed for the page's filters and cursors, and the decisions."""

    def __init__(
        self,
        frame: pd.DataFrame,
        schema: Schema | None,
        images: str | os.PathLike | Catalog | None,
        image_template: str,
        titles: Mapping[str, str],
        columns: tuple[str, str],
        store: ReviewStore,
        threshold: float,
    ) -> None:
        self.frame = frame
        self.allowed = allowed_values(frame, schema)
        # Every attribute the model predicts is an export column, reviewed or not.
        self.attributes = sorted({*frame["attribute"], *(schema.attributes if schema else ())})
        self.titles = titles
        self.columns = columns
        self.locate = image_locator(images, image_template)
        self.store = store
        self.threshold = threshold
        self.rows = frame.to_dict("records")
        self.position = {(r[ID], r["attribute"]): k for k, r in enumerate(self.rows)}
        self.keys = [(r["confidence"], r[ID], r["attribute"]) for r in self.rows]  # sorted: the cursor order
        self.category_of = dict(zip(frame[ID], frame[CATEGORY], strict=True))
        self.rows_of: dict[str, list[int]] = {}
        for k, r in enumerate(self.rows):
            self.rows_of.setdefault(r[ID], []).append(k)
        self.attributes_by_category = {
            str(c): list(dict.fromkeys(g["attribute"])) for c, g in frame.groupby(CATEGORY, sort=True)
        }

    def item(self, k: int, decisions: dict[tuple[str, str], Decision]) -> ReviewItem:
        r = self.rows[k]
        decision = decisions.get((r[ID], r["attribute"]))
        choices = self.allowed.get((r[CATEGORY], r["attribute"]), [])
        first = [v for v in [*r["top"], r["value"]] if v in choices]  # the model's ranking first
        others = [self.rows[j] for j in self.rows_of[r[ID]] if j != k]
        return ReviewItem(
            id=r[ID],
            category=r[CATEGORY],
            attribute=r["attribute"],
            value=r["value"],
            confidence=r["confidence"],
            allowed=choices,
            choices=list(dict.fromkeys([*first, *choices])),
            probabilities=r["top"],
            title=self.titles.get(r[ID]),
            others=[
                OtherAttribute(attribute=o["attribute"], value=o["value"], confidence=o["confidence"])
                for o in sorted(others, key=lambda o: o["attribute"])
            ],
            cursor=_cursor(self.keys[k]),
            decision=DecisionOut(**decision.to_dict()) if decision else None,
        )

    def page(self) -> FileResponse:
        return FileResponse(STATIC / "review.html", media_type="text/html")

    def meta(self) -> Meta:
        """What the filters can offer, and how far the review has come."""
        return Meta(
            categories=self.attributes_by_category,
            attributes=sorted(self.frame["attribute"].unique()),
            threshold=self.threshold,
            images=self.locate is not None,
            predictions=len(self.rows),
            reviewed=sum(key in self.position for key in self.store.decided()),
        )

    def predictions_page(
        self,
        category: str | None = None,
        attribute: str | None = None,
        below: Annotated[float | None, Query(description="Only confidences below this.")] = None,
        status: Literal["all", "pending", "reviewed"] = "all",
        after: Annotated[
            str | None, Query(description="Rows after this cursor (an item's `cursor`).")
        ] = None,
        before: Annotated[str | None, Query(description="The page of rows just before this cursor.")] = None,
        offset: Annotated[int, Query(ge=0, description="Rows to skip (after any cursor).")] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> ItemsPage:
        """Predictions matching the filters, least confident first."""
        frame, keys = self.frame, self.keys
        mask = pd.Series(True, index=frame.index)
        if category:
            mask &= frame[CATEGORY] == category
        if attribute:
            mask &= frame["attribute"] == attribute
        if below is not None:
            mask &= frame["confidence"] < below
        if status != "all":
            decided = self.store.decided()
            done = pd.Series([key in decided for key in self.position], index=frame.index)
            mask &= done if status == "reviewed" else ~done
        hits = mask.to_numpy().nonzero()[0]
        start = 0
        if after is not None:
            start = int(np.searchsorted(hits, bisect.bisect_right(keys, _parse_cursor(after)), side="left"))
        elif before is not None:
            end = int(np.searchsorted(hits, bisect.bisect_left(keys, _parse_cursor(before)), side="left"))
            start = max(0, end - limit)
        start += offset
        page = hits[start : start + limit]
        more = start + limit < len(hits)
        # Only this page's decisions: loading every one on each page made a large review slow to page.
        decisions = self.store.decisions({self.rows[k][ID] for k in page})
        return ItemsPage(
            total=len(hits),
            offset=start,
            items=[self.item(int(k), decisions) for k in page],
            next=_cursor(keys[int(page[-1])]) if more and len(page) else None,
        )

    def decide(self, body: DecisionIn) -> ReviewItem | JSONResponse:
        """Accept the prediction (no ``value``) or correct it to one of the allowed values."""
        k = self.position.get((body.id, body.attribute))
        if k is None:
            raise HTTPException(404, detail=f"no prediction for id {body.id!r}, attribute {body.attribute!r}")
        r = self.rows[k]
        value = r["value"] if body.value is None else body.value
        choices = self.allowed.get((r[CATEGORY], r["attribute"]), [])
        if value not in choices:
            what = "the predicted value" if body.value is None else "value"
            raise HTTPException(
                422, detail=f"{what} {value!r} is not allowed for {r[CATEGORY]}/{r['attribute']}: {choices}"
            )
        key = (r[ID], r["attribute"])
        try:
            decision = self.store.record(
                *(r[ID], r[CATEGORY], r["attribute"], value),
                predicted=r["value"],
                confidence=r["confidence"],
                check="replaces" in body.model_fields_set,
                seen=body.replaces,
            )
        except DecisionConflict as conflict:
            now = conflict.current
            detail = (
                f"{r[ID]!r} / {r['attribute']!r} was decided meanwhile (another tab or reviewer): now "
                + (f"{now.action} {now.value!r}" if now else "no decision")
                + f"; {value!r} was not saved: look again and decide"
            )
            current = self.item(k, {key: now} if now else {})
            return JSONResponse({"detail": detail, "item": current.model_dump(mode="json")}, status_code=409)
        return self.item(k, {key: decision})

    def image(self, item_id: Annotated[str, Query(alias="id")]) -> FileResponse:
        """The image of a listed item, looked up by its id."""
        if self.locate is None:
            raise HTTPException(404, detail="the review app was started without images")
        if item_id not in self.category_of:
            raise HTTPException(404, detail=f"no prediction for id {item_id!r}")
        try:
            path = self.locate(item_id, self.category_of[item_id])
        except (FileNotFoundError, CatalogError) as err:  # outside the root; an id the template cannot take
            raise HTTPException(404, detail=str(err)) from None
        if not path.is_file():
            raise HTTPException(404, detail=f"image of {item_id!r} not found")
        return FileResponse(path)

    def image_path(self, item_id: str) -> str | None:
        if self.locate is None or item_id not in self.category_of:
            return None
        try:
            return str(self.locate(item_id, self.category_of[item_id]))
        except (FileNotFoundError, CatalogError):  # one such id leaves its cell empty, not the export failed
            return None

    def export(self, include_accepted: bool = True) -> Response:
        """Decisions as training rows for ``taxonomist train`` (or its ``--corrections``): the catalog's id
        and category columns, one column per attribute (empty where not reviewed) and, where images are
        known, ``image_path``."""
        rows = self.store.training_frame(
            self.attributes, include_accepted=include_accepted, keys=self.position
        )
        if self.locate is not None:
            rows[IMAGE_PATH] = [self.image_path(i) for i in rows[ID]]
        csv = rows.rename(columns=dict(zip((ID, CATEGORY), self.columns, strict=True))).to_csv(index=False)
        return Response(
            csv,
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="review-training-rows.csv"'},
        )


def _load_schema(schema: str | os.PathLike | Schema | None) -> Schema | None:
    if schema is None or isinstance(schema, Schema):
        return schema
    path = Path(schema)
    return Schema.load(path / "schema.json" if path.is_dir() else path)


def _cursor(key: tuple[float, str, str]) -> str:
    """A row's place in the list, (confidence, id, attribute), as a URL-safe string."""
    return json.dumps([key[0], key[1], key[2]], separators=(",", ":"))


def _parse_cursor(text: str) -> tuple[float, str, str]:
    try:
        confidence, item_id, attribute = json.loads(text)
        return float(confidence), str(item_id), str(attribute)
    except (ValueError, TypeError) as err:
        raise HTTPException(422, detail=f"not a cursor: {text!r}") from err
