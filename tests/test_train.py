"""`llmkit train` end to end on tiny models: loss goes down, the run folder is complete and reloads, a killed
run resumes to the same numbers as an uninterrupted one, data parallelism on CPU, and the weight-decay rule."""

from __future__ import annotations

import math
import pathlib
import re
import socket
import subprocess
import sys

import pytest
import torch
from conftest import (
    REPO,
    assert_resumed_like_uninterrupted,
    kill_and_resume,
    llmkit_cmd,
    logged_steps,
    read_json,
    subprocess_env,
)

import llmkit
from llmkit.config import load_config
from llmkit.training import LlmkitTrainer, train, training_arguments

CORPUS_CHARS = 150_000

# A model small enough that a few dozen steps take well under a second on a laptop CPU.
TINY = [
    "tokenizer.kind=char",
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "model.n_positions=32",
    "training.per_device_train_batch_size=16",
    "training.per_device_eval_batch_size=64",
    "training.learning_rate=3e-3",
    "training.warmup_steps=5",
    "training.logging_steps=5",
    "training.report_to=none",
    "training.disable_tqdm=true",
    "training.seed=7",
    "data.packing=blocks",
    "sample.max_new_tokens=8",
    "sample.prompts=[ROMEO]",
]










@pytest.fixture(scope="module")
def corpus(shakespeare_head) -> pathlib.Path:
    return shakespeare_head(CORPUS_CHARS)


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
    """One real 40-step run, trained in-process: (run folder, returned metrics, config)."""
    root = tmp_path_factory.mktemp("trained")
    out = root / "run"
    cfg = load_config(
        None,
        [*TINY, f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", "training.max_steps=40",
         "training.eval_steps=10"],
    )
    metrics = train(cfg, output_dir=str(out), log=lambda *a: None)
    return out, metrics, cfg


def test_short_training_lowers_validation_loss_and_writes_a_complete_run_folder(trained_run):
    out, returned, _ = trained_run
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "config.yaml", "metrics.json", "log_history.json", "loss_curve.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = read_json(out / "metrics.json")
    for key in ("train_loss", "eval_loss", "eval_perplexity", "eval_bits_per_char", "train_tokens_per_second"):
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), key
        assert metrics[key] > 0, key
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-9)
    # char-level: about one token per character, so bits per char is close to the loss in bits
    assert metrics["eval_bits_per_char"] == pytest.approx(metrics["eval_loss"] / math.log(2), rel=0.01)
    assert metrics["global_step"] == 40
    assert metrics["eval_loss"] == pytest.approx(returned["eval_loss"])
    expected = training_arguments(load_config(None, TINY))  # the precision the run used is on record
    assert metrics["mixed_precision"] == ("bf16" if expected.bf16 else "fp16" if expected.fp16 else "no")

    history = read_json(out / "log_history.json")
    evals = [h for h in history if "eval_loss" in h]
    # one evaluation every 10 steps and no more: metrics.json reuses the logged one of the reloaded best checkpoint
    assert [h["step"] for h in evals] == [10, 20, 30, 40]
    assert evals[0]["eval_loss"] > metrics["eval_loss"]
    assert metrics["eval_loss"] == pytest.approx(min(h["eval_loss"] for h in evals))
    assert metrics["eval_loss"] < math.log(65) - 0.3  # clearly better than guessing among the ~65 characters
    train_losses = [h["loss"] for h in history if "loss" in h]
    assert train_losses[0] > train_losses[-1]
    assert metrics["train_loss"] == pytest.approx(train_losses[-1])

    saved = load_config(out / "config.yaml")  # the resolved config, loadable as a config again
    assert (saved.model.n_layer, saved.model.n_embd, saved.tokenizer.kind) == (1, 32, "char")
    assert saved.training["max_steps"] == 40
    assert read_json(out / "config.json")["n_embd"] == 32


def test_saved_model_reproduces_the_reported_validation_loss(trained_run):
    """The weights in the folder are the ones whose eval_loss metrics.json reports (the best checkpoint)."""
    from transformers import AutoModelForCausalLM

    from llmkit.data import BlockCollator, prepare_data

    out, _, cfg = trained_run
    data = prepare_data(cfg, log=lambda *a: None)
    assert data.cache_hit
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    blocks = data.eval_dataset(cfg.block_size)
    batch = BlockCollator()([blocks[i] for i in range(len(blocks))])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten()).item()
    assert loss == pytest.approx(read_json(out / "metrics.json")["eval_loss"], rel=1e-4)


def test_saved_folder_reloads_with_auto_classes_and_generates(trained_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = trained_run
    assert llmkit.LlmkitGPTForCausalLM  # importing llmkit registers the architecture
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(model, llmkit.LlmkitGPTForCausalLM)
    ids = tokenizer("ROMEO:", return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[0]) == "ROMEO:"
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    assert gen.shape == (1, ids.shape[1] + 16) or int(gen[0, -1]) == tokenizer.eos_token_id
    assert torch.equal(gen[0, : ids.shape[1]], ids[0])
    text = tokenizer.decode(gen[0], skip_special_tokens=True)
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


@pytest.fixture(scope="module")
def resumed_run(corpus, tmp_path_factory) -> dict:
    """A run SIGKILLed after its step-20 checkpoint and resumed with --resume, beside an uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    return kill_and_resume(root, [
        *TINY, "model.n_layer=2", "training.per_device_train_batch_size=8", f"data.source={corpus}",
        f"data.cache_dir={root / 'cache'}", "training.max_steps=60", "training.eval_steps=10",
        "training.save_steps=10", "training.save_total_limit=3",
    ])


def test_resume_after_sigkill_matches_an_uninterrupted_run(resumed_run):
    assert_resumed_like_uninterrupted(resumed_run)


def test_a_resumed_run_reports_the_throughput_of_the_steps_it_ran(resumed_run):
    """metrics.json's train_tokens_per_second is what the run's own eval lines print (tokens of the steps this
    process trained / its training time), for a fresh run and for a resumed one alike."""
    for name, stderr in (("straight", resumed_run["straight_stderr"]), ("killed", resumed_run["resume_stderr"])):
        printed = float(re.findall(r"\| ([\d,]+) tok/s", stderr)[-1].replace(",", ""))
        reported = read_json(resumed_run[name] / "metrics.json")["train_tokens_per_second"]
        assert reported == pytest.approx(printed, rel=0.01, abs=1), name


def test_a_cli_run_says_where_its_wall_time_went(resumed_run):
    """metrics.json's wall_seconds_by_phase (llmkit train's WallClock): from the process's start (imports) to the
    run files, the phases add up to the total, which is the process's time up to metrics.json."""
    metrics = read_json(resumed_run["straight"] / "metrics.json")
    phases = dict(metrics["wall_seconds_by_phase"])
    total = phases.pop("total")
    assert sum(phases.values()) == pytest.approx(total, abs=0.01)
    for phase in ("start-up", "data", "model", "trainer set-up", "data loading", "training steps", "evaluation",
                  "samples", "report", "checkpoints", "final save", "run files"):
        assert phases.get(phase, 0) > 0, (phase, phases)
    assert list(phases)[:3] == ["start-up", "config and checks", "data"]
    assert phases["start-up"] > 0.3  # at least torch's import, before the command's first line
    # the clock's training time and the FeedbackCallback's (steps plus what runs between them) agree
    between = phases["training steps"] + phases["data loading"] + phases["logging"] + phases["checkpoints"]
    assert phases["training steps"] <= metrics["train_tokens"] / metrics["train_tokens_per_second"] <= between + 0.5
    assert total > metrics["wall_seconds"]  # the run's own clock starts at on_train_begin, after start-up
    # the start-up phase starts at the process's start, not before it: the resumed process's phases fit in its
    # time from outside (psutil's create_time, on /proc/stat's whole-second boot time, ran up to a second early)
    resumed = read_json(resumed_run["killed"] / "metrics.json")["wall_seconds_by_phase"]
    assert resumed["start-up"] > 0.3
    assert resumed["total"] <= resumed_run["resume_wall"]


def test_evaluations_during_training_score_a_fixed_subsample_and_the_end_the_whole_split(corpus, tmp_path):
    """training.eval_subsample_tokens: evaluations at steps 10 and 20 score 8 evenly spread blocks, the last
    step's the whole split; metrics.json's eval_loss is the saved model's loss on the whole split."""
    from transformers import AutoModelForCausalLM

    from llmkit.config import ConfigError
    from llmkit.data import BlockCollator, prepare_data

    base = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=30",
            "training.eval_steps=10", "sample.max_new_tokens=0"]
    with pytest.raises(ConfigError, match="eval_subsample_tokens=0 must be a positive number"):
        train(load_config(None, [*base, "training.eval_subsample_tokens=0"]), output_dir=str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
    cfg = load_config(None, [*base, "training.eval_subsample_tokens=256"])  # 8 blocks of 32
    out = tmp_path / "run"
    metrics = train(cfg, output_dir=str(out), log=lambda *a: None)
    blocks = prepare_data(cfg, log=lambda *a: None).eval_dataset(cfg.block_size)
    assert len(blocks) > 100
    evals = {h["step"]: h for h in read_json(out / "log_history.json") if "eval_loss" in h}
    assert sorted(evals) == [10, 20, 30]
    # blocks scored, read back from the Trainer's speed metrics: samples/s is taken over the unrounded runtime and
    # the runtime is rounded to 0.1 ms, so a fast whole-split evaluation reads back within a percent or two
    scored = {step: h["eval_runtime"] * h["eval_samples_per_second"] for step, h in evals.items()}
    assert round(scored[10]) == round(scored[20]) == 8 and scored[30] == pytest.approx(len(blocks), rel=0.03), scored
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = BlockCollator()([blocks[i] for i in range(len(blocks))])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten()).item()
    assert metrics["eval_loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_evaluations_run_in_inference_mode_and_training_goes_on_after_them(lora, corpus, tmp_path):
    """Every evaluation forward (steps 6 and 12 of 18, and the final one) runs under torch.inference_mode, every
    training forward outside it; training after an evaluation goes on lowering the loss, so nothing an evaluation
    made (inference tensors cannot be saved for backward) reached a later step."""
    from transformers import TrainerCallback

    seen = []

    class Watch(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(lambda m, a: seen.append((m.training, torch.is_inference_mode_enabled())))

    overrides = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=18",
                 "training.eval_steps=6", "training.logging_steps=1", "sample.max_new_tokens=0"]
    if lora:
        overrides.append("lora.r=4")
    metrics = train(load_config(None, overrides), output_dir=str(tmp_path / "run"), log=lambda *a: None,
                    callbacks=[Watch()])
    assert metrics["global_step"] == 18
    assert {mode for training, mode in seen if training} == {False}
    assert {mode for training, mode in seen if not training} == {True}
    assert sum(not training for training, _ in seen) >= 4  # three evaluations during training and the final one
    losses = logged_steps(read_json(tmp_path / "run" / "log_history.json"), "loss", 0)
    assert sum(losses[s] for s in range(13, 19)) < sum(losses[s] for s in range(1, 7))


def test_same_config_and_seed_give_the_same_run(corpus, tmp_path):
    """Two `llmkit train` runs of one config with a fixed training.seed start from the same weights and log the
    same losses (HF's set_seed(args.seed) runs in Trainer.__init__, after llmkit has built the model)."""
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=2",
              "training.logging_steps=1", "training.eval_steps=2"]
    # both runs at once (sharing one data cache, as two users of one machine would)
    procs = [subprocess.Popen(llmkit_cmd("train", *common, "--output-dir", tmp_path / name), cwd=tmp_path, env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    first, second = (logged_steps(read_json(tmp_path / name / "log_history.json"), "loss", 0) for name in ("a", "b"))
    assert sorted(first) == [1, 2]
    assert second == pytest.approx(first, rel=1e-6), "same config and seed, different initial weights"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(corpus, tmp_path_factory):
    """Two CPU processes, data-parallel over gloo.

    `accelerate launch --cpu --num_processes 2` starts a single process unless it is given an MPI hostfile
    (accelerate's simple launcher), so the two processes come from the torchrun-based launcher, told to use
    the CPU with ACCELERATE_USE_CPU (transformers then sets up DistributedType.MULTI_CPU with gloo)."""
    root = tmp_path_factory.mktemp("ddp")
    e = subprocess_env()
    e.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "llmkit.cli", "train", *TINY, f"data.source={corpus}", f"data.cache_dir={root / 'cache'}",
        "training.max_steps=20", "training.eval_steps=10", "training.per_device_train_batch_size=8",
        "--output-dir", root / "run",
    ]
    proc = subprocess.run(list(map(str, cmd)), cwd=root, env=e, capture_output=True, text=True, timeout=600)
    return root / "run", proc


def test_two_process_cpu_data_parallel_run_writes_one_model(ddp_run):
    out, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert [p.relative_to(out) for p in out.glob("*.safetensors")] == [pathlib.Path("model.safetensors")]
    metrics = read_json(out / "metrics.json")
    assert metrics["global_step"] == 20
    # 2 processes x 8 blocks x 32 tokens per step: the world size really was 2
    assert metrics["train_tokens"] == 20 * 8 * 2 * 32
    assert math.isfinite(metrics["eval_loss"])
    history = read_json(out / "log_history.json")
    assert [h["step"] for h in history if "eval_loss" in h][:2] == [10, 20]
    # the main process alone writes the run and reports
    assert (proc.stdout + proc.stderr).count("writing to ") == 1
    assert proc.stdout.count("done: ") == 1


def test_two_process_run_prepares_the_data_once(ddp_run):
    """train() says: one process tokenizes (main_process_first), the others then hit the cache."""
    _, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    assert output.count("training a char tokenizer") == 1, "both processes trained the tokenizer"
    assert output.count("vocabulary ") == 1, "both processes printed the data summary"


@pytest.mark.parametrize(
    "extra",
    [dict(norm_type="rmsnorm"), dict(norm_type="rmsnorm", bias=False, mlp_type="swiglu"), dict()],
    ids=["rmsnorm", "rmsnorm-swiglu-nobias", "layernorm"],
)
def test_weight_decay_skips_every_1d_parameter(tmp_path, extra):
    from transformers import TrainingArguments

    model = llmkit.build_model("llmkit-gpt", vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2, **extra)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, weight_decay=0.1)
    trainer = LlmkitTrainer(model=model, args=args)
    decay = set(trainer.get_decay_parameter_names(model))
    params = dict(model.named_parameters())

    norm_params = {f"{mod_name}.{n}" for mod_name, mod in model.named_modules() if "Norm" in type(mod).__name__
                   for n, _ in mod.named_parameters(recurse=False)}
    if extra.get("norm_type") == "rmsnorm":
        assert any(type(m).__name__ == "RMSNorm" for m in model.modules())
    assert norm_params and not norm_params & decay
    assert not {n for n in params if n.endswith(".bias")} & decay
    assert decay == {n for n, p in params.items() if p.dim() >= 2}
    assert {n for n, p in params.items() if p.dim() == 1}.isdisjoint(decay)
    assert "transformer.wte.weight" in decay and "transformer.h.0.attn.c_attn.weight" in decay

    # and the optimizer really uses it: weight decay on exactly the matrices
    optimizer = trainer.create_optimizer()
    by_id = {id(p): n for n, p in params.items()}
    for group in optimizer.param_groups:
        names = {by_id[id(p)] for p in group["params"]}
        assert names == (decay if group["weight_decay"] > 0 else set(params) - decay)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(params)


def test_saved_config_never_holds_a_hub_token(tmp_path):
    cfg = load_config(None, ["training.hub_token=hf_NOT_A_REAL_SECRET", "training.push_to_hub=false"])
    cfg.save(tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "hf_NOT_A_REAL_SECRET" not in text and "hub_token: <redacted>" in text
    assert load_config(tmp_path / "config.yaml").training["push_to_hub"] is False


def test_training_continues_from_a_saved_run_with_its_own_tokenizer(trained_run, corpus, tmp_path):
    out, first, _ = trained_run
    cfg = load_config(None, [
        *TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", f"model.from_pretrained={out}",
        "tokenizer.kind=pretrained", f"tokenizer.name_or_path={out}", "training.max_steps=10",
        "training.eval_steps=10", "training.warmup_steps=0", "training.learning_rate=1e-3",
    ])
    metrics = train(cfg, output_dir=str(tmp_path / "more"), log=lambda *a: None)
    log = read_json(tmp_path / "more" / "log_history.json")
    # it starts where the first run ended (not from scratch: ln 65 nats), and goes on learning
    assert log[0]["loss"] < first["eval_loss"] + 0.15
    assert metrics["eval_loss"] < first["eval_loss"]


@pytest.mark.parametrize("setting, bf16, fp16", [("training.fp16=true", False, True), ("training.bf16=false", False, False)])
def test_a_precision_the_user_picks_replaces_the_default_pair(setting, bf16, fp16):
    # the default may be bf16 (CPUs with AVX512-BF16/AMX) or fp16 (older GPUs): fp16=true must not clash with it
    args = training_arguments(load_config(None, [setting]))
    assert (args.bf16, args.fp16) == (bf16, fp16)


def test_the_cpu_bf16_default_follows_the_measurements_on_record():
    """`cpu_bf16_pays` agrees with every clear result of benchmarks/cpu_precision.py (bf16 at least 5% faster or
    slower than fp32) on both machines on record, one with AMX and one with AVX512-BF16 alone, and the presets
    that measured one way get that way."""
    from llmkit.training.arguments import cpu_bf16_pays, expected_shape

    records = {name: read_json(REPO / "benchmarks/results" / name)
               for name in ("cpu_precision.json", "cpu_precision_amd.json")}
    amx = {name: "amx_tile" in record["machine"]["cpu_flags"] for name, record in records.items()}
    assert amx == {"cpu_precision.json": True, "cpu_precision_amd.json": False}
    for name, record in records.items():
        clear = [r for r in record["rows"] if abs(r["bf16_speedup"] - 1) > 0.05]
        assert len(clear) >= 10, name
        for r in clear:
            assert cpu_bf16_pays(r["n_embd"], r["vocab"], r["n_head"], amx=amx[name]) == (r["bf16_speedup"] > 1), r
    assert any(r["bf16_speedup"] < 0.95 for r in records["cpu_precision_amd.json"]["rows"])
    shapes = {name: expected_shape(load_config(REPO / "configs" / f"{name}.yaml"))
              for name in ("quickstart", "tiny", "shakespeare-char-cpu", "shakespeare-char-speedrun", "small")}
    assert shapes["quickstart"] == (128, 2048, 4) and shapes["tiny"] == (128, 256, 2)  # read from the configs
    assert {name: cpu_bf16_pays(*shape, amx=True) for name, shape in shapes.items()} == dict.fromkeys(shapes, True)
    assert {name: cpu_bf16_pays(*shape, amx=False) for name, shape in shapes.items()} == {
        "quickstart": True, "tiny": True, "shakespeare-char-cpu": False, "shakespeare-char-speedrun": False,
        "small": True}


def test_samples_during_a_mixed_precision_run_decode_without_autocast(corpus, tmp_path):
    """Samples decode with the model's own forward, not accelerate's bf16 autocast wrapper (own_precision in
    llmkit/training/callbacks.py): training forwards run under autocast, sample forwards (one row, past the
    context too) in fp32, and the last step's sample is what the saved model generates with the run's settings."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from llmkit.models.generation import generate_texts
    from llmkit.training.callbacks import sample_kwargs

    forwards = []  # (what, autocast on), seen inside the model's forward (from its head)

    def what() -> str:  # training with gradients, evaluation in inference mode, samples in generate's no_grad
        return "train" if torch.is_grad_enabled() else "eval" if torch.is_inference_mode_enabled() else "sample"

    class Watch(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            model.lm_head.register_forward_pre_hook(lambda module, inputs: forwards.append(
                (what(), torch.is_autocast_enabled("cpu"))))

    cfg = load_config(None, [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
                             f"training.output_dir={tmp_path / 'run'}", "training.bf16=true", "training.max_steps=30",
                             "training.eval_steps=15", "sample.max_new_tokens=40"])
    train(cfg, callbacks=[Watch()])
    autocast = {kind: [on for k, on in forwards if k == kind] for kind in ("train", "eval", "sample")}
    assert len(autocast["train"]) == 30 and all(autocast["train"])  # the run is mixed precision
    assert autocast["eval"] and all(autocast["eval"])  # evaluations score as the model trains
    assert len(autocast["sample"]) >= 2 * 40 and not any(autocast["sample"])
    run = tmp_path / "run"
    (last,) = [s for s in map(json.loads, (run / "samples.jsonl").read_text().splitlines()) if s["step"] == 30]
    model, tok = AutoModelForCausalLM.from_pretrained(run), AutoTokenizer.from_pretrained(run)
    assert generate_texts(model, tok, [last["prompt"]], **sample_kwargs(cfg)) == [last["text"]]
