"""llmkit: train, fine-tune, evaluate and share small GPT language models on the Hugging Face stack.

Importing llmkit makes the `llmkit-gpt` architecture known to the libraries of the ecosystem before they are
used, without importing torch or transformers itself: the command line answers `--help` and argument errors at
once.
- transformers: llmkit-gpt is registered with `AutoConfig`, `AutoModel` and `AutoModelForCausalLM`, and its
  classes are set as attributes of the `transformers` module, so lookups by class name (`transformers serve`,
  `getattr(transformers, config.architectures[0])`) find them.
- peft: llmkit-gpt gets GPT-2's entries in peft's default target-module tables (the module names are GPT-2's),
  so `LoraConfig(task_type="CAUSAL_LM")` without `target_modules` works.
- Each of these happens now when the library is already imported, else the moment it has finished loading: a
  finder on `sys.meta_path` stays there until the library has been executed. It survives a
  `importlib.util.find_spec(...)` made before the import (as TRL and others do) and any order of imports.
The public names (`LlmkitGPTConfig`, `LlmkitGPTForCausalLM`, `build_model`, ...) load on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"
__all__ = ["LlmkitGPTConfig", "LlmkitGPTForCausalLM", "LlmkitGPTModel", "build_config", "build_model"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")


def _register_transformers() -> None:
    models = sys.modules.get(f"{__name__}.models")
    if models is not None and not getattr(models, "REGISTERED", False):
        return  # transformers was imported by llmkit.models itself, which registers once it has loaded
    importlib.import_module(".models.registration", __name__).register_transformers()


def _register_peft() -> None:
    importlib.import_module(".models.registration", __name__).register_peft()


_HOOKS = {"transformers": _register_transformers, "peft": _register_peft}


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Runs a library's registration right after the library's package has been executed, once.

    It answers `find_spec` for the hooked names with the spec the rest of `sys.meta_path` gives, its loader's
    `exec_module` wrapped; it leaves `sys.meta_path` only when a hooked library has been executed, so a
    `find_spec` that is not followed by an import (a check whether the library is installed) changes nothing."""

    def __init__(self):
        self._busy: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        if name not in _HOOKS or name in self._busy or name in sys.modules:
            return None
        self._busy.add(name)  # the lookup below asks the meta path again, this finder included
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _done(name)

        spec.loader.exec_module = exec_then_register
        return spec


_pending: set[str] = set()


def _done(name: str) -> None:
    _pending.discard(name)
    if not _pending:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterImport)]
    _HOOKS[name]()


import importlib.util  # noqa: E402  (after the finder's definition: it is what find_spec uses)

for _name in _HOOKS:
    if _name in sys.modules:
        _HOOKS[_name]()
    else:
        _pending.add(_name)
if _pending and not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
