"""One place that builds a causal LM from size settings: llmkit-gpt or the stock GPT2LMHeadModel.

Both architectures take the same size names (GPT-2's), so a config switches between them with `arch` alone.
Options that only llmkit-gpt has (rotary, RMSNorm, SwiGLU, bias switches) are refused for `gpt2` with a
message instead of being silently dropped.
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from ..model_options import LLMKIT_ONLY, SHARED
from .configuration_llmkit_gpt import LlmkitGPTConfig
from .modeling_llmkit_gpt import LlmkitGPTForCausalLM

ARCHITECTURES = ("llmkit-gpt", "gpt2")


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
        extra = [k for k in settings if k in LLMKIT_ONLY]
        if extra:
            raise ValueError(f"model.{extra[0]} is an llmkit-gpt option; set model.arch=llmkit-gpt or remove it")
        settings.setdefault("activation_function", "gelu_new")
        # Validate the same way as llmkit-gpt so both archs fail alike on bad sizes.
        LlmkitGPTConfig(**{k: v for k, v in settings.items() if k in SHARED})
        return GPT2Config(**settings)
    raise ValueError(f"model.arch={arch!r} is unknown; use one of {', '.join(ARCHITECTURES)}")



def build_model(arch: str = "llmkit-gpt", **settings) -> PreTrainedModel:
    config = build_config(arch, **settings)
    model_cls = LlmkitGPTForCausalLM if arch == "llmkit-gpt" else GPT2LMHeadModel
    return model_cls(config)
