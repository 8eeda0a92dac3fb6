"""llmkit-gpt <-> Llama (`LlamaForCausalLM`).

Design choices:
- The Llama shape is rotary positions + RMSNorm + SwiGLU with one key/value head per query head
  (llmkit-gpt has no grouped-query attention) and, by the choice made here, no biases anywhere: llmkit-gpt
  exports only with bias=False and qkv_bias=False and imports only a Llama with attention_bias=mlp_bias=False.
  (LlamaConfig's attention_bias/mlp_bias could carry biases, but such checkpoints are off the path most
  Llama tooling expects; the reason names the fix instead.)
- Fused projections are split / joined along the output dim: c_attn (3C, C) = q_proj | k_proj | v_proj,
  each (C, C) with heads of head_dim rows in order, the layout Llama's `view(..., -1, head_dim)` reads;
  c_fc (2I, C) = gate_proj | up_proj, each (I, C), the order of llmkit-gpt's `gate, up = h.chunk(2, -1)`.
- Both models compute RoPE tables with transformers' `LlamaRotaryEmbedding` and rotate half-split pairs
  from the same `rope_parameters` (rope_type, rope_theta, scaling settings), head_dim and
  max_position_embeddings = n_positions, so the rotation is the same for every RoPE type.
- Llama has attention dropout only: `attn_pdrop` is carried; `embd_pdrop`/`resid_pdrop` (training only,
  eval-mode outputs are unchanged) are not, and an imported Llama gets 0 for them. Llama's `pad_token_id`
  makes that embedding row a `padding_idx` (no gradient), which does not change the forward pass.
- Token ids, eps, tie, `use_cache`, dtype, device, mode and generation defaults are carried both ways.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from ..configuration_llmkit_gpt import LlmkitGPTConfig
from ..modeling_llmkit_gpt import LlmkitGPTForCausalLM
from ._common import MISMATCHES, build_exact, check_source
from ._common import unsupported_reason as _reason

# (llmkit-gpt name, Llama name) of the tensors that only change name; {i} is the layer index.
_RENAMES_TOP = (
    ("transformer.wte.weight", "model.embed_tokens.weight"),
    ("transformer.ln_f.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
)
_RENAMES_LAYER = (
    ("transformer.h.{i}.ln_1.weight", "model.layers.{i}.input_layernorm.weight"),
    ("transformer.h.{i}.attn.c_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("transformer.h.{i}.ln_2.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("transformer.h.{i}.mlp.c_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
)
_QKV = ("q_proj", "k_proj", "v_proj")
_GATE_UP = ("gate_proj", "up_proj")
_SILU = ("silu", "swish")  # the same function in ACT2FN


def unsupported_reason(config: LlmkitGPTConfig) -> str | None:
    """None when `config` has an exact LlamaForCausalLM equivalent, else one line: the option, what Llama
    lacks, the fix."""
    return _reason("llama", config)


def mismatches(config: LlmkitGPTConfig) -> list[tuple[str, str]]:
    """(the option and what Llama lacks, the setting that fits) for each option without a Llama equivalent."""
    found = []
    if config.position_embedding_type != "rotary":
        found.append(
            (
                "learned positions: Llama has no position table, only rotary positions",
                "model.position_embedding_type=rotary",
            )
        )
    if getattr(config, "qk_norm", False):
        found.append(("QK-norm: Llama normalises neither queries nor keys", "model.qk_norm=false"))
    if config.norm_type != "rmsnorm":
        found.append(
            ("LayerNorm: Llama has RMSNorm only (no mean-centring, no bias)", "model.norm_type=rmsnorm")
        )
    if config.mlp_type != "swiglu":
        found.append(
            (
                f"{config.activation_function} MLP: Llama's MLP is SwiGLU (a SiLU gate times an up "
                "projection)",
                "model.mlp_type=swiglu",
            )
        )
    if config.bias or config.qkv_bias:
        which = ", ".join(f"model.{n}=true" for n in ("bias", "qkv_bias") if getattr(config, n))
        found.append(
            (f"biases ({which}): the Llama export has no biases", "model.bias=false model.qkv_bias=false")
        )
    return found


def llama_config(config: LlmkitGPTConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.n_inner,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head,  # one k/v head per query head
        head_dim=config.n_embd // config.n_head,
        hidden_act="silu",
        max_position_embeddings=config.n_positions,
        initializer_range=float(config.initializer_range),
        rms_norm_eps=float(config.layer_norm_epsilon),
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        rope_parameters=dict(config.rope_parameters),  # rope_type, rope_theta and any scaling settings
        attention_bias=False,
        attention_dropout=config.attn_pdrop,
        mlp_bias=False,
    )


def to_llama(model) -> LlamaForCausalLM:
    """The `LlamaForCausalLM` computing what llmkit-gpt `model` computes (ValueError when none exists)."""
    reason = unsupported_reason(model.config)
    if reason is not None:
        raise ValueError(reason)
    src = model.state_dict()
    state = {dst: src.pop(name) for name, dst in _RENAMES_TOP}
    for i in range(model.config.n_layer):
        for name, dst in _RENAMES_LAYER:
            state[dst.format(i=i)] = src.pop(name.format(i=i))
        qkv = src.pop(f"transformer.h.{i}.attn.c_attn.weight").chunk(3, dim=0)  # (3C, C) -> 3 x (C, C)
        for proj, weight in zip(_QKV, qkv):
            state[f"model.layers.{i}.self_attn.{proj}.weight"] = weight
        gate_up = src.pop(f"transformer.h.{i}.mlp.c_fc.weight").chunk(2, dim=0)  # (2I, C) -> 2 x (I, C)
        for proj, weight in zip(_GATE_UP, gate_up):
            state[f"model.layers.{i}.mlp.{proj}.weight"] = weight
    if src:
        raise ValueError(f"llmkit-gpt -> Llama: tensors without a Llama place: {sorted(src)[:5]}")
    return build_exact(LlamaForCausalLM, llama_config(model.config), state, model)


def llama_unsupported_reason(llama: LlamaConfig) -> str | None:
    """None when a Llama config has an exact llmkit-gpt equivalent, else one line naming the setting."""
    if llama.num_key_value_heads != llama.num_attention_heads:
        return (
            f"grouped-query attention (num_key_value_heads={llama.num_key_value_heads} < "
            f"num_attention_heads={llama.num_attention_heads}): llmkit-gpt has one key/value head per "
            "query head"
        )
    if llama.attention_bias or llama.mlp_bias:
        return "attention_bias/mlp_bias: llmkit-gpt imports Llama models without biases only"
    if llama.hidden_act not in _SILU:
        return f"hidden_act={llama.hidden_act}: llmkit-gpt's SwiGLU gates with SiLU only"
    if llama.head_dim != llama.hidden_size // llama.num_attention_heads:
        return (
            f"head_dim={llama.head_dim} != hidden_size/num_attention_heads="
            f"{llama.hidden_size // llama.num_attention_heads}: llmkit-gpt's heads split the hidden size"
        )
    return None


def config_from_llama(llama: LlamaConfig) -> LlmkitGPTConfig:
    reason = llama_unsupported_reason(llama)
    if reason is not None:
        raise ValueError(reason)
    rope = dict(llama.rope_parameters)
    return LlmkitGPTConfig(
        vocab_size=llama.vocab_size,
        n_positions=llama.max_position_embeddings,
        n_embd=llama.hidden_size,
        n_layer=llama.num_hidden_layers,
        n_head=llama.num_attention_heads,
        n_inner=llama.intermediate_size,
        mlp_type="swiglu",
        norm_type="rmsnorm",
        position_embedding_type="rotary",
        rope_theta=rope["rope_theta"],
        rope_parameters=rope,
        bias=False,
        qkv_bias=False,
        layer_norm_epsilon=llama.rms_norm_eps,
        initializer_range=llama.initializer_range,
        attn_pdrop=llama.attention_dropout,
        tie_word_embeddings=llama.tie_word_embeddings,
        use_cache=llama.use_cache,
        bos_token_id=llama.bos_token_id,
        eos_token_id=llama.eos_token_id,
        pad_token_id=llama.pad_token_id,
    )


def from_llama(model_or_path: str | nn.Module, **from_pretrained_kwargs):
    """Convert a `LlamaForCausalLM` (instance, folder or Hub id) into an equivalent `LlmkitGPTForCausalLM`
    model; ValueError (one line) when the Llama uses something llmkit-gpt lacks (grouped-query attention,
    biases, another activation than SiLU, a head_dim apart from hidden_size / heads)."""
    if isinstance(model_or_path, nn.Module):
        llama = model_or_path
    else:
        llama = LlamaForCausalLM.from_pretrained(model_or_path, **from_pretrained_kwargs)
    check_source(llama, LlamaForCausalLM, "from_llama")
    config = config_from_llama(llama.config)
    src = llama.state_dict()
    state = {name: src.pop(dst) for name, dst in _RENAMES_TOP}
    for i in range(config.n_layer):
        for name, dst in _RENAMES_LAYER:
            state[name.format(i=i)] = src.pop(dst.format(i=i))
        qkv = [src.pop(f"model.layers.{i}.self_attn.{proj}.weight") for proj in _QKV]
        state[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(qkv, dim=0)  # 3 x (C, C) -> (3C, C)
        gate_up = [src.pop(f"model.layers.{i}.mlp.{proj}.weight") for proj in _GATE_UP]
        state[f"transformer.h.{i}.mlp.c_fc.weight"] = torch.cat(gate_up, dim=0)  # 2 x (I, C) -> (2I, C)
    if src:
        raise ValueError(f"Llama -> llmkit-gpt: tensors without an llmkit-gpt place: {sorted(src)[:5]}")
    return build_exact(LlmkitGPTForCausalLM, config, state, llama)


MISMATCHES["llama"] = mismatches
