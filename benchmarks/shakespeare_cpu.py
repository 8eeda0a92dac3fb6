"""Quality bar: configs/shakespeare-char-cpu.yaml on tinyshakespeare, against nanoGPT's plain loop, in one run.

Runs `llmkit train` (Trainer, evaluation, checkpoints and all) for the recipe's 2000 steps and reports wall time,
training tokens/s and the final validation loss; then times nanoGPT's plain PyTorch loop (same shape, batch,
AdamW) for `--baseline-steps` steps to give the throughput ratio on this machine, now.

    python benchmarks/shakespeare_cpu.py [--steps 2000] [--baseline-steps 300]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
import time

import numpy as np
import torch
from _common import SHAKESPEARE, NanoGPT, report

from llmkit.config import load_config
from llmkit.train import train

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shakespeare-char-cpu.yaml"


def nanogpt_tokens_per_s(steps: int) -> float:
    text = SHAKESPEARE.read_text()
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text[: len(text) * 9 // 10]], dtype=np.int64)
    torch.manual_seed(1337)
    model = NanoGPT(len(chars), 64, 4, 4, 128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, fused=True)
    data_t = torch.from_numpy(data)
    start = None
    for step in range(steps + 10):
        if step == 10:
            start = time.perf_counter()
        ix = torch.randint(len(data_t) - 64, (12,))
        x = torch.stack([data_t[i : i + 64] for i in ix])
        y = torch.stack([data_t[i + 1 : i + 65] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return steps * 12 * 64 / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--baseline-steps", type=int, default=300)
    args = parser.parse_args()
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} not found: this benchmark needs ../shared beside the checkout")
    out = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-bench-"))
    cfg = load_config(CONFIG, [
        f"data.source={SHAKESPEARE}", f"data.cache_dir={out / 'cache'}", f"training.max_steps={args.steps}",
        "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=0",
    ])
    start = time.perf_counter()
    metrics = train(cfg, output_dir=str(out / "run"), log=lambda *a: None)
    wall = time.perf_counter() - start
    baseline = nanogpt_tokens_per_s(args.baseline_steps)
    shutil.rmtree(out, ignore_errors=True)
    rows = [
        {"run": "llmkit train shakespeare-char-cpu", "steps": metrics["global_step"], "wall_s": wall,
         "train_tokens_per_s": metrics["train_tokens_per_second"], "val_loss": metrics["eval_loss"]},
        {"run": "nanoGPT plain loop (throughput only)", "steps": args.baseline_steps, "wall_s": float("nan"),
         "train_tokens_per_s": baseline, "val_loss": float("nan")},
    ]
    ratio = metrics["train_tokens_per_second"] / baseline
    print(f"llmkit / nanoGPT throughput: {ratio:.2f}x; target val loss <= 1.89 (nanoGPT: 1.886 at step 2000)")
    report("shakespeare_cpu", rows, {"throughput_ratio": ratio, "nanogpt_reference_val_loss": 1.886})


if __name__ == "__main__":
    main()
