"""The `llmkit` command as a user runs it, in subprocesses: train, generate, prepare, and the one-line errors."""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, subprocess_env

from llmkit.cli import glibc_malloc_at_defaults, libraries_loading

CORPUS_CHARS = 120_000

TINY = [
    "tokenizer.kind=char",
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "model.n_positions=32",
    "training.per_device_train_batch_size=16",
    "training.learning_rate=3e-3",
    "training.warmup_steps=5",
    "training.logging_steps=5",
    "training.report_to=none",
    "training.disable_tqdm=true",
    "sample.max_new_tokens=8",
]




def llmkit(*args, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit.cli", *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def snapshot(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(shakespeare_head) -> pathlib.Path:
    return shakespeare_head(CORPUS_CHARS)


@pytest.fixture(scope="module")
def cli_run(corpus, tmp_path_factory):
    """`llmkit train` with overrides only: (run folder, work folder)."""
    work = tmp_path_factory.mktemp("cli")
    proc = llmkit("train", *TINY, f"data.source={corpus}", f"data.cache_dir={work / 'cache'}",
                  "training.max_steps=20", "training.eval_steps=10", "--output-dir", work / "run", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: " in proc.stdout and "Traceback" not in proc.stderr
    (work / "train.stderr").write_text(proc.stderr)
    return work / "run", work


NOISE = ("deprecated", "will be removed", "generation flags are not valid", "Passing `generation_config`")


def test_train_and_generate_print_no_deprecation_or_invalid_flag_warning(cli_run):
    """What transformers prints when our code uses an API it is retiring, or hands generate() flags it ignores
    (a greedy call inheriting the run's saved sampling settings), must never reach a user."""
    run, work = cli_run
    outputs = {"train": (work / "train.stderr").read_text()}
    for name, extra in (("sample", []), ("greedy+stop", ["--greedy", "--stop", "e", "--stop", "a"])):
        proc = llmkit("generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "0", *extra, cwd=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = proc.stdout + proc.stderr
    for name, text in outputs.items():
        found = [phrase for phrase in NOISE if phrase.lower() in text.lower()]
        assert not found, f"{name} printed {found}: {text[-2000:]}"


def test_generate_prints_the_prompt_and_its_continuation(cli_run):
    from llmkit.loading import load_model
    from llmkit.models.generation import generate_texts

    run, work = cli_run
    args = ("generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1", "--no-stream")
    proc = llmkit(*args, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ROMEO:")
    # the same seed gives the same text, in this process too (the CLI's defaults: temperature 0.8, no top-k);
    # the text is at most 20 tokens, fewer only when the model sampled its EOS
    model, tokenizer = load_model(str(run), device="cpu")
    (text,) = generate_texts(model, tokenizer, ["ROMEO:"], max_new_tokens=20, temperature=0.8, seed=1)
    assert proc.stdout == "ROMEO:" + text + "\n"
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 20
    assert "<|" not in text  # special tokens are not printed
    # greedy decoding of the trained model continues the prompt (its EOS is one token in 100 thousand)
    (greedy,) = generate_texts(model, tokenizer, ["ROMEO:"], max_new_tokens=20, temperature=0)
    assert len(greedy) == 20  # char level: 20 tokens, 20 characters


ERROR_CASES = {
    "unknown_key": (["model.n_layers=2"], "did you mean model.n_layer"),
    "wrong_type": (["model.n_layer=abc"], "model.n_layer must be int"),
    "heads_do_not_divide": (["model.n_embd=30", "model.n_head=4"], "divisible by n_head"),
    "missing_data": (["data.source=nope/missing.txt"], "nope/missing.txt"),
    "missing_config_file": (["nope.yaml"], "nope.yaml does not exist"),
    "unknown_training_key": (["training.max_stepz=3"], "did you mean training.max_steps"),
    "pretrained_model_new_tokenizer": (["model.from_pretrained=gpt2"], "tokenizer.kind=pretrained"),
    "pretrained_tokenizer_without_path": (["tokenizer.kind=pretrained"], "needs tokenizer.name_or_path"),
}


@pytest.fixture(scope="module")
def error_runs(corpus, tmp_path_factory):
    """Every bad command at once (they are independent), each in its own folder: {case: (proc, folder)}."""
    procs = {}
    for case, (args, _) in ERROR_CASES.items():
        work = tmp_path_factory.mktemp(case)
        overrides = [f"data.source={corpus}", f"data.cache_dir={work / 'cache'}", *TINY, "training.max_steps=5"]
        if not args[0].endswith(".yaml"):  # a config file comes first, overrides after it
            overrides += args
            args = []
        cmd = [sys.executable, "-m", "llmkit.cli", "train", *args, *overrides, "--output-dir", str(work / "run")]
        procs[case] = (subprocess.Popen(cmd, cwd=work, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), work)
    results = {}
    for case, (proc, work) in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        results[case] = (proc.returncode, stdout, stderr, work)
    return results


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_settings_fail_with_one_line_and_exit_code_2_before_any_work(error_runs, case):
    returncode, stdout, stderr, work = error_runs[case]
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("llmkit: error: ")
    assert ERROR_CASES[case][1] in lines[0]
    assert not (work / "run").exists()  # nothing trained, nothing written
    assert not (work / "cache").exists()
    assert "done: " not in stdout


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_a_mistyped_setting_is_refused_before_torch_and_transformers_load(command, tmp_path):
    """The config is read and checked first: a typo costs a user no library start-up (CONFIG_FIRST in cli.py)."""
    code = ("import sys\nfrom llmkit.cli import main\n"
            f"code = main([{command!r}, 'configs/quickstart.yaml', 'model.n_layers=2'])\n"
            "print(code, sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["2", "[]"], proc.stdout + proc.stderr[-3000:]
    assert error_lines(proc.stderr) == ["llmkit: error: unknown key model.n_layers; did you mean model.n_layer?"]


# a step's activations on a CPU: tensors of 4 MB made, then freed last first, step after step; prints the page
# faults of 20 steps (after a first one), in a process that ran llmkit's command line first or not
ALLOCATIONS = """
import resource, sys
import torch
if sys.argv[1] == "llmkit":
    from llmkit.cli import main
    assert main(["train", "configs/quickstart.yaml", "model.n_layers=2"]) == 2  # refused: main's set-up ran
def step():
    xs = [torch.ones(1 << 20) for _ in range(12)]
    while xs:
        xs.pop()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not glibc_malloc_at_defaults(), reason="the setting is glibc's malloc's, where the environment sets none")
def test_llmkit_processes_keep_the_memory_a_step_frees_for_the_next_step():
    """llmkit's commands set glibc's malloc to keep freed memory (cli.keep_freed_memory): the pages a step's
    tensors used are not faulted in again in the next step. A malloc setting of the user's own is left alone."""
    def faults(mode: str, **env) -> int:
        proc = subprocess.run([sys.executable, "-c", ALLOCATIONS, mode], cwd=REPO, env={**subprocess_env(), **env},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return int(proc.stdout.split()[-1])

    plain, kept = faults("plain"), faults("llmkit")
    users = faults("llmkit", MALLOC_TRIM_THRESHOLD_=str(128 << 10))  # glibc's default trim, set by hand
    assert kept * 3 < plain, (kept, plain)
    assert users > 3 * kept, (users, kept)


# counts the collections of Python's garbage collector (any generation) that ran with torch loaded and nothing
# frozen yet, while a process imports the libraries plainly or runs llmkit's command line
COLLECTIONS = """
import gc, sys
walks = []
gc.callbacks.append(lambda phase, info: phase == "start"
                    and walks.append("torch" in sys.modules and gc.get_freeze_count() == 0))
if sys.argv[1] == "plain":
    import llmkit.training
    code = 0
else:
    from llmkit.cli import main
    code = main(sys.argv[1:])
print(code, gc.isenabled(), gc.get_freeze_count(), walks.count(True))
"""


def collections(*args, cwd: pathlib.Path) -> list[str]:
    """COLLECTIONS in a subprocess: exit code, collector on, objects frozen, collections over an unfrozen heap."""
    proc = subprocess.run([sys.executable, "-c", COLLECTIONS, *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()[-4:]


@pytest.fixture(scope="module")
def plain_import_collections(tmp_path_factory) -> list[str]:
    """The control, once for the module: a plain import of the libraries."""
    return collections("plain", cwd=tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize("command", ["prepare", "generate"])
def test_libraries_load_without_collections_and_stay_frozen(command, plain_import_collections, corpus, cli_run,
                                                            tmp_path):
    """cli.libraries_loading: torch, transformers and the rest load with the cyclic garbage collector paused (a
    plain import walks the growing heap again and again); what they made is then frozen and the collector is on
    again for the command's own work. Both the config-first commands and the others."""
    code, enabled, frozen, walks = plain_import_collections
    assert int(frozen) == 0 and int(walks) > 0, (frozen, walks)  # the control: walks while importing
    args = (["prepare", *TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}"] if command == "prepare"
            else ["generate", cli_run[0], "--prompt", "a", "--max-new-tokens", "2", "--greedy"])
    code, enabled, frozen, walks = collections(*args, cwd=tmp_path)
    assert (code, enabled, walks) == ("0", "True", "0")
    assert int(frozen) > 100_000  # the libraries' objects


def test_libraries_loading_leaves_an_in_process_callers_heap_alone():
    """Where torch is loaded already (a notebook, these tests), the collector is neither paused nor frozen."""
    import gc

    before = gc.get_freeze_count()
    with libraries_loading():
        assert gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == before


def test_a_process_start_is_read_from_the_kernel_not_a_second_early(tmp_path):
    """The "start-up" phase of metrics.json starts at the process's start (cli._process_start): not before the
    parent launched it (psutil's create_time, on /proc/stat's whole-second boot time, can be up to a second early),
    and not long after."""
    code = "from llmkit.cli import _process_start\nprint(repr(_process_start()))"
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = float(proc.stdout.split()[-1])
    assert launched - 0.02 <= start <= launched + 1.0, start - launched  # clock ticks: 10 ms


def test_resume_without_a_checkpoint_says_so(corpus, tmp_path):
    proc = llmkit("train", *TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "--resume",
                  "--output-dir", tmp_path / "fresh", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = [line for line in error_lines(proc.stderr) if line.startswith("llmkit: error: ")]
    assert "--resume: no complete checkpoint" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "fresh" / "model.safetensors").exists()


def test_a_second_run_into_a_finished_run_folder_is_refused_and_changes_nothing(cli_run, tmp_path):
    run, _ = cli_run
    target = tmp_path / "run"
    shutil.copytree(run, target, copy_function=shutil.copy2)
    before = snapshot(target)
    assert "model.safetensors" in before
    # the run's own resolved config, as a user would re-run it
    proc = llmkit("train", target / "config.yaml", "--output-dir", target, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in error_lines(proc.stderr) if line.startswith("llmkit: error: ")]
    assert "already holds a run" in line and "--resume" in line
    assert snapshot(target) == before


def test_prepare_reports_chars_tokens_and_cache_then_a_cache_hit(corpus, tmp_path):
    config = tmp_path / "char.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"n_positions": 64},
        "tokenizer": {"kind": "char"},
        "data": {"source": str(corpus), "cache_dir": str(tmp_path / "cache"), "val_ratio": 0.1},
    }))
    first = llmkit("prepare", config, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training a char tokenizer" in first.stdout
    lines = first.stdout.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("split")):]
    header = lines[0].split()
    assert header[:3] == ["split", "chars", "tokens"]
    rows = {line.split()[0]: [int(x.replace(",", "")) for x in line.split()[1:3]] for line in lines[1:3]}
    assert set(rows) == {"train", "validation"}
    corpus_chars = len(corpus.read_text())
    assert rows["train"][0] + rows["validation"][0] == corpus_chars
    # val_ratio=0.1 of ~2 KB segments, each drawn by a seeded coin: some, but far from half, of the text
    assert 0 < rows["validation"][0] < 0.25 * corpus_chars
    # one token per character, plus the EOS that ends the (single) document
    assert rows["train"][1] + rows["validation"][1] == corpus_chars + 1
    match = re.search(r"vocabulary (\d+); block 64; tokenized in [\d.]+s; saved in (\S+)$", first.stdout.strip())
    assert match, first.stdout
    cache = pathlib.Path(match.group(2))
    cache = cache if cache.is_absolute() else tmp_path / cache
    assert cache.parent == tmp_path / "cache" and (cache / "meta.json").is_file()
    assert (cache / "train.bin").stat().st_size == rows["train"][1] * 2  # uint16 tokens
    assert int(match.group(1)) == len(set(corpus.read_text())) + 3  # characters + EOS, pad, unk

    second = llmkit("prepare", config, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "cache hit" in second.stdout and "tokenized in" not in second.stdout
    assert second.stdout.strip().endswith(f"saved in {match.group(2)}")
    assert second.stdout.splitlines()[:3] == lines[:3]  # the same table, read from the cache
    assert "training a char tokenizer" not in second.stdout + second.stderr


def test_training_strategies_accept_no_as_transformers_spells_it():
    """TrainingArguments' documented value is "no" (`eval_strategy: no`); YAML 1.1 reads a bare no as False."""
    from llmkit.config import load_config
    from llmkit.training import training_arguments

    cfg = load_config(None, ["training.eval_strategy=no", "training.save_strategy=no",
                             "training.load_best_model_at_end=false", "training.report_to=none"])
    args = training_arguments(cfg, output_dir="unused")
    assert (args.eval_strategy.value, args.save_strategy.value) == ("no", "no")
