"""One Muon step: PyTorch's `torch.optim.Muon` (one matrix per Newton-Schulz call) against llmkit's `BatchedMuon`
(many matrices in one batched call, the same update), on the block matrices of the speedrun, quickstart and
small models, in this process, alternating, on random gradients. `BatchedMuon` twice: with one batch per shape
(`PAD_BELOW = 0`), and as it runs (matrices sharing their short side padded to one batch while that batch is
small). Also checks that all end on the same parameters.

    python benchmarks/muon_step.py [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import report

from llmkit.models.factory import build_model
from llmkit.training import optim
from llmkit.training.optim import BatchedMuon, split_for_muon

SHAPES = {  # the block matrices of each model (embeddings and norms stay with AdamW)
    "speedrun (2 layers, 192 wide)": dict(n_layer=2, n_head=6, n_embd=192, vocab_size=65),
    "shakespeare-char (4 layers, 128 wide)": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=65),
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
        results = {"torch": [], "per shape": [], "batched": []}
        pad_below = optim.PAD_BELOW
        for _ in range(2):  # alternating: this machine's speed drifts
            t, ref = timed(torch.optim.Muon, params, grads, args.steps)
            results["torch"] += t
            optim.PAD_BELOW = 0
            t, per_shape = timed(BatchedMuon, params, grads, args.steps)
            results["per shape"] += t
            optim.PAD_BELOW = pad_below
            t, ours = timed(BatchedMuon, params, grads, args.steps)
            results["batched"] += t
        same = all(torch.allclose(a, b) and torch.allclose(a, c) for a, b, c in zip(ref, ours, per_shape))
        torch_ms, per_shape_ms, batched_ms = (1000 * statistics.median(results[k])
                                              for k in ("torch", "per shape", "batched"))
        rows.append({"model": name, "matrices": len(params), "batches": len(optim._ns_batches(params)),
                     "torch.optim.Muon ms": torch_ms, "BatchedMuon, a batch per shape ms": per_shape_ms,
                     "BatchedMuon ms": batched_ms, "speed-up": torch_ms / batched_ms, "same parameters": same})
    report("muon_step", rows, {"steps": args.steps, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
