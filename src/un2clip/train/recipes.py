"""Build the objective and data of a run from its RunConfig, then call the one training loop."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from un2clip import runs
from un2clip.data.sources import Source
from un2clip.load import check_pair, load_clip, load_decoder, load_t2i_decoder, load_vae
from un2clip.models.clip import ClipModel
from un2clip.objectives.base import Objective
from un2clip.registry import Registry
from un2clip.train.config import RESUMABLE, RunConfig, changed_fields, config_notes, load_config
from un2clip.train.loop import TrainResult, dump_run_info, train
from un2clip.train.trackers import check_tracker_packages, tracker_names

log = logging.getLogger(__name__)

# objective name -> builder(cfg, source) -> (objective, run-marker info)
# builder(cfg, source) -> (objective, info for un2clip_run.json); a builder with a long set-up of its own (a pass
# over the data) may also take ``progress``, the run's --no-progress answer, for its bar
OBJECTIVES: Registry[Callable[..., tuple[Objective, dict]]] = Registry("objective")
register_objective = OBJECTIVES.register
DENSE_OBJECTIVES = ("lseg",)  # trained on segmentation datasets (`un2clip train-dense`)
TEXT_OBJECTIVES = ("llava-lm",)  # trained on texts alone (`un2clip llava train --stage lm`)


def _construct(cls, *args, options: dict, **kwargs):
    """Call ``cls`` with objective options, turning unknown option names into a clear error."""
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        allowed = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY)
        raise ValueError(f"unknown objective option(s) {unknown} for {cls.__name__}; allowed: {allowed}")
    return cls(*args, **kwargs, **options)


def _require_captions(cfg: RunConfig, source: Source, who: str) -> None:
    """Refuse data without captions (the first readable of its first 16 records decides), before any model loads."""
    n = min(len(source), 16)
    first = next((r for r in (source.load(i) for i in range(n)) if r is not None), None)
    if first is None:
        raise ValueError(f"none of the first {n} images of {cfg.data} can be read (e.g. {source.key(0)}): "
                         "missing, empty or corrupt files")
    if first.text is None:
        raise ValueError(f"{cfg.data} has no captions: {who} image-text pairs "
                         "(a CSV/TSV with a caption column, or webdataset shards with .txt)")


def _clip(cfg: RunConfig) -> tuple[str, ClipModel]:
    """(spec, model) of the run's encoder: ``--clip``, else the preset's."""
    spec = cfg.clip or cfg.preset
    return spec, load_clip(spec, random_weights=cfg.random_weights)


def _decoder(cfg: RunConfig, load: Callable) -> tuple[str, Any]:
    """(spec, model) of the run's decoder, loaded by ``load``: ``--decoder``, else the preset's; ``--vae``
    replaces its VAE."""
    spec = cfg.decoder or cfg.preset
    decoder = load(spec, random_weights=cfg.random_weights)
    if cfg.vae:
        decoder.set_vae(load_vae(cfg.vae))
    return spec, decoder


@register_objective("un2clip")
def build_un2clip(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    from un2clip.objectives.un2clip import Un2ClipObjective

    clip_spec, clip = _clip(cfg)
    decoder_spec, decoder = _decoder(cfg, load_decoder)
    check_pair(clip, decoder)  # before any step, naming both widths
    objective = _construct(Un2ClipObjective, clip, decoder, options=cfg.objective_options)
    if source.kind == "latent-cache":  # written by `un2clip cache-latents`: same encoder input, decoder, crops?
        from un2clip.data.latent_cache import check_cache_fits

        check_cache_fits(source.index, clip_processing=clip.processing, decoder=decoder,
                         random_crop=objective.random_crop)
    info = {"kind": "un2clip", "clip": clip_spec, "decoder": decoder_spec, "random_weights": cfg.random_weights}
    opts = cfg.objective_options
    # the projector sits between encoder and decoder: the run's clip/ is the encoder alone, as evaluated
    info["projector"] = opts.get("projector", "none")
    if opts.get("lora_rank"):  # how to rebuild the adapters of a checkpoint (load_run_clip merges them)
        info["lora"] = {k: opts.get(f"lora_{k}") for k in ("rank", "alpha", "targets") if opts.get(f"lora_{k}")}
    return objective, info


@register_objective("contrastive")
def build_contrastive(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    from un2clip.objectives.contrastive import ContrastiveObjective

    _require_captions(cfg, source, "contrastive training needs")
    blank = getattr(source, "empty_caption_rows", [])
    if blank:
        log.warning("%s: %d row(s) have an empty caption (row %s%s); contrastive training skips them and counts "
                    "them with the unreadable images", cfg.data, len(blank), ", ".join(map(str, blank[:5])),
                    ", ..." if len(blank) > 5 else "")
    if _is_groupvit(cfg):
        return _build_groupvit(cfg)
    opts = {k: v for k, v in cfg.objective_options.items() if k not in GROUPVIT_OPTIONS or v is None}
    given = sorted(k for k in cfg.objective_options if k in GROUPVIT_OPTIONS and cfg.objective_options[k] is not None)
    if given:
        raise ValueError(f"{given} are GroupViT options: pretrain a GroupViT with --preset {GROUPVIT_PRESET}")
    clip_spec, clip = _clip(cfg)
    objective = _construct(ContrastiveObjective, clip, options=opts)
    return objective, {"kind": "contrastive", "clip": clip_spec, "random_weights": cfg.random_weights}


GROUPVIT_PRESET = "groupvit-tiny"  # `pretrain --preset groupvit-tiny`: a tiny GroupViT from scratch
GROUPVIT_OPTIONS = ("nouns", "max_words", "multi_label_weight")


def _is_groupvit(cfg: RunConfig) -> bool:
    from un2clip.models.groupvit import RUN_FOLDER, is_groupvit_folder

    if cfg.clip:
        path = Path(cfg.clip)
        return is_groupvit_folder(path) or is_groupvit_folder(path / RUN_FOLDER)
    return cfg.preset == GROUPVIT_PRESET


def _build_groupvit(cfg: RunConfig) -> tuple[Objective, dict]:
    """GroupViT's objective on a tiny GroupViT built from its config (seeded), or on ``--clip``, a GroupViT."""
    from un2clip.models.groupvit import build_tiny_groupvit, load_groupvit
    from un2clip.objectives.groupvit import GroupViTObjective

    opts = dict(cfg.objective_options)
    if opts.pop("hard_negatives", None) or opts.pop("max_logit_scale", None):
        raise ValueError("--hard-negatives and --max-logit-scale are CLIP options; a GroupViT clamps its scales at "
                         "100 and trains on captions and their nouns")
    nouns_file = opts.pop("nouns", None)
    nouns: list[str] = []
    if nouns_file:
        path = Path(nouns_file)
        if not path.is_file():
            raise FileNotFoundError(f"--nouns {path} not found: expected one noun a line (the world's nouns.txt)")
        nouns = [w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
        if not nouns:
            raise ValueError(f"--nouns {path} lists no nouns")
    model = load_groupvit(cfg.clip) if cfg.clip else build_tiny_groupvit(seed=cfg.seed)
    objective = _construct(GroupViTObjective, model, nouns=nouns,
                           options={k: v for k, v in opts.items() if v is not None})
    info = {"kind": "groupvit", "groupvit": cfg.clip or GROUPVIT_PRESET, "nouns": nouns_file}
    return objective, info


@register_objective("decoder")
def build_decoder(cfg: RunConfig, source: Source, progress: bool = True) -> tuple[Objective, dict]:
    """Frozen CLIP + trainable decoder; the image normaliser gets the CLIP embeddings' statistics."""
    from un2clip.objectives.decoder import DecoderObjective, embedding_statistics

    clip_spec, clip = _clip(cfg)
    decoder_spec, decoder = _decoder(cfg, load_decoder)
    mean, std = embedding_statistics(clip, source, seed=cfg.seed, progress=progress)
    decoder.set_embedding_statistics(mean, std)
    objective = _construct(DecoderObjective, clip, decoder, options=cfg.objective_options)
    info = {"kind": "decoder", "clip": clip_spec, "decoder": decoder_spec, "vae": cfg.vae,
            "random_weights": cfg.random_weights}
    return objective, info


@register_objective("autoencoder")
def build_autoencoder(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """The VAE of a latent decoder (its first stage); the run's decoder/ is the whole decoder, VAE trained."""
    from un2clip.objectives.autoencoder import AutoencoderObjective

    decoder_spec, decoder = _decoder(cfg, load_decoder)
    objective = _construct(AutoencoderObjective, decoder, options=cfg.objective_options)
    return objective, {"kind": "autoencoder", "decoder": decoder_spec, "vae": cfg.vae,
                       "random_weights": cfg.random_weights}


@register_objective("t2i-decoder")
def build_t2i_decoder(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """Trainable text-to-image UNet; prompts through the preset's text encoder, or ``--clip``'s text tower."""
    from un2clip.models.t2i import clip_text_encoder
    from un2clip.objectives.decoder import TextToImageDecoderObjective

    _require_captions(cfg, source, "a text-to-image decoder trains on")
    decoder_spec, decoder = _decoder(cfg, load_t2i_decoder)
    if cfg.clip:  # e.g. the world's pre-trained tiny CLIP: the generator reads its text tower
        decoder.set_text_encoder(*clip_text_encoder(load_clip(cfg.clip, random_weights=cfg.random_weights)))
    objective = _construct(TextToImageDecoderObjective, decoder, options=cfg.objective_options)
    info = {"kind": "t2i-decoder", "t2i_decoder": decoder_spec, "text_clip": cfg.clip, "vae": cfg.vae,
            "random_weights": cfg.random_weights}
    return objective, info


@register_objective("diva")
def build_diva(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """DIVA: trainable CLIP image tower + token projection through a frozen text-to-image decoder."""
    from un2clip.objectives.diva import DivaObjective

    clip_spec, clip = _clip(cfg)
    decoder_spec, decoder = _decoder(cfg, load_t2i_decoder)
    objective = _construct(DivaObjective, clip, decoder, options=cfg.objective_options)
    # "t2i_decoder", not "decoder": evaluators that need an unCLIP decoder must not pick this one
    info = {"kind": "diva", "clip": clip_spec, "t2i_decoder": decoder_spec, "random_weights": cfg.random_weights}
    return objective, info


@register_objective("flow-decoder")
def build_flow_decoder_run(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """GenHancer's stage 1: frozen CLIP + a light FLUX-style flow decoder, new on ``--vae``'s latents (or
    ``--decoder``, a flow decoder to go on training)."""
    from un2clip.load import load_flow_decoder
    from un2clip.models.flow import build_flow_decoder
    from un2clip.objectives.genhancer import FlowDecoderObjective

    clip_spec, clip = _clip(cfg)
    if cfg.decoder:
        decoder = load_flow_decoder(cfg.decoder)
        if cfg.vae:
            decoder.set_vae(load_vae(cfg.vae))
    elif cfg.vae:
        vae = load_vae(cfg.vae)
        decoder = build_flow_decoder(vae, embed_dim=clip.embed_dim, image_size=int(vae.config.sample_size),
                                     seed=cfg.seed)
    else:
        raise ValueError("the flow-decoder objective needs --vae (the first stage whose latents it denoises) "
                         "or --decoder (a flow decoder to continue)")
    objective = _construct(FlowDecoderObjective, clip, decoder, options=cfg.objective_options)
    info = {"kind": "flow-decoder", "clip": clip_spec, "flow_decoder": cfg.decoder, "vae": cfg.vae,
            "random_weights": cfg.random_weights}
    return objective, info


@register_objective("genhancer")
def build_genhancer(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """GenHancer's stage 2: the image tower through LoRA adapters, the stage-1 flow decoder (``--decoder``) frozen."""
    from un2clip.load import load_flow_decoder
    from un2clip.objectives.genhancer import GenHancerObjective

    if not cfg.decoder:
        raise ValueError("the genhancer objective needs --decoder: a finished `flow-decoder` run (stage 1)")
    clip_spec, clip = _clip(cfg)
    decoder = load_flow_decoder(cfg.decoder)
    objective = _construct(GenHancerObjective, clip, decoder, options=cfg.objective_options)
    # "flow_decoder", not "decoder": evaluators that need an unCLIP decoder must not pick this one
    info = {"kind": "genhancer", "clip": clip_spec, "flow_decoder": cfg.decoder, "random_weights": cfg.random_weights}
    return objective, info


@register_objective("grounding")
def build_grounding(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """GLIP-style grounding head on the frozen encoder ``--clip`` (or the preset's); only the head trains."""
    from un2clip.objectives.grounding import GroundingObjective

    clip_spec, clip = _clip(cfg)
    objective = _construct(GroundingObjective, clip, options=cfg.objective_options, clip_spec=clip_spec,
                           seed=cfg.seed)
    info = {"kind": "grounding", "clip": clip_spec, "random_weights": cfg.random_weights,
            "layout": getattr(source, "layout", None)}
    return objective, info


@register_objective("audio")
def build_audio(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """AudioCLIP's partial training: an audio head into the frozen CLIP's (``--clip``, else the preset's) space."""
    from un2clip.objectives.audio import AudioClipObjective

    clip_spec, clip = _clip(cfg)
    options = dict(cfg.objective_options)
    options.setdefault("seed", cfg.seed)
    if not getattr(source, "has_images", False):
        options["use_images"] = False  # ESC-50 / UrbanSound8K: audio-text pairs only
    objective = _construct(AudioClipObjective, clip, options=options)
    info = {"kind": "audio", "clip": clip_spec, "random_weights": cfg.random_weights,
            "pairs": [p for p, on in (("image", objective.use_images), ("text", objective.use_texts)) if on]}
    return objective, info


@register_objective("llava")
def build_llava_objective(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """LLaVA-1.5: ``init`` (a LLaVA folder or an earlier llava run, e.g. stage 1 for stage 2), else a new model of
    the tower ``--clip`` (or the preset's) and the language model ``language_model`` (or the preset's)."""
    from un2clip.objectives.llava import LlavaObjective

    opts = dict(cfg.objective_options)
    init, lm_spec = opts.pop("init", None), opts.pop("language_model", None)
    if init:
        if cfg.clip or lm_spec:
            raise ValueError("--init starts from a LLaVA that has its tower and language model: "
                             "--clip and --language-model do not go with it")
        model, processor = load_llava(init)
        info = {"kind": "llava", "init": init}
    else:
        from un2clip.data.conversations import LLAVA_SYSTEM, prompt_template
        from un2clip.load import load_language_model
        from un2clip.models.llava import build_llava, chat_template_for, llava_processor

        clip_spec, clip = _clip(cfg)
        if clip.family != "clip":
            raise ValueError(f"{clip_spec} is a {clip.family} model; LLaVA's tower here is a CLIP ViT")
        lm_spec = lm_spec or cfg.preset
        language_model, tokenizer = load_language_model(lm_spec)
        model = build_llava(clip.vision_model, language_model, tokenizer, seed=cfg.seed)
        proc = clip.processing
        template = chat_template_for(prompt_template("v1", opts.get("system", LLAVA_SYSTEM)))
        processor = llava_processor(model, tokenizer, size=proc.size, mean=proc.mean, std=proc.std,
                                    chat_template=template)
        info = {"kind": "llava", "clip": clip_spec, "language_model": lm_spec, "random_weights": cfg.random_weights}
    select = opts.pop("vision_select", None)
    if select is not None:
        from un2clip.models.llava import set_vision_select

        set_vision_select(model, processor, select)
        info["vision_select"] = select
    objective = _construct(LlavaObjective, model, processor, options=opts)
    info["stage"] = objective.stage
    return objective, info


@register_objective("llava-lm")
def build_llava_lm_objective(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """LLaVA's stage lm: the causal LM ``language_model`` (or the preset's) alone, on texts; no tower is built."""
    from un2clip.load import load_language_model
    from un2clip.objectives.llava import LanguageModelObjective

    opts = dict(cfg.objective_options)
    lm_spec = opts.pop("language_model", None) or cfg.preset
    if cfg.clip:
        raise ValueError("stage lm trains the language model alone on text: --clip (a vision tower) does not go "
                         "with it")
    model, tokenizer = load_language_model(lm_spec)
    objective = _construct(LanguageModelObjective, model, tokenizer, options=opts)
    return objective, {"kind": "llava-lm", "language_model": lm_spec, "stage": "lm"}


@register_objective("lseg")
def build_lseg(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """LSeg: a dense head on the frozen tower of ``--clip`` (or the preset's), labels = the dataset's classes."""
    from un2clip.objectives.lseg import LSegObjective

    labels = getattr(source, "labels", None)
    if not labels:
        raise ValueError(f"{cfg.data}: the lseg head trains on a segmentation dataset (images/, masks/, "
                         "classes.txt or a named layout), not on a {source.kind} source")
    clip_spec, clip = _clip(cfg)
    objective = _construct(LSegObjective, clip, labels, model_spec=clip_spec, options=cfg.objective_options,
                           seed=cfg.seed)
    info = {"kind": "lseg", "clip": clip_spec, "random_weights": cfg.random_weights, "labels": labels,
            "seg_layout": cfg.seg_layout, "seg_split": cfg.seg_split}
    return objective, info


def load_llava(spec: str) -> tuple[Any, Any]:
    """(LlavaForConditionalGeneration, processor) of a LLaVA folder or of a llava run (its ``llava/``)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder = Path(spec)
    if (folder / "llava" / "config.json").is_file():
        folder = folder / "llava"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{spec} is neither a LLaVA folder nor a `un2clip llava train` run (no config.json, "
                                "no llava/config.json)")
    return LlavaForConditionalGeneration.from_pretrained(folder), AutoProcessor.from_pretrained(folder)


def _output_lock(output: Path):
    """The run folder's lock, taken by the process of global rank 0 only (``RANK``, as torchrun and
    ``accelerate launch`` set it; unset: a single process)."""
    return runs.RunLock(output) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()


def run(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Build and train. With ``resume`` the run folder's own config.yaml is used.

    The output folder is locked first (:class:`un2clip.runs.RunLock`): a second process given the
    same folder is refused before any model loads.
    """
    from un2clip.data import open_source

    build = OBJECTIVES.lookup(cfg.objective)
    check_tracker_packages(tracker_names(cfg.report_to))  # before any model loads
    if not cfg.data:
        raise ValueError("no training data: pass --data (an image folder, a CSV/TSV file or webdataset shards)")
    if cfg.objective == "audio":  # sound clips: an ESC-50 or UrbanSound8K layout
        from un2clip.data.audio import AudioSource

        source: Source = AudioSource(cfg.data)
    elif cfg.objective in DENSE_OBJECTIVES:  # image + label map pairs, in the layouts `eval seg` reads
        from un2clip.train.dense import open_segmentation

        source = open_segmentation(cfg.data, cfg.seg_layout, cfg.seg_split)
    else:
        source = open_source(cfg.data, image_column=cfg.image_column, caption_column=cfg.caption_column,
                             image_folder=cfg.image_folder)
    if cfg.objective in TEXT_OBJECTIVES:  # a language model alone: the texts of captions or conversations
        from un2clip.data.texts import text_source

        source = text_source(source)
    if (source.kind == "conversations") != (cfg.objective == "llava"):
        raise ValueError(f"{cfg.data}: LLaVA training (`un2clip llava train`) reads LLaVA's JSON conversations "
                         f"and nothing else does; the {cfg.objective} objective got a {source.kind} source")
    if (source.kind == "grounding") != (cfg.objective == "grounding"):
        raise ValueError(f"{cfg.data}: grounding training (`un2clip train-grounding`) reads RefCOCO or Flickr30k "
                         f"Entities annotations and nothing else does; the {cfg.objective} objective got a "
                         f"{source.kind} source")
    if source.kind == "latent-cache" and cfg.objective != "un2clip":
        raise ValueError(f"{cfg.data} is a latent cache (`un2clip cache-latents`): it feeds `un2clip finetune` "
                         f"only, not the {cfg.objective} objective; pass the images instead")
    output = Path(cfg.output)
    check_output_apart_from_data(output, cfg.data)
    with _output_lock(output):
        changes = None
        if resume:
            check_steps_left(output, cfg.max_steps)
            changes = _record_resume_changes(output, cfg)
        elif (output / runs.CKPT_DIR).exists():
            raise ValueError(f"{output} already holds a run: pass --resume {output} to continue it, "
                             "or choose another --output")
        takes_progress = "progress" in inspect.signature(build).parameters
        objective, info = build(cfg, source, progress=progress) if takes_progress else build(cfg, source)
        if not resume:
            dump_run_info(output, info)
            cfg.save(output / "config.yaml")
        return train(objective, source, cfg, resume=resume, progress=progress, resume_changes=changes)


def check_output_apart_from_data(output: Path, data: str) -> None:
    """Refuse a run folder that is the data folder or lies inside it: the run's files (curves, checkpoints) would
    mix with the data, and a resumed or later run would read them as data."""
    folder = Path(data)
    if not folder.is_dir():
        return
    out, data_dir = output.resolve(), folder.resolve()
    if out == data_dir or data_dir in out.parents:
        raise ValueError(f"--output {output} is {'the data folder' if out == data_dir else 'inside the data folder'} "
                         f"{data}: choose a run folder outside the data")


def check_steps_left(output: Path, max_steps: int) -> None:
    """The rule of every resume: a run is never trained back. ``max_steps`` below the step of the run's newest
    checkpoint is refused (nothing in the run is changed); equal to it, the resume trains no step and says so
    (the loop only writes the trained models, e.g. of a run stopped right after its last step)."""
    found = runs.latest_checkpoint(output)
    if found is None:
        return  # the loop says that there is nothing to resume
    step = runs.checkpoint_step(found)
    if max_steps < step:
        raise ValueError(f"{output} is already at step {step}, past --max-steps {max_steps}: a resume cannot undo "
                         f"steps; give --max-steps above {step} to train on (the run is left as it was)")


def _record_resume_changes(output: Path, cfg: RunConfig) -> dict[str, list[Any]]:
    """Compare ``cfg`` with the run's config.yaml; refuse changes a resume cannot make; save and return the rest.

    config.yaml then holds the new values under one comment line per resume that changed something.
    """
    saved_path = output / "config.yaml"
    changes = changed_fields(load_config(saved_path), cfg)
    refused = sorted(set(changes) - set(RESUMABLE))
    if refused:
        raise ValueError(f"a resumed run keeps its recipe; {refused} differ from {saved_path} "
                         f"(a resume may change only {', '.join(RESUMABLE)})")
    if changes:
        found = runs.latest_checkpoint(output)
        if found is None:
            raise FileNotFoundError(f"nothing to resume: {output / runs.CKPT_DIR} holds no complete checkpoint")
        step = runs.checkpoint_step(found)
        note = f"resumed at step {step}: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())
        cfg.save(saved_path, notes=[*config_notes(saved_path), note])
    return changes
