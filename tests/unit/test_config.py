from pathlib import Path

import pytest

from taxonomist.config import ConfigError, RunConfig, load_config


def test_defaults_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig()
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_file_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 3\ncatalog:\n  attributes: [a, b]\n")
    cfg = load_config(
        tmp_path / "c.yaml",
        [
            "train.lr=1e-3",
            "heads.hidden=[64]",
            "catalog.limit=10",
            "catalog.schema=null",
            "backbone.size=160",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.heads.hidden == [64]
    assert cfg.catalog.attributes == ["a", "b"]
    assert cfg.catalog.limit == 10
    assert cfg.backbone.size == 160


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown config key"),
        ("train.epochs=three", "expected int"),
        ("missing_labels.policy=guess", "is not one of"),
        ("heads.hidden=5", "expected a list"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_with_data_dir_placeholder_stays_a_string() -> None:
    """``{data_dir}/…`` is not valid YAML; it used to crash the override parser."""
    cfg = load_config(None, ["catalog.path={data_dir}/x.csv", "catalog.categories=[a, b]"])
    assert cfg.catalog.path == "{data_dir}/x.csv"
    assert cfg.catalog.categories == ["a", "b"]
