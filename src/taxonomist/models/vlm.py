"""Vision-language models: any ``AutoModelForImageTextToText`` + ``AutoProcessor``, by hub id or folder.

Qwen2-VL and Qwen2.5-VL are the documented defaults. :func:`load_vlm` is the one loading path for
training, prediction and serving; :func:`random_vlm` builds a random-weight model from a config (tiny for
tests, real 2B/3B shapes for GPU throughput benchmarks) with a locally trained tokenizer and saves it as a
folder, so it goes through the same ``from_pretrained`` path a user's hub model does. transformers,
peft and bitsandbytes are imported lazily (extra ``vlm``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from taxonomist.devices import PRECISION_DTYPES, resolve_device, resolve_precision
from taxonomist.io import atomic_write_json

METADATA = "taxonomist_vlm.json"
"""Written beside the weights of every model taxonomist saves: task, schema, prompts and config."""

# Qwen's chat format; the hub models ship their own (richer) template, random models get this one.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Real shapes of the documented defaults (their hub configs), for random-weight benchmarks.
_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
        "text_heads": (4, 2),
        "mrope": [2, 3, 3],
        "vision": {"depth": 2, "embed_dim": 32, "num_heads": 2, "hidden_size": 64},
    },
    "2b": {
        "text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28},
        "text_heads": (12, 2),
        "mrope": [16, 24, 24],
        "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "hidden_size": 1536},
    },
}


@dataclass
class Decoding:
    """How a VLM generates (``models/build.py`` fills it from the ``generate`` section)."""

    batch_size: int
    max_new_tokens: int
    """Captions and unconstrained answers; constrained answers get what their longest valid answer takes."""
    constrained: bool
    """Attribute task: decode only JSON objects whose keys and values are valid for the category."""
    reasoning_max_chars: int
    temperature: float
    """0 = greedy."""
    top_p: float
    chunk_size: int
    """Rows per output part file of a batch job."""


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "vision-language models need transformers, peft and trl: pip install 'taxonomist[vlm]'"
        ) from err


@dataclass
class VLM:
    """A loaded model and its processor (tokenizer + image processor), ready to generate or train."""

    model: Any
    processor: Any

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    return PRECISION_DTYPES[resolve_precision("auto", device)]


def set_pixel_limits(processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Cap image size (so image tokens) on the processor, whichever way its version stores the limits."""
    if min_pixels > max_pixels:
        raise ValueError(f"model.min_pixels ({min_pixels}) is larger than model.max_pixels ({max_pixels})")
    image_processor = processor.image_processor
    image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(image_processor, name):
            setattr(image_processor, name, value)


def load_processor(name: str, min_pixels: int, max_pixels: int) -> Any:
    require_transformers()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name)
    set_pixel_limits(processor, min_pixels, max_pixels)
    # Decoder-only generation appends to the right end of every row: pad on the left.
    processor.tokenizer.padding_side = "left"
    return processor


def load_vlm(
    name: str,
    *,
    min_pixels: int,
    max_pixels: int,
    dtype: str = "auto",
    quantization: str = "none",
    attn_implementation: str | None = None,
    device: torch.device | str | None = None,
    adapter: str | Path | None = None,
) -> VLM:
    """Load ``name`` (hub id or folder) with its processor's pixel caps, optionally in 4-bit
    (``quantization="4bit"``) and with a LoRA adapter on top."""
    require_transformers()
    from transformers import AutoModelForImageTextToText

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization == "4bit":
        kwargs["quantization_config"] = nf4_config(torch_dtype)
        kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
    if quantization == "none":
        model.to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return VLM(model, load_processor(name, min_pixels, max_pixels))


def nf4_config(compute_dtype: torch.dtype) -> Any:
    """QLoRA quantization: 4-bit NF4 with double quantization, bf16 compute."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "model.quantization=4bit needs a CUDA GPU (bitsandbytes); use model.quantization=none on CPU"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype if compute_dtype != torch.float32 else torch.bfloat16,
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    file = Path(path) / METADATA
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def resolve_model_dir(path: str | Path) -> Path:
    """A training run's folder → its merged model (fastest to load and run), else its adapter; a model
    folder or hub id is returned as is."""
    path = Path(path)
    if not read_metadata(path):
        for sub in ("merged", "adapter"):
            if read_metadata(path / sub):
                return path / sub
    return path


def write_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    atomic_write_json(Path(path) / METADATA, metadata, indent=1, ensure_ascii=False)


# --- random-weight models built from configs ---------------------------------------------------------


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 800) -> Any:
    """A byte-level BPE with Qwen's special tokens, wrapped as a transformers Qwen2 tokenizer."""
    require_transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(corpus), trainer)
    return Qwen2Tokenizer(
        tokenizer_object=tokenizer,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


def random_vlm(
    output_dir: str | Path,
    corpus: Iterable[str],
    *,
    size: Literal["tiny", "2b"] = "tiny",
    vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Save a random-weight Qwen2-VL (processor included) to ``output_dir`` and return it.

    ``size="2b"`` has Qwen2-VL-2B-Instruct's real layer shapes and vocabulary size (151,936 rows, most
    unused by the small local tokenizer): the same compute per token as the hub model, for benchmarks.
    """
    require_transformers()
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

    output_dir = Path(output_dir)
    tokenizer = train_tokenizer(corpus)
    shape = _SHAPES[size]
    heads, kv_heads = shape["text_heads"]
    vocab = vocab_size or (151_936 if size == "2b" else len(tokenizer))
    token = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            **shape["text"],
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "vocab_size": vocab,
            "max_position_embeddings": 32768,
            "rope_scaling": {"type": "mrope", "mrope_section": shape["mrope"]},
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": True,
        },
        vision_config={
            **shape["vision"],
            "mlp_ratio": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir
