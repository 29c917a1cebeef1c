"""The LLaVA-1.5 recipe's defaults per stage (``un2clip llava train`` and ``un2clip compare --llava`` share them)."""

from __future__ import annotations

import math

#: LLaVA-1.5's scripts/v1_5/pretrain.sh and finetune.sh: learning rate, global batch (8 GPUs), conversation style;
#: stage lm (ours, Vicuna's role): LLaVA's projector learning rate, which trains a small LM from scratch quickly,
#: and a batch of 64 texts (a few steps a second on a CPU for llava-tiny's LM)
STAGE_DEFAULTS = {"lm": {"lr": 1e-3, "batch_size": 64}, "pretrain": {"lr": 1e-3, "batch_size": 256},
                  "finetune": {"lr": 2e-5, "batch_size": 128}}
#: passes over the data: one in LLaVA's stages; EPOCHS_LM in stage lm: on the world's 20,000 captions (625 steps
#: of 64, 6 min on one shared CPU core) llava-tiny's LM reaches a loss of 1.00 after the first pass and 0.99 after
#: the second, so two passes reach the plateau with a margin at little cost
EPOCHS_LM = 2.0
WARMUP_RATIO = 0.03
STAGE_OBJECTIVES = {"lm": "llava-lm", "pretrain": "llava", "finetune": "llava"}


def llava_defaults(stage: str, *, n_samples: int | None, batch_size: int | None, max_steps: int | None,
                   epochs: float = 1.0, warmup_ratio: float = WARMUP_RATIO) -> dict:
    """RunConfig defaults of a LLaVA stage: its learning rate and global batch, a cosine schedule, ``epochs`` over
    ``n_samples`` conversations as steps (at least one) and ``warmup_ratio`` of the steps (rounded up, as the
    Hugging Face trainer LLaVA uses) as linear warm-up. Values the user gives (``batch_size``, ``max_steps``)
    enter the computation."""
    if not 0 < epochs < math.inf or not 0 <= warmup_ratio < 1:  # NaN and inf fail too
        raise ValueError(f"--epochs must be finite and > 0 and --warmup-ratio in [0, 1), got {epochs} and {warmup_ratio}")
    out = {"preset": "llava-tiny", "lr_schedule": "cosine", "weight_decay": 0.0, "max_grad_norm": 1.0,
           **STAGE_DEFAULTS[stage]}
    batch = batch_size or out["batch_size"]
    steps = max_steps
    if steps is None and n_samples is not None:
        steps = max(1, int(n_samples * epochs) // batch)
        out["max_steps"] = steps
    if steps is not None:
        out["warmup_steps"] = math.ceil(warmup_ratio * steps)
    return out
