"""Distillation on the training core: the student trains on a teacher's soft targets as well as on the data.

The loss of the curriculum (week 6): `alpha * KL * T^2 + (1 - alpha) * cross-entropy`, where KL compares the
teacher's and the student's next-token distributions softened by the temperature T (`forward_kl`:
KL(teacher || student), as in the curriculum and DistilGPT-2; `reverse_kl`: KL(student || teacher), which makes
the student mode-seeking), and the cross-entropy is the usual loss on the data, at T = 1. Both average over the
tokens the data scores (answer tokens for instruction data).

Design choices:
- A `LlmkitTrainer` whose `compute_loss` adds the teacher: the loop, precision (the teacher runs inside the same
  autocast), checkpoints, resuming and the run folder are the core's. The student is whatever the config builds:
  from scratch (smaller llmkit-gpt or GPT-2), pretrained, or wrapped for LoRA.
- The teacher is loaded once (a run folder, Hub id or adapter run), in eval mode, frozen, under no_grad, once per
  batch. It must share the student's tokenizer, compared by content (`tokenizer_hash`), or the run is refused.
- Evaluation reports the plain cross-entropy, so a distilled student's validation loss compares with a student
  trained on the data alone. The soft and hard parts are logged separately (`distill_soft_loss`,
  `distill_hard_loss`, averaged since the previous log line).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..config import Config, ConfigError
from .trainer import LlmkitTrainer


def check_tokenizers(cfg: Config) -> None:
    """Before any data work: the student's tokenizer must be the teacher's (compared by content)."""
    from ..loading import load_tokenizer_for
    from ..tokenizers import load_tokenizer, tokenizer_hash

    d, t = cfg.distill, cfg.tokenizer
    if t.kind != "pretrained":
        raise ConfigError(f"distill.teacher={d.teacher}: the student must use the teacher's tokenizer, not a new {t.kind} "
                          f"one; remove tokenizer.kind={t.kind} (the teacher's tokenizer is then the default)")
    teacher = load_tokenizer_for(d.teacher, trust_remote_code=cfg.model.trust_remote_code)
    student = load_tokenizer(t.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.data.format == "instruct":  # the role markers the run adds
        from ..data.instruct import prepare_tokenizer

        prepare_tokenizer(student, cfg)
    if tokenizer_hash(teacher) != tokenizer_hash(student):
        raise ConfigError(_another_tokenizer(d.teacher, teacher, student))


def _another_tokenizer(name: str, teacher, student) -> str:
    return (f"distill.teacher={name} uses another tokenizer than the student (vocabulary {len(teacher):,} vs "
            f"{len(student):,}, or other rules); the student must use the teacher's: "
            f"tokenizer.kind=pretrained tokenizer.name_or_path={name}")


def load_teacher(cfg: Config, student_tokenizer):
    from ..loading import load_model
    from ..tokenizers import tokenizer_hash

    d = cfg.distill
    teacher, tokenizer = load_model(d.teacher, device="cpu", trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer_hash(tokenizer) != tokenizer_hash(student_tokenizer):
        raise ConfigError(_another_tokenizer(d.teacher, tokenizer, student_tokenizer))
    teacher.requires_grad_(False)
    return teacher.eval()


class DistillationTrainer(LlmkitTrainer):
    def __init__(self, *args, teacher=None, distill=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.distill = teacher, distill
        self._parts = {"distill_soft_loss": [], "distill_hard_loss": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the plain loss on the data
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs.get("shift_labels")
        if labels is None:  # labels aligned with the inputs: the next token is the target
            labels = F.pad(inputs["labels"][:, 1:], (0, 1), value=-100)
        features = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
        student = model(**features, use_cache=False).logits  # (B, T, V), no labels: the logits themselves
        if self.teacher.device != student.device:
            self.teacher.to(student.device)
        with torch.no_grad():
            teacher = self.teacher(**features, use_cache=False).logits
        vocab = min(student.shape[-1], teacher.shape[-1])  # a teacher may carry unused padding rows
        student, teacher = student[..., :vocab].float(), teacher[..., :vocab].float()
        valid = labels != -100  # (B, T)
        count = num_items_in_batch if num_items_in_batch is not None else valid.sum().clamp(min=1)
        s, t = student[valid], teacher[valid]  # (N, V)
        temperature = self.distill.temperature
        log_s, log_t = F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1)
        if self.distill.kind == "forward_kl":
            kl = (log_t.exp() * (log_t - log_s)).sum(-1)
        else:
            kl = (log_s.exp() * (log_s - log_t)).sum(-1)
        soft = kl.sum() / count * temperature**2
        hard = F.cross_entropy(s, labels[valid], reduction="sum") / count
        alpha = self.distill.alpha
        loss = alpha * soft + (1 - alpha) * hard
        self._parts["distill_soft_loss"].append(soft.detach())
        self._parts["distill_hard_loss"].append(hard.detach())
        return (loss, {"logits": student}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._parts["distill_soft_loss"]:
            for key, values in self._parts.items():
                logs[key] = torch.stack(values).mean().item()
                values.clear()
        super().log(logs, *args, **kwargs)
