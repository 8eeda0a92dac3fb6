"""Data parallelism on CPU cores: training tokens/s of 1 process (all cores) and 2 processes (gloo, one core each).

The nanoGPT CPU recipe's shape (configs/shakespeare-char-cpu.yaml, fp32), 200 steps of 12 x 64 tokens per
process, launched the way the README shows (`accelerate launch` with ACCELERATE_USE_CPU for 2 processes).
Tokens/s is the run's own figure (training steps only, all processes together).

    python benchmarks/scaling.py [--steps 200]
Writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile

from _common import SHAKESPEARE, report

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-scaling-bench-"))
    common = [str(REPO / "configs/shakespeare-char-cpu.yaml"), f"data.source={SHAKESPEARE}",
              f"data.cache_dir={work / 'cache'}", f"training.max_steps={args.steps}", "training.bf16=false",
              "training.eval_strategy=no", "training.load_best_model_at_end=false", "training.save_strategy=no",
              "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=0"]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    rows = []
    for processes in (1, 2):
        out = work / f"p{processes}"
        if processes == 1:
            cmd = [sys.executable, "-m", "llmkit.cli", "train", *common, "--output-dir", str(out)]
            run_env = env
        else:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "configs/accelerate/ddp-cpu.yaml"), "--num_processes", "2", "--main_process_port",
                   str(free_port()), "-m", "llmkit.cli", "train", *common, "--output-dir", str(out)]
            run_env = dict(env, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
        subprocess.run(cmd, env=run_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append({"processes": processes, "threads_each": 2 if processes == 1 else 1,
                     "tokens_per_step": 12 * 64 * processes, "tokens_per_s": round(metrics["train_tokens_per_second"]),
                     "train_loss": metrics["train_loss"]})
    for r in rows:
        r["vs_1_process"] = f"{r['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x"
    report("scaling", rows, extra={"steps": args.steps})


if __name__ == "__main__":
    main()
