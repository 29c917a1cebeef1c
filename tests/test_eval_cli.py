"""`un2clip eval | reconstruct | report` end to end on the tiny models: real files written and read back."""

import copy
import csv
import io
import json
import random
import shutil
import tarfile

import pytest
import torch
from PIL import Image

from un2clip.cli import main
from un2clip.eval.encoder.mmvp import PATTERNS


def noise_image(path, rng: random.Random, size: int = 40) -> None:
    """A few coloured blocks on a grey field: cheap, varied, deterministic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size + rng.randint(0, 8)), (128, 128, 128))
    for _ in range(4):
        x, y = rng.randint(0, size - 10), rng.randint(0, size - 10)
        im.paste(tuple(rng.randint(0, 255) for _ in range(3)), (x, y, x + 10, y + 10))
    im.save(path)


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_clip, tiny_decoder):
    """Saved models (the tiny CLIP, a perturbed copy, the tiny decoder) and four small datasets."""
    root = tmp_path_factory.mktemp("bench")
    rng = random.Random(0)
    tiny_clip.save_pretrained(root / "original")
    changed = copy.deepcopy(tiny_clip)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in changed.vision_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    changed.save_pretrained(root / "finetuned")
    tiny_decoder.save_pretrained(root / "decoder")
    # MMVP-VLM layout: 9 patterns x 2 pairs
    mmvp = root / "mmvp"
    rows = [["Question ID", "Type", "Statement"]]
    q = 0
    for pattern in PATTERNS:
        for _ in range(2):
            for statement in ("a red circle", "a blue square"):
                q += 1
                noise_image(mmvp / "MLLM_VLM Images" / pattern / f"{q}.jpg", rng)
                rows.append([q, pattern, statement])
    with open(mmvp / "Questions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    # ImageFolder: 5 classes x 2 images, two templates
    folder = root / "shapes"
    for name in ("circle", "square", "star", "triangle", "cross"):
        for j in range(2):
            noise_image(folder / name / f"{j}.png", rng)
    (folder / "templates.txt").write_text("a photo of a {c}.\na drawing of a {}.\n")
    # held-out images for the diffusion loss
    for j in range(2):
        noise_image(root / "heldout" / f"{j}.png", rng)
    # retrieval table: 4 images x 2 captions
    table = [["image", "caption"]]
    for i in range(4):
        noise_image(root / "ret" / f"{i}.png", rng)
        table += [[f"{i}.png", f"a red circle {i}"], [f"{i}.png", f"a photo of shape {i}"]]
    with open(root / "ret" / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows(table)
    # CLIP_benchmark webdataset: 3 labelled samples and one without a label
    wds = root / "wds"
    (wds / "test").mkdir(parents=True)
    (wds / "test" / "nshards.txt").write_text("1")
    (wds / "classnames.txt").write_text("circle\nsquare\n")
    (wds / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    with tarfile.open(wds / "test" / "0.tar", "w") as tar:
        for k, label in enumerate(["0", "1", "1", None]):
            buf = io.BytesIO()
            Image.new("RGB", (24, 24), (40 * k, 90, 200)).save(buf, format="JPEG")
            for name, data in [(f"{k:04d}.jpg", buf.getvalue())] + ([(f"{k:04d}.cls", label.encode())] if label else []):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root


def run(*argv) -> int:
    return main([str(a) for a in argv])


def read(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_eval_reconstruct_report_end_to_end(bench, tmp_path, capsys):
    out = tmp_path / "results"
    models = ["--model", bench / "original", bench / "finetuned", "--model-name", "original", "finetuned"]
    common = ["--output", out, "--no-progress", "--batch-size", 8]
    assert run("eval", "mmvp", *models, "--data", bench / "mmvp", *common) == 0
    printed = capsys.readouterr().out
    assert "original | mmvp | mmvp" in printed and "average:" in printed and "published" not in printed
    assert run("eval", "zeroshot", *models, "--data", bench / "shapes", *common) == 0
    assert run("eval", "zeroshot", *models, "--data", bench / "wds", "--dataset-name", "wds-shapes", *common) == 0
    assert run("eval", "retrieval", *models, "--data", bench / "ret" / "captions.csv", *common) == 0
    assert run("eval", "diffloss", *models, "--data", bench / "shapes", "--decoder", bench / "decoder",
               "--limit", 2, *common) == 0

    for model in ("original", "finetuned"):
        r = read(out / f"{model}__mmvp__mmvp.json")
        assert (r["model"], r["task"], r["dataset"]) == (model, "mmvp", "mmvp")
        assert list(r["metrics"])[:9] == list(PATTERNS) and r["metrics"]["n_pairs"] == 18
        assert all(s in (0.0, 50.0, 100.0) for s in list(r["metrics"].values())[:9])
        assert r["options"]["batch_size"] == 8 and r["model_spec"].endswith(model)
        assert r["options"]["precision"] == "fp32" and r["average_definition"].startswith("the mean of the 9 pattern")
        pairs = list(csv.DictReader(open(out / f"{model}__mmvp__mmvp.pairs.csv")))
        assert len(pairs) == 18 and pairs[0]["qid1"] == "1" and set(pairs[0]) >= {"pred1", "pred2", "gt1", "gt2", "score"}
        assert 100 * sum(int(p["score"]) for p in pairs) / 18 == pytest.approx(r["metrics"]["average"])
        z = read(out / f"{model}__zeroshot__shapes.json")["metrics"]
        assert {"acc1", "acc5", "mean_per_class_recall"} <= set(z) and z["n_images"] == 10 and z["n_templates"] == 2
        w = read(out / f"{model}__zeroshot__wds-shapes.json")["metrics"]
        assert w["n_images"] == 3 and w["n_skipped_images"] == 1 and "acc5" not in w
        t = read(out / f"{model}__retrieval__ret-captions.json")["metrics"]
        assert (t["n_images"], t["n_captions"]) == (4, 8) and 0 <= t["image_to_text_recall@1"] <= 1
        assert t["text_to_image_recall@10"] == 1.0  # 4 candidates: every caption finds its image in the top 10
        d = read(out / f"{model}__diffloss__shapes.json")
        assert d["options"]["decoder"] == str(bench / "decoder") and d["metrics"]["n_images"] == 2
    original = read(out / "original__diffloss__shapes.json")["metrics"]
    finetuned = read(out / "finetuned__diffloss__shapes.json")["metrics"]
    assert original["loss_mean"] != finetuned["loss_mean"]

    grid = tmp_path / "grid.png"
    assert run("reconstruct", "--models", bench / "original", bench / "finetuned", "--labels", "original",
               "finetuned", "--decoder", bench / "decoder", "--images", bench / "shapes", "--num-images", 1,
               "--steps", 2, "--output", grid, "--no-progress") == 0
    with Image.open(grid) as im:
        assert im.width == 3 * 32 and 32 < im.height < 2 * 32  # input + two models; a header row of labels

    capsys.readouterr()
    assert run("report", out) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md == printed.split("\nwrote ")[0]
    assert "| original |" in md and "| finetuned |" in md and "mmvp/mmvp/average" in md
    assert "## MMVP-VLM per pattern: mmvp" in md and "Orientation and Direction" in md
    table = list(csv.reader(open(out / "report.csv")))
    assert [row[0] for row in table[1:]] == ["original", "finetuned"]
    header = table[0]
    assert "zeroshot/shapes/acc1" in header and "retrieval/ret-captions/image_to_text_recall@5" in header
    col = header.index("diffloss/shapes/loss_mean")
    assert float(table[1][col]) == pytest.approx(original["loss_mean"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no MMVP chart" in printed
    else:
        assert (out / "mmvp_patterns.png").stat().st_size > 0 and "mmvp_patterns.png" in md


@pytest.mark.slow
def test_diffloss_is_repeatable_and_tells_encoders_apart(bench, tmp_path):
    def diffloss(model, out, batch_size):
        assert run("eval", "diffloss", "--model", bench / model, "--model-name", model, "--decoder", bench / "decoder",
                   "--data", bench / "heldout", "--output", out, "--batch-size", batch_size, "--draws-per-image", 2,
                   "--num-buckets", 4, "--no-progress") == 0
        stem = f"{model}__diffloss__heldout"
        return read(out / f"{stem}.json")["metrics"], list(csv.DictReader(open(out / f"{stem}.samples.csv")))

    first, draws = diffloss("original", tmp_path / "a", 2)
    again, draws_again = diffloss("original", tmp_path / "b", 2)
    assert first == again and draws == draws_again
    rebatched, draws_rebatched = diffloss("original", tmp_path / "c", 1)
    assert [(d["key"], d["timestep"]) for d in draws_rebatched] == [(d["key"], d["timestep"]) for d in draws]
    assert rebatched["loss_mean"] == pytest.approx(first["loss_mean"], rel=1e-4)
    other, other_draws = diffloss("finetuned", tmp_path / "d", 2)
    assert [d["timestep"] for d in other_draws] == [d["timestep"] for d in draws]  # identical draws ...
    assert other["loss_mean"] != first["loss_mean"]  # ... a different encoder, a different loss
    assert first["n_draws"] == 4 and first["n_images"] == 2


def test_eval_mmvp_runs_fp32_on_a_cuda_device_unless_asked(bench, tmp_path, monkeypatch):
    """The device check says CUDA; the model stays on this CPU, and each embedding step resolves its autocast as on
    the CUDA device the command picked."""
    from un2clip.eval.core import embed
    from un2clip.eval.encoder import mmvp
    from un2clip.models.clip import ClipModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ClipModel, "to", lambda self, *args, **kwargs: self)
    real, seen = embed.autocast_dtype, []

    def as_on_cuda(device, precision="auto"):
        seen.append(real(torch.device("cuda"), precision))
        return seen[-1]

    monkeypatch.setattr(embed, "autocast_dtype", as_on_cuda)
    for flags, dtype in (([], None), (["--precision", "auto"], torch.bfloat16), (["--precision", "bf16"], torch.bfloat16)):
        seen.clear()
        out = tmp_path / (flags[-1] if flags else "default")
        assert run("eval", "mmvp", "--model", bench / "original", "--model-name", "original", "--data", bench / "mmvp",
                   "--output", out, "--no-progress", *flags) == 0
        r = read(out / "original__mmvp__mmvp.json")
        assert r["device"] == "cuda" and seen == [dtype, dtype], flags  # images, texts
        assert r["options"]["precision"] == (flags[-1] if flags else mmvp.DEFAULT_PRECISION)
    seen.clear()  # the other tasks keep auto: bf16 on CUDA
    assert run("eval", "zeroshot", "--model", bench / "original", "--data", bench / "shapes",
               "--output", tmp_path / "zs", "--no-progress") == 0
    assert set(seen) == {torch.bfloat16}


def test_user_errors_are_one_line_not_tracebacks(bench, tmp_path, capsys):
    bad = tmp_path / "mmvp"
    bad.mkdir()
    lines = (bench / "mmvp" / "Questions.csv").read_text().splitlines()
    (bad / "Questions.csv").write_text("\n".join(lines[:4]) + "\n")  # 3 question rows
    assert run("eval", "mmvp", "--model", "tiny", "--data", bad, "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("un2clip eval: error: ") and str(bad / "Questions.csv") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    classes = tmp_path / "classes"
    (classes / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(classes / "cat" / "0.png")
    (classes / "dog").mkdir()
    assert run("eval", "zeroshot", "--model", "tiny", "--data", classes, "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "class folder" in err and str(classes / "dog") in err and "has no images" in err

    assert run("eval", "diffloss", "--model", bench / "original", "--data", bench / "shapes",
               "--output", tmp_path / "o") == 2
    assert "pass --decoder" in capsys.readouterr().err
    (tmp_path / "o").mkdir(exist_ok=True)
    assert run("report", tmp_path / "o") == 2
    assert "no un2clip result files" in capsys.readouterr().err


def test_derangement_is_a_seeded_cycle_without_fixed_points():
    from un2clip.eval.decoder.diffloss import derangement

    idx = torch.tensor([3, 5, 8, 13, 21])
    d = derangement(idx, seed=0)
    assert sorted(d) == sorted(d.values()) == idx.tolist() and all(a != b for a, b in d.items())
    assert d == derangement(idx, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        derangement(torch.tensor([4]), seed=0)


@pytest.mark.slow
def test_shuffled_condition_changes_only_the_condition(bench, tmp_path):
    def losses(data, condition):
        out = tmp_path / data.name  # both conditions into one folder: each keeps its own result file
        assert run("eval", "diffloss", "--model", bench / "original", "--model-name", "original", "--decoder",
                   bench / "decoder", "--data", data, "--output", out, "--condition", condition, "--draws-per-image", 3, "--no-progress") == 0
        task = "diffloss" if condition == "own" else f"diffloss-{condition}"
        assert json.loads((out / f"original__{task}__{data.name}.json").read_text())["options"]["condition"] == condition
        return list(csv.DictReader(open(out / f"original__{task}__{data.name}.samples.csv")))

    own, shuffled = losses(bench / "heldout", "own"), losses(bench / "heldout", "shuffled")
    assert [d["timestep"] for d in shuffled] == [d["timestep"] for d in own]  # the same draws ...
    assert [d["loss"] for d in shuffled] != [d["loss"] for d in own]  # ... another image's embedding
    # two copies of one image: the other image's embedding is the same embedding, so nothing changes
    twins = tmp_path / "twins"
    twins.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(next((bench / "heldout").glob("*.png")), twins / name)
    own, shuffled = losses(twins, "own"), losses(twins, "shuffled")
    assert [float(d["loss"]) for d in shuffled] == pytest.approx([float(d["loss"]) for d in own], rel=1e-5)
