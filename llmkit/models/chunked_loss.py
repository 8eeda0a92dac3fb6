"""The language-modelling loss without the full logits: the output projection and cross-entropy fused, by chunks.

A training step of GPT-2 small at batch 4 x 256 produces (4, 256, 50257) fp32 logits: 206 MB, then as much again
for their log-softmax and for its gradient, each written and read in full. Here the rows go through in chunks of
64 MB: each chunk's logits, log-sum-exp, loss, and the gradient of the loss (softmax minus one-hot, written over
the logits) are computed, and the gradients of the hidden states (and of the projection, when it is trained) are
accumulated at once, in the forward pass (backward only scales them). No full logits tensor exists: the peak
memory of the loss drops from three logits-sized tensors to one chunk. The logits are chunked wherever they would
exceed two 64 MB chunks; the chunk itself is the device's: 64 MB on CPU (smaller chunks make the projection's
matrix products less efficient than the memory traffic they save), up to 1 GB on GPUs and other accelerators, where
64 MB chunks are too small to keep the device busy (a few hundred rows per product, three products and a dozen
small kernels per chunk: benchmarks/gpu_gpt2.py's "loss chunks" rows).

It is the same function as transformers' `ForCausalLMLoss` on the same targets (the mean over non-ignored
targets, or the sum over `num_items_in_batch` when the Trainer accumulates gradients), in fp32 softmax arithmetic
whatever the autocast dtype of the projection. Used by llmkit-gpt in training when the logits would be large
(`LlmkitGPTForCausalLM.forward`); evaluation and inference keep returning logits.
"""

from __future__ import annotations

import torch

from .onednn import linear

CHUNK_BYTES = 64 * 2**20  # fp32 logits per chunk on CPU; smaller chunks make the projection's matmuls less efficient
ACCELERATOR_CHUNK_BYTES = 2**30  # at most, on GPUs (and other accelerators): as fast as the whole logits there


def chunk_bytes(device: torch.device) -> int:
    """The fp32 logits one chunk holds on this device."""
    return CHUNK_BYTES if device.type == "cpu" else ACCELERATOR_CHUNK_BYTES


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, divisor):
        # hidden (N, C), weight (V, C), targets (N,); returns the summed loss / divisor
        n, vocab = hidden.shape[0], weight.shape[0]
        rows = max(1, chunk_bytes(hidden.device) // (4 * vocab))
        need_h = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, rows):
            h = hidden[start : start + rows]  # (n_c, C)
            t = targets[start : start + rows]  # (n_c,)
            logits = linear(h, weight).float()  # (n_c, V), in the projection's (autocast) dtype, then fp32
            valid = t != ignore_index
            safe = torch.where(valid, t, 0)
            lse = torch.logsumexp(logits, dim=-1)  # (n_c,)
            picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
            total += ((lse - picked) * valid).sum()
            if need_h or need_w:
                probs = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                probs[torch.arange(len(t), device=t.device), safe] -= 1.0
                probs.mul_(valid.unsqueeze(1))
                g = probs.to(hidden.dtype) if hidden.dtype != torch.float32 else probs
                if need_h:
                    grad_h[start : start + rows] = linear(g, weight.to(g.dtype).t()).to(hidden.dtype)  # g @ W
                if need_w:
                    grad_w += linear(g.t(), h.to(g.dtype).t()).float()  # g.T @ h
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has = (need_h, need_w)
        ctx.weight_dtype = weight.dtype
        ctx.divisor = divisor
        return total / divisor

    @staticmethod
    def backward(ctx, grad_output):
        saved = list(ctx.saved_tensors)
        scale = grad_output / ctx.divisor  # a 0-dim tensor: the saved gradients keep their dtype
        grad_h = saved.pop(0) * scale if ctx.has[0] else None
        grad_w = (saved.pop(0) * scale).to(ctx.weight_dtype) if ctx.has[1] else None
        return grad_h, grad_w, None, None, None


def chunked_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, *, labels: torch.Tensor | None = None,
                           shift_labels: torch.Tensor | None = None, num_items_in_batch=None,
                           ignore_index: int = -100) -> torch.Tensor:
    """`ForCausalLMLoss(hidden @ weight.T, labels or shift_labels)` without materializing the logits.

    hidden (B, T, C); weight (V, C); labels (B, T) aligned with the inputs (shifted here) or shift_labels (B, T)
    already shifted."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=ignore_index)
    targets = shift_labels.reshape(-1).to(hidden.device)
    if num_items_in_batch is not None:
        divisor = num_items_in_batch.to(hidden.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
    else:
        divisor = (targets != ignore_index).sum().clamp(min=1)
    return _ChunkedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets, ignore_index,
                                            divisor)


def logits_are_large(tokens: int, vocab: int) -> bool:
    """Chunk when the full fp32 logits would span two 64 MB chunks, on every device (a char-level vocabulary never
    does): on a GPU they go through in fewer, larger chunks (`chunk_bytes`), never whole."""
    return tokens * vocab * 4 > 2 * CHUNK_BYTES
