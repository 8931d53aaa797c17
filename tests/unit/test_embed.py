from pathlib import Path

import numpy as np
from PIL import Image

from taxonomist.config import BackboneConfig
from taxonomist.features.cache import FeatureCache
from taxonomist.features.embed import embed_images
from taxonomist.models.build import build_backbone


def test_identical_bytes_encoded_once_and_every_bad_row_reported(tmp_path: Path) -> None:
    backbone = build_backbone(BackboneConfig(pretrained=False, size=32, color_features=False))
    good = tmp_path / "a.png"
    Image.new("RGB", (20, 30), (200, 10, 10)).save(good)
    (tmp_path / "b.png").write_bytes(good.read_bytes())  # same product photo under another id
    for name in ("bad1.jpg", "bad2.jpg"):
        (tmp_path / name).write_bytes(b"\xff\xd8 definitely not a jpeg")
    paths = [tmp_path / n for n in ("a.png", "b.png", "bad1.jpg", "bad2.jpg", "gone.jpg")]
    ids = ["a", "b", "bad1", "bad2", "gone"]
    cache = FeatureCache(tmp_path / "cache", backbone.fingerprint())
    result = embed_images(ids, paths, backbone, cache=cache, num_workers=0, progress=False)
    assert result.ok.tolist() == [True, True, False, False, False]
    assert result.computed == 1
    np.testing.assert_array_equal(result.features[0], result.features[1])
    assert {(e.id, e.reason) for e in result.errors} == {
        ("bad1", "corrupt"),
        ("bad2", "corrupt"),
        ("gone", "missing"),
    }
    again = embed_images(ids[:2], paths[:2], backbone, cache=cache, num_workers=0, progress=False)
    assert (again.cached, again.computed) == (2, 0)
    np.testing.assert_allclose(again.features, result.features[:2])


def test_another_max_pixels_does_not_reuse_features_of_the_other_shrink(tmp_path: Path) -> None:
    backbone = build_backbone(BackboneConfig(pretrained=False, size=32, color_features=False))
    path = tmp_path / "big.png"  # 4096 pixels: shrunk by 2 per side under max_pixels=1024
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    cache = FeatureCache(tmp_path / "cache", backbone.fingerprint())
    common = {"num_workers": 0, "progress": False}
    full = embed_images(["a"], [path], backbone, cache=cache, **common)
    shrunk = embed_images(["a"], [path], backbone, cache=cache, max_pixels=1024, **common)
    assert (shrunk.cached, shrunk.computed) == (0, 1)
    fresh = embed_images(["a"], [path], backbone, max_pixels=1024, **common)
    np.testing.assert_array_equal(shrunk.features, fresh.features)
    again = embed_images(["a"], [path], backbone, cache=cache, **common)  # the default's keys are kept
    assert again.cached == 1
    np.testing.assert_array_equal(again.features, full.features)
