"""Dataset readers: the generic layout, mmsegmentation's layouts, labels and class-name files."""

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.eval.seg.datasets import (
    BENCHMARK_DIRS,
    BENCHMARKS,
    SegPairs,
    builtin_classes,
    check_mask_sizes,
    load_dataset,
    parse_class_lines,
    read_label,
)

VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]


def save_image(path, h=20, w=30, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def save_label(path, label, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(label, dtype=np.uint8), "P" if palette else "L")
    if palette:
        im.putpalette(VOC_PALETTE)
    im.save(path)


def make_generic(root, n=3, h=20, w=30, classes=("background", "circle, round", "square")):
    rng = np.random.default_rng(1)
    for i in range(n):
        save_image(root / "images" / f"{i:03d}.png", h, w, seed=i)
        label = rng.integers(0, len(classes), (h, w))
        label[0] = 255
        save_label(root / "masks" / f"{i:03d}.png", label)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def make_voc(root, ids=("2007_000032", "2007_000033"), h=20, w=30):
    rng = np.random.default_rng(2)
    for k, i in enumerate(ids):
        save_image(root / "JPEGImages" / f"{i}.jpg", h, w, seed=k)
        label = rng.integers(0, 21, (h, w))
        label[:, 0] = 255  # VOC's object borders
        save_label(root / "SegmentationClass" / f"{i}.png", label, palette=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root


def make_ade(root, ids=("ADE_val_00000001",), h=20, w=30):
    for k, i in enumerate(ids):
        save_image(root / "images" / "validation" / f"{i}.jpg", h, w, seed=k)
        save_label(root / "annotations" / "validation" / f"{i}.png", np.arange(h * w).reshape(h, w) % 151)
    return root


def test_generic_layout(tmp_path):
    ds = load_dataset(make_generic(tmp_path / "g"))
    assert len(ds) == 3 and ds.num_classes == 3
    assert ds.classes == [["background"], ["circle", "round"], ["square"]]
    assert ds.background == 0 and ds.display == ["background", "circle", "square"]
    image, label, idx = SegPairs(ds)[1]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    assert label.shape == (20, 30) and int(label[0, 0]) == 255 and idx == 1
    assert ds.templates is None
    (tmp_path / "g" / "templates.txt").write_text("a photo of a {}.\n\na drawing of a {c}.\n")
    assert load_dataset(tmp_path / "g").templates == ["a photo of a {}.", "a drawing of a {c}."]


def test_generic_without_background_class(tmp_path):
    ds = load_dataset(make_generic(tmp_path / "g", classes=("cat", "dog")))
    assert ds.background is None
    with pytest.raises(ValueError, match="must differ"):
        load_dataset(tmp_path / "g", classes=[["cat"], ["cat", "kitty"]])


def test_voc_layouts_and_reduce_zero_label(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    voc21 = load_dataset(root, "voc21")
    voc20 = load_dataset(root, "voc20")
    assert len(voc21) == 2 and voc21.num_classes == 21 and voc20.num_classes == 20
    assert voc21.background == 0 and voc21.display[0] == "background" and voc20.background is None
    raw = np.asarray(Image.open(voc21.labels[0]))
    l21 = SegPairs(voc21)[0][1].numpy()
    l20 = SegPairs(voc20)[0][1].numpy()
    assert np.array_equal(l21, raw)  # palette indices read as they are
    assert np.all(l20[raw == 0] == 255) and np.all(l20[raw == 255] == 255)
    fg = (raw != 0) & (raw != 255)
    assert np.array_equal(l20[fg], raw[fg] - 1)


def test_read_label_reduce_zero_label(tmp_path):
    save_label(tmp_path / "l.png", [[0, 1, 2, 255]])
    assert read_label(tmp_path / "l.png").tolist() == [[0, 1, 2, 255]]
    assert read_label(tmp_path / "l.png", reduce_zero_label=True).tolist() == [[255, 0, 1, 255]]
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        read_label(tmp_path / "rgb.png")


def test_other_named_layouts_find_their_pairs(tmp_path):
    ctx = tmp_path / "VOC2010"
    save_image(ctx / "JPEGImages" / "a.jpg")
    save_label(ctx / "SegmentationClassContext" / "a.png", np.zeros((20, 30)))
    (ctx / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (ctx / "ImageSets" / "SegmentationContext" / "val.txt").write_text("a\n")
    assert len(load_dataset(ctx, "context60")) == 1 and load_dataset(ctx, "context59").reduce_zero_label

    coco = tmp_path / "coco_stuff164k"
    save_image(coco / "images" / "val2017" / "000000000139.jpg")
    save_label(coco / "annotations" / "val2017" / "000000000139_labelTrainIds.png", np.zeros((20, 30)))
    save_label(coco / "annotations" / "val2017" / "000000000139_instanceTrainIds.png", np.zeros((20, 30)))
    stuff, obj = load_dataset(coco, "coco_stuff"), load_dataset(coco, "coco_object")
    assert stuff.labels[0].name.endswith("_labelTrainIds.png") and stuff.num_classes == 171
    assert obj.labels[0].name.endswith("_instanceTrainIds.png") and obj.num_classes == 81 and obj.background == 0

    city = tmp_path / "cityscapes"
    save_image(city / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    save_label(city / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png",
               np.zeros((20, 30)))
    assert len(load_dataset(city, "cityscapes")) == 1

    ade = load_dataset(make_ade(tmp_path / "ADEChallengeData2016"), "ade20k")
    assert ade.reduce_zero_label and ade.num_classes == 150
    label = SegPairs(ade)[0][1]
    assert int(label[label != 255].max()) == 149 and int(label[0, 0]) == 255


def test_missing_folders_name_the_path_and_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="images.*masks.*classes.txt"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="JPEGImages.*SegmentationClass"):
        load_dataset(tmp_path / "empty", "voc21")
    root = make_generic(tmp_path / "g")
    (root / "masks" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match="001.png"):
        load_dataset(root)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset(root, "pascal")


def test_unreadable_image_is_skipped_not_fatal(tmp_path):
    root = make_generic(tmp_path / "g")
    (root / "images" / "002.png").write_bytes(b"not a png")
    assert SegPairs(load_dataset(root))[2][:2] == (None, None)


def test_mask_sizes_are_checked_or_resized_nearest_neighbour(tmp_path):
    root = make_generic(tmp_path / "g", n=2, h=20, w=30)
    small = np.arange(10 * 15).reshape(10, 15) % 3
    save_label(root / "masks" / "001.png", small)
    ds = load_dataset(root)
    with pytest.raises(ValueError, match=r"masks/001.png is 15x10 but its image .*images/001.png is 30x20"):
        check_mask_sizes(ds)
    assert SegPairs(ds)[1][1].shape == (10, 15)  # as it is on disk: the evaluation refuses it
    label = SegPairs(ds, resize_masks=True)[1][1].numpy()
    assert label.shape == (20, 30) and np.array_equal(label[::2, ::2], small) and set(np.unique(label)) <= {0, 1, 2}
    check_mask_sizes(load_dataset(make_generic(tmp_path / "fine")))


def test_shipped_class_files():
    counts = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "coco_stuff": 171,
              "cityscapes": 19, "ade20k": 150}
    assert set(counts) == set(BENCHMARKS) == set(BENCHMARK_DIRS)
    for name, n in counts.items():
        classes = builtin_classes(name)
        assert len(classes) == n, name
        firsts = [c[0] for c in classes]
        assert len(set(firsts)) == n, name  # per-class IoU keys stay distinct
    assert "person in shirt" in builtin_classes("voc20")[14]
    assert len(builtin_classes("voc21")[0]) > 1  # background by its synonyms (sky, wall, ...)


CLEARCLIP_VOC20 = ["aeroplane", "bicycle", "bird", "ship", "bottle", "bus", "car", "cat", "chair", "cow", "table",
                   "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def test_clearclip_reads_its_own_single_name_files():
    """ClearCLIP's configs/cls_*.txt: one name per class (SCLIP's: synonym sets); five files are the same."""
    assert builtin_classes("voc20", "clearclip") == [[n] for n in CLEARCLIP_VOC20]
    assert builtin_classes("voc21", "clearclip") == [["background"]] + [[n] for n in CLEARCLIP_VOC20]
    coco = builtin_classes("coco_object", "clearclip")
    assert len(coco) == 81 and all(len(names) == 1 for names in coco)
    assert coco[:4] == [["background"], ["person"], ["bicycle"], ["car"]] and coco[-1] == ["toothbrush"]
    assert builtin_classes("voc20", "sclip") != builtin_classes("voc20", "clearclip")
    for name in ("context60", "context59", "coco_stuff", "cityscapes", "ade20k"):
        assert builtin_classes(name, "clearclip") == builtin_classes(name, "sclip"), name
    with pytest.raises(ValueError, match="class-name set"):
        builtin_classes("voc20", "gem")


def test_load_dataset_reads_the_named_class_set(tmp_path):
    root = make_voc(tmp_path / "voc")
    assert load_dataset(root, "voc21", class_names="clearclip").classes[15] == ["person"]
    assert load_dataset(root, "voc21").classes[15] == builtin_classes("voc21")[15] != ["person"]


def test_parse_class_lines():
    assert parse_class_lines(["a, b ,c", "", " d "]) == [["a", "b", "c"], ["d"]]
