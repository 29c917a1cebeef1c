"""LoRA adapters on the linear layers of an image tower (peft), and merging them back.

``add_lora`` injects low-rank adapters in place (``W x + (alpha / rank) * B A x``, ``B``
starting at zero, so the model is unchanged until it trains) and freezes everything
else in the module; ``merge_lora`` folds the adapters into the base weights and puts
the plain ``nn.Linear`` layers back, so the result is an ordinary HF module that any
tool loads. Needs the ``lora`` extra: ``pip install 'un2clip[lora]'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: the linear layers of a HF CLIP / SigLIP vision transformer block
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _peft():
    try:
        import peft
    except ImportError:
        raise ModuleNotFoundError(
            "LoRA needs peft, which is not installed: pip install 'un2clip[lora]'", name="peft") from None
    return peft


LORA_BIAS = ("none", "lora_only")


def linear_layers(module: nn.Module, within: Sequence[str] = ("",)) -> list[str]:
    """Full names of ``module``'s ``nn.Linear`` layers that are, or sit under, one of ``within`` ("" = all)."""
    def inside(name: str) -> bool:
        return any(not w or name == w or name.startswith(w + ".") for w in within)

    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and inside(name)]


def add_lora(module: nn.Module, *, rank: int, alpha: float | None = None,
             targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0, dropout: float = 0.0,
             bias: str = "none") -> list[str]:
    """Inject LoRA adapters into ``module``'s linear layers named in ``targets``; returns the trainable names.

    A target is a layer's last name (``q_proj``: every such layer) or its full dotted name. ``alpha``
    defaults to ``rank`` (scale 1); ``dropout`` is applied to the adapters' input; ``bias="lora_only"``
    also trains the biases of the adapted layers (peft's option, GenHancer's setting). Everything else
    is frozen. The random init of the ``A`` matrices comes from ``seed``, so every process (and a
    rebuilt run) starts identical.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    if bias not in LORA_BIAS:
        raise ValueError(f"LoRA bias must be one of {LORA_BIAS}, got {bias!r}")
    targets = list(targets)
    if not targets:
        raise ValueError("LoRA needs at least one target layer name")
    peft = _peft()
    full = {name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    present = {name.rsplit(".", 1)[-1] for name in full}
    unknown = sorted(t for t in targets if t not in present and t not in full)
    if unknown:
        raise ValueError(f"LoRA target(s) {unknown} are not linear layers of the image tower; "
                         f"its linear layers: {sorted(present)}")
    config = peft.LoraConfig(r=rank, lora_alpha=float(rank if alpha is None else alpha),
                             target_modules=targets, lora_dropout=float(dropout), bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(config, module)
    module.requires_grad_(False)
    names = []
    for name, p in module.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            names.append(name)
    if bias == "lora_only":
        from peft.tuners.lora import LoraLayer

        for name, m in module.named_modules():
            base = m.get_base_layer() if isinstance(m, LoraLayer) else None
            if base is not None and getattr(base, "bias", None) is not None:
                base.bias.requires_grad_(True)
                names.append(f"{name}.base_layer.bias")
    return names


def has_lora(module: nn.Module) -> bool:
    return any("lora_" in name for name, _ in module.named_parameters())


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and swap the plain layer back in (in place)."""
    if not has_lora(module):
        return module
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in wrapped:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return module
