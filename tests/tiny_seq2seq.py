"""Tiny random seq2seq models for tests (and the offline ``benchmarks/taxonomy.py --seq2seq`` run):
the hub's SentencePiece models cannot be downloaded everywhere, so tokenizers are trained here."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from taxonomist.models.path_trie import TargetTrie
from taxonomist.models.seq2seq import Seq2SeqTaxonomyModel

_T5_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1},
    "small": {
        "d_model": 256,
        "d_ff": 1024,
        "d_kv": 32,
        "num_heads": 8,
        "num_layers": 3,
        "num_decoder_layers": 3,
    },
}


def train_unigram_tokenizer(corpus: Sequence[str], vocab_size: int) -> Any:
    """A T5-style tokenizer (NFKC, Metaspace, Unigram; ``<pad>``=0, ``</s>``=1 appended, ``<unk>``=2)
    trained on ``corpus``: the hub's SentencePiece models cannot be downloaded everywhere."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(
        list(corpus),
        trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>"),
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def random_t5(
    output_dir: str | os.PathLike,
    corpus: Sequence[str],
    *,
    size: str = "tiny",
    vocab_size: int = 4000,
    seed: int = 0,
) -> Path:
    """Save a random-weight T5 (``tiny``: d_model 32, 1+1 layers; ``small``: 256, 3+3) with a tokenizer
    trained on ``corpus`` to ``output_dir``, loadable by :meth:`Seq2SeqTaxonomyModel.from_pretrained`."""
    from transformers import T5Config, T5ForConditionalGeneration

    if size not in _T5_SHAPES:
        raise ValueError(f"unknown T5 size {size!r}; choose from {sorted(_T5_SHAPES)}")
    tokenizer = train_unigram_tokenizer(corpus, vocab_size)
    config = T5Config(
        vocab_size=len(tokenizer),
        **_T5_SHAPES[size],
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    output_dir = Path(output_dir)
    T5ForConditionalGeneration(config).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def generate_targets(
    model: Seq2SeqTaxonomyModel,
    titles: Sequence[str],
    num_beams: int = 4,
    num_return_sequences: int = 1,
    batch_size: int = 32,
) -> list[list[str]]:
    """Decoded target texts (``"a > b > c | brand"``), ``num_return_sequences`` per title, best first."""
    return [
        [model._decode(g) for g, _, _ in outs]
        for outs in model._generate(titles, num_beams, num_return_sequences, batch_size)
    ]


def prefix_allowed_tokens_fn(trie: TargetTrie, start: int = 1) -> Callable[[int, torch.Tensor], list[int]]:
    """The trie constraint for ``model.generate(prefix_allowed_tokens_fn=...)``: the first ``start`` ids
    are input (1 for encoder-decoder models: the decoder start token)."""

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return trie.allowed(input_ids[start:].tolist()).tolist()

    return allowed
