"""bf16 autocast or fp32 on this CPU, per model width: the measurement behind llmkit's default
(`training/arguments.py: mixed_precision`, `CPU_BF16_MIN_WIDTH`).

llmkit-gpt (4 layers, heads of 32 to 64, rotary positions) at widths 128 to 768, a training step (forward,
backward, fused AdamW) on 8 x 256 tokens, fp32 against bf16 autocast, alternating in this process; median of
`--iters` steps after warm-up. Where bf16 is not faster, llmkit trains in fp32 by default on CPUs.

    python benchmarks/cpu_precision.py [--iters 15]
"""

from __future__ import annotations

import argparse

import torch
from _common import report, time_it

from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM

WIDTHS = [(128, 4), (256, 4), (384, 6), (512, 8), (768, 12)]
BATCH, CONTEXT, VOCAB = 8, 256, 2048


def step_fn(model, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, VOCAB, (BATCH, CONTEXT))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=15)
    args = parser.parse_args()
    native = any(getattr(torch.cpu, n, lambda: False)() for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    rows = []
    for width, heads in WIDTHS:
        torch.manual_seed(0)
        model = LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=width, n_layer=4,
                                                     n_head=heads, position_embedding_type="rotary"))
        times = {}
        for _ in range(2):  # alternate, twice
            for bf16 in (False, True):
                t = time_it(step_fn(model, bf16), warmup=3, iters=args.iters)
                times[bf16] = min(times.get(bf16, t), t)
        rows.append({"n_embd": width, "n_head": heads, "fp32_ms": 1000 * times[False], "bf16_ms": 1000 * times[True],
                     "bf16_speedup": times[False] / times[True]})
        print(rows[-1], flush=True)
    report("cpu_precision", rows, {"batch": [BATCH, CONTEXT], "native_bf16": native})


if __name__ == "__main__":
    main()
