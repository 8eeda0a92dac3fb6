"""Every preset in configs/ stays valid: it loads, names its data the way its comment documents, and trains for two
steps on a small corpus with its model shrunk through overrides (its architecture keys kept), from stand-ins for
the pretrained models and teachers it names (tiny runs trained here: a GPT-2 for openai-community/gpt2, an
llmkit-gpt for runs/quickstart)."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from llmkit.config import load_config
from llmkit.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs").glob("*.yaml"))
FAST = ["training.max_steps=2", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1",
        "training.per_device_train_batch_size=2", "training.per_device_eval_batch_size=4", "training.warmup_steps=0",
        "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=4"]
SHRINK = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.n_inner=null"]


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, shakespeare_head):
    root = tmp_path_factory.mktemp("stand_ins")
    corpus = shakespeare_head(30_000)
    runs = {}
    for name, extra in (("gpt2", ["model.arch=gpt2"]), ("quickstart", ["model.position_embedding_type=rotary"])):
        cfg = load_config(None, [*FAST, *SHRINK, "model.n_positions=64", "tokenizer.kind=bpe", "tokenizer.vocab_size=300",
                                 f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", *extra])
        train(cfg, output_dir=str(root / name), log=quiet)
        runs[name] = root / name
    return {"corpus": corpus, "root": root, **runs}


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_trains_two_steps(preset, stand_ins, tmp_path, shakespeare_path):
    raw = yaml.safe_load(preset.read_text())
    text = preset.read_text()
    source = (raw.get("data") or {}).get("source", "builtin")
    overrides = [*FAST, f"data.cache_dir={stand_ins['root'] / 'cache'}"]
    if source not in ("builtin", "builtin-instruct", "builtin-preference"):  # a file the user downloads: the comment says which and how
        name = pathlib.Path(source).name
        assert name in text.split("\n\n")[0] or name in "".join(line for line in text.splitlines() if line.startswith("#"))
        assert "https://" in text and "offline" in text, f"{preset.name} names a download without saying where from"
        overrides.append(f"data.source={stand_ins['corpus']}")
    else:
        overrides.append("data.val_ratio=0.1")
    model = raw.get("model") or {}
    pretrained = model.get("from_pretrained")
    if pretrained:
        stand_in = stand_ins["gpt2"] if "gpt2" in pretrained else stand_ins["quickstart"]
        overrides.append(f"model.from_pretrained={stand_in}")
    else:
        overrides += [*SHRINK, f"model.n_positions={min(64, model.get('n_positions') or 64)}"]
        if (raw.get("tokenizer") or {}).get("vocab_size", 0) > 1000:
            overrides.append("tokenizer.vocab_size=400")
    if (raw.get("data") or {}).get("block_size"):
        overrides.append("data.block_size=32")  # within the shrunk (or stand-in) context
    teacher = (raw.get("distill") or {}).get("teacher")
    if teacher:
        overrides += [f"distill.teacher={stand_ins['quickstart']}", "model.n_positions=64"]
    cfg = load_config(preset, overrides)
    for key in ("position_embedding_type", "norm_type", "mlp_type", "bias", "qkv_bias", "arch"):
        if key in model:  # the preset's architecture is what trains
            assert getattr(cfg.model, key) == model[key], key
    metrics = train(cfg, output_dir=str(tmp_path / "run"), log=quiet)
    assert metrics["global_step"] == 2
