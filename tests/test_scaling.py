"""Scaling out on this machine's CPUs (gloo): real multi-process runs launched with accelerate.

- 2 processes at per-device batch B/2 train exactly as 1 process at batch B (same data order, fp32);
- two "machines" on 127.0.0.1 (two launches, --num_machines 2, ranks 0 and 1) end with the model one machine
  with two processes ends with;
- a launch asking for FSDP on CPU (which accelerate cannot shard there) is refused at once with one line;
- FSDP2 itself, sharding for real over gloo (tests/fsdp_on_cpu.py makes accelerate shard CPU processes):
  sharded checkpoints, samples taken by every process, the best model reloaded at the end, one full model in the
  run folder, and --resume from a sharded checkpoint;
- (slow) one machine of two killed mid-run: the other stops within a minute with one line, and --resume on
  both continues from the last complete checkpoint.
"""

from __future__ import annotations

import json
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

    with ThreadPoolExecutor(len(procs)) as pool:
        outputs = list(pool.map(lambda p: p.communicate(timeout=timeout), procs))
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


def test_fsdp2_shards_checkpoints_samples_on_every_process_and_resumes_to_one_full_model(corpus, tmp_path):
    """Two processes sharding by FSDP2 (configs/accelerate/fsdp.yaml, over gloo): every checkpoint is a sharded
    one (a piece per process) that --resume recognizes; the samples at each evaluation (a forward needs every
    process) and the best model's reload at the end run on both processes (a mismatch hangs the collectives: the
    timeouts below); the run folder gets the whole model, which loads without llmkit's launcher and generates."""
    run = tmp_path / "run"
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "data.val_ratio=0.1",
              "training.per_device_train_batch_size=4", "training.eval_steps=4", "training.save_steps=4",
              "sample.max_new_tokens=8", 'sample.prompts=["ROMEO:"]']
    config, entry = REPO / "configs" / "accelerate" / "fsdp.yaml", [str(REPO / "tests" / "fsdp_on_cpu.py")]
    finish([launch([*common, "training.max_steps=8", "--output-dir", run], processes=2, port=free_port(), cwd=tmp_path, config=config,
                   entry=entry)], timeout=300)
    for step in (4, 8):
        shards = run / f"checkpoint-{step}" / "pytorch_model_fsdp_0"
        assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert (shards / ".metadata").exists() and (run / f"checkpoint-{step}" / "optimizer_0" / ".metadata").exists()
    metrics = read_json(run / "metrics.json")
    assert metrics["best_checkpoint"] == str(run / "checkpoint-8")
    assert [s["step"] for s in map(json.loads, (run / "samples.jsonl").read_text().splitlines())] == [4, 8]
    # sharding changes where the weights live, not the arithmetic: one process at the whole batch trains the same
    one = single([*[c for c in common if "per_device_train_batch_size" not in c],
                  "training.per_device_train_batch_size=8", "training.max_steps=8", "--output-dir", tmp_path / "one"],
                 cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-4000:]
    fsdp_losses, one_losses = losses(run), losses(tmp_path / "one")
    assert sorted(fsdp_losses) == sorted(one_losses) == list(range(1, 9))
    for step in one_losses:
        assert abs(fsdp_losses[step] - one_losses[step]) < 1e-4, (step, fsdp_losses[step], one_losses[step])

    proc = launch([*common, "training.max_steps=12", "--output-dir", run, "--resume"], processes=2, port=free_port(), cwd=tmp_path,
                  config=config, entry=entry)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    assert "resuming from" in out + err and "checkpoint-8 (step 8 of 12)" in out + err
    metrics = read_json(run / "metrics.json")
    assert metrics["global_step"] == 12 and metrics["best_checkpoint"] == str(run / "checkpoint-12")

    from transformers import AutoModelForCausalLM

    import llmkit  # noqa: F401  (registers llmkit-gpt with the Auto classes)

    weights = load_file(run / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(run)
    assert weights["transformer.wte.weight"].shape == model.transformer.wte.weight.shape  # whole, not one process's shard
    for name, tensor in model.state_dict().items():
        if name in weights:
            torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0, msg=name)
    ids = torch.tensor([[1, 2, 3]])
    assert model.generate(ids, max_new_tokens=5, do_sample=False).shape == (1, 8)


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
