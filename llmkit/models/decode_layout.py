"""Faster token-by-token decoding on x86 CPUs: linear weights stored (in, out) while llmkit-gpt generates.

Decoding one token multiplies a single row by every weight matrix, so each weight is read from memory once
per token. With MKL, PyTorch's x86 CPU BLAS, that one-row product over nn.Linear's (out, in) storage (x·Wᵀ)
is slower than over the same matrix stored (in, out) (x·W, GPT-2's Conv1D layout) once the weights no longer
fit in cache; end to end it pays at 6/6/384 and is about even at 4/4/128 (benchmarks/generation.py, README). While the context manager is open, each fp32 CPU `nn.Linear` weight holds a
transposed-contiguous copy: same values, same shape, other strides, so every module and library sees an
ordinary nn.Linear. The originals come back when the last generate() on the model ends (saving needs them).
Costs: the Linear weights are held twice for the duration, and another thread touching the parameters
during generate() sees (and would write into) the copies.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import nn

_lock = threading.Lock()  # guards the per-model depth and swap list (generate() may run in several threads)


@contextlib.contextmanager
def cpu_decode_layout(model: nn.Module):
    # measured with MKL only; other BLAS libraries may prefer (out, in). One-row products run on MKL even where
    # onednn.py is on (it takes products of several rows, which it multiplies as fast over either storage)
    if not torch.backends.mkl.is_available():
        yield model
        return
    with _lock:
        depth = getattr(model, "_decode_layout_depth", 0)
        if depth == 0:
            model._decode_layout_swapped = []
        model._decode_layout_depth = depth + 1
        try:
            if depth == 0:
                _swap(model, model._decode_layout_swapped)
        except BaseException:
            _restore(model)
            raise
    try:
        yield model
    finally:
        with _lock:
            _restore(model)


def keep_cpu_decode_layout(model: nn.Module) -> None:
    """The (in, out) layout for good, without the originals: for a process that only generates (`llmkit serve`'s
    model process), which then pays the copy once instead of at every generate() call, and holds each weight once.
    Such a model cannot be saved (safetensors takes contiguous tensors only). Each generate() then swaps nothing."""
    if not torch.backends.mkl.is_available():
        return
    with _lock:
        if getattr(model, "_decode_layout_depth", 0) == 0:
            _swap(model, [])  # the originals are not kept


def _swap(model: nn.Module, swapped: list) -> None:
    seen: set[int] = set()  # a tied lm_head shares its Parameter with the embedding: swap it once
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear) or id(module.weight) in seen:
                continue
            weight = module.weight
            seen.add(id(weight))
            data = weight.data
            # a plain fp32 CPU matrix only (not meta, offloaded, sharded or quantized storage)
            if type(data) is not torch.Tensor or data.device.type != "cpu" or data.dtype != torch.float32:
                continue
            if not data.is_contiguous():  # already swapped by an earlier level, or laid out by someone else
                continue
            weight.data = data.t().contiguous().t()
            swapped.append((weight, data))  # recorded at once, so a failure further on still restores it


def _restore(model: nn.Module) -> None:
    """Leave one level; the last one out puts every original storage back."""
    model._decode_layout_depth -= 1
    if model._decode_layout_depth == 0:
        for weight, original in model._decode_layout_swapped:
            weight.data = original
        model._decode_layout_swapped = []
