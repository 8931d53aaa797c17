import math

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_hsv

from taxonomist.config import FinetuneConfig
from taxonomist.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from taxonomist.models.heads import NEG_INF
from taxonomist.training.augment import BatchAugment
from taxonomist.training.finetune import build_augment
from taxonomist.training.losses import focal_cross_entropy, masked_cross_entropy, mmd_loss

# --- cross-entropy variants -------------------------------------------------------------------------


def test_focal_reduces_to_cross_entropy_at_gamma_zero() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    assert torch.allclose(focal_cross_entropy(logits, target), F.cross_entropy(logits, target))
    smoothed = focal_cross_entropy(logits, target, label_smoothing=0.1)
    assert torch.allclose(smoothed, F.cross_entropy(logits, target, label_smoothing=0.1))


def test_focal_down_weights_confident_rows() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    ce = F.cross_entropy(logits, target, reduction="none")
    p = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(focal_cross_entropy(logits, target, gamma=2.0), ((1 - p) ** 2 * ce).mean())


def test_label_smoothing_spreads_over_allowed_values_only() -> None:
    logits = torch.tensor([[2.0, 0.0, NEG_INF, NEG_INF]])
    loss = focal_cross_entropy(logits, torch.tensor([0]), label_smoothing=0.2)
    assert torch.allclose(loss, F.cross_entropy(logits[:, :2], torch.tensor([0]), label_smoothing=0.2))
    # Half precision turns NEG_INF into -inf, and a category without the attribute masks its whole row:
    # still finite, with finite gradients.
    half = torch.cat([logits, torch.full((1, 4), NEG_INF)]).half().requires_grad_()
    value = masked_cross_entropy({"a": half}, {"a": torch.tensor([0, -1])}, 0.2, gamma=2.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(half.grad).all()


def test_missing_labels_change_nothing() -> None:
    torch.manual_seed(0)
    logits = {"color": torch.randn(4, 3, requires_grad=True), "size": torch.randn(4, 2)}
    labels = {"color": torch.tensor([0, -1, 2, -1]), "size": torch.tensor([-1, -1, -1, -1])}
    loss = masked_cross_entropy(logits, labels, 0.1, gamma=2.0)
    loss.backward()
    assert torch.all(logits["color"].grad[[1, 3]] == 0)
    changed = {"color": logits["color"].detach().clone(), "size": logits["size"]}
    changed["color"][[1, 3]] = torch.randn(2, 3) * 10
    assert torch.equal(masked_cross_entropy(changed, labels, 0.1, gamma=2.0), loss.detach())
    # An attribute with no label at all is left out, not averaged in as zero.
    assert torch.allclose(loss, focal_cross_entropy(logits["color"], labels["color"], 0.1, 2.0))
    empty = masked_cross_entropy(logits, {a: torch.full((4,), -1) for a in logits})
    assert empty.item() == 0 and empty.requires_grad


def test_data_parallel_shards_average_to_the_global_batch_gradient() -> None:
    """Two shards with unequal labelled counts: DDP's mean of their gradients is the global one."""
    torch.manual_seed(0)
    logits = {"color": torch.randn(8, 3), "size": torch.randn(8, 2)}
    labels = {
        "color": torch.tensor([0, -1, 2, -1, 1, 1, 0, 2]),
        "size": torch.tensor([1, -1, -1, -1, 0, 1, 1, 0]),
    }

    def grads(z: dict, y: dict, **kw) -> dict:
        z = {a: t.clone().requires_grad_() for a, t in z.items()}
        masked_cross_entropy(z, y, 0.1, gamma=2.0, **kw).backward()
        return {a: t.grad for a, t in z.items()}

    full = grads(logits, labels)
    halves = [slice(0, 4), slice(4, 8)]
    counts = [torch.tensor([(labels[a][h] != -1).sum() for a in labels]).float() for h in halves]
    total = counts[0] + counts[1]
    shard = [
        grads({a: t[h] for a, t in logits.items()}, {a: t[h] for a, t in labels.items()},
              sum_over_processes=lambda _c: total, num_processes=2)
        for h in halves
    ]  # fmt: skip
    for a in logits:
        assert torch.allclose(torch.cat([shard[0][a], shard[1][a]]) / 2, full[a], atol=1e-6)


# --- MMD -------------------------------------------------------------------------------------------


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_shift() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(200, 16), torch.randn(200, 16)
    same = mmd_loss(x, y).item()
    shifts = [mmd_loss(x, y + s).item() for s in (0.25, 0.5, 1.0)]
    assert abs(same) < 5e-3
    assert shifts[0] > 10 * abs(same)
    assert shifts == sorted(shifts)
    # The median heuristic makes it blind to the features' overall scale, centring to a common offset.
    assert math.isclose(mmd_loss(100 * x, 100 * (y + 0.5)).item(), shifts[1], rel_tol=1e-3)
    assert math.isclose(mmd_loss(x + 1e4, y + 0.5 + 1e4).item(), shifts[1], rel_tol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: computed in float32 anyway
        assert math.isclose(mmd_loss(x, y + 0.5).item(), shifts[1], rel_tol=1e-4)


def test_mmd_estimators_and_linear_kernel() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(32, 8) + 1
    assert mmd_loss(x, x, unbiased=False).abs().item() < 1e-5  # V-statistic of a batch with itself
    linear = mmd_loss(x, y, kernel="linear", unbiased=False)
    assert torch.allclose(linear, (x.mean(0) - y.mean(0)).pow(2).sum(), rtol=1e-4)
    assert mmd_loss(x, y, unbiased=False) > mmd_loss(x, y)  # biased: within-batch diagonal adds 1/n
    with pytest.raises(ValueError, match="at least 2"):
        mmd_loss(x[:1], y)
    with pytest.raises(ValueError, match="kernel"):
        mmd_loss(x, y, kernel="cosine")  # type: ignore[arg-type]


def test_mmd_is_differentiable_and_pulls_the_batches_together() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 8, requires_grad=True)
    y = torch.randn(32, 8) + 2
    y[0] = y[1]  # duplicated rows: zero distances must not give NaN gradients
    loss = mmd_loss(x, y)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert mmd_loss(x - 0.1 * x.grad / x.grad.norm(), y) < loss


# --- augmentation ----------------------------------------------------------------------------------


def images(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_augment_keeps_shape_and_dtype(dtype: torch.dtype) -> None:
    x = images().to(dtype)
    out = BatchAugment(p=1.0)(x)
    assert out.shape == x.shape and out.dtype == dtype


def test_augment_p0_eval_and_image_p0_are_identity() -> None:
    x = images()
    assert torch.equal(BatchAugment(p=0.0)(x), x)
    assert torch.equal(BatchAugment(p=1.0, image_p=0.0)(x), x)
    assert torch.equal(BatchAugment(p=1.0).eval()(x), x)


def test_augment_p1_changes_every_image() -> None:
    x = images()
    out = BatchAugment(p=1.0)(x)
    assert ((out - x).abs().flatten(1).amax(1) > 1e-3).all()


def test_image_p_leaves_the_other_images_untouched() -> None:
    torch.manual_seed(0)
    x = images(64, 16)
    out = BatchAugment(p=1.0, image_p=0.5)(x)
    untouched = (out == x).flatten(1).all(1)
    assert 10 < untouched.sum() < 54


def test_augment_is_reproducible_under_a_seed_and_differs_per_call() -> None:
    x, augment = images(), BatchAugment()
    torch.manual_seed(0)
    first, second = augment(x), augment(x)
    torch.manual_seed(0)
    assert torch.equal(augment(x), first)
    assert not torch.equal(first, second)


def test_normalised_input_round_trips_through_rgb() -> None:
    x = images()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    flip_only = BatchAugment(
        p=1.0,
        degrees=0,
        crop_scale=(1, 1),
        brightness=0,
        contrast=0,
        saturation=0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    assert torch.allclose(flip_only((x - mean) / std), ((x - mean) / std).flip(-1), atol=1e-5)


def mean_hue(x: torch.Tensor) -> torch.Tensor:
    """Circular mean hue per image, in radians."""
    h = rgb_to_hsv(x)[:, 0]
    return torch.atan2(h.sin().mean((1, 2)), h.cos().mean((1, 2)))


def test_hue_is_kept_unless_hue_jitter_is_opted_in() -> None:
    torch.manual_seed(0)
    # A saturated colour on every pixel: brightness, contrast and saturation must not turn it another hue.
    x = torch.tensor([0.75, 0.2, 0.15]).view(1, 3, 1, 1).expand(16, 3, 24, 24).contiguous()
    before = mean_hue(x)
    kept = mean_hue(BatchAugment(p=1.0)(x))
    assert (kept - before).abs().max() < 0.02
    shifted = mean_hue(BatchAugment(p=1.0, hue=0.1)(x))
    assert (shifted - before).abs().max() > 0.1


def test_augment_rejects_half_given_statistics() -> None:
    with pytest.raises(ValueError, match="both mean and std"):
        BatchAugment(mean=IMAGENET_MEAN)


def test_recipe_colour_jitter_setting_reaches_the_augmentation() -> None:
    preprocess = Preprocess(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    jitter = build_augment(FinetuneConfig(color_jitter=0.3), preprocess).color
    assert isinstance(jitter, K.ColorJitter)
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.3, 0.3, 0.3, 0.0)
    # No brightness, contrast, saturation or hue jitter: no colour transform at all (shades stay put).
    assert isinstance(build_augment(FinetuneConfig(color_jitter=0.0), preprocess).color, torch.nn.Identity)
