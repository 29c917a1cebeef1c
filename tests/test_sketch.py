"""CLIPasso: the rasteriser, the loss, the initialisation, the optimisation, `un2clip sketch`, `eval sketch`."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from un2clip.cli import main
from un2clip.sketch.loss import SketchLoss, augment, default_layers, random_grids, tower_features
from un2clip.sketch.optimise import Sketch, initial_strokes, saliency_map, sketch_image, start_probabilities
from un2clip.sketch.rasterise import bezier_points, render

WORLD_CLIP = Path(__file__).resolve().parents[1] / "assets" / "tiny-world" / "seed0" / "clip"


def straight(x0: float, x1: float, y: float) -> list[list[float]]:
    """Control points of a straight horizontal stroke from (x0, y) to (x1, y)."""
    return [[x0 + (x1 - x0) * k / 3, y] for k in range(4)]


# -- the rasteriser ------------------------------------------------------------------------------------------------


def test_bezier_points_are_the_cubic_at_its_parameters():
    control = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 2.0], [4.0, 0.0]]])
    pts = bezier_points(control, n_segments=2)
    # t = 1/2: (P0 + 3 P1 + 3 P2 + P3) / 8
    assert torch.allclose(pts[0], torch.tensor([[0.0, 0.0], [2.0, 1.5], [4.0, 0.0]]))


def test_a_straight_horizontal_stroke_inks_the_pixels_geometry_says():
    # centre line y = 10.5 from x = 4 to x = 20, width 1.5: it covers y in [9.75, 11.25], so row 10 (y in [10, 11))
    # is all ink, rows 9 and 11 a quarter, nothing beyond; columns 5..18 lie wholly inside its length
    ink = 1 - render(torch.tensor([straight(4, 20, 10.5)]), 16, 24, stroke_width=1.5)
    assert ink.shape == (3, 16, 24)
    assert torch.equal(ink[0], ink[1]) and torch.equal(ink[0], ink[2])
    ink = ink[0]
    assert torch.allclose(ink[10, 5:19], torch.ones(14))
    assert torch.allclose(ink[9, 5:19], torch.full((14,), 0.25))
    assert torch.allclose(ink[11, 5:19], torch.full((14,), 0.25))
    assert ink[:9].abs().max() == 0 and ink[12:].abs().max() == 0
    assert ink[:, :2].abs().max() == 0 and ink[:, 23:].abs().max() == 0  # the ends reach 1.25 px at most


def test_strokes_composite_as_one_minus_the_product_of_what_each_leaves():
    # two parallel strokes 2 px apart each give row 11 a quarter: 1 - (1 - 1/4)^2 = 7/16
    control = torch.tensor([straight(2, 22, 10.5), straight(2, 22, 12.5)])
    ink = 1 - render(control, 16, 24)[0]
    assert torch.allclose(ink[11, 5:19], torch.full((14,), 7 / 16))
    assert torch.allclose(ink[10, 5:19], torch.ones(14)) and torch.allclose(ink[12, 5:19], torch.ones(14))


def test_a_stroke_off_the_canvas_leaves_it_white():
    assert torch.equal(render(torch.tensor([straight(40, 60, 50.0)]), 16), torch.ones(3, 16, 16))


def test_the_rasteriser_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    control = (2 + 8 * torch.rand(2, 4, 2, generator=gen, dtype=torch.float64)).requires_grad_(True)
    weights = torch.rand(3, 12, 12, generator=gen, dtype=torch.float64)

    def picture(c: torch.Tensor) -> torch.Tensor:
        return (render(c, 12, stroke_width=2.0, n_segments=8) * weights).sum(dim=0)

    assert torch.autograd.gradcheck(picture, (control,), eps=1e-6, atol=1e-5)
    grad = torch.autograd.grad(picture(control).sum(), control)[0]
    assert grad.abs().sum() > 0  # the check compared something


# -- the loss ------------------------------------------------------------------------------------------------------


def test_default_layers_are_the_middle_quarters_of_the_tower():
    assert default_layers(12) == (5, 8)
    assert default_layers(24) == (11, 17)
    assert default_layers(4) == (1, 2)


def test_the_whole_area_crop_is_the_identity_and_crops_keep_their_share():
    gen = torch.Generator().manual_seed(0)
    picture = torch.rand(3, 16, 16)
    same = augment(picture, random_grids(2, 16, gen, min_scale=1.0))
    assert torch.allclose(same, picture.expand(2, -1, -1, -1), atol=1e-5)
    grids = random_grids(50, 16, gen, min_scale=0.7)
    side = (grids[:, 0, -1, 0] - grids[:, 0, 0, 0]) / (2 * 15 / 16)  # span of the sampled x over the image's
    assert side.min() >= math.sqrt(0.7) - 1e-5 and side.max() <= 1 + 1e-5
    assert grids.abs().max() <= 1 + 1e-5  # crops stay inside the picture
    warped = random_grids(1, 16, gen, perspective=0.5)
    assert warped.abs().max() <= 1 + 1e-5 and not torch.allclose(warped, random_grids(1, 16, gen, min_scale=1.0))


def test_the_loss_is_clipassos_formula_on_the_blocks_outputs(tiny_clip):
    # hooks on the HF encoder's blocks, as CLIPasso hooks its ViT's resblocks: block k's output is hidden state k + 1
    layers, weights = (1, 3), (0.5, 2.0)
    gen = torch.Generator().manual_seed(0)
    target, sketch = torch.rand(3, 32, 32, generator=gen), torch.rand(3, 32, 32, generator=gen)
    seen = {}
    blocks = tiny_clip.vision_model.encoder.layers
    hooks = [blocks[k].register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o[0] if isinstance(o, tuple)
                                                                                       else o)) for k in layers]
    try:
        with torch.no_grad():
            inputs = tiny_clip.processing.from_unit(torch.stack([sketch, target]))
            embeds = tiny_clip.encode_image(inputs)
            want = sum(w * ((seen[k][0] - seen[k][1]) ** 2).mean() for k, w in zip(layers, weights))
            want = want + 0.1 * (1 - torch.cosine_similarity(embeds[0], embeds[1], dim=0))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        got, parts = SketchLoss(tiny_clip, target, layers, weights)(sketch)
    assert torch.allclose(got, want, atol=1e-5)
    assert set(parts) == {"block1", "block3", "semantic"}
    _, feats = tower_features(tiny_clip, sketch[None], (0,))
    assert feats[0].shape == (1, 17, 128)  # class token + 16 patches, every token compared


# -- initialisation ------------------------------------------------------------------------------------------------


def test_start_probabilities_are_a_softmax_at_temperature_over_the_positive_pixels():
    relevance = torch.tensor([[0.0, 0.5], [1.0, 0.0]])
    probs = start_probabilities(relevance, 0.3)
    e1, e2 = math.exp(0.5 / 0.3), math.exp(1.0 / 0.3)
    assert torch.allclose(probs, torch.tensor([[0.0, e1 / (e1 + e2)], [e2 / (e1 + e2), 0.0]], dtype=torch.float64))


def test_strokes_start_on_drawn_pixels_and_stay_close():
    probs = torch.zeros(20, 20, dtype=torch.float64)
    probs[5, 7], probs[12, 3] = 0.5, 0.5
    control = initial_strokes(probs, 2, torch.Generator().manual_seed(0))
    starts = sorted((round(float(x)), round(float(y))) for x, y in control[:, 0])
    assert starts == [(3, 12), (7, 5)]  # (x, y) = (column, row)
    steps = (control[:, 1:] - control[:, :-1]).abs()
    assert steps.max() <= 0.025 * 20 + 1e-5
    with pytest.raises(ValueError, match="only 2 pixels"):
        initial_strokes(probs, 3, torch.Generator().manual_seed(0))


def test_saliency_is_a_map_in_unit_range(tiny_clip):
    sal = saliency_map(tiny_clip, torch.rand(3, 40, 40))
    assert sal.shape == (40, 40) and sal.min() == 0 and sal.max() == 1
    assert tiny_clip.model.config._attn_implementation == "sdpa"  # put back after reading the attention


# -- the optimisation ----------------------------------------------------------------------------------------------


def world_image(seed: int = 0) -> torch.Tensor:
    import numpy as np

    from un2clip.data import transforms as T
    from un2clip.world.render import render as render_scene
    from un2clip.world.scenes import sample_scene

    return T.pil_to_tensor(render_scene(sample_scene(np.random.default_rng(seed)), size=32))


def test_sketching_a_world_image_lowers_its_loss(one_thread):
    from un2clip.models.clip import ClipModel

    model = ClipModel.from_pretrained(WORLD_CLIP)
    flags = [p.requires_grad for p in model.parameters()]
    result = sketch_image(model, world_image(), 8, steps=40, seed=0)
    assert len(result.losses) == 40 and result.control.shape == (8, 4, 2)
    assert result.final_loss < 0.9 * result.initial_loss, (result.initial_loss, result.final_loss)
    assert [p.requires_grad for p in model.parameters()] == flags  # the tower is left as it was


def test_bad_sketch_settings_are_refused(tiny_clip):
    image = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="--strokes must be > 0"):
        sketch_image(tiny_clip, image, 0, steps=1)
    with pytest.raises(ValueError, match="--steps must be > 0"):
        sketch_image(tiny_clip, image, 2, steps=0)
    with pytest.raises(ValueError, match="block 4 is beyond the image tower's depth"):
        sketch_image(tiny_clip, image, 2, steps=1, layers=[4])
    with pytest.raises(ValueError, match="2 weights for 1 layers"):
        sketch_image(tiny_clip, image, 2, steps=1, layers=[1], layer_weights=[1.0, 1.0])


# -- files and the command -----------------------------------------------------------------------------------------


def svg_paths(path: Path) -> list[ET.Element]:
    root = ET.parse(path).getroot()
    return root.findall("{http://www.w3.org/2000/svg}path")


def test_the_svg_has_one_cubic_path_per_stroke(tmp_path):
    from un2clip.sketch.files import write_sketch

    control = torch.tensor([straight(2, 20, 5.5), straight(3, 9, 12.0), straight(1, 4, 2.0)])
    svg, png = write_sketch(Sketch(control, 24, 1.5), tmp_path, "x")
    paths = svg_paths(svg)
    assert len(paths) == 3
    assert paths[1].get("d") == "M 3.000 12.000 C 5.000 12.000 7.000 12.000 9.000 12.000"
    assert paths[0].get("stroke-width") == "1.5" and paths[0].get("fill") == "none"


@pytest.fixture
def images(tmp_path) -> list[Path]:
    from un2clip.sketch.files import to_pil

    out = []
    for seed in (0, 1):
        path = tmp_path / f"scene{seed}.png"
        to_pil(world_image(seed)).save(path)
        out.append(path)
    return out


def test_un2clip_sketch_writes_svg_png_and_grid(images, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    rc = main(["sketch", *map(str, images), "--strokes", "3", "--output", str(out), "--model", "tiny",
               "--steps", "2", "--canvas", "32", "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    for name in ("scene0", "scene1"):
        assert len(svg_paths(out / f"{name}.svg")) == 3
        from PIL import Image

        assert Image.open(out / f"{name}.png").size == (32, 32)
    from PIL import Image

    assert Image.open(out / "grid.png").size == (2 * 34 + 2, 2 * 34 + 2)


@pytest.mark.parametrize("extra, message", [
    (["--strokes", "0"], "--strokes: must be an integer >= 1"),
    (["--steps", "0"], "--steps: must be an integer >= 1"),
    (["--layers", "4"], "block 4 is beyond the image tower's depth (4 blocks"),
    (["--layers", "1", "--layer-weights", "1", "2"], "2 weights for 1 layers"),
    (["--width", "0"], "--width: must be a finite number > 0"),
])
def test_un2clip_sketch_refuses_bad_settings(images, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) if "must be a" in message else _no_raise():
        rc = main(["sketch", str(images[0]), "--output", str(tmp_path / "o"), "--model", "tiny", "--steps", "1",
                   "--canvas", "32", "--no-progress", *extra])
        assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_un2clip_sketch_never_overwrites_an_input_image(images, capsys):
    # --output the images' own folder: scene0.png would be replaced by its sketch
    before = [p.read_bytes() for p in images]
    rc = main(["sketch", *map(str, images), "--output", str(images[0].parent), "--model", "tiny", "--steps", "1",
               "--canvas", "32", "--no-progress"])
    assert rc == 2
    assert "would overwrite the input image" in capsys.readouterr().err
    assert [p.read_bytes() for p in images] == before
    assert not list(images[0].parent.glob("*.svg"))


def test_un2clip_sketch_refuses_an_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    rc = main(["sketch", str(bad), "--output", str(tmp_path / "o"), "--model", "tiny", "--no-progress"])
    assert rc == 2
    assert f"image {bad} could not be read" in capsys.readouterr().err
    rc = main(["sketch", str(tmp_path / "missing.png"), "--output", str(tmp_path / "o"), "--model", "tiny"])
    assert rc == 2 and "missing.png not found" in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- the evaluation ------------------------------------------------------------------------------------------------


def test_eval_sketch_runs_end_to_end_on_an_image_folder(tmp_path, capsys, one_thread):
    from un2clip.sketch.files import to_pil

    data = tmp_path / "data"
    for label, seed in (("first", 0), ("second", 1)):
        (data / label).mkdir(parents=True)
        for i in range(3):  # --limit 2 keeps two of each
            to_pil(world_image(seed + 10 * i)).save(data / label / f"{i}.png")
    (data / "templates.txt").write_text("{c}\n")
    out = tmp_path / "results"
    rc = main(["eval", "sketch", "--model", "tiny", "--data", str(data), "--output", str(out), "--device", "cpu",
               "--steps", "2", "--limit", "2", "--canvas", "32", "--judge", "tiny", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    (result,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    metrics = result["metrics"]
    assert {"acc1@4", "acc1@8", "acc1@16", "acc1_photo"} <= set(metrics)
    assert metrics["n_images"] == 4 and metrics["n_classes"] == 2
    for key in ("acc1@4", "acc1@8", "acc1@16", "acc1_photo"):
        assert metrics[key] in (0.0, 0.25, 0.5, 0.75, 1.0)  # a share of 4 images
    assert result["options"]["judge"] == "tiny"
