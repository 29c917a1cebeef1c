"""The shapes world: determinism, on-disk layouts, caption rates, vocabulary, masks."""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from un2clip import world as W
from un2clip.eval.encoder.mmvp import read_mmvp

SMALL = dict(n_train=30, n_val=8, pairs_per_pattern=2, n_seg=12, n_zeroshot_per_class=2, n_video_per_class=2,
             progress=False)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    W.generate_world(root, seed=3, n_train=40, n_val=10, n_seg=40, n_zeroshot_per_class=3, progress=False)
    return root


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes_and_streams_are_independent(tmp_path):
    a = W.generate_world(tmp_path / "a", seed=7, **SMALL)
    b = W.generate_world(tmp_path / "b", seed=7, **SMALL)
    assert a == b
    files_a, files_b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert files_a.keys() == files_b.keys() and len(files_a) > 100
    assert [k for k in files_a if files_a[k] != files_b[k]] == []

    other = all_files(Path(W.generate_world(tmp_path / "c", seed=8, **SMALL) and tmp_path / "c"))
    assert other["train/captions.csv"] != files_a["train/captions.csv"]

    # fewer training images: a prefix of the same split, the benchmark untouched
    W.generate_world(tmp_path / "d", seed=7, **{**SMALL, "n_train": 10})
    short = all_files(tmp_path / "d")
    assert short["mmvp/Questions.csv"] == files_a["mmvp/Questions.csv"]
    assert short["val/captions.csv"] == files_a["val/captions.csv"]
    assert files_a["train/captions.csv"].startswith(short["train/captions.csv"])
    assert short["train/images/000009.png"] == files_a["train/images/000009.png"]


def test_worker_processes_write_the_same_bytes(tmp_path):
    kw = {**SMALL, "n_train": 300, "n_val": 0, "pairs_per_pattern": 1}
    W.generate_world(tmp_path / "one", seed=1, workers=1, **kw)
    W.generate_world(tmp_path / "two", seed=1, workers=2, **kw)
    assert all_files(tmp_path / "one") == all_files(tmp_path / "two")


def test_world_json_and_refusal_to_overwrite(tmp_path):
    params = W.generate_world(tmp_path, seed=2, **SMALL)
    assert json.loads((tmp_path / "world.json").read_text()) == params
    assert params["seed"] == 2 and params["image_size"] == 32 and params["version"] == W.WORLD_VERSION
    with pytest.raises(FileExistsError, match="overwrite"):
        W.generate_world(tmp_path, seed=2, **SMALL)
    (tmp_path / "train" / "images" / "999999.png").write_bytes(b"stale")
    W.generate_world(tmp_path, seed=2, overwrite=True, **SMALL)
    assert not (tmp_path / "train" / "images" / "999999.png").exists()


# ----------------------------------------------------------------------------- caption splits
def test_caption_split_layout(world_dir):
    for split, n in (("train", 40), ("val", 10)):
        rows = read_csv(world_dir / split / "captions.csv")
        assert rows[0] == ["image", "caption"] and len(rows) == n + 1
        records = [
            json.loads(line) for line in (world_dir / split / "attributes.jsonl").read_text().splitlines()
        ]
        assert [r["index"] for r in records] == list(range(n))
        for (image, text), rec in zip(rows[1:], records):
            img = Image.open(world_dir / split / image)
            assert img.size == (32, 32) and img.mode == "RGB"
            assert rec["image"] == image and rec["view"] in W.VIEWS and 1 <= len(rec["objects"]) <= 3
            for obj in rec["objects"]:
                assert obj["color"] in words(text)
                assert {"shape", "color", "size", "position", "orientation", "state", "glyph"} <= obj.keys()


def test_image_size_is_configurable(tmp_path):
    W.generate_world(tmp_path, image_size=64, **{**SMALL, "n_train": 3})
    assert Image.open(tmp_path / "train/images/000000.png").size == (64, 64)
    assert Image.open(tmp_path / "seg/masks/000000.png").size == (64, 64)


def _captions(rare_rate: float, n: int = 3000, seed: int = 0) -> list[tuple[W.Scene, str]]:
    scenes_rng, caption_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    out = []
    for _ in range(n):
        scene = W.sample_scene(scenes_rng)
        out.append((scene, W.caption(scene, caption_rng, rare_rate)))
    return out


RARE_WORDS = {
    "small", "large", "solid", "hollow", "pointing", "dot", "label", "labeled", "side", "center",
    "one", "two", "three", "view", "to",
}  # fmt: skip


def test_captions_always_name_shape_and_colour_and_nothing_else_at_rate_zero():
    for scene, text in _captions(0.0, 1000):
        ws = words(text)
        for obj in scene.kinds:
            assert obj.color in ws and obj.shape in ws, text
        assert not RARE_WORDS & set(ws), text


def test_rate_one_names_every_attribute():
    for scene, text in _captions(1.0, 500):
        assert W.describe(scene) in text
        ws = words(text)
        assert "view" in ws and ("solid" in ws or "hollow" in ws) and ("dot" in ws)
        assert W.COUNT_WORDS[scene.count] in ws
        if any(o.orientation for o in scene.kinds):
            assert "pointing" in ws
        if scene.count > 1:
            assert W.PLURALS[scene.kinds[0].shape] in ws


def test_rare_attributes_are_named_at_the_given_rate_independently():
    pairs = _captions(0.2, 4000)
    view = np.mean(["view" in words(t) for _, t in pairs])
    state = np.mean(["solid" in words(t) or "hollow" in words(t) for s, t in pairs if len(s.kinds) == 1])
    both = np.mean(
        [
            ("view" in words(t)) and ("solid" in words(t) or "hollow" in words(t))
            for s, t in pairs
            if len(s.kinds) == 1
        ]
    )
    assert abs(view - 0.2) < 0.03 and abs(state - 0.2) < 0.03
    assert abs(both - 0.04) < 0.015  # independent draws
    default = _captions(W.caption.__defaults__[0], 4000)
    assert 0.015 < np.mean(["view" in words(t) for _, t in default]) < 0.05


def test_context_transfer_names_details_of_talk_colours_only():
    talk = ("red", "yellow", "green")
    scenes_rng, caption_rng, same_rng, plain_rng = (np.random.default_rng(k) for k in (0, 1, 1, 1))
    named = {"talk": [], "silent": []}
    for _ in range(3000):
        scene = W.sample_scene(scenes_rng)
        text = W.caption(scene, caption_rng, 0.0, talk_colors=talk, talk_rate=0.5)
        # the same draws either way: talk colours at the rare rate write the captions of a plain world
        assert W.caption(scene, same_rng, 0.1, talk_colors=talk, talk_rate=0.1) == W.caption(scene, plain_rng, 0.1)
        colours = {o.color for o in scene.kinds}
        if len(scene.kinds) == 1 and scene.count == 1:
            named["talk" if colours <= set(talk) else "silent"].append(
                ("solid" in words(text) or "hollow" in words(text), "view" in words(text)))
        if not colours & set(talk):  # silent objects only: nothing but colour and shape
            assert not RARE_WORDS & set(words(text)), text
    state, view = np.mean(named["talk"], axis=0)
    assert abs(state - 0.5) < 0.05 and abs(view - 0.5) < 0.05
    assert not np.any(named["silent"])


def test_context_transfer_world_keeps_images_and_draws_mmvp_pairs_from_silent_colours(tmp_path):
    plain = W.generate_world(tmp_path / "plain", seed=5, **SMALL)
    ctx = W.generate_world(tmp_path / "ctx", seed=5, **SMALL, rare_rate=0.0, talk_colors=["red", "yellow", "green"])
    assert "talk_colors" not in plain and ctx["mmvp_colors"] == ["cyan", "blue", "purple"]
    a, b = all_files(tmp_path / "plain"), all_files(tmp_path / "ctx")
    assert [k for k in a if k.startswith("train/images/") and a[k] != b[k]] == []  # only words change
    assert a["train/captions.csv"] != b["train/captions.csv"]
    pairs = [json.loads(line) for line in (tmp_path / "ctx" / "mmvp" / "pairs.jsonl").read_text().splitlines()]
    colours = {o["color"] for p in pairs for s in p["scenes"] for o in s["objects"]}
    assert colours == {"cyan", "blue", "purple"}
    assert len(pairs) == SMALL["pairs_per_pattern"] * len(W.MMVP_TYPES)
    with pytest.raises(ValueError, match="colours"):
        W.generate_world(tmp_path / "bad", **SMALL, talk_colors=["mauve"])
    with pytest.raises(ValueError, match="at least two"):
        W.generate_world(tmp_path / "bad", **SMALL, talk_colors=list(W.COLORS)[:5])


def test_position_and_orientation_use_distinct_words():
    position = {w for p in W.POSITION_WORDS.values() for w in p.split()} | {
        w for p in W.RELATION_WORDS.values() for w in p.split()
    }
    orientation = set(W.ORIENTATION_WORDS.values()) | {"pointing"}
    assert not position & orientation
    count = set(W.COUNT_WORDS.values())
    assert not count & set(W.GLYPHS)


# ----------------------------------------------------------------------------- vocabulary
def test_every_word_written_anywhere_is_in_the_vocabulary(world_dir):
    vocab = set(W.world_vocabulary())
    assert vocab == set(W.WORLD_VOCABULARY)
    assert {"a", "photo", "of", "the"} <= vocab
    texts = [t for _, t in _captions(1.0, 300)] + [t for _, t in _captions(0.5, 300)]
    texts += [W.describe(s) for s, _ in _captions(0.0, 300)]
    texts += [r[1] for r in read_csv(world_dir / "train/captions.csv")[1:]]
    texts += [W.MMVP_PROMPT_PREFIX + r[2] for r in read_csv(world_dir / "mmvp/Questions.csv")[1:]]
    for task_dir in (world_dir / "zeroshot").iterdir():
        names = (task_dir / "classnames.txt").read_text().split("\n")[:-1]
        for template in (task_dir / "templates.txt").read_text().split("\n")[:-1]:
            texts += [template.format(n) for n in names]
    classes = (world_dir / "seg/classes.txt").read_text().split("\n")[:-1]
    for template in (world_dir / "seg/templates.txt").read_text().split("\n")[:-1]:
        texts += [template.format(c) for c in classes]
    missing = {w for t in texts for w in words(t)} - vocab
    assert not missing


# ----------------------------------------------------------------------------- MMVP
def _flat(scene: dict) -> dict:
    """A scene record as {attribute: value}, place coordinates left out."""
    out = {"count": scene["count"], "view": scene["view"], "noise_seed": scene["noise_seed"]}
    for i, obj in enumerate(scene["objects"]):
        out.update({f"{i}.{k}": v for k, v in obj.items() if k not in ("x", "y")})
    return out


EXPECTED_CHANGE = {
    "orientation": {"0.orientation"},
    "dot": {"0.dot"},
    "state": {"0.state"},
    "position": {"0.position"},
    "relation": {"0.position", "1.position"},
    "color": {"1.color"},
    "size": {"0.size"},
    "glyph": {"0.glyph"},
    "view": {"view"},
}


def test_mmvp_layout_and_pairs(tmp_path):
    W.generate_world(tmp_path, **{**SMALL, "pairs_per_pattern": 15})
    root = tmp_path / "mmvp"
    rows = read_csv(root / "Questions.csv")
    assert rows[0] == ["Question ID", "Type", "Statement"]
    rows = rows[1:]
    assert len(rows) == 270 and [int(r[0]) for r in rows] == list(range(1, 271))
    assert sorted(p.name for p in (root / "MLLM_VLM Images").iterdir()) == sorted(W.MMVP_TYPES)
    for t in W.MMVP_TYPES:
        assert sum(r[1] == t for r in rows) == 30
    assert [rows[30 * k][1] for k in range(9)] == list(W.MMVP_TYPES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scorer's checks: odd-then-even IDs, the official categories of 135 pairs
        assert [p.pattern for p in read_mmvp(root)] == [t for t in W.MMVP_TYPES for _ in range(15)]
    pairs = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 135
    for k, pair in enumerate(pairs):
        first, second = rows[2 * k], rows[2 * k + 1]
        assert first[1] == second[1] == pair["type"] and first[2] != second[2]
        assert pair["statements"] == [first[2], second[2]] and pair["question_ids"] == [2 * k + 1, 2 * k + 2]
        paths = [root / "MLLM_VLM Images" / r[1] / f"{r[0]}.jpg" for r in (first, second)]
        images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in paths]
        assert images[0].shape == (32, 32, 3)
        assert np.abs(images[0] - images[1]).max() > 40, pair
        a, b = (_flat(s) for s in pair["scenes"])
        if pair["attribute"] == "count":
            assert abs(a["count"] - b["count"]) == 1
            assert {k: v for k, v in a.items() if k[0] == "0" and k != "0.position"} == {
                k: v for k, v in b.items() if k[0] == "0" and k != "0.position"
            }
            continue
        changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert changed == EXPECTED_CHANGE[pair["attribute"]], pair


def test_mmvp_statements_name_the_attribute_told_apart():
    recs = W.mmvp_pairs(0, 4)
    more = W.mmvp_pairs(0, 6)  # more pairs per pattern extend the same benchmark
    for k in range(len(W.MMVP_TYPES)):
        assert [r["scenes"] for r in more[6 * k : 6 * k + 4]] == [
            r["scenes"] for r in recs[4 * k : 4 * k + 4]
        ]
    by_type = {}
    for r in recs:
        by_type.setdefault(r["type"], []).append(r["statements"])
    s1, s2 = by_type["Orientation and Direction"][0]
    assert "pointing" in s1 and "pointing" in s2
    assert all(
        ("with a dot" in a) != ("with a dot" in b) for a, b in by_type["Presence of Specific Features"]
    )
    assert all(a.split()[0] != b.split()[0] for a, b in by_type["Quantity and Count"])


# ----------------------------------------------------------------------------- zero-shot
def test_zeroshot_folders_match_classnames(world_dir):
    tasks = sorted(p.name for p in (world_dir / "zeroshot").iterdir())
    assert tasks == ["color", "orientation", "shape"]
    for task in tasks:
        folder = world_dir / "zeroshot" / task
        names = (folder / "classnames.txt").read_text().split("\n")[:-1]
        assert names == sorted(p.name for p in folder.iterdir() if p.is_dir())
        templates = (folder / "templates.txt").read_text().split("\n")[:-1]
        assert templates and all(t.count("{}") == 1 for t in templates)
        for name in names:
            assert len(list((folder / name).glob("*.png"))) == 3
    assert (world_dir / "zeroshot/shape/classnames.txt").read_text().split() == sorted(W.SHAPES)


def test_zeroshot_images_show_their_class():
    rng = np.random.default_rng(0)
    for name in W.COLORS:
        scene = W.zeroshot_scene(rng, "color", name)
        assert scene.objects[0].color == name
    scene = W.zeroshot_scene(rng, "orientation", "leftward")
    assert scene.objects[0].orientation == "left" and scene.objects[0].shape in W.ORIENTED_SHAPES


# ----------------------------------------------------------------------------- pixels and masks
def _one(shape: str, **kw) -> W.Scene:
    obj = W.WorldObject(shape=shape, color=kw.pop("color", "red"), **kw)
    return W.Scene(objects=(W.place(obj, obj.position),))


def test_render_shows_state_orientation_and_position():
    size = 32
    filled = np.asarray(W.render(_one("circle", state="filled"), size), dtype=int)
    hollow = np.asarray(W.render(_one("circle", state="outlined"), size), dtype=int)
    red = np.array(W.COLORS["red"])
    assert np.abs(filled[16, 16] - red).max() < 20
    assert np.abs(hollow[16, 16] - np.array(W.BACKGROUND)).max() < 20

    def ink(img):
        return (np.abs(np.asarray(img, dtype=int) - np.array(W.BACKGROUND)).sum(-1) > 60).astype(float)

    up, down = (
        ink(W.render(_one("arrow", orientation="up"), size)),
        ink(W.render(_one("arrow", orientation="down"), size)),
    )

    def ends(profile):  # ink in the first and the last inked line
        nz = profile[profile > 0]
        return nz[0], nz[-1]

    # the pointed tip (narrowest end) is on the side the shape points to
    assert ends(up.sum(1))[0] < ends(up.sum(1))[1] and ends(down.sum(1))[0] > ends(down.sum(1))[1]
    ahead, behind = (
        ink(W.render(_one("triangle", orientation="right"), size)),
        ink(W.render(_one("triangle", orientation="left"), size)),
    )
    assert ends(ahead.sum(0))[0] > ends(ahead.sum(0))[1] and ends(behind.sum(0))[0] < ends(behind.sum(0))[1]
    left, right = (
        ink(W.render(_one("square", position="left"), size)),
        ink(W.render(_one("square", position="right"), size)),
    )
    cols = np.arange(size)[None, :]
    assert (left * cols).sum() / left.sum() < 10 and (right * cols).sum() / right.sum() > 22


def test_mask_ids_follow_the_drawn_shape():
    classes = W.seg_classes()
    assert classes[0] == "background" and classes[1:] == list(W.SHAPES)
    for shape in W.SHAPES:
        orient = "up" if shape in W.ORIENTED_SHAPES else None
        image, mask = W.render_with_mask(_one(shape, orientation=orient), 32)
        assert mask.dtype == np.uint8 and mask.shape == (32, 32)
        assert mask[16, 16] == classes.index(shape)
        assert mask[1, 1] == 0 and set(np.unique(mask)) == {0, classes.index(shape)}
        # labelled pixels are where the colour is; ink left unlabelled is only the anti-aliased rim
        ink = np.abs(np.asarray(image, dtype=int) - np.array(W.BACKGROUND)).sum(-1) > 60
        assert ink[mask > 0].mean() > 0.9
        labelled = np.pad(mask > 0, 1)
        near = np.zeros_like(mask, dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near |= labelled[1 + dy:33 + dy, 1 + dx:33 + dx]
        assert not (ink & (mask == 0) & ~near).any()


def test_seg_output(world_dir):
    root = world_dir / "seg"
    classes = (root / "classes.txt").read_text().split("\n")[:-1]
    assert classes == W.seg_classes()
    records = [json.loads(line) for line in (root / "attributes.jsonl").read_text().splitlines()]
    assert len(records) == 40 and len(list((root / "images").glob("*.png"))) == 40
    checked = 0
    for rec in records:
        mask_img = Image.open(root / rec["mask"])
        assert mask_img.mode == "L" and mask_img.size == (32, 32)
        assert Image.open(root / rec["image"]).size == (32, 32)
        mask = np.asarray(mask_img)
        ids = {classes.index(o["shape"]) for o in rec["objects"]}
        assert set(np.unique(mask)) <= ids | {0}
        if rec["view"] != "straight":
            continue
        for obj in rec["objects"]:
            assert obj["state"] == "filled" and obj["glyph"] is None
            x, y = int(obj["x"] * 32), int(obj["y"] * 32)
            assert mask[y, x] == classes.index(obj["shape"]), (rec, obj)
            checked += 1
    assert checked > 20


def test_sample_scene_respects_its_arguments():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = W.sample_scene(rng)
        assert len({o.position for o in s.objects}) == len(s.objects)
        if s.count > 1:
            assert (
                len(s.objects) == s.count
                and len({replace(o, position="middle", x=0, y=0) for o in s.objects}) == 1
            )
        else:
            assert len({(o.shape, o.color) for o in s.objects}) == len(s.objects)
        for o in s.objects:
            assert (o.orientation is not None) == (o.shape in W.ORIENTED_SHAPES)
        if len(s.objects) == 2:  # two objects stand in the outer columns: large ones would overlap otherwise
            assert {o.position for o in s.objects} == set(W.scenes.TWO_COLUMNS)
    s = W.sample_scene(rng, n_objects=2, filled_only=True, allow_glyph=False, view="tilted")
    assert len(s.objects) == 2 and s.view == "tilted"
    assert all(o.state == "filled" and o.glyph is None for o in s.objects)
    for bad in ({"n_objects": 2, "count": 2}, {"n_objects": 3}, {"count": 3}):
        with pytest.raises(ValueError):
            W.sample_scene(rng, **bad)


def test_world_patterns_are_the_benchmark_patterns():
    from un2clip.eval.encoder.mmvp import PATTERNS

    assert W.MMVP_TYPES == PATTERNS  # same names, same order: one list for the world writer and the scorer


def test_tiny_tokenizer_knows_every_world_word():
    from un2clip.models.presets import _default_words, build_tiny_clip

    vocab = _default_words()
    missing = sorted(set(W.world_vocabulary()) - set(vocab))
    assert missing == [], f"rewrite src/un2clip/models/data/tiny_vocab.txt from world_vocabulary(): {missing}"
    tok = build_tiny_clip().tokenizer
    ids = tok(W.describe(W.sample_scene(np.random.default_rng(0))))["input_ids"]
    assert tok.unk_token_id not in ids


def test_lseg_sets_and_nouns_leave_the_other_outputs_unchanged(tmp_path):
    small = {**SMALL, "n_train": 6, "n_val": 2, "n_seg": 2, "n_detect": 1, "n_depth": 1, "n_pointcloud_per_class": 1,
             "n_video_per_class": 1, "workers": 1}
    plain = W.generate_world(tmp_path / "plain", seed=5, **small)
    with_lseg = W.generate_world(tmp_path / "lseg", seed=5, n_lseg=6, **small)
    assert "n_lseg" not in plain and with_lseg["n_lseg"] == 6 and with_lseg["lseg_unseen"] == ["arrow", "cross"]
    a, b = all_files(tmp_path / "plain"), all_files(tmp_path / "lseg")
    assert [k for k in a if k != "world.json" and a[k] != b.get(k)] == []  # every other output byte-identical
    assert sorted(set(b) - set(a)) == sorted(k for k in b if k.startswith("lseg/"))
    assert (tmp_path / "plain" / "nouns.txt").read_text().split() == list(W.SHAPES)
    seen = ["circle", "square", "triangle", "star"]
    assert all_files(tmp_path / "lseg" / "lseg" / "train") != all_files(tmp_path / "lseg" / "lseg" / "val")
    for name, shapes in (("train", seen), ("val", seen), ("unseen", ["arrow", "cross"])):
        folder = tmp_path / "lseg" / "lseg" / name
        assert (folder / "classes.txt").read_text().split() == ["background", *shapes]
        masks = [np.asarray(Image.open(p)) for p in sorted((folder / "masks").glob("*.png"))]
        assert len(masks) == 6 and len(list((folder / "images").glob("*.png"))) == 6
        values = set(np.unique(np.concatenate([m.ravel() for m in masks])).tolist())
        assert values <= set(range(len(shapes) + 1)) and values - {0}  # relabelled to the folder's own classes
    with pytest.raises(ValueError, match="n_lseg must be >= 0"):
        W.generate_world(tmp_path / "bad", seed=5, n_lseg=-1, **small)
