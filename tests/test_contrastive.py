"""Contrastive pre-training: the loss, NegCLIP-style hard negatives, and `un2clip pretrain` end to end."""

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from un2clip.objectives.contrastive import (
    clip_contrastive_loss,
    contrastive_loss_with_negatives,
    read_swap_groups,
    swap_one_word,
)

GROUPS = [["circle", "square", "triangle"], ["red", "blue"]]


def _features(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_loss_without_valid_negatives_is_clips():
    img, txt, neg = _features(4), _features(4, seed=1), _features(4, seed=2)
    scale = torch.tensor(10.0)
    none_valid = torch.zeros(4, dtype=torch.bool)
    assert torch.allclose(contrastive_loss_with_negatives(img, txt, neg, none_valid, scale),
                          clip_contrastive_loss(img, txt, scale))


def test_a_negative_equal_to_the_caption_halves_the_image_side():
    img = _features(1)
    scale = torch.tensor(5.0)
    # one pair: the text side is 0; the image side sees its caption and an identical negative: log 2
    loss = contrastive_loss_with_negatives(img, img, img, torch.ones(1, dtype=torch.bool), scale)
    assert loss.item() == pytest.approx(0.5 * math.log(2), rel=1e-6)
    far = contrastive_loss_with_negatives(img, img, -img, torch.ones(1, dtype=torch.bool), scale)
    assert far.item() == pytest.approx(0.5 * math.log(1 + math.exp(-10.0)), abs=1e-7)  # float32 rounding


def test_swap_one_word_changes_one_word_within_its_group():
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        out = swap_one_word("A red circle and a blue square.", GROUPS, rng)
        before, after = "A red circle and a blue square.".split(), out.split()
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(changed) == 1
        a, b = (w.strip(".").lower() for w in changed[0])
        assert any(a in g and b in g for g in GROUPS) and a != b
        seen.add(out)
    assert len(seen) > 3  # the word and its replacement are drawn
    assert swap_one_word("a green star", GROUPS, rng) is None
    assert swap_one_word("a red circle", GROUPS, random.Random(7)) == swap_one_word("a red circle", GROUPS,
                                                                                     random.Random(7))


def test_swap_groups_file(tmp_path):
    path = tmp_path / "groups.txt"
    path.write_text("circle square, triangle\n\n# a comment\nred blue\n")
    assert read_swap_groups(path) == [["circle", "square", "triangle"], ["red", "blue"]]
    path.write_text("circle circle\n")
    with pytest.raises(ValueError, match="two or more"):
        read_swap_groups(path)
    with pytest.raises(FileNotFoundError, match="word groups"):
        read_swap_groups(tmp_path / "missing.txt")


def test_pretrain_with_hard_negatives(tmp_path):
    from un2clip.cli import main
    from un2clip.world import generate_world

    world = tmp_path / "world"
    generate_world(world, seed=3, n_train=32, n_val=0, pairs_per_pattern=0, n_seg=0, n_zeroshot_per_class=0,
                   progress=False, workers=1)
    groups = read_swap_groups(world / "swap_groups.txt")
    assert ["circle", "square", "triangle", "arrow", "star", "cross"] in groups
    out = tmp_path / "run"
    assert main(["pretrain", "--preset", "tiny", "--data", str(world / "train" / "captions.csv"),
                 "--hard-negatives", str(world / "swap_groups.txt"), "--max-steps", "2", "--batch-size", "8",
                 "--lr", "1e-3", "--output", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["negatives"] == 1.0 for r in rows)  # every world caption names a shape and a colour
    assert (out / "clip" / "config.json").exists()
