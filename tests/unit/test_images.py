"""Image loader: every test image is built here, in tmp_path, so no binary fixtures live in the repo."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from taxonomist.data import images
from taxonomist.data.images import (
    DEFAULT_MAX_PIXELS,
    REASONS,
    ImageError,
    ImageLoadError,
    content_hash,
    load_image,
    load_image_bytes,
    pixel_limits,
    read_errors,
    write_errors,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def save(tmp_path: Path, name: str, img: Image.Image, fmt: str, **kwargs: object) -> Path:
    path = tmp_path / name
    path.write_bytes(encode(img, fmt, **kwargs))
    return path


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 8) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def assert_rgb(img: Image.Image) -> None:
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.info == {}


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed up)."""
    data = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def stored_mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


# --- good images -------------------------------------------------------------------------------------


def test_plain_rgb_jpeg(tmp_path: Path) -> None:
    path = save(tmp_path, "a.jpg", Image.new("RGB", (60, 80), (200, 30, 40)), "JPEG", quality=95)
    img = load_image(path)
    assert_rgb(img)
    assert img.size == (60, 80)
    assert close(img.getpixel((30, 40)), (200, 30, 40))
    # Fully decoded: nothing is read from the file after loading.
    path.unlink()
    assert close(img.getpixel((0, 0)), (200, 30, 40))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_other_common_formats(tmp_path: Path, fmt: str) -> None:
    img = load_image(save(tmp_path, f"a.{fmt.lower()}", Image.new("RGB", (20, 10), GREEN), fmt))
    assert_rgb(img)
    assert img.size == (20, 10)
    assert close(img.getpixel((5, 5)), GREEN, tol=16)


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, red block in the top-left; orientation 6 means "rotate 90° clockwise".
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 16, 16))
    path = tmp_path / "rot.jpg"
    path.write_bytes(with_orientation(stored, 6))

    img = load_image(path)
    assert img.size == (20, 40)
    assert close(img.getpixel((19 - 4, 4)), RED, tol=24)  # top-left went to top-right
    assert close(img.getpixel((4, 35)), BLUE, tol=24)
    # Orientation is applied once: the result carries no tag that would rotate it again.
    assert ImageOps.exif_transpose(img).size == (20, 40)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pil(tmp_path: Path, orientation: int) -> None:
    data = with_orientation(noise(24, 16), orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    got = load_image_bytes(data)
    assert got.size == expected.size
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_orientation_in_tiff_tags(tmp_path: Path) -> None:
    path = save(tmp_path, "rot.tif", noise(30, 10), "TIFF", tiffinfo={0x0112: 8})
    assert load_image(path).size == (10, 30)


def test_invalid_orientation_is_ignored() -> None:
    assert load_image_bytes(with_orientation(noise(30, 10), 42)).size == (30, 10)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = save(tmp_path, "cmyk.jpg", Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    assert stored_mode(path) == "CMYK"
    img = load_image(path)
    assert_rgb(img)
    assert close(img.getpixel((8, 8)), (0, 255, 255))  # pure cyan


def test_palette_png_with_transparency_goes_white(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 2))
    pal.putpalette([*RED, *GREEN])
    pal.putdata([0, 0, 1, 1] * 2)
    path = save(tmp_path, "pal.png", pal, "PNG", transparency=0)
    assert stored_mode(path) == "P"
    img = load_image(path)
    assert_rgb(img)
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((3, 1)) == GREEN


def test_palette_png_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([*RED, *GREEN])
    pal.putdata([0, 1])
    img = load_image(save(tmp_path, "pal.png", pal, "PNG"))
    assert (img.getpixel((0, 0)), img.getpixel((1, 0))) == (RED, GREEN)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    img = load_image(save(tmp_path, "a.png", rgba, "PNG"))
    assert_rgb(img)
    assert img.getpixel((0, 0)) == WHITE  # fully transparent red is background, not red
    assert img.getpixel((1, 0)) == BLUE
    assert close(img.getpixel((2, 0)), (127, 127, 127), tol=2)


def test_la_composited_on_white(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (50, 255)])
    img = load_image(save(tmp_path, "la.png", la, "PNG"))
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((1, 0)) == (50, 50, 50)


def test_rgb_png_colour_key_is_transparent(tmp_path: Path) -> None:
    rgb = Image.new("RGB", (2, 1), RED)
    rgb.putpixel((1, 0), GREEN)
    img = load_image(save(tmp_path, "key.png", rgb, "PNG", transparency=GREEN))
    assert (img.getpixel((0, 0)), img.getpixel((1, 0))) == (RED, WHITE)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = save(tmp_path, "g16.png", Image.fromarray(arr), "PNG")
    assert stored_mode(path).startswith("I")
    img = load_image(path)
    assert_rgb(img)
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), WHITE]


def test_16bit_big_endian_tiff(tmp_path: Path) -> None:
    raw = np.array([[0, 32768, 65535]], dtype=">u2").tobytes()
    path = save(tmp_path, "g16b.tif", Image.frombytes("I;16B", (3, 1), raw), "TIFF")
    assert stored_mode(path) == "I;16B"
    img = load_image(path)
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_32bit_int_tiff(tmp_path: Path) -> None:
    sixteen = save(tmp_path, "i16.tif", Image.fromarray(np.array([[0, 32768]], dtype=np.int32)), "TIFF")
    assert stored_mode(sixteen) == "I"
    assert [load_image(sixteen).getpixel((x, 0))[0] for x in range(2)] == [0, 128]
    wide = save(
        tmp_path, "i32.tif", Image.fromarray(np.array([[-10, 500_000, 1_000_000]], dtype=np.int32)), "TIFF"
    )
    assert [load_image(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_tiff(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = save(tmp_path, "f.tif", Image.fromarray(unit), "TIFF")
    assert stored_mode(path) == "F"
    img = load_image(path)
    assert_rgb(img)
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]

    # Outside 0..1 there is no fixed white point: the range is stretched rather than clipped.
    other = np.array([[-1.0, 1.0, 3.0, np.nan]], dtype=np.float32)
    img = load_image(save(tmp_path, "f2.tif", Image.fromarray(other), "TIFF"))
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_bilevel_and_grayscale(tmp_path: Path) -> None:
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    img = load_image(save(tmp_path, "b.png", bilevel, "PNG"))
    assert_rgb(img)
    assert (img.getpixel((0, 0)), img.getpixel((1, 0))) == ((0, 0, 0), WHITE)

    img = load_image(save(tmp_path, "l.png", Image.new("L", (2, 1), 77), "PNG"))
    assert_rgb(img)
    assert img.getpixel((1, 0)) == (77, 77, 77)


# --- bad files -----------------------------------------------------------------------------------------


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = encode(noise(64, 64), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert (err.path, err.reason) == (str(path), "truncated")
    assert str(err).startswith(f"{path}: truncated (image file is truncated")


def test_truncated_jpeg_even_with_pil_global_leniency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(noise(64, 64), "JPEG")
    with pytest.raises(ImageLoadError, match="truncated") as info:
        load_image_bytes(data[: len(data) // 2])
    assert info.value.reason == "truncated"
    assert load_image_bytes(data).size == (64, 64)  # a whole file is still fine


def test_truncated_png(tmp_path: Path) -> None:
    data = encode(noise(64, 64), "PNG")
    with pytest.raises(ImageLoadError) as info:
        load_image_bytes(data[: len(data) // 2])
    assert info.value.reason == "truncated"


def test_random_bytes_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "junk.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason == "corrupt"
    assert str(path) in str(info.value)


def test_format_outside_allowlist_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(save(tmp_path, "a.ppm", Image.new("RGB", (4, 4)), "PPM"))
    assert info.value.reason == "corrupt"
    assert "accepted formats" in info.value.detail


def test_missing_file(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.jpg", tmp_path / "no-dir" / "nope.jpg"):
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert (info.value.reason, info.value.path) == ("missing", str(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason == "empty"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path)
    assert info.value.reason == "unreadable"


# --- size limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # JPEG takes the draft (reduced decode) path, PNG does not
def test_large_image_is_downscaled_keeping_aspect(tmp_path: Path, fmt: str) -> None:
    path = save(tmp_path, f"big.{fmt.lower()}", Image.new("RGB", (3000, 1500), (10, 200, 30)), fmt)
    img = load_image(path, max_pixels=1_000_000)
    assert_rgb(img)
    assert img.width * img.height <= 1_000_000
    assert img.width * img.height > 1_000_000 / 4  # shrunk by the smallest factor that fits
    assert img.width / img.height == pytest.approx(2.0, rel=0.01)
    assert close(img.getpixel((img.width // 2, img.height // 2)), (10, 200, 30))


def test_downscale_then_rotate(tmp_path: Path) -> None:
    data = with_orientation(Image.new("RGB", (2000, 1000), RED), 6)
    img = load_image_bytes(data, max_pixels=200_000)
    assert img.width * img.height <= 200_000
    assert img.height / img.width == pytest.approx(2.0, rel=0.01)


def test_thin_strip_fits_under_cap() -> None:
    data = encode(Image.new("RGB", (5000, 2), RED), "PNG")
    img = load_image_bytes(data, max_pixels=1000)
    assert img.width * img.height <= 1000


OVER_CAP = [
    (width, height, cap)
    for width, height in [(3000, 1500), (1, 10_000), (10_000, 1), (4097, 4095), (7, 13)]
    for cap in [1, 1000, 999_983, DEFAULT_MAX_PIXELS]
    if width * height > cap
]


@pytest.mark.parametrize(("width", "height", "cap"), OVER_CAP)
def test_reduction_is_smallest_factor_under_cap(width: int, height: int, cap: int) -> None:
    k = images._reduction(width, height, cap)
    assert images._shrunk_pixels(width, height, k) <= cap
    assert k == 2 or images._shrunk_pixels(width, height, k - 1) > cap


def test_header_bomb_is_rejected_without_decoding() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError) as info:
        load_image_bytes(png_claiming_size(100_000, 100_000), name="bomb.png")
    assert (info.value.path, info.value.reason) == ("bomb.png", "decompression-bomb")
    assert before == Image.MAX_IMAGE_PIXELS  # the process-wide setting is left alone


def test_bomb_rejected_even_with_pil_limit_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(100_000, 100_000))
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason == "decompression-bomb"


def test_own_hard_limit_below_pil_limit() -> None:
    # 1M pixels is far below PIL's limit but more than 64 x 10_000: too big to be worth decoding.
    data = encode(Image.new("1", (1000, 1000)), "PNG")
    with pytest.raises(ImageLoadError) as info:
        load_image_bytes(data, max_pixels=10_000)
    assert info.value.reason == "decompression-bomb"
    assert load_image_bytes(data, max_pixels=20_000).size == (125, 125)  # 1/8 per side


def test_pil_warning_zone_is_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    # Between MAX_IMAGE_PIXELS and twice that PIL merely warns; the loader decides, whatever the filters.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.new("RGB", (40, 40)), "PNG")
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageLoadError) as info:
        load_image_bytes(data)
    assert info.value.reason == "decompression-bomb"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError) as info:
            load_image_bytes(data)
    assert info.value.reason == "decompression-bomb"


def test_max_pixels_must_be_positive() -> None:
    with pytest.raises(ValueError):
        load_image_bytes(b"x", max_pixels=0)


def constant_gray_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of any size in little time and memory: constant rows compress to
    almost nothing, so a few hundred KB can claim a huge image, as in a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    packer = zlib.compressobj(1)
    row = b"\0" + b"\x7f" * width  # filter type 0, then the samples
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_png_is_rejected_without_a_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    # 88M pixels, just under PIL's own limit, from a file of a few hundred KB: PNG has no reduced decode,
    # so loading it would hold every pixel (350 MB as RGBA) before shrinking.
    data = constant_gray_png(9400, 9400)
    assert len(data) < 2_000_000 and Image.MAX_IMAGE_PIXELS > 9400 * 9400

    def no_decode(self: Image.Image) -> None:
        raise AssertionError("decoded an image that is over the full-decode limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageLoadError) as info:
        load_image_bytes(data, name="huge.png")
    assert info.value.reason == "decompression-bomb"
    assert pixel_limits(DEFAULT_MAX_PIXELS)[1] == 4 * DEFAULT_MAX_PIXELS
    assert f"over the limit of {4 * DEFAULT_MAX_PIXELS} for PNG decoded at full size" in info.value.detail


def test_full_decode_limit_spares_reduced_jpeg_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "FULL_DECODE_MIN_PIXELS", 0)  # so small images show the rule
    assert pixel_limits(10_000) == (640_000, 40_000)
    big = Image.new("RGB", (300, 300), RED)  # 9 x max_pixels
    with pytest.raises(ImageLoadError) as info:
        load_image_bytes(encode(big, "PNG"), max_pixels=10_000)
    assert info.value.reason == "decompression-bomb" and "limit of 40000" in info.value.detail
    # A JPEG is decoded at 1/4 per side: it never holds the full image, so it is only shrunk.
    assert load_image_bytes(encode(big, "JPEG"), max_pixels=10_000).size == (75, 75)
    # Up to 4 x max_pixels a full decode is fine, then shrunk by 2 per side.
    assert load_image_bytes(encode(Image.new("RGB", (200, 200)), "PNG"), max_pixels=10_000).size == (100, 100)


def test_full_decode_limit_never_below_the_default_cap() -> None:
    # A small max_pixels (a model's input size) still takes ordinary photos, merely shrinking them more.
    assert pixel_limits(500_000) == (32_000_000, DEFAULT_MAX_PIXELS)
    data = encode(Image.new("RGB", (3000, 2000), GREEN), "PNG")  # 12 x max_pixels
    img = load_image_bytes(data, max_pixels=500_000)
    assert img.size == (750, 500) and close(img.getpixel((10, 10)), GREEN)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_wide_samples_are_shrunk_before_scaling(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scaling 32-bit samples takes several full-size temporaries; it must run on the shrunk image.
    scaled: list[tuple[int, int]] = []
    scale = images._wide_gray_to_l
    monkeypatch.setattr(images, "_wide_gray_to_l", lambda img: scaled.append(img.size) or scale(img))
    arr = np.zeros((100, 200), dtype=np.int32 if mode == "I" else np.float32)
    arr[:, 100:] = 1_000_000 if mode == "I" else 1.0
    img = load_image_bytes(encode(Image.fromarray(arr), "TIFF"), max_pixels=5_000)
    assert scaled == [(100, 50)] and img.size == (100, 50)
    assert (img.getpixel((10, 10)), img.getpixel((90, 10))) == ((0, 0, 0), WHITE)


# --- bytes ---------------------------------------------------------------------------------------------


def test_load_image_bytes_equivalents() -> None:
    data = encode(Image.new("RGB", (60, 80), BLUE), "JPEG")
    for payload in (data, bytearray(data), memoryview(data)):
        img = load_image_bytes(payload)
        assert_rgb(img)
        assert img.size == (60, 80)

    cases = {
        "empty": b"",
        "corrupt": b"definitely not an image" * 10,
        "truncated": encode(noise(64, 64), "JPEG")[:1500],
    }
    for reason, payload in cases.items():
        with pytest.raises(ImageLoadError) as info:
            load_image_bytes(payload, name="upload-7")
        assert (info.value.path, info.value.reason) == ("upload-7", reason)
        assert str(info.value).startswith(f"upload-7: {reason}")
    with pytest.raises(ImageLoadError, match=r"^<bytes>: corrupt"):
        load_image_bytes(b"\x00" * 64)


# --- PIL images ----------------------------------------------------------------------------------------


def test_opened_image_gets_the_pixels_of_its_file(tmp_path: Path) -> None:
    gray16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    sixteen = save(tmp_path, "g16.png", gray16, "PNG")
    rotated = tmp_path / "rot.jpg"
    rotated.write_bytes(with_orientation(noise(24, 16), 6))
    for path in (sixteen, rotated):
        with Image.open(path) as opened:
            got = load_image(opened)
            assert_rgb(got)
            assert got is not opened and opened.getexif() is not None  # the caller's image stays open
        expected = load_image(path)
        assert got.size == expected.size
        assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert load_image(Image.open(sixteen)).getpixel((2, 0)) == WHITE  # scaled, not clipped to white
    assert load_image(Image.open(rotated)).size == (16, 24)


def test_in_memory_image_is_normalised_and_left_alone() -> None:
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    rgba.info["note"] = "kept"
    img = load_image(rgba)
    assert_rgb(img)
    assert (img.getpixel((0, 0)), img.getpixel((1, 0))) == (WHITE, BLUE)
    assert rgba.mode == "RGBA" and rgba.info == {"note": "kept"} and rgba.getpixel((0, 0)) == (255, 0, 0, 0)

    rgb = Image.new("RGB", (300, 100), RED)
    assert load_image(rgb, max_pixels=10_000).size == (150, 50)  # shrunk, from a copy
    assert rgb.size == (300, 100)
    with pytest.raises(ImageLoadError) as info:
        load_image(rgb, max_pixels=100)
    assert (info.value.path, info.value.reason) == ("<image>", "decompression-bomb")


def test_opened_image_of_a_refused_format(tmp_path: Path) -> None:
    path = save(tmp_path, "a.ppm", Image.new("RGB", (4, 4)), "PPM")
    with pytest.raises(ImageLoadError) as info:
        load_image(Image.open(path))
    assert (info.value.path, info.value.reason) == (str(path), "corrupt")
    assert "PPM is not an accepted format" in info.value.detail


# --- errors --------------------------------------------------------------------------------------------


def test_image_load_error_shape() -> None:
    err = ImageLoadError("images/123.jpg", "truncated", "image file is truncated (3 bytes not processed)")
    assert str(err) == "images/123.jpg: truncated (image file is truncated (3 bytes not processed))"
    assert str(ImageLoadError("a.jpg", "empty")) == "a.jpg: empty"
    copy = pickle.loads(pickle.dumps(err))  # crosses process pools intact
    assert (copy.path, copy.reason, copy.detail, str(copy)) == (err.path, err.reason, err.detail, str(err))
    assert set(REASONS) == {
        "missing",
        "empty",
        "corrupt",
        "truncated",
        "decompression-bomb",
        "unsupported-mode",
        "unreadable",
    }


def test_error_records_round_trip(tmp_path: Path) -> None:
    errors = [
        ImageError.from_load_error("1", ImageLoadError("a.jpg", "missing", "No such file or directory")),
        ImageError(
            id="2", path="dir, with comma/b.png", reason="corrupt", detail='said "no"\nand a newline, é'
        ),
        ImageError(id="3", path="c.jpg", reason="truncated", detail=""),
    ]
    target = tmp_path / "out" / "errors.csv"
    write_errors(errors, target)
    assert read_errors(target) == errors
    assert target.read_text(encoding="utf-8").splitlines()[0] == "id,path,reason,detail"
    assert os.listdir(target.parent) == ["errors.csv"]  # no temp file left behind

    write_errors([], target)  # a clean rerun replaces the stale report
    assert read_errors(target) == []
    assert os.listdir(target.parent) == ["errors.csv"]


def test_write_errors_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "errors.csv"
    old = [ImageError("1", "a.jpg", "empty", "")]
    write_errors(old, target)

    def boom(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(images.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_errors([ImageError("2", "b.jpg", "corrupt", "x")], target)
    assert read_errors(target) == old
    assert os.listdir(tmp_path) == ["errors.csv"]


def test_read_errors_missing_and_foreign(tmp_path: Path) -> None:
    assert read_errors(tmp_path / "none.csv") == []
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing columns"):
        read_errors(other)


# --- hashing -------------------------------------------------------------------------------------------


def test_content_hash(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 256, 3 * 1024 * 1024 + 7, dtype=np.uint8).tobytes()
    a = tmp_path / "a.bin"
    b = tmp_path / "b.bin"
    a.write_bytes(data)
    b.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert content_hash(a) == content_hash(str(b)) == content_hash(data) == expected
    assert content_hash(data[:-1]) != expected
    assert content_hash(b"") == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ImageLoadError) as info:
        content_hash(tmp_path / "nope.bin")
    assert info.value.reason == "missing"
