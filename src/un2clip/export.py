"""Export a trained encoder into the formats other projects load.

``hf``: a Hugging Face folder that ``CLIPModel`` (fine-tuned image tower, original text
tower) and ``CLIPVisionModelWithProjection`` both load: the weight names of the vision
tower and projection are the same in both classes, so one folder serves both, and LLaVA
(which loads ``CLIPVisionModel`` from it) finds the fine-tuned tower.

``openclip``: the OpenAI-CLIP / open_clip state-dict layout (``visual.conv1.weight``, fused ``in_proj_weight``,
``visual.proj`` ...) that open_clip's ``create_model(..., pretrained=FILE)`` and the OpenAI ``clip`` package load;
a folder gets open_clip's Hub layout (``open_clip_model.safetensors``, ``open_clip_config.json``) and the
tokenizer files, so this toolkit loads it back alone. :func:`convert_checkpoint` goes both ways.

Weight-space interpolation (WiSE-FT, Wortsman et al. 2022): the image tower
``(1 - alpha) * original + alpha * fine_tuned`` trades the fine-tune's gain against the
original's alignment with the text tower, without training.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from un2clip.files import check_output, replace_output
from un2clip.models.clip import ClipModel


def export_hf(clip: ClipModel, output: str | Path) -> Path:
    """Write ``clip`` as a HF model folder (safetensors, config, tokenizer, preprocessor config)."""
    if clip.family == "clip":
        cfg = clip.model.config
        # CLIPVisionModelWithProjection reads projection_dim from the vision sub-config
        cfg.vision_config.projection_dim = cfg.projection_dim
        cfg.text_config.projection_dim = cfg.projection_dim
    return clip.save_pretrained(output)


def export_openclip(clip: ClipModel, output: str | Path, *, visual_only: bool = False) -> Path:
    """Write ``clip`` in the open_clip layout: a file (``.safetensors``, ``.pt``, ``.bin``) holds the state dict
    only; a folder gets ``open_clip_model.safetensors``, ``open_clip_config.json`` and the tokenizer files."""
    import json

    from un2clip.models import openclip_format as oc

    if clip.family != "clip":
        raise ValueError(f"the open_clip layout holds CLIP ViTs; this is a {clip.family} model")
    if clip.meta.pooling != "class":
        raise ValueError(f"the open_clip layout pools the class token; this model pools {clip.meta.pooling!r} "
                         "(open_clip would compute another image embedding): export it as a HF folder")
    state = oc.hf_to_openclip(clip.model.state_dict(), visual_only=visual_only)
    cfg = oc.openclip_config(clip.model.config, visual_only=visual_only)
    output = Path(output)
    if output.suffix in oc.CHECKPOINT_SUFFIXES:
        return oc.write_state_dict(state, output, metadata={"open_clip_config": json.dumps(cfg)})
    output.mkdir(parents=True, exist_ok=True)
    oc.write_state_dict(state, output / oc.OPENCLIP_WEIGHT_FILES[0])
    proc = clip.processing
    side = {"model_cfg": cfg, "preprocess_cfg": {"mean": list(proc.mean), "std": list(proc.std),
                                                  "interpolation": "bicubic", "resize_mode": "shortest"}}
    (output / oc.OPENCLIP_CONFIG_FILE).write_text(json.dumps(side, indent=2) + "\n")
    clip.tokenizer.save_pretrained(output)
    return output


def convert_checkpoint(src: str | Path, to: str, output: str | Path, *, config: str | None = None,
                       base: str | None = None, activation: str | None = None, visual_only: bool = False,
                       overwrite: bool = False) -> Path:
    """Convert between the HF and the open_clip layouts. An existing ``output`` is refused unless ``overwrite``
    (then replaced whole, once the new one is written); an input never is (see :func:`un2clip.files.check_output`).

    ``to="hf"``: ``src`` is an OpenAI-CLIP / open_clip checkpoint (see :func:`un2clip.load.clip_from_checkpoint`
    for ``config``, ``base``, ``activation``); the result is a HF folder. ``to="openclip"``: ``src`` is anything
    :func:`un2clip.load.load_clip` takes; with ``config`` its shapes must match that architecture.
    """
    from un2clip.load import clip_from_checkpoint, load_clip
    from un2clip.models import openclip_format as oc

    if to not in ("hf", "openclip"):
        raise ValueError(f"--to must be hf or openclip, got {to!r}")
    check_output(output, inputs=[src, base, config], overwrite=overwrite)
    if to == "hf":
        if visual_only:
            raise ValueError("--visual-only goes with --to openclip (a HF folder holds the whole model)")
        if not oc.is_openclip_checkpoint(src):
            raise ValueError(f"{src} is not an OpenAI-CLIP / open_clip checkpoint (a {'/'.join(oc.CHECKPOINT_SUFFIXES)} "
                             f"file or a folder with {oc.OPENCLIP_CONFIG_FILE}); it may already be a HF model")
        converted = clip_from_checkpoint(src, config=config, base=base, activation=activation)
        with replace_output(output) as tmp:
            export_hf(converted, tmp)
        return Path(output)
    if base or activation:
        raise ValueError("--base and --activation go with --to hf")
    clip = load_clip(str(src))
    if config:
        if clip.family != "clip":
            raise ValueError(f"the open_clip layout holds CLIP ViTs; {src} is a {clip.family} model")
        state = oc.hf_to_openclip(clip.model.state_dict(), visual_only=visual_only)
        wanted = oc.resolve_config(config)
        named = oc.hf_config(wanted, hidden_act="gelu")
        oc.check_shapes(state, oc.expected_shapes(named, visual_only=visual_only), what=f"the config {config}")
        # the config also names the activation (open_clip reads ViT-B-32 as GELU): a model with another is refused
        acts = {clip.model.config.vision_config.hidden_act} | (
            set() if visual_only else {clip.model.config.text_config.hidden_act})
        if acts != {oc.config_activation(wanted)}:
            if config.removesuffix(oc.QUICKGELU_SUFFIX) in oc.OPENCLIP_CONFIGS:
                fix = "pass --config " + (f"{config}{oc.QUICKGELU_SUFFIX}" if acts == {"quick_gelu"}
                                          else config.removesuffix(oc.QUICKGELU_SUFFIX))
            else:
                fix = f"set quick_gelu to {str(acts == {'quick_gelu'}).lower()} in {config}"
            raise ValueError(f"--config {config} means {oc.config_activation(wanted)} but {src} uses "
                             f"{'/'.join(sorted(acts))}: open_clip would build it with the wrong activation; {fix}")
    with replace_output(output) as tmp:
        export_openclip(clip, tmp, visual_only=visual_only)
    return Path(output)


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


def export_model(model: str, output: str | Path, *, alpha: float | None = None, original: str | None = None,
                 format: str = "hf", visual_only: bool = False, overwrite: bool = False) -> tuple[Path, str]:
    """Write ``model`` (any spec :func:`un2clip.load.load_clip` takes) as a HF folder (``format="hf"``) or in the
    open_clip layout (``"openclip"``); with ``alpha``, its image tower interpolated from ``original`` (default:
    the encoder the run ``model`` started from). An existing ``output`` is refused unless ``overwrite``; an input
    never is overwritten (:func:`un2clip.files.check_output`).

    Returns the path written and, with ``alpha``, what the image tower mixes ("" without).
    """
    from un2clip.load import load_clip

    if format not in ("hf", "openclip"):
        raise ValueError(f"format must be hf or openclip, got {format!r}")
    if visual_only and format != "openclip":
        raise ValueError("--visual-only goes with --format openclip")
    if alpha is not None and not 0.0 <= alpha <= 1.0:  # before any model or run directory is looked at
        raise ValueError(f"--alpha must be in [0, 1] (0: the original, 1: the fine-tuned model), got {alpha}")
    check_output(output, inputs=[model, original], overwrite=overwrite)

    def write(clip: ClipModel) -> Path:
        with replace_output(output) as tmp:
            if format == "hf":
                export_hf(clip, tmp)
            else:
                export_openclip(clip, tmp, visual_only=visual_only)
        return Path(output)

    if alpha is None:
        if original:
            raise ValueError("--original goes with --alpha")
        return write(load_clip(model)), ""
    original, random_weights = (original, False) if original else original_spec(model)
    mixed = interpolate_clip(load_clip(original, random_weights=random_weights), load_clip(model), alpha)
    return write(mixed), f"image tower = {1 - alpha:g} * {original} + {alpha:g} * {model}"


def swap_llava_tower(llava_dir: str | Path, encoder: str, output: str | Path, *,
                     overwrite: bool = False) -> tuple[Path, list[str]]:
    """Write a copy of the LLaVA folder ``llava_dir`` whose vision tower is ``encoder``'s image tower.

    ``encoder``: anything :func:`un2clip.load.load_clip` takes (an export, a run, a converted checkpoint ...) or
    a ``CLIPVisionModel`` folder. Returns the folder and notes on what changed besides the weights. An existing
    ``output`` is refused unless ``overwrite``; ``llava_dir`` and ``encoder`` never are overwritten.
    """
    import json

    from transformers import AutoProcessor, CLIPVisionModel, LlavaForConditionalGeneration

    from un2clip.load import load_clip
    from un2clip.models.llava import swap_vision_tower

    llava_dir = Path(llava_dir)
    check_output(output, inputs=[llava_dir, encoder], overwrite=overwrite, option="--output")
    cfg_file = llava_dir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{llava_dir} has no config.json: expected a transformers LLaVA folder")
    if json.loads(cfg_file.read_text()).get("model_type") != "llava":
        raise ValueError(f"{llava_dir} is not a LLaVA folder (its config.json has no model_type 'llava')")
    enc_cfg = Path(encoder) / "config.json"
    processing = None
    if enc_cfg.is_file() and json.loads(enc_cfg.read_text()).get("model_type") == "clip_vision_model":
        tower = CLIPVisionModel.from_pretrained(encoder)
    else:
        clip = load_clip(encoder)
        if clip.family != "clip":
            raise ValueError(f"{encoder} is a {clip.family} model; this LLaVA's tower is a CLIP ViT")
        tower, processing = clip.vision_model, clip.processing
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype="auto")
    processor = AutoProcessor.from_pretrained(llava_dir)
    notes = swap_vision_tower(model, tower)
    proc = processor.image_processor
    if processing is not None and (tuple(proc.image_mean) != tuple(processing.mean)
                                   or tuple(proc.image_std) != tuple(processing.std)):
        notes.append(f"image mean/std of the encoder {processing.mean}/{processing.std} differ from the LLaVA "
                     f"processor's {tuple(proc.image_mean)}/{tuple(proc.image_std)}: the processor is kept")
    with replace_output(output) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(output), notes
