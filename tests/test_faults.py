"""Fault injection: what an adversarial user, a scheduler or a failing disk does to a run, and bad data.

Each test says in its docstring which protection it checks, i.e. what would go wrong without it.
Training runs use the tiny preset for a few steps; the faults that need a process of their own
(signals, SIGKILL) start one, the rest run in this process. Runs whose losses are compared use one
thread, where float sums do not depend on how threads are scheduled.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_seg_data import make_generic, save_label
from tests.test_train import _images, _losses
from un2clip.cli import main as cli
from un2clip.runs import RUN_LOCK, checkpoint_problem, latest_checkpoint, load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"
CHILD = Path(__file__).with_name("faults_child.py")
FT = ["finetune", "--preset", "tiny", "--batch-size", "4", "--lr", "1e-4", "--no-progress"]


def _child(args: list[str], **kwargs) -> subprocess.Popen:
    """A training command in its own process (and process group), one thread, this checkout's source first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def _wait_for_steps(proc: subprocess.Popen, run: Path, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {n}: {proc.communicate()}")
        assert time.time() < deadline, f"no step {n} within {timeout} s"
        time.sleep(0.05)


def _error_line(err: str, command: str) -> str:
    """The one error line of a command's stderr (warnings may precede it; no traceback may)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"un2clip {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- the error boundary --------------------------------------------------------------------------------

def test_nan_loss_is_one_line_and_exit_1(tmp_path, capsys):
    """The CLI's error boundary with NonFiniteLossError as a stopped run. Without it the message arrives as a
    traceback (the exception leaves ``main``); without the stopped-run status the exit code is 2 or none."""
    data = _images(tmp_path / "img", 8)
    assert cli(FT + ["--data", str(data), "--max-steps", "400", "--lr", "1e6", "--output", str(tmp_path / "nan")]) == 1
    line = _error_line(capsys.readouterr().err, "finetune")
    assert "loss became nan at step" in line and "Last good checkpoint" in line


def test_debug_shows_the_traceback(tmp_path, capsys):
    """``--debug`` (after the command's name, too): without it being honoured, the error would still be one line
    and a developer would have no traceback to read."""
    (tmp_path / "mmvp").mkdir()
    (tmp_path / "mmvp" / "Questions.csv").write_text("id,kind,text\n")
    args = ["eval", "mmvp", "--model", "tiny", "--data", str(tmp_path / "mmvp"), "--output", str(tmp_path / "o")]
    assert cli(args) == 2
    with pytest.raises(ValueError, match="has the columns"):
        cli(args + ["--debug"])
    with pytest.raises(ValueError, match="has the columns"):
        cli(["--debug", *args])


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """The Hub as seen without a network: every connection refused (a closed local port), no retry waits."""
    import huggingface_hub.utils._http as hub_http
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)
    # the Hub library's log handler holds the stderr of the test that first imported it, closed by now
    monkeypatch.setattr(logging.getLogger("huggingface_hub"), "handlers", [])


@pytest.mark.parametrize("offline", [False, True], ids=["no-network", "HF_HUB_OFFLINE"])
def test_unreachable_hub_is_one_line_naming_the_id(tmp_path, capsys, monkeypatch, no_network, offline):
    """Translating the Hub's errors (load.hub_error): without it the user gets the Hub library's message
    (transformers' "We couldn't connect to ...") that names neither the model nor the way out."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    data = tmp_path / "zs"
    for c in ("cat", "dog"):
        _images(data / c, 2)
    assert cli(["eval", "zeroshot", "--model", "someorg/some-clip", "--data", str(data),
                "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    line = _error_line(capsys.readouterr().err, "eval")
    assert "someorg/some-clip" in line and "local copy" in line and "HF_HUB_OFFLINE" in line
    assert ("forbids downloading" if offline else "could not be reached") in line


# -- faults a run survives -----------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_checkpoints_the_last_step_and_resume_matches(tmp_path, capsys, monkeypatch, one_thread):
    """Two protections, one run. SIGINT to the process group (Ctrl-C): without the loop's signal handling the run
    dies with a KeyboardInterrupt, no checkpoint since the last periodic one (there is none here), and nothing to
    resume. The run folder's lock: without it a second process with the same --output loads its models and trains
    into the folder the first one is writing."""
    data = _images(tmp_path / "img", 16)
    args = FT + ["--data", str(data), "--save-every", "1000"]
    run = tmp_path / "run"
    proc = _child([sys.executable, "-m", "un2clip.cli", *args, "--max-steps", "400", "--output", str(run)])
    try:
        _wait_for_steps(proc, run, 1)
        import un2clip.train.recipes as recipes

        def no_model(*a, **k):
            raise AssertionError("the second process loaded a model: it was not refused at once")

        monkeypatch.setattr(recipes, "load_clip", no_model)
        assert cli(args + ["--max-steps", "400", "--output", str(run)]) == 2
        assert f"is in use by process {proc.pid}" in _error_line(capsys.readouterr().err, "finetune")
        monkeypatch.undo()
        _wait_for_steps(proc, run, 2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    line = _error_line(err, "finetune")
    assert "stopped by SIGINT after step" in line and "--resume" in line
    stopped = int(line.split("after step ")[1].split()[0])
    ckpt = latest_checkpoint(run)
    assert ckpt.name == f"step_{stopped:06d}" and checkpoint_problem(ckpt) is None
    assert not (run / RUN_LOCK).exists(), "the stopped run kept its lock"

    assert cli(["finetune", "--resume", str(run), "--max-steps", str(stopped + 2), "--no-progress"]) == 0
    ref = tmp_path / "ref"
    assert cli(args + ["--max-steps", str(stopped + 2), "--output", str(ref)]) == 0
    assert _losses(run) == _losses(ref)  # every step, before and after the interruption


@pytest.mark.slow
def test_sigterm_to_a_run_with_loader_workers(tmp_path):
    """SIGTERM to the whole process group (what a scheduler sends): the loader's workers ignore it. Without that,
    a worker dies of the signal and PyTorch raises "DataLoader worker ... exited unexpectedly" in the main
    process: a traceback instead of a checkpoint."""
    data = _images(tmp_path / "img", 16)
    run = tmp_path / "run"
    proc = _child([sys.executable, "-m", "un2clip.cli", *FT, "--data", str(data), "--num-workers", "1",
                   "--save-every", "1000", "--max-steps", "400", "--output", str(run)])
    try:
        _wait_for_steps(proc, run, 1)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "stopped by SIGTERM after step" in _error_line(err, "finetune")
    assert checkpoint_problem(latest_checkpoint(run)) is None


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint(tmp_path, caplog):
    """Killed between the files of checkpoint 4 (weights written, optimiser half written). The temporary folder and
    the rename keep step 2 loadable and step 4 out of sight; resume names the partial checkpoint and the stale lock
    it takes over. Without the partial-checkpoint check the leftover folder is silently kept; without the rename
    a half-written step_000004 would be what resume loads."""
    data = _images(tmp_path / "img", 16)
    run = tmp_path / "run"
    proc = _child([sys.executable, str(CHILD), "kill-while-saving", "4", *FT, "--data", str(data),
                   "--save-every", "2", "--max-steps", "6", "--output", str(run)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err
    assert (run / "checkpoints" / ".step_000004.tmp" / "optimizer.pt").exists()  # the kill came mid-write
    assert latest_checkpoint(run).name == "step_000002"
    assert load_checkpoint(latest_checkpoint(run))["state"]["step"] == 2
    assert (run / RUN_LOCK).exists()  # SIGKILL leaves the lock file behind

    with caplog.at_level(logging.WARNING):
        assert cli(["finetune", "--resume", str(run), "--no-progress"]) == 0
    warned = caplog.text
    assert "partial checkpoint" in warned and ".step_000004.tmp" in warned
    assert "stale lock" in warned and str(proc.pid) in warned
    assert sorted(_losses(run)) == [1, 2, 3, 4, 5, 6]
    assert not (run / "checkpoints" / ".step_000004.tmp").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    """A lock file whose owner died (here: a finished process) is taken over with a warning. Without it a
    run killed once could never be resumed without deleting the lock by hand."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": time.time()}))
    data = _images(tmp_path / "img", 8)
    with caplog.at_level(logging.WARNING):
        assert cli(FT + ["--data", str(data), "--max-steps", "1", "--output", str(run)]) == 0
    assert f"stale lock of {run}: process {dead.pid}" in caplog.text
    assert not (run / RUN_LOCK).exists()


@pytest.mark.slow
def test_damaged_checkpoint_is_refused_by_name(tmp_path, capsys, caplog):
    """The checksums in each checkpoint's index.json. Without them a bit flip inside the weights loads as
    garbage without a word, and a truncated file fails inside safetensors or torch with their own message."""
    data = _images(tmp_path / "img", 16)
    run = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "4", "--save-every", "2", "--output", str(run)]) == 0
    step2, step4 = run / "checkpoints" / "step_000002", run / "checkpoints" / "step_000004"
    weights = step4 / "trainable.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-100] ^= 0x01  # one bit in the tensor data: still a valid safetensors file
    weights.write_bytes(bytes(raw))
    good_optimizer = (step2 / "optimizer.pt").read_bytes()
    (step2 / "optimizer.pt").write_bytes(good_optimizer[:-10])
    shutil.rmtree(run / "clip")  # an unfinished run, as after a crash

    assert cli(["finetune", "--resume", str(run), "--max-steps", "5", "--no-progress"]) == 2
    line = _error_line(capsys.readouterr().err, "finetune")
    assert "no intact checkpoint" in line
    assert f"{weights} does not match the checksum" in line and f"{step2 / 'optimizer.pt'} has" in line
    from un2clip.errors import CheckpointDamaged
    from un2clip.load import load_clip

    with pytest.raises(CheckpointDamaged, match="step_000004/trainable.safetensors"):
        load_clip(str(run))  # evaluating the unfinished run refuses it too

    (step2 / "optimizer.pt").write_bytes(good_optimizer)
    with caplog.at_level(logging.WARNING):
        assert cli(["finetune", "--resume", str(run), "--max-steps", "5", "--no-progress"]) == 0
    assert "step_000004 refused" in caplog.text and "resuming from step_000002" in caplog.text
    assert sorted(_losses(run)) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_full_disk_while_saving_stops_with_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """A write that fails with ENOSPC in the middle of checkpoint 4. Without the cleanup its temporary folder
    stays and fills the disk further; without the stop as a RunStopped the user gets Python's bare OSError
    and no word of which checkpoint is good."""
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if ".step_000004.tmp" in str(f):
            Path(f).write_bytes(b"\0" * 64)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    data = _images(tmp_path / "img", 16)
    run = tmp_path / "run"
    assert cli(FT + ["--data", str(data), "--max-steps", "6", "--save-every", "2", "--output", str(run)]) == 1
    line = _error_line(capsys.readouterr().err, "finetune")
    assert "could not write checkpoint step 4" in line and "No space left on device" in line
    assert f"the last good checkpoint, {run / 'checkpoints' / 'step_000002'}, is intact" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000002"]
    assert load_checkpoint(latest_checkpoint(run))["state"]["step"] == 2
    assert not (run / "clip").exists() and not (run / RUN_LOCK).exists()


# -- bad data ------------------------------------------------------------------------------------------

def _shard(path: Path, keys: list[str], seed: int) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for k, key in enumerate(keys):
            image = Image.fromarray(np.random.default_rng(seed + k).integers(0, 255, (24, 24, 3), dtype=np.uint8))
            for name, data in ((f"{key}.png", _png(image)), (f"{key}.txt", f"caption {key}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_truncated_shard_keeps_the_rest_and_counts_the_loss(tmp_path, caplog):
    """A shard cut in the middle of a member. Without the count the sample whose image was cut disappears
    without a trace (n_skipped 0, no warning); the samples before the cut and the other shards stay in use."""
    from un2clip.data import open_source

    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "00000.tar", ["a0", "a1", "a2", "a3"], 0)
    _shard(shards / "00001.tar", ["b0", "b1", "b2", "b3"], 10)
    with tarfile.open(shards / "00000.tar") as tar:
        cut_member = tar.getmember("a2.png")
    data = (shards / "00000.tar").read_bytes()
    (shards / "00000.tar").write_bytes(data[: cut_member.offset_data + cut_member.size // 2])
    with caplog.at_level(logging.WARNING):
        source = open_source(shards)
    assert [source.key(i) for i in range(len(source))] == ["a0", "a1", "b0", "b1", "b2", "b3"]
    assert source.n_skipped == 1
    assert "00000.tar is damaged" in caplog.text and "1 sample(s) lost their image data" in caplog.text
    records = [source.load(i) for i in range(len(source))]
    assert all(r is not None and r.text == f"caption {r.key}" for r in records)


@pytest.mark.slow
def test_image_over_the_pixel_limit_is_skipped_with_the_limit_named(tmp_path, capsys, caplog, monkeypatch):
    """Pillow's decompression-bomb guard. The image is skipped and counted like any unreadable one; without the
    warning nothing tells the user that a limit (and which) refused a valid image."""
    data = _images(tmp_path / "img", 7)  # 48x40 = 1,920 pixels each
    Image.new("RGB", (64, 64), (10, 20, 30)).save(data / "huge.png")  # 4,096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above 2,000 pixels
    with caplog.at_level(logging.WARNING):
        assert cli(FT + ["--data", str(data), "--batch-size", "8", "--max-steps", "1",
                         "--output", str(tmp_path / "run")]) == 0
    assert "skipped images: 1" in capsys.readouterr().out
    assert "huge.png skipped" in caplog.text and "MAX_IMAGE_PIXELS (now 1000)" in caplog.text


def test_seg_mask_of_another_size_and_labels_outside_the_classes(tmp_path, capsys, caplog):
    """Seg masks: without the size check a mask of another size is silently scored against a resized prediction;
    without the range check labels past the class list count as misses of whatever was predicted there."""
    data = make_generic(tmp_path / "seg", n=2, h=20, w=30)
    label = np.zeros((10, 15), np.uint8)
    label[:, :5] = 7  # outside the 3 classes
    save_label(data / "masks" / "001.png", label)  # half the size of its image
    fast = ["--short-side", "32", "--crop", "32", "--stride", "16", "--num-workers", "0", "--no-progress"]
    args = ["seg", "--method", "vanilla", "--model", "tiny", "--data", str(data), *fast]
    assert cli(args + ["--output", str(tmp_path / "out1")]) == 2
    line = _error_line(capsys.readouterr().err, "seg")
    assert f"{data / 'masks' / '001.png'} is 15x10 but its image {data / 'images' / '001.png'} is 30x20" in line
    assert "--resize-masks" in line

    with caplog.at_level(logging.WARNING):
        assert cli(args + ["--output", str(tmp_path / "out2"), "--resize-masks"]) == 0
    result = json.loads(next((tmp_path / "out2").glob("*.json")).read_text())
    assert result["metrics"]["n_out_of_range"] == 20 * 10  # 5 of 15 columns, doubled by the resize
    assert result["options"]["resize_masks"] is True
    assert "200 pixel(s) in 1 of 2 mask(s)" in caplog.text and "001.png" in caplog.text


@pytest.mark.parametrize("table", ["Question,Type,Statement\n1,Texts,a\n2,Texts,b\n",
                                   "Question ID,Type,Statement\n1,Texts,a\n2,Texts,b\n3,Texts,c\n"],
                         ids=["wrong-header", "odd-rows"])
def test_mmvp_questions_malformed(tmp_path, capsys, table):
    """MMVP's Questions.csv read strictly before any model loads; without the checks a wrong header fails as a
    KeyError and an odd row count pairs the last question with nothing."""
    root = tmp_path / "mmvp"
    root.mkdir()
    (root / "Questions.csv").write_text(table)
    assert cli(["eval", "mmvp", "--model", "tiny", "--data", str(root), "--output", str(tmp_path / "o")]) == 2
    line = _error_line(capsys.readouterr().err, "eval")
    assert str(root / "Questions.csv") in line and "Question ID, Type, Statement" in line


def test_csv_without_an_image_column(tmp_path, capsys):
    """A table without an image column is refused naming the columns found and accepted; without the check
    the first column would be read as paths and every image skipped as unreadable."""
    table = tmp_path / "data.csv"
    table.write_text("url,caption\nhttp://example.com/a.jpg,a cat\n")
    assert cli(FT + ["--data", str(table), "--max-steps", "1", "--output", str(tmp_path / "run")]) == 2
    line = _error_line(capsys.readouterr().err, "finetune")
    assert f"{table}: no image column" in line and "['url', 'caption']" in line and "img2dataset" in line


def test_empty_caption_in_contrastive_data(tmp_path, capsys, caplog):
    """Rows with a blank caption are skipped and counted, with a warning naming them. Without it CLIP is trained
    to match those images with the empty string."""
    _images(tmp_path / "img", 16)
    rows = ["image,caption"] + [f"img/{i:04d}.png,{'' if i % 4 == 0 else f'shape number {i}'}" for i in range(16)]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        assert cli(["pretrain", "--preset", "tiny", "--data", str(tmp_path / "captions.csv"), "--batch-size", "8",
                    "--max-steps", "2", "--no-progress", "--output", str(tmp_path / "run")]) == 0
    assert "4 row(s) have an empty caption (row 2, 6, 10, 14)" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["n_bad"] == 4
    assert "skipped images: 4" in capsys.readouterr().out
