"""`un2clip llava train --stage lm` (Vicuna's role: the language model reads the world's words before it meets an
image): the text readers, the loss against transformers' own, no tower built, the saved lm/ frozen in stage
pretrain while the projector moves, an exact resume, and the one-line refusals."""

import csv
import json
import shutil

import pytest
import torch
from PIL import Image

from un2clip.cli import main as cli
from un2clip.data import open_source
from un2clip.data.conversations import IGNORE_INDEX
from un2clip.data.sources import Record
from un2clip.data.texts import text_source
from un2clip.models.llava import build_tiny_language_model
from un2clip.objectives.llava import LanguageModelObjective

CAPTIONS = ["a picture of a red circle", "a blue square on the left", "", "a green cross with a dot",
            "two red circles", "a yellow square", "a purple cross on the right", "a blue circle without a dot"]


def _conv(question, answer):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight images, a captions table (one caption blank) and LLaVA JSON conversations of them."""
    root = tmp_path_factory.mktemp("lm-data")
    (root / "images").mkdir()
    for k in range(len(CAPTIONS)):
        Image.new("RGB", (32, 32), (30 * k, 200 - 20 * k, 90)).save(root / "images" / f"{k}.png")
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([f"images/{k}.png", c] for k, c in enumerate(CAPTIONS))
    pretrain = [{"id": str(k), "image": f"images/{k}.png",
                 "conversations": _conv("<image>\nDescribe the image briefly.", c or "a shape")}
                for k, c in enumerate(CAPTIONS)]
    (root / "pretrain.json").write_text(json.dumps(pretrain))
    instruct = [{"id": "q", "image": "images/0.png",
                 "conversations": _conv("what color is the circle?\n<image>", "red") + _conv("is it big?", "no")},
                {"id": "r", "image": "images/1.png", "conversations": _conv("<image>", "a blue square")}]
    (root / "instruct.json").write_text(json.dumps(instruct))
    return root


def test_readers_give_the_captions_and_the_turns_without_image(data):
    table = text_source(open_source(data / "captions.csv"))
    assert [table.text(i) for i in range(len(table))] == [c for c in CAPTIONS if c]
    assert table.n_skipped == 1 and table.key(2) == str(data / "images" / "3.png")
    assert table.load(0).text == CAPTIONS[0] and table.load(0).image is None
    conv = text_source(open_source(data / "instruct.json"))
    assert [conv.text(i) for i in range(len(conv))] == ["what color is the circle?\nred\nis it big?\nno",
                                                         "a blue square"]


def test_readers_refuse_sources_without_text(data, tmp_path):
    blank = [{"id": "1", "image": str(data / "images" / "0.png"), "conversations": _conv("<image>", " ")}]
    (tmp_path / "blank.json").write_text(json.dumps(blank))
    with pytest.raises(ValueError, match="holds no text"):
        text_source(open_source(tmp_path / "blank.json"))
    (tmp_path / "paths.csv").write_text("image\nimages/0.png\n")
    with pytest.raises(ValueError, match="no caption column"):
        text_source(open_source(tmp_path / "paths.csv"))
    with pytest.raises(ValueError, match="folder source; a language model trains on the texts"):
        text_source(open_source(data / "images"))


def _batch(objective, texts):
    samples = [objective.transform(Record(image=None, text=t, key=str(k)), None) for k, t in enumerate(texts)]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def test_the_loss_is_transformers_causal_lm_loss_on_every_text_token():
    model, tokenizer = build_tiny_language_model(seed=1)
    objective = LanguageModelObjective(model, tokenizer, max_length=24)
    texts = ["a red circle on the left", "two blue squares", "a green cross with a dot and a label"]
    batch = _batch(objective, texts)
    ids = batch["input_ids"][0].tolist()
    words = tokenizer("a red circle on the left", add_special_tokens=False)["input_ids"]
    assert ids[:8] == [tokenizer.bos_token_id, *words, tokenizer.eos_token_id] and len(words) == 6
    assert set(ids[8:]) == {tokenizer.pad_token_id} and batch["attention_mask"][0].sum() == 8
    assert batch["labels"][0].tolist() == ids[:8] + [IGNORE_INDEX] * 16
    out = objective(batch)
    longest = int(batch["attention_mask"].sum(1).max())
    mask = batch["attention_mask"][:, :longest]
    ref_labels = batch["input_ids"][:, :longest].masked_fill(mask == 0, IGNORE_INDEX)
    ref = model(input_ids=batch["input_ids"][:, :longest], attention_mask=mask, labels=ref_labels).loss
    assert torch.allclose(out["loss"], ref, rtol=1e-6, atol=1e-6)
    assert out["text_tokens"].item() == int(mask.sum()) - len(texts)  # every token after BOS, no padding
    # a longer padding changes nothing; a text is cut at max_length
    wide = LanguageModelObjective(model, tokenizer, max_length=64)
    assert torch.allclose(wide(_batch(wide, texts))["loss"], ref, rtol=1e-6, atol=1e-6)
    short = LanguageModelObjective(model, tokenizer, max_length=4)
    assert _batch(short, texts)["input_ids"].shape == (3, 4)


def _lm_weights(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


TRAIN = ["llava", "train", "--batch-size", "4", "--no-progress"]


def _stage_lm(args):
    """Run `llava train --stage lm ARGS` with no CLIP loadable (a stage-lm run must build no vision tower)."""
    import un2clip.load
    import un2clip.train.recipes

    def no_tower(*args, **kwargs):
        raise AssertionError("stage lm loaded a CLIP")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(un2clip.load, "load_clip", no_tower)
        mp.setattr(un2clip.train.recipes, "load_clip", no_tower)
        return cli(args)


LM_ARGS = ["llava", "train", "--no-progress", "--stage", "lm", "--batch-size", "2", "--save-every", "4"]


@pytest.fixture(scope="module")
def lm_run(data, tmp_path_factory):
    """A stage-lm run on the captions, its steps from the default epochs: 7 texts x 2 epochs / batch 2 = 7."""
    out = tmp_path_factory.mktemp("lm-runs") / "lm"
    assert _stage_lm(LM_ARGS + ["--data", str(data / "captions.csv"), "--output", str(out)]) == 0
    return out


def test_stage_lm_trains_and_writes_the_language_model_alone(lm_run):
    from safetensors.torch import load_file

    from un2clip.train.config import load_config
    from un2clip.train.llava import EPOCHS_LM

    cfg = load_config(lm_run / "config.yaml")
    assert (cfg.objective, cfg.lr, cfg.lr_schedule, cfg.batch_size) == ("llava-lm", 1e-3, "cosine", 2)
    assert cfg.max_steps == int(7 * EPOCHS_LM) // 2 and cfg.warmup_steps == 1  # the 7 non-blank captions
    after = _lm_weights(lm_run / "lm")
    before = build_tiny_language_model()[0].state_dict()
    assert set(after) == set(before)  # a causal LM's weights, nothing of a tower or a projector
    assert all(not torch.equal(after[k], before[k]) for k in after if k.endswith(".weight") and "norm" not in k)
    state = load_file(lm_run / "checkpoints" / f"step_{cfg.max_steps:06d}" / "trainable.safetensors")
    assert {k.removeprefix("model.") for k in state} == set(before)  # the checkpoint: the LM's weights alone
    metrics = [json.loads(line) for line in (lm_run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == cfg.max_steps and all(m["text_tokens"] > 0 for m in metrics)


def test_stage_lm_resume_equals_an_uninterrupted_run(lm_run, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(lm_run, cut)
    last = sorted(p.name for p in (cut / "checkpoints").glob("step_*"))
    assert last == ["step_000004", "step_000007"]
    shutil.rmtree(cut / "checkpoints" / last[-1])
    shutil.rmtree(cut / "lm")
    assert _stage_lm(["llava", "train", "--resume", str(cut), "--no-progress"]) == 0
    losses = [[json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()]
              for r in (lm_run, cut)]
    assert len(losses[0]) == 7 and losses[0] == losses[1]
    a, b = _lm_weights(lm_run / "lm"), _lm_weights(cut / "lm")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_saved_lm_stays_bit_identical_in_stage_pretrain_while_the_projector_moves(data, lm_run, tmp_path):
    from un2clip.train.config import load_config
    from un2clip.train.recipes import build_llava_objective

    out = tmp_path / "pt"
    assert cli(TRAIN + ["--stage", "pretrain", "--data", str(data / "pretrain.json"), "--max-steps", "2",
                        "--max-length", "96", "--language-model", str(lm_run / "lm"), "--output", str(out)]) == 0
    from transformers import LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(out / "llava").state_dict()
    lm = _lm_weights(lm_run / "lm")
    for k, v in lm.items():
        inside = k if k.startswith("lm_head.") else "model.language_model." + k.removeprefix("model.")
        assert torch.equal(llava[inside], v), k
    cfg = load_config(out / "config.yaml")
    start = build_llava_objective(cfg, open_source(cfg.data))[0].model.state_dict()
    moved = sorted(k for k in llava if not torch.equal(llava[k], start[k]))
    assert len(moved) == 4 and all(".multi_modal_projector." in k for k in moved)
    # the run folder itself names the LM as well
    again = build_llava_objective(load_config(out / "config.yaml").__class__(
        **{**cfg.__dict__, "objective_options": {**cfg.objective_options, "language_model": str(lm_run)}}),
        open_source(cfg.data))[0].model.state_dict()
    assert all(torch.equal(again[k], start[k]) for k in start)


@pytest.mark.parametrize(("flags", "message"), [
    (["--init", "somewhere"], "--init .* do not go with it"),
    (["--vision-select", "full"], "--vision-select .* do not go with it"),
    (["--clip", "tiny"], "--clip .* do not go with it"),
])
def test_stage_lm_refuses_a_llavas_settings_in_one_line(data, tmp_path, capsys, flags, message):
    assert cli(TRAIN + ["--stage", "lm", "--data", str(data / "captions.csv"), "--max-steps", "1",
                        "--output", str(tmp_path / "x")] + flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re

    assert re.search(message, err)


def test_stage_lm_refuses_a_json_with_no_text_in_one_line(data, tmp_path, capsys):
    blank = [{"id": "1", "image": str(data / "images" / "0.png"), "conversations": _conv("<image>", "")}]
    (tmp_path / "blank.json").write_text(json.dumps(blank))
    assert cli(TRAIN + ["--stage", "lm", "--data", str(tmp_path / "blank.json"), "--output",
                        str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no text" in err
