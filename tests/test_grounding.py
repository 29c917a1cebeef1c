"""GLIP-style phrase grounding: the loss and positive map against GLIP's definitions, the FCOS targets, IoU and
recall@k on hand cases, the RefCOCO / Flickr30k Entities readers, the world's grounding set, and the head trained
and scored end to end on the one training loop."""

from __future__ import annotations

import collections
import json
import math
import pickle

import pytest
import torch
from PIL import Image

from un2clip.data.grounding import (
    GroundingSource,
    load_refs,
    parse_entities_sentence,
    read_flickr30k,
    read_grounding,
    read_refcoco,
)
from un2clip.eval.core.metrics import grounding_hits, grounding_metrics, xyxy_iou
from un2clip.eval.downstream import grounding as G
from un2clip.models.grounding import GroundingHead, GroundingHeadConfig, location_centers, phrase_token_map
from un2clip.objectives import grounding as O

# -- the loss: GLIP's token_sigmoid_binary_focal_loss, written here from its description ---------------------


def glip_token_focal_loss(logits, targets, text_mask, alpha, gamma):
    """GLIP (maskrcnn_benchmark/layers/sigmoid_focal_loss.py, binary version): keep the entries whose token is
    real (masked_select over the text mask copied along the locations), then fvcore's focal loss per entry:
    BCE x (1 - p_t)^gamma x alpha_t, summed."""
    keep = text_mask.bool()[:, None, :].expand_as(logits)
    x, t = logits[keep], targets[keep]
    total = 0.0
    for xi, ti in zip(x.tolist(), t.tolist()):
        p = 1 / (1 + math.exp(-xi))
        ce = -(ti * math.log(p) + (1 - ti) * math.log(1 - p))
        p_t = p * ti + (1 - p) * (1 - ti)
        a_t = alpha * ti + (1 - alpha) * (1 - ti)
        total += a_t * ce * (1 - p_t) ** gamma
    return total


def test_token_focal_loss_equals_glips_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(2, 5, 7, generator=g) < 0.2).double()
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    ours = O.token_sigmoid_focal_loss(logits, targets, mask)
    assert float(ours) == pytest.approx(glip_token_focal_loss(logits, targets, mask, 0.25, 2.0), rel=1e-10)
    assert (O.TOKEN_ALPHA, O.TOKEN_GAMMA) == (0.25, 2.0)  # GLIP's TOKEN_ALPHA / TOKEN_GAMMA
    # a padded token's logit changes nothing
    moved = logits.clone()
    moved[0, :, 5] += 10
    assert float(O.token_sigmoid_focal_loss(moved, targets, mask)) == pytest.approx(float(ours), rel=1e-12)


# -- the positive map: GLIP's create_positive_map (char_to_token with its fallbacks), binarised by its collator --


def glip_positive_map(encoding, spans_per_phrase, length):
    out = torch.zeros(len(spans_per_phrase), length)
    for j, spans in enumerate(spans_per_phrase):
        for beg, end in spans:
            beg_pos = encoding.char_to_token(beg)
            end_pos = encoding.char_to_token(end - 1)
            if beg_pos is None:
                beg_pos = encoding.char_to_token(beg + 1)
                if beg_pos is None:
                    beg_pos = encoding.char_to_token(beg + 2)
            if end_pos is None:
                end_pos = encoding.char_to_token(end - 2)
                if end_pos is None:
                    end_pos = encoding.char_to_token(end - 3)
            if beg_pos is None or end_pos is None:
                continue
            out[j, beg_pos:end_pos + 1] = 1
    normalised = out / (out.sum(-1, keepdim=True) + 1e-6)  # create_positive_map's rows sum to 1 ...
    return normalised > 0  # ... and the batch collator stores them as bool


@pytest.mark.parametrize("caption,phrases", [
    ("the small red circle", ["the small red circle"]),
    ("the square to the left of the star", ["the square", "the star"]),
    ("A red circle stands beside a blue square .", ["A red circle", "a blue square"]),
    ("two stars, one cross", ["two stars", "one cross", "stars"]),
])
def test_positive_map_equals_glips(tiny_clip, caption, phrases):
    spans = []
    for phrase in phrases:
        begin = caption.index(phrase)
        spans.append([(begin, begin + len(phrase))])
    length = tiny_clip.meta.context_length
    enc = tiny_clip.tokenizer(caption, padding="max_length", truncation=True, max_length=length)
    ours = O.tokenize_with_offsets(tiny_clip.tokenizer, caption, length)
    got = phrase_token_map(ours["offsets"], ours["attention_mask"], spans)
    want = glip_positive_map(enc, spans, length)
    assert torch.equal(got, want)
    assert got.any(1).all()


class OffsetEncoding:
    """char_to_token of a hand-built tokenisation (a subword tokenizer's: tokens touch, no space between)."""

    def __init__(self, offsets):
        self.offsets = offsets

    def char_to_token(self, char):
        return next((j for j, (s, e) in enumerate(self.offsets) if s <= char < e and e > s), None)


def test_positive_map_of_touching_subword_tokens_equals_glips():
    # "redhat." as [BOS] "red" "hat" "." [EOS] [PAD]: tokens touch, so a phrase ends exactly where one starts
    offsets = [(0, 0), (0, 3), (3, 6), (6, 7), (0, 0), (0, 0)]
    attention = torch.tensor([1, 1, 1, 1, 1, 0])
    spans = [[(0, 3)], [(0, 6)], [(3, 7)], [(1, 5)]]  # "red", "redhat", "hat.", a span inside two tokens
    got = phrase_token_map(torch.tensor(offsets), attention, spans)
    assert got.int().tolist() == [[0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert torch.equal(got, glip_positive_map(OffsetEncoding(offsets), spans, len(offsets)))


# -- boxes: IoU, GIoU, FCOS assignment and centerness on hand cases -----------------------------------------


def test_iou_on_hand_cases():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 1, 1]])
    # overlap 1 of union 4 + 4 - 1 = 7; identical; disjoint; contained, a quarter of a
    assert xyxy_iou(a, b)[0].tolist() == pytest.approx([1 / 7, 1.0, 0.0, 0.25])
    assert xyxy_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0  # two empty boxes: 0, not nan


def test_giou_loss_on_hand_cases():
    a = torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 1, 1]])
    b = torch.tensor([[0.0, 0, 1, 1], [2.0, 0, 3, 1]])
    # identical: GIoU 1; side by side one apart: IoU 0, hull 3, union 2 -> GIoU -1/3, loss 4/3
    assert O.giou_loss(a, b).tolist() == pytest.approx([0.0, 4 / 3], abs=1e-6)


def test_fcos_assignment_smallest_box_and_the_cell_of_a_box_too_small():
    centers = location_centers(2, 2)  # (0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)
    assert centers.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    big, small = [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]
    assert O.assign_locations(centers, torch.tensor([big, small]), (2, 2)).tolist() == [1, 0, 0, 0]
    tiny = [0.55, 0.1, 0.65, 0.2]  # holds no centre; its centre (0.6, 0.15) lies in cell (row 0, col 1)
    assert O.assign_locations(centers, torch.tensor([tiny]), (2, 2)).tolist() == [-1, 0, -1, -1]
    assert O.assign_locations(centers, torch.zeros(0, 4), (2, 2)).tolist() == [-1] * 4
    ltrb = torch.tensor([[1.0, 1, 1, 1], [1.0, 2, 3, 4], [-0.1, 1, 1, 1]])
    # sqrt(min/max of l, r x min/max of t, b): 1; sqrt(1/3 x 2/4); 0 outside the box
    assert O.centerness_targets(ltrb).tolist() == pytest.approx([1.0, math.sqrt(1 / 6), 0.0])


def test_location_targets_carry_the_box_and_its_phrase_tokens():
    centers = location_centers(2, 2)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    tokens = torch.tensor([[False, True, True, False], [False, False, False, True]])
    t = O.location_targets(centers, boxes, tokens, (2, 2))
    assert t["positive"].tolist() == [True, False, False, True]
    assert t["box_target"][0].tolist() == boxes[0].tolist() and t["box_target"][3].tolist() == boxes[1].tolist()
    assert t["token_target"].tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


# -- the metric: recall@k and accuracy on hand cases, a perfect head, a constant box --------------------------


def test_hits_and_recall_at_k_on_hand_cases():
    truth = torch.tensor([[0.0, 0, 10, 10]])
    far, near = [50.0, 50, 60, 60], [1.0, 1, 10, 10]  # IoU 0 and 81/100
    ranked = torch.tensor([far, far, near] + [far] * 7)
    assert grounding_hits(ranked, truth) == {1: False, 5: True, 10: True}
    assert grounding_hits(torch.tensor([far] * 6 + [near]), truth) == {1: False, 5: False, 10: True}
    assert grounding_hits(torch.zeros(0, 4), truth) == {1: False, 5: False, 10: False}
    # any of several ground-truth boxes counts
    assert grounding_hits(torch.tensor([far]), torch.tensor([[0.0, 0, 10, 10], far]))[1]
    hits = [{1: True, 5: True, 10: True}, {1: False, 5: True, 10: True}, {1: False, 5: False, 10: True},
            {1: False, 5: False, 10: False}]
    assert grounding_metrics(hits) == {"accuracy": 25.0, "recall@1": 25.0, "recall@5": 50.0, "recall@10": 75.0}
    with pytest.raises(ValueError, match="no phrases"):
        grounding_metrics([])


def test_a_head_given_perfect_boxes_scores_100():
    """Every location of a box predicts that box and the phrase's tokens; the rest predicts junk boxes with low
    scores: after GLIP's scoring and NMS each phrase's best box is its own."""
    grid = (4, 4)
    centers = location_centers(*grid)
    phrases = [torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([[0.5, 0.25, 1.0, 1.0]])]
    token_rows = torch.tensor([[True, True, False, False], [False, False, True, True]])
    t = O.location_targets(centers, torch.cat(phrases), token_rows, grid)
    boxes = torch.where(t["positive"][:, None], t["box_target"], torch.tensor([0.9, 0.0, 1.0, 0.1]))
    logits = torch.where(t["token_target"].bool(), 5.0, -5.0)
    centerness = torch.zeros(16)
    ranked = [G.rank_boxes(boxes, G.phrase_scores(logits, centerness, row)) for row in token_rows]
    m = grounding_metrics(G.score_phrases(ranked, phrases))
    assert m == {"accuracy": 100.0, "recall@1": 100.0, "recall@5": 100.0, "recall@10": 100.0}


def test_a_constant_box_scores_what_geometry_says():
    constant = torch.tensor([[8.0, 8, 40, 40]])  # a 32 x 32 box
    truths = [torch.tensor([[0.0, 0, 32, 32]]),  # overlap 24 x 24 = 576 of 1024 + 1024 - 576 = 1472: IoU 0.39
              torch.tensor([[16.0, 16, 48, 48]]),  # the same overlap on the other side: 0.39
              torch.tensor([[4.0, 4, 36, 36]])]  # overlap 28 x 28 = 784 of 2048 - 784 = 1264: IoU 0.62
    m = grounding_metrics(G.score_phrases([constant] * 3, truths))
    assert m["accuracy"] == pytest.approx(100 / 3) and m["recall@10"] == pytest.approx(100 / 3)
    # merged protocol: against the union [0, 0, 48, 48] of a phrase's boxes, IoU 1024 / 2304 = 0.44 < 0.5
    two = [torch.tensor([[0.0, 0, 32, 32], [16.0, 16, 48, 48]])]
    assert G.score_phrases([constant], two)[0][1] is False
    assert G.score_phrases([torch.tensor([[0.0, 0, 48, 48]])], two, merge_boxes=True)[0][1] is True


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]])
    assert G.nms_xyxy(boxes, torch.tensor([0.5, 0.9, 0.1]), 0.6).tolist() == [1, 2]


# -- readers: the two layouts, and malformed files refused with file and row ---------------------------------


def _image(path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)


def write_refcoco(root, refs, *, anns=None, pickled=True):
    root.mkdir(parents=True, exist_ok=True)
    _image(root / "images" / "a.jpg")
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
            "annotations": anns or [{"id": 10, "image_id": 1, "bbox": [4, 6, 20, 10], "category_id": 1},
                                    {"id": 11, "image_id": 1, "bbox": [30, 2, 30, 40], "category_id": 1}]}
    (root / "instances.json").write_text(json.dumps(coco))
    if pickled:
        (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    else:
        (root / "refs(unc).json").write_text(json.dumps(refs))
    return root


REFS = [{"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val",
         "sentences": [{"sent": "the left one"}, {"sent": "small box"}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train", "sentences": [{"sent": "the tall one"}]}]


@pytest.mark.parametrize("pickled", [True, False])
def test_refcoco_reader(tmp_path, pickled):
    root = write_refcoco(tmp_path / "refcoco", REFS, pickled=pickled)
    ds = read_grounding(root, split="val")
    assert ds.layout == "refcoco" and [s.caption for s in ds.samples] == ["the left one", "small box"]
    target = ds.samples[0].targets[0]
    assert target.spans == ((0, 12),) and target.boxes == ((4.0, 6.0, 24.0, 16.0),)
    assert ds.samples[0].image == str(root / "images" / "a.jpg") and ds.samples[0].width == 64
    assert len(read_refcoco(root, split="train").samples) == 1
    with pytest.raises(ValueError, match=r"no refs of split 'testA' \(splits found: train, val\)"):
        read_refcoco(root, split="testA")


def test_refcoco_reader_refuses_malformed_files(tmp_path):
    bad_box = [{"id": 10, "image_id": 1, "bbox": [4, 6, 0, 10]}]
    root = write_refcoco(tmp_path / "a", REFS[:1], anns=bad_box)
    with pytest.raises(ValueError, match=r"instances.json: annotations\[0\] \(id 10\): bbox \[4, 6, 0, 10\]"):
        read_refcoco(root, split="val")
    root = write_refcoco(tmp_path / "b", [{**REFS[0], "ann_id": 99}])
    with pytest.raises(ValueError, match=r"refs\(unc\).p: ref 0 \(ref_id 0\) names ann_id 99"):
        read_refcoco(root, split="val")
    root = write_refcoco(tmp_path / "c", [{**REFS[0], "sentences": [{"sent": "ok"}, {"tokens": []}]}])
    with pytest.raises(ValueError, match=r"ref 0 \(ref_id 0\): sentence 1 has no text"):
        read_refcoco(root, split="val")
    root = write_refcoco(tmp_path / "d", [collections.OrderedDict(REFS[0])])  # a pickle naming a class
    with pytest.raises(ValueError, match="cannot be read as a refs list: refers to collections.OrderedDict"):
        load_refs(root / "refs(unc).p")
    (root / "refs(umd).json").write_text("[]")
    with pytest.raises(ValueError, match="several refs files .* pass --split-by"):
        read_refcoco(root, split="val")


FLICKR_LINE = ("[/EN#1/people A young boy] in [/EN#2/clothing a red hat] holds [/EN#3/other a kite] "
               "near [/EN#4/scene the beach] .")
FLICKR_XML = """<annotation><filename>7.jpg</filename><size><width>100</width><height>80</height><depth>3</depth>
</size><object><name>1</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>40</xmax><ymax>70</ymax></bndbox></object>
<object><name>2</name><name>1</name><bndbox><xmin>15</xmin><ymin>21</ymin><xmax>30</xmax><ymax>30</ymax></bndbox>
</object><object><name>3</name><bndbox><xmin>61</xmin><ymin>1</ymin><xmax>90</xmax><ymax>20</ymax></bndbox></object>
<object><name>4</name><nobndbox>1</nobndbox><scene>1</scene></object></annotation>"""


def write_flickr(root, line=FLICKR_LINE, xml=FLICKR_XML):
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Sentences" / "7.txt").write_text(line + "\n")
    (root / "Annotations" / "7.xml").write_text(xml)
    (root / "val.txt").write_text("7\n")
    _image(root / "flickr30k-images" / "7.jpg", (100, 80))
    return root


def test_flickr30k_reader(tmp_path):
    caption, phrases = parse_entities_sentence(FLICKR_LINE, where="x")
    assert caption == "A young boy in a red hat holds a kite near the beach ."
    assert [(e, caption[b:en]) for e, _, (b, en) in phrases] == [
        ("1", "A young boy"), ("2", "a red hat"), ("3", "a kite"), ("4", "the beach")]
    ds = read_grounding(write_flickr(tmp_path / "f"), split="val")
    assert ds.layout == "flickr30k" and ds.n_phrases_without_box == 1  # the scene has no box
    (sample,) = ds.samples
    assert [t.phrase for t in sample.targets] == ["A young boy", "a red hat", "a kite"]
    # 1-based inclusive corners -> 0-based, exclusive far edge; entity 1 has two boxes (one shared with 2)
    assert sample.targets[0].boxes == ((10.0, 20.0, 40.0, 70.0), (14.0, 20.0, 30.0, 30.0))
    assert sample.width == 100 and sample.key == "7.txt line 1"


def test_flickr30k_reader_refuses_malformed_files(tmp_path):
    root = write_flickr(tmp_path / "a", line="[/EN#1/people A boy in a hat .")
    with pytest.raises(ValueError, match=r"Sentences/7.txt line 1: malformed phrase markup"):
        read_flickr30k(root, split="val")
    bad = FLICKR_XML.replace("<xmin>11</xmin>", "")
    root = write_flickr(tmp_path / "b", xml=bad)
    with pytest.raises(ValueError, match=r"Annotations/7.xml: object 0 has a bndbox without numeric xmin"):
        read_flickr30k(root, split="val")
    with pytest.raises(FileNotFoundError, match=r"test.txt not found: the image ids of split 'test'"):
        read_flickr30k(root, split="test")
    (root / "Annotations" / "7.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"7.xml is not valid XML"):
        read_flickr30k(root, split="val")
    with pytest.raises(ValueError, match="holds no grounding set"):
        read_grounding(tmp_path, split="val")


# -- the world's set, training on the one loop, resume, and eval grounding ------------------------------------


def test_world_grounding_set_is_deterministic_and_says_what_the_renderer_drew(tmp_path):
    from un2clip.world.grounding import relation_expression, write_grounding

    a, b = write_grounding(tmp_path / "a", 3, 10), write_grounding(tmp_path / "b", 3, 10)
    for name in ("instances.json", "refs(unc).p", "images/000007.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    refs = load_refs(a / "refs(unc).p")
    coco = json.loads((a / "instances.json").read_text())
    assert {r["split"] for r in refs} == {"train", "val"} and len(refs) == 20
    boxes = {ann["id"]: ann["bbox"] for ann in coco["annotations"]}
    for r in refs[:8]:
        attr, rel = (s["sent"] for s in r["sentences"])
        assert attr.startswith("the ") and attr.split()[1] in ("small", "large")
        mine, other = boxes[r["ann_id"]], boxes[r["ann_id"] + (1 if r["ann_id"] % 2 else -1)]
        side = "left" if mine[0] < other[0] else "right"
        assert f"to the {side} of the" in rel
    from un2clip.world.scenes import WorldObject

    star, square = WorldObject("star", "red", x=0.75), WorldObject("square", "blue", x=0.25)
    assert relation_expression(square, star) == "the square to the left of the star"
    assert relation_expression(WorldObject("star", "blue", x=0.2), star) == \
        "the blue star to the left of the red star"


def test_train_grounding_runs_resumes_and_eval_scores_it(tmp_path, capsys):
    from un2clip.cli import main as cli
    from un2clip.world.grounding import write_grounding

    data = write_grounding(tmp_path / "world", 0, 10)
    assert isinstance(__import__("un2clip.data", fromlist=["open_source"]).open_source(data), GroundingSource)
    run = tmp_path / "run"
    common = ["--data", str(data), "--random-weights", "--batch-size", "4", "--output", str(run), "--no-progress",
              "--lr", "1e-3", "--hidden-dim", "16", "--proj-dim", "8"]
    assert cli(["train-grounding", *common, "--max-steps", "2"]) == 0
    assert cli(["train-grounding", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and all(math.isfinite(x["token_loss"]) for x in lines)
    head, info = GroundingHead.load(run)
    assert head.config == GroundingHeadConfig(image_dim=head.config.image_dim, text_dim=head.config.text_dim,
                                              hidden_dim=16, proj_dim=8) and info["clip"] == "tiny"
    out = tmp_path / "eval"
    assert cli(["eval", "grounding", "--model", "tiny", "--random-weights", "--head", str(run), "--data", str(data),
                "--output", str(out), "--no-progress", "--device", "cpu"]) == 0
    (result,) = out.glob("*.json")
    metrics = json.loads(result.read_text())["metrics"]
    assert metrics["n_phrases"] == 8  # 2 val images (4 and 9) x 2 objects x 2 expressions
    assert 0 <= metrics["accuracy"] <= metrics["recall@5"] <= metrics["recall@10"] <= 100
    assert (out / (result.stem + ".samples.csv")).is_file()
    capsys.readouterr()
    assert cli(["finetune", "--data", str(data), "--random-weights", "--output", str(tmp_path / "x"),
                "--no-progress"]) != 0
    assert "reads RefCOCO or Flickr30k Entities annotations and nothing else" in capsys.readouterr().err


def test_eval_grounding_mean_box_reference_and_a_head_of_another_width(tmp_path, tiny_clip):
    # two referred boxes, the left and the right half of a 64 x 48 image: the mean box [16, 0, 48, 48] overlaps
    # each by 16 x 48 of 2 x 32 x 48 - 16 x 48: IoU 1/3, never found
    anns = [{"id": 10, "image_id": 1, "bbox": [0, 0, 32, 48]}, {"id": 11, "image_id": 1, "bbox": [32, 0, 32, 48]}]
    refs = [{**REFS[0], "sentences": [{"sent": "the left one"}]}, {**REFS[1], "split": "val"}]
    root = write_refcoco(tmp_path / "r", refs, anns=anns)
    obj = O.GroundingObjective(tiny_clip, hidden_dim=8, proj_dim=4, clip_spec="tiny")
    obj.save_outputs(tmp_path / "run")
    m = G.evaluate(tiny_clip, root, head=tmp_path / "run", progress=False)
    assert m["accuracy_mean_box"] == 0.0 and m["n_phrases"] == 2
    same = [{"id": 10, "image_id": 1, "bbox": [0, 0, 32, 48]}, {"id": 11, "image_id": 1, "bbox": [0, 0, 32, 48]}]
    root = write_refcoco(tmp_path / "s", refs, anns=same)
    assert G.evaluate(tiny_clip, root, head=tmp_path / "run", progress=False)["accuracy_mean_box"] == 100.0
    wide = GroundingHead(GroundingHeadConfig(image_dim=tiny_clip.embed_dim + 1, text_dim=8))
    wide.save(tmp_path / "wide", info={"clip": "other"})
    with pytest.raises(ValueError, match="reads patch width .* train a head on this encoder"):
        G.evaluate(tiny_clip, root, head=tmp_path / "wide", progress=False)


# -- `un2clip compare --grounding`: a head per encoder, cached, two report columns ----------------------------


def test_compare_grounding_trains_a_head_per_encoder_caches_it_and_adds_columns(tmp_path, monkeypatch, tiny_clip):
    from un2clip.world import compare
    from un2clip.world import demo as demo_module
    from un2clip.world.grounding import GROUNDING_QUICK

    seed_dir = tmp_path / "seed0"
    tiny_clip.save_pretrained(seed_dir / "clip" / "clip")
    (seed_dir / "clip" / "DONE").write_text("{}")
    tiny_clip.save_pretrained(seed_dir / "finetune")  # stands in for the un²CLIP run: any loadable encoder
    monkeypatch.setattr(compare, "run_demo", lambda *a, **k: None)
    monkeypatch.setattr(compare, "start_weights", lambda *a, **k: None)
    monkeypatch.setattr(demo_module, "shipped_weights", lambda *a, **k: tmp_path / "none")
    import un2clip.world.report as world_report

    monkeypatch.setattr(world_report, "evaluate_models",
                        lambda out, world, models, *a, **k: {n: {"mmvp/average": 50.0} for n in models})
    settings = compare.CompareSettings(demo=compare.QUICK.demo, grounding=GROUNDING_QUICK)
    variants = compare.select_variants(settings, ["original", "un2clip"])
    results = compare.run_seed(seed_dir, 0, variants, settings=settings, progress=False)
    for name in ("original", "un2clip"):
        got = results[name]
        assert got["mmvp/average"] == 50.0 and 0 <= got["grounding/accuracy"] <= got["grounding/recall@10"] <= 100
        assert (seed_dir / "grounding" / name / "run" / "head" / "grounding_head.json").is_file()
        assert (seed_dir / "eval" / f"grounding_{name}.json").is_file()
    assert (seed_dir / "grounding-set" / "grounding" / "refs(unc).p").is_file()
    # a second call reuses the heads and their evaluations
    stamps = {p: p.stat().st_mtime_ns for p in (seed_dir / "grounding" / "un2clip" / "DONE",
                                                seed_dir / "eval" / "grounding_un2clip.json")}
    again = compare.run_seed(seed_dir, 0, variants, settings=settings, progress=False)
    assert again == results and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    rows = compare.report_table(compare.summarize({0: results}))
    assert "grounding acc | mean-box acc |" in rows[0]
    plain = compare.report_table(compare.summarize({0: {n: {"mmvp/average": 1.0} for n in results}}))
    assert "grounding" not in plain[0]  # measured on request only: no empty column otherwise
