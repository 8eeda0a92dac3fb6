"""bf16 autocast or fp32 on this CPU, per architecture and model shape: the measurement behind llmkit's default
(`training/arguments.py: mixed_precision`, `cpu_bf16_pays`).

llmkit-gpt (4 layers, heads of 32 to 64, rotary positions; under CPU autocast its attention trains in fp32 below
1,024 tokens of context) and GPT-2's own code (`GPT2LMHeadModel`, bf16 attention) at a few of the same shapes: a
training step (forward, backward, fused AdamW), fp32 against bf16 autocast, alternating in this process; the
better of two medians of `--iters` steps after warm-up. llmkit-gpt's shapes come in two families: a BPE
vocabulary (2,048) on 8 x 256 tokens at widths 128 to 768, and a char vocabulary (68) on the nanoGPT CPU recipe's
12 x 64 and the speedrun's 24 x 64 tokens at widths 128 and 256, heads of 32 at widths 256 and 512, and at
width 128 with more tokens per step (the tiny preset's 32 x 128 with heads of 64, 16 x 128, 48 x 64). Where bf16
is not faster, llmkit trains in fp32 by default on CPUs (`mixed_precision`'s rule, which tells CPUs with AMX from
those with AVX512-BF16 alone: `results/cpu_precision.json` is the Intel Xeon's, `cpu_precision_amd.json` an AMD
EPYC's, measured there before llmkit-gpt's attention trained in fp32 under autocast).

    python benchmarks/cpu_precision.py [--iters 15]
"""

from __future__ import annotations

import argparse

import torch
from _common import report, time_it
from transformers import GPT2Config, GPT2LMHeadModel

from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM
from llmkit.training.arguments import cpu_bf16_pays, cpu_has_native_bf16

# (n_embd, n_head, vocab, batch, context)
SHAPES = [(128, 4, 2048, 8, 256), (256, 4, 2048, 8, 256), (384, 6, 2048, 8, 256), (512, 8, 2048, 8, 256),
          (768, 12, 2048, 8, 256), (128, 4, 68, 12, 64), (128, 4, 68, 24, 64), (256, 4, 68, 12, 64),
          (256, 4, 68, 24, 64), (256, 8, 68, 12, 64), (512, 16, 68, 12, 64),
          (128, 2, 68, 32, 128), (128, 4, 68, 16, 128), (128, 4, 68, 48, 64)]
GPT2_SHAPES = [(128, 4, 2048, 8, 256), (256, 4, 2048, 8, 256), (128, 4, 68, 12, 64), (128, 4, 68, 24, 64),
               (256, 4, 68, 12, 64), (128, 2, 68, 32, 128)]


def build(arch: str, width: int, heads: int, vocab: int, context: int):
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=context, n_embd=width, n_layer=4, n_head=heads))
    return LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=vocab, n_positions=context, n_embd=width, n_layer=4,
                                                n_head=heads, position_embedding_type="rotary"))


def step_fn(model, bf16: bool, vocab: int, batch: int, context: int):
    model.train()  # llmkit-gpt's fp32 attention under autocast follows the training mode
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, vocab, (batch, context))

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
    native = cpu_has_native_bf16()
    rows = []
    for arch, (width, heads, vocab, batch, context) in [*(("llmkit-gpt", s) for s in SHAPES),
                                                        *(("gpt2", s) for s in GPT2_SHAPES)]:
        torch.manual_seed(0)
        model = build(arch, width, heads, vocab, context)
        times = {}
        for _ in range(2):  # alternate, twice
            for bf16 in (False, True):
                t = time_it(step_fn(model, bf16, vocab, batch, context), warmup=3, iters=args.iters)
                times[bf16] = min(times.get(bf16, t), t)
        rows.append({"arch": arch, "n_embd": width, "n_head": heads, "head_dim": width // heads, "vocab": vocab,
                     "tokens": f"{batch}x{context}", "fp32_ms": 1000 * times[False], "bf16_ms": 1000 * times[True],
                     "bf16_speedup": times[False] / times[True],
                     "llmkit_default": "bf16" if cpu_bf16_pays(width, vocab, heads) else "fp32"})
        print(rows[-1], flush=True)
    report("cpu_precision", rows, {"native_bf16": native})


if __name__ == "__main__":
    main()
