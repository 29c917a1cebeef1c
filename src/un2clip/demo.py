"""`make demo` / `un2clip demo`: the whole un²CLIP method in the shapes world, on a CPU.

Stages (each cached in ``OUT/<stage>/`` and skipped when done; ``--fresh`` recomputes):

1. ``world``    generate the shapes world (training images with captions, MMVP-layout pairs,
                zero-shot sets, segmentation masks)
2. ``clip``     contrastive pre-training of the tiny CLIP on the world's captions
3. ``decoder``  an unCLIP decoder trained on that CLIP's image embeddings
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

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "tiny-world"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and learning rates of each stage (the shipped assets were made with these)."""

    n_train: int = 20000
    n_val: int = 1000
    pairs_per_pattern: int = 60
    n_zeroshot_per_class: int = 50
    n_seg: int = 200
    rare_rate: float = 0.03
    pretrain_steps: int = 1000
    pretrain_batch: int = 256
    pretrain_lr: float = 1e-3
    decoder_steps: int = 1500
    decoder_batch: int = 64
    decoder_lr: float = 5e-4
    finetune_steps: int = 300
    finetune_batch: int = 32
    finetune_lr: float = 1e-5
    sampling_steps: int = 50


QUICK = DemoSettings(n_train=512, n_val=64, pairs_per_pattern=4, n_zeroshot_per_class=6, n_seg=8, pretrain_steps=4, pretrain_batch=32,
                     decoder_steps=4, decoder_batch=16, finetune_steps=3, finetune_batch=8, sampling_steps=4)


def _cli(argv: list[str]) -> None:
    from un2clip.cli import main as cli

    rc = cli(argv)
    if rc:
        raise SystemExit(f"demo stage failed: un2clip {' '.join(argv)} (exit {rc})")


def _stage(out: Path, name: str, fresh: bool) -> tuple[Path, bool]:
    """(folder, done?) of a stage; a stage is done when its DONE marker exists."""
    folder = out / name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    return folder, (folder / "DONE").exists()


def _done(folder: Path, seconds: float) -> None:
    (folder / "DONE").write_text(json.dumps({"seconds": round(seconds, 1)}))


def recorded_stage(parent: Path, name: str, recipe: dict, fresh: bool, *,
                   keep_unrecorded: bool = False) -> tuple[Path, bool]:
    """(folder, done?) of a stage that records how it was made (``recipe.json``, see :func:`finish_stage`).

    A finished stage whose record differs from ``recipe`` is removed and reported not done; so is
    one without a record, unless ``keep_unrecorded`` (stages made before records were kept).
    """
    folder, done = _stage(parent, name, fresh)
    record = folder / "recipe.json"
    if done and (json.loads(record.read_text()) != recipe if record.exists() else not keep_unrecorded):
        print(f"{folder}: made another way than now asked ({recipe}), recomputing")
        done = False
    if not done and folder.exists():
        shutil.rmtree(folder)
    return folder, done


def finish_stage(folder: Path, recipe: dict, started: float) -> None:
    """Record how a stage was made and mark it done."""
    (folder / "recipe.json").write_text(json.dumps(recipe))
    _done(folder, time.perf_counter() - started)


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


def run_demo(out: Path, *, seed: int = 0, fresh: bool = False, from_scratch: bool = False,
             settings: DemoSettings = DemoSettings(), progress: bool = True,
             weights_seed: int | None = None) -> Path:
    """Run (or reuse) every stage and write ``out/report.md``; returns its path.

    ``weights_seed``: start stages 2 and 3 from the shipped weights of that seed (which must exist)
    instead of the world seed's; ``None`` uses the world seed's when shipped, else trains them.
    """
    from un2clip.data.world import generate_world

    out.mkdir(parents=True, exist_ok=True)
    s = settings
    flags = [] if progress else ["--no-progress"]

    world, done = _stage(out, "world", fresh)
    if not done:
        t = time.perf_counter()
        generate_world(world, seed=seed, n_train=s.n_train, n_val=s.n_val, rare_rate=s.rare_rate,
                       pairs_per_pattern=s.pairs_per_pattern, n_zeroshot_per_class=s.n_zeroshot_per_class,
                       n_seg=s.n_seg, progress=progress, overwrite=True)
        _done(world, time.perf_counter() - t)

    shipped = shipped_weights(seed, weights_seed)
    if weights_seed is not None:
        if from_scratch:
            raise ValueError("--weights-seed starts from shipped weights; it cannot go with --from-scratch")
        if not (shipped / "clip" / "config.json").exists() or not (shipped / "decoder" / "unet").is_dir():
            raise FileNotFoundError(f"no shipped CLIP and decoder for --weights-seed {weights_seed} in {shipped}")
    use_clip = (shipped / "clip" / "config.json").exists() and not from_scratch
    clip_source = f"shipped {shipped.name}" if use_clip else "pretrain"
    clip_dir, done = _model_stage(out, "clip", fresh, clip_source)
    if not done:
        t = time.perf_counter()
        if use_clip:
            shutil.copytree(shipped / "clip", clip_dir / "clip", dirs_exist_ok=True)
        else:
            _cli(["pretrain", "--preset", "tiny", "--data", str(world / "train" / "captions.csv"),
                  "--max-steps", str(s.pretrain_steps), "--batch-size", str(s.pretrain_batch),
                  "--lr", str(s.pretrain_lr), "--weight-decay", "0.1", "--warmup-steps", "50",
                  "--lr-schedule", "cosine", "--save-every", "250", "--seed", str(seed),
                  "--output", str(clip_dir / "run"), *flags])
            shutil.copytree(clip_dir / "run" / "clip", clip_dir / "clip", dirs_exist_ok=True)
        finish_stage(clip_dir, {"source": clip_source}, t)
    clip = clip_dir / "clip"

    use_decoder = (shipped / "decoder" / "unet").is_dir() and not from_scratch
    dec_source = f"shipped {shipped.name}" if use_decoder else "train-decoder"
    dec_dir, done = _model_stage(out, "decoder", fresh, dec_source)
    if not done:
        t = time.perf_counter()
        if use_decoder:
            shutil.copytree(shipped / "decoder", dec_dir / "decoder", dirs_exist_ok=True)
        else:
            _cli(["train-decoder", "--clip", str(clip), "--preset", "tiny",
                  "--data", str(world / "train" / "images"), "--max-steps", str(s.decoder_steps),
                  "--batch-size", str(s.decoder_batch), "--lr", str(s.decoder_lr), "--warmup-steps", "50",
                  "--lr-schedule", "cosine", "--save-every", "250", "--seed", str(seed),
                  "--output", str(dec_dir / "run"), *flags])
            shutil.copytree(dec_dir / "run" / "decoder", dec_dir / "decoder", dirs_exist_ok=True)
        finish_stage(dec_dir, {"source": dec_source}, t)
    decoder = dec_dir / "decoder"

    ft_dir, done = _stage(out, "finetune", fresh)
    if not done:
        t = time.perf_counter()
        if ft_dir.exists():
            shutil.rmtree(ft_dir)
        _cli(["finetune", "--clip", str(clip), "--decoder", str(decoder),
              "--data", str(world / "train" / "images"), "--max-steps", str(s.finetune_steps),
              "--batch-size", str(s.finetune_batch), "--lr", str(s.finetune_lr), "--save-every", "100",
              "--seed", str(seed), "--output", str(ft_dir), *flags])
        _done(ft_dir, time.perf_counter() - t)

    models = {"original": str(clip), "un2clip": str(ft_dir)}
    from un2clip.demo_report import evaluate_models, write_report

    results = evaluate_models(out / "eval", world, models, decoder, seed=seed, fresh=fresh, progress=progress,
                              sampling_steps=s.sampling_steps)
    return write_report(out, results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="un2clip demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/demo", help="where every stage writes (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="world and training seed (default 0)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing finished ones")
    p.add_argument("--from-scratch", action="store_true",
                   help="retrain the tiny CLIP and decoder instead of starting from the shipped weights")
    p.add_argument("--weights-seed", type=int, metavar="S",
                   help="start from the shipped CLIP and decoder of seed S whatever --seed is (the world, pairs "
                        "and fine-tune draws still follow --seed)")
    p.add_argument("--quick", action="store_true", help="a few steps of each stage (a smoke test, no result)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    report = run_demo(Path(args.output), seed=args.seed, fresh=args.fresh, from_scratch=args.from_scratch,
                      settings=QUICK if args.quick else DemoSettings(), progress=not args.no_progress,
                      weights_seed=args.weights_seed)
    print(report.read_text())
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
