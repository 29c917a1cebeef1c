"""The world models' competence metrics on hand-built cases: text-tower separation, reconstruction judging."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip import world as W
from un2clip.world.judge import percent_matching, read_in_place, scene_from_record
from un2clip.world.text import pair_cosines, text_separation


def test_pair_cosines():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    assert torch.allclose(pair_cosines(a, b), torch.tensor([0.0, 1.0, -1.0]))


class _BagOfWords:
    """A text tower that embeds a caption as its word counts over a fixed list: known cosines."""

    def __init__(self, words):
        self.words = words

    def encode_text(self, texts):
        return torch.tensor([[t.split().count(w) for w in self.words] for t in texts], dtype=torch.float32)


def test_text_separation_on_a_known_tower():
    pairs = {"shape": [("a red circle", "a red square")], "blind": [("a red circle", "a red circle")]}
    sep = text_separation(_BagOfWords(["a", "red", "circle", "square"]), pairs)
    assert sep["text_cos/shape"] == pytest.approx(2 / 3)  # (1,1,1,0)·(1,1,0,1) / 3
    assert sep["text_cos/blind"] == pytest.approx(1.0) and sep["text_cos_max/shape"] == pytest.approx(2 / 3)
    blind = text_separation(_BagOfWords(["a", "red"]), pairs)  # a tower that cannot see shape words
    assert blind["text_cos/shape"] == pytest.approx(1.0)


def test_separation_pairs_differ_in_their_attribute_only():
    from un2clip.world.words import separation_pairs

    pairs = separation_pairs()
    assert set(pairs) == {"shape", "color", "size", "state", "orientation", "dot", "glyph", "position", "count",
                          "view", "relation"}
    assert ("a red circle", "a red square") in pairs["shape"]
    for attribute, texts in pairs.items():
        assert texts and all(a != b for a, b in texts), attribute
    for a, b in pairs["color"] + pairs["shape"] + pairs["orientation"]:  # one word swapped
        assert sum(x != y for x, y in zip(a.split(), b.split())) == 1 and len(a.split()) == len(b.split())


def _single(shape="triangle", color="blue", **kw):
    rng = np.random.default_rng(0)
    scene = W.sample_scene(rng, n_objects=1, count=1, shapes=(shape,))
    obj = replace(scene.objects[0], color=color, **kw)
    return replace(scene, objects=(obj,))


def test_read_in_place_reads_colour_and_shape_from_renders():
    scene = _single("triangle", "blue")
    assert read_in_place(W.render(scene), scene) == {"color": "blue", "shape": "triangle"}
    square = replace(scene, objects=(replace(scene.objects[0], shape="square", orientation=None),))
    red = replace(scene, objects=(replace(scene.objects[0], color="red"),))
    assert read_in_place(W.render(square), scene) == {"color": "blue", "shape": "square"}
    assert read_in_place(W.render(red), scene) == {"color": "red", "shape": "triangle"}
    for shape in W.SHAPES:  # every shape is told from every other
        other = replace(scene, objects=(replace(scene.objects[0], shape=shape,
                                                orientation="left" if shape in W.ORIENTED_SHAPES else None),))
        assert read_in_place(W.render(other), scene)["shape"] == shape
    noisy = np.asarray(W.render(scene), dtype=np.float32) + np.random.default_rng(1).normal(0, 12, (32, 32, 3))
    noisy = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    scores = percent_matching([W.render(scene), noisy, W.render(square), W.render(red)], [scene] * 4)
    assert {k: scores[k] for k in ("color", "shape", "both")} == {"color": 75.0, "shape": 75.0, "both": 50.0}
    # read anywhere, the same four samples give the same answers (nothing was moved)
    assert {k: scores[f"anywhere_{k}"] for k in ("color", "shape", "both")} == \
        {"color": 75.0, "shape": 75.0, "both": 50.0}


def test_read_anywhere_reads_the_shape_wherever_and_however_it_is_drawn():
    from un2clip.world.judge import read_anywhere
    from un2clip.world.scenes import Y_WITH_GLYPH

    scene = _single("square", "blue", size="large", position="middle", x=0.5, state="filled")
    obj = scene.objects[0]
    elsewhere = [  # the input's colour and shape, every other attribute changed
        replace(scene, objects=(replace(obj, position="left", x=0.25, size="small"),)),
        replace(scene, objects=(replace(obj, state="outlined", dot=True),)),
        replace(scene, objects=(replace(obj, position="left", x=0.25), replace(obj, position="right", x=0.75)),
                count=2),
        replace(scene, objects=(replace(obj, glyph="7", y=Y_WITH_GLYPH),), view="tilted"),
    ]
    for moved in elsewhere:
        assert read_anywhere(W.render(moved)) == {"color": "blue", "shape": "square"}, moved
    # read in place, the square drawn small on the left is not found: that reading asks for the scene back
    assert read_in_place(W.render(elsewhere[0]), scene)["shape"] != "square"
    assert percent_matching([W.render(m) for m in elsewhere], [scene] * 4)["anywhere_both"] == 100.0
    # every colour and shape of the world's own images is read back, whatever else they show
    rng = np.random.default_rng(7)
    for shape in W.SHAPES:
        for color in W.COLORS:
            drawn = W.sample_scene(rng, n_objects=1, count=1, shapes=(shape,))
            drawn = replace(drawn, objects=(replace(drawn.objects[0], color=color),))
            assert read_anywhere(W.render(drawn)) == {"color": color, "shape": shape}, drawn
    # nothing drawn: nothing read, so nothing matches
    blank = replace(scene, objects=())
    assert read_anywhere(W.render(blank)) == {"color": None, "shape": None}
    assert percent_matching([W.render(blank)], [scene])["anywhere_both"] == 0.0


def test_reading_refuses_what_it_cannot_read():
    two = W.sample_scene(np.random.default_rng(0), n_objects=2, count=1)
    with pytest.raises(ValueError, match="single-object"):
        read_in_place(W.render(two), two)
    with pytest.raises(ValueError, match="one scene per sample"):
        percent_matching([], [])


def _flood_labels(mask, connectivity):
    """Reference: a plain stack flood fill from each unseen pixel in raster order (the loop judge.py used), each
    component labelled 1 + its first pixel's raster index."""
    h, w = mask.shape
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if connectivity == 4:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    labels = np.zeros(mask.shape, dtype=np.int64)
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        label = 1 + y0 * w + x0
        labels[y0, x0], stack = label, [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
    return labels


def _largest_flood_blob(mask):
    """Reference for ``_largest_blob``: the first largest 8-component in raster order."""
    labels = _flood_labels(mask, 8)
    best = max((int((labels == v).sum()), -v) for v in np.unique(labels[labels > 0])) if mask.any() else None
    return labels == -best[1] if best else np.zeros_like(mask)


def _flood_holes_filled(blob):
    """Reference for ``_holes_filled``: everything but what a 4-connected flood from the border reaches."""
    h, w = blob.shape
    outside = np.zeros_like(blob)
    stack = [(y, x) for y in range(h) for x in (0, w - 1)] + [(y, x) for x in range(w) for y in (0, h - 1)]
    while stack:
        y, x = stack.pop()
        if 0 <= y < h and 0 <= x < w and not blob[y, x] and not outside[y, x]:
            outside[y, x] = True
            stack += [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
    return ~outside


def test_component_labels_on_known_masks():
    from un2clip.world.judge import label_components

    diagonal = np.eye(3, dtype=bool)  # touching at corners: one 8-component, three 4-components
    assert label_components(diagonal).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert label_components(diagonal, connectivity=4).tolist() == [[1, 0, 0], [0, 5, 0], [0, 0, 9]]
    u = np.array([[1, 0, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)  # a U: its arms meet only at the bottom
    assert label_components(u, connectivity=4).tolist() == [[1, 0, 1], [1, 0, 1], [1, 1, 1]]
    assert label_components(np.zeros((2, 4), dtype=bool)).tolist() == [[0] * 4] * 2
    with pytest.raises(ValueError, match="connectivity"):
        label_components(u, connectivity=6)


def test_component_labels_equal_the_flood_fill_on_random_masks():
    from un2clip.world.judge import _holes_filled, _largest_blob, label_components

    rng = np.random.default_rng(0)
    for k in range(200):
        h, w = rng.integers(1, 33, size=2)
        mask = rng.random((h, w)) < rng.choice([0.05, 0.3, 0.5, 0.6, 0.9])
        for connectivity in (8, 4):
            assert np.array_equal(label_components(mask, connectivity=connectivity),
                                  _flood_labels(mask, connectivity)), (k, connectivity)
        assert np.array_equal(_largest_blob(mask), _largest_flood_blob(mask)), k
        assert np.array_equal(_holes_filled(mask), _flood_holes_filled(mask)), k


def test_scenes_come_back_from_the_attributes_file(tmp_path):
    import json

    W.generate_world(tmp_path / "w", seed=5, n_train=0, n_val=12, pairs_per_pattern=0, n_seg=0,
                     n_zeroshot_per_class=0, progress=False, workers=1)
    rows = [json.loads(line) for line in (tmp_path / "w" / "val" / "attributes.jsonl").read_text().splitlines()]
    for row in rows:
        scene = scene_from_record(row)
        written = np.asarray(Image.open(tmp_path / "w" / "val" / row["image"]).convert("RGB"))
        assert np.array_equal(np.asarray(W.render(scene)), written)


@pytest.mark.slow
def test_world_evaluate_command_without_a_decoder(tmp_path, capsys):
    from un2clip.cli import main
    from un2clip.models.presets import build_tiny_clip

    W.generate_world(tmp_path / "w", seed=2, n_train=64, n_val=16, pairs_per_pattern=1, n_seg=2,
                     n_zeroshot_per_class=2, progress=False, workers=1)
    build_tiny_clip().save_pretrained(tmp_path / "clip")
    out = tmp_path / "out"
    assert main(["world", "evaluate", "--model", f"mine={tmp_path / 'clip'}", "--world", str(tmp_path / "w"),
                 "--output", str(out), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "| mine |" in report and "Text-tower separation" in report
    assert "reconstructions.png" not in report  # no decoder: no diffusion metrics, no grid
    metrics = __import__("json").loads((out / "eval" / "mine.json").read_text())["metrics"]
    assert "text_cos/shape" in metrics and "diffloss/loss_mean" not in metrics and "recon/both" not in metrics
    W.generate_world(tmp_path / "empty", seed=2, n_train=0, n_val=4, pairs_per_pattern=1, n_seg=1,
                     n_zeroshot_per_class=1, progress=False, workers=1)
    assert main(["world", "evaluate", "--model", str(tmp_path / "clip"), "--world", str(tmp_path / "empty"),
                 "--output", str(tmp_path / "out2"), "--no-progress"]) == 2
    assert "lists no images" in capsys.readouterr().err


def test_reconstruction_match_samples_with_the_guidance_it_is_given(tmp_path, monkeypatch):
    """The guided reconstruction count must reach the decoder's sampler: without the pass-through both counts
    of the report would be the unguided one."""
    from un2clip.models.presets import build_tiny_clip, build_tiny_decoder
    from un2clip.models.unclip import UnclipDecoder
    from un2clip.world.judge import reconstruction_match

    W.generate_world(tmp_path / "w", seed=3, n_train=0, n_val=24, pairs_per_pattern=0, n_seg=0,
                     n_zeroshot_per_class=0, progress=False, workers=1)
    seen = []
    real = UnclipDecoder.generate

    def spy(self, embeds, **kw):
        seen.append(kw["guidance_scale"])
        return real(self, embeds, **kw)

    monkeypatch.setattr(UnclipDecoder, "generate", spy)
    clip, decoder = build_tiny_clip(), build_tiny_decoder()
    plain = reconstruction_match(clip, decoder, tmp_path / "w" / "val", n=3, num_inference_steps=2)
    guided = reconstruction_match(clip, decoder, tmp_path / "w" / "val", n=3, num_inference_steps=2,
                                  guidance_scale=3.0)
    assert seen == [1.0, 3.0]
    assert set(plain) == set(guided) == {f"recon/{p}{a}" for p in ("", "anywhere_") for a in ("color", "shape", "both")}


def test_chance_levels_and_references_are_printed_under_the_models(tmp_path):
    from un2clip.world.report import MMVP_CHANCE, chance_levels, write_report

    world = tmp_path / "world"
    (world / "zeroshot" / "shape").mkdir(parents=True)
    (world / "zeroshot" / "shape" / "classnames.txt").write_text("a\nb\nc\nd\n\n")  # 4 classes
    (world / "val").mkdir()
    rows = "".join(f"images/{i}.png,caption {i} {j}\n" for i in range(5) for j in range(2))  # 5 images, 2 captions
    (world / "val" / "captions.csv").write_text("image,caption\n" + rows)
    metrics = {"mmvp/average": 40.0, "mmvp/Orientation and Direction": 50.0, "mmvp/n_pairs": 9,
               "zeroshot_shape/acc1": 60.0, "retrieval/t2i_r1": 30.0, "retrieval/i2t_r1": 35.0,
               "seg_clearclip/mIoU": 20.0, "seg_reference/background_mIoU": 41.5, "seg_reference/oracle_mIoU": 77.5}
    assert MMVP_CHANCE == 25.0
    assert chance_levels(world, metrics) == pytest.approx({
        "mmvp/average": 25.0, "mmvp/Orientation and Direction": 25.0, "zeroshot_shape/acc1": 25.0,
        "retrieval/t2i_r1": 20.0, "retrieval/i2t_r1": 20.0, "seg_clearclip/mIoU": 41.5})
    text = write_report(tmp_path, {"original": metrics, "un2clip": metrics}, world).read_text()
    summary = text.split("## Summary")[1].split("## ")[0].splitlines()
    assert "| *chance* | 25.0 | 25.0 | – | 20.0 | 20.0 | 41.5 |" in summary[6]
    assert summary[7].startswith("| *patch oracle* | – | – | – | – | – | 77.5 |")
    patterns = text.split("## World-MMVP per pattern")[1].split("## ")[0]
    assert "| *chance* | 25.0 |" in patterns
