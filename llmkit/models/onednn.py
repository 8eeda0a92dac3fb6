"""Linear layers through oneDNN on CPUs where PyTorch's BLAS is the slow path (MKL on AMD processors).

PyTorch multiplies fp32 matrices on x86 CPUs with MKL, which runs a generic code path on non-Intel processors.
PyTorch also ships oneDNN (its `mkldnn` backend), which uses the processor's vector units whatever the vendor:
`torch.ops.mkldnn._linear_pointwise` computes `x @ W.T + b` directly on ordinary (strided) tensors. On the AMD
EPYC this project is measured on, it multiplies fp32 matrices two to four times as fast as MKL from a few rows up:
a training step's products, a prompt's, batched decoding's (benchmarks/finetune.py, benchmarks/model_step.py).
A single row (decoding one sequence) is the exception: MKL's matrix-vector product has less fixed cost per call
than oneDNN's (about 5 against 25 microseconds at width 128), so one-row products stay on `F.linear`
(benchmarks/generation.py).

Design choices:
- llmkit-gpt's layers are `Linear`, an `nn.Linear` subclass (same parameters, state dict and `isinstance`, so
  peft, conversions and saving see an ordinary nn.Linear) whose forward calls `linear`.
- `linear` takes the oneDNN path only for fp32 CPU tensors of more than one row, outside autocast (bf16 autocast
  already runs on oneDNN) and outside `torch.compile` (inductor picks its own kernels); everything else is
  `F.linear`.
- The backward is oneDNN products too: the input's gradient `g @ W` and the weight's `g.T @ x`, each only when
  needed (a frozen base weight under LoRA costs no weight gradient).
- Where: `LLMKIT_CPU_MATMUL=auto` (default) uses it on x86-64 processors that are not Intel's, where MKL is slow;
  `onednn` forces it wherever PyTorch has oneDNN, `blas` turns it off.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
from torch import nn
from torch.nn import functional as F


@functools.cache
def enabled() -> bool:
    choice = os.environ.get("LLMKIT_CPU_MATMUL", "auto").lower()
    if choice not in ("auto", "onednn", "blas"):
        raise ValueError(f"LLMKIT_CPU_MATMUL={choice!r} is unknown; use auto, onednn or blas")
    available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if choice == "blas" or not available:
        return False
    if choice == "onednn":
        return True
    return platform.machine().lower() in ("x86_64", "amd64") and _cpu_vendor() not in ("GenuineIntel", "")


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b_t.T (+ bias) on oneDNN; any strides."""
    # private to torch: listed and checked in llmkit/compat.py; called here directly because this file travels
    # with exported modeling code (`llmkit export --to code`), where llmkit is not installed
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)  # (..., out)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g = grad.reshape(-1, grad.shape[-1])  # (N, out)
        if ctx.needs_input_grad[0]:
            grad_x = _mm(g, weight.t()).view(*grad.shape[:-1], weight.shape[1])  # g @ W: (..., in)
        if ctx.needs_input_grad[1]:
            grad_w = _mm(g.t(), x.reshape(-1, x.shape[-1]).t())  # g.T @ x: (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # inductor picks its own kernels (and the checks below are not traceable)
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.numel() > x.shape[-1] and enabled() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, on oneDNN where that is the fast path (see the module docstring)."""
    if applies(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` whose product runs on oneDNN where that is the fast path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
