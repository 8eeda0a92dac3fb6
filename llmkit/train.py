"""`llmkit train`: one YAML config to a trained model, through `transformers.Trainer` and `accelerate`.

Design choices:
- The Trainer does the loop, devices, data parallelism, mixed precision, checkpoints and resuming; llmkit
  supplies the data (packed blocks with `shift_labels`, so every position is scored), the model, the
  defaults below, and the feedback (eval lines with perplexity and tokens/s, samples, loss curve, metrics).
- Defaults a practitioner expects (each overridable by `training.<TrainingArguments field>`): AdamW with decay
  only on matrices (no decay on biases, norms of any kind), cosine schedule with warmup and a floor at 10%
  of the peak (`cosine_with_min_lr`), gradient clipping at 1.0, evaluation and checkpoints every
  `eval_steps`, the best checkpoint (by validation loss) reloaded at the end, bf16 autocast where the
  hardware has it (CUDA, CPUs with AVX512-BF16/AMX).
- `remove_unused_columns` is always off: our collator makes exactly the keys the model takes, and Trainer's
  column dropping is what silently trains on the wrong targets elsewhere.
- Resuming picks the last *complete* checkpoint (weights, optimizer, scheduler, trainer state all present),
  so a run killed while saving resumes from the one before. Data order, RNG and schedule are restored by
  the Trainer, and sampling during training never touches the training RNG, so a resumed run matches an
  uninterrupted one.
- Samples are generated on the main process only, with every RNG state put back afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import random
import re
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from .config import LLMKIT_TRAINING_EXTRAS, Config, ConfigError, first_line
from .data import BlockCollator, prepare_data
from .data import summary as data_summary
from .models import build_config, build_model

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def default_training_args(cfg: Config) -> dict:
    has_cuda = torch.cuda.is_available()
    return {
        "output_dir": "runs/llmkit",
        "max_steps": 1000,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 32,
        "learning_rate": 1e-3,
        "weight_decay": 0.1,
        "adam_beta1": 0.9,
        "adam_beta2": 0.99,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "warmup_steps": 100,
        "max_grad_norm": 1.0,
        "eval_strategy": "steps",
        "eval_steps": 250,
        "save_strategy": "steps",
        "save_steps": 250,
        "save_total_limit": 2,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "logging_steps": 50,
        "logging_first_step": True,
        "report_to": _default_report_to(),
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": has_cuda,
        "seed": cfg.data.seed,
        **_mixed_precision(),
        "optim": "adamw_torch_fused",  # one kernel for all parameters, on CPU too
        "disable_tqdm": False,
    }


def _default_report_to() -> str:
    try:
        import tensorboard  # noqa: F401

        return "tensorboard"
    except ImportError:
        return "none"


def _mixed_precision() -> dict:
    """bf16 autocast where the hardware computes in bf16: CUDA (fp16 on GPUs without bf16), or a CPU with
    AVX512-BF16 or AMX (1.15x on the CPU recipe's step here, same validation loss). Not on other
    accelerators (MPS, XPU, ...), nor on CPUs that would only emulate it. Weights, optimizer state and the
    loss stay fp32."""
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return {"bf16": bf16, "fp16": not bf16}
    if torch.accelerator.is_available():  # MPS, XPU, ...: the Trainer's own placement, fp32
        return {"bf16": False, "fp16": False}
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own capability checks
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return {"bf16": native, "fp16": False, "use_cpu": True}  # Trainer asks use_cpu for bf16 on CPU


def training_settings(cfg: Config) -> tuple[dict, dict]:
    """(llmkit's defaults overridden by the user's training settings, the user's own settings)."""
    args = default_training_args(cfg)
    user = {k: v for k, v in cfg.training.items() if k not in LLMKIT_TRAINING_EXTRAS}
    if "bf16" in user or "fp16" in user:  # a precision the user picks replaces the default pair as a whole
        args.update(bf16=False, fp16=False)
    args.update(user)
    return args, user


def training_arguments(cfg: Config, output_dir: str | None = None, has_eval: bool = True) -> TrainingArguments:
    args, user = training_settings(cfg)
    if output_dir:
        args["output_dir"] = output_dir
    if "save_steps" not in user and "eval_steps" in user:
        args["save_steps"] = user["eval_steps"]  # best-model tracking needs saves aligned with evaluations
    if not has_eval:
        args.update(eval_strategy="no", load_best_model_at_end=False)
        args.pop("metric_for_best_model", None)
    kwargs = dict(args.get("lr_scheduler_kwargs") or {})
    args["lr_scheduler_kwargs"] = {k: float(v) if isinstance(v, str) else v for k, v in kwargs.items()}
    args["remove_unused_columns"] = False
    try:
        return TrainingArguments(**args)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"training settings rejected by TrainingArguments: {str(err).splitlines()[0]}") from None


class LlmkitTrainer(Trainer):
    """Trainer with llmkit's weight-decay rule and extra evaluation metrics in every log."""

    def __init__(self, *args, tokens_per_char: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_per_char = tokens_per_char
        self._non_embedding_parameters: int | None = None

    def get_decay_parameter_names(self, model) -> list[str]:
        # nanoGPT's rule: matrices (and embeddings) decay; biases and every norm's weights do not.
        return [name for name, p in model.named_parameters() if p.dim() >= 2]

    def floating_point_ops(self, inputs: dict) -> int:
        # Trainer's own version walks every module to count parameters at every step (about 1% of a small
        # model's step on CPU); the count cannot change during a run, so it is taken once.
        if self._non_embedding_parameters is None:
            self._non_embedding_parameters = self.model.num_parameters(exclude_embeddings=True)
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


def perplexity_metrics(loss: float, tokens_per_char: float | None, prefix: str = "") -> dict:
    out = {f"{prefix}perplexity": math.exp(min(loss, 50.0)), f"{prefix}bits_per_token": loss / math.log(2)}
    if tokens_per_char:
        out[f"{prefix}bits_per_char"] = loss * tokens_per_char / math.log(2)
    return out


class FeedbackCallback(TrainerCallback):
    """At each evaluation: one line with loss, perplexity, learning rate and tokens/s, then samples."""

    def __init__(self, cfg: Config, tokenizer, tokens_per_step: int, output_dir: pathlib.Path):
        self.cfg, self.tokenizer, self.tokens_per_step = cfg, tokenizer, tokens_per_step
        self.samples_path = output_dir / "samples.jsonl"
        self.last_time, self.first_step, self.lr = None, 0, None
        self.train_seconds = 0.0  # time in training steps only (evaluations, samples and saves excluded)

    def on_train_begin(self, args, state, control, **kw):
        self.last_time, self.first_step = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        self.train_seconds += now - self.last_time
        self.last_time = now

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "learning_rate" in logs:
            self.lr = logs["learning_rate"]

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
        if state.is_world_process_zero and metrics:
            tps = self.throughput(state)
            lr = f"{self.lr:.2e}" if self.lr is not None else "-"
            line = (
                f"step {state.global_step}/{state.max_steps} | eval loss {metrics['eval_loss']:.4f} | "
                f"ppl {metrics.get('eval_perplexity', float('nan')):.2f} | "
                f"bpc {metrics.get('eval_bits_per_char', float('nan')):.3f} | lr {lr} | {tps:,.0f} tok/s"
            )
            print(line, file=sys.stderr, flush=True)
            if model is not None and self.cfg.sample.prompts and self.cfg.sample.max_new_tokens > 0:
                self._samples(model, state.global_step)
        self.last_time = time.perf_counter()

    def _samples(self, model, step: int) -> None:
        from .generate import generate_texts

        with training_rng_untouched():
            texts = generate_texts(model, self.tokenizer, self.cfg.sample.prompts, **sample_kwargs(self.cfg))
        with self.samples_path.open("a") as f:
            for prompt, text in zip(self.cfg.sample.prompts, texts):
                print(f"--- sample at step {step} | prompt {prompt!r}\n{prompt}{text}", file=sys.stderr, flush=True)
                f.write(json.dumps({"step": step, "prompt": prompt, "text": text}) + "\n")

    def throughput(self, state) -> float:
        steps = state.global_step - self.first_step  # this process's steps only (a resumed run started later)
        return steps * self.tokens_per_step / self.train_seconds if self.train_seconds > 0 else 0.0


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
    )


def build_model_for(cfg: Config, tokenizer) -> torch.nn.Module:
    m = cfg.model
    if m.from_pretrained:
        try:
            model = AutoModelForCausalLM.from_pretrained(m.from_pretrained, trust_remote_code=m.trust_remote_code)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"model.from_pretrained={m.from_pretrained}: cannot load a model ({first_line(err)})"
            ) from None
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    else:
        options = _model_options(cfg)
        model = build_model(
            m.arch,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **options,
        )
    if m.attn_implementation:
        model.set_attn_implementation(m.attn_implementation)
    from .generate import make_generation_config

    settings = sample_kwargs(cfg)  # the saved model generates as the run's samples did
    del settings["seed"]
    settings["max_new_tokens"] = settings["max_new_tokens"] or 100
    try:
        model.generation_config = make_generation_config(tokenizer, **settings)
    except ValueError as err:
        raise ConfigError(f"sample settings: {first_line(err)}") from None
    return model


def _model_options(cfg: Config) -> dict:
    """The model section as build_model settings, validated (one-line ConfigError) without building anything."""
    m = cfg.model
    options = dict(n_positions=m.n_positions, n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
                   dropout=m.dropout, tie_word_embeddings=m.tie_word_embeddings)
    for k in ("n_inner", "activation_function", "mlp_type", "norm_type", "position_embedding_type", "bias", "qkv_bias"):
        if getattr(m, k) is not None:
            options[k] = getattr(m, k)
    try:
        build_config(m.arch, vocab_size=8, **options)
    except ValueError as err:
        msg = str(err)
        raise ConfigError(msg if msg.startswith("model.") else f"model.{msg}") from None
    return options


def last_complete_checkpoint(output_dir: pathlib.Path) -> pathlib.Path | None:
    """The newest checkpoint-N folder holding weights, optimizer, scheduler and trainer state."""
    candidates = []
    for path in output_dir.glob("checkpoint-*"):
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            candidates.append((int(match.group(1)), path))
    for _, path in sorted(candidates, reverse=True):
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
        if has_weights and all((path / f).exists() for f in ("optimizer.pt", "scheduler.pt", "trainer_state.json")):
            try:
                json.loads((path / "trainer_state.json").read_text())
            except ValueError:
                continue
            return path
    return None


def train(cfg: Config, *, output_dir: str | None = None, resume: bool = False, log=print) -> dict:
    """Prepare data, build tokenizer and model, train, and write the run folder. Returns the final metrics."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # the same device rule as the Trainer's arguments, so that launched processes agree from the start
    state = PartialState(cpu=bool(training_settings(cfg)[0].get("use_cpu")) or parse_flag_from_env("ACCELERATE_USE_CPU"))
    if cfg.model.from_pretrained is None:
        _model_options(cfg)  # bad model settings fail before any data work
    elif cfg.tokenizer.kind != "pretrained":  # a new vocabulary would give the pretrained ids other meanings
        raise ConfigError(
            f"model.from_pretrained={cfg.model.from_pretrained} needs its own tokenizer; set tokenizer.kind=pretrained "
            f"tokenizer.name_or_path={cfg.model.from_pretrained}"
        )
    with state.main_process_first():  # one process tokenizes; the others then hit the cache
        data = prepare_data(cfg, log=log if state.is_main_process else (lambda *a: None))
    if state.is_main_process:
        log(data_summary(data, cfg.block_size))
    tokenizer = data.tokenizer
    tokenizer.model_max_length = cfg.model.n_positions
    from transformers import set_seed

    set_seed(cfg.training.get("seed", cfg.data.seed))  # the starting weights follow the run's seed
    model = build_model_for(cfg, tokenizer)

    train_ds = data.train_dataset(cfg.block_size, cfg.data.packing, cfg.data.seed)
    eval_ds = data.eval_dataset(cfg.block_size)
    args = training_arguments(cfg, output_dir, has_eval=eval_ds is not None)
    out = pathlib.Path(args.output_dir)

    resume_from = cfg.training.get("resume_from_checkpoint")
    if resume or resume_from is True:
        checkpoint = last_complete_checkpoint(out)
        if checkpoint is None:
            raise ConfigError(f"--resume: no complete checkpoint in {out}; start without --resume")
        resume_from = str(checkpoint)
    elif resume_from:
        resume_from = str(resume_from)
    elif any(CHECKPOINT_RE.match(p.name) for p in out.glob("checkpoint-*")) or (out / "model.safetensors").exists():
        raise ConfigError(
            f"{out} already holds a run; pass --resume to continue it or set training.output_dir to a new folder"
        )

    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model {model.config.model_type}: {n_params / 1e6:.2f}M parameters; writing to {out}")

    world = max(1, state.num_processes)
    tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world * cfg.block_size
    feedback = FeedbackCallback(cfg, tokenizer, tokens_per_step, out)
    callbacks = [feedback]
    patience = cfg.training.get("early_stopping_patience")
    if patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(patience)))

    val_chars = data.meta.get("val_chars") or 0
    val_tokens = data.meta.get("val_tokens") or 0
    trainer = LlmkitTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=BlockCollator(),
        processing_class=tokenizer,
        callbacks=callbacks,
        tokens_per_char=val_tokens / val_chars if val_chars else None,
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    final_eval = _final_eval(trainer) if eval_ds is not None else {}

    metrics = {
        "train_loss": _last_train_loss(trainer.state.log_history, result.training_loss),
        "train_loss_mean": result.training_loss,
        "global_step": trainer.state.global_step,
        "train_runtime": result.metrics.get("train_runtime"),
        "train_tokens_per_second": feedback.throughput(trainer.state),
        "train_tokens": trainer.state.global_step * tokens_per_step,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "mixed_precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "no",
        "best_checkpoint": trainer.state.best_model_checkpoint,
        **{k: v for k, v in final_eval.items() if k.startswith("eval_")},
    }
    trainer.save_model(str(out))  # on every process: FSDP/ZeRO-3 gather the weights collectively; one writes
    if state.is_main_process:
        tokenizer.save_pretrained(out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
        plot_loss_curve(trainer.state.log_history, out / "loss_curve.png")
        log(f"done: {json.dumps({k: metrics[k] for k in metrics if k != 'best_checkpoint'}, default=str)}")
        log(f"model, tokenizer, metrics and loss curve saved in {out}")
    state.wait_for_everyone()
    return metrics


def _final_eval(trainer: Trainer) -> dict:
    """Validation metrics of the model the run ends with: reused from the log when that model (the best
    checkpoint reloaded, or the last step's) was already evaluated, so the end of a run does not evaluate,
    print and sample twice."""
    state = trainer.state
    step = state.global_step
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        match = CHECKPOINT_RE.match(pathlib.Path(state.best_model_checkpoint).name)
        step = int(match.group(1)) if match else -1
    for entry in reversed(state.log_history):
        if "eval_loss" in entry and entry.get("step") == step:
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return trainer.evaluate()


def _last_train_loss(history: list[dict], fallback: float) -> float:
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else fallback


def plot_loss_curve(history: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
