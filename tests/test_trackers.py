"""Watching a run: --report-to (TensorBoard, W&B offline) equals metrics.jsonl, resumes continue it, curves.png."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.test_train import _images
from un2clip.cli import main as cli
from un2clip.train import trackers
from un2clip.train.curves import CURVES_PNG, curve_data, read_metrics, write_curves

# the quickest tiny setting of tests/test_train.py, with a smaller batch (the CPU is shared)
FT = ["finetune", "--preset", "tiny", "--batch-size", "2", "--lr", "1e-3", "--no-progress"]
LOGGED = ("loss", "lr", "grad_norm", "images_per_s", "skip_rate")


def _rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _event_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard's own reader sees the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run / trackers.PROJECT
    assert list(folder.glob("events.out.tfevents.*")), f"no event file in {folder}"
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_events_equal_metrics(run: Path) -> None:
    rows, events = _rows(run), _event_scalars(run)
    for key in LOGGED:
        assert key in events, (key, sorted(events))
        expected = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows]  # float32 in the event file
        assert events[key] == expected, key


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="--report-to tensorboard needs the tensorboard extra")
    root = tmp_path_factory.mktemp("tb")
    data = _images(root / "img", 8)
    run = root / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "3", "--save-every", "2", "--output", str(run),
                     "--report-to", "tensorboard"]) == 0
    return run


@pytest.mark.slow
def test_tensorboard_scalars_equal_metrics_jsonl_step_by_step(tb_run):
    assert [r["step"] for r in _rows(tb_run)] == [1, 2, 3]
    _assert_events_equal_metrics(tb_run)
    assert "report_to: tensorboard" in (tb_run / "config.yaml").read_text()


@pytest.mark.slow
def test_resume_appends_to_the_same_tensorboard_folder_without_duplicate_steps(tb_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tb_run, run)
    # as if killed after logging step 3 but before its checkpoint: the resume starts at 2 and logs 3 again
    shutil.rmtree(run / "checkpoints" / "step_000003")
    before = sorted((run / trackers.PROJECT).iterdir())
    assert cli(["finetune", "--resume", str(run), "--max-steps", "4", "--no-progress"]) == 0
    after = sorted((run / trackers.PROJECT).iterdir())
    assert set(before) < set(after), "the resume must write into the run's own TensorBoard folder"
    assert not [p for p in run.iterdir() if p.is_dir() and p.name.startswith("events")]
    events = _event_scalars(run)
    assert [s for s, _ in events["loss"]] == [1, 2, 3, 4]
    _assert_events_equal_metrics(run)


@pytest.mark.slow
def test_wandb_offline_writes_a_run_folder_and_keeps_its_id(tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec("wandb") is None:
        pytest.skip("wandb is not installed (pip install 'un2clip[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = _images(tmp_path / "img", 4)
    run = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "1", "--output", str(run), "--report-to", "wandb"]) == 0
    assert "W&B: offline" in capsys.readouterr().out
    run_id = (run / trackers.WANDB_ID_FILE).read_text().strip()
    folders = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert folders and list(folders[0].glob("*.wandb")), sorted(p.name for p in (run / "wandb").iterdir())


def test_a_missing_tracker_package_is_a_one_line_error_before_any_step(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    data = _images(tmp_path / "img", 4)
    run = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "1", "--output", str(run), "--report-to", "all"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'un2clip[wandb]'" in err
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


def test_tracker_names_and_logged_scalars():
    assert trackers.tracker_names("none") == []
    assert trackers.tracker_names("all") == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match="report-to"):
        trackers.tracker_names("mlflow")
    record = {"step": 4, "loss": 0.5, "lr": 1e-4, "n_bad": 2, "grad_norm": float("nan"), "resumed_at": 3,
              "changed": {"lr": [1, 2]}, "flag": True}
    assert trackers.scalars(record) == {"loss": 0.5, "lr": 1e-4, "n_bad": 2.0}


def test_curve_data_has_one_point_per_logged_step():
    records = [{"step": 1, "loss": 3.0, "lr": 0.1}, {"step": 2, "loss": 2.0, "lr": 0.2},
               {"step": 3, "loss": 1.5, "lr": 0.2, "resumed_at": 2}]
    data = curve_data(records)
    assert data["loss"] == ([1, 2, 3], [3.0, 2.0, 1.5])
    assert data["lr"] == ([1, 2, 3], [0.1, 0.2, 0.2])
    # a step written twice keeps its last value: one point per step
    assert curve_data(records + [{"step": 3, "loss": 1.0, "lr": 0.3}])["loss"] == ([1, 2, 3], [3.0, 2.0, 1.0])


def test_every_run_ends_with_its_curves_png(tb_run):
    png = tb_run / CURVES_PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps, losses = curve_data(read_metrics(tb_run / "metrics.jsonl"))["loss"]
    assert steps == [1, 2, 3] and losses == [r["loss"] for r in _rows(tb_run)]


def test_curves_without_matplotlib_is_a_note(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "lr": 0.1}\n')
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    path, note = write_curves(tmp_path)
    assert path is None and "un2clip[plot]" in note and not (tmp_path / CURVES_PNG).exists()


def test_report_draws_the_curves_of_a_training_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s, "lr": 0.1}) + "\n"
                                                    for s in (1, 2, 3)))
    assert cli(["report", str(tmp_path)]) == 0
    assert (tmp_path / CURVES_PNG).exists()
    assert str(tmp_path / CURVES_PNG) in capsys.readouterr().out


def test_demo_report_shows_the_fine_tunes_curves(tmp_path):
    from un2clip.world.report import write_report

    results = {"original": {"mmvp/average": 50.0}, "un2clip": {"mmvp/average": 60.0}}
    assert "finetune/curves.png" not in write_report(tmp_path, results).read_text()
    (tmp_path / "finetune").mkdir()
    (tmp_path / "finetune" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "lr": 0.1}\n')
    pytest.importorskip("matplotlib")
    write_curves(tmp_path / "finetune")
    assert "![fine-tune loss and learning rate](finetune/curves.png)" in write_report(tmp_path, results).read_text()
