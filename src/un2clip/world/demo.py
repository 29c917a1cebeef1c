"""`make demo` / `un2clip demo`: the whole un²CLIP method in the shapes world, on a CPU.

Stages (each cached in ``OUT/<stage>/`` and skipped when done; ``--fresh`` recomputes):

1. ``world``    generate the shapes world (training images with captions, MMVP-layout pairs,
                zero-shot sets, segmentation masks)
2. ``clip``     contrastive pre-training of the tiny CLIP on the world's captions, with NegCLIP-style
                hard negatives (captions with one word swapped)
3. ``decoder``  a latent unCLIP decoder trained on that CLIP's image embeddings (its autoencoder
                first, in ``autoencoder/``, when the decoder is trained here)
4. ``finetune`` un²CLIP: the CLIP image encoder trained through the frozen decoder (images only)
5. ``eval``     world-MMVP, zero-shot, held-out diffusion loss, reconstructions: before and after

Stages 2 and 3 start from the weights shipped in ``assets/tiny-world/`` when they exist for the
chosen seed (their README gives the exact commands that reproduce them); ``--from-scratch``
retrains them. ``--weights-seed S`` starts from the shipped weights of seed S in another seed's
world (same world distribution, fresh images, pairs and training draws): the cheap way to
repeat the fine-tune and its evaluation over seeds when only one seed's weights are shipped.
Every stage is a general ``un2clip`` command that also works on real data.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from un2clip.world.stages import finish_stage, mark_done, recorded_stage, stage, train_run

ASSETS = Path(__file__).resolve().parents[3] / "assets" / "tiny-world"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and learning rates of each stage (the shipped assets were made with these)."""

    n_train: int = 20000
    n_val: int = 1000
    pairs_per_pattern: int = 60
    n_zeroshot_per_class: int = 50
    n_seg: int = 200
    # Context transfer (world generate --talk-colors): captions name the rare attributes of red, yellow and green
    # objects half of the time and never those of cyan, blue and purple ones; the MMVP pairs are cyan, blue and
    # purple. The plain world of versions 1-2: talk_colors=(), rare_rate=0.03 (docs/world_competence.md).
    rare_rate: float = 0.0
    talk_colors: tuple[str, ...] = ("red", "yellow", "green")
    talk_rate: float = 0.5
    pretrain_steps: int = 1500
    pretrain_batch: int = 256
    pretrain_lr: float = 1e-3
    pretrain_warmup: int = 100
    hard_negatives: bool = True
    autoencoder_steps: int = 1500  # 0 for a pixel-space decoder preset (no VAE to train first)
    autoencoder_batch: int = 32
    autoencoder_lr: float = 5e-4
    decoder_preset: str = "tiny-latent"
    t2i_preset: str = "diva-tiny-latent"  # DIVA's generator (compare)
    light_preset: str = "genhancer-tiny-latent"  # GenHancer's lightweight denoiser (compare)
    decoder_steps: int = 1500
    decoder_batch: int = 64
    decoder_lr: float = 5e-4
    finetune_steps: int = 300
    finetune_batch: int = 32
    finetune_lr: float = 1e-5
    sampling_steps: int = 50


QUICK = DemoSettings(n_train=512, n_val=64, pairs_per_pattern=4, n_zeroshot_per_class=6, n_seg=8, pretrain_steps=4,
                     pretrain_batch=32, pretrain_warmup=2, autoencoder_steps=2, autoencoder_batch=8, decoder_steps=4,
                     decoder_batch=16, finetune_steps=3, finetune_batch=8, sampling_steps=4)


def _model_stage(out: Path, name: str, fresh: bool, source: str) -> tuple[Path, bool]:
    """A model stage (clip, decoder) recorded with where its weights came from; when it is (re)made,
    the stages downstream of it (fine-tune, evaluation) are dropped too."""
    folder, done = recorded_stage(out, name, {"source": source}, fresh, keep_unrecorded=True)
    if not done:
        for stale in (out / "finetune", out / "eval"):
            shutil.rmtree(stale, ignore_errors=True)
    return folder, done


def shipped_weights(seed: int, weights_seed: int | None = None) -> Path:
    """The folder of shipped weights a demo of world ``seed`` starts from (``weights_seed`` overrides)."""
    return ASSETS / f"seed{seed if weights_seed is None else weights_seed}"


def _check_shipped(shipped: Path, which: str | None, from_scratch: bool) -> None:
    """``which`` (the option that named ``shipped``, or None when the world seed's are only used if present)."""
    if which is None:
        return
    if from_scratch:
        raise ValueError(f"{which} starts from given weights; it cannot go with --from-scratch")
    if not (shipped / "clip" / "config.json").exists() or not (shipped / "decoder" / "unet").is_dir():
        raise FileNotFoundError(f"no CLIP (clip/config.json) and decoder (decoder/unet/) for {which} in {shipped}")


def _world_words(s: DemoSettings) -> dict:
    """What of ``s`` decides the world's captions and pairs beyond its sizes, as world.json records it."""
    talk = {"talk_colors": list(s.talk_colors), "talk_rate": s.talk_rate} if s.talk_colors else {}
    return {"rare_rate": s.rare_rate, **talk}


def _world_stage(out: Path, seed: int, s: DemoSettings, fresh: bool, progress: bool) -> Path:
    import json

    from un2clip.world.evalsets import generate_world

    world, done = stage(out, "world", fresh)
    wanted = _world_words(s)
    if done and (record := world / "world.json").exists():
        made = json.loads(record.read_text())
        found = {k: made.get(k) for k in ("rare_rate", "talk_colors", "talk_rate") if k in made or k in wanted}
        if found != wanted:
            raise ValueError(f"{world} was generated with {found}, not {wanted}: pass --fresh to rewrite it (the "
                             "stages after it are then stale too) or choose another --output")
    if not done:
        t = time.perf_counter()
        generate_world(world, seed=seed, n_train=s.n_train, n_val=s.n_val, rare_rate=s.rare_rate,
                       pairs_per_pattern=s.pairs_per_pattern, n_zeroshot_per_class=s.n_zeroshot_per_class,
                       n_seg=s.n_seg, progress=progress, overwrite=True, talk_colors=s.talk_colors,
                       talk_rate=s.talk_rate)
        mark_done(world, time.perf_counter() - t)
    return world


def _shipped_or_trained(out: Path, name: str, shipped: Path, *, check: str, command: str, fields: dict,
                        fresh: bool, from_scratch: bool, progress: bool) -> Path:
    """Model stage ``name`` (``clip`` or ``decoder``): ``shipped/<name>`` copied when it holds ``check`` (and not
    ``from_scratch``), else trained with ``fields`` (what `un2clip <command>` would run) into ``OUT/<name>/run``."""
    use_shipped = (shipped / name / check).exists() and not from_scratch
    source = f"shipped {shipped.name}" if use_shipped else command
    folder, done = _model_stage(out, name, fresh, source)
    if not done:
        t = time.perf_counter()
        if use_shipped:
            shutil.copytree(shipped / name, folder / name, dirs_exist_ok=True)
        else:
            train_run(**fields, output=str(folder / "run"), progress=progress)
            shutil.copytree(folder / "run" / name, folder / name, dirs_exist_ok=True)
        finish_stage(folder, {"source": source}, t)
    return folder / name


def _clip_stage(out: Path, world: Path, shipped: Path, seed: int, s: DemoSettings, **opts) -> Path:
    """The tiny CLIP: copied from the shipped weights, or contrastive pre-training (`un2clip pretrain`)."""
    fields = {"objective": "contrastive", "preset": "tiny", "data": str(world / "train" / "captions.csv"),
              "max_steps": s.pretrain_steps, "batch_size": s.pretrain_batch, "lr": s.pretrain_lr,
              "weight_decay": 0.1, "warmup_steps": s.pretrain_warmup, "lr_schedule": "cosine", "save_every": 250,
              "seed": seed}
    if s.hard_negatives:  # `un2clip pretrain --hard-negatives world/swap_groups.txt`
        fields["objective_options"] = {"hard_negatives": str(world / "swap_groups.txt")}
    return _shipped_or_trained(out, "clip", shipped, check="config.json", command="pretrain", fields=fields, **opts)


def _autoencoder_stage(out: Path, world: Path, seed: int, s: DemoSettings, *, fresh: bool, progress: bool) -> Path:
    """The latent decoder's VAE (`un2clip train-autoencoder`); returns the run (what `train-decoder --vae` takes)."""
    folder, done = stage(out, "autoencoder", fresh)
    if not done:
        t = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        train_run(objective="autoencoder", preset=s.decoder_preset, data=str(world / "train" / "images"),
                  max_steps=s.autoencoder_steps, batch_size=s.autoencoder_batch, lr=s.autoencoder_lr,
                  warmup_steps=50, lr_schedule="cosine", save_every=250, seed=seed, output=str(folder / "run"),
                  progress=progress)
        mark_done(folder, time.perf_counter() - t)
    return folder / "run"


def _decoder_stage(out: Path, world: Path, clip: Path, shipped: Path, seed: int, s: DemoSettings, **opts) -> Path:
    """The tiny unCLIP decoder of ``clip``: copied from the shipped weights, or trained (`un2clip train-decoder`,
    on the latents of an autoencoder trained first when the preset's decoder has one)."""
    fields = {"objective": "decoder", "clip": str(clip), "preset": s.decoder_preset,
              "data": str(world / "train" / "images"), "max_steps": s.decoder_steps, "batch_size": s.decoder_batch,
              "lr": s.decoder_lr, "warmup_steps": 50, "lr_schedule": "cosine", "save_every": 250, "seed": seed}
    if s.autoencoder_steps and (opts["from_scratch"] or not (shipped / "decoder" / "unet").is_dir()):
        fields["vae"] = str(_autoencoder_stage(out, world, seed, s, fresh=opts["fresh"], progress=opts["progress"]))
    return _shipped_or_trained(out, "decoder", shipped, check="unet", command="train-decoder", fields=fields, **opts)



def finetune_settings(s: DemoSettings, seed: int) -> dict:
    """Steps, batch, learning rate, checkpoints and seed of every fine-tune of the world (un²CLIP and variants)."""
    return {"max_steps": s.finetune_steps, "batch_size": s.finetune_batch, "lr": s.finetune_lr, "save_every": 100,
            "seed": seed}


def _finetune_stage(out: Path, world: Path, clip: Path, decoder: Path, seed: int, s: DemoSettings, *, fresh: bool,
                    progress: bool) -> Path:
    """un²CLIP (`un2clip finetune`): the CLIP image encoder trained through the frozen decoder."""
    folder, done = stage(out, "finetune", fresh)
    if not done:
        t = time.perf_counter()
        if folder.exists():
            shutil.rmtree(folder)
        train_run(objective="un2clip", clip=str(clip), decoder=str(decoder), data=str(world / "train" / "images"),
                  output=str(folder), progress=progress, **finetune_settings(s, seed))
        mark_done(folder, time.perf_counter() - t)
    return folder


def weights_folder(weights: str | Path, seed: int) -> Path:
    """``weights`` for world ``seed``: ``{seed}`` in it is replaced by the seed (``runs/weights/seed{seed}``), so that
    every seed of a comparison can start from its own pre-trained models."""
    text = str(weights)
    if "{" not in text and "}" not in text:
        return Path(text)
    try:
        return Path(text.format(seed=seed))
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"--weights {text!r}: the only placeholder it may hold is {{seed}} ({err})") from None


def start_weights(seed: int, weights_seed: int | None, weights: str | Path | None, from_scratch: bool) -> Path:
    """The folder the CLIP and decoders start from: ``weights`` (a folder laid out like ``assets/tiny-world/seed0``,
    ``{seed}`` replaced by the world seed), else the shipped ones of ``weights_seed`` or of the world seed; checked
    when asked for explicitly."""
    if weights is None:
        shipped = shipped_weights(seed, weights_seed)
        _check_shipped(shipped, None if weights_seed is None else f"--weights-seed {weights_seed}", from_scratch)
        return shipped
    if weights_seed is not None:
        raise ValueError("--weights and --weights-seed both say where the weights come from: pass one")
    folder = weights_folder(weights, seed)
    _check_shipped(folder, "--weights", from_scratch)
    return folder


def run_demo(out: Path, *, seed: int = 0, fresh: bool = False, from_scratch: bool = False,
             settings: DemoSettings = DemoSettings(), progress: bool = True,
             weights_seed: int | None = None, weights: str | Path | None = None) -> Path:
    """Run (or reuse) every stage and write ``out/report.md``; returns its path.

    ``weights_seed``: start stages 2 and 3 from the shipped weights of that seed (which must exist)
    instead of the world seed's; ``None`` uses the world seed's when shipped, else trains them.
    ``weights``: start them from this folder instead (``clip/``, ``decoder/`` as in ``assets/tiny-world/seed0``).
    """
    from un2clip.world.report import evaluate_models, write_report

    out.mkdir(parents=True, exist_ok=True)
    s = settings
    shipped = start_weights(seed, weights_seed, weights, from_scratch)
    world = _world_stage(out, seed, s, fresh, progress)
    opts = {"fresh": fresh, "from_scratch": from_scratch, "progress": progress}
    clip = _clip_stage(out, world, shipped, seed, s, **opts)
    decoder = _decoder_stage(out, world, clip, shipped, seed, s, **opts)
    finetune = _finetune_stage(out, world, clip, decoder, seed, s, fresh=fresh, progress=progress)
    models = {"original": str(clip), "un2clip": str(finetune)}
    results = evaluate_models(out / "eval", world, models, decoder, seed=seed, fresh=fresh, progress=progress,
                              sampling_steps=s.sampling_steps)
    return write_report(out, results, world)
