"""Dataset layouts of the evaluations, their error messages, and the embed -> score -> metric wiring.

A fake model whose image embedding is the mean colour and whose text embedding is the
embedding of the colour its last word names makes every answer known in advance.
"""

import csv
import io
import json
import random
import tarfile
import warnings

import pytest
import torch
from PIL import Image

from un2clip.eval.core.embed import ImageList, PathImages, embed_images
from un2clip.eval.encoder import mmvp, retrieval, zeroshot
from un2clip.models.clip import ImageProcessing

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


class ColourClip:
    """Image embedding: mean of the normalised pixels; text embedding: that of a solid image of its last word."""

    def __init__(self):
        self.processing = ImageProcessing(size=8)
        self.device = torch.device("cpu")
        self.logit_scale = 100.0

    def eval(self):
        return self

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().mean(dim=(2, 3))  # (B, 3)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        words = [t.rstrip(".").split()[-1] for t in texts]
        solid = [self.processing(Image.new("RGB", (8, 8), COLOURS[w])) for w in words]
        return self.encode_image(torch.stack(solid))


def solid(path, colour: str, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLOURS[colour]).save(path, quality=95)


def make_mmvp(root, pairs: list[tuple[str, str, str, str, str]], ids: list[tuple[object, object]] | None = None):
    """pairs: (type, colour of image 1, colour of image 2, statement 1, statement 2) -> an MMVP-VLM folder.

    ``ids``: the Question IDs of each pair (default 1, 2, 3, ... as MMVP-VLM numbers them).
    """
    rows = [["Question ID", "Type", "Statement"]]
    for k, (kind, c1, c2, s1, s2) in enumerate(pairs):
        q1, q2 = ids[k] if ids is not None else (2 * k + 1, 2 * k + 2)
        solid(root / "MLLM_VLM Images" / kind / f"{q1}.jpg", c1)
        solid(root / "MLLM_VLM Images" / kind / f"{q2}.jpg", c2)
        rows += [[q1, kind, s1], [q2, kind, s2]]
    with open(root / "Questions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


# -- MMVP ------------------------------------------------------------------------------------------------------


def test_mmvp_known_scores_tie_and_one_sided_pairs(tmp_path):
    root = make_mmvp(tmp_path / "mmvp", [
        ("Texts", "red", "red", "red", "green"),  # identical images: a tie, text 1 picks image 2
        ("Texts", "blue", "red", "blue", "red"),  # both right
        ("Color and Appearance", "red", "green", "red", "green"),  # both right
        ("Color and Appearance", "red", "green", "red", "red"),  # only text 1 right
    ])
    scores = mmvp.evaluate(ColourClip(), root, progress=False, pairs_csv=tmp_path / "new" / "pairs.csv")
    # keys follow the official pattern order, whatever the file's order
    assert list(scores) == ["Color and Appearance", "Texts", "average", "n_pairs"]
    assert scores["Color and Appearance"] == 50.0 and scores["Texts"] == 50.0 and scores["average"] == 50.0
    assert mmvp.average_definition(scores).startswith("the mean of the 2 pattern scores, each pattern weighted equally")
    rows = list(csv.DictReader(open(tmp_path / "new" / "pairs.csv")))  # its folder made
    assert [(r["qid1"], r["pred1"], r["pred2"], r["score"]) for r in rows] == [
        ("1", "img2", "img2", "0"), ("3", "img1", "img2", "1"), ("5", "img1", "img2", "1"), ("7", "img1", "img1", "0")]
    assert rows[0]["p_img1_text1"] == "0.500000" and rows[0]["gt1"] == "img1" and rows[0]["gt2"] == "img2"
    # blue / red pair: text 1 ("blue") puts nearly all its probability on image 1, text 2 ("red") on image 2
    assert float(rows[1]["p_img1_text1"]) > 0.99 and float(rows[1]["p_img1_text2"]) < 0.01


def test_mmvp_prompt_prefix_reaches_the_text_encoder(tmp_path):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red")])
    seen = []
    model = ColourClip()
    encode = model.encode_text
    model.encode_text = lambda texts: (seen.extend(texts), encode(texts))[1]
    mmvp.evaluate(model, root, progress=False)
    assert seen == ["a photo of blue", "a photo of red"]


@pytest.mark.parametrize("breakage, error, words", [
    ("odd", ValueError, "3 question rows, not a positive even number"),
    ("columns", ValueError, "has the columns ['qid', 'kind', 'text']"),
    ("missing", FileNotFoundError, "3.jpg"),
    ("types", ValueError, "have the types 'Texts' and 'Other'"),
    ("no_csv", FileNotFoundError, "Questions.csv not found"),
])
def test_malformed_mmvp_folder_names_path_and_layout(tmp_path, breakage, error, words):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red"), ("Texts", "red", "blue", "a", "b")])
    table = root / "Questions.csv"
    lines = table.read_text().splitlines()
    if breakage == "odd":
        table.write_text("\n".join(lines[:-1]) + "\n")
    elif breakage == "columns":
        table.write_text("\n".join(["qid,kind,text"] + lines[1:]) + "\n")
    elif breakage == "missing":
        (root / "MLLM_VLM Images" / "Texts" / "3.jpg").unlink()
    elif breakage == "types":
        table.write_text("\n".join(lines[:-1] + [lines[-1].replace("Texts", "Other")]) + "\n")
    else:
        table.unlink()
    with pytest.raises(error) as info:
        mmvp.read_mmvp(root)
    message = str(info.value)
    assert words in message and "MLLM_VLM Images/<Type>/<Question ID>.jpg" in message
    assert str(root) in message


@pytest.mark.parametrize("ids, row, words", [
    ([(1, 2), (4, 3)], 4, "the Question IDs 4 and 3"),  # the second pair starts on an even ID
    ([(2, 1), (3, 4)], 2, "the Question IDs 2 and 1"),
    ([(1, 2), (3, 5)], 5, "the Question IDs 3 and 5"),  # odd then odd: the official script has no image 2
    ([(1, 2), ("3a", 4)], 4, "Question ID '3a' is not a whole number"),
    ([(1, 2), (3, "4b")], 5, "Question ID '4b' is not a whole number"),
])
def test_mmvp_pair_must_be_an_odd_then_an_even_question_id(tmp_path, ids, row, words):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red"), ("Texts", "red", "blue", "red", "blue")],
                     ids=ids)
    with pytest.raises(ValueError) as info:
        mmvp.read_mmvp(root)
    message = str(info.value)
    assert f"{root / 'Questions.csv'} row {row}:" in message and words in message


def test_official_category_is_pair_index_over_15():
    official = [t for t in mmvp.PATTERNS for _ in range(15)]
    assert mmvp.official_category_mismatches(official) == []
    swapped = official.copy()
    swapped[0], swapped[134] = swapped[134], swapped[0]
    assert mmvp.official_category_mismatches(swapped) == [0, 134]
    assert mmvp.official_category_mismatches(official[:-1]) is None  # 134 pairs: no official category
    assert mmvp.official_category_mismatches(["Texts"] * 135) == list(range(105)) + list(range(120, 135))


def test_mmvp_warns_when_135_pairs_disagree_with_the_official_categories(tmp_path):
    pairs = [(t, "blue", "red", "blue", "red" if k % 3 else "blue") for t in mmvp.PATTERNS for k in range(15)]
    in_order = make_mmvp(tmp_path / "in_order", pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official order: silent
        scores = mmvp.evaluate(ColourClip(), in_order, progress=False)
    shuffled = pairs.copy()
    random.Random(0).shuffle(shuffled)
    moved = sum(a[0] != b[0] for a, b in zip(pairs, shuffled))
    root = make_mmvp(tmp_path / "shuffled", shuffled)
    with pytest.warns(UserWarning, match=rf"{moved} of its 135 pairs have a Type other than the category") as caught:
        shuffled_scores = mmvp.evaluate(ColourClip(), root, progress=False)
    assert str(root / "Questions.csv") in str(caught[0].message) and moved > 100
    assert shuffled_scores == scores  # the Type column still decides the pattern
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 134 pairs: the official rule names no category
        mmvp.read_mmvp(make_mmvp(tmp_path / "short", shuffled[:-1]))


def test_mmvp_library_default_is_fp32_even_on_cuda(tmp_path, monkeypatch):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red")])
    dtypes = spy_autocast_as_on_cuda(monkeypatch)
    mmvp.evaluate(ColourClip(), root, progress=False)
    assert dtypes == [None, None]  # images and texts, no autocast
    mmvp.evaluate(ColourClip(), root, progress=False, precision="auto")
    assert dtypes[2:] == [torch.bfloat16, torch.bfloat16]  # auto on CUDA would be bf16


def spy_autocast_as_on_cuda(monkeypatch) -> list:
    """Make every embedding step resolve its autocast as it would on a CUDA device; return the dtypes it got."""
    from un2clip.eval.core import embed

    real, dtypes = embed.autocast_dtype, []

    def on_cuda(device, precision="auto"):
        dtypes.append(real(torch.device("cuda"), precision))
        return dtypes[-1]

    monkeypatch.setattr(embed, "autocast_dtype", on_cuda)
    return dtypes


@pytest.mark.parametrize("breakage, words", [
    ("duplicate", "rows 2 and 5 share the Question ID '1'"),
    ("empty", "row 4 (Question ID '3') has an empty Statement"),
])
def test_mmvp_duplicate_question_id_or_empty_statement_names_the_row(tmp_path, breakage, words):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red"), ("Texts", "red", "blue", "a", "b")])
    table = root / "Questions.csv"
    lines = table.read_text().splitlines()
    if breakage == "duplicate":  # the second pair's second row reuses the first row's ID (and image)
        lines[4] = lines[4].replace("4,", "1,", 1)
    else:
        lines[3] = "3,Texts,  "
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as info:
        mmvp.read_mmvp(root)
    assert words in str(info.value) and str(table) in str(info.value)


def test_mmvp_more_or_fewer_than_135_pairs_have_no_official_category():
    official = [t for t in mmvp.PATTERNS for _ in range(15)]
    assert mmvp.official_category_mismatches(official + ["Texts"]) is None  # 136 pairs
    assert mmvp.official_category_mismatches(official * 2) is None
    assert mmvp.official_category_mismatches([]) is None


def test_mmvp_category_warning_names_the_first_three_rows_and_counts_the_rest(tmp_path):
    types = [t for t in mmvp.PATTERNS for _ in range(15)]
    types[0], types[15] = types[15], types[0]
    types[30], types[45] = types[45], types[30]  # pairs 0, 15, 30 and 45 disagree
    with pytest.warns(UserWarning) as caught:
        mmvp._warn_official_category_mismatch(tmp_path / "Questions.csv", types)
    message = str(caught[0].message)
    assert message.startswith(f"{tmp_path / 'Questions.csv'}: 4 of its 135 pairs have a Type other than")
    assert ("rows 2-3 'Presence of Specific Features' vs 'Orientation and Direction'; "
            "rows 32-33 'Orientation and Direction' vs 'Presence of Specific Features'; "
            "rows 62-63 'Quantity and Count' vs 'State and Condition' and 1 more.") in message
    assert "pattern k // 15 of the official order" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mmvp._warn_official_category_mismatch(tmp_path / "Questions.csv", types[:-1])  # 134: silent


def test_mmvp_reader_tolerates_a_bom_blank_rows_and_padded_cells(tmp_path):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red")])
    table = root / "Questions.csv"
    table.write_text("\ufeffQuestion ID , Type,Statement\n\n 1 , Texts , blue \n,,\n2,Texts,red\n", encoding="utf-8")
    (pair,) = mmvp.read_mmvp(str(root))  # a str path is as good as a Path
    assert pair.qids == ("1", "2") and pair.pattern == "Texts" and pair.statements == ("blue", "red")
    assert pair.images == (root / "MLLM_VLM Images" / "Texts" / "1.jpg", root / "MLLM_VLM Images" / "Texts" / "2.jpg")


@pytest.mark.parametrize("content, words", [
    ("Question ID,Type,Statement\n", "has 0 question rows, not a positive even number"),
    ("", "is empty"),
    ("Question ID,Type,Statement\n1,Texts,blue\n2,Texts\n", "row 3 has 2 fields instead of 3"),
])
def test_mmvp_header_only_empty_or_short_rows_are_refused(tmp_path, content, words):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red")])
    (root / "Questions.csv").write_text(content)
    with pytest.raises(ValueError, match=words) as info:
        mmvp.read_mmvp(root)
    assert "with the columns Question ID, Type, Statement (two consecutive rows per pair)" in str(info.value)


@pytest.mark.parametrize("n_missing, tail", [(3, "3.jpg; expected"), (4, "3.jpg and 1 more; expected"),
                                             (5, "3.jpg and 2 more; expected")])
def test_mmvp_missing_images_names_three_and_counts_the_rest(tmp_path, n_missing, tail):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red")] * 3)
    for q in range(1, n_missing + 1):
        (root / "MLLM_VLM Images" / "Texts" / f"{q}.jpg").unlink()
    with pytest.raises(FileNotFoundError) as info:
        mmvp.read_mmvp(root)
    message = str(info.value)
    assert message.startswith(f"{n_missing} MMVP image(s) missing: ") and tail in message
    assert "1.jpg" in message and "4.jpg" not in message


def test_mmvp_unreadable_image_is_an_error(tmp_path):
    root = make_mmvp(tmp_path / "mmvp", [("Texts", "blue", "red", "blue", "red")])
    (root / "MLLM_VLM Images" / "Texts" / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"1 MMVP image\(s\) cannot be read: .*2\.jpg; the benchmark needs every"):
        mmvp.evaluate(ColourClip(), root, progress=False)


def test_mmvp_unknown_patterns_come_after_the_official_ones(tmp_path):
    root = make_mmvp(tmp_path / "mmvp", [("Zebra", "blue", "red", "blue", "red"),
                                         ("Texts", "red", "green", "red", "red"),
                                         ("Alpha", "green", "blue", "green", "blue")])
    scores = mmvp.evaluate(ColourClip(), root, progress=False)
    assert list(scores) == ["Texts", "Zebra", "Alpha", "average", "n_pairs"]
    assert scores == {"Texts": 0.0, "Zebra": 100.0, "Alpha": 100.0, "average": pytest.approx(200 / 3), "n_pairs": 3}
    assert mmvp.average_definition(scores).startswith("the mean of the 3 pattern scores")
    assert mmvp.average_definition({"A": 1.0, "average": 1.0}).startswith("the mean of the 1 pattern scores")
    # an unknown pattern with two pairs is one pattern of the average, not two
    root = make_mmvp(tmp_path / "mmvp2", [("Zebra", "blue", "red", "blue", "red"), ("Texts", "red", "green", "red", "red"),
                                          ("Zebra", "red", "green", "red", "green")])
    assert mmvp.evaluate(ColourClip(), root, progress=False) == {"Texts": 0.0, "Zebra": 100.0, "average": 50.0,
                                                                 "n_pairs": 3}


def test_published_anchor_only_for_the_original_hub_model():
    assert mmvp.published_anchor("openai/clip-vit-large-patch14") == {"original": 19.3, "un2clip": 32.6}
    assert mmvp.published_anchor("openai-l14") == {"original": 19.3, "un2clip": 32.6}  # the preset's Hub id
    assert mmvp.published_anchor("google/siglip-so400m-patch14-384")["original"] == 37.0
    assert mmvp.published_anchor("openai-l14", random_weights=True) is None
    assert mmvp.published_anchor("tiny") is None and mmvp.published_anchor("runs/ft") is None


# -- zero-shot --------------------------------------------------------------------------------------------------


def make_image_folder(root, per_class: dict[str, list[str]]):
    for folder, colours in per_class.items():
        for j, colour in enumerate(colours):
            solid(root / folder / f"{j}.png", colour)
    return root


def test_zeroshot_known_answers_on_an_image_folder(tmp_path):
    root = make_image_folder(tmp_path / "colours", {
        "blue": ["blue", "blue"], "green": ["green", "green"], "red": ["red", "blue"], "yellow": ["yellow"]})
    (root / "templates.txt").write_text("a photo of a {c}.\n{}\n")
    m = zeroshot.evaluate(ColourClip(), root, progress=False)
    assert zeroshot.evaluate(ColourClip(), root, progress=False, num_workers=2, batch_size=2) == m
    # one red-folder image is blue: acc1 6/7; per class: 1, 1, 1/2, 1
    assert m["acc1"] == pytest.approx(6 / 7)
    assert m["mean_per_class_recall"] == pytest.approx(3.5 / 4)
    assert "acc5" not in m  # four classes
    assert (m["n_images"], m["n_classes"], m["n_templates"], m["n_skipped_images"]) == (7, 4, 2, 0)


def test_image_folder_class_names_templates_and_bad_images(tmp_path):
    root = make_image_folder(tmp_path / "set", {"n002_b": ["red"], "n001_a": ["blue", "green"]})
    (root / "n001_a" / "broken.jpg").write_bytes(b"not a jpeg")
    data = zeroshot.load_classification_set(root)
    assert data.classnames == ["n001 a", "n002 b"] and len(data.templates) == 80 and data.layout == "folder"
    assert data.n == 4
    (root / "classnames.txt").write_text("goldfish\ngreat white shark\n")
    assert zeroshot.load_classification_set(root).classnames == ["goldfish", "great white shark"]
    images = embed_images(ColourClip(), ImageList(data.load, data.n, ColourClip().processing), batch_size=3,
                          progress=False)
    assert images.n_skipped == 1 and sorted(images.payloads) == [0, 0, 1]  # the broken file is skipped
    (root / "classnames.txt").write_text("goldfish\n")
    with pytest.raises(ValueError, match="1 class names for 2 class folders"):
        zeroshot.load_classification_set(root)


def test_class_folder_without_images_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "set", {"cat": ["red"]})
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*dog has no images"):
        zeroshot.load_classification_set(root)


def test_fewer_than_two_classes_is_an_error_not_100_percent(tmp_path):
    root = make_image_folder(tmp_path / "one", {"cat": ["red", "blue"]})
    with pytest.raises(ValueError, match=r"has 1 class \(cat\): zero-shot classification needs at least two"):
        zeroshot.load_classification_set(root)
    with pytest.raises(ValueError, match="at least two classes"):
        zeroshot.evaluate(ColourClip(), root, progress=False)
    from un2clip.cli import main

    assert main(["eval", "zeroshot", "--model", "tiny", "--data", str(root), "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    wds = tmp_path / "wds"
    wds.mkdir()
    (wds / "classnames.txt").write_text("red\n")
    write_wds(wds, [("s0", "red", "0"), ("s1", "blue", "0")])
    with pytest.raises(ValueError, match=r"has 1 class \(red\)"):
        zeroshot.load_classification_set(wds)


def write_wds(root, samples: list[tuple[str, str | None, str | None]], split: str = "test") -> None:
    """CLIP_benchmark's layout: samples are (key, colour or None, .cls/.txt text or None) in one shard."""
    (root / split).mkdir(parents=True)
    with tarfile.open(root / split / "0.tar", "w") as tar:
        for key, colour, text in samples:
            members = []
            if colour is not None:
                buf = io.BytesIO()
                Image.new("RGB", (16, 16), COLOURS[colour]).save(buf, format="PNG")
                members.append((f"{key}.png", buf.getvalue()))
            if text is not None:
                members.append((f"{key}.{'txt' if (root / 'dataset_type.txt').exists() else 'cls'}", text.encode()))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (root / split / "nshards.txt").write_text("1\n")


def test_clip_benchmark_webdataset_classification(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    write_wds(root, [("s0", "red", "0"), ("s1", "green", "1"), ("s2", "blue", "2"), ("s3", "red", None),
                     ("s4", "blue", "0"), ("s5", None, "1")])
    data = zeroshot.load_classification_set(root)
    assert data.layout == "webdataset" and data.templates == ["a photo of a {c}."] and data.n == 5
    m = zeroshot.evaluate(ColourClip(), root, progress=False)
    # s3 has no label, s5 no image: both skipped; s4 is a blue image labelled red
    assert m["n_skipped_images"] == 2 and m["n_images"] == 4
    assert m["acc1"] == pytest.approx(3 / 4)
    (root / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classnames.txt"):
        zeroshot.load_classification_set(root)


# -- retrieval --------------------------------------------------------------------------------------------------


def test_retrieval_table_groups_captions_by_image(tmp_path):
    for c in ("red", "green", "blue"):
        solid(tmp_path / "img" / f"{c}.png", c)
    rows = [("img/red.png", "red"), ("img/green.png", "green"), ("img/red.png", "a red"), ("img/blue.png", "blue"),
            ("img/blue.png", "a deep blue")]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filepath", "title"), *rows])
    data = retrieval.load_retrieval_set(tmp_path / "pairs.csv")
    assert data.n == 3 and data.layout == "table"
    assert isinstance(data.load, PathImages) and data.load.payloads == [["red", "a red"], ["green"], ["blue", "a deep blue"]]
    m = retrieval.evaluate(ColourClip(), tmp_path / "pairs.csv", progress=False)
    assert m["text_to_image_recall@1"] == 1.0 and m["image_to_text_recall@1"] == 1.0
    assert (m["n_images"], m["n_captions"]) == (3, 5)
    with pytest.raises(ValueError, match="no caption column"):
        retrieval.load_retrieval_set(tmp_path / "pairs.csv", caption_column="sentence")


def test_retrieval_jsonl_and_webdataset(tmp_path):
    for c in ("red", "green"):
        solid(tmp_path / f"{c}.png", c)
    lines = [{"image": "red.png", "captions": ["red", "crimson red"]}, {"image": "green.png", "caption": "green"}]
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = retrieval.load_retrieval_set(tmp_path / "set.jsonl")
    assert data.load.payloads == [["red", "crimson red"], ["green"]]
    root = tmp_path / "wds"
    root.mkdir()
    (root / "dataset_type.txt").write_text("retrieval\n")
    write_wds(root, [("a", "red", "red\na red"), ("b", "blue", "blue"), ("c", "green", None)])
    m = retrieval.evaluate(ColourClip(), root, progress=False)
    assert (m["n_images"], m["n_captions"], m["n_skipped_images"]) == (2, 3, 1)
    assert m["text_to_image_recall@1"] == 1.0
