"""Training-step speed: llmkit-gpt vs stock GPT2LMHeadModel vs plain-PyTorch nanoGPT, in one run.

Shape: nanoGPT's CPU recipe (vocab 65, block 64, batch 12, 4 layers, 4 heads, 128 wide). One step is forward,
backward and an AdamW update. Prints ms/step and tokens/s and writes benchmarks/results/model_step.json.

    python benchmarks/model_step.py [--iters 60] [--compile] [--bf16]
"""

from __future__ import annotations

import argparse

import torch
from _common import NanoGPT, report, time_it

from llmkit import build_model

SHAPE = dict(vocab_size=65, n_positions=64, n_layer=4, n_head=4, n_embd=128)
BATCH = 12


def make_step(model, fused: bool, hf: bool, bf16: bool = False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=fused, foreach=None if fused else True)
    x = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["n_positions"] + 1))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(inputs, labels=inputs, shift_labels=targets).loss if hf else model(inputs, targets)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd llmkit-gpt")
    parser.add_argument("--bf16", action="store_true", help="also time llmkit-gpt under bf16 autocast")
    args = parser.parse_args()
    torch.manual_seed(0)

    candidates = [  # name, model factory, HF-style call, fused AdamW, bf16 autocast
        ("nanoGPT (plain PyTorch)", lambda: NanoGPT(SHAPE["vocab_size"], SHAPE["n_positions"], 4, 4, 128), False, False, False),
        ("GPT2LMHeadModel (gelu_new)", lambda: build_model("gpt2", **SHAPE), True, False, False),
        ("llmkit-gpt", lambda: build_model("llmkit-gpt", **SHAPE), True, False, False),
        ("llmkit-gpt + fused AdamW", lambda: build_model("llmkit-gpt", **SHAPE), True, True, False),
        ("llmkit-gpt rotary + fused AdamW", lambda: build_model("llmkit-gpt", position_embedding_type="rotary", **SHAPE), True, True, False),
        ("nanoGPT + fused AdamW", lambda: NanoGPT(SHAPE["vocab_size"], SHAPE["n_positions"], 4, 4, 128), False, True, False),
    ]
    if args.compile:
        compiled = ("llmkit-gpt + compile + fused", lambda: torch.compile(build_model("llmkit-gpt", **SHAPE)), True, True, False)
        candidates.append(compiled)
    if args.bf16:
        candidates.append(("llmkit-gpt + bf16 autocast + fused", lambda: build_model("llmkit-gpt", **SHAPE), True, True, True))

    rows = []
    tokens = BATCH * SHAPE["n_positions"]
    # Interleave rounds so that machine noise hits every candidate alike.
    steps = {name: make_step(factory().train(), fused, hf, bf16) for name, factory, hf, fused, bf16 in candidates}
    results = {name: [] for name in steps}
    for _ in range(3):
        for name, step in steps.items():
            results[name].append(time_it(step, warmup=5, iters=args.iters // 3))
    base = min(results["nanoGPT (plain PyTorch)"])
    for name, times in results.items():
        ms = min(times) * 1000
        rows.append({"model": name, "ms_per_step": ms, "tokens_per_s": int(tokens / (ms / 1000)),
                     "vs_nanoGPT": base * 1000 / ms})
    report("model_step", rows, {"shape": SHAPE, "batch": BATCH, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
