"""GroupViT: loading through transformers (a tiny random config saved and loaded back), NVlabs' grouping
segmentation against references written here, and `eval seg --method groupvit`."""

import json
import math

import pytest
import torch
from torch.nn import functional as F

from un2clip.models.groupvit import (
    BACKGROUND_THRESHOLD,
    build_tiny_groupvit,
    group_class_scores,
    groupvit_scores,
    load_groupvit,
    patch_groups,
    pixel_groups,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GroupViT written with save_pretrained (the Hub's folder layout) and its folder."""
    model = build_tiny_groupvit(seed=3)
    folder = model.save_pretrained(tmp_path_factory.mktemp("gv") / "tiny-groupvit")
    return model, folder


def test_a_saved_tiny_groupvit_loads_back_through_transformers(tiny):
    model, folder = tiny
    assert json.loads((folder / "config.json").read_text())["model_type"] == "groupvit"
    loaded = load_groupvit(folder)
    assert type(loaded.model).__name__ == "GroupViTModel" and not loaded.model.training
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model.image_outputs(x)
        b = loaded.image_outputs(x)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        text = ["a photo of a star."]
        assert torch.allclose(model.encode_text(text), loaded.encode_text(text), atol=1e-6)
    assert loaded.processing.size == 32 and loaded.patch_size == 8


def test_a_run_folder_loads_its_groupvit(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path / "run" / "groupvit")
    assert load_groupvit(tmp_path / "run").image_size == 32


def test_a_folder_of_another_model_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="not a GroupViT") as err:
        load_groupvit(tmp_path)
    assert "\n" not in str(err.value)


def _reference_masks(assignments, grid, size):
    """NVlabs' get_attn_maps + resize_attn_map + one-hot, written out: patch -> group by summing over the
    intermediate groups, upsampled bilinearly, the arg-max group per pixel."""
    soft = [a[0] for a in assignments]  # (G_i, N_i) each, batch 0
    n = soft[0].shape[1]
    final = soft[-1].shape[0]
    comp = torch.zeros(n, final)
    for p in range(n):
        for g in range(final):
            if len(soft) == 1:
                comp[p, g] = soft[0][g, p]
            else:  # two stages
                comp[p, g] = sum(soft[0][k, p] * soft[1][g, k] for k in range(soft[0].shape[0]))
    maps = comp.t().reshape(1, final, *grid)
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[0]
    return up.argmax(0), comp


def test_grouping_maps_every_patch_to_one_group_as_the_reference(tiny):
    model, _ = tiny
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, groups, assignments = model.image_outputs(x)
    assert [tuple(a.shape) for a in assignments] == [(1, 8, 16), (1, 4, 8)]  # 16 patches -> 8 groups -> 4
    per_patch = patch_groups(assignments)[0]
    assert per_patch.shape == (16, 4)
    assert per_patch.sum(-1) == pytest.approx(torch.ones(16), abs=1e-5)  # a distribution over groups per patch
    masks = pixel_groups(per_patch, (4, 4), (32, 32))
    onehot = F.one_hot(masks, 4)
    assert bool((onehot.sum(-1) == 1).all())  # every pixel in exactly one group
    ref, comp = _reference_masks(assignments, (4, 4), (32, 32))
    assert per_patch == pytest.approx(comp, abs=1e-5)
    assert torch.equal(masks, ref)
    assert groups.shape == (1, 4, model.embed_dim)


def test_group_class_scores_by_hand():
    e = torch.eye(3)
    groups = torch.stack([e[0], e[2]])  # group 0 is class 0, group 1 is class 2
    image = e[0] + e[2]
    s = 10.0
    out = group_class_scores(groups, image, e, s, top_k=2)  # the image keeps classes 0 and 2
    z = math.exp(s) + 2
    first0 = [math.exp(s) / z, 1 / z, 1 / z]
    second0 = [math.exp(s) / (math.exp(s) + 1), 0.0, 1 / (math.exp(s) + 1)]
    assert out[0].tolist() == pytest.approx([a * b for a, b in zip(first0, second0)], rel=1e-5)
    assert out[1].tolist() == pytest.approx([second0[2] * first0[1], 0.0, second0[0] * first0[0]], rel=1e-5)
    out1 = group_class_scores(groups, e[0], e, s, top_k=1)  # only class 0 kept: group 1 is all class 0
    assert out1[1].tolist() == pytest.approx([1 / z, 0.0, 0.0], rel=1e-5)


def test_background_is_where_the_best_score_is_under_the_threshold():
    group_map = torch.tensor([[0, 1], [1, 0]])
    scores = torch.tensor([[0.97, 0.01], [0.5, 0.4]])  # group 1 is unsure: background
    out = groupvit_scores(group_map, scores, background=True)
    assert BACKGROUND_THRESHOLD == 0.95
    assert out.argmax(0).tolist() == [[1, 0], [0, 1]]
    assert out[0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    # the threshold never exceeds the best group score: a model sure of nothing still labels its best group
    low = torch.tensor([[0.6, 0.1], [0.3, 0.2]])
    assert groupvit_scores(group_map, low, background=True).argmax(0).tolist() == [[1, 0], [0, 1]]
    assert groupvit_scores(group_map, scores, background=False).argmax(0).tolist() == [[0, 0], [0, 0]]


def test_bad_groupings_are_refused():
    with pytest.raises(ValueError, match="without grouping stages"):
        patch_groups([])
    with pytest.raises(ValueError, match="do not fill a 3 x 3 grid"):
        pixel_groups(torch.ones(16, 2), (3, 3), (8, 8))


def test_eval_seg_groupvit_on_a_generic_folder(tiny, tmp_path, capsys):
    from tests.test_seg_data import make_generic
    from un2clip.cli import main

    _, folder = tiny
    data = make_generic(tmp_path / "seg", n=2, h=32, w=40)
    out = tmp_path / "out"
    assert main(["eval", "seg", "--method", "groupvit", "--model", str(folder), "--data", str(data), "--output",
                 str(out), "--num-workers", "0", "--no-progress"]) == 0
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["task"] == "seg/groupvit" and record["metrics"]["n_images"] == 2
    assert record["options"]["crop"] == 32 and record["options"]["short_side"] == 32  # the model's input size
    assert record["options"]["templates"] == ["a photo of a {c}."]  # NVlabs' simple template
    assert 0 <= record["metrics"]["mIoU"] <= 100 and "background_mIoU" in record["metrics"]
    assert "groupvit" in capsys.readouterr().out


def test_multi_label_loss_by_hand():
    from un2clip.objectives.groupvit import multi_label_loss

    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prompts = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])  # (B 2, L 2, D 2)
    s = torch.tensor(2.0)
    # image 0 scores prompts (1, 0, 0, 0) x 2, targets (1/2, 1/2, 0, 0); image 1 scores (0, 1, 1, 1), same targets
    # on its own two; prompt (b, l) scores the two images, target its own
    e2 = math.exp(2)
    img0 = -(0.5 * math.log(e2 / (e2 + 3)) + 0.5 * math.log(1 / (e2 + 3)))
    img1 = -(0.5 * math.log(e2 / (1 + 3 * e2)) + 0.5 * math.log(e2 / (1 + 3 * e2)))
    p00 = -math.log(e2 / (e2 + 1))  # prompt (0, 0) = image 0's direction
    p01 = -math.log(1 / (1 + e2))  # prompt (0, 1) points at image 1 but belongs to image 0
    p1x = -math.log(e2 / (1 + e2))
    expected = 0.5 * ((img0 + img1) / 2 + (p00 + p01 + 2 * p1x) / 4)
    assert float(multi_label_loss(image, prompts, s)) == pytest.approx(expected, rel=1e-6)


def test_noun_prompts_are_the_captions_nouns_padded_with_the_caption():
    import random

    from un2clip.objectives.groupvit import caption_nouns, noun_prompts

    nouns = ["circle", "star", "square"]
    assert caption_nouns("A red star and a blue circle, a star", nouns) == ["star", "circle"]
    got = noun_prompts("a red star and a blue circle", nouns, 3, random.Random(0))
    assert sorted(got[:2]) == ["a photo of a circle.", "a photo of a star."]
    assert got[2] == "a red star and a blue circle"
    assert noun_prompts("a red thing", nouns, 2, random.Random(0)) == ["a red thing"] * 2


def test_pretrain_a_tiny_groupvit_from_scratch_then_segment_with_it(tmp_path):
    import numpy as np
    from PIL import Image

    from tests.test_seg_data import make_generic
    from un2clip.cli import main

    (tmp_path / "img").mkdir()
    rows = ["image,caption"]
    for i, (shape, colour) in enumerate([("circle", (255, 0, 0)), ("star", (0, 0, 255))] * 2):
        img = np.zeros((32, 32, 3), np.uint8)
        img[8:24, 8:24] = colour
        Image.fromarray(img).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,a {shape}")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "nouns.txt").write_text("circle\nstar\n")
    run = tmp_path / "run"
    assert main(["pretrain", "--preset", "groupvit-tiny", "--data", str(tmp_path / "captions.csv"), "--nouns",
                 str(tmp_path / "nouns.txt"), "--max-words", "2", "--batch-size", "4", "--max-steps", "2",
                 "--lr", "1e-3", "--output", str(run), "--no-progress"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert len(steps) == 2 and all("loss_multi_label" in x and "loss_contrastive" in x for x in steps)
    trained = load_groupvit(run)
    fresh = build_tiny_groupvit(seed=0)
    assert not torch.equal(trained.model.text_projection[0].weight, fresh.model.text_projection[0].weight)
    data = make_generic(tmp_path / "seg", n=1, h=32, w=32)
    out = tmp_path / "out"
    assert main(["eval", "seg", "--method", "groupvit", "--model", str(run), "--data", str(data), "--output",
                 str(out), "--num-workers", "0", "--no-progress"]) == 0
    assert json.loads(next(out.glob("*.json")).read_text())["metrics"]["n_images"] == 1
