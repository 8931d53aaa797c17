"""Seq2seq taxonomy generation on a tiny random T5 (and GPT-2) with a locally trained Unigram tokenizer.

The models are saved to a folder and loaded through ``Seq2SeqTaxonomyModel.from_pretrained``, the code
path a hub id takes. The key property: every beam, even of an untrained model, spells a taxonomy path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from taxonomist.data.taxonomy import Taxonomy
from taxonomist.models.path_trie import TargetTrie, format_target, parse_target
from taxonomist.models.seq2seq import DEFAULT_PROMPT, Seq2SeqTaxonomyModel
from taxonomist.training.seq2seq import fit_seq2seq
from tests.tiny_seq2seq import generate_targets, prefix_allowed_tokens_fn, random_t5, train_unigram_tokenizer

# peft 0.21 calls a transformers 5 method that is deprecated; nothing to fix on our side.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

PATHS = [
    ("Men", "Shoes", "Casual"),
    ("Men", "Shoes", "Formal"),
    ("Men", "Shirts", "Casual"),
    ("Women", "Shoes", "Casual"),
    ("Women", "Shoes", "Heels"),
    ("Women", "Bags", "Tote"),
    ("Kids", "Shoes", "Casual"),
    ("Kids", "Toys", "Blocks"),
]
BRANDS = ["Nike", "Puma", "", "Zara"]


def _data() -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    titles, paths, brands = [], [], []
    for i, path in enumerate(PATHS):
        for j in range(3):
            brand = BRANDS[(i + j) % len(BRANDS)]
            titles.append(
                f"{brand} {path[2].lower()} {path[1].lower()} for {path[0].lower()} size {j}".strip()
            )
            paths.append(path)
            brands.append(brand)
    return titles, paths, brands


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    _, paths, brands = _data()
    return Taxonomy.from_paths(paths, brands=brands)


def _corpus() -> list[str]:
    titles, paths, brands = _data()
    corpus = [DEFAULT_PROMPT + t for t in titles] + [
        format_target(p, b) for p, b in zip(paths, brands, strict=True)
    ]
    return corpus * 4


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    """A random 1-layer T5 (d_model 32) and its tokenizer, saved like a hub checkpoint."""
    return random_t5(tmp_path_factory.mktemp("tiny-t5"), _corpus(), size="tiny", vocab_size=120)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """A random 1-layer GPT-2 with the same tokenizer: the decoder-only path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_unigram_tokenizer(_corpus(), vocab_size=120)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=128,
        bos_token_id=1,
        eos_token_id=1,
    )
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _assert_valid(model: Seq2SeqTaxonomyModel, taxonomy: Taxonomy, titles: list[str]) -> None:
    pred, brands = model.predict(titles, num_beams=3, batch_size=5)
    assert model.snapped_ == 0
    assert len(brands) == len(titles) and all(isinstance(b, str) for b in brands)
    assert ((pred.path_ids >= 0) & (pred.path_ids < len(taxonomy))).all()
    conf = pred.level_confidence
    assert conf.shape == (len(titles), taxonomy.depth)
    assert ((conf >= 0) & (conf <= 1)).all() and (conf > 0).all()
    assert (np.diff(conf, axis=1) <= 1e-9).all()


def test_format_parse_round_trip() -> None:
    assert format_target(("Men", "Shoes", "Casual"), "Nike") == "Men > Shoes > Casual | Nike"
    assert format_target(("Men", "Shoes", "Casual"), "") == "Men > Shoes > Casual |"
    for path in PATHS:
        for brand in ["Nike", "", "Louis  Philippe"]:
            assert parse_target(format_target(path, brand)) == (path, " ".join(brand.split()))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Men>Shoes>Casual|Nike", (("Men", "Shoes", "Casual"), "Nike")),
        ("Men > Shoes", (("Men", "Shoes"), "")),
        ("Men > Shoes > Casual |Nike > x", (("Men", "Shoes", "Casual"), "Nike > x")),
        ("Men > > Casual", (("Men", "", "Casual"), "")),
        ("Men > Shoes > ", (("Men", "Shoes"), "")),
        ("| Nike", ((), "Nike")),
        ("", ((), "")),
        ("  ", ((), "")),
    ],
)
def test_parse_junk(text: str, expected: tuple) -> None:
    assert parse_target(text) == expected


def test_trie_matches_training_tokenization(t5_dir: Path, taxonomy: Taxonomy) -> None:
    model = Seq2SeqTaxonomyModel.from_pretrained(t5_dir, taxonomy)
    trie, tok = model.trie, model.tokenizer
    assert isinstance(trie, TargetTrie) and not trie.unreachable
    for pid, path in enumerate(taxonomy.paths):
        seq = trie.sequences[pid]
        assert trie.match(seq) == (pid, len(seq))
        assert trie.walk(seq) == -1  # complete: brand tokens are free
        target = model.encode_target(pid, "Nike")
        assert target[: len(seq)] == seq and target[-1] == tok.eos_token_id
        assert tok(format_target(path, "Nike"), add_special_tokens=False)["input_ids"][: len(seq)] == seq
        # per-level ends fix each node and never go backwards
        ends = trie.level_ends[pid]
        assert ends == sorted(ends) and ends[-1] <= len(seq)
    free = set(trie.allowed(trie.sequences[0]).tolist())
    assert tok.eos_token_id in free and tok.pad_token_id not in free and tok.unk_token_id not in free
    assert trie.allowed([]).tolist() == sorted({s[0] for s in trie.sequences})
    assert trie.allowed([tok.unk_token_id]).tolist() == [tok.eos_token_id]  # off the trie: end
    # "Casual" under four parents: one label, four distinct leaves
    casual = [pid for pid, p in enumerate(taxonomy.paths) if p[2] == "Casual"]
    assert len(casual) == 4 and len({tuple(trie.sequences[pid]) for pid in casual}) == 4


def test_untrained_beams_are_all_valid_paths(t5_dir: Path, taxonomy: Taxonomy) -> None:
    model = Seq2SeqTaxonomyModel.from_pretrained(t5_dir, taxonomy)
    titles = _data()[0][:6]
    outputs = generate_targets(model, titles, num_beams=4, num_return_sequences=4, batch_size=4)
    assert [len(o) for o in outputs] == [4] * len(titles)
    for texts in outputs:
        for text in texts:
            path, _ = parse_target(text)
            assert path in taxonomy, text
    _assert_valid(model, taxonomy, titles)

    # The same trie through generate's own prefix_allowed_tokens_fn.
    batch = model.tokenizer(titles, return_tensors="pt", padding=True)
    with torch.inference_mode():
        sequences = model.model.generate(
            **batch,
            num_beams=3,
            num_return_sequences=3,
            max_new_tokens=model.max_new_tokens,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(model.trie),
        )
    for seq in sequences[:, 1:].tolist():
        assert model.trie.match(seq)[0] >= 0


def _exact_path_probs(model: Seq2SeqTaxonomyModel, title: str) -> np.ndarray:
    """P(path | title) of every path by teacher forcing under the trie mask: what confidence should be."""
    trie, source = model.trie, torch.tensor([model.encode_source(title)])
    start = model.model.generation_config.decoder_start_token_id
    probs = []
    for seq in trie.sequences:
        with torch.inference_mode():
            logits = model.model(
                input_ids=source, decoder_input_ids=torch.tensor([[start, *seq[:-1]]])
            ).logits[0]
        total = 0.0
        for i, tok in enumerate(seq):
            allowed = trie.allowed(seq[:i]).tolist()
            total += torch.log_softmax(logits[i, allowed], dim=-1)[allowed.index(tok)].item()
        probs.append(np.exp(total))
    return np.array(probs)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_confidence_is_constrained_path_probability(t5_dir: Path, taxonomy: Taxonomy, num_beams: int) -> None:
    model = Seq2SeqTaxonomyModel.from_pretrained(t5_dir, taxonomy)
    titles = _data()[0][:3]
    pred, _ = model.predict(titles, num_beams=num_beams)
    for i, title in enumerate(titles):
        probs = _exact_path_probs(model, title)
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)  # a distribution over valid paths
        assert pred.confidence[i] == pytest.approx(probs[pred.path_ids[i]], rel=1e-4)
        # level 1 = total probability of every path under the predicted supergroup
        top = taxonomy.paths[pred.path_ids[i]][0]
        under = [pid for pid, p in enumerate(taxonomy.paths) if p[0] == top]
        assert pred.level_confidence[i, 0] == pytest.approx(probs[under].sum(), rel=1e-4)


def test_snap_when_no_complete_path(t5_dir: Path, taxonomy: Taxonomy, monkeypatch) -> None:
    model = Seq2SeqTaxonomyModel.from_pretrained(t5_dir, taxonomy)
    junk = model.tokenizer("Men > Shoes > Casul | Nike", add_special_tokens=False)["input_ids"]
    assert model.trie.match(junk)[0] == -1
    monkeypatch.setattr(model, "_generate", lambda titles, *args: [[(junk, None, 0)] for _ in titles])
    pred, brands = model.predict(["a title"])
    assert model.snapped_ == 1
    assert pred.paths(taxonomy) == [("Men", "Shoes", "Casual")] and brands == ["Nike"]
    assert (pred.level_confidence == 0).all()


def test_fit_predict_save_load(t5_dir: Path, taxonomy: Taxonomy, tmp_path: Path) -> None:
    titles, paths, brands = _data()
    model = Seq2SeqTaxonomyModel.from_pretrained(t5_dir)  # no taxonomy: fit builds it
    losses = fit_seq2seq(
        model,
        titles,
        paths,
        brands,
        tmp_path / "out",
        epochs=10,
        learning_rate=1e-2,
        batch_size=8,
        logging_steps=3,
    )
    assert len(losses) >= 5 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert model.taxonomy is not None and model.taxonomy.paths == taxonomy.paths
    _assert_valid(model, taxonomy, titles)
    before, before_brands = model.predict(titles, num_beams=3, batch_size=5)

    loaded = Seq2SeqTaxonomyModel.from_pretrained(tmp_path / "out")  # taxonomy comes from the folder
    assert loaded.taxonomy is not None and loaded.taxonomy.paths == taxonomy.paths
    after, after_brands = loaded.predict(titles, num_beams=3, batch_size=5)
    np.testing.assert_array_equal(after.path_ids, before.path_ids)
    np.testing.assert_allclose(after.level_confidence, before.level_confidence, rtol=1e-4, atol=1e-6)
    assert after_brands == before_brands


def test_fit_lora_merges_adapters(t5_dir: Path, taxonomy: Taxonomy, tmp_path: Path) -> None:
    titles, paths, brands = _data()
    model = Seq2SeqTaxonomyModel.from_pretrained(t5_dir, taxonomy, prompt="product: ")
    base = {k: v.clone() for k, v in model.model.state_dict().items()}
    fit_seq2seq(model, titles, paths, brands, tmp_path, epochs=1, learning_rate=1e-2, batch_size=8, lora=True)
    state = model.model.state_dict()
    assert set(state) == set(base)  # merged: a plain checkpoint again
    assert any(not torch.equal(state[k], base[k]) for k in base if k.endswith(("q.weight", "v.weight")))
    _assert_valid(model, taxonomy, titles[:6])
    assert Seq2SeqTaxonomyModel.from_pretrained(tmp_path).prompt == "product: "


def test_decoder_only_model(gpt2_dir: Path, taxonomy: Taxonomy, tmp_path: Path) -> None:
    titles, paths, brands = _data()
    model = Seq2SeqTaxonomyModel.from_pretrained(gpt2_dir, taxonomy)
    assert not model.is_encoder_decoder
    for texts in generate_targets(model, titles[:4], num_beams=3, num_return_sequences=3):
        assert all(parse_target(t)[0] in taxonomy for t in texts)
    fit_seq2seq(model, titles, paths, brands, tmp_path, epochs=2, learning_rate=1e-2, batch_size=8, lora=True)
    _assert_valid(model, taxonomy, titles[:6])


def test_paths_the_tokenizer_cannot_tell_apart_stop_training_by_name(t5_dir: Path, tmp_path: Path) -> None:
    """Regression: two labels the tokenizer reads as the same tokens (<unk> for CJK here) or a '|' inside
    a label made some paths unreachable; training only warned, taught their rows tokens the decoder reads
    as another path, and prediction could never return them."""
    paths = [("Home", "家具", "Chairs"), ("Home", "厨房", "Chairs"), ("Bags", "Tote", "Canvas")]
    titles = ["a chair", "another chair", "a tote"]
    model = Seq2SeqTaxonomyModel.from_pretrained(t5_dir)
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=r"could never be predicted \(1 training rows"),
    ):
        fit_seq2seq(model, titles, paths, None, tmp_path / "out", epochs=1)
