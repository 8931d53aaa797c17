"""HTTP serving: ``create_app(checkpoint)`` → a FastAPI app that predicts attributes for uploaded images.

Requests carry image bytes only, never server-side paths. Each upload is decoded and preprocessed in a
request thread (a bad image fails its own request with 422), then queued for the
:class:`~taxonomist.serve.batching.MicroBatcher`, which runs one forward for images from many
concurrent requests. Listing heads trained to predict without the image (``text.image_dropout`` > 0)
also answer a request of titles and no image. Probes: ``/healthz`` (process alive), ``/readyz`` (model
loaded, batch worker running); ``/metrics`` in Prometheus text format; OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

from anyio import CapacityLimiter, to_thread
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taxonomist.data.catalog import join_text
from taxonomist.data.images import DEFAULT_MAX_PIXELS, ImageLoadError
from taxonomist.data.taxonomy import normalize_text
from taxonomist.serve.batching import BatcherBusy, BatcherStopped, BatchTooLarge, MicroBatcher
from taxonomist.serve.metrics import ServeMetrics
from taxonomist.serve.model import ServedModel, load_model

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGES = 16
# Decoding is where memory peaks (a full decode may hold ~600 MB at the default max_pixels, see
# taxonomist.data.images), so this many at a time bound it, whatever the number of requests.
DEFAULT_MAX_DECODES = 4
# Body allowance per image on top of its bytes: multipart headers, boundaries, and its category and id.
_PART_OVERHEAD = 16 * 1024
# Largest text field (a category or an id), as Starlette's default.
_MAX_FIELD_BYTES = 1024 * 1024
MAX_TITLE_CHARS = 2000
"""Longest title (or other text field) a request may send (after normalisation): titles are a line, not
a document, and the text encoder reads only its first tokens anyway."""
_FORM_FIELDS = frozenset({"image", "category", "id", "title"})
_FORM_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})
# Methods beyond these become "other" in metric labels: each label value is a series kept forever.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_ROUTES = frozenset({"/v1/predict", *_PROBES})
_IMAGE_PROBLEMS = {
    "empty": "empty upload",
    "corrupt": "not an image",
    "truncated": "truncated image",
    "decompression-bomb": "too many pixels",
    "unsupported-mode": "unsupported pixel format",
}

log = logging.getLogger("taxonomist.serve")


class AttributeOut(BaseModel):
    value: str = Field(description="One of the values the schema allows for this category.")
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated probability of the value.")


class PredictionOut(BaseModel):
    id: str = Field(description="The `id` sent with the image, else its file name (title-only: its index).")
    category: str
    attributes: dict[str, AttributeOut] = Field(description="Every attribute of the category.")


class ModelOut(BaseModel):
    name: str = Field(description="Checkpoint directory name.")
    version: str = Field(description="Content hash of the checkpoint's weights, schema and calibration.")
    kind: str
    backbone: str
    fingerprint: str = Field(description="Backbone weights + preprocessing fingerprint.")
    runtime: str = Field(
        description="What computed the answers, e.g. `openvino fp32`: the same weights may run on another "
        "runtime or precision, with slightly different confidences."
    )


class PredictResponse(BaseModel):
    model: ModelOut
    predictions: list[PredictionOut] = Field(
        description="One per uploaded image (or per title, for a request without images), in order."
    )


def create_app(
    checkpoint: str | os.PathLike | ServedModel,
    *,
    max_batch_size: int = 32,
    max_wait_ms: float = 10.0,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_images_per_request: int = DEFAULT_MAX_IMAGES,
    request_timeout_s: float = 30.0,
    max_queue: int = 1024,
    max_decodes: int = DEFAULT_MAX_DECODES,
    runtime: str = "auto",
    precision: str | None = None,
) -> FastAPI:
    """Load ``checkpoint`` (a directory, or any :class:`ServedModel`) and build the app around it.

    ``max_upload_bytes`` bounds each image (413); the whole body may hold ``max_images_per_request`` of
    them (more images, or a bigger body, is 413 as well). Images over ``max_pixels`` are downscaled on
    decode and rejected (422) beyond :func:`~taxonomist.data.images.pixel_limits`; at most
    ``max_decodes`` uploads are decoded at a time, which bounds the memory decoding takes. ``max_queue``
    images may wait for a forward before requests are shed with 503. Raises ``ValueError`` for a limit
    that would refuse every request. ``runtime``/``precision``: see
    :meth:`~taxonomist.inference.predictor.Predictor.from_pretrained`.
    """
    _check_limits(
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_images_per_request=max_images_per_request,
        max_queue=max_queue,
        max_decodes=max_decodes,
    )
    if max_queue < max_images_per_request:
        # Such a request could never be queued: it would be answered 503 "busy" for ever.
        raise ValueError(
            f"max_queue ({max_queue}) must be at least max_images_per_request ({max_images_per_request}), "
            "or a full request could never be queued"
        )
    if not request_timeout_s > 0:  # NaN included
        raise ValueError(f"request_timeout_s must be positive, got {request_timeout_s}")
    model = (
        load_model(checkpoint, max_pixels=max_pixels, runtime=runtime, precision=precision)
        if isinstance(checkpoint, (str, os.PathLike))
        else checkpoint
    )
    batcher: MicroBatcher[Any, dict] = MicroBatcher(
        model.predict_batch, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue
    )
    service = _Service(
        model,
        batcher,
        CapacityLimiter(max_decodes),
        max_upload_bytes=max_upload_bytes,
        max_images_per_request=max_images_per_request,
        request_timeout_s=request_timeout_s,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        log.info(
            "ready",
            extra={"model": service.info, "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms},
        )
        try:
            yield
        finally:
            await batcher.stop()
            log.info("stopped")

    # Swagger UI and ReDoc from files installed with fastapi-offline: the default pages load their scripts
    # from a CDN and stay blank on a machine without internet access.
    app = FastAPIOffline(
        title="taxonomist",
        summary="Product image → catalog attributes with calibrated confidences.",
        description=f"Model `{model.info.name}` (version {model.info.version}); categories: "
        + ", ".join(f"`{c}`" for c in model.categories)
        + service.text_fields_doc(),
        lifespan=lifespan,
    )
    app.add_middleware(_Utf8Urlencoded, path="/v1/predict")
    app.add_middleware(
        _LimitBody,
        path="/v1/predict",
        limit=max_images_per_request * (max_upload_bytes + _PART_OVERHEAD),
        what=f"room for {max_images_per_request} image(s) of up to {max_upload_bytes} bytes, "
        f"plus {_PART_OVERHEAD} bytes of form fields per image",
    )
    app.add_middleware(_ObserveRequests, metrics=service.metrics)
    _add_routes(app, service)
    return app


async def _validation_error_without_input(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 less each error's ``input``: an image sent as a text field (``curl -F 'image=<f.jpg'``
    instead of ``@``) came back whole as escaped text, twice the upload's size, under a pydantic message."""
    errors = []
    for error in exc.errors():
        error = {k: v for k, v in error.items() if k not in ("input", "ctx", "url")}
        if "Expected UploadFile" in str(error.get("msg", "")):
            field = next((str(x) for x in error.get("loc", ()) if x not in ("body",)), "image")
            error["msg"] = f"{field} must be a file upload (curl -F {field}=@photo.jpg), not a text field"
        errors.append(error)
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def _add_routes(app: FastAPI, service: _Service) -> None:
    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("docs")

    app.exception_handler(StarletteHTTPException)(service.form_limit_is_413)
    app.exception_handler(RequestValidationError)(_validation_error_without_input)
    app.post(
        "/v1/predict",
        response_model=PredictResponse,
        dependencies=[Depends(_form_body)],
        form_limits={
            "max_files": service.max_images_per_request,
            "max_fields": service.max_fields,
            "max_part_size": _MAX_FIELD_BYTES,
        },
        responses={
            413: {"description": "An image, a form field or the whole request is too large, or too many."},
            415: {"description": "The body is not a form (multipart/form-data, or urlencoded for titles)."},
            422: {
                "description": "Not an image, too many pixels, unknown category, a missing or unknown field, "
                "text that is not UTF-8."
            },
            500: {"description": "The model failed on this request's listings (the server log says why)."},
            503: {"description": "Too many images queued; retry later."},
            504: {"description": "The prediction took longer than the request timeout."},
        },
    )(service.predict)
    app.get("/healthz")(service.healthz)
    app.get("/readyz", responses={503: {"description": "The batch worker is not running."}})(service.readyz)
    app.get("/metrics", response_class=Response)(service.prometheus_metrics)


class _Service:
    """What the routes share: the model, its micro-batcher, the metrics and the request limits."""

    def __init__(
        self,
        model: ServedModel,
        batcher: MicroBatcher[Any, dict],
        decoding: CapacityLimiter,
        *,
        max_upload_bytes: int,
        max_images_per_request: int,
        request_timeout_s: float,
    ) -> None:
        self.model = model
        self.info = asdict(model.info)
        self.known = frozenset(model.categories)
        self.batcher = batcher
        self.metrics = ServeMetrics(model.info, lambda: batcher.pending)
        batcher.on_batch = self.metrics.observe_batch
        self.decoding = decoding
        self.max_upload_bytes = max_upload_bytes
        self.max_images_per_request = max_images_per_request
        self.columns = list(getattr(model, "text_columns", []))
        self.text_fields = ["title", *self.columns[1:]]
        """A form field per text column the model learned from, in their order: ``title`` for the first
        (the only one of most models), the column's own name for each further one."""
        taken = [c for c in self.text_fields[1:] if c in _FORM_FIELDS]
        if taken:
            raise ValueError(
                f"cannot serve text columns {taken}: their form fields would be named like the request's "
                f"own fields ({sorted(_FORM_FIELDS)}); train with the columns renamed"
            )
        max_fields = (2 + len(self.text_fields)) * max_images_per_request
        self.max_fields = max_fields
        self.request_timeout_s = request_timeout_s
        per_image = "a category, an id and a title" + "".join(f", {f}" for f in self.text_fields[1:])
        # Starlette's multipart parser reports its limits as 400 with its own wording; they are limits too.
        self.form_limits = {
            "Too many files": f"too many images: at most {max_images_per_request} per request",
            "Too many fields": f"too many form fields: at most {max_fields} ({per_image} per image)",
            "Part exceeded maximum size": f"a form field is over the limit of {_MAX_FIELD_BYTES} bytes",
        }

    def text_fields_doc(self) -> str:
        """The app description's note on a model of several text columns: what to send besides ``title``."""
        if len(self.columns) < 2:
            return ""
        columns = ", ".join(f"`{c}`" for c in self.columns)
        fields = ", ".join(f"`{c}`" for c in self.text_fields[1:])
        return (
            f". Listing text: this model learned from the columns {columns} joined: send `title` as "
            f"`{self.columns[0]}` and the form fields {fields}, one per listing each (may be empty)"
        )

    async def form_limit_is_413(self, request: Request, exc: StarletteHTTPException) -> Response:
        cause = exc.__context__
        if isinstance(cause, MultiPartException):
            detail = next(
                (d for prefix, d in self.form_limits.items() if cause.message.startswith(prefix)), None
            )
            if detail is not None:
                exc = HTTPException(413, detail=detail)
        return await http_exception_handler(request, exc)

    def count(self, outcome: str, listings: int, images: bool) -> None:
        """Every listing counts in ``taxonomist_listings``; only those sent with an image (a request has
        all or none) in ``taxonomist_images``, which title-only listings would otherwise inflate."""
        self.metrics.listings.labels(outcome).inc(listings)
        self.metrics.images.labels(outcome).inc(listings if images else 0)

    def prepare(self, data: bytes | None, category: str, name: str, title: str) -> Any:
        if data is None:  # a listing without a photo: its title alone
            return self.model.prepare_title(category, title)
        # Returned, not raised: every bad image of a request is reported at once.
        try:
            if title:
                return self.model.prepare(data, category, name=name, title=title)
            return self.model.prepare(data, category, name=name)
        except ImageLoadError as err:
            return err

    async def decode(self, data: bytes | None, category: str, name: str, title: str) -> Any:
        """:meth:`prepare` in a thread, ``max_decodes`` at a time. A decode keeps its slot until its thread
        ends, even when its request timed out first: the slot used to be freed at the timeout while the
        thread went on decoding, so timeouts let more decodes run at once, and hold more memory, than
        ``max_decodes`` allows."""
        slot = object()
        await self.decoding.acquire_on_behalf_of(slot)
        work = asyncio.ensure_future(to_thread.run_sync(self.prepare, data, category, name, title))

        def done(task: asyncio.Future[Any]) -> None:
            self.decoding.release_on_behalf_of(slot)
            if not task.cancelled():
                task.exception()  # retrieved: a request that timed out no longer awaits it

        work.add_done_callback(done)
        return await asyncio.shield(work)

    async def run(
        self, uploads: list[UploadFile], names: list[str], categories: list[str], titles: list[str]
    ) -> list[dict[str, Any]]:
        datas = [await upload.read() for upload in uploads] or [None] * len(names)
        prepared = await asyncio.gather(
            *(self.decode(d, c, n, t) for d, c, n, t in zip(datas, categories, names, titles, strict=True))
        )
        problems = [(i, p) for i, p in enumerate(prepared) if isinstance(p, ImageLoadError)]
        if problems:
            for _, err in problems:
                self.count(err.reason, 1, images=True)
            raise HTTPException(
                422,
                detail=[
                    {
                        "type": f"image-{err.reason}",
                        "loc": ["body", "image", i],
                        "msg": f"{_IMAGE_PROBLEMS.get(err.reason, err.reason)}: {err.detail or err.reason}",
                        "input": names[i],
                    }
                    for i, err in problems
                ],
            )
        return await self.batcher.submit(prepared)

    async def predict(
        self,
        request: Request,
        category: Annotated[
            list[str], Form(description="One category for all images, or one per image in upload order.")
        ],
        image: Annotated[
            list[UploadFile] | None,
            File(
                description="One or more product images (JPEG, PNG, WebP, GIF, BMP, TIFF). A model "
                "trained to predict without the image (listing heads with text.image_dropout > 0) also "
                "takes a request of titles and no image."
            ),
        ] = None,
        ids: Annotated[
            list[str] | None, Form(alias="id", description="Optional: one id per image, echoed back.")
        ] = None,
        title: Annotated[
            list[str] | None,
            Form(
                description="Optional: one listing title per image (may be empty, UTF-8), read by models "
                f"trained on image + text; at most {MAX_TITLE_CHARS} characters each. A model trained on "
                "several text columns (catalog.text_columns) reads this as its first column and takes "
                "each further one as a form field of the column's name, validated alike (see above)."
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Predict every attribute of each image's category, with calibrated confidences."""
        image = image or []
        form = await request.form()
        self.check_fields(form.keys())
        fields = {"title": title, **{f: self.text_field(form.getlist(f), f) for f in self.text_fields[1:]}}
        n = len(image) if image else self.check_title_only(fields)
        request.state.images = len(image)
        request.state.listings = n
        categories = self.check_request(image, category, ids, n)
        titles = self.check_titles(fields, n)
        blank = [i for i, t in enumerate(titles) if not t]
        if not image and blank:
            raise _unprocessable(
                "title", f"titles {blank} are blank and no image was sent: nothing to read", "blank-title"
            )
        names = [u.filename or str(i) for i, u in enumerate(image)] or [str(i) for i in range(n)]
        results = await self.results(image, names, categories, titles)
        self.count("predicted", n, images=bool(image))
        return {
            "model": self.info,
            "predictions": [
                {
                    "id": item_id,
                    "category": c,
                    "attributes": {
                        a: {"value": v.value, "confidence": v.confidence} for a, v in attrs.items()
                    },
                }
                for item_id, c, attrs in zip(ids or names, categories, results, strict=True)
            ],
        }

    def check_fields(self, sent: Iterable[str]) -> None:
        """422 for a form field the server does not read: ``images=@x.jpg`` was answered from the title
        alone and ``Title=...`` from the image alone, as if the field had not been sent."""
        known = _FORM_FIELDS | set(self.text_fields)
        unknown = sorted(set(sent) - known)
        if unknown:
            raise HTTPException(
                422,
                detail=[
                    {
                        "type": "unknown-field",
                        "loc": ["body", name],
                        "msg": f"unknown form field {name!r}; this server reads {sorted(known)}",
                    }
                    for name in unknown
                ],
            )

    @staticmethod
    def text_field(values: list[Any], name: str) -> list[str] | None:
        """A further text column's form values (None: not sent); a file sent under its name is refused."""
        if any(not isinstance(v, str) for v in values):
            raise _unprocessable(name, f"{name} must be a text field, not a file upload", "not-text")
        return values or None

    def check_title_only(self, fields: dict[str, list[str] | None]) -> int:
        """How many listings a request without images holds (as many as it sends titles, or texts of
        another column), once the model can predict them from their text alone."""
        sent = [values for values in fields.values() if values]
        if not sent:
            raise _unprocessable("image", "send one or more images", "missing")
        if not getattr(self.model, "predicts_without_image", False):
            raise _unprocessable(
                "image",
                "this model needs an image per listing (listing heads trained with "
                "text.image_dropout > 0 predict from the title alone)",
                "image-required",
            )
        if len(sent[0]) > self.max_images_per_request:
            raise HTTPException(
                413, detail=f"too many listings: at most {self.max_images_per_request} per request"
            )
        return len(sent[0])

    def check_request(
        self, image: list[UploadFile], category: list[str], ids: list[str] | None, n: int
    ) -> list[str]:
        """Each listing's category, once the counts, categories and sizes are within what is served."""
        if len(category) not in (1, n):
            raise _unprocessable("category", f"send 1 category or one per image ({n}), not {len(category)}")
        if ids is not None and len(ids) != n:
            raise _unprocessable("id", f"send one id per image ({n}), not {len(ids)}")
        unknown = [(i, c) for i, c in enumerate(category) if c not in self.known]
        if unknown:
            self.count("unknown-category", n, images=bool(image))
            allowed = ", ".join(sorted(self.known))
            raise HTTPException(
                422,
                detail=[
                    {
                        "type": "unknown-category",
                        "loc": ["body", "category", i],
                        "msg": f"category {c!r} is not one this model knows ({allowed})",
                        "input": c,
                    }
                    for i, c in unknown
                ],
            )
        limit = self.max_upload_bytes
        too_big = [(i, u) for i, u in enumerate(image) if u.size is not None and u.size > limit]
        if too_big:
            self.count("too-large", n, images=True)
            raise HTTPException(
                413,
                detail="; ".join(
                    f"image {i} ({u.filename!r}) has {u.size} bytes, over the limit of {limit}"
                    for i, u in too_big
                ),
            )
        return category * n if len(category) == 1 else category

    def check_titles(self, fields: dict[str, list[str] | None], n: int) -> list[str]:
        """One listing text per image ("" where none was sent), if the model reads text at all: each text
        field normalised, counted and capped, then joined as training joined the model's columns."""
        columns = []
        for name, values in fields.items():
            texts = [normalize_text(t) for t in values] if values is not None else [""] * n
            if len(texts) != n:
                raise _unprocessable(name, f"send one {name} per image ({n}), not {len(texts)}")
            # Starlette reads a urlencoded %ff or %E9 (latin-1) as U+FFFD and serves what is left; a real
            # title has no use for the character, so it marks text that was not UTF-8, refused by name.
            garbled = [i for i, t in enumerate(texts) if "\ufffd" in t]
            if garbled:
                raise _unprocessable(
                    name,
                    f"{name} texts {garbled} hold U+FFFD, the mark of bytes that were not UTF-8; "
                    "send form text as UTF-8",
                    "not-utf8",
                )
            too_long = [i for i, t in enumerate(texts) if len(t) > MAX_TITLE_CHARS]
            if too_long:
                raise _unprocessable(name, f"{name} texts {too_long} are over {MAX_TITLE_CHARS} characters")
            columns.append(texts)
        titles = [join_text(row) for row in zip(*columns, strict=True)]
        if any(titles) and not getattr(self.model, "reads_text", False):
            raise _unprocessable(
                "title", "this model was trained on images only and cannot read titles; leave them out"
            )
        return titles

    async def results(
        self, image: list[UploadFile], names: list[str], categories: list[str], titles: list[str]
    ) -> list[dict[str, Any]]:
        """The batcher's answers, or the HTTP error that says why there are none."""
        n, sent = len(names), bool(image)
        try:
            return await asyncio.wait_for(self.run(image, names, categories, titles), self.request_timeout_s)
        except asyncio.TimeoutError:
            self.count("timeout", n, images=sent)
            raise HTTPException(504, detail=f"no prediction within {self.request_timeout_s:g} s") from None
        except BatchTooLarge as err:
            self.count("too-large", n, images=sent)
            raise HTTPException(413, detail=str(err)) from None
        except BatcherBusy as err:
            self.count("busy", n, images=sent)
            raise HTTPException(503, detail=f"server busy: {err}", headers={"Retry-After": "1"}) from None
        except BatcherStopped as err:
            raise HTTPException(503, detail=str(err)) from None
        except HTTPException:
            raise
        except Exception:
            # The model raised: a plain-text 500 came back, and the listings were counted nowhere.
            log.exception("prediction failed", extra={"listings": n})
            self.count("error", n, images=sent)
            detail = "prediction failed: the model raised an error (see the server log)"
            raise HTTPException(500, detail=detail) from None

    async def healthz(self) -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        """Readiness: the model is loaded and the batch worker runs."""
        if self.batcher.running:
            return JSONResponse({"status": "ready", "model": self.info})
        return JSONResponse({"status": "not ready", "worker_running": False}, status_code=503)

    async def prometheus_metrics(self) -> Response:
        """Prometheus text format: requests by status, latency, batch sizes, listing and image outcomes."""
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


def _check_limits(**limits: int) -> None:
    # Each of these at 0 would start a server that is ready but refuses (or fails) every request.
    for setting, value in limits.items():
        if value < 1:
            raise ValueError(f"{setting} must be at least 1, got {value}")


def _form_body(request: Request) -> None:
    """415 for a body that is no form: a JSON body was answered "category: Field required", though the
    request held a category, and never said that the server reads form fields only."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _FORM_TYPES:
        raise HTTPException(
            415,
            detail=f"send the request as multipart/form-data (curl -F category=... -F image=@photo.jpg), "
            f"not {media or 'a body without a content type'}",
        )


def _unprocessable(field: str, msg: str, kind: str = "count-mismatch") -> HTTPException:
    return HTTPException(422, detail=[{"type": kind, "loc": ["body", field], "msg": msg}])


class _LimitBody:
    """413 with a JSON ``detail``, like every other error, once the body on ``path`` passes ``limit``
    bytes (Starlette's own body limit answers in plain text). A declared length over it is refused
    before any of the body is read."""

    def __init__(self, app: ASGIApp, *, path: str, limit: int, what: str) -> None:
        self.app = app
        self.path = path
        self.limit = limit
        self.detail = f"Content Too Large: the request body is over the limit of {limit} bytes ({what})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        declared = int(length) if length.isdigit() else 0
        received = 0

        async def limited() -> Message:
            # Raised inside the route while it reads the form, so the app's handler answers it as JSON.
            nonlocal received
            if declared > self.limit:
                raise HTTPException(413, detail=self.detail)
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, detail=self.detail)
            return message

        await self.app(scope, limited, send)


class _Utf8Urlencoded:
    """Reads the raw non-ASCII bytes of a urlencoded body as UTF-8, as the WHATWG form decoding does:
    Starlette reads them as latin-1, so ``curl -d title=café`` (which sends UTF-8 unescaped) was served
    as "cafÃ©". They are percent-escaped before Starlette parses the body, so UTF-8 reads as the text sent
    and other bytes as U+FFFD, which the text checks refuse. A body that declares another charset is left
    as it is. Runs inside :class:`_LimitBody`, which bounds the body this buffers."""

    def __init__(self, app: ASGIApp, *, path: str) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        media, _, params = dict(scope.get("headers", [])).get(b"content-type", b"").partition(b";")
        charset = re.search(rb"charset\s*=\s*\"?([\w-]+)", params, re.IGNORECASE)
        if (
            scope["type"] != "http"
            or scope["path"] != self.path
            or media.strip().lower() != b"application/x-www-form-urlencoded"
            or (charset is not None and charset[1].lower() not in (b"utf-8", b"utf8"))
        ):
            await self.app(scope, receive, send)
            return
        read = False

        async def escaped() -> Message:
            # Read from within the route, so that _LimitBody's 413 is answered by the app's handlers.
            nonlocal read
            if read:
                return await receive()
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            read = True
            quoted = re.sub(rb"[\x80-\xff]", lambda m: b"%%%02X" % m[0][0], bytes(body))
            return {"type": "http.request", "body": quoted, "more_body": False}

        await self.app(scope, escaped, send)


class _ObserveRequests:
    """Pure ASGI (no body buffering): request id, one JSON log line and the HTTP metrics per request."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        status = 500  # what the server error handler sends if the app raises before responding

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            path = scope["path"]
            route = path if path in _ROUTES else "other"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            log.log(
                logging.DEBUG if route in _PROBES else logging.INFO,
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "ms": round(seconds * 1000, 2),
                    "images": state.get("images"),
                    "listings": state.get("listings"),
                },
            )
