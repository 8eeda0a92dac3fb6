"""Feedback during training: one line per evaluation (loss, perplexity, bits per char, learning rate, tokens/s) and
samples from the prompts of the config's `sample` section, written to `samples.jsonl`.

Sampling never touches the training RNG (every generator's state is put back), so a run with samples and a
resumed run see the same data order and dropout masks as one without.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import random
import sys
import time

import numpy as np
import torch
from transformers import TrainerCallback

from ..config import Config

WALL = "wall_seconds"  # the log key of the wall clock


class WallClock(TrainerCallback):
    """Where a run's wall time goes, by phase: `lap(phase)` gives the time since the previous lap to `phase`.

    Put last among the Trainer's callbacks, it laps at every event of the training loop: the batch fetched before a
    step ("data loading"), the step itself (forward, backward, optimizer: "training steps"), logging, evaluation,
    checkpoints. Callbacks with a `wall_phase` and a running `seconds` count (samples, the report) get their own
    time out of the lap they fall in. `since`: the process's start (epoch seconds), for a "start-up" phase."""

    def __init__(self, since: float | None = None):
        self.seconds: dict[str, float] = {}
        self.parts: list = []  # callbacks timing their own work (add_parts)
        self._seen: dict[int, float] = {}
        self.training = False
        if since is not None:
            self.seconds["start-up"] = max(0.0, time.time() - since)
        self.mark = time.perf_counter()

    def add_parts(self, callbacks: list) -> None:
        self.parts += [c for c in callbacks if getattr(c, "wall_phase", None) and c not in self.parts]

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        spent, self.mark = now - self.mark, now
        for part in self.parts:
            done = part.seconds - self._seen.get(id(part), 0.0)
            if done > 0:
                self._seen[id(part)] = part.seconds
                self.seconds[part.wall_phase] = self.seconds.get(part.wall_phase, 0.0) + done
                spent -= done
        self.seconds[phase] = self.seconds.get(phase, 0.0) + max(0.0, spent)

    def breakdown(self) -> dict:
        """{phase: seconds} in the order the phases first came, and their total."""
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["total"] = round(sum(self.seconds.values()), 3)
        return out

    def on_train_begin(self, args, state, control, **kw):
        self.lap("trainer set-up")
        self.training = True

    def on_step_begin(self, args, state, control, **kw):
        self.lap("data loading")

    def on_step_end(self, args, state, control, **kw):
        self.lap("training steps")

    def on_log(self, args, state, control, logs=None, **kw):
        if not self.training:
            return
        logs = logs or {}
        if "train_runtime" in logs:  # the Trainer's summary, after the loop (and the best checkpoint's reload)
            self.lap(self._end(args))
        else:  # an evaluation logs its metrics before on_evaluate
            self.lap("evaluation" if any(k.startswith("eval_") for k in logs) else "logging")

    def on_evaluate(self, args, state, control, **kw):
        if self.training:
            self.lap("evaluation")

    def on_save(self, args, state, control, **kw):
        if self.training:
            self.lap("checkpoints")

    def on_train_end(self, args, state, control, **kw):
        self.lap(self._end(args))
        self.training = False

    @staticmethod
    def _end(args) -> str:
        return "end of training (best model reloaded)" if args.load_best_model_at_end else "end of training"


class FeedbackCallback(TrainerCallback):
    """At each evaluation: one line with loss, perplexity, learning rate and tokens/s, then samples."""

    wall_phase = "samples"  # WallClock: `seconds` is the time spent sampling

    def __init__(self, cfg: Config, tokenizer, tokens_per_step: int | None, output_dir: pathlib.Path):
        """`tokens_per_step`: fixed for packed text blocks; None counts the Trainer's `num_input_tokens_seen`."""
        self.cfg, self.tokenizer, self.tokens_per_step = cfg, tokenizer, tokens_per_step
        self.samples_path = output_dir / "samples.jsonl"
        self.last_time, self.first_step, self.first_tokens, self.lr = None, 0, 0, None
        self.train_seconds = 0.0  # time in training steps only (evaluations, samples and saves excluded)
        self.start, self.earlier_wall = time.perf_counter(), 0.0
        self.last_log = (0, 0.0)  # (tokens, train_seconds) at the previous training log line
        self.seconds = 0.0  # time spent sampling

    def on_train_begin(self, args, state, control, **kw):
        self.last_time, self.first_step = time.perf_counter(), state.global_step
        self.first_tokens = state.num_input_tokens_seen or 0
        self.start = self.last_time
        # a resumed run: its wall clock goes on from the last entry its checkpoint logged
        self.earlier_wall = next((h[WALL] for h in reversed(state.log_history) if WALL in h), 0.0)
        self.last_log = (self.tokens(state), 0.0)

    def log_fields(self, state, flops: float, training: bool) -> dict:
        """What every log entry gains: tokens and FLOPs so far, wall seconds since the run began (earlier sessions
        of a resumed run included), and for training lines the tokens/s of the steps since the previous one."""
        tokens = self.tokens(state)
        fields = {"tokens": tokens, "flops": float(flops),
                  WALL: round(self.earlier_wall + time.perf_counter() - self.start, 3)}
        if training:
            seen, seconds = tokens - self.last_log[0], self.train_seconds - self.last_log[1]
            if seen > 0 and seconds > 0:
                fields["tokens_per_second"] = seen / seconds
            self.last_log = (tokens, self.train_seconds)
        return fields

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        self.train_seconds += now - self.last_time
        self.last_time = now

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "learning_rate" in logs:
            self.lr = logs["learning_rate"]

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
        if not metrics:
            return
        scheduler = kw.get("lr_scheduler")
        if scheduler is not None:
            self.lr = scheduler.get_last_lr()[0]
        if state.is_world_process_zero:
            tps = self.throughput(state)
            lr = f"{self.lr:.2e}" if self.lr is not None else "-"
            bpc = f"bpc {metrics['eval_bits_per_char']:.3f} | " if "eval_bits_per_char" in metrics else ""
            if "eval_rewards/accuracies" in metrics:  # a preference run: TRL's reward accuracy and margin
                quality = (f"reward accuracy {metrics['eval_rewards/accuracies']:.3f} | margin "
                           f"{metrics.get('eval_rewards/margins', float('nan')):.3f}")
            else:
                quality = f"ppl {metrics.get('eval_perplexity', float('nan')):.2f}"
            line = (
                f"step {state.global_step}/{state.max_steps} | eval loss {metrics['eval_loss']:.4f} | "
                f"{quality} | {bpc}lr {lr} | {tps:,.0f} tok/s"
            )
            print(line, file=sys.stderr, flush=True)
        # A sharded model (FSDP, DeepSpeed ZeRO-3) needs every process in each forward: all of them sample (the same
        # seed gives the same text); otherwise the main process samples alone.
        sampling = model is not None and self.cfg.sample.prompts and self.cfg.sample.max_new_tokens > 0
        if sampling and (state.is_world_process_zero or is_sharded(model)):
            began = time.perf_counter()
            self._samples(model, state.global_step, write=state.is_world_process_zero)
            self.seconds += time.perf_counter() - began
        self.last_time = time.perf_counter()

    def _samples(self, model, step: int, write: bool = True) -> None:
        from ..models.generation import generate_texts

        with training_rng_untouched(), own_precision(model):
            texts = generate_texts(model, self.tokenizer, self.cfg.sample.prompts, **sample_kwargs(self.cfg),
                                   chat=self.cfg.data.format in ("instruct", "preference"))
        if not write:
            return
        with self.samples_path.open("a") as f:
            for prompt, text in zip(self.cfg.sample.prompts, texts):
                print(f"--- sample at step {step} | prompt {prompt!r}\n{prompt}{text}", file=sys.stderr, flush=True)
                f.write(json.dumps({"step": step, "prompt": prompt, "text": text}) + "\n")

    def tokens(self, state) -> int:
        """Tokens trained on so far, this run's and earlier sessions' (a resumed run's)."""
        if self.tokens_per_step is None:
            return int(state.num_input_tokens_seen or 0)
        return state.global_step * self.tokens_per_step

    def throughput(self, state) -> float:
        """Tokens/s of the steps this process trained (a resumed run started later), training time only."""
        if self.tokens_per_step is None:
            seen = (state.num_input_tokens_seen or 0) - self.first_tokens
        else:
            seen = (state.global_step - self.first_step) * self.tokens_per_step
        return seen / self.train_seconds if self.train_seconds > 0 else 0.0


def is_sharded(model) -> bool:
    """True when each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3)."""
    from transformers.distributed.fsdp import is_fsdp_managed_module
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model))


@contextlib.contextmanager
def training_rng_untouched():
    """Sampling seeds every generator (`set_seed`): put Python's, NumPy's, torch's and CUDA's states back after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def own_precision(model):
    """Generate with the model's own forward, not the autocast wrapper accelerate's mixed precision puts around it
    for training (`prepare_model` keeps the original as `_original_forward`, as `unwrap_model` uses it). Decoding
    runs a forward per token without gradients, where autocast keeps no cast weights: each linear layer casts its
    fp32 weight to bf16 again for every token (the "samples" phase of benchmarks/wall_time.py). The weights are
    fp32; the samples are what the saved model generates. Attention kernels that take half precision only
    (flash-attention, hub kernels) keep the wrapper: they would refuse fp32 inputs."""
    original = model.__dict__.get("_original_forward")
    wrapper = model.__dict__.get("forward")
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if original is None or wrapper is None or attention not in ("eager", "sdpa"):
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapper


def sample_kwargs(cfg: Config) -> dict:
    s = cfg.sample
    return dict(
        max_new_tokens=s.max_new_tokens,
        do_sample=s.do_sample,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        repetition_penalty=s.repetition_penalty,
        seed=s.seed,
        stop=s.stop,
    )
