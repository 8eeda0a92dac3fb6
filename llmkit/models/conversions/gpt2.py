"""llmkit-gpt <-> GPT-2 (`GPT2LMHeadModel`).

Design choices:
- Module names are the same on both sides (`transformer.wte/wpe/h.N/ln_f`, `attn.c_attn/c_proj`,
  `mlp.c_fc/c_proj`, `lm_head`); GPT-2 stores its four projections as `Conv1D` with weight shape
  (in, out), llmkit-gpt as `nn.Linear` (out, in), so a conversion transposes those four and copies the rest.
- GPT-2 has exactly one shape: learned positions, LayerNorm, a one-matrix activation MLP, biases on every
  projection and LayerNorm. Everything llmkit-gpt expresses inside that shape exports exactly: any
  activation (GPT-2 reads any ACT2FN key), any n_inner, tied or untied head, any bias switches (a missing
  bias, a LayerNorm's included, becomes zeros: the same function). Rotary positions, RMSNorm and SwiGLU
  have no GPT-2 equivalent; `unsupported_reason` names the first and the fix, `to_gpt2` raises it.
- `gelu_pytorch_tanh` (one fused kernel) is exported under GPT-2's own name `gelu_new` (the same tanh GELU
  written as several ops, equal to float rounding), so tools that know GPT-2's name read it. Importing
  with `fused_activation=True` goes the other way and keeps the faster kernel.
- GPT-2 variants llmkit-gpt cannot reproduce (attention scaled by 1/layer index or not at all,
  cross-attention) are refused on import; `reorder_and_upcast_attn` only changes mixed-precision rounding.
- Dropout rates, eps, token ids, `use_cache`, dtype, device, mode and generation defaults are carried.
"""

from __future__ import annotations

from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from ..configuration_llmkit_gpt import LlmkitGPTConfig
from ..modeling_llmkit_gpt import LlmkitGPTForCausalLM
from ._common import MISMATCHES, build_exact, check_source
from ._common import unsupported_reason as _reason

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Same function, one fused kernel vs. GPT-2's spelled-out tanh GELU.
FUSED_GELU, GPT2_GELU = "gelu_pytorch_tanh", "gelu_new"


def unsupported_reason(config: LlmkitGPTConfig) -> str | None:
    """None when `config` has an exact GPT2LMHeadModel equivalent, else one line: the option, what GPT-2
    lacks, the fix."""
    return _reason("gpt2", config)


def mismatches(config: LlmkitGPTConfig) -> list[tuple[str, str]]:
    """(the option and what GPT-2 lacks, the setting that fits) for each option without a GPT-2 equivalent."""
    found = []
    if config.position_embedding_type != "learned":
        found.append(
            ("rotary positions: GPT-2 has a learned position table", "model.position_embedding_type=learned")
        )
    if getattr(config, "qk_norm", False):
        found.append(("QK-norm: GPT-2 normalises neither queries nor keys", "model.qk_norm=false"))
    if config.norm_type != "layernorm":
        found.append(
            ("RMSNorm: GPT-2 has LayerNorm only (mean-centred, with a bias)", "model.norm_type=layernorm")
        )
    if config.mlp_type != "gelu":
        found.append(
            (
                "SwiGLU MLP: GPT-2's MLP has no gate (one matrix, an activation, one matrix)",
                "model.mlp_type=gelu",
            )
        )
    return found


def gpt2_config(config: LlmkitGPTConfig) -> GPT2Config:
    activation = GPT2_GELU if config.activation_function == FUSED_GELU else config.activation_function
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.n_inner,
        activation_function=activation,
        resid_pdrop=config.resid_pdrop,
        embd_pdrop=config.embd_pdrop,
        attn_pdrop=config.attn_pdrop,
        layer_norm_epsilon=float(config.layer_norm_epsilon),
        initializer_range=float(config.initializer_range),
        scale_attn_weights=True,  # 1/sqrt(head_dim), as llmkit-gpt
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        use_cache=config.use_cache,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )


def to_gpt2(model) -> GPT2LMHeadModel:
    """The `GPT2LMHeadModel` computing what llmkit-gpt `model` computes (ValueError when none exists)."""
    reason = unsupported_reason(model.config)
    if reason is not None:
        raise ValueError(reason)
    state = {
        # Linear (out, in) -> Conv1D (in, out); c_attn: (3C, C) -> (C, 3C), columns still q | k | v
        name: tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor
        for name, tensor in model.state_dict().items()
    }
    return build_exact(GPT2LMHeadModel, gpt2_config(model.config), state, model, zero_missing_biases=True)


def config_from_gpt2(gpt2: GPT2Config, *, fused_activation: bool = False) -> LlmkitGPTConfig:
    if gpt2.scale_attn_by_inverse_layer_idx or not gpt2.scale_attn_weights:
        raise ValueError("this GPT-2 variant scales attention differently; llmkit-gpt cannot reproduce it")
    if gpt2.add_cross_attention:
        raise ValueError(
            "this GPT-2 has cross-attention layers (an encoder-decoder); llmkit-gpt is decoder-only"
        )
    activation = gpt2.activation_function
    if fused_activation and activation == GPT2_GELU:
        activation = FUSED_GELU
    return LlmkitGPTConfig(
        vocab_size=gpt2.vocab_size,
        n_positions=gpt2.n_positions,
        n_embd=gpt2.n_embd,
        n_layer=gpt2.n_layer,
        n_head=gpt2.n_head,
        n_inner=gpt2.n_inner,
        activation_function=activation,
        layer_norm_epsilon=gpt2.layer_norm_epsilon,
        initializer_range=gpt2.initializer_range,
        embd_pdrop=gpt2.embd_pdrop,
        attn_pdrop=gpt2.attn_pdrop,
        resid_pdrop=gpt2.resid_pdrop,
        tie_word_embeddings=gpt2.tie_word_embeddings,
        bias=True,
        use_cache=gpt2.use_cache,
        bos_token_id=gpt2.bos_token_id,
        eos_token_id=gpt2.eos_token_id,
        pad_token_id=gpt2.pad_token_id,
    )


def from_gpt2(
    model_or_path: str | nn.Module, *, fused_activation: bool = False, **from_pretrained_kwargs
):
    """Convert a `GPT2LMHeadModel` (instance, folder or Hub id) into an equivalent `LlmkitGPTForCausalLM` model.

    fused_activation: run GPT-2's `gelu_new` as `gelu_pytorch_tanh`, the same function in one fused kernel
        (equal to float rounding, not bit for bit). Other activations are kept as they are.
    """
    if isinstance(model_or_path, nn.Module):
        gpt2 = model_or_path
    else:
        gpt2 = GPT2LMHeadModel.from_pretrained(model_or_path, **from_pretrained_kwargs)
    check_source(gpt2, GPT2LMHeadModel, "from_gpt2")
    state = {}
    for name, tensor in gpt2.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old GPT-2 checkpoints store the causal mask as a buffer
        # Conv1D (in, out) -> Linear (out, in); c_attn: (C, 3C) -> (3C, C), rows q | k | v
        state[name] = tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor
    config = config_from_gpt2(gpt2.config, fused_activation=fused_activation)
    return build_exact(LlmkitGPTForCausalLM, config, state, gpt2)


MISMATCHES["gpt2"] = mismatches
