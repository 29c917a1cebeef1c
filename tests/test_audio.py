"""AudioCLIP (issue 31): the log-mel front end, the audio head and its loss, the sound-set readers, train-audio
and eval audio-zeroshot, and the world's sounds."""

import csv
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from un2clip.data.audio import AudioSource, read_audio_set, read_wav, write_wav
from un2clip.eval.core.metrics import fold_accuracy
from un2clip.models.audio import AudioHead, AudioHeadConfig, LogMel, fit_length, mel_filterbank, resample
from un2clip.objectives.audio import audioclip_loss, pair_loss

# -- the front end -------------------------------------------------------------------------------------------


def reference_filterbank(n_freqs, n_mels, sample_rate, f_min, f_max):
    """Triangular HTK-mel filters written out one value at a time from the formulas (independent of the code)."""
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    lo, hi = mel(f_min), mel(f_max)
    edges = [hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_freqs, n_mels))
    for k in range(n_freqs):
        f = k * sample_rate / (2 * (n_freqs - 1))
        for m in range(n_mels):
            left, centre, right = edges[m], edges[m + 1], edges[m + 2]
            if left <= f <= centre:
                out[k, m] = (f - left) / (centre - left)
            elif centre < f <= right:
                out[k, m] = (right - f) / (right - centre)
    return out


@pytest.mark.parametrize("n_fft,n_mels,rate,f_min,f_max", [(512, 40, 16000, 0.0, None), (1024, 64, 22050, 50.0, 8000.0),
                                                          (2048, 128, 44100, 20.0, 20000.0)])
def test_mel_filterbank_matches_the_htk_formula_written_out(n_fft, n_mels, rate, f_min, f_max):
    ours = mel_filterbank(n_freqs=n_fft // 2 + 1, n_mels=n_mels, sample_rate=rate, f_min=f_min, f_max=f_max)
    ref = reference_filterbank(n_fft // 2 + 1, n_mels, rate, f_min, rate / 2 if f_max is None else f_max)
    assert ours.shape == (n_fft // 2 + 1, n_mels)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def test_mel_filterbank_known_values_and_bad_bands():
    # 5 bins (0, 2 k, 4 k, 6 k, 8 kHz), one filter from 0 to 8 kHz: its centre is the mel midpoint, 1767.8 Hz
    bank = mel_filterbank(n_freqs=5, n_mels=1, sample_rate=16000)[:, 0]
    centre = 700 * (math.sqrt(1 + 8000 / 700) - 1)  # mel(f) = mel(8000) / 2
    assert centre == pytest.approx(1767.8, abs=0.1)
    expected = [0.0, (8000 - 2000) / (8000 - centre), (8000 - 4000) / (8000 - centre), (8000 - 6000) / (8000 - centre),
                0.0]
    np.testing.assert_allclose(bank.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(n_freqs=5, n_mels=2, sample_rate=16000, f_max=9000)
    # more bands than bins (train-audio --n-mels 100000 once tried to allocate 25 GB): refused, naming both
    assert mel_filterbank(n_freqs=5, n_mels=4, sample_rate=16000).shape == (5, 4)
    with pytest.raises(ValueError, match="5 mel bands need more than 5 FFT bins, the STFT has 5 .n_fft 8."):
        mel_filterbank(n_freqs=5, n_mels=5, sample_rate=16000)


def test_a_pure_tone_lights_the_mel_band_whose_centre_is_nearest():
    rate, freq = 16000, 1000.0
    t = torch.arange(rate) / rate
    logmel = LogMel(sample_rate=rate, n_fft=1024, hop_length=256, n_mels=40)(torch.sin(2 * math.pi * freq * t)[None])
    assert logmel.shape == (1, 1, 40, rate // 256 + 1)
    lo, hi = 2595 * math.log10(1), 2595 * math.log10(1 + 8000 / 700)
    centres = [700 * (10 ** ((lo + (hi - lo) * (m + 1) / 41) / 2595) - 1) for m in range(40)]
    nearest = min(range(40), key=lambda m: abs(centres[m] - freq))
    assert int(logmel[0, 0, :, 10].argmax()) == nearest


def test_resample_keeps_a_tones_frequency_and_fit_length_pads_or_crops():
    t = np.arange(44100) / 44100
    wave = torch.from_numpy(np.sin(2 * np.pi * 1000 * t)).float()
    down = resample(wave, 44100, 16000)
    assert down.shape == (16000,)
    spectrum = torch.fft.rfft(down).abs()
    assert int(spectrum.argmax()) == 1000  # 1 s at 16 kHz: bin k is k Hz
    assert fit_length(torch.ones(3), 5).tolist() == [1, 1, 1, 0, 0]
    assert fit_length(torch.arange(6.0), 3, offset=2).tolist() == [2, 3, 4]


# -- the head and AudioCLIP's loss -----------------------------------------------------------------------------


def test_audioclip_loss_is_the_sum_of_both_directions_over_the_pairs_factorial():
    torch.manual_seed(0)
    a, i, t = (F.normalize(torch.randn(4, 8), dim=-1) for _ in range(3))
    log100 = torch.tensor(math.log(100.0))

    def ce_both(x, y, scale):  # written out: row i's positive is column i, both directions
        logits = scale * x @ y.T
        rows = -torch.log_softmax(logits, 1).diagonal().mean()
        cols = -torch.log_softmax(logits, 0).diagonal().mean()
        return rows + cols

    assert float(pair_loss(a, t, log100)) == pytest.approx(float(ce_both(a, t, 100.0)), rel=1e-5)
    both = audioclip_loss(a, image=i, text=t, log_scale_ai=log100, log_scale_at=log100)
    assert float(both) == pytest.approx(float(ce_both(a, i, 100.0) + ce_both(a, t, 100.0)) / 2, rel=1e-5)
    alone = audioclip_loss(a, image=None, text=t, log_scale_ai=log100, log_scale_at=log100)
    assert float(alone) == pytest.approx(float(ce_both(a, t, 100.0)), rel=1e-5)
    # the scale is clamped to [1, 100] after the exponential
    assert float(pair_loss(a, t, torch.tensor(9.0))) == pytest.approx(float(ce_both(a, t, 100.0)), rel=1e-5)
    assert float(pair_loss(a, t, torch.tensor(-3.0))) == pytest.approx(float(ce_both(a, t, 1.0)), rel=1e-5)


def _toy_clip(freq, rng, rate=8000, n=2000):
    """A tone with random phase and loudness over noise: one clip of the two-class toy set."""
    t = np.arange(n) / rate
    wave = rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return torch.from_numpy(wave + 0.05 * rng.standard_normal(n)).float()


def test_the_audio_head_learns_a_two_class_toy_set_to_100_percent():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = AudioHeadConfig(embed_dim=16, sample_rate=8000, clip_seconds=0.25, n_fft=256, hop_length=64, n_mels=32,
                             stem=8, widths=[16, 32], blocks=[1, 1], cardinality=4)
    head = AudioHead(config)
    texts = F.normalize(torch.randn(2, 16), dim=-1)  # the frozen text embeddings of "low" and "high"
    log_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))
    opt = torch.optim.AdamW([*head.parameters(), log_scale], lr=3e-3)
    freqs = (300.0, 1500.0)
    for _ in range(40):
        labels = torch.tensor([0, 1] * 4)
        audio = torch.stack([_toy_clip(freqs[c], rng) for c in labels.tolist()])
        loss = audioclip_loss(F.normalize(head(audio), dim=-1), image=None, text=texts[labels],
                              log_scale_ai=log_scale, log_scale_at=log_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    test_labels = torch.tensor([0, 1] * 10)
    with torch.no_grad():
        emb = F.normalize(head(torch.stack([_toy_clip(freqs[c], rng) for c in test_labels.tolist()])), dim=-1)
    assert ((emb @ texts.T).argmax(1) == test_labels).all()


def test_head_save_and_load_round_trip(tmp_path):
    head = AudioHead(AudioHeadConfig(embed_dim=8, widths=[8], blocks=[1], cardinality=2, stem=4)).eval()
    head.save_pretrained(tmp_path / "audio")
    back = AudioHead.from_pretrained(tmp_path / "audio")
    x = torch.randn(2, 4000)
    assert torch.equal(head(x), back(x)) and back.config == head.config
    with pytest.raises(FileNotFoundError, match="no audio head folder"):
        AudioHead.from_pretrained(tmp_path)


# -- WAV files and the two layouts -----------------------------------------------------------------------------


def _wav_bytes(fmt_tag, channels, rate, bits, payload, *, extensible=False):
    block = channels * bits // 8
    if extensible:
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0)
        fmt += struct.pack("<H", fmt_tag) + bytes(14)
    else:
        fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\x00"
    body += b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_read_wav_reads_pcm_float_and_extensible_files(tmp_path):
    write_wav(tmp_path / "a.wav", np.array([0.0, 0.5, -0.5, 1.0]), 8000)
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and samples.shape == (1, 4)
    np.testing.assert_allclose(samples[0], [0, 16384 / 32768, -16384 / 32768, 32767 / 32768], atol=1e-6)
    # 24-bit stereo, WAVE_FORMAT_EXTENSIBLE, after an odd-sized LIST chunk: frames (max, min), (0, -1 LSB)
    payload = bytes([0xFF, 0xFF, 0x7F, 0x00, 0x00, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF])
    (tmp_path / "b.wav").write_bytes(_wav_bytes(1, 2, 44100, 24, payload, extensible=True))
    samples, rate = read_wav(tmp_path / "b.wav")
    assert rate == 44100 and samples.shape == (2, 2)
    np.testing.assert_allclose(samples, [[(2 ** 23 - 1) / 2 ** 23, 0.0], [-1.0, -1 / 2 ** 23]])
    (tmp_path / "c.wav").write_bytes(_wav_bytes(3, 1, 16000, 32, np.array([0.25, -0.75], "<f4").tobytes()))
    assert read_wav(tmp_path / "c.wav")[0].tolist() == [[0.25, -0.75]]
    (tmp_path / "d.wav").write_bytes(b"RIFF\x04\x00\x00\x00WAVX")
    with pytest.raises(ValueError, match="d.wav: not a RIFF WAVE file"):
        read_wav(tmp_path / "d.wav")


def make_esc50(root, rows, *, header=("filename", "fold", "target", "category", "esc10", "src_file", "take"),
               write_audio=True, rate=16000):
    (root / "meta").mkdir(parents=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    if write_audio:
        for row in rows:
            if row and str(row[0]).endswith(".wav"):
                write_wav(root / "audio" / row[0], 0.1 * np.ones(rate // 4), rate)
    return root


def test_esc50_and_us8k_layouts_are_read(tmp_path):
    esc = make_esc50(tmp_path / "esc", [["1-1-A-0.wav", 1, 0, "dog", "True", "1", "A"],
                                        ["2-1-A-1.wav", 2, 1, "chirping_birds", "False", "1", "A"]])
    sounds = read_audio_set(esc)
    assert sounds.layout == "esc50" and sounds.classnames == ["dog", "chirping birds"] and sounds.folds == [1, 2]
    assert sounds.clips[1].path == str(esc / "audio" / "2-1-A-1.wav") and sounds.clips[1].text == "chirping birds"
    us = tmp_path / "us8k"
    (us / "metadata").mkdir(parents=True)
    (us / "metadata" / "UrbanSound8K.csv").write_text(
        "slice_file_name,fsID,start,end,salience,fold,classID,class\n"
        "100032-3-0-0.wav,100032,0.0,0.3,1,5,1,dog_bark\n"
        "100263-2-0-117.wav,100263,58.5,62.5,1,3,0,children_playing\n")
    sounds = read_audio_set(us)
    assert sounds.layout == "us8k" and sounds.classnames == ["children playing", "dog bark"]
    assert sounds.clips[0].path == str(us / "audio" / "fold5" / "100032-3-0-0.wav") and sounds.folds == [3, 5]
    with pytest.raises(ValueError, match="neither meta/esc50.csv nor metadata/UrbanSound8K.csv"):
        read_audio_set(tmp_path)


@pytest.mark.parametrize("rows,message", [
    ([["a.wav", 1, 0, "dog", "", "", ""], ["b.wav", "x", 1, "cat", "", "", ""]], "row 3: fold 'x'"),
    ([["a.wav", 1, 0, "dog", "", "", ""], ["b.wav", 1, 0, "cat", "", "", ""]], "row 3: target 0 is 'cat' here but "
                                                                               "'dog' above"),
    ([["a.wav", 1, 0, "dog", "", "", ""], ["b.wav", 1, 1, "cat", ""]], "row 3 has 5 fields, the header 7"),
    ([["a.wav", 0, 0, "dog", "", "", ""]], "row 2: fold must be >= 1"),
    ([["", 1, 0, "dog", "", "", ""]], "row 2: empty filename"),
    ([["a.wav", 1, 0, "dog", "", "", ""], ["b.wav", 1, 2, "cat", "", "", ""]], "without gaps"),
])
def test_malformed_meta_files_are_refused_with_the_row(tmp_path, rows, message):
    root = make_esc50(tmp_path / "esc", rows, write_audio=False)
    with pytest.raises(ValueError, match=message):
        read_audio_set(root)


def test_a_meta_file_without_a_needed_column_or_with_images_on_some_rows_is_refused(tmp_path):
    root = make_esc50(tmp_path / "a", [["a.wav", 1, 0, "dog"]], header=("filename", "fold", "category", "x"),
                      write_audio=False)
    with pytest.raises(ValueError, match="missing column.s. target"):
        read_audio_set(root)
    root = make_esc50(tmp_path / "b", [["a.wav", 1, 0, "dog", "p.png"], ["b.wav", 1, 0, "dog", ""]],
                      header=("filename", "fold", "target", "category", "image"), write_audio=False)
    with pytest.raises(ValueError, match="row 3: no image, while 1 other rows have one"):
        read_audio_set(root)


def test_the_training_source_loads_mono_clips_and_skips_unreadable_ones(tmp_path):
    root = make_esc50(tmp_path / "esc", [["a.wav", 1, 0, "dog", "", "", ""], ["b.wav", 1, 0, "dog", "", "", ""]])
    (root / "audio" / "b.wav").write_bytes(b"not a wav")
    source = AudioSource(root)
    record = source.load(0)
    assert len(source) == 2 and record.sample_rate == 16000 and record.waveform.shape == (4000,)
    assert record.text == "dog" and record.image is None and not source.has_images
    assert source.load(1) is None and source.key(1).endswith("b.wav")


def test_fold_accuracy_is_the_unweighted_mean_of_the_folds():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1, 1, 1, 1])
    out = fold_accuracy(logits, targets, [1, 1, 2, 2, 2])
    assert out == {"fold1_acc1": 1.0, "fold2_acc1": pytest.approx(2 / 3), "acc1": pytest.approx((1 + 2 / 3) / 2)}


# -- train-audio and eval audio-zeroshot ---------------------------------------------------------------------


def test_train_audio_resume_and_eval_audio_zeroshot_round_trip(tmp_path, monkeypatch):
    from un2clip.cli import main
    from un2clip.load import load_audio_model

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "esc" / "audio").mkdir(parents=True)
    for i in range(8):
        c = i % 2
        name = f"{i % 4 + 1}-{i}-A-{c}.wav"
        write_wav(tmp_path / "esc" / "audio" / name, 0.3 * np.sin(2 * np.pi * (300, 1500)[c] * np.arange(4000) / 8000
                                                                  + rng.uniform(0, 6)), 8000)
        rows.append([name, i % 4 + 1, c, ("dog", "rooster")[c], "False", "1", "A"])
    make_esc50(tmp_path / "esc", rows, write_audio=False)
    small = ["--model", "tiny", "--data", "esc", "--clip-seconds", "0.5", "--sample-rate", "8000", "--n-mels", "16",
             "--widths", "8,16", "--blocks", "1,1", "--cardinality", "2", "--batch-size", "4", "--save-every", "2",
             "--output", "run", "--no-progress"]
    assert main(["train-audio", *small, "--max-steps", "2"]) == 0
    assert main(["train-audio", "--resume", "run", "--max-steps", "3", "--no-progress"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    marker = json.loads((tmp_path / "run" / "un2clip_run.json").read_text())
    assert marker["kind"] == "audio" and marker["clip"] == "tiny" and marker["pairs"] == ["text"]
    final = load_audio_model("run")
    import shutil

    shutil.rmtree(tmp_path / "run" / "audio")  # the same head back from the newest checkpoint
    from_ckpt = load_audio_model("run")
    x = torch.randn(2, 4000)
    assert torch.allclose(final.encode_audio(x), from_ckpt.encode_audio(x))
    assert main(["eval", "audio-zeroshot", "--model", "run", "--data", "esc", "--output", "res", "--no-progress"]) == 0
    (result,) = list((tmp_path / "res").glob("*.json"))
    metrics = json.loads(result.read_text())["metrics"]
    assert set(metrics) == {"fold1_acc1", "fold2_acc1", "fold3_acc1", "fold4_acc1", "acc1", "n_clips", "n_classes"}
    assert metrics["n_clips"] == 8 and metrics["n_classes"] == 2
    assert metrics["acc1"] == pytest.approx(sum(metrics[f"fold{f}_acc1"] for f in range(1, 5)) / 4)
    with pytest.raises(ValueError, match="not a `un2clip train-audio` run"):
        load_audio_model(str(tmp_path / "esc"))


# -- the world -----------------------------------------------------------------------------------------------


def test_world_sound_pitch_follows_colour_timbre_follows_shape_loudness_follows_size():
    from un2clip.world.scenes import Scene, WorldObject
    from un2clip.world.sounds import SOUND_RATE, scene_sound, tone

    def peak_hz(wave):
        spectrum = np.abs(np.fft.rfft(wave))
        return np.argmax(spectrum) * SOUND_RATE / len(wave)

    red, blue = tone("red", "circle", "large", SOUND_RATE), tone("blue", "circle", "large", SOUND_RATE)
    assert peak_hz(red) == pytest.approx(220, abs=1) and peak_hz(blue) == pytest.approx(554.37, abs=1)
    square = np.abs(np.fft.rfft(tone("red", "square", "large", SOUND_RATE)))
    circle = np.abs(np.fft.rfft(red))
    assert square[660] > 0.2 * square[220] and circle[660] < 1e-3 * circle[220]  # a third harmonic or none
    assert np.abs(tone("red", "circle", "small", 1000)).max() == pytest.approx(0.25, abs=0.01)
    assert np.abs(red).max() == pytest.approx(0.5, abs=0.01)
    left = WorldObject("circle", "red", x=0.25, position="left")
    right = WorldObject("square", "blue", x=0.75, position="right")
    sound = scene_sound(Scene(objects=(right, left), noise_seed=3))
    assert sound.dtype == np.float32 and sound.shape == (SOUND_RATE,)
    half = SOUND_RATE // 2
    assert peak_hz(sound[:half]) == pytest.approx(220, abs=3) and peak_hz(sound[half:]) == pytest.approx(554, abs=3)
    assert np.array_equal(sound, scene_sound(Scene(objects=(right, left), noise_seed=3)))


def test_world_sound_and_sketch_sets_are_added_without_changing_the_world(tmp_path):
    import hashlib

    from un2clip.world.evalsets import generate_world
    from un2clip.world.sounds import ensure_sketch, ensure_sounds, sound_classes

    world = tmp_path / "world"
    generate_world(world, seed=0, n_train=12, n_val=2, pairs_per_pattern=1, n_seg=1, n_zeroshot_per_class=1,
                   n_detect=0, n_depth=0, n_pointcloud_per_class=0, n_video_per_class=0, progress=False)

    def digest():
        return {str(p.relative_to(world)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(world.rglob("*")) if p.is_file() and p.relative_to(world).parts[0]
                not in ("sounds", "sketch")}

    before = digest()
    ensure_sounds(world, n_train=12, per_class=2)
    ensure_sketch(world, per_class=2)
    assert digest() == before
    train = read_audio_set(world / "sounds" / "train")
    assert len(train.clips) == 12 and all(c.image and c.text for c in train.clips)
    assert AudioSource(world / "sounds" / "train").load(0).image.size == (32, 32)
    test = read_audio_set(world / "sounds" / "test")
    assert test.classnames == sound_classes() and len(test.clips) == 72 and test.folds == [1, 2]
    assert sorted(p.name for p in (world / "sketch").iterdir() if p.is_dir()) == sorted(
        ["circle", "square", "triangle", "arrow", "star", "cross"])
    first = (world / "sounds" / "test" / "audio" / "00-000.wav").read_bytes()
    import shutil

    shutil.rmtree(world / "sounds")
    ensure_sounds(world, n_train=12, per_class=2)
    assert (world / "sounds" / "test" / "audio" / "00-000.wav").read_bytes() == first  # deterministic


@pytest.mark.slow
def test_compare_adds_audio_and_sketch_metrics_for_original_and_un2clip(tmp_path):
    from un2clip.world.audiosketch import QUICK, add_audio_sketch
    from un2clip.world.evalsets import generate_world

    world = tmp_path / "world"
    generate_world(world, seed=0, n_train=16, n_val=2, pairs_per_pattern=1, n_seg=1, n_zeroshot_per_class=1,
                   n_detect=0, n_depth=0, n_pointcloud_per_class=0, n_video_per_class=0, progress=False)
    results = {"original": {"mmvp/average": 30.0}, "un2clip": {"mmvp/average": 40.0}, "lora": {"mmvp/average": 35.0}}
    models = {"original": "tiny", "un2clip": "tiny", "lora": "tiny"}
    out = add_audio_sketch(results, tmp_path / "seed0", world, models, seed=0, settings=QUICK, progress=False)
    for name in ("original", "un2clip"):
        m = out[name]
        assert {"audio/acc1", "audio/fold1_acc1", "sketch/acc1@2", "sketch/acc1_photo", "audio_img/acc1",
                "audio_img/fold1_acc1"} <= set(m)
        assert 0 <= m["audio/acc1"] <= 100 and 0 <= m["audio_img/acc1"] <= 100
        assert m["mmvp/average"] == results[name]["mmvp/average"]
        # two heads per encoder: on images and captions, and on the audio-image pairs alone (--no-texts)
        for folder, pairs in (("audio", ["image", "text"]), ("audio-img", ["image"])):
            run = tmp_path / "seed0" / folder / name / "run"
            assert json.loads((run / "un2clip_run.json").read_text())["pairs"] == pairs
    assert out["lora"] == results["lora"]  # only the original and the un2clip encoder are measured this way
    assert (tmp_path / "seed0" / "audio" / "un2clip" / "DONE").is_file()
    cached = [tmp_path / "seed0" / "eval" / f for f in ("audiosketch_original.json", "audio_img_original.json")]
    stamps = [p.stat().st_mtime_ns for p in cached + [tmp_path / "seed0" / "audio-img" / "original" / "DONE"]]
    again = add_audio_sketch(results, tmp_path / "seed0", world, models, seed=0, settings=QUICK, progress=False)
    assert again == out  # cached: nothing recomputed
    assert [p.stat().st_mtime_ns for p in cached + [tmp_path / "seed0" / "audio-img" / "original" / "DONE"]] == stamps


def test_the_audio_head_on_images_and_captions_keeps_its_recorded_recipe():
    # runs cached by an earlier `compare --audio-sketch` stay valid: the first head's fields are as they were
    # recorded, and the images-only head differs from it by --no-texts alone
    from un2clip.world.audiosketch import AudioSketchSettings, audio_fields

    s = AudioSketchSettings()
    assert audio_fields(Path("w"), "clip", 1, s) == {
        "objective": "audio", "clip": "clip", "data": str(Path("w") / "sounds" / "train"), "max_steps": 300,
        "batch_size": 32, "lr": 1e-3, "save_every": 300, "seed": 1,
        "objective_options": {"clip_seconds": 1.0, "widths": [32, 64, 128], "blocks": [1, 1, 1]}}
    images_only = audio_fields(Path("w"), "clip", 1, s, texts=False)
    assert images_only.pop("objective_options") == {"clip_seconds": 1.0, "widths": [32, 64, 128],
                                                     "blocks": [1, 1, 1], "use_texts": False}
    assert images_only == {k: v for k, v in audio_fields(Path("w"), "clip", 1, s).items() if k != "objective_options"}


def test_the_compare_table_has_the_audio_and_sketch_columns():
    from un2clip.world.compare import report_table

    lines = report_table({"original": {"audio/acc1": (12.5, math.nan, 1), "audio_img/acc1": (25.0, math.nan, 1),
                                       "sketch/acc1@8": (50.0, math.nan, 1)}})
    assert "| audio zs | audio zs (img) | sketch@8 |" in lines[0]
    assert "| 12.5 | 25.0 | 50.0 |" in lines[2]
