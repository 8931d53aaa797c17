"""Pages and figures shared by every report: one jinja2 base template, PNGs inlined as data URIs.

A report page is one self-contained file (no CDN, no sibling files needed to view it), so it can be mailed,
attached to a ticket or opened offline; the figures are also written beside it as PNG files for slides.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from taxonomist.data.images import ImageLoadError, load_image
from taxonomist.io import atomic_write_bytes, atomic_write_text

HTML_MAX_ROWS = 500
SLUG_MAX_CHARS = 80
"""A figure's file name keeps this much of its category or attribute name: a file name may hold 255 bytes,
and the prefix, a uniqueness suffix and the atomic write's temporary name need the rest."""

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("taxonomist.report", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context: Any) -> str:
    """``templates/<template>`` with ``context``; every value is HTML-escaped unless marked safe."""
    return _ENV.get_template(template).render(**context)


def write_page(path: Path, template: str, **context: Any) -> Path:
    atomic_write_text(path, render(template, **context))
    return path


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail_uri(path: str | Path, size: int = 160) -> str | None:
    """A small JPEG of an image file as a data URI, as the model saw it (upright by its EXIF orientation,
    transparency on white, a large JPEG decoded reduced); None when the file cannot be read."""
    try:
        image = load_image(path)
    except ImageLoadError:
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def html_table(
    frame: pd.DataFrame, csv_name: str = "", *, max_rows: int = HTML_MAX_ROWS, digits: int = 4
) -> str:
    """An HTML table (the frame's first ``max_rows`` rows) with a note naming the CSV holding the rest.

    Numeric columns are right-aligned so their digits line up; text columns read left-aligned.
    """
    if not len(frame):
        return "<p class='note'>none</p>"
    shown = frame.head(max_rows)
    numeric = [
        pd.api.types.is_numeric_dtype(shown[c]) and not pd.api.types.is_bool_dtype(shown[c]) for c in shown
    ]
    align = ["num" if n else "text" for n in numeric]
    head = "".join(
        f"<th class='{a}'>{html.escape(str(c))}</th>" for c, a in zip(shown.columns, align, strict=True)
    )
    body = []
    for row in shown.itertuples(index=False):
        cells = (
            f"<td class='{a}'>{html.escape(_cell(v, digits))}</td>" for v, a in zip(row, align, strict=True)
        )
        body.append(f"<tr>{''.join(cells)}</tr>")
    table = f"<table class='data'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if len(frame) > len(shown):
        link = html.escape(csv_name)
        where = f"; all in <a href='{link}'>{link}</a>" if csv_name else ""
        table += f"<p class='note'>first {len(shown):,} of {len(frame):,} rows{where}</p>"
    return table


def _cell(value: Any, digits: int) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}g}"
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return f"{value:,}"
    return str(value)


def slug(name: str, fallback: str) -> str:
    """A filesystem-safe file name part for a category or attribute such as "Women Tops & Tunics", cut to
    :data:`SLUG_MAX_CHARS` (:func:`unique_slugs` tells apart names that then read the same)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:SLUG_MAX_CHARS].strip("._") or fallback


def unique_slugs(names: Sequence[str], prefix: str) -> dict[str, str]:
    """name → ``<prefix>_<slug>``, unique even where two names differ only in case or punctuation."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, name in enumerate(names):
        base = slug(name, f"{i}")
        candidate, n = base, 2
        while candidate.lower() in used:
            candidate, n = f"{base}_{n}", n + 1
        used.add(candidate.lower())
        out[name] = f"{prefix}_{candidate}"
    return out


def figure(width: float, height: float) -> Any:
    """An Agg-backed figure that never touches pyplot, so no global backend is switched or leaked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_png(out_dir: Path, name: str, data: bytes) -> dict[str, str]:
    """Write ``name`` and return what a template needs to show it: its file name and data URI."""
    atomic_write_bytes(out_dir / name, data)
    return {"file": name, "uri": data_uri(data)}


def fmt(value: Any, spec: str = ".4f") -> str:
    """A number for a table cell: blank for missing, ``spec`` otherwise."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec) if isinstance(value, int | float) else str(value)


_ENV.filters["fmt"] = fmt
_ENV.globals["html_table"] = html_table
