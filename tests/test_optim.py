"""Optimizers, schedules and time budgets as config choices (training/optim.py, arguments.py, guards.TimeBudget):
Muon on the hidden matrices with AdamW on the rest, trained for real, resumed after a kill, refused where it would
compute something else; transformers' schedules by name; `training.max_time` ending a run cleanly."""

from __future__ import annotations

import copy
import json
import os
import socket
import time

import pytest
import torch
from conftest import assert_resumed_like_uninterrupted, kill_and_resume

from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM
from llmkit.cli import main
from llmkit.config import ConfigError, load_config
from llmkit.training import optim, train
from llmkit.training.optim import (
    BatchedMuon,
    MuonFactory,
    MuonWithAdamW,
    muon_flops,
    muon_settings,
    split_for_muon,
)

TINY = ["tokenizer.kind=char", "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.n_positions=32",
        "training.per_device_train_batch_size=8", "training.warmup_steps=2", "training.logging_steps=1",
        "training.report_to=none", "training.disable_tqdm=true", "training.seed=3", "sample.max_new_tokens=0"]


def quiet(*args):
    pass


def tiny_model(**kw) -> LlmkitGPTForCausalLM:
    torch.manual_seed(0)
    return LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2, **kw))


@pytest.fixture(scope="module")
def corpus(shakespeare_head):
    return shakespeare_head(40_000)


def run(corpus, tmp_path, name, *overrides, steps=30):
    cfg = load_config(None, [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path.parent / 'cache'}",
                             f"training.max_steps={steps}", f"training.eval_steps={steps}", *overrides])
    metrics = train(cfg, output_dir=str(tmp_path / name), log=quiet)
    history = json.loads((tmp_path / name / "log_history.json").read_text())
    return metrics, history


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = tiny_model()
    muon, rest = split_for_muon(model)
    muon_names = {n for n, _ in muon}
    assert muon_names and all(".h." in n and n.endswith("weight") for n in muon_names)
    assert all(p.ndim == 2 for _, p in muon)
    rest_names = {n for n, _ in rest}
    assert any("wte" in n for n in rest_names) and any("ln_f" in n for n in rest_names)
    assert not any("wte" in n or "wpe" in n or "ln" in n for n in muon_names)
    assert {id(p) for _, p in muon}.isdisjoint(id(p) for _, p in rest)
    assert len(muon) + len(rest) == len(list(model.parameters()))  # tied head: counted once, with AdamW
    opt = MuonFactory()(model, muon=muon_settings({"muon": {"lr": 0.03}}), lr=1e-3, weight_decay=0.1,
                        betas=(0.9, 0.99), eps=1e-8, fused=False)
    kinds = [(g["optimizer"], g["lr"], g["weight_decay"]) for g in opt.param_groups]
    assert kinds == [("muon", 0.03, 0.0), ("adamw", 1e-3, 0.1), ("adamw", 1e-3, 0.0)]
    assert opt.ns_flops == 5 * muon_flops(muon) > 0


@pytest.mark.parametrize("settings", [
    {},  # torch's defaults: nesterov, weight decay 0.1, no lr adjustment
    {"nesterov": False, "weight_decay": 0.0, "adjust_lr_fn": "original", "ns_steps": 3},
    {"adjust_lr_fn": "match_rms_adamw", "momentum": 0.9, "lr": 0.02},
])
@pytest.mark.parametrize("padded", [True, False], ids=["padded batches", "one batch per shape"])
def test_batched_muon_makes_torchs_muon_updates(settings, padded, monkeypatch):
    """BatchedMuon runs many matrices' Newton-Schulz iterations together: the parameters and momentum after several
    steps are torch.optim.Muon's, for tall, wide and square matrices, repeated and alone, over two groups (one of
    them with a matrix that gets no gradient), and the state loads into torch's optimizer. Both ways of batching:
    matrices sharing their short side padded to one batch (small ones), and one batch per shape (large ones)."""
    shapes = [(48, 16), (16, 48), (16, 16), (48, 16), (16, 48), (24, 40), (48, 16)]
    if not padded:
        monkeypatch.setattr(optim, "PAD_BELOW", 0)
    batches = optim._ns_batches([torch.empty(s) for s in shapes])
    assert sorted(map(len, batches)) == ([1, 6] if padded else [1, 1, 2, 3])
    torch.manual_seed(0)
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(4)]
    runs = []
    for cls in (torch.optim.Muon, BatchedMuon):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls([{"params": params[:4]}, {"params": params[4:], "lr": 0.05}], **settings)
        for step in grads:
            for i, (p, g) in enumerate(zip(params, step)):
                p.grad = None if i == 5 else g.clone()
            opt.step()
        runs.append((params, opt))
    (ours, batched), (theirs, reference) = runs[1], runs[0]
    for i, (p, q) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(p, q, msg=f"matrix {i} {shapes[i]}")
        assert (i == 5) == torch.equal(p, start[i])  # every matrix with a gradient moved
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert (p in batched.state) == (i != 5)
        if i != 5:
            torch.testing.assert_close(batched.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"])
    fresh = torch.optim.Muon([{"params": theirs[:4]}, {"params": theirs[4:], "lr": 0.05}], **settings)
    fresh.load_state_dict(batched.state_dict())  # one state format: a checkpoint resumes with either


def test_muon_state_dict_round_trip_continues_identically():
    """One optimizer to the Trainer: save, load into a fresh one, and the next steps are the same."""
    def steps(model, opt, n):
        g = torch.Generator().manual_seed(1)
        for _ in range(n):
            x = torch.randint(0, 40, (4, 16), generator=g)
            model(x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()

    def make(model):
        return MuonFactory()(model, muon=muon_settings({}), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8,
                             fused=False)

    a = tiny_model()
    opt_a = make(a)
    start = {n: p.detach().clone() for n, p in a.named_parameters()}
    steps(a, opt_a, 3)
    for n, p in a.named_parameters():  # every parameter moves: Muon's matrices and AdamW's rest
        assert not torch.equal(p, start[n]), n
    saved_model = {k: v.clone() for k, v in a.state_dict().items()}
    saved_opt = copy.deepcopy(opt_a.state_dict())  # state_dict() holds references to the live state
    steps(a, opt_a, 2)
    b = tiny_model()
    b.load_state_dict(saved_model)
    opt_b = make(b)
    opt_b.load_state_dict(saved_opt)
    assert isinstance(opt_b, MuonWithAdamW) and opt_b.muon.state is opt_b.state
    steps(b, opt_b, 2)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_muon_trains_lowers_the_loss_and_counts_its_flops(corpus, tmp_path):
    adamw, _ = run(corpus, tmp_path, "adamw", "training.learning_rate=3e-3")
    muon, history = run(corpus, tmp_path, "muon", "training.optimizer=muon", "training.learning_rate=3e-3",
                        "training.muon.lr=0.03")
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 0.5
    assert muon["optimizer"] == "muon" and muon["eval_loss"] < min(3.4, adamw["eval_loss"] + 0.1)
    state = json.loads(next((tmp_path / "muon").glob("checkpoint-*/trainer_state.json")).read_text())
    ref = json.loads(next((tmp_path / "adamw").glob("checkpoint-*/trainer_state.json")).read_text())
    model = LlmkitGPTForCausalLM.from_pretrained(tmp_path / "muon")
    expected = 30 * 5 * muon_flops(split_for_muon(model)[0])
    assert state["total_flos"] - ref["total_flos"] == pytest.approx(expected, rel=1e-6)


def test_muon_resumes_after_a_kill_on_the_same_curve(corpus, tmp_path):
    overrides = [*TINY, f"data.source={corpus}", "training.max_steps=60", "training.save_steps=10",
                 "training.eval_steps=30", "training.logging_steps=5", "training.optimizer=muon",
                 "training.learning_rate=3e-3", "training.save_total_limit=null", "training.load_best_model_at_end=false"]
    result = kill_and_resume(tmp_path, overrides, kill_after=20)
    assert_resumed_like_uninterrupted(result)


@pytest.mark.parametrize("override,message", [
    ("training.muon.params=[ln_1]", "training.muon.params matches transformer.h.0.ln_1.weight of shape [32]: Muon "
                                    "updates only 2-D matrices"),
    ("training.muon.lr=-1", "training.muon.lr=-1.0 must be >= 0"),
    ("training.muon.betas=[1,2]", "unknown key training.muon.betas"),
    ("training.muon.adjust_lr_fn=fast", "training.muon.adjust_lr_fn='fast'"),
    ("training.optimizer=adamww", "training.optimizer=adamww is unknown (did you mean adamw?)"),
    ("training.optimizer=muon training.optim=sgd", "training.optim and training.optimizer both set"),
])
def test_bad_optimizer_settings_are_one_line(override, message, corpus, tmp_path, capsys):
    extra = ["training.optimizer=muon"] if override.startswith("training.muon") else []
    argv = ["train", *TINY, *extra, *override.split(), f"data.source={corpus}", "training.max_steps=2",
            f"data.cache_dir={tmp_path / 'cache'}", "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run" / "checkpoint-2").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_muon_refuses_matrices_sharded_by_fsdp(monkeypatch):
    """A real FSDP2 shard (one process over gloo): Muon would orthogonalize the slice; it is refused instead."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = tiny_model()
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
        with pytest.raises(ConfigError, match="is sharded across processes .* Muon needs each whole matrix"):
            MuonFactory()(model, muon=muon_settings({}), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8,
                          fused=False)
    finally:
        dist.destroy_process_group()
    from llmkit.training.optim import check_muon_launch

    with pytest.raises(ConfigError, match="FSDP slices them"):
        check_muon_launch({"optimizer": "muon"}, "FSDP")
    check_muon_launch({"optimizer": "adamw"}, "FSDP")  # AdamW is elementwise: sharding is fine


def test_transformers_optimizer_names_pass_through(corpus, tmp_path):
    metrics, _ = run(corpus, tmp_path, "sgd", "training.optimizer=sgd", "training.learning_rate=0.3", steps=10)
    state = torch.load(next((tmp_path / "sgd").glob("checkpoint-*/optimizer.pt")), weights_only=True)
    assert "momentum" in state["param_groups"][0] and "betas" not in state["param_groups"][0]


def test_warmup_stable_decay_and_linear_to_zero(corpus, tmp_path):
    _, wsd = run(corpus, tmp_path, "wsd", "training.lr_scheduler_type=warmup_stable_decay", "training.warmup_steps=4",
                 "training.learning_rate=2e-3", steps=20)
    lr = {h["step"]: h["learning_rate"] for h in wsd if "learning_rate" in h}
    assert lr[2] < lr[4]  # warmup
    assert lr[5] == lr[10] == lr[16] == pytest.approx(2e-3)  # stable until the last 20% (4 steps)
    assert lr[17] > lr[18] > lr[19] > lr[20]  # decay, to zero by default
    _, linear_decay = run(corpus, tmp_path, "wsd-linear", "training.lr_scheduler_type=warmup_stable_decay",
                          "training.warmup_steps=4", "training.learning_rate=2e-3",
                          "training.lr_scheduler_kwargs={num_decay_steps: 4, decay_type: linear, min_lr_ratio: 1e-1}",
                          steps=20)  # a name passes as it is, a number YAML reads as text (1e-1) as a number
    lr = {h["step"]: h["learning_rate"] for h in linear_decay if "learning_rate" in h}
    steps = [lr[17] - lr[18], lr[18] - lr[19], lr[19] - lr[20]]
    assert steps == pytest.approx([steps[0]] * 3) and steps[0] > 0  # a straight line down
    assert lr[20] >= 2e-4 * 0.999  # to min_lr_ratio x the peak, not below
    _, linear = run(corpus, tmp_path, "linear", "training.lr_scheduler_type=linear", "training.warmup_steps=0",
                    "training.learning_rate=2e-3", steps=10)
    lr = {h["step"]: h["learning_rate"] for h in linear if "learning_rate" in h}
    assert lr[10] == pytest.approx(2e-3 * 1 / 10) and lr[5] == pytest.approx(2e-3 * 6 / 10)


def test_max_time_ends_the_run_cleanly(corpus, tmp_path):
    start = time.monotonic()
    metrics, history = run(corpus, tmp_path, "budget", "training.max_time=4", "training.eval_steps=100000",
                           "training.save_steps=100000", steps=100_000)
    assert time.monotonic() - start < 60
    step = metrics["stopped_by_max_time_at_step"]
    assert 0 < step == metrics["global_step"] < 100_000
    assert "eval_loss" in metrics and (tmp_path / "budget" / "model.safetensors").exists()
    assert any(h.get("step") == step and "eval_loss" in h for h in history)  # the final evaluation ran
    assert os.path.isdir(tmp_path / "budget" / f"checkpoint-{step}")  # and a checkpoint to resume from
