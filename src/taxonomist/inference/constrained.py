"""Schema-constrained decoding: a VLM can only write a JSON object valid for the row's category.

Per category, the schema becomes a grammar (keys = the category's attributes in schema order, each one of
its allowed values, no other keys) that xgrammar compiles against the tokenizer once; at every
step the logits of tokens that would leave the grammar are set to -inf. A value's confidence is the
probability of its tokens under the model's own distribution with that mask applied (the raw logits, not
the temperature-, top-p- or penalty-processed scores sampling drew from): the model's confidence in that
value among the allowed ones, whichever way it was decoded. An optional free-text prefix (one line of
reasoning) serves self-consistency sampling: the answer after it still always parses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from taxonomist.data.chat import JSON_SEPARATORS
from taxonomist.data.schema import Schema


class AnswerError(ValueError):
    """Generated text that is not a valid answer for the category (unconstrained decoding only)."""


# xgrammar (0.2.9) writes a character of U+007F-U+00FF in a literal as \xNN and reads it back with every
# hex digit that follows: "écru" became "\xe9cru", read as U+0E9C + "ru", so "écru" could not be written
# and "ຜru" could. A character of that range is its own literal here, so no hex digit follows its escape.
_HEX_ESCAPED = re.compile("([\x7f-\xff])")


def _literal(text: str) -> str:
    """``text`` as a sequence of EBNF string literals."""
    parts = [p for p in _HEX_ESCAPED.split(text) if p]
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


def category_ebnf(schema: Schema, category: str) -> str:
    """The category's answers as a grammar: every attribute in schema order, each one of its allowed
    values, written exactly as the training answers are (``answer_json``: JSON_SEPARATORS, no other
    whitespace, non-ASCII as is). A fixed layout: with free whitespace greedy decoding can loop on spaces."""
    fields = []
    for i, attribute in enumerate(schema.attributes_of(category)):
        key = (JSON_SEPARATORS[0] if i else "") + _json(attribute) + JSON_SEPARATORS[1]
        values = " | ".join(f"({_literal(_json(v))})" for v in schema.allowed(category, attribute))
        fields.append(f"{_literal(key)} ({values})")
    return f'root ::= "{{" {" ".join(fields)} "}}"'


def _json(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "constrained decoding needs xgrammar: pip install 'taxonomist[vlm]' "
            "(or set generate.constrained=false)"
        ) from err
    return xgrammar


class SchemaGrammars:
    """Grammars compiled once per (category, reasoning) for one tokenizer, reused across batches."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, schema: Schema, reasoning_max_chars: int = 200
    ) -> None:
        xgr = _xgrammar()
        self.schema = schema
        self.reasoning_max_chars = reasoning_max_chars
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        # xgrammar reads special tokens as their literal text, and "<|endoftext|>" is printable ASCII: the
        # reasoning line could sample it, and decoding would cut the chain there. Blank every special token
        # except the stop tokens so no grammar can emit one.
        special = set(tokenizer.all_special_ids) - set(info.stop_token_ids)
        vocab = [""] * vocab_size
        for token, i in tokenizer.get_vocab().items():
            if i < vocab_size and i not in special:
                vocab[i] = token
        info = xgr.TokenizerInfo(
            vocab,
            info.vocab_type,
            vocab_size=vocab_size,
            stop_token_ids=info.stop_token_ids,
            add_prefix_space=info.add_prefix_space,
        )
        self._compiler = xgr.GrammarCompiler(info)
        self._compiled: dict[tuple[str, bool], Any] = {}

    def compiled(self, category: str, *, reasoning: bool = False) -> Any:
        key = (category, reasoning)
        if key not in self._compiled:
            xgr = _xgrammar()
            answer = xgr.Grammar.from_ebnf(category_ebnf(self.schema, category))
            if reasoning:
                # Printable ASCII without braces: one token per character at most, so the token budget
                # below is a true bound, and the answer's opening brace cannot appear early.
                line = xgr.Grammar.from_ebnf(f'root ::= [ -z|~]{{1,{self.reasoning_max_chars}}} "\\n"')
                answer = xgr.Grammar.concat(line, answer)
            self._compiled[key] = self._compiler.compile_grammar(answer)
        return self._compiled[key]

    def max_new_tokens(self, category: str, *, reasoning: bool = False) -> int:
        """Tokens the longest valid output can take (a byte-level token holds at least one byte), + end."""
        longest = {
            a: max(
                self.schema.allowed(category, a),
                key=lambda v: len(json.dumps(v, ensure_ascii=False).encode()),
            )
            for a in self.schema.attributes_of(category)
        }
        answer = len(json.dumps(longest, ensure_ascii=False, separators=JSON_SEPARATORS).encode())
        return answer + 1 + (self.reasoning_max_chars + 1 if reasoning else 0)

    def logits_processor(self, categories: Sequence[str], *, reasoning: bool = False) -> GrammarMask:
        """A fresh processor for one ``generate`` call; row i follows ``categories[i]``'s grammar."""
        return GrammarMask([self.compiled(c, reasoning=reasoning) for c in categories])


class GrammarMask:
    """The ``generate`` logits processor of one call: row i may only continue its grammar.

    Unlike xgrammar's own HF processor it keeps each step's token bitmask (one bit per token), so
    :meth:`log_probs` can apply the same mask to the model's raw logits, and it masks a copy: in place, as
    the first processor it would also mask the raw logits ``generate`` returns.
    """

    def __init__(self, grammars: Sequence[Any]) -> None:
        xgr = _xgrammar()
        self.matchers = [xgr.GrammarMatcher(g) for g in grammars]
        self.vocab_size = grammars[0].tokenizer_info.vocab_size
        self.bitmasks: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if len(input_ids) != len(self.matchers):
            raise ValueError(f"{len(input_ids)} rows to mask, {len(self.matchers)} grammars")
        bitmask = _xgrammar().allocate_token_bitmask(len(self.matchers), self.vocab_size)
        for row, matcher in enumerate(self.matchers):
            # After the first step, the matcher takes the token sampled from the last step's mask first.
            accepted = (
                not self.bitmasks or matcher.is_terminated() or matcher.accept_token(int(input_ids[row, -1]))
            )
            if not accepted:
                raise RuntimeError(f"row {row}: the sampled token {int(input_ids[row, -1])} left its grammar")
            if not matcher.is_terminated():  # a finished row stays all-allowed: generate pads it
                matcher.fill_next_token_bitmask(bitmask, row)
        self.bitmasks.append(bitmask)
        return self.masked(scores, len(self.bitmasks) - 1)

    def masked(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """A copy of one step's ``(rows, vocab)`` logits with the grammar's disallowed tokens at -inf."""
        device = logits.device if logits.device.type == "cuda" else torch.device("cpu")  # xgrammar: cuda, cpu
        out = logits.to(device, copy=True)
        _xgrammar().apply_token_bitmask_inplace(out, self.bitmasks[step].to(device))
        return out.to(logits.device)

    def log_probs(self, logits: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """``(rows, steps)`` log-probability of each generated token under the masked raw logits."""
        return torch.stack(
            [_token_log_probs(self.masked(step, t), tokens[:, t]) for t, step in enumerate(logits)], dim=1
        )


def token_log_probs(logits: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """``(rows, steps)`` log-probability of each generated token under the raw logits (no grammar)."""
    return torch.stack([_token_log_probs(step, tokens[:, t]) for t, step in enumerate(logits)], dim=1)


def _token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(1, tokens[:, None]).squeeze(1)


def answer_text(text: str) -> str:
    """The JSON part of a generation (after an optional reasoning line); always a suffix of ``text``."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return stripped
    start = text.rfind("\n{")
    return text[start + 1 :] if start >= 0 else text


def parse_answer(text: str, schema: Schema, category: str) -> dict[str, str]:
    """The attribute values of ``text``; :class:`AnswerError` on anything invalid for the category."""
    try:
        values = json.loads(answer_text(text).strip(), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise AnswerError(f"not JSON ({err.msg}): {text[:80]!r}") from err
    if not isinstance(values, dict):
        raise AnswerError(f"not a JSON object: {text[:80]!r}")
    out = {}
    for attribute, value in values.items():
        if not isinstance(value, str) or not schema.is_valid(category, attribute, value):
            raise AnswerError(f"{attribute}={value!r} is not valid for category {category!r}")
        out[attribute] = value
    missing = [a for a in schema.attributes_of(category) if a not in out]
    if missing:
        raise AnswerError(f"missing attributes {missing} for category {category!r}")
    return out


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: json keeps the last of a repeated key, while its confidence
    (:func:`value_spans`) would be read from the first value's tokens."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise AnswerError(f"attributes written more than once: {repeated}")
    return dict(pairs)


def value_spans(text: str, values: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """Character span of each value inside the JSON answer of ``text`` (written with JSON_SEPARATORS)."""
    offset = len(text) - len(answer_text(text))
    spans, pos = {}, offset
    for attribute, value in values.items():
        key = json.dumps(attribute, ensure_ascii=False) + JSON_SEPARATORS[1] + '"'
        pos = text.find(key, pos)
        if pos < 0:
            continue
        start = pos + len(key)
        end = start + len(json.dumps(value, ensure_ascii=False)) - 2
        spans[attribute] = (start, end)
        pos = end
    return spans


def token_char_ends(tokenizer: Any, token_ids: Sequence[int]) -> list[int]:
    """End offset in the decoded text of each token (byte-level BPE tokens may split characters)."""
    ends, previous = [], 0
    for i in range(len(token_ids)):
        previous = max(previous, len(tokenizer.decode(token_ids[: i + 1], skip_special_tokens=True)))
        ends.append(previous)
    return ends


def value_confidences(
    text: str,
    values: Mapping[str, str],
    token_ids: Sequence[int],
    token_logprobs: torch.Tensor,
    tokenizer: Any,
) -> dict[str, float]:
    """exp(sum of log-probs of the tokens that write each value and the one that closes it): its
    probability under the model's (grammar-masked) distribution, given the text before it.
    The closing token counts because that is where "Grey" and "Grey Melange" part: without it the
    shorter value would get the probability of both. Structure after it is forced by the grammar."""
    ends = token_char_ends(tokenizer, token_ids)
    starts = [0, *ends[:-1]]
    out = {}
    for attribute, (lo, hi) in value_spans(text, values).items():
        picked = [t for t, (s, e) in enumerate(zip(starts, ends, strict=True)) if s <= hi and e > lo]
        out[attribute] = float(torch.exp(token_logprobs[picked].sum())) if picked else 0.0
    return out
