"""Typed run configuration: YAML file + ``key.sub=value`` overrides, saved beside every checkpoint.

Configs never enter modules: builders read these dataclasses and pass plain arguments on.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml

from taxonomist.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema of :class:`RunConfig`."""


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric setting, checked when a config is read: a chunk size of 0 or a
    validation share of 1.5 fails at load time, naming the key, instead of deep inside a run."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"

    def check(self, value: float, where: str) -> None:
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number {self}, got {value!r}")
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or above:
            raise ConfigError(f"{where} must be {self}, got {value!r}")


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Probability = Annotated[float, Range(0, 1)]
"""A share or probability, 0 and 1 included."""
OpenFraction = Annotated[float, Range(0, 1, low_open=True, high_open=True)]
"""A share of rows split off: both parts must keep rows."""
PositiveFraction = Annotated[float, Range(0, 1, low_open=True)]
FractionBelowOne = Annotated[float, Range(0, 1, high_open=True)]
"""Label smoothing, dropout, warmup share: at 1 nothing would be left to learn or train."""


@dataclass
class CatalogConfig:
    """Where the labelled catalog is and how to read it."""

    path: str = "{data_dir}/fashion-product-images/styles.csv"
    """CSV/Parquet file (generic layout) or dataset folder (meesho layout); ``{data_dir}`` expands."""
    layout: Literal["generic", "meesho"] = "generic"
    id_column: str = "id"
    category_column: str = "masterCategory"
    attributes: list[str] = field(
        default_factory=lambda: ["gender", "subCategory", "articleType", "baseColour", "season", "usage"]
    )
    """Attribute columns (generic layout); empty = every other column."""
    image_root: str | None = None
    """Folder the image template is relative to; default: the catalog file's folder."""
    image_template: str | None = None
    """Image path per row, e.g. ``images/{id}.jpg`` (generic default) or ``train_images/{id:06d}.jpg``
    (Meesho default); ``{category}`` is filled in too."""
    categories: list[str] = field(default_factory=list)
    """Keep only these categories (empty = all)."""
    min_rows_per_category: NonNegativeInt = 500
    remaps: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per-category column copies before naming, e.g. ``{Sarees: {attr_1: attr_4}}``."""
    schema: str | None = None
    """Schema file (JSON/YAML); default: inferred from the training rows."""
    limit: PositiveInt | None = None
    """Use only the first N rows (after a seeded shuffle): quick demos and smoke runs."""
    text_columns: list[str] = field(default_factory=list)
    """Listing text columns (e.g. title, description; generic layout), normalised (NFKC, whitespace) and
    joined into column ``text``; a missing or empty text is "". The listing heads (``heads.inputs``) and
    the self-training recipe's title view read it. Empty = the catalog has no text."""
    text_column: str | None = None
    """Older spelling of a single ``text_columns`` entry; both may not be set."""
    null_like_as_missing: bool = False
    """Treat null-like label strings (``nan``, ``None``, ``null``, ``N/A``, ``-``, blank) as missing
    instead of as classes; they are reported in ``data_report.json`` either way."""
    normalize_label_variants: bool = False
    """Merge case/whitespace variants of a value (``Black``, ``BLACK``, `` Black ``) into its most frequent
    spelling; reported either way."""
    max_label_length: PositiveInt = 100
    """Labels longer than this (characters) are reported as suspicious."""
    corrections: str | None = None
    """Reviewed labels (``taxonomist review``'s export: the catalog's id and category columns plus
    attribute columns) merged over the catalog's: a decision wins over the original label, and reviewed
    items the catalog lacks are added."""
    encoding: str = "utf-8"
    """Text encoding of the catalog CSV, e.g. ``latin-1`` or ``cp1252`` for exports of older systems."""

    def __post_init__(self) -> None:
        if self.text_column is not None:
            if self.text_columns and self.text_columns != [self.text_column]:
                raise ConfigError(
                    "catalog.text_column and catalog.text_columns are both set: name the columns in "
                    "catalog.text_columns only"
                )
            self.text_columns = [self.text_column]
            self.text_column = None
        repeated = sorted({c for c in self.text_columns if self.text_columns.count(c) > 1})
        if repeated:
            # The catalog reads a column once, so the checkpoint's record of its columns would not match.
            raise ConfigError(f"catalog.text_columns names {repeated} more than once: name each column once")


@dataclass
class MissingLabelConfig:
    policy: Literal["mask", "dynamic-fill", "similar-mode", "drop"] = "mask"
    max_nans: NonNegativeInt = 3
    """similar-mode: rows with more missing labels than this are skipped."""
    fill_value: str = "no"
    """dynamic-fill: value for missing attributes past the row's ``len``."""


@dataclass
class BackboneConfig:
    name: str = "efficientnet-lite0"
    """Registry name (efficientnet-lite0/1/2) or any Hugging Face vision model id or local directory."""
    size: PositiveInt | None = None
    """Input side in pixels; default: the backbone's own."""
    resize: Literal["pad", "crop", "squash"] = "pad"
    color_features: bool = True
    """Append a foreground colour histogram: ImageNet features are nearly colour-blind."""
    pretrained: bool = True


@dataclass
class EmbedConfig:
    batch_size: PositiveInt = 32
    num_workers: NonNegativeInt = 2
    """Image-decoding worker processes (0 = decode in the main process)."""
    cache_dir: str | None = None
    """Feature cache folder; default ``$TAXONOMIST_CACHE`` or ``~/.cache/taxonomist``."""
    max_pixels: PositiveInt = 4096 * 4096
    device: str = "auto"
    """Where the backbone runs: auto (the GPU when there is one), cpu, cuda, cuda:N."""
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = "torch"
    """What computes the features heads are fitted on (training, ``embed``, ``evaluate``): auto = the
    fastest installed one (ONNX Runtime / OpenVINO on CPU, torch on a GPU). torch by default, so
    feature caches filled before runtimes existed stay valid; predict and serve default to auto."""
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    """fp32 = torch's numbers; bf16 = OpenVINO's bf16 (faster on CPUs with bf16 units, features differ
    slightly, so they get their own cache entries); int8 needs ``taxonomist export --calibrate``."""


@dataclass
class HeadsConfig:
    hidden: list[PositiveInt] = field(default_factory=lambda: [512, 256])
    """Shared trunk widths (FC 512 → FC 256 by default)."""
    category_dim: PositiveInt = 16
    dropout: FractionBelowOne = 0.2
    inputs: list[Literal["image", "text"]] = field(default_factory=lambda: ["image"])
    """What the heads read: ``[image]`` (default), or ``[image, text]`` for listing heads that fuse the
    catalog's text (``catalog.text_columns``, settings in ``text``) with the image features."""
    members: PositiveInt = 1
    """Heads of the ``heads`` recipe (image or listing): train this many from seeds ``train.seed``, +1, …
    and predict their mean probability (a deep ensemble): more accurate (``benchmarks/attributes.py``,
    ``benchmarks/multimodal.py``) for this many times the training seconds. Fine-tuning and
    self-training refuse it."""

    def __post_init__(self) -> None:
        # [] trained image heads and [text] still read the images: say what the heads can read instead.
        if sorted(self.inputs) not in (["image"], ["image", "text"]):
            raise ConfigError(
                f"heads.inputs must be [image] or [image, text] (the image is always read), got {self.inputs}"
            )


@dataclass
class TextConfig:
    """Text features of listing heads (``heads.inputs: [image, text]``)."""

    encoder: str = "all-MiniLM-L6-v2"
    """sentence-transformers id or directory; the default resolves to the offline PyPI package."""
    max_length: PositiveInt = 64
    batch_size: PositiveInt = 128
    lexical: bool = True
    """Add the lexical view: TF-IDF word 1–2-grams + char 2–5-grams through a learned n-gram bag."""
    lexical_width: PositiveInt = 128
    """Width of the lexical n-gram vectors."""
    probe: bool = True
    """Add the lexical probe's per-attribute probabilities (TF-IDF n-grams ⊕ category, one logistic
    regression per attribute) to the text features, cross-fitted on the training rows."""
    probe_folds: Annotated[int, Range(2)] = 5
    """Folds of the probe's cross-fitting: each training row's probe features come from a model fitted
    on the other folds."""
    probe_c: PositiveFloat = 20.0
    """Inverse regularisation of the probe's logistic regressions."""
    fusion: Literal["concat", "gated"] = "concat"
    text_dropout: FractionBelowOne = 0.3
    """Modality dropout: share of training rows whose text is hidden, so blank titles stay well served."""
    image_dropout: FractionBelowOne = 0.0
    """Share of training rows whose image is hidden; above 0, ``predict.allow_missing_image`` can
    predict rows with an unreadable image from their text."""
    image_fallback: bool = True
    """Also train image-only heads (the image recipe's, on the same rows) and score rows without text
    with them: a blank title then scores as the image model does."""


@dataclass
class TrainConfig:
    epochs: PositiveInt = 40
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 2e-3
    weight_decay: NonNegativeFloat = 1e-4
    warmup_epochs: NonNegativeInt = 1
    patience: PositiveInt = 8
    """Early stopping: epochs without a better dev score."""
    dev_fraction: OpenFraction = 0.1
    """Share of each category held out as dev: it picks the epoch, temperatures and other choices."""
    test_fraction: FractionBelowOne = 0.1
    """Share of each category held out as test: never seen by a choice, only reported (0 = no test)."""
    group_duplicate_images: bool = True
    """Rows whose images are byte-identical land in the same part, so a copy never scores its twin."""
    seed: int = 0
    label_smoothing: FractionBelowOne = 0.0
    class_balance: NonNegativeFloat | Literal["dev"] = 0.0
    """Prediction-time logit adjustment strength: ``-strength · log(class prior)`` lifts rare values
    (0 = off, 1 = full prior correction); ``dev``: per attribute, the strength of 0, 0.25, … 1 that
    scores best on dev (the heads recipe and self-training)."""
    calibrate: bool = True


@dataclass
class FinetuneConfig:
    """Recipe ``finetune``: the whole network trained end to end, then phase 2 per head."""

    warm_start: bool = True
    """Train the MLP heads on cached frozen features first, then fine-tune everything (LP-FT, Kumar et
    al. 2022): random heads would push large gradients through the pretrained backbone early on."""
    freeze_batchnorm: bool = True
    """Keep BatchNorm running statistics fixed (layers in eval mode; affine weights still train): with
    small batches, batch statistics are noisy and shift the features the warm-started heads expect."""
    head: Literal["mlp", "attention"] = "mlp"
    """mlp: the core's AttributeHeads on pooled features; attention: a spatial + channel
    attention head per attribute on the backbone's feature map."""
    epochs: PositiveInt = 5
    batch_size: PositiveInt = 32
    grad_accumulation: PositiveInt = 1
    backbone_lr: PositiveFloat = 1e-4
    heads_lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-2
    scheduler: Literal["cosine", "plateau"] = "cosine"
    warmup_epochs: NonNegativeFloat = 0.5
    clip_grad_norm: NonNegativeFloat = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """bf16/fp16 autocast on GPU (accelerate); CPU runs stay in float32."""
    gradient_checkpointing: bool = False
    patience: PositiveInt = 3
    label_smoothing: FractionBelowOne = 0.1
    focal_gamma: NonNegativeFloat = 0.0
    mmd: bool = False
    """Add an MMD term between training-batch and validation-batch pooled features."""
    mmd_weight: NonNegativeFloat = 0.1
    """λ of the MMD term."""
    augment_p: Probability = 0.5
    hue: Annotated[float, Range(0, 0.5)] = 0.0
    """Hue jitter (opt-in): hue shifts change colour labels, so they are off by default."""
    color_jitter: NonNegativeFloat = 0.2
    """Brightness, contrast and saturation jitter strength: they keep the hue, but shade labels ("Navy
    Blue" vs "Blue", "Grey" vs "Black") move with them; lower it for catalogs with fine shades."""
    phase2_epochs: NonNegativeInt = 3
    """Phase 2: per attribute, only its head trains, on every row labelled for it (cached features)."""
    num_workers: NonNegativeInt = 2
    max_steps_per_epoch: PositiveInt | None = None
    """Cap on optimizer steps per epoch (smoke runs and CPU budgets)."""


@dataclass
class SelfTrainingConfig:
    """Recipe ``self-train``: heads retrained for a few rounds on labels ∪ pseudo-labels of unlabeled rows.

    A pseudo-label (row, attribute) is kept only where every view of the image (original, mirrored)
    gives the same value and the calibrated probability of that value reaches ``threshold``.
    """

    labeled_fraction: PositiveFraction = 0.05
    """Share of the training split (per category, seeded) whose labels are kept; the rest of the split
    joins the unlabeled pool with its labels hidden (they only score pseudo-label precision). 1.0 = every
    label is used and the pool is only the rows that carry no label at all."""
    dev_fraction: OpenFraction = 0.25
    """Share of the labeled rows held out to pick epochs, fit temperatures and the best round: the data
    step's test part is only ever reported on."""
    rounds: NonNegativeInt = 3
    """Self-training rounds after round 0 (supervised on the labeled rows alone)."""
    threshold: Probability = 0.9
    """Minimum calibrated probability (mean over views) for a pseudo-label."""
    require_agreement: bool = True
    """Keep a pseudo-label only where the argmax is the same in every view."""
    value_fraction: PositiveFraction = 1.0
    """Per (attribute, value), keep only the most confident share of the rows pseudo-labelled with it
    (1.0 = no cap): frequent values cannot crowd rare ones out of the pseudo-labelled set."""
    views: list[Literal["hflip"]] = field(default_factory=lambda: ["hflip"])
    """Augmented views predicted besides the original image."""
    text_view: bool = True
    """Where the catalog has listing text (``catalog.text_columns``), multiply each image view's
    calibrated probabilities with those of a title classifier fit on the same labeled rows (and
    calibrated on dev) before selection: titles name attributes the image model gets wrong, so the
    teacher labels cells the student could not have labeled itself. The student stays image-only. With
    listing heads (``heads.inputs: [image, text]``) the student, and so the teacher, reads the title
    itself and this view is not used."""
    warm_start: bool = False
    """Start each round's heads from the previous round's weights instead of a fresh (seeded) init. Off:
    on fashion-product-images it was no better on held-out labeled rows and carries the teacher's
    mistakes forward (docs/benchmarks.md)."""
    seed: int = 0


@dataclass
class PredictConfig:
    min_confidence: Probability = 0.0
    """Calibrated confidence a value needs to be written; below it, the placeholder is written."""
    placeholder: str = ""
    """Written instead of a value whose confidence is below ``min_confidence``."""
    chunk_size: PositiveInt = 512
    """Rows per output part: the unit of resume after a crash."""
    allow_missing_image: bool = False
    """Listing heads trained with ``text.image_dropout`` > 0: rows whose image cannot be read are
    predicted from their text (and still listed in the errors file) instead of skipped."""
    max_error_share: Probability = 0.5
    """A job whose share of failed rows (errors.csv) is above this ends with exit status 2 (its outputs
    are still written): most rows failing means a wrong image folder or file, not bad rows. A job where
    every row failed always ends so."""


@dataclass
class RunConfig:
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    missing_labels: MissingLabelConfig = field(default_factory=MissingLabelConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, _dump_yaml(self.to_dict()))


@dataclass
class TitleDataConfig:
    """Where the labelled titles are and how to read them."""

    path: str = "{data_dir}/flipkart-products/products.csv"
    layout: Literal["flipkart", "indoml"] = "flipkart"
    depth: PositiveInt = 3
    """flipkart: how many levels of the category tree form the path."""
    taxonomy: str | None = None
    """Taxonomy file (JSON, or CSV of level columns + brand); default: the training rows' paths."""
    limit: PositiveInt | None = None
    """Use only the first N rows after a seeded shuffle: quick demos and smoke runs."""


@dataclass
class EncoderConfig:
    name: str = "all-MiniLM-L6-v2"
    """sentence-transformers id or directory; the default resolves to the offline PyPI package."""
    max_length: PositiveInt = 64
    batch_size: PositiveInt = 128
    finetune_epochs: NonNegativeInt = 2
    """Epochs fine-tuning the encoder jointly with the heads (0 = frozen embeddings)."""
    finetune_lr: PositiveFloat = 5e-5
    finetune_batch_size: PositiveInt = 32


@dataclass
class RetrievalConfig:
    k: PositiveInt = 10
    temperature: PositiveFloat = 0.05


@dataclass
class TaxonomyHeadsConfig:
    hidden: NonNegativeInt = 0
    """Width of a shared hidden layer (0 = linear heads on the embedding)."""
    epochs: NonNegativeInt = 30
    """Extra epochs for the heads on frozen (possibly fine-tuned) embeddings."""
    lr: PositiveFloat = 3e-3
    batch_size: PositiveInt = 256
    label_smoothing: FractionBelowOne = 0.1
    scale: PositiveFloat = 8.0
    """Embeddings are unit vectors; scaling them lets linear heads reach confident logits."""
    beam_width: PositiveInt = 5


@dataclass
class LexicalConfig:
    C: PositiveFloat = 0.5
    temperature: PositiveFloat = 0.1
    """Softmax temperature turning SVM margins into path probabilities for the soft ensemble."""


@dataclass
class BrandConfig:
    max_tokens: PositiveInt = 4
    """Longest title prefix considered as a brand."""
    none_threshold: Probability | None = None
    """Predict "no brand" only when its probability is at least this (0.5 ≈ plain argmax). None: chosen
    on the dev split (the best item accuracy that keeps ``min_no_brand_accuracy``). An empty brand field
    in scraped catalogs mostly means "not recorded", so training over-learns "none" and the threshold
    lands high; both brand and no-brand accuracy are reported."""
    min_no_brand_accuracy: Probability = 0.5
    """When the threshold is chosen on dev: the share of dev rows without a brand that must still be
    predicted as brandless."""


@dataclass
class Seq2SeqConfig:
    """The seq2seq generator, fitted when ``train.methods`` lists ``seq2seq``."""

    model: str = "google/flan-t5-small"
    epochs: PositiveInt = 3
    lr: PositiveFloat = 5e-4
    batch_size: PositiveInt = 32
    lora: bool = False
    num_beams: PositiveInt = 4
    prompt: str = "classify product: "


@dataclass
class EnrichConfig:
    corpus: str | None = None
    """CSV/Parquet of an external product corpus (titles + descriptions); None = enrichment off."""
    title_column: str = "title"
    text_columns: list[str] = field(default_factory=lambda: ["description"])
    """Joined with ", " into the text appended to a matching title."""
    k: PositiveInt = 1
    max_chars: PositiveInt = 200
    encoder: str = "all-MiniLM-L6-v2"
    """Frozen encoder for the corpus search (kept apart from the fine-tuned one, so the cache holds)."""


TaxonomyMethod = Literal["retrieval", "heads", "lexical", "seq2seq"]


@dataclass
class TaxonomyTrainConfig:
    dev_fraction: OpenFraction = 0.1
    """Share of each category's rows that choose (the ensemble) and score ``taxonomy train``."""
    test_fraction: FractionBelowOne = 0.1
    """Share kept for ``taxonomy evaluate`` only: no choice ever sees these rows."""
    stratify_depth: PositiveInt = 1
    """Path levels whose categories the split keeps in proportion (1: the top level)."""
    seed: int = 0
    methods: list[TaxonomyMethod] = field(default_factory=lambda: ["retrieval", "heads", "lexical"])
    """Methods to fit: retrieval, heads, lexical, seq2seq; the ensemble combines all of them."""


@dataclass
class TaxonomyPredictConfig:
    method: TaxonomyMethod | Literal["ensemble"] = "ensemble"
    """retrieval | heads | lexical | seq2seq | ensemble (the fitted methods combined)."""
    ensemble: Literal["soft", "vote", "dev"] = "dev"
    """soft: sum of path log-probabilities (seq2seq, which gives only its top path, is left out);
    vote: PRMAS's hierarchy-compliant hard vote over every method; dev: whichever of the two has the
    better path accuracy on the dev split (soft on a tie)."""
    leaf_templates: Literal["on", "off", "dev"] = "dev"
    """Brand leaves: where most training leaves under a parent are "<the title's first words> <parent>"
    (flipkart: Watches > Wrist Watches > Lamex Wrist Watches), predict that leaf from the title itself, so a
    brand missing from training still gets its own leaf. dev: on if it raises dev path accuracy."""
    leaf_template_share: OpenFraction = 0.5
    """Share of a parent's training rows that must follow the pattern for its leaves to be built."""
    leaf_template_min_rows: PositiveInt = 2
    """Training rows a parent needs before its pattern is trusted."""
    chunk_size: PositiveInt = 2048


@dataclass
class TaxonomyConfig:
    data: TitleDataConfig = field(default_factory=TitleDataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    heads: TaxonomyHeadsConfig = field(default_factory=TaxonomyHeadsConfig)
    lexical: LexicalConfig = field(default_factory=LexicalConfig)
    brand: BrandConfig = field(default_factory=BrandConfig)
    seq2seq: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)
    enrich: EnrichConfig = field(default_factory=EnrichConfig)
    train: TaxonomyTrainConfig = field(default_factory=TaxonomyTrainConfig)
    predict: TaxonomyPredictConfig = field(default_factory=TaxonomyPredictConfig)

    to_dict = RunConfig.to_dict
    save = RunConfig.save


# --- vision-language models ----------------------------------------------------------------------------

CAPTION_PROMPT = (
    "Generate a single-sentence, objective, and descriptive caption for the given image. Strive to be as "
    "comprehensive and detailed as possible, keeping it between 15 to 25 words. Your caption should focus "
    "on multiple significant visible elements: identify primary subjects (e.g., people, animals) and their "
    "actions or notable characteristics; describe key objects and their attributes; include specific brand "
    "names or clearly legible text from signs/labels; and mention the immediate setting or context if "
    "prominent. The caption must be in the present tense, maintain a neutral, factual tone (like a museum "
    "or news catalog entry), and avoid subjective opinions."
)
"""The OBSS captioning challenge's training prompt."""


@dataclass
class VLMModelConfig:
    name: str = "Qwen/Qwen2-VL-2B-Instruct"
    """Hub id or local folder of any ``AutoModelForImageTextToText`` + ``AutoProcessor``; documented
    defaults: Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct."""
    min_pixels: PositiveInt = 4 * 28 * 28
    max_pixels: PositiveInt = 256 * 28 * 28
    """Image size cap: Qwen2-VL spends one token per 28×28 pixels, so this bounds image tokens (256)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on a GPU that supports it, float16 on an older GPU, float32 on CPU."""
    quantization: Literal["none", "4bit"] = "none"
    """4bit: NF4 with double quantization and bf16 compute (bitsandbytes, CUDA only): QLoRA."""
    attn_implementation: str | None = None
    """e.g. sdpa or flash_attention_2; None = the transformers default."""


@dataclass
class PromptConfig:
    system: str = "You are a catalog assistant. You read product images and answer with compact JSON."
    attributes: str = (
        "Product category: {category}. Give this product's {attributes} as a JSON object with exactly "
        "those keys."
    )
    """User turn of the attribute task; ``{category}`` and ``{attributes}`` (comma-joined) are filled in."""
    title: str = 'Its listing title: "{title}".'
    """Appended to the attribute prompt of a row whose catalog has text (``catalog.text_columns``):
    the title is read with the image; rows without text get the prompt alone. Empty = never."""
    caption: str = CAPTION_PROMPT
    reasoning: str = (
        "First describe in one short sentence what you see that decides each attribute, then give the JSON."
    )
    """Appended to the attribute prompt when sampling reasoning chains (self-consistency)."""


@dataclass
class LoraSettings:
    r: PositiveInt = 8
    alpha: PositiveInt = 16
    dropout: FractionBelowOne = 0.05
    target_modules: str | list[str] = "all-linear"
    """all-linear = every linear layer of the language model (LLaMA-Factory's ``lora_target: all``)."""
    loraplus_lr_ratio: PositiveFloat | None = 16.0
    """LoRA+ (Hayou et al. 2024): B matrices learn this many times faster than A; None = off."""
    train_vision: bool = False
    """Also adapt the vision tower's linear layers (LLaMA-Factory freezes it by default)."""


@dataclass
class VLMTrainConfig:
    epochs: PositiveFloat = 3.0
    max_steps: int = -1
    """> 0 overrides epochs (smoke runs)."""
    lr: PositiveFloat = 1e-4
    batch_size: PositiveInt = 2
    grad_accumulation: PositiveInt = 4
    scheduler: str = "cosine"
    warmup_ratio: FractionBelowOne = 0.1
    max_grad_norm: NonNegativeFloat = 1.0
    weight_decay: NonNegativeFloat = 0.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 where the GPU supports it, else fp16 on GPU, nothing on CPU."""
    optim: str = "adamw_torch"
    """Any transformers optimizer name; QLoRA runs use paged_adamw_8bit."""
    gradient_checkpointing: bool = False
    save_steps: PositiveInt = 200
    save_total_limit: PositiveInt = 2
    logging_steps: PositiveInt = 10
    dev_fraction: OpenFraction = 0.1
    """Attributes: share of each category held out as dev (eval loss); captions: the validation share."""
    test_fraction: FractionBelowOne = 0.1
    """Attributes: share of each category held out as test, only reported (``vlm evaluate``)."""
    group_duplicate_images: bool = True
    """Attributes: byte-identical images never straddle train, dev and test."""
    seed: int = 0
    limit: PositiveInt | None = None
    """Use only the first N training examples (after the split)."""
    max_length: PositiveInt = 2048
    """Sequence length cap (LLaMA-Factory's cutoff_len); examples that would be cut are an error."""
    merge: bool = True
    """Also save the base model with the adapter merged in (``merged/``), the form predict loads fastest."""


@dataclass
class GenerateConfig:
    batch_size: PositiveInt = 8
    max_new_tokens: PositiveInt = 128
    """Captions and unconstrained answers; constrained answers get exactly the tokens their longest valid
    answer can take, so they are never cut."""
    constrained: bool = True
    """Attribute task: decode only JSON objects whose keys and values are valid for the category."""
    reasoning_max_chars: PositiveInt = 200
    """Self-consistency chains: most characters in the reasoning line (printable ASCII) before the answer."""
    temperature: NonNegativeFloat = 0.0
    """0 = greedy."""
    top_p: PositiveFraction = 1.0
    chunk_size: PositiveInt = 256
    """Rows per output part file (atomic, resumable)."""


@dataclass
class CaptionDataConfig:
    dataset: Literal["coco", "products"] = "coco"
    """coco: coco-mini-captions (5 references per image); products: fashion-product-images titles."""
    path: str = "{data_dir}/coco-mini-captions"
    limit: PositiveInt | None = None
    """Use only the first N images of each split (train, val), with all their captions."""


@dataclass
class ImproveConfig:
    """``vlm improve``: rounds of self-consistency on unlabeled images, then DPO with LoRA.

    Per round: K sampled chains (one reasoning line, then the constrained JSON answer) per item, a majority
    vote per attribute, one (chosen, rejected) pair per item whose agreement reaches the threshold, DPO on a
    fresh LoRA over the current model (the reference is that model), merged into the next round's model.
    LoRA shape and LoRA+ come from ``lora``; optimizer, scheduler, precision, max_length from ``train``.
    """

    rounds: NonNegativeInt = 3
    samples_per_item: PositiveInt = 6
    """K chains sampled per item."""
    temperature: PositiveFloat = 0.8
    """Above 0: K chains decoded greedily would be one chain K times (and generate refuses them)."""
    top_p: PositiveFraction = 0.95
    agreement_threshold: Probability = 0.6
    """Keep an item when the majority's share of its valid chains, averaged over the item's attributes,
    reaches this (a mean rather than a per-attribute minimum: with many attributes one uncertain attribute
    would otherwise discard an item whose other answers agree)."""
    max_items_per_round: PositiveInt | None = None
    """Items per round: consecutive slices of one seeded shuffle of the pool, so each round sees new items
    until the pool is used up; None = the whole pool every round."""
    beta: PositiveFloat = 0.1
    loss_type: str = "sigmoid"
    """Any trl DPO loss: sigmoid (DPO), ipo, hinge, robust, sigmoid_norm, …"""
    lr: PositiveFloat = 5e-6
    epochs: PositiveFloat = 1.0
    batch_size: PositiveInt = 2
    grad_accumulation: PositiveInt = 4
    max_steps: int = -1
    """> 0 overrides epochs (smoke runs)."""
    vote_check_val: bool = True
    """Also sample K chains on the validation items, so the majority-vote vs single-sample accuracy check
    has labelled items even when the pool has none (costs K generations per validation item a round)."""
    eval_reasoning: bool = False
    """Validate with the reasoning prompt; default: the prompt ``vlm predict`` uses (greedy JSON only)."""
    seed: int = 0


@dataclass
class VLMConfig:
    """Vision-language model runs: attribute extraction or captioning, SFT with LoRA/QLoRA, predict."""

    task: Literal["attributes", "caption"] = "attributes"
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    missing_labels: MissingLabelConfig = field(default_factory=MissingLabelConfig)
    captions: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    model: VLMModelConfig = field(default_factory=VLMModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: VLMTrainConfig = field(default_factory=VLMTrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    improve: ImproveConfig = field(default_factory=ImproveConfig)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, _dump_yaml(dataclasses.asdict(self)))


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build a dataclass from nested dicts, checking names, types and ranges so typos fail loudly."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {sorted(f'{where}{k}' for k in unknown)}; known: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked (and, for numbers, converted) against the type hint ``tp``."""
    if dataclasses.is_dataclass(tp):
        if value is None:  # a section whose settings are all commented out: its defaults
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, f"{where}.")
    origin = typing.get_origin(tp)
    if origin in _GENERIC_COERCERS:
        return _GENERIC_COERCERS[origin](tp, value, where)
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported config type {tp}")


def _coerce_annotated(tp: Any, value: Any, where: str) -> Any:
    base, *constraints = typing.get_args(tp)
    value = _coerce(base, value, where)
    for constraint in constraints:
        if isinstance(constraint, Range):
            constraint.check(value, where)
    return value


def _coerce_union(tp: Any, value: Any, where: str) -> Any:
    args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    if value is None and len(args) < len(typing.get_args(tp)):
        return None
    errors = []
    for arg in args:
        try:
            return _coerce(arg, value, where)
        except ConfigError as err:
            errors.append(err)
    if len(errors) == 1:  # an optional setting: the one type's own message says what is wrong
        raise errors[0]
    # Each alternative's own words, not the hint's repr (typing.Union[typing.Annotated[float, Range(..)]]).
    raise ConfigError(f"{where}: {value!r} fits none of its forms ({'; or '.join(map(str, errors))})")


_YAML_BOOL_WORDS = {True: ("on", "yes", "true", "y"), False: ("off", "no", "false", "n")}
"""What YAML 1.1 reads as a bool: a choice spelled so (``leaf_templates: off``) arrives as one."""


def _coerce_literal(tp: Any, value: Any, where: str) -> Any:
    choices = typing.get_args(tp)
    if isinstance(value, bool) and value not in choices:
        value = next(
            (c for c in choices if isinstance(c, str) and c.lower() in _YAML_BOOL_WORDS[value]), value
        )
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
    return value


def _coerce_list(tp: Any, value: Any, where: str) -> list:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    (item,) = typing.get_args(tp)
    return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]


def _coerce_dict(tp: Any, value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    _, vt = typing.get_args(tp)
    return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}


_GENERIC_COERCERS = {
    Annotated: _coerce_annotated,
    typing.Union: _coerce_union,
    types.UnionType: _coerce_union,
    Literal: _coerce_literal,
    list: _coerce_list,
    dict: _coerce_dict,
}


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads a number without a dot (``lr: 1e-3``) as a string, which a float setting would then
    refuse; as YAML 1.2 does, read it as the number meant, in files and overrides alike."""


class _YamlDumper(yaml.SafeDumper):
    """Quotes a string that :class:`_YamlLoader` would read as a number (``"1e-3"``), so that a saved
    config reads back the same."""


for _yaml in (_YamlLoader, _YamlDumper):
    _yaml.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def _dump_yaml(data: Any) -> str:
    """``data`` as a YAML config: keys in their order, text as written."""
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True)


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """``train.epochs=5`` style overrides (``--set``) on ``cls``'s settings; :func:`_override_value` says
    how a value is read."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        _set_key(data, key, _override_value(key, raw, _setting_type(cls, key)))
    return data


def _override_value(key: str, raw: str, tp: Any) -> Any:
    """The value of ``key=raw``. A text setting (``str``, ``str | None``) takes ``raw`` as typed, since YAML
    would change text silently (``N/A #tbd`` → ``N/A``) or refuse it (``0``, ``yes``, ``-``, ``?``); a value
    wholly in quotes is the text inside them, ``null`` clears an optional one, and ``[a, b]`` is a list for
    a setting that takes one. Any other setting reads ``raw`` as YAML (``[a, b]``, ``null``, ``1e-3``),
    where a comment would be dropped silently, so one is refused."""
    loader = _YamlLoader(raw)
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else ""
        rest = raw[node.end_mark.index :].strip() if node is not None else ""
    except yaml.YAMLError:  # not YAML (e.g. "{data_dir}/x.csv"): the plain text the user typed
        node, value, rest = None, raw, ""
    finally:
        loader.dispose()
    forms = _forms(tp)
    if str in forms:
        if node is None or rest:
            return raw
        if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
            return value
        if value is None and type(None) in forms:
            return value
        if isinstance(node, yaml.SequenceNode) and node.flow_style and list in forms:  # [a, b], not "- a"
            return value
        return raw
    if rest and tp is not None:  # an unknown key: from_dict's error names it
        raise ConfigError(
            f"override {key}={raw!r}: {rest!r} would be dropped as a YAML comment; leave it out"
        )
    return value


def _setting_type(cls: type, key: str) -> Any:
    """The type hint of the dotted setting ``key`` in ``cls``; None for a key it does not have."""
    tp: Any = cls
    for part in key.split("."):
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp, include_extras=True).get(part)
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    return tp


def _forms(tp: Any) -> set[Any]:
    """The forms a setting of type ``tp`` takes: ``PositiveInt | None`` → ``{int, NoneType}``, a list or a
    mapping of anything → ``list`` or ``dict``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _forms(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return {form for arg in typing.get_args(tp) for form in _forms(arg)}
    return {origin or tp}


def apply_values(data: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"predict.placeholder": "N/A #tbd"}``: values already typed (CLI flags) are set as they are, never
    parsed as YAML, so a placeholder ``0``, ``null`` or ``?`` or a path with ``#`` stays what was typed."""
    for key, value in values.items():
        _set_key(data, key, value)
    return data


def _set_key(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        if node.get(part) is None:  # absent, or a section left empty in the file
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
    node[leaf] = value


def section_arguments(section: Any, target: Any, **given: Any) -> dict[str, Any]:
    """Keyword arguments for ``target`` (a function or class) from the config ``section``: every field
    whose name is one of ``target``'s parameters, then ``given``. This is what a builder does, once: a
    section's names are the parameters' names, so none is forgotten or misspelled in a mapping by hand.
    """
    names = set(inspect.signature(target).parameters)
    fields = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name in names}
    return {**fields, **given}


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    cls: type[T] = RunConfig,
    *,
    base: str | Path | None = None,
    values: Mapping[str, Any] | None = None,
) -> T:
    """``base`` (e.g. a checkpoint's saved config), ``path`` layered on top of it section by section, then
    ``key=value`` overrides, then typed ``values``; every setting is checked against the schema."""
    data = _legacy_split(_read_yaml(base), cls) if base is not None else {}
    if path is not None:
        data = layer(data, _read_yaml(path))
    data = apply_overrides(data, overrides or [], cls)
    data = apply_values(data, values or {})
    return from_dict(cls, data)


def _legacy_split(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """A run saved before the train/dev/test split named its one held-out share ``train.val_fraction``:
    it becomes the dev share, with no test part, so such checkpoints still load (and nothing they trained
    on is scored as test)."""
    train = data.get("train")
    if cls in (RunConfig, VLMConfig) and isinstance(train, dict) and "val_fraction" in train:
        train = {k: v for k, v in train.items() if k != "val_fraction"}
        data = {
            **data,
            "train": {"dev_fraction": data["train"]["val_fraction"], "test_fraction": 0.0, **train},
        }
    return data


def layer(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top``'s settings over ``base``'s, section by section: a key that ``top`` names replaces its value
    whole (a list or mapping included); every other key keeps ``base``'s value."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(below, dict) and value is None:  # a section left empty: nothing of it changes
            continue
        merged[key] = {**below, **value} if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from err
    except UnicodeDecodeError as err:  # a file saved as latin-1 or cp1252 ended in a traceback
        raise ConfigError(f"{path}: not UTF-8 text ({err}); save it as UTF-8") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data
