"""Preference tuning (`data.format: preference`, the `preference:` section) on TRL's DPOTrainer, on the training core.

The starting model is a tiny instruct run llmkit trains here (a base on the play, then instruction-tuned on
`builtin-instruct`); the pairs are `builtin-preference` (a function's own docstring sentence over another
module's), scored on its held-out split.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import llmkit_cmd, llmkit_main, read_json, subprocess_env

from llmkit.config import ConfigError, load_config
from llmkit.loading import load_model
from llmkit.training import train

pytest.importorskip("trl", reason="preference tuning runs on TRL: pip install trl")

BASE = ["tokenizer.kind=bpe", "tokenizer.vocab_size=512", "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
        "model.n_positions=128", "training.per_device_train_batch_size=16", "training.learning_rate=3e-3",
        "training.warmup_steps=5", "training.logging_steps=5", "training.report_to=none",
        "training.disable_tqdm=true", "training.seed=0", "sample.max_new_tokens=0"]
TUNE = [k for k in BASE if not k.startswith(("tokenizer.", "model.", "training.learning_rate"))]
PAIRS = {"prompt_field": "prompt", "chosen_field": "chosen", "rejected_field": "rejected"}


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("preference")


@pytest.fixture(scope="module")
def instruct_run(work, shakespeare_head):
    cache = f"data.cache_dir={work / 'cache'}"
    train(load_config(None, [*BASE, f"data.source={shakespeare_head(150_000)}", cache, "training.max_steps=150",
                             "training.eval_steps=150"]), output_dir=str(work / "base"), log=quiet)
    train(load_config(None, [*TUNE, f"model.from_pretrained={work / 'base'}", "data.format=instruct",
                             "data.source=builtin-instruct", cache, "training.learning_rate=1e-2", "lora.r=16",
                             "lora.lora_alpha=32", "lora.target_modules=all-linear", "training.max_steps=120",
                             "training.eval_steps=120"]),
          output_dir=str(work / "instruct"), log=quiet)
    return work / "instruct"  # an adapter run, as configs/instruct-lora.yaml makes


def dpo(work, instruct_run, name, *overrides):
    out = work / name
    metrics = train(load_config(None, [*TUNE, f"model.from_pretrained={instruct_run}", "data.format=preference",
                                       "data.source=builtin-preference", "training.learning_rate=1e-3",
                                       "training.max_steps=40", "training.eval_steps=20", *overrides]),
                    output_dir=str(out), log=quiet)
    return out, metrics


def held_out(run, reference=None) -> dict:
    from llmkit.evaluate import evaluate_preferences

    model, tokenizer = load_model(str(run), device="cpu")
    ref = load_model(str(reference), device="cpu") if reference else None
    return evaluate_preferences(model, tokenizer, "builtin-preference", reference=ref, **PAIRS)


def test_the_builtin_set_pairs_each_question_with_its_answer_and_another_modules():
    from llmkit.data.instruct import builtin_instruct_rows
    from llmkit.data.preference import builtin_preference_rows

    pairs, rows = builtin_preference_rows(), builtin_instruct_rows()
    assert len(pairs) == len(rows) > 500
    answers = {r["response"] for r in rows}
    for pair, row in zip(pairs, rows):
        assert pair["prompt"] == row["prompt"] and pair["chosen"] == row["response"]
        assert pair["rejected"] != pair["chosen"] and pair["rejected"] in answers
    assert builtin_preference_rows() == pairs  # the same on every call (and machine with this Python)
    fresh = subprocess.run([sys.executable, "-c", "import json; from llmkit.data.preference import "
                            "builtin_preference_rows as r; print(json.dumps(r()))"], env=subprocess_env(),
                           capture_output=True, text=True, timeout=120)
    # the same in a fresh interpreter as in this one, whatever it imported first (libraries replace stdlib hooks)
    assert json.loads(fresh.stdout) == [dict(p) for p in pairs], fresh.stderr[-2000:]


@pytest.fixture(scope="module")
def full_dpo(work, instruct_run):
    return dpo(work, instruct_run, "dpo", "training.max_steps=60", "training.eval_steps=30")


def test_dpo_trains_on_trls_loss_and_metrics_and_its_reward_accuracy_rises(full_dpo, instruct_run):
    run, metrics = full_dpo
    for key in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_logps/rejected"):
        assert key in metrics, key  # TRL's metrics, in metrics.json
    history = read_json(run / "log_history.json")
    losses = [h["loss"] for h in history if "loss" in h]
    train_acc = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: the model starts as its own reference
    assert sum(losses[-3:]) / 3 < 0.62 and sum(train_acc[-3:]) / 3 > 0.6, (losses, train_acc)
    start = held_out(instruct_run, reference=instruct_run)
    assert start["accuracy"] == 0.5 and start["margin"] == 0  # the reference itself: every pair a tie


QUICK = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.n_positions=128", "tokenizer.kind=bpe",
         "tokenizer.vocab_size=2048"]


@pytest.mark.slow  # about 4 minutes: a model at the quickstart's shape is the smallest that generalizes here
def test_dpo_raises_held_out_preference_accuracy_well_above_chance(tmp_path):
    """The README's chain at the quickstart's shape, shortened: pretrain on the built-in corpus, instruction-tune,
    then DPO; held-out pairs (functions the model never saw) judged against the instruct model."""
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    common = [k for k in TUNE if "logging" not in k] + ["training.logging_steps=50"]
    train(load_config(None, [*QUICK, *common, "data.source=builtin", cache, "training.learning_rate=2e-3",
                             "training.max_steps=500", "training.eval_steps=500", "training.optimizer=muon"]),
          output_dir=str(tmp_path / "base"), log=quiet)
    train(load_config(None, [*common, f"model.from_pretrained={tmp_path / 'base'}", "data.format=instruct",
                             "data.source=builtin-instruct", cache, "lora.r=16", "lora.lora_alpha=32",
                             "lora.target_modules=all-linear", "training.learning_rate=3e-3",
                             "training.max_steps=200", "training.eval_steps=200"]),
          output_dir=str(tmp_path / "instruct"), log=quiet)
    train(load_config(None, [*common, f"model.from_pretrained={tmp_path / 'instruct'}", "data.format=preference",
                             "data.source=builtin-preference", "training.learning_rate=1e-4",
                             "training.max_steps=300", "training.eval_steps=100"]),
          output_dir=str(tmp_path / "dpo"), log=quiet)
    start = held_out(tmp_path / "instruct", reference=tmp_path / "instruct")
    after = held_out(tmp_path / "dpo", reference=tmp_path / "instruct")
    assert start["accuracy"] == 0.5 and after["accuracy"] >= 0.7, after  # measured 0.74 here (the benchmark's
    assert after["margin"] > 0.5  # longer-trained quickstart model reaches the README's figure)


def test_a_dpo_run_folder_is_a_chat_model_with_a_card_that_says_so(full_dpo, instruct_run, tmp_path):
    run, _ = full_dpo
    assert (run / "model.safetensors").is_file() and not (run / "adapter_config.json").exists()  # full DPO
    tokenizer = load_model(str(run), device="cpu")[1]
    assert tokenizer.chat_template == load_model(str(instruct_run), device="cpu")[1].chat_template
    proc = subprocess.run(llmkit_cmd("generate", run, "--chat", "--prompt", "What does json.dumps do?",
                                     "--max-new-tokens", "20", "--greedy"), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() and "<|assistant|>" not in proc.stdout, proc.stderr[-2000:]
    from llmkit.model_card import build_card

    card = str(build_card(run, run, kind="run", exported=None, repo_id=None, license=None))
    assert "preference-tuned" in card and "builtin-preference" in card and str(instruct_run) in card
    assert "dpo" in card


def test_evaluate_format_preference_prints_accuracy_and_margin(full_dpo, instruct_run, tmp_path):
    run, _ = full_dpo
    out = tmp_path / "pref.json"
    proc = subprocess.run(llmkit_cmd("evaluate", instruct_run, run, "--data", "builtin-preference", "--format",
                                     "preference", "--reference", instruct_run, "--output", out),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0].split()[:3] == ["model", "accuracy", "margin"]
    results = json.loads(out.read_text())
    assert results[0]["accuracy"] == 0.5 and results[1]["relative_to_reference"] and results[1]["margin"] != 0
    assert results[0]["pairs"] == results[1]["pairs"] > 50
    direct = held_out(run, reference=instruct_run)  # the command prints what the library computes (to the
    # rounding of another process's thread count: a near-tie may fall the other way)
    assert results[1]["accuracy"] == pytest.approx(direct["accuracy"], abs=2 / direct["pairs"])
    assert results[1]["margin"] == pytest.approx(direct["margin"], rel=1e-2)


def test_lora_dpo_keeps_no_reference_copy_and_its_adapter_loads_with_plain_peft(work, instruct_run):
    from llmkit.training.preference import reference_model

    cfg = load_config(None, [*TUNE, f"model.from_pretrained={instruct_run}", "data.format=preference",
                             "lora.r=8", "lora.target_modules=all-linear"])
    assert reference_model(cfg, object(), None) is None  # TRL disables the adapter to score the reference
    run, metrics = dpo(work, instruct_run, "dpo-lora", "lora.r=8", "lora.target_modules=all-linear",
                       "training.learning_rate=5e-3")
    assert (run / "adapter_model.safetensors").is_file() and metrics["trainable_parameters"] < metrics["num_parameters"]
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmkit  # noqa: F401  (llmkit-gpt, the base's architecture)

    # the instruct run is itself an adapter run: this adapter's base is it merged, as plain peft builds it
    instruct_base = json.loads((instruct_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(instruct_base)
    base.resize_token_embeddings(len(AutoTokenizer.from_pretrained(instruct_run)))  # the markers instruct added
    start = PeftModel.from_pretrained(base, instruct_run)
    plain = PeftModel.from_pretrained(start.merge_and_unload(), run).eval()
    ours, tokenizer = load_model(str(run), device="cpu")
    ids = tokenizer("What does os.path.join do?", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["ipo", "robust", "hinge", "sppo_hard"])
def test_each_method_trains_on_trls_loss(work, instruct_run, method):
    extra = ["preference.label_smoothing=0.1"] if method == "robust" else []
    _, metrics = dpo(work, instruct_run, f"m-{method}", f"preference.method={method}", "training.max_steps=4",
                     "training.eval_steps=4", *extra)
    assert metrics["global_step"] == 4 and "eval_rewards/margins" in metrics


def test_sft_weight_adds_the_chosen_answers_loss(work, instruct_run):
    from llmkit.training.arguments import training_arguments

    cfg = load_config(None, [*TUNE, f"model.from_pretrained={instruct_run}", "data.format=preference",
                             "preference.sft_weight=0.5", "preference.method=ipo", "preference.beta=0.3"])
    args = training_arguments(cfg, str(work / "unused"))
    assert type(args).__name__ == "DPOConfig" and args.loss_type == ["ipo", "sft"] and args.loss_weights == [1.0, 0.5]
    assert args.beta == 0.3 and args.max_length == 128 and not args.activation_checkpointing


@pytest.mark.slow  # three DPO processes, about 30 s
def test_kill_9_mid_dpo_then_resume_gives_the_uninterrupted_losses(work, instruct_run, tmp_path):
    overrides = [*TUNE, f"model.from_pretrained={instruct_run}", "data.format=preference",
                 "data.source=builtin-preference", "training.learning_rate=1e-3", "training.max_steps=24",
                 "training.eval_steps=8", "training.save_steps=8", "training.logging_steps=1",
                 f"data.cache_dir={work / 'cache'}"]
    whole = tmp_path / "whole"
    assert subprocess.run(llmkit_cmd("train", "--output-dir", whole, *overrides), env=subprocess_env(),
                          capture_output=True, timeout=600).returncode == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen(llmkit_cmd("train", "--output-dir", cut, *overrides), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (cut / "checkpoint-16" / "trainer_state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:] if proc.stderr else ""
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "metrics.json").exists()
    resumed = subprocess.run(llmkit_cmd("train", "--output-dir", cut, "--resume", *overrides), env=subprocess_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def losses(run):
        return {h["step"]: h["loss"] for h in read_json(run / "log_history.json") if "loss" in h}

    ours, theirs = losses(cut), losses(whole)
    assert sorted(ours) == sorted(theirs) == list(range(1, 25))
    for step in range(17, 25):  # after the checkpoint the run continued from
        assert ours[step] == pytest.approx(theirs[step], rel=1e-5, abs=1e-6), step


BAD_ROWS = [({"prompt": "q?", "chosen": "a.", "rejected": "a."}, "chosen equals rejected"),
            ({"prompt": "q?", "chosen": "", "rejected": "b."}, "a missing or empty field"),
            ({"prompt": "q?", "chosen": "a."}, "a missing or empty field"),
            ({"prompt": "word " * 400, "chosen": "a.", "rejected": "b."}, "a prompt too long for the context")]


def test_unusable_rows_are_refused_in_one_line_or_dropped_and_counted(instruct_run, tmp_path, capfd):
    good = [{"prompt": f"What does f{i} do?", "chosen": f"It adds {i}.", "rejected": f"It removes {i}."}
            for i in range(40)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*good[:7], *(row for row, _ in BAD_ROWS), *good[7:]]))
    args = ["train", "--output-dir", tmp_path / "run", *TUNE, f"model.from_pretrained={instruct_run}",
            "data.format=preference", f"data.source={data}", "training.max_steps=2", "training.eval_steps=2"]
    code, _, err = llmkit_main(capfd, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-2000:]
    counts = "4 unusable preference row(s) (2 a missing or empty field, 1 chosen equals rejected, 1 a prompt too " \
             "long for the context)"
    assert counts in lines[0] and "row 7: chosen equals rejected" in lines[0] and "data.errors=ignore" in lines[0]
    assert not (tmp_path / "run").exists()
    code, out, err = llmkit_main(capfd, *args, "data.errors=ignore")
    assert code == 0, err[-2000:]
    assert "preference rows dropped (data.errors=ignore): 2 a missing or empty field, 1 chosen equals rejected, " \
           "1 a prompt too long for the context" in out + err
    assert "Token indices sequence length" not in err  # lengths are checked without the tokenizer's warning


@pytest.mark.parametrize("overrides,message", [
    (["data.format=preference", "preference.methd=dpo"], "did you mean preference.method"),
    (["data.format=preference", "preference.method=ppo"], "preference.method='ppo' is unknown"),
    (["data.format=preference"], "starts from a trained model: set model.from_pretrained"),
    (["preference.beta=0.2"], "set data.format=preference"),
    (["data.format=preference", "model.from_pretrained=gpt2", "preference.beta=0"], "preference.beta must be positive"),
])
def test_bad_preference_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)


def test_the_cli_refuses_reference_without_the_preference_format(instruct_run, capfd):
    code, _, err = llmkit_main(capfd, "evaluate", instruct_run, "--data", "builtin", "--reference", instruct_run)
    assert code == 2 and "add --format preference" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_the_report_of_an_instruct_and_a_dpo_run_shows_each_kinds_own_metrics(full_dpo, instruct_run, tmp_path):
    import re

    from llmkit.report import write_report

    run, metrics = full_dpo
    page = write_report([instruct_run, run], tmp_path / "r.html").read_text()
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    plot = next(p for p in data["plots"] if p["id"] == "reward_accuracy")
    val = next(s for s in plot["series"] if s["name"] == "dpo val")["points"]["step"]
    history = read_json(run / "log_history.json")
    assert [p[1] for p in val] == pytest.approx([h["eval_rewards/accuracies"] for h in history
                                                 if "eval_rewards/accuracies" in h])
    assert 'data-key="eval_rewards/accuracies"' in page and "preference tuning (dpo)" in page
    assert "instruction tuning" in page
