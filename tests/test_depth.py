"""eval depth: DepthCLIP's bins and metrics on hand-built inputs, the readers, the world's depth set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.eval.downstream import depth as Dp


def test_a_depth_equal_to_the_truth_scores_perfectly():
    gt = torch.rand(5, 7) * 3 + 0.5
    m = Dp.depth_metrics(gt.clone(), gt)
    assert m["delta1"] == 1.0 and m["delta3"] == 1.0
    assert m["abs_rel"] == 0.0 and m["rmse"] == 0.0 and m["log10"] == 0.0


def test_metrics_of_a_known_error():
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # the zero is "no measurement"
    pred = torch.tensor([[2.0, 2.0], [4.0, 9.0]])
    m = Dp.depth_metrics(pred, gt)
    assert m["delta1"] == pytest.approx(2 / 3) and m["delta3"] == pytest.approx(2 / 3)  # ratio 2 > 1.25^3
    assert m["abs_rel"] == pytest.approx(1 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["log10"] == pytest.approx(math.log10(2) / 3)


def test_depthclip_depth_is_the_softmax_weighted_bin():
    words = torch.eye(7, 8)  # seven orthogonal unit word embeddings in 8 dims
    one_word = words[2]  # a patch equal to "close": essentially all weight on bin 2
    assert float(Dp.depthclip_depth(one_word, words)) == pytest.approx(Dp.BIN_DEPTHS[2], abs=1e-4)
    between = torch.nn.functional.normalize(words[0] + words[6], dim=0)  # equally like "giant" and "unseen"
    assert float(Dp.depthclip_depth(between, words)) == pytest.approx((1.0 + 3.0) / 2, abs=1e-4)
    far = torch.zeros(8)
    far[7] = 1.0  # like no word: uniform softmax -> mean of the bins
    assert float(Dp.depthclip_depth(far, words)) == pytest.approx(sum(Dp.BIN_DEPTHS) / 7, abs=1e-5)


def test_depthclip_depth_matches_the_reference_formula():
    # DepthCLIP's monoclip.py: logits = 100 * img @ text, / temperature, softmax over bins, sum of softmax * bins
    torch.manual_seed(0)
    patches = torch.nn.functional.normalize(torch.randn(2, 3, 4, 16), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
    logits = 100.0 * torch.einsum("bhwd,kd->bkhw", patches, words) / 0.1
    reference = (logits.softmax(dim=1) * torch.tensor(Dp.BIN_DEPTHS).reshape(1, 7, 1, 1)).sum(1)
    assert torch.allclose(Dp.depthclip_depth(patches, words), reference, atol=1e-5)


def write_pair(folder, name, size=(24, 16), depth_size=None, value=1500):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "depths").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (30, 90, 200)).save(folder / "images" / f"{name}.jpg")
    w, h = depth_size or size
    Image.fromarray(np.full((h, w), value, dtype=np.uint16)).save(folder / "depths" / f"{name}.png")


def test_reader_layouts_and_16_bit_depth(tmp_path):
    write_pair(tmp_path / "a", "0001")
    ds = Dp.read_depth_set(tmp_path / "a")
    assert ds.depth_scale == 1000.0 and len(ds.pairs) == 1
    assert Dp.read_depth_png(ds.pairs[0][1], ds.depth_scale).unique().tolist() == [1.5]
    bts = tmp_path / "bts" / "bathroom"
    bts.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(bts / "rgb_00045.jpg")
    Image.fromarray(np.ones((8, 8), dtype=np.uint16)).save(bts / "sync_depth_00045.png")
    assert [p[1].name for p in Dp.read_depth_set(tmp_path / "bts").pairs] == ["sync_depth_00045.png"]


def test_a_depth_png_of_another_size_is_an_error_naming_both_files(tmp_path, tiny_clip):
    write_pair(tmp_path, "0001", size=(24, 16), depth_size=(20, 16))
    with pytest.raises(ValueError, match=r"depths/0001\.png is 20x16 but its image .*0001\.jpg is 24x16"):
        Dp.evaluate(tiny_clip, tmp_path, progress=False)


def test_an_image_without_depth_is_an_error(tmp_path):
    write_pair(tmp_path, "0001")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "0002.png")
    with pytest.raises(FileNotFoundError, match=r"0002\.png has no depth map"):
        Dp.read_depth_set(tmp_path)


def test_model_input_keeps_the_aspect_on_the_patch_grid(tiny_clip):
    x = Dp.model_input(Image.new("RGB", (64, 48)), tiny_clip, short_side=32)
    assert tuple(x.shape) == (1, 3, 32, 40)  # 48 -> 32, 64 -> 42.7 -> 40 (a multiple of the 8 px patch)
    assert tiny_clip.image_tokens(x).shape[1] == 4 * 5


def test_world_depth_set_and_evaluate(tmp_path, tiny_clip):
    from un2clip.world.downstream import DEPTH_WALL, depth_scene, render_depth, write_depth

    rng = np.random.default_rng(0)
    scene, depths = depth_scene(rng)
    image, depth = render_depth(scene, depths)
    assert image.size == (64, 64) and depth.shape == (64, 64)
    allowed = np.array([DEPTH_WALL, *depths])
    assert all(np.isclose(v, allowed, atol=1e-6).any() for v in np.unique(depth))
    near, far = render_depth(scene, tuple(1.0 for _ in depths))[1], render_depth(scene, tuple(2.5 for _ in depths))[1]
    assert (near < DEPTH_WALL).sum() > 2 * (far < DEPTH_WALL).sum()  # nearer objects are drawn larger
    folder = write_depth(tmp_path, seed=1, n=2)
    m = Dp.evaluate(tiny_clip, folder, progress=False)
    assert m["n_images"] == 2 and 0 <= m["delta1"] <= 1 and m["rmse"] > 0
