"""Every private touchpoint of a dependency, in one place, with the versions it was checked against.

llmkit uses a few names its dependencies do not promise to keep. Each is reached through this module only, so a
release that moves one breaks here, in `check()`, named, rather than deep inside a run. `check()` is run by the
test suite (tests/test_compat.py), and so by `scripts/check_dependencies.py` against the newest releases and the
lower bounds. Bottom layer: it imports nothing of llmkit's.

| touchpoint | used by | why |
|---|---|---|
| `torch._foreach_norm` | training/guards.py | one fused pass over every gradient for the NaN/inf guard |
| `torch.ops.mkldnn._linear_pointwise` | models/onednn.py (directly: it travels with exported code) | oneDNN's matmul, where PyTorch's BLAS is slow |
| `Trainer._get_grad_norm` (overridden) | training/trainer.py | read the norm the Trainer already took |
| `Trainer._issue_warnings_after_load` (overridden) | training/trainer.py | no false "missing" for tied heads |
| `Trainer._load_from_checkpoint`, `Trainer._load_best_model` | training/workflow.py | a run killed while writing its final files |
| `Trainer.save_model(_internal_call=)` (overridden), the order inside `Trainer._save_checkpoint` | training/trainer.py | under FSDP every process makes a checkpoint's folder before the Trainer looks for the best one |
| `StopStringCriteria.clean_tokenizer_vocab` (overridden) | models/generation.py | a probe prefix char vocabularies can encode |
| `huggingface_hub.utils._http.default_client_factory` | hub.py | the Hub client with a timeout on every request |
| `transformers.cli.serving`: `ModelLoader` (subclassed), `ModelManager`, `build_server` | serve.py (directly: the one module that serves) | transformers' server, pinned to the model llmkit loads |
"""

from __future__ import annotations

import inspect

CHECKED_AGAINST = {"torch": "2.13.0", "transformers": "5.25.0", "huggingface_hub": "2.4.0"}

TRAINER_OVERRIDES = {"_get_grad_norm": ("model", "grad_norm"), "_issue_warnings_after_load": ("load_result",),
                     "save_model": ("output_dir", "_internal_call")}  # LlmkitTrainer's: makes the folder first
TRAINER_CALLS = {"_load_from_checkpoint": ("resume_from_checkpoint",), "_load_best_model": ()}
SERVING_LOADER = {"load_model_and_processor": ("model_id", "on_progress"), "load_config": ("model_id",),
                  "load_processor": ("model_id",)}  # what llmkit serve's PinnedLoader overrides
SERVING_CALLS = {"__init__": ("loader", "generation_state", "force_model"),  # ModelManager(...)
                 "shutdown": (), "get_engine": ("model",)}  # and its `is_dead` (its engines' `is_dead`, `fatal_error`)
SERVER_ARGS = ("model_manager", "chat_handler", "completion_handler", "response_handler", "transcription_handler",
               "systemone_handler")


def foreach_norm(tensors):
    import torch

    return torch._foreach_norm(tensors)


def onednn_linear(a, b_t, bias=None):
    """a @ b_t.T (+ bias) on oneDNN, any strides."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


def load_checkpoint(trainer, checkpoint: str) -> None:
    trainer._load_from_checkpoint(checkpoint)


def load_best_model(trainer) -> None:
    trainer._load_best_model()


def hub_client_factory():
    from huggingface_hub.utils._http import default_client_factory

    return default_client_factory


def stop_string_vocab(tokenizer, static_prefix: str, matching_mode: str):
    from transformers import StopStringCriteria

    return StopStringCriteria.clean_tokenizer_vocab(tokenizer, static_prefix, matching_mode)


def check() -> list[str]:
    """What is missing or changed among the touchpoints above, one line each (empty: all as checked)."""
    problems = []

    def needs(obj, name: str, params: tuple[str, ...], where: str):
        fn = getattr(obj, name, None)
        if fn is None:
            problems.append(f"{where}.{name} is gone")
            return
        try:
            have = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            return  # a builtin without a signature: its presence is what can be checked
        missing = [p for p in params if p not in have]
        if missing:
            problems.append(f"{where}.{name} no longer takes {', '.join(missing)} (has {', '.join(have)})")

    import torch
    from transformers import StopStringCriteria, Trainer

    needs(torch, "_foreach_norm", (), "torch")
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        problems.append("torch.ops.mkldnn._linear_pointwise is gone")
    for name, params in {**TRAINER_OVERRIDES, **TRAINER_CALLS}.items():
        needs(Trainer, name, params, "transformers.Trainer")
    needs(StopStringCriteria, "clean_tokenizer_vocab", ("tokenizer", "static_prefix"),
          "transformers.StopStringCriteria")
    try:
        from huggingface_hub.utils import _http
    except ImportError:
        problems.append("huggingface_hub.utils._http is gone")
    else:
        needs(_http, "default_client_factory", (), "huggingface_hub.utils._http")
    try:
        from transformers.cli.serving import model_manager, server
    except ImportError:
        problems.append("transformers.cli.serving.model_manager or .server is gone")
    else:
        for name, params in SERVING_LOADER.items():
            needs(getattr(model_manager, "ModelLoader", None), name, params, "transformers.cli.serving.ModelLoader")
        for name, params in SERVING_CALLS.items():
            needs(getattr(model_manager, "ModelManager", None), name, params, "transformers.cli.serving.ModelManager")
        needs(server, "build_server", SERVER_ARGS, "transformers.cli.serving.server")
        if not isinstance(getattr(getattr(model_manager, "ModelManager", None), "is_dead", None), property):
            problems.append("transformers.cli.serving.ModelManager.is_dead is no longer a property")
    return problems
