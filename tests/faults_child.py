"""Run one `un2clip` command with a fault injected; tests/test_faults.py starts it as a subprocess.

    python tests/faults_child.py kill-while-saving STEP ARGS...

``kill-while-saving STEP``: SIGKILL this process in the middle of writing checkpoint STEP, after
its weights file and half of its optimiser file are on disk and before anything is renamed into
place. The library is not changed: ``torch.save`` is replaced in this process only.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

from un2clip.cli import main


def kill_while_saving(step: int) -> None:
    real_save = torch.save
    folder = f".step_{step:06d}.tmp"

    def save(obj, f, *args, **kwargs):
        if folder in str(f):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    mode, step, *argv = sys.argv[1:]
    if mode != "kill-while-saving":
        raise SystemExit(f"unknown fault {mode!r}")
    kill_while_saving(int(step))
    sys.exit(main(argv))
