"""Faster token-by-token decoding on CPU: linear weights stored (in, out) while a model generates.

Decoding one token multiplies a single row by every weight matrix, so each weight is read from memory once
per token. With MKL, PyTorch's CPU BLAS, that one-row product over nn.Linear's (out, in) storage (x·Wᵀ) runs
1.2-1.5x slower than over the same matrix stored (in, out) (x·W, GPT-2's Conv1D layout) once the weights no
longer fit in cache (measured in benchmarks/generation.py). While the context manager is open, each fp32 CPU
`nn.Linear` weight holds a transposed-contiguous copy: same values, same shape, other strides, so every module
and library sees an ordinary nn.Linear. The original storage is put back afterwards (saving needs contiguous
weights); the copy costs one pass over the weights and their size in memory for the duration.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def cpu_decode_layout(model: nn.Module):
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    seen: set[int] = set()  # a tied lm_head shares its Parameter with the embedding: swap it once
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(module, nn.Linear) or id(weight) in seen:
                continue
            seen.add(id(weight))
            # already swapped (a nested or concurrent call) or not a plain fp32 CPU matrix: leave it alone
            if weight.device.type != "cpu" or weight.dtype != torch.float32 or not weight.is_contiguous():
                continue
            if type(weight.data) is not torch.Tensor:  # sharded (DTensor) or quantized storage
                continue
            original = weight.data
            weight.data = original.t().contiguous().t()
            swapped.append((weight, original))
    try:
        yield model
    finally:
        for weight, original in swapped:
            weight.data = original
