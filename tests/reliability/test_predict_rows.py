"""``predict``: every row is predicted or is a row of errors.csv with its line and reason; the job goes
on past bad rows and fails loudly (exit 2, one line) when most rows fail."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from taxonomist import io

from .conftest import Tiny, predicted_ids, read_errors, write_rows


def _predict(cli, tiny: Tiny, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli("predict", tiny.checkpoint, "-o", out, "--data", data, "--images", tiny.images, "-q", *extra)


def test_a_repeated_id_is_reported_and_the_rest_predicted(cli, tiny: Tiny, tmp_path: Path) -> None:
    rows = tiny.rows(6)[["sku", "type"]]
    rows = pd.concat([rows, rows.iloc[[1]]], ignore_index=True)  # line 8 repeats line 3's id
    data = write_rows(tmp_path / "dup.csv", rows)
    code, _, err = _predict(cli, tiny, data, tmp_path / "out")
    assert code == 0, err
    assert predicted_ids(tmp_path / "out") == rows["sku"].iloc[:6].tolist()
    errors = read_errors(tmp_path / "out")
    assert errors[["id", "line", "reason"]].values.tolist() == [["1001", "8", "duplicate-id"]]
    assert "also on line 3" in errors["detail"].iat[0]


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [("sku", "", "blank-id"), ("sku", "   ", "blank-id"), ("type", "", "blank-category")],
)
def test_a_blank_id_or_category_is_a_row_error(
    cli, tiny: Tiny, tmp_path: Path, column: str, value: str, reason: str
) -> None:
    rows = tiny.rows(5)[["sku", "type"]]
    rows.loc[2, column] = value  # line 4
    data = write_rows(tmp_path / "blank.csv", rows)
    code, _, err = _predict(cli, tiny, data, tmp_path / "out")
    assert code == 0, err
    assert predicted_ids(tmp_path / "out") == rows["sku"].drop(index=2).tolist()
    errors = read_errors(tmp_path / "out")
    assert errors[["line", "reason"]].values.tolist() == [["4", reason]]


def test_an_id_the_image_template_cannot_take_is_a_row_error(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: one id such as SKU-7 under a ``{id:04d}`` template ended the whole job in a traceback."""
    rows = tiny.rows(5)[["sku", "type"]]
    rows.loc[2, "sku"] = "SKU-7"  # line 4
    rows.loc[3, "sku"] = "1003.0"  # line 5: Excel's float
    data = write_rows(tmp_path / "rows.csv", rows)
    template = "--set", "catalog.image_template=images/{id:04d}.jpg"
    code, _, err = _predict(
        cli, tiny, data, tmp_path / "out", *template, "--set", "predict.max_error_share=1"
    )
    assert code == 0, err
    assert predicted_ids(tmp_path / "out") == rows["sku"].iloc[[0, 1, 4]].tolist()
    errors = read_errors(tmp_path / "out")
    assert errors[["id", "line", "reason", "detail"]].values.tolist() == [
        [
            "SKU-7",
            "4",
            "bad-id",
            "id 'SKU-7' is not a whole number, which {id:04d} needs (image_template 'images/{id:04d}.jpg')",
        ],
        [
            "1003.0",
            "5",
            "bad-id",
            "id '1003.0' is not a whole number, which {id:04d} needs (image_template 'images/{id:04d}.jpg')",
        ],
    ]


def test_unknown_category_and_bad_image_rows_carry_their_line(cli, tiny: Tiny, tmp_path: Path) -> None:
    rows = tiny.rows(6)[["sku", "type"]]
    rows.loc[1, "type"] = "Shoes"  # line 3
    rows.loc[4, "sku"] = "no-such-image"  # line 6
    data = write_rows(tmp_path / "rows.csv", rows)
    code, _, err = _predict(cli, tiny, data, tmp_path / "out")
    assert code == 0, err
    errors = read_errors(tmp_path / "out")
    assert errors[["id", "line", "reason"]].values.tolist() == [
        [rows.at[1, "sku"], "3", "unknown-category"],
        ["no-such-image", "6", "missing"],
    ]
    assert predicted_ids(tmp_path / "out") == rows["sku"].drop(index=[1, 4]).tolist()


def test_every_row_failing_exits_2_in_one_line_naming_where_images_were_looked_for(
    cli, tiny: Tiny, tmp_path: Path
) -> None:
    """Regression (issue 19): 300 of 300 images not found exited 0 and reported a throughput."""
    data = write_rows(tmp_path / "elsewhere" / "rows.csv", tiny.rows(5)[["sku", "type"]])
    out = tmp_path / "out"
    code, _, err = cli("predict", tiny.checkpoint, "-o", out, "--data", data, "-q")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("error: 5 of 5 rows failed (missing: 5), every row; see ")
    assert f"looked for as {data.parent}/images/{{id}}.jpg" in line and "--images" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == 0 and summary["images_per_s"] is None
    assert read_errors(out)["reason"].tolist() == ["missing"] * 5


def test_more_than_the_allowed_share_failing_exits_2(cli, tiny: Tiny, tmp_path: Path) -> None:
    rows = tiny.rows(4)[["sku", "type"]]
    rows.loc[[0, 1, 2], "sku"] = ["gone-1", "gone-2", "gone-3"]
    data = write_rows(tmp_path / "rows.csv", rows)
    code, _, err = _predict(cli, tiny, data, tmp_path / "out")
    assert code == 2 and "3 of 4 rows failed (missing: 3), more than 50% of the rows" in err
    assert predicted_ids(tmp_path / "out") == [rows.at[3, "sku"]]  # outputs are still written
    code, _, err = _predict(cli, tiny, data, tmp_path / "out2", "--set", "predict.max_error_share=0.8")
    assert code == 0, err


def test_images_flag_finds_images_of_a_catalog_kept_elsewhere(cli, tiny: Tiny, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "elsewhere" / "rows.csv", tiny.rows(4)[["sku", "type"]])
    code, _, err = _predict(cli, tiny, data, tmp_path / "out")
    assert code == 0, err
    assert predicted_ids(tmp_path / "out") == tiny.rows(4)["sku"].tolist()
    assert read_errors(tmp_path / "out").empty


def test_parquet_float_ids_are_read_as_integers(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: ids stored as floats (an integer column with a gap) became 1000.0 → missing image."""
    rows = tiny.rows(4)[["sku", "type"]]
    ids = [*rows["sku"].astype(float).tolist(), np.nan]
    frame = pd.DataFrame({"sku": ids, "type": [*rows["type"], "Tops"]})
    assert frame["sku"].dtype == np.float64
    data = write_rows(tmp_path / "rows.parquet", frame)
    code, _, err = _predict(cli, tiny, data, tmp_path / "out")
    assert code == 0, err
    assert predicted_ids(tmp_path / "out") == rows["sku"].tolist()
    errors = read_errors(tmp_path / "out")
    assert errors[["line", "reason"]].values.tolist() == [["5", "blank-id"]]  # Parquet: row number


def test_latin1_catalog_reads_with_the_encoding_setting(cli, tiny: Tiny, tmp_path: Path) -> None:
    rows = tiny.rows(3)[["sku", "type"]].assign(note="Café crème")
    data = tmp_path / "latin1.csv"
    data.write_bytes(rows.to_csv(index=False).encode("latin-1"))
    code, _, err = _predict(cli, tiny, data, tmp_path / "bad")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {data}: not valid utf-8 text") and "catalog.encoding=latin-1" in line
    code, _, err = _predict(cli, tiny, data, tmp_path / "out", "--set", "catalog.encoding=latin-1")
    assert code == 0, err
    assert predicted_ids(tmp_path / "out") == rows["sku"].tolist()


def test_an_unknown_encoding_is_one_line(cli, tiny: Tiny, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "rows.csv", tiny.rows(2)[["sku", "type"]])
    code, _, err = _predict(cli, tiny, data, tmp_path / "out", "--set", "catalog.encoding=klingon")
    assert code == 2 and err.strip().splitlines() == ["error: catalog.encoding: unknown encoding: klingon"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_as_an_image_is_a_row_error_not_a_hang(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: hashing opened the FIFO and waited for a writer for ever."""
    rows = tiny.rows(4)[["sku", "type"]]
    tiny.image_folder(
        tmp_path / "images", rows["sku"], fifos=[rows.at[1, "sku"]], dev_zero=[rows.at[2, "sku"]]
    )
    data = write_rows(tmp_path / "rows.csv", rows)
    code, _, err = cli("predict", tiny.checkpoint, "-o", tmp_path / "out", "--data", data, "-q")
    assert code == 0, err
    errors = read_errors(tmp_path / "out")
    assert errors[["line", "reason", "detail"]].values.tolist() == [
        ["3", "unreadable", "not a regular file"],
        ["4", "unreadable", "not a regular file"],
    ]
    assert predicted_ids(tmp_path / "out") == rows["sku"].iloc[[0, 3]].tolist()


def test_min_confidence_above_one_is_refused_before_any_work(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: --min-confidence 2 was accepted and blanked every attribute."""
    code, _, err = cli("predict", tiny.checkpoint, "-o", tmp_path / "out", "--min-confidence", "2", "-q")
    assert code == 2 and "predict.min_confidence must be in [0, 1], got 2.0" in " ".join(err.split())
    assert not (tmp_path / "out").exists()


def test_a_rerun_after_the_images_were_fixed_recovers_their_rows(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: after the missing images were copied in, the same command served the old "missing"
    rows from the finished chunks again. Only rows whose image failed are retried: a row of an unknown
    category or a blank one stays an error."""
    rows = tiny.rows(7)[["sku", "type"]]
    rows.loc[3, "type"] = "Shoes"  # line 5: unknown-category, its image there
    rows.loc[6, "type"] = ""  # line 8: blank-category, its image there
    missing = rows["sku"].iloc[[1, 2, 4]].tolist()  # lines 3, 4 and 6; line 6 stays missing
    (tmp_path / "photos").mkdir()
    images = tiny.image_folder(tmp_path / "photos" / "images", rows["sku"].drop(index=[1, 2, 4]))
    data = write_rows(tmp_path / "rows.csv", rows)
    out = tmp_path / "out"
    args = ("predict", tiny.checkpoint, "-o", out, "--data", data, "--images", images.parent, "-q")
    chunks = ("--set", "predict.chunk_size=2")
    code, _, err = cli(*args, *chunks)
    assert code == 2 and "tried again" not in err
    reasons = ["missing", "missing", "unknown-category", "missing", "blank-category"]
    assert read_errors(out)["reason"].tolist() == reasons
    for sku in missing[:2]:
        os.symlink(tiny.images / "images" / f"{sku}.jpg", images / f"{sku}.jpg")
    code, _, err = cli(*args, *chunks)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["resumed_chunks"], summary["retried_rows"], summary["recovered_rows"]) == (3, 3, 2)
    assert predicted_ids(out) == rows["sku"].iloc[[0, 1, 2, 5]].tolist()  # input order, each once
    errors = read_errors(out)
    assert errors[["id", "line", "reason"]].values.tolist() == [
        [rows.at[3, "sku"], "5", "unknown-category"],
        [missing[2], "6", "missing"],
        [rows.at[6, "sku"], "8", "blank-category"],
    ]
    # The same outputs as a fresh run with the images there.
    code, _, err = cli(*args[:3], tmp_path / "fresh", *args[4:], *chunks)
    assert code == 0, err
    for name in ("predictions.csv", "errors.csv"):
        fresh = pd.read_csv(tmp_path / "fresh" / name, dtype=str, keep_default_na=False)
        pd.testing.assert_frame_equal(pd.read_csv(out / name, dtype=str, keep_default_na=False), fresh)
    long, fresh = (
        pd.read_csv(d / "predictions_long.csv", dtype={"id": str}) for d in (out, tmp_path / "fresh")
    )
    assert not long.duplicated(["id", "attribute"]).any()
    pd.testing.assert_frame_equal(long.drop(columns="top"), fresh.drop(columns="top"), atol=1e-5)
    # The image still missing is retried on every rerun, and still reported.
    assert cli(*args, *chunks)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["retried_rows"], summary["recovered_rows"], summary["errors"]) == (1, 0, 3)
    assert read_errors(out)["id"].tolist() == errors["id"].tolist()


def test_a_recovered_row_counts_though_a_set_aside_row_shares_its_id(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: recovered_rows subtracted every errors.csv id, the reader's set-aside rows included,
    so a recovered row whose id a later duplicate line repeats counted as still failing."""
    rows = tiny.rows(4)[["sku", "type"]]
    rows = pd.concat([rows, rows.iloc[[1]]], ignore_index=True)  # line 6 repeats line 3's id
    (tmp_path / "photos").mkdir()
    images = tiny.image_folder(tmp_path / "photos" / "images", rows["sku"].iloc[[0, 2, 3]])
    data = write_rows(tmp_path / "rows.csv", rows)
    out = tmp_path / "out"
    args = ("predict", tiny.checkpoint, "-o", out, "--data", data, "--images", images.parent, "-q")
    assert cli(*args)[0] == 0
    os.symlink(tiny.images / "images" / f"{rows.at[1, 'sku']}.jpg", images / f"{rows.at[1, 'sku']}.jpg")
    code, _, err = cli(*args)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["retried_rows"], summary["recovered_rows"]) == (1, 1)
    assert predicted_ids(out) == rows["sku"].iloc[:4].tolist()
    assert read_errors(out)[["line", "reason"]].values.tolist() == [["6", "duplicate-id"]]


def test_a_failing_rerun_says_the_rows_whose_image_failed_were_tried_again(
    cli, tiny: Tiny, tmp_path: Path
) -> None:
    rows = tiny.rows(3)[["sku", "type"]]
    (tmp_path / "photos").mkdir()
    images = tiny.image_folder(tmp_path / "photos" / "images", [])
    data = write_rows(tmp_path / "rows.csv", rows)
    out = tmp_path / "out"
    args = ("predict", tiny.checkpoint, "-o", out, "--data", data, "--images", images.parent, "-q")
    code, _, err = cli(*args)
    assert code == 2 and "tried again" not in err
    sku = rows.at[0, "sku"]
    os.symlink(tiny.images / "images" / f"{sku}.jpg", images / f"{sku}.jpg")
    code, _, err = cli(*args)
    assert code == 2
    [line] = err.strip().splitlines()
    assert "2 of 3 rows failed (missing: 2)" in line
    assert "; 3 rows whose image had failed in an earlier run were tried again (1 recovered)" in line
    assert "not tried again" not in line and "rm -r" not in line
    assert predicted_ids(out) == [sku]


def test_an_output_path_that_is_a_file_is_one_line(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: ``-o`` naming an existing file ended in a FileExistsError traceback."""
    data = write_rows(tmp_path / "a.csv", tiny.rows(2)[["sku", "type"]])
    out = tmp_path / "out.csv"
    out.write_text("keep me")
    code, _, err = _predict(cli, tiny, data, out)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("error: Invalid value for '--output'") and f"'{out}' is a file" in line
    assert out.read_text() == "keep me"


def test_rerun_into_a_finished_job_of_other_rows_says_so(cli, tiny: Tiny, tmp_path: Path) -> None:
    first = write_rows(tmp_path / "a.csv", tiny.rows(3)[["sku", "type"]])
    second = write_rows(tmp_path / "b.csv", tiny.rows(5)[["sku", "type"]])
    out = tmp_path / "out"
    assert _predict(cli, tiny, first, out)[0] == 0
    code, _, err = _predict(cli, tiny, second, out)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line == (
        f"error: {out} holds a finished job with rows 3 then, 5 now, other input rows; to start afresh, "
        f"delete it (rm -r {out}) and run the command again, or pass another --output"
    )
    # Regression: the refused rerun had already replaced input.json, which `review OUT` reads.
    assert json.loads((out / "input.json").read_text())["catalog"]["path"] == str(first.resolve())


def test_rerun_into_a_partial_job_says_it_is_partial(cli, tiny: Tiny, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "a.csv", tiny.rows(4)[["sku", "type"]])
    out = tmp_path / "out"
    assert _predict(cli, tiny, data, out, "--set", "predict.chunk_size=2")[0] == 0
    (out / "parts" / "done-00001.parquet").unlink()  # as if killed during the second chunk
    code, _, err = _predict(cli, tiny, data, out, "--set", "predict.chunk_size=2", "--placeholder", "?")
    assert code == 2
    assert f"{out} holds a partial job (not finished) with placeholder '' then, '?' now" in err
    assert "{" not in err  # no manifest dicts
    code, _, err = _predict(cli, tiny, data, out, "--set", "predict.chunk_size=2")
    assert code == 0, err  # the same job resumes
    assert predicted_ids(out) == tiny.rows(4)["sku"].tolist()


@pytest.mark.timeout(300)
def test_ray_engine_lists_set_aside_rows_with_lines_too(cli, tiny: Tiny, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    rows = tiny.rows(5)[["sku", "type"]]
    rows = pd.concat([rows, rows.iloc[[0]]], ignore_index=True)  # line 7 repeats line 2
    rows.loc[2, "sku"] = "no-such-image"  # line 4
    data = write_rows(tmp_path / "rows.csv", rows)
    code, _, err = _predict(cli, tiny, data, tmp_path / "out", "--engine", "ray", "--num-actors", "1")
    assert code == 0, err
    errors = read_errors(tmp_path / "out")
    assert errors[["id", "line", "reason"]].values.tolist() == [
        ["no-such-image", "4", "missing"],
        [rows.at[0, "sku"], "7", "duplicate-id"],
    ]


def test_ray_engine_summary_json_counts_the_set_aside_rows_as_the_local_one_does(
    cli, tiny: Tiny, tmp_path: Path
) -> None:
    """Regression: the Ray job's summary.json counted the rows its shards saw only (6 rows, 1 error, no
    reasons) while its errors.csv and the printed summary had the rows the reader set aside too."""
    pytest.importorskip("ray")
    rows = tiny.rows(6)[["sku", "type"]]
    rows = pd.concat([rows, rows.iloc[[0]]], ignore_index=True)  # line 8 repeats line 2
    rows.loc[3, "type"] = ""  # line 5
    rows.loc[2, "sku"] = "no-such-image"  # line 4
    data = write_rows(tmp_path / "rows.csv", rows)
    summaries = {}
    for engine in ("local", "ray"):
        code, _, err = _predict(cli, tiny, data, tmp_path / engine, "--engine", engine, "--num-actors", "1")
        assert code == 0, err
        summary = json.loads((tmp_path / engine / "summary.json").read_text())
        summaries[engine] = {k: summary[k] for k in ("rows", "predicted", "errors", "error_reasons")}
    reasons = {"missing": 1, "blank-category": 1, "duplicate-id": 1}
    expected = {"rows": 7, "predicted": 4, "errors": 3, "error_reasons": reasons}
    assert summaries["ray"] == summaries["local"] == expected


def test_a_category_in_another_case_is_named_with_its_match(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Categories match exactly, but surrounding whitespace folds and a case slip gets a hint."""
    rows = tiny.rows(4)[["sku", "type"]]
    known = rows.loc[0, "type"]
    rows.loc[0, "type"] = f" {known}  "  # line 2: predicted
    rows.loc[1, "type"] = known.upper()  # line 3: an error naming the match
    data = write_rows(tmp_path / "rows.csv", rows)
    code, _, err = _predict(cli, tiny, data, tmp_path / "out")
    assert code == 0, err
    assert predicted_ids(tmp_path / "out") == rows["sku"].drop(index=1).tolist()
    [detail] = read_errors(tmp_path / "out")["detail"]
    assert detail.endswith(f"; did you mean {known!r}?")


def test_a_row_with_an_unquoted_comma_is_an_errors_row(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: pandas' "Expected 2 fields in line 3, saw 4" refused the whole file."""
    rows = tiny.rows(4)[["sku", "type"]]
    lines = ["sku,type", *(f"{s},{t}" for s, t in rows.itertuples(index=False))]
    lines[2] += ",stray, text"  # line 3
    data = tmp_path / "rows.csv"
    data.write_text("\n".join(lines) + "\n")
    code, _, err = _predict(cli, tiny, data, tmp_path / "out")
    assert code == 0, err
    assert predicted_ids(tmp_path / "out") == rows["sku"].drop(index=1).tolist()
    errors = read_errors(tmp_path / "out")
    assert errors[["line", "reason", "detail"]].values.tolist() == [
        ["3", "malformed-row", "4 fields, the header has 2"]
    ]


class Killed(BaseException):
    """A kill at one write, raised past every handler as SIGKILL would end the process."""


def test_a_rerun_killed_while_it_retries_leaves_a_folder_the_next_run_finishes(
    cli, tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = tiny.rows(4)[["sku", "type"]]
    (tmp_path / "photos").mkdir()
    images = tiny.image_folder(tmp_path / "photos" / "images", rows["sku"].iloc[[0, 3]])
    data = write_rows(tmp_path / "rows.csv", rows)
    out = tmp_path / "out"
    args = ("predict", tiny.checkpoint, "-o", out, "--data", data, "--images", images.parent, "-q")
    args += ("--set", "predict.chunk_size=2")
    assert cli(*args)[0] == 0  # 2 of 4 missing: the allowed share
    for sku in rows["sku"].iloc[[1, 2]]:
        os.symlink(tiny.images / "images" / f"{sku}.jpg", images / f"{sku}.jpg")
    write = io.atomic_write_frame

    def killed_at_errors(frame: pd.DataFrame, path: Path) -> None:
        if Path(path).name.startswith("errors-"):
            raise Killed
        write(frame, path)

    monkeypatch.setattr(io, "atomic_write_frame", killed_at_errors)
    with pytest.raises(Killed):  # the first chunk's predictions rewritten, its errors not yet
        cli(*args)
    monkeypatch.undo()
    parts, sku = out / "parts", rows.at[1, "sku"]
    assert sku in set(pd.read_parquet(parts / "meesho-00000.parquet")["id"])
    assert sku in set(pd.read_parquet(parts / "errors-00000.parquet")["id"])
    assert cli(*args)[0] == 0
    assert predicted_ids(out) == rows["sku"].tolist() and read_errors(out).empty
    long = pd.read_csv(out / "predictions_long.csv", dtype={"id": str})
    assert not long.duplicated(["id", "attribute"]).any()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["retried_rows"], summary["recovered_rows"]) == (2, 2)


@pytest.mark.timeout(300)
def test_ray_engine_retries_the_rows_whose_images_were_fixed(cli, tiny: Tiny, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from taxonomist.inference.ray_engine import read_ray_output

    rows = tiny.rows(5)[["sku", "type"]]
    rows.loc[3, "type"] = "Shoes"  # line 5: unknown-category, not retried
    (tmp_path / "photos").mkdir()
    images = tiny.image_folder(tmp_path / "photos" / "images", rows["sku"].drop(index=[1, 2]))
    data = write_rows(tmp_path / "rows.csv", rows)
    out = tmp_path / "out"
    args = ("predict", tiny.checkpoint, "-o", out, "--data", data, "--images", images.parent, "-q")
    args += ("--engine", "ray", "--num-actors", "1", "--set", "predict.chunk_size=2")
    assert cli(*args)[0] == 2  # 3 of 5 failed
    sku = rows.at[1, "sku"]
    os.symlink(tiny.images / "images" / f"{sku}.jpg", images / f"{sku}.jpg")
    code, _, err = cli(*args)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["resumed_chunks"], summary["retried_rows"], summary["recovered_rows"]) == (3, 2, 1)
    long = read_ray_output(out)
    assert not long.duplicated(["id", "attribute"]).any()
    assert list(dict.fromkeys(long["id"])) == rows["sku"].iloc[[0, 1, 4]].tolist()
    assert read_errors(out)[["id", "line", "reason"]].values.tolist() == [
        [rows.at[2, "sku"], "4", "missing"],
        [rows.at[3, "sku"], "5", "unknown-category"],
    ]


def test_meesho_layout_keeps_each_attribute_in_its_declared_column(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: Tops declares [color, neck, fit] and no training row labels neck, so the model leaves
    it out; predictions.csv wrote fit in attr_2 (neck's column) and len 2, misaligning a submission."""
    root = tmp_path / "meesho"
    (root / "train_images").mkdir(parents=True)
    rows = []
    for k, r in enumerate(tiny.rows(40).itertuples()):
        os.symlink(tiny.images / "images" / f"{r.sku}.jpg", root / "train_images" / f"{k:06d}.jpg")
        labels = [r.color, None, r.fit] if r.type == "Tops" else [r.color]
        rows.append(
            {
                "id": k,
                "Category": r.type,
                "len": len(labels),
                **{f"attr_{i + 1}": v for i, v in enumerate(labels)},
            }
        )
    frame = pd.DataFrame(rows).reindex(
        columns=["id", "Category", "len", *[f"attr_{k}" for k in range(1, 11)]]
    )
    frame.to_csv(root / "train.csv", index=False)
    pd.DataFrame(
        {"Category": ["Tops", "Bags"], "Attribute_list": [["color", "neck", "fit"], ["color"]]}
    ).to_parquet(root / "category_attributes.parquet")
    config = yaml.safe_load(tiny.config.read_text())
    config["catalog"] = {"path": str(root), "layout": "meesho", "min_rows_per_category": 0}
    config["missing_labels"] = {"policy": "mask"}
    (tmp_path / "meesho.yaml").write_text(yaml.safe_dump(config))
    code, _, err = cli("train", "-c", tmp_path / "meesho.yaml", "-o", tmp_path / "ckpt", "-q")
    assert code == 0, err
    assert "neck" not in json.loads((tmp_path / "ckpt" / "schema.json").read_text())["categories"]["Tops"]
    code, _, err = cli(
        "predict", tmp_path / "ckpt", "-o", tmp_path / "out", "--data", root / "train.csv", "-q"
    )
    assert code == 0, err
    predicted = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str, keep_default_na=False)
    long = pd.read_csv(tmp_path / "out" / "predictions_long.csv", dtype=str, keep_default_na=False)
    fit = long[long["attribute"] == "fit"].set_index("id")["value"]
    tops = predicted[predicted["Category"] == "Tops"].set_index("id")
    assert (tops["len"] == "3").all() and (tops["attr_2"] == "").all()
    assert tops["attr_3"].to_dict() == fit.to_dict()
