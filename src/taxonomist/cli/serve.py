"""``taxonomist serve``: one uvicorn process around a checkpoint (batching needs all requests in one
process; run more replicas behind a load balancer to scale out)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import typer
from PIL import Image

from taxonomist.cli.options import PrecisionDefaultOpt, PredictRuntimeOpt
from taxonomist.data.images import (
    DEFAULT_MAX_PIXELS,
    FULL_DECODE_FACTOR,
    FULL_DECODE_MIN_PIXELS,
    HARD_LIMIT_FACTOR,
)

# The rule of taxonomist.data.images.pixel_limits, in the words of the flag.
MAX_PIXELS_HELP = (
    f"Images above are downscaled on decode, and rejected (422) above {HARD_LIMIT_FACTOR}x this or, for "
    f"formats other than JPEG (decoded at full size first), above {FULL_DECODE_FACTOR}x this or "
    f"{FULL_DECODE_MIN_PIXELS} pixels, whichever is more."
    + (f" Never above PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels." if Image.MAX_IMAGE_PIXELS else "")
)


MIB = 1024 * 1024

# A limit that would refuse every request is a usage error naming the flag and the value typed (as the
# typer ranges of the int flags do), not create_app's parameter in its own units (max_upload_bytes).


def _finite(value: float) -> float:
    """nan and inf pass a range check, and int() of them is a traceback."""
    if not math.isfinite(value):
        raise typer.BadParameter(f"Input should be a finite number, got {value}")
    return value


def _positive(value: float) -> float:
    if not _finite(value) > 0:
        raise typer.BadParameter(f"Input should be greater than 0, got {value}")
    return value


def _upload_mb(value: float) -> float:
    """The limit is whole bytes: under one byte, every upload would be refused (413)."""
    if not _finite(value) * MIB >= 1:
        raise typer.BadParameter(f"Input should be at least one byte (1/{MIB} MiB), got {value}")
    return value


def serve(
    checkpoint: Annotated[Path, typer.Argument(help="Attribute checkpoint directory.")],
    host: Annotated[
        str, typer.Option(help="Interface to bind; 0.0.0.0 to accept remote clients.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).", min=0, max=65535)] = 8000,
    max_batch_size: Annotated[
        int, typer.Option(help="Most images per model forward; 1 disables batching.", min=1)
    ] = 32,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            help="Longest wait for a batch to fill, from its oldest image.", min=0, callback=_finite
        ),
    ] = 10.0,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest image upload in MiB (413 above).", callback=_upload_mb)
    ] = 10.0,
    max_pixels: Annotated[int, typer.Option(help=MAX_PIXELS_HELP, min=1)] = DEFAULT_MAX_PIXELS,
    max_images: Annotated[int, typer.Option(help="Most images in one request.", min=1)] = 16,
    timeout: Annotated[
        float, typer.Option(help="Seconds before a request gets 504.", callback=_positive)
    ] = 30.0,
    max_queue: Annotated[
        int, typer.Option(help="Images waiting for a forward before 503; at least --max-images.", min=1)
    ] = 1024,
    max_decodes: Annotated[
        int,
        typer.Option(help="Images decoded at once, whatever the requests: bounds decoding memory.", min=1),
    ] = 4,
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], typer.Option(help="Lowest level of log lines written.")
    ] = "info",
    runtime: PredictRuntimeOpt = "auto",
    precision: PrecisionDefaultOpt = None,
) -> None:
    """Serve a checkpoint over HTTP: POST /v1/predict (batched), /healthz, /readyz, /metrics, /docs."""
    try:
        import uvicorn

        from taxonomist.serve import configure_logging, create_app
    except ImportError as err:
        raise typer.BadParameter(
            f"serving needs extra packages ({err.name}): pip install 'taxonomist[serve]'"
        ) from err

    if max_queue < max_images:  # what create_app refuses, in the words of the flags
        raise typer.BadParameter(
            f"--max-queue ({max_queue}) must be at least --max-images ({max_images}), "
            "or a full request could never be queued"
        )
    try:
        app = create_app(
            checkpoint,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_upload_bytes=int(max_upload_mb * MIB),
            max_pixels=max_pixels,
            max_images_per_request=max_images,
            request_timeout_s=timeout,
            max_queue=max_queue,
            max_decodes=max_decodes,
            runtime=runtime,
            precision=precision,
        )
    except (ValueError, ImportError) as err:  # not a checkpoint (each limit was checked as its flag)
        raise typer.BadParameter(str(err)) from err
    configure_logging(log_level)
    # Our middleware writes one JSON line per request, so uvicorn's own access log stays off.
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, log_level=log_level.lower())
