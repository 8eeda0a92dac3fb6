"""Optimizers as a config choice: `training.optimizer` is `adamw` (the default), `muon`, or any of transformers'
`optim` names (`adamw_torch`, `adafactor`, `sgd`, ...).

Design choices:
- `muon` is PyTorch's Muon update (`BatchedMuon`, below) on the hidden matrices (every 2-D weight inside the
  blocks) and AdamW on the rest (embeddings, the output head, norms, biases), as in the Muon paper and
  modded-nanogpt. Each side has its own learning rate and weight decay: AdamW takes
  `training.learning_rate`/`weight_decay` (decay on matrices only, llmkit's rule), Muon takes
  `training.muon.{lr, momentum, weight_decay, nesterov, ns_steps, adjust_lr_fn}`. The schedule
  (`lr_scheduler_type`) scales both.
- It reaches the Trainer the supported way: a factory in `optimizer_cls_and_kwargs`, which the Trainer calls with
  the model. The two optimizers are one `torch.optim.Optimizer` to the Trainer (`MuonWithAdamW`: one list of param
  groups, one state, so the LR scheduler, gradient clipping and checkpoint save/resume see a single optimizer).
  That wrapper is llmkit's; the update rules are PyTorch's.
- `BatchedMuon` is `torch.optim.Muon` with one change of execution, not of arithmetic: the Newton-Schulz
  iterations of many matrices run as one batched product (`baddbmm`) instead of one matrix at a time, and the
  momentum and weight-decay updates as `_foreach` ops. A GPT's blocks repeat the same few shapes, so a step
  costs a few batched products instead of (layers x matrices) small ones. Small models go further: all
  matrices that share their short side (every block matrix of a GPT: the width) run as one batch, the narrower
  ones padded with zero columns, which the iterations keep at zero, while the padded batch holds at most
  `PAD_BELOW` elements. Small products are bound by the number of calls, not by arithmetic, so the padding is
  cheaper than the calls it saves; large ones (GPT-2 124M's) keep one batch per shape, where padding would
  only add work. The update is PyTorch's, step for step, up to the rounding of bf16 products summed in another
  order (tests/test_optim.py compares the two on the CPU, both ways of batching), and the state
  (`momentum_buffer`) is the same, so checkpoints load in either. Hand-written where PyTorch has the rule:
  only this loop (its Muon orthogonalizes one matrix per call).
- Muon orthogonalizes each whole matrix. Under FSDP or DeepSpeed a process holds a slice (a row block, or a
  flattened 1-D partition) and Muon would orthogonalize the slice: a different update, silently. Both are
  refused at start; data parallel (every process holds every matrix) is supported.
- The Newton-Schulz iterations are counted in the run's FLOPs (`total_flos`): per matrix of m x n (m <= n) and
  step, `ns_steps * (4 m^2 n + 2 m^3)`.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..config import ConfigError

MUON_DEFAULTS = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0, "nesterov": True, "ns_steps": 5,
                 "adjust_lr_fn": "original", "params": None}


def optimizer_name(training: dict) -> str:
    """`training.optimizer`, mapped onto transformers' `optim` when it is not llmkit's own."""
    name = training.get("optimizer", "adamw")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"training.optimizer={name!r}: give a name, such as adamw or muon")
    return name


def optim_setting(training: dict) -> dict:
    """The TrainingArguments `optim` that `training.optimizer` stands for ({} for muon, which is a factory)."""
    from transformers.training_args import OptimizerNames

    name = optimizer_name(training)
    if "optim" in training and "optimizer" in training:
        raise ConfigError("training.optim and training.optimizer both set; keep training.optimizer")
    if name == "muon":
        return {}
    if name == "adamw":
        return {"optim": "adamw_torch_fused"}
    known = [o.value for o in OptimizerNames]
    if name not in known:
        from difflib import get_close_matches

        near = get_close_matches(name, ["adamw", "muon", *known], n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"training.optimizer={name} is unknown{hint}; use adamw, muon or one of transformers' "
                          "optim names (adamw_torch, adafactor, sgd, ...)")
    return {"optim": name}


def muon_settings(training: dict) -> dict:
    given = training.get("muon") or {}
    if not isinstance(given, dict):
        raise ConfigError("training.muon must be a mapping, such as {lr: 0.02, momentum: 0.95}")
    unknown = sorted(set(given) - set(MUON_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown key training.muon.{unknown[0]}; the keys are {', '.join(MUON_DEFAULTS)}")
    settings = {**MUON_DEFAULTS, **given}
    for key in ("lr", "momentum", "weight_decay"):
        try:
            settings[key] = float(settings[key])
        except (TypeError, ValueError):
            raise ConfigError(f"training.muon.{key}={settings[key]!r} is not a number") from None
        if settings[key] < 0:
            raise ConfigError(f"training.muon.{key}={settings[key]} must be >= 0")
    if settings["adjust_lr_fn"] not in ("original", "match_rms_adamw", None):
        raise ConfigError(f"training.muon.adjust_lr_fn={settings['adjust_lr_fn']!r}: use original or match_rms_adamw")
    return settings


def split_for_muon(model: nn.Module, patterns: list[str] | None = None) -> tuple[list, list]:
    """(Muon's (name, parameter) pairs, AdamW's): by default the trainable 2-D weights that are neither an embedding
    nor the output head; `patterns` (regexes on parameter names) choose instead, and must name only matrices."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if patterns:
        chosen = [(n, p) for n, p in trainable if any(re.search(pat, n) for pat in patterns)]
        flat = [(n, tuple(p.shape)) for n, p in chosen if p.ndim != 2]
        if flat:
            name, shape = flat[0]
            raise ConfigError(f"training.muon.params matches {name} of shape {list(shape)}: Muon updates only 2-D "
                              "matrices; narrow the pattern (biases, norms and embeddings stay with AdamW)")
        if not chosen:
            raise ConfigError(f"training.muon.params {patterns} matches no trainable parameter")
    else:
        outside = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None:
            outside.add(id(head.weight))
        chosen = [(n, p) for n, p in trainable if p.ndim == 2 and id(p) not in outside]
        if not chosen:
            raise ConfigError("training.optimizer=muon: the model has no hidden matrix to train with Muon")
    sliced = [n for n, p in chosen if _is_slice(p)]
    if sliced:
        raise ConfigError(f"training.optimizer=muon: {sliced[0]} is sharded across processes (FSDP or DeepSpeed), and "
                          "Muon needs each whole matrix; launch with data parallel (configs/accelerate/ddp.yaml) or use "
                          "training.optimizer=adamw")
    ids = {id(p) for _, p in chosen}
    return chosen, [(n, p) for n, p in trainable if id(p) not in ids]


def _is_slice(p) -> bool:
    """A parameter this process holds only part of: an FSDP2 DTensor sharded on some dimension, or a DeepSpeed
    ZeRO-3 partition (`ds_shape`). A replicated DTensor is whole."""
    if hasattr(p, "ds_shape"):
        return True
    placements = getattr(p, "placements", None)
    return placements is not None and any(pl.is_shard() for pl in placements)


def muon_flops(named: list) -> int:
    """FLOPs of Muon's Newton-Schulz iterations for one optimizer step (ns_steps applied by the caller)."""
    total = 0
    for _, p in named:
        m, n = sorted(p.shape)
        total += 4 * m * m * n + 2 * m**3
    return total


class BatchedMuon(torch.optim.Muon):
    """`torch.optim.Muon`'s update, with the Newton-Schulz iterations of many matrices batched (see the module
    docstring). Same constructor, defaults, param groups and state."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.ndim != 2 or p.grad.is_sparse or torch.is_complex(p) for p in params):
                raise RuntimeError("Muon updates dense real 2-D matrices only")
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            _batched_muon(params, grads, bufs, group)
        return loss


def _closure_loss(closure):
    """An optimizer's `closure` (the loss, recomputed with gradients), as torch's optimizers call it."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


PAD_BELOW = 1 << 22  # elements of a padded batch of Newton-Schulz iterations (see the module docstring)


def _batched_muon(params: list, grads: list, bufs: list, group: dict) -> None:
    """One Muon step (torch.optim._muon._single_tensor_muon's arithmetic), many matrices at once."""
    lr = float(group["lr"])
    momentum = group["momentum"]
    torch._foreach_lerp_(bufs, grads, 1 - momentum)
    updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
    torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
    for index in _ns_batches(params):
        by_ratio: dict[float, tuple[list, list]] = {}  # one batch's updates at a time: a batch's memory, no more
        for i, u in zip(index, _orthogonalize([updates[i] for i in index], group)):
            ps, us = by_ratio.setdefault(_lr_ratio(group, tuple(params[i].shape)), ([], []))
            ps.append(params[i])
            us.append(u)
        for ratio, (ps, us) in by_ratio.items():
            torch._foreach_add_(ps, us, alpha=-lr * ratio)


def _ns_batches(params: list) -> list[list[int]]:
    """Indices of the matrices that run their Newton-Schulz iterations as one batch: those of one shape, and all
    those sharing their short side (dtype and device) when the batch padded to the longest is small."""
    by_short: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_short.setdefault((min(p.shape), p.dtype, p.device), []).append(i)
    batches = []
    for (short, _, _), index in by_short.items():
        if len(index) * short * max(max(params[i].shape) for i in index) <= PAD_BELOW:
            batches.append(index)
            continue
        by_shape: dict[tuple, list[int]] = {}
        for i in index:
            by_shape.setdefault(tuple(params[i].shape), []).append(i)
        batches.extend(by_shape.values())
    return batches


def _orthogonalize(mats: list, group: dict) -> list:
    """Newton-Schulz iterations (torch.optim.Muon's, in bf16) on matrices with the same short side, as one batch.
    Each runs on its wide orientation (the Gram matrices are short x short); narrower ones are padded with zero
    columns to the widest, which the iterations keep at zero (each step maps X to p(X X^T) X), so the result is
    the unpadded one's. Returns views in each matrix's own orientation."""
    a, b, c = group["ns_coefficients"]
    tall = [m.shape[0] > m.shape[1] for m in mats]
    if all(m.shape == mats[0].shape for m in mats):
        x = torch.stack(mats).bfloat16()  # (k, rows, cols)
        if tall[0]:
            x = x.mT  # a view, as in torch's loop: the same products
    else:
        x = mats[0].new_zeros((len(mats), min(mats[0].shape), max(max(m.shape) for m in mats)), dtype=torch.bfloat16)
        for j, m in enumerate(mats):
            x[j, :, : max(m.shape)] = m.mT if tall[j] else m
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=group["eps"])  # spectral norm at most 1
    for _ in range(group["ns_steps"]):
        gram = x @ x.mT  # (k, short, short)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.to(mats[0].dtype)
    return [x[j, :, : max(m.shape)].mT if tall[j] else x[j, :, : max(m.shape)] for j, m in enumerate(mats)]


def _lr_ratio(group: dict, shape: tuple) -> float:
    """torch.optim.Muon's learning-rate adjustment for a matrix of `shape` (its `adjust_lr_fn`)."""
    rows, cols = shape[:2]
    fn = group["adjust_lr_fn"]
    if fn is None or fn == "original":
        return math.sqrt(max(1, rows / cols))
    if fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (`BatchedMuon`) on some parameters and `torch.optim.AdamW` on the others, as one optimizer: the param
    groups (tagged `"optimizer": "muon"|"adamw"`) and the state are shared with the two inner optimizers, so
    schedulers, clipping, `state_dict()` and `load_state_dict()` work on the whole."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon_kwargs: dict, adamw_kwargs: dict):
        self.muon = BatchedMuon([dict(g, optimizer="muon") for g in muon_groups], **muon_kwargs)
        self.adamw = torch.optim.AdamW([dict(g, optimizer="adamw") for g in adamw_groups], **adamw_kwargs)
        # defaults["lr"]: the AdamW side's, which schedules given an absolute `min_lr` divide by (a ratio both follow)
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {"lr": adamw_kwargs["lr"]})
        self._link()

    def _link(self) -> None:
        self.muon.param_groups = [g for g in self.param_groups if g["optimizer"] == "muon"]
        self.adamw.param_groups = [g for g in self.param_groups if g["optimizer"] == "adamw"]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()


class MuonFactory:
    """What `Trainer(optimizer_cls_and_kwargs=(MuonFactory, kwargs))` instantiates and calls with the model."""

    def __call__(self, model: nn.Module, *, muon: dict, lr: float, weight_decay: float, betas, eps: float,
                 fused: bool) -> MuonWithAdamW:
        muon_named, rest = split_for_muon(model, muon.get("params"))
        decay = [p for _, p in rest if p.ndim >= 2]
        no_decay = [p for _, p in rest if p.ndim < 2]
        adamw_groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        muon_kwargs = {k: muon[k] for k in ("lr", "momentum", "weight_decay", "nesterov", "ns_steps", "adjust_lr_fn")}
        optimizer = MuonWithAdamW([{"params": [p for _, p in muon_named]}], adamw_groups, muon_kwargs,
                                  {"lr": lr, "betas": betas, "eps": eps, "fused": fused})
        optimizer.ns_flops = muon["ns_steps"] * muon_flops(muon_named)
        return optimizer


def muon_trainer_kwargs(training: dict, args) -> dict:
    """`optimizer_cls_and_kwargs` for the Trainer when `training.optimizer` is muon, else {}."""
    if optimizer_name(training) != "muon":
        if training.get("muon"):
            raise ConfigError("training.muon is set but training.optimizer is not muon; set training.optimizer=muon, "
                              "or training.muon=null to drop the section")
        return {}
    kwargs = dict(muon=muon_settings(training), lr=args.learning_rate, weight_decay=args.weight_decay,
                  betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                  fused=args.optim == "adamw_torch_fused")
    return {"optimizer_cls_and_kwargs": (MuonFactory, kwargs)}


def validate_optimizer(training: dict) -> None:
    """Every optimizer setting checked before any work (data, model): one line for the first problem."""
    optim_setting(training)
    if optimizer_name(training) == "muon":
        muon_settings(training)
    elif training.get("muon"):
        muon_trainer_kwargs(training, None)  # raises: a muon section without the muon optimizer


def check_muon_launch(training: dict, sharded: str | None) -> None:
    """Muon needs whole matrices: refuse it under a launch that slices them."""
    if sharded and optimizer_name(training) == "muon":
        raise ConfigError(f"training.optimizer=muon needs each process to hold whole matrices, but {sharded} slices "
                          "them (Muon would orthogonalize slices: a different update); launch with data parallel "
                          "(configs/accelerate/ddp.yaml) or use training.optimizer=adamw")
