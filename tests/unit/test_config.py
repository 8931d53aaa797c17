from pathlib import Path

import pytest

from taxonomist.config import ConfigError, RunConfig, TaxonomyConfig, load_config


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
        # -1 was documented as "tuned on validation" but added the log prior, favouring majority values.
        ("train.class_balance=-1", r"train.class_balance must be ≥ 0, got -1"),
        ("finetune.hue=0.7", r"finetune.hue must be in \[0, 0.5\]"),
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


def test_taxonomy_method_names_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="'knn' is not one of"):
        load_config(None, ["predict.method=knn"], cls=TaxonomyConfig)
    with pytest.raises(ConfigError, match=r"train.methods\[1\]: 'svm' is not one of"):
        load_config(None, ["train.methods=[heads, svm]"], cls=TaxonomyConfig)
    assert load_config(None, ["predict.method=lexical"], cls=TaxonomyConfig).predict.method == "lexical"


def test_section_arguments_map_a_section_onto_a_signature_by_name() -> None:
    from taxonomist.config import GenerateConfig, section_arguments
    from taxonomist.models.vlm import Decoding

    def reader(path: str, *, limit: int | None = None, seed: int = 0, other: str = "x") -> None: ...

    cfg = load_config(values={"catalog.path": "a.csv", "catalog.limit": 7})
    # Only the section's fields the target takes; the given ones win; the rest keep their defaults.
    assert section_arguments(cfg.catalog, reader, seed=3) == {"path": "a.csv", "limit": 7, "seed": 3}
    decoding = Decoding(**section_arguments(GenerateConfig(top_p=0.5), Decoding))
    assert decoding.top_p == 0.5 and decoding.chunk_size == GenerateConfig().chunk_size


def test_choices_spelled_like_yaml_booleans_are_read_as_written(tmp_path: Path) -> None:
    """Regression: YAML 1.1 reads on/off/no as booleans, so the documented ``predict.leaf_templates: off``
    and ``finetune.mixed_precision: no`` were refused from --set and from a file alike."""
    for value in ("on", "off", "dev"):
        cfg = load_config(None, [f"predict.leaf_templates={value}"], cls=TaxonomyConfig)
        assert cfg.predict.leaf_templates == value
    (tmp_path / "c.yaml").write_text("predict:\n  leaf_templates: off\n")
    assert load_config(tmp_path / "c.yaml", cls=TaxonomyConfig).predict.leaf_templates == "off"
    assert load_config(None, ["finetune.mixed_precision=no"]).finetune.mixed_precision == "no"
    with pytest.raises(ConfigError, match=r"True is not one of \['concat', 'gated'\]"):
        load_config(None, ["text.fusion=yes"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("heads.hidden=[0]", r"heads.hidden\[0\] must be ≥ 1, got 0"),
        ("heads.hidden=[32, -4]", r"heads.hidden\[1\] must be ≥ 1"),
        ("heads.inputs=[]", r"heads.inputs must be \[image\] or \[image, text\]"),
        ("heads.inputs=[text]", r"heads.inputs must be \[image\] or \[image, text\]"),
        ("heads.inputs=[image, image]", r"heads.inputs must be \[image\] or \[image, text\]"),
    ],
)
def test_heads_that_would_train_something_else_are_refused(override: str, message: str) -> None:
    """Regression: hidden [0] trained heads that ignore their input (dev 0.50 against 0.86), a negative
    width failed deep inside torch, inputs [] trained image heads and [text] still read the images."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    assert load_config(None, ["heads.inputs=[text, image]"]).heads.inputs == ["text", "image"]


def test_a_text_column_named_twice_is_refused() -> None:
    """Regression: the catalog read ``[title, title]`` once while the checkpoint recorded the column
    twice, so predict joined "title | title" and serve refused to start."""
    with pytest.raises(ConfigError, match=r"catalog.text_columns names \['title'\] more than once"):
        load_config(values={"catalog.text_columns": ["title", "description", "title"]})


def test_numbers_without_a_dot_are_numbers_in_a_file_as_in_an_override(tmp_path: Path) -> None:
    """Regression: YAML 1.1 reads ``1e-3`` as a string, so ``lr: 1e-3`` in a config file was refused
    ("expected a number, got '1e-3'") though ``--set train.lr=1e-3`` worked."""
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\n  weight_decay: 5E+2\nheads:\n  dropout: 2e-1\n")
    cfg = load_config(tmp_path / "c.yaml", ["finetune.backbone_lr=1.5e-4"])
    assert cfg.finetune.backbone_lr == 1.5e-4
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.heads.dropout) == (1e-3, 500.0, 0.2)
    with pytest.raises(ConfigError, match=r"finetune.backbone_lr must be > 0, got -0.0001"):
        load_config(tmp_path / "c.yaml", ["finetune.backbone_lr=-1e-4"])


def test_a_section_left_empty_in_a_file_keeps_its_settings(tmp_path: Path) -> None:
    """Regression: a section whose settings are all commented out (``train:`` alone) reads as null, and
    was refused ("train: expected a mapping, got None"); an override into it said "'train' is not a
    section"."""
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n")
    (tmp_path / "c.yaml").write_text("train:\n#  epochs: 3\ncatalog:\n")
    assert load_config(tmp_path / "c.yaml").train == RunConfig().train
    assert load_config(tmp_path / "c.yaml", ["train.epochs=3"]).train.epochs == 3
    assert load_config(tmp_path / "c.yaml", base=tmp_path / "base.yaml").train.epochs == 7


def test_a_value_of_no_allowed_form_is_told_without_python_type_hints() -> None:
    """Regression: the message held the hint's repr, ``typing.Union[typing.Annotated[float, Range(low=0,
    high=None, low_open=False, high_open=False)], typing.Literal['dev']]``."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.class_balance=abc"])
    assert str(err.value) == (
        "train.class_balance: 'abc' fits none of its forms (train.class_balance: expected a number, got "
        "'abc'; or train.class_balance: 'abc' is not one of ['dev'])"
    )


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """Regression: a config saved as latin-1 (a path with "é") ended in a UnicodeDecodeError traceback."""
    (tmp_path / "c.yaml").write_bytes("catalog:\n  path: /data/café/styles.csv\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'c.yaml'}: not UTF-8 text .*; save it as UTF-8$"):
        load_config(tmp_path / "c.yaml")


def test_text_that_reads_as_a_number_is_saved_quoted(tmp_path: Path) -> None:
    """Regression: once ``1e-3`` read as a number, a saved placeholder or column named ``1e-3`` came back
    as one (the checkpoint's config then failed to load: "expected str, got 0.001")."""
    cfg = load_config(values={"predict.placeholder": "1e-3", "catalog.id_column": "2E5"})
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("N/A #tbd", "N/A #tbd"),  # was "N/A": YAML read the rest as a comment
        ("-", "-"),  # was refused as [None]
        ("?", "?"),  # was refused as {None: None}
        ("0", "0"),  # was refused: "expected str, got 0"
        ("yes", "yes"),  # was refused: "expected str, got True"
        ("null", "null"),  # the setting takes no None: the text typed
        ("a: b", "a: b"),
        ("'x #y'", "x #y"),  # quotes: the text inside them
        ("", ""),
    ],
)
def test_a_text_override_is_the_text_typed(value: str, expected: str) -> None:
    assert load_config(None, [f"predict.placeholder={value}"]).predict.placeholder == expected


def test_an_optional_text_override_keeps_null_quotes_and_hashes() -> None:
    """``str | None``: ``null`` clears it, ``'null'`` is the text, and a path keeps what follows ``#``."""
    assert load_config(None, ["catalog.image_root=null"]).catalog.image_root is None
    assert load_config(None, ["catalog.image_root='null'"]).catalog.image_root == "null"
    assert load_config(None, ["catalog.image_root=/x #1/"]).catalog.image_root == "/x #1/"
    assert load_config(None, ["catalog.remaps.color.Navy=0"]).catalog.remaps == {"color": {"Navy": "0"}}


def test_a_text_or_list_override_reads_a_list_only_in_brackets() -> None:
    from taxonomist.config import VLMConfig

    assert load_config(None, ["lora.target_modules=[q, v]"], VLMConfig).lora.target_modules == ["q", "v"]
    assert load_config(None, ["lora.target_modules=-"], VLMConfig).lora.target_modules == "-"


@pytest.mark.parametrize(
    "override", ["train.epochs=3 #x", "heads.hidden=[64] # c", "missing_labels.policy=mask #x"]
)
def test_a_comment_in_a_typed_override_is_refused_not_dropped(override: str) -> None:
    """``3 #x`` was read as 3; the user typed more than that, so it is an error naming the key."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^override {key}=.* would be dropped as a YAML comment"):
        load_config(None, [override])
