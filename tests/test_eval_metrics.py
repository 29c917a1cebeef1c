"""Pure metric functions on hand-built inputs whose answers are known."""

import math

import pytest
import torch

from un2clip.eval.core.metrics import (
    diffusion_loss_summary,
    mean_per_class_recall,
    mmvp_pair_correct,
    mmvp_scores,
    mmvp_text_picks,
    rank_summary,
    recall_at_k,
    retrieval_metrics,
    retrieval_rank_metrics,
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
