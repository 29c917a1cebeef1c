"""Pure metric functions on hand-built inputs whose answers are known."""

import math

import pytest
import torch

from un2clip.eval.core.metrics import (
    bucket_key,
    diffusion_loss_summary,
    mean_per_class_recall,
    mmvp_pair_correct,
    mmvp_scores,
    mmvp_text_picks,
    rank_summary,
    recall_at_k,
    retrieval_metrics,
    retrieval_rank_metrics,
    retrieval_ranks,
    timestep_buckets,
    topk_accuracy,
    zeroshot_metrics,
)
from un2clip.eval.decoder.diffloss import draw_seeds
from un2clip.eval.encoder.zeroshot import fill_template, imagenet_templates, zeroshot_logits

# -- zero-shot classification --------------------------------------------------------------------------------


def test_topk_accuracy_known_answers():
    logits = torch.tensor([
        [0.9, 0.1, 0.0],  # target 0: top-1
        [0.5, 0.4, 0.1],  # target 1: second
        [0.2, 0.3, 0.5],  # target 0: third
        [0.0, 0.1, 0.9],  # target 2: top-1
    ])
    targets = torch.tensor([0, 1, 0, 2])
    acc = topk_accuracy(logits, targets, ks=(1, 2, 3))
    assert acc == {1: 0.5, 2: 0.75, 3: 1.0}


def test_topk_refuses_k_above_class_count():
    with pytest.raises(ValueError, match="at least 5 classes"):
        topk_accuracy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), ks=(1, 5))


def test_mean_per_class_recall_differs_from_accuracy_on_imbalanced_classes():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 1, 2])
    # class 0: 2/3, class 1: 2/2, class 2: 1/1 -> mean 8/9; plain accuracy is 5/6
    assert mean_per_class_recall(preds, targets) == pytest.approx(8 / 9)
    # a class that is only predicted, never a target, is not averaged over
    assert mean_per_class_recall(torch.tensor([3, 0]), torch.tensor([0, 0])) == pytest.approx(0.5)


def test_zeroshot_metrics_acc5_only_with_five_classes():
    four = zeroshot_metrics(torch.eye(4), torch.arange(4))
    assert set(four) == {"acc1", "mean_per_class_recall"} and four["acc1"] == 1.0
    logits = torch.eye(6)
    logits[0, 1] = 0.5
    targets = torch.tensor([1, 1, 2, 3, 4, 5])  # row 0 misses top-1; its target ranks 2nd
    six = zeroshot_metrics(logits, targets)
    assert six["acc1"] == pytest.approx(5 / 6) and six["acc5"] == 1.0


def test_zeroshot_logits_scale_cosines_by_100():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [1.0, 0.0]]), dim=-1)
    classifier = torch.eye(2)  # (D, C): class 0 along x, class 1 along y
    logits = zeroshot_logits(img, classifier)
    assert torch.allclose(logits, torch.tensor([[70.7107, 70.7107], [100.0, 0.0]]), atol=1e-3)


def test_templates_fill_both_placeholder_styles():
    assert fill_template("a photo of a {c}.", "dog") == "a photo of a dog."
    assert fill_template("a {} in a video game.", "cat") == "a cat in a video game."
    with pytest.raises(ValueError, match="no {c}"):
        fill_template("a photo", "dog")
    templates = imagenet_templates()
    assert len(templates) == 80 and len(set(templates)) == 80
    assert all("{c}" in t for t in templates)
    assert templates[0] == "a bad photo of a {c}." and templates[-1] == "a tattoo of the {c}."


# -- retrieval -------------------------------------------------------------------------------------------------


def test_recall_at_k_counts_a_query_once_whatever_its_positives():
    scores = torch.tensor([
        [0.9, 0.8, 0.1],  # positives 1 and 2: best positive at rank 2
        [0.1, 0.2, 0.9],  # positive 2: rank 1
    ])
    positives = torch.tensor([[False, True, True], [False, False, True]])
    assert recall_at_k(scores, positives, ks=(1, 2, 5)) == {1: 0.5, 2: 1.0, 5: 1.0}


def test_retrieval_metrics_both_directions():
    # 3 images; captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2
    caption_image = torch.tensor([0, 0, 1, 2])
    scores = torch.tensor([
        [0.9, 0.15, 0.0],  # right at rank 1
        [0.2, 0.8, 0.1],  # its image at rank 2
        [0.7, 0.05, 0.3],  # its image (1) last
        [0.0, 0.1, 0.5],  # right at rank 1
    ])
    m = retrieval_metrics(scores, caption_image, ks=(1, 2))
    assert m["text_to_image_recall@1"] == 0.5
    assert m["text_to_image_recall@2"] == 0.75
    # image 0: caption 0 first -> hit; image 1: captions 1, 0, 3, then its own 2 -> miss at 1 and 2
    # image 2: caption 3 (0.5) first -> hit
    assert m["image_to_text_recall@1"] == pytest.approx(2 / 3)
    assert m["image_to_text_recall@2"] == pytest.approx(2 / 3)


def test_one_tie_rule_for_recall_and_ranks():
    # issue 27.14: every score tied with the answer; recall@1 read top-k order (0.667) while the ranks said 1
    scores = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    caption_image = torch.arange(3)
    ranks = retrieval_rank_metrics(scores, caption_image)
    recall = retrieval_metrics(scores, caption_image, ks=(1, 2))
    # a tie counts against the query: captions 0 and 1 rank 2nd, caption 2 first
    assert (ranks["text_to_image_median_rank"], ranks["text_to_image_mean_rank"]) == (2.0, pytest.approx(5 / 3))
    assert recall["text_to_image_recall@1"] == pytest.approx(1 / 3)
    assert recall["text_to_image_recall@2"] == 1.0
    assert recall["image_to_text_recall@1"] == pytest.approx(1 / 3)


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    assert rank_summary(torch.tensor([4, 1, 2, 3])) == (2.5, 2.5)
    assert rank_summary(torch.tensor([1, 1, 7])) == (1.0, 3.0)


def test_acc1_and_mean_per_class_recall_break_ties_alike():
    # issue 32.6: top-k order and argmax broke ties differently; a balanced set with tied logits
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 2.0, 2.0], [3.0, 0.0, 1.0],
                           [0.0, 0.0, 1.0]])
    targets = torch.tensor([0, 1, 1, 2, 0, 2])  # two samples a class; the first four are tied with a wrong class
    m = zeroshot_metrics(logits, targets)
    assert m["acc1"] == pytest.approx(2 / 6)  # only rows 4 and 5 win outright
    assert m["mean_per_class_recall"] == pytest.approx(m["acc1"])
    assert topk_accuracy(logits, targets, ks=(1, 2)) == {1: pytest.approx(2 / 6), 2: 1.0}


# -- MMVP-VLM ----------------------------------------------------------------------------------------------------


def test_mmvp_softmax_rule_and_tie_picks_image_two():
    logits = torch.tensor([
        [[2.0, 1.0], [0.0, 3.0]],  # text 1 -> image 1, text 2 -> image 2: correct
        [[2.0, 1.0], [3.0, 0.0]],  # only text 1 right: wrong
        [[1.0, 2.0], [0.0, 3.0]],  # only text 2 right: wrong
        [[5.0, 5.0], [5.0, 5.0]],  # exact ties: both pick image 2, text 1 is wrong
        [[1.0, 2.0], [3.0, 0.0]],  # both texts swapped: wrong
    ])
    p_first, picks = mmvp_text_picks(logits)
    assert picks.tolist() == [[0, 1], [0, 0], [1, 1], [1, 1], [1, 0]]
    assert p_first[3].tolist() == [0.5, 0.5]
    assert p_first[0, 0].item() == pytest.approx(1 / (1 + math.exp(-1)))
    assert mmvp_pair_correct(picks).tolist() == [True, False, False, False, False]


def test_mmvp_scores_per_pattern_and_average():
    correct = [True, False, True, True, False, False]
    types = ["A", "A", "B", "B", "C", "C"]
    s = mmvp_scores(correct, types, patterns=["C", "A", "B"])
    assert list(s) == ["C", "A", "B", "average"]
    assert s == {"C": 0.0, "A": 50.0, "B": 100.0, "average": 50.0}
    with pytest.raises(ValueError, match="'D' has no pairs"):
        mmvp_scores(correct, types, patterns=["A", "D"])


# -- diffusion loss ------------------------------------------------------------------------------------------------


def test_timestep_buckets_cover_every_step_once():
    assert timestep_buckets(1000, 10)[0] == (0, 99) and timestep_buckets(1000, 10)[-1] == (900, 999)
    buckets = timestep_buckets(10, 3)
    assert buckets == [(0, 2), (3, 6), (7, 9)]
    covered = [t for a, b in buckets for t in range(a, b + 1)]
    assert covered == list(range(10))


def test_diffusion_loss_summary_means_and_empty_buckets():
    losses = torch.tensor([1.0, 3.0, 10.0, 20.0])
    steps = torch.tensor([0, 99, 500, 999])
    s = diffusion_loss_summary(losses, steps, 1000, 10)
    assert s["loss_mean"] == pytest.approx(8.5)
    assert s["loss_sem"] == pytest.approx(torch.tensor([1.0, 3.0, 10.0, 20.0]).double().std().item() / 2)
    assert s["loss_t000-099"] == pytest.approx(2.0)
    assert s["loss_t500-599"] == pytest.approx(10.0)
    assert s["loss_t900-999"] == pytest.approx(20.0)
    assert "loss_t100-199" not in s  # no draw fell there


def test_draw_seeds_depend_on_seed_image_and_draw_only():
    both = draw_seeds(0, torch.tensor([3, 7]), 2)
    assert both.tolist() == draw_seeds(0, [3], 2).tolist() + draw_seeds(0, [7], 2).tolist()
    assert len(set(both.tolist())) == 4
    assert draw_seeds(1, [3], 2).tolist() != draw_seeds(0, [3], 2).tolist()
    assert all(0 <= s < 2**62 for s in both.tolist())


# -- boundaries and known answers pinned for mutation testing (issue 36) ----------------------------------------


def test_acc5_is_reported_with_exactly_five_classes():
    logits = torch.tensor([
        [0.0, 5.0, 4.0, 3.0, 2.0],  # target 0 ranks 5th: a top-5 hit, not a top-1 hit
        [1.0, 0.0, 0.0, 0.0, 0.0],  # target 0 ranks 1st
        [0.0, 0.0, 0.0, 0.0, 1.0],  # target 3: tied with three others behind class 4
    ])
    targets = torch.tensor([0, 0, 3])
    five = zeroshot_metrics(logits, targets)
    assert set(five) == {"acc1", "acc5", "mean_per_class_recall"}
    assert five["acc1"] == pytest.approx(1 / 3) and five["acc5"] == 1.0
    assert five["mean_per_class_recall"] == pytest.approx((1 / 2 + 0) / 2)  # class 0: 1 of 2, class 3: 0 of 1
    assert topk_accuracy(logits, targets, ks=(5,)) == {5: 1.0}  # k equal to the class count is allowed


@pytest.mark.parametrize("logits, targets, words", [
    (torch.zeros(3), torch.zeros(3, dtype=torch.long), "expected logits"),
    (torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), "expected logits"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "no samples"),
])
def test_topk_refuses_bad_shapes_and_no_samples(logits, targets, words):
    with pytest.raises(ValueError, match=words):
        topk_accuracy(logits, targets, ks=(1,))


def test_mean_per_class_recall_refuses_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        mean_per_class_recall(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="non-empty"):
        mean_per_class_recall(torch.zeros(2), torch.zeros(3))


def test_k_beyond_the_candidates_counts_all_and_a_query_without_positive_is_refused():
    scores = torch.tensor([
        [0.1, 0.9, 0.5],  # positive 0: third
        [0.9, 0.1, 0.5],  # positive 0: first
    ])
    positives = torch.tensor([[True, False, False], [True, False, False]])
    assert recall_at_k(scores, positives, ks=(1, 2, 3, 10)) == {1: 0.5, 2: 0.5, 3: 1.0, 10: 1.0}
    with pytest.raises(ValueError, match="one \\(Q, G\\) shape"):
        recall_at_k(scores, positives[:, :2])
    with pytest.raises(ValueError, match="one \\(Q, G\\) shape"):
        recall_at_k(scores[0], positives[0])
    with pytest.raises(ValueError, match="no queries"):
        recall_at_k(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.bool))
    no_positive = torch.tensor([[True, False, False], [False, False, False]])
    for metric in (recall_at_k, retrieval_ranks):
        with pytest.raises(ValueError, match="every query needs at least one positive"):
            metric(scores, no_positive)


def test_retrieval_ranks_ties_against_the_query_and_the_best_positive():
    scores = torch.tensor([
        [1.0, 1.0, 0.0],  # positive 1 ties with 0: rank 2 (a tie counts against the query)
        [3.0, 1.0, 2.0],  # positive 1: two scored higher, rank 3
        [0.5, 0.9, 0.7],  # positives 0 and 2: the best (0.7) has one negative above, rank 2
        [0.7, 0.9, 0.7],  # positives 0 and 2 tie with each other: they do not push each other down
    ])
    positives = torch.tensor([[False, True, False], [False, True, False], [True, False, True], [True, False, True]])
    assert retrieval_ranks(scores, positives).tolist() == [2, 3, 2, 2]
    with pytest.raises(ValueError, match="one \\(Q, G\\) shape"):
        retrieval_ranks(scores, positives[:2])


def test_rank_summary_median_of_odd_and_even_counts():
    assert rank_summary(torch.tensor([3, 1, 2])) == (2.0, 2.0)
    assert rank_summary(torch.tensor([10, 1, 3, 2])) == (2.5, 4.0)
    assert rank_summary(torch.tensor([7])) == (7.0, 7.0)
    with pytest.raises(ValueError, match="no ranks"):
        rank_summary(torch.tensor([]))


def test_retrieval_rank_metrics_both_ways_by_hand():
    caption_item = torch.tensor([0, 0, 1])  # captions 0, 1 -> item 0; caption 2 -> item 1
    scores = torch.tensor([
        [0.9, 0.1],  # caption 0: its item first
        [0.2, 0.8],  # caption 1: its item second
        [0.6, 0.4],  # caption 2: its item second
    ])
    m = retrieval_rank_metrics(scores, caption_item, item="video")
    assert m == {"text_to_video_median_rank": 2.0, "text_to_video_mean_rank": 5 / 3,
                 # item 0: best caption 0 (0.9) first; item 1: caption 2 (0.4) behind 0.8 -> rank 2
                 "video_to_text_median_rank": 1.5, "video_to_text_mean_rank": 1.5}
    with pytest.raises(ValueError, match="caption_item must be \\(3,\\)"):
        retrieval_rank_metrics(scores, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="caption_image must be \\(3,\\)"):
        retrieval_metrics(scores, torch.tensor([[0, 1, 1]]))


def test_mmvp_picks_refuse_other_shapes_and_a_small_margin_picks_image_one():
    with pytest.raises(ValueError, match="expected \\(P, 2, 2\\) logits"):
        mmvp_text_picks(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="expected \\(P, 2, 2\\) logits"):
        mmvp_text_picks(torch.zeros(1, 2, 3))
    _, picks = mmvp_text_picks(torch.tensor([[[1e-3, 0.0], [0.0, 1e-3]]]))
    assert picks.tolist() == [[0, 1]]


def test_mmvp_scores_default_order_tensor_input_and_refusals():
    s = mmvp_scores(torch.tensor([True, True, False, True]), ["B", "A", "A", "B"])
    assert list(s) == ["B", "A", "average"] and s == {"B": 100.0, "A": 50.0, "average": 75.0}
    three = mmvp_scores([True, False, False], ["A", "B", "C"])
    assert three["average"] == pytest.approx(100 / 3)  # mean over patterns, not over pairs
    with pytest.raises(ValueError, match="2 pair results but 3 pair types"):
        mmvp_scores([True, False], ["A", "A", "B"])
    with pytest.raises(ValueError, match="no pairs to score"):
        mmvp_scores([], [])


def test_timestep_bucket_bounds_and_names():
    assert timestep_buckets(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert timestep_buckets(7, 1) == [(0, 6)]
    for bad in (0, 5):
        with pytest.raises(ValueError, match="num_buckets must be in \\[1, 4\\]"):
            timestep_buckets(4, bad)
    assert bucket_key(0, 99, 3) == "loss_t000-099"
    assert bucket_key(7, 12, 4) == "loss_t0007-0012"


def test_diffusion_loss_summary_single_draw_bucket_edges_and_bad_input():
    one = diffusion_loss_summary(torch.tensor([2.5]), torch.tensor([100]), 1000, 10)
    assert one == {"loss_mean": 2.5, "loss_sem": 0.0, "loss_t100-199": 2.5}
    two = diffusion_loss_summary(torch.tensor([1.0, 3.0]), torch.tensor([99, 100]), 1000, 10)
    assert two["loss_sem"] == pytest.approx(math.sqrt(2.0) / math.sqrt(2))  # std 1.414 (n - 1), / sqrt(2)
    assert two["loss_t000-099"] == 1.0 and two["loss_t100-199"] == 3.0
    assert set(diffusion_loss_summary(torch.tensor([1.0]), torch.tensor([9]), 10, 2)) == {
        "loss_mean", "loss_sem", "loss_t5-9"}  # width of the names from the last timestep, 9: one digit
    with pytest.raises(ValueError, match="non-empty"):
        diffusion_loss_summary(torch.tensor([]), torch.tensor([]), 1000)
    with pytest.raises(ValueError, match="non-empty"):
        diffusion_loss_summary(torch.tensor([1.0, 2.0]), torch.tensor([1]), 1000)


def test_default_ks_and_plain_float_results():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    acc = topk_accuracy(logits, torch.tensor([1, 1]))  # ranks 5 and 2
    assert acc == {1: 0.0, 5: 1.0} and all(type(v) is float for v in acc.values())
    recall = mean_per_class_recall(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 0]))
    assert type(recall) is float and recall == pytest.approx(0.25)
    scores = torch.arange(24, dtype=torch.float32).reshape(2, 12)  # candidate 11 scores highest, 0 lowest
    positives = torch.zeros(2, 12, dtype=torch.bool)
    positives[0, 11], positives[1, 6] = True, True  # ranks 1 and 6
    r = recall_at_k(scores, positives)
    assert r == {1: 0.5, 5: 0.5, 10: 1.0} and all(type(v) is float for v in r.values())
    # k is capped by the candidates (3), not by the queries (2): the third-ranked positive is found
    wide = recall_at_k(torch.tensor([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]]),
                       torch.tensor([[False, False, True], [False, False, True]]), ks=(5,))
    assert wide == {5: 1.0}
    both = retrieval_metrics(torch.eye(12), torch.arange(12))
    assert sorted(both) == sorted(f"{d}_recall@{k}" for d in ("text_to_image", "image_to_text") for k in (1, 5, 10))


def test_video_retrieval_default_ks_are_1_5_10():
    from un2clip.eval.core.metrics import video_retrieval_metrics

    scores = torch.eye(12)  # caption i belongs to video i
    scores[0, 1:7] = 2.0  # caption 0 ranks its video 7th; videos 1-6 rank caption 0 above their own (2nd)
    m = video_retrieval_metrics(scores, torch.arange(12))
    recalls = {k: v for k, v in m.items() if "recall@" in k}
    assert recalls == {"text_to_video_recall@1": pytest.approx(11 / 12), "text_to_video_recall@5": pytest.approx(11 / 12),
                       "text_to_video_recall@10": 1.0, "video_to_text_recall@1": 0.5, "video_to_text_recall@5": 1.0,
                       "video_to_text_recall@10": 1.0}


def test_every_metric_lives_in_the_metrics_module():
    """The evaluation modules embed and score; the numbers come from eval.core.metrics (their old names still work)."""
    from un2clip.eval.core import metrics
    from un2clip.eval.downstream import depth, detect
    from un2clip.eval.mllm import cvbench, mmvp_mllm

    moved = {depth: ["depth_metrics", "mean_metrics"], detect: ["coco_box_ap"], cvbench: ["cvbench_scores"],
             mmvp_mllm: ["mmvp_mllm_scores"]}
    for module, names in moved.items():
        for name in names:
            assert getattr(module, name) is getattr(metrics, name) and getattr(metrics, name).__module__ == \
                "un2clip.eval.core.metrics", name


# -- monocular depth (moved here from eval/depth.py) ------------------------------------------------------------


def test_depth_metrics_under_and_over_prediction_and_every_delta_threshold():
    from un2clip.eval.core.metrics import depth_metrics

    # (pred, gt): ratios max(p/g, g/p) of 1, 1.4 (under), 1.8 (over), 2.2 (under), 1.2 (over) and exactly 1.25,
    # 1.25^2 (under) and 1.25^3: a delta counts ratios strictly below its threshold
    pred = torch.tensor([1.0, 1.0, 1.8, 1.0, 1.2, 1.25, 1.0, 1.953125])
    gt = torch.tensor([1.0, 1.4, 1.0, 2.2, 1.0, 1.0, 1.5625, 1.0])
    m = depth_metrics(pred, gt)
    assert (m["delta1"], m["delta2"], m["delta3"]) == (2 / 8, 4 / 8, 6 / 8)
    pairs = list(zip(pred.double().tolist(), gt.double().tolist()))
    assert m["abs_rel"] == pytest.approx(sum(abs(p - g) / g for p, g in pairs) / 8, rel=1e-12)
    assert m["abs_rel"] == pytest.approx((0 + 0.4 / 1.4 + 0.8 + 1.2 / 2.2 + 0.2 + 0.25 + 0.36 + 0.953125) / 8, rel=1e-6)
    assert m["sq_rel"] == pytest.approx(sum((p - g) ** 2 / g for p, g in pairs) / 8, rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(sum((p - g) ** 2 for p, g in pairs) / 8), rel=1e-12)
    assert m["log10"] == pytest.approx(sum(abs(math.log10(p / g)) for p, g in pairs) / 8, rel=1e-12)
    e = [math.log(p) - math.log(g) for p, g in pairs]
    assert m["rmse_log"] == pytest.approx(math.sqrt(sum(x * x for x in e) / 8), rel=1e-12)
    var = sum(x * x for x in e) / 8 - (sum(e) / 8) ** 2
    assert m["silog"] == pytest.approx(100 * math.sqrt(var), rel=1e-9)
    assert all(type(v) is float for v in m.values())
    # the same errors the other way round (pred and gt swapped) give the same deltas
    swapped = depth_metrics(gt, pred)
    assert (swapped["delta1"], swapped["delta2"], swapped["delta3"]) == (2 / 8, 4 / 8, 6 / 8)


def test_depth_metrics_valid_pixels_and_refusals():
    from un2clip.eval.core.metrics import depth_metrics, mean_metrics

    pred, gt = torch.tensor([2.0, 1.0, 5.0]), torch.tensor([1.0, 0.0, 5.0])  # gt 0: no measurement
    assert depth_metrics(pred, gt)["abs_rel"] == pytest.approx(0.5)
    assert depth_metrics(pred, gt, torch.tensor([False, True, True]))["abs_rel"] == 0.0  # mask and gt > 0
    with pytest.raises(ValueError, match="differ in shape"):
        depth_metrics(pred, gt[:2])
    with pytest.raises(ValueError, match="no valid ground-truth pixels"):
        depth_metrics(pred, torch.zeros(3))
    with pytest.raises(ValueError, match="predicted depths must be positive"):
        depth_metrics(torch.tensor([0.0, 1.0, 1.0]), torch.ones(3))
    assert mean_metrics([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 6.0}]) == {"a": 2.0, "b": 4.0}
    with pytest.raises(ValueError, match="no images scored"):
        mean_metrics([])


def test_depth_metrics_are_scale_free_and_sub_metre_truth_is_scored():
    from un2clip.eval.core.metrics import depth_metrics

    # the first test's pairs doubled (exact in binary): the under-predictions now have pred != 1, and the
    # deltas, abs_rel and log10 of a ratio do not change with the unit
    pred = torch.tensor([1.0, 1.0, 1.8, 1.0, 1.2, 1.25, 1.0, 1.953125])
    gt = torch.tensor([1.0, 1.4, 1.0, 2.2, 1.0, 1.0, 1.5625, 1.0])
    m = depth_metrics(2 * pred, 2 * gt)
    assert (m["delta1"], m["delta2"], m["delta3"]) == (2 / 8, 4 / 8, 6 / 8)
    assert m["abs_rel"] == pytest.approx((0 + 0.4 / 1.4 + 0.8 + 1.2 / 2.2 + 0.2 + 0.25 + 0.36 + 0.953125) / 8, rel=1e-6)
    # ground truth below 1 m is a measurement like any other, with or without a mask
    sub = depth_metrics(torch.tensor([0.25, 1.0]), torch.tensor([0.5, 0.0]), torch.tensor([True, True]))
    assert (sub["abs_rel"], sub["delta3"]) == (0.5, 0.0)
    assert depth_metrics(torch.tensor([0.25, 1.0]), torch.tensor([0.5, 0.0]))["abs_rel"] == 0.5


def test_mmvp_mllm_scores_count_pairs_with_both_answers_right():
    from un2clip.eval.core.metrics import mmvp_mllm_scores

    # pairs (T, T) (T, F) (F, F) (T, T): 2 of 4 pairs, 5 of 8 questions
    got = mmvp_mllm_scores([True, True, True, False, False, False, True, True])
    assert got == {"accuracy": 50.0, "question_accuracy": 62.5, "n_pairs": 4, "n_questions": 8}
    assert mmvp_mllm_scores([False, True]) == {"accuracy": 0.0, "question_accuracy": 50.0, "n_pairs": 1,
                                               "n_questions": 2}
    for bad in ([], [True], [True, True, False]):
        with pytest.raises(ValueError, match="MMVP needs a positive even number"):
            mmvp_mllm_scores(bad)


def test_cvbench_scores_per_source_task_and_the_2d_3d_means():
    from un2clip.eval.core.metrics import cvbench_scores

    sources = ["ADE20K", "ADE20K", "COCO", "Omni3D", "Omni3D", "Omni3D"]
    tasks = ["Count", "Relation", "Count", "Depth", "Distance", "Depth"]
    correct = [True, False, True, True, False, False]
    got = cvbench_scores(sources, tasks, correct)
    # 2D: mean of ADE20K 50 and COCO 100 = 75; 3D: Omni3D 1 of 3; overall the mean of the two
    want = {"accuracy_2d": 75.0, "accuracy_3d": pytest.approx(100 / 3), "accuracy": pytest.approx((75 + 100 / 3) / 2),
            "source_ADE20K": 50.0, "source_COCO": 100.0, "source_Omni3D": pytest.approx(100 / 3),
            "task_Count": 100.0, "task_Relation": 0.0, "task_Depth": 50.0, "task_Distance": 0.0, "n_questions": 6}
    assert got == want
    only_2d = cvbench_scores(["COCO", "COCO"], ["Count", "Count"], [True, False])
    assert only_2d == {"accuracy_2d": 50.0, "source_COCO": 50.0, "task_Count": 50.0, "n_questions": 2}
    for bad in ((["COCO"], ["Count"], []), (["COCO"], ["Count", "Count"], [True, True]), ([], [], [])):
        with pytest.raises(ValueError, match="equally long and not empty"):
            cvbench_scores(*bad)
