"""How fast the command line answers: `llmkit --help`, `llmkit generate RUN --help`, an argument error, a
mistyped setting in `llmkit train`, and a one-token `generate`, each a whole process, best of 5 (seconds).

    python benchmarks/startup.py [--repo PATH [--name NAME]]   (another llmkit checkout, e.g. an older commit)
Writes benchmarks/results/startup.json (or startup_NAME.json for another checkout, with that checkout's commit).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from _common import report

REPO = pathlib.Path(__file__).resolve().parents[1]


def best(cmd: list[str], env: dict, rounds: int = 5) -> float:
    """Best of `rounds` whole processes, run in the checkout being timed (`python -m` puts the working folder first
    on the path, ahead of PYTHONPATH)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def tiny_run(work: pathlib.Path, env: dict) -> pathlib.Path:
    import torch

    from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM
    from llmkit.tokenizers import train_tokenizer

    run = work / "run"
    tok = train_tokenizer("char", ["the quick brown fox jumps over the lazy dog\n" * 20])
    torch.manual_seed(0)
    LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2)
                         ).save_pretrained(run)
    tok.save_pretrained(run)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=pathlib.Path, default=REPO)
    parser.add_argument("--name", help="results file for another checkout: startup_NAME.json (default: its folder)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(args.repo), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-startup-"))
    run = tiny_run(work, env)
    cli = [sys.executable, "-m", "llmkit.cli"]
    rows = [
        {"command": "llmkit --help", "seconds": best([*cli, "--help"], env)},
        {"command": "llmkit generate RUN --help", "seconds": best([*cli, "generate", str(run), "--help"], env)},
        {"command": "llmkit generate RUN --max-new-tokens 0 (argument error)",
         "seconds": best([*cli, "generate", str(run), "--max-new-tokens", "0"], env)},
        {"command": "llmkit train configs/quickstart.yaml model.n_layers=2 (a mistyped setting)",
         "seconds": best([*cli, "train", str(args.repo / "configs" / "quickstart.yaml"), "model.n_layers=2"], env)},
        {"command": "llmkit generate RUN --prompt a --max-new-tokens 1",
         "seconds": best([*cli, "generate", str(run), "--prompt", "a", "--max-new-tokens", "1", "--device", "cpu"],
                         env)},
    ]
    name = "startup" if args.repo.resolve() == REPO else f"startup_{args.name or args.repo.name}"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.repo, capture_output=True, text=True).stdout.strip()
    report(name, rows, extra={"repo": str(args.repo), "repo_commit": commit or None})


if __name__ == "__main__":
    main()
