"""Path classifiers over a :class:`Taxonomy`: kNN retrieval and hierarchical heads with beam search.

Both return :class:`PathPrediction` (a path id into ``taxonomy.paths`` per row plus confidences), so
every output is a valid path by construction, and ensembling/serving code treats them alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from taxonomist.data.taxonomy import Taxonomy
from taxonomist.data.tokens import word_pattern

NEG_INF = -1e9
_SEARCH_BLOCK = 2048
"""Queries per similarity matmul in retrieval: bounds its memory (block x training rows floats)."""


@dataclass
class PathPrediction:
    path_ids: np.ndarray
    """``(n,)`` index into ``taxonomy.paths``."""
    level_confidence: np.ndarray
    """``(n, depth)``: probability of the predicted node at each level (non-increasing along the path)."""

    @property
    def confidence(self) -> np.ndarray:
        return self.level_confidence[:, -1]

    def paths(self, taxonomy: Taxonomy) -> list[tuple[str, ...]]:
        return [taxonomy.paths[i] for i in self.path_ids]


class RetrievalClassifier:
    """kNN over training titles in a FAISS inner-product index; neighbours vote for their paths.

    Votes are ``exp(similarity / temperature)``, so a near-duplicate title outweighs several loose
    matches; the winner is always a path some training row carries. Per-level confidence is the vote
    share of the predicted node at that level.
    """

    def __init__(self, k: int = 10, temperature: float = 0.05) -> None:
        self.k = k
        self.temperature = temperature

    def fit(self, embeddings: np.ndarray, path_ids: np.ndarray, taxonomy: Taxonomy) -> RetrievalClassifier:
        path_ids = np.asarray(path_ids, dtype=np.int64)
        if (path_ids < 0).any() or (path_ids >= len(taxonomy)).any():
            raise ValueError("every training row needs a path of the taxonomy")
        self.embeddings_ = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.path_ids_ = path_ids
        self.node_ids_ = taxonomy.path_node_ids()
        self.n_paths_ = len(taxonomy)
        return self

    def save(self, path) -> None:
        """The index rows and their paths (``.npz``); ``k`` and ``temperature`` are the caller's to keep."""
        np.savez(path, embeddings=self.embeddings_.numpy(), path_ids=self.path_ids_)

    @classmethod
    def load(cls, path, taxonomy: Taxonomy, k: int = 10, temperature: float = 0.05) -> RetrievalClassifier:
        data = np.load(path)
        return cls(k, temperature).fit(data["embeddings"], data["path_ids"], taxonomy)

    def search(self, embeddings: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top-k: one matmul and ``torch.topk`` per block of queries, 2.5x faster
        than faiss's flat index on 2 cores at this size (1,484 queries x 11,861 titles: 0.09 vs 0.23 s)."""
        k = min(k or self.k, len(self.embeddings_))
        queries = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        sims, rows = [], []
        with torch.inference_mode():
            for block in queries.split(_SEARCH_BLOCK):
                top = torch.topk(block @ self.embeddings_.T, k, dim=1)
                sims.append(top.values)
                rows.append(top.indices)
        if not sims:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return torch.cat(sims).numpy(), torch.cat(rows).numpy()

    def neighbours(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(weights, paths)`` of the k nearest training titles: one search feeds both outputs below."""
        sims, rows = self.search(embeddings)
        return np.exp((sims - sims[:, :1]) / self.temperature), self.path_ids_[rows]

    def path_log_probs(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, n_paths) log vote shares (a small floor for paths no neighbour carries)."""
        return self.log_shares(*self.neighbours(embeddings))

    def predict(self, embeddings: np.ndarray) -> PathPrediction:
        return self.vote(*self.neighbours(embeddings))

    def log_shares(self, weights: np.ndarray, neighbour_paths: np.ndarray) -> np.ndarray:
        shares = np.zeros((len(weights), self.n_paths_))
        np.add.at(shares, (np.arange(len(weights))[:, None], neighbour_paths), weights)
        shares /= shares.sum(axis=1, keepdims=True)
        return np.log(shares + 1e-4)

    def vote(self, weights: np.ndarray, neighbour_paths: np.ndarray) -> PathPrediction:
        n, depth = len(weights), self.node_ids_.shape[1]
        best = np.empty(n, dtype=np.int64)
        conf = np.empty((n, depth))
        for i in range(n):
            paths, inverse = np.unique(neighbour_paths[i], return_inverse=True)
            votes = np.bincount(inverse, weights=weights[i])
            best[i] = paths[np.argmax(votes)]
            nodes = self.node_ids_[neighbour_paths[i]]
            share = nodes == self.node_ids_[best[i]]
            conf[i] = (weights[i, :, None] * share).sum(0) / weights[i].sum()
        return PathPrediction(best, conf)


class HierarchicalHeads(nn.Module):
    """One linear (or MLP) head per level over the title embedding; logits over that level's nodes."""

    def __init__(
        self, in_dim: int, level_sizes: Sequence[int], hidden: int = 0, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.trunk: nn.Module = (
            nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout))
            if hidden
            else nn.Identity()
        )
        width = hidden or in_dim
        self.heads = nn.ModuleList(nn.Linear(width, n) for n in level_sizes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


def level_parents(taxonomy: Taxonomy) -> list[torch.Tensor | None]:
    """Per level, each node's parent index as a tensor (None for the top level): what the parent-masked
    loss, the sibling softmax and the beam search take."""
    return [None] + [torch.from_numpy(taxonomy.parent_ids(k).copy()) for k in range(1, taxonomy.depth)]


def sibling_log_softmax(logits: torch.Tensor, parent_ids: torch.Tensor | None) -> torch.Tensor:
    """log p(node | its parent): softmax over each node's siblings only (parent masking).

    With ``parent_ids`` None (the top level) it is a plain log-softmax. Probabilities of children of
    different parents never compete, so a child is only ever scored under its own parent.
    """
    if parent_ids is None:
        return torch.log_softmax(logits, dim=-1)
    n_parents = int(parent_ids.max()) + 1
    index = parent_ids.expand_as(logits)
    peak = torch.full((logits.shape[0], n_parents), NEG_INF, dtype=logits.dtype, device=logits.device)
    peak = peak.scatter_reduce(1, index, logits, reduce="amax", include_self=True)
    shifted = logits - peak.gather(1, index)
    norm = torch.zeros_like(peak).scatter_add(1, index, shifted.exp())
    return shifted - norm.gather(1, index).log()


def hierarchical_loss(
    logits: list[torch.Tensor],
    targets: torch.Tensor,
    parent_ids: list[torch.Tensor | None],
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Sum over levels of the cross-entropy of the true child among its true parent's children.

    Label smoothing spreads its mass over those siblings only: other parents' children are not
    plausible alternatives, and smoothing onto them would fight the parent masking.
    """
    total = logits[0].new_zeros(())
    for level, (lg, parents) in enumerate(zip(logits, parent_ids, strict=True)):
        allowed = torch.ones_like(lg, dtype=torch.bool)
        if parents is not None:
            allowed = parents[None, :] == targets[:, level - 1, None]
        log_probs = torch.log_softmax(lg.masked_fill(~allowed, NEG_INF), dim=-1)
        nll = -log_probs.gather(1, targets[:, level, None])[:, 0]
        if label_smoothing:
            uniform = -(log_probs * allowed).sum(1) / allowed.sum(1)
            nll = (1 - label_smoothing) * nll + label_smoothing * uniform
        total = total + nll.mean()
    return total


def path_log_probs(level_log_probs: list[torch.Tensor], taxonomy: Taxonomy) -> np.ndarray:
    """Exact log-probability of every path: the sum of its nodes' parent-conditional log-probs."""
    nodes = torch.from_numpy(taxonomy.path_node_ids().copy())
    return sum(lp[:, nodes[:, k]] for k, lp in enumerate(level_log_probs)).double().numpy()


def beam_search(
    level_log_probs: list[torch.Tensor], parent_ids: list[torch.Tensor | None], width: int
) -> PathPrediction:
    """Best full paths under parent-conditional log-probabilities, keeping ``width`` prefixes per level.

    ``level_log_probs[k]`` holds log p(node | parent) (from :func:`sibling_log_softmax`). A prefix
    extends only to children of itself, so every finished beam is a path of the tree; with ``width``
    at least the widest level the search is exact. Last-level nodes are the taxonomy's paths, in order,
    so the best leaf is the path id.
    """
    n = level_log_probs[0].shape[0]
    depth = len(level_log_probs)
    scores, nodes = level_log_probs[0].topk(min(width, level_log_probs[0].shape[1]), dim=1)
    history = [nodes]
    for level in range(1, depth):
        lp, parents = level_log_probs[level], parent_ids[level]
        n_parents = level_log_probs[level - 1].shape[1]
        parent_score = torch.full((n, n_parents), float("-inf"), dtype=lp.dtype)
        parent_score.scatter_(1, nodes, scores)
        candidates = parent_score[:, parents] + lp
        scores, nodes = candidates.topk(min(width, candidates.shape[1]), dim=1)
        history.append(nodes)
    # Walk the best leaf back up: each level's node is the parent of the next.
    chain = [history[-1][:, 0]]
    for level in range(depth - 1, 0, -1):
        chain.append(parent_ids[level][chain[-1]])
    chain = chain[::-1]
    cumulative = torch.stack(
        [level_log_probs[k].gather(1, chain[k][:, None])[:, 0] for k in range(depth)], dim=1
    ).cumsum(1)
    return PathPrediction(chain[-1].numpy().astype(np.int64), cumulative.exp().double().numpy())


def hierarchical_vote(predictions: Sequence[PathPrediction], taxonomy: Taxonomy) -> PathPrediction:
    """PRMAS's hierarchy-compliant hard vote: level by level, the node most models chose wins.

    Only models that agree with the winning prefix vote on the next level, so the result is always one
    of the voters' (valid) paths. Ties go to the larger summed confidence. A level's confidence is the
    mean over all models of their confidence in the winning node (0 for models that chose another).
    """
    node_ids = taxonomy.path_node_ids()
    chosen = np.stack([p.path_ids for p in predictions], axis=1)
    conf = np.stack([p.level_confidence for p in predictions], axis=1)
    n, m = chosen.shape
    depth = taxonomy.depth
    best = np.empty(n, dtype=np.int64)
    level_conf = np.zeros((n, depth))
    for i in range(n):
        alive = np.arange(m)
        for level in range(depth):
            nodes = node_ids[chosen[i, alive], level]
            candidates = np.unique(nodes)
            votes = [((nodes == c).sum(), conf[i, alive[nodes == c], level].sum()) for c in candidates]
            winner = candidates[max(range(len(candidates)), key=lambda j: votes[j])]
            alive = alive[nodes == winner]
            level_conf[i, level] = conf[i, alive, level].sum() / m
        best[i] = chosen[i, alive[np.argmax(conf[i, alive, -1])]]
    return PathPrediction(best, level_conf)


def prediction_from_log_probs(log_probs: np.ndarray, taxonomy: Taxonomy) -> PathPrediction:
    """Best path of a (n, n_paths) score matrix; level confidence = probability mass of its node."""
    z = log_probs - log_probs.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    node_ids = taxonomy.path_node_ids()
    conf = np.empty((len(best), taxonomy.depth))
    for level in range(taxonomy.depth):
        same = node_ids[:, level][None, :] == node_ids[best, level][:, None]
        conf[:, level] = (probs * same).sum(axis=1)
    return PathPrediction(best.astype(np.int64), conf)


def soft_vote(log_probs: Sequence[np.ndarray], taxonomy: Taxonomy) -> PathPrediction:
    """Product of experts over full path distributions: each method's log-probabilities summed.

    Unlike the hard vote it uses how sure each method is about every path, not only its top one;
    measured on flipkart it is the more accurate combination (docs/benchmarks.md).
    """
    return prediction_from_log_probs(np.sum(np.stack(log_probs), axis=0), taxonomy)


LEGACY_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
"""sklearn's default word pattern, which a lexical classifier saved without its pattern was fitted with:
it keeps tokenizing that way, as its vocabulary expects."""


class LexicalClassifier:
    """TF-IDF (character 2–5-grams + words) → linear SVM over the taxonomy's paths.

    Sentence embeddings blur exact tokens ("T-Shirt" vs "Shirt", model numbers); character n-grams keep
    them, so this classic model errs on different titles than the embedding methods, which is what a
    combination needs. Weights below ``prune`` are dropped: 1% of them keep the accuracy at ~6 MB.
    """

    def __init__(self, C: float = 0.5, temperature: float = 0.1, prune: float = 0.01) -> None:
        self.C = C
        self.temperature = temperature
        self.prune = prune

    def _vectorizers(self, char_vocab=None, word_vocab=None, token_pattern: str | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        chars = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, vocabulary=char_vocab
        )
        words = TfidfVectorizer(
            sublinear_tf=True,
            ngram_range=(1, 2),
            vocabulary=word_vocab,
            token_pattern=token_pattern or word_pattern(2),
        )
        return chars, words

    def _features(self, titles: Sequence[str]):
        from scipy import sparse

        return sparse.hstack([self.chars_.transform(titles), self.words_.transform(titles)]).tocsr()

    def fit(self, titles: Sequence[str], path_ids: np.ndarray, taxonomy: Taxonomy) -> LexicalClassifier:
        from scipy import sparse
        from sklearn.svm import LinearSVC

        self.chars_, self.words_ = self._vectorizers()
        x = sparse.hstack([self.chars_.fit_transform(titles), self.words_.fit_transform(titles)]).tocsr()
        svm = LinearSVC(C=self.C).fit(x, np.asarray(path_ids))
        weights = np.where(np.abs(svm.coef_) > self.prune, svm.coef_, 0.0).astype(np.float32)
        self.classes_ = svm.classes_.astype(np.int64)
        self.coef_ = sparse.csr_matrix(weights)
        self.intercept_ = svm.intercept_.astype(np.float32)
        self.n_paths_ = len(taxonomy)
        return self

    def path_log_probs(self, titles: Sequence[str]) -> np.ndarray:
        scores = np.full((len(titles), self.n_paths_), -1e4, dtype=np.float32)
        if len(self.classes_) == 1:
            scores[:, self.classes_[0]] = 0.0
        else:
            decision = (self._features(titles) @ self.coef_.T).toarray() + self.intercept_
            scores[:, self.classes_] = decision / self.temperature
        return scores - _logsumexp(scores)

    def predict(self, titles: Sequence[str], taxonomy: Taxonomy) -> PathPrediction:
        return prediction_from_log_probs(self.path_log_probs(titles), taxonomy)

    def save(self, path) -> None:
        from scipy import sparse

        sparse.save_npz(f"{path}.coef.npz", self.coef_)
        np.savez(
            f"{path}.npz",
            classes=self.classes_,
            intercept=self.intercept_,
            char_idf=self.chars_.idf_,
            word_idf=self.words_.idf_,
            params=np.array([self.C, self.temperature, self.prune, self.n_paths_]),
        )
        vocab = {
            "chars": _vocab(self.chars_),
            "words": _vocab(self.words_),
            "token_pattern": self.words_.token_pattern,
        }
        with open(f"{path}.vocab.json", "w", encoding="utf-8") as fh:
            json.dump(vocab, fh, ensure_ascii=False)

    @classmethod
    def load(cls, path) -> LexicalClassifier:
        from scipy import sparse

        data = np.load(f"{path}.npz")
        c, temperature, prune, n_paths = data["params"].tolist()
        self = cls(C=c, temperature=temperature, prune=prune)
        with open(f"{path}.vocab.json", encoding="utf-8") as fh:
            vocab = json.load(fh)
        self.chars_, self.words_ = self._vectorizers(
            vocab["chars"], vocab["words"], vocab.get("token_pattern", LEGACY_TOKEN_PATTERN)
        )
        self.chars_.idf_, self.words_.idf_ = data["char_idf"], data["word_idf"]
        self.classes_, self.intercept_ = data["classes"], data["intercept"]
        self.coef_ = sparse.load_npz(f"{path}.coef.npz").tocsr()
        self.n_paths_ = int(n_paths)
        return self


def _vocab(vectorizer) -> dict[str, int]:
    return {term: int(i) for term, i in vectorizer.vocabulary_.items()}


def _logsumexp(scores: np.ndarray) -> np.ndarray:
    peak = scores.max(axis=1, keepdims=True)
    return peak + np.log(np.exp(scores - peak).sum(axis=1, keepdims=True))
