import pytest
import torch
from torch import nn

from taxonomist.data.schema import Schema
from taxonomist.models.attention_head import AttentionHeads
from taxonomist.models.heads import allowed_masks
from taxonomist.training.losses import masked_cross_entropy

SCHEMA = Schema(
    {
        "Shoes": {"color": ["red", "blue"], "size": ["S", "L"], "sole": ["flat", "heel", "wedge"]},
        "Bags": {"color": ["blue", "green"]},
    }
)
CATEGORIES = ["Shoes", "Bags"]


def small_heads(in_channels: int, **kwargs) -> AttentionHeads:
    # width 64 keeps groups=32 valid (2 channels per group) while the test stays fast.
    return AttentionHeads(in_channels, allowed_masks(SCHEMA, CATEGORIES), width=64, hidden=(32, 16), **kwargs)


@pytest.mark.parametrize("in_channels", [3, 48, 130])
@pytest.mark.parametrize("category_dim", [0, 4])
def test_one_logit_vector_per_attribute_for_any_channel_count(in_channels: int, category_dim: int) -> None:
    torch.manual_seed(0)
    heads = small_heads(in_channels, category_dim=category_dim)
    out = heads(torch.randn(5, in_channels, 6, 7), torch.tensor([0, 1, 0, 1, 1]))
    assert list(out) == ["color", "size", "sole"]
    assert {a: tuple(v.shape) for a, v in out.items()} == {"color": (5, 3), "size": (5, 2), "sole": (5, 3)}
    assert heads.shared(torch.randn(2, in_channels, 6, 7)).shape == (2, 64, 6, 7)


def test_seed_layout_at_default_width() -> None:
    heads = AttentionHeads(1024, allowed_masks(SCHEMA, CATEGORIES))
    assert heads.shared_layer[0].weight.shape == (512, 1024, 1, 1)
    head = heads.heads[0]
    assert [m.groups for m in head.spatial if isinstance(m, nn.Conv2d)] == [32, 32]
    assert [m.out_features for m in head.channel if isinstance(m, nn.Linear)] == [128, 512]
    linears = [m for m in head.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 512), (512, 3)]


def test_disallowed_values_are_masked_without_nan() -> None:
    torch.manual_seed(0)
    heads = small_heads(16).eval()
    out = heads(torch.randn(4, 16, 5, 5), torch.tensor([0, 1, 1, 0]))
    color = torch.softmax(out["color"], dim=1)
    assert torch.all(color[[1, 2], 0] == 0)  # Bags can never be red
    assert torch.all(color[[0, 3], 2] == 0)  # Shoes can never be green
    sole = torch.softmax(out["sole"], dim=1)
    assert not torch.isnan(sole).any()  # Bags have no sole: a flat row, not NaN
    assert heads.mask("color").tolist() == [[True, True, False], [False, True, True]]


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    heads = small_heads(16, category_dim=4)
    fmap = torch.randn(6, 16, 4, 4, requires_grad=True)
    category = torch.tensor([0, 0, 0, 1, 1, 1])
    labels = {
        "color": torch.tensor([0, 1, 0, 1, 2, 2]),
        "size": torch.tensor([0, 1, 1, -1, -1, -1]),
        "sole": torch.tensor([2, 0, 1, -1, -1, -1]),
    }
    masked_cross_entropy(heads(fmap, category), labels).backward()
    assert fmap.grad is not None and fmap.grad.abs().sum() > 0
    for name, parameter in heads.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_width_must_split_into_groups() -> None:
    with pytest.raises(ValueError, match="divisible"):
        AttentionHeads(8, allowed_masks(SCHEMA, CATEGORIES), width=48)
