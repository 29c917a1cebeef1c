"""The training loop end to end on the tiny preset: checkpoints, frozen decoder, resume, NaN, bad images."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.cli import main as cli
from un2clip.train.config import RunConfig


def _images(folder: Path, n: int, *, corrupt: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = np.full((40, 48, 3), 230, np.uint8)
        x, y = rng.integers(4, 30, 2)
        arr[y:y + 10, x:x + 12] = rng.integers(0, 255, 3)
        Image.fromarray(arr).save(folder / f"{i:04d}.png")
    for j in range(corrupt):
        (folder / f"bad_{j}.jpg").write_bytes(os.urandom(200) if j % 2 else b"")
    return folder


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


FT = ["finetune", "--preset", "tiny", "--batch-size", "8", "--lr", "1e-4", "--no-progress"]


@pytest.mark.slow
def test_tiny_finetune_writes_checkpoint_and_keeps_decoder_frozen(tmp_path):
    from un2clip.models.clip import ClipModel
    from un2clip.models.presets import build_tiny_clip
    from un2clip.runs import latest_checkpoint, load_checkpoint

    data = _images(tmp_path / "img", 40)
    out = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "6", "--save-every", "3", "--output", str(out)]) == 0
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step_000006"
    saved = load_checkpoint(ckpt)
    # only the image tower is in the checkpoint: no decoder, no text tower
    assert saved["trainable"] and all(k.startswith("clip.model.vision_model.") or
                                      k.startswith("clip.model.visual_projection.") for k in saved["trainable"])
    assert len(_losses(out)) == 6
    assert (out / "config.yaml").exists()
    trained = ClipModel.from_pretrained(out / "clip")
    original = build_tiny_clip()
    changed = [k for k, v in trained.vision_state_dict().items() if not torch.equal(v, original.vision_state_dict()[k])]
    assert changed, "the encoder did not change"
    same_text = all(torch.equal(v, original.model.state_dict()[k])
                    for k, v in trained.model.state_dict().items() if k.startswith("text_model."))
    assert same_text, "the text tower changed"
    assert not (out / "decoder").exists(), "a frozen-decoder run must not write a decoder"


@pytest.mark.slow
def test_decoder_weights_bit_identical_after_training(tmp_path, tiny_clip):
    from un2clip.data import open_source
    from un2clip.models.presets import build_tiny_clip, build_tiny_decoder
    from un2clip.objectives.un2clip import Un2ClipObjective
    from un2clip.train.loop import train

    data = _images(tmp_path / "img", 24)
    decoder = build_tiny_decoder()
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    clip = build_tiny_clip()
    enc_before = {k: v.clone() for k, v in clip.vision_state_dict().items()}
    objective = Un2ClipObjective(clip, decoder)
    train(objective, open_source(str(data)), RunConfig(output=str(tmp_path / "r"), max_steps=3, batch_size=8, lr=1e-3),
          progress=False)
    for k, v in decoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in decoder.parameters())
    assert any(not torch.equal(v, enc_before[k]) for k, v in clip.vision_state_dict().items())


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_losses(tmp_path):
    data = _images(tmp_path / "img", 64)
    args = FT + ["--data", str(data), "--max-steps", "30", "--save-every", "10"]
    ref = tmp_path / "ref"
    assert cli(args + ["--output", str(ref)]) == 0

    killed = tmp_path / "killed"
    # the child computes with as many threads as this process (float sums depend on the thread count)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "un2clip.cli", *args, "--output", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 900  # generous: a loaded machine is slow, not wrong
    while not (killed / "checkpoints" / "step_000010" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its step-10 checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "clip").exists(), "the run finished before it could be killed"
    assert cli(["finetune", "--resume", str(killed), "--no-progress"]) == 0
    a, b = _losses(ref), _losses(killed)
    assert sorted(b) == list(range(1, 31))
    for step in range(11, 31):
        assert a[step] == b[step], (step, a[step], b[step])


def test_corrupt_images_are_skipped_and_counted(tmp_path, capsys):
    data = _images(tmp_path / "img", 20, corrupt=4)
    out = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "6", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["n_bad"] > 0
    assert f"skipped images: {last['n_bad']}" in printed


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path):
    from un2clip.data import open_source
    from un2clip.models.presets import build_tiny_clip, build_tiny_decoder
    from un2clip.objectives.un2clip import Un2ClipObjective
    from un2clip.runs import latest_checkpoint, load_checkpoint
    from un2clip.train.loop import NonFiniteLossError, train

    class Exploding(Un2ClipObjective):
        calls = 0

        def forward(self, batch):
            out = super().forward(batch)
            Exploding.calls += 1
            if Exploding.calls == 3:
                out["loss"] = out["loss"] * float("nan")
            return out

    data = _images(tmp_path / "img", 24)
    objective = Exploding(build_tiny_clip(), build_tiny_decoder())
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(objective, open_source(str(data)),
              RunConfig(output=str(tmp_path / "r"), max_steps=5, batch_size=8, lr=1e-4, save_every=1), progress=False)
    ckpt = latest_checkpoint(tmp_path / "r")
    assert ckpt.name == "step_000002"
    assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpt)["trainable"].values())


def test_global_random_draws_follow_the_run_seed_not_what_ran_before(tmp_path):
    """Dropout draws from torch's global random state: a run's losses must not depend on what the process did
    before it (compare runs many stages in one process, some cached, some not)."""
    from un2clip.data import open_source
    from un2clip.models.presets import build_tiny_clip, build_tiny_decoder
    from un2clip.objectives.un2clip import Un2ClipObjective
    from un2clip.train.loop import train

    class Noisy(Un2ClipObjective):  # a loss with a dropout-like draw from the global state
        def forward(self, batch):
            out = super().forward(batch)
            out["loss"] = out["loss"] * (1 + 0.1 * torch.rand(()))
            return out

    data = _images(tmp_path / "img", 16)

    def losses(name, before_seed, seed=0):
        torch.manual_seed(before_seed)  # the state earlier work left behind
        cfg = RunConfig(output=str(tmp_path / name), max_steps=2, batch_size=8, lr=1e-4, seed=seed)
        train(Noisy(build_tiny_clip(), build_tiny_decoder()), open_source(str(data)), cfg, progress=False)
        return _losses(tmp_path / name)

    first = losses("a", before_seed=1)
    assert losses("b", before_seed=2) == first
    assert losses("c", before_seed=1, seed=1) != first


def test_existing_run_is_not_overwritten(tmp_path):
    data = _images(tmp_path / "img", 16)
    out = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "1", "--output", str(out)]) == 0
    assert cli(FT + ["--data", str(data), "--max-steps", "1", "--output", str(out)]) == 2


@pytest.mark.parametrize("where", [".", "run", "sub/run"])
def test_a_run_folder_in_the_data_folder_is_refused_before_anything_is_written(tmp_path, capsys, where):
    data = _images(tmp_path / "img", 8)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    out = data / where
    assert cli(FT + ["--data", str(data), "--max-steps", "1", "--output", str(out)]) == 2
    assert "data folder" in capsys.readouterr().err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    # beside the data is fine
    assert cli(FT + ["--data", str(data), "--max-steps", "1", "--output", str(tmp_path / "img-run")]) == 0


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert cli(FT + ["--data", str(tmp_path / "nope"), "--max-steps", "1", "--output", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    from un2clip.models.presets import build_tiny_clip, build_tiny_decoder
    from un2clip.objectives.un2clip import Un2ClipObjective

    batch = {"clip_pixels": torch.randn(4, 3, 32, 32), "decoder_pixels": torch.rand(4, 3, 32, 32) * 2 - 1,
             "draw_seed": torch.arange(4)}
    grads = []
    for checkpointing in (False, True):
        objective = Un2ClipObjective(build_tiny_clip(), build_tiny_decoder())
        if checkpointing:
            objective.enable_gradient_checkpointing()
            assert objective.clip.model.vision_model.encoder.gradient_checkpointing
        objective.set_train_mode()
        loss = objective(batch)["loss"]
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in objective.trainable_parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


# -- unreadable data (issue 19) ------------------------------------------------------------------------------


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("layout", ["csv", "folder"])
def test_data_that_cannot_be_read_stops_the_run_naming_the_files(tmp_path, capsys, layout):
    if layout == "csv":  # every path of the table is missing
        data = tmp_path / "train.csv"
        data.write_text("image\n" + "".join(f"photos/{i}.jpg\n" for i in range(12)))
    else:  # every file of the folder is unreadable
        data = _images(tmp_path / "img", 0, corrupt=12)
    out = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "3", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "none of the last" in err and "could be read" in err
    assert ("photos/" if layout == "csv" else "bad_") in err
    assert not (out / "clip").exists() and not (out / "checkpoints").exists()
    assert not (out / "metrics.jsonl").exists(), "a draw without one readable image is not a training step"


def test_skip_rate_over_the_window_stops_the_run(tmp_path, capsys):
    data = _images(tmp_path / "img", 6, corrupt=10)  # 62 % unreadable
    out = tmp_path / "run"
    args = FT + ["--data", str(data), "--max-steps", "40", "--skip-window", "40", "--output", str(out)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "could not be read, more than --max-skip-rate 0.5" in err and "bad_" in err
    assert "of the last 40 images drawn" in err
    assert not (out / "clip").exists()
    # a run too short to fill the window is judged on everything it drew
    assert cli(FT + ["--data", str(data), "--max-steps", "2", "--output", str(tmp_path / "short")]) == 2
    assert "more than --max-skip-rate" in capsys.readouterr().err
    # the user may accept the loss of images
    assert cli(FT + ["--data", str(data), "--max-steps", "2", "--max-skip-rate", "0.9",
                     "--output", str(tmp_path / "accepted")]) == 0


def test_a_draw_without_readable_images_is_not_a_step_and_resume_keeps_the_data_position(tmp_path):
    from un2clip.runs import latest_checkpoint, load_checkpoint

    data = _images(tmp_path / "img", 4, corrupt=12)  # a batch of 4 is often entirely unreadable
    args = ["finetune", "--preset", "tiny", "--batch-size", "4", "--lr", "1e-4", "--no-progress", "--data", str(data),
            "--max-skip-rate", "1"]
    ref = tmp_path / "ref"
    assert cli(args + ["--max-steps", "8", "--output", str(ref)]) == 0
    rows = _metrics(ref)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(r["loss"] > 0 for r in rows)
    assert rows[-1]["skipped_steps"] > 0
    saved = load_checkpoint(latest_checkpoint(ref))
    # the optimiser stepped once per counted step; the data position counts every draw
    assert {int(s["step"]) for s in saved["optimizer"]["state"].values()} == {8}
    assert saved["state"]["samples_seen"] == 4 * (8 + rows[-1]["skipped_steps"])
    # stopped at step 4 and resumed: the same draws, the same losses
    part = tmp_path / "part"
    assert cli(args + ["--max-steps", "4", "--output", str(part)]) == 0
    assert cli(["finetune", "--resume", str(part), "--max-steps", "8", "--no-progress"]) == 0
    assert _losses(part) == _losses(ref)


def test_captioned_training_on_unreadable_images_says_so(tmp_path, capsys):
    data = tmp_path / "pairs.csv"
    data.write_text("image,caption\n" + "".join(f"gone/{i}.jpg,a red circle\n" for i in range(4)))
    assert cli(["pretrain", "--preset", "tiny", "--data", str(data), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "none of the first 4 images" in err and "gone/0.jpg" in err and "no captions" not in err


# -- resume with new settings (issue 19) --------------------------------------------------------------------


@pytest.fixture
def forget_precision():
    """Accelerate keeps one mixed-precision setting per process (a resume runs in a new one): a call forgets it."""
    from accelerate.state import AcceleratorState

    yield AcceleratorState._reset_state
    AcceleratorState._reset_state()


def test_resume_honours_lr_steps_interval_and_precision_and_records_them(tmp_path, forget_precision):
    import yaml

    from un2clip.runs import latest_checkpoint, load_checkpoint
    from un2clip.train.loop import lr_factor

    data = _images(tmp_path / "img", 24)
    out = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "4", "--save-every", "2", "--lr-schedule", "cosine",
                     "--output", str(out)]) == 0
    forget_precision()
    assert cli(["finetune", "--resume", str(out), "--lr", "1e-5", "--max-steps", "7", "--save-every", "1",
                "--precision", "bf16", "--no-progress"]) == 0
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 8))
    for r in rows:  # the logged lr is the next step's: base x cosine factor over the (new) step budget
        base, budget = (1e-4, 4) if r["step"] <= 4 else (1e-5, 7)
        assert r["lr"] == pytest.approx(base * lr_factor(r["step"], warmup_steps=0, max_steps=budget,
                                                         schedule="cosine"), abs=1e-12), r
    assert rows[4]["resumed_at"] == 4 and rows[4]["changed"] == {
        "lr": [1e-4, 1e-5], "max_steps": [4, 7], "precision": ["fp32", "bf16"], "save_every": [2, 1]}
    assert all("changed" not in r for r in rows[:4] + rows[5:])
    text = (out / "config.yaml").read_text()
    assert text.startswith("# resumed at step 4: lr 0.0001 -> 1e-05, max_steps 4 -> 7, precision fp32 -> bf16, "
                           "save_every 2 -> 1\n")
    cfg = yaml.safe_load(text)
    assert (cfg["lr"], cfg["max_steps"], cfg["save_every"], cfg["precision"]) == (1e-5, 7, 1, "bf16")
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000006", "step_000007"]
    saved = load_checkpoint(latest_checkpoint(out))
    assert saved["optimizer"]["param_groups"][0]["initial_lr"] == 1e-5
    assert saved["scheduler"]["base_lrs"] == [1e-5]


@pytest.mark.parametrize("flags, named", [
    (["--batch-size", "16"], "--batch-size"),
    (["--anchor-weight", "0.1"], "--anchor-weight"),
    (["--data", "elsewhere"], "--data"),
])
def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys, flags, named):
    data = _images(tmp_path / "img", 16)
    out = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "1", "--output", str(out)]) == 0
    capsys.readouterr()
    assert cli(["finetune", "--resume", str(out), *flags, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"not {named}" in err
    accepted = err.split("accepts only ")[1].split(" (and --no-progress)")[0].split(", ")
    assert sorted(accepted) == ["--lr", "--max-skip-rate", "--max-steps", "--num-workers", "--precision",
                                "--report-to", "--save-every", "--skip-window"]


# -- the Trainer's own rules (issue 34) -------------------------------------------------------------------


def test_schedule_rebuilt_at_a_step_continues_with_the_rates_of_an_uninterrupted_one():
    """A resume rebuilds the schedule at the restored step (no write into LambdaLR's private state)."""
    from un2clip.train.loop import Trainer, lr_factor

    cfg = RunConfig(lr=2e-3, warmup_steps=3, max_steps=10, lr_schedule="cosine")
    trainer = Trainer(object(), [0] * 4, cfg)  # only the schedule is used here
    param = torch.nn.Parameter(torch.zeros(2))
    trainer.opt = torch.optim.SGD([param], lr=cfg.lr)
    straight = trainer._scheduler()
    rates = [straight.get_last_lr()[0]]
    for _ in range(6):
        trainer.opt.step()
        straight.step()
        rates.append(straight.get_last_lr()[0])
    assert rates == [2e-3 * lr_factor(s, warmup_steps=3, max_steps=10, schedule="cosine") for s in range(7)]
    trainer.opt = torch.optim.SGD([param], lr=123.0)  # a restored optimiser: its saved rate is replaced
    trainer.step = 4
    resumed = trainer._scheduler()
    assert resumed.base_lrs == [2e-3] and trainer.opt.param_groups[0]["initial_lr"] == 2e-3
    assert [resumed.get_last_lr()[0], trainer.opt.param_groups[0]["lr"]] == [rates[4]] * 2
    trainer.opt.step()
    resumed.step()
    trainer.opt.step()
    resumed.step()
    assert resumed.get_last_lr()[0] == rates[6]


def test_trainer_sets_every_attribute_in_init():
    import ast
    import inspect

    from un2clip.train import loop

    cls = next(n for n in ast.parse(inspect.getsource(loop)).body if isinstance(n, ast.ClassDef) and n.name == "Trainer")

    def assigned(node):
        names = set()
        for sub in ast.walk(node):
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target] if isinstance(
                sub, ast.AnnAssign | ast.AugAssign) else []
            for t in targets:
                for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                    if isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id == "self":
                        names.add(el.attr)
        return names

    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
    in_init = assigned(next(m for m in methods if m.name == "__init__"))
    later = set().union(*(assigned(m) for m in methods if m.name != "__init__"))
    assert later <= in_init, sorted(later - in_init)


def test_a_resume_never_trains_back_and_says_when_nothing_is_left(tmp_path, capsys):
    """Issue 32 case 12, the rule of every training command's resume: --max-steps below the run's step is refused
    (exit 2, the run untouched); equal to it, no step is trained and the console says so."""
    data = _images(tmp_path / "img", 16)
    out = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "3", "--output", str(out)]) == 0
    config_before, metrics_before = (out / "config.yaml").read_text(), (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert cli(["finetune", "--resume", str(out), "--max-steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{out} is already at step 3, past --max-steps 2: a resume cannot undo steps" in err
    assert (out / "config.yaml").read_text() == config_before  # max_steps 3 -> 2 not recorded
    assert cli(["finetune", "--resume", str(out), "--no-progress"]) == 0
    assert "is already at step 3 of --max-steps 3: no step to train" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text() == metrics_before


def test_train_filter_checks_keep_fraction_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["train-filter", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--keep-fraction", "2"])
    assert exit_info.value.code == 2
    assert "argument --keep-fraction: must be a fraction in [0, 1], not '2'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_other_weights_is_refused_naming_the_keys():
    from un2clip.objectives.base import check_state_keys, module_state

    head = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    state = module_state(head, "head.")
    # buffers travel with the weights (a resumed run needs the batch-norm statistics), detached
    assert {"head.0.weight", "head.0.bias", "head.1.running_mean", "head.1.num_batches_tracked"} <= set(state)
    assert not any(v.requires_grad for v in state.values())
    check_state_keys(state, dict(state), "the head")  # the same keys pass
    other = {k.replace("head.1.", "head.2."): v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"checkpoint does not fit the head: missing \['head.1.bias'.*"
                                         r"unexpected \['head.2.bias'"):
        check_state_keys(state, other, "the head")
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['extra'\]"):
        check_state_keys(state, {**state, "extra": torch.zeros(1)}, "the head")


def test_poly_schedule_is_lsegs_decay_after_warmup():
    from un2clip.train.loop import lr_factor

    def poly(step, warmup=0, total=10):
        return lr_factor(step, warmup_steps=warmup, max_steps=total, schedule="poly")

    # LSeg: LambdaLR(lambda x: (1 - x / num_steps) ** 0.9)
    assert [poly(s) for s in (0, 5, 10)] == [1.0, pytest.approx(0.5 ** 0.9), 0.0]
    assert poly(3) == pytest.approx(0.7 ** 0.9)
    # with warm-up the decay starts where the warm-up ends
    assert [poly(s, 2, 12) for s in (0, 1, 2, 7)] == [0.5, 1.0, 1.0, pytest.approx(0.5 ** 0.9)]
    assert poly(50) == 0.0  # past the budget (a resume with fewer steps) the rate stays at 0
    with pytest.raises(ValueError, match="'constant', 'cosine' or 'poly'"):
        lr_factor(0, warmup_steps=0, max_steps=10, schedule="linear")
