"""llmkit: train, fine-tune, evaluate and share small GPT language models on the Hugging Face stack.

Importing llmkit makes the `llmkit-gpt` architecture known to transformers' Auto classes before they are used,
without importing torch or transformers itself: the command line answers `--help` and argument errors at once.
- When transformers is already imported, llmkit-gpt is registered now.
- Otherwise a finder on `sys.meta_path` waits for `import transformers` and registers llmkit-gpt the moment
  transformers has finished loading, so `AutoModelForCausalLM.from_pretrained(run)` works in any order of imports.
The public names (`LlmkitGPTConfig`, `LlmkitGPTForCausalLM`, `build_model`, ...) load on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"
__all__ = ["LlmkitGPTConfig", "LlmkitGPTForCausalLM", "LlmkitGPTModel", "build_config", "build_model"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")


def _register() -> None:
    importlib.import_module(".models", __name__)  # registers llmkit-gpt with AutoConfig/AutoModel(ForCausalLM)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Runs `_register()` right after the `transformers` package has been executed, once."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
