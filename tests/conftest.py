import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

# Offline and quiet by default: tests never reach the Hub and never pick up a user's token.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (the README's `-n 2`), the workers share the cores: each takes its share of threads, and so do the
# llmkit processes it starts (OMP_NUM_THREADS is inherited), instead of every one spinning on all of them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)

SHAKESPEARE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
SEEDS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "seeds"


REPO = pathlib.Path(__file__).resolve().parents[1]

# The README's test command runs two pytest-xdist workers, each taking whole files (`--dist loadfile
# --no-loadscope-reorder` in pyproject.toml) in collection order: the longest files are collected first, so that the
# short ones fill in at the end rather than one long file running alone (seconds on 2 cores, two workers: test_hub
# 300, test_readme 225, test_preference 140, then 120 to 65).
LONGEST_FILES = ("test_hub.py", "test_readme.py", "test_preference.py", "test_serve.py", "test_cli.py",
                 "test_reliability.py", "test_report.py", "test_finetune.py", "test_scaling.py", "test_instruct.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def fit_windows(model, ids: torch.Tensor, steps: int, batch: int, context: int, lr: float = 3e-3):
    """A few hundred AdamW steps on random windows of `ids` (seeded): a tiny model that has learned its text, in
    eval mode."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - context - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + context] for s in starts])
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def train_run(path: pathlib.Path, overrides: list[str]) -> pathlib.Path:
    """`llmkit train` in-process with these overrides (no config file), quietly, into `path`."""
    from llmkit.config import load_config
    from llmkit.training import train

    train(load_config(None, overrides), output_dir=str(path), log=lambda *a: None)
    return path


def subprocess_env() -> dict:
    """Environment for llmkit subprocesses: CPU only, offline, and this checkout's llmkit first on the path."""
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


STAND_IN_SPEAKERS = ("First Citizen", "MENENIUS", "ROMEO", "JULIET", "KING RICHARD III", "LADY ANNE", "GLOUCESTER",
                     "Second Servant", "DUKE VINCENTIO", "ISABELLA")
STAND_IN_CHARS = set("\n !$&',-.3:;?") | {chr(c) for c in range(65, 91)} | {chr(c) for c in range(97, 123)}


def stand_in_corpus(path: pathlib.Path, chars: int = 1_200_000) -> pathlib.Path:
    """A play-shaped text made from the built-in corpus (the standard library's docstrings): speakers' names in
    tinyshakespeare's layout, sentences kept to its 65 characters. Deterministic; used where
    ../shared/data/tinyshakespeare.txt is not beside the checkout, so every test runs on a fresh clone."""
    import re

    from llmkit.data.sources import builtin_documents

    out, size, turn = [], 0, 0
    for doc in builtin_documents():
        text = "".join(ch for ch in " ".join(doc.split()) if ch in STAND_IN_CHARS)
        sentences = [s.strip() for s in re.split(r"(?<=[.?!;:])\s+", text) if len(s.strip()) > 20]
        for i in range(0, len(sentences), 3):
            speech = "\n".join(sentences[i : i + 3])
            block = f"{STAND_IN_SPEAKERS[turn % len(STAND_IN_SPEAKERS)]}:\n{speech}\n\n"
            turn += 1
            out.append(block)
            size += len(block)
            if size >= chars:
                path.write_text("".join(out))
                return path
    path.write_text("".join(out))
    return path


@pytest.fixture(scope="session")
def shakespeare_path(tmp_path_factory) -> pathlib.Path:
    """tinyshakespeare where ../shared is beside this checkout, else a stand-in of the same shape that the tests make
    (`stand_in_corpus`): no test skips for want of data."""
    if SHAKESPEARE.exists() and not os.environ.get("LLMKIT_TEST_STAND_IN"):
        return SHAKESPEARE
    return stand_in_corpus(tmp_path_factory.mktemp("stand_in") / "shakespeare_stand_in.txt")


@pytest.fixture(scope="session")
def real_shakespeare() -> pathlib.Path:
    """tinyshakespeare itself, for the slow checks against nanoGPT's published figures on it."""
    if not SHAKESPEARE.exists():
        pytest.skip("compares with nanoGPT's figures on tinyshakespeare: ../shared/data/tinyshakespeare.txt is not here")
    return SHAKESPEARE


@pytest.fixture(scope="session")
def shakespeare_head(shakespeare_path, tmp_path_factory):
    """`shakespeare_head(chars)`: a file holding the first `chars` characters of tinyshakespeare (one per size)."""
    made: dict[int, pathlib.Path] = {}

    def make(chars: int) -> pathlib.Path:
        if chars not in made:
            made[chars] = tmp_path_factory.mktemp("corpus") / f"shakespeare_head_{chars}.txt"
            made[chars].write_text(shakespeare_path.read_text()[:chars])
        return made[chars]

    return make


def llmkit_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "llmkit.cli", *map(str, args)]


def llmkit_main(capfd, *args) -> tuple[int, str, str]:
    """`llmkit ARGS` in-process through `llmkit.cli.main`: (exit code, stdout, stderr), captured at the file
    descriptors so that anything a library prints counts. For what a command checks, decides and prints; the process
    itself (start-up, signals, the environment a launcher sets) is tested with `llmkit_cmd` subprocesses."""
    from llmkit.cli import main

    capfd.readouterr()  # what came before is not this command's
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own exit
        code = exit_.code
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def read_json(path: pathlib.Path):
    return json.loads(path.read_text())


def is_json(path: pathlib.Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def logged_steps(history: list[dict], key: str, after: int) -> dict[int, float]:
    return {h["step"]: h[key] for h in history if key in h and h["step"] > after}


def kill_and_resume(root: pathlib.Path, overrides: list[str], *, kill_after: int = 20, max_steps: int = 60) -> dict:
    """`llmkit train` SIGKILLed once a checkpoint at step >= `kill_after` is complete, then resumed with --resume,
    beside an uninterrupted run of the same config (started at the same time, sharing one data cache).
    Returns the two run folders, the step the resumed run continued from, and each run's stderr."""
    killed, straight = root / "killed", root / "straight"
    ref_log = (root / "straight.log").open("w")
    ref = subprocess.Popen(llmkit_cmd("train", *overrides, "--output-dir", straight), cwd=root, env=subprocess_env(),
                           stdout=subprocess.DEVNULL, stderr=ref_log)
    proc = subprocess.Popen(llmkit_cmd("train", *overrides, "--output-dir", killed), cwd=root, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while True:
            done = [p for p in killed.glob("checkpoint-*/trainer_state.json")
                    if int(p.parent.name.split("-")[1]) >= kill_after and is_json(p)]
            if done:
                break
            assert proc.poll() is None, f"training ended before a checkpoint at step >= {kill_after} appeared"
            assert time.monotonic() < deadline, f"no checkpoint at step >= {kill_after} within 300 s"
            time.sleep(0.01)
        assert proc.poll() is None, "training finished before it could be killed; make the run longer"
        proc.send_signal(signal.SIGKILL)
        ref.wait(timeout=600)
    finally:
        for p in (proc, ref):
            p.kill()
            p.wait()
        ref_log.close()
    assert ref.returncode == 0, (root / "straight.log").read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()  # killed before the end: no final model or adapter either
    assert not any((killed / name).exists() for name in ("model.safetensors", "adapter_model.safetensors"))
    from llmkit.training import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(killed)
    assert checkpoint is not None
    resumed_at = int(checkpoint.name.split("-")[1])
    assert kill_after <= resumed_at < max_steps
    started = time.time()
    res = subprocess.run(llmkit_cmd("train", *overrides, "--output-dir", killed, "--resume"), cwd=root,
                         env=subprocess_env(), capture_output=True, text=True, timeout=600)
    resume_wall = time.time() - started  # the resumed process, start to exit, timed from outside
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(killed=killed, straight=straight, resumed_at=resumed_at, resume_stderr=res.stderr,
                straight_stderr=(root / "straight.log").read_text(), resume_wall=resume_wall)


def assert_resumed_like_uninterrupted(run: dict, max_steps: int = 60, logging_steps: int = 5) -> None:
    """The resumed run logs the same losses, evaluations and learning rates as the uninterrupted one."""
    killed, straight, resumed_at = run["killed"], run["straight"], run["resumed_at"]
    m_res, m_ref = read_json(killed / "metrics.json"), read_json(straight / "metrics.json")
    assert m_res["global_step"] == m_ref["global_step"] == max_steps
    assert m_res["eval_loss"] == pytest.approx(m_ref["eval_loss"], rel=1e-5)
    h_res, h_ref = read_json(killed / "log_history.json"), read_json(straight / "log_history.json")
    losses_res, losses_ref = logged_steps(h_res, "loss", resumed_at), logged_steps(h_ref, "loss", resumed_at)
    assert sorted(losses_ref) == list(range(resumed_at + logging_steps, max_steps + 1, logging_steps))
    assert losses_res.keys() == losses_ref.keys()
    for step in losses_ref:
        assert losses_res[step] == pytest.approx(losses_ref[step], rel=1e-5), step
    assert logged_steps(h_res, "eval_loss", resumed_at) == pytest.approx(
        logged_steps(h_ref, "eval_loss", resumed_at), rel=1e-5)
    assert logged_steps(h_res, "learning_rate", resumed_at) == pytest.approx(
        logged_steps(h_ref, "learning_rate", resumed_at))


def chromium():
    """Debian's chromium and chromedriver (apt-get install chromium chromium-driver), driven by selenium; never a
    browser downloaded at run time."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install -y chromium "
                    "chromium-driver; .ci/run installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1100,800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)
