"""Export a trained encoder into the formats other projects load.

``hf``: a Hugging Face folder that ``CLIPModel`` (fine-tuned image tower, original text
tower) and ``CLIPVisionModelWithProjection`` both load: the weight names of the vision
tower and projection are the same in both classes, so one folder serves both, and LLaVA
(which loads ``CLIPVisionModel`` from it) finds the fine-tuned tower.

Weight-space interpolation (WiSE-FT, Wortsman et al. 2022): the image tower
``(1 - alpha) * original + alpha * fine_tuned`` trades the fine-tune's gain against the
original's alignment with the text tower, without training.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from un2clip.models.clip import ClipModel


def export_hf(clip: ClipModel, output: str | Path) -> Path:
    """Write ``clip`` as a HF model folder (safetensors, config, tokenizer, preprocessor config)."""
    if clip.family == "clip":
        cfg = clip.model.config
        # CLIPVisionModelWithProjection reads projection_dim from the vision sub-config
        cfg.vision_config.projection_dim = cfg.projection_dim
        cfg.text_config.projection_dim = cfg.projection_dim
    return clip.save_pretrained(output)


def interpolate_state_dicts(original: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * original + alpha * finetuned`` per tensor; alpha 0 and 1 give either side exactly.

    Both dicts must hold the same keys and shapes; non-float tensors (e.g. position ids) must be equal.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0: original, 1: fine-tuned), got {alpha}")
    missing, extra = sorted(set(original) - set(finetuned)), sorted(set(finetuned) - set(original))
    if missing or extra:
        raise ValueError(f"the two models' weights do not match: only in the original {missing[:5]}, "
                         f"only in the fine-tuned {extra[:5]}")
    out = {}
    for key, a in original.items():
        b = finetuned[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shape {tuple(a.shape)} in the original, {tuple(b.shape)} in the fine-tuned")
        if not a.is_floating_point():
            if not torch.equal(a, b.to(a.device)):
                raise ValueError(f"{key}: non-float tensors differ, they cannot be interpolated")
            out[key] = a.clone()
        elif alpha == 0.0:
            out[key] = a.clone()
        elif alpha == 1.0:
            out[key] = b.to(a.device, a.dtype).clone()
        else:
            mixed = (1.0 - alpha) * a.float() + alpha * b.to(a.device).float()
            out[key] = mixed.to(a.dtype)
    return out


def interpolate_clip(original: ClipModel, finetuned: ClipModel, alpha: float) -> ClipModel:
    """A copy of ``original`` whose image tower and projection are interpolated towards ``finetuned``'s."""
    mixed = interpolate_state_dicts(original.vision_state_dict(), finetuned.vision_state_dict(), alpha)
    out = copy.deepcopy(original)
    out.model.load_state_dict(mixed, strict=False)
    return out


def original_spec(run_dir: str | Path) -> tuple[str, bool]:
    """(encoder spec, random_weights) a fine-tune run started from, read from its run marker."""
    from un2clip.load import missing_local_path
    from un2clip.runs import RUN_MARKER, read_run_marker

    if not (Path(run_dir) / RUN_MARKER).exists():
        raise ValueError(f"{run_dir} is not a run directory (no {RUN_MARKER}): pass --original SPEC, "
                         "the encoder to interpolate from")
    info = read_run_marker(Path(run_dir))
    if not info.get("clip"):
        raise ValueError(f"{run_dir} is a {info.get('kind')} run with no CLIP model")
    spec = str(info["clip"])
    if missing_local_path(spec):
        raise ValueError(f"{run_dir} started from {spec}, which is not there any more (moved or deleted?): "
                         "pass --original SPEC, the encoder to interpolate from")
    return spec, bool(info.get("random_weights"))


def export_model(model: str, output: str | Path, *, alpha: float | None = None,
                 original: str | None = None) -> tuple[Path, str]:
    """Write ``model`` (any spec :func:`un2clip.load.load_clip` takes) as a HF folder; with ``alpha``, its image
    tower interpolated from ``original`` (default: the encoder the run ``model`` started from).

    Returns the folder and, with ``alpha``, what the image tower mixes ("" without).
    """
    from un2clip.load import load_clip

    if alpha is None:
        if original:
            raise ValueError("--original goes with --alpha")
        return export_hf(load_clip(model), output), ""
    original, random_weights = (original, False) if original else original_spec(model)
    mixed = interpolate_clip(load_clip(original, random_weights=random_weights), load_clip(model), alpha)
    return export_hf(mixed, output), f"image tower = {1 - alpha:g} * {original} + {alpha:g} * {model}"
