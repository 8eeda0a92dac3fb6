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

import copy
import functools
import json
import pathlib

from .errors import ConfigError, first_line

ADAPTER_CONFIG = "adapter_config.json"
def _load_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError  # a truncated or corrupt weights file

    return (OSError, ValueError, RuntimeError, KeyError, ImportError, SafetensorError)


LOAD_ERRORS = _load_errors()


def _stamp(name: str) -> tuple:
    """What a cached lookup of `name` depends on locally: the config files' modification times (a run folder that
    is trained again is read again); empty for a Hub id, which the Hub client caches by revision."""
    path = pathlib.Path(name).expanduser()
    if not path.is_dir():
        return ()
    return tuple((f, (path / f).stat().st_mtime_ns) for f in ("config.json", ADAPTER_CONFIG) if (path / f).is_file())


def adapter_config(name: str, revision: str | None = None) -> dict | None:
    """The adapter_config.json of an adapter run (local folder or Hub repo), or None when `name` is no adapter.
    Looked up once per name in a process (a Hub id is then one request per command, not one per question)."""
    check_exists(name)
    found = _adapter_config(name, revision, _stamp(name))
    return copy.deepcopy(found)


@functools.lru_cache(maxsize=128)
def _adapter_config(name: str, revision: str | None, stamp: tuple) -> dict | None:
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


def quiet_library_output() -> None:
    """For every command, and `llmkit serve`'s model process: transformers' own progress bars ("Loading weights",
    "Writing model shards") say nothing to a user; the Trainer's training bar and datasets' tokenizing bars stay, and
    the Hub's transfer bars on a terminal."""
    import sys
    import warnings

    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging

    hub_bars = not are_progress_bars_disabled() and sys.stderr.isatty()
    logging.disable_progress_bar()  # also turns the Hub's off
    if hub_bars:
        enable_progress_bars()
    # peft 0.21 reads a property transformers renamed: a warning about library internals, not the user's input
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # peft saves the grown embedding with an adapter, as llmkit intends, and says so at every save
    warnings.filterwarnings("ignore", message="Setting `save_embedding_layers` to `True`", category=UserWarning)
    # ... and, reloading such an adapter, does not find GPT-2's embedding name in its own list (the tie holds)
    warnings.filterwarnings("ignore", message="You have requested `ensure_weight_tying`", category=UserWarning)


def check_exists(name: str, what: str | None = None) -> None:
    """A name that can only be a local path (absolute, `./`, `~`, more than one `/`, or under a folder that exists
    here) and does not exist is reported at once, not after the Hub client's retries."""
    path = pathlib.Path(name).expanduser()
    if path.exists():
        return
    first = name.split("/", 1)[0]
    if not _may_be_hub_id(name) or name.count("/") > 1 or (first != name and pathlib.Path(first).is_dir()):
        raise ConfigError(f"{what or name}: no such folder; pass an existing run or model folder, or a Hub id "
                          "(namespace/name)")


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
    """The transformers config of a model, or of an adapter run's base: read once per name in a process (a
    command resolves its settings, checks them and builds the model from this one read); each caller gets a copy."""
    if is_adapter(name, revision):
        adapter, name, revision = name, base_of(name, revision), None
        check_exists(name, f"cannot load the base model {name!r} of adapter {adapter!r}")
    return copy.deepcopy(_load_config(name, revision, trust_remote_code, _stamp(name)))


@functools.lru_cache(maxsize=128)
def _load_config(name: str, revision: str | None, trust_remote_code: bool, stamp: tuple):
    from transformers import AutoConfig

    import llmkit  # noqa: F401  (registers llmkit-gpt with the Auto classes)

    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as err:
        raise ConfigError(f"cannot load a model config from {name!r} ({first_line(err)}); pass a run folder, a model "
                          "folder or a Hub id (online)") from None


def pretrained_settings(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> dict:
    """A pretrained model's settings under llmkit's `model.*` names (only those the config family knows)."""
    from .model_options import settings_of

    return settings_of(load_config(name, revision=revision, trust_remote_code=trust_remote_code))


def load_tokenizer_for(name: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer a model or adapter run is used with (an adapter run's own, else its base's)."""
    from .tokenizers import load_tokenizer

    sources = [name]
    if is_adapter(name, revision):
        sources.append(base_of(name, revision))
    try:  # the model's config, read once, so that transformers does not read it again to pick the tokenizer class
        config = load_config(name, revision=revision, trust_remote_code=trust_remote_code)
    except ConfigError:
        config = None  # a tokenizer-only folder
    last = None
    for source in sources:
        try:
            return load_tokenizer(source, revision=revision if source == name else None,
                                  trust_remote_code=trust_remote_code, config=config)
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
    if adapter:
        check_exists(base, f"cannot load the base model {base!r} of adapter {adapter!r}")
    tokenizer = load_tokenizer_for(adapter or name, revision=revision if adapter in (None, name) else None,
                                   trust_remote_code=trust_remote_code)
    if adapter and is_adapter(base, base_revision):  # an adapter trained on an adapter run: that run, merged
        model, _ = load_model(base, revision=base_revision, trust_remote_code=trust_remote_code, device="cpu",
                              merge=True, config_overrides=config_overrides)
    else:
        config = load_config(base, revision=base_revision, trust_remote_code=trust_remote_code)  # the one read
        for key, value in (config_overrides or {}).items():
            setattr(config, key, value)
        try:
            model = AutoModelForCausalLM.from_pretrained(base, config=config, revision=base_revision,
                                                         trust_remote_code=trust_remote_code, use_safetensors=True)
        except LOAD_ERRORS as err:
            what = f"the base model {base!r} of adapter {adapter!r}" if adapter else f"model {base!r}"
            raise ConfigError(f"cannot load {what}: {first_line(err)}; pass a run folder, a model folder or a Hub "
                              "id (online)") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # the adapter run added tokens; its rows come with it
    if adapter:
        model = apply_adapter(model, adapter, base=base, trainable=trainable)
        _adapter_generation_config(model, adapter)
        if merge:  # a plain model, as from_pretrained gives one: peft's frozen flags on the base weights go
            model = model.merge_and_unload().requires_grad_(True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    model = model.to(device)
    return (model if trainable else model.eval()), tokenizer


def check_device(device: str) -> None:
    """A device this machine does not have is the user's input (one line, exit 2), not a library's RuntimeError."""
    import torch

    kind, _, index = str(device).partition(":")
    backend = getattr(torch, kind, None) if kind not in ("cpu", "meta") else None
    if kind in ("cpu", "meta"):
        return
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    count = backend.device_count() if available and hasattr(backend, "device_count") else 0
    if not available or (index.isdigit() and int(index) >= count):
        raise ConfigError(f"device {device} is not available on this machine; use device cpu"
                          f"{f' or {kind}:0..{count - 1}' if count else ''}")


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


def model_from_config(m, tokenizer):
    """The model a config's `model` section (`llmkit.config.ModelConfig`, resolved) describes, sized for
    `tokenizer`: built from scratch, or loaded from `from_pretrained` (a run, model folder, adapter run (merged)
    or Hub id). `arch: llmkit-gpt` on a pretrained GPT-2 converts it exactly (`from_gpt2`, its tanh GELU as one
    fused kernel): the fast path for fine-tuning GPT-2. Embeddings grow when the tokenizer has more tokens."""
    from .models.factory import build_model

    if m.from_pretrained is None:
        from .model_options import architecture_options

        options = architecture_options(m)
        model = build_model(m.arch, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **options)
    else:
        overrides = {}
        if m.dropout is not None:
            family = load_config(m.from_pretrained, revision=m.revision, trust_remote_code=m.trust_remote_code)
            names = [n for n in ("embd_pdrop", "attn_pdrop", "resid_pdrop", "attention_dropout") if hasattr(family, n)]
            overrides = dict.fromkeys(names, m.dropout)
        model, _ = load_model(m.from_pretrained, revision=m.revision, trust_remote_code=m.trust_remote_code,
                              device="cpu", merge=True, config_overrides=overrides)
        model.train()
        if m.arch != model.config.model_type:
            model = convert_for_training(model, m.arch)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    if m.attn_implementation:
        model.set_attn_implementation(m.attn_implementation)
    return model


def convert_for_training(model, arch: str):
    from transformers import GPT2LMHeadModel

    from .models.conversions import from_gpt2

    if arch == "llmkit-gpt" and isinstance(model, GPT2LMHeadModel):
        return from_gpt2(model, fused_activation=True).train()
    raise ValueError(f"model.arch={arch} cannot be applied to a pretrained {model.config.model_type} model; only GPT-2 "
                     "converts to llmkit-gpt for training (remove model.arch to keep the model's own architecture)")
