"""Word token patterns: combining marks and joiners stay in their word; text without them tokenizes as
sklearn's patterns did."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxonomist.data.tokens import word_pattern

OLD = {1: r"(?u)\b\w+\b", 2: r"(?u)\b\w\w+\b"}
"""The patterns the lexical views used before: the lexical view's, and sklearn's default."""


@pytest.mark.parametrize("min_letters", [1, 2])
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("लाल सूती कुर्ती", ["लाल", "सूती", "कुर्ती"]),  # Hindi: vowel signs and a virama
        ("เสื้อยืด สีแดง", ["เสื้อยืด", "สีแดง"]),  # Thai: vowel and tone marks
        ("cafe\u0301 noir", ["cafe\u0301", "noir"]),  # a decomposed accent (text not NFKC-normalised)
        ("क्\u200dष साड़ी", ["क्\u200dष", unicodedata.normalize("NFKC", "साड़ी")]),  # ZWJ; nukta after NFKC
    ],
)
def test_words_keep_their_marks_and_joiners(text: str, words: list[str], min_letters: int) -> None:
    assert re.findall(word_pattern(min_letters), unicodedata.normalize("NFKC", text)) == [
        unicodedata.normalize("NFKC", w) for w in words
    ]
    assert re.findall(word_pattern(min_letters), text) == words


def test_min_letters_counts_letters_not_marks() -> None:
    """A letter with its vowel sign is one letter, as a composed "é" is: sklearn's two-letter minimum
    drops it whether or not NFKC composed it."""
    assert re.findall(word_pattern(2), "है é e\u0301 ab") == ["ab"]
    assert re.findall(word_pattern(1), "है é e\u0301 ab") == ["है", "é", "e\u0301", "ab"]
    with pytest.raises(ValueError, match="min_letters"):
        word_pattern(0)


def test_a_stray_mark_or_edge_joiner_is_left_out() -> None:
    assert re.findall(word_pattern(2), "\u0301ab cd\u200d \u200cef") == ["ab", "cd", "ef"]


_PLAIN = st.characters(
    blacklist_categories=("Mn", "Mc", "Me", "Cs"), blacklist_characters="\u200c\u200d"
) | st.sampled_from(list(" -_'./,&()0123456789aZ"))


@settings(max_examples=300, deadline=None)
@given(st.text(_PLAIN, max_size=40))
def test_text_without_marks_or_joiners_tokenizes_as_before(text: str) -> None:
    for min_letters, old in OLD.items():
        assert re.findall(word_pattern(min_letters), text) == re.findall(old, text)
