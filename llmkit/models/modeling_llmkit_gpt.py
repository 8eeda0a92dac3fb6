"""The llmkit GPT: a small decoder-only transformer as a first-class transformers model.

Design choices:
- GPT-2's module names (`transformer.wte/wpe/h/ln_f`, `attn.c_attn/c_proj`, `mlp.c_fc/c_proj`) so GPT-2 weights
  convert by a transpose and LoRA target names (`c_attn`, `c_proj`, `c_fc`) are the same for both models.
  Plain `nn.Linear` instead of GPT-2's `Conv1D`; on an x86 CPU `generate()` runs on (in, out)-stored copies
  of the weights, the layout MKL's one-row products prefer (decode_layout.py).
- One fused q/k/v projection (one matmul instead of three) and, for SwiGLU, one fused gate/up projection.
  The projections are `onednn.Linear` (an nn.Linear that multiplies on oneDNN where PyTorch's BLAS is slow).
- Attention is picked through transformers' `ALL_ATTENTION_FUNCTIONS` (`sdpa` by default, `eager`,
  `flash_attention_2/3` when installed); masks come from `create_causal_mask`, so padding, KV caches and
  every attention backend share one code path. KV caching uses transformers `Cache` objects, passed as `cache`
  (transformers 5.24's name, as in its Llama and GPT-2; the old `past_key_values` keyword still works for
  callers through transformers' own `deprecate_kwarg`, with its FutureWarning).
- Rotary positions reuse transformers' RoPE tables (`LlamaRotaryEmbedding`), so RoPE scaling types (linear,
  dynamic, yarn, ...) come for free through `rope_parameters`; the rotation is `apply_rotary_pos_emb`'s arithmetic
  (half-split pairs, `rotate_half`) in fewer passes over q and k (`_rotate`). q and k are normalised (QK-norm) and
  rotated together, in one pass each: in a small model's CPU step these elementwise passes cost as much as the
  products.
- transformers' whole model contract, as its GPT-2 and Llama keep it: hidden states and attentions through its
  output-capture hooks (`_can_record_outputs`), `return_dict=False` tuples (`can_return_tuple`), logits whenever
  the forward is asked for them. Every dropout is an `nn.Dropout` (attention's is read as a rate), so switches
  that zero `nn.Dropout.p` (TRL's `disable_dropout`) reach all of them.
- Under bf16 autocast on a CPU, attention trains in fp32 for contexts below `CPU_FP32_ATTENTION_BELOW`: PyTorch's
  CPU attention backward is slower in bf16 than in fp32 there (two to six times at contexts of 64 to 256 with
  heads of 32, benchmarks/cpu_attention.py; whole steps: benchmarks/cpu_precision.py), while the projections
  keep autocast's bf16 products. The QK-norm and the rotation run in fp32 too, so nothing is cast back and forth.
  The switch is the module's training mode (not whether gradients are on), so a checkpointed forward and its
  recomputation agree; in eval mode, or with a KV cache, attention stays bf16, the faster forward. Logits of
  the same weights under autocast therefore differ in train and eval mode by bf16's rounding (about 1e-3).
- Loss comes from `self.loss_function` (labels shifted inside, -100 ignored); a collator may pass
  `shift_labels` (already shifted targets) to score every position of a packed block. The training core asks
  for the chunked fused loss explicitly (`fused_loss=True`), which returns no logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .chunked_loss import chunked_causal_lm_loss, logits_are_large
from .configuration_llmkit_gpt import LlmkitGPTConfig
from .decode_layout import cpu_decode_layout
from .onednn import Linear

# bf16 attention's backward on a CPU is slower than fp32's below about 512 tokens of context with heads of 64, and
# 1,024 with heads of 32 (benchmarks/cpu_attention.py): below this, training under CPU bf16 autocast computes
# attention in fp32 (see the module docstring)
CPU_FP32_ATTENTION_BELOW = 1024


def _fp32_attention(module: nn.Module, x: torch.Tensor, context: int, cache: Cache | None) -> bool:
    """Whether this attention call runs in fp32 under CPU bf16 autocast (see CPU_FP32_ATTENTION_BELOW): a module in
    training mode without a cache, so that a forward and its recomputation (gradient checkpointing, reentrant or
    not) take the same path, and a cache only ever sees one dtype."""
    return (module.training and cache is None and x.device.type == "cpu" and context < CPU_FP32_ATTENTION_BELOW
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _in_weight_dtype(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` with x in the norm's weight dtype: under autocast, bf16 activations meet fp32 scales, which
    PyTorch's fused RMSNorm refuses (it falls back to the unfused ops, with a warning). The caller casts back."""
    return norm(x.to(norm.weight.dtype))


class LlmkitGPTRotaryEmbedding(LlamaRotaryEmbedding):
    """RoPE cos/sin tables from `config.rope_parameters` (transformers' implementation)."""


def _plain_module(module: nn.Module, cls: type) -> bool:
    """`module` is exactly a `cls`, with no forward hooks and no forward replaced on the instance (accelerate's
    hooks do that): calling its function directly computes what calling the module would."""
    return (type(module) is cls and not module._forward_hooks and not module._forward_pre_hooks
            and "forward" not in vars(module))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' `apply_rotary_pos_emb` on one tensor, `x * cos + rotate_half(x) * sin`, in fewer passes:
    rotate_half(x) is x rolled by half a head with its first half negated, and the sign goes into sin (a table of
    (B, T, 1, hs)). Each pass over x is measurable in a small model's CPU step. Heads are even (the config
    refuses odd ones with rotary positions), so the roll is rotate_half's swap of halves."""
    half = x.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return torch.addcmul(x * cos, x.roll(half, dims=-1), signed_sin)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # (B, nh, T, hs)
    key: torch.Tensor,  # (B, nh, S, hs), S = past + T
    value: torch.Tensor,  # (B, nh, S, hs)
    attention_mask: torch.Tensor | None,  # (B, 1, T, S) additive, or None
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return attn_output, attn_weights


def _dropout(p: float) -> nn.Module:
    # p = 0 (the default): no module call at all, which is measurable in token-by-token decoding
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _norm(config: LlmkitGPTConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)


class LlmkitGPTAttention(nn.Module):
    def __init__(self, config: LlmkitGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_head = config.n_head  # plain attributes: config attribute lookups are slow in the hot path
        self.head_dim = config.n_embd // config.n_head
        # an nn.Dropout that is never called: its `p` is the rate handed to the attention function, so the switches
        # that set every nn.Dropout's p to 0 (TRL's disable_dropout, ...) reach attention dropout too
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # GPT-2 scaled init, see _init_weights
        self.resid_dropout = _dropout(config.resid_pdrop)
        self.qk_norm = config.qk_norm
        if self.qk_norm:  # per-head RMSNorm of queries and keys, each with its own scale (head_dim,)
            self.q_norm = nn.RMSNorm(self.head_dim, eps=config.layer_norm_epsilon)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=config.layer_norm_epsilon)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,  # rotary cos, sin (B, T, 1, hs)
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = hidden_states.shape
        qkv = self.c_attn(hidden_states)  # (B, T, 3C)
        fp32_attention = _fp32_attention(self, qkv, T, cache)
        if fp32_attention:
            qkv = qkv.float()
        if position_embeddings is None:
            # split then transpose (not one 5-d permute): its backward is a single cat, measurably cheaper on CPU
            query, key, value = (t.view(B, T, self.n_head, self.head_dim) for t in qkv.split(C, dim=2))
            if self.qk_norm:  # normalised over hs
                query = _in_weight_dtype(self.q_norm, query).to(qkv.dtype)
                key = _in_weight_dtype(self.k_norm, key).to(qkv.dtype)
            query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, nh, T, hs)
        else:  # rotary: q and k normalised and rotated together
            qk, value = qkv.split((2 * C, C), dim=2)
            qk = qk.view(B, T, 2 * self.n_head, self.head_dim)  # (B, T, 2nh, hs)
            if self.qk_norm:  # normalised over hs, before the rotation
                qk = self._norm_qk(qk)
            cos, sin = position_embeddings  # (B, T, 1, hs)
            qk = _rotate(qk, cos, sin).to(qkv.dtype)  # in the wider of qk's and the tables' dtypes
            query, key = qk.transpose(1, 2).split(self.n_head, dim=1)  # (B, nh, T, hs)
            value = value.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)  # (B, nh, S, hs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        with torch.autocast("cpu", enabled=False) if fp32_attention else nullcontext():
            attn_output, attn_weights = attention_interface(
                self,
                query,
                key,
                value,
                attention_mask,
                dropout=self.attn_dropout.p if self.training else 0.0,
                scaling=self.scaling,
                **kwargs,
            )
        attn_output = attn_output.reshape(B, T, C)
        return self.resid_dropout(self.c_proj(attn_output)), attn_weights

    def _norm_qk(self, qk: torch.Tensor) -> torch.Tensor:
        """q's and k's RMSNorm of (B, T, 2nh, hs), in the norms' weight dtype: one pass over both, with the two
        scales side by side, when both are plain `nn.RMSNorm` modules; otherwise each module called on its half,
        so that whatever wraps or hooks them (forward hooks, PEFT's layer-norm tuning, accelerate's offloading)
        still sees its module run."""
        q_norm, k_norm, n = self.q_norm, self.k_norm, self.n_head
        if _plain_module(q_norm, nn.RMSNorm) and _plain_module(k_norm, nn.RMSNorm) and q_norm.eps == k_norm.eps:
            dtype = q_norm.weight.dtype
            scales = torch.cat((q_norm.weight.expand(n, -1), k_norm.weight.expand(n, -1))).to(dtype)  # (2nh, hs)
            return nn.functional.rms_norm(qk.to(dtype), (self.head_dim,), eps=q_norm.eps) * scales
        return torch.cat((_in_weight_dtype(q_norm, qk[:, :, :n]), _in_weight_dtype(k_norm, qk[:, :, n:])), dim=2)


class LlmkitGPTMLP(nn.Module):
    def __init__(self, config: LlmkitGPTConfig):
        super().__init__()
        self.swiglu = config.mlp_type == "swiglu"
        n_out = 2 * config.n_inner if self.swiglu else config.n_inner
        self.c_fc = Linear(config.n_embd, n_out, bias=config.bias)
        self.act = ACT2FN["silu" if self.swiglu else config.activation_function]
        self.c_proj = Linear(config.n_inner, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = _dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.c_proj(h))


class LlmkitGPTBlock(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: LlmkitGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = LlmkitGPTAttention(config, layer_idx)
        self.ln_2 = _norm(config)
        self.mlp = LlmkitGPTMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_out, _ = self.attn(
            self.ln_1(hidden_states),
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class LlmkitGPTPreTrainedModel(PreTrainedModel):
    config_class = LlmkitGPTConfig
    config: LlmkitGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlmkitGPTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # transformers' output capture (`output_hidden_states`, `output_attentions`, as arguments or in the config):
    # the input of each block and, last, the final norm's output; each attention module's weights (eager only)
    _can_record_outputs = {
        "hidden_states": LlmkitGPTBlock,
        "attentions": OutputRecorder(LlmkitGPTAttention, index=1),
    }

    def _init_weights(self, module):
        # transformers' defaults (normal(0, initializer_range) linears/embeddings, unit norms, RoPE buffers),
        # then GPT-2's scaled init of the two residual projections per block: std / sqrt(2 * n_layer), or zeros
        # with `zero_init_residual`. (transformers initialises leaf modules one by one, so the flag sits on the
        # Linear itself.)
        super()._init_weights(module)
        if getattr(module, "residual_projection", False):
            if self.config.zero_init_residual:
                init.zeros_(module.weight)
            else:
                std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
                init.normal_(module.weight, mean=0.0, std=std)


class LlmkitGPTModel(LlmkitGPTPreTrainedModel):
    """The transformer without its head: embeddings, blocks, final norm."""

    def __init__(self, config: LlmkitGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.rotary = config.position_embedding_type == "rotary"
        if self.rotary:
            self.rotary_emb = LlmkitGPTRotaryEmbedding(config)
        else:
            self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = _dropout(config.embd_pdrop)
        self.h = nn.ModuleList([LlmkitGPTBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = _norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = real token, 0 = padding
        position_ids: torch.LongTensor | None = None,  # (B, T)
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        if use_cache is None:  # a training forward never reads its cache: filling one only costs copies
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation and caching do not mix
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        past_seen = cache.get_seq_length() if cache is not None else 0
        T = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past_seen, past_seen + T, device=inputs_embeds.device).unsqueeze(0)
            too_long = not self.rotary and past_seen + T > self.config.n_positions
        else:  # given (packed examples restart theirs): the embedding lookup itself would fail past the table
            too_long = False
        if too_long:
            raise ValueError(
                f"sequence of {past_seen + T} tokens exceeds the context of {self.config.n_positions} "
                "learned positions; crop the input to the last n_positions tokens"
            )

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        if self.rotary:
            hidden_states = inputs_embeds
            position_embeddings = tuple(t.unsqueeze(2) for t in self.rotary_emb(hidden_states, position_ids))
        else:
            hidden_states = inputs_embeds + self.wpe(position_ids)
            position_embeddings = None
        hidden_states = self.drop(hidden_states)  # (B, T, C)

        for block in self.h:
            hidden_states = block(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                cache=cache,
                **kwargs,
            )
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class LlmkitGPTForCausalLM(LlmkitGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    loss_type = "ForCausalLM"

    def __init__(self, config: LlmkitGPTConfig):
        super().__init__(config)
        self.transformer = LlmkitGPTModel(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (B, T) aligned with input_ids; shifted inside the loss
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        fused_loss: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """The causal LM forward of transformers' contract: logits (B, T, vocab), the loss when `labels` (or
        `shift_labels`) are given, hidden states and attentions when asked, a tuple with `return_dict=False`.

        `fused_loss=True` is the training core's fast path (LlmkitTrainer.compute_loss asks for it): with labels and
        large logits, the loss is computed from the hidden states by chunks (chunked_loss.py) and no logits are
        returned (`logits=None`)."""
        if use_cache is None and (labels is not None or kwargs.get("shift_labels") is not None):
            use_cache = False  # scoring, not decoding: no cache (and packed examples keep their own attention)
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,  # whatever config.return_dict says: this model's own output decides
            **_attention_kwargs(kwargs),
        )
        hidden_states = outputs.last_hidden_state  # (B, T, C)
        shift_labels = kwargs.get("shift_labels")
        if fused_loss and (labels is not None or shift_labels is not None) and logits_to_keep == 0 and \
                logits_are_large(hidden_states.shape[0] * hidden_states.shape[1], self.config.vocab_size):
            # asked for by the training core: the loss without the (B, T, vocab) logits (chunked_loss.py)
            loss = chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels=labels, shift_labels=shift_labels,
                                          num_items_in_batch=kwargs.get("num_items_in_batch"),
                                          ignore_index=kwargs.get("ignore_index", -100))
            return CausalLMOutputWithPast(loss=loss, logits=None, cache=outputs.cache,
                                          hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
        logits = self.lm_head(hidden_states)  # (B, T, vocab)

        loss = None
        if shift_labels is not None:
            kwargs["shift_labels"] = shift_labels.contiguous()  # the loss flattens it with .view
        if labels is not None or shift_labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`, with the linear weights stored (in, out) while it runs on a CPU whose products
        run on MKL, the layout MKL multiplies one row by fastest, for twice the Linear weight memory during the call
        (see decode_layout.py). Nothing else changes."""
        with cpu_decode_layout(self):
            return super().generate(*args, **kwargs)


_LOSS_ONLY_KWARGS = ("shift_labels", "num_items_in_batch", "ignore_index")


def _attention_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in _LOSS_ONLY_KWARGS}
