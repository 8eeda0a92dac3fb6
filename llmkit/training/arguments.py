"""llmkit's `TrainingArguments` defaults and precision policy; `training.*` settings override any of them.

Design choices:
- Defaults a practitioner expects: AdamW (fused) with decay only on matrices, `cosine_with_min_lr` with warmup and
  a floor at 10% of the peak, clipping at 1.0, evaluation and checkpoints every `eval_steps`, the best checkpoint
  (by validation loss) reloaded at the end.
- Schedules are transformers' (`lr_scheduler_type`); the default's floor (`min_lr_rate`) goes with it, so another
  schedule starts from its own defaults. `warmup_stable_decay` decays over the last 20% of `max_steps` unless
  `lr_scheduler_kwargs` says otherwise (`num_decay_steps`, `decay_type`, `min_lr_ratio`); `linear` decays to zero.
- bf16 autocast where the hardware computes in bf16 (CUDA, CPUs with AVX512-BF16/AMX); fp16 on GPUs without bf16.
  A precision the user picks replaces the default pair as a whole.
- `remove_unused_columns` is always off: llmkit's collators make exactly the keys the model takes.
"""

from __future__ import annotations

import torch
from transformers import TrainingArguments

from ..config import LLMKIT_TRAINING_EXTRAS, Config, ConfigError
from .optim import optim_setting


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
        "ddp_find_unused_parameters": False,  # every parameter takes part in every step
        "dataloader_pin_memory": has_cuda,
        "seed": cfg.data.seed,
        **mixed_precision(*expected_shape(cfg)),
        "optim": "adamw_torch_fused",  # one kernel for all parameters, on CPU too
        "disable_tqdm": False,
    }


def _default_report_to() -> str:
    """TensorBoard when it is installed (found, not imported: resolving a config stays fast), else none."""
    import importlib.util

    return "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"


# benchmarks/cpu_precision.py, on CPUs with native bf16. With AMX (results/cpu_precision.json, an Intel Xeon):
# bf16 autocast trains faster at every shape measured, llmkit-gpt and GPT-2's code alike. With AVX512-BF16 alone
# (results/cpu_precision_amd.json, an AMD EPYC, measured before llmkit-gpt's attention trained in fp32 under
# autocast): faster from width 256 up, with a 2,048-token vocabulary at any width, and with heads of 64 at width
# 128; slower at width 128 with heads of 32 and a char vocabulary (68), whatever the batch.
CPU_BF16_MIN_WIDTH = 256
CPU_BF16_MIN_VOCAB = 1024
CPU_BF16_MIN_HEAD_DIM = 64


def mixed_precision(n_embd: int | None = None, vocab_size: int | None = None, n_head: int | None = None) -> dict:
    """bf16 autocast where the hardware computes in bf16 and it pays: CUDA (fp16 on GPUs without bf16); a CPU with
    AMX; a CPU with AVX512-BF16 for a model at least CPU_BF16_MIN_WIDTH wide, or with at least CPU_BF16_MIN_VOCAB
    tokens, or with heads of at least CPU_BF16_MIN_HEAD_DIM (an unknown size counts as large). Not on other
    accelerators (MPS, XPU, ...), nor on CPUs that would only emulate it. Weights, optimizer state and the loss
    stay fp32."""
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return {"bf16": bf16, "fp16": not bf16}
    if torch.accelerator.is_available():  # MPS, XPU, ...: the Trainer's own placement, fp32
        return {"bf16": False, "fp16": False}
    bf16 = cpu_has_native_bf16() and cpu_bf16_pays(n_embd, vocab_size, n_head)
    return {"bf16": bf16, "fp16": False, "use_cpu": True}  # Trainer asks use_cpu for bf16 on CPU


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: torch.cpu's own capability checks."""
    return cpu_has_amx() or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()


def cpu_has_amx() -> bool:
    """AMX tiles (bf16 matrix units): torch.cpu's own capability check."""
    return getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def cpu_bf16_pays(n_embd: int | None, vocab_size: int | None, n_head: int | None, amx: bool | None = None) -> bool:
    """Whether bf16 autocast trains this shape faster than fp32 on a CPU with native bf16, with AMX (`amx`, this
    CPU's when None) or AVX512-BF16 alone (see above)."""
    if amx is None:
        amx = cpu_has_amx()
    if amx:
        return True
    head_dim = n_embd // n_head if n_embd and n_head else None
    return any(size is None or size >= floor for size, floor in ((n_embd, CPU_BF16_MIN_WIDTH),
                                                                  (vocab_size, CPU_BF16_MIN_VOCAB),
                                                                  (head_dim, CPU_BF16_MIN_HEAD_DIM)))


def expected_shape(cfg: Config) -> tuple[int | None, int | None, int | None]:
    """(width, vocabulary, heads) of the model the run will train, from the resolved config (its sizes are the
    pretrained model's or the scratch defaults) before the tokenizer exists; None where it cannot tell."""
    m, t = cfg.model, cfg.tokenizer
    if t.kind == "pretrained":  # the vocabulary of the model whose tokenizer this is (a base, or a teacher)
        source = t.name_or_path or m.from_pretrained
        try:
            from ..loading import load_config

            revision = m.revision if source == m.from_pretrained else None
            vocab = getattr(load_config(source, revision=revision), "vocab_size", None)
        except Exception:  # a model that does not load is reported where it is loaded
            vocab = None
    elif t.kind == "char":
        vocab = 256  # a char vocabulary: the corpus's characters, rarely more than a few hundred
    elif t.kind == "bpe":
        from ..tokenizers import DEFAULT_BPE_VOCAB

        vocab = t.vocab_size or DEFAULT_BPE_VOCAB
    else:
        vocab = t.vocab_size  # word level: as many as the corpus has
    return m.n_embd, vocab, m.n_head


def training_settings(cfg: Config) -> tuple[dict, dict]:
    """(llmkit's defaults overridden by the user's training settings, the user's own settings)."""
    args = default_training_args(cfg)
    user = {k: v for k, v in cfg.training.items() if k not in LLMKIT_TRAINING_EXTRAS}
    if "bf16" in user or "fp16" in user:  # a precision the user picks replaces the default pair as a whole
        args.update(bf16=False, fp16=False)
    if "lr_scheduler_type" in user and "lr_scheduler_kwargs" not in user:
        args["lr_scheduler_kwargs"] = {}  # the default's floor belongs to the default schedule
    args.update(user)
    if args["lr_scheduler_type"] == "warmup_stable_decay":
        kwargs = dict(args.get("lr_scheduler_kwargs") or {})
        if "num_decay_steps" not in kwargs and "num_stable_steps" not in kwargs:
            if args["max_steps"] <= 0:
                raise ConfigError("lr_scheduler_type=warmup_stable_decay without max_steps: set "
                                  "training.lr_scheduler_kwargs.num_decay_steps")
            kwargs["num_decay_steps"] = max(1, round(0.2 * args["max_steps"]))  # decay over the last 20%
        args["lr_scheduler_kwargs"] = kwargs
    return args, user


def hub_settings(cfg: Config, output_dir: str) -> dict | None:
    """What `training.push_to_hub: true` pushes at the end of the run (through `llmkit.hub.push`, after every file of
    the run folder is written), or None. The token stays here: it never reaches TrainingArguments, which the
    Trainer pickles into every checkpoint."""
    t = cfg.training
    if not t.get("push_to_hub"):
        return None
    import pathlib

    return {"repo_id": t.get("hub_model_id") or pathlib.Path(output_dir).name, "token": t.get("hub_token"),
            "private": t.get("hub_private_repo"), "revision": t.get("hub_revision")}


def training_arguments(cfg: Config, output_dir: str | None = None, has_eval: bool = True) -> TrainingArguments:
    """The run's `TrainingArguments`; for a preference run, TRL's `DPOConfig` (a subclass) with the same settings
    and the `preference:` section's (llmkit.training.preference)."""
    args, user = training_settings(cfg)
    args_class = TrainingArguments
    if cfg.preference is not None:
        from trl import DPOConfig

        from .preference import preference_arguments

        args_class = DPOConfig
        args.update(preference_arguments(cfg, user))
    token = args.pop("hub_token", None)
    if args.get("push_to_hub") and "hub_strategy" not in user:
        args["push_to_hub"] = False  # llmkit pushes the complete run folder at the end (hub_settings)
    elif args.get("push_to_hub") and token:
        import os

        os.environ["HF_TOKEN"] = token  # for the Trainer's checkpoint pushes, without writing it into its pickles
    if output_dir:
        args["output_dir"] = output_dir
    if "run_name" not in user:  # what trackers (TensorBoard, trackio, wandb) call the run: its folder's name
        import pathlib

        args["run_name"] = pathlib.Path(args["output_dir"]).name
    if "project" not in user:
        args["project"] = "llmkit"  # trackio's project (transformers' default: "huggingface")
    if "save_steps" not in user and "eval_steps" in user:
        args["save_steps"] = user["eval_steps"]  # best-model tracking needs saves aligned with evaluations
    if not has_eval:
        args.update(eval_strategy="no", load_best_model_at_end=False)
        args.pop("metric_for_best_model", None)
    if cfg.data.format == "instruct" and "include_num_input_tokens_seen" not in user:  # tokens/s of varying batches
        args["include_num_input_tokens_seen"] = "non_padding" if cfg.data.packing == "padded" else "all"
    args.update(optim_setting(cfg.training))
    kwargs = dict(args.get("lr_scheduler_kwargs") or {})
    args["lr_scheduler_kwargs"] = {k: _number_or_text(v) for k, v in kwargs.items()}
    args["remove_unused_columns"] = False
    try:
        built = args_class(**args)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"training settings rejected by {args_class.__name__}: {str(err).splitlines()[0]}") from None
    _check_schedule(built)
    return built


def _check_schedule(args: TrainingArguments) -> None:
    """Build the run's learning-rate schedule once, on a throwaway optimizer, as the Trainer will: a schedule
    argument it refuses (`decay_type: sqrt`, a misspelt key) fails now in one line, not at the first step."""
    from transformers import get_scheduler

    steps = args.max_steps if args.max_steps > 0 else 1000  # an epoch-based run's length is known later
    kwargs = args.lr_scheduler_kwargs or {}
    # as many param groups as a per-group argument lists (reduce_lr_on_plateau's min_lr: [...]), and the run's
    # learning rate (polynomial's lr_end is checked against it)
    groups = max((len(v) for v in kwargs.values() if isinstance(v, (list, tuple))), default=1)
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(groups)],
                                lr=args.learning_rate)
    try:
        get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(steps),
                      num_training_steps=steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"training.lr_scheduler_kwargs={dict(args.lr_scheduler_kwargs)} refused by the "
                          f"{args.lr_scheduler_type.value} schedule: {str(err).splitlines()[0]}; fix the value or drop "
                          "the key") from None


def _number_or_text(value):
    """A schedule argument as YAML gave it, numbers written as text (`1e-5`, which YAML reads as a string) made
    numbers, names (`decay_type: 1-sqrt`) left alone."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
