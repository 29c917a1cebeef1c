"""`un2clip llava train` (LLaVA-1.5's two stages on the one training loop) and the world's LLaVA question sets:
the conversation reader, the answer-only labels and loss, stage 1 touching the projector alone, an exact resume,
the world MMVP-MLLM pairs and CV-Bench, and both evaluations reading them."""

import csv
import json
import random
import re
import shutil

import pytest
import torch
from PIL import Image

from un2clip.cli import main as cli
from un2clip.data import open_source
from un2clip.data.conversations import IGNORE_INDEX, ConversationSource, conversation_tokens
from un2clip.eval.mllm.cvbench import read_cvbench
from un2clip.eval.mllm.mmvp_mllm import read_mmvp_mllm
from un2clip.models.tokenizer import build_word_tokenizer
from un2clip.objectives.llava import answer_loss


def _conv(question, answer):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _write_json(folder, entries, name="data.json"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(entries))
    return folder / name


def test_reader_follows_llava_json(tmp_path):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8), (10, 10, 200)).save(tmp_path / "sub" / "b.png")
    entries = [{"id": "1", "image": "a.png", "conversations": _conv("<image>\nwhat color?", "red")},
               {"id": "2", "image": "sub/b.png",
                "conversations": _conv("what color?\n<image>", "blue") + _conv("is it blue?", "yes")}]
    source = open_source(_write_json(tmp_path, entries))
    assert isinstance(source, ConversationSource) and len(source) == 2
    rec = source.load(1)
    assert rec.key == "sub/b.png" and rec.image.getpixel((0, 0)) == (10, 10, 200)
    assert rec.turns == ["what color?\n<image>", "blue", "is it blue?", "yes"]
    # image paths relative to another folder
    moved = _write_json(tmp_path / "elsewhere", entries)
    with pytest.raises(FileNotFoundError, match=r"2 image\(s\) of .* missing under .*elsewhere: a.png, sub/b.png"):
        open_source(moved)
    assert len(open_source(moved, image_folder=tmp_path)) == 2


@pytest.mark.parametrize(("entry", "message"), [
    ({"id": "7", "conversations": _conv("hi", "hello")}, r"entry 0 \(id '7'\) has no image"),
    ({"id": "7", "image": "a.png", "conversations": _conv("what colour?", "red")},
     "the first human turn must hold the one <image> token"),
    ({"id": "7", "image": "a.png", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
     "turn 0 must be"),
    ({"id": "7", "image": "a.png", "conversations": _conv("<image>\nq", "a") + [{"from": "human", "value": "q2"}]},
     "last turn is a question without an answer"),
])
def test_reader_refuses_bad_entries_with_the_file_and_entry(tmp_path, entry, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=message):
        open_source(_write_json(tmp_path, [entry]))


WORDS = ["what", "color", "is", "the", "square", "circle", "red", "user", "assistant", "a", "b", "it"]


def _tokenizer():
    tok = build_word_tokenizer(WORDS, context_length=256)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def test_labels_are_the_answers_and_eos_only_v1_and_plain():
    tok = _tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    turns = ["<image>\nwhat color is the square?", "red", "is it a circle?", "b"]
    ids, labels = conversation_tokens(turns, tok, style="v1", n_image_tokens=3, image_token_id=image_id, system="")
    toks = tok.convert_ids_to_tokens(ids)
    assert toks == ["[BOS]", "user", "<image>", "<image>", "<image>", "what", "color", "is", "the", "square",
                    "assistant", "red", "[EOS]", "user", "is", "it", "a", "circle", "assistant", "b", "[EOS]"]
    supervised = [t for t, lab in zip(toks, labels) if lab != IGNORE_INDEX]
    assert supervised == ["red", "[EOS]", "b", "[EOS]"]
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    # plain (stage 1): the image, then the caption, supervised; the question is dropped as LLaVA's preprocess_plain
    ids, labels = conversation_tokens(["<image>\nwhat color", "a red square"], tok, style="plain", n_image_tokens=2,
                                      image_token_id=image_id)
    assert tok.convert_ids_to_tokens(ids) == ["[BOS]", "<image>", "<image>", "a", "red", "square"]
    assert labels[:3] == [IGNORE_INDEX] * 3 and labels[3:] == ids[3:]


def test_changing_a_prompt_token_changes_no_label_and_not_the_loss():
    tok = _tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    kw = {"style": "v1", "n_image_tokens": 2, "image_token_id": image_id, "system": ""}
    ids_a, lab_a = conversation_tokens(["<image>\nwhat color is the square?", "red"], tok, **kw)
    ids_b, lab_b = conversation_tokens(["<image>\nwhat color is the circle?", "red"], tok, **kw)
    assert ids_a != ids_b and lab_a == lab_b
    # the loss reads the logits only where the next token is an answer token
    labels = torch.tensor([lab_a])
    torch.manual_seed(0)
    logits = torch.randn(1, len(ids_a), len(tok))
    loss = answer_loss(logits, labels)
    targets = [(t - 1, lab) for t, lab in enumerate(lab_a) if lab != IGNORE_INDEX]
    by_hand = sum(-torch.log_softmax(logits[0, p], -1)[lab] for p, lab in targets) / len(targets)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    prompt_positions = [p for p in range(len(ids_a)) if p not in {q for q, _ in targets}]
    changed = logits.clone()
    changed[0, prompt_positions] += 5 * torch.randn(len(prompt_positions), len(tok))
    assert answer_loss(changed, labels).item() == loss.item()
    changed[0, targets[0][0], targets[0][1]] += 1.0
    assert answer_loss(changed, labels).item() != loss.item()


# -- the world's sets and training on them ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from un2clip.world import generate_world

    root = tmp_path_factory.mktemp("llava-world") / "w"
    generate_world(root, n_train=24, n_val=2, pairs_per_pattern=1, n_seg=0, n_zeroshot_per_class=0, n_detect=0,
                   n_depth=0, n_pointcloud_per_class=0, n_video_per_class=0, progress=False,
                   talk_colors=["red", "yellow", "green"], mllm=True, n_mllm_instruct=24, mllm_pairs_per_pattern=3,
                   n_cvbench_per_task=3)
    return root


def test_world_mmvp_mllm_pairs_have_different_right_answers(world):
    from un2clip.world.evalsets import MMVP_TYPES

    for name, colours in (("mmvp", {"cyan", "blue", "purple"}), ("mmvp-talk", {"red", "yellow", "green"})):
        questions = read_mmvp_mllm(world / "mllm" / name)
        assert len(questions) == 2 * 3 * 9
        for a, b in zip(questions[::2], questions[1::2]):
            assert a.question == b.question and a.options == b.options and a.answer != b.answer
        pairs = [json.loads(line) for line in (world / "mllm" / name / "pairs.jsonl").read_text().splitlines()]
        assert sorted({p["type"] for p in pairs}) == sorted(MMVP_TYPES)
        used = {o["color"] for p in pairs for s in p["scenes"] for o in s["objects"]}
        assert used <= colours


def test_world_cvbench_has_the_four_tasks_with_lettered_answers(world):
    items = read_cvbench(world / "mllm" / "cvbench")
    assert [it.task for it in items] == ["Count"] * 3 + ["Relation"] * 3 + ["Depth"] * 3 + ["Distance"] * 3
    assert {it.type for it in items} == {"2D", "3D"}
    for it in items:
        assert 0 <= it.answer < len(it.choices) and it.load_image().size == (32, 32)


def test_world_instruct_data_asks_every_attribute_and_answers_with_one_word(world):
    from un2clip.models.llava import llava_tiny_words
    from un2clip.world.mllm import conversation, object_questions, scene_questions
    from un2clip.world.scenes import sample_scene

    rng = __import__("numpy").random.default_rng(0)
    asked = set()
    for _ in range(200):
        scene = sample_scene(rng)
        asked |= {q[0] for o in scene.kinds for q in object_questions(scene, o)} | {q[0] for q in scene_questions(scene)}
        turns = conversation(scene, rng)
        assert turns[0]["value"].startswith("<image>\n") and all(len(t["value"].split()) == 1 for t in turns[1::2])
    assert asked == {"color", "shape", "count", "position", "size", "orientation", "state", "dot", "glyph",
                     "relation", "view"}
    # silent colours: only colour and shape questions about their objects
    data = json.loads((world / "mllm" / "instruct.json").read_text())
    assert len(data) == 24 and len(open_source(world / "mllm" / "instruct.json")) == 24
    # lettered questions in MMVP's prompt form (as `eval mmvp-mllm` asks: nothing after the options) and CV-Bench's
    questions = [t["value"] for e in data for t in e["conversations"][::2]]
    assert any(re.search(r"\? \(a\) [a-z0-9 ]+ \(b\) [a-z0-9 ]+$", q) for q in questions)
    assert any(q.endswith("Answer with the option's letter from the given choices directly.") for q in questions)
    # every word the sets write is in llava-tiny's vocabulary (no unknown tokens)
    tok = build_word_tokenizer(llava_tiny_words())
    texts = [t["value"] for e in data for t in e["conversations"]]
    texts += [t["value"] for e in json.loads((world / "mllm" / "pretrain.json").read_text()) for t in e["conversations"]]
    for name in ("mmvp", "mmvp-talk"):
        texts += [r["Question"] + " " + r["Options"] for r in csv.DictReader(open(world / "mllm" / name / "Questions.csv"))]
    texts += [it.prompt for it in read_cvbench(world / "mllm" / "cvbench")]
    unknown = {w for t in texts for w, i in zip(tok.tokenize(t.replace("<image>", "")),
                                                 tok(t.replace("<image>", ""), add_special_tokens=False)["input_ids"])
               if i == tok.unk_token_id}
    assert not unknown


def _first_answers(data):
    """(question text, the right option's text) of each conversation's first question (letters resolved)."""
    out = []
    for entry in data:
        prompt, answer = (t["value"] for t in entry["conversations"][:2])
        text = prompt.removeprefix("<image>\n").split("?")[0] + "?"
        if re.fullmatch(r"[a-dA-D]", answer):
            answer = re.search(r"\(" + answer + r"\) ([a-z0-9]+)", prompt).group(1)
        out.append((text, answer))
    return out


def test_world_instruct_scenes_come_in_pairs_with_different_right_answers(tmp_path):
    from un2clip.world.mllm import write_instruct

    write_instruct(tmp_path / "pairs", 0, 400, image_size=32, talk_colors=("red", "yellow", "green"))
    data = json.loads((tmp_path / "pairs" / "instruct.json").read_text())
    assert len(data) == 400 and all(len(e["conversations"]) == 6 for e in data)
    assert all(e["conversations"][0]["value"].startswith("<image>\n") for e in data)
    assert not any("<image>" in t["value"] for e in data for t in e["conversations"][1:])
    first = _first_answers(data)
    for (qa, aa), (qb, ab) in zip(first[::2], first[1::2]):
        assert qa == qb and aa != ab, (qa, aa, ab)
    # each yes/no or two-way template answered both ways equally often: its words do not tell the answer
    answers: dict[str, list[str]] = {}
    for q, a in first:
        answers.setdefault(re.sub(r"\b(red|yellow|green)\b", "C", q), []).append(a)
    two_way = {q: a for q, a in answers.items() if len(set(a)) == 2}
    assert any("dot" in q for q in two_way) and any("view" in q for q in two_way)
    for q, a in two_way.items():
        assert a.count(a[0]) == len(a) / 2, (q, sorted(set(a)))
    assert all(Image.open(tmp_path / "pairs" / e["image"]).size == (32, 32) for e in data)
    # the first version, scenes drawn alone, stays available and differs
    write_instruct(tmp_path / "alone", 0, 400, image_size=32, talk_colors=("red", "yellow", "green"), contrastive=False)
    alone = _first_answers(json.loads((tmp_path / "alone" / "instruct.json").read_text()))
    assert sum(qa == qb and aa != ab for (qa, aa), (qb, ab) in zip(alone[::2], alone[1::2])) < 20


def test_world_contrastive_pairs_use_the_talk_colours_except_colour_pairs():
    import numpy as np

    from un2clip.world.mllm import contrastive_pair

    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        a, b, qa, qb = contrastive_pair(rng, ("red", "yellow", "green"))
        seen.add(qa[0])
        assert qa[:3] == qb[:3] and qa[3] != qb[3] and a != b
        colours = {o.color for s in (a, b) for o in s.objects}
        if qa[0] != "color":
            assert colours <= {"red", "yellow", "green"}, (qa, colours)
    assert seen == {"orientation", "dot", "state", "count", "position", "relation", "color", "size", "glyph", "view"}


def test_other_world_outputs_are_unchanged_by_the_llava_sets(tmp_path):
    from un2clip.world import generate_world

    kw = {"n_train": 6, "n_val": 2, "pairs_per_pattern": 1, "n_seg": 2, "n_zeroshot_per_class": 1, "n_detect": 1,
          "n_depth": 1, "n_pointcloud_per_class": 1, "n_video_per_class": 1, "progress": False}
    generate_world(tmp_path / "a", **kw)
    generate_world(tmp_path / "b", mllm=True, n_mllm_instruct=2, mllm_pairs_per_pattern=1, n_cvbench_per_task=1, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "world.json":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    a, b = (json.loads((tmp_path / n / "world.json").read_text()) for n in "ab")
    assert {k: v for k, v in b.items() if k != "mllm"} == a and set(b["mllm"]) >= {"n_instruct", "n_cvbench"}


def _weights(folder):
    """The state dict of a saved LLaVA, named as in memory."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder).state_dict()


TRAIN = ["llava", "train", "--batch-size", "4", "--max-length", "96", "--no-progress"]


@pytest.fixture(scope="module")
def pretrained(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("llava-runs") / "stage1"
    assert cli(TRAIN + ["--stage", "pretrain", "--data", str(world / "mllm" / "pretrain.json"), "--max-steps", "1",
                        "--output", str(out)]) == 0
    return out


def test_stage_one_trains_the_projector_only(world, pretrained):
    from un2clip.train.config import load_config
    from un2clip.train.recipes import build_llava_objective

    cfg = load_config(pretrained / "config.yaml")
    assert cfg.lr == 1e-3 and cfg.lr_schedule == "cosine" and cfg.warmup_steps == 1 and cfg.preset == "llava-tiny"
    fresh, _ = build_llava_objective(cfg, open_source(cfg.data))  # the same start: seeded tower, LM and projector
    before = {k: v for k, v in fresh.model.state_dict().items()}
    after = _weights(pretrained / "llava")
    assert set(after) == set(before)
    moved = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert moved and all(".multi_modal_projector." in k for k in moved)
    assert len(moved) == 4  # linear_1, linear_2: weights and biases


def test_the_saved_processor_asks_as_training_laid_out(pretrained):
    """The prompt LlavaChat builds with the run's processor tokenises to the training tokens before the answer."""
    from un2clip.models.llava import LlavaChat
    from un2clip.objectives.llava import LlavaObjective

    chat = LlavaChat.from_pretrained(pretrained)  # the run folder: its llava/
    objective = LlavaObjective(chat.model, chat.processor, stage="finetune", max_length=512)
    question = "what color is the square?\nAnswer the question using a single word or phrase."
    ids, labels = objective.tokens(["<image>\n" + question, "red"])
    prompt = chat.processor(images=[Image.new("RGB", (32, 32))], text=[chat.prompt(question)],
                            return_tensors="pt")["input_ids"][0].tolist()
    first_answer = next(k for k, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert prompt == ids[:first_answer]
    assert chat.processor.tokenizer.convert_ids_to_tokens(ids[first_answer:]) == ["red", "[EOS]"]


def test_finetune_with_the_class_token_reads_one_image_token_more(world, pretrained, tmp_path):
    """--vision-select full on an --init model: the saved LLaVA and its processor put the class token (17 image
    tokens of the 32 px, patch-8 tower), and the first image token's features are the class token's."""
    from un2clip.models.llava import LlavaChat, set_vision_select
    from un2clip.train.recipes import load_llava

    out = tmp_path / "cls"
    assert cli(TRAIN + ["--stage", "finetune", "--init", str(pretrained), "--data", str(world / "mllm" / "instruct.json"),
                        "--max-steps", "1", "--vision-select", "full", "--output", str(out)]) == 0
    chat = LlavaChat.from_pretrained(out)
    assert chat.model.config.vision_feature_select_strategy == "full"
    ids = chat.processor(images=[Image.new("RGB", (32, 32))], text=[chat.prompt("how many?")],
                         return_tensors="pt")["input_ids"][0]
    assert int((ids == chat.model.config.image_token_index).sum()) == 17
    model, processor = load_llava(pretrained)
    pixels = processor.image_processor(images=[Image.new("RGB", (32, 32), (200, 30, 30))], return_tensors="pt")
    tower = model.model.vision_tower(pixels["pixel_values"], output_hidden_states=True).hidden_states[-2]
    set_vision_select(model, processor, "full")
    feats = model.model.get_image_features(pixel_values=pixels["pixel_values"])
    feats = getattr(feats, "pooler_output", feats)
    feats = feats[0] if isinstance(feats, (list, tuple)) else feats
    assert feats.reshape(-1, feats.shape[-1]).shape[0] == 17
    assert torch.allclose(feats.reshape(-1, feats.shape[-1])[0], model.model.multi_modal_projector(tower[0, :1])[0],
                          atol=1e-5)
    with pytest.raises(ValueError, match="default"):
        set_vision_select(model, processor, "cls")


def test_stage_one_step_counts_come_from_the_epoch(world, tmp_path):
    from un2clip.train.llava import llava_defaults

    d = llava_defaults("pretrain", n_samples=1000, batch_size=None, max_steps=None)
    assert (d["lr"], d["batch_size"], d["max_steps"], d["warmup_steps"]) == (1e-3, 256, 3, 1)
    d = llava_defaults("finetune", n_samples=665_298, batch_size=None, max_steps=None)
    assert (d["lr"], d["batch_size"], d["max_steps"], d["warmup_steps"]) == (2e-5, 128, 5197, 156)


def test_finetune_resume_equals_an_uninterrupted_run(world, pretrained, tmp_path):
    args = TRAIN + ["--stage", "finetune", "--init", str(pretrained), "--data", str(world / "mllm" / "instruct.json"),
                    "--max-steps", "4", "--save-every", "2", "--seed", "3"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert cli(args + ["--output", str(ref)]) == 0
    assert cli(args + ["--output", str(cut)]) == 0
    shutil.rmtree(cut / "checkpoints" / "step_000004")
    shutil.rmtree(cut / "llava")
    assert cli(["llava", "train", "--resume", str(cut), "--no-progress"]) == 0
    losses = [[json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (ref, cut)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    a, b = _weights(ref / "llava"), _weights(cut / "llava")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # stage 2 moved the language model, not the tower
    start = _weights(pretrained / "llava")
    assert any(not torch.equal(a[k], start[k]) for k in a if ".language_model." in k)
    assert all(torch.equal(a[k], start[k]) for k in a if ".vision_tower." in k)


@pytest.mark.parametrize(("task", "folder"), [("mmvp-mllm", "mmvp"), ("cvbench", "cvbench")])
def test_evaluations_read_the_world_sets(world, pretrained, tmp_path, task, folder):
    out = tmp_path / "results"
    assert cli(["eval", task, "--model", str(pretrained / "llava"), "--model-name", "w", "--data",
                str(world / "mllm" / folder), "--output", str(out), "--max-new-tokens", "2", "--no-progress",
                "--device", "cpu"]) == 0
    result = json.loads(next(out.glob("w__*.json")).read_text())
    assert result["task"] == task
    if task == "cvbench":
        assert {"task_Count", "task_Relation", "task_Depth", "task_Distance"} <= set(result["metrics"])
    else:
        assert result["metrics"]["n_pairs"] == 27


def test_training_refuses_other_data_and_other_objectives_refuse_conversations(world, tmp_path, capsys):
    assert cli(TRAIN + ["--stage", "pretrain", "--data", str(world / "train" / "captions.csv"), "--max-steps", "1",
                        "--output", str(tmp_path / "x")]) == 2
    assert "reads LLaVA's JSON conversations" in capsys.readouterr().err
    assert cli(["pretrain", "--data", str(world / "mllm" / "pretrain.json"), "--max-steps", "1",
                "--output", str(tmp_path / "y"), "--no-progress"]) == 2
    assert cli(TRAIN + ["--data", str(world / "mllm" / "pretrain.json"), "--output", str(tmp_path / "z")]) == 2
    assert "--stage is required" in capsys.readouterr().err
    random.seed(0)


def test_answer_tokens_of_a_sentencepiece_style_tokenizer():
    """Words carry the space before them ("▁red", as Llama's tokenizer): the answer tokens are still exactly the
    answers and their end-of-sequence markers, the spaces included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer, core.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    corpus = ["USER: what color is the square? ASSISTANT: red", "is it a circle? yes no blue"] * 20
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<s>", "</s>",
                                                                                       "<image>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    ids, labels = conversation_tokens(["<image>\nwhat color is the square?", "red", "is it a circle?", "no"], tok,
                                      style="v1", n_image_tokens=2, image_token_id=image_id, system="")
    assert ids.count(image_id) == 2 and ids[0] == tok.bos_token_id
    supervised = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(supervised) == ["▁red", "</s>", "▁no", "</s>"]
    # the first question's tokens are those of the prompt the model is asked at inference
    from un2clip.data.conversations import prompt_template

    prompt = tok(prompt_template("v1", "").format(question="what color is the square?"))["input_ids"]
    prompt = [x for t in prompt for x in ([t] * 2 if t == image_id else [t])]
    if prompt[0] != tok.bos_token_id:
        prompt = [tok.bos_token_id] + prompt
    assert ids[:len(prompt)] == prompt and labels[len(prompt)] != IGNORE_INDEX


@pytest.mark.parametrize("epochs, ratio", [(float("nan"), 0.03), (float("inf"), 0.03), (0.0, 0.03), (1.0, float("nan"))])
def test_llava_defaults_refuse_non_finite_epochs_and_ratios(epochs, ratio):
    from un2clip.train.llava import llava_defaults

    with pytest.raises(ValueError, match="--epochs must be finite and > 0"):
        llava_defaults("pretrain", n_samples=1000, batch_size=None, max_steps=None, epochs=epochs, warmup_ratio=ratio)
