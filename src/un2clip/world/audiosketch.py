"""AudioCLIP and CLIPasso in the shapes world: two more measurements of an image encoder, for `un2clip compare`.

- **audio zero-shot** (``audio/acc1``, %): an AudioCLIP head trained (`un2clip train-audio`, the one training
  loop) into each encoder's joint space on the world's scene sounds, paired with their images (through that
  encoder) and captions (through its text tower), then classifying the held-out single-object sounds among 36
  colour + shape names (``audio/fold<N>_acc1`` too). The text tower is the same for the original CLIP and
  un²CLIP, so a difference comes from the image embeddings the head was pulled towards. Chance: 1/36.
- **sketch recognisability** (``sketch/acc1@N``, %): each encoder sketches the world's sketch set with N strokes
  (CLIPasso under that encoder), and one fixed judge (the original CLIP) names the shape of each sketch among
  the six; ``sketch/acc1_photo`` is the judge on the images themselves. Chance: 1/6.

Each model's head is a cached stage (``OUT/audio/<name>/``, made again when its recipe or encoder changed);
the metrics are cached in ``OUT/eval/audiosketch_<name>.json`` with the recipe they were made with.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from un2clip.world.sounds import ensure_sketch, ensure_sounds
from un2clip.world.stages import finish_stage, recorded_stage, train_run


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


def audio_fields(world: Path, clip: str, seed: int, s: AudioSketchSettings) -> dict:
    """The `un2clip train-audio` run of one encoder (RunConfig fields)."""
    return {"objective": "audio", "clip": clip, "data": str(world / "sounds" / "train"), "max_steps": s.audio_steps,
            "batch_size": s.audio_batch, "lr": s.audio_lr, "save_every": max(s.audio_steps, 1), "seed": seed,
            "objective_options": {"clip_seconds": 1.0, "widths": list(s.audio_widths),
                                  "blocks": [1] * len(s.audio_widths)}}


def _made(folder: Path) -> int:
    done = Path(folder) / "DONE"
    return done.stat().st_mtime_ns if done.exists() else 0


def _model_made(spec: str) -> int:
    """When the model folder (or run) ``spec`` was last written: its newest file's mtime."""
    path = Path(spec)
    return max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0)


def evaluate_audio_sketch(out: Path, world: Path, models: dict[str, str], *, judge: str, seed: int,
                          settings: AudioSketchSettings = AudioSketchSettings(), fresh: bool = False,
                          progress: bool = True) -> dict[str, dict[str, float]]:
    """{model name: {audio/..., sketch/...}} for each model spec (see the module); ``judge``: the sketch judge."""
    from un2clip.eval.downstream import audio, sketch
    from un2clip.load import load_audio_model, load_clip

    s = settings
    ensure_sounds(world, n_train=s.n_train_sounds, per_class=s.sounds_per_class)
    ensure_sketch(world, per_class=s.sketch_per_class)
    results = {}
    for name, spec in models.items():
        fields = audio_fields(world, spec, seed, s)
        recipe = {"run": fields, "encoder": _model_made(spec)}
        folder, done = recorded_stage(out / "audio", name, recipe, fresh)
        if not done:
            t = time.perf_counter()
            folder.mkdir(parents=True)
            train_run(**fields, output=str(folder / "run"), progress=progress)
            finish_stage(folder, recipe, t)
        cached = out / "eval" / f"audiosketch_{name}.json"
        # as JSON stores it (tuples as lists), so that a cached record compares equal
        wanted = json.loads(json.dumps({"settings": asdict(s), "head": _made(folder), "judge": judge,
                                        "encoder": recipe["encoder"]}))
        if cached.exists() and not fresh and (record := json.loads(cached.read_text()))["recipe"] == wanted:
            results[name] = record["metrics"]
            continue
        a = audio.evaluate(load_audio_model(folder / "run"), world / "sounds" / "test", progress=progress)
        metrics = {f"audio/{k}": 100 * v for k, v in a.items() if k.endswith("acc1")}
        k = sketch.evaluate(load_clip(spec), world / "sketch", judge=judge, strokes=s.sketch_strokes,
                            steps=s.sketch_steps, limit=s.sketch_per_class, seed=seed, canvas=s.sketch_canvas,
                            progress=progress)
        metrics.update({f"sketch/{key}": 100 * v for key, v in k.items() if key.startswith("acc1")})
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"recipe": wanted, "metrics": metrics}, indent=2))
        results[name] = metrics
    return results


COMPARED = ("original", "un2clip")  # the encoders compare measures this way (an audio head each is a training run)


def add_audio_sketch(results: dict[str, dict[str, float]], out: Path, world: Path, models: dict[str, str], *,
                     seed: int, settings: AudioSketchSettings, fresh: bool = False,
                     progress: bool = True) -> dict[str, dict[str, float]]:
    """``results`` with the audio and sketch metrics of the :data:`COMPARED` models among ``models`` added; the
    original CLIP judges the sketches."""
    chosen = {n: models[n] for n in COMPARED if n in models}
    if "original" not in chosen:
        return results
    extra = evaluate_audio_sketch(out, world, chosen, judge=chosen["original"], seed=seed, settings=settings,
                                  fresh=fresh, progress=progress)
    return {n: {**m, **extra.get(n, {})} for n, m in results.items()}
