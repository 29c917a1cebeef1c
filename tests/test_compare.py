"""`un2clip compare`: summary math on hand-built results, the report, stage caching, and a quick run end to end."""

import json
import math
import sys
from pathlib import Path

import pytest

from un2clip.world import compare
from un2clip.world.compare import QUICK, mean_std, report_table, run_compare, select_variants, summarize


def _metrics(mmvp, shape, color, loss=0.1):
    """Metrics as demo_report.evaluate_models gives them: every accuracy in %."""
    return {"mmvp/average": mmvp, "zeroshot_shape/acc1": shape, "zeroshot_color/acc1": color,
            "diffloss/loss_mean": loss, "probe/mean": 50.0}


PER_SEED = {
    0: {"original": _metrics(20.0, 80.0, 60.0), "un2clip": _metrics(30.0, 70.0, 60.0)},
    1: {"original": _metrics(40.0, 90.0, 70.0), "un2clip": _metrics(44.0, 86.0, 70.0)},
}


def test_mean_std_known_values():
    assert mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0), 2)
    mean, std, n = mean_std([5.0])
    assert (mean, n) == (5.0, 1) and math.isnan(std)
    assert mean_std([float("nan"), 2.0, 4.0])[:1] == (3.0,)
    assert mean_std([])[2] == 0


def test_summarize_means_and_paired_deltas():
    s = summarize(PER_SEED)
    assert list(s) == ["original", "un2clip"]
    assert s["un2clip"]["mmvp/average"] == (37.0, pytest.approx(math.sqrt(98.0)), 2)
    # zero-shot: mean of the sets per seed (65, 78), then over seeds
    assert s["un2clip"]["zeroshot/mean_acc1"][0] == pytest.approx(71.5)
    assert s["original"]["zeroshot_shape/acc1"][0] == pytest.approx(85.0)
    # paired: +10 and +4 on MMVP -> 7 ± sqrt(18); -5 and -2 on zero-shot -> -3.5 ± sqrt(4.5)
    assert s["un2clip"]["delta/mmvp/average"] == (7.0, pytest.approx(math.sqrt(18.0)), 2)
    delta = s["un2clip"]["delta/zeroshot/mean_acc1"]
    assert delta[0] == pytest.approx(-3.5) and delta[1] == pytest.approx(math.sqrt(4.5))
    assert s["original"]["delta/mmvp/average"][:2] == (0.0, 0.0)
    rows = report_table(s)
    assert rows[2].startswith("| original | 30.0 ± 14.1 | 75.0 ± 7.1 | 85.0 ± 7.1 | 65.0 ± 7.1 |")
    assert "| – | – |" in rows[2]  # retrieval and segmentation were not measured here
    assert "| +7.0 ± 4.2 | -3.5 ± 2.1 | 2 |" in rows[3]


def test_report_without_matplotlib_notes_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    report = compare.write_report(tmp_path, PER_SEED, select_variants(QUICK, ["original", "un2clip"]),
                                  settings=QUICK, notes=["diva skipped: test"])
    text = report.read_text()
    assert "| un2clip |" in text and "matplotlib is not installed" in text and "diva skipped: test" in text
    assert not (tmp_path / "mmvp_vs_zeroshot.png").exists()
    assert json.loads((tmp_path / "results.json").read_text())["per_seed"]["1"]["un2clip"]["mmvp/average"] == 44.0


def test_variant_names_and_unknown_variant():
    names = [v.name for v in compare.variants_for(compare.CompareSettings())]
    assert names == ["original", "un2clip", "projector-random", "projector-identity", "update-decoder",
                     "alpha0.25", "alpha0.5", "alpha0.75", "anchor0.1", "anchor1", "lora", "genhancer", "genhancer-unet",
                     "diva", "diva-adamw"]
    with pytest.raises(ValueError, match="unknown variant.*known: original"):
        select_variants(QUICK, ["un2clip", "nope"])


def test_baselines_run_their_authors_recipes_and_keep_the_earlier_ones():
    from un2clip.world.demo import DemoSettings

    s = DemoSettings()  # 300 fine-tune steps of 32, the flow decoder 1000 of 64
    by_name = {v.name: v for v in compare.variants_for(compare.CompareSettings())}
    seed_dir, clip = Path("OUT/seed0"), Path("OUT/seed0/clip/clip")
    # DIVA: its condition (added, template-long, two summed draws) and SGD momentum + cosine with 0.5 % warm-up
    diva = by_name["diva"]
    assert (diva.kind, diva.options) == ("diva", {"combine": "add", "n_patch_tokens": None, "draws_per_image": 2,
                                                  "sum_draws": True})
    run = compare._finetune_fields(s, 0, diva.lr_factor, diva)
    assert {k: run[k] for k in ("optimizer", "lr", "weight_decay", "lr_schedule", "warmup_steps", "max_grad_norm",
                                "max_steps", "batch_size")} == \
        {"optimizer": "sgd", "lr": 1e-4, "weight_decay": 0.0, "lr_schedule": "cosine", "warmup_steps": 2,
         "max_grad_norm": 1.0, "max_steps": 300, "batch_size": 32}  # ceil(0.005 x 300) = 2 warm-up steps
    # the earlier DIVA row: un²CLIP's fine-tune settings, concatenated tokens, one draw
    adamw = by_name["diva-adamw"]
    assert (adamw.kind, adamw.options, adamw.run) == ("diva", {}, {})
    old = compare._finetune_fields(s, 0, adamw.lr_factor, adamw)
    assert old == {"max_steps": 300, "batch_size": 32, "lr": 1e-5, "save_every": 100, "seed": 0}
    # GenHancer: stage 2 LoRA r16 / alpha 16 / dropout 0.1 with AdamW lr 1e-5, weight decay 0.01
    gen = by_name["genhancer"]
    assert gen.kind == "genhancer" and gen.options == {"lora_rank": 16, "lora_alpha": 16.0, "lora_dropout": 0.1,
                                                       "lora_bias": "lora_only", "logit_normal_scale": 1.0}
    run = compare._finetune_fields(s, 0, gen.lr_factor, gen)
    assert {k: run[k] for k in ("optimizer", "lr", "weight_decay", "warmup_steps", "lr_schedule", "max_steps")} == \
        {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.01, "warmup_steps": 10, "lr_schedule": "constant",
         "max_steps": 300}
    # its stage 1: the light flow transformer from scratch on the shared VAE, AdamW lr 1e-4, weight decay 0.01
    first = compare.DECODER_STAGES["flow-decoder"](seed_dir, clip, 0, s)
    assert {k: first[k] for k in ("objective", "vae", "optimizer", "lr", "weight_decay", "warmup_steps",
                                  "lr_schedule", "max_steps", "batch_size")} == \
        {"objective": "flow-decoder", "vae": str(seed_dir / "decoder" / "decoder"), "optimizer": "adamw", "lr": 1e-4,
         "weight_decay": 0.01, "warmup_steps": 10, "lr_schedule": "constant", "max_steps": 1000, "batch_size": 64}
    assert first["objective_options"] == {"logit_normal_scale": 1.0}
    # the earlier GenHancer-style row: un²CLIP's fine-tune through the half-width UNet
    unet = by_name["genhancer-unet"]
    assert (unet.kind, unet.options, unet.run) == ("genhancer-unet", {}, {})
    assert compare.DECODER_STAGES["light-decoder"](seed_dir, clip, 0, s)["preset"] == "genhancer-tiny-latent"
    # the report lists each variant's settings
    table = "\n".join(compare.settings_lines([by_name[n] for n in ("diva", "diva-adamw", "genhancer")],
                                              compare.CompareSettings()))
    assert "| diva | 300 × 32, sgd lr 0.0001, wd 0, cosine (2 warm-up)" in table
    assert "| diva-adamw | 300 × 32, adamw lr 1e-05, wd 0, constant," in table
    assert "`flow-decoder` (flow-decoder): 1000 × 64, adamw lr 0.0001, wd 0.01" in table


def test_report_says_which_seeds_copied_a_decoder_and_which_trained_it(tmp_path):
    # seed 0 copied the t2i decoder from its weights folder, seed 1 trained it: the settings table must not
    # describe both with the training settings alone
    for seed, recipe in ((0, {"command": ["copy", "shipped seed0"], "clip": 1.0}),
                         (1, {"run": {"max_steps": 1500}, "clip": 1.0})):
        folder = tmp_path / f"seed{seed}" / "t2i-decoder"
        folder.mkdir(parents=True)
        compare.finish_stage(folder, recipe, 0.0)
    sources = compare.decoder_sources(tmp_path, [0, 1, 2])
    assert sources == {"t2i-decoder": {0: "copied from its weights (seed0/t2i-decoder)", 1: "trained"}}
    diva = [v for v in select_variants(compare.CompareSettings(), ["diva"])]
    row = "\n".join(compare.settings_lines(diva, compare.CompareSettings(), sources))
    assert "(seed 0: copied from its weights (seed0/t2i-decoder); seed 1: trained)" in row
    assert "shipped one" not in row


def test_stage_with_another_recipe_is_redone(tmp_path):
    folder, done = compare.recorded_stage(tmp_path, "v", {"command": ["a"]}, fresh=False)
    assert not done
    folder.mkdir()
    compare.finish_stage(folder, {"command": ["a"]}, 0.0)
    assert compare.recorded_stage(tmp_path, "v", {"command": ["a"]}, fresh=False)[1]
    assert compare.recorded_stage(tmp_path, "v", {"command": ["a"]}, fresh=True) == (folder, False)
    folder.mkdir()
    compare.finish_stage(folder, {"command": ["a"]}, 0.0)
    assert compare.recorded_stage(tmp_path, "v", {"command": ["b"]}, fresh=False) == (folder, False)
    assert not folder.exists()


def test_cached_metrics_are_reused_only_when_made_the_same_way(tmp_path):
    from un2clip.world.stages import cached_metrics, made_stage

    calls = []

    def compute(value):
        calls.append(value)
        return {"acc": value}

    path = tmp_path / "eval" / "m.json"
    assert cached_metrics(path, lambda: compute(1.0), recipe={"steps": (2, 3)}) == {"acc": 1.0}
    assert cached_metrics(path, lambda: compute(2.0), recipe={"steps": [2, 3]}) == {"acc": 1.0}  # tuples as lists
    assert calls == [1.0]
    assert cached_metrics(path, lambda: compute(3.0), recipe={"steps": [2, 4]}) == {"acc": 3.0}
    assert cached_metrics(path, lambda: compute(4.0), recipe={"steps": [2, 4]}, fresh=True) == {"acc": 4.0}
    plain = tmp_path / "plain.json"  # without a recipe the file holds the metrics alone
    assert cached_metrics(plain, lambda: compute(5.0)) == {"acc": 5.0} == json.loads(plain.read_text())
    assert cached_metrics(plain, lambda: compute(6.0)) == {"acc": 5.0} and calls == [1.0, 3.0, 4.0, 5.0]
    made = []
    folder = made_stage(tmp_path, "s", {"n": 1}, made.append)
    assert made == [folder] and (folder / "DONE").is_file()
    assert made_stage(tmp_path, "s", {"n": 1}, made.append) == folder and made == [folder]
    made_stage(tmp_path, "s", {"n": 2}, made.append)
    assert made == [folder, folder] and json.loads((folder / "recipe.json").read_text()) == {"n": 2}


def test_made_at_keys_a_model_by_its_stage_or_its_newest_file(tmp_path):
    import os

    from un2clip.world.stages import done_time, made_at

    assert made_at("tiny") == 0 and made_at(tmp_path / "absent") == 0  # a preset, a Hub id: nothing to watch
    weights = tmp_path / "weights" / "clip"  # a folder of the user's (compare --weights): its newest file
    weights.mkdir(parents=True)
    (weights / "model.safetensors").write_bytes(b"a")
    os.utime(weights / "model.safetensors", ns=(10**18, 10**18))
    first = made_at(weights)
    assert first == 10**18
    (weights / "model.safetensors").write_bytes(b"b")  # retrained in place: another key
    os.utime(weights / "model.safetensors", ns=(2 * 10**18, 2 * 10**18))
    assert made_at(weights) == 2 * 10**18
    stage = tmp_path / "un2clip"  # a stage's model: its DONE marker, in the folder or the one above
    (stage / "export").mkdir(parents=True)
    (stage / "DONE").write_text("{}")
    assert made_at(stage / "export") == made_at(stage) == done_time(stage) > 0


def _untrained_demo_models(seed_dir):
    """The demo's finished CLIP and decoder stages, with the untrained tiny models (test_demo trains them)."""
    from un2clip.models.presets import PRESETS, build_tiny_clip

    build_tiny_clip().save_pretrained(seed_dir / "clip" / "clip")
    PRESETS[QUICK.demo.decoder_preset].build_decoder().save_pretrained(seed_dir / "decoder" / "decoder")
    for stage in ("clip", "decoder"):
        (seed_dir / stage / "DONE").write_text("{}")


@pytest.mark.slow
def test_quick_compare_end_to_end(tmp_path, monkeypatch):
    from un2clip.world import probe

    monkeypatch.setattr(compare, "diva_available", lambda preset: "not registered (test)")
    # no shipped generators: GenHancer's light decoder is trained here (the shipped one would be copied)
    from un2clip.world import demo

    monkeypatch.setattr(demo, "shipped_weights", lambda seed, weights_seed=None: tmp_path / "nothing-shipped")
    # the linear probes (L-BFGS per attribute) are most of the evaluation's time and have their own tests
    monkeypatch.setattr(probe, "world_probe", lambda model, world, **kw: {"probe/mean": 50.0})
    out = tmp_path / "cmp"
    _untrained_demo_models(out / "seed0")
    report = run_compare(out, seeds=[0], variants=["un2clip", "alpha0.5", "projector-random", "genhancer",
                                                   "genhancer-unet", "diva"],
                         settings=QUICK, progress=False)
    text = report.read_text()
    for name in ("original", "un2clip", "alpha0.5", "projector-random", "genhancer", "genhancer-unet"):
        assert f"| {name} |" in text, name
    assert "| diva |" not in text and "diva skipped: not registered (test)" in text
    assert (out / "mmvp_vs_zeroshot.png").exists()
    seed = out / "seed0"
    for name in ("original", "un2clip", "alpha0.5", "projector-random"):
        metrics = json.loads((seed / "eval" / f"{name}.json").read_text())["metrics"]
        assert 0.0 <= metrics["mmvp/average"] <= 100.0 and metrics["diffloss/loss_mean"] > 0, name
    # GenHancer's encoder went through the flow decoder it trained first (on the demo decoder's VAE), with LoRA
    gen = json.loads((seed / "variants" / "genhancer" / "run" / "un2clip_run.json").read_text())
    assert (gen["kind"], gen["flow_decoder"]) == ("genhancer", str(seed / "flow-decoder" / "run"))
    flow = json.loads((seed / "flow-decoder" / "run" / "un2clip_run.json").read_text())
    assert (flow["kind"], flow["vae"]) == ("flow-decoder", str(seed / "decoder" / "decoder"))
    assert (seed / "variants" / "genhancer" / "run" / "clip" / "config.json").exists()
    # the earlier GenHancer-style row went through the light UNet it trained first, not the demo's decoder
    light = json.loads((seed / "variants" / "genhancer-unet" / "run" / "un2clip_run.json").read_text())
    assert light["decoder"] == str(seed / "light-decoder" / "run")
    marker = json.loads((seed / "light-decoder" / "run" / "un2clip_run.json").read_text())
    # its own half-width UNet on the demo decoder's VAE (one first stage for every generator)
    assert (marker["decoder"], marker["vae"]) == ("genhancer-tiny-latent", str(seed / "decoder" / "decoder"))
    # the projector ablation records its projector; its evaluated encoder is clip/ alone
    run = seed / "variants" / "projector-random" / "run"
    assert json.loads((run / "un2clip_run.json").read_text())["projector"] == "random"
    assert (run / "projector.safetensors").exists() and (run / "clip" / "config.json").exists()
    # a second call reuses every stage and every evaluation
    stamps = {p: p.stat().st_mtime_ns for p in (run / "metrics.jsonl", seed / "eval" / "alpha0.5.json")}
    run_compare(out, seeds=[0], variants=["alpha0.5", "projector-random"], settings=QUICK, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # an evaluation cached with an older probe protocol has its probes (only) redone
    cached = seed / "eval" / "un2clip.json"
    record = json.loads(cached.read_text())
    assert record["probe_protocol"] == probe.PROTOCOL
    record["probe_protocol"], record["metrics"]["probe/mean"], record["metrics"]["probe/old"] = 1, 99.0, 1.0
    cached.write_text(json.dumps(record))
    run_compare(out, seeds=[0], variants=["alpha0.5"], settings=QUICK, progress=False)
    redone = json.loads(cached.read_text())
    assert redone["probe_protocol"] == probe.PROTOCOL and redone["metrics"]["probe/mean"] == 50.0
    assert "probe/old" not in redone["metrics"]
    assert {k: v for k, v in redone["metrics"].items() if not k.startswith("probe/")} == \
        {k: v for k, v in record["metrics"].items() if not k.startswith("probe/")}


def test_shipped_text_to_image_decoder_is_copied_not_trained(tmp_path):
    import torch

    from un2clip.load import load_t2i_decoder
    from un2clip.models.presets import PRESETS, build_tiny_clip
    from un2clip.models.t2i import clip_text_encoder
    from un2clip.world.demo import DemoSettings

    clip = build_tiny_clip()
    t2i = PRESETS["diva-tiny"].build_decoder()
    t2i.set_text_encoder(*clip_text_encoder(clip))
    shipped = tmp_path / "assets" / "seed7"
    t2i.save_pretrained(shipped / "t2i-decoder")
    seed_dir = tmp_path / "seed7"
    clip.save_pretrained(seed_dir / "clip" / "clip")
    # no world and no training: a trained stage would fail for want of captions
    path = compare._decoder_stage(seed_dir, "t2i-decoder", seed_dir / "clip" / "clip", 7, DemoSettings(), False, [], shipped=shipped)
    assert json.loads((seed_dir / "t2i-decoder" / "recipe.json").read_text())["command"] == ["copy", "shipped seed7"]
    loaded = load_t2i_decoder(str(path))
    for k, v in t2i.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[k], v), k
    stamp = (seed_dir / "t2i-decoder" / "DONE").stat().st_mtime_ns
    assert compare._decoder_stage(seed_dir, "t2i-decoder", seed_dir / "clip" / "clip", 7, DemoSettings(), False, [],
                              shipped=shipped) == path
    assert (seed_dir / "t2i-decoder" / "DONE").stat().st_mtime_ns == stamp


def test_detail_tables_give_per_pattern_means_and_paired_deltas():
    per_seed = {s: {"original": {"mmvp/average": 1.0, "mmvp/Texts": 10.0 + s, "probe/shape": 50.0},
                    "un2clip": {"mmvp/average": 2.0, "mmvp/Texts": 14.0 + 3 * s, "probe/shape": 50.0}}
                for s in (0, 1)}
    lines = compare.detail_tables(per_seed)
    mmvp = lines[lines.index("### World-MMVP per pattern (pair accuracy, %)") + 2:]
    assert mmvp[0] == "| model | Texts |"  # the average is in the main table, not here
    assert mmvp[2] == "| original | 10.5 ± 0.7 |" and mmvp[3] == "| un2clip | 15.5 ± 2.1 |"
    assert mmvp[4] == "| Δ un2clip | +5.0 ± 1.4 |"  # paired: 4 and 6
    assert "| Δ un2clip | +0.0 ± 0.0 |" in lines  # the probe did not move
    assert compare.detail_tables({0: {"original": {"mmvp/Texts": 1.0}}}) == []


def test_diva_availability_checks_the_settings_preset():
    assert compare.diva_available(QUICK.demo.t2i_preset) is None
    assert "no 'nope' preset" in compare.diva_available("nope")
