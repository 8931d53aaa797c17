"""``taxonomist export`` and runtime loading end to end on a tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from taxonomist.cli.main import app, main
from taxonomist.inference import export as export_module
from taxonomist.inference import predictor as predictor_module
from taxonomist.inference.predictor import Predictor
from taxonomist.models.runtime import EXPORTS_DIR, MANIFEST

from .conftest import invoke

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tiny_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, config = tiny_run
    ckpt = tmp_path_factory.mktemp("export") / "run"
    invoke("train", "-c", str(config), "-o", str(ckpt), "-q")
    return ckpt


def _images(tiny_run: tuple[Path, Path]) -> tuple[list[Path], list[str]]:
    images = tiny_run[0].parent / "images"
    return [images / f"{1000 + i}.jpg" for i in range(6)], ["Tops", "Bags"] * 3


def test_checkpoint_without_export_exports_on_first_load(run: Path, tiny_run: tuple[Path, Path]) -> None:
    torch_predictor = Predictor.from_pretrained(run, runtime="torch")
    fast = Predictor.from_pretrained(run, runtime="onnxruntime")
    assert (run / EXPORTS_DIR / "onnxruntime-fp32" / MANIFEST).is_file()
    assert fast.runtime == "onnxruntime fp32" and torch_predictor.runtime == "torch fp32"
    # features never share a cache key across numerics; torch fp32 keeps the checkpoint's
    assert torch_predictor.backbone.fingerprint() == torch_predictor.checkpoint.fingerprint
    assert fast.backbone.fingerprint() != torch_predictor.backbone.fingerprint()
    paths, categories = _images(tiny_run)
    for a, b in zip(torch_predictor.predict(paths, categories), fast.predict(paths, categories), strict=True):
        for attribute, value in a.attributes.items():
            assert b.attributes[attribute].value == value.value
            assert abs(b.attributes[attribute].confidence - value.confidence) < 1e-4


def test_export_command_writes_a_parity_report(run: Path, tiny_run: tuple[Path, Path]) -> None:
    output = invoke(
        "export", str(run), "--runtime", "openvino", "--precision", "bf16", "--parity-rows", "40", "-q"
    )
    assert "openvino bf16" in output
    manifest = json.loads((run / EXPORTS_DIR / "openvino-bf16" / MANIFEST).read_text())
    parity = manifest["parity"]
    assert parity["passed"] and parity["rows"] > 0
    assert set(parity["per_attribute"]) == {"color", "fit"}
    predictor = Predictor.from_pretrained(run, precision="bf16")  # auto picks the export's runtime
    assert predictor.runtime == "openvino bf16"
    assert len(predictor.predict(*_images(tiny_run))) == 6


def test_auto_on_a_gpu_predicts_bf16_heads_on_the_cpu_and_says_so(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU, auto at the heads' bf16 runs OpenVINO on the CPU (torch runs fp32 only; the heads keep
    their numerics). It did so silently, with the heads and the module it exports from moved to the GPU
    (a first export then traced there and failed)."""
    monkeypatch.setattr(predictor_module, "resolve_device", lambda spec: torch.device("cuda"))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"precision bf16 runs on the CPU \(openvino\), not on cuda"):
        output = invoke(
            "predict", str(run), "-o", str(out), "--precision", "bf16", "--set", "embed.device=cuda"
        )
    assert "runtime: openvino bf16 on cpu" in output
    assert json.loads((out / "summary.json").read_text())["predicted"] > 0


def test_bench_times_the_runtime_predict_runs(run: Path, tmp_path: Path) -> None:
    """Regression: bench timed eager torch, while predict and serve run OpenVINO by default on CPU, and
    its report did not say which. It takes predict's choices, and counts on torch either way."""
    import shutil

    # A copy: the export auto makes on first load is not the other tests' to find.
    run = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(EXPORTS_DIR))
    args = ["bench", str(run), "--batch-sizes", "1", "--seconds", "0.1"]
    output = invoke(*args, "-o", str(tmp_path / "auto"))
    invoke(*args, "-o", str(tmp_path / "torch"), "--runtime", "torch")
    auto, eager = (json.loads((tmp_path / k / "bench.json").read_text()) for k in ("auto", "torch"))
    assert auto["runtime"] == Predictor.from_pretrained(run).runtime == "openvino fp32"
    assert eager["runtime"] == "torch fp32"
    assert auto["params_total"] == eager["params_total"] > 0
    assert auto["gflops_per_image"] == eager["gflops_per_image"] > 0
    assert "| runtime | openvino fp32 |" in (tmp_path / "auto" / "bench.md").read_text()
    assert "timed on openvino fp32" in output


def test_int8_is_calibrated_and_checked(run: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(run), "--precision", "int8", "-q"])
    assert result.exit_code != 0 and "--calibrate" in result.output
    invoke(
        "export",
        str(run),
        "--runtime",
        "onnxruntime",
        "--precision",
        "int8",
        "--calibrate",
        "32",
        "--tolerance",
        "1",
        "-q",
    )
    manifest = json.loads((run / EXPORTS_DIR / "onnxruntime-int8" / MANIFEST).read_text())
    assert manifest["calibration_rows"] == 32 and manifest["parity"]["passed"]
    assert manifest["feature_key"].split("-")[1:3] == ["onnxruntime", "int8"]


def test_export_checks_an_export_it_did_not_check_itself(run: Path, tmp_path: Path) -> None:
    """Regression: export returned any existing export of the checkpoint as it was: one built unchecked
    on a predictor's first load, or int8 calibrated on other rows or checked at a looser tolerance."""
    import shutil

    own = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(EXPORTS_DIR))
    Predictor.from_pretrained(own, runtime="onnxruntime")  # exported on first load, no parity check
    manifest = own / EXPORTS_DIR / "onnxruntime-fp32" / MANIFEST
    assert "parity" not in json.loads(manifest.read_text())
    invoke("export", str(own), "--runtime", "onnxruntime", "--parity-rows", "20", "-q")
    assert json.loads(manifest.read_text())["parity"]["passed"]
    int8 = [
        "export",
        str(own),
        "--runtime",
        "onnxruntime",
        "--precision",
        "int8",
        "--parity-rows",
        "20",
        "-q",
    ]
    invoke(*int8, "--calibrate", "8", "--tolerance", "1")
    invoke(*int8, "--calibrate", "16", "--tolerance", "1")
    int8_manifest = json.loads((own / EXPORTS_DIR / "onnxruntime-int8" / MANIFEST).read_text())
    assert int8_manifest["calibration_rows"] == 16


def test_a_run_fitted_on_bf16_exports_against_torch_fp32(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Regression: export and bench loaded the torch reference at the heads' own bf16, which torch does
    not run here: "runtime torch does not run bf16", a runtime nobody asked for."""
    _, config = tiny_run
    ckpt = tmp_path / "bf16"
    bf16 = ["--set", "embed.runtime=openvino", "--set", "embed.precision=bf16", "--set", "train.epochs=2"]
    invoke("train", "-c", str(config), "-o", str(ckpt), "-q", *bf16)
    invoke("export", str(ckpt), "--runtime", "openvino", "--precision", "bf16", "--parity-rows", "20", "-q")
    assert json.loads((ckpt / EXPORTS_DIR / "openvino-bf16" / MANIFEST).read_text())["parity"]["passed"]


def test_export_without_readable_dev_images_says_so(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: with no dev image readable both scores were NaN, and the refusal advised calibrating
    on more rows (an fp32 export included) and wrote a refused.json."""
    empty = tmp_path / "nothing"
    empty.mkdir()
    args = ["export", str(run), "--runtime", "openvino", "--force", "--parity-rows", "20", "-q"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--set", f"catalog.image_root={empty}"])
    assert exit_.value.code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "none of the 20 dev images could be read (missing: 20)" in message
    assert not (run / EXPORTS_DIR / "openvino-fp32.refused.json").exists()


def test_export_above_tolerance_is_refused(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_module.parity

    def worse(*args: object, **kwargs: object) -> export_module.ParityReport:
        report = real(*args, **kwargs)
        report.export_score = report.torch_score - 0.02
        return report

    monkeypatch.setattr(export_module, "parity", worse)
    stale = run / EXPORTS_DIR / ".candidate-openvino-fp32-4194305"  # of an export killed midway
    (stale / "export").mkdir(parents=True)
    result = CliRunner().invoke(
        app, ["export", str(run), "--runtime", "openvino", "--precision", "fp32", "--parity-rows", "20", "-q"]
    )
    assert result.exit_code == 1
    assert "export refused" in result.output and "tolerance 0.0050" in result.output
    assert not (run / EXPORTS_DIR / "openvino-fp32").exists()  # nothing a loader could pick up
    refused = json.loads((run / EXPORTS_DIR / "openvino-fp32.refused.json").read_text())
    assert refused["passed"] is False and refused["score_drop"] == pytest.approx(0.02)
    assert not list((run / EXPORTS_DIR).glob(".candidate-*"))  # neither its own nor the stale one
    assert not list((run / EXPORTS_DIR).glob("..candidate-*"))  # nor their lock files


def test_a_listing_export_must_hold_its_score_with_titles_too() -> None:
    """Listing heads are judged on both views: a drop with titles alone refuses the export, and says so."""
    report = export_module.ParityReport(
        "openvino", "int8", 100, 0.70, 0.699, 0.005, {}, 0.99, with_text={"torch": 0.90, "export": 0.88}
    )
    assert not report.passed
    message = str(export_module.ExportRefused(report))
    first = message.splitlines()[0]
    assert "with text: 0.8800 vs torch 0.9000 (drop 0.0200)" in first and "without text" not in first
    assert "| score (without text) | 0.7000 | 0.6990 |" in report.to_markdown()
    report.with_text = {"torch": 0.90, "export": 0.899}
    assert report.passed


def test_heads_fitted_on_a_runtime_record_its_numerics(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, config = tiny_run
    output = invoke(
        "train", "-c", str(config), "-o", str(tmp_path / "run"), "-q", "--set", "embed.runtime=onnxruntime"
    )
    assert "features computed on onnxruntime fp32" in output
    meta = json.loads((tmp_path / "run" / "taxonomist.json").read_text())
    assert meta["features"]["runtime"] == "onnxruntime"
    # the checkpoint's fingerprint is the feature key: runtime and precision included
    assert meta["fingerprint"] == f"{meta['features']['weights_fingerprint']}-onnxruntime-fp32"
    assert Predictor.from_pretrained(tmp_path / "run", runtime=None).runtime == "onnxruntime fp32"
