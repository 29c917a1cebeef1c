"""LSeg: the DPT head, its logits and loss, known answers; `un2clip train-dense` and `eval seg --method lseg`."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.cli import main
from un2clip.eval.seg.metrics import SegHistogram
from un2clip.models.lseg import (
    LOGIT_SCALE,
    LSegConfig,
    LSegHead,
    hook_blocks,
    load_head,
    lseg_logits,
    lseg_loss,
    save_head,
)

FAST = ["--num-workers", "0", "--no-progress"]


def test_hook_blocks_are_lsegs():
    assert hook_blocks(24) == (5, 11, 17, 23)  # LSeg's clip_vitl16_384 hooks
    assert hook_blocks(12) == (2, 5, 8, 11)  # its clip_vitb32_384 hooks
    assert hook_blocks(4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="at least one block"):
        hook_blocks(0)


def test_logits_are_scaled_cosines():
    assert LOGIT_SCALE == pytest.approx(14.285714, rel=1e-6)
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    pix = torch.tensor([[1.0, 1.0], [0.0, -1.0]]).reshape(2, 1, 2).permute(1, 0, 2).reshape(1, 2, 1, 2)
    # pixel (0, 0) = (1, 0) after the reshape, pixel (0, 1) = (1, -1)
    logits = lseg_logits(pix, text)
    assert logits.shape == (1, 2, 1, 2)
    assert logits[0, :, 0, 0].tolist() == pytest.approx([1 / 0.07, 0.0], abs=1e-5)
    assert logits[0, :, 0, 1].tolist() == pytest.approx([1 / 0.07 / math.sqrt(2), -1 / 0.07 / math.sqrt(2)], abs=1e-5)
    with pytest.raises(ValueError, match="3 dims, label embeddings 2"):
        lseg_logits(torch.zeros(1, 3, 2, 2), text)


def test_loss_is_cross_entropy_of_the_upsampled_logits_and_skips_255():
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # (1, 2, 1, 1): one cell, upsampled to 2 x 2 unchanged
    labels = torch.tensor([[[0, 1], [255, 0]]])
    p0 = math.exp(2) / (math.exp(2) + 1)
    expected = (-math.log(p0) * 2 - math.log(1 - p0)) / 3
    assert float(lseg_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)


def _tokens(masks: torch.Tensor, width: int) -> list[torch.Tensor]:
    """Hand-built block outputs: a patch token is +e0 on class 0 and -e0 on class 1, the class token 0; the same
    for every block."""
    b, gh, gw = masks.shape
    x = torch.zeros(b, 1 + gh * gw, width)
    x[:, 1:, 0] = 1 - 2 * masks.reshape(b, -1).float()
    return [x] * 4


def _gelu(v: float) -> float:
    return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))


def _hand_built_head(width: int = 4) -> LSegHead:
    """A head whose every layer passes channel 0 on: readout GELU(token), reassemble by nearest upsampling (the
    1/2 level zero), residual units zero (identity), fusion 1x1 identity; head1 maps the fused value f to
    (f - m, m - f), m the midpoint of the two classes' fused values (three levels of GELU(+-1))."""
    head = LSegHead(LSegConfig(width=width, embed_dim=2, blocks=(0, 1, 2, 3), features=2, reassemble=(1, 1, 1, 1)))
    m = 3 * (_gelu(1.0) + _gelu(-1.0)) / 2
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        for r in head.readouts:
            r.project[0].weight[0, 0] = 1.0
        for i, level in enumerate(head.reassemble[:3]):
            level[0].weight[0, 0, 0, 0] = 1.0
            if i < 2:
                level[1].weight[0, 0].fill_(1.0)
        for conv in head.to_features:
            conv.weight[0, 0, 1, 1] = 1.0
        for fusion in head.fusions:
            fusion.out_conv.weight[0, 0, 0, 0] = 1.0
        head.head1.weight[:, 0, 0, 0] = torch.tensor([1.0, -1.0])
        head.head1.bias.copy_(torch.tensor([-m, m]))
    return head.eval()


def _labels_with_borders(masks: torch.Tensor, patch: int) -> torch.Tensor:
    """Pixel labels of patch-aligned masks, the pixels next to another class 255 (VOC's object borders)."""
    labels = masks.repeat_interleave(patch, 1).repeat_interleave(patch, 2).long()
    padded = torch.nn.functional.pad(labels.float()[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    h, w = labels.shape[-2:]
    border = torch.zeros_like(labels, dtype=torch.bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            border |= padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] != labels
    return labels.masked_fill(border, 255)


def test_a_head_on_a_feature_map_that_separates_two_classes_reaches_miou_100():
    masks = (torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5).long()
    labels = _labels_with_borders(masks, 8)  # the head's output is 8 x the patch grid: 32 px, the labels' size
    text = torch.eye(2)  # class 0's embedding e0, class 1's e1

    def miou(head):
        with torch.no_grad():
            pred = lseg_logits(head(_tokens(masks, 4), (4, 4)), text).argmax(1)
        hist = SegHistogram(2)
        for p, t in zip(pred, labels):
            hist.update(p, t)
        return hist.summary(["a", "b"])["mIoU"]

    assert miou(_hand_built_head()) == pytest.approx(100.0)
    torch.manual_seed(0)
    assert miou(LSegHead(LSegConfig(width=4, embed_dim=2, blocks=(0, 1, 2, 3), features=2)).eval()) < 90


def _world_like(root, names=("background", "circle", "square"), n=4, size=32, seed=0):
    """A generic segmentation folder: one shape-coloured block per image on black, its mask."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        c = 1 + i % (len(names) - 1)
        x, y = rng.integers(0, size // 2, 2)
        img[y:y + size // 2, x:x + size // 2] = (255, 0, 0) if c == 1 else (0, 0, 255)
        mask[y:y + size // 2, x:x + size // 2] = c
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def test_train_dense_resumes_and_eval_seg_scores_seen_and_unseen_names(tmp_path, capsys):
    train = _world_like(tmp_path / "train")
    run = tmp_path / "run"
    common = ["train-dense", "--head", "lseg", "--model", "tiny", "--random-weights", "--data", str(train),
              "--batch-size", "2", "--features", "8", "--lr", "1e-3", "--seg-layout", "generic", "--output",
              str(run), *FAST[2:]]
    assert main([*common, "--max-steps", "1"]) == 0
    assert main(["train-dense", "--resume", str(run), "--max-steps", "2", "--no-progress"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2]
    info = json.loads((run / "un2clip_run.json").read_text())
    assert info["kind"] == "lseg" and info["labels"] == ["background", "circle", "square"]
    head = load_head(run)
    assert head.config.labels == ["background", "circle", "square"] and head.config.blocks == (0, 1, 2, 3)
    assert head.config.image_size == 32 and head.config.model == "tiny" and head.config.features == 8
    # the frozen tower is not in the run: only the head is written
    assert not (run / "clip").exists()
    unseen = _world_like(tmp_path / "unseen", names=("background", "star", "cross"), n=2, seed=1)
    out = tmp_path / "out"
    for data in (train, unseen):
        assert main(["eval", "seg", "--method", "lseg", "--head", str(run), "--model", "tiny", "--random-weights",
                     "--data", str(data), "--output", str(out / data.name), *FAST]) == 0
        record = json.loads(next((out / data.name).glob("*.json")).read_text())
        assert record["task"] == "seg/lseg" and record["lseg_trained_labels"] == ["background", "circle", "square"]
        assert record["options"]["crop"] == 32 and record["options"]["logit_scale"] == pytest.approx(1 / 0.07)
        assert record["options"]["templates"] == ["{c}"]  # the bare names, as LSeg embeds them
        assert 0 <= record["metrics"]["mIoU"] <= 100 and record["metrics"]["oracle_mIoU"] > 0
    assert set(record["per_class_iou"]) == {"background", "star", "cross"}


def test_the_head_starts_from_the_runs_seed_whatever_ran_before(tiny_clip):
    from un2clip.objectives.lseg import LSegObjective

    def first_weights(seed):
        objective = LSegObjective(tiny_clip, ["background", "circle"], features=8, seed=seed)
        return torch.cat([p.detach().flatten() for p in objective.head.parameters()])

    torch.manual_seed(1)
    a = first_weights(0)
    torch.rand(100)  # draws in between (another head trained first in the same process)
    state = torch.get_rng_state()
    assert torch.equal(first_weights(0), a) and not torch.equal(first_weights(1), a)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left as it was


def test_lseg_errors_are_one_line(tmp_path, capsys):
    data = _world_like(tmp_path / "d", n=1)
    base = ["eval", "seg", "--model", "tiny", "--data", str(data), "--output", str(tmp_path / "o")]

    def error(argv):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    assert "--method lseg needs --head RUN" in error([*base, "--method", "lseg"])
    assert "--head goes with --method lseg" in error([*base, "--method", "naclip", "--head", str(tmp_path)])
    assert "is not an LSeg head" in error([*base, "--method", "lseg", "--head", str(tmp_path)])
    other = save_head(LSegHead(LSegConfig(width=64, embed_dim=32, blocks=(0, 1, 2, 3), features=4)), tmp_path / "h")
    msg = error([*base, "--method", "lseg", "--head", str(other), "--random-weights", *FAST])
    assert "width 64" in msg and "but the model has width 128" in msg
    assert "run it on its own" in error([*base, "--method", "groupvit", "naclip"])
    with pytest.raises(SystemExit):
        main(["train-dense", "--blocks", "1,2", "--data", str(data)])
    assert "expected 4 non-negative block indices" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train-dense", "train-audio"])
def test_head_trainers_refuse_two_different_encoders(tmp_path, capsys, command):
    rc = main([command, "--model", "tiny", "--clip", "tiny-maxpool", "--data", str(tmp_path), "--output",
               str(tmp_path / "run")])
    assert rc == 2
    assert "--model tiny and --clip tiny-maxpool name two encoders: give one" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
