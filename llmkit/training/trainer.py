"""The Trainer subclass every llmkit workflow runs: llmkit's weight-decay rule, a FLOP count taken once, and
perplexity and bits per character in every evaluation log."""

from __future__ import annotations

import math

from transformers import Trainer


class LlmkitTrainer(Trainer):
    """Trainer with llmkit's weight-decay rule and extra evaluation metrics in every log."""

    def __init__(self, *args, tokens_per_char: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_per_char = tokens_per_char
        self._non_embedding_parameters: int | None = None

    def get_decay_parameter_names(self, model) -> list[str]:
        # nanoGPT's rule: matrices (and embeddings) decay; biases and every norm's weights do not. The shape is the
        # whole parameter's, also where a process holds a shard (FSDP2's DTensors, DeepSpeed ZeRO-3's ds_shape).
        return [name for name, p in model.named_parameters() if len(getattr(p, "ds_shape", p.shape)) >= 2]

    def floating_point_ops(self, inputs: dict) -> int:
        # 6 x tokens x non-embedding parameters (whole parameters, not one process's shard). Trainer's own version
        # walks every module at every step (about 1% of a small model's step on CPU); the count is taken once.
        if self._non_embedding_parameters is None:
            self._non_embedding_parameters = non_embedding_parameters(self.model)
        return 6 * inputs["input_ids"].numel() * self._non_embedding_parameters

    def _issue_warnings_after_load(self, load_result) -> None:
        # Tied output heads are not saved, so reloading the best checkpoint reports them missing (a false alarm
        # in transformers 5.x's Trainer); only a missing key that is not tied is worth a warning.
        tied = getattr(self.model, "all_tied_weights_keys", None) or {}
        missing = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(type(load_result)(missing, load_result.unexpected_keys))

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "eval_loss" in logs:
            logs.update(perplexity_metrics(logs["eval_loss"], self.tokens_per_char, prefix="eval_"))
        super().log(logs, *args, **kwargs)


def non_embedding_parameters(model) -> int:
    from torch import nn

    def numel(p) -> int:
        return getattr(p, "ds_numel", None) or p.numel()

    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(numel(p) for p in model.parameters() if id(p) not in embedding)


def perplexity_metrics(loss: float, tokens_per_char: float | None, prefix: str = "") -> dict:
    out = {f"{prefix}perplexity": math.exp(min(loss, 50.0)), f"{prefix}bits_per_token": loss / math.log(2)}
    if tokens_per_char:
        out[f"{prefix}bits_per_char"] = loss * tokens_per_char / math.log(2)
    return out
