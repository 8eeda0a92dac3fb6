"""Models: the llmkit GPT and the factory that builds it or the stock GPT-2."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_llmkit_gpt import LlmkitGPTConfig
from .factory import ARCHITECTURES, build_config, build_model
from .modeling_llmkit_gpt import LlmkitGPTForCausalLM, LlmkitGPTModel, LlmkitGPTPreTrainedModel

AutoConfig.register(LlmkitGPTConfig.model_type, LlmkitGPTConfig, exist_ok=True)
AutoModel.register(LlmkitGPTConfig, LlmkitGPTModel, exist_ok=True)
AutoModelForCausalLM.register(LlmkitGPTConfig, LlmkitGPTForCausalLM, exist_ok=True)

__all__ = [
    "ARCHITECTURES",
    "LlmkitGPTConfig",
    "LlmkitGPTForCausalLM",
    "LlmkitGPTModel",
    "LlmkitGPTPreTrainedModel",
    "build_config",
    "build_model",
]
