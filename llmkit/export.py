"""Folders for people without llmkit: `llmkit merge` (an adapter folded into its base) and `llmkit export` (an
llmkit-gpt run as its exact stock equivalent, GPT2LMHeadModel or LlamaForCausalLM, or with its modeling code).

Design choices:
- The output is a plain transformers model folder (safetensors, config, tokenizer, generation config) that
  `AutoModelForCausalLM` loads; a merge of an adapter on stock GPT-2 is a stock GPT-2. The `code` export carries
  llmkit-gpt's modeling files and an `auto_map`, for `trust_remote_code=True` (never llmkit's own default).
- Nothing is half-written and nothing is overwritten: the folder is written beside its destination and renamed
  into place when complete; an existing destination is refused before any work.
"""

from __future__ import annotations

import os
import pathlib
import shutil

from .errors import ConfigError, ParameterError, first_line


def check_new_folder(out: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(out).expanduser()
    if path.exists():
        raise ConfigError(f"{path} already exists; choose a new folder (nothing was written)")
    if not path.parent.exists():
        raise ConfigError(f"{path.parent} does not exist; create it or choose another destination")
    return path


def write_folder(out: pathlib.Path, write) -> pathlib.Path:
    """Call `write(tmp)` on a temporary sibling of `out`, then rename it to `out`."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def merge(adapter: str, out: str, *, base: str | None = None, revision: str | None = None,
          trust_remote_code: bool = False) -> pathlib.Path:
    """Fold a LoRA adapter run into its base (`merge_and_unload`) and save the plain model in `out`."""
    from .loading import is_adapter, load_model

    path = check_new_folder(out)
    if not is_adapter(adapter, revision):
        raise ConfigError(f"{adapter} is not an adapter run (no adapter_config.json); merge takes a LoRA run folder")
    model, tokenizer = load_model(base or adapter, adapter=adapter if base else None, revision=revision,
                                  trust_remote_code=trust_remote_code, device="cpu", merge=True)

    def write(tmp: pathlib.Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_folder(path, write)


TARGETS = ("gpt2", "llama", "code", "gguf")


def write_export(model, out: pathlib.Path, target: str) -> None:
    """Save llmkit-gpt `model` into the folder `out` as `target`: gpt2 | llama (exact stock equivalents) | code.
    Inference settings only: the KV cache on, whatever the run trained with."""
    model.config.use_cache = True
    if target == "code":
        _save_with_code(model, out)
        return
    from .models.conversions import export_model

    try:
        stock = export_model(model, target)
    except (ValueError, TypeError) as err:
        raise ParameterError("to", f" {target}: {first_line(err)}") from None
    stock.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)


def _save_with_code(model, out: pathlib.Path) -> None:
    """save_pretrained with the modeling code beside the weights and an auto_map naming it. The Auto-class
    registration is a class attribute, so it is undone afterwards: other saves stay code-free."""
    config_cls, model_cls = type(model.config), type(model)
    saved = (getattr(config_cls, "_auto_class", None), getattr(model_cls, "_auto_class", None))
    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class("AutoModelForCausalLM")
    try:
        model.save_pretrained(out)
    finally:
        config_cls._auto_class, model_cls._auto_class = saved


def export(run: str, out: str, *, to: str, revision: str | None = None, quant: str = "f32") -> pathlib.Path:
    """`llmkit export RUN OUT --to gpt2|llama|code|gguf`: a new folder that loads without llmkit (gguf: the
    GGUF file and an Ollama Modelfile, `llmkit/gguf_export.py`)."""
    from .loading import is_adapter, load_model

    if to not in TARGETS:
        raise ParameterError("to", f" {to} is unknown; use one of {', '.join(TARGETS)}")
    path = check_new_folder(out)
    if is_adapter(run, revision):
        raise ConfigError(f"{run} is an adapter run; merge it first (`llmkit merge {run} MERGED`), then export that")
    model, tokenizer = load_model(run, revision=revision, device="cpu")
    if model.config.model_type != "llmkit-gpt":
        raise ConfigError(f"{run} is a {model.config.model_type} model, already loadable without llmkit; "
                          "export converts llmkit-gpt runs")

    if to == "gguf":
        from .gguf_export import export_gguf

        return write_folder(path, lambda tmp: export_gguf(model, tokenizer, tmp, quant))

    def write(tmp: pathlib.Path) -> None:
        write_export(model, tmp, to)
        tokenizer.save_pretrained(tmp)

    return write_folder(path, write)
