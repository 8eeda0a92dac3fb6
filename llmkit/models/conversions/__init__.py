"""Conversions between llmkit-gpt and the stock transformers architectures it can be exactly.

Design choices:
- One module per stock target (`gpt2.py`: GPT2LMHeadModel, `llama.py`: LlamaForCausalLM), each with
  `unsupported_reason(config)` (None, or one line naming the option, what the target lacks and the fix),
  an export `to_<target>(model)` and an import `from_<target>(cls, model_or_path)`. A conversion gives a
  model computing the same function (logits equal to float rounding, identical greedy generation) or
  raises; nothing is approximated or silently dropped.
- Exported models are plain transformers models: saved with `save_pretrained`, they load with
  `AutoModelForCausalLM.from_pretrained` anywhere, without llmkit installed.
- `TARGETS` is in preference order: `stock_target` picks the first that fits (today the options decide
  it: no llmkit-gpt config fits both).
"""

from __future__ import annotations

from torch import nn
from transformers import GPT2LMHeadModel, LlamaForCausalLM, PreTrainedModel

from ..configuration_llmkit_gpt import LlmkitGPTConfig
from ..modeling_llmkit_gpt import LlmkitGPTForCausalLM
from . import gpt2, llama
from ._common import check_source

TARGETS = ("gpt2", "llama")
_MODULES = {"gpt2": (gpt2, gpt2.to_gpt2), "llama": (llama, llama.to_llama)}


def _target(target: str):
    if target not in _MODULES:
        raise ValueError(f"unknown export target {target!r}; use one of {', '.join(TARGETS)}")
    return _MODULES[target]


def unsupported_reason(config: LlmkitGPTConfig, target: str) -> str | None:
    """None when llmkit-gpt `config` has an exact `target` equivalent, else a one-line reason."""
    return _target(target)[0].unsupported_reason(config)


def export_model(model: LlmkitGPTForCausalLM, target: str) -> PreTrainedModel:
    """The stock `target` model (GPT2LMHeadModel, LlamaForCausalLM) computing what `model` computes;
    ValueError with the one-line reason when there is none."""
    _, convert = _target(target)
    check_source(model, LlmkitGPTForCausalLM, "export_model")
    return convert(model)


def stock_target(config: LlmkitGPTConfig) -> str | None:
    """The first of TARGETS that `config` converts to exactly, or None."""
    return next((t for t in TARGETS if unsupported_reason(config, t) is None), None)


def import_model(model: nn.Module, **kwargs) -> LlmkitGPTForCausalLM:
    """A GPT2LMHeadModel or LlamaForCausalLM instance as the equivalent llmkit-gpt model (else ValueError).
    `kwargs` go to `from_gpt2` / `from_llama` (`fused_activation=True` for GPT-2)."""
    if isinstance(model, GPT2LMHeadModel):
        return gpt2.from_gpt2(model, **kwargs)
    if isinstance(model, LlamaForCausalLM):
        return llama.from_llama(model, **kwargs)
    raise ValueError(
        f"import_model converts a GPT2LMHeadModel or LlamaForCausalLM, got {type(model).__name__}"
    )


from_gpt2, from_llama = gpt2.from_gpt2, llama.from_llama

__all__ = ["TARGETS", "export_model", "from_gpt2", "from_llama", "import_model", "stock_target", "unsupported_reason"]
