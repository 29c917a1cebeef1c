"""The paper's MLLM claim in the shapes world (issue 29): one LLaVA-1.5 recipe on each encoder of a seed.

``un2clip compare --llava`` runs, per world seed, in ``OUT/seed{S}/llava/`` (each a cached training stage of the one
training loop, made again when its recipe or what it starts from changes):

1. the world's LLaVA sets, written into the seed's world when missing (:func:`un2clip.world.evalsets.add_mllm_sets`:
   the files ``world generate --mllm --mllm-instruct N`` writes);
2. ``lm/``: stage lm, the tiny language model alone on the world's train captions (Vicuna's role: shared by every
   encoder of the seed, as LLaVA-1.5 builds every tower on one Vicuna);
3. per encoder, ``<encoder>/pretrain/`` (stage 1: the projector alone on the captions, the encoder and LM frozen)
   and ``<encoder>/finetune/`` (stage 2: projector and LM on the paired instruction set), the same draws for every
   encoder (the seed is the world seed);
4. each finished LLaVA scored on the world MMVP-MLLM (silent colours: the claim's set), its talk-colour control and
   the world CV-Bench, cached in ``OUT/seed{S}/eval/llava_<encoder>.json``: pair and question accuracy per set and
   per attribute, CV-Bench per task; and its encoder's separation of the silent pairs in the embedding and in the
   tokens the LLaVA reads (:func:`pair_separation`).

The settings are the recipe docs/world_competence.md picked on a validation world (seed 7): stage lm two passes
of 64 captions at 1e-3, stage 1 one pass of 32 at 1e-3, stage 2 5,000 steps of 16 at 2e-4, cosine with 3 % warm-up.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from un2clip.train.llava import EPOCHS_LM, STAGE_DEFAULTS, llava_defaults
from un2clip.world.stages import cached_metrics, made_at, trained_stage

#: the MMVP-MLLM sets of the world (folder under mllm/ -> metric prefix) and CV-Bench's
MMVP_SETS = {"mmvp": "llava_mmvp", "mmvp-talk": "llava_talk"}
CVBENCH_PREFIX = "llava_cvbench"
DEFAULT_ENCODERS = ("original", "un2clip", "genhancer", "diva")
SEPARATION_PREFIX = "llava_sep"  # the encoder's separation of the silent pairs (pair_separation)
EVAL_PROTOCOL = 2  # 2: the evaluation also measures pair_separation


@dataclass(frozen=True)
class LlavaSettings:
    encoders: tuple[str, ...] | None = None  # None: DEFAULT_ENCODERS among the compared variants
    n_instruct: int = 10_000  # instruction scenes (in contrastive pairs), three questions each
    pairs_per_pattern: int = 15  # of each MMVP-MLLM set: 9 patterns x 15 = 135 pairs
    n_cvbench_per_task: int = 50
    lm_epochs: float = EPOCHS_LM
    lm_batch: int = STAGE_DEFAULTS["lm"]["batch_size"]
    pretrain_batch: int = 32
    pretrain_epochs: float = 1.0
    finetune_batch: int = 16
    finetune_lr: float = 2e-4
    finetune_steps: int = 5000
    eval_batch: int = 32
    max_new_tokens: int = 4  # answers are one word or one letter
    max_steps: int | None = None  # caps every stage (the smoke test); None: the recipe's


LLAVA_QUICK = LlavaSettings(n_instruct=8, pairs_per_pattern=1, n_cvbench_per_task=1,
                            finetune_steps=2, max_steps=2, eval_batch=8)


def encoders_of(settings: LlavaSettings, variants: list[str]) -> list[str]:
    """The variants a LLaVA is trained on: those ``settings.encoders`` names (each must be among ``variants``), or
    by default those of :data:`DEFAULT_ENCODERS` among them."""
    if settings.encoders is not None and (missing := [n for n in settings.encoders if n not in variants]):
        raise ValueError(f"--llava-encoders {' '.join(missing)}: not among the compared variants "
                         f"({', '.join(variants)}); add them to --variants")
    return [n for n in (settings.encoders or DEFAULT_ENCODERS) if n in variants]


def stage_fields(stage: str, data: Path, seed: int, settings: LlavaSettings, n_samples: int, **options) -> dict:
    """RunConfig fields of one stage of the recipe (as ``un2clip llava train --stage STAGE`` with the settings'
    batch, learning rate and length would run it). ``options``: the objective's (``language_model``, ``init``) and
    ``clip`` for stage pretrain."""
    batch, epochs, lr, steps = {"lm": (settings.lm_batch, settings.lm_epochs, None, None),
                                "pretrain": (settings.pretrain_batch, settings.pretrain_epochs, None, None),
                                "finetune": (settings.finetune_batch, 1.0, settings.finetune_lr,
                                             settings.finetune_steps)}[stage]
    if settings.max_steps is not None:
        steps = min(steps or max(1, int(n_samples * epochs) // batch), settings.max_steps)
    fields = llava_defaults(stage, n_samples=n_samples, batch_size=batch, max_steps=steps, epochs=epochs)
    fields.update(batch_size=batch, max_steps=steps or fields["max_steps"], data=str(data), seed=seed,
                  objective="llava-lm" if stage == "lm" else "llava")
    if lr is not None:
        fields["lr"] = lr
    clip = options.pop("clip", None)
    if clip is not None:
        fields["clip"] = str(clip)
    fields["objective_options"] = ({} if stage == "lm" else {"stage": stage}) | {k: str(v) for k, v in options.items()}
    return fields


def ensure_sets(world: Path, settings: LlavaSettings) -> Path:
    """``world/mllm/``, written (again) when missing or made with other counts; returns it."""
    from un2clip.world.evalsets import add_mllm_sets
    from un2clip.world.mllm import CVBENCH_TASKS
    from un2clip.world.pairs import MMVP_TYPES

    meta = json.loads((world / "world.json").read_text(encoding="utf-8")).get("mllm") or {}
    wanted = {"n_instruct": settings.n_instruct, "instruct_pairs": True,
              "n_mmvp_mllm": 2 * settings.pairs_per_pattern * len(MMVP_TYPES),
              "n_cvbench": len(CVBENCH_TASKS) * settings.n_cvbench_per_task}
    if any(meta.get(k) != v for k, v in wanted.items()) or not (world / "mllm" / "instruct.json").is_file():
        print(f"{world}: writing the LLaVA sets (mllm/)")
        add_mllm_sets(world, n_instruct=settings.n_instruct, pairs_per_pattern=settings.pairs_per_pattern,
                      n_cvbench_per_task=settings.n_cvbench_per_task)
    return world / "mllm"


def _count(path: Path) -> int:
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for row in csv.DictReader(f) if row["caption"].strip())


def per_attribute(samples_csv: Path, pairs_jsonl: Path, prefix: str) -> dict[str, float]:
    """``{prefix}/<attribute>`` (pairs both right, %) and ``{prefix}/<attribute>_q`` (questions right, %) from an
    MMVP-MLLM samples file (``index``, ``correct``) and the set's ``pairs.jsonl`` (``indices``, ``attribute``)."""
    with open(samples_csv, newline="", encoding="utf-8") as f:
        correct = {int(row["index"]): int(row["correct"]) for row in csv.DictReader(f)}
    pairs, questions = defaultdict(list), defaultdict(list)
    for line in pairs_jsonl.read_text(encoding="utf-8").splitlines():
        pair = json.loads(line)
        right = [correct[i] for i in pair["indices"]]
        pairs[pair["attribute"]].append(all(right))
        questions[pair["attribute"]] += right
    out = {}
    for attribute in sorted(pairs):
        out[f"{prefix}/{attribute}"] = 100.0 * sum(pairs[attribute]) / len(pairs[attribute])
        out[f"{prefix}/{attribute}_q"] = 100.0 * sum(questions[attribute]) / len(questions[attribute])
    return out


def separation(a, b):
    """How far apart the two images of each pair are, relative to images of different pairs: the mean cosine
    distance between ``a[i]`` and ``b[i]`` over the mean between ``a[i]`` and ``b[i - 1]`` (features (P, ..., D),
    distances averaged over any middle axes, e.g. patch positions). 0: each pair's images the same; about 1: a
    pair's images as far apart as any two."""
    import torch.nn.functional as F

    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    if len(a) < 2:
        raise ValueError("separation needs two or more pairs")
    same = (1 - (a * b).sum(-1)).mean()
    other = (1 - (a * b.roll(1, dims=0)).sum(-1)).mean()
    return float(same / other)


#: what pair_separation measures: (metric suffix, what it is)
SEPARATIONS = (("embedding", "the image embedding (what MMVP-VLM and un²CLIP's decoder read)"),
               ("class_token", "the class token after the last layer"),
               ("patch_last", "the patch tokens after the last layer"),
               ("patch_read", "the patch tokens the LLaVA reads (LLaVA-1.5: the penultimate layer's)"))


def pair_separation(spec: str, pairs: Path) -> dict[str, float]:
    """:func:`separation` of the world MMVP-MLLM pairs in ``pairs`` (``pairs.jsonl``, ``MMVP Images/``) for the
    CLIP ``spec``, in each representation of :data:`SEPARATIONS` (``<name>`` keys): where an encoder's change to
    the pairs lands, and whether it reaches the tokens a LLaVA reads."""
    import torch
    from PIL import Image

    from un2clip.load import load_clip
    from un2clip.models.clip import pool_image
    from un2clip.models.llava import VISION_FEATURE_LAYER

    model = load_clip(spec).eval()
    records = [json.loads(line) for line in (pairs / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    images = [Image.open(pairs / "MMVP Images" / f"{i}.jpg").convert("RGB") for r in records for i in r["indices"]]
    with torch.no_grad():
        pixels = model.preprocess(images)
        out = model.vision_model(pixel_values=pixels.to(model.device), output_hidden_states=True)
        hidden = out.hidden_states  # one pass of the tower gives the embedding (as encode_image pools it) too
        embedding = pool_image(out, model.vision_model, model.visual_projection, model.meta.pooling)
        features = {"embedding": embedding, "class_token": hidden[-1][:, 0],
                    "patch_last": hidden[-1][:, 1:], "patch_read": hidden[VISION_FEATURE_LAYER][:, 1:]}
    return {name: separation(f[0::2], f[1::2]) for name, f in features.items()}


def llava_scores(llava: Path, sets: Path, folder: Path, settings: LlavaSettings, progress: bool) -> dict[str, float]:
    """The world MMVP-MLLM sets and CV-Bench of one trained LLaVA (samples files written to ``folder``)."""
    from un2clip.eval.registry import evaluate
    from un2clip.models.llava import LlavaChat

    model = LlavaChat.from_pretrained(llava)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, float] = {}
    opts = {"batch_size": settings.eval_batch, "max_new_tokens": settings.max_new_tokens, "progress": progress}
    for name, prefix in MMVP_SETS.items():
        if not (sets / name / "Questions.csv").is_file():  # no talk control in a world without talk colours
            continue
        samples = folder / f"{name}.samples.csv"
        m = evaluate("mmvp-mllm", model, sets / name, samples_csv=samples, **opts)
        out.update({f"{prefix}/pairs": m["accuracy"], f"{prefix}/questions": m["question_accuracy"],
                    f"{prefix}/n_unmatched": m["n_unmatched"]})
        out.update(per_attribute(samples, sets / name / "pairs.jsonl", prefix))
    m = evaluate("cvbench", model, sets / "cvbench", samples_csv=folder / "cvbench.samples.csv", **opts)
    out.update({f"{CVBENCH_PREFIX}/{k.removeprefix('task_')}": v for k, v in m.items() if k.startswith("task_")})
    out[f"{CVBENCH_PREFIX}/n_unmatched"] = m["n_unmatched"]
    return out


def _evaluation(finetune: Path, spec: str, sets: Path, settings: LlavaSettings, progress: bool) -> dict[str, float]:
    """What compare caches per encoder: its LLaVA's scores (:func:`llava_scores`) and its separation of the silent
    pairs (:func:`pair_separation`)."""
    metrics = llava_scores(finetune / "run" / "llava", sets, finetune / "eval", settings, progress)
    return metrics | {f"{SEPARATION_PREFIX}/{k}": v for k, v in pair_separation(spec, sets / "mmvp").items()}


def llava_results(seed_dir: Path, models: dict[str, str], *, seed: int, settings: LlavaSettings, fresh: bool = False,
                  progress: bool = True) -> dict[str, dict[str, float]]:
    """``{encoder: metrics}`` for the encoders of ``models`` that ``settings.encoders`` names (see the module); each
    one named must be among ``models``."""
    names = encoders_of(settings, list(models))
    world = seed_dir / "world"
    sets = ensure_sets(world, settings)
    counts = json.loads((world / "world.json").read_text(encoding="utf-8"))["mllm"]
    root = seed_dir / "llava"
    captions = world / "train" / "captions.csv"
    lm_fields = stage_fields("lm", captions, seed, settings, _count(captions))
    lm, _ = trained_stage(root, "lm", lm_fields, {"run": lm_fields, "world": made_at(world)}, fresh=fresh,
                          progress=progress)
    pretrain_data, instruct = sets / "pretrain.json", sets / "instruct.json"
    n_pretrain, n_instruct = _count(pretrain_data), _count(instruct)  # read once for every encoder
    out = {}
    for name in names:
        spec = models[name]
        fields = stage_fields("pretrain", pretrain_data, seed, settings, n_pretrain, clip=spec,
                              language_model=lm / "run" / "lm")
        pretrain, _ = trained_stage(root / name, "pretrain", fields, {"run": fields, "encoder": made_at(spec),
                                                                      "lm": made_at(lm)}, fresh=fresh, progress=progress)
        fields = stage_fields("finetune", instruct, seed, settings, n_instruct, init=pretrain / "run")
        finetune, _ = trained_stage(root / name, "finetune", fields, {"run": fields, "init": made_at(pretrain),
                                                                      "sets": counts}, fresh=fresh, progress=progress)
        print(f"seed {seed}: LLaVA on {name} ready -> {finetune / 'run' / 'llava'}")
        out[name] = cached_metrics(
            seed_dir / "eval" / f"llava_{name}.json", partial(_evaluation, finetune, spec, sets, settings, progress),
            recipe={"llava": made_at(finetune), "sets": counts, "eval_batch": settings.eval_batch,
                    "max_new_tokens": settings.max_new_tokens, "protocol": EVAL_PROTOCOL}, fresh=fresh)
    return out
