"""LSeg in `un2clip compare --lseg`: a dense head trained on each frozen encoder, scored on seen and unseen names.

Per world seed, in ``OUT/seed{S}/``:

- ``lseg-set/lseg/``: the seed's LSeg sets, as `un2clip world generate --n-lseg N` writes them (``train`` and
  ``val``: scenes of circle, square, triangle, star; ``unseen``: of arrow and cross);
- ``lseg/<model>/run``: per encoder (original, un2clip) an LSeg head, `un2clip train-dense --head lseg` on
  ``lseg/train`` (the one training loop), a cached stage made again when its recipe, encoder or set changed;
- ``eval/lseg_<model>.json``: `un2clip eval seg --method lseg` of that head on ``lseg/val`` (``lseg/seen_*``) and
  ``lseg/unseen`` (``lseg/unseen_*``): mIoU and aAcc (%), with the references the seg evaluation computes on the
  same masks: all-background (``*_background_miou``) and the patch oracle (``*_oracle_miou``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from un2clip.world.stages import cached_metrics, done_time, made_at, made_stage, trained_stage

SETS = {"seen": "val", "unseen": "unseen"}  # column prefix -> LSeg set scored
KEYS = {"mIoU": "miou", "aAcc": "aacc", "background_mIoU": "background_miou", "oracle_mIoU": "oracle_miou"}


@dataclass(frozen=True)
class LSegSettings:
    """How `un2clip compare --lseg` measures an encoder (defaults: the README's seed-0 measurement)."""

    n_scenes: int = 200  # scenes of each set: train, val (seen names), unseen
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3  # a head from scratch (AdamW, the loop's other defaults)
    features: int | None = None  # the decoder's fusion width (None: the head's default, LSeg's 256)
    image_size: int = 32  # px, the demo world's


# a smoke test of the plumbing (numbers meaningless)
LSEG_QUICK = LSegSettings(n_scenes=4, steps=2, batch_size=2, features=8)


def lseg_fields(data: Path, clip: str, seed: int, s: LSegSettings) -> dict:
    """The `un2clip train-dense --head lseg` run of one encoder (RunConfig fields)."""
    options = {} if s.features is None else {"features": s.features}
    return {"objective": "lseg", "clip": clip, "data": str(data / "train"), "max_steps": s.steps,
            "batch_size": s.batch_size, "lr": s.lr, "save_every": s.steps, "seed": seed,
            "objective_options": options}


def _scores(spec: str, head: Path, data: Path, progress: bool) -> dict[str, float]:
    """``lseg/<seen|unseen>_<key>`` of one head on the seen (val) and unseen sets, by the seg evaluation."""
    from un2clip.eval.seg.report import DataSpec, run_seg

    roots = {prefix: (data / folder).resolve() for prefix, folder in SETS.items()}
    records = run_seg([spec], ["lseg"], [DataSpec("generic", root) for root in roots.values()], heads=[str(head)],
                      precision="fp32", num_workers=0, progress=progress)
    by_root = {r["data"]: r["metrics"] for r in records}
    return {f"lseg/{prefix}_{name}": by_root[str(root)][key] for prefix, root in roots.items()
            for key, name in KEYS.items()}


def lseg_results(seed_dir: Path, models: dict[str, str], *, seed: int, settings: LSegSettings, fresh: bool = False,
                 progress: bool = True) -> dict[str, dict[str, float]]:
    """``{model: {"lseg/seen_miou": ..., ...}}`` for each model spec (see the module)."""
    from un2clip.world.evalsets import write_lseg

    s = settings
    recipe = {"seed": seed, "n_scenes": s.n_scenes, "image_size": s.image_size}
    folder = made_stage(seed_dir, "lseg-set", recipe, partial(write_lseg, seed=seed, n=s.n_scenes,
                                                              image_size=s.image_size, progress=progress), fresh=fresh)
    data = folder / "lseg"
    out = {}
    for name, spec in models.items():
        fields = lseg_fields(data, spec, seed, s)
        upstream = {"model": made_at(spec), "set": done_time(folder)}
        head, _ = trained_stage(seed_dir / "lseg", name, fields, {"run": fields, **upstream}, fresh=fresh,
                                progress=progress)
        out[name] = cached_metrics(seed_dir / "eval" / f"lseg_{name}.json",
                                   partial(_scores, spec, head / "run", data, progress),
                                   recipe={"head": done_time(head), **upstream}, fresh=fresh)
    return out
