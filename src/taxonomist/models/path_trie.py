"""Constrained decoding of taxonomy paths: the target format, a token trie over every path, and the
logits processor that keeps generation on it.

Every beam decoded under :class:`TrieLogitsProcessor` spells a path of the :class:`Taxonomy`; the brand
after the path is free text (brands at prediction time are often unseen).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from taxonomist.data.taxonomy import NO_BRAND, PATH_SEP, Taxonomy, normalize_text

BRAND_SEP = " |"
"""Ends the path part of a target; the brand (if any) follows after one space."""

_FREE = -1
_OFF = -2


def format_target(path: Sequence[str], brand: str = NO_BRAND) -> str:
    """``"Men > Shoes > Casual | Nike"``; without a brand ``"Men > Shoes > Casual |"``.

    The path part always ends with ``" |"`` so its tokens are the same with or without a brand, which is
    what lets one trie constrain every target. Reversible by :func:`parse_target` as long as no label
    holds ``">"`` and no label ``"|"``.
    """
    text = PATH_SEP.join(normalize_text(x) for x in path) + BRAND_SEP
    brand = normalize_text(brand)
    return f"{text} {brand}" if brand else text


def parse_target(text: str) -> tuple[tuple[str, ...], str]:
    """``(path, brand)`` from generated text, tolerant of junk.

    Splits on the first ``"|"`` (a missing one means no brand) and on every ``">"`` with or without
    spaces; trailing empty levels are dropped, inner ones kept in place so :meth:`Taxonomy.snap` still
    compares level by level.
    """
    path_text, _, brand = normalize_text(text).partition("|")
    labels = [normalize_text(x) for x in path_text.split(">")]
    while labels and not labels[-1]:
        labels.pop()
    return tuple(labels), normalize_text(brand)


class TargetTrie:
    """Token-id prefix tree over the path part of every target of a taxonomy.

    Each path's tokens are those of ``format_target(path)`` tokenized alone; training targets start with
    exactly these ids (see :meth:`Seq2SeqTaxonomyModel.encode_target`), so generation and training agree
    even for SentencePiece tokenizers, which may split a prefix differently from the whole string. Past a
    leaf (the path is complete) any non-special token or EOS is allowed: that is the brand.
    """

    def __init__(
        self, taxonomy: Taxonomy, sequences: Sequence[Sequence[int]], free_ids: Sequence[int], eos_id: int
    ) -> None:
        if len(sequences) != len(taxonomy):
            raise ValueError(f"{len(sequences)} token sequences for {len(taxonomy)} paths")
        self.taxonomy = taxonomy
        self.sequences = [list(s) for s in sequences]
        self.eos_id = int(eos_id)
        self.children: list[dict[int, int]] = [{}]
        self.leaf: list[int] = [-1]
        self._rep: list[int] = [-1]  # one path under the node, and how many levels all paths below share
        self._common: list[int] = [taxonomy.depth]
        collisions = []
        for pid, seq in enumerate(self.sequences):
            if not seq:
                raise ValueError(f"path {taxonomy.paths[pid]} tokenizes to nothing")
            node = 0
            for tok in seq:
                node = self._child(node, int(tok))
                self._share(node, pid)
            if self.leaf[node] >= 0:
                collisions.append(taxonomy.paths[pid])
            else:
                self.leaf[node] = pid
        # A leaf that is also an inner node ends the path there, so the longer paths below it are unreachable.
        shadowed = [
            taxonomy.paths[pid]
            for pid, seq in enumerate(self.sequences)
            if any(self.leaf[n] >= 0 for n in self._nodes(seq)[:-1])
        ]
        self.unreachable = collisions + shadowed
        if self.unreachable:
            warnings.warn(
                f"{len(self.unreachable)} path(s) share their tokens with another path and cannot be "
                f"generated (e.g. {self.unreachable[:3]}); the tokenizer maps their labels to the same ids",
                stacklevel=2,
            )
        self.level_ends = [self._level_ends(seq) for seq in self.sequences]
        self.max_len = max(len(s) for s in self.sequences)
        self.free_ids = torch.as_tensor(sorted({*map(int, free_ids), self.eos_id}), dtype=torch.long)
        self._child_ids = [torch.as_tensor(sorted(c), dtype=torch.long) for c in self.children]
        self._eos = torch.as_tensor([self.eos_id], dtype=torch.long)

    @classmethod
    def build(cls, taxonomy: Taxonomy, tokenizer: Any, vocab_size: int | None = None) -> TargetTrie:
        """The trie of ``taxonomy`` under ``tokenizer``; free: non-special ids below ``vocab_size``."""
        texts = [format_target(p) for p in taxonomy.paths]
        sequences = tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = min(len(tokenizer), vocab_size or len(tokenizer))
        special = set(tokenizer.all_special_ids)
        free = [i for i in range(limit) if i not in special]
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; generation could not end after the brand")
        return cls(taxonomy, sequences, free, tokenizer.eos_token_id)

    def _child(self, node: int, tok: int) -> int:
        nxt = self.children[node].get(tok)
        if nxt is None:
            nxt = len(self.children)
            self.children[node][tok] = nxt
            self.children.append({})
            self.leaf.append(-1)
            self._rep.append(-1)
            self._common.append(self.taxonomy.depth)
        return nxt

    def _share(self, node: int, pid: int) -> None:
        if self._rep[node] < 0:
            self._rep[node] = pid
            return
        rep, path = self.taxonomy.paths[self._rep[node]], self.taxonomy.paths[pid]
        shared = next((k for k in range(len(path)) if rep[k] != path[k]), len(path))
        self._common[node] = min(self._common[node], shared)

    def _nodes(self, seq: Sequence[int]) -> list[int]:
        nodes, node = [], 0
        for tok in seq:
            node = self.children[node][int(tok)]
            nodes.append(node)
        return nodes

    def _level_ends(self, seq: Sequence[int]) -> list[int]:
        """Per level, how many tokens fix that level's node: the first trie node under which all paths agree.

        The probability of that token prefix is the probability of the node (of every path below it), so
        per-level confidences come out non-increasing along the path.
        """
        nodes = self._nodes(seq)
        return [
            next((i + 1 for i, n in enumerate(nodes) if self._common[n] >= k + 1), len(nodes))
            for k in range(self.taxonomy.depth)
        ]

    def walk(self, tokens: Sequence[int]) -> int:
        """The trie node after ``tokens``: -1 once a path is complete (brand part), -2 off the trie."""
        node = 0
        for tok in tokens:
            if self.leaf[node] >= 0:
                return _FREE
            node = self.children[node].get(int(tok), _OFF)
            if node == _OFF:
                return _OFF
        return _FREE if self.leaf[node] >= 0 else node

    def allowed(self, tokens: Sequence[int]) -> torch.Tensor:
        """Ids that may follow the generated ``tokens`` (never empty: off the trie only EOS)."""
        return self.allowed_at(self.walk(tokens))

    def allowed_at(self, node: int) -> torch.Tensor:
        """Ids allowed at a node returned by :meth:`walk`."""
        if node == _FREE:
            return self.free_ids
        return self._eos if node == _OFF else self._child_ids[node]

    def match(self, tokens: Sequence[int]) -> tuple[int, int]:
        """``(path_id, n_path_tokens)`` of the complete path ``tokens`` start with, or ``(-1, 0)``."""
        node = 0
        for i, tok in enumerate(tokens):
            if self.leaf[node] >= 0:
                return self.leaf[node], i
            node = self.children[node].get(int(tok), _OFF)
            if node == _OFF:
                return -1, 0
        return (self.leaf[node], len(tokens)) if self.leaf[node] >= 0 else (-1, 0)


class TrieLogitsProcessor:
    """Masks logits to the trie and renormalizes, recording the constrained log-probs of path tokens.

    Renormalizing makes the scores a distribution over valid paths (then brand tokens), so the product of a
    path's token probabilities is the probability of that path. The recorded log-probs, keyed by (batch
    row, prefix), give each returned sequence's path score without ``output_scores`` (which holds a
    vocabulary-sized tensor per step and beam).
    """

    def __init__(self, trie: TargetTrie, start: int, num_beams: int) -> None:
        self.trie = trie
        self.start = start
        self.num_beams = num_beams
        self.log_probs: dict[tuple[int, tuple[int, ...]], dict[int, float]] = {}
        self._on_device: dict[int, torch.Tensor] = {}

    def _allowed(self, node: int, device: torch.device) -> torch.Tensor:
        """Allowed ids at ``node``, kept on the logits' device (one copy per node, not per row and step)."""
        ids = self._on_device.get(node)
        if ids is None:
            ids = self._on_device[node] = self.trie.allowed_at(node).to(device)
        return ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, -math.inf)
        generated = input_ids[:, self.start :].tolist()
        nodes = [self.trie.walk(tokens) for tokens in generated]
        for row, node in enumerate(nodes):
            mask[row, self._allowed(node, scores.device)] = 0.0
        masked = scores + mask
        # An earlier processor may have banned every allowed token; the constraint wins (uniform over them).
        dead = masked.amax(dim=-1, keepdim=True).isneginf()
        log_probs = torch.log_softmax(torch.where(dead, mask, masked), dim=-1)
        for row, (tokens, node) in enumerate(zip(generated, nodes, strict=True)):
            if node >= 0:
                values = log_probs[row, self._allowed(node, scores.device)].tolist()
                keys = self.trie.allowed_at(node).tolist()
                self.log_probs[(row // self.num_beams, tuple(tokens))] = dict(zip(keys, values, strict=True))
        return log_probs

    def path_log_probs(self, batch_index: int, tokens: Sequence[int]) -> np.ndarray:
        """Per-token constrained log-probs of the path part ``tokens`` of row ``batch_index``."""
        out = np.zeros(len(tokens))
        for i, tok in enumerate(tokens):
            step = self.log_probs.get((batch_index, tuple(int(t) for t in tokens[:i])), {})
            out[i] = step.get(int(tok), -math.inf)
        return out
