"""Speed switches of the training step: attention kernels, memory format, torch.compile with an eager fallback.

Each takes the modules it changes as arguments; the training loop and the benchmark call
them with what the objective names (``Objective.compile_targets``).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

ATTENTION_KINDS = ("sdpa", "eager")


def set_attention(module: nn.Module, kind: str) -> None:
    """Attention of every HF transformer and diffusers model inside ``module``.

    ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (HF ``attn_implementation="sdpa"``,
    diffusers ``AttnProcessor2_0``); ``"eager"``: the explicit softmax(QK^T)V of both libraries.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    from transformers import PreTrainedModel

    for m in module.modules():
        if isinstance(m, PreTrainedModel):
            m.set_attn_implementation(kind)
        elif hasattr(m, "set_attn_processor") and hasattr(m, "attn_processors"):
            m.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def attention_kinds(module: nn.Module) -> set[str]:
    """Names of the attention code paths inside ``module``: HF ``attn_implementation`` values and
    diffusers processor classes (e.g. ``{"sdpa", "AttnProcessor2_0"}``)."""
    from transformers import PreTrainedModel

    found: set[str] = set()
    for m in module.modules():
        if isinstance(m, PreTrainedModel):
            found.add(str(m.config._attn_implementation))
        elif hasattr(m, "attn_processors"):
            found.update(type(p).__name__ for p in m.attn_processors.values())
    return found


def use_channels_last(module: nn.Module) -> nn.Module:
    """4-D weights (convolutions) in channels-last (NHWC) memory format; convolutions then run NHWC."""
    return module.to(memory_format=torch.channels_last)


class CompiledModules:
    """``torch.compile`` modules in place (``nn.Module.compile``: names, state dicts and attributes unchanged)."""

    def __init__(self, modules: Iterable[nn.Module], **compile_kwargs):
        self.modules = list(modules)
        for m in self.modules:
            m.compile(**compile_kwargs)

    @property
    def active(self) -> bool:
        return any(m._compiled_call_impl is not None for m in self.modules)

    def revert(self) -> None:
        """Back to eager: ``nn.Module.__call__`` uses ``_compiled_call_impl`` only when it is set."""
        for m in self.modules:
            m._compiled_call_impl = None


def compile_with_fallback(modules: Iterable[nn.Module], trial: Callable[[], None], **compile_kwargs) -> bool:
    """Compile ``modules`` in place and run ``trial()`` (a forward and backward on real data) through them.

    Compilation is lazy (forward graphs compile on the first call, backward graphs on the first
    backward), so the trial is where it fails if it fails; then the modules go back to eager,
    a warning is printed and ``trial`` is not repeated. Returns True when compiled code runs.
    """
    compiled = CompiledModules(modules, **compile_kwargs)
    try:
        trial()
    except Exception as err:  # compiler, backend or toolchain failure: the eager step still works
        compiled.revert()
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        msg = f"torch.compile failed ({type(err).__name__}: {first_line}); running eagerly"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        print(f"warning: {msg}", file=sys.stderr)
        return False
    return True


def trial_step(objective: nn.Module, batch: dict, autocast: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], None]:
    """A forward and backward of ``objective`` on ``batch`` that leaves no gradients and no RNG draws behind."""

    def run() -> None:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            try:
                with autocast():
                    loss = objective(batch)["loss"]
                loss.backward()
            finally:
                for p in objective.parameters():
                    p.grad = None

    return run
