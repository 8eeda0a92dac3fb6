"""llmkit-gpt made known to transformers and peft (called by `import llmkit`, see its docstring)."""

from __future__ import annotations


def register_transformers() -> None:
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from .configuration_llmkit_gpt import LlmkitGPTConfig
    from .modeling_llmkit_gpt import LlmkitGPTForCausalLM, LlmkitGPTModel, LlmkitGPTPreTrainedModel

    AutoConfig.register(LlmkitGPTConfig.model_type, LlmkitGPTConfig, exist_ok=True)
    AutoModel.register(LlmkitGPTConfig, LlmkitGPTModel, exist_ok=True)
    AutoModelForCausalLM.register(LlmkitGPTConfig, LlmkitGPTForCausalLM, exist_ok=True)
    # lookups by class name, as transformers' own tools do with `config.architectures`
    for cls in (LlmkitGPTConfig, LlmkitGPTModel, LlmkitGPTForCausalLM, LlmkitGPTPreTrainedModel):
        setattr(transformers, cls.__name__, cls)


def register_peft() -> None:
    """llmkit-gpt keeps GPT-2's module names, so each of peft's default target tables gets GPT-2's entry."""
    from peft.utils import constants

    for name in dir(constants):
        table = getattr(constants, name)
        if name.endswith("_MAPPING") and isinstance(table, dict) and "gpt2" in table:
            table.setdefault("llmkit-gpt", table["gpt2"])
