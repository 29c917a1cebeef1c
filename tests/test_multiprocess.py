"""Two processes (accelerate, gloo on CPU) give the single-process loss curve, and resume exactly.

Tolerance: with the same global batch, per-sample draws and data order, the only difference is
the order in which DDP sums gradients (all-reduce of two halves vs one sum), i.e. float32
rounding of about 1e-7 relative per step. Over a few steps of Adam that stays far below 1e-4
relative; a real bug (different data, draws or a wrong average) changes losses by >1e-2.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import _images

ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(ACCELERATE is None, reason="accelerate's launcher is not installed")

ARGS = ["finetune", "--preset", "tiny", "--batch-size", "8", "--lr", "1e-4", "--no-progress", "--save-every", "3"]


def _run(n_proc: int, *extra: str) -> None:
    if n_proc == 1:
        cmd = [sys.executable, "-m", "un2clip.cli", *extra]
    else:
        cmd = [ACCELERATE, "launch", "--cpu", "--num_processes", str(n_proc), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "un2clip.cli", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


def _losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_and_resume_exactly(tmp_path):
    data = _images(tmp_path / "img", 48)
    common = [*ARGS, "--data", str(data)]
    _run(1, *common, "--max-steps", "6", "--output", str(tmp_path / "one"))
    _run(2, *common, "--max-steps", "6", "--output", str(tmp_path / "two"))
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert two == pytest.approx(one, rel=1e-4)

    # a 2-process run stopped at its step-3 checkpoint and resumed under 2 processes
    _run(2, *common, "--max-steps", "3", "--output", str(tmp_path / "resumed"))
    _run(2, "finetune", "--resume", str(tmp_path / "resumed"), "--max-steps", "6", "--no-progress")
    assert _losses(tmp_path / "resumed") == two
