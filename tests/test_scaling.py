"""Scaling out on this machine's CPUs (gloo): real multi-process runs launched with accelerate.

- 2 processes at per-device batch B/2 train exactly as 1 process at batch B (same data order, fp32);
- two "machines" on 127.0.0.1 (two launches, --num_machines 2, ranks 0 and 1) end with the model one machine
  with two processes ends with;
- a launch asking for FSDP on CPU (which accelerate cannot shard there) is refused at once with one line;
- FSDP2 itself, sharding for real over gloo (tests/fsdp_on_cpu.py makes accelerate shard CPU processes): the
  losses of one unsharded process across a --resume from sharded checkpoints, the best checkpoint reloaded at the
  end, one whole model in the run folder, and a sharded LoRA run's adapter;
- (slow) one machine of two killed mid-run: the other stops within a minute with one line, and --resume on
  both continues from the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, read_json, subprocess_env
from safetensors.torch import load_file

TINY = ["tokenizer.kind=char", "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.n_positions=32",
        "data.packing=blocks", "data.val_ratio=0", "training.learning_rate=3e-3", "training.warmup_steps=2",
        "training.logging_steps=1", "training.report_to=none", "training.disable_tqdm=true", "training.seed=5",
        "training.bf16=false", "sample.max_new_tokens=0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], *, processes: int, machines: int = 1, rank: int = 0, port: int, cwd, config=None,
           stdout=subprocess.PIPE, stderr=subprocess.PIPE, entry=("-m", "llmkit.cli")) -> subprocess.Popen:
    env = subprocess_env()
    env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(config)] if config else ["--multi_gpu", "--mixed_precision", "no",
                                                          "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(processes), "--num_machines", str(machines), "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), *entry, "train", *args]
    return subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True,
                            start_new_session=True)


def finish(procs: list[subprocess.Popen], timeout: float) -> None:
    """Wait for launched machines together, reading all their pipes at once: each machine's local main process
    prints every log line, and one whose pipe fills up (64 KB) blocks the others at their next collective."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            outputs = list(pool.map(lambda p: p.communicate(timeout=timeout), procs))
    finally:
        for proc in procs:
            if proc.poll() is None:  # out of time: its launcher and workers (a session of their own) go too
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-4000:]


def single(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit.cli", "train", *map(str, args)], cwd=cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)


def losses(run) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in read_json(run / "log_history.json") if "loss" in h}


@pytest.fixture(scope="module")
def corpus(shakespeare_head):
    return shakespeare_head(60_000)


@pytest.fixture(scope="module")
def reference_two_process(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("two-process")
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", "training.max_steps=12",
              "training.per_device_train_batch_size=4"]
    proc = launch([*common, "--output-dir", root / "run"], processes=2, port=free_port(), cwd=root)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return root / "run", common, root


def test_two_processes_at_half_the_batch_train_like_one_process_at_the_whole_batch(reference_two_process, tmp_path):
    run, common, root = reference_two_process
    one = single([*[c for c in common if "per_device_train_batch_size" not in c],
                  "training.per_device_train_batch_size=8", "--output-dir", tmp_path / "one"], cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-4000:]
    two_losses, one_losses = losses(run), losses(tmp_path / "one")
    assert sorted(two_losses) == sorted(one_losses) == list(range(1, 13))
    for step in one_losses:
        assert abs(two_losses[step] - one_losses[step]) < 1e-4, (step, two_losses[step], one_losses[step])
    assert read_json(run / "metrics.json")["train_tokens"] == read_json(tmp_path / "one" / "metrics.json")["train_tokens"]


def test_two_machines_on_localhost_end_with_the_model_of_one_machine(reference_two_process, tmp_path):
    run, common, root = reference_two_process
    port = free_port()
    machines = [launch([*common, "--output-dir", tmp_path / "run"], processes=2, machines=2, rank=r, port=port,
                       cwd=tmp_path) for r in (0, 1)]
    finish(machines, timeout=600)
    ours, reference = load_file(tmp_path / "run" / "model.safetensors"), load_file(run / "model.safetensors")
    assert ours.keys() == reference.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=1e-6, msg=name)


def test_fsdp_on_cpu_is_refused_at_once_with_one_line_not_run_as_something_else(corpus, tmp_path):
    start = time.monotonic()
    proc = launch([*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=5",
                   "--output-dir", tmp_path / "run"], processes=2, port=free_port(), cwd=tmp_path,
                  config=REPO / "configs" / "accelerate" / "fsdp.yaml")
    _, err = proc.communicate(timeout=120)  # a hang would time out here
    assert proc.returncode != 0 and time.monotonic() - start < 120
    lines = [line for line in err.splitlines() if line.startswith("llmkit: error:")]
    assert lines and all("accelerate runs MULTI_CPU here" in line for line in lines), err[-3000:]
    # no traceback frame in llmkit's package (the launcher reports its failed children its own way); the package's
    # folder, not the substring "/llmkit/", which a checkout folder named llmkit also contains
    assert f'File "{REPO / "llmkit"}' not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_fsdp2_trains_like_one_process_resumes_reloads_the_best_and_saves_whole_models(corpus, tmp_path):
    """Two processes sharding by FSDP2 (configs/accelerate/fsdp.yaml; tests/fsdp_on_cpu.py lets accelerate shard
    CPU processes, over gloo) against one unsharded process at the whole batch:
    - the same loss at every step, across a --resume at step 8 of 12 from a sharded checkpoint (a piece per process);
    - the samples at each evaluation taken (every process takes part in each forward);
    - the best checkpoint reloaded at the end on every process (the highest eval loss counts as best here, step 4's,
      so that the reload shows): the run folder's whole model equals the unsharded run's;
    - a LoRA run on that model, sharded too, saves an adapter that plain peft loads.
    A mismatch between the processes hangs their collectives: the time limits below."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import llmkit  # noqa: F401  (registers llmkit-gpt with the Auto classes)

    run, one, adapter = tmp_path / "run", tmp_path / "one", tmp_path / "lora"
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "data.val_ratio=0.1",
              "training.eval_steps=4", "training.save_steps=4", "sample.max_new_tokens=8", 'sample.prompts=["ROMEO:"]',
              "training.lr_scheduler_type=constant", "training.warmup_steps=0",  # 8 steps, then 4 more, train as 12
              "training.greater_is_better=true"]
    config, entry = REPO / "configs" / "accelerate" / "fsdp.yaml", [str(REPO / "tests" / "fsdp_on_cpu.py")]

    def sharded(*args, base=common):
        finish([launch([*base, "training.per_device_train_batch_size=4", *args], processes=2, port=free_port(),
                       cwd=tmp_path, config=config, entry=entry)], timeout=300)

    sharded("training.max_steps=8", "--output-dir", run)
    for step in (4, 8):
        shards = run / f"checkpoint-{step}" / "pytorch_model_fsdp_0"
        assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert (shards / ".metadata").exists() and (run / f"checkpoint-{step}" / "optimizer_0" / ".metadata").exists()
    assert read_json(run / "metrics.json")["best_checkpoint"] == str(run / "checkpoint-4")
    assert [s["step"] for s in map(json.loads, (run / "samples.jsonl").read_text().splitlines())] == [4, 8]
    sharded("training.max_steps=12", "--output-dir", run, "--resume")
    assert [s["step"] for s in map(json.loads, (run / "samples.jsonl").read_text().splitlines())] == [4, 8, 12]

    reference = single([*common, "training.per_device_train_batch_size=8", "training.max_steps=12",
                        "--output-dir", one], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-4000:]
    fsdp_losses, one_losses = losses(run), losses(one)
    assert sorted(fsdp_losses) == sorted(one_losses) == list(range(1, 13))
    for step in one_losses:
        assert abs(fsdp_losses[step] - one_losses[step]) < 1e-4, (step, fsdp_losses[step], one_losses[step])
    for folder in (run, one):
        metrics = read_json(folder / "metrics.json")
        assert metrics["global_step"] == 12 and metrics["best_checkpoint"] == str(folder / "checkpoint-4")
    ours, theirs = load_file(run / "model.safetensors"), load_file(one / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:  # whole tensors (not one process's shard), step 4's weights
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    assert AutoModelForCausalLM.from_pretrained(run).generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5,
                                                               do_sample=False).shape == (1, 8)

    on_the_run = [c for c in common if not c.startswith(("model.", "tokenizer."))]  # the run's own model, tokenizer
    sharded(f"model.from_pretrained={run}", "lora.r=4", "training.max_steps=4", "--output-dir", adapter, base=on_the_run)
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved)
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in saved.items())  # trained
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run), adapter)
    loaded = {name: tensor for name, tensor in model.state_dict().items() if "lora_" in name}
    assert len(loaded) == len(saved)


@pytest.mark.slow
def test_a_killed_machine_stops_the_other_within_a_minute_and_both_resume(corpus, tmp_path):
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=400",
              "training.per_device_train_batch_size=4", "training.save_strategy=steps", "training.save_steps=20",
              "training.save_total_limit=2", "--output-dir", tmp_path / "run"]
    port = free_port()
    machines = [launch(common, processes=2, machines=2, rank=r, port=port, cwd=tmp_path) for r in (0, 1)]
    deadline = time.monotonic() + 300
    while not list((tmp_path / "run").glob("checkpoint-*/trainer_state.json")):
        assert all(p.poll() is None for p in machines), machines[0].stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    import psutil

    machine = psutil.Process(machines[1].pid)  # machine 1 goes away: its launcher and its worker (own session)
    for process in [*machine.children(recursive=True), machine]:
        process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = machines[0].communicate(timeout=120)
    machines[1].communicate()
    assert time.monotonic() - killed_at < 60, "the surviving machine did not stop within a minute"
    assert machines[0].returncode != 0
    assert "lost contact with another training process" in err and "--resume" in err, err[-4000:]
    port = free_port()
    resumed = [launch([*common, "--resume"], processes=2, machines=2, rank=r, port=port, cwd=tmp_path)
               for r in (0, 1)]
    finish(resumed, timeout=900)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["global_step"] == 400
