"""llmkit: train, fine-tune, evaluate and share small GPT language models on the Hugging Face stack.

Importing llmkit registers the `llmkit-gpt` architecture with transformers' Auto classes.
"""

from .models import LlmkitGPTConfig, LlmkitGPTForCausalLM, LlmkitGPTModel, build_config, build_model

__version__ = "0.1.0"
__all__ = ["LlmkitGPTConfig", "LlmkitGPTForCausalLM", "LlmkitGPTModel", "build_config", "build_model"]
