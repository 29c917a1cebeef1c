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

log = logging.getLogger(__name__)

# objective name -> builder(cfg, source) -> (objective, run-marker info)
OBJECTIVES: Registry[Callable[[RunConfig, Source], tuple[Objective, dict]]] = Registry("objective")
register_objective = OBJECTIVES.register


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
    clip_spec, clip = _clip(cfg)
    objective = _construct(ContrastiveObjective, clip, options=cfg.objective_options)
    return objective, {"kind": "contrastive", "clip": clip_spec, "random_weights": cfg.random_weights}


@register_objective("decoder")
def build_decoder(cfg: RunConfig, source: Source) -> tuple[Objective, dict]:
    """Frozen CLIP + trainable decoder; the image normaliser gets the CLIP embeddings' statistics."""
    from un2clip.objectives.decoder import DecoderObjective, embedding_statistics

    clip_spec, clip = _clip(cfg)
    decoder_spec, decoder = _decoder(cfg, load_decoder)
    mean, std = embedding_statistics(clip, source, seed=cfg.seed)
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
    if not cfg.data:
        raise ValueError("no training data: pass --data (an image folder, a CSV/TSV file or webdataset shards)")
    source = open_source(cfg.data, image_column=cfg.image_column, caption_column=cfg.caption_column)
    if source.kind == "latent-cache" and cfg.objective != "un2clip":
        raise ValueError(f"{cfg.data} is a latent cache (`un2clip cache-latents`): it feeds `un2clip finetune` "
                         f"only, not the {cfg.objective} objective; pass the images instead")
    output = Path(cfg.output)
    with _output_lock(output):
        changes = None
        if resume:
            check_steps_left(output, cfg.max_steps)
            changes = _record_resume_changes(output, cfg)
        elif (output / runs.CKPT_DIR).exists():
            raise ValueError(f"{output} already holds a run: pass --resume {output} to continue it, "
                             "or choose another --output")
        objective, info = build(cfg, source)
        if not resume:
            dump_run_info(output, info)
            cfg.save(output / "config.yaml")
        return train(objective, source, cfg, resume=resume, progress=progress, resume_changes=changes)


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
