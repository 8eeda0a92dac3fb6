"""LoRA fine-tuning through peft: the config's `lora:` section becomes a `peft.LoraConfig`.

Design choices:
- The section's keys are `LoraConfig`'s own fields (checked with a did-you-mean in `llmkit.config`), so peft's
  documentation is llmkit's. llmkit only sets defaults: the seeds' `r=8, lora_alpha=32, lora_dropout=0.05`,
  `task_type=CAUSAL_LM`, and target modules per architecture from peft's own table (`c_attn` for GPT-2,
  `q_proj`/`v_proj` for Llama); llmkit-gpt uses GPT-2's names, so its default is GPT-2's `c_attn` (the fused
  q|k|v projection), and `c_proj`, `c_fc` or `all-linear` work on it as on GPT-2.
- GPT-2 stores its projections as `Conv1D`: `fan_in_fan_out` is set for the user when a target is one.
- Target names that match no module stop with one line naming the modules that exist.
- When the embeddings grew for new special tokens, the embedding and the head are trained and saved with the
  adapter (`modules_to_save`, kept tied when the model ties them), so the adapter reloads onto a fresh base.
"""

from __future__ import annotations

import re

from torch import nn

from ..config import ConfigError, first_line

DEFAULTS = dict(r=8, lora_alpha=32, lora_dropout=0.05)
LLMKIT_TARGETS = ["c_attn"]


def default_targets(model) -> list[str] | str:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TABLE

    model_type = model.config.model_type
    if model_type == "llmkit-gpt":
        return list(LLMKIT_TARGETS)
    return list(TABLE.get(model_type, [])) or "all-linear"


def layer_names(model) -> list[str]:
    """The distinct names (last component) of the layers LoRA can wrap: linear, Conv1D and embedding layers."""
    from transformers.pytorch_utils import Conv1D

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, (nn.Linear, Conv1D, nn.Embedding))}
    return sorted(names)


def _matches(model, target: str) -> list[str]:
    return [name for name, _ in model.named_modules() if name == target or name.endswith("." + target)]


def lora_config(settings: dict, model, *, grew_vocab: bool = False):
    """The `LoraConfig` of a `lora:` section for `model`; one-line ConfigError for what peft would reject."""
    from peft import LoraConfig, TaskType
    from transformers.pytorch_utils import Conv1D

    kwargs = {**DEFAULTS, "task_type": TaskType.CAUSAL_LM, **settings}
    targets = kwargs.get("target_modules") or default_targets(model)
    kwargs["target_modules"] = targets
    if isinstance(targets, str) and targets != "all-linear":
        matched = [name for name, _ in model.named_modules() if re.fullmatch(targets, name)]
        if not matched:
            raise ConfigError(f"lora.target_modules={targets!r} matches no module of this {model.config.model_type} "
                              f"model; its layers are {', '.join(layer_names(model))}")
    elif isinstance(targets, (list, tuple)):
        for target in targets:
            if not _matches(model, target):
                raise ConfigError(f"lora.target_modules: {target!r} matches no module of this "
                                  f"{model.config.model_type} model; its layers are {', '.join(layer_names(model))}")
        matched = [name for t in targets for name in _matches(model, t)]
    else:
        matched = []
    if "fan_in_fan_out" not in settings and any(isinstance(model.get_submodule(n), Conv1D) for n in matched):
        kwargs["fan_in_fan_out"] = True  # GPT-2's Conv1D stores (in, out)
    if targets == "all-linear" and "fan_in_fan_out" not in settings:
        kwargs["fan_in_fan_out"] = any(isinstance(m, Conv1D) for m in model.modules())
    if grew_vocab and not settings.get("modules_to_save"):
        embedding = _module_name(model, model.get_input_embeddings())
        head = _module_name(model, model.get_output_embeddings())
        kwargs["modules_to_save"] = [n for n in (embedding, head) if n]
        if model.config.tie_word_embeddings:
            kwargs.setdefault("ensure_weight_tying", True)
    try:
        return LoraConfig(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"lora settings rejected by peft: {first_line(err)}") from None


def _module_name(model, module) -> str | None:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    return None


def apply_lora(model, settings: dict, *, grew_vocab: bool = False, log=print):
    """`peft.get_peft_model` with `lora_config`; logs the trainable share the way the seeds print it."""
    from peft import get_peft_model

    config = lora_config(settings, model, grew_vocab=grew_vocab)
    try:
        peft_model = get_peft_model(model, config)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"lora settings rejected by peft for this {model.config.model_type} model: {first_line(err)}") from None
    log(trainable_line(peft_model))
    return peft_model


def trainable_line(model) -> str:
    trainable, total = model.get_nb_trainable_parameters()
    return f"trainable: {trainable:,} / {total:,} total ({100 * trainable / total:.2f}%)"
