"""`llmkit sweep`: a grid of runs (the cross product of values, and seeds) with a table, a page and a power-law fit.

Design choices:
- Each point is a plain `llmkit train CONFIG OVERRIDES --output-dir DIR/POINT` in its own process: the same run
  folder, signals and `--resume` as any run, nothing in one point can leak into the next, and a point that fails
  (a setting the model refuses, a NaN loss) is recorded with its one-line error while the sweep goes on.
- Resumable by what the folders hold, with no state file to go stale: a point with `metrics.json` is finished and
  skipped, one with a complete checkpoint is resumed (`--resume`), any other starts afresh (an incomplete first
  checkpoint is moved aside, never deleted). A point process dies with the sweep (PR_SET_PDEATHSIG on Linux: it
  gets SIGTERM, saves a checkpoint at the end of its step and stops), so killing the sweep leaves no orphan
  training into a folder that the next sweep would find locked.
- Every point's config is checked before the first one trains (unknown keys, bad values: one line, exit 2).
- `--fit power-law` fits L = E + A / x^alpha (x: non-embedding parameters, or training FLOPs) to the final
  validation losses by least squares (for each E on a fine grid, log(L - E) is linear in log x), and bootstraps over
  the seeds for a 95% interval of alpha. With fewer than three sizes it fits L = A / x^alpha (E = 0) and says so.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .report import RunData, read_run, report_html, write_atomic

FIT_X = {"params": ("non_embedding_parameters", "non-embedding parameters"),
         "compute": ("train_flops", "training FLOPs")}


@dataclass
class Point:
    values: dict  # swept key -> value as typed (a string, parsed by the config as YAML)
    seed: int | None
    name: str

    def overrides(self) -> list[str]:
        out = [f"{k}={v}" for k, v in self.values.items()]
        return out + ([f"training.seed={self.seed}"] if self.seed is not None else [])


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key or not values.strip():
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2,... with a dotted config key, e.g. "
                              "--grid model.n_embd=64,128")
        if key in grid:
            raise ConfigError(f"--grid names {key} twice; give all its values in one --grid {key}=V1,V2")
        vals = [v.strip() for v in values.split(",")]
        if any(not v for v in vals) or len(set(vals)) < len(vals):
            raise ConfigError(f"--grid {item!r}: empty or repeated value; write KEY=V1,V2,... with distinct values")
        grid[key] = vals
    return grid


def points(grid: dict[str, list[str]], seeds: int | None) -> list[Point]:
    short = {k: k.rsplit(".", 1)[-1] for k in grid}
    if len(set(short.values())) < len(short):  # model.seed and data.seed: keep the section
        short = {k: k for k in grid}
    out = []
    for combo in itertools.product(*grid.values()) if grid else [()]:
        values = dict(zip(grid, combo))
        for seed in (range(seeds) if seeds else [None]):
            parts = [f"{short[k]}={v}" for k, v in values.items()] + ([f"seed={seed}"] if seed is not None else [])
            name = re.sub(r"[^\w.=+-]+", "_", "_".join(parts)) or "run"
            out.append(Point(values, seed, name))
    return out


def check_points(config: str | None, overrides: list[str], pts: list[Point], out: pathlib.Path) -> None:
    """Every point's config loads (keys, types, values), its model settings hold and TrainingArguments accepts its
    training settings, before any point trains."""
    from .config import load_config
    from .training import training_arguments
    from .training.workflow import check_model_settings

    for point in pts:
        try:
            cfg = load_config(config, [*overrides, *point.overrides()])
            if cfg.model.from_pretrained is None:
                check_model_settings(cfg)
            has_eval = bool(cfg.data.val_source or cfg.data.val_ratio)
            training_arguments(cfg, str(out / point.name), has_eval=has_eval)
        except ConfigError as err:
            raise ConfigError(f"point {point.name}: {err}") from None


def point_state(folder: pathlib.Path) -> str:
    from .training.run_folder import holds_a_run, last_complete_checkpoint

    if (folder / "metrics.json").is_file():
        return "finished"
    if folder.is_dir() and last_complete_checkpoint(folder) is not None:
        return "resume"
    if folder.is_dir() and holds_a_run(folder):
        return "incomplete"
    return "new"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the point may outlive a killed sweep


def _error_line(log: pathlib.Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("llmkit: error:")]
    return (errors[-1].removeprefix("llmkit: error:").strip() if errors
            else (lines[-1][:300] if lines else "exited without output"))


class Sweep:
    def __init__(self, config: str | None, overrides: list[str], grid: dict[str, list[str]], *, seeds: int | None,
                 out: pathlib.Path, parallel: int = 1, fit: str | None = None, fit_x: str = "params", log=print):
        self.config, self.overrides, self.grid, self.seeds = config, overrides, grid, seeds
        self.out, self.parallel, self.fit, self.fit_x, self.log = out, parallel, fit, fit_x, log
        self.points = points(grid, seeds)
        self.errors: dict[str, str] = {}

    def folder(self, point: Point) -> pathlib.Path:
        return self.out / point.name

    def command(self, point: Point, resume: bool) -> list[str]:
        cmd = [sys.executable, "-m", "llmkit.cli", "train"] + ([self.config] if self.config else [])
        cmd += [*self.overrides, *point.overrides(), "--output-dir", str(self.folder(point))]
        return cmd + (["--resume"] if resume else [])

    def start(self, point: Point) -> subprocess.Popen | None:
        folder = self.folder(point)
        state = point_state(folder)
        if state == "finished":
            self.log(f"sweep: {point.name}: finished, skipped")
            return None
        if state == "incomplete":  # killed while writing its first checkpoint: kept aside, started again
            aside = folder.with_name(f"{folder.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            folder.rename(aside)
            self.log(f"sweep: {point.name}: no complete checkpoint; the folder is kept as {aside.name}")
        self.log(f"sweep: {point.name}: {'resuming' if state == 'resume' else 'training'}")
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.parallel > 1:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.parallel)))
        with (logs / f"{point.name}.log").open("a") as log:
            log.write(f"$ {' '.join(self.command(point, state == 'resume'))}\n")
            log.flush()
            return subprocess.Popen(self.command(point, state == "resume"), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        pending = list(self.points)
        running: dict[str, tuple[Point, subprocess.Popen]] = {}
        try:
            while pending or running:
                while pending and len(running) < self.parallel:
                    point = pending.pop(0)
                    proc = self.start(point)
                    if proc is not None:
                        running[point.name] = (point, proc)
                for name, (_point, proc) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[name]
                    if code == 0:
                        self.errors.pop(name, None)
                        self.log(f"sweep: {name}: done")
                    else:
                        if code in (-signal.SIGTERM, 143, -signal.SIGINT, 130):  # stopped from outside: not a fault
                            raise KeyboardInterrupt
                        self.errors[name] = _error_line(self.out / "logs" / f"{name}.log")
                        self.log(f"sweep: {name}: failed (exit {code}): {self.errors[name]}")
                    self.write()
                if running:
                    time.sleep(0.2)
        finally:
            for _, proc in running.values():  # Ctrl-C or SIGTERM: each point saves a checkpoint and stops
                proc.send_signal(signal.SIGTERM)
            for _, proc in running.values():
                proc.wait()
        return self.write()

    # --- results ------------------------------------------------------------------------------------------------

    def rows(self) -> tuple[list[dict], list[RunData]]:
        rows, runs = [], []
        for point in self.points:
            folder = self.folder(point)
            row = {**point.values, "seed": point.seed, "point": point.name}
            state = point_state(folder)
            run = None
            if folder.is_dir():
                try:
                    run = read_run(folder)
                except ConfigError:
                    run = None
            status = "failed" if point.name in self.errors else {"finished": "finished", "resume": "interrupted",
                                                                  "incomplete": "interrupted"}.get(state, "pending")
            row["status"] = status
            m = run.metrics if run else {}
            evals = [h["eval_loss"] for h in (run.history if run else []) if isinstance(h.get("eval_loss"), float)]
            row.update(eval_loss=m.get("eval_loss"), best_eval_loss=min(evals) if evals else None,
                       train_loss=m.get("train_loss"), eval_bits_per_char=m.get("eval_bits_per_char"),
                       wall_seconds=m.get("wall_seconds") or m.get("train_runtime"), tokens=m.get("train_tokens"),
                       flops=m.get("train_flops"), parameters=m.get("num_parameters"),
                       non_embedding_parameters=m.get("non_embedding_parameters"),
                       error=self.errors.get(point.name))
            rows.append(row)
            if run is not None:
                run.name = point.name
                runs.append(run)
        return rows, runs

    def write(self) -> dict:
        rows, runs = self.rows()
        fit = fit_power_law(rows, self.fit_x) if self.fit else None
        result = {"grid": self.grid, "seeds": self.seeds, "config": self.config, "overrides": self.overrides,
                  "points": rows, **({"fit": fit} if fit else {})}
        write_atomic(self.out / "sweep.json", json.dumps(result, indent=2, default=str) + "\n")
        fields = [*self.grid, "seed", "point", "status", "eval_loss", "best_eval_loss", "train_loss",
                  "eval_bits_per_char", "wall_seconds", "tokens", "flops", "parameters", "non_embedding_parameters",
                  "error"]
        tmp = self.out / ".sweep.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.out / "sweep.csv")
        if runs:
            write_atomic(self.out / "sweep.html", sweep_html(self, rows, runs, fit))
        return result


# --- the page -----------------------------------------------------------------------------------------------------


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def metric_plots(grid: dict[str, list[str]], rows: list[dict], fit: dict | None, fit_x: str) -> list[dict]:
    """Final validation loss against each swept key (one line per value of the other keys; dots are the seeds,
    the line their mean), and the power-law fit."""
    from .report import _colors

    plots = []
    done = [r for r in rows if r["status"] == "finished" and r["eval_loss"] is not None]
    for key in grid:
        numeric = all(_number(v) is not None for v in grid[key])
        order = {v: i for i, v in enumerate(grid[key])}
        others = [k for k in grid if k != key]
        groups: dict[tuple, list[dict]] = {}
        for r in done:
            groups.setdefault(tuple(r[k] for k in others), []).append(r)
        series = []
        for (label, members), color in zip(groups.items(), _colors(len(groups))):
            xs = {}
            for r in members:
                x = _number(r[key]) if numeric else order[r[key]]
                xs.setdefault(x, []).append(r["eval_loss"])
            name = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, label)) or "final val loss"
            series.append({"name": name, "color": color, "markers": False,
                           "points": [[x, float(np.mean(v))] for x, v in sorted(xs.items())]})
            series.append({"name": f"{name} (each seed)", "color": color, "markers": True, "lines": False,
                           "points": [[x, y] for x, ys in xs.items() for y in ys]})
        xlabel = key if numeric else f"{key} ({', '.join(f'{i} = {v}' for v, i in order.items())})"
        plots.append({"id": f"sweep_{key}", "title": f"final val loss against {key}", "xlabel": xlabel,
                      "fixed_x": True, "series": series})
    if fit and fit.get("alpha") is not None:
        key, label = FIT_X[fit_x]
        pts = [[r[key], r["eval_loss"]] for r in done if r.get(key)]
        xs = np.geomspace(min(p[0] for p in pts), max(p[0] for p in pts), 50)
        curve = [[float(x), float(fit["E"] + fit["A"] * x ** -fit["alpha"])] for x in xs]
        interval = fit.get("alpha_ci95")
        ci = f", 95% interval [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        plots.append({"id": "power_law", "title": f"power law: L = {fit['E']:.3f} + {fit['A']:.3g} / x^{fit['alpha']:.3f}"
                      f"{ci}", "xlabel": f"{label} (log)", "xlog": True, "ylog": True, "fixed_x": True,
                      "series": [{"name": "runs", "color": "#0969da", "markers": True, "lines": False, "points": pts},
                                 {"name": "fit", "color": "#cf222e", "points": curve}]})
    return plots


def sweep_table(grid: dict, rows: list[dict], fit: dict | None) -> str:
    import html

    cols = [*grid, "seed", "status", "eval_loss", "best_eval_loss", "wall_seconds", "tokens", "flops",
            "non_embedding_parameters", "error"]
    done = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    best = min(done) if done else None

    def cell(r, c):
        v = r.get(c)
        text = "-" if v is None else f"{v:.4g}" if isinstance(v, float) and c not in ("flops", "tokens") \
            else f"{v:,.3g}" if isinstance(v, float) else str(v)
        cls = "num best" if c == "eval_loss" and v is not None and v == best else "err" if c == "error" else "num"
        return f'<td class="{cls}">{html.escape(text)}</td>'

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(f"<tr>{''.join(cell(r, c) for c in cols)}</tr>" for r in rows)
    fit_text = ""
    if fit:
        if fit.get("alpha") is None:
            fit_text = f"<p class=note>Power-law fit: {html.escape(fit.get('note', 'not enough points'))}</p>"
        else:
            ci = fit.get("alpha_ci95")
            fit_text = (f"<p>Power-law fit ({html.escape(fit['x'])}): L = {fit['E']:.4f} + {fit['A']:.4g} / "
                        f"x<sup>{fit['alpha']:.4f}</sup>" + (f", alpha 95% interval [{ci[0]:.4f}, {ci[1]:.4f}] "
                        f"({fit['bootstrap']} bootstrap fits over the seeds)" if ci else "")
                        + (f". {html.escape(fit['note'])}" if fit.get("note") else "") + "</p>")
    return (f"<h2>Sweep</h2>{fit_text}<div class=scroll><table id=sweep><tr>{head}</tr>{body}</table></div>")


def sweep_html(sweep: Sweep, rows: list[dict], runs: list[RunData], fit: dict | None) -> str:
    done = sum(r["status"] == "finished" for r in rows)
    notes = [{"level": "err", "text": f"{r['point']}: failed: {r['error']}"} for r in rows if r["status"] == "failed"]
    title = f"llmkit sweep: {sweep.out.name} ({done} of {len(rows)} points finished)"
    return report_html(runs, title=title, extra_plots=metric_plots(sweep.grid, rows, fit, sweep.fit_x),
                       extra_tables=sweep_table(sweep.grid, rows, fit), extra_notes=notes)


# --- the fit --------------------------------------------------------------------------------------------------


def _fit(x: np.ndarray, y: np.ndarray, with_floor: bool) -> tuple[float, float, float, float]:
    """(E, A, alpha, squared error) of L = E + A x^-alpha: for each E on a grid below min(L), least squares of
    log(L - E) on log x (closed form, all E at once); the E with the smallest squared error in L, then a finer grid
    around it."""
    lx = np.log(x)
    lx_c = lx - lx.mean()

    def best_of(floors: np.ndarray):
        ly = np.log(y[None, :] - floors[:, None])  # (E, points)
        slope = (ly - ly.mean(1, keepdims=True)) @ lx_c / (lx_c @ lx_c)
        intercept = ly.mean(1) - slope * lx.mean()
        pred = floors[:, None] + np.exp(intercept[:, None] + slope[:, None] * lx[None, :])
        sse = ((y[None, :] - pred) ** 2).sum(1)
        i = int(np.argmin(sse))
        return i, float(floors[i]), float(np.exp(intercept[i])), float(-slope[i]), float(sse[i])

    if not with_floor:
        return best_of(np.array([0.0]))[1:]
    top = 0.999 * float(y.min())
    floors = np.linspace(0.0, top, 400)
    i, *_ = best_of(floors)
    step = floors[1] - floors[0]
    fine = np.linspace(max(0.0, floors[i] - step), min(top, floors[i] + step), 400)
    return best_of(fine)[1:]


def fit_power_law(rows: list[dict], fit_x: str = "params", bootstrap: int = 300, seed: int = 0) -> dict:
    key, label = FIT_X[fit_x]
    done = [r for r in rows if r["status"] == "finished" and r.get("eval_loss") and r.get(key)]
    by_x: dict[float, list[float]] = {}
    for r in done:
        by_x.setdefault(float(r[key]), []).append(float(r["eval_loss"]))
    out = {"form": "L = E + A / x^alpha", "x": label, "y": "final validation loss (nats/token)",
           "sizes": len(by_x), "points": len(done)}
    if len(by_x) < 2:
        return {**out, "alpha": None, "note": f"{len(by_x)} distinct {label}: a fit needs at least 2"}
    with_floor = len(by_x) >= 3
    xs = np.array(sorted(by_x))
    mean = np.array([np.mean(by_x[x]) for x in xs])
    e, a, alpha, sse = _fit(xs, mean, with_floor)
    out.update(E=e, A=a, alpha=alpha, sse=sse)
    if not with_floor:
        out["note"] = "two sizes: the floor E is fixed at 0 (L = A / x^alpha)"
    if min(len(v) for v in by_x.values()) < 2:
        out["note"] = (out.get("note", "") + "; " if out.get("note") else "") + \
            "one seed per size: no interval (use --seeds 2 or more)"
        return out
    rng = np.random.default_rng(seed)
    alphas = []
    for _ in range(bootstrap):  # resample each size's seeds with replacement
        ys = np.array([np.mean(rng.choice(by_x[x], size=len(by_x[x]), replace=True)) for x in xs])
        alphas.append(_fit(xs, ys, with_floor)[2])
    lo, hi = np.percentile(alphas, [2.5, 97.5])
    out.update(alpha_ci95=[float(lo), float(hi)], bootstrap=bootstrap)
    return out


def run_sweep(config: str | None, overrides: list[str], grid_items: list[str], *, seeds: int | None = None,
              out: str | pathlib.Path, parallel: int = 1, fit: str | None = None, fit_x: str = "params",
              log=print) -> dict:
    if config is not None and not pathlib.Path(config).is_file():
        raise ConfigError(f"{config}: no such config file")
    grid = parse_grid(grid_items)
    if not grid and not seeds:
        raise ConfigError("nothing to sweep: add --grid KEY=V1,V2,... or --seeds N")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be 1 or more")
    cores = os.cpu_count() or 1
    if parallel < 1 or parallel > cores:
        raise ConfigError(f"--parallel {parallel}: this machine has {cores} cores; use 1 to {cores}")
    if fit not in (None, "power-law"):
        raise ConfigError(f"--fit {fit}: the only fit is power-law")
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder")
    sweep = Sweep(config, overrides, grid, seeds=seeds, out=out, parallel=parallel, fit=fit, fit_x=fit_x, log=log)
    check_points(config, overrides, sweep.points, out)
    for key in grid:
        if key in ("training.output_dir",):
            raise ConfigError("--grid training.output_dir: each point's folder is set by the sweep (--out)")
    return sweep.run()


# --- generation sweeps -------------------------------------------------------------------------------------------

GENERATION_KEYS = {"temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float,
                   "max_new_tokens": int, "seed": int}


def parse_generation_sweep(items: list[str]) -> dict[str, list]:
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in GENERATION_KEYS:
            raise ConfigError(f"--sweep {item!r}: write KEY=V1,V2,... with KEY one of {', '.join(GENERATION_KEYS)}")
        try:
            vals = [None if v.strip().lower() == "none" else GENERATION_KEYS[key](v) for v in values.split(",")]
        except ValueError:
            raise ConfigError(f"--sweep {item!r}: {key} takes {GENERATION_KEYS[key].__name__} values") from None
        grid[key] = vals
    return grid


def checkpoint_of(model: str) -> dict:
    """Which weights a sample came from: the folder (or Hub id) and, for a run folder, its step."""
    path = pathlib.Path(model)
    info: dict = {"model": model}
    for name, key in (("metrics.json", "global_step"), ("trainer_state.json", "global_step")):
        try:
            info["step"] = json.loads((path / name).read_text())[key]
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return info


def generation_sweep(model, tokenizer, model_name: str, prompts: list[str], items: list[str], *, base: dict,
                     out: str | pathlib.Path, log=print) -> list[dict]:
    """Every combination of the swept generation settings over `base` (the command's other settings), each sample
    with its settings, seed and checkpoint, into `out` (JSONL) and an HTML page beside it."""
    from .models.generation import generate_texts

    grid = parse_generation_sweep(items)
    out = pathlib.Path(out)
    if out.suffix != ".jsonl":
        raise ConfigError(f"--output {out}: a generation sweep writes JSONL; name a .jsonl file")
    checkpoint = checkpoint_of(model_name)
    rows = []
    for combo in itertools.product(*grid.values()):
        settings = {**base, **dict(zip(grid, combo))}
        if settings.get("seed") is None:
            settings["seed"] = 0  # every sample reproducible: the seed is recorded with it
        for prompt in prompts:
            try:
                texts = generate_texts(model, tokenizer, [prompt], **settings)
            except ValueError as err:
                from .errors import first_line

                raise ConfigError(f"--sweep {dict(zip(grid, combo))}: {first_line(err)}") from None
            for i, text in enumerate(texts):
                row = {"prompt": prompt, "text": text, "sample": i, **checkpoint,
                       "settings": {k: v for k, v in settings.items() if k not in ("stop", "chat")},
                       "seed": settings["seed"]}
                rows.append(row)
                log(json.dumps(row, ensure_ascii=False))
    write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_atomic(out.with_suffix(".html"), generation_html(rows, list(grid), model_name))
    return rows


def generation_html(rows: list[dict], swept: list[str], model: str) -> str:
    import html
    from importlib.resources import files

    head = "".join(f"<th>{html.escape(k)}</th>" for k in swept)
    def row(r: dict) -> str:
        swept_cells = "".join(f"<td class=num>{html.escape(str(r['settings'].get(k)))}</td>" for k in swept)
        return (f"<tr>{swept_cells}<td class=num>{r['seed']}</td><td class=num>{r['sample']}</td>"
                f"<td>{html.escape(repr(r['prompt']))}</td><td class=sample>{html.escape(r['prompt'] + r['text'])}"
                "</td></tr>")

    body = "".join(row(r) for r in rows)
    settings = html.escape(json.dumps({k: v for k, v in rows[0]["settings"].items() if k not in swept})) if rows else ""
    step = rows[0].get("step") if rows else None
    table = (f"<h2>Samples</h2><p class=sub>Fixed settings: {settings}; checkpoint: {html.escape(model)}"
             f"{f' (step {step})' if step is not None else ''}.</p><div class=scroll><table id=generation-sweep><tr>"
             f"{head}<th>seed</th><th>sample</th><th>prompt</th><th>text</th></tr>{body}</table></div>")
    template = files("llmkit").joinpath("static/report.html").read_text()
    page = template.split("<h2>Curves</h2>")[0] + table + "</body></html>"
    return page.replace("__TITLE__", html.escape(f"llmkit generation sweep: {model}"))
