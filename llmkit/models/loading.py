"""Loading a model by name, for every command: a run folder, a model folder, a Hub id, or an adapter run.

Design choices:
- One loader serves generate, evaluate, merge, push and training's `model.from_pretrained`, so a name means the
  same thing everywhere. Hub ids (`openai-community/gpt2`) go straight to transformers and peft, which fetch and
  cache them as the Hub client does; `revision` picks a branch, tag or commit.
- An adapter run (a folder or Hub repo with `adapter_config.json`, as `llmkit train` writes for LoRA) is loaded as
  its base (from `base_model_name_or_path`) with the adapter applied. Its tokenizer comes from the adapter run
  when it has one (a LoRA run that added tokens saves the grown vocabulary there), and the base's embeddings
  are resized to it before the adapter's saved embedding rows are loaded.
- Weights are read from safetensors only (`use_safetensors=True`); `trust_remote_code` is off unless asked.
- Everything that cannot be loaded is one `ConfigError` line naming what and how to fix it.
"""

from __future__ import annotations

import json
import pathlib

from ..config import ConfigError, first_line

ADAPTER_CONFIG = "adapter_config.json"
def _load_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError  # a truncated or corrupt weights file

    return (OSError, ValueError, RuntimeError, KeyError, ImportError, SafetensorError)


LOAD_ERRORS = _load_errors()


def adapter_config(name: str, revision: str | None = None) -> dict | None:
    """The adapter_config.json of an adapter run (local folder or Hub repo), or None when `name` is no adapter."""
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        file = path / ADAPTER_CONFIG
        return json.loads(file.read_text()) if file.is_file() else None
    if path.exists() or not _may_be_hub_id(name):
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(pathlib.Path(hf_hub_download(name, ADAPTER_CONFIG, revision=revision)).read_text())
    except EntryNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - offline, missing repo, ...: not an adapter we can read; the model load says why
        return None


def _may_be_hub_id(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not name.startswith(".")


def is_adapter(name: str, revision: str | None = None) -> bool:
    return adapter_config(name, revision) is not None


def base_of(name: str, revision: str | None = None) -> str:
    """The base model an adapter run was trained on, as its user named it."""
    config = adapter_config(name, revision) or {}
    base = config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"adapter {name}: adapter_config.json names no base_model_name_or_path; pass the base model "
                          f"and use --adapter {name}")
    return base


def load_config(name: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """The transformers config of a model, or of an adapter run's base."""
    from transformers import AutoConfig

    import llmkit  # noqa: F401  (registers llmkit-gpt with the Auto classes)

    if is_adapter(name, revision):
        name, revision = base_of(name, revision), None
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as err:
        raise ConfigError(f"cannot load a model config from {name!r} ({first_line(err)}); pass a run folder, a model "
                          "folder or a Hub id (online)") from None


def pretrained_settings(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> dict:
    """A pretrained model's settings under llmkit's `model.*` names (only those the config family knows)."""
    config = load_config(name, revision=revision, trust_remote_code=trust_remote_code)
    settings = {
        "arch": config.model_type,
        "n_layer": config.num_hidden_layers,
        "n_head": config.num_attention_heads,
        "n_embd": config.hidden_size,
        "n_positions": getattr(config, "max_position_embeddings", None),
        "tie_word_embeddings": config.tie_word_embeddings,
    }
    if config.model_type in ("llmkit-gpt", "gpt2"):
        settings.update(n_inner=config.n_inner or 4 * config.n_embd, activation_function=config.activation_function)
    if config.model_type == "llmkit-gpt":
        for key in ("mlp_type", "norm_type", "position_embedding_type", "bias", "qkv_bias"):
            settings[key] = getattr(config, key)
    return settings


def load_tokenizer_for(name: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer a model or adapter run is used with (an adapter run's own, else its base's)."""
    from ..tokenizers import load_tokenizer

    sources = [name]
    if is_adapter(name, revision):
        sources.append(base_of(name, revision))
    last = None
    for source in sources:
        try:
            return load_tokenizer(source, revision=revision if source == name else None,
                                  trust_remote_code=trust_remote_code)
        except LOAD_ERRORS as err:
            last = err
    raise ConfigError(f"cannot load a tokenizer for {name!r} ({first_line(last)}); a run folder holds its tokenizer")


def load_model(name: str, *, adapter: str | None = None, device: str | None = None, revision: str | None = None,
               trust_remote_code: bool = False, trainable: bool = False, merge: bool = False,
               config_overrides: dict | None = None):
    """(model, tokenizer) for `name`, with `adapter` (or `name` itself, when it is an adapter run) applied.

    `trainable` keeps the adapter's weights trainable (to continue training it); `merge` folds the adapter into
    the base weights (`merge_and_unload`) and returns a plain transformers model. Inference use: eval mode.
    `config_overrides` are config attributes set at load time (dropout rates for fine-tuning)."""
    import torch
    from transformers import AutoModelForCausalLM

    import llmkit  # noqa: F401  (registers llmkit-gpt with the Auto classes)

    base, base_revision = name, revision
    if adapter is None and is_adapter(name, revision):
        adapter, base, base_revision = name, base_of(name, revision), None
    tokenizer = load_tokenizer_for(adapter or name, revision=revision if adapter in (None, name) else None,
                                   trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, revision=base_revision, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True, **(config_overrides or {}))
    except LOAD_ERRORS as err:
        what = f"the base model {base!r} of adapter {adapter!r}" if adapter else f"model {base!r}"
        raise ConfigError(f"cannot load {what}: {first_line(err)}; pass a run folder, a model folder or a Hub id "
                          "(online)") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # the adapter run added tokens; its rows come with it
    if adapter:
        model = apply_adapter(model, adapter, base=base, trainable=trainable)
        _adapter_generation_config(model, adapter)
        if merge:
            model = model.merge_and_unload()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    return (model if trainable else model.eval()), tokenizer


def _adapter_generation_config(model, adapter: str) -> None:
    """An adapter run saves the generation settings it was sampled with: they replace the base's."""
    from transformers import GenerationConfig

    try:
        model.get_base_model().generation_config = GenerationConfig.from_pretrained(adapter)
    except OSError:
        pass  # a plain peft adapter folder has none: the base's stay


def apply_adapter(model, adapter: str, *, base: str, trainable: bool = False):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except LOAD_ERRORS as err:
        message = first_line(err)
        if "size mismatch" in str(err):
            message = "its weights have other shapes than the base's (" + _first_mismatch(str(err)) + ")"
        raise ConfigError(f"adapter {adapter!r} does not load onto {base!r}: {message}; use the base it was "
                          "trained on") from None


def _first_mismatch(text: str) -> str:
    for line in text.splitlines():
        if "size mismatch" in line:
            return line.strip().rstrip(".")
    return first_line(ValueError(text))
