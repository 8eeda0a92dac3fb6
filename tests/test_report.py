"""`llmkit report`, the report a training run keeps current, `llmkit sweep` (grid, seeds, resume, failures, the
power-law fit), generation sweeps, and the experiment trackers (TensorBoard, trackio), on real tiny runs."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from conftest import chromium, llmkit_cmd, read_json, subprocess_env

TINY = ["tokenizer.kind=char", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_positions=32",
        "training.per_device_train_batch_size=16", "training.per_device_eval_batch_size=64",
        "training.learning_rate=3e-3", "training.warmup_steps=5", "training.logging_steps=5",
        "training.report_to=none", "training.disable_tqdm=true", "data.packing=blocks", "sample.max_new_tokens=8",
        "sample.prompts=[ROMEO]"]


def page_data(path: pathlib.Path) -> dict:
    """The numbers a report page draws (its embedded JSON)."""
    text = path.read_text()
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert match, "no embedded data"
    return json.loads(match.group(1).replace("<\\/", "</"))


def series(data: dict, plot: str) -> dict[str, dict]:
    found = next(p for p in data["plots"] if p["id"] == plot)
    return {s["name"]: s for s in found["series"]}


def cli(args, capsys) -> tuple[int, str, str]:
    """The command line in this process (llmkit.cli.main; its process entry is test_cli.py's): exit code, out, err."""
    from llmkit.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run(args, cwd, timeout=300, **kw):
    return subprocess.run(llmkit_cmd(*args), cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def corpus(shakespeare_head):
    return shakespeare_head(60_000)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, corpus):
    """Run `a` by the command line (its report kept by the training process), run `b` wider and with Muon."""
    root = tmp_path_factory.mktemp("report")
    common = [*TINY, f"data.source={corpus}", "training.max_steps=30", "training.eval_steps=10"]
    for name, extra in (("a", []), ("b", ["model.n_embd=48", "training.optimizer=muon"])):
        proc = run(["train", *common, *extra, "--output-dir", root / name], root)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_training_leaves_a_report_with_every_curve_against_every_axis(two_runs):
    out = two_runs / "a"
    data = page_data(out / "report.html")
    assert data["axes"] == ["step", "tokens", "wall", "flops"]
    history = read_json(out / "log_history.json")
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [10, 20, 30]
    loss = series(data, "loss")
    val = loss["a val"]["points"]
    assert [p[1] for p in val["step"]] == pytest.approx([h["eval_loss"] for h in evals])
    # tokens are 16 x 32 per step; FLOPs grow with them; wall seconds grow
    assert [p[0] for p in val["tokens"]] == [h["step"] * 16 * 32 for h in evals]
    flops = [p[0] for p in val["flops"]]
    assert flops == sorted(flops) and flops[0] > 0
    assert flops[-1] == pytest.approx(3 * flops[0], rel=0.01)  # 6 N tokens: three times the tokens
    walls = [p[0] for p in val["wall"]]
    assert walls == sorted(walls) and walls[0] > 0
    train_steps = [p[0] for p in loss["a train"]["points"]["step"]]
    assert train_steps[0] == 1 and train_steps[-1] == 30
    for plot in ("learning_rate", "grad_norm", "tokens_per_second"):
        points = series(data, plot)["a"]["points"]["step"]
        assert len(points) >= 6 and all(p[1] > 0 for p in points[1:]), plot
    metrics = read_json(out / "metrics.json")
    assert metrics["train_flops"] == pytest.approx(flops[-1], rel=0.01)
    assert metrics["non_embedding_parameters"] < metrics["num_parameters"]
    assert "[finished]" in data["subtitle"]


def test_report_of_two_runs_compares_metrics_configs_and_samples(two_runs, tmp_path):
    proc = run(["report", two_runs / "a", two_runs / "b", "-o", tmp_path / "r.html"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text()
    # nothing fetched: no external script, style, image or request (the SVG namespace URI is a name, not a load)
    assert not re.search(r"(src|href)=", page) and "<link" not in page and "fetch(" not in page
    assert "XMLHttpRequest" not in page and "@import" not in page
    data = page_data(tmp_path / "r.html")
    assert {"a train", "a val", "b train", "b val"} <= set(series(data, "loss"))
    assert [r["name"] for r in data["legend"]] == ["a", "b"]
    # the metrics table: both runs, the lower validation loss marked best
    a, b = read_json(two_runs / "a/metrics.json"), read_json(two_runs / "b/metrics.json")
    table = re.search(r"<table id=metrics>(.*?)</table>", page, re.S).group(1)
    rows = re.findall(r"<tr><td>(a|b)</td>(.*?)</tr>", table, re.S)
    assert [r[0] for r in rows] == ["a", "b"]
    better = "a" if a["eval_loss"] < b["eval_loss"] else "b"
    best_cells = re.findall(r'<td class="num best" data-key="eval_loss">', dict(rows)[better])
    assert len(best_cells) == 1
    assert 'data-key="eval_loss">' in dict(rows)["b" if better == "a" else "a"]
    for key in ("eval_perplexity", "train_tokens_per_second", "num_parameters", "mixed_precision", "optimizer",
                "wall_seconds"):
        assert f'data-key="{key}"' in table, key
    # where the time went: each run's phases from metrics.json, seconds and share, the totals last
    time = re.search(r"<table id=time>(.*?)</table>", page, re.S).group(1)
    steps = re.search(r"<tr><td>training steps</td>(.*?)</tr>", time, re.S).group(1)
    assert len(re.findall(r'<td class="num">[\d.,]+ \([\d.]+%\)</td>', steps)) == 2
    totals = re.findall(r'<td class="num">([\d.,]+)</td>', re.search(r"<tr><td>total</td>(.*?)</tr>", time).group(1))
    assert totals == [f"{m['wall_seconds_by_phase']['total']:,.1f}" for m in (a, b)]
    # config differences: only what differs (width, optimizer), resolved (a's optimizer is the default adamw)
    diff = re.search(r"<table id=config-diff>(.*?)</table>", page, re.S).group(1)
    keys = re.findall(r"<tr><td>([\w.]+)</td>", diff)
    assert set(keys) == {"model.n_embd", "training.optimizer"}
    assert "&quot;adamw&quot;" in diff and "&quot;muon&quot;" in diff
    assert page.count("<details><summary>") == 2
    # samples side by side, by step
    samples = re.search(r"<table id=samples>(.*?)</table>", page, re.S).group(1)
    for name in ("a", "b"):
        for row in map(json.loads, (two_runs / name / "samples.jsonl").read_text().splitlines()):
            assert f"{row['prompt']}{row['text']}".replace("&", "&amp;").replace("<", "&lt;")[:6] in samples


@pytest.mark.slow  # a real training process watched and stopped by SIGTERM: about 30 s
def test_interrupted_and_running_runs_report_what_they_have(corpus, tmp_path):
    """A run's report.html appears at its first evaluation, says it is training, and a run stopped by SIGTERM
    reports its curves up to the stop as interrupted."""
    out = tmp_path / "long"
    proc = subprocess.Popen(llmkit_cmd("train", *TINY, f"data.source={corpus}", "training.max_steps=5000",
                                       "training.eval_steps=20", "--output-dir", out), cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "report.html").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        data = page_data(out / "report.html")
        assert "[training]" in data["subtitle"] and not (out / "metrics.json").exists()
        assert any("still training" in n["text"] for n in data["notes"])
        live = run(["report", out, "-o", tmp_path / "live.html"], tmp_path)  # from another process, meanwhile
        assert live.returncode == 0, live.stderr
        assert "[training]" in page_data(tmp_path / "live.html")["subtitle"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert "[interrupted]" in page_data(out / "report.html")["subtitle"]  # the run's own page says it stopped
    done = run(["report", out, "-o", tmp_path / "stopped.html"], tmp_path)
    assert done.returncode == 0, done.stderr
    data = page_data(tmp_path / "stopped.html")
    assert "[interrupted]" in data["subtitle"]
    assert any("before it finished" in n["text"] and "--resume" in n["text"] for n in data["notes"])
    assert len(series(data, "loss")["long val"]["points"]["step"]) >= 1


def test_bad_report_input_is_one_line(two_runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "old").mkdir()  # an older run: a log, no config, no metrics
    (tmp_path / "old/log_history.json").write_text(json.dumps([{"loss": 3.0, "step": 5}, {"eval_loss": 2.9,
                                                                                         "step": 5}]))
    cases = {"empty": ([tmp_path / "empty"], "is not an llmkit run folder"),
             "missing": ([tmp_path / "nope"], "no such folder"),
             "out is a folder": ([two_runs / "a", "-o", tmp_path], "is a folder"),
             "no out folder": ([two_runs / "a", "-o", tmp_path / "x/y/r.html"], "no such folder")}
    for name, (args, message) in cases.items():
        rc, _, err = cli(["report", *args], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and message in lines[0], (name, err)
    rc, _, err = cli(["report", two_runs / "a", tmp_path / "old", "-o", tmp_path / "r.html"], capsys)
    assert rc == 0, err
    data = page_data(tmp_path / "r.html")
    assert any("old: config.yaml is missing" in n["text"] for n in data["notes"])
    assert series(data, "loss")["old val"]["points"]["step"] == [[5, 2.9]]
    assert series(data, "loss")["old val"]["points"]["wall"] == []  # an older log: steps only


# --- sweeps -----------------------------------------------------------------------------------------------------


def test_sweep_records_a_failed_point_and_goes_on(corpus, tmp_path, capsys):
    """One point's data does not exist: it fails with its one-line error, the other trains; the table, JSON and
    page are written; a second sweep skips the finished point."""
    args = ["sweep", *TINY, "training.max_steps=10", "training.eval_steps=10",
            "--grid", f"data.source={corpus},{tmp_path / 'missing.txt'}", "--parallel", "2", "--out", tmp_path / "sw"]
    rc, _, err = cli(args, capsys)
    assert rc == 1, err[-3000:]
    result = read_json(tmp_path / "sw/sweep.json")
    good, bad = result["points"]
    assert good["status"] == "finished" and good["eval_loss"] > 0 and good["tokens"] == 10 * 16 * 32
    assert good["flops"] > 0 and good["non_embedding_parameters"] > 0 and good["wall_seconds"] > 0
    assert bad["status"] == "failed" and "missing.txt" in bad["error"] and "\n" not in bad["error"]
    rows = list(csv.DictReader((tmp_path / "sw/sweep.csv").open()))
    assert [r["status"] for r in rows] == ["finished", "failed"]
    data = page_data(tmp_path / "sw/sweep.html")
    assert any("failed" in n["text"] for n in data["notes"])
    rc, _, err = cli(["report", tmp_path / "sw"], capsys)  # the sweep's folder is not a run: its page is named
    assert rc == 2 and "is a sweep" in err and "sweep.html" in err
    mtime = (tmp_path / "sw" / good["point"] / "model.safetensors").stat().st_mtime_ns
    rc, _, err = cli(args, capsys)
    assert rc == 1 and f"{good['point']}: finished, skipped" in err
    assert (tmp_path / "sw" / good["point"] / "model.safetensors").stat().st_mtime_ns == mtime


def test_sweep_settings_are_checked_before_any_point_trains(tmp_path, capsys):
    cases = {"bad key": (["--grid", "model.n_embdd=32,64"], "n_embdd"),
             "bad value": (["--grid", "model.n_head=2,5"], "n_head"),
             "rejected by TrainingArguments": (["training.eval_steps=10", "--grid", "training.save_steps=10,7"],
                                               "round multiple"),
             "no grid": ([], "nothing to sweep"),
             "bad grid": (["--grid", "n_embd"], "KEY=V1,V2"),
             "too parallel": (["--grid", "model.n_embd=32,64", "--parallel", "999"], "--parallel 999")}
    for name, (extra, message) in cases.items():
        rc, _, err = cli(["sweep", *TINY, *extra, "--out", tmp_path / name], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and message in lines[0], (name, err)
        assert not (tmp_path / name).exists(), name


def test_power_law_fit_recovers_a_known_exponent():
    from llmkit.sweep import fit_power_law

    rng = np.random.default_rng(0)
    rows = [{"status": "finished", "non_embedding_parameters": n, "eval_loss": 1.5 + 40 * n ** -0.3
             + rng.normal(0, 0.02)} for n in (1e4, 3e4, 1e5, 3e5, 1e6) for _ in range(3)]
    fit = fit_power_law(rows)
    assert fit["alpha"] == pytest.approx(0.3, abs=0.06)
    lo, hi = fit["alpha_ci95"]
    assert lo <= fit["alpha"] <= hi and 0 < hi - lo < 0.3
    assert fit["E"] == pytest.approx(1.5, abs=0.15)
    two = fit_power_law([r for r in rows if r["non_embedding_parameters"] in (1e4, 1e6)])
    assert two["E"] == 0 and "two sizes" in two["note"]
    one_seed = fit_power_law(rows[::3])
    assert "alpha_ci95" not in one_seed and "one seed" in one_seed["note"]


@pytest.mark.slow  # 8 tiny runs, one of them killed and resumed: about 3 minutes on 2 cores
def test_a_2x2_sweep_with_two_seeds_resumes_after_kill_9_and_fits_a_power_law(corpus, tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", *TINY, f"data.source={corpus}", "training.max_steps=60", "training.eval_steps=60",
            "training.save_steps=20", "training.load_best_model_at_end=false", "sample.max_new_tokens=0",
            "--grid", "model.n_embd=16,48",
            "--grid", "model.n_layer=1,2", "--seeds", "2", "--fit", "power-law", "--out", out]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(llmkit_cmd(*args), cwd=tmp_path, env=subprocess_env(), stdout=log, stderr=log,
                            start_new_session=True)
    try:  # kill -9 the sweep once two points are finished and the third has a checkpoint
        deadline = time.monotonic() + 400
        while True:
            finished = sorted(p.parent.name for p in out.glob("*/metrics.json"))
            third = [p for p in out.glob("*/checkpoint-*/trainer_state.json") if p.parent.parent.name not in finished]
            if len(finished) >= 2 and third:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        log.close()
    time.sleep(1)  # the point's process gets SIGTERM from the kernel as its parent dies, and saves
    interrupted = third[0].parent.parent.name
    assert not (out / interrupted / "metrics.json").exists()
    stamps = {name: (out / name / "metrics.json").stat().st_mtime_ns for name in finished}
    second = run(args, tmp_path, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    for name in finished:
        assert f"{name}: finished, skipped" in second.stderr
        assert (out / name / "metrics.json").stat().st_mtime_ns == stamps[name]
    assert f"{interrupted}: resuming" in second.stderr
    assert "resuming from" in (out / "logs" / f"{interrupted}.log").read_text()
    result = read_json(out / "sweep.json")
    assert len(result["points"]) == 8 and all(p["status"] == "finished" for p in result["points"])
    assert {p["seed"] for p in result["points"]} == {0, 1}
    fit = result["fit"]
    lo, hi = fit["alpha_ci95"]
    assert fit["sizes"] == 4 and lo <= fit["alpha"] <= hi
    assert "power law" in second.stdout and "95% interval" in second.stdout
    data = page_data(out / "sweep.html")
    ids = [p["id"] for p in data["plots"]]
    assert {"loss", "sweep_model.n_embd", "sweep_model.n_layer", "power_law"} <= set(ids)


# --- generation sweeps -------------------------------------------------------------------------------------------


def test_generation_sweep_writes_every_sample_with_its_settings(two_runs, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    rc, _, err = cli(["generate", two_runs / "a", "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "3",
                      "--sweep", "temperature=0.5,1.1", "top_k=5,20", "--output", out], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    assert {(r["settings"]["temperature"], r["settings"]["top_k"]) for r in rows} == {
        (0.5, 5), (0.5, 20), (1.1, 5), (1.1, 20)}
    assert all(r["seed"] == 3 and r["step"] == 30 and r["model"] == str(two_runs / "a") for r in rows)
    page = out.with_suffix(".html").read_text()
    assert page.count("<tr>") == 5 and "ROMEO:" in page
    # each sample is what plain generate gives with the same settings and seed
    row = next(r for r in rows if r["settings"]["temperature"] == 1.1 and r["settings"]["top_k"] == 20)
    rc, plain, _ = cli(["generate", two_runs / "a", "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "3",
                        "--temperature", "1.1", "--top-k", "20", "--json"], capsys)
    assert json.loads(plain)["samples"] == [row["text"]]
    rc, _, err = cli(["generate", two_runs / "a", "--prompt", "R", "--sweep", "temprature=0.5"], capsys)
    assert rc == 2 and "temprature" in err and len(err.strip().splitlines()) == 1


# --- trackers ---------------------------------------------------------------------------------------------------


def test_tensorboard_and_trackio_hold_the_runs_losses(corpus, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    pytest.importorskip("trackio", reason="pip install trackio")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tracked"
    env = {**subprocess_env(), "TRACKIO_DIR": str(tmp_path / "trackio")}
    proc = subprocess.run(llmkit_cmd("train", *TINY, f"data.source={corpus}", "training.max_steps=20",
                                     "training.eval_steps=10", "training.report_to=[tensorboard, trackio]",
                                     "--output-dir", out),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = read_json(out / "log_history.json")
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    assert len(losses) >= 4 and len(evals) == 2
    logs = list((out / "runs").glob("*"))  # transformers' TensorBoard folder: <run>/runs/<date>_<host>
    assert len(logs) == 1
    events = EventAccumulator(str(logs[0]))
    events.Reload()
    tb = {e.step: e.value for e in events.Scalars("train/loss")}
    assert tb.keys() == losses.keys() and list(tb.values()) == pytest.approx(list(losses.values()), rel=1e-6)
    assert [e.value for e in events.Scalars("eval/loss")] == pytest.approx(list(evals.values()), rel=1e-6)
    db = tmp_path / "trackio" / "llmkit.db"  # trackio's project: llmkit; its run: the run folder's name
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT run_name, step, metrics FROM metrics ORDER BY id").fetchall()
    assert {r[0] for r in rows} == {"tracked"}
    logged = [(m["train/global_step"], m) for m in (json.loads(r[2]) for r in rows) if "train/global_step" in m]
    tracked = {step: m["train/loss"] for step, m in logged if "train/loss" in m}  # trackio's own step counts calls
    assert tracked.keys() == losses.keys()
    assert list(tracked.values()) == pytest.approx(list(losses.values()), rel=1e-6)
    assert [m["eval/loss"] for _, m in logged if "eval/loss" in m] == pytest.approx(list(evals.values()), rel=1e-6)


# --- in a real browser --------------------------------------------------------------------------------------------


@pytest.mark.slow  # a browser start: in the slow suite, which .ci/run runs after the default one
def test_the_report_of_two_runs_renders_every_plot_in_chromium(two_runs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    page = tmp_path / "report.html"
    proc = run(["report", two_runs / "a", two_runs / "b", "-o", page], tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = len(page_data(page)["plots"])
    browser = chromium()
    try:
        browser.set_window_size(1300, 2400)
        browser.get(page.as_uri())
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".plot")) == expected)
        for axis in ("step", "tokens", "wall", "flops"):
            Select(browser.find_element(By.ID, "xaxis")).select_by_value(axis)
            plots = browser.find_elements(By.CSS_SELECTOR, ".plot")
            assert len(plots) == expected == 4, axis
            for plot in plots:  # every plot draws both runs' lines, each through several points
                paths = plot.find_elements(By.CSS_SELECTOR, "path.series")
                names = {p.get_attribute("data-name") for p in paths}
                assert {n.split()[0] for n in names} == {"a", "b"}, (axis, plot.get_attribute("data-plot"))
                assert all(int(p.get_attribute("data-points")) >= 3 for p in paths)
                assert all(len(p.get_attribute("d").split("L")) >= 3 for p in paths)
            loss = browser.find_element(By.CSS_SELECTOR, '.plot[data-plot="loss"]')
            assert len(loss.find_elements(By.CSS_SELECTOR, "path.series")) == 4  # train and val of each run
            assert len(loss.find_elements(By.CSS_SELECTOR, "g.markers circle")) == 6  # 3 evaluations each
        Select(browser.find_element(By.ID, "xaxis")).select_by_value("step")
        browser.find_element(By.ID, "logy").click()
        assert browser.find_elements(By.CSS_SELECTOR, '.plot[data-plot="loss"] path.series')
        assert len(browser.find_elements(By.CSS_SELECTOR, "#metrics tr")) == 3
        assert browser.find_elements(By.CSS_SELECTOR, "#metrics td.best")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#config-diff tr")) == 3
        browser.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 20_000
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()
