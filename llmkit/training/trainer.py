"""The Trainer subclass every llmkit workflow runs: llmkit's weight-decay rule, a FLOP count taken once,
perplexity and bits per character in every evaluation log, and llmkit-gpt's fused loss asked for explicitly in
training steps (the model itself keeps transformers' contract and returns logits unless asked)."""

from __future__ import annotations

import math
import pathlib

import torch
from transformers import Trainer

from .guards import grads_finite, nonfinite_error


class LlmkitTrainer(Trainer):
    """Trainer with llmkit's weight-decay rule and extra evaluation metrics in every log."""

    language_model_loss = True  # the loss is the model's next-token loss: fused for llmkit-gpt, perplexity in logs

    def __init__(self, *args, tokens_per_char: float | None = None, on_nonfinite: str = "stop", progress=None,
                 full_eval_dataset=None, **kwargs):
        """`progress`: the run's FeedbackCallback, whose clock and token count annotate every log entry (tokens,
        FLOPs, wall seconds, tokens/s), so a report can plot any metric against any of them.
        `full_eval_dataset`: the whole validation split where `eval_dataset` is a subsample of it
        (`training.eval_subsample_tokens`): the evaluation at the last step, and the final one, use it."""
        super().__init__(*args, **kwargs)
        self.full_eval_dataset = full_eval_dataset
        self.full_eval_steps: set[int] = set()  # steps whose logged evaluation scored the whole split
        self.tokens_per_char = tokens_per_char
        self.progress = progress
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self._skip_update = False
        self._non_embedding_parameters: int | None = None
        self._grad_norm = None
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._fused_loss = self.language_model_loss and getattr(getattr(base, "config", None), "model_type",
                                                                None) == "llmkit-gpt"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The Trainer's loss; a training step of llmkit-gpt asks for its chunked fused loss (no logits made)."""
        if self._fused_loss and model.training and not return_outputs and self.compute_loss_func is None \
                and self.label_smoother is None:
            inputs = {**inputs, "fused_loss": True}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step; a NaN or infinite loss stops the run here, before the optimizer applies it
        (`training.on_nonfinite: stop`), or drops this update (`skip`)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            self._nonfinite("training loss", float(loss.detach().float().mean()))
            loss = torch.zeros_like(loss)
        return loss

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if getattr(optimizer, "_llmkit_guarded", False):
            return optimizer
        step = optimizer.step

        def guarded_step(*args, **kwargs):  # a non-finite gradient never reaches the weights
            norm, self._grad_norm = self._grad_norm, None  # the Trainer's own norm of this step, when it took one
            finite = (grads_finite(p for g in optimizer.param_groups for p in g["params"]) if norm is None
                      else math.isfinite(float(norm)))
            if self._skip_update or not finite:
                if not self._skip_update:
                    self._nonfinite("gradient norm", float("nan"))
                self._skip_update = False
                optimizer.zero_grad(set_to_none=True)
                return None
            return step(*args, **kwargs)

        optimizer.step = guarded_step
        optimizer._llmkit_guarded = True
        return optimizer

    def _get_grad_norm(self, model, grad_norm=None):
        # The total gradient norm the Trainer computes before every optimizer step (for clipping and the log): a
        # NaN or inf in any gradient makes it non-finite, so the guard reads it instead of taking norms again.
        self._grad_norm = super()._get_grad_norm(model, grad_norm)
        return self._grad_norm

    def _nonfinite(self, what: str, value: float) -> None:
        if self.on_nonfinite == "skip":
            self._skip_update = True
            self.skipped_steps += 1
            return
        raise nonfinite_error(self.state.global_step + 1, what, value, pathlib.Path(self.args.output_dir),
                              self.args.fp16)

    def get_decay_parameter_names(self, model) -> list[str]:
        # nanoGPT's rule: matrices (and embeddings) decay; biases and every norm's weights do not. The shape is the
        # whole parameter's, also where a process holds a shard (FSDP2's DTensors, DeepSpeed ZeRO-3's ds_shape).
        return [name for name, p in model.named_parameters() if len(getattr(p, "ds_shape", p.shape)) >= 2]

    def floating_point_ops(self, inputs: dict) -> int:
        # 6 x tokens x non-embedding parameters (whole parameters, not one process's shard). Trainer's own version
        # walks every module at every step (about 1% of a small model's step on CPU); the count is taken once.
        if self._non_embedding_parameters is None:
            self._non_embedding_parameters = non_embedding_parameters(self.model)
        # An optimizer that reports its own work per step (Muon's Newton-Schulz iterations) adds it, spread over
        # the step's micro-batches.
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # inside accelerate's wrapper
        extra = getattr(optimizer, "ns_flops", 0) // max(1, self.args.gradient_accumulation_steps)
        return 6 * inputs["input_ids"].numel() * self._non_embedding_parameters + extra

    def _issue_warnings_after_load(self, load_result) -> None:
        # Tied output heads are not saved, so reloading the best checkpoint reports them missing (a false alarm
        # in transformers 5.x's Trainer); only a missing key that is not tied is worth a warning.
        tied = getattr(self.model, "all_tied_weights_keys", None) or {}
        missing = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(type(load_result)(missing, load_result.unexpected_keys))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's save. Under FSDP with sharded state dicts it writes nothing, so a checkpoint's folder would
        appear only when the main process writes its shards, after the barrier where every process looks for the
        best checkpoint's folder: processes that looked first would skip reloading the best model at the end while
        the others load it collectively, and the run would hang. Every process makes the folder first."""
        if self.is_fsdp_enabled and output_dir is not None:
            pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
        super().save_model(output_dir, _internal_call=_internal_call)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The Trainer's evaluation step, under `torch.inference_mode` as well as its `no_grad`: no autograd
        bookkeeping at all (views and version counters), which takes a measurable share of a small model's
        evaluation on a CPU (benchmarks/wall_time.py). Sharded models (FSDP, XLA FSDP, DeepSpeed, transformers'
        own distributed loading) keep `no_grad` alone: they gather parameters in the forward that their training
        steps then reuse, which inference tensors cannot be."""
        sharded = bool(self.is_fsdp_enabled or self.is_fsdp_xla_enabled or self.is_deepspeed_enabled
                       or getattr(self, "is_distributed_loading_by_transformers", False))
        with torch.inference_mode(not sharded):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The Trainer's evaluation; on the whole validation split at the last step when the run evaluates a
        subsample during training."""
        if eval_dataset is None and self.full_eval_dataset is not None and \
                self.state.global_step >= self.state.max_steps > 0:
            eval_dataset = self.full_eval_dataset
        if self.full_eval_dataset is None or eval_dataset is self.full_eval_dataset:
            self.full_eval_steps.add(self.state.global_step)
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                metric_key_prefix=metric_key_prefix)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "eval_loss" in logs and self.language_model_loss:
            logs.update(perplexity_metrics(logs["eval_loss"], self.tokens_per_char, prefix="eval_"))
        if self.progress is not None and "train_runtime" not in logs:  # the run's summary line has its own
            flops = self.state.total_flos + self.current_flos * max(1, self.args.world_size)
            logs.update(self.progress.log_fields(self.state, flops, training="loss" in logs))
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
