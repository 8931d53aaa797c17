"""Every config the repository ships loads against its schema: a misspelled or outdated setting in one
would otherwise reach users as a ConfigError on their first command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taxonomist.config import RunConfig, TaxonomyConfig, VLMConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SCHEMAS = {
    "taxonomy.yaml": TaxonomyConfig,
    "vlm-attributes.yaml": VLMConfig,
    "vlm-qlora-caption.yaml": VLMConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_a_shipped_config_loads(path: Path) -> None:
    load_config(path, cls=SCHEMAS.get(path.name, RunConfig))
    # Data is found through the data directory (TAXONOMIST_DATA_DIR), never a path of one machine.
    paths = [v for k, v in _leaves(yaml.safe_load(path.read_text(encoding="utf-8"))) if k == "path"]
    assert paths and all(p.startswith("{data_dir}/") for p in paths)


def _leaves(node: object) -> list[tuple[str, str]]:
    if not isinstance(node, dict):
        return []
    return [(k, v) for k, v in node.items() if isinstance(v, str)] + [
        leaf for v in node.values() for leaf in _leaves(v)
    ]


def test_the_listing_config_is_the_documented_fashion_run_with_listing_heads() -> None:
    # README's command for the benchmark's listing figures: the same run, so the same figures.
    overrides = ["heads.inputs=[image, text]", "heads.members=4", "train.class_balance=dev"]
    assert load_config(CONFIGS / "fashion-listing.yaml") == load_config(CONFIGS / "fashion.yaml", overrides)
