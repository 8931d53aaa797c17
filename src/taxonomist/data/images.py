"""Image loading for real marketplace catalogs: every input becomes a plain RGB image or one
:class:`ImageLoadError` with a machine-friendly reason.

Catalog images are uploaded by sellers, so anything goes: CMYK exports, palette PNGs with transparency,
16-bit scans, phone photos that rely on the EXIF orientation tag, half-uploaded files and the occasional
decompression bomb. Training, embedding and prediction all load through here so they see the same pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, get_args

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from taxonomist.io import atomic_write

# Product photos are at most a few megapixels; 16.7 MP still covers a full-frame camera export, and the
# decoded RGB buffer stays near 50 MB (16.7M px x 3 bytes), so a handful of loader workers cannot exhaust
# memory. Bigger images are downscaled; only far bigger ones are rejected (see pixel_limits).
DEFAULT_MAX_PIXELS = 4096 * 4096

# Beyond this many times ``max_pixels`` an image is rejected outright: a JPEG can be decoded at 1/8 scale
# per side (1/64 of the pixels) almost for free, anything larger has to be decoded in full first.
HARD_LIMIT_FACTOR = 64

# Other formats (PNG, WebP, TIFF, ...) have no reduced decode: every pixel is held in memory, at up to 4
# bytes each, before the image can be shrunk, and a few hundred KB of PNG can claim 9400 x 9400. So they
# are rejected beyond this many times ``max_pixels``, i.e. shrunk by at most 2 per side; one load then
# peaks near 600 MB at the default (the decoded image, and as much again while shrinking it) ...
FULL_DECODE_FACTOR = 4
# ... though never below the default cap (67 MB as RGBA), so a small ``max_pixels`` (a model's input size,
# say) does not turn away ordinary product photos that are merely shrunk more.
FULL_DECODE_MIN_PIXELS = DEFAULT_MAX_PIXELS

# Formats a seller upload can legitimately be in. Restricting ``Image.open`` to these keeps exotic
# decoders (EPS shells out to Ghostscript, for one) away from untrusted bytes. HEIF is only there once a
# plugin such as pillow-heif has registered it.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")

Reason = Literal[
    "missing", "empty", "corrupt", "truncated", "decompression-bomb", "unsupported-mode", "unreadable"
]
REASONS: tuple[Reason, ...] = get_args(Reason)

ERROR_COLUMNS = ("id", "path", "reason", "detail")

_WHITE = (255, 255, 255)
_HASH_CHUNK = 1 << 20
_ORIENTATION_TAG = 0x0112
# Same table as PIL.ImageOps.exif_transpose; applied by hand so the (cheap) transpose runs after any
# downscale and works for TIFF too, whose orientation lives in the tags rather than in ``info["exif"]``.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_DIRECT_RGB_MODES = frozenset({"CMYK", "YCbCr", "LAB", "HSV"})
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_SIXTEEN_TO_EIGHT_BITS = ((np.arange(1 << 16, dtype=np.uint32) + 128) // 257).astype(np.uint8)


class ImageLoadError(Exception):
    """One image that cannot be used; ``reason`` is one of :data:`REASONS` so batch jobs can tally them."""

    def __init__(self, path: str, reason: Reason, detail: str = "") -> None:
        # All three go to Exception.args so the error survives pickling across worker processes.
        super().__init__(path, reason, detail)
        self.path = path
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} ({self.detail})" if self.detail else f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ImageError:
    """A per-image failure kept by batch jobs, so one bad upload is reported instead of ending the run."""

    id: str
    path: str
    reason: str
    detail: str

    @classmethod
    def from_load_error(cls, id: str, error: ImageLoadError) -> ImageError:
        return cls(id=str(id), path=error.path, reason=error.reason, detail=error.detail)


def load_image(
    source: str | os.PathLike[str] | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Load ``source`` as a fully decoded RGB image, upright and without alpha (transparent areas become
    white, like the studio background).

    ``source`` is a path, or an image already opened with PIL, which gets exactly the treatment its file
    would (orientation, mode, alpha, pixel limits), so callers handing over PIL images see the same pixels.
    The caller's image is left open and unchanged, except that one not loaded yet is loaded here: a large
    JPEG at reduced size, as :meth:`PIL.Image.Image.thumbnail` does.

    Images over ``max_pixels`` are shrunk by an integer factor (a cheap reduced JPEG decode where possible),
    so they come back with the same aspect ratio and between about a quarter of ``max_pixels`` and
    ``max_pixels`` pixels. See :func:`pixel_limits` for the sizes that are rejected instead.

    Raises :class:`ImageLoadError` for anything that is not a usable image.
    """
    _check_max_pixels(max_pixels)
    if isinstance(source, Image.Image):
        # Image.open leaves ``filename`` empty for file objects; errors still need something to name.
        name = os.fsdecode(getattr(source, "filename", "") or "<image>")
        with _classified(name):
            return _normalise(source, name, max_pixels)
    name = os.fsdecode(source)
    # Only the filesystem's errors reach _file_errors: decoder errors are classified inside _decode.
    with _file_errors(name):
        st = _check_regular_file(name)  # a directory is no image either
        if st.st_size == 0:
            raise ImageLoadError(name, "empty", "file has 0 bytes")
        with open(name, "rb") as fp:
            return _decode(fp, name, max_pixels)


def load_image_bytes(
    data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>"
) -> Image.Image:
    """:func:`load_image` for in-memory uploads; ``name`` is what errors report as the path."""
    _check_max_pixels(max_pixels)
    if len(memoryview(data)) == 0:
        raise ImageLoadError(name, "empty", "no bytes")
    return _decode(io.BytesIO(data), name, max_pixels)


def content_hash(path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview) -> str:
    """Hex sha256 of the raw file bytes: a cache key that follows the content, not the file name."""
    digest = hashlib.sha256()
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        digest.update(path_or_bytes)
        return digest.hexdigest()
    name = os.fsdecode(path_or_bytes)
    with _file_errors(name):
        _check_regular_file(name)
        with open(name, "rb") as fp:
            while chunk := fp.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _file_errors(name: str) -> Iterator[None]:
    """A file that cannot be read becomes an :class:`ImageLoadError`: ``missing`` or ``unreadable``."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageLoadError(name, "missing", exc.strerror or "no such file") from None
    except ImageLoadError:
        raise
    except OSError as exc:
        raise ImageLoadError(name, "unreadable", exc.strerror or str(exc)) from exc


def _check_regular_file(name: str) -> os.stat_result:
    """Stat ``name`` (following links) and refuse anything but a regular file: opening a FIFO blocks until
    a writer comes, and a device such as ``/dev/zero`` never ends."""
    st = os.stat(name)
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(name, "unreadable", "not a regular file")
    return st


def write_errors(errors: Sequence[ImageError], path: str | os.PathLike[str]) -> None:
    """Write ``errors`` as CSV (id,path,reason,detail), atomically: readers see the old file or the new
    one, never half of it, even if the job dies mid-write."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fp:
            writer = csv.writer(fp)
            writer.writerow(ERROR_COLUMNS)
            for err in errors:
                writer.writerow([err.id, err.path, err.reason, err.detail])
            fp.flush()
            os.fsync(fp.fileno())

    atomic_write(target, write)


def read_errors(path: str | os.PathLike[str]) -> list[ImageError]:
    """Errors written by :func:`write_errors`; a missing file means a run without errors."""
    try:
        fp = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return []
    with fp:
        reader = csv.DictReader(fp, restval="")
        missing = [c for c in ERROR_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{os.fsdecode(path)}: not an image error file (missing columns {missing})")
        return [
            ImageError(id=r["id"], path=r["path"], reason=r["reason"], detail=r["detail"]) for r in reader
        ]


def _check_max_pixels(max_pixels: int) -> None:
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")


def _accepted_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format name no plugin registered, so offer only registered ones.
    Image.init()
    return tuple(f for f in ACCEPTED_FORMATS if f in Image.OPEN)


def _accepted_list() -> str:
    return f"accepted formats: {', '.join(_accepted_formats())}"


def pixel_limits(max_pixels: int) -> tuple[int, int]:
    """(hard limit, full-decode limit) in pixels for ``max_pixels``: every image above the first is
    rejected; one that has to be decoded at full size (any format but JPEG) also above the second, which
    is ``FULL_DECODE_FACTOR`` x ``max_pixels`` but at least ``FULL_DECODE_MIN_PIXELS``."""
    # PIL's own threshold (Image.MAX_IMAGE_PIXELS) is honoured as an upper bound where it is set: above it
    # PIL only warns, and a warning is not a decision. The global itself is never changed.
    hard = HARD_LIMIT_FACTOR * max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        hard = min(hard, int(Image.MAX_IMAGE_PIXELS))
    return hard, min(hard, max(FULL_DECODE_FACTOR * max_pixels, FULL_DECODE_MIN_PIXELS))


def _decode(fp: IO[bytes], name: str, max_pixels: int) -> Image.Image:
    with _classified(name), Image.open(fp, formats=_accepted_formats()) as img:
        return _normalise(img, name, max_pixels)


@contextmanager
def _classified(name: str) -> Iterator[None]:
    """Turn whatever PIL raises for a bad image into one :class:`ImageLoadError`."""
    try:
        yield
    except (ImageLoadError, MemoryError):
        raise
    except Exception as exc:
        reason, detail = _classify(exc)
        raise ImageLoadError(name, reason, detail) from exc


def _normalise(img: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Check the size, decode (reduced where the format can) and convert one opened image."""
    if img.format is not None and img.format not in _accepted_formats():
        # An image the caller opened: refused as its file would be.
        raise ImageLoadError(name, "corrupt", f"{img.format} is not an accepted format ({_accepted_list()})")
    width, height = img.size
    hard, full = pixel_limits(max_pixels)
    if width * height > hard:
        detail = f"{width}x{height} = {width * height} pixels, over the limit of {hard}"
        raise ImageLoadError(name, "decompression-bomb", detail)
    if width * height > max_pixels:
        # JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the time and memory of a
        # full decode, and the image's size says so at once. A no-op for other formats (and for images
        # already loaded), which _to_rgb shrinks after decoding.
        scale = next((k for k in (2, 4, 8) if _shrunk_pixels(width, height, k) <= max_pixels), 8)
        img.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    if img.width * img.height > full:
        detail = (
            f"{width}x{height} = {width * height} pixels, over the limit of {full} for "
            f"{img.format or 'an image'} decoded at full size "
            f"({FULL_DECODE_FACTOR} x max_pixels, at least {FULL_DECODE_MIN_PIXELS})"
        )
        raise ImageLoadError(name, "decompression-bomb", detail)
    img.load()
    if ImageFile.LOAD_TRUNCATED_IMAGES and getattr(img, "_ended", False):
        # Someone enabled PIL's global truncated-image mode; the JPEG plugin marks files it had to pad
        # with a fake end-of-image marker, which are still truncated for us.
        raise ImageLoadError(name, "truncated", "JPEG data ends before the end-of-image marker")
    return _to_rgb(img, name, max_pixels, _orientation(img))


def _classify(exc: Exception) -> tuple[Reason, str]:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # The warning arrives as an exception when the caller runs with warnings as errors.
        return "decompression-bomb", str(exc)
    if isinstance(exc, UnidentifiedImageError):
        # PIL's message carries a repr of the file object; the format list is more useful.
        return "corrupt", f"not a recognised image ({_accepted_list()})"
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or (isinstance(exc, OSError) and "truncated" in detail.lower()):
        return "truncated", detail
    return "corrupt", detail


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        # Broken EXIF is common in seller uploads and says nothing about the pixels.
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _to_rgb(img: Image.Image, name: str, max_pixels: int, orientation: int) -> Image.Image:
    """Normalise any mode to L, RGB or RGBA, shrink under ``max_pixels``, then flatten to upright RGB.

    Shrinking before the alpha composite and the transpose keeps those passes on the small image, and an
    image already in one of those modes is shrunk as it is, without a full-size copy first.
    """
    mode = img.mode
    has_key = "transparency" in img.info  # a palette index or colour key that means "transparent"
    try:
        if (mode in ("RGB", "L") and not has_key) or mode == "RGBA":
            out = img
        elif mode == "1" and not has_key:
            out = img.convert("L")
        elif mode in _WIDE_GRAY_MODES:
            # 32-bit samples are shrunk first (reduce() averages them; it has no 16-bit modes): the
            # scaling below makes several full-size temporaries at up to 8 bytes a pixel.
            out = _wide_gray_to_l(_shrink(img, max_pixels) if mode in ("I", "F") and not has_key else img)
            if has_key:
                transparent = np.asarray(img) == img.info["transparency"]
                alpha = Image.fromarray(np.where(transparent, 0, 255).astype(np.uint8))
                out = Image.merge("LA", (out, alpha)).convert("RGBA")
        elif mode in _ALPHA_MODES or (has_key and mode in ("P", "L", "1", "RGB")):
            # PIL has no La -> RGBA conversion; the others convert directly, colour keys included.
            out = (img.convert("LA") if mode == "La" else img).convert("RGBA")
        elif mode == "P" or mode in _DIRECT_RGB_MODES:
            out = img.convert("RGB")
        else:
            raise ValueError(f"no conversion for PIL mode {mode!r}")
    except ValueError as exc:
        raise ImageLoadError(name, "unsupported-mode", str(exc)) from exc

    out = _shrink(out, max_pixels)
    if out.mode == "RGBA":
        flat = Image.new("RGB", out.size, _WHITE)
        flat.paste(out, mask=out.getchannel("A"))
        out = flat
    elif out.mode != "RGB":
        out = out.convert("RGB")

    if orientation != 1:
        out = out.transpose(_TRANSPOSE[orientation])
    if out is img:
        # Nothing above made a new image: never hand back (or strip) the decoded or the caller's one.
        out = img.copy()
    # Metadata would describe the file, not these pixels (an EXIF orientation applied twice rotates twice).
    out.info = {}
    return out


def _shrink(img: Image.Image, max_pixels: int) -> Image.Image:
    """``img`` itself if within ``max_pixels``, else reduced by the smallest integer factor that fits."""
    if img.width * img.height <= max_pixels:
        return img
    # An integer box reduction (alpha-premultiplied for RGBA) rather than a resample to exactly max_pixels:
    # several times faster on big images, and the cap is a memory bound, not a target size.
    return img.reduce(_reduction(img.width, img.height, max_pixels))


def _wide_gray_to_l(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float grayscale into 0..255; PIL's own convert("L") clips instead."""
    arr = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)  # a float32 copy
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0:
            # The usual float convention: 0..1 intensities.
            scaled = values * 255.0
        else:
            scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    lo, hi = int(arr.min()), int(arr.max())
    if img.mode != "I" or (lo >= 0 and hi <= 65535):
        # 16-bit samples (PIL widens some 16-bit files to "I"): 65535 maps to 255, 32768 to 128. A table
        # lookup writes the 8-bit result straight away, with no wider full-size temporaries.
        return Image.fromarray(_SIXTEEN_TO_EIGHT_BITS[arr])
    values = arr.astype(np.int64)
    # Genuinely 32-bit (or signed) data has no fixed white point: stretch what is there.
    span = hi - lo
    scaled = ((values - lo) * 255 + span // 2) // span if span else np.zeros_like(values)
    return Image.fromarray(scaled.astype(np.uint8))


def _shrunk_pixels(width: int, height: int, factor: int) -> int:
    """Pixel count after shrinking both sides by ``factor``, rounding up as libjpeg and reduce() do."""
    return -(-width // factor) * -(-height // factor)


def _reduction(width: int, height: int, max_pixels: int) -> int:
    """The smallest integer factor that brings ``width`` x ``height`` down to ``max_pixels`` or fewer."""
    factor = max(2, math.isqrt(width * height // max_pixels))  # no smaller factor can be enough
    while _shrunk_pixels(width, height, factor) > max_pixels:
        factor += 1
    return factor
