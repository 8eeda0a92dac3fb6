"""Generation speed: llmkit-gpt with and without the KV cache vs the seeds' crop-and-recompute loop vs GPT-2.

Shape: nanoGPT's CPU model (vocab 65, 4 layers, 4 heads, 128 wide) with a 1024-token context. Each candidate
generates 512 new tokens greedily from a 1-token prompt. Prints ms per run and tokens/s, the ratios of the
cached llmkit-gpt to GPT2LMHeadModel and to the recompute loop, and writes benchmarks/results/generation.json.

    python benchmarks/generation.py [--iters 5] [--new-tokens 512]
"""

from __future__ import annotations

import argparse

import torch
from _common import NanoGPT, report, time_it

from llmkit import build_model

SHAPE = dict(vocab_size=65, n_positions=1024, n_layer=4, n_head=4, n_embd=128)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5, help="interleaved rounds (the best of each is kept)")
    parser.add_argument("--new-tokens", type=int, default=512)
    args = parser.parse_args()
    n = args.new_tokens
    torch.manual_seed(0)
    prompt = torch.zeros((1, 1), dtype=torch.long)
    hf = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)

    llmkit_gpt = build_model("llmkit-gpt", **SHAPE).eval()
    gpt2 = build_model("gpt2", **SHAPE).eval()
    nano = NanoGPT(SHAPE["vocab_size"], SHAPE["n_positions"], SHAPE["n_layer"], SHAPE["n_head"],
                   SHAPE["n_embd"]).eval()

    candidates = {
        "llmkit-gpt + KV cache": lambda: llmkit_gpt.generate(prompt, use_cache=True, **hf),
        "llmkit-gpt, no cache": lambda: llmkit_gpt.generate(prompt, use_cache=False, **hf),
        "nanoGPT crop-and-recompute": lambda: nano.generate_recompute(prompt, n),
        "GPT2LMHeadModel + KV cache": lambda: gpt2.generate(prompt, use_cache=True, **hf),
    }
    for name, fn in candidates.items():  # every candidate really produces n new tokens
        with torch.no_grad():
            assert fn().shape[1] == 1 + n, name

    # Interleave rounds so that machine noise hits every candidate alike; keep each one's best round.
    times = {name: float("inf") for name in candidates}
    with torch.no_grad():
        for _ in range(args.iters):
            for name, fn in candidates.items():
                times[name] = min(times[name], time_it(fn, warmup=0, iters=1))
    rows = [{"model": name, "ms": t * 1000, "tokens_per_s": n / t} for name, t in times.items()]
    cached = times["llmkit-gpt + KV cache"]
    ratios = {
        "cached_vs_gpt2_speedup": times["GPT2LMHeadModel + KV cache"] / cached,
        "cached_vs_recompute_speedup": times["nanoGPT crop-and-recompute"] / cached,
        "cached_vs_no_cache_speedup": times["llmkit-gpt, no cache"] / cached,
    }
    report("generation", rows, {"shape": SHAPE, "new_tokens": n, "prompt_tokens": 1, "iters": args.iters,
                                "threads": torch.get_num_threads(), **ratios})
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")


if __name__ == "__main__":
    main()
