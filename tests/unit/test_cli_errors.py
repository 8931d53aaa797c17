"""Bad settings and bad inputs end as one clear line naming the key, file or category, never a traceback
or a silently empty result."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from rich.console import Console
from typer.testing import CliRunner

from taxonomist.cli import main as cli_main
from taxonomist.cli.main import app, main
from taxonomist.cli.options import resolve_config
from taxonomist.config import CatalogConfig, ConfigError, RunConfig, TaxonomyConfig, VLMConfig, load_config
from taxonomist.data.catalog import CatalogError, read_generic
from taxonomist.data.prepare import load_catalog, load_for_prediction
from taxonomist.data.split import split_per_category
from taxonomist.io import ResumeError
from taxonomist.report.inspection import inspect_catalog

runner = CliRunner()


def _plain(output: str) -> str:
    """CLI output without the rich error box and its line breaks."""
    return " ".join(output.replace("│", " ").split())


# ---- ranges and types of settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("predict.chunk_size=0", "predict.chunk_size must be ≥ 1, got 0"),
        ("predict.chunk_size=-4", "predict.chunk_size must be ≥ 1, got -4"),
        ("predict.min_confidence=-0.5", r"predict.min_confidence must be in \[0, 1\], got -0.5"),
        ("predict.min_confidence=2", r"predict.min_confidence must be in \[0, 1\], got 2.0"),
        (
            "predict.min_confidence=.nan",
            r"predict.min_confidence must be a finite number in \[0, 1\], got nan",
        ),
        ("embed.batch_size=0", "embed.batch_size must be ≥ 1, got 0"),
        ("embed.num_workers=-1", "embed.num_workers must be ≥ 0, got -1"),
        ("train.epochs=0", "train.epochs must be ≥ 1, got 0"),
        ("train.dev_fraction=0", r"train.dev_fraction must be in \(0, 1\), got 0.0"),
        ("train.test_fraction=1", r"train.test_fraction must be in \[0, 1\), got 1.0"),
        ("train.lr=1e999", "train.lr must be a finite number > 0, got inf"),
        ("catalog.limit=0", "catalog.limit must be ≥ 1, got 0"),
        ("catalog.min_rows_per_category=-1", "catalog.min_rows_per_category must be ≥ 0, got -1"),
        ("self_training.threshold=1.5", r"self_training.threshold must be in \[0, 1\], got 1.5"),
    ],
)
def test_out_of_range_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("cls", "override", "message"),
    [
        (TaxonomyConfig, "predict.chunk_size=0", "predict.chunk_size must be ≥ 1, got 0"),
        (TaxonomyConfig, "train.dev_fraction=1.2", r"train.dev_fraction must be in \(0, 1\), got 1.2"),
        (VLMConfig, "generate.chunk_size=0", "generate.chunk_size must be ≥ 1, got 0"),
        (VLMConfig, "generate.top_p=0", r"generate.top_p must be in \(0, 1\], got 0.0"),
    ],
)
def test_other_configs_check_ranges_too(cls: type, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        load_config(None, [override], cls)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
        ("predict.min_confidence=high", "predict.min_confidence: expected a number, got 'high'"),
        ("predict.min_confidence=true", "predict.min_confidence: expected a number, got True"),
    ],
)
def test_a_word_for_a_number_says_a_number_was_expected(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        load_config(None, [override])


def test_edge_values_of_ranges_are_accepted() -> None:
    cfg = load_config(
        None,
        ["predict.chunk_size=1", "predict.min_confidence=0", "embed.num_workers=0", "catalog.limit=null"],
    )
    assert (cfg.predict.chunk_size, cfg.predict.min_confidence, cfg.embed.num_workers) == (1, 0.0, 0)
    assert cfg.catalog.limit is None


# ---- flag values and layered configs ---------------------------------------------------------------------


@pytest.mark.parametrize("placeholder", ["0", "yes", "null", "-", "?", "N/A #tbd", "[x]"])
def test_flag_values_are_set_as_typed_not_parsed_as_yaml(placeholder: str) -> None:
    cfg = resolve_config(
        None,
        None,
        **{"predict.placeholder": placeholder, "catalog.path": "hash #1/items.csv"},
    )
    assert cfg.predict.placeholder == placeholder
    assert cfg.catalog.path == "hash #1/items.csv"


def test_flag_values_are_still_checked() -> None:
    with pytest.raises(typer.BadParameter, match=r"predict\.min_confidence must be in \[0, 1\], got -1\.0"):
        resolve_config(None, None, **{"predict.min_confidence": -1.0})


def test_a_user_config_layers_on_the_saved_one(tmp_path: Path) -> None:
    saved, user = tmp_path / "saved.yaml", tmp_path / "user.yaml"
    base = RunConfig()
    base.catalog.id_column, base.catalog.attributes, base.predict.chunk_size = "sku", ["color"], 16
    base.save(saved)
    user.write_text("predict:\n  chunk_size: 7\ncatalog:\n  attributes: [fit]\n")
    cfg = load_config(user, ["predict.placeholder=n/a"], base=saved)
    assert cfg.catalog.id_column == "sku"  # the saved config's setting, which the user file leaves out
    assert cfg.catalog.attributes == ["fit"]  # replaced whole, not appended to
    assert (cfg.predict.chunk_size, cfg.predict.placeholder) == (7, "n/a")


def _fake_checkpoint(root: Path, **catalog: object) -> Path:
    """A folder holding only a saved config: enough for the config checks, which run before any model
    is loaded."""
    ckpt = root / "ckpt"
    ckpt.mkdir()
    cfg = RunConfig()
    for key, value in catalog.items():
        setattr(cfg.catalog, key, value)
    cfg.save(ckpt / "config.yaml")
    return ckpt


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Was "max_upload_bytes must be at least 1, got -1048576": a parameter and a unit never typed.
        (
            ["--max-upload-mb", "-1"],
            "'--max-upload-mb': Input should be at least one byte (1/1048576 MiB), got -1.0",
        ),
        (
            ["--max-upload-mb", "1e-7"],
            "'--max-upload-mb': Input should be at least one byte (1/1048576 MiB), got 1e-07",
        ),
        (["--max-upload-mb", "inf"], "'--max-upload-mb': Input should be a finite number, got inf"),
        (["--timeout", "nan"], "'--timeout': Input should be a finite number, got nan"),
        (["--max-wait-ms", "inf"], "'--max-wait-ms': Input should be a finite number, got inf"),
        (["--max-queue", "3", "--max-images", "5"], "--max-queue (3) must be at least --max-images (5)"),
    ],
)
def test_serve_limits_name_the_flag_and_the_value_typed(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["serve", str(tmp_path), *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and message in _plain(result.output), result.output
    assert "max_upload_bytes" not in result.output and "max_queue" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "predict.chunk_size=0"], "predict.chunk_size must be ≥ 1, got 0"),
        (["--set", "predict.chunk_size=-2"], "predict.chunk_size must be ≥ 1, got -2"),
        (["--min-confidence", "-0.1"], "predict.min_confidence must be in [0, 1], got -0.1"),
    ],
)
def test_predict_refuses_bad_settings_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    ckpt = _fake_checkpoint(tmp_path)
    result = runner.invoke(app, ["predict", str(ckpt), "-o", str(tmp_path / "out"), "-q", *args])
    assert result.exit_code == 2, result.output
    assert message in _plain(result.output)
    assert not (tmp_path / "out").exists()


def test_train_refuses_zero_epochs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), "--epochs", "0", "-q"])
    assert result.exit_code == 2
    assert "train.epochs must be ≥ 1, got 0" in _plain(result.output)
    assert not (tmp_path / "run").exists()


def test_missing_checkpoint_directory_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(tmp_path / "nope"), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2
    assert "no such checkpoint directory" in _plain(result.output)
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "empty"), "-q"])
    assert result.exit_code == 2
    assert "no config.yaml beside the checkpoint" in _plain(result.output)


# ---- catalogs --------------------------------------------------------------------------------------------


def _write(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def _styles(tmp_path: Path, **extra: list[str]) -> Path:
    frame = pd.DataFrame(
        {
            "sku": ["1", "2", "3", "4", "5"],
            "type": ["Tops", "Tops", "Bags", "Shoes", "Shoes"],
            "color": ["red", "blue", "red", None, "blue"],
            **extra,
        }
    )
    return _write(tmp_path / "styles.csv", frame)


def test_prediction_reads_every_row_whatever_the_training_filters(tmp_path: Path) -> None:
    path = _styles(tmp_path, title=["a", "b", "c", "d", "e"])
    training = CatalogConfig(
        path=str(path),
        id_column="sku",
        category_column="type",
        attributes=["color"],
        categories=["Tops"],
        min_rows_per_category=2,
        remaps={"Tops": {"color": "title"}},
        limit=1,
        text_column="title",
    )
    assert len(load_catalog(training)) == 1
    new = _write(tmp_path / "new.csv", pd.read_csv(path, dtype=str).drop(columns="title").iloc[2:])
    catalog = load_for_prediction(dataclasses.replace(training, path=str(new)))
    assert catalog.ids == ["3", "4", "5"]
    assert catalog.frame["category"].tolist() == ["Bags", "Shoes", "Shoes"]


@pytest.mark.parametrize("clash", ["category", "id", "text"])
def test_stray_columns_named_like_the_renamed_ones(tmp_path: Path, clash: str) -> None:
    path = _styles(tmp_path, **{clash: ["x"] * 5, "title": ["t"] * 5})
    cfg = CatalogConfig(
        path=str(path), id_column="sku", category_column="type", attributes=[], min_rows_per_category=0
    )
    catalog = load_for_prediction(dataclasses.replace(cfg, text_column="title"))
    assert catalog.ids == ["1", "2", "3", "4", "5"]
    assert catalog.frame["category"].tolist() == ["Tops", "Tops", "Bags", "Shoes", "Shoes"]
    text_column = "title" if clash == "text" else None
    with pytest.raises(CatalogError, match=f"an attribute column is named '{clash}'.*catalog.attributes"):
        read_generic(path, id_column="sku", category_column="type", text_column=text_column)
    with pytest.raises(CatalogError, match=f"an attribute column is named '{clash}'"):
        read_generic(
            path,
            id_column="sku",
            category_column="type",
            attributes=["color", clash],
            text_column=text_column,
        )


def test_every_category_below_min_rows_is_an_error_naming_them(tmp_path: Path) -> None:
    path = _styles(tmp_path)
    cfg = CatalogConfig(path=str(path), id_column="sku", category_column="type", attributes=["color"])
    with pytest.raises(CatalogError) as err:
        load_catalog(cfg)
    message = str(err.value)
    assert "every category has fewer than catalog.min_rows_per_category=500 rows" in message
    assert "Shoes: 2, Tops: 2, Bags: 1" in message
    assert "--set catalog.min_rows_per_category=1" in message


def test_many_small_categories_are_listed_up_to_a_limit(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [str(i) for i in range(30)], "category": [f"c{i:02d}" for i in range(30)]})
    path = _write(tmp_path / "many.csv", frame.assign(color="red"))
    with pytest.raises(CatalogError, match=r"c09: 1 … and 20 more categories\)"):
        read_generic(path, min_rows_per_category=2)


def test_inspect_names_the_categories_left_out(tmp_path: Path) -> None:
    path = _styles(tmp_path)
    cfg = CatalogConfig(
        path=str(path), id_column="sku", category_column="type", attributes=["color"], min_rows_per_category=2
    )
    catalog = load_catalog(cfg)
    assert catalog.dropped_categories == {"Bags": 1}
    assert catalog.subset([0]).dropped_categories == {"Bags": 1}
    report = inspect_catalog(catalog, check_images=False, progress=False)
    assert report.to_dict()["dropped_categories"] == {"Bags": 1}
    console = Console(record=True, width=200)
    report.print(console)
    assert "left out 1 category with fewer than catalog.min_rows_per_category=2 rows: Bags: 1" in (
        console.export_text()
    )


def test_split_of_no_rows_is_a_catalog_error() -> None:
    with pytest.raises(CatalogError, match="no rows to split"):
        split_per_category(pd.DataFrame({"id": [], "category": []}), 0.1)


# ---- one line instead of a traceback -------------------------------------------------------------------


def _duplicate_ids_config(tmp_path: Path) -> Path:
    rows = pd.DataFrame({"sku": ["1", "1"], "type": ["Tops", "Tops"], "color": ["red", "blue"]})
    path = _write(tmp_path / "dup.csv", rows)
    config = tmp_path / "config.yaml"
    catalog = {
        "path": str(path),
        "id_column": "sku",
        "category_column": "type",
        "attributes": ["color"],
        "min_rows_per_category": 0,
    }
    config.write_text(yaml.safe_dump({"catalog": catalog}))
    return config


def test_user_input_errors_end_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _duplicate_ids_config(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["embed", "-c", str(config), "-q"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'dup.csv'}: 1 duplicated ids, e.g. ['1']\n"


def test_every_user_error_class_is_handled(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def resume_conflict(args: list[str] | None = None, **_: object) -> None:
        raise ResumeError("out holds a partial run with other input or settings")

    monkeypatch.setattr(cli_main, "app", resume_conflict)
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: out holds a partial run with other input or settings\n"
    names = {cls.__name__ for cls in cli_main.user_errors()}
    assert {
        "ConfigError",
        "CatalogError",
        "SchemaError",
        "CheckpointError",
        "ResumeError",
        "TaxonomyCheckpointError",
        "ImageLoadError",
        "FileNotFoundError",
        "NotADirectoryError",
    } <= names


def test_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(args: list[str] | None = None, **_: object) -> None:
        raise KeyError("a real bug")

    monkeypatch.setattr(cli_main, "app", bug)
    with pytest.raises(KeyError, match="a real bug"):
        main([])


def test_python_dash_m_goes_through_the_same_handler(tmp_path: Path) -> None:
    config = _duplicate_ids_config(tmp_path)
    cmd = [sys.executable, "-m", "taxonomist.cli", "embed", "-c", str(config), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'dup.csv'}: 1 duplicated ids, e.g. ['1']"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("value", ["30s", "0"])
def test_a_bad_progress_interval_is_one_line_naming_the_variable(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: TAXONOMIST_PROGRESS_INTERVAL=30s ended a job, once its first loop began, in a traceback
    ("could not convert string to float: '30s'") that did not name the variable."""
    from taxonomist.progress import progress_bar

    def command_with_a_loop(args: list[str] | None = None, **_: object) -> None:
        with progress_bar("row", console=Console(file=None, force_terminal=False)):
            pass

    monkeypatch.setenv("TAXONOMIST_PROGRESS_INTERVAL", value)
    monkeypatch.setattr(cli_main, "app", command_with_a_loop)
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    expected = repr(value) if value == "30s" else float(value)
    assert capsys.readouterr().err == (
        f"error: TAXONOMIST_PROGRESS_INTERVAL must be a positive number of seconds, got {expected}\n"
    )
