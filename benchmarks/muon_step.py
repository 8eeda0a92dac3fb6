"""One Muon step: PyTorch's `torch.optim.Muon` (one matrix per Newton-Schulz call) against llmkit's `BatchedMuon`
(same-shaped matrices in one batched call, the same update), on the block matrices of the speedrun and quickstart
models, in this process, alternating, on random gradients. Also checks that both end on the same parameters.

    python benchmarks/muon_step.py [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import report

from llmkit.models.factory import build_model
from llmkit.training.optim import BatchedMuon, split_for_muon

SHAPES = {  # the block matrices of each model (embeddings and norms stay with AdamW)
    "speedrun / shakespeare-char (4 layers, 128 wide)": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=65),
    "quickstart (4 layers, 128 wide, BPE 2048)": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=2048),
    "small (6 layers, 384 wide)": dict(n_layer=6, n_head=6, n_embd=384, vocab_size=2048),
}


def timed(cls, params: list[torch.Tensor], grads: list[torch.Tensor], steps: int) -> tuple[list[float], list]:
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = cls(copies, lr=0.02, weight_decay=0.0)
    times = []
    for i in range(steps):
        for p, g in zip(copies, grads):
            p.grad = g
        start = time.perf_counter()
        opt.step()
        if i >= 5:  # warm-up
            times.append(time.perf_counter() - start)
    return times, copies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    rows = []
    for name, size in SHAPES.items():
        model = build_model("llmkit-gpt", n_positions=64, **size)
        params = [p for _, p in split_for_muon(model)[0]]
        torch.manual_seed(0)
        grads = [torch.randn_like(p) for p in params]
        results = {"torch": [], "batched": []}
        for _ in range(2):  # alternating: this machine's speed drifts
            t, ref = timed(torch.optim.Muon, params, grads, args.steps)
            results["torch"] += t
            t, ours = timed(BatchedMuon, params, grads, args.steps)
            results["batched"] += t
        same = all(torch.allclose(a, b) for a, b in zip(ref, ours))
        torch_ms, batched_ms = (1000 * statistics.median(results[k]) for k in ("torch", "batched"))
        rows.append({"model": name, "matrices": len(params), "torch.optim.Muon ms": torch_ms,
                     "BatchedMuon ms": batched_ms, "speed-up": torch_ms / batched_ms, "same parameters": same})
    report("muon_step", rows, {"steps": args.steps, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
