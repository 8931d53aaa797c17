import torch

from taxonomist.models.color import COLOR_FEATURE_DIM, PALETTE, color_features, rgb_to_lab


def test_lab_of_reference_colours() -> None:
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 3)
    lab = rgb_to_lab(rgb)[0].T
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.5)
    assert torch.allclose(lab[1], torch.tensor([0.0, 0.0, 0.0]), atol=0.5)
    assert torch.allclose(lab[2], torch.tensor([53.2, 80.1, 67.2]), atol=0.5)  # sRGB red, D65


def product(color: tuple[float, float, float]) -> torch.Tensor:
    """A coloured square on a white background, like a catalogue photo."""
    img = torch.ones(1, 3, 64, 64)
    img[:, :, 16:48, 16:48] = torch.tensor(color).view(1, 3, 1, 1)
    return img


def test_background_is_ignored_and_colours_separate() -> None:
    red, blue = color_features(product((0.8, 0.1, 0.1))), color_features(product((0.1, 0.2, 0.8)))
    assert red.shape == (1, COLOR_FEATURE_DIM)
    k = len(PALETTE)
    assert torch.allclose(red[0, :k].sum(), torch.tensor(1.0), atol=1e-4)
    # The mean colour is the product's (red: a* > 0), not the white background's.
    assert red[0, k + 1] > 0.3 and blue[0, k + 2] < -0.3
    assert torch.nn.functional.cosine_similarity(red[:, :k], blue[:, :k]).item() < 0.2


def test_white_product_falls_back_to_all_pixels() -> None:
    white = color_features(torch.ones(1, 3, 32, 32))
    assert torch.isfinite(white).all()
    assert white[0, -1] < 0.02  # foreground fraction says: nothing but white
