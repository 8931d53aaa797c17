"""Word token patterns that keep non-Latin words whole, for the TF-IDF word n-grams of titles.

Python's ``\\w`` leaves out combining marks (Unicode category M): Devanagari vowel signs and viramas,
Thai vowel and tone marks, decomposed accents. A plain ``\\w+`` cuts "कुर्ती" into letters, and sklearn's
default ``\\b\\w\\w+\\b`` drops it. NFKC (:func:`~taxonomist.data.taxonomy.normalize_text`) composes many
Latin accents but has no composed form for most Indic or Thai marks, so the patterns must carry them.

The patterns are regex strings, not callables: a fitted vectorizer stores its own pattern, so a model
saved before a change goes on tokenizing as it was trained.
"""

from __future__ import annotations

import functools
import sys
import unicodedata

_JOINERS = r"\u200c\u200d"
"""ZWNJ and ZWJ (as regex escapes): spelling inside Indic and Persian words, where ``normalize_text`` keeps
them."""


@functools.cache
def combining_marks() -> str:
    """The body of a regex character class matching every combining mark, as escaped code point ranges."""
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)).startswith("M"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join(_escaped(lo) if lo == hi else f"{_escaped(lo)}-{_escaped(hi)}" for lo, hi in ranges)


@functools.cache
def word_pattern(min_letters: int = 1) -> str:
    """A token pattern of words of at least ``min_letters`` letters, each letter with its combining marks,
    joined inside the word by ZWJ/ZWNJ.

    On text without marks or joiners it matches exactly what ``\\b\\w+\\b`` (``min_letters=1``) or
    ``\\b\\w\\w+\\b`` (2, sklearn's default) match, so English titles give the same tokens as before.
    """
    if min_letters < 1:
        raise ValueError(f"a word has at least one letter, got min_letters={min_letters}")
    letter = rf"\w[{combining_marks()}]*"
    joined = rf"[{_JOINERS}]*{letter}"
    more = "*" if min_letters == 1 else f"{{{min_letters - 1},}}"
    return rf"(?u)\b{letter}(?:{joined}){more}"


def _escaped(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
