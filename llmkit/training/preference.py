"""Preference tuning on the training core: TRL's `DPOTrainer` (its losses, reference handling, tokenization of the
pairs and metrics) with llmkit's `LlmkitTrainer` guarantees (NaN guard, decay rule, signals, resume, run folder).

Design choices:
- `PreferenceTrainer(LlmkitTrainer, DPOTrainer)`: llmkit's hooks run first and hand on to TRL's through the MRO, so
  the loss, the batches and the logged metrics (`rewards/accuracies`, `rewards/margins`, `rewards/chosen`,
  `logps/chosen`, ...) are TRL's own; the guards, optimizer, schedule and checkpoints are the core's. llmkit-gpt's
  fused training loss is not asked for: TRL scores answers with its own fused LM head (`add_fused_lm_head`).
- The arguments are a `trl.DPOConfig` built from the same settings as every run's `TrainingArguments` (llmkit's
  defaults, then `training.*`), plus the `preference:` section: `method` (TRL's `loss_type`), `beta`,
  `label_smoothing`, `precompute_reference`; `max_length` is the run's context (`data.block_size`). TRL's own
  defaults that differ from the core's (gradient checkpointing on, bf16 everywhere) are not taken.
- The reference: the starting model, frozen, as a copy made before training (TRL would load it again from disk);
  with `lora:`, none: TRL disables the adapter to get the starting model back (no second copy in memory); with
  `preference.reference: NAME`, that model (it must share the tokenizer); with `precompute_reference`, the
  starting model's log-probabilities computed once before training, and no reference kept.
"""

from __future__ import annotations

import copy
import functools

from ..config import PREFERENCE_METHODS, Config, ConfigError
from .trainer import LlmkitTrainer


def preference_arguments(cfg: Config, user: dict) -> dict:
    """The `DPOConfig` fields the preference section and the core decide."""
    p = cfg.preference
    losses, weights = [PREFERENCE_METHODS[p.method]], [1.0]
    if p.sft_weight:
        losses, weights = [*losses, "sft"], [*weights, p.sft_weight]
    extra = {"beta": p.beta, "loss_type": losses, "loss_weights": weights, "label_smoothing": p.label_smoothing,
             "max_length": cfg.block_size, "precompute_ref_log_probs": p.precompute_reference,
             "disable_dropout": True}
    if "gradient_checkpointing" not in user and "activation_checkpointing" not in user:
        # DPOConfig defaults to checkpointing (through transformers' deprecated name, which warns); the core's is off
        extra["activation_checkpointing"] = False
    if "include_num_input_tokens_seen" not in user:
        extra["include_num_input_tokens_seen"] = "non_padding"  # tokens/s of varying batches
    return extra


def reference_model(cfg: Config, model, tokenizer):
    """The model DPO compares against (see the module docstring), or None where TRL needs none."""
    p = cfg.preference
    if p.reference is not None:
        from ..loading import load_model
        from ..tokenizers import tokenizer_hash

        reference, ref_tokenizer = load_model(p.reference, device="cpu", trust_remote_code=cfg.model.trust_remote_code)
        if len(ref_tokenizer) != len(tokenizer) or tokenizer_hash(ref_tokenizer) != tokenizer_hash(tokenizer):
            raise ConfigError(f"preference.reference={p.reference} uses another tokenizer than the model being tuned; "
                              "the reference must share it (omit preference.reference to use the starting model)")
        return reference.eval().requires_grad_(False)
    if cfg.lora is not None or p.precompute_reference:
        return None
    return copy.deepcopy(model).eval().requires_grad_(False)


@functools.cache
def preference_trainer_class():
    """The trainer class, made on first use (TRL is imported only by preference runs)."""
    from trl import DPOTrainer

    class PreferenceTrainer(LlmkitTrainer, DPOTrainer):
        # TRL's loss is the preference loss (scored by its own fused LM head): no llmkit-gpt fused loss, and no
        # perplexity of it in the logs
        language_model_loss = False

    return PreferenceTrainer
