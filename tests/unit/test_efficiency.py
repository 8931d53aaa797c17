import json

import pytest
import torch
from torch import nn

from taxonomist.inference.efficiency import EfficiencyReport, measure_efficiency


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.fixture(scope="module")
def report() -> EfficiencyReport:
    model = tiny_net()
    model[5].weight.requires_grad_(False)  # a frozen layer: trainable < total
    return measure_efficiency(model, 16, batch_sizes=(1, 4), seconds=0.05)


def test_sizes_are_exact(report: EfficiencyReport) -> None:
    conv, bn, linear = 3 * 8 * 9 + 8, 8 + 8, 8 * 4 + 4
    assert report.params_total == conv + bn + linear
    assert report.params_trainable == conv + bn + 4
    # float32 parameters, BatchNorm's running mean and var (float32) and num_batches_tracked (int64).
    assert report.weight_mb == pytest.approx(((conv + bn + linear + 8 + 8) * 4 + 8) / 1024**2)
    assert report.image_size == 16 and report.dtype == "float32"


def test_flops_of_a_single_conv_layer_match_the_formula() -> None:
    conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
    report = measure_efficiency(conv, 32, batch_sizes=(2,), seconds=0.01, warmup=1)
    out_pixels = 16 * 16
    # A multiply-add counts as 2 FLOPs; the bias add is not counted.
    assert report.gflops_per_image * 1e9 == pytest.approx(2 * 16 * out_pixels * 3 * 3 * 3)


def test_timings_and_memory_are_plausible(report: EfficiencyReport) -> None:
    assert set(report.throughput) == {1, 4}
    assert report.images_per_s_batch1 == report.throughput[1] > 0
    assert report.images_per_s_best == max(report.throughput.values())
    assert report.best_batch_size in (1, 4)
    assert 0 < report.latency_ms_p50 <= report.latency_ms_p95
    assert report.memory_kind == "cpu-peak-rss"
    assert report.peak_memory_mb >= report.memory_increase_mb >= 0
    assert report.device.startswith("cpu")


def test_model_mode_is_restored() -> None:
    model = tiny_net().train()
    measure_efficiency(model, 8, batch_sizes=(1,), seconds=0.01, warmup=1)
    assert model.training
    assert model[1].num_batches_tracked.item() == 0  # measured in eval mode


def test_dict_is_json_ready_and_markdown_names_every_field(report: EfficiencyReport) -> None:
    d = json.loads(json.dumps(report.to_dict()))
    assert d["throughput"].keys() == {"1", "4"}
    markdown = report.to_markdown()
    assert markdown.startswith("| metric | value |")
    for key in d:
        if key not in ("throughput", "image_size", "best_batch_size", "memory_kind"):
            assert f"| {key} |" in markdown, key
    assert "images/s @ batch 4" in markdown


class _Calls(nn.Module):
    """Calls ``net``, counting calls; ``hidden``: ``net`` out of torch's sight, as a runtime's graph is."""

    def __init__(self, net: nn.Module, hidden: bool = False) -> None:
        super().__init__()
        self.calls = 0
        self.net = [net] if hidden else net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (self.net[0] if isinstance(self.net, list) else self.net)(x)


def test_a_runtime_module_is_timed_and_the_torch_one_counted() -> None:
    """``bench`` times the runtime predict runs, whose graphs torch cannot count: the torch module gives
    params and FLOPs, the timed one the timings, and the report names what was timed."""
    net = tiny_net()
    counted, timed = _Calls(net), _Calls(net, hidden=True)
    report = measure_efficiency(
        counted, 16, batch_sizes=(1,), seconds=0.01, warmup=1, timed=timed, runtime="openvino bf16"
    )
    assert counted.calls == 1 and timed.calls >= 4  # the FLOP count; one warm-up and 3 timed calls
    assert report.params_total == sum(p.numel() for p in net.parameters()) and report.gflops_per_image > 0
    assert report.runtime == "openvino bf16" and "| runtime | openvino bf16 |" in report.to_markdown()


def test_batch_sizes_below_one_are_refused() -> None:
    """Batch 0 timed empty calls and reported "images/s @ batch 0 | 0.0"; -1 failed inside torch."""
    with pytest.raises(ValueError, match=r"at least 1, got \[0\]"):
        measure_efficiency(tiny_net(), 16, batch_sizes=(0, 4), seconds=0.01)


@pytest.mark.parametrize("sizes", ["1,8,", "0,8", "one"])
def test_bench_names_bad_batch_sizes_before_loading_the_checkpoint(sizes: str, tmp_path) -> None:
    from typer.testing import CliRunner

    from taxonomist.cli.main import app

    result = CliRunner().invoke(app, ["bench", str(tmp_path), "--batch-sizes", sizes])
    assert result.exit_code == 2 and "--batch-sizes" in result.output, result.output


def test_a_bench_killed_while_writing_keeps_the_old_results(
    report: EfficiencyReport, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: bench wrote bench.json and bench.md in place, so a run killed mid-write left half a
    file; each is now written beside and renamed into place, so the old one stays until the new is whole."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from taxonomist.cli.main import app
    from taxonomist.inference import efficiency, predictor

    loaded = SimpleNamespace(
        runtime="torch fp32", backbone=SimpleNamespace(preprocess=SimpleNamespace(size=16))
    )
    monkeypatch.setattr(predictor.Predictor, "from_pretrained", lambda *a, **k: loaded)
    monkeypatch.setattr(
        predictor, "ImagesToLogits", lambda *a, **k: SimpleNamespace(inputs="image", runtime="torch")
    )
    monkeypatch.setattr(efficiency, "measure_efficiency", lambda *a, **k: report)
    for name in ("bench.json", "bench.md"):
        (tmp_path / name).write_text("old")

    def killed(*args: object) -> None:
        raise OSError("killed before the rename")

    monkeypatch.setattr("taxonomist.io.os.replace", killed)
    result = CliRunner().invoke(app, ["bench", str(tmp_path), "--batch-sizes", "1"])
    assert [(tmp_path / name).read_text() for name in ("bench.json", "bench.md")] == ["old", "old"]
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["bench.json", "bench.md"]  # no temporaries
    assert isinstance(result.exception, OSError), result.output
