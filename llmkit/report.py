"""`llmkit report`: one self-contained HTML page for one run or several side by side.

Design choices:
- One file, nothing fetched: the runs' numbers are embedded as JSON and drawn as SVG by a small script in the same
  file (`llmkit/static/report.html`), so the page opens offline from disk or as a Hub file, and rewriting it at
  each evaluation of a run costs milliseconds (no plotting library runs in the training process).
- What is read is what a run folder holds: `config.yaml`, `metrics.json`, `log_history.json` (written at the end,
  and at each evaluation by `ReportCallback`), `samples.jsonl`; a run without them (still training, interrupted, or
  from an older llmkit) reports what it has from its newest checkpoint's `trainer_state.json`, and the page says
  what is missing. A folder that is not a run is one line (ConfigError), never a traceback.
- Every log entry carries tokens, FLOPs and wall seconds (llmkit's trainer adds them), so each curve can be drawn
  against step, tokens, wall time or FLOPs; entries of older runs without them are drawn against steps only.
- The config differences are taken on the resolved configs (llmkit's training defaults filled in), keys that are
  the same everywhere left out; the full configs are folded away below.
"""

from __future__ import annotations

import html
import json
import math
import pathlib
import time
from dataclasses import dataclass, field

import yaml
from transformers import TrainerCallback

from .errors import ConfigError

COLORS = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0a7ea4", "#bf3989", "#6e7781", "#4d2d00",
          "#116329")
AXES = ("step", "tokens", "wall", "flops")
AXIS_KEYS = {"step": "step", "tokens": "tokens", "wall": "wall_seconds", "flops": "flops"}

# (column, metrics.json key, better: min | max | None, format)
COLUMNS = (
    ("steps", "global_step", None, "int"),
    ("train loss", "train_loss", "min", "float"),
    ("val loss", "eval_loss", "min", "float"),
    ("perplexity", "eval_perplexity", "min", "float"),
    ("bits/char", "eval_bits_per_char", "min", "float"),
    ("bits/token", "eval_bits_per_token", "min", "float"),
    ("tokens", "train_tokens", None, "count"),
    ("tokens/s", "train_tokens_per_second", "max", "count"),
    ("parameters", "num_parameters", None, "count"),
    ("trainable", "trainable_parameters", None, "count"),
    ("precision", "mixed_precision", None, "str"),
    ("optimizer", "optimizer", None, "str"),
    ("wall time (s)", "wall_seconds", "min", "float1"),
)
# eval metrics that are not a column above: shown when a run has them (preference runs' TRL metrics, ...)
SKIP_EVAL = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_loss", "eval_perplexity",
             "eval_bits_per_char", "eval_bits_per_token"}
# extra curves: (plot id, title, [(log key, label, validation?)])
EXTRA_PLOTS = (
    ("reward_accuracy", "reward accuracy (preference)", [("rewards/accuracies", "train", False),
                                                         ("eval_rewards/accuracies", "val", True)]),
    ("reward_margin", "reward margin (preference)", [("rewards/margins", "train", False),
                                                     ("eval_rewards/margins", "val", True)]),
    ("distill", "distillation: soft (KL) and hard (CE) loss", [("distill_soft_loss", "soft", False),
                                                               ("distill_hard_loss", "hard", True)]),
)
MACHINE_DEPENDENT = {"bf16", "fp16", "use_cpu", "dataloader_pin_memory", "report_to"}  # resolved where it ran


@dataclass
class RunData:
    """What a run folder holds, read without loading the model."""

    path: pathlib.Path
    name: str
    config: dict
    metrics: dict
    history: list[dict]
    samples: list[dict]
    status: str  # finished | training | interrupted
    kind: str
    notes: list[str] = field(default_factory=list)


def _read_json(path: pathlib.Path, notes: list[str]):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        notes.append(f"{path.name} could not be read ({type(err).__name__}); left out")
        return None


def is_run(path: pathlib.Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("config.yaml", "metrics.json", "log_history.json")) \
        or any(path.glob("checkpoint-*/trainer_state.json"))


def read_run(path: str | pathlib.Path, *, history: list[dict] | None = None, status: str | None = None) -> RunData:
    """A run folder's files. `history`/`status`: the live log and state, from a training process's own callback."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such folder; pass a run folder that `llmkit train` wrote")
    if not is_run(path) and (path / "sweep.json").is_file():
        raise ConfigError(f"{path} is a sweep, not a run: open {path / 'sweep.html'}, or pass its points "
                          f"({path}/*/) to llmkit report")
    if not is_run(path):
        raise ConfigError(f"{path} is not an llmkit run folder (no config.yaml, metrics.json, log_history.json or "
                          "checkpoint); pass a folder that `llmkit train` wrote")
    notes: list[str] = []
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except FileNotFoundError:
        config, _ = {}, notes.append("config.yaml is missing: no config shown")
    except (OSError, yaml.YAMLError) as err:
        config, _ = {}, notes.append(f"config.yaml could not be read ({type(err).__name__})")
    if not isinstance(config, dict):
        config = {}
    metrics = _read_json(path / "metrics.json", notes)
    if history is None:
        history = _read_json(path / "log_history.json", notes)
    checkpoint_step = None
    if history is None or metrics is None:  # the newest checkpoint's state may hold more than a stale log
        states = sorted(path.glob("checkpoint-*/trainer_state.json"),
                        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit()
                        else -1)
        state = _read_json(states[-1], notes) if states else None
        if state and len(state.get("log_history", [])) >= len(history or []):
            history, checkpoint_step = state["log_history"], state.get("global_step")
    history = [h for h in (history or []) if isinstance(h, dict)]
    if status is None:
        from .training.guards import lock_holder  # held while a training process runs in the folder

        status = "finished" if metrics is not None else "training" if lock_holder(path) else "interrupted"
    if metrics is None:
        metrics = _metrics_from_history(history)
        last = max((h.get("step", 0) for h in history), default=0)
        where = f"at step {last}" + (f" (last checkpoint: step {checkpoint_step})" if checkpoint_step else "")
        if status == "interrupted":
            notes.append(f"no metrics.json: the run stopped {where} before it finished; `llmkit train ... --resume` "
                         "continues it" if history else "no metrics.json and no log: the run stopped before its "
                         "first log line")
        elif status == "training":
            notes.append(f"still training: {where}; reload this page after the next evaluation")
    if not history:
        notes.append("no log_history.json and no checkpoint: no curves")
    samples = []
    try:
        for line in (path / "samples.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(row, dict) and {"step", "prompt", "text"} <= row.keys():
                samples.append(row)
    except FileNotFoundError:
        pass
    except OSError as err:
        notes.append(f"samples.jsonl could not be read ({type(err).__name__})")
    return RunData(path, path.name, config, metrics, history, samples, status, run_kind(config), notes)


def _metrics_from_history(history: list[dict]) -> dict:
    """A run without metrics.json (training, or interrupted): its latest logged values."""
    out: dict = {}
    for h in history:
        if "loss" in h:
            out["train_loss"] = h["loss"]
        if "eval_loss" in h:
            out.update({k: v for k, v in h.items() if k.startswith("eval_")})
        for key in ("tokens", "wall_seconds"):
            if key in h:
                out["train_tokens" if key == "tokens" else key] = h[key]
        if "step" in h:
            out["global_step"] = h["step"]
    return out


def run_kind(config: dict) -> str:
    model, data = config.get("model") or {}, config.get("data") or {}
    parts = []
    if config.get("preference"):
        parts.append(f"preference tuning ({(config['preference'] or {}).get('method', 'dpo')})")
    elif config.get("distill"):
        parts.append("distillation")
    elif data.get("format") == "instruct":
        parts.append("instruction tuning")
    elif model.get("from_pretrained"):
        parts.append(f"fine-tuning {model['from_pretrained']}")
    else:
        parts.append("pretraining")
    if "lora" in config and config["lora"] is not None:
        parts.append("LoRA adapter")
    return ", ".join(parts)


# --- page parts -----------------------------------------------------------------------------------------------


def _points(history: list[dict], key: str, *, base: dict | None = None) -> dict:
    """{axis: [[x, y], ...]} for one log key; an axis missing from an entry gives no point on that axis."""
    out = {axis: [] for axis in AXES}
    for h in history:
        value = h.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        for axis in AXES:
            x = h.get(AXIS_KEYS[axis])
            if x is None and base and axis in base and "step" in h:
                x = base[axis] * h["step"]  # an older run: tokens per step from its metrics
            if isinstance(x, (int, float)):
                out[axis].append([x, value])
    return out


def history_plots(runs: list[RunData]) -> list[dict]:
    """The curves: loss, learning rate, gradient norm, tokens/s, and each kind of run's own metrics."""
    def series(run, color, key, name, validation):
        base = {}
        steps = run.metrics.get("global_step")
        if steps and run.metrics.get("train_tokens"):
            base["tokens"] = run.metrics["train_tokens"] / steps
        return {"name": f"{run.name} {name}".strip(), "color": color, "dash": validation, "markers": validation,
                "points": _points(run.history, key, base=base)}

    colored = list(zip(runs, _colors(len(runs))))
    plots = [
        {"id": "loss", "title": "loss (nats/token)", "logy_allowed": True,
         "series": [s for run, c in colored for s in (series(run, c, "loss", "train", False),
                                                      series(run, c, "eval_loss", "val", True))]},
        {"id": "learning_rate", "title": "learning rate",
         "series": [series(run, c, "learning_rate", "", False) for run, c in colored]},
        {"id": "grad_norm", "title": "gradient norm (before clipping)",
         "series": [series(run, c, "grad_norm", "", False) for run, c in colored]},
        {"id": "tokens_per_second", "title": "training tokens/s",
         "series": [series(run, c, "tokens_per_second", "", False) for run, c in colored]},
    ]
    for plot_id, title, keys in EXTRA_PLOTS:
        if any(key in h for run in runs for h in run.history for key, _, _ in keys):
            plots.append({"id": plot_id, "title": title,
                          "series": [series(run, c, key, label, dashed) for run, c in colored
                                     for key, label, dashed in keys]})
    return plots


def _colors(n: int) -> list[str]:
    return [COLORS[i % len(COLORS)] for i in range(n)]


def axes_present(runs: list[RunData]) -> list[str]:
    present = ["step"]
    for axis in AXES[1:]:
        key = AXIS_KEYS[axis]
        if any(key in h for run in runs for h in run.history) or (
                axis == "tokens" and any(run.metrics.get("train_tokens") for run in runs)):
            present.append(axis)
    return present


def _format(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "str" or not isinstance(value, (int, float)) or isinstance(value, bool):
        return html.escape(str(value))
    if kind == "int":
        return f"{int(value):,}"
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "float1":
        return f"{value:,.1f}"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def metrics_table(runs: list[RunData]) -> str:
    extra = sorted({k for run in runs for k, v in run.metrics.items()
                    if k.startswith("eval_") and k not in SKIP_EVAL and isinstance(v, (int, float))})
    columns = [c for c in COLUMNS if any(run.metrics.get(c[1]) is not None for run in runs)]
    if all(run.metrics.get("trainable_parameters") == run.metrics.get("num_parameters") for run in runs):
        columns = [c for c in columns if c[1] != "trainable_parameters"]
    columns += [(k.removeprefix("eval_").replace("_", " ") + " (val)", k,
                 "max" if "accurac" in k or "margin" in k else "min" if "loss" in k else None, "float")
                for k in extra]
    best = {}
    for _, key, better, _ in columns:
        values = [run.metrics.get(key) for run in runs]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if better and len(runs) > 1 and len(numbers) > 1:
            best[key] = (min if better == "min" else max)(numbers)
    head = "".join(f"<th>{html.escape(label)}</th>" for label, *_ in columns)
    rows = []
    for run in runs:
        cells = [f"<td>{html.escape(run.name)}</td>", f"<td>{html.escape(run.kind)}</td>",
                 f"<td>{html.escape(run.status)}</td>"]
        for _, key, _, kind in columns:
            value = run.metrics.get(key)
            cls = "num" + (" best" if key in best and value == best[key] else "")
            cells.append(f'<td class="{cls}" data-key="{html.escape(key)}">{_format(value, kind)}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    marked = " The best value of each column is marked." if best else ""
    return (f"<h2>Final metrics</h2><p class=sub>Validation metrics of the model each run ended with (the best "
            f"checkpoint when it was reloaded); runs still training or interrupted show their latest values.{marked}"
            f"</p><div class=scroll><table id=metrics><tr><th>run</th><th>kind</th><th>status</th>{head}</tr>"
            f"{''.join(rows)}</table></div>")


def time_table(runs: list[RunData]) -> str:
    """Where each run's wall time went (metrics.json's `wall_seconds_by_phase`): seconds and share by phase."""
    timed = [(run, run.metrics.get("wall_seconds_by_phase")) for run in runs]
    timed = [(run, p) for run, p in timed if isinstance(p, dict) and p.get("total")]
    if not timed:
        return ""
    phases = list(dict.fromkeys(k for _, p in timed for k in p if k != "total"))
    head = "".join(f"<th>{html.escape(run.name)}</th>" for run, _ in timed)
    rows = []
    for phase in [*phases, "total"]:
        cells = []
        for _, p in timed:
            value = p.get(phase)
            share = f" ({100 * value / p['total']:.1f}%)" if isinstance(value, (int, float)) and phase != "total" else ""
            cells.append(f'<td class="num">{_format(value, "float1")}{share}</td>')
        rows.append(f"<tr><td>{html.escape(phase)}</td>{''.join(cells)}</tr>")
    return (f"<h2>Where the time went</h2><p class=sub>Seconds of wall time by phase, from the process's start to "
            f"metrics.json (training steps: forward, backward and optimizer).</p><div class=scroll><table id=time>"
            f"<tr><th>phase</th>{head}</tr>{''.join(rows)}</table></div>")


def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
        return out
    return {prefix.rstrip("."): value}


def resolved_config(run: RunData) -> dict:
    """The run's config (as saved: model, data and tokenizer already resolved) with llmkit's training defaults
    filled in where the run kept them, flattened. Nothing is loaded: no pretrained model is looked up."""
    flat = flatten(run.config)
    training = run.config.get("training")
    if not isinstance(training, dict):
        return flat
    try:
        from .config import Config
        from .training import training_settings

        cfg = Config(training=dict(training))
        seed = (run.config.get("data") or {}).get("seed")
        if isinstance(seed, int):
            cfg.data.seed = seed
        settings, user = training_settings(cfg)
    except Exception:  # a config this llmkit cannot resolve (older or newer) is shown as written
        return flat
    for key, value in settings.items():
        if key in MACHINE_DEPENDENT and key not in user:
            continue
        flat.setdefault(f"training.{key}", value)
    flat.setdefault("training.optimizer", run.metrics.get("optimizer", "adamw"))  # llmkit's own key, resolved
    return flat


def config_differences(runs: list[RunData]) -> str:
    blocks = []
    if len(runs) > 1:
        flats = [resolved_config(run) for run in runs]
        keys = sorted({k for f in flats for k in f} - {"training.output_dir", "training.logging_dir"})
        missing = object()
        differ = [k for k in keys if len({json.dumps(f.get(k, missing) if k in f else "<unset>", sort_keys=True,
                                                     default=str) for f in flats}) > 1]
        if differ:
            head = "".join(f"<th>{html.escape(run.name)}</th>" for run in runs)
            rows = "".join(
                f"<tr><td>{html.escape(k)}</td>"
                + "".join(f"<td>{html.escape(json.dumps(f[k], default=str)) if k in f else '<i>unset</i>'}</td>"
                          for f in flats) + "</tr>" for k in differ)
            blocks.append(f"<h2>Config differences</h2><p class=sub>Only the keys whose resolved values differ "
                          f"({len(differ)} of {len(keys)}; output folders left out).</p><div class=scroll>"
                          f"<table id=config-diff><tr><th>key</th>{head}</tr>{rows}</table></div>")
        else:
            blocks.append("<h2>Config differences</h2><p class=sub>None: the runs' resolved configs are the same "
                          "(seeds aside, when set outside the config).</p>")
    folded = "".join(f"<details><summary>{html.escape(run.name)}: config.yaml</summary><pre>"
                     f"{html.escape(yaml.safe_dump(run.config, sort_keys=False) if run.config else '(missing)')}"
                     f"</pre></details>" for run in runs)
    blocks.append(f"<h2>Configs</h2>{folded}")
    return "".join(blocks)


def samples_table(runs: list[RunData]) -> str:
    keys = sorted({(s["step"], s["prompt"]) for run in runs for s in run.samples},
                  key=lambda k: (k[0] if isinstance(k[0], int) else 0, str(k[1])))
    if not keys:
        return "<h2>Samples</h2><p class=sub>No samples.jsonl: the runs wrote no samples (sample.prompts).</p>"
    by_run = [{(s["step"], s["prompt"]): s["text"] for s in run.samples} for run in runs]
    head = "".join(f"<th>{html.escape(run.name)}</th>" for run in runs)
    rows = []
    for step, prompt in keys:
        cells = "".join(f'<td class="sample">{html.escape(str(prompt) + str(texts[(step, prompt)]))}</td>'
                        if (step, prompt) in texts else "<td></td>" for texts in by_run)
        rows.append(f"<tr><td>{html.escape(str(step))}</td><td>{html.escape(repr(prompt))}</td>{cells}</tr>")
    return (f"<h2>Samples</h2><p class=sub>The runs' samples at each evaluation (prompt included).</p><div class=scroll>"
            f"<table id=samples><tr><th>step</th><th>prompt</th>{head}</tr>{''.join(rows)}</table></div>")


def render(title: str, subtitle: str, plots: list[dict], tables: str, *, legend: list[dict], axes: list[str],
           notes: list[dict]) -> str:
    from importlib.resources import files

    template = files("llmkit").joinpath("static/report.html").read_text()
    data = json.dumps({"plots": plots, "legend": legend, "axes": axes, "notes": notes, "subtitle": subtitle},
                      allow_nan=False, default=str).replace("</", "<\\/")
    return template.replace("__TITLE__", html.escape(title)).replace("__TABLES__", tables).replace("__DATA__", data)


def unique_names(runs: list[RunData]) -> None:
    """Runs named by their folder; folders of the same name (a/run, b/run) by as much of their path as differs."""
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return
    for run in runs:
        parts = run.path.resolve().parts
        run.name = "/".join(parts[-2:]) if len(parts) > 1 else run.name
    if len({run.name for run in runs}) < len(runs):
        for i, run in enumerate(runs):
            run.name = f"{i + 1}: {run.name}"


def report_html(runs: list[RunData], *, title: str | None = None, extra_plots: list[dict] | None = None,
                extra_tables: str = "", extra_notes: list[dict] | None = None) -> str:
    unique_names(runs)
    title = title or ("llmkit report: " + (runs[0].name if len(runs) == 1 else f"{len(runs)} runs"))
    kinds = sorted({run.kind for run in runs})
    subtitle = f"{len(runs)} run{'s' if len(runs) > 1 else ''} ({'; '.join(kinds)}): " + ", ".join(
        f"{run.name} [{run.status}]" for run in runs)
    notes = list(extra_notes or []) + [{"level": "note", "text": f"{run.name}: {n}"} for run in runs for n in run.notes]
    tables = extra_tables + metrics_table(runs) + time_table(runs) + config_differences(runs) + samples_table(runs)
    legend = [{"name": run.name, "color": c} for run, c in zip(runs, _colors(len(runs)))]
    return render(title, subtitle, history_plots(runs) + list(extra_plots or []), tables, legend=legend,
                  axes=axes_present(runs), notes=notes)


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a reader (a browser reloading) never sees half a page."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_paths: list[str | pathlib.Path], out: str | pathlib.Path, *, title: str | None = None
                 ) -> pathlib.Path:
    """The report of these runs as one HTML file at `out`; returns its path."""
    if not run_paths:
        raise ConfigError("report needs at least one run folder")
    runs = [read_run(p) for p in run_paths]
    out = pathlib.Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give -o a file name such as {out / 'report.html'}")
    if not out.parent.exists():
        raise ConfigError(f"{out.parent}: no such folder for the report; create it or choose another -o")
    write_atomic(out, report_html(runs, title=title))
    return out


class ReportCallback(TrainerCallback):
    """Keeps `<run>/report.html` and `<run>/log_history.json` current during training: rewritten after each
    evaluation from the trainer's live log, so the page can be reloaded while the run goes on."""

    wall_phase = "report"  # the run's WallClock: `seconds` is the time spent writing the page

    def __init__(self, output_dir: str | pathlib.Path):
        self.out = pathlib.Path(output_dir)
        self.written = False  # whether this process wrote the page (a refused run leaves an old one alone)
        self.seconds = 0.0

    def on_evaluate(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.out.is_dir():
            return
        began = time.perf_counter()
        history = list(state.log_history)
        write_atomic(self.out / "log_history.json", json.dumps(history, indent=2) + "\n")
        write_atomic(self.out / "report.html", report_html([read_run(self.out, history=history, status="training")]))
        self.written = True
        self.seconds += time.perf_counter() - began
