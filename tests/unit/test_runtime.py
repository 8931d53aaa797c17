"""Inference runtimes: parity with torch per backbone family, selection, cache keys, export atomicity."""

from __future__ import annotations

import json
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_backbones import FAMILIES
from test_backbones import saved_models as saved_models  # the fixture

from taxonomist.models import runtime as rt
from taxonomist.models.backbones import Backbone, create_backbone
from taxonomist.models.color import WithColorFeatures
from taxonomist.models.heads import AttributeHeads

EXPORTABLE = [f for f in FAMILIES if f not in ("siglip2-naflex", "dinov2-registers")]
TOLERANCE = {"fp32": 1e-4}


def _backbone(saved_models: Callable[[str], str], family: str) -> Backbone:
    if family == "efficientnet-lite0":  # small input: the export and the test stay fast
        return create_backbone(family, pretrained=False, size=64)
    return create_backbone(saved_models(family), **FAMILIES[family].overrides)


def _heads(feature_dim: int) -> AttributeHeads:
    masks = {
        "color": torch.tensor([[True, True, False], [True, False, True]]),
        "fit": torch.ones(2, 2, dtype=bool),
    }
    return AttributeHeads(feature_dim, masks, hidden=(8,), category_dim=2).eval()


def _pixels(backbone: Backbone, n: int = 3) -> torch.Tensor:
    size = backbone.preprocess.size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def onnx_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family → folder with its fp32 ONNX files, traced once and shared by both runtimes' tests."""
    return {}


@pytest.mark.parametrize(
    ("family", "runtime"),
    [(f, "onnxruntime") for f in EXPORTABLE]
    # OpenVINO converts the same ONNX graph: one CNN and one transformer
    + [(f, "openvino") for f in ("efficientnet-lite0", "vit")],
)
def test_fp32_matches_torch_per_family(
    saved_models: Callable[[str], str],
    family: str,
    runtime: str,
    onnx_exports: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    backbone = _backbone(saved_models, family).eval()
    torch.manual_seed(0)
    heads = _heads(backbone.feature_dim)
    x = _pixels(backbone)
    with torch.no_grad():
        expected = backbone(x)
        category = torch.tensor([0, 1, 1])
        expected_logits = heads(expected, category)
    folder = tmp_path_factory.mktemp(family) / runtime
    rt.export(
        folder, backbone, heads, backbone.feature_dim, runtime, "fp32", onnx_from=onnx_exports.get(family)
    )
    onnx_exports.setdefault(family, folder)
    exported, exported_heads, manifest = rt.load_export(folder, backbone, heads)
    assert manifest["feature_key"] != backbone.fingerprint()  # never shares torch's cache entries
    torch.testing.assert_close(exported(x), expected, atol=TOLERANCE["fp32"], rtol=1e-4)
    logits = exported_heads(expected, category)
    for attribute, z in expected_logits.items():
        torch.testing.assert_close(logits[attribute], z, atol=1e-4, rtol=1e-4)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


@pytest.fixture(scope="module")
def lite() -> Backbone:
    torch.manual_seed(0)
    return WithColorFeatures(create_backbone("efficientnet-lite0", pretrained=False, size=64)).eval()


@pytest.fixture(scope="module")
def lite_onnx(lite: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lite`` traced to ONNX once; the tests below start their exports from it."""
    folder = tmp_path_factory.mktemp("lite") / "onnxruntime-fp32"
    rt.export(folder, lite, None, 0, "onnxruntime", "fp32")
    return folder


def test_bf16_and_int8_stay_close(lite: Backbone, lite_onnx: Path, tmp_path: Path) -> None:
    """Lower precisions: close to torch by cosine (their own cache keys keep them apart anyway)."""
    x = _pixels(lite, 8)
    with torch.no_grad():
        expected = lite(x)
    calibration = [_pixels(lite, 4).numpy() for _ in range(2)]
    for runtime, precision, floor in (
        ("openvino", "bf16", 0.99),
        ("onnxruntime", "int8", 0.9),
    ):
        folder = tmp_path / f"{runtime}-{precision}"
        rt.export(folder, lite, None, 0, runtime, precision, calibration=calibration, onnx_from=lite_onnx)
        exported, _, manifest = rt.load_export(folder, lite)
        assert _cosine(exported(x), expected) > floor, (runtime, precision)
        assert manifest["feature_key"].startswith(f"{lite.fingerprint()}-{runtime}-{precision}")
        # colour features are computed in torch, exactly
        torch.testing.assert_close(exported(x)[:, 1280:], expected[:, 1280:])


def test_int8_needs_calibration_once(lite: Backbone, lite_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibrat"):
        rt.export(tmp_path / "onnxruntime-int8", lite, None, 0, "onnxruntime", "int8")
    calibration = [_pixels(lite, 4).numpy()]
    rt.export(
        tmp_path / "onnxruntime-int8",
        lite,
        None,
        0,
        "onnxruntime",
        "int8",
        calibration=calibration,
        onnx_from=lite_onnx,
    )
    # a finished int8 export loads without calibration images (as predict and serve do)
    exported, _, _ = rt.on_runtime(
        lite, None, runtime="onnxruntime", precision="int8", device="cpu", root=tmp_path
    )
    assert exported.fingerprint().startswith(f"{lite.fingerprint()}-onnxruntime-int8-")


def test_feature_keys_per_runtime_and_precision() -> None:
    # torch fp32 keeps the bare fingerprint: caches filled before runtimes existed stay valid
    assert rt.feature_key("abc", "torch", "fp32") == "abc"
    keys = {
        rt.feature_key("abc", r, p) for r in ("onnxruntime", "openvino") for p in ("fp32", "bf16", "int8")
    }
    assert len(keys) == 6 and "abc" not in keys
    assert rt.feature_key("abc", "openvino", "int8", "c1") != rt.feature_key("abc", "openvino", "int8", "c2")


def test_auto_picks_the_fastest_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # fp32: OpenVINO ran the backbone (162 vs 127 img/s at batch 32) and predict faster than ONNX
    # Runtime in benchmarks/runtimes.py, and the text encoder too (two streams).
    assert rt.resolve_runtime("auto", "fp32", "cpu") == "openvino"
    assert rt.resolve_runtime("auto", "bf16", "cpu") == "openvino"
    assert rt.resolve_runtime("auto", "fp32", "cuda") == "torch"
    monkeypatch.setattr(rt, "is_installed", lambda r: r != "openvino")
    assert rt.resolve_runtime("auto", "fp32", "cpu") == "onnxruntime"
    monkeypatch.setattr(rt, "is_installed", lambda r: r == "torch")
    assert rt.resolve_runtime("auto", "fp32", "cpu") == "torch"


def test_auto_on_a_gpu_keeps_a_lower_precision_on_the_cpu_and_says_so() -> None:
    """Torch runs fp32 only: heads fitted on bf16 or int8 features keep those numerics on a CPU runtime,
    with a warning rather than a GPU silently left idle."""
    for precision in ("bf16", "int8"):
        with pytest.warns(
            UserWarning, match=rf"precision {precision} runs on the CPU \(openvino\), not on cuda"
        ):
            assert rt.runtime_device("auto", precision, torch.device("cuda")) == (
                "openvino",
                torch.device("cpu"),
            )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rt.runtime_device("auto", "fp32", torch.device("cuda")) == ("torch", torch.device("cuda"))


def test_missing_runtime_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(rt.RuntimeUnavailable, match="pip install openvino"):
        rt.resolve_runtime("openvino", "fp32", "cpu")
    with pytest.raises(rt.RuntimeUnavailable, match="pip install onnxruntime"):
        rt.resolve_runtime("onnxruntime", "fp32", "cpu")
    with pytest.raises(rt.RuntimeUnavailable, match="needs openvino"):
        rt.resolve_runtime("auto", "bf16", "cpu")


def test_unsupported_precision_and_unknown_names() -> None:
    with pytest.raises(rt.RuntimeUnavailable, match="torch does not run int8; use onnxruntime or openvino"):
        rt.resolve_runtime("torch", "int8", "cpu")
    with pytest.raises(rt.RuntimeUnavailable, match="onnxruntime does not run bf16"):
        rt.resolve_runtime("onnxruntime", "bf16", "cpu")
    with pytest.raises(ValueError, match="runtime must be one of"):
        rt.resolve_runtime("tensorrt", "fp32", "cpu")


def test_export_resumes_and_builds_once_under_concurrency(
    lite: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = []

    def slow_fake_export(backbone: Backbone, heads: object, dim: int, folder: Path, onnx_from: None) -> None:
        builds.append(1)
        time.sleep(0.2)  # long enough for the other threads to reach the lock
        (folder / "backbone.onnx").write_bytes(b"graph")

    monkeypatch.setattr(rt, "_export_fp32", slow_fake_export)
    folder = tmp_path / "onnxruntime-fp32"
    # a crash mid-export leaves a temp folder and no manifest: neither is mistaken for an export
    (tmp_path / ".onnxruntime-fp32.crashed").mkdir()
    threads = [
        threading.Thread(target=rt.export, args=(folder, lite, None, 0, "onnxruntime", "fp32"))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.onnx", "export.json"]
    assert not (tmp_path / ".onnxruntime-fp32.crashed").exists()  # the build under the lock removed it
    rt.export(folder, lite, None, 0, "onnxruntime", "fp32")
    assert len(builds) == 1  # finished exports are reused
    (folder / rt.MANIFEST).unlink()  # a half export (no manifest) is rebuilt
    rt.export(folder, lite, None, 0, "onnxruntime", "fp32", extra={"checkpoint": "v1"})
    assert len(builds) == 2
    # heads retrained into the same run (same backbone, new checkpoint digest): exported again
    rt.export(folder, lite, None, 0, "onnxruntime", "fp32", extra={"checkpoint": "v2"})
    rt.export(folder, lite, None, 0, "onnxruntime", "fp32", extra={"checkpoint": "v2"})
    assert len(builds) == 3


def test_a_reader_never_sees_an_export_half_replaced(
    lite: Backbone, lite_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: ``load_export`` read without the lock while ``install`` removed the old export and
    renamed the new one in, so a predict starting during ``export --force`` found no export at all."""
    folder, candidate = tmp_path / "onnxruntime-fp32", tmp_path / "candidate"
    for path, checkpoint in ((folder, "old"), (candidate, "new")):
        shutil.copytree(lite_onnx, path)
        manifest = json.loads((path / rt.MANIFEST).read_text())
        (path / rt.MANIFEST).write_text(json.dumps({**manifest, "checkpoint": checkpoint}))
    loaded: list[object] = []

    def read() -> None:
        try:
            loaded.append(rt.load_export(folder, lite)[2]["checkpoint"])
        except Exception as err:
            loaded.append(err)

    readers = []
    real_rmtree = shutil.rmtree

    def rmtree_then_read(path: Path, *args: object, **kwargs: object) -> None:
        real_rmtree(path, *args, **kwargs)
        if Path(path) == folder:  # the old export is gone, the new one not yet renamed in: a reader now
            readers.append(threading.Thread(target=read))
            readers[0].start()
            readers[0].join(timeout=1)  # unlocked it reads at once; locked it waits for the install

    monkeypatch.setattr(rt.shutil, "rmtree", rmtree_then_read)
    rt.install(candidate, folder)
    readers[0].join()
    assert loaded == ["new"]


def test_locks_take_descriptors_nfs_can_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: every lock was taken on a read-only descriptor. NFS emulates flock with fcntl locks,
    which need a descriptor open for writing to lock exclusively, so builds failed on the shared run
    folders Ray's docs ask for. A reader of a lock file it may not write still locks it shared."""
    import fcntl
    import os

    real_flock = fcntl.flock

    def nfs_flock(fd: int, how: int) -> None:
        writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        if how & fcntl.LOCK_EX and not writable:
            raise OSError(9, "Bad file descriptor")
        real_flock(fd, how)

    monkeypatch.setattr(rt.fcntl, "flock", nfs_flock)
    folder = tmp_path / "openvino-fp32"
    with rt.locked(folder) as held:
        assert held
    rt.lock_file(folder).chmod(0o444)
    with rt.locked(folder, shared=True) as held:
        assert held


def test_stale_private_folders_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """Regression: an export killed midway (kill -9) left its candidate folder, a whole export, for good.
    The next one removes what no live process holds, and nothing a live process is working in."""
    dead, live = tmp_path / ".candidate-openvino-int8-11", tmp_path / ".candidate-openvino-int8-12"
    (dead / "export").mkdir(parents=True)
    rt.lock_file(dead).touch()
    (tmp_path / "..candidate-openvino-int8-11.k2x9q0ab").mkdir()  # its candidate's build, killed midway
    (tmp_path / "..candidate-onnxruntime-fp32-13.lock").touch()  # killed before its folder was made
    (tmp_path / "openvino-int8").mkdir()  # an installed export: not private, never touched
    with rt.private_folder(live):
        (live / "export").mkdir()
        rt.remove_stale(tmp_path, ".candidate-")
        assert (live / "export").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["openvino-int8"]


def test_export_of_other_weights_is_refused(lite_onnx: Path) -> None:
    other = create_backbone("efficientnet-lite0", pretrained=False, size=64)
    with pytest.raises(ValueError, match="export again"):
        rt.load_export(lite_onnx, other)


def test_runtime_backbone_refuses_training(lite: Backbone, lite_onnx: Path) -> None:
    exported, _, _ = rt.on_runtime(
        lite, None, runtime="onnxruntime", precision="fp32", device="cpu", root=lite_onnx.parent
    )
    assert exported.source_fingerprint() == lite.fingerprint() != exported.fingerprint()
    with pytest.raises(RuntimeError, match="fresh"):
        exported.train()
    same, _, name = rt.on_runtime(lite, None, runtime="torch", precision="fp32", device="cpu", root=None)
    assert same is lite and name == "torch"


def test_openvino_int8_is_close_and_finite(lite: Backbone, lite_onnx: Path, tmp_path: Path) -> None:
    x = _pixels(lite, 8)
    with torch.no_grad():
        expected = lite(x)
    calibration = [_pixels(lite, 4).numpy() for _ in range(2)]
    rt.export(tmp_path / "e", lite, None, 0, "openvino", "int8", calibration=calibration, onnx_from=lite_onnx)
    exported, _, _ = rt.load_export(tmp_path / "e", lite)
    features = exported(x)
    assert torch.isfinite(features).all() and _cosine(features, expected) > 0.9


@pytest.fixture(scope="module")
def tiny_sentence_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1-layer BERT with MiniLM's tokenizer, mean pooling and normalisation, as sentence-transformers
    saves it: the export path of all-MiniLM-L6-v2 in a fraction of the time."""
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from taxonomist.models.text import resolve_text_model

    root = tmp_path_factory.mktemp("text")
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_text_model("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    transformers.BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    word = Transformer(str(root / "bert"), max_seq_length=64)
    model = SentenceTransformer(modules=[word, Pooling(32, "mean"), Normalize()], device="cpu")
    model.save(str(root / "st"))
    return str(root / "st")


def test_text_encoder_on_runtimes_matches_torch(tiny_sentence_model: str, tmp_path: Path) -> None:
    from taxonomist.models.text import TextEncoder

    titles = ["Acme red cotton kurta for women", "steel bottle 1l", "", "x " * 400]  # empty and truncated
    titles += [f"title {i} " + "word " * (i % 5) for i in range(9)]  # many batches across OpenVINO's streams
    reference = TextEncoder(tiny_sentence_model, batch_size=2)
    expected = reference.encode(titles)
    keys = {reference.fingerprint()}
    for runtime, precision, atol in (
        ("onnxruntime", "fp32", 1e-4),
        ("openvino", "fp32", 1e-4),
        ("openvino", "bf16", 0.03),
        ("onnxruntime", "int8", 0.05),  # dynamic quantization
        ("openvino", "int8", 0.03),  # int8 weights
    ):
        encoder = TextEncoder(
            tiny_sentence_model, batch_size=2, runtime=runtime, precision=precision, export_root=tmp_path
        )
        np.testing.assert_allclose(encoder.encode(titles), expected, atol=atol)
        keys.add(encoder.fingerprint())
    assert len(keys) == 6  # title-embedding caches never mix numerics
    # int8 needs no calibration for text: auto picks ONNX Runtime's dynamic quantization.
    assert TextEncoder(tiny_sentence_model, runtime="auto", precision="int8").runtime == "onnxruntime"
    # fp32 and bf16: OpenVINO with two streams, the fastest text encoder measured on CPU.
    assert TextEncoder(tiny_sentence_model, runtime="auto", device="cpu").runtime == "openvino"


def test_a_text_encoder_not_mean_pooled_encodes_with_torch_and_has_its_own_fingerprint(
    tiny_sentence_model: str, tmp_path: Path
) -> None:
    """The runtime path mean-pools the bare transformer's output: for a CLS-pooled model (BAAI/bge-*'s
    layout) it computed other embeddings than training's torch did, under the same fingerprint."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from taxonomist.models.text import TextEncoder

    word = Transformer(str(Path(tiny_sentence_model).parent / "bert"), max_seq_length=64)
    cls_pooled = tmp_path / "st"  # the mean-pooled model's name, so only the layout differs
    SentenceTransformer(modules=[word, Pooling(32, "cls"), Normalize()], device="cpu").save(str(cls_pooled))
    titles = ["Acme red cotton kurta for women", "steel bottle 1l", "a much longer title " * 5]
    expected = TextEncoder(str(cls_pooled)).encode(titles)
    with pytest.warns(UserWarning, match="Pooling\\(cls\\)"):
        asked = TextEncoder(str(cls_pooled), runtime="openvino", export_root=tmp_path / "exports")
    assert (asked.runtime, asked.precision) == ("torch", "fp32")
    np.testing.assert_allclose(asked.encode(titles), expected, atol=1e-6)
    auto = TextEncoder(str(cls_pooled), runtime="auto", device="cpu")  # the predictor's default: no warning
    assert auto.runtime == "torch"
    mean_pooled = TextEncoder(tiny_sentence_model)
    mean_pooled.name = str(cls_pooled)
    assert mean_pooled.weights_fingerprint() != auto.weights_fingerprint()


# Sessions built, used from two threads at once and dropped, round after round: the serve batcher's life.
_SESSION_CHURN = """
import gc, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
from taxonomist.models import runtime as rt
path, rounds = Path(sys.argv[1]), int(sys.argv[2])
batches = [{"x": np.full((64, 256), i, dtype=np.float32)} for i in range(8)]
for _ in range(rounds):
    session = rt.Session(path, "openvino", "fp32", None, streams=2)
    with ThreadPoolExecutor(2) as pool:
        for outputs in pool.map(session.run_batches, [batches] * 4):
            assert [float(out[0][0, 0]) for out in outputs] == [float(i) for i in range(8)]
    del session
    gc.collect()
"""


@pytest.mark.integration
def test_openvino_sessions_survive_being_dropped_after_run_batches(tmp_path: Path) -> None:
    """run_batches once used AsyncInferQueue, whose Python callback, still running on OpenVINO's thread
    after wait_all, could hold the session's last reference: the compiled model then joined its own
    thread and the process aborted ("Resource deadlock avoided"; seen once in the suite, in serve). This
    churn aborted in 4 of 5 runs before the fix (27 s each), and each batch's outputs must stay its own."""
    import subprocess
    import sys

    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([-1, 256], np.float32, name="x")
    y = x
    for _ in range(6):  # enough work per request for the requests to overlap
        y = ops.matmul(y, ops.constant(np.full((256, 256), 1 / 256, np.float32)), False, False)
    ov.save_model(ov.Model([ops.relu(y)], [x]), tmp_path / "m.xml")
    run = subprocess.run(
        [sys.executable, "-c", _SESSION_CHURN, str(tmp_path / "m.xml"), "150"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
