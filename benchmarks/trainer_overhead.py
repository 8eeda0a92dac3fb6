"""The Trainer's own cost per step at a small shape: llmkit's training loop (transformers.Trainer with llmkit's
callbacks and guards) against a plain PyTorch loop over the same model, data, optimizer and precision.

The model is configs/shakespeare-char-cpu.yaml's (4/4/128, rotary, no biases), batch 12 x 64 = 768 tokens per step,
fused AdamW, clipping at 1.0, fp32. Both loops run `--steps` steps, alternating, twice each, in this process; the
figure is the median ms/step of the timed steps (the first 20 steps of each run are warm-up). The llmkit runs have
evaluation and checkpoints off, so what differs is the Trainer's per-step work: the dataloader and collator,
callbacks, logging, the non-finite guards and the gradient-norm read.

    python benchmarks/trainer_overhead.py [--steps 300]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import numpy as np
import torch
from _common import SHAKESPEARE, report
from transformers import TrainerCallback

from llmkit.config import load_config
from llmkit.data import prepare_data
from llmkit.loading import model_from_config
from llmkit.training import train

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shakespeare-char-cpu.yaml"
B, T, WARMUP = 12, 64, 20


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self.last = None

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def plain_loop(cfg, tokenizer, train_tokens: np.ndarray, steps: int) -> list[float]:
    torch.manual_seed(0)
    model = model_from_config(cfg.model, tokenizer)
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99), fused=True)
    data = torch.from_numpy(train_tokens.astype(np.int64))
    times, last = [], None
    for _ in range(steps):
        ix = torch.randint(len(data) - T - 1, (B,))
        x = torch.stack([data[i : i + T] for i in ix])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        now = time.perf_counter()
        if last is not None:
            times.append(now - last)
        last = now
    return times


def trainer_loop(overrides: list[str], steps: int, out: pathlib.Path) -> list[float]:
    timer = StepTimer()
    cfg = load_config(CONFIG, [*overrides, f"training.max_steps={steps}"])
    train(cfg, output_dir=str(out), log=lambda *a: None, callbacks=[timer])
    return timer.times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} not found: this benchmark needs ../shared beside the checkout")
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-overhead-"))
    overrides = [f"data.source={SHAKESPEARE}", f"data.cache_dir={work / 'cache'}", "training.bf16=false",
                 "training.eval_strategy=no", "training.save_strategy=no", "training.load_best_model_at_end=false",
                 "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=0"]
    cfg = load_config(CONFIG, overrides)
    data = prepare_data(cfg, log=lambda *a: None)
    train_tokens = np.asarray(data.train)
    results: dict[str, list[float]] = {"plain PyTorch loop": [], "llmkit train (Trainer)": []}
    for round_ in range(2):
        results["plain PyTorch loop"] += plain_loop(cfg, data.tokenizer, train_tokens, args.steps)[WARMUP:]
        results["llmkit train (Trainer)"] += trainer_loop(overrides, args.steps, work / f"run{round_}")[WARMUP:]
    base = statistics.median(results["plain PyTorch loop"])
    rows = [{"loop": name, "ms_per_step": 1000 * statistics.median(t), "overhead_ms": 1000 * (statistics.median(t) - base),
             "vs_plain": statistics.median(t) / base} for name, t in results.items()]
    report("trainer_overhead", rows, {"steps": args.steps, "batch": [B, T]})


if __name__ == "__main__":
    main()
