"""Any model spec -> a model: a preset name, a Hub id, a local folder, a run folder, an export.

Above :mod:`un2clip.models` (the presets' builders) and :mod:`un2clip.runs` (run folders on
disk); below everything that loads a model (objectives, training, evaluation, export).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from un2clip.errors import HubUnavailable
from un2clip.models.audio import AudioClip
from un2clip.models.clip import ClipModel
from un2clip.models.openclip_format import is_openclip_checkpoint
from un2clip.models.presets import PRESETS
from un2clip.models.t2i import TextToImageDecoder, clip_text_encoder
from un2clip.models.unclip import UnclipDecoder
from un2clip.runs import RUN_MARKER, checkpoint_weights, is_run, read_run_marker

log = logging.getLogger(__name__)

__all__ = ["RUN_MARKER", "check_pair", "clip_from_checkpoint", "hub_error", "load_clip", "load_decoder", "load_run_clip",
           "load_audio_model", "load_run_decoder", "load_t2i_decoder", "load_vae", "missing_local_path"]


def missing_local_path(spec: str) -> bool:
    """True when ``spec`` can only be a local path (absolute, ./, or more than one '/') and is not there."""
    return (spec.startswith(("/", ".")) or spec.count("/") > 1) and not Path(spec).exists()


def _pretrained_spec(spec: str) -> str:
    """``spec`` for ``from_pretrained``: an existing folder or a Hub id, else a one-line error naming it."""
    if missing_local_path(spec):
        raise ValueError(f"{spec}: no such folder (moved or deleted?); a Hub id has at most one '/'")
    if Path(spec).exists() or "/" in spec:
        return spec
    raise ValueError(f"{spec!r} is neither a preset ({', '.join(sorted(PRESETS))}), an existing folder nor a Hub id")


Model = TypeVar("Model")

# exception classes (by name, anywhere in the chain) that mean "the Hub did not answer"
_NO_CONNECTION = {"LocalEntryNotFoundError", "ConnectionError", "TransportError", "Timeout", "TimeoutError"}
_NO_REPOSITORY = {"RepositoryNotFoundError", "GatedRepoError"}


def hub_error(spec: str, err: BaseException) -> HubUnavailable | None:
    """The one-line error of a Hub id that could not be fetched, or None when ``err`` is something else.

    huggingface_hub's own errors arrive wrapped (transformers and diffusers re-raise them as a
    plain OSError with a message over several lines), so the whole chain of causes is read.
    """
    from huggingface_hub import constants

    names: set[str] = set()
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        names |= {cls.__name__ for cls in type(err).__mro__}
        err = err.__cause__ or err.__context__
    local_copy = "pass the path of a local copy instead of the id"
    if "OfflineModeIsEnabled" in names or (constants.HF_HUB_OFFLINE and "LocalEntryNotFoundError" in names):
        return HubUnavailable(f"{spec}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
                              f"downloading it; {local_copy}, or unset HF_HUB_OFFLINE with a network")
    if names & _NO_REPOSITORY:
        return HubUnavailable(f"{spec}: no such model on the Hugging Face Hub, or it is private or gated (log in "
                              f"with `hf auth login`); for a local folder, check the path")
    if names & _NO_CONNECTION:
        return HubUnavailable(f"{spec}: the Hugging Face Hub could not be reached and the model is not in the "
                              f"local cache; {local_copy}, or set HF_HUB_OFFLINE=1 to fail at once instead of "
                              "retrying")
    return None


def _fetch(load: Callable[[str], Model], spec: str) -> Model:
    """``load(spec)``; a Hub id that cannot be fetched becomes one :class:`HubUnavailable` naming it."""
    try:
        return load(spec)
    except OSError as err:
        found = None if Path(spec).exists() else hub_error(spec, err)
        if found is None:
            raise
        raise found from err


def load_clip(spec: str, *, random_weights: bool = False) -> ClipModel:
    """A preset name, a HF folder or Hub id, a training run directory, an exported folder, or an OpenAI-CLIP /
    open_clip checkpoint (file or open_clip folder, see :func:`clip_from_checkpoint`) -> ClipModel."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        if random_weights or preset.clip.startswith("builtin:"):
            return preset.build_clip()
        return _fetch(ClipModel.from_pretrained, preset.clip)
    path = Path(spec)
    if is_run(path):
        return load_run_clip(path)
    if is_openclip_checkpoint(path):
        return clip_from_checkpoint(path)
    return _fetch(ClipModel.from_pretrained, _pretrained_spec(spec))


def load_decoder(spec: str, *, random_weights: bool = False, embed_dim: int | None = None) -> UnclipDecoder:
    """A preset name, a decoder folder (ours or the diffusers pipeline layout), a train-decoder run or a Hub id."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        if preset.decoder is None:
            raise ValueError(f"preset {spec!r} has no public unCLIP decoder: pass --decoder DIR "
                             "(a folder written by `un2clip train-decoder`)")
        if preset.decoder_kind != "unclip":
            raise ValueError(f"preset {spec!r} has a text-to-image decoder ({preset.decoder}), not an unCLIP one: "
                             "it serves `un2clip diva`; pass an unCLIP --decoder")
        if random_weights or preset.decoder.startswith("builtin:"):
            assert preset.build_decoder is not None
            return preset.build_decoder()
        return _fetch(UnclipDecoder.from_pretrained, preset.decoder)
    path = Path(spec)
    if is_run(path):
        return load_run_decoder(path)
    return _fetch(UnclipDecoder.from_pretrained, _pretrained_spec(spec))


def load_t2i_decoder(spec: str, *, random_weights: bool = False) -> TextToImageDecoder:
    """A preset name, a text-to-image folder (the StableDiffusionPipeline layout), a t2i-decoder run or a Hub id."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        if preset.decoder_kind != "t2i":
            t2i = ", ".join(sorted(p.name for p in PRESETS.values() if p.decoder_kind == "t2i"))
            raise ValueError(f"preset {spec!r} has no text-to-image decoder; presets that have one: {t2i}")
        if random_weights or preset.decoder.startswith("builtin:"):
            assert preset.build_decoder is not None
            return preset.build_decoder()
        return _fetch(TextToImageDecoder.from_pretrained, preset.decoder)
    path = Path(spec)
    if is_run(path):
        if (path / "decoder" / "unet").is_dir():
            return TextToImageDecoder.from_pretrained(path / "decoder")
        return _t2i_from_checkpoint(path)
    return _fetch(TextToImageDecoder.from_pretrained, _pretrained_spec(spec))


def load_vae(spec: str):
    """A diffusers AutoencoderKL: a `un2clip train-autoencoder` run, a decoder or pipeline folder (its vae/), a
    folder that is the VAE itself, or a Hub id (its vae/ subfolder when it has one)."""
    from diffusers import AutoencoderKL

    from un2clip.models.diffusion import has_subfolder

    path = Path(spec)
    if is_run(path):
        if not (path / "decoder" / "vae").is_dir():
            raise ValueError(f"{spec} is a run without decoder/vae/: a finished `un2clip train-autoencoder` run has one")
        return AutoencoderKL.from_pretrained(path / "decoder" / "vae")
    src = _pretrained_spec(spec)
    if (path / "decoder" / "vae").is_dir():
        return AutoencoderKL.from_pretrained(path / "decoder" / "vae")

    def from_source(s: str):
        return AutoencoderKL.from_pretrained(s, subfolder="vae") if has_subfolder(s, "vae") else \
            AutoencoderKL.from_pretrained(s)

    return _fetch(from_source, src)


def load_flow_decoder(spec: str):
    """GenHancer's flow decoder: a finished `flow-decoder` run (its decoder/) or a folder it wrote."""
    from un2clip.models.flow import FlowDecoder

    path = Path(spec)
    if is_run(path):
        if not (path / "decoder" / "transformer").is_dir():
            raise ValueError(f"{spec} is a run without decoder/transformer/: pass a finished `flow-decoder` run")
        path = path / "decoder"
    if not path.exists():
        raise FileNotFoundError(f"flow decoder {spec} not found (a finished `flow-decoder` run or its decoder/)")
    return FlowDecoder.from_pretrained(path)


def _t2i_from_checkpoint(run_dir: Path) -> TextToImageDecoder:
    """An unfinished t2i-decoder run: its starting decoder (and text encoder) + the latest checkpoint's UNet."""
    info = read_run_marker(run_dir)
    if info.get("kind") != "t2i-decoder" or not info.get("t2i_decoder"):
        raise ValueError(f"{run_dir} is a {info.get('kind')} run with no text-to-image decoder")
    random_weights = bool(info.get("random_weights"))
    decoder = load_t2i_decoder(info["t2i_decoder"], random_weights=random_weights)
    if info.get("vae"):
        decoder.set_vae(load_vae(info["vae"]))
    if info.get("text_clip"):
        decoder.set_text_encoder(*clip_text_encoder(load_clip(info["text_clip"], random_weights=random_weights)))
    decoder.load_state_dict(checkpoint_weights(run_dir, "decoder."), strict=False)
    return decoder


def check_pair(clip: ClipModel, decoder: UnclipDecoder) -> None:
    """Refuse an encoder whose embedding width differs from what the decoder is conditioned on."""
    if clip.embed_dim != decoder.embed_dim:
        raise ValueError(
            f"encoder and decoder do not fit: the CLIP image encoder gives {clip.embed_dim}-d embeddings, "
            f"the unCLIP decoder is conditioned on {decoder.embed_dim}-d embeddings "
            f"(its UNet takes class labels of width {2 * decoder.embed_dim})"
        )



# -- models back from a run ---------------------------------------------------------------------------

def _run_start(run_dir: Path, role: str, load) -> tuple[dict, object, dict]:
    """(run marker, the ``role`` model the run started from, that model's weights in the newest checkpoint)."""
    info = read_run_marker(run_dir)
    if not info.get(role):
        raise ValueError(f"{run_dir} is a {info.get('kind')} run with no {'CLIP model' if role == 'clip' else role}")
    model = load(info[role], random_weights=bool(info.get("random_weights")))
    return info, model, checkpoint_weights(run_dir, f"{role}.")


def load_run_clip(run_dir: Path) -> ClipModel:
    """The CLIP model a run trained: its final ``clip/`` folder, else base model + latest checkpoint."""
    run_dir = Path(run_dir)
    if (run_dir / "clip" / "config.json").exists():
        return ClipModel.from_pretrained(run_dir / "clip")
    info, clip, weights = _run_start(run_dir, "clip", load_clip)
    if info.get("lora") and weights:  # a LoRA run's checkpoint holds adapters: rebuild, load, merge
        from un2clip.models.lora import add_lora, merge_lora

        lora = info["lora"]
        add_lora(clip.vision_model, rank=int(lora["rank"]), alpha=lora.get("alpha"),
                 **({"targets": lora["targets"]} if lora.get("targets") else {}))
        unexpected = clip.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{run_dir}: checkpoint weights do not fit the LoRA adapters: {unexpected[:3]}")
        merge_lora(clip.vision_model)
        return clip.requires_grad_(False)
    if weights:
        clip.load_state_dict(weights, strict=False)
    return clip


def load_run_decoder(run_dir: Path) -> UnclipDecoder:
    """The decoder a run trained (train-decoder or un²CLIP with ``train_decoder``)."""
    run_dir = Path(run_dir)
    if (run_dir / "decoder" / "unet").is_dir():
        return UnclipDecoder.from_pretrained(run_dir / "decoder")
    info, decoder, weights = _run_start(run_dir, "decoder", load_decoder)
    if info.get("vae"):  # the run replaced its decoder's VAE (train-decoder --vae)
        decoder.set_vae(load_vae(info["vae"]))
    if weights:
        decoder.load_state_dict(weights, strict=False)
    return decoder


def load_audio_model(spec: str | Path) -> AudioClip:
    """A `un2clip train-audio` run -> its audio head (final ``audio/``, else the newest checkpoint's weights on
    the head the run built) beside the frozen CLIP it was trained into."""
    from un2clip.models.audio import AudioHead, AudioHeadConfig

    run_dir = Path(spec)
    if not is_run(run_dir) or read_run_marker(run_dir).get("kind") != "audio":
        raise ValueError(f"{spec} is not a `un2clip train-audio` run (no {RUN_MARKER} of kind audio)")
    info = read_run_marker(run_dir)
    clip = load_clip(info["clip"], random_weights=bool(info.get("random_weights")))
    if (run_dir / "audio" / "config.json").is_file():
        head = AudioHead.from_pretrained(run_dir / "audio")
    else:
        import yaml

        options = yaml.safe_load((run_dir / "config.yaml").read_text()).get("objective_options") or {}
        fields = {k: v for k, v in options.items() if k in AudioHeadConfig.__dataclass_fields__}
        head = AudioHead(AudioHeadConfig(**{**fields, "embed_dim": clip.embed_dim}))
        head.load_state_dict(checkpoint_weights(run_dir, "head."))
    return AudioClip(head.eval(), clip.eval())


# -- OpenAI-CLIP / open_clip checkpoints ----------------------------------------------------------------

def clip_from_checkpoint(path: str | Path, *, config: str | None = None, base: str | None = None,
                         activation: str | None = None) -> ClipModel:
    """An OpenAI-CLIP / open_clip ViT checkpoint (a file, or an open_clip folder) -> ClipModel.

    ``config``: the architecture the checkpoint must match (a name of ``OPENCLIP_CONFIGS`` or a JSON file;
    default: the folder's ``open_clip_config.json``, else the checkpoint's shapes). ``base``: a HF CLIP (any
    spec :func:`load_clip` takes) giving the tokenizer, the preprocessing and, for a visual-only checkpoint,
    the text tower and logit scale; default: the folder itself when it holds a tokenizer and the checkpoint is
    complete, else the Hub model of the architecture (``DEFAULT_BASES``). ``activation``: quick_gelu | gelu.
    """
    from un2clip.models import openclip_format as oc
    from un2clip.models.clip import ImageProcessing

    path = Path(path)
    try:
        state, layout = oc.normalize_checkpoint(oc.read_state_dict(path))
    except ValueError as err:
        raise ValueError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    if layout == "hf":
        state = oc.hf_to_openclip(state)
    full = oc.has_text_tower(state)
    side = oc.read_sidecar(path)
    cfg, what = None, f"the shapes of {path}"
    if config:
        cfg, what = oc.resolve_config(config), f"the config {config}"
    elif side:
        cfg, what = side.get("model_cfg", side), f"{oc.OPENCLIP_CONFIG_FILE} beside {path}"
    inferred = oc.infer_config(state)
    arch = oc.matching_config_name(cfg or inferred)
    folder = path if path.is_dir() else path.parent
    own_tokenizer = full and (folder / "tokenizer_config.json").is_file() and not base
    base_clip = None
    if not own_tokenizer:
        base = base or oc.DEFAULT_BASES.get(arch or "")
        if not base:
            raise ValueError(f"{path}: no base model for its architecture ({'shapes' if arch is None else arch}): "
                             f"pass --base, a HF CLIP (folder, Hub id or preset) giving the tokenizer"
                             f"{'' if full else ' and the text tower of this visual-only checkpoint'}")
        base_clip = load_clip(base)
        if base_clip.family != "clip":
            raise ValueError(f"--base {base} is a {base_clip.family} model; a CLIP checkpoint needs a CLIP base")
    base_cfg = oc.openclip_config(base_clip.model.config) if base_clip is not None else None
    if cfg is None:  # the shapes say little of heads and activation: take the base's when its shapes agree
        cfg = inferred
        if base_cfg and oc.matching_shapes(base_cfg, inferred, text=full):
            cfg = {**base_cfg, **({} if full else {"text_cfg": base_cfg["text_cfg"]})}
    if not full:
        assert base_cfg is not None and base_clip is not None
        if int(cfg["embed_dim"]) != int(base_cfg["embed_dim"]):
            raise ValueError(f"{path} gives {cfg['embed_dim']}-d image embeddings, the base {base}'s text tower "
                             f"{base_cfg['embed_dim']}-d ones: pass the --base the encoder was fine-tuned from")
        cfg = {**cfg, "text_cfg": base_cfg["text_cfg"]}
    from_file = bool(config and Path(config).suffix == ".json") or bool(side and not config)
    hidden_act, source = oc.choose_activation(
        explicit=activation, config=cfg, config_is_file=from_file, config_name=config, arch_name=arch,
        base_act=base_clip.model.config.vision_config.hidden_act if base_clip is not None else None,
        config_what=config if config else f"{oc.OPENCLIP_CONFIG_FILE} beside {path}")
    if not (activation or config or from_file):  # a guess: say it, and how to set it
        log.warning("%s: MLP activation %s, from %s (set it with --config NAME[-quickgelu] or --activation)",
                    path, hidden_act, source)
    # one activation per tower: a visual-only checkpoint keeps the base's text tower as it is, activation included
    text_act = hidden_act if full else base_clip.model.config.text_config.hidden_act
    size = int(cfg["vision_cfg"]["image_size"])
    if base_clip is not None:
        tokenizer = base_clip.tokenizer
        tcfg = base_clip.model.config.text_config
        text_ids = {k: getattr(tcfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        proc = base_clip.processing
        processing = ImageProcessing(size=size, mean=proc.mean, std=proc.std, resize_mode=proc.resize_mode)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        text_ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                    "pad_token_id": tokenizer.pad_token_id}
        processing = ImageProcessing(size=size)
    pre = (side or {}).get("preprocess_cfg") or {}
    if pre.get("mean") and pre.get("std"):
        processing = ImageProcessing(size=size, mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                     resize_mode=processing.resize_mode)
    base_text = None
    if not full:
        keep = ("text_model.", "text_projection.", "logit_scale")
        base_text = {k: v for k, v in base_clip.model.state_dict().items() if k.startswith(keep)}
    return oc.build_clip(state, cfg, hidden_act=hidden_act, tokenizer=tokenizer, processing=processing,
                         text_ids=text_ids, base_text=base_text, what=what, text_act=text_act)


def load_language_model(spec: str, *, dtype=None) -> tuple:
    """(causal LM, tokenizer) of a LLaVA preset (its built-in language model) or a transformers folder / Hub id
    (``AutoModelForCausalLM`` and ``AutoTokenizer``, e.g. lmsys/vicuna-7b-v1.5 as LLaVA-1.5 uses), or the ``lm/``
    of a ``un2clip llava train --stage lm`` run."""
    if (Path(spec) / "lm" / "config.json").is_file():
        spec = str(Path(spec) / "lm")
    if spec in PRESETS:
        preset = PRESETS[spec]
        if preset.build_language_model is None:
            raise ValueError(f"preset {spec!r} has no language model; LLaVA presets: "
                             f"{[n for n, p in PRESETS.items() if p.build_language_model is not None]}")
        if preset.language_model and not preset.language_model.startswith("builtin:"):
            spec = preset.language_model
        else:
            return preset.build_language_model()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = _fetch(lambda s: AutoModelForCausalLM.from_pretrained(s, dtype=dtype or "auto"), spec)
    return model, _fetch(lambda s: AutoTokenizer.from_pretrained(s, use_fast=True), spec)
