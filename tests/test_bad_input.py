"""Bad input, everywhere: for every command, each of these inputs ends in exactly one line on stderr
(`llmkit: error: ...`) naming the problem and the fix, exit code 2, no traceback, and no file changed outside the
case's own temporary folder (the inputs are hashed before and after).

The cases run in-process through `llmkit.cli.main` (the parsing, checks and messages are what is tested, not the
process start-up), with file-descriptor capture so that anything a library prints to stderr counts; the two
launch-setting cases run as processes, since they read the environment the launcher sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import llmkit_main, subprocess_env

from llmkit.cli import main

TINY = ["tokenizer.kind=char", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_positions=32",
        "training.report_to=none", "training.disable_tqdm=true", "training.max_steps=3", "sample.max_new_tokens=0"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shakespeare_head) -> pathlib.Path:
    """Every input file the cases read, in one folder (hashed before and after)."""
    from llmkit.config import load_config
    from llmkit.training import train

    root = tmp_path_factory.mktemp("inputs")
    (root / "good.txt").write_text(shakespeare_head(20_000).read_text())
    (root / "empty.txt").write_text("")
    (root / "bad_utf8.txt").write_bytes(b"fine text\n\xff\xfe broken\n")
    (root / "tiny.txt").write_text("To be.\n")
    (root / "notext").mkdir()
    (root / "notext" / "weights.bin").write_bytes(b"\0" * 16)
    (root / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (root / "nofield.jsonl").write_text('{"body": "a"}\n')
    (root / "qa_missing.jsonl").write_text('{"question": "a?", "answer": "b"}\n')
    (root / "qa_empty.jsonl").write_text('{"prompt": "a?", "response": ""}\n')
    (root / "bad.yaml").write_text("model: {n_layer: 2\n")
    (root / "list.yaml").write_text("- model\n- data\n")
    (root / "prompt_dir").mkdir()
    cfg = load_config(None, [*TINY, "model.position_embedding_type=rotary", f"data.source={root / 'good.txt'}",
                             f"data.cache_dir={root / 'cache'}", "training.eval_steps=3"])
    train(cfg, output_dir=str(root / "run"), log=lambda *a: None)
    truncated = root / "truncated_run"
    truncated.mkdir()
    for f in (root / "run").iterdir():
        if f.is_file():
            (truncated / f.name).write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3]
                                             if f.name == "model.safetensors" else f.read_bytes())
    return root


def case_list(i: pathlib.Path) -> dict[str, tuple[list[str], str]]:
    data, run, cache = i / "good.txt", i / "run", ["data.cache_dir=CACHE"]
    train = ["train", *TINY, *cache]
    return {
        # configs and overrides
        "unknown model key": ([*train, f"data.source={data}", "model.n_layers=2"], "did you mean model.n_layer"),
        "wrong type": ([*train, f"data.source={data}", "model.n_layer=two"], "model.n_layer must be int"),
        "heads do not divide": ([*train, f"data.source={data}", "model.n_head=3"], "divisible by n_head"),
        "unknown training key": ([*train, f"data.source={data}", "training.max_stepz=3"], "did you mean training.max_steps"),
        "TrainingArguments refuses a value": ([*train, f"data.source={data}", "training.lr_scheduler_type=wobbly"],
                                              "rejected by TrainingArguments"),
        "the schedule refuses an argument": ([*train, f"data.source={data}", "training.max_steps=4",
                                              "training.lr_scheduler_type=warmup_stable_decay",
                                              "training.lr_scheduler_kwargs={num_decay_steps: 2, decay_type: sqrt}"],
                                             "refused by the warmup_stable_decay schedule: Unknown decay type: sqrt"),
        "missing config file": (["train", str(i / "nope.yaml")], "nope.yaml does not exist"),
        "config is not YAML": (["train", str(i / "bad.yaml")], "not valid YAML"),
        "config is a list": (["train", str(i / "list.yaml")], "top level must be a mapping"),
        "override without =": (["prepare", f"data.source={data}", "model.n_layer"], "must look like section.key=value"),
        "val_ratio out of range": (["prepare", f"data.source={data}", "data.val_ratio=1.5", *cache], "data.val_ratio must be in [0, 1)"),
        "unknown packing": (["prepare", f"data.source={data}", "data.packing=zigzag", *cache], "data.packing='zigzag' is unknown"),
        "block longer than the context": (["prepare", f"data.source={data}", "model.n_positions=16", "data.block_size=64", *cache],
                                          "exceeds the context"),
        "unknown tokenizer kind": (["prepare", f"data.source={data}", "tokenizer.kind=bytes", *cache], "tokenizer.kind='bytes' is unknown"),
        "pretrained tokenizer without a path": (["prepare", f"data.source={data}", "tokenizer.kind=pretrained", *cache],
                                                "needs tokenizer.name_or_path"),
        "unknown data format": (["prepare", f"data.source={data}", "data.format=xml", *cache], "data.format='xml' is unknown"),
        "unknown on_nonfinite": ([*train, f"data.source={data}", "training.on_nonfinite=maybe"], "training.on_nonfinite='maybe'"),
        # data files and folders
        "missing data file": (["prepare", f"data.source={i / 'missing.txt'}", *cache], "no such file or folder"),
        "empty data file": (["prepare", f"data.source={i / 'empty.txt'}", *cache], "the file is empty"),
        "not UTF-8": (["prepare", f"data.source={i / 'bad_utf8.txt'}", *cache], "byte 10 is not valid UTF-8"),
        "folder without text": (["prepare", f"data.source={i / 'notext'}", *cache], "holds no text files"),
        "glob matching nothing": (["prepare", f"data.source={i / '*.nothing'}", *cache], "the glob matches no file"),
        "malformed jsonl": (["prepare", f"data.source={i / 'bad.jsonl'}", *cache], "cannot be read as json"),
        "jsonl without the text field": (["prepare", f"data.source={i / 'nofield.jsonl'}", *cache], "no text field 'text'"),
        "corpus shorter than a block": (["prepare", f"data.source={i / 'tiny.txt'}", *cache], "one block needs"),
        "instruct rows without their columns": (["prepare", "tokenizer.kind=char", "data.format=instruct",
                                                 f"data.source={i / 'qa_missing.jsonl'}", *cache], "no prompt/response columns"),
        "instruct row with an empty answer": (["prepare", "tokenizer.kind=char", "data.format=instruct",
                                               f"data.source={i / 'qa_empty.jsonl'}", *cache], "the answer (response) is empty"),
        # runs, checkpoints, pretrained models, adapters
        "resume without a checkpoint": ([*train, f"data.source={data}", "--resume", "--output-dir", "OUT"], "no complete checkpoint"),
        "train into a finished run": ([*train, f"data.source={data}", "--output-dir", str(run)], "already holds a run"),
        "pretrained model missing": ([*[t for t in train if not t.startswith(("model.", "tokenizer."))],
                                      f"data.source={data}", f"model.from_pretrained={i / 'no_model'}"],
                                     "no_model: no such folder"),
        "pretrained model with a new tokenizer": (["train", f"data.source={data}", "model.from_pretrained=gpt2",
                                                   "tokenizer.kind=char"], "needs its own tokenizer"),
        "size against the pretrained model": ([*[t for t in train if not t.startswith(("model.", "tokenizer."))],
                                               f"data.source={data}", f"model.from_pretrained={run}", "model.n_layer=3"],
                                              "contradicts the pretrained model"),
        "unknown lora key": ([*train, f"data.source={data}", "lora.rank=8"], "unknown key lora.rank"),
        "lora targets matching nothing": ([*train, f"data.source={data}", "lora.target_modules=[q_proj]"], "matches no module"),
        "distill alpha out of range": ([*train, f"data.source={data}", f"distill.teacher={run}", "distill.alpha=2"],
                                       "distill.alpha must be in [0, 1]"),
        "distill teacher missing": ([*[t for t in train if not t.startswith("tokenizer.")], f"data.source={data}",
                                     f"distill.teacher={i / 'no_teacher'}"], "no_teacher: no such folder"),
        # models: generation and evaluation options
        "generate from a missing run": (["generate", str(i / "no_run"), "--prompt", "a"], "no_run: no such folder"),
        "generate from a truncated model file": (["generate", str(i / "truncated_run"), "--prompt", "a", "--device", "cpu"],
                                                 "cannot load model"),
        "negative temperature": (["generate", str(run), "--prompt", "a", "--temperature", "-1", "--device", "cpu"],
                                 "--temperature must be >= 0"),
        "top-p above 1": (["generate", str(run), "--prompt", "a", "--top-p", "2", "--device", "cpu"],
                          "--top-p must be in (0, 1]"),
        "zero new tokens": (["generate", str(run), "--max-new-tokens", "0"], "0 must be positive"),
        "not a device": (["generate", str(run), "--device", "gpu"], "'gpu' is not a device"),
        "a device this machine lacks": (["evaluate", str(run), "--data", str(data), "--device", "cuda:7"],
                                        "device cuda:7 is not available on this machine"),
        "a relative path that does not exist": (["generate", "runs_here/nothing", "--prompt", "a"],
                                                "runs_here/nothing: no such folder"),
        "prompt file missing": (["generate", str(run), "--prompt-file", str(i / "no_prompt.txt"), "--device", "cpu"],
                                "--prompt-file"),
        "prompt file is a folder": (["generate", str(run), "--prompt-file", str(i / "prompt_dir"), "--device", "cpu"],
                                    "--prompt-file"),
        "chat without a chat template": (["generate", str(run), "--chat", "--prompt", "hi", "--device", "cpu"],
                                         "no chat template"),
        "unknown command": (["fly"], "invalid choice: 'fly'"),
        "evaluate missing data": (["evaluate", str(run), "--data", str(i / "none.txt"), "--device", "cpu"], "no such file"),
        "evaluate stride beyond the context": (["evaluate", str(run), "--data", str(data), "--stride", "4096", "--device", "cpu"],
                                               "--stride 4096 is outside [1, 32] (the context of"),
        "evaluate instruct without a template": (["evaluate", str(run), "--data", str(i / "qa_empty.jsonl"), "--format",
                                                  "instruct", "--device", "cpu"], "no chat template"),
        # merge, export, push, pull
        "merge a run that is no adapter": (["merge", str(run), "OUT"], "is not an adapter run"),
        "export into an existing folder": (["export", str(run), str(i), "--to", "code"], "already exists"),
        "export with no stock equivalent": (["export", str(run), "OUT", "--to", "gpt2"], "rotary positions"),
        "push an invalid repo id": (["push", str(run), "a//b"], "is not a valid repo id"),
        "push a folder that is no run": (["push", str(i / "notext"), "me/notext"], "is not a run, adapter run, model"),
        "pull into a folder that is not empty": (["pull", "me/x", str(i)], "exists and is not empty"),
    }


def tree_hash(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "cache" not in p.parts}


def test_at_least_forty_distinct_bad_inputs_are_covered(inputs):
    assert len(case_list(inputs)) + len(LAUNCH_CASES) >= 40


@pytest.fixture(scope="module")
def before(inputs):
    return tree_hash(inputs)


@pytest.mark.parametrize("name", list(case_list(pathlib.Path("/x"))))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, inputs, before, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a case would write by default lands here, and is checked
    if name == "a relative path that does not exist":  # online, a folder beside it: reported without the Hub
        (tmp_path / "runs_here").mkdir()
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a Hub request would say so
    args, message = case_list(inputs)[name]
    args = [a.replace("CACHE", str(tmp_path / "cache")).replace("OUT", str(tmp_path / "out")) for a in args]
    code, out, err = llmkit_main(capfd, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("llmkit: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert tree_hash(inputs) == before, "an input folder changed"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "cache" not in p.parts]
    assert not written, written


def test_llmkit_debug_prints_the_traceback_after_the_one_line(inputs, tmp_path):
    for debug, traceback in (("1", True), ("", False)):
        proc = subprocess.run([sys.executable, "-m", "llmkit.cli", "generate", str(tmp_path / "no_run")],
                              env={**subprocess_env(), "LLMKIT_DEBUG": debug}, capture_output=True, text=True,
                              timeout=120)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and lines[0].startswith("llmkit: error: ") and "no such folder" in lines[0]
        assert ("Traceback (most recent call last)" in proc.stderr) == traceback, proc.stderr
        assert "ConfigError" in proc.stderr or not traceback


LAUNCH_CASES = {
    "FSDP asked for where accelerate cannot shard": ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
                                                     "the launch asks for FSDP"),
    "DeepSpeed asked for but not installed": ({"ACCELERATE_USE_DEEPSPEED": "true"}, "pip install \"llmkit[deepspeed]\""),
}


@pytest.mark.parametrize("name", list(LAUNCH_CASES))
def test_launch_settings_that_cannot_work_are_refused_with_one_line(name, inputs, tmp_path):
    env, message = LAUNCH_CASES[name]
    if "DeepSpeed" in name:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is not None:
            pytest.skip("DeepSpeed is installed here")
    proc = subprocess.run([sys.executable, "-m", "llmkit.cli", "train", *TINY, f"data.source={inputs / 'good.txt'}",
                           f"data.cache_dir={tmp_path / 'cache'}", "--output-dir", tmp_path / "out"],
                          env={**subprocess_env(), **env}, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_overrides_may_follow_flags(inputs, tmp_path, capfd):
    """`llmkit train CFG --resume training.max_steps=N` is read as the user means it."""
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": {"source": str(inputs / "good.txt"), "cache_dir": str(tmp_path / "c")}}))
    code = main(["train", str(config), "--output-dir", str(tmp_path / "r"), *TINY, "--resume", "training.max_steps=4"])
    err = capfd.readouterr().err
    assert code == 2 and "no complete checkpoint" in err  # parsed: --resume with the overrides after it
    assert os.path.exists(config)
