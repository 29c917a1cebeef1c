"""LLaVA (transformers' ``LlavaForConditionalGeneration``) as a question answerer, and its vision tower.

- :class:`LlavaChat`: a LLaVA folder + its processor; ``answer(images, questions)`` -> generated texts,
  batched (left padding), greedy.
- :func:`swap_vision_tower`: put another CLIP image tower into a LLaVA model, checked to give the same number
  of image tokens of the same width (same image size, patch size and hidden width), so the projector and the
  processor stay valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

# LLaVA-1.5's conversation (``llava_v1``), for processors without a chat template
LLAVA_V1_PROMPT = "USER: <image>\n{question} ASSISTANT:"


class LlavaChat:
    """A LLaVA model and its processor behind one call: images + questions -> answers."""

    def __init__(self, model: Any, processor: Any, *, prompt_template: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # batched generation continues every row at its end
        if prompt_template is not None and "{question}" not in prompt_template:
            raise ValueError(f"prompt template {prompt_template!r} has no {{question}}: every question would get "
                             "the same prompt")
        self.prompt_template = prompt_template

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, prompt_template: str | None = None) -> LlavaChat:
        """Load a transformers LLaVA folder (config.json of model type ``llava``, weights, processor files)."""
        from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json: expected a transformers LLaVA folder "
                                    "(LlavaForConditionalGeneration weights, config and processor files)")
        config = AutoConfig.from_pretrained(folder)
        if config.model_type != "llava":
            raise ValueError(f"{folder} holds a {config.model_type!r} model, not a LLaVA (model type 'llava')")
        model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype or "auto").to(device)
        return cls(model, AutoProcessor.from_pretrained(folder), prompt_template=prompt_template)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt(self, question: str) -> str:
        """The full prompt of one question: the given template, the processor's chat template, else LLaVA-1.5's."""
        if self.prompt_template:
            return self.prompt_template.format(question=question)
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return LLAVA_V1_PROMPT.format(question=question)

    @torch.no_grad()
    def answer(self, images: list[Image.Image], questions: list[str], *, max_new_tokens: int = 16) -> list[str]:
        """One greedy answer per (image, question), generated as one batch."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        inputs = self.processor(images=[im.convert("RGB") for im in images],
                                text=[self.prompt(q) for q in questions], return_tensors="pt", padding=True)
        dtype = next(self.model.parameters()).dtype
        inputs = {k: (v.to(self.device, dtype) if k == "pixel_values" else v.to(self.device)) for k, v in inputs.items()}
        pad = self.processor.tokenizer.pad_token_id
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        new = out[:, inputs["input_ids"].shape[1]:]  # (B, T): the generated tokens only
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


def vision_tower(model: Any) -> torch.nn.Module:
    """The vision tower module of a LlavaForConditionalGeneration."""
    inner = getattr(model, "model", model)
    return inner.vision_tower


def swap_vision_tower(model: Any, tower: torch.nn.Module) -> list[str]:
    """Replace ``model``'s vision tower by (a copy of) the CLIP vision model ``tower``; returns notes.

    Refused unless image size, patch size and hidden width equal the original tower's (the projector's input
    width and the processor's number of image tokens depend on them).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    old = model.config.vision_config
    new = tower.config
    if not isinstance(new, CLIPVisionConfig):
        raise ValueError(f"the encoder's image tower is a {type(new).__name__}; LLaVA's tower here is a CLIP vision "
                         "model and only a CLIP ViT replaces it")
    diffs = [f"{name} {getattr(new, name)} (LLaVA's tower: {getattr(old, name)})"
             for name in ("image_size", "patch_size", "hidden_size") if getattr(new, name) != getattr(old, name)]
    if diffs:
        raise ValueError("the encoder does not fit this LLaVA's vision tower: " + ", ".join(diffs)
                         + "; the projector and the image-token count need the same image size, patch size and width")
    layer = model.config.vision_feature_layer
    layers = layer if isinstance(layer, list) else [layer]
    deepest = max(abs(x) if x < 0 else x + 1 for x in layers)
    if deepest > new.num_hidden_layers + 1:
        raise ValueError(f"LLaVA reads hidden state {layer} of its tower; the encoder has only "
                         f"{new.num_hidden_layers} layers")
    notes = [f"{name}: {getattr(old, name)} -> {getattr(new, name)}"
             for name in ("num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act")
             if getattr(old, name) != getattr(new, name)]
    config = CLIPVisionConfig(**{k: v for k, v in new.to_dict().items()
                                 if k not in ("model_type", "transformers_version", "architectures")})
    dtype = next(vision_tower(model).parameters()).dtype
    device = next(vision_tower(model).parameters()).device
    fresh = CLIPVisionModel(config)
    fresh.load_state_dict(tower.state_dict(), strict=True)
    getattr(model, "model", model).vision_tower = fresh.to(device, dtype)
    model.config.vision_config = config
    return notes
