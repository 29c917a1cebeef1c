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
        """Load a transformers LLaVA folder (config.json of model type ``llava``, weights, processor files), or the
        ``llava/`` of a ``un2clip llava train`` run."""
        from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

        folder = Path(folder)
        if not (folder / "config.json").is_file() and (folder / "llava" / "config.json").is_file():
            folder = folder / "llava"
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


# -- building a LLaVA for training ------------------------------------------------------------------------------

#: LLaVA-1.5's choices: the penultimate layer of the tower, its patch tokens (CLS dropped), a 2-layer GELU MLP
VISION_FEATURE_LAYER = -2
VISION_FEATURE_SELECT = "default"
PROJECTOR_ACT = "gelu"
LLAVA_TINY_VOCAB_FILE = "llava_tiny_vocab.txt"


def add_image_token(tokenizer: Any) -> int:
    """Give ``tokenizer`` the ``<image>`` special token (and a pad token: its unk, as LLaVA does for Vicuna, else
    a new one) and return the image token's id."""
    from un2clip.data.conversations import IMAGE_TOKEN

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def build_llava(tower: torch.nn.Module, language_model: Any, tokenizer: Any, *, seed: int = 0) -> Any:
    """A LlavaForConditionalGeneration of LLaVA-1.5's design around a CLIP image tower and a causal LM.

    ``tower``: a CLIP vision transformer (``ClipModel.vision_model``); ``language_model``: a transformers causal
    LM (its weights are copied; its embeddings grow by the tokens :func:`add_image_token` added to ``tokenizer``).
    The projector (``linear_1``, GELU, ``linear_2``: LLaVA's ``mlp2x_gelu``) starts from ``seed``.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    image_token = add_image_token(tokenizer)
    if language_model.get_input_embeddings().num_embeddings < len(tokenizer):
        language_model.resize_token_embeddings(len(tokenizer))
    vision = tower.config
    text = language_model.config
    text.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_token,
                         image_seq_length=(vision.image_size // vision.patch_size) ** 2,
                         vision_feature_layer=VISION_FEATURE_LAYER,
                         vision_feature_select_strategy=VISION_FEATURE_SELECT, projector_hidden_act=PROJECTOR_ACT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    swap_vision_tower(model, tower)
    inner = getattr(language_model, "model", None)
    if inner is None or not hasattr(language_model, "lm_head"):
        raise ValueError(f"{type(language_model).__name__} is not a decoder-only causal LM with .model and .lm_head")
    model.model.language_model.load_state_dict(inner.state_dict())
    model.lm_head.load_state_dict(language_model.lm_head.state_dict())
    return model.to(next(language_model.parameters()).dtype)


VISION_SELECTS = ("default", "full")


def set_vision_select(model: Any, processor: Any, select: str) -> None:
    """Make ``model`` and ``processor`` read the tower's patch tokens alone (``"default"``, LLaVA-1.5) or the class
    token with them (``"full"``: one image token more); the projector applies to every token, so its weights
    stay valid."""
    if select not in VISION_SELECTS:
        raise ValueError(f"vision feature select must be one of {list(VISION_SELECTS)}, got {select!r}")
    model.config.vision_feature_select_strategy = select
    getattr(model, "model", model).config.vision_feature_select_strategy = select
    processor.vision_feature_select_strategy = select


def llava_processor(model: Any, tokenizer: Any, *, size: int, mean: tuple, std: tuple,
                    chat_template: str | None = None) -> Any:
    """The LlavaProcessor of a model built by :func:`build_llava`: CLIP resize + centre crop to ``size``, the
    tokenizer, and as many image tokens as the tower gives patches."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                               image_mean=list(mean), image_std=list(std))
    return LlavaProcessor(image_processor=image, tokenizer=tokenizer,
                          patch_size=model.config.vision_config.patch_size,
                          vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                          num_additional_image_tokens=1, chat_template=chat_template)


def chat_template_for(prompt: str) -> str:
    """A one-question chat template (jinja) that writes ``prompt`` (a ``{question}`` template holding
    ``<image>``) for the user's text, so that :class:`LlavaChat` asks as the model was trained."""
    head, tail = prompt.split("{question}")
    esc = lambda s: s.replace("\n", "\\n").replace("'", "\\'")  # noqa: E731
    return ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '" + esc(head) + "' }}"
            "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
            "{{ '" + esc(tail) + "' }}{% endif %}{% endfor %}")


def llava_tiny_words() -> list[str]:
    """The word vocabulary of ``llava-tiny``'s language model (``models/data/llava_tiny_vocab.txt``): the shapes
    world's words and those of its question sets and of LLaVA's prompts (a test keeps it complete)."""
    text = (Path(__file__).parent / "data" / LLAVA_TINY_VOCAB_FILE).read_text(encoding="utf-8")
    return [w for w in text.splitlines() if w]


def build_tiny_language_model(seed: int = 0, *, max_length: int = 512) -> tuple[Any, Any]:
    """(a 2-layer Llama of width 128 with random weights from ``seed``, its word tokenizer) for ``llava-tiny``."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM

    from un2clip.models.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(llava_tiny_words(), context_length=max_length)
    # a causal LM's prompt starts with BOS and does not end: no EOS after it (the CLIP tokenizer ends with one)
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    add_image_token(tokenizer)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=max_length,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer
