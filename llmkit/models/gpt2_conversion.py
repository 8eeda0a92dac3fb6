"""GPT-2 -> llmkit-gpt conversion.

GPT-2 stores its projections as `Conv1D` (weight shape (in, out)); llmkit-gpt uses `nn.Linear` (out, in), with the
same module names, so conversion is a rename-free transpose. The GPT-2 specifics (tanh GELU, biases everywhere,
learned positions, LayerNorm) are set on the new config, so the logits match to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from .configuration_llmkit_gpt import LlmkitGPTConfig

_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def config_from_gpt2(gpt2: GPT2Config) -> LlmkitGPTConfig:
    if gpt2.scale_attn_by_inverse_layer_idx or not gpt2.scale_attn_weights:
        raise ValueError("this GPT-2 variant scales attention differently; llmkit-gpt cannot reproduce it")
    return LlmkitGPTConfig(
        vocab_size=gpt2.vocab_size,
        n_positions=gpt2.n_positions,
        n_embd=gpt2.n_embd,
        n_layer=gpt2.n_layer,
        n_head=gpt2.n_head,
        n_inner=gpt2.n_inner,
        activation_function=gpt2.activation_function,
        layer_norm_epsilon=gpt2.layer_norm_epsilon,
        initializer_range=gpt2.initializer_range,
        embd_pdrop=gpt2.embd_pdrop,
        attn_pdrop=gpt2.attn_pdrop,
        resid_pdrop=gpt2.resid_pdrop,
        tie_word_embeddings=gpt2.tie_word_embeddings,
        bias=True,
        bos_token_id=gpt2.bos_token_id,
        eos_token_id=gpt2.eos_token_id,
        pad_token_id=gpt2.pad_token_id,
    )


def convert_gpt2(cls, model_or_path, **from_pretrained_kwargs):
    if isinstance(model_or_path, nn.Module):
        gpt2 = model_or_path
    else:
        gpt2 = GPT2LMHeadModel.from_pretrained(model_or_path, **from_pretrained_kwargs)
    if not isinstance(gpt2, GPT2LMHeadModel):
        raise TypeError(f"from_gpt2 expects a GPT2LMHeadModel, got {type(gpt2).__name__}")
    model = cls(config_from_gpt2(gpt2.config))
    state = {}
    for name, tensor in gpt2.state_dict().items():
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue  # old GPT-2 checkpoints store the causal mask as a buffer
        state[name] = tensor.t() if name.endswith(_CONV1D_SUFFIXES) else tensor
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"GPT-2 weights did not map onto llmkit-gpt: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.to(gpt2.dtype)
