"""Long check (marker `slow`): the nanoGPT CPU recipe, end to end through `llmkit train`, beats nanoGPT quality.

nanoGPT's own train.py, scored the same way, ends at a validation loss of about 1.90, the preset (rotary positions)
at about 1.81 (benchmarks/speedrun.py's lever table); the issue's bar is 1.89, which leaves room for the run-to-run
differences of another CPU (with or without bf16).
"""

import json

import pytest
from conftest import REPO

from llmkit.config import load_config
from llmkit.training import train


@pytest.mark.slow
def test_shakespeare_char_cpu_recipe_beats_nanogpt_validation_loss(tmp_path, real_shakespeare):
    cfg = load_config(REPO / "configs" / "shakespeare-char-cpu.yaml", [
        f"data.source={real_shakespeare}", f"data.cache_dir={tmp_path / 'cache'}", "training.report_to=none",
        "training.disable_tqdm=true", "sample.max_new_tokens=40",
    ])
    metrics = train(cfg, output_dir=str(tmp_path / "run"), log=lambda *a: None)
    assert metrics["global_step"] == 2000
    assert metrics["eval_loss"] <= 1.89
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["eval_loss"] == metrics["eval_loss"]
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [500, 1000, 1500, 2000]
    assert all(s["text"].strip() for s in samples)
