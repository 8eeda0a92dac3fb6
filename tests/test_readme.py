"""README.md is executable: every `llmkit ...` and `python scripts/...` command it shows (the quick start, the
commands table, the fine-tuning walk-through) runs here, in README order, in a fresh folder as a new user's, and
its output is checked against what the README says it does. The Python API block runs too.

What the test substitutes, and nothing else:
- placeholders: RUN (a char model trained by the test's CONFIG on a verse with blank lines, learned positions, so
  it exports to GPT-2), RUN_A/RUN_B (that run and the quickstart run), CONFIG (that config; the test first trains
  it part way, so `--resume` has a checkpoint to continue), F (a prompt file), ADAPTER_RUN, MERGED, EXPORTED,
  USER/NAME (a repo on the local test Hub, tests/hub_server.py, with a token in HF_TOKEN), DIR; the data files the
  commands name (text.txt, shakespeare.txt, tinyshakespeare.txt) are heads of tinyshakespeare;
- training commands get overrides appended that shrink the model (architecture keys kept) and the steps; the
  tokenizer and data settings are the preset's, so the data cache is the one a user's run builds;
- `.venv/bin/llmkit` is this interpreter's llmkit; the set-up commands (venv, pip) are checked against
  `.ci/run`, which runs them from nothing, rather than run again.

`llmkit` commands run in-process through `llmkit.cli.main` (the process entry points are test_cli.py's); the
Hub commands (the endpoint is read at import) and `python scripts/...` run as subprocesses. A command added to
the README that this file cannot run, or whose purpose it does not check, fails the test.
"""

from __future__ import annotations

import io
import json
import math
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
import torch
from conftest import REPO, subprocess_env
from hub_server import HubServer

README = REPO / "README.md"
CI = REPO / ".ci" / "run"
TOKEN = "hf_" + "ReadmeUser0123456789abcdefghij"
VERSE = "ROMEO: To be or not\nCE ghi\n\nJULIET: To be\n\n"
CONFIG_YAML = """\
model: {n_layer: 2, n_head: 2, n_embd: 48, n_positions: 128, position_embedding_type: learned}
tokenizer: {kind: char}
data: {source: verse.txt, val_ratio: 0.1}
training: {output_dir: runs/verse, max_steps: 240, save_steps: 120, eval_steps: 120, logging_steps: 20,
           per_device_train_batch_size: 16, learning_rate: 3.0e-3, warmup_steps: 5, report_to: none,
           disable_tqdm: true}
sample: {max_new_tokens: 8, prompts: ["ROMEO:"]}
"""
PARTIAL = ["training.max_steps=120"]  # the part of CONFIG's run trained before `llmkit train CONFIG --resume`
SHRINK = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.n_inner=null"]
FAST = ["training.max_steps=4", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1",
        "training.per_device_train_batch_size=4", "training.per_device_eval_batch_size=8", "training.warmup_steps=0",
        "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=4"]
PLACEHOLDERS = {"RUN_A": "runs/verse", "RUN_B": "runs/quickstart", "RUN": "runs/verse", "CONFIG": "verse.yaml",
                "F": "prompt.txt", "ADAPTER_RUN": "runs/quickstart-lora", "MERGED": "merged",
                "EXPORTED": "exported", "USER/NAME": "alice/readme-run", "DIR": "pulled"}
DATA_FILES = ("text.txt", "shakespeare.txt", "tinyshakespeare.txt")
SETUP = re.compile(r"^(python3 -m venv \.venv|\.venv/bin/pip install .*|\.venv/bin/python -m pytest .*)$")
NOT_RUN = {  # shown in the README, not run here: why, and what is checked instead
    "python scripts/check_dependencies.py": "builds two environments from the package index (about 10 minutes); "
                                            "its --help is run",
}


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _bash_blocks(section: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def readme_commands() -> list[tuple[str, str]]:
    """(session, command) in README order: the quick start and the commands table run in one folder (the table
    uses the quickstart run), the fine-tuning walk-through in another, as it starts from nothing."""
    sections = _sections(README.read_text())
    commands = []
    for block in _bash_blocks(sections["Quick start (fresh machine, CPU)"]):
        for line in block.strip().splitlines():
            commands += [("main", part.strip()) for part in line.split("&&")]
    for row in re.findall(r"^\| `(.+?)` \|", sections["Commands"], flags=re.M):
        commands.append(("main", row.replace(r"\|", "|")))
    for title in ("Fine-tuning", "Instruction tuning and distillation", "Preference tuning (DPO)", "Time to quality"):
        for block in _bash_blocks(sections[title]):
            for line in block.strip().splitlines():
                commands.append(("finetune", line.split("#")[0].strip()))
    return commands


COMMANDS = readme_commands()


def python_api_block() -> str:
    blocks = re.findall(r"Python API:\n\n```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README's Python API block is gone or doubled; update tests/test_readme.py"
    return blocks[0]


class Terminal(io.StringIO):
    """stdin as a terminal: a command typed without a pipe reads no prompt from it."""

    def isatty(self) -> bool:
        return True


# --------------------------------------------------------------------------------------------------- sessions


@pytest.fixture(scope="module")
def hub():
    with HubServer({TOKEN: "alice"}) as server:
        yield server


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, shakespeare_head):
    """One folder per session, with the data files and the configs/ of this checkout; the llmkit cache shared."""
    root = tmp_path_factory.mktemp("readme")
    text = shakespeare_head(60_000).read_text()
    out = {}
    for name in ("main", "finetune", "api"):
        folder = root / name
        folder.mkdir()
        (folder / "configs").symlink_to(REPO / "configs")
        for data in DATA_FILES:
            (folder / data).write_text(text)
        (folder / "verse.txt").write_text(VERSE * 600)
        (folder / "verse.yaml").write_text(CONFIG_YAML)
        (folder / "prompt.txt").write_text("ROMEO:")
        out[name] = folder
    out["cache"] = root / "cache"
    out["results"] = {}
    return out


@pytest.fixture
def in_session(monkeypatch, sessions):
    monkeypatch.setenv("LLMKIT_CACHE", str(sessions["cache"]))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")

    def enter(name: str) -> pathlib.Path:
        monkeypatch.chdir(sessions[name])
        return sessions[name]

    return enter


def substitute(argv: list[str]) -> list[str]:
    adapter_base = "--adapter" in argv  # `generate RUN --adapter ADAPTER_RUN`: RUN is the adapter's base
    out = []
    for arg in argv:
        if arg == "RUN" and adapter_base:
            out.append("runs/quickstart")
        else:
            out.append(PLACEHOLDERS.get(arg, arg))
    unknown = [a for a in out if re.fullmatch(r"[A-Z][A-Z_/]*", a) and a not in ("ROMEO:",)]
    assert not unknown, f"README placeholder(s) {unknown} unknown to tests/test_readme.py: add them to PLACEHOLDERS"
    return out


def shrink_train(argv: list[str]) -> list[str]:
    """A training command, made small: its preset's tokenizer and data, a shrunk model, four steps. A sweep's
    points too (the swept keys, given after, win)."""
    if "sweep" in argv:
        return [*argv, *FAST, "model.n_layer=1"]
    if "train" not in argv or "--resume" in argv:
        return argv
    config = pathlib.Path(argv[argv.index("train") + 1])
    import yaml

    raw = yaml.safe_load(config.read_text())
    extra = list(FAST)
    if not (raw.get("model") or {}).get("from_pretrained"):
        extra += SHRINK  # the context stays the preset's
    return [*argv, *extra]


def run_in_process(argv: list[str], stdin: str | None, capsys, monkeypatch) -> tuple[int, str, str]:
    from llmkit.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(stdin) if stdin is not None else Terminal(""))
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_subprocess(argv: list[str], stdin: str | None, env: dict) -> tuple[int, str, str]:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def parse(command: str) -> tuple[list[str], str | None]:
    """argv and piped stdin of one README command (`echo X | cmd`, `printf X | cmd`)."""
    stdin = None
    if "|" in command:
        feeder, command = (part.strip() for part in command.split("|", 1))
        words = shlex.split(feeder)
        assert words[0] in ("echo", "printf"), f"unsupported pipe in README command: {feeder}"
        stdin = words[1] + "\n" if words[0] == "echo" else words[1].encode().decode("unicode_escape")
    argv = shlex.split(command, comments=True)
    if argv[0] == ".venv/bin/llmkit":
        argv[0] = "llmkit"
    return argv, stdin


# ------------------------------------------------------------------------------------------- purpose checks


def samples_of(out: str) -> list[str]:
    return re.split(r"^--- sample \d+ ---\n", out, flags=re.M)[1:] if out.startswith("--- sample 1 ---") else [out]


def check_purpose(argv: list[str], out: str, err: str, cwd: pathlib.Path, state: dict) -> str:
    """Assert what the README says the command does; returns which check ran (every command must have one)."""
    cmd, args = argv[1], argv[2:]
    if cmd == "prepare":
        assert "vocabulary 2,048" in out and re.search(r"^train\s+[\d,]+", out, flags=re.M), out
        return "prepare summary"
    if cmd == "train":
        if "--resume" in args:
            metrics = json.loads((cwd / "runs/verse/metrics.json").read_text())
            history = json.loads((cwd / "runs/verse/log_history.json").read_text())
            assert metrics["global_step"] == 240  # CONFIG's steps, continued from the checkpoint at 120
            assert "checkpoint-120" in out + err
            assert any(h.get("step") == 100 and "loss" in h for h in history)  # the first part's log is kept
            return "resumed from the checkpoint"
        out_dir = cwd / "runs" / pathlib.Path(args[0]).stem
        metrics = json.loads((out_dir / "metrics.json").read_text())
        assert metrics["global_step"] == 4 and math.isfinite(metrics["eval_loss"])
        if "lora" in args[0]:
            assert (out_dir / "adapter_model.safetensors").exists() and not (out_dir / "model.safetensors").exists()
            return "adapter run"
        from transformers import AutoModelForCausalLM

        import llmkit  # noqa: F401  (registers llmkit-gpt with the Auto classes)

        model = AutoModelForCausalLM.from_pretrained(out_dir)
        assert model.config.model_type == json.loads((out_dir / "config.json").read_text())["model_type"]
        return "run folder loadable by AutoModelForCausalLM"
    if cmd == "generate" and "--sweep" in args:
        rows = [json.loads(line) for line in (cwd / "generation-sweep.jsonl").read_text().splitlines()]
        swept = [a.split("=")[0] for a in args[args.index("--sweep") + 1:] if "=" in a]
        combos = {tuple(r["settings"][k] for k in swept) for r in rows}
        assert len(rows) == len(combos) == 4 and all(r["text"] and r["seed"] is not None for r in rows), rows
        assert (cwd / "generation-sweep.html").read_text().count("<tr>") == 5
        return "every combination's sample, with its settings and seed, in JSONL and HTML"
    if cmd == "report":
        page = (cwd / args[args.index("-o") + 1]).read_text()
        data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
        assert [r["name"] for r in data["legend"]] == [pathlib.Path(a).name for a in args[:2]]
        loss = next(p for p in data["plots"] if p["id"] == "loss")
        assert all(s["points"]["step"] for s in loss["series"]), "a run without its loss curve"
        return "one page with both runs' curves"
    if cmd == "sweep":
        result = json.loads((cwd / "runs/sweep/sweep.json").read_text())
        assert len(result["points"]) == 4 and all(p["status"] == "finished" for p in result["points"])
        assert result["fit"]["alpha"] is not None and (cwd / "runs/sweep/sweep.html").exists()
        assert "power law" in out
        return "four runs, their table and a power-law fit"
    if cmd == "generate":
        prompt = args[args.index("--prompt") + 1] if "--prompt" in args else state.get("stdin")
        if "--prompt-file" in args:
            prompt = (cwd / args[args.index("--prompt-file") + 1]).read_text()
        if "--chat" in args:
            assert out.strip() and "<|assistant|>" not in out and "<|user|>" not in out, out  # the answer alone
            return "an answer, without the template's markers"
        if "--json" in args:
            line = json.loads(out)
            assert line["prompt"] == prompt and len(line["samples"]) == 1 and line["samples"][0]
            return "one JSON line"
        if "-i" in args:
            prompts = state["stdin"].splitlines()
            assert out.startswith(prompts[0]) and f"\n{prompts[1]}" in out, out
            short = ["--greedy", "--max-new-tokens", "3"]  # the same mode, made deterministic: one answer each
            alone = "".join(state["rerun"]([*argv[:3], "--prompt", p, *short], None) for p in prompts)
            assert state["rerun"]([*argv, *short], state["stdin"]) == alone
            return "one answer per prompt, clean exit at the end of input"
        if "--stop" in args:
            stop = args[args.index("--stop") + 1].encode().decode("unicode_escape")
            assert out.endswith(stop + "\n") and out.count(stop) == 1, repr(out)
            assert len(out) < len(state["unstopped"](argv)), "the stop string did not stop anything"
            return "stopped at the stop string"
        if "--num-samples" in args:
            n = int(args[args.index("--num-samples") + 1])
            assert len(samples_of(out)) == n, out
            assert out == state["again"](), "same seed, different text"
            return f"{n} samples, same seed same text"
        if prompt is None:
            assert out.strip(), out
            return "text"
        assert out.startswith(prompt.rstrip("\n")) and len(out) > len(prompt) + 1, (prompt, out)
        return "continues the prompt"
    if cmd == "evaluate" and "--output" not in args:
        n_models = len([a for a in args[: args.index("--data")] if not a.startswith("-")])
        assert out.count("\n") >= n_models + 1 and "loss" in out, out  # a header and one row per model
        return "one table"
    if cmd == "evaluate":
        report = json.loads((cwd / args[args.index("--output") + 1]).read_text())
        rows = report if isinstance(report, list) else report.get("models", report.get("results"))
        assert len(rows) == 2, report
        for row in rows:
            assert math.isfinite(row["loss"]) and row["perplexity"] == pytest.approx(math.exp(row["loss"]), rel=1e-4)
        assert "perplexity" in out
        return "two models in one table and the JSON"
    if cmd == "merge":
        merged = cwd / args[1]
        assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
        return "a plain model folder"
    if cmd == "export":
        from transformers import GPT2LMHeadModel

        assert json.loads((cwd / args[1] / "config.json").read_text())["model_type"] == "gpt2"
        GPT2LMHeadModel.from_pretrained(cwd / args[1])
        return "stock GPT2LMHeadModel"
    if cmd == "push":
        for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "config.yaml"):
            assert state["hub"].get_file(args[1], name), name
        assert json.loads(state["hub"].get_file(args[1], "config.json"))["model_type"] == "gpt2"  # loads without llmkit
        return "one commit with model, tokenizer and card"
    if cmd == "pull":
        from transformers import AutoModelForCausalLM

        pulled = AutoModelForCausalLM.from_pretrained(cwd / args[1])
        local = AutoModelForCausalLM.from_pretrained(cwd / "exported")
        x = torch.tensor([[1, 2, 3]])
        assert torch.allclose(pulled(x).logits, local(x).logits, atol=1e-5)
        return "a folder that loads without llmkit"
    raise AssertionError(f"no purpose check for README command {' '.join(argv)}: add one to tests/test_readme.py")


# ---------------------------------------------------------------------------------------------------- tests


def test_the_readme_shows_the_commands_this_file_runs():
    """The parser finds every section's commands (a renamed section or a broken table would silently run none)."""
    assert {s for s, _ in COMMANDS} == {"main", "finetune"}
    table = _sections(README.read_text())["Commands"]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) >= 15
    assert sum(c.replace(r"\|", "|") in "\n".join(rows).replace(r"\|", "|") for _, c in COMMANDS) == len(rows)
    assert any(c.startswith(".venv/bin/llmkit train") for _, c in COMMANDS)  # the quick start's main job


def test_setup_commands_are_what_ci_runs():
    """The quick start's install and test commands are not rerun here: `.ci/run` runs them on a clean clone.
    Checked: the same steps in the same order (torch first), and the README's test command verbatim."""
    ci = CI.read_text()
    setup = [c for _, c in COMMANDS if SETUP.match(c)]
    assert "python3 -m venv .venv" in setup
    test_command = [c for c in setup if " -m pytest " in c]
    assert len(set(test_command)) == 1 and test_command[0] in ci, "the README's test command is not what CI runs"
    steps = [re.sub(r" -q\b", "", line.split("#")[0].strip().removesuffix("&&").strip()) for line in ci.splitlines()
             if line.strip().startswith(".venv/bin/pip install") and "--upgrade pip" not in line]
    assert steps == ['.venv/bin/pip install torch==2.13.0', '.venv/bin/pip install -e ".[dev]"'], steps
    installs = [c for c in setup if c.startswith(".venv/bin/pip install")]
    assert set(installs) == {steps[0], steps[1], ".venv/bin/pip install -e ."}, installs  # the main job: no [dev]


@pytest.mark.parametrize("session,command", [c for c in COMMANDS if not SETUP.match(c[1])],
                         ids=[c[1][:70] for c in COMMANDS if not SETUP.match(c[1])])
def test_readme_command(session, command, sessions, in_session, hub, capsys, monkeypatch):
    cwd = in_session(session)
    argv, stdin = parse(command)
    key = " ".join(argv).replace(".venv/bin/python", "python")
    if key in NOT_RUN:
        rc, out, err = run_subprocess([sys.executable, str(REPO / argv[-1]), "--help"], None, subprocess_env())
        assert rc == 0 and "usage" in out, err
        return
    assert argv[0] in ("llmkit", "python"), f"README command of an unknown kind: {command}"
    argv = shrink_train(substitute(argv))
    results = sessions["results"]
    if argv[1:3] == ["train", "verse.yaml"] and not (cwd / "runs/verse").exists():  # CONFIG's run, part way
        assert run_in_process(["train", "verse.yaml", *PARTIAL], None, capsys, monkeypatch)[0] == 0

    hub_env = dict(subprocess_env(), HF_ENDPOINT=hub.url, HF_HOME=str(cwd / "hf-home"), HF_TOKEN=TOKEN,
                   HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1", LLMKIT_CACHE=str(sessions["cache"]))
    if argv[0] == "python":
        assert argv[1].startswith("scripts/"), command
        rc, out, err = run_subprocess([sys.executable, str(REPO / argv[1]), *argv[2:]], stdin,
                                      dict(subprocess_env(), LLMKIT_CACHE=str(sessions["cache"])))
        assert rc == 0, err[-3000:]
        prompt = argv[argv.index("--prompt") + 1]
        assert out.startswith(prompt) and len(out) > len(prompt) + 1, out
        return
    if argv[1] in ("push", "pull"):
        rc, out, err = run_subprocess([sys.executable, "-m", "llmkit.cli", *argv[1:]], stdin, hub_env)
        assert TOKEN not in out + err
    else:
        rc, out, err = run_in_process(argv[1:], stdin, capsys, monkeypatch)
    assert rc == 0, f"`{command}` (as `{' '.join(argv)}`) exited {rc}:\n{err[-3000:]}"

    def again():
        return run_in_process(argv[1:], stdin, capsys, monkeypatch)[1]

    def unstopped(argv_):
        i = argv_.index("--stop")
        return run_in_process([*argv_[1:i], *argv_[i + 2 :]], stdin, capsys, monkeypatch)[1]

    def rerun(argv_, stdin_):
        return run_in_process(argv_[1:], stdin_, capsys, monkeypatch)[1]

    results[command] = check_purpose(argv, out, err, cwd, dict(stdin=stdin, again=again, unstopped=unstopped, hub=hub,
                                                               rerun=rerun))


def test_python_api_block(in_session, capsys):
    """The README's Python API block, with its 300 steps made four on a shrunk model."""
    in_session("api")
    code = python_api_block()
    assert '["training.max_steps=300"]' in code
    code = code.replace('["training.max_steps=300"]', repr([*FAST, *SHRINK, "model.n_positions=64"]))
    printed = []
    exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme", "print": printed.append})
    assert isinstance(printed[-1], str) and printed[-1].startswith("The list") and len(printed[-1]) > 20, printed


def test_every_benchmark_the_readme_names_exists():
    text = README.read_text()
    scripts = set(re.findall(r"python (benchmarks/\w+\.py)", text))
    results = set(re.findall(r"(benchmarks/results/[\w.-]+\.json)", text))
    assert scripts and results
    for path in scripts | results:
        assert (REPO / path).is_file(), f"the README names {path}, which does not exist"


def test_a_broken_command_fails(in_session, sessions, capsys, monkeypatch):
    """The harness above does fail: a README command with a misspelt flag, and one with an unknown placeholder."""
    in_session("main")
    rc, out, err = run_in_process(["generate", "runs/verse", "--greedy", "--stopp", "x"], None, capsys, monkeypatch)
    assert rc == 2 and "--stopp" in err
    with pytest.raises(AssertionError, match="placeholder"):
        substitute(["llmkit", "generate", "RUNS"])
    with pytest.raises(AssertionError, match="no purpose check"):
        check_purpose(["llmkit", "serve", "runs/verse"], "", "", pathlib.Path("."), {})


def test_use_your_model_serves_the_run_and_the_openai_snippet_gets_an_answer(sessions, in_session, capsys,
                                                                             monkeypatch):
    """The "Use your model" section: its `llmkit serve` command as a process (on a free port instead of 8000), then
    its `openai` snippet against it, then SIGTERM: exit 0."""
    import signal
    import socket
    import time
    import urllib.request

    section = _sections(README.read_text())["Use your model"]
    serve_blocks = [block for block in _bash_blocks(section) if "llmkit serve" in block]
    (command,) = [line.split("#")[0].strip() for block in serve_blocks for line in block.strip().splitlines()]
    snippets = [code for code in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "openai" in code]
    assert len(snippets) == 1 and "8000" in command and "8000" in snippets[0]
    cwd = in_session("main")
    if not (cwd / "runs/verse").exists():
        assert run_in_process(["train", "verse.yaml", *PARTIAL], None, capsys, monkeypatch)[0] == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    argv = substitute(shlex.split(command.replace("8000", port)))
    assert argv[:2] == ["llmkit", "serve"]
    proc = subprocess.Popen([sys.executable, "-m", "llmkit.cli", *argv[1:], "--device", "cpu"], cwd=cwd,
                            env=dict(subprocess_env(), LLMKIT_CACHE=str(sessions["cache"])), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "llmkit serve did not answer within 120 s"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert b"llmkit chat" in page.read()  # the chat page
        printed = []
        exec(compile(snippets[0].replace("8000", port), "README.md (openai)", "exec"),
             {"__name__": "readme", "print": printed.append})
        assert isinstance(printed[-1], str) and len(printed[-1]) > 0, printed
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]


GGUF_RUN = ["model.position_embedding_type=learned", "model.activation_function=gelu_new", "tokenizer.kind=bpe",
            "tokenizer.vocab_size=300", "data.source=text.txt", "training.output_dir=runs/gguf-form"]


def _gguf_blocks() -> tuple[list[str], str]:
    """The GGUF commands (export, then Ollama) and the llama.cpp snippet of "Use your model"."""
    section = _sections(README.read_text())["Use your model"]
    (block,) = [b for b in _bash_blocks(section) if "--to gguf" in b]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    (snippet,) = [code for code in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "llama_cpp" in code]
    return commands, snippet


@pytest.fixture
def gguf_export(in_session, capsys, monkeypatch):
    """The README's `llmkit export RUN gguf --to gguf ...`, RUN being a small GPT-2-form run with a BPE tokenizer
    (the verse run is char-level, which GGUF cannot state)."""
    commands, _ = _gguf_blocks()
    export, ollama = commands
    cwd = in_session("main")
    if not (cwd / "runs/gguf-form/config.json").exists():
        assert run_in_process(["train", "verse.yaml", *FAST, *GGUF_RUN], None, capsys, monkeypatch)[0] == 0
    argv = [a if a != "RUN" else "runs/gguf-form" for a in shlex.split(export)]
    assert argv[:2] == ["llmkit", "export"] and "RUN" in shlex.split(export)
    out = cwd / argv[3]
    if not out.exists():
        rc, _, err = run_in_process(argv[1:], None, capsys, monkeypatch)
        assert rc == 0, err[-3000:]
    return cwd, out, ollama


def test_use_your_model_exports_gguf_and_a_modelfile_ollama_can_create_from(gguf_export):
    """The export runs; Ollama itself is not installed here (it is a download), so its command is checked against
    the files: `ollama create -f gguf/Modelfile` names the Modelfile the export wrote, whose FROM is the GGUF file
    beside it, and the file is GGUF that transformers loads."""
    cwd, out, ollama = gguf_export
    create, run = (part.strip() for part in ollama.split("&&"))
    assert shlex.split(create)[:2] == ["ollama", "create"] and shlex.split(run)[:2] == ["ollama", "run"]
    modelfile = cwd / shlex.split(create)[shlex.split(create).index("-f") + 1]
    assert modelfile == out / "Modelfile"
    (source,) = [line.split(None, 1)[1] for line in modelfile.read_text().splitlines() if line.startswith("FROM ")]
    gguf_file = out / source
    assert gguf_file.is_file() and gguf_file.read_bytes()[:4] == b"GGUF"
    from transformers import AutoModelForCausalLM

    config = json.loads((cwd / "runs/gguf-form/config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf_file.name, n_positions=config["n_positions"])
    assert type(model).__name__ == "GPT2LMHeadModel"


@pytest.mark.slow
def test_use_your_model_llama_cpp_snippet_continues_the_prompt(gguf_export):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: .ci/run builds it from source before "
                        "the slow suite (cmake and a C++ compiler)")
    _, snippet = _gguf_blocks()
    printed = []
    exec(compile(snippet, "README.md (llama.cpp)", "exec"), {"__name__": "readme", "print": printed.append})
    assert isinstance(printed[-1], str) and len(printed[-1]) > 0, printed

