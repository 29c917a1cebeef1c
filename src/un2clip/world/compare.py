"""`un2clip compare`: the un²CLIP fine-tune, its ablations and its alignment keepers, over world seeds.

Per world seed S, in ``OUT/seed{S}/``:

1. the demo's stages (``un2clip demo``: world, tiny CLIP and unCLIP decoder, from the shipped
   ``assets/tiny-world/seed{S}/`` when they exist, and the plain un²CLIP fine-tune, which is
   the ``un2clip`` variant), with the demo's report of original vs un²CLIP;
2. one cached stage per variant in ``OUT/seed{S}/variants/<name>/``: a fine-tune with one switch
   changed (same steps, batch, learning rate and seed as the demo's), or an export of the
   un²CLIP run (WiSE-FT ``--alpha``); a stage whose command changed is recomputed;
3. every variant evaluated by the demo's evaluators (world-MMVP, zero-shot, held-out diffusion
   loss with the demo's frozen decoder, linear probes), cached in ``OUT/seed{S}/eval/<name>.json``.

Then ``OUT/report.md`` (mean ± std over seeds, and the paired change against the original),
``OUT/results.json`` and ``OUT/mmvp_vs_zeroshot.png`` (needs matplotlib).

The encoder evaluated is always the encoder alone: the projector of the projector ablations
sits between encoder and decoder and is left out, as in the paper; ``update-decoder``'s
diffusion loss is measured with the original (frozen) decoder like every other variant.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from un2clip.world.audiosketch import AudioSketchSettings
from un2clip.world.demo import QUICK as DEMO_QUICK
from un2clip.world.demo import DemoSettings, finetune_settings, run_demo, start_weights
from un2clip.world.grounding import GroundingSettings
from un2clip.world.llava import LlavaSettings
from un2clip.world.lseg import LSegSettings
from un2clip.world.segheads import SegHeadSettings
from un2clip.world.stages import HEADED, done_time, finish_stage, recorded_stage, train_run


@dataclass(frozen=True)
class CompareSettings:
    """The demo's settings (shared by every fine-tune) plus those of the variants."""

    demo: DemoSettings = field(default_factory=DemoSettings)
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75)  # WiSE-FT exports of the un²CLIP run
    anchor_weights: tuple[float, ...] = (0.1, 1.0)  # λ of the anchor term (1 - cosine to the original)
    lora_rank: int = 8
    lora_lr_factor: float = 10.0  # LoRA's learning rate = the fine-tune's x this (adapters start at zero)
    grounding: GroundingSettings | None = None  # --grounding: a grounding head per encoder (original, un2clip)
    # issue 31: AudioCLIP zero-shot and CLIPasso recognisability of original and un2clip (None: not measured)
    audio_sketch: AudioSketchSettings | None = None
    lseg: LSegSettings | None = None  # --lseg: an LSeg head per encoder (original, un2clip), seen and unseen names
    seg_heads: SegHeadSettings | None = None  # --seg-heads: every training-free head, ± PAMR, on every variant
    llava: LlavaSettings | None = None  # --llava: one LLaVA-1.5 recipe per encoder, world MMVP-MLLM and CV-Bench


# a smoke test: the demo's quick stages in a smaller world (every variant still trains and is evaluated)
QUICK = CompareSettings(demo=replace(DEMO_QUICK, n_train=128, n_val=16, pairs_per_pattern=2, n_zeroshot_per_class=3,
                                     n_seg=4),
                        alphas=(0.5,), anchor_weights=(1.0,), lora_rank=2)


@dataclass(frozen=True)
class Variant:
    """One model of the comparison: how it is made from a seed's demo stages."""

    name: str
    kind: str  # "original" | "un2clip" (the demo's runs) | "finetune" | "export" | "diva"
    description: str
    options: dict = field(default_factory=dict)  # objective options of `un2clip finetune` (its flags)
    lr_factor: float = 1.0
    alpha: float | None = None
    run: dict = field(default_factory=dict)  # RunConfig fields replacing the demo's fine-tune settings


def variants_for(settings: CompareSettings) -> list[Variant]:
    """Every variant, in the order of the report."""
    out = [
        Variant("original", "original", "the tiny CLIP before fine-tuning"),
        Variant("un2clip", "un2clip", "un²CLIP: encoder trained through the frozen unCLIP decoder (the demo's run)"),
        Variant("projector-random", "finetune", "paper ablation: trainable random linear layer before the decoder",
                {"projector": "random"}),
        Variant("projector-identity", "finetune",
                "paper ablation: trainable identity-initialised linear layer before the decoder",
                {"projector": "identity"}),
        Variant("update-decoder", "finetune", "paper ablation: decoder updated together with the encoder",
                {"train_decoder": True}),
    ]
    out += [Variant(f"alpha{a:g}", "export", f"WiSE-FT: image tower = {1 - a:g} · original + {a:g} · un2clip",
                    alpha=a) for a in settings.alphas]
    out += [Variant(f"anchor{w:g}", "finetune", f"un²CLIP + {w:g} · mean(1 - cos) to the original encoder",
                    {"anchor_weight": w}) for w in settings.anchor_weights]
    out.append(Variant("lora", "finetune", f"un²CLIP through rank-{settings.lora_rank} LoRA adapters (merged), "
                       f"learning rate x{settings.lora_lr_factor:g}",
                       {"lora_rank": settings.lora_rank}, lr_factor=settings.lora_lr_factor))
    out.append(Variant("genhancer", "genhancer",
                       "GenHancer as its authors run it: stage 1 a small FLUX-style transformer (2 double + 4 single "
                       "blocks) learns by rectified flow (logit-normal t) to denoise the shared VAE's latents from "
                       "the frozen CLIP's class token (two LayerNorm-MLPs: modulation vector, one attention token); "
                       "stage 2 it is frozen and the image tower trains through LoRA (r16, α16, dropout 0.1, every "
                       "linear layer)", dict(GENHANCER_STAGE2["objective_options"]),
                       run={k: v for k, v in GENHANCER_STAGE2.items() if k != "objective_options"}))
    out.append(Variant("genhancer-unet", "genhancer-unet",
                       "GenHancer-style with un²CLIP's recipe (the earlier row): a half-width latent UNet (DDPM "
                       "v-prediction) trained on the CLIP's class-token embedding first (no noise augmentation), "
                       "then frozen while the whole tower is fine-tuned like un²CLIP"))
    out.append(Variant("diva", "diva",
                       "DIVA as its authors run it: template hidden states + projected class and patch tokens "
                       "added position by position, two draws per image summed, SGD + cosine with 0.5 % warm-up; "
                       "through a frozen text-to-image decoder trained on the world's captions",
                       dict(DIVA_OPTIONS), run=dict(DIVA_RUN)))
    out.append(Variant("diva-adamw", "diva",
                       "DIVA with un²CLIP's recipe (the earlier row): projected tokens appended after the template's "
                       "text states, one draw, AdamW at the fine-tune's lr, constant"))
    return out


#: DIVA's released recipe (DIVA_for_OpenAICLIP.sh, run_DIVA_with_OpenAICLIP.py): SGD momentum 0.9, lr 1e-4,
#: no weight decay, cosine after warm-up over 0.5 % of the steps (HF's ceil), clipping at 1.0
DIVA_RUN = {"optimizer": "sgd", "lr": 1e-4, "weight_decay": 0.0, "lr_schedule": "cosine", "max_grad_norm": 1.0}
DIVA_WARMUP_RATIO = 0.005
#: its condition: tokens added to the template's hidden states, as many as the template is long (None), and
#: --train_steps 2 (two timestep / noise / patch draws per image per step, gradients summed)
DIVA_OPTIONS = {"combine": "add", "n_patch_tokens": None, "draws_per_image": 2, "sum_draws": True}
#: GenHancer's stage 1 (train_configs/test_OpenAICLIP_224_stage1.yaml): AdamW lr 1e-4, weight decay 0.01,
#: 10 warm-up steps then constant, clipping at 1.0
GENHANCER_STAGE1 = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01, "warmup_steps": 10,
                    "lr_schedule": "constant", "max_grad_norm": 1.0, "objective_options": {"logit_normal_scale": 1.0}}
#: its stage 2 (test_OpenAICLIP_224_stage2_only.yaml / train_OpenAICLIP_stage2_only.py): the same AdamW at lr 1e-5,
#: LoRA r16 alpha16 dropout 0.1 on all linear layers (biases of the adapted layers train: bias "lora_only")
GENHANCER_STAGE2 = {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.01, "warmup_steps": 10,
                    "lr_schedule": "constant", "max_grad_norm": 1.0,
                    "objective_options": {"lora_rank": 16, "lora_alpha": 16.0, "lora_dropout": 0.1,
                                          "lora_bias": "lora_only", "logit_normal_scale": 1.0}}


def run_settings(variant: Variant, s: DemoSettings) -> dict:
    """The training settings of a trained variant's encoder run (steps, batch, optimiser, schedule, options)."""
    fields = {"max_steps": s.finetune_steps, "batch_size": s.finetune_batch, "optimizer": "adamw",
              "lr": float(f"{s.finetune_lr * variant.lr_factor:g}"), "weight_decay": 0.0, "warmup_steps": 0,
              "lr_schedule": "constant", "max_grad_norm": 1.0}
    fields.update(variant.run)
    if variant.run.get("optimizer") == "sgd" and variant.kind == "diva":  # 0.5 % of the steps, rounded up as HF does
        fields["warmup_steps"] = math.ceil(DIVA_WARMUP_RATIO * fields["max_steps"])
    return fields


def select_variants(settings: CompareSettings, names: Sequence[str] | None) -> list[Variant]:
    """The named variants (all when None), in report order; an unknown name is an error listing the known ones."""
    known = variants_for(settings)
    if not names:
        return known
    by_name = {v.name: v for v in known}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(by_name)}")
    return [v for v in known if v.name in set(names)]


def diva_available(preset: str) -> str | None:
    """None when the DIVA objective and the world's text-to-image preset are registered, else why not."""
    from un2clip.models.presets import PRESETS
    from un2clip.train.recipes import OBJECTIVES

    if "diva" not in OBJECTIVES:
        return "the objective 'diva' is not registered in un2clip.train.recipes.OBJECTIVES"
    if preset not in PRESETS:
        return f"no {preset!r} preset (a text-to-image decoder for the shapes world)"
    return None


# -- stages of one seed ----------------------------------------------------------------------------

def _forget_stale_demo_finetune(seed_dir: Path, demo: DemoSettings) -> None:
    """A finished demo fine-tune with other steps / batch / lr than asked: drop it so the demo redoes it."""
    import yaml

    config = seed_dir / "finetune" / "config.yaml"
    if not (seed_dir / "finetune" / "DONE").exists() or not config.exists():
        return
    cfg = yaml.safe_load(config.read_text())
    wanted = (demo.finetune_steps, demo.finetune_batch, demo.finetune_lr)
    if (int(cfg["max_steps"]), int(cfg["batch_size"]), float(cfg["lr"])) != wanted:
        print(f"{seed_dir / 'finetune'}: other steps, batch or lr than asked, recomputing")
        shutil.rmtree(seed_dir / "finetune")
        for stale in ("un2clip.json", "reconstructions.png"):
            (seed_dir / "eval" / stale).unlink(missing_ok=True)


def _finetune_fields(s: DemoSettings, seed: int, lr_factor: float = 1.0, variant: Variant | None = None) -> dict:
    """The demo's fine-tune settings; the learning rate times ``lr_factor`` (as printed with %g); a variant's own
    optimiser and schedule (its ``run``) replace the demo's."""
    fields = {**finetune_settings(s, seed), "lr": float(f"{s.finetune_lr * lr_factor:g}")}
    if variant is not None and variant.run:
        fields.update(run_settings(variant, s))
    return fields


def _shared_vae(seed_dir: Path, s: DemoSettings) -> dict:
    """``{"vae": the seed's unCLIP decoder}`` when the world's decoders are latent: every generator of the
    comparison reads the same first stage (`--vae`), as Stable Diffusion and Stable unCLIP share theirs."""
    return {"vae": str(seed_dir / "decoder" / "decoder")} if s.autoencoder_steps else {}


def t2i_fields(seed_dir: Path, clip: Path, seed: int, s: DemoSettings) -> dict:
    """DIVA's text-to-image decoder (`un2clip train-decoder --text-conditioned`; the unCLIP decoder's budget)."""
    return {"objective": "t2i-decoder", "preset": s.t2i_preset, "clip": str(clip), **_shared_vae(seed_dir, s),
            "data": str(seed_dir / "world" / "train" / "captions.csv"), "max_steps": s.decoder_steps,
            "batch_size": s.decoder_batch, "lr": s.decoder_lr, "warmup_steps": 50, "lr_schedule": "cosine",
            "save_every": 250, "seed": seed}


def light_decoder_fields(seed_dir: Path, clip: Path, seed: int, s: DemoSettings) -> dict:
    """GenHancer's stage 1 (`un2clip train-decoder --preset genhancer-tiny-latent`): a lightweight denoiser trained
    on the frozen CLIP's class-token embedding, the unCLIP decoder's budget, no noise augmentation, no dropped
    condition."""
    return {"objective": "decoder", "preset": s.light_preset, "clip": str(clip), **_shared_vae(seed_dir, s),
            "data": str(seed_dir / "world" / "train" / "images"), "max_steps": s.decoder_steps,
            "batch_size": s.decoder_batch, "lr": s.decoder_lr, "warmup_steps": 50, "lr_schedule": "cosine",
            "save_every": 250, "seed": seed, "objective_options": {"max_noise_level": 0, "p_uncond": 0.0}}


def flow_decoder_fields(seed_dir: Path, clip: Path, seed: int, s: DemoSettings) -> dict:
    """GenHancer's stage 1 (`un2clip genhancer --stage 1`): a light flow transformer trained from scratch on the
    frozen CLIP's class token, on the seed's shared VAE; GenHancer's optimiser, the world's steps and batch
    (``s.flow_decoder_steps`` of ``s.flow_decoder_batch``)."""
    return {"objective": "flow-decoder", "clip": str(clip), "vae": str(seed_dir / "decoder" / "decoder"),
            "data": str(seed_dir / "world" / "train" / "images"), "max_steps": s.flow_decoder_steps,
            "batch_size": s.flow_decoder_batch, "save_every": 250, "seed": seed, **GENHANCER_STAGE1}


# decoders some variants train on the seed's CLIP first: stage name -> fields of its training run
DECODER_STAGES = {"t2i-decoder": t2i_fields, "light-decoder": light_decoder_fields,
                  "flow-decoder": flow_decoder_fields}


def _decoder_stage(seed_dir: Path, name: str, clip: Path, seed: int, s: DemoSettings, fresh: bool, progress: bool,
                   *, shipped: Path | None = None) -> Path:
    """A decoder a variant trains on the seed's CLIP first (DIVA's text-to-image one, GenHancer's light one).

    Copied from ``shipped/<name>`` when given and present, else trained (``OUT/<name>/run``).
    """
    use_shipped = shipped is not None and (shipped / name / "unet").is_dir()
    fields = DECODER_STAGES[name](seed_dir, clip, seed, s)
    made = {"command": ["copy", f"shipped {shipped.name}"]} if use_shipped else {"run": fields}
    recipe = {**made, "clip": done_time(seed_dir / "clip")}
    folder, done = recorded_stage(seed_dir, name, recipe, fresh)
    if not done:
        t = time.perf_counter()
        folder.mkdir(parents=True)
        if use_shipped:
            shutil.copytree(shipped / name, folder / "run" / "decoder")
        else:
            if shipped is not None:
                print(f"note: no {name} in {shipped} (no {name}/unet/): seed {seed} trains its own "
                      f"({fields['max_steps']} steps of {fields['batch_size']})")
            train_run(**fields, output=str(folder / "run"), progress=progress)
        finish_stage(folder, recipe, t)
    return folder / "run" / "decoder" if use_shipped else folder / "run"


def _variant_recipe(seed_dir: Path, variant: Variant, *, seed: int, s: DemoSettings, fresh: bool, progress: bool,
                    shipped: Path | None) -> tuple[dict, str]:
    """(recipe, output name) of a made variant: how it is made, and when the stages it starts from finished."""
    clip, decoder = seed_dir / "clip" / "clip", seed_dir / "decoder" / "decoder"
    images = str(seed_dir / "world" / "train" / "images")
    upstream = {"clip": done_time(seed_dir / "clip"), "decoder": done_time(seed_dir / "decoder")}
    if variant.kind == "export":
        export = {"model": str(seed_dir / "finetune"), "alpha": variant.alpha, "original": str(clip)}
        return {"export": export, "un2clip": done_time(seed_dir / "finetune")}, "clip"
    if variant.kind == "finetune":
        run = {"objective": "un2clip", "clip": str(clip), "decoder": str(decoder), "data": images,
               **_finetune_fields(s, seed, variant.lr_factor), "objective_options": dict(variant.options)}
        return {"run": run, **upstream}, "run"
    if variant.kind == "genhancer":  # stage 2: the encoder through LoRA, its own flow decoder frozen
        flow = _decoder_stage(seed_dir, "flow-decoder", clip, seed, s, fresh, progress)
        run = {"objective": "genhancer", "clip": str(clip), "decoder": str(flow), "data": images,
               **_finetune_fields(s, seed, variant.lr_factor, variant), "objective_options": dict(variant.options)}
        return {"run": run, "clip": upstream["clip"], "flow-decoder": done_time(seed_dir / "flow-decoder")}, "run"
    if variant.kind == "genhancer-unet":  # stage 2: the encoder through its own frozen light UNet
        light = _decoder_stage(seed_dir, "light-decoder", clip, seed, s, fresh, progress, shipped=shipped)
        run = {"objective": "un2clip", "clip": str(clip), "decoder": str(light), "data": images,
               **_finetune_fields(s, seed, variant.lr_factor)}
        return {"run": run, "clip": upstream["clip"], "light-decoder": done_time(seed_dir / "light-decoder")}, "run"
    if variant.kind == "diva":
        t2i = _decoder_stage(seed_dir, "t2i-decoder", clip, seed, s, fresh, progress, shipped=shipped)
        run = {"objective": "diva", "preset": s.t2i_preset, "clip": str(clip), "decoder": str(t2i), "data": images,
               **_finetune_fields(s, seed, variant.lr_factor, variant)}
        if variant.options:
            run["objective_options"] = dict(variant.options)
        return {"run": run, "clip": upstream["clip"], "t2i-decoder": done_time(seed_dir / "t2i-decoder")}, "run"
    raise ValueError(f"unknown variant kind {variant.kind!r}")


def run_variant(seed_dir: Path, variant: Variant, *, seed: int, settings: CompareSettings, fresh: bool,
                progress: bool, shipped: Path | None = None) -> str:
    """Make (or reuse) one variant of one seed; returns the model spec to evaluate.

    A variant made again loses its cached evaluation. Its recipe records the training run (or export) and
    when the stages it starts from finished, so a re-made CLIP, decoder or un²CLIP run re-makes it too.
    """
    if variant.kind == "original":
        return str(seed_dir / "clip" / "clip")
    if variant.kind == "un2clip":
        return str(seed_dir / "finetune")
    from un2clip.export import export_model

    recipe, output = _variant_recipe(seed_dir, variant, seed=seed, s=settings.demo, fresh=fresh, progress=progress,
                                     shipped=shipped)
    folder, done = recorded_stage(seed_dir / "variants", variant.name, recipe, fresh)
    if not done:
        t = time.perf_counter()
        (seed_dir / "eval" / f"{variant.name}.json").unlink(missing_ok=True)
        folder.mkdir(parents=True)
        if "export" in recipe:
            export_model(**recipe["export"], output=folder / output)
        else:
            train_run(**recipe["run"], output=str(folder / output), progress=progress)
        finish_stage(folder, recipe, t)
    return str(folder / output)


def run_seed(seed_dir: Path, seed: int, variants: Sequence[Variant], *, settings: CompareSettings,
             fresh: bool = False, from_scratch: bool = False, progress: bool = True,
             weights_seed: int | None = None, weights: str | Path | None = None) -> dict[str, dict[str, float]]:
    """The demo's stages, then every variant of one world seed: {variant: metrics}."""
    from un2clip.world.report import evaluate_models

    _forget_stale_demo_finetune(seed_dir, settings.demo)
    run_demo(seed_dir, seed=seed, fresh=fresh, from_scratch=from_scratch, settings=settings.demo, progress=progress,
             weights_seed=weights_seed, weights=weights)
    shipped = None if from_scratch else start_weights(seed, weights_seed, weights, from_scratch)
    models = {}
    for variant in variants:
        t = time.perf_counter()
        models[variant.name] = run_variant(seed_dir, variant, seed=seed, settings=settings, fresh=fresh,
                                           progress=progress, shipped=shipped)
        print(f"seed {seed}: {variant.name} ready ({time.perf_counter() - t:.0f} s) -> {models[variant.name]}")
    results = evaluate_models(seed_dir / "eval", seed_dir / "world", models, seed_dir / "decoder" / "decoder",
                              seed=seed, fresh=False, progress=progress, sampling_steps=settings.demo.sampling_steps)
    picked = {n: models[n] for n in HEADED if n in models}
    heads = []
    if settings.grounding is not None:  # GLIP-style grounding accuracy of a head trained on each frozen encoder
        from un2clip.world.grounding import grounding_results

        heads.append(grounding_results(seed_dir, picked, seed=seed, settings=settings.grounding, fresh=fresh,
                                       progress=progress))
    if settings.lseg is not None:  # LSeg mIoU of a dense head trained on each frozen encoder
        from un2clip.world.lseg import lseg_results

        heads.append(lseg_results(seed_dir, picked, seed=seed, settings=settings.lseg, fresh=fresh,
                                  progress=progress))
    if settings.seg_heads is not None:  # every training-free head, on every variant (evaluation only)
        from un2clip.world.segheads import seg_head_results

        heads.append(seg_head_results(seed_dir, models, settings=settings.seg_heads, fresh=fresh, progress=progress))
    if settings.llava is not None:  # a LLaVA trained on each chosen encoder (issue 29)
        from un2clip.world.llava import llava_results

        heads.append(llava_results(seed_dir, models, seed=seed, settings=settings.llava, fresh=fresh,
                                   progress=progress))
    for measured in heads:
        for name, extra in measured.items():
            results[name] = {**results[name], **extra}
    if settings.audio_sketch is not None:
        from un2clip.world.audiosketch import add_audio_sketch

        results = add_audio_sketch(results, seed_dir, seed_dir / "world", models, seed=seed,
                                   settings=settings.audio_sketch, fresh=fresh, progress=progress)
    return {name: results[name] for name in models}


# -- summary and report ----------------------------------------------------------------------------

ZEROSHOT = "zeroshot/mean_acc1"  # mean of the demo's zero-shot sets
COLUMNS = (("mmvp/average", "MMVP avg"), (ZEROSHOT, "zero-shot"), ("zeroshot_shape/acc1", "zs shape"),
           ("zeroshot_color/acc1", "zs colour"), ("retrieval/t2i_r1", "t2i R@1"), ("seg_clearclip/mIoU", "seg mIoU"),
           ("diffloss/loss_mean", "diff. loss"), ("probe/mean", "probe"))
PAIRED = (("mmvp/average", "Δ MMVP"), (ZEROSHOT, "Δ zero-shot"))
# shown when some variant has them (measured on request: --grounding, --lseg, --audio-sketch): grounding accuracy
# and its constant-box reference, LSeg mIoU on seen and unseen names and the all-background reference of each,
# AudioCLIP zero-shot (head trained on images and captions; on images only), CLIPasso recognisability at 8 strokes
OPTIONAL_COLUMNS = (("grounding/accuracy", "grounding acc"), ("grounding/accuracy_mean_box", "mean-box acc"),
                    ("lseg/seen_miou", "LSeg seen"), ("lseg/seen_background_miou", "all-bg seen"),
                    ("lseg/unseen_miou", "LSeg unseen"), ("lseg/unseen_background_miou", "all-bg unseen"),
                    ("audio/acc1", "audio zs"), ("audio_img/acc1", "audio zs (img)"), ("sketch/acc1@8", "sketch@8"))


def with_zeroshot_mean(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with ``zeroshot/mean_acc1``: the mean of its zero-shot top-1 accuracies (in %)."""
    accs = [v for k, v in metrics.items() if k.startswith("zeroshot_") and k.endswith("/acc1")]
    return {**metrics, ZEROSHOT: sum(accs) / len(accs)} if accs else dict(metrics)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (n - 1; nan for one value), n) of finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return mean, std, len(xs)


def summarize(per_seed: dict[int, dict[str, dict[str, float]]], *,
              baseline: str = "original") -> dict[str, dict[str, tuple[float, float, int]]]:
    """{variant: {metric: (mean, std, n)}} over seeds, plus ``delta/<metric>``: the paired change vs ``baseline``."""
    variants = list(dict.fromkeys(v for results in per_seed.values() for v in results))
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for variant in variants:
        rows = [with_zeroshot_mean(r[variant]) for r in per_seed.values() if variant in r]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        out[variant] = {k: mean_std([row[k] for row in rows if k in row]) for k in keys}
        with_means = {s: {v: with_zeroshot_mean(m) for v, m in r.items()} for s, r in per_seed.items()}
        for key, _ in PAIRED:
            if (delta := paired_delta(with_means, variant, key, baseline))[2]:
                out[variant][f"delta/{key}"] = delta
    return out


def _cell(stat: tuple[float, float, int] | None, digits: int, signed: bool = False) -> str:
    if stat is None or stat[2] == 0:
        return "–"
    mean, std, n = stat
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if n < 2 else f"{text} ± {std:.{digits}f}"


def report_table(summary: dict[str, dict[str, tuple[float, float, int]]]) -> list[str]:
    """Markdown rows: one per variant, mean ± std over seeds (the ± is left out for one seed)."""
    columns = COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(c[0] in st for st in summary.values()))
    head = ["variant"] + [title for _, title in columns] + [title for _, title in PAIRED] + ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for variant, stats in summary.items():
        cells = [_cell(stats.get(k), 5 if k.startswith("diffloss") else 1) for k, _ in columns]
        cells += [_cell(stats.get(f"delta/{k}"), 1, signed=True) for k, _ in PAIRED]
        n = max((st[2] for st in stats.values()), default=0)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {n} |")
    return lines


def paired_delta(per_seed: dict[int, dict[str, dict[str, float]]], variant: str, key: str,
                 baseline: str = "original") -> tuple[float, float, int]:
    """(mean, std, n) over seeds of ``variant``'s ``key`` minus ``baseline``'s on the same seed."""
    return mean_std([r[variant][key] - r[baseline][key] for r in per_seed.values()
                     if variant in r and baseline in r and key in r[variant] and key in r[baseline]])


def detail_tables(per_seed: dict[int, dict[str, dict[str, float]]], variant: str = "un2clip",
                  baseline: str = "original") -> list[str]:
    """Markdown: world-MMVP per pattern and linear probe per attribute, ``baseline`` vs ``variant`` and the paired Δ."""
    summary = summarize(per_seed, baseline=baseline)
    if variant not in summary or baseline not in summary:
        return []
    lines = []
    for title, prefix, skip in (("World-MMVP per pattern (pair accuracy, %)", "mmvp/", ("mmvp/average", "mmvp/n_pairs")),
                                ("Linear probe per attribute (accuracy, %)", "probe/", ())):
        keys = [k for k in summary[baseline] if k.startswith(prefix) and k not in skip]
        if not keys:
            continue
        head = ["model"] + [k[len(prefix):] for k in keys]
        lines += [f"### {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name in (baseline, variant):
            lines.append(f"| {name} | " + " | ".join(_cell(summary[name].get(k), 1) for k in keys) + " |")
        lines.append(f"| Δ {variant} | " + " | ".join(_cell(paired_delta(per_seed, variant, k, baseline), 1, signed=True)
                                                   for k in keys) + " |")
        lines.append("")
    return lines


def metric_rows(per_seed: dict[int, dict[str, dict[str, float]]], keys: Sequence[str], titles: Sequence[str],
                variants: Sequence[str], baseline: str = "original") -> list[str]:
    """Markdown table head and rows: ``keys`` (columns ``titles``) of each variant, mean ± std over seeds, then the
    paired change of each other variant against ``baseline`` (when it is among ``variants``)."""
    lines = ["| model | " + " | ".join(titles) + " |", "|---" * (len(keys) + 1) + "|"]
    for v in variants:
        stats = [mean_std([r[v][k] for r in per_seed.values() if k in r.get(v, {})]) for k in keys]
        lines.append(f"| {v} | " + " | ".join(_cell(st, 1) for st in stats) + " |")
    for v in variants:
        if v != baseline and baseline in variants:
            lines.append(f"| Δ {v} | " + " | ".join(_cell(paired_delta(per_seed, v, k, baseline), 1, signed=True)
                                                    for k in keys) + " |")
    return lines


SEG_HEAD_TABLES = (("seg_heads", "objects labelled by shape (seg/): the report's settings, the word 'background' a "
                                "query, background under 0.7"),
                   ("segcolor_heads", "objects labelled by colour (seg-color/): background by each head's threshold "
                                      "alone (world.segheads.COLOR_THRESHOLDS)"))


def seg_head_lines(per_seed: dict[int, dict[str, dict[str, float]]], baseline: str = "original") -> list[str]:
    """Markdown, per segmentation set: mIoU of every head (mean ± std over seeds) per variant, the paired change of
    each variant against ``baseline``, and the two reference rows; empty when no variant has the metrics."""
    lines: list[str] = []

    def values(variant: str, key: str) -> list[float]:
        return [r[variant][key] for r in per_seed.values() if key in r.get(variant, {})]

    for prefix, what in SEG_HEAD_TABLES:
        marker = f"{prefix}/oracle_mIoU"
        variants = list(dict.fromkeys(v for r in per_seed.values() for v, m in r.items() if marker in m))
        if not variants:
            continue
        first = next(m for r in per_seed.values() for m in r.values() if marker in m)
        keys = [k for k in first if k.startswith(f"{prefix}/") and not k.endswith("_mIoU")]
        lines += [f"### Training-free segmentation, every head: {what} (mIoU, %)", "",
                  *metric_rows(per_seed, keys, [k.split("/", 1)[1] for k in keys], variants, baseline)]
        for ref, title in (("background_mIoU", "*all-background*"), ("oracle_mIoU", "*patch oracle*")):
            cell = _cell(mean_std(values(variants[0], f"{prefix}/{ref}")), 1)
            lines.append(f"| {title} | " + " | ".join(cell for _ in keys) + " |")
        lines.append("")
    if lines:
        lines += ["Each head with the report's geometry (short side 64, windows 32 / 16), without and with PAMR "
                  "(+pamr); *all-background* and *patch oracle*: the same masks through the same path (the ground "
                  "truth pooled to the patch grid). A head under all-background measures nothing.", ""]
    return lines


def llava_lines(per_seed: dict[int, dict[str, dict[str, float]]], baseline: str = "original") -> list[str]:
    """Markdown of ``compare --llava``: per encoder the world MMVP-MLLM (silent colours: the claim), its talk-colour
    control and CV-Bench per task, then the silent and control sets per attribute, each mean ± std over seeds with
    the paired change against ``baseline``, and on how many seeds the silent pairs went up; empty without them."""
    from un2clip.world.llava import CVBENCH_PREFIX, MMVP_SETS, SEPARATION_PREFIX, SEPARATIONS

    silent, talk = (f"{MMVP_SETS[name]}/pairs" for name in ("mmvp", "mmvp-talk"))
    variants = list(dict.fromkeys(v for r in per_seed.values() for v, m in r.items() if silent in m))
    if not variants:
        return []
    first = next(m for r in per_seed.values() for m in r.values() if silent in m)
    cv = [k for k in first if k.startswith(f"{CVBENCH_PREFIX}/") and not k.endswith("n_unmatched")]
    keys = [silent, f"{MMVP_SETS['mmvp']}/questions", talk, f"{MMVP_SETS['mmvp-talk']}/questions", *cv]
    keys = [k for k in keys if k in first]
    titles = {silent: "silent: pairs", f"{MMVP_SETS['mmvp']}/questions": "silent: questions", talk: "control: pairs",
              f"{MMVP_SETS['mmvp-talk']}/questions": "control: questions"}
    lines = ["### World LLaVA: the same LLaVA-1.5 recipe on each encoder (world MMVP-MLLM and CV-Bench, %)", "",
             *metric_rows(per_seed, keys, [titles.get(k, "CV-Bench " + k.split("/")[1]) for k in keys], variants,
                          baseline), ""]
    for v in variants:
        if v != baseline:
            deltas = [r[v][silent] - r[baseline][silent] for r in per_seed.values()
                      if silent in r.get(v, {}) and silent in r.get(baseline, {})]
            lines.append(f"- {v}: silent pairs above {baseline} on {sum(d > 0 for d in deltas)} of {len(deltas)} "
                         f"seeds, below on {sum(d < 0 for d in deltas)}")
    sep = [f"{SEPARATION_PREFIX}/{name}" for name, _ in SEPARATIONS if f"{SEPARATION_PREFIX}/{name}" in first]
    if sep:
        lines += ["", "#### Where each encoder separates the silent pairs: distance between a pair's two images over "
                  "that between images of different pairs (cosine; ×100)", "",
                  *metric_rows({s: {v: {k: 100 * x for k, x in m.items() if k in sep} for v, m in r.items()}
                                for s, r in per_seed.items()}, sep, [name.replace("_", " ") for name in
                                                                     (k.split("/")[1] for k in sep)], variants,
                               baseline),
                  "", "; ".join(f"{name.replace('_', ' ')}: {what}" for name, what in SEPARATIONS) + "."]
    for name, what in (("mmvp", "silent colours (the claim's set)"), ("mmvp-talk", "talk colours (the control)")):
        prefix = MMVP_SETS[name]
        attrs = [k for k in first if k.startswith(f"{prefix}/") and k.split("/")[1] not in
                 ("pairs", "questions", "n_unmatched") and not k.endswith("_q")]
        if attrs:
            lines += ["", f"#### World MMVP-MLLM per attribute, {what}: pairs both right (%)", "",
                      *metric_rows(per_seed, attrs, [k.split("/")[1] for k in attrs], variants, baseline)]
    lines += ["", "Silent colours: pairs whose details the captions never name (the claim: un²CLIP's encoder ≥ +3 "
              "points of pairs); control: the same kinds of pairs in the talk colours, which captions name (competence: "
              "≥ 60 % of pairs, ≥ 80 % of questions). A pair counts when both its questions are right (chance 25 %); "
              "CV-Bench chance: 50 % (two options) except Count (four). Stage lm is shared by every encoder of a seed; "
              "stages 1 and 2 are trained per encoder with the same draws.", ""]
    return lines


def plot_tradeoff(summary: dict[str, dict[str, tuple[float, float, int]]], path: Path) -> Path:
    """Scatter of MMVP average (y) against zero-shot accuracy (x), one labelled point per variant, ± std bars.

    Needs matplotlib.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.subplots()
    for variant, stats in summary.items():
        (x, xs, _), (y, ys, _) = stats[ZEROSHOT], stats["mmvp/average"]
        ax.errorbar(x, y, xerr=0 if math.isnan(xs) else xs, yerr=0 if math.isnan(ys) else ys, fmt="o", capsize=3)
        ax.annotate(variant, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("zero-shot accuracy, mean of the world's sets (%)")
    ax.set_ylabel("world-MMVP average (%)")
    ax.set_title("seeing details (MMVP) vs keeping alignment (zero-shot)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


def _describe_run(fields: dict) -> str:
    """'300 × 32, sgd lr 0.0001, wd 0, cosine (2 warm-up), clip 1' from RunConfig fields."""
    warm = f" ({fields['warmup_steps']} warm-up)" if fields.get("warmup_steps") else ""
    clip = fields.get("max_grad_norm", 1.0)
    return (f"{fields['max_steps']} × {fields['batch_size']}, {fields.get('optimizer', 'adamw')} lr "
            f"{fields['lr']:g}, wd {fields.get('weight_decay', 0.0):g}, {fields.get('lr_schedule', 'constant')}"
            f"{warm}, grad clip {'none' if clip is None else f'{clip:g}'}")


def decoder_sources(out: Path, seeds: Sequence[int]) -> dict[str, dict[int, str]]:
    """{decoder stage name: {seed: where it came from}} as each seed's recorded stage says: ``"trained"``, or
    ``"copied from its weights (FOLDER/NAME)"`` for one taken from the weights a seed started from. Stages not made are left out."""
    sources: dict[str, dict[int, str]] = {}
    for name in DECODER_STAGES:
        for seed in seeds:
            recipe = out / f"seed{seed}" / name / "recipe.json"
            if not recipe.is_file():
                continue
            command = json.loads(recipe.read_text()).get("command")
            sources.setdefault(name, {})[seed] = \
                f"copied from its weights ({command[1].removeprefix('shipped ')}/{name})" if command else "trained"
    return sources


def _source_note(made: dict[int, str]) -> str:
    """' (seeds 0, 1: copied from ...; seed 2: trained)' from {seed: source}."""
    groups: dict[str, list[int]] = {}
    for seed, how in sorted(made.items()):
        groups.setdefault(how, []).append(seed)
    parts = [f"{'seeds' if len(ss) > 1 else 'seed'} {', '.join(map(str, ss))}: {how}" for how, ss in groups.items()]
    return f" ({'; '.join(parts)})"


def settings_lines(variants: Sequence[Variant], settings: CompareSettings,
                   sources: dict[str, dict[int, str]] | None = None) -> list[str]:
    """Markdown table: how each trained variant's encoder (and the decoder it trains first) was trained.

    ``sources`` (from :func:`decoder_sources`): per decoder stage, which seeds trained it with the settings shown
    and which copied it from their weights folder instead (then the settings shown do not describe it)."""
    s = settings.demo
    lines = ["| variant | encoder run | objective options | trained first |", "|---|---|---|---|"]
    first = {"genhancer": ("flow-decoder", flow_decoder_fields), "genhancer-unet": ("light-decoder",
                                                                                   light_decoder_fields),
             "diva": ("t2i-decoder", t2i_fields)}
    for v in variants:
        if v.kind in ("original", "export"):
            continue
        options = ", ".join(f"{k} {'template length − 1' if val is None else val}"
                            for k, val in v.options.items()) or "–"
        stage = "–"
        if v.kind in first:
            name, make = first[v.kind]
            fields = make(Path("OUT"), Path("clip"), 0, s)
            stage = f"`{name}` ({fields['objective']}): {_describe_run(fields)}"
            if v.kind == "genhancer-unet":
                stage += ", no noise augmentation"
            if sources and sources.get(name):
                stage += _source_note(sources[name])
        lines.append(f"| {v.name} | {_describe_run(run_settings(v, s))} | {options} | {stage} |")
    return lines


def write_report(out: Path, per_seed: dict[int, dict[str, dict[str, float]]], variants: Sequence[Variant], *,
                 settings: CompareSettings, notes: Sequence[str] = ()) -> Path:
    """OUT/report.md, OUT/results.json and (with matplotlib) OUT/mmvp_vs_zeroshot.png."""
    summary = summarize(per_seed)
    notes = list(notes)
    chart = None
    try:
        chart = plot_tradeoff(summary, out / "mmvp_vs_zeroshot.png")
    except ImportError:
        notes.append("no scatter plot: matplotlib is not installed (pip install 'un2clip[plot]')")
    s = settings.demo
    lines = ["# un²CLIP variants in the shapes world", "",
             f"World seeds {', '.join(map(str, per_seed))}; every fine-tune: {s.finetune_steps} steps of "
             f"{s.finetune_batch} images, the world seed as training seed; lr {s.finetune_lr:g} (LoRA "
             f"x{settings.lora_lr_factor:g}) except the baselines run with their authors' recipes (settings of "
             "every trained variant below). Cells: mean ± sample std over seeds; Δ: paired change against `original`, "
             "same seed. Accuracies in %, diffusion loss on held-out images with the demo's frozen decoder.", "",
             *report_table(summary), ""]
    if chart:
        lines += [f"![MMVP vs zero-shot]({chart.name})", ""]
    lines += ["## Original vs un²CLIP in detail", "", *detail_tables(per_seed), *seg_head_lines(per_seed),
              *llava_lines(per_seed)]
    lines += ["## Variants", ""] + [f"- `{v.name}`: {v.description}" for v in variants if v.name in summary] + [""]
    lines += ["### Settings of the trained variants", "", *settings_lines(
        [v for v in variants if v.name in summary], settings, decoder_sources(out, list(per_seed))), "",
        "Baselines follow their authors' recipes (optimiser, learning rate, schedule, condition, adapters); only "
        "steps and batch are the world's: each encoder run the demo's fine-tune budget, each decoder trained first "
        "the world decoders' budget. `diva-adamw` and `genhancer-unet` keep un²CLIP's fine-tune recipe, so that "
        "the recipe's own effect is a row.", ""]
    lines += ["Projector variants are evaluated on the encoder alone (the projector sits between encoder and "
              "decoder); `update-decoder` is measured with the original decoder.", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(
        {"per_seed": {str(k): v for k, v in per_seed.items()},
         "summary": {v: {k: list(st) for k, st in stats.items()} for v, stats in summary.items()}},
        indent=2, allow_nan=True))
    return report


def weights_note(seeds: Sequence[int], weights_seed: int | None, weights: str | Path | None) -> str | None:
    """What the report says about where the seeds' pre-trained models came from (None: each seed's shipped or
    trained ones, the default)."""
    if weights_seed is None and weights is None:
        return None
    folders = {start_weights(seed, weights_seed, weights, False) for seed in seeds}
    if len(folders) > 1 or "{seed}" in str(weights):
        return (f"each seed started from its own pre-trained CLIP and decoders ({weights}, {{seed}} = the world "
                "seed): the spread over seeds includes that of pre-training")
    source = f"the shipped CLIP and decoders of seed {weights_seed}" if weights is None else f"{weights}"
    return (f"every seed started from {source}: the spread over seeds is that of the world's images, pairs and "
            "fine-tune draws, not of pre-training")


def run_compare(out: Path, *, seeds: Sequence[int] = (0, 1, 2), variants: Sequence[str] | None = None,
                settings: CompareSettings = CompareSettings(), steps: int | None = None, fresh: bool = False,
                from_scratch: bool = False, progress: bool = True, weights_seed: int | None = None,
                weights: str | Path | None = None) -> Path:
    """Every chosen variant on every world seed, then ``out/report.md``; returns its path.

    ``steps`` replaces the fine-tune steps of every trained variant (the demo's ``finetune_steps``);
    ``weights_seed`` starts every seed from that seed's shipped CLIP and decoders (see ``un2clip demo``),
    ``weights`` from the CLIP and decoders in that folder.
    """
    if not seeds:
        raise ValueError("no seeds: pass --seeds, e.g. --seeds 0 1 2")
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        settings = replace(settings, demo=replace(settings.demo, finetune_steps=steps))
    chosen = select_variants(settings, variants)
    if "original" not in {v.name for v in chosen}:  # the Δ columns need it, and it costs an evaluation only
        chosen = [select_variants(settings, ["original"])[0], *chosen]
    notes = []
    if any(v.kind == "diva" for v in chosen) and (why := diva_available(settings.demo.t2i_preset)):
        chosen = [v for v in chosen if v.kind != "diva"]
        notes.append(f"diva skipped: {why}")
        print(f"note: diva skipped: {why}")
    if settings.llava is not None:  # a misspelt or skipped encoder is refused before anything is trained
        from un2clip.world.llava import encoders_of

        encoders_of(settings.llava, [v.name for v in chosen])
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = run_seed(out / f"seed{seed}", seed, chosen, settings=settings, fresh=fresh,
                                  from_scratch=from_scratch, progress=progress, weights_seed=weights_seed,
                                  weights=weights)
    if note := weights_note(seeds, weights_seed, weights):
        notes.append(note)
    if settings.demo.talk_colors:
        notes.append(f"context transfer: captions name the rare attributes of {', '.join(settings.demo.talk_colors)} "
                     f"objects with probability {settings.demo.talk_rate} and of the other colours with "
                     f"{settings.demo.rare_rate}; the MMVP pairs use only the other colours")
    return write_report(out, per_seed, chosen, settings=settings, notes=notes)
