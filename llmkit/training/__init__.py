"""The training core: one loop (`transformers.Trainer` with `accelerate`) that pretraining and fine-tuning share.

Design choices:
- `train(cfg)` is the only training entry point. What differs between workflows is the starting model (built
  from scratch, or `model.from_pretrained`, optionally converted for the fast path), an optional LoRA wrapper
  (`lora:`), the data and collator, and the Trainer class; the loop, devices, precision, checkpoints, resuming,
  feedback and the run folder are the same for all of them, as nanoGPT's fine-tuning is its training loop with
  another starting point.
- Modules: `arguments` (TrainingArguments defaults and precision policy), `trainer` (the Trainer subclass),
  `callbacks` (eval lines and samples, the wall clock by phase), `lora` (peft glue), `run_folder` (where a run starts and what it leaves).
  Building a model from a config lives with the loader (`llmkit.loading.model_from_config`).
- The Trainer does the loop, devices, data parallelism, mixed precision, checkpoints and resuming; llmkit supplies
  the data (packed blocks with `shift_labels`, so every position is scored), the model, the defaults, and the
  feedback. Data order, RNG and schedule are restored by the Trainer on resume, and sampling never touches the
  training RNG, so a resumed run matches an uninterrupted one.
"""

from .arguments import (
    default_training_args,
    hub_settings,
    mixed_precision,
    training_arguments,
    training_settings,
)
from .callbacks import WallClock
from .run_folder import last_complete_checkpoint
from .trainer import LlmkitTrainer, perplexity_metrics
from .workflow import run_folder, train

__all__ = [
    "LlmkitTrainer",
    "WallClock",
    "default_training_args",
    "hub_settings",
    "last_complete_checkpoint",
    "mixed_precision",
    "perplexity_metrics",
    "run_folder",
    "train",
    "training_arguments",
    "training_settings",
]
