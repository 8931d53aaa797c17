"""Caption scores: BLEU-4, ROUGE-L and CIDEr-D (pycocoevalcap), and FGD (Fréchet distance of embeddings).

The n-gram metrics use pycocoevalcap's pure-Python scorers on text tokenized by :func:`tokenize_caption`,
so no Java is needed (its PTBTokenizer, METEOR and SPICE shell out to Java). Every id is scored against all
of its references (COCO has five per image).

FGD follows the OBSS fashion-captioning challenge's idea ("Fréchet GTE distance"): embed every prediction
and every reference with a sentence encoder, fit one Gaussian to each set and report the Fréchet distance
between them, as FID does for Inception features. The challenge's own scoring code was not available to
check against, so this is the definition implemented here:

    FGD = ||mu_p - mu_r||^2 + Tr(S_p + S_r - 2 (S_p S_r)^(1/2))

with mu, S the mean and sample covariance (ddof=1) of the L2-normalised embeddings of the predictions (one
per id) and of the references (all of them). The default encoder is all-MiniLM-L6-v2, resolved offline as
:class:`~taxonomist.models.text.TextEncoder` does; pass ``"thenlper/gte-small"`` for the challenge's
encoder where the hub is reachable. FGD values are only comparable for the same encoder and similar set
sizes: with fewer samples than dimensions (384) the covariances are rank-deficient and the distance is
biased upwards.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from taxonomist.data.tokens import combining_marks

if TYPE_CHECKING:
    from taxonomist.models.text import TextEncoder

CAPTIONS_EXTRA = "pip install 'taxonomist[vlm]'"

# PTB splits these clitics off ("don't" -> "do n't", "dog's" -> "dog 's").
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
# The punctuation pycocoevalcap's PTBTokenizer drops after tokenizing, plus the raw forms of the brackets and
# quotes that PTB rewrites into the dropped -LRB-/-RRB-/-LCB-/-RCB-/``/'' tokens.
_DROPPED = frozenset(
    ["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", "(", ")", "{", "}", '"']
)


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    """PTBTokenizer's token pattern, approximately: words keep inner hyphens, dots, slashes and apostrophes
    ("t-shirt", "3.5", "and/or"); every other non-space character is a token of its own.

    Combining marks (Unicode category M) stay with the character before them: Python's ``\\w`` leaves them
    out, which would cut Hindi or Thai words (vowel signs, viramas) and decomposed accents into letters.
    """
    mark = f"[{combining_marks()}]"
    word = rf"(?:\w|{mark})"
    return re.compile(rf"\w{word}*(?:[-./']{word}+)*|[^\w\s]{mark}*")


def tokenize_caption(text: str) -> list[str]:
    """Lowercased tokens with punctuation removed, close to the Java PTBTokenizer that COCO scores use.

    It mimics ``PTBTokenizer -lowerCase`` followed by pycocoevalcap's punctuation filter: clitics are split
    off and punctuation tokens dropped. It is not byte-identical to PTB on rare forms (``u.s.`` loses its
    final dot, square brackets stay), which moves scores slightly against published numbers, not rankings.
    """
    tokens: list[str] = []
    for token in _token_pattern().findall(text.lower()):
        match = _CLITIC.match(token)
        parts = match.groups() if match else (token,)
        tokens.extend(p for p in parts if p not in _DROPPED)
    return tokens


@dataclass(frozen=True)
class CaptionReport:
    """Corpus-level caption scores over ``n`` ids; ``fgd`` is None when it was not computed."""

    bleu4: float
    rouge_l: float
    cider: float
    fgd: float | None
    n: int
    encoder: str | None = None
    """The sentence encoder behind ``fgd``: FGD values are only comparable for the same encoder."""

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Iterable[str]],
    *,
    encoder: str | TextEncoder | None = None,
    fgd: bool = True,
) -> CaptionReport:
    """Score one predicted caption per id against all of that id's reference captions.

    BLEU-4 is the corpus-level score (clipped n-gram counts summed over ids, "closest" reference length),
    ROUGE-L (beta 1.2) and CIDEr-D are means over ids, as in the COCO caption evaluation. CIDEr's IDF is
    computed from the references of the evaluated ids, so scores on small sets are not comparable with
    published ones, and a single id always scores 0 (every n-gram is in every "document").

    An empty prediction is allowed and scores 0. ``encoder`` is a sentence-transformers id or directory,
    or a loaded :class:`~taxonomist.models.text.TextEncoder` to reuse; FGD needs at least two ids.
    """
    refs = _check_inputs(predictions, references)
    if fgd and len(refs) < 2:
        raise ValueError(f"FGD needs at least 2 ids to fit a covariance, got {len(refs)}; pass fgd=False")
    gts = {i: [" ".join(tokenize_caption(r)) for r in rs] for i, rs in refs.items()}
    res = {i: [" ".join(tokenize_caption(predictions[i]))] for i in refs}
    empty = [i for i, rs in gts.items() if not any(rs)]
    if empty:
        raise ValueError(f"{len(empty)} ids have no reference with any word, e.g. {_few(empty)}")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as err:
        raise ImportError(f"caption metrics need pycocoevalcap: {CAPTIONS_EXTRA}") from err
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)

    distance, encoder_name = None, None
    if fgd:
        text_encoder = _text_encoder(encoder)
        encoder_name = text_encoder.name
        predicted = text_encoder.encode([predictions[i] for i in refs])
        referenced = text_encoder.encode([r for rs in refs.values() for r in rs])
        distance = frechet_distance(predicted, referenced)
    return CaptionReport(float(bleu[3]), float(rouge), float(cider), distance, len(refs), encoder_name)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fit to the rows of ``a`` and ``b`` (n × d each, n ≥ 2).

    ``Tr((S_a S_b)^(1/2))`` is computed exactly without a matrix square root: with A, B the centred rows
    scaled by 1/sqrt(n-1) (so S_a = AᵀA), the eigenvalues of S_a S_b are the squared singular values of
    ABᵀ, so the trace is the nuclear norm of ABᵀ = Q_a R_a R_bᵀ Q_bᵀ, i.e. of the small R_a R_bᵀ. Unlike
    ``scipy.linalg.sqrtm`` (seconds at d=384 on 2 cores), this needs no eps for the singular covariances
    of sets smaller than the embedding dimension and has no imaginary round-off to discard.
    """
    a, b = _rows(a, "a"), _rows(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: {a.shape[1]} vs {b.shape[1]}")
    mean_gap = a.mean(axis=0) - b.mean(axis=0)
    r_a, r_b = _cov_factor(a), _cov_factor(b)
    trace_sqrt = np.linalg.svd(r_a @ r_b.T, compute_uv=False).sum()
    distance = mean_gap @ mean_gap + np.sum(r_a**2) + np.sum(r_b**2) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)  # identical sets give -1e-13 of round-off, never a real negative


def _rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected an (n, d) array with n >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: embeddings contain NaN or inf")
    return x


def _cov_factor(x: np.ndarray) -> np.ndarray:
    """R with RᵀR = the sample covariance of the rows of ``x``: at most min(n, d) rows."""
    centred = (x - x.mean(axis=0)) / np.sqrt(x.shape[0] - 1)
    return np.linalg.qr(centred, mode="r")


def _check_inputs(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Iterable[str]]
) -> dict[Hashable, list[str]]:
    """References as lists, in the predictions' id order, after the checks pycocoevalcap only asserts."""
    no_prediction = [i for i in references if i not in predictions]
    no_reference = [i for i in predictions if i not in references]
    if no_prediction or no_reference:
        parts = []
        if no_prediction:
            parts.append(
                f"{len(no_prediction)} ids have references but no prediction, e.g. {_few(no_prediction)}"
            )
        if no_reference:
            parts.append(
                f"{len(no_reference)} ids have a prediction but no references, e.g. {_few(no_reference)}"
            )
        raise ValueError("; ".join(parts))
    if not predictions:
        raise ValueError("no captions to score")
    not_text = [i for i, p in predictions.items() if not isinstance(p, str)]
    if not_text:
        raise ValueError(f"predictions must be one string per id; not a string for {_few(not_text)}")
    refs: dict[Hashable, list[str]] = {}
    for i in predictions:
        given = references[i]
        if isinstance(given, str):
            raise ValueError(f"references[{i!r}] is a string; pass a list of reference captions")
        refs[i] = list(given)
        if not refs[i] or not all(isinstance(r, str) for r in refs[i]):
            raise ValueError(f"references[{i!r}] must be a non-empty list of strings, got {given!r}")
    return refs


def _few(ids: list[Hashable], k: int = 5) -> str:
    return ", ".join(repr(i) for i in ids[:k]) + (", ..." if len(ids) > k else "")


def _text_encoder(encoder: str | TextEncoder | None) -> TextEncoder:
    from taxonomist.models.text import DEFAULT_TEXT_MODEL, TextEncoder

    if isinstance(encoder, TextEncoder):
        return encoder
    return TextEncoder(encoder or DEFAULT_TEXT_MODEL)
