"""Quality bar: configs/shakespeare-char-cpu.yaml on tinyshakespeare, against nanoGPT's own loop, in one run.

Both use the same prepared tokens (llmkit's char tokenizer, the last 10% of the play as validation) and are
scored by the same evaluator (mean next-token loss over the whole validation split, in blocks of 64), so the
validation losses compare directly; nanoGPT's printed figure (1.886 on this machine) is an estimate from 20
random batches. The reference is nanoGPT's train.py loop for the recipe (random windows, AdamW with decay on
matrices only, warmup + cosine to 1e-4, clipping at 1.0, bias=False, fp32, plain AdamW as nanoGPT uses on
CPU). It runs before and after llmkit, and llmkit's throughput is compared with the mean of the two, since
this machine's speed drifts over minutes. llmkit runs twice, each time `llmkit train` itself (Trainer,
evaluation, checkpoints and all): the preset as shipped (rotary positions, bf16 autocast where the CPU has
it) and nanoGPT's exact model (learned positions, fp32).

    python benchmarks/shakespeare_cpu.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import shutil
import tempfile
import time

import numpy as np
import torch
from _common import SHAKESPEARE, NanoGPT, report
from torch.nn import functional as F

from llmkit.config import load_config
from llmkit.data import prepare_data
from llmkit.training import train, training_arguments

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shakespeare-char-cpu.yaml"
T, B = 64, 12


@torch.no_grad()
def val_loss(model, val: np.ndarray) -> float:
    """Mean loss over every validation token, blocks of T inputs with their T next tokens (as the Trainer)."""
    model.eval()
    n = (len(val) - 1) // T
    blocks = torch.from_numpy(np.stack([val[i * T : i * T + T + 1] for i in range(n)]).astype(np.int64))
    total = 0.0
    for chunk in blocks.split(64):
        logits, _ = model(chunk[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
    model.train()
    return total / (n * T)


def nanogpt_recipe(train_tokens: np.ndarray, val: np.ndarray, vocab: int, steps: int) -> dict:
    """nanoGPT train.py with the CPU recipe's settings; returns tokens/s over the training steps and val loss."""
    torch.manual_seed(1337)
    model = NanoGPT(vocab, T, 4, 4, 128, bias=False)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))
    data = torch.from_numpy(train_tokens.astype(np.int64))

    def lr_at(it: int) -> float:  # nanoGPT's get_lr: linear warmup, cosine down to min_lr at lr_decay_iters
        if it < 100:
            return 1e-3 * (it + 1) / 101
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - 100) / (steps - 100)))
        return 1e-4 + coeff * (1e-3 - 1e-4)

    start = time.perf_counter()
    for it in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([data[i : i + T] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + T] for i in ix])
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "train_tokens_per_s": steps * B * T / wall, "val_loss": val_loss(model, val)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} not found: this benchmark needs ../shared beside the checkout")
    out = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-bench-"))
    base = [f"data.source={SHAKESPEARE}", f"data.cache_dir={out / 'cache'}", f"training.max_steps={args.steps}",
            "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=0"]
    cfg = load_config(CONFIG, base)
    data = prepare_data(cfg, log=lambda *a: None)
    train_tokens, val = np.asarray(data.train), np.asarray(data.val)
    runs = {"nanoGPT train.py loop (reference, fp32)": nanogpt_recipe(train_tokens, val, len(data.tokenizer), args.steps)}
    variants = {
        "llmkit train shakespeare-char-cpu (preset)": [],
        "llmkit, nanoGPT's model (learned positions, fp32)": ["model.position_embedding_type=learned",
                                                               "training.bf16=false"],
    }
    for name, overrides in variants.items():
        run_cfg = load_config(CONFIG, base + overrides)
        start = time.perf_counter()
        metrics = train(run_cfg, output_dir=str(out / "run"), log=lambda *a: None)
        runs[name] = {"wall_s": time.perf_counter() - start, "steps": metrics["global_step"],
                      "train_tokens_per_s": metrics["train_tokens_per_second"], "val_loss": metrics["eval_loss"],
                      "bf16": bool(training_arguments(run_cfg).bf16)}
        shutil.rmtree(out / "run")
    runs["nanoGPT train.py loop (again, for drift)"] = nanogpt_recipe(train_tokens, val, len(data.tokenizer), args.steps)
    shutil.rmtree(out, ignore_errors=True)

    rows = [{"run": name, "steps": r.get("steps", args.steps), "wall_s": r["wall_s"],
             "train_tokens_per_s": r["train_tokens_per_s"], "val_loss": r["val_loss"]} for name, r in runs.items()]
    reference = float(np.mean([r["train_tokens_per_s"] for name, r in runs.items() if name.startswith("nanoGPT")]))
    ratios = {name: r["train_tokens_per_s"] / reference for name, r in runs.items() if name.startswith("llmkit")}
    preset = runs["llmkit train shakespeare-char-cpu (preset)"]
    print("wall_s: llmkit's includes data loading, 4 evaluations and checkpoints; nanoGPT's its training loop only")
    for name, ratio in ratios.items():
        print(f"throughput {name} / nanoGPT (mean of both runs): {ratio:.2f}x")
    print(f"val loss: preset {preset['val_loss']:.4f} (bf16: {preset['bf16']}), bar <= 1.89")
    report("shakespeare_cpu", rows, {"throughput_ratios": ratios, "nanoGPT_tokens_per_s_mean": reference,
                                     "preset_bf16": preset["bf16"], "bar_val_loss": 1.89})


if __name__ == "__main__":
    main()
