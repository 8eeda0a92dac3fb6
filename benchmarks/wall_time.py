"""Where a short run's wall time goes: `llmkit train configs/shakespeare-char-cpu.yaml` (nanoGPT's CPU recipe, 2,000
steps) as a whole process, by phase.

Each run is one `llmkit train` process, timed from outside (start to exit); the phases are the run's own
`wall_seconds_by_phase` from metrics.json (llmkit's WallClock: start-up is the process's start to the command's
first line, "data loading" the batches fetched between steps, "training steps" forward, backward and optimizer).
What follows metrics.json (the final report page, the interpreter's exit) is the outside time less the phases.
The data is tokenized once before any timing (a second run's cache read, as in benchmarks/speedrun.py).

Variants, alternating, `--rounds` of each:
- "whole split": every evaluation scores the whole validation split (llmkit before `training.eval_subsample_tokens`);
- "defaults": the config as it is.

    python benchmarks/wall_time.py [--rounds 1] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from _common import REPO, SHAKESPEARE, prepare_once, report, shakespeare_overrides

CONFIG = REPO / "configs" / "shakespeare-char-cpu.yaml"
VARIANTS = {"whole split": ["training.eval_subsample_tokens=null"], "defaults": []}


def run(work: pathlib.Path, overrides: list[str], name: str, steps: int) -> dict:
    out = work / name
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "llmkit.cli", "train", str(CONFIG), *shakespeare_overrides(work),
           f"training.output_dir={out}", "training.report_to=none", "training.disable_tqdm=true",
           f"training.max_steps={steps}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {proc.stderr.strip().splitlines()[-1]}")
    metrics = json.loads((out / "metrics.json").read_text())
    phases = dict(metrics["wall_seconds_by_phase"])
    total = phases.pop("total")
    phases["after metrics.json (final report, exit)"] = max(0.0, wall - total)
    shutil.rmtree(out)
    return {"wall_s": wall, "phases": phases, "eval_loss": metrics["eval_loss"],
            "tokens_per_second_training": metrics["train_tokens_per_second"],
            "tokens_per_second_whole": metrics["train_tokens"] / wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} not found: this benchmark needs ../shared beside the checkout")
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-walltime-"))
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    try:
        prepare_once(work, [CONFIG])
        for r in range(args.rounds):
            for name, overrides in VARIANTS.items():
                result = run(work, overrides, f"{name.replace(' ', '-')}-{r}", args.steps)
                results[name].append(result)
                steps = result["phases"].get("training steps", 0.0)
                print(f"{name} round {r + 1}: {result['wall_s']:.1f} s, {steps / result['wall_s']:.1%} in training "
                      f"steps, val loss {result['eval_loss']:.4f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    phases = list(dict.fromkeys(p for rs in results.values() for r in rs for p in r["phases"]))
    rows = []
    for phase in [*phases, "whole process"]:
        row = {"phase": phase}
        for name, rs in results.items():
            secs = [r["wall_s"] if phase == "whole process" else r["phases"].get(phase, 0.0) for r in rs]
            mean = sum(secs) / len(secs)
            wall = sum(r["wall_s"] for r in rs) / len(rs)
            row[f"{name} s"] = round(mean, 2)
            row[f"{name} %"] = round(100 * mean / wall, 1)
        rows.append(row)
    summary = {name: {"wall_s": sum(r["wall_s"] for r in rs) / len(rs),
                      "training_steps_share": sum(r["phases"].get("training steps", 0.0) / r["wall_s"]
                                                  for r in rs) / len(rs),
                      "eval_loss": [r["eval_loss"] for r in rs],
                      "tokens_per_second_training": [r["tokens_per_second_training"] for r in rs],
                      "tokens_per_second_whole": [r["tokens_per_second_whole"] for r in rs]}
               for name, rs in results.items()}
    report("wall_time", rows, {"config": str(CONFIG.relative_to(REPO)), "steps": args.steps, "summary": summary,
                               "runs": results})
    share = summary["defaults"]["training_steps_share"]
    print(f"\n{'PASS' if share >= 0.9 else 'FAIL'}: the defaults spend {share:.1%} of the whole process in training "
          "steps (goal: 90%)")


if __name__ == "__main__":
    main()
