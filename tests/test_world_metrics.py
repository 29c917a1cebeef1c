"""The world models' competence metrics on hand-built cases: text-tower separation, reconstruction judging."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip import world as W
from un2clip.world.judge import judge, scene_from_record, shown
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


def test_judge_reads_colour_and_shape_from_renders():
    scene = _single("triangle", "blue")
    assert shown(W.render(scene), scene) == {"color": "blue", "shape": "triangle"}
    square = replace(scene, objects=(replace(scene.objects[0], shape="square", orientation=None),))
    red = replace(scene, objects=(replace(scene.objects[0], color="red"),))
    assert shown(W.render(square), scene) == {"color": "blue", "shape": "square"}
    assert shown(W.render(red), scene) == {"color": "red", "shape": "triangle"}
    for shape in W.SHAPES:  # every shape is told from every other
        other = replace(scene, objects=(replace(scene.objects[0], shape=shape,
                                                orientation="left" if shape in W.ORIENTED_SHAPES else None),))
        assert shown(W.render(other), scene)["shape"] == shape
    noisy = np.asarray(W.render(scene), dtype=np.float32) + np.random.default_rng(1).normal(0, 12, (32, 32, 3))
    noisy = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    scores = judge([W.render(scene), noisy, W.render(square), W.render(red)], [scene] * 4)
    assert {k: scores[k] for k in ("color", "shape", "both")} == {"color": 75.0, "shape": 75.0, "both": 50.0}
    # read anywhere, the same four samples give the same answers (nothing was moved)
    assert {k: scores[f"anywhere_{k}"] for k in ("color", "shape", "both")} == \
        {"color": 75.0, "shape": 75.0, "both": 50.0}


def test_judge_anywhere_reads_the_shape_wherever_and_however_it_is_drawn():
    from un2clip.world.judge import shown_anywhere
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
        assert shown_anywhere(W.render(moved)) == {"color": "blue", "shape": "square"}, moved
    # read in place, the square drawn small on the left is not found: that reading asks for the scene back
    assert shown(W.render(elsewhere[0]), scene)["shape"] != "square"
    assert judge([W.render(m) for m in elsewhere], [scene] * 4)["anywhere_both"] == 100.0
    # every colour and shape of the world's own images is read back, whatever else they show
    rng = np.random.default_rng(7)
    for shape in W.SHAPES:
        for color in W.COLORS:
            drawn = W.sample_scene(rng, n_objects=1, count=1, shapes=(shape,))
            drawn = replace(drawn, objects=(replace(drawn.objects[0], color=color),))
            assert shown_anywhere(W.render(drawn)) == {"color": color, "shape": shape}, drawn
    # nothing drawn: nothing read, so nothing matches
    blank = replace(scene, objects=())
    assert shown_anywhere(W.render(blank)) == {"color": None, "shape": None}
    assert judge([W.render(blank)], [scene])["anywhere_both"] == 0.0


def test_judge_refuses_what_it_cannot_read():
    two = W.sample_scene(np.random.default_rng(0), n_objects=2, count=1)
    with pytest.raises(ValueError, match="single-object"):
        shown(W.render(two), two)
    with pytest.raises(ValueError, match="one scene per sample"):
        judge([], [])


def test_scenes_come_back_from_the_attributes_file(tmp_path):
    import json

    W.generate_world(tmp_path / "w", seed=5, n_train=0, n_val=12, pairs_per_pattern=0, n_seg=0,
                     n_zeroshot_per_class=0, progress=False, workers=1)
    rows = [json.loads(line) for line in (tmp_path / "w" / "val" / "attributes.jsonl").read_text().splitlines()]
    for row in rows:
        scene = scene_from_record(row)
        written = np.asarray(Image.open(tmp_path / "w" / "val" / row["image"]).convert("RGB"))
        assert np.array_equal(np.asarray(W.render(scene)), written)


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
