"""LSeg: the DPT head, its logits and loss, known answers; `un2clip train-dense` and `eval seg --method lseg`."""

import json
import math
from pathlib import Path

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


@pytest.mark.parametrize("command", ["train-dense", "train-audio", "train-grounding"])
def test_head_trainers_refuse_two_different_encoders(tmp_path, capsys, command):
    rc = main([command, "--model", "tiny", "--clip", "tiny-maxpool", "--data", str(tmp_path), "--output",
               str(tmp_path / "run")])
    assert rc == 2
    assert "--model tiny and --clip tiny-maxpool name two encoders: give one" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# -- `un2clip compare --lseg`: the sets, a head per encoder, cached, report columns ------------------------------


def test_lseg_sets_written_alone_are_the_worlds(tmp_path):
    from un2clip.world.evalsets import generate_world, write_lseg

    generate_world(tmp_path / "world", seed=3, n_train=2, n_val=1, pairs_per_pattern=1, n_seg=1,
                   n_zeroshot_per_class=1, n_detect=0, n_depth=0, n_pointcloud_per_class=0, n_video_per_class=0,
                   n_grounding=0, n_lseg=3, progress=False)
    alone = write_lseg(tmp_path / "alone", seed=3, n=3)
    world = tmp_path / "world" / "lseg"
    files = sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file())
    assert len(files) == 3 * (2 * 3 + 1) and sorted(p.relative_to(alone) for p in alone.rglob("*")
                                                      if p.is_file()) == files
    assert all((world / f).read_bytes() == (alone / f).read_bytes() for f in files)
    other = write_lseg(tmp_path / "other", seed=4, n=3)
    assert (other / "val" / "images" / "000000.png").read_bytes() != (alone / "val" / "images" / "000000.png").read_bytes()


def _all_background_miou(folder):
    """mIoU (%) of predicting class 0 everywhere on a generic folder's masks, counted here from the files."""
    classes = (folder / "classes.txt").read_text().split()
    hist = SegHistogram(len(classes))
    for path in sorted((folder / "masks").glob("*.png")):
        label = torch.from_numpy(np.array(Image.open(path))).long()
        hist.update(torch.zeros_like(label), label)
    return float(np.nanmean(hist.per_class_iou().numpy()))


def _stub_demo(tmp_path, monkeypatch, tiny_clip, seed_dir):
    """A seed folder whose demo stages are the untrained tiny CLIP (original and, standing in, un2clip), and the
    demo's evaluations stubbed: only what --lseg adds runs."""
    from un2clip.world import compare
    from un2clip.world import demo as demo_module

    tiny_clip.save_pretrained(seed_dir / "clip" / "clip")
    (seed_dir / "clip" / "DONE").write_text("{}")
    tiny_clip.save_pretrained(seed_dir / "finetune")
    monkeypatch.setattr(compare, "run_demo", lambda *a, **k: None)
    monkeypatch.setattr(compare, "start_weights", lambda *a, **k: None)
    monkeypatch.setattr(demo_module, "shipped_weights", lambda *a, **k: tmp_path / "none")
    import un2clip.world.report as world_report

    monkeypatch.setattr(world_report, "evaluate_models", lambda out, world, models, *a, **k: {
        n: {"mmvp/average": 50.0, "zeroshot_shape/acc1": 40.0} for n in models})


def test_compare_lseg_trains_a_head_per_encoder_caches_it_and_reports_it(tmp_path, monkeypatch, tiny_clip):
    from un2clip.world.lseg import LSEG_QUICK

    out = tmp_path / "cmp"
    seed_dir = out / "seed0"
    _stub_demo(tmp_path, monkeypatch, tiny_clip, seed_dir)
    args = ["compare", "--quick", "--lseg", "--seeds", "0", "--variants", "original", "un2clip", "--output", str(out),
            "--no-progress"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())["per_seed"]["0"]
    sets = seed_dir / "lseg-set" / "lseg"
    assert len(list((sets / "train" / "images").glob("*.png"))) == LSEG_QUICK.n_scenes
    for name in ("original", "un2clip"):
        got = results[name]
        assert got["mmvp/average"] == 50.0
        for prefix, folder in (("seen", "val"), ("unseen", "unseen")):
            assert 0 <= got[f"lseg/{prefix}_miou"] <= 100 and 0 <= got[f"lseg/{prefix}_aacc"] <= 100
            # the reference is the all-background predictor on the very masks scored
            assert got[f"lseg/{prefix}_background_miou"] == pytest.approx(_all_background_miou(sets / folder))
            assert got[f"lseg/{prefix}_oracle_miou"] > got[f"lseg/{prefix}_background_miou"]
        head = load_head(seed_dir / "lseg" / name / "run")
        assert head.config.labels == ["background", "circle", "square", "triangle", "star"]
        assert head.config.features == LSEG_QUICK.features
        steps = [json.loads(x).get("step") for x in (seed_dir / "lseg" / name / "run" / "metrics.jsonl")
                 .read_text().splitlines()]
        assert max(s for s in steps if s is not None) == LSEG_QUICK.steps
    # both encoders are the same tiny CLIP here: same seed, same head, same numbers
    assert {k: v for k, v in results["original"].items() if k.startswith("lseg/")} == {
        k: v for k, v in results["un2clip"].items() if k.startswith("lseg/")}
    report = (out / "report.md").read_text()
    assert "| LSeg seen | all-bg seen | LSeg unseen | all-bg unseen |" in report
    row = next(line for line in report.splitlines() if line.startswith("| un2clip |"))
    assert f"| {results['un2clip']['lseg/unseen_miou']:.1f} |" in row
    # a second call reuses the set, the heads and their evaluations
    stamps = {p: p.stat().st_mtime_ns for p in (seed_dir / "lseg-set" / "DONE", seed_dir / "lseg" / "original" / "DONE",
                                                seed_dir / "lseg" / "un2clip" / "DONE",
                                                seed_dir / "eval" / "lseg_un2clip.json")}
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["per_seed"]["0"] == results
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_compare_lseg_head_is_trained_again_when_asked_another_way(tmp_path, monkeypatch, tiny_clip):
    from dataclasses import replace

    from un2clip.world.lseg import LSEG_QUICK, lseg_results

    seed_dir = tmp_path / "seed0"
    _stub_demo(tmp_path, monkeypatch, tiny_clip, seed_dir)
    models = {"original": str(seed_dir / "clip" / "clip")}
    first = lseg_results(seed_dir, models, seed=0, settings=LSEG_QUICK, progress=False)
    done = seed_dir / "lseg" / "original" / "DONE"
    stamp = done.stat().st_mtime_ns
    again = lseg_results(seed_dir, models, seed=0, settings=replace(LSEG_QUICK, steps=3), progress=False)
    assert done.stat().st_mtime_ns != stamp and set(again["original"]) == set(first["original"])
    assert json.loads((seed_dir / "lseg" / "original" / "recipe.json").read_text())["run"]["max_steps"] == 3
    cached = json.loads((seed_dir / "eval" / "lseg_original.json").read_text())
    assert cached["recipe"]["head"] == done.stat().st_mtime_ns and cached["metrics"] == again["original"]


def test_compare_lseg_defaults_are_the_readme_measurement():
    from un2clip.cli import build_parser
    from un2clip.world.lseg import LSEG_QUICK, LSegSettings, lseg_fields

    s = LSegSettings()
    assert (s.n_scenes, s.steps, s.batch_size, s.lr, s.image_size) == (200, 300, 16, 1e-3, 32)
    fields = lseg_fields(Path("sets"), "clip", 0, s)
    assert fields["objective"] == "lseg" and fields["data"] == str(Path("sets") / "train")
    assert fields["objective_options"] == {}  # the head's own defaults, as train-dense without flags
    assert lseg_fields(Path("sets"), "clip", 0, LSEG_QUICK)["objective_options"] == {"features": 8}
    parser = build_parser()
    text = next(a.help for a in parser._subparsers._group_actions[0].choices["compare"]._actions
                if "--lseg" in a.option_strings)
    assert f"{s.n_scenes} scenes" in text and f"{s.steps} steps of {s.batch_size}" in text and "lr 1e-3" in text
