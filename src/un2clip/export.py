"""Export a trained encoder into the formats other projects load.

``hf``: a Hugging Face folder that ``CLIPModel`` (fine-tuned image tower, original text
tower) and ``CLIPVisionModelWithProjection`` both load: the weight names of the vision
tower and projection are the same in both classes, so one folder serves both, and LLaVA
(which loads ``CLIPVisionModel`` from it) finds the fine-tuned tower.
"""

from __future__ import annotations

from pathlib import Path

from un2clip.models.clip import ClipModel


def export_hf(clip: ClipModel, output: str | Path) -> Path:
    """Write ``clip`` as a HF model folder (safetensors, config, tokenizer, preprocessor config)."""
    if clip.family == "clip":
        cfg = clip.model.config
        # CLIPVisionModelWithProjection reads projection_dim from the vision sub-config
        cfg.vision_config.projection_dim = cfg.projection_dim
        cfg.text_config.projection_dim = cfg.projection_dim
    return clip.save_pretrained(output)
