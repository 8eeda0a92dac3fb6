"""A run survives: real processes, real signals (SIGINT, SIGTERM, SIGKILL in the middle of a save), a real second
run into the same folder, a file-size limit standing in for a full disk (RLIMIT_FSIZE, no root needed), and a
learning rate that makes the loss NaN."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time

import pytest
from conftest import assert_resumed_like_uninterrupted, is_json, llmkit_cmd, read_json, subprocess_env

from llmkit.training import last_complete_checkpoint
from llmkit.training.guards import run_lock

TINY = ["tokenizer.kind=char", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.n_positions=32",
        "data.packing=blocks", "training.per_device_train_batch_size=8", "training.learning_rate=3e-3",
        "training.warmup_steps=2", "training.logging_steps=1", "training.report_to=none",
        "training.disable_tqdm=true", "training.seed=3", "sample.max_new_tokens=0"]


@pytest.fixture(scope="module")
def corpus(shakespeare_head):
    return shakespeare_head(80_000)


def start(args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen(llmkit_cmd("train", *args), cwd=cwd, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for(predicate, proc, timeout=300, poll=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended first: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("llmkit: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """The uninterrupted reference: 60 steps, a checkpoint every 10, eval every 10."""
    root = tmp_path_factory.mktemp("straight")
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", "training.max_steps=60",
              "training.eval_steps=10", "training.save_total_limit=3"]
    proc = subprocess.run(llmkit_cmd("train", *common, "--output-dir", root / "run"), cwd=root, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run", common


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130),
                                       pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_exits_with_one_line_and_resume_matches(sig, code, straight, tmp_path):
    reference, common = straight
    run = tmp_path / "run"
    proc = start([*common, "--output-dir", run], tmp_path)
    wait_for(lambda: any(is_json(p) for p in run.glob("checkpoint-10/trainer_state.json")), proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code
    line = one_error_line(stderr)
    stopped = int(line.split(" at step ")[1].split(":")[0])
    assert f"checkpoint-{stopped} is complete" in line and "--resume" in line
    assert last_complete_checkpoint(run).name == f"checkpoint-{stopped}" and 10 <= stopped < 60
    assert not (run / "metrics.json").exists()  # an interrupted run is not a finished one
    resumed = subprocess.run(llmkit_cmd("train", *common, "--output-dir", run, "--resume"), cwd=tmp_path,
                             env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_like_uninterrupted({"killed": run, "straight": reference, "resumed_at": stopped}, logging_steps=1)


def test_a_second_ctrl_c_exits_at_once(straight, tmp_path):
    _, common = straight
    run = tmp_path / "run"
    proc = start([*common, "training.max_steps=100000", "--output-dir", run], tmp_path)
    wait_for(lambda: any(run.glob("checkpoint-*")), proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    # 130, or killed by SIGINT when the second signal lands while the process is already exiting: a shell reports
    # both as 130
    assert proc.returncode in (130, -signal.SIGINT)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["checkpoint", "final model"])
def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_and_resume_matches(moment, straight, tmp_path):
    reference, common = straight
    run = tmp_path / "run"
    proc = start([*common, "--output-dir", run], tmp_path)
    if moment == "checkpoint":  # a checkpoint folder that exists but is not complete yet
        def saving():
            return any(c.name != "checkpoint-10" and not (c / "trainer_state.json").exists()
                       for c in run.glob("checkpoint-*") if (run / "checkpoint-10" / "trainer_state.json").exists())
    else:  # the run folder's own model is being written, the run is not finished
        def saving():
            return (run / "model.safetensors").exists() and not (run / "metrics.json").exists()
    wait_for(saving, proc, poll=0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    checkpoint = last_complete_checkpoint(run)
    assert checkpoint is not None and is_json(checkpoint / "trainer_state.json")
    resumed_at = int(checkpoint.name.split("-")[1])
    resumed = subprocess.run(llmkit_cmd("train", *common, "--output-dir", run, "--resume"), cwd=tmp_path,
                             env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if resumed_at < 60:
        assert_resumed_like_uninterrupted({"killed": run, "straight": reference, "resumed_at": resumed_at},
                                          logging_steps=1)
    assert read_json(run / "metrics.json")["eval_loss"] == pytest.approx(
        read_json(reference / "metrics.json")["eval_loss"], rel=1e-5)


def test_two_runs_into_one_folder_one_is_refused_and_a_killed_run_leaves_no_stuck_lock(corpus, tmp_path):
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=100000",
              "training.eval_steps=20"]
    runs = [start([*common, "--output-dir", tmp_path / "run"], tmp_path) for _ in range(2)]  # at the same moment
    deadline = time.monotonic() + 300
    while all(r.poll() is None for r in runs):
        assert time.monotonic() < deadline, "neither run was refused"
        time.sleep(0.05)
    refused = next(r for r in runs if r.poll() is not None)
    first = next(r for r in runs if r is not refused)
    _, stderr = refused.communicate()
    assert refused.returncode == 2 and "is in use by another llmkit run" in one_error_line(stderr)
    wait_for(lambda: last_complete_checkpoint(tmp_path / "run") is not None, first)
    first.send_signal(signal.SIGKILL)  # killed: the kernel drops its lock
    first.communicate()
    again = subprocess.run(llmkit_cmd("train", *common, "training.max_steps=25", "--output-dir", tmp_path / "run",
                                      "--resume"), cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_folder_in_use_is_reported_as_in_use_even_when_it_already_holds_checkpoints(corpus, tmp_path):
    """The lock is asked before the folder's contents: a run that has written its first checkpoint is still running,
    so a second start (with or without --resume) is told the folder is in use, not that it holds a run."""
    run = tmp_path / "run"
    (run / "checkpoint-10").mkdir(parents=True)
    (run / "checkpoint-10" / "trainer_state.json").write_text("{}")
    with run_lock(run):  # this test process is the run that holds the folder
        before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
        for extra in ([], ["--resume"]):
            proc = subprocess.run(llmkit_cmd("train", *TINY, f"data.source={corpus}", "--output-dir", run, *extra),
                                  cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
            line = one_error_line(proc.stderr)
            assert proc.returncode == 2 and f"is in use by another llmkit run (pid {os.getpid()})" in line, line
        assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.slow  # keeps the default suite under 15 minutes (it measured 15 min 57 s)
def test_a_full_disk_gives_one_line_and_keeps_the_previous_checkpoint(corpus, tmp_path):
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=40",
              "training.eval_steps=10", "--output-dir", tmp_path / "run"]
    ok = subprocess.run(llmkit_cmd("prepare", *common[:-2]), env=subprocess_env(), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    first = subprocess.run(llmkit_cmd("train", *common, "training.max_steps=10"), cwd=tmp_path, env=subprocess_env(),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and last_complete_checkpoint(tmp_path / "run").name == "checkpoint-10"
    limit = int((tmp_path / "run" / "checkpoint-10" / "optimizer.pt").stat().st_size * 0.7)

    def small_disk():  # files may not grow past `limit` bytes: writing the next optimizer state fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoint-10").iterdir()}
    proc = subprocess.run(llmkit_cmd("train", *common, "--resume"), cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600, preexec_fn=small_disk)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert "the disk is full" in line and "the last complete checkpoint is checkpoint-10" in line
    assert last_complete_checkpoint(tmp_path / "run").name == "checkpoint-10"
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoint-10").iterdir()} == before
    assert not (tmp_path / "run" / "checkpoint-20").exists()  # the incomplete one is gone


def test_a_nan_loss_stops_at_its_step_or_is_skipped(corpus, tmp_path):
    common = [*TINY, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=30",
              "training.eval_steps=10", "training.learning_rate=1e6", "training.warmup_steps=0"]
    stop = subprocess.run(llmkit_cmd("train", *common, "--output-dir", tmp_path / "stop"), cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert stop.returncode == 1
    line = one_error_line(stop.stderr)
    assert "the training loss became nan" in line or "the training loss became inf" in line
    assert line.split(": step ")[1].split(":")[0].isdigit() and "training.learning_rate" in line
    assert not (tmp_path / "stop" / "metrics.json").exists()
    skip = subprocess.run(llmkit_cmd("train", *common, "training.on_nonfinite=skip", "--output-dir", tmp_path / "skip"),
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert skip.returncode == 0, skip.stderr[-3000:]
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["skipped_nonfinite_steps"] > 0 and metrics["global_step"] == 30
