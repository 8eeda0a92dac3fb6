"""Shared steps of every conversion: build the target without a random init, load a complete state dict.

Design choices:
- The target is built under transformers' `no_init_weights` (no random init of weights overwritten next:
  seconds saved on a 124M model) and filled by a strict `load_state_dict`, so a conversion that forgets or
  invents a tensor fails with the names instead of leaving uninitialised memory in the model.
- Biases the source lacks and the target always has (GPT-2's Conv1D and LayerNorm biases) are the only
  tensors that may be filled, with zeros, which adds nothing: the function is unchanged.
- The result takes the source's dtype, device, train/eval mode and generation defaults.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights


def build_exact(
    model_cls: type[PreTrainedModel],
    config,
    state: dict[str, torch.Tensor],
    source: PreTrainedModel,
    *,
    zero_missing_biases: bool = False,
) -> PreTrainedModel:
    """`model_cls(config)` holding exactly `state` (plus zero biases where allowed), else like `source`."""
    with no_init_weights():
        model = model_cls(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if zero_missing_biases:
        for key in [k for k in missing if k.endswith(".bias")]:
            state[key] = torch.zeros_like(
                expected[key]
            )  # no bias in the source: a zero bias is the same function
        missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{type(source).__name__} -> {model_cls.__name__}: weights did not map, "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    model.tie_weights()
    model.to(device=source.device, dtype=source.dtype)
    model.train(source.training)
    if getattr(source, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(source.generation_config)
    return model


def check_source(model: nn.Module, expected: type, what: str) -> None:
    if not isinstance(model, expected):
        hint = (
            " (merge LoRA adapters first: model.merge_and_unload())" if hasattr(model, "peft_config") else ""
        )
        raise TypeError(f"{what} expects a {expected.__name__}, got {type(model).__name__}{hint}")


# target name -> its converter's mismatches(config): each converter module registers its own at import, so a
# reason can name another target the model fits without the converters importing each other
MISMATCHES: dict = {}


def unsupported_reason(target: str, config) -> str | None:
    """None when `config` converts exactly to `target`; else one line from the converter's mismatches (the option
    and what the target lacks, the setting that fits): the first option that does not fit, another target the model
    fits, and the settings that fit."""
    mismatches = MISMATCHES[target](config)
    if not mismatches:
        return None
    others = [name for name, find in MISMATCHES.items() if name != target and not find(config)]
    what = mismatches[0][0]
    fix = " ".join(setting for _, setting in mismatches)
    return f"{what}; {f'export with --to {others[0]} or ' if others else ''}retrain with {fix}"
