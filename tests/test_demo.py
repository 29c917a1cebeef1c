"""The demo pipeline end to end, a few steps per stage: every stage runs and the report is written."""

import json

from un2clip.demo import QUICK, run_demo


def test_quick_demo_runs_every_stage_and_caches(tmp_path):
    out = tmp_path / "demo"
    report = run_demo(out, seed=0, from_scratch=True, settings=QUICK, progress=False)
    text = report.read_text()
    assert "| original |" in text and "| un2clip |" in text
    assert (out / "eval" / "reconstructions.png").exists()
    for stage in ("world", "clip", "decoder", "finetune"):
        assert (out / stage / "DONE").exists(), stage
    before = json.loads((out / "eval" / "original.json").read_text())["metrics"]
    assert 0.0 <= before["mmvp/average"] <= 100.0 and before["mmvp/n_pairs"] == 9 * QUICK.pairs_per_pattern
    # a second run reuses every stage: the finetune run directory is not rewritten
    stamp = (out / "finetune" / "metrics.jsonl").stat().st_mtime_ns
    run_demo(out, seed=0, from_scratch=True, settings=QUICK, progress=False)
    assert (out / "finetune" / "metrics.jsonl").stat().st_mtime_ns == stamp
