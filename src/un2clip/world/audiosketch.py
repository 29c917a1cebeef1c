"""AudioCLIP and CLIPasso in the shapes world: two more measurements of an image encoder, for `un2clip compare`.

- **audio zero-shot** (``audio/acc1``, %): an AudioCLIP head trained (`un2clip train-audio`, the one training
  loop) into each encoder's joint space on the world's scene sounds, paired with their images (through that
  encoder) and captions (through its text tower), then classifying the held-out single-object sounds among 36
  colour + shape names (``audio/fold<N>_acc1`` too). The text tower is the same for the original CLIP and
  un²CLIP, so a difference comes from the image embeddings the head was pulled towards. Chance: 1/36.
- **audio zero-shot, images only** (``audio_img/acc1``, %): the same, with a head trained on the audio-image
  pairs alone (`un2clip train-audio --no-texts`): text reaches the sounds only through the encoder's own
  image-text alignment, so that the measurement is not saturated by captions naming colour and shape.
- **sketch recognisability** (``sketch/acc1@N``, %): each encoder sketches the world's sketch set with N strokes
  (CLIPasso under that encoder), and one fixed judge (the original CLIP) names the shape of each sketch among
  the six; ``sketch/acc1_photo`` is the judge on the images themselves. Chance: 1/6.

Each model's heads are cached stages (``OUT/audio/<name>/``, ``OUT/audio-img/<name>/``, made again when their
recipe or encoder changed); the metrics are cached in ``OUT/eval/audiosketch_<name>.json`` and
``OUT/eval/audio_img_<name>.json`` with the recipe they were made with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from un2clip.world.sounds import ensure_sketch, ensure_sounds
from un2clip.world.stages import HEADED, cached_metrics, done_time, made_at, trained_stage


@dataclass(frozen=True)
class AudioSketchSettings:
    """Budgets of the two measurements."""

    audio_steps: int = 300
    audio_batch: int = 32
    audio_lr: float = 1e-3
    audio_widths: tuple[int, ...] = (32, 64, 128)
    n_train_sounds: int = 2000
    sounds_per_class: int = 5
    sketch_per_class: int = 2
    sketch_strokes: tuple[int, ...] = (4, 8, 16)
    sketch_steps: int = 100
    sketch_canvas: int = 64


# a smoke test of the plumbing (numbers meaningless)
QUICK = AudioSketchSettings(audio_steps=2, audio_batch=4, audio_widths=(8, 16), n_train_sounds=16,
                            sounds_per_class=1, sketch_per_class=1, sketch_strokes=(2,), sketch_steps=2,
                            sketch_canvas=16)


def audio_fields(world: Path, clip: str, seed: int, s: AudioSketchSettings, *, texts: bool = True) -> dict:
    """The `un2clip train-audio` run of one encoder (RunConfig fields); ``texts=False``: audio-image pairs only
    (``--no-texts``)."""
    options = {"clip_seconds": 1.0, "widths": list(s.audio_widths), "blocks": [1] * len(s.audio_widths)}
    if not texts:  # only then: the recipe of the head on images and captions stays as it was recorded
        options["use_texts"] = False
    return {"objective": "audio", "clip": clip, "data": str(world / "sounds" / "train"), "max_steps": s.audio_steps,
            "batch_size": s.audio_batch, "lr": s.audio_lr, "save_every": max(s.audio_steps, 1), "seed": seed,
            "objective_options": options}


def _zero_shot(head: Path, world: Path, prefix: str, progress: bool) -> dict[str, float]:
    """Top-1 accuracies (%, mean and per fold) of an audio head on the world's test sounds, keys ``prefix/...``."""
    from un2clip.eval.downstream import audio
    from un2clip.load import load_audio_model

    a = audio.evaluate(load_audio_model(head), world / "sounds" / "test", progress=progress)
    return {f"{prefix}/{k}": 100 * v for k, v in a.items() if k.endswith("acc1")}


def _audio_and_sketch(world: Path, spec: str, head: Path, *, judge: str, seed: int, settings: AudioSketchSettings,
                      progress: bool) -> dict[str, float]:
    """``audio/...`` of the head on images and captions, and ``sketch/...`` of the encoder ``spec``."""
    from un2clip.eval.downstream import sketch
    from un2clip.load import load_clip

    s = settings
    metrics = _zero_shot(head, world, "audio", progress)
    k = sketch.evaluate(load_clip(spec), world / "sketch", judge=judge, strokes=s.sketch_strokes, steps=s.sketch_steps,
                        limit=s.sketch_per_class, seed=seed, canvas=s.sketch_canvas, progress=progress)
    return {**metrics, **{f"sketch/{key}": 100 * v for key, v in k.items() if key.startswith("acc1")}}


def evaluate_audio_sketch(out: Path, world: Path, models: dict[str, str], *, judge: str, seed: int,
                          settings: AudioSketchSettings = AudioSketchSettings(), fresh: bool = False,
                          progress: bool = True) -> dict[str, dict[str, float]]:
    """{model name: {audio/..., sketch/...}} for each model spec (see the module); ``judge``: the sketch judge."""
    s = settings
    ensure_sounds(world, n_train=s.n_train_sounds, per_class=s.sounds_per_class)
    ensure_sketch(world, per_class=s.sketch_per_class)
    results = {}
    for name, spec in models.items():
        encoder = made_at(spec)
        heads = {}
        for folder_name, texts in (("audio", True), ("audio-img", False)):
            fields = audio_fields(world, spec, seed, s, texts=texts)
            heads[folder_name], _ = trained_stage(out / folder_name, name, fields, {"run": fields, "encoder": encoder},
                                                  fresh=fresh, progress=progress)

        eval_dir = out / "eval"
        recipe = {"settings": asdict(s), "head": done_time(heads["audio"]), "judge": judge, "encoder": encoder}
        metrics = cached_metrics(eval_dir / f"audiosketch_{name}.json",
                                 partial(_audio_and_sketch, world, spec, heads["audio"] / "run", judge=judge, seed=seed,
                                         settings=s, progress=progress), recipe=recipe, fresh=fresh)
        recipe = {"settings": asdict(s), "head": done_time(heads["audio-img"]), "encoder": encoder}
        images_only = cached_metrics(eval_dir / f"audio_img_{name}.json",
                                     partial(_zero_shot, heads["audio-img"] / "run", world, "audio_img", progress),
                                     recipe=recipe, fresh=fresh)
        results[name] = {**metrics, **images_only}
    return results


def add_audio_sketch(results: dict[str, dict[str, float]], out: Path, world: Path, models: dict[str, str], *,
                     seed: int, settings: AudioSketchSettings, fresh: bool = False,
                     progress: bool = True) -> dict[str, dict[str, float]]:
    """``results`` with the audio (both heads) and sketch metrics of the :data:`~un2clip.world.stages.HEADED` models among ``models``
    added; the original CLIP judges the sketches."""
    chosen = {n: models[n] for n in HEADED if n in models}
    if "original" not in chosen:
        return results
    extra = evaluate_audio_sketch(out, world, chosen, judge=chosen["original"], seed=seed, settings=settings,
                                  fresh=fresh, progress=progress)
    return {n: {**m, **extra.get(n, {})} for n, m in results.items()}
