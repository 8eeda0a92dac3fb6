"""Models: the llmkit GPT and the factory that builds it or the stock GPT-2."""

from .configuration_llmkit_gpt import LlmkitGPTConfig
from .factory import ARCHITECTURES, build_config, build_model
from .modeling_llmkit_gpt import LlmkitGPTForCausalLM, LlmkitGPTModel, LlmkitGPTPreTrainedModel
from .registration import register_transformers

register_transformers()
REGISTERED = True

__all__ = [
    "ARCHITECTURES",
    "LlmkitGPTConfig",
    "LlmkitGPTForCausalLM",
    "LlmkitGPTModel",
    "LlmkitGPTPreTrainedModel",
    "build_config",
    "build_model",
]
