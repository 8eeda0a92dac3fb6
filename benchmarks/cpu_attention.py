"""PyTorch's CPU attention (`scaled_dot_product_attention`, causal) in fp32 against bf16, forward and backward
together and forward alone, per shape (batch, heads, context, head size): the measurement behind
llmkit-gpt's `CPU_FP32_ATTENTION_BELOW` (under CPU bf16 autocast, training computes attention in fp32 below that
context, where the bf16 backward is the slower one; without gradients the bf16 forward is kept).

Shapes: the speedrun's and the CPU recipe's (12 x 4 heads x 64 x 32), the quickstart's (16 x 4 x 128 x 32), and
longer contexts with heads of 32 and 64 up to GPT-2's 1,024. Median of `--iters` calls after warm-up.

    python benchmarks/cpu_attention.py [--iters 20]
"""

from __future__ import annotations

import argparse

import torch
from _common import report, time_it
from torch.nn import functional as F

from llmkit.models.modeling_llmkit_gpt import CPU_FP32_ATTENTION_BELOW

# (batch, heads, context, head size)
SHAPES = [(12, 4, 64, 32), (16, 4, 128, 32), (8, 4, 256, 32), (4, 4, 512, 32), (2, 4, 1024, 32),
          (8, 6, 256, 64), (4, 12, 256, 64), (4, 8, 512, 64), (2, 12, 512, 64), (2, 12, 1024, 64)]


def calls(shape: tuple, dtype: torch.dtype):
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(*shape, dtype=dtype)

    def train():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

    def infer():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return train, infer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for shape in SHAPES:
        ms = {}
        for dtype in (torch.float32, torch.bfloat16):
            train, infer = calls(shape, dtype)
            ms[dtype] = tuple(1000 * time_it(fn, warmup=3, iters=args.iters) for fn in (train, infer))
        (fp32_train, fp32_fwd), (bf16_train, bf16_fwd) = ms[torch.float32], ms[torch.bfloat16]
        rows.append({"batch x heads x context x head": "x".join(map(str, shape)),
                     "fp32 fwd+bwd ms": fp32_train, "bf16 fwd+bwd ms": bf16_train,
                     "bf16/fp32 fwd+bwd": bf16_train / fp32_train,
                     "fp32 fwd ms": fp32_fwd, "bf16 fwd ms": bf16_fwd, "bf16/fp32 fwd": bf16_fwd / fp32_fwd,
                     "llmkit trains in": "fp32" if shape[2] < CPU_FP32_ATTENTION_BELOW else "bf16"})
    report("cpu_attention", rows, {"iters": args.iters, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
