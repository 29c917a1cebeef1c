"""LLaVA: vision-tower swap on a tiny random LLaVA built from configs in code, answer matching and the MMVP-MLLM /
CV-Bench scores on hand-built answers, and both evaluations end to end through the CLI."""

import csv
import json

import pytest
import torch
from PIL import Image

from un2clip.cli import main as cli
from un2clip.eval.mllm.choices import match_choice
from un2clip.eval.mllm.cvbench import cvbench_scores, read_cvbench
from un2clip.eval.mllm.mmvp_mllm import mmvp_mllm_scores, parse_options, read_mmvp_mllm
from un2clip.models.presets import build_clip_from_config, build_tiny_clip

WORDS = ["what", "is", "the", "door", "open", "closed", "a", "b", "c", "d", "how", "many", "cats", "1", "2", "3",
         "which", "closer", "left", "right", "select", "from", "following", "choices", "answer", "with", "option's",
         "letter", "given", "directly", "user", "assistant", "are", "there", "or", "to", "camera"]


def build_tiny_llava(vision_config, seed=0):
    """A random LlavaForConditionalGeneration (CLIP tower of ``vision_config``, 2-layer Llama) and its processor."""
    from transformers import (
        CLIPImageProcessor,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from un2clip.models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(WORDS, context_length=512)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    size, patch = vision_config.image_size, vision_config.patch_size
    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text,
                         image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=(size // patch) ** 2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return model, processor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tmp, original CLIP folder, LLaVA folder whose tower is that CLIP's image tower)."""
    tmp = tmp_path_factory.mktemp("llava")
    clip = build_tiny_clip()
    clip_dir = clip.save_pretrained(tmp / "clip")
    model, processor = build_tiny_llava(clip.model.config.vision_config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    model.save_pretrained(tmp / "llava")
    processor.save_pretrained(tmp / "llava")
    return tmp, clip_dir, tmp / "llava"


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_swapping_in_the_original_tower_leaves_every_weight_unchanged(setup):
    tmp, clip_dir, llava = setup
    assert cli(["llava", "swap", "--llava", str(llava), "--encoder", str(clip_dir), "--output", str(tmp / "same")]) == 0
    a, b = _weights(llava), _weights(tmp / "same")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp / "same" / "processor_config.json").is_file() or (tmp / "same" / "tokenizer_config.json").is_file()


def test_swap_replaces_the_tower_only(setup):
    tmp, clip_dir, llava = setup
    other = build_tiny_clip(seed=11).save_pretrained(tmp / "other")
    assert cli(["llava", "swap", "--llava", str(llava), "--encoder", str(other), "--output", str(tmp / "swapped")]) == 0
    before, after = _weights(llava), _weights(tmp / "swapped")
    tower = build_tiny_clip(seed=11).vision_model.state_dict()
    assert set(before) == set(after)
    in_tower = [k for k in after if "vision_tower." in k]  # names on disk: "vision_tower.embeddings..." or so
    assert len(in_tower) == len(tower)
    for key in after:
        expected = tower[key.split("vision_tower.", 1)[1]] if key in in_tower else before[key]
        assert torch.equal(after[key], expected), key
    assert any(not torch.equal(before[k], after[k]) for k in in_tower)


def test_swap_refuses_an_encoder_of_another_image_size_or_width(setup, capsys):
    from un2clip.models.clip import ImageProcessing

    tmp, _, llava = setup
    vision = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 64, "patch_size": 8}
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 32}
    big = build_clip_from_config(vision, text, 128, processing=ImageProcessing(size=64)).save_pretrained(tmp / "big")
    assert cli(["llava", "swap", "--llava", str(llava), "--encoder", str(big), "--output", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    assert "does not fit this LLaVA's vision tower: image_size 64 (LLaVA's tower: 32)" in err
    assert not (tmp / "x").exists()


def test_swap_never_writes_over_its_llava_and_refuses_an_existing_output(setup, capsys):
    tmp, clip_dir, llava = setup
    before = _weights(llava)
    assert cli(["llava", "swap", "--llava", str(llava), "--encoder", str(clip_dir), "--output", str(llava),
                "--overwrite"]) == 2
    assert f"--output {llava} would write over the input {llava}" in capsys.readouterr().err
    assert all(torch.equal(before[k], v) for k, v in _weights(llava).items())
    out = tmp / "twice"
    assert cli(["llava", "swap", "--llava", str(llava), "--encoder", str(clip_dir), "--output", str(out)]) == 0
    assert cli(["llava", "swap", "--llava", str(llava), "--encoder", str(clip_dir), "--output", str(out)]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert cli(["llava", "swap", "--llava", str(llava), "--encoder", str(clip_dir), "--output", str(out),
                "--overwrite"]) == 0


# -- answers and scores on hand-built inputs ----------------------------------------------------------

@pytest.mark.parametrize(("answer", "expected"), [
    ("(b)", 1), ("(a) Open", 0), ("B", 1), ("b.", 1), ("Answer: B", 1), ("The answer is (a)", 0),
    ("The door is closed.", 1), ("open", 0), ("Open or closed", None), ("C", None), ("I cannot tell", None),
    # hedged answers name no single option (issue 32 case 5)
    ("The answer is (A) or (B)", None), ("(a) or (b)", None), ("A or B", None), ("A/B", None),
    ("(B) Closed, or maybe (A)", None), ("Answer: A, I think", 0),
])
def test_match_choice(answer, expected):
    assert match_choice(answer, ["Open", "Closed"]) == expected


def test_match_choice_uses_whole_words():
    assert match_choice("There are 10 cats", ["1", "10"]) == 1
    assert match_choice("2", ["1", "2", "3", "0"]) == 1


def test_parse_options():
    assert parse_options("(a) Open (b) Closed") == ("Open", "Closed")
    assert parse_options("(a) Yes (b) No") == ("Yes", "No")
    with pytest.raises(ValueError, match="not written as"):
        parse_options("Open or Closed")


def test_mmvp_pairs_count_only_when_both_answers_are_right():
    # pairs: (T, T) right, (T, F) wrong, (F, T) wrong, (T, T) right -> 2 of 4 pairs, 6 of 8 questions
    scores = mmvp_mllm_scores([True, True, True, False, False, True, True, True])
    assert scores["accuracy"] == 50.0 and scores["question_accuracy"] == 75.0 and scores["n_pairs"] == 4
    with pytest.raises(ValueError, match="even"):
        mmvp_mllm_scores([True, False, True])


def test_cvbench_accuracy_is_the_mean_of_2d_and_3d_with_2d_the_mean_of_its_sources():
    sources = ["ADE20K"] * 4 + ["COCO"] * 2 + ["Omni3D"] * 5
    tasks = ["Count", "Count", "Relation", "Relation", "Count", "Relation"] + ["Depth"] * 2 + ["Distance"] * 3
    correct = [True, True, True, False, False, False] + [True, True, False, True, False]
    s = cvbench_scores(sources, tasks, correct)
    assert s["source_ADE20K"] == 75.0 and s["source_COCO"] == 0.0 and s["source_Omni3D"] == 60.0
    assert s["accuracy_2d"] == 37.5 and s["accuracy_3d"] == 60.0 and s["accuracy"] == pytest.approx(48.75)
    assert s["task_Count"] == pytest.approx(200 / 3) and s["task_Depth"] == 100.0 and s["task_Distance"] == pytest.approx(100 / 3)
    # not the share of all questions (6 of 11 = 54.5)
    assert s["accuracy"] != pytest.approx(100 * 6 / 11)


# -- benchmark folders and the evaluations end to end ----------------------------------------------------

def _image(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 36), colour).save(path)


def write_mmvp(root):
    rows = [("1", "Is the door open or closed?", "(a) Open (b) Closed", "(a)"),
            ("2", "Is the door open or closed?", "(a) Open (b) Closed", "(b)"),
            ("3", "How many cats are there?", "(a) 1 (b) 2", "(b)"),
            ("4", "How many cats are there?", "(a) 1 (b) 2", "(a)")]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Index", "Question", "Options", "Correct Answer"])
        w.writerows(rows)
    for k, (idx, *_rest) in enumerate(rows):
        _image(root / "MMVP Images" / f"{idx}.jpg", (60 * k, 100, 200))
    return root


def write_cvbench(root):
    rows2d = [{"idx": 0, "type": "2D", "task": "Count", "question": "How many cats are there?",
               "choices": ["1", "2", "3"], "answer": "(B)", "filename": "img/2D/count/ade20k_1.png", "source": "ADE20K"},
              {"idx": 1, "type": "2D", "task": "Relation", "question": "Which is closer to the left?",
               "choices": ["the door", "the cats"], "answer": "(A)", "filename": "img/2D/relation/coco_1.png",
               "source": "COCO"}]
    rows3d = [{"idx": 2, "type": "3D", "task": "Depth", "question": "Which is closer to the camera?",
               "choices": ["the door", "the cats"], "answer": "(B)", "filename": "img/3D/depth/omni3d_1.jpg",
               "source": "Omni3D"}]
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("test_2d.jsonl", rows2d), ("test_3d.jsonl", rows3d)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        for r in rows:
            _image(root / r["filename"], (r["idx"] * 80, 50, 50))
    return root


def test_readers_follow_the_release_layouts(tmp_path):
    questions = read_mmvp_mllm(write_mmvp(tmp_path / "MMVP"))
    assert len(questions) == 4 and questions[0].prompt == "Is the door open or closed? (a) Open (b) Closed"
    assert [q.answer for q in questions] == [0, 1, 1, 0]
    items = read_cvbench(write_cvbench(tmp_path / "CV-Bench"))
    assert [it.source for it in items] == ["ADE20K", "COCO", "Omni3D"] and items[0].answer == 1
    assert items[0].prompt.endswith("(A) 1\n(B) 2\n(C) 3")
    (tmp_path / "MMVP" / "MMVP Images" / "3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 MMVP image\(s\) missing: .*3.jpg; expected MMVP's layout"):
        read_mmvp_mllm(tmp_path / "MMVP")
    with pytest.raises(FileNotFoundError, match="holds none of test_2d.jsonl, test_3d.jsonl, test.jsonl"):
        read_cvbench(tmp_path)


def test_a_cvbench_folder_with_one_half_reads_it_and_names_the_other(tmp_path, caplog):
    root = write_cvbench(tmp_path / "CV-Bench")
    (root / "test_3d.jsonl").unlink()
    with caplog.at_level("WARNING"):
        items = read_cvbench(root)
    assert [it.source for it in items] == ["ADE20K", "COCO"]
    assert "has test_2d.jsonl but not test_3d.jsonl: scoring 2D only" in caplog.text


@pytest.mark.parametrize(("task", "flags", "message"), [
    ("mmvp-mllm", ["--prompt-template", "USER: <image> describe ASSISTANT:"], "argument --prompt-template: must "
                                                                               "contain {question}"),
    ("cvbench", ["--prompt-template", "USER: <image>\n{question} {answer}"], "whose only field is {question}"),
    ("cvbench", ["--limit", "0"], "argument --limit: must be a positive integer, not '0'"),
    ("mmvp-mllm", ["--batch-size", "0"], "argument --batch-size: must be a positive integer, not '0'"),
    ("cvbench", ["--max-new-tokens", "-1"], "argument --max-new-tokens: must be a positive integer"),
])
def test_llava_evaluations_check_options_when_parsed(tmp_path, capsys, task, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli(["eval", task, "--model", str(tmp_path / "never-loaded"), "--data", str(tmp_path), "--output",
             str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_prompt_template_without_the_question_is_refused_by_the_library(setup):
    from un2clip.models.llava import LlavaChat

    with pytest.raises(ValueError, match="has no {question}"):
        LlavaChat.from_pretrained(setup[2], prompt_template="USER: <image> ASSISTANT:")
    with pytest.raises(ValueError, match="limit must be a positive number"):
        from un2clip.eval.mllm.cvbench import evaluate

        evaluate(None, setup[0], limit=0)


def test_no_progress_silences_the_hugging_face_bars(setup, tmp_path, monkeypatch):
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub
    import transformers.utils.logging as transformers_logging

    from un2clip.models.llava import LlavaChat

    seen = {}

    def spy(*args, **kwargs):
        seen.update(transformers=transformers_logging.is_progress_bar_enabled(),
                    diffusers=diffusers_logging.is_progress_bar_enabled(), hub=not hub.are_progress_bars_disabled())
        raise ValueError("stop here")

    monkeypatch.setattr(LlavaChat, "from_pretrained", spy)
    data = write_mmvp(tmp_path / "MMVP")
    assert cli(["eval", "mmvp-mllm", "--model", str(setup[2]), "--data", str(data), "--output", str(tmp_path / "o"),
                "--no-progress", "--device", "cpu"]) == 2
    assert seen == {"transformers": False, "diffusers": False, "hub": False}
    # restored afterwards: the settings are process-wide
    assert transformers_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("task", ["mmvp-mllm", "cvbench"])
def test_llava_evaluations_end_to_end(setup, tmp_path, task):
    _, _, llava = setup
    data = write_mmvp(tmp_path / "MMVP") if task == "mmvp-mllm" else write_cvbench(tmp_path / "CV-Bench")
    out = tmp_path / "results"
    for batch in ("1", "3"):
        assert cli(["eval", task, "--model", str(llava), "--model-name", f"tiny-b{batch}", "--data", str(data),
                    "--output", str(out), "--batch-size", batch, "--max-new-tokens", "3", "--no-progress",
                    "--device", "cpu"]) == 0
    results = {b: json.loads(next(out.glob(f"tiny-b{b}__*.json")).read_text()) for b in ("1", "3")}
    samples = {b: list(csv.DictReader(open(next(out.glob(f"tiny-b{b}__*.samples.csv"))))) for b in ("1", "3")}
    # batched generation (left padding) answers exactly as one at a time
    assert [r["response"] for r in samples["1"]] == [r["response"] for r in samples["3"]]
    metrics = results["3"]["metrics"]
    correct = [r["correct"] == "1" for r in samples["3"]]
    if task == "mmvp-mllm":
        assert metrics == {**mmvp_mllm_scores(correct), "n_unmatched": sum(r["matched"] == "" for r in samples["3"])}
    else:
        expected = cvbench_scores([r["source"] for r in samples["3"]], [r["task"] for r in samples["3"]], correct)
        assert {k: metrics[k] for k in expected} == pytest.approx(expected)
        assert set(expected) >= {"accuracy", "accuracy_2d", "accuracy_3d", "source_ADE20K", "source_COCO"}
    assert results["3"]["task"] == task and results["3"]["units"] == "percent"
    # every setting that changes an answer is recorded, defaults included
    options = results["3"]["options"]
    assert options["max_new_tokens"] == 3 and options["batch_size"] == 3
    assert options["prompt_suffix"] == ("" if task == "mmvp-mllm" else
                                        "\nAnswer with the option's letter from the given choices directly.")
    # the report merges these result files like any other
    assert cli(["report", str(out)]) == 0
