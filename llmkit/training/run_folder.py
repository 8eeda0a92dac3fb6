"""The run folder: where a run starts (fresh, or resumed from its last complete checkpoint) and what it leaves.

Design choices:
- Resuming picks the last *complete* checkpoint (weights, optimizer, scheduler, trainer state all present), so a
  run killed while saving resumes from the one before. A folder that already holds a run is never trained into
  without `--resume`.
- Every run leaves the same files: the model (safetensors) or, for LoRA, the adapter (`adapter_model.safetensors`,
  `adapter_config.json` naming the base as the user gave it), the tokenizer, `generation_config.json`,
  `config.yaml` (resolved), `metrics.json`, `log_history.json`, `loss_curve.png` and `samples.jsonl`.
- A GPT-2 fine-tuned through llmkit-gpt (the fast path) is saved as GPT-2: the full model converted back, or an
  adapter whose config says what stock GPT-2 needs (Conv1D: `fan_in_fan_out`), so it loads without llmkit.
"""

from __future__ import annotations

import json
import pathlib
import re

from transformers import Trainer

from ..errors import ConfigError, ParameterError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def last_complete_checkpoint(output_dir: pathlib.Path) -> pathlib.Path | None:
    """The newest checkpoint-N folder holding weights, optimizer, scheduler and trainer state."""
    candidates = []
    for path in output_dir.glob("checkpoint-*"):
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            candidates.append((int(match.group(1)), path))
    for _, path in sorted(candidates, reverse=True):
        # FSDP writes its shards as torch.distributed.checkpoint folders (pytorch_model_fsdp_0/,
        # optimizer_0/), whose .metadata file is written last; a full FSDP state dict goes to
        # pytorch_model_fsdp.bin and optimizer.bin
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")) or any(
            path.glob("pytorch_model_fsdp_*/.metadata"))
        has_optimizer = (path / "optimizer.pt").exists() or (path / "optimizer.bin").exists() or any(
            path.glob("optimizer_*/.metadata"))
        if has_weights and has_optimizer and all((path / f).exists() for f in ("scheduler.pt", "trainer_state.json")):
            try:
                json.loads((path / "trainer_state.json").read_text())
            except ValueError:
                continue
            return path
    return None


def holds_a_run(out: pathlib.Path) -> bool:
    return any(CHECKPOINT_RE.match(p.name) for p in out.glob("checkpoint-*")) or any(
        (out / name).exists() for name in MODEL_FILES)


def starting_checkpoint(out: pathlib.Path, resume: bool, resume_from) -> str | None:
    """The checkpoint to resume from, None for a fresh run; refuses to train into a folder that holds a run."""
    if resume or resume_from is True:
        checkpoint = last_complete_checkpoint(out)
        if checkpoint is None:
            raise ParameterError("resume", f": no complete checkpoint in {out}; start without {{param}}")
        return str(checkpoint)
    if resume_from:
        return str(resume_from)
    if holds_a_run(out):
        raise ConfigError(
            f"{out} already holds a run; pass --resume to continue it or set training.output_dir to a new folder"
        )
    return None


def final_eval(trainer: Trainer) -> dict:
    """Validation metrics of the model the run ends with, on the whole validation split: reused from the log when
    that model (the best checkpoint reloaded, or the last step's) was already evaluated on all of it, so the end of
    a run does not evaluate, print and sample twice."""
    state = trainer.state
    step = state.global_step
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        match = CHECKPOINT_RE.match(pathlib.Path(state.best_model_checkpoint).name)
        step = int(match.group(1)) if match else -1
    full = getattr(trainer, "full_eval_dataset", None)  # None: every evaluation scored the whole split
    if full is None or step in trainer.full_eval_steps:
        for entry in reversed(state.log_history):
            if "eval_loss" in entry and entry.get("step") == step:
                return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return trainer.evaluate(eval_dataset=full)


def last_train_loss(history: list[dict], fallback: float) -> float:
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else fallback


def save_model(trainer: Trainer, out: pathlib.Path, *, base: str | None, stock_arch: str | None,
               is_main: bool) -> None:
    """The trained model (or adapter) into `out`, in the form users load: see the module docstring.

    `base` is the pretrained model as the user named it (for the adapter config); `stock_arch` the architecture a
    converted model is saved back to (the GPT-2 fast path), or None."""
    model = trainer.model
    unwrapped = trainer.accelerator.unwrap_model(model)
    is_adapter = hasattr(model, "peft_config")
    # The Trainer sets config.use_cache from TrainingArguments.use_cache (False) for training; the saved model
    # is for inference, where the cache is on
    config = getattr(unwrapped, "config", None)
    if config is not None:
        config.use_cache = True
    if is_adapter and base:
        for config in model.peft_config.values():
            config.base_model_name_or_path = base
    if stock_arch and not is_adapter:
        if is_main:
            from ..models.conversions import export_model

            export_model(unwrapped, stock_arch).save_pretrained(out)
    elif trainer.is_fsdp_enabled:
        # Trainer.save_model writes nothing under FSDP's sharded state dict (configs/accelerate/fsdp.yaml):
        # gather the full weights on every process (a collective; the main process receives them) and write
        # them there. An adapter gathers only its trained weights, not the frozen base model.
        if is_adapter:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state_dict = get_model_state_dict(model, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        else:
            state_dict = trainer.accelerator.get_state_dict(model)
        if is_main:
            # gathered one by one, tied weights are separate tensors save_pretrained cannot tell apart: the
            # tied copies are left out, as in every other save
            tied = getattr(unwrapped, "all_tied_weights_keys", None) or {}
            unwrapped.save_pretrained(out, state_dict={k: v for k, v in state_dict.items() if k not in tied})
    else:
        trainer.save_model(str(out))  # on every process: ZeRO-3 gathers the weights collectively; one writes
    if not is_main:
        return
    generation_config = getattr(unwrapped, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(out)
    if is_adapter and stock_arch == "gpt2":  # trained on nn.Linear; stock GPT-2 stores Conv1D (in, out) weights
        path = out / "adapter_config.json"
        config = json.loads(path.read_text())
        config["fan_in_fan_out"] = True
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_run_files(out: pathlib.Path, trainer: Trainer, tokenizer, metrics: dict, clock=None) -> None:
    """The tokenizer, log, loss curve and, last, metrics.json (with the run's `wall_seconds_by_phase` when a
    WallClock timed it, these files included)."""
    tokenizer.save_pretrained(out)
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
    plot_loss_curve(trainer.state.log_history, out / "loss_curve.png")
    if clock is not None:
        clock.lap("run files")
        metrics["wall_seconds_by_phase"] = clock.breakdown()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


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
