"""Inference runtimes: the same backbone and heads on eager torch, ONNX Runtime or OpenVINO.

On CPU, eager PyTorch runs these networks at 15-35% of what an inference runtime does with the same
weights (measured in benchmarks/runtimes.py), so prediction exports them through the maintained
exporters (``torch.onnx.export`` with the TorchScript exporter, opset 17; OpenVINO's ``convert_model``)
and runs them there. Nothing here writes graphs by hand.

``runtime``: ``auto`` (torch on a GPU at fp32; otherwise the fastest installed CPU runtime for the
precision, on a GPU machine too, with a warning: torch runs fp32 only),
``torch``, ``onnxruntime`` or ``openvino``. ``precision``: ``fp32`` (outputs equal torch's within float
rounding), ``bf16`` (OpenVINO on CPUs with bf16 units) or ``int8`` (post-training static quantization,
calibrated on the user's own images: ONNX Runtime's ``quantize_static`` or NNCF for OpenVINO).

Features of different numerics never share a cache entry: :func:`feature_key` extends the backbone's
fingerprint with runtime and precision, except for torch fp32 whose key stays the bare fingerprint.

An export is a folder (``backbone.onnx``/``.xml``, ``heads.onnx``/``.xml``, ``export.json`` written
last) built in a temporary folder and renamed into place under its lock file, held exclusively, so two
processes that load the same checkpoint at once build it once; readers compile it under the same lock
held shared, so none reads half of one while ``export --force`` replaces it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from taxonomist.models.backbones.base import Backbone
from taxonomist.models.color import WithColorFeatures, color_features

Runtime = Literal["auto", "torch", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
PRECISIONS: tuple[str, ...] = get_args(Precision)
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
"""Runtime → the pip package that provides it (both are in the default install)."""
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("fp32",),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
# Fastest first, measured on 2 AVX-512 (VNNI + BF16) cores, efficientnet-lite0 batch 32: ORT fp32 210
# img/s vs OpenVINO f32 141; OpenVINO int8 and bf16 ahead of ORT int8 (benchmarks/runtimes.py).
_CPU_ORDER: dict[str, tuple[str, ...]] = {
    "fp32": ("openvino", "onnxruntime", "torch"),
    "bf16": ("openvino",),
    "int8": ("openvino", "onnxruntime"),
}
EXPORTS_DIR = "exports"
MANIFEST = "export.json"
EXPORT_VERSION = 1
OPSET = 17


class RuntimeUnavailable(ImportError):
    """A runtime was asked for whose package is not installed, or that cannot run the precision."""


def is_installed(runtime: str) -> bool:
    return runtime == "torch" or importlib.util.find_spec(PACKAGES[runtime]) is not None


def resolve_runtime(runtime: str, precision: str, device: torch.device | str = "cpu") -> str:
    """The concrete runtime for ``runtime`` (``auto`` included), checked against what is installed."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    on_gpu = torch.device(device).type != "cpu"
    if runtime == "auto":
        if on_gpu and precision == "fp32":
            return "torch"
        candidates = [r for r in _CPU_ORDER[precision] if is_installed(r)]
        if not candidates:
            needed = " or ".join(PACKAGES[r] for r in _CPU_ORDER[precision] if r in PACKAGES)
            raise RuntimeUnavailable(f"precision {precision} needs {needed}: pip install {needed.split()[0]}")
        if on_gpu:
            # Intended: torch runs fp32 only, and heads fitted on bf16 or int8 features get those numerics
            # from the CPU runtime, not other ones from the GPU. Said, as the GPU is left idle.
            warnings.warn(
                f"runtime auto: precision {precision} runs on the CPU ({candidates[0]}), not on {device}, "
                "where torch runs fp32 only; ask for precision fp32 to run on the GPU",
                stacklevel=2,
            )
        return candidates[0]
    if not is_installed(runtime):
        raise RuntimeUnavailable(
            f"runtime {runtime!r} needs the {PACKAGES[runtime]!r} package: pip install {PACKAGES[runtime]} "
            "(or use runtime auto or torch)"
        )
    if precision not in SUPPORTED[runtime]:
        able = [r for r, p in SUPPORTED.items() if precision in p]
        raise RuntimeUnavailable(
            f"runtime {runtime} does not run {precision}; use {' or '.join(able)} "
            f"({runtime} runs {', '.join(SUPPORTED[runtime])})"
        )
    if on_gpu and runtime != "torch":
        raise ValueError(f"runtime {runtime} runs on the CPU here; on {device} use runtime torch or auto")
    return runtime


def runtime_device(runtime: str, precision: str, device: torch.device) -> tuple[str, torch.device]:
    """:func:`resolve_runtime`, and where it runs: ``device`` for torch, the CPU for the others (so the
    modules they are exported from and the torch parts around them go there too)."""
    resolved = resolve_runtime(runtime, precision, device)
    return resolved, device if resolved == "torch" else torch.device("cpu")


def feature_key(fingerprint: str, runtime: str, precision: str, variant: str = "") -> str:
    """Cache key of features computed with these numerics; torch fp32 keeps the bare fingerprint so
    caches filled before runtimes existed stay valid. ``variant``: the calibrated weights' digest (int8)."""
    if runtime == "torch" and precision == "fp32":
        return fingerprint
    return "-".join(part for part in (fingerprint, runtime, precision, variant) if part)


# --------------------------------------------------------------------------------------------- export


def _network(backbone: Backbone) -> Backbone:
    """What gets exported: the network itself; colour features stay in torch (cheap, and int8 would
    quantize their palette distances)."""
    return backbone.inner if isinstance(backbone, WithColorFeatures) else backbone


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    axes: Mapping[str, Mapping[int, str]] | None = None,
) -> None:
    """``torch.onnx.export`` (TorchScript exporter, opset 17); ``axes``: dynamic axes, default the
    batch axis of every input and output."""
    axes = dict(axes or {name: {0: "batch"} for name in (*input_names, *output_names)})
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints baked into the graph
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
        )


class _HeadsGraph(torch.nn.Module):
    """Heads with a tuple output: ONNX outputs are positional, attribute names may hold any character."""

    def __init__(self, heads: torch.nn.Module) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, features: torch.Tensor, category: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.heads(features, category).values())


def _export_fp32(
    backbone: Backbone,
    heads: torch.nn.Module | None,
    feature_dim: int,
    folder: Path,
    onnx_from: Path | None = None,
) -> None:
    size = backbone.preprocess.size
    network = _network(backbone)
    if onnx_from is not None:
        shutil.copy(onnx_from / "backbone.onnx", folder / "backbone.onnx")
    else:
        try:
            pixels = torch.zeros(2, 3, size, size)
            export_onnx(network, (pixels,), folder / "backbone.onnx", ["pixels"], ["features"])
        except Exception as err:  # the exporter's own errors name the operator it lacks
            raise RuntimeError(
                f"{backbone.name}: cannot be exported to ONNX ({err}); use runtime torch"
            ) from err
    if heads is None:
        return
    n = len(heads.attributes)
    export_onnx(
        _HeadsGraph(heads),
        (torch.zeros(2, feature_dim), torch.zeros(2, dtype=torch.long)),
        folder / "heads.onnx",
        ["features", "category"],
        [f"logits_{i}" for i in range(n)],
    )


class _Calibration:
    """ONNX Runtime's calibration reader over batches of preprocessed pixels."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixels": batch}


def _quantize_onnxruntime(folder: Path, calibration: Sequence[np.ndarray]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, prepared = folder / "backbone.onnx", folder / "backbone.pre.onnx"
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(folder / "backbone.int8.onnx"),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()
    os.replace(folder / "backbone.int8.onnx", fp32)


def quantize_dynamic_onnx(path: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of ``path`` in place (for transformers: no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(quantized), per_channel=True, weight_type=QuantType.QInt8)
    os.replace(quantized, path)


def to_openvino(
    folder: Path,
    calibration: Sequence[np.ndarray] | None,
    parts: Sequence[str] = ("backbone", "heads"),
    *,
    compress_weights: bool = False,
) -> None:
    """Convert ``folder``'s ONNX parts to OpenVINO IR; the backbone is statically quantized with NNCF on
    ``calibration`` batches, or (``compress_weights``) gets int8 weights only, which needs no data."""
    import openvino as ov

    for part in parts:
        if not (folder / f"{part}.onnx").is_file():
            continue
        model = ov.convert_model(str(folder / f"{part}.onnx"))
        if part == "backbone" and calibration is not None:
            import nncf

            # Full bias correction: on the fashion heads' dev rows it cut int8's score drop from 0.026
            # (NNCF's fast default) to 0.006 (benchmarks/int8_settings.py); it costs seconds at export.
            model = nncf.quantize(
                model,
                nncf.Dataset(list(calibration)),
                subset_size=len(calibration),
                fast_bias_correction=False,
            )
        elif part == "backbone" and compress_weights:
            import nncf

            model = nncf.compress_weights(model)
        ov.save_model(model, str(folder / f"{part}.xml"), compress_to_fp16=False)
        (folder / f"{part}.onnx").unlink()


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.name != MANIFEST):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def lock_file(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def _lock(path: Path, how: int) -> int | None:
    """A descriptor holding ``path``'s flock, None where ``LOCK_NB`` found it held. A lock file is removed
    only by its holder (:func:`remove_locked`): whoever locked the removed file meanwhile sees that and
    locks the file now at ``path``, so two never hold one name at once."""
    while True:
        try:
            # Writable where it can be: NFS emulates flock with fcntl locks, and an exclusive one needs a
            # descriptor open for writing there (a shared one, reading).
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            if how & fcntl.LOCK_EX:
                raise
            fd = os.open(path, os.O_RDONLY)  # a reader of a lock file it may not write: shared needs no more
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _lockable(path: Path) -> bool:
    return os.access(path, os.R_OK) if path.exists() else os.access(path.parent, os.W_OK | os.X_OK)


@contextlib.contextmanager
def locked(folder: Path, *, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """``folder``'s lock: exclusive to build, replace or remove it, shared to read it, so that a reader
    compiles the whole old export or the whole new one, never one half removed. ``wait=False`` yields
    False at once where another process holds it. A reader of a folder it cannot lock (read-only, e.g. a
    mounted image) reads unlocked: nobody can replace what nobody can write."""
    path = lock_file(folder)
    if shared and not _lockable(path):
        yield True
        return
    if not shared:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(path, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _remove_builds(folder: Path) -> None:
    """Remove the temporary folders (``.NAME.*``) that builds of ``folder`` killed midway left; only under
    its lock, which every build holds throughout."""
    for path in folder.parent.glob(f".{folder.name}.*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def remove_locked(folder: Path) -> None:
    """Remove ``folder``, what builds of it left and its lock file; only while holding its lock."""
    _remove_builds(folder)
    shutil.rmtree(folder, ignore_errors=True)
    lock_file(folder).unlink(missing_ok=True)


@contextlib.contextmanager
def private_folder(folder: Path) -> Iterator[Path]:
    """``folder``, made and held under its lock while the block runs, then removed with it: a process's
    own work, which :func:`remove_stale` removes once that process is killed midway."""
    with locked(folder):
        try:
            folder.mkdir(exist_ok=True)
            yield folder
        finally:
            remove_locked(folder)


def remove_stale(root: Path, prefix: str) -> None:
    """Remove the private folders ``root/PREFIX*`` whose lock nobody holds, with their builds and lock
    files: what processes killed midway (kill -9, out of memory) left, a disk leak of whole exports. A
    live process holds its folder's lock from before creating it until it is removed, so its work is
    never touched, wherever that process runs."""
    pattern = re.compile(rf"\.?({re.escape(prefix)}[^.]*)")  # the folder, its lock file, its builds
    entries = root.iterdir() if root.is_dir() else ()
    names = {m.group(1) for path in entries if (m := pattern.match(path.name))}
    for name in names:
        with locked(root / name, wait=False) as free:
            if free:
                remove_locked(root / name)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def export(
    folder: Path,
    backbone: Backbone,
    heads: torch.nn.Module | None,
    feature_dim: int,
    runtime: str,
    precision: str,
    *,
    calibration: Sequence[np.ndarray] | None = None,
    extra: Mapping[str, Any] | None = None,
    replace: bool = False,
    onnx_from: Path | None = None,
) -> dict[str, Any]:
    """Build ``folder`` (one runtime + precision of one checkpoint) unless a finished one is there.

    ``calibration``: batches of preprocessed training images, required for int8. ``extra``: recorded in
    the manifest (e.g. the checkpoint digest and a parity report). ``onnx_from``: a folder holding this
    backbone's fp32 ``backbone.onnx`` to start from instead of tracing it again (heads are always traced).
    Returns the manifest.
    """
    if runtime == "torch":
        raise ValueError("runtime torch runs the checkpoint itself; there is nothing to export")
    fingerprint = backbone.fingerprint()

    def build(tmp: Path) -> None:
        if precision == "int8" and not calibration:  # only when no finished int8 export is there
            raise ValueError(
                "int8 is calibrated on your own images: run `taxonomist export RUN --precision int8 "
                "--calibrate N` (it samples training rows) before predicting with it"
            )
        _export_fp32(backbone, heads, feature_dim, tmp, onnx_from)
        if runtime == "onnxruntime" and precision == "int8":
            _quantize_onnxruntime(tmp, calibration)
        if runtime == "openvino":
            to_openvino(tmp, calibration if precision == "int8" else None)

    return build_once(folder, fingerprint, runtime, precision, build, extra=extra, replace=replace)


def build_once(
    folder: Path,
    fingerprint: str,
    runtime: str,
    precision: str,
    build: Callable[[Path], None],
    *,
    extra: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Run ``build(tmp)`` and rename ``tmp`` to ``folder`` with its manifest, under ``folder``'s lock,
    unless a finished export of ``fingerprint`` is there already (then return its manifest)."""
    with locked(folder):
        _remove_builds(folder)
        manifest = read_manifest(folder)
        # The checkpoint digest (when given) also identifies the export: heads retrained into the same
        # run folder on the same backbone must not be served from the old export.
        identity = {
            "fingerprint": fingerprint,
            **{k: v for k, v in (extra or {}).items() if k == "checkpoint"},
        }
        if manifest is not None and not replace and all(manifest.get(k) == v for k, v in identity.items()):
            return manifest
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the export from other users of a shared run folder
        try:
            build(tmp)
            variant = _digest(tmp) if precision == "int8" else ""
            manifest = {
                "format_version": EXPORT_VERSION,
                "runtime": runtime,
                "precision": precision,
                "fingerprint": fingerprint,
                "feature_key": feature_key(fingerprint, runtime, precision, variant),
                "opset": OPSET,
                **(extra or {}),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def install(candidate: Path, folder: Path) -> None:
    """Move a finished, checked export into place (replacing an older one) under ``folder``'s lock."""
    with locked(folder):
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(candidate, folder)


# --------------------------------------------------------------------------------------------- run


class Session:
    """One compiled graph; ``run`` maps named numpy inputs to the outputs, in graph order.

    ``streams`` > 1 (OpenVINO) compiles for throughput: that many parallel streams share the threads, and
    :meth:`run_batches` keeps them all busy. Each single :meth:`run` then gets one stream's threads, so
    only callers that hand over many batches at once (bulk text encoding) should ask for streams.
    """

    def __init__(
        self, path: Path, runtime: str, precision: str, threads: int | None, streams: int = 1
    ) -> None:
        self.runtime = runtime
        self.streams = streams
        threads = threads or torch.get_num_threads()  # the same budget torch was given
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self._ort = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        else:
            import openvino as ov

            hint = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
            if streams > 1:
                config |= {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            self._ov = ov.Core().compile_model(str(path), "CPU", config)

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.runtime == "onnxruntime":
            return self._ort.run(None, dict(inputs))
        # A fresh request per call: the serve batcher and DataLoader loops may call from several threads.
        result = self._ov.create_infer_request().infer(dict(inputs))
        return [result[output] for output in self._ov.outputs]

    def run_batches(self, batches: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """:meth:`run` over many inputs, in order; OpenVINO's streams run them concurrently."""
        if self.runtime == "onnxruntime" or self.streams == 1:
            return [self.run(batch) for batch in batches]
        # Requests collected in turn with wait() on this thread, two per stream so that a stream never
        # idles while the next in turn is awaited. Not AsyncInferQueue: its Python callback runs on
        # OpenVINO's threads and can hold the last reference to this session, whose compiled model then
        # joins its own thread ("Resource deadlock avoided", abort).
        requests = [self._ov.create_infer_request() for _ in range(min(2 * self.streams, len(batches)))]
        running: list[int | None] = [None] * len(requests)
        results: list[list[np.ndarray]] = [[] for _ in batches]

        def collect(slot: int) -> None:
            request, index = requests[slot], running[slot]
            if index is not None:
                request.wait()
                results[index] = [request.get_tensor(output).data.copy() for output in self._ov.outputs]

        for index, batch in enumerate(batches):
            slot = index % len(requests)
            collect(slot)
            requests[slot].start_async(dict(batch))
            running[slot] = index
        for slot in range(len(requests)):
            collect(slot)
        return results


class RuntimeBackbone(Backbone):
    """An exported backbone behind the :class:`Backbone` contract; colour features are added in torch.

    ``fingerprint()`` is the feature key (runtime and precision included), so every cache keyed on it
    keeps these features apart from torch's.
    """

    def __init__(self, source: Backbone, session: Session, key: str, runtime: str, precision: str) -> None:
        super().__init__(
            source.name, source.preprocess, source.feature_dim, source.feature_map_dim, source.pooling
        )
        self.session = session
        self.runtime = runtime
        self.precision = precision
        self._source_fingerprint = source.fingerprint()
        self._fingerprint = key
        self._color = isinstance(source, WithColorFeatures)
        mean, std = source.preprocess.mean, source.preprocess.std
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.inference_only = True

    def fingerprint(self) -> str:
        return self._fingerprint

    def source_fingerprint(self) -> str:
        return self._source_fingerprint

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = pixel_values.float()
        (features,) = self.session.run({"pixels": pixels.numpy()})
        out = torch.from_numpy(np.asarray(features, dtype=np.float32))
        if not self._color:
            return out
        rgb = (pixels * self._std + self._mean).clamp(0, 1)
        return torch.cat([out, color_features(rgb)], dim=1)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.runtime} exports pooled features only; use runtime torch for maps")


class RuntimeHeads(torch.nn.Module):
    """Exported :class:`~taxonomist.models.heads.AttributeHeads`: ``(features, category)`` → logits."""

    def __init__(self, session: Session, attributes: Sequence[str]) -> None:
        super().__init__()
        self.session = session
        self.attributes = list(attributes)

    def forward(self, features: torch.Tensor, category: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = {"features": features.float().numpy(), "category": category.long().numpy()}
        outputs = self.session.run(inputs)
        return {a: torch.from_numpy(np.asarray(z)) for a, z in zip(self.attributes, outputs, strict=True)}


def load_export(
    folder: Path, source: Backbone, heads: torch.nn.Module | None = None, *, threads: int | None = None
) -> tuple[RuntimeBackbone, RuntimeHeads | None, dict[str, Any]]:
    """Compile a finished export folder; ``source``: the torch backbone it was exported from. Under the
    folder's shared lock: ``export --force`` may be installing a new one meanwhile."""
    with locked(folder, shared=True):
        return _load_export(folder, source, heads, threads)


def _load_export(
    folder: Path, source: Backbone, heads: torch.nn.Module | None, threads: int | None
) -> tuple[RuntimeBackbone, RuntimeHeads | None, dict[str, Any]]:
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no finished export ({MANIFEST} missing)")
    if manifest.get("fingerprint") != source.fingerprint():
        raise ValueError(
            f"{folder}: exported from backbone {manifest.get('fingerprint')}, not this checkpoint's "
            f"{source.fingerprint()}; export again (taxonomist export RUN --force)"
        )
    runtime, precision = manifest["runtime"], manifest["precision"]
    resolve_runtime(runtime, precision)  # a clear error when the package is gone
    ext = "onnx" if runtime == "onnxruntime" else "xml"
    backbone = RuntimeBackbone(
        source,
        Session(folder / f"backbone.{ext}", runtime, precision, threads),
        manifest["feature_key"],
        runtime,
        precision,
    )
    if heads is None or not (folder / f"heads.{ext}").is_file():
        return backbone, None, manifest
    # Heads are a few small matmuls: run them in fp32 whatever the backbone's precision.
    runtime_heads = RuntimeHeads(Session(folder / f"heads.{ext}", runtime, "fp32", threads), heads.attributes)
    return backbone, runtime_heads, manifest


def exports_root(run_dir: str | os.PathLike, fallback: Path) -> Path:
    """``RUN/exports``, or ``fallback`` when the run folder is read-only; one folder per
    ``<runtime>-<precision>`` inside."""
    exports = Path(run_dir) / EXPORTS_DIR
    try:
        exports.mkdir(exist_ok=True)
        probe = exports / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return exports
    except OSError:
        return fallback


def on_runtime(
    backbone: Backbone,
    heads: torch.nn.Module | None,
    *,
    runtime: str,
    precision: str,
    device: torch.device | str,
    root: Path | None,
    feature_dim: int = 0,
    extra: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> tuple[Backbone, torch.nn.Module | None, str]:
    """``backbone`` (and ``heads``) on ``runtime`` at ``precision``, exporting into ``folder`` on first
    use (``root/<runtime>-<precision>``); returns them with the resolved runtime. Torch returns the
    modules as they are, in eval mode; ``root`` may be None only then."""
    resolved = resolve_runtime(runtime, precision, device)
    if resolved == "torch":
        return backbone.eval(), heads.eval() if heads is not None else None, resolved
    if root is None:
        raise ValueError(f"runtime {resolved} needs an export folder")
    folder = root / f"{resolved}-{precision}"
    export(folder, backbone, heads, feature_dim, resolved, precision, extra=extra)
    runtime_backbone, runtime_heads, _ = load_export(folder, backbone, heads, threads=threads)
    return runtime_backbone, runtime_heads if heads is not None else None, resolved
