"""glibc's malloc defaults against llmkit's two settings (`keep_freed_memory` in llmkit/cli.py), on the speedrun
preset's model: page faults, time and peak memory of training steps and of evaluations, each variant in a fresh
process, the variants alternating.

Each process builds the preset's model (2 blocks of 192, 6 heads, rotary, QK-norm, no biases) and its optimizer
(Muon on the block matrices, AdamW on the rest, as llmkit builds them), then runs `--steps` training steps of
batch 12 x 64 under bf16 autocast (the default on a CPU with AMX; `--fp32` for none), then `--evals` passes over
1,767 blocks of 64 (the size of the play's validation split) in batches of 64 under inference mode. Tokens are
random draws from the play's 65 characters: what is measured is the allocations, not the learning. "glibc
defaults" is a process that never calls `keep_freed_memory`; "llmkit" calls it first, as every `llmkit` command
does. Reported per variant: the median over `--rounds` of seconds and minor page faults in each part, and the
largest peak resident memory.

    python benchmarks/cpu_malloc.py [--rounds 3] [--steps 100] [--evals 2] [--fp32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

VARIANTS = ("glibc defaults", "llmkit")
MODEL = dict(vocab_size=65, n_positions=64, n_layer=2, n_head=6, n_embd=192, position_embedding_type="rotary",
             qk_norm=True, zero_init_residual=True, bias=False)
MUON = dict(lr=0.03, momentum=0.9, weight_decay=0.0, nesterov=True, ns_steps=5, adjust_lr_fn="original",
            params=None)
BATCH, BLOCK, EVAL_BLOCKS, EVAL_BATCH = 12, 64, 1767, 64


def child(variant: str, steps: int, evals: int, bf16: bool) -> dict:
    if variant == "llmkit":
        from llmkit.cli import keep_freed_memory

        assert keep_freed_memory(), "keep_freed_memory() did nothing: not glibc, or the environment sets malloc"
    import contextlib
    import resource
    import time

    import torch

    from llmkit import build_model
    from llmkit.training.optim import MuonFactory

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def precision():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    torch.manual_seed(0)
    model = build_model("llmkit-gpt", **MODEL)
    opt = MuonFactory()(model, muon=MUON, lr=4e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, fused=True)
    batches = torch.randint(0, MODEL["vocab_size"], (steps, BATCH, BLOCK))  # (steps, B, T)
    val = torch.randint(0, MODEL["vocab_size"], (EVAL_BLOCKS, BLOCK))  # (blocks, T)
    out = {}
    model.train()
    f, t = faults(), time.perf_counter()
    for x in batches:
        with precision():
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    out["train_s"], out["train_faults"] = time.perf_counter() - t, faults() - f
    model.eval()
    f, t = faults(), time.perf_counter()
    with torch.inference_mode(), precision():
        for _ in range(evals):
            for x in val.split(EVAL_BATCH):
                model(input_ids=x, labels=x).loss.item()
    out["eval_s"], out["eval_faults"] = time.perf_counter() - t, faults() - f
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--evals", type=int, default=2)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.evals, not args.fp32)))
        return
    from llmkit.cli import glibc_malloc_at_defaults

    if not glibc_malloc_at_defaults():
        raise SystemExit("this compares glibc's malloc defaults with llmkit's settings: it needs glibc, and an "
                         "environment without MALLOC_* variables, GLIBC_TUNABLES or an allocator in LD_PRELOAD")
    runs = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--evals",
                   str(args.evals), *(["--fp32"] if args.fp32 else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(proc.stdout.splitlines()[-1]))
            print(f"round {r + 1}, {variant}: {runs[variant][-1]}", flush=True)
    rows = []
    for variant, results in runs.items():
        med = {k: statistics.median(x[k] for x in results) for k in results[0]}
        rows.append({"variant": variant, "train_s": round(med["train_s"], 3),
                     "ms_per_step": round(1000 * med["train_s"] / args.steps, 2),
                     "train_faults": int(med["train_faults"]), "eval_s": round(med["eval_s"], 3),
                     "eval_faults": int(med["eval_faults"]),
                     "max_rss_mb": round(max(x["max_rss_mb"] for x in results), 1)})
    base, kept = rows
    extra = {"runs": runs, "steps": args.steps, "evals": args.evals, "bf16": not args.fp32,
             "train_speedup": base["train_s"] / kept["train_s"], "eval_speedup": base["eval_s"] / kept["eval_s"]}
    from _common import report

    report("cpu_malloc", rows, extra)
    print(f"llmkit's settings: training {extra['train_speedup']:.2f}x, evaluation {extra['eval_speedup']:.2f}x the "
          f"speed of glibc's defaults; peak memory {kept['max_rss_mb']:.0f} against {base['max_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
