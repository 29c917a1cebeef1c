"""What every objective offers the training loop.

An objective is an ``nn.Module`` whose ``forward(batch, generator)`` returns
``{"loss": scalar, **metrics}``. It also says which parameters train, how one data record
becomes tensors (``transform``, run in data-loader workers), what a checkpoint holds, and
what the finished run writes (``save_outputs``).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from un2clip.data.sources import Record


def check_state_keys(own: dict, state: dict, what: str) -> None:
    """Refuse a checkpoint ``state`` whose keys are not exactly ``own``'s, naming up to five of each kind."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def module_state(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``module``'s whole state (parameters and buffers, e.g. batch-norm statistics that a resumed run needs),
    detached, keys under ``prefix``."""
    return {f"{prefix}{k}": v.detach() for k, v in module.state_dict().items()}


class Objective(nn.Module):
    """Base class: subclasses implement ``transform``, ``forward`` and ``save_outputs``."""

    #: short name written into the run's marker file
    kind: str = "objective"

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the weights that train: what a checkpoint stores (frozen parts are rebuilt)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state_keys(self.trainable_state_dict(), state, "the objective")
        self.load_state_dict(state, strict=False)

    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor] | None:
        """One record -> tensors of one sample (runs in data-loader workers)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One micro-batch -> {"loss": scalar, **metrics}. Random draws come from ``batch["draw_seed"]``."""
        raise NotImplementedError

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations of the trainable transformer in the backward pass."""
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing_enable") and getattr(module, "supports_gradient_checkpointing", False):
                module.gradient_checkpointing_enable()
                return

    def compile_targets(self) -> list[nn.Module]:
        """The modules worth ``torch.compile`` (where the step's FLOPs are); none by default."""
        return []

    def save_outputs(self, folder: Path) -> None:
        """Write the trained models of a finished (or checkpointed) run into ``folder``."""
        raise NotImplementedError

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Store frozen parts in the compute dtype (e.g. bf16): they need no fp32 master weights."""

    def set_train_mode(self) -> None:
        """Train mode for trainable parts only; frozen parts stay in eval mode."""
        self.train()
