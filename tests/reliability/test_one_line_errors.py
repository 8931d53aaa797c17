"""User-caused failures end as one ``error: …`` line with exit status 2, never a traceback: corrupt or
edited checkpoints, bad ports, serve limits that could never be met, a training set with no image."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from taxonomist.serve.batching import BatchTooLarge, MicroBatcher

from .conftest import Tiny, write_rows


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _predict(cli, ckpt: Path, tiny: Tiny, tmp_path: Path) -> tuple[int, str, str]:
    data = write_rows(tmp_path / "rows.csv", tiny.rows(2)[["sku", "type"]])
    args = ("-o", tmp_path / "out", "--data", data, "--images", tiny.images, "-q")
    return cli("predict", ckpt, *args)


def test_truncated_weights(cli, tiny: Tiny, tmp_path: Path) -> None:
    ckpt = tiny.copy_checkpoint(tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = _predict(cli, ckpt, tiny, tmp_path)
    assert code == 2
    assert _one_error_line(err).startswith(f"error: {weights}: not a readable safetensors file")


def test_checkpoint_json_that_is_not_json(cli, tiny: Tiny, tmp_path: Path) -> None:
    ckpt = tiny.copy_checkpoint(tmp_path / "ckpt")
    meta = ckpt / "taxonomist.json"
    meta.write_text(meta.read_text()[:-20])
    code, _, err = _predict(cli, ckpt, tiny, tmp_path)
    assert code == 2 and _one_error_line(err).startswith(f"error: {meta}: not valid JSON")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("categories"), "not a valid checkpoint description (no 'categories')"),
        (lambda m: m["backbone"].update(colour=True), "not a valid checkpoint description"),
        (lambda m: m.update(format_version=7), "format version 7 is not supported"),
    ],
)
def test_edited_checkpoint_json(cli, tiny: Tiny, tmp_path: Path, edit, message: str) -> None:
    ckpt = tiny.copy_checkpoint(tmp_path / "ckpt")
    meta_path = ckpt / "taxonomist.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    code, _, err = _predict(cli, ckpt, tiny, tmp_path)
    assert code == 2 and message in _one_error_line(err)


def test_weights_of_another_shape(cli, tiny: Tiny, tmp_path: Path) -> None:
    ckpt = tiny.copy_checkpoint(tmp_path / "ckpt")
    meta_path = ckpt / "taxonomist.json"
    meta = json.loads(meta_path.read_text())
    meta["heads"]["hidden"] = [8]
    meta_path.write_text(json.dumps(meta))
    code, _, err = _predict(cli, ckpt, tiny, tmp_path)
    assert code == 2 and "model.safetensors: does not fit taxonomist.json" in _one_error_line(err)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_allow_missing_image_on_a_model_without_the_fallback(
    cli, tiny: Tiny, tmp_path: Path, engine: str
) -> None:
    """Regression: the refusal was a traceback raised after the job folder was claimed, so the rerun
    without the setting then failed as a conflicting partial job; and the Ray engine ignored it."""
    data = write_rows(tmp_path / "rows.csv", tiny.rows(2)[["sku", "type"]])
    out = tmp_path / "out"
    args = ("predict", tiny.checkpoint, "-o", out, "--data", data, "--images", tiny.images, "-q")
    args += ("--engine", engine, "--num-actors", "1") if engine == "ray" else ()
    code, _, err = cli(*args, "--set", "predict.allow_missing_image=true")
    assert code == 2 and "this checkpoint never learned to predict without the image" in _one_error_line(err)
    assert not (out / "manifest.json").exists()
    if engine == "local":  # a corrected rerun into the same folder (the Ray one is tested beside Ray)
        code, _, err = cli(*args)
        assert code == 0, err


def test_train_with_no_readable_image_says_where_it_looked(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: ``torch.cat(): expected a non-empty list of Tensors``."""
    data = write_rows(tmp_path / "moved" / "catalog.csv", tiny.rows(8))
    code, _, err = cli("train", "-c", tiny.config, "--data", data, "-o", tmp_path / "run", "-q")
    assert code == 2
    line = _one_error_line(err)
    assert f"{data}: none of the 8 images could be read (missing: 8)" in line
    assert f"looked for as {data.parent}/images/{{id}}.jpg" in line and "--images" in line
    code, _, err = cli(
        "train", "-c", tiny.config, "--data", data, "--images", tiny.images, "-o", tmp_path / "run", "-q"
    )
    assert code == 0, err


def test_serve_refuses_a_port_out_of_range(cli, tiny: Tiny) -> None:
    code, _, err = cli("serve", tiny.checkpoint, "--port", "99999")
    assert code == 2 and "'--port': Input should be less than or equal to 65535" in _one_error_line(err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict"], "Missing argument 'checkpoint'"),
        (["train", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_are_one_line_naming_the_help(cli, args: list[str], message: str) -> None:
    """Regression: click's usage errors printed a multi-line box instead of the CLI's one ``error:`` line."""
    code, _, err = cli(*args)
    line = _one_error_line(err)
    assert code == 2 and message in line and f"see 'taxonomist {args[0]} --help'" in line


def test_serve_refuses_a_queue_smaller_than_one_request(cli, tiny: Tiny) -> None:
    """Regression: a 5-image request on --max-queue 4 was answered 503 "0 images already queued" for ever."""
    code, _, err = cli("serve", tiny.checkpoint, "--max-queue", "4", "--max-images", "5")
    assert code == 2
    assert "--max-queue (4) must be at least --max-images (5)" in " ".join(err.split())  # the flags typed


def test_a_submission_larger_than_the_queue_is_too_large_not_busy() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(lambda items: items, max_batch_size=2, max_queue=4)
        await batcher.start()
        try:
            with pytest.raises(BatchTooLarge, match="5 images in one request, over the queue limit of 4"):
                await batcher.submit([1, 2, 3, 4, 5])
            assert await batcher.submit([1, 2, 3, 4]) == [1, 2, 3, 4]
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_embed_of_a_catalog_with_a_repeated_id_is_one_line(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Training data must be unambiguous: a repeated id still refuses the file, in one line."""
    rows = tiny.rows(3)
    data = write_rows(tmp_path / "dup.csv", [*rows.to_dict("records"), rows.iloc[0].to_dict()])
    code, _, err = cli("embed", "-c", tiny.config, "--set", f"catalog.path={data}", "-q")
    assert code == 2 and _one_error_line(err) == f"error: {data}: 1 duplicated ids, e.g. ['1000']"
