"""Category → attribute → allowed values: what makes a prediction valid for its category.

The per-category attribute order is meaningful: it is the positional order of the Meesho layout
(``attr_1`` is the category's first attribute), so readers and writers can map named attributes back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from taxonomist.io import atomic_write_text


class SchemaError(ValueError):
    """A category, attribute or value that the schema does not know."""


@dataclass
class Schema:
    """Allowed values per (category, attribute); values keep their first-seen order."""

    categories: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def attributes(self) -> list[str]:
        """Every attribute name across categories, in first-seen order."""
        seen: dict[str, None] = {}
        for attrs in self.categories.values():
            seen.update(dict.fromkeys(attrs))
        return list(seen)

    def attributes_of(self, category: str) -> list[str]:
        return list(self._category(category))

    def allowed(self, category: str, attribute: str) -> list[str]:
        attrs = self._category(category)
        if attribute not in attrs:
            raise SchemaError(f"attribute {attribute!r} does not apply to category {category!r}")
        return attrs[attribute]

    def values(self, attribute: str) -> list[str]:
        """Union of an attribute's values over categories: the vocabulary of its head."""
        seen: dict[str, None] = {}
        for attrs in self.categories.values():
            seen.update(dict.fromkeys(attrs.get(attribute, [])))
        return list(seen)

    def is_valid(self, category: str, attribute: str, value: str) -> bool:
        attrs = self.categories.get(category, {})
        return attribute in attrs and value in attrs[attribute]

    def _category(self, category: str) -> dict[str, list[str]]:
        try:
            return self.categories[category]
        except KeyError:
            known = ", ".join(sorted(self.categories)) or "none"
            raise SchemaError(f"unknown category {category!r} (known: {known})") from None

    @classmethod
    def infer(
        cls,
        frame: pd.DataFrame,
        attributes_by_category: Mapping[str, Sequence[str]] | None = None,
        *,
        category_col: str = "category",
        attributes: Sequence[str] | None = None,
    ) -> Schema:
        """Allowed values = the labels seen per category.

        Without ``attributes_by_category`` an attribute applies to a category when at least one of its
        rows carries a label for it.
        """
        attributes = list(attributes or [c for c in frame.columns if c not in ("id", category_col)])
        categories: dict[str, dict[str, list[str]]] = {}
        for category, rows in frame.groupby(category_col, sort=False):
            names = (
                list(attributes_by_category.get(str(category), []))
                if attributes_by_category is not None
                else [a for a in attributes if rows[a].notna().any()]
            )
            categories[str(category)] = {a: _ordered_values(rows[a]) for a in names}
        return cls(categories)

    def to_dict(self) -> dict:
        return {"categories": self.categories}

    @classmethod
    def from_dict(cls, data: Mapping) -> Schema:
        raw = data.get("categories", data)
        if not isinstance(raw, Mapping):
            raise SchemaError("schema must map category -> attribute -> list of values")
        categories: dict[str, dict[str, list[str]]] = {}
        for category, attrs in raw.items():
            if not isinstance(attrs, Mapping):
                raise SchemaError(f"category {category!r}: expected a mapping attribute -> values")
            categories[str(category)] = {}
            for attribute, values in attrs.items():
                if isinstance(values, str) or not isinstance(values, Iterable):
                    raise SchemaError(f"{category!r}/{attribute!r}: expected a list of values")
                categories[str(category)][str(attribute)] = [str(v) for v in values]
        return cls(categories)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (
            yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
            if path.suffix in (".yaml", ".yml")
            else json.dumps(self.to_dict(), indent=1, ensure_ascii=False)
        )
        atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"schema file not found: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise SchemaError(f"{path}: not a valid schema file ({err})") from err
        return cls.from_dict(data)


def _ordered_values(column: pd.Series) -> list[str]:
    """Most frequent first, so a schema file reads like the data."""
    return [str(v) for v in column.dropna().astype(str).value_counts(sort=True).index]
