"""eval detect: ViLD's image branch on given boxes, COCO box AP by pycocotools, the world's detection set."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")

from un2clip.eval.downstream import detect as D  # noqa: E402


def coco(boxes_per_image: dict[int, list[tuple[list[float], int]]], n_classes: int = 3, size: int = 64) -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "width": size, "height": size} for i in boxes_per_image]
    anns = [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b}
            for k, (i, b, c) in enumerate((i, b, c) for i, bs in boxes_per_image.items() for b, c in bs)]
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, n_classes + 1)]
    return {"images": images, "annotations": anns, "categories": cats}


GT = {1: [([2, 2, 20, 20], 1), ([30, 30, 20, 20], 2)], 2: [([5, 5, 30, 10], 3)], 3: [([10, 10, 40, 40], 1)]}


def one_hot_detections(gt: dict, right: bool) -> list[dict]:
    out = []
    for i, boxes in gt.items():
        b = torch.tensor([x for x, _ in boxes], dtype=torch.float)
        probs = torch.zeros(len(boxes), 3)
        for k, (_, c) in enumerate(boxes):
            probs[k, (c - 1 if right else c % 3)] = 1.0
        out += D.detections(i, b, probs, [1, 2, 3], classes_per_box=3 if right else 1)
    return out


def test_a_classifier_right_on_every_box_gives_ap_100():
    m = D.coco_box_ap(coco(GT), one_hot_detections(GT, right=True), groups={"base": [1, 2], "novel": [3]})
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["AP_novel"] == pytest.approx(1.0) and m["AP_base"] == pytest.approx(1.0)


def test_a_classifier_wrong_on_every_box_gives_ap_0():  # its top class only: the right one is never guessed
    m = D.coco_box_ap(coco(GT), one_hot_detections(GT, right=False))
    assert m["AP"] == pytest.approx(0.0) and m["AP50"] == pytest.approx(0.0)


def test_group_ap_over_all_classes_equals_pycocotools_summary():
    # half right: a mixed precision curve; our per-group slicing of COCOeval's precision must agree with its summary
    dets = one_hot_detections(GT, right=True)[:4] + one_hot_detections(GT, right=False)
    dets = [{**d, "score": d["score"] * (0.3 + 0.1 * k)} for k, d in enumerate(dets)]
    m = D.coco_box_ap(coco(GT), dets, groups={"all": [1, 2, 3]})
    assert 0 < m["AP"] < 1
    assert m["AP_all"] == pytest.approx(m["AP"]) and m["AP50_all"] == pytest.approx(m["AP50"])


def test_a_shifted_box_counts_at_iou_50_not_at_95():
    gt = {1: [([0, 0, 40, 40], 1)]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [4, 0, 40, 40], "score": 0.9}]  # IoU 36/44 = 0.82
    m = D.coco_box_ap(coco(gt), dets)
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP"] == pytest.approx(7 / 10)  # thresholds .50 .55 ... .80 of ten: 7 hits


def test_ap50_is_iou_half_and_group_ap_counts_100_detections_per_image():
    gt = {1: [([0, 0, 40, 40], 1)]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 24.8], "score": 0.9}]  # IoU 992 / 1600 = 0.62
    m = D.coco_box_ap(coco(gt), dets, groups={"one": [1]})
    # thresholds .50 .55 .60 of ten hit: AP 3/10; AP50 1 (AP75, the next of pycocotools' stats, would be 0)
    assert (m["AP50"], m["AP50_one"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert (m["AP"], m["AP_one"]) == (pytest.approx(0.3), pytest.approx(0.3))
    assert all(type(v) is float for v in m.values())
    # 12 boxes in one image, all found: every one counts (COCO's 100 detections per image, not 10)
    many = {1: [([5 * k, 0, 4, 4], 1) for k in range(12)]}
    found = [{"image_id": 1, "category_id": 1, "bbox": [5 * k, 0, 4, 4], "score": 1 - k / 100} for k in range(12)]
    m = D.coco_box_ap(coco(many), found, groups={"one": [1]})
    assert (m["AP"], m["AP50"], m["AP_one"], m["AP50_one"]) == tuple(pytest.approx(1.0) for _ in range(4))


def test_scale_and_clip_box():
    assert D.scale_box([10, 10, 20, 20], 1.5, 100, 100) == (5.0, 5.0, 35.0, 35.0)
    assert D.scale_box([0, 0, 20, 20], 1.5, 100, 100) == (0.0, 0.0, 25.0, 25.0)  # clipped at the border
    assert D.clip_box([-10, 50, 30, 80], 64, 64) == [0.0, 50.0, 20.0, 14.0]
    assert D.clip_box([70, 10, 5, 5], 64, 64) is None


def test_region_probabilities_and_background():
    classifier = torch.eye(3)[:, :2]  # (D=3, C=2)
    regions = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    p = D.region_probabilities(regions, classifier)
    assert torch.allclose(p.sum(1), torch.ones(2)) and p[0, 0] > 0.99
    bg = torch.tensor([0, 0, 1.0])
    pb = D.region_probabilities(regions, classifier, background=bg)
    assert pb[0, 0] > 0.99 and pb[1].sum() < 1e-6  # the second region is background: no class keeps mass


def test_detections_top_classes_and_nms():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 10, 10], [40, 40, 10, 10]], dtype=torch.float)
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    assert len(D.detections(1, boxes, probs, [7, 8], classes_per_box=1)) == 3
    dets = D.detections(1, boxes, probs, [7, 8], classes_per_box=1, nms_iou=0.5)
    assert sorted((d["category_id"], d["bbox"][0]) for d in dets) == [(7, 0.0), (8, 40.0)]
    assert len(D.detections(1, boxes, probs, [7, 8], classes_per_box=2)) == 6


def write_set(tmp_path, annotations: dict, proposals: list | None = None):
    (tmp_path / "images").mkdir(parents=True)
    for im in annotations["images"]:
        Image.new("RGB", (im["width"], im["height"]), (200, 30, 30)).save(tmp_path / "images" / im["file_name"])
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    if proposals is not None:
        (tmp_path / "proposals.json").write_text(json.dumps(proposals))
    return tmp_path


def test_a_ground_truth_box_outside_its_image_is_an_error_naming_the_file(tmp_path):
    bad = coco({1: [([70, 70, 10, 10], 1)]})
    write_set(tmp_path, bad)
    with pytest.raises(ValueError, match=r"annotations\.json.*1\.png.*outside"):
        D.read_detection_set(tmp_path)


def test_proposals_outside_the_image_are_skipped_and_counted(tmp_path):
    props = [{"image_id": 1, "bbox": [2, 2, 20, 20]}, {"image_id": 1, "bbox": [100, 100, 5, 5]}]
    write_set(tmp_path, coco({1: [([2, 2, 20, 20], 1)]}), props)
    ds = D.read_detection_set(tmp_path, proposals=tmp_path / "proposals.json")
    assert ds.boxes[1] == [[2.0, 2.0, 20.0, 20.0]] and ds.n_boxes_skipped == 1


def test_missing_layout_and_novel_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations.json"):
        D.read_detection_set(tmp_path)
    write_set(tmp_path, coco(GT))
    (tmp_path / "novel.txt").write_text("class3\n")
    assert D.read_detection_set(tmp_path, novel=tmp_path / "novel.txt").novel == [3]
    with pytest.raises(ValueError, match="'nothing' is not a category"):
        D.read_detection_set(tmp_path, novel=["nothing"])


def test_crops_are_the_box_and_its_context(tiny_clip):
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((0, 0, 0), (16, 16, 32, 32))  # a black square; the 1.5x crop sees white around it
    x = D.crop_inputs(image, [[16, 16, 16, 16]], tiny_clip)  # (2, 3, S, S): 1x then 1.5x
    assert x.shape[0] == 2
    assert x[0].std(dim=(1, 2)).max() < 1e-4 and x[1].std(dim=(1, 2)).min() > 0.1


def test_evaluate_on_the_world_detection_set(tmp_path, tiny_clip):
    from un2clip.world.downstream import novel_detect_classes, write_detect

    folder = write_detect(tmp_path, seed=1, n=3)
    coco_dict = json.loads((folder / "annotations.json").read_text())
    assert len(coco_dict["categories"]) == 36
    assert sum(c["split"] == "novel" for c in coco_dict["categories"]) == len(novel_detect_classes()) == 6
    for a in coco_dict["annotations"]:  # every box inside its 64 px image and not empty
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64 and w > 4 and h > 4
    m = D.evaluate(tiny_clip, folder, progress=False, background=True)
    assert m["n_images"] == 3 and m["n_boxes"] == len(coco_dict["annotations"]) and m["n_classes"] == 36
    assert 0 <= m["AP"] <= 1 and "AP_novel" in m and not math.isnan(m["AP_base"])


def test_cli_eval_detect_writes_one_result_per_model(tmp_path):
    from un2clip.cli import main
    from un2clip.world.downstream import write_detect

    folder = write_detect(tmp_path, seed=2, n=2)
    rc = main(["eval", "detect", "--model", "tiny", "--random-weights", "--data", str(folder), "--output",
               str(tmp_path / "out"), "--no-progress", "--device", "cpu", "--classes-per-box", "1"])
    assert rc == 0
    [path] = list((tmp_path / "out").rglob("*.json"))
    record = json.loads(path.read_text())
    assert record["task"] == "detect" and "AP_novel" in record["metrics"]
    assert record["options"]["classes_per_box"] == 1


# -- issue 27 (ViLD / OVR-CNN defaults) and issue 32 (bad input) -------------------------------------------


def test_ovr_cnn_seen_unseen_marks_give_the_split(tmp_path):
    ann = coco(GT)
    ann["categories"][0]["split"], ann["categories"][1]["split"] = "seen", "seen"
    ann["categories"][2]["split"] = "unseen"  # OVR-CNN's 48/17 files write seen/unseen, not novel
    write_set(tmp_path, ann)
    assert D.read_detection_set(tmp_path).novel == [3]
    split_file = tmp_path / "split.json"  # the same marks given as a split file
    split_file.write_text(json.dumps({"categories": [{"name": "class1", "split": "unseen"},
                                                     {"name": "class2", "split": "seen"}]}))
    ds = D.read_detection_set(tmp_path, novel=split_file)
    assert (ds.novel, ds.base) == ([1], [2])  # class3 is in neither group of this split file
    assert D.read_detection_set(tmp_path).base == [1, 2]


def test_a_split_with_no_novel_category_is_refused(tmp_path):
    ann = coco(GT)
    for c in ann["categories"]:
        c["split"] = "seen"
    write_set(tmp_path, ann)
    with pytest.raises(ValueError, match="none novel/unseen"):
        D.read_detection_set(tmp_path)
    unmarked = tmp_path / "unmarked.json"
    unmarked.write_text(json.dumps({"categories": [{"name": "class1"}, {"name": "class2"}]}))
    with pytest.raises(ValueError, match="marks no category"):
        D.read_detection_set(tmp_path, novel=unmarked)


def test_vild_region_sums_the_raw_crop_embeddings_then_normalises():
    crops = torch.tensor([[[3.0, 0.0]], [[0.0, 1.0]]])  # (2 scales, 1 box, D=2): the 1x crop's embedding is longer
    assert D.combine_crops(crops)[0].tolist() == pytest.approx([3 / 10**0.5, 1 / 10**0.5])  # ViLD: (3, 1) normalised
    assert D.combine_crops(crops, "unit-mean")[0].tolist() == pytest.approx([2**-0.5, 2**-0.5])  # ours before


def test_crops_are_resized_as_clip_preprocesses_not_squashed():
    from types import SimpleNamespace

    from un2clip.models.clip import ImageProcessing

    model = SimpleNamespace(processing=ImageProcessing(size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    image = Image.new("RGB", (40, 20), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red left quarter, blue right quarter, green middle half
    image.paste((0, 0, 255), (30, 0, 40, 20))
    x = D.crop_inputs(image, [[0, 0, 40, 20]], model, scales=(1.0,))  # short side 20 -> 8, width 16, centre 8
    assert tuple(x.shape) == (1, 3, 8, 8)
    assert x[0, 1].min() > 0.9 and x[0, 0].max() < 0.1 and x[0, 2].max() < 0.1  # the green middle only
    squashed = D.crop_inputs(image, [[0, 0, 40, 20]], model, scales=(1.0,), crop_resize="squash")
    assert squashed[0, 0, :, 0].min() > 0.9  # a squash keeps the red edge


def test_vild_prompts_are_the_default_templates(tmp_path):
    prompts = D.vild_prompts("Traffic_light")
    assert len(prompts) == len(D.VILD_TEMPLATES) == 63
    assert prompts[0] == "There is a traffic light in the scene."
    assert "This is a photo of a traffic light." in prompts and "This is the toy traffic light." in prompts
    assert "itap of my traffic light." in prompts  # does not start with a / the: no "This is"
    assert D.vild_prompts("apple")[0] == "There is an apple in the scene."
    write_set(tmp_path, coco(GT))
    assert D.read_detection_set(tmp_path).templates == list(D.VILD_TEMPLATES)
    assert len(D.read_detection_set(tmp_path, templates="imagenet").templates) == 80


def test_duplicate_annotation_ids_are_refused_with_the_id(tmp_path):
    ann = coco(GT)
    ann["annotations"][2]["id"] = ann["annotations"][0]["id"]
    write_set(tmp_path, ann)
    with pytest.raises(ValueError, match=r"annotations id 1 appears twice \(entries 0 and 2\)"):
        D.read_detection_set(tmp_path)


def test_non_finite_and_empty_boxes_are_refused_saying_what_is_wrong(tmp_path):
    for box, message in (([2, float("nan"), 20, 20], "non-finite"), ([2, 2, 0, 20], "zero width"),
                         ([2, 2, -5, 20], "negative width"), ([2, 2, 20, -1], "negative height")):
        folder = write_set(tmp_path / message.replace(" ", "_"), coco({1: [(box, 1), ([30, 30, 20, 20], 2)]}))
        with pytest.raises(ValueError, match=rf"annotation 1 of image 1: box .* {message}"):
            D.read_detection_set(folder)
    folder = write_set(tmp_path / "proposals", coco({1: [([2, 2, 20, 20], 1)]}),
                       [{"image_id": 1, "bbox": [1, 1, float("inf"), 3]}])
    with pytest.raises(ValueError, match=r"proposal 0 \(image 1\): box .* non-finite"):
        D.read_detection_set(folder, proposals=folder / "proposals.json")


def test_classes_per_box_below_one_is_refused_when_parsing(tmp_path, capsys):
    from un2clip.cli import main

    for bad in ("0", "-1"):
        with pytest.raises(SystemExit) as err:
            main(["eval", "detect", "--model", "tiny", "--data", str(tmp_path), "--output", str(tmp_path / "o"),
                  "--classes-per-box", bad])
        assert err.value.code == 2 and "--classes-per-box: must be an integer >= 1" in capsys.readouterr().err
