"""`train(cfg)`: prepare data, build the model (and its LoRA wrapper), train, and write the run folder."""

from __future__ import annotations

import json
import pathlib
import time

import torch

from ..compat import load_best_model, load_checkpoint
from ..config import Config, ConfigError, RunError, first_line
from ..data import prepare_data
from ..data import summary as data_summary
from ..data.pipeline import PackedBlocks
from ..loading import model_from_config
from ..models import build_config
from .arguments import training_arguments, training_settings
from .callbacks import FeedbackCallback, WallClock, sample_kwargs
from .guards import StopOnSignal, TimeBudget, disk_full, disk_full_error, in_use_error, lock_holder, run_lock
from .lora import apply_lora
from .optim import check_muon_launch, muon_trainer_kwargs, validate_optimizer
from .run_folder import final_eval, last_train_loss, save_model, starting_checkpoint, write_run_files
from .trainer import LlmkitTrainer, non_embedding_parameters

# Validation tokens scored by each evaluation during training (a fixed subset of the blocks; the last step and
# the final model are scored on the whole split): about what nanoGPT's CPU recipe estimates its loss on (20
# batches of 12 x 64). What it saves: benchmarks/wall_time.py and the README's "Time to quality".
EVAL_SUBSAMPLE_TOKENS = 16_384


def train(cfg: Config, *, output_dir: str | None = None, resume: bool = False, log=print,
          callbacks: list | None = None, clock: WallClock | None = None) -> dict:
    """Prepare data, build tokenizer and model, train, and write the run folder. Returns the final metrics.
    `callbacks` (transformers `TrainerCallback`s) join llmkit's own. `clock`: the WallClock that times the run's
    phases into metrics.json's `wall_seconds_by_phase` (the CLI's starts with the process; by default, here)."""
    clock = clock or WallClock()
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # the same device rule as the Trainer's arguments, so that launched processes agree from the start
    state = PartialState(cpu=bool(training_settings(cfg)[0].get("use_cpu")) or parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_launch(cfg, state)
    if cfg.model.from_pretrained is None:
        check_model_settings(cfg)  # bad model and LoRA settings fail before any data work
    if cfg.lora is not None:
        check_lora_settings(cfg)
    if cfg.distill is not None:
        from .distill import check_tokenizers

        check_tokenizers(cfg)  # a missing teacher, or one with another tokenizer, fails now
    on_nonfinite = cfg.training.get("on_nonfinite", "stop")
    if on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"training.on_nonfinite={on_nonfinite!r} is unknown; use stop or skip")
    validate_optimizer(cfg.training)
    if cfg.training.get("max_time") is not None and not float(cfg.training["max_time"]) > 0:
        raise ConfigError(f"training.max_time={cfg.training['max_time']} must be a positive number of seconds")
    eval_subsample_tokens(cfg)  # a bad value fails before any data work
    out = run_folder(cfg, output_dir)
    if state.is_main_process and (owner := lock_holder(out)):  # a folder in use is reported as such, whatever it holds
        raise in_use_error(out, owner)
    resume_from = starting_checkpoint(out, resume, cfg.training.get("resume_from_checkpoint"))  # before any work
    with run_lock(out, enabled=state.is_main_process):
        return _train(cfg, state, out, resume_from, output_dir, log, callbacks or [], on_nonfinite, clock)


def _train(cfg: Config, state, out: pathlib.Path, resume_from, output_dir, log, callbacks, on_nonfinite,
           clock: WallClock) -> dict:
    clock.lap("config and checks")
    with state.main_process_first():  # one process tokenizes; the others then hit the cache
        data = prepare_data(cfg, log=log if state.is_main_process else _quiet)
    clock.lap("data")
    if state.is_main_process:
        log(data_summary(data, cfg.block_size))
    tokenizer = data.tokenizer
    tokenizer.model_max_length = cfg.model.n_positions
    from transformers import set_seed

    set_seed(cfg.training.get("seed", cfg.data.seed))  # the starting weights follow the run's seed
    model, stock_arch = build_training_model(cfg, tokenizer, log if state.is_main_process else _quiet)
    reference = None
    if cfg.preference is not None:
        from .preference import reference_model

        reference = reference_model(cfg, model, tokenizer)  # a frozen copy of the starting weights
    train_ds = data.train_dataset(cfg.block_size, cfg.data.packing, cfg.data.seed)
    eval_ds = data.eval_dataset(cfg.block_size)
    interim_eval_ds = eval_subsample(eval_ds, eval_subsample_tokens(cfg), cfg.block_size)
    args = training_arguments(cfg, output_dir, has_eval=eval_ds is not None)
    clock.lap("model")

    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model {model.config.model_type}: {n_params / 1e6:.2f}M parameters; writing to {out}")

    world = max(1, state.num_processes)
    tokens_per_step = None  # instruction batches vary: counted by the Trainer (num_input_tokens_seen)
    if cfg.data.format == "text":
        tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world * cfg.block_size
    feedback = FeedbackCallback(cfg, tokenizer, tokens_per_step, out)
    stopper = StopOnSignal(world)
    callbacks = [feedback, stopper, *callbacks]
    budget = None
    if cfg.training.get("max_time") is not None:
        budget = TimeBudget(cfg.training["max_time"], world)
        callbacks.append(budget)
    patience = cfg.training.get("early_stopping_patience")
    if patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(patience)))
    clock.add_parts(callbacks)
    callbacks.append(clock)  # last: it laps after every other callback's work at each event

    val_chars = data.meta.get("val_chars") or 0
    val_tokens = data.meta.get("val_tokens") or 0
    trainer_cls, extra = LlmkitTrainer, {}
    if cfg.distill is not None:
        from .distill import DistillationTrainer, load_teacher

        trainer_cls, extra = DistillationTrainer, {"teacher": load_teacher(cfg, tokenizer), "distill": cfg.distill}
    if cfg.preference is not None:
        from .preference import preference_trainer_class

        trainer_cls, extra = preference_trainer_class(), {"ref_model": reference}
    extra.update(muon_trainer_kwargs(cfg.training, args))
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=interim_eval_ds,
        full_eval_dataset=eval_ds if interim_eval_ds is not eval_ds else None,
        data_collator=data.collator(),
        processing_class=tokenizer,
        callbacks=callbacks,
        tokens_per_char=val_tokens / val_chars if val_chars else None,
        on_nonfinite=on_nonfinite,
        progress=feedback,
        **extra,
    )
    if resume_from and state.is_main_process:
        log(f"resuming from {resume_from} (step {_checkpoint_step(resume_from)} of {args.max_steps})")
    stopper.install()
    try:
        if resume_from and _finished_checkpoint(resume_from, args.max_steps):
            result = _finish_from(trainer, resume_from)  # killed after its last step: only the run folder is left
        else:
            result = trainer.train(resume_from_checkpoint=resume_from)
    except (OSError, RuntimeError) as err:
        if disk_full(err):
            raise disk_full_error(err, out) from None
        if not (isinstance(err, RuntimeError) and state.num_processes > 1 and _is_lost_peer(err)):
            raise
        from .run_folder import last_complete_checkpoint

        checkpoint = last_complete_checkpoint(out)
        where = (f"the last complete checkpoint is {checkpoint.name}: start every process again with --resume"
                 if checkpoint else "no checkpoint was complete: start every process again")
        raise RunError(f"process {state.process_index} lost contact with another training process "
                       f"({_lost_peer_reason(err)}); {where}") from None
    finally:
        stopper.uninstall()
    if stopper.received is not None:
        name = signal_name(stopper.received)
        raise RunError(f"stopped by {name} at step {trainer.state.global_step}: checkpoint-{trainer.state.global_step} "
                       f"is complete; continue with the same command and --resume", exit_code=stopper.exit_code)
    evaluation = final_eval(trainer) if eval_ds is not None else {}
    clock.lap("final evaluation")

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics = {
        "train_loss": last_train_loss(trainer.state.log_history, result.training_loss),
        "train_loss_mean": result.training_loss,
        "global_step": trainer.state.global_step,
        "train_runtime": result.metrics.get("train_runtime"),
        "train_tokens_per_second": feedback.throughput(trainer.state),
        "train_tokens": feedback.tokens(trainer.state),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "non_embedding_parameters": non_embedding_parameters(model),
        "train_flops": trainer.state.total_flos,
        "wall_seconds": round(feedback.earlier_wall + time.perf_counter() - feedback.start, 3),
        "trainable_parameters": trainable,
        "mixed_precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "no",
        "skipped_nonfinite_steps": trainer.skipped_steps,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "optimizer": cfg.training.get("optimizer", "adamw"),
        **({"stopped_by_max_time_at_step": budget.stopped_at} if budget and budget.stopped_at is not None else {}),
        **{k: v for k, v in evaluation.items() if k.startswith("eval_")},
    }
    save_model(trainer, out, base=cfg.model.from_pretrained, stock_arch=stock_arch, is_main=state.is_main_process)
    clock.lap("final save")
    if state.is_main_process:
        write_run_files(out, trainer, tokenizer, metrics, clock)
        log(f"done: {json.dumps({k: metrics[k] for k in metrics if k != 'best_checkpoint'}, default=str)}")
        log(f"{'adapter' if cfg.lora is not None else 'model'}, tokenizer, metrics and loss curve saved in {out}")
    state.wait_for_everyone()
    return metrics


def eval_subsample_tokens(cfg: Config) -> int | None:
    """`training.eval_subsample_tokens` (default EVAL_SUBSAMPLE_TOKENS; None: the whole split), checked."""
    tokens = cfg.training.get("eval_subsample_tokens", EVAL_SUBSAMPLE_TOKENS)
    if tokens is not None and not (isinstance(tokens, int) and tokens > 0):
        raise ConfigError(f"training.eval_subsample_tokens={tokens!r} must be a positive number of tokens "
                          "(or null: every evaluation scores the whole validation split)")
    return tokens


def eval_subsample(eval_ds, tokens: int | None, block_size: int):
    """The validation set scored during training: `eval_ds` itself, or, when `tokens` is set and the split holds
    more, a fixed subset of its blocks spread evenly over the split (the same blocks at every evaluation, so the
    curve compares like with like). Streams and instruction sets of varying lengths are used whole."""
    if not tokens or not isinstance(eval_ds, PackedBlocks):
        return eval_ds
    keep = max(1, tokens // block_size)
    if keep >= len(eval_ds):
        return eval_ds
    import numpy as np
    from torch.utils.data import Subset

    return Subset(eval_ds, np.linspace(0, len(eval_ds) - 1, keep).round().astype(int).tolist())


def run_folder(cfg: Config, output_dir: str | None = None) -> pathlib.Path:
    """The folder a run writes: `output_dir` (the command line's --output-dir), else training.output_dir."""
    return pathlib.Path(output_dir or training_settings(cfg)[0]["output_dir"])


def _quiet(*args) -> None:
    pass


def _checkpoint_step(checkpoint: str) -> int:
    return json.loads((pathlib.Path(checkpoint) / "trainer_state.json").read_text()).get("global_step", 0)


def _finished_checkpoint(checkpoint: str, max_steps: int) -> bool:
    return max_steps > 0 and _checkpoint_step(checkpoint) >= max_steps


def _finish_from(trainer, checkpoint: str):
    """A run killed while writing its final files resumes from a checkpoint at its last step: the Trainer would
    train one step more (transformers 5.24 resumes into the next step), so llmkit restores the checkpoint, its
    state and the best model itself, and the run folder is written as at the end of training."""
    from transformers.trainer_utils import TrainOutput

    load_checkpoint(trainer, checkpoint)
    trainer.state = type(trainer.state).load_from_json(str(pathlib.Path(checkpoint) / "trainer_state.json"))
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        load_best_model(trainer)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else 0.0, {})


def signal_name(signum: int) -> str:
    import signal

    return {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}.get(signum, f"signal {signum}")


_LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out", "nccl error",
              "gloo")


def _is_lost_peer(err: BaseException) -> bool:
    text = str(err).lower()
    return any(s in text for s in _LOST_PEER)


def _lost_peer_reason(err: BaseException) -> str:
    text = str(err).lower()
    return next((s for s in _LOST_PEER if s in text), "a collective operation failed")


def check_launch(cfg: Config, state) -> None:
    """Refuse at start, with one line, what a launch mode cannot do (never a hang or a silent fallback)."""
    from accelerate.utils import DistributedType, parse_flag_from_env

    sharded = None
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        # accelerate turns a launch into FSDP in AcceleratorState (made later, by the Trainer's accelerator),
        # and only from these kinds of launch (accelerate/state.py); the PartialState here still says which
        # one it is
        shards = {getattr(DistributedType, name, None) for name in (
            "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_HPU", "MULTI_NEURON")}
        if state.distributed_type not in shards:
            raise ConfigError(
                f"the launch asks for FSDP, but accelerate runs {state.distributed_type.value} here: it shards only on "
                "GPUs and other accelerators, not on CPU (it would silently run plain data parallel); on CPUs "
                "launch with configs/accelerate/ddp-cpu.yaml"
            )
        import os

        if os.environ.get("FSDP_VERSION", "1") != "2":
            raise ConfigError("llmkit runs FSDP2 (fully_shard): set fsdp_version: 2 in the accelerate config "
                              "(configs/accelerate/fsdp.yaml)")
        sharded = "FSDP"
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError('the launch asks for DeepSpeed, which is not installed: pip install "llmkit[deepspeed]"')
        sharded = "DeepSpeed ZeRO"
    check_muon_launch(cfg.training, sharded)
    if sharded and cfg.model.from_pretrained and cfg.model.arch == "llmkit-gpt" and _is_stock(cfg):
        raise ConfigError("model.arch=llmkit-gpt on a pretrained GPT-2 saves by converting back, which needs the "
                          "whole model in one process; under FSDP or DeepSpeed train the stock model "
                          "(remove model.arch)")


def _is_stock(cfg: Config) -> bool:
    from ..loading import load_config

    m = cfg.model
    return load_config(m.from_pretrained, revision=m.revision).model_type != "llmkit-gpt"


def build_training_model(cfg: Config, tokenizer, log=print) -> tuple[torch.nn.Module, str | None]:
    """(the model to train, the stock architecture it is saved back to or None): built or loaded as the `model`
    section says, with the run's generation settings, and wrapped for LoRA when the config has a `lora` section."""
    from ..models.generation import make_generation_config

    m = cfg.model
    model = model_from_config(m, tokenizer)
    stock_arch, grew_vocab = None, False
    if m.from_pretrained is not None:
        from ..loading import load_config

        own = load_config(m.from_pretrained, revision=m.revision, trust_remote_code=m.trust_remote_code)
        stock_arch = own.model_type if m.arch != own.model_type else None  # the fast path saves back as stock
        grew_vocab = len(tokenizer) > own.vocab_size
    settings = sample_kwargs(cfg)  # the saved model generates as the run's samples did
    del settings["seed"], settings["stop"]
    settings["max_new_tokens"] = settings["max_new_tokens"] or 100
    try:
        model.generation_config = make_generation_config(tokenizer, **settings)
    except ValueError as err:
        raise ConfigError(f"sample settings: {first_line(err)}") from None
    if cfg.lora is not None:
        model = apply_lora(model, cfg.lora, grew_vocab=grew_vocab, log=log)
    return model, stock_arch


def check_lora_settings(cfg: Config) -> None:
    """Build the `lora` section's LoraConfig against the model's structure (on the meta device: no weights)."""
    from transformers import AutoModelForCausalLM

    from ..loading import convert_for_training, load_config

    m = cfg.model
    with torch.device("meta"):
        if m.from_pretrained is None:
            model = model_from_config(m, _VocabOnly(8))
        else:
            config = load_config(m.from_pretrained, revision=m.revision, trust_remote_code=m.trust_remote_code)
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=m.trust_remote_code)
            if m.arch != config.model_type:
                model = convert_for_training(model, m.arch)
        apply_lora(model, cfg.lora, log=_quiet)  # peft's own checks too (it wraps the meta model)


class _VocabOnly:
    """Stands in for a tokenizer where only the model's shape matters."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def check_model_settings(cfg: Config) -> None:
    """Validate the model section (one-line ConfigError) without building anything."""
    from ..model_options import architecture_options

    try:
        build_config(cfg.model.arch, vocab_size=8, **architecture_options(cfg.model))
    except ValueError as err:
        msg = str(err)
        raise ConfigError(msg if msg.startswith("model.") else f"model.{msg}") from None
