"""One place that builds a causal LM from size settings: llmkit-gpt or the stock GPT2LMHeadModel.

Both architectures take the same size names (GPT-2's), so a config switches between them with `arch` alone.
Options that only llmkit-gpt has (rotary, RMSNorm, SwiGLU, bias switches) are refused for `gpt2` with a
message instead of being silently dropped.
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from .configuration_llmkit_gpt import LlmkitGPTConfig
from .modeling_llmkit_gpt import LlmkitGPTForCausalLM

ARCHITECTURES = ("llmkit-gpt", "gpt2")
_LLMKIT_ONLY = ("mlp_type", "norm_type", "position_embedding_type", "rope_theta", "bias", "qkv_bias")


def build_config(arch: str = "llmkit-gpt", **settings):
    """Return an `LlmkitGPTConfig` or `GPT2Config` from GPT-2-named size settings.

    `dropout` sets the three dropout rates at once.
    """
    dropout = settings.pop("dropout", None)
    if dropout is not None:
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            settings.setdefault(name, dropout)
    if arch == "llmkit-gpt":
        return LlmkitGPTConfig(**settings)
    if arch == "gpt2":
        extra = [k for k in settings if k in _LLMKIT_ONLY]
        if extra:
            raise ValueError(f"model.{extra[0]} is an llmkit-gpt option; set model.arch=llmkit-gpt or remove it")
        settings.setdefault("activation_function", "gelu_new")
        # Validate the same way as llmkit-gpt so both archs fail alike on bad sizes.
        LlmkitGPTConfig(**{k: v for k, v in settings.items() if k in _SHARED})
        return GPT2Config(**settings)
    raise ValueError(f"model.arch={arch!r} is unknown; use one of {', '.join(ARCHITECTURES)}")


_SHARED = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
           "embd_pdrop", "attn_pdrop", "resid_pdrop")


def build_model(arch: str = "llmkit-gpt", **settings) -> PreTrainedModel:
    config = build_config(arch, **settings)
    model_cls = LlmkitGPTForCausalLM if arch == "llmkit-gpt" else GPT2LMHeadModel
    return model_cls(config)


def model_from_config(m, tokenizer) -> PreTrainedModel:
    """The model a config's `model` section (`llmkit.config.ModelConfig`, resolved) describes, sized for
    `tokenizer`: built from scratch, or loaded from `from_pretrained` (a run, model folder, adapter run (merged)
    or Hub id). `arch: llmkit-gpt` on a pretrained GPT-2 converts it exactly (`from_gpt2`, its tanh GELU as one
    fused kernel): the fast path for fine-tuning GPT-2. Embeddings grow when the tokenizer has more tokens."""
    if m.from_pretrained is None:
        options = dict(n_positions=m.n_positions, n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
                       dropout=m.dropout, tie_word_embeddings=m.tie_word_embeddings)
        for key in ("n_inner", "activation_function", "mlp_type", "norm_type", "position_embedding_type", "bias",
                    "qkv_bias"):
            if getattr(m, key) is not None:
                options[key] = getattr(m, key)
        model = build_model(m.arch, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **options)
    else:
        from .loading import load_config, load_model

        overrides = {}
        if m.dropout is not None:
            family = load_config(m.from_pretrained, revision=m.revision, trust_remote_code=m.trust_remote_code)
            names = [n for n in ("embd_pdrop", "attn_pdrop", "resid_pdrop", "attention_dropout") if hasattr(family, n)]
            overrides = dict.fromkeys(names, m.dropout)
        model, _ = load_model(m.from_pretrained, revision=m.revision, trust_remote_code=m.trust_remote_code,
                              device="cpu", merge=True, config_overrides=overrides)
        model.train()
        if m.arch != model.config.model_type:
            model = convert_for_training(model, m.arch)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    if m.attn_implementation:
        model.set_attn_implementation(m.attn_implementation)
    return model


def convert_for_training(model: PreTrainedModel, arch: str) -> PreTrainedModel:
    if arch == "llmkit-gpt" and isinstance(model, GPT2LMHeadModel):
        return LlmkitGPTForCausalLM.from_gpt2(model, fused_activation=True).train()
    raise ValueError(f"model.arch={arch} cannot be applied to a pretrained {model.config.model_type} model; only GPT-2 "
                     "converts to llmkit-gpt for training (remove model.arch to keep the model's own architecture)")
