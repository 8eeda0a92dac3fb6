"""Every preset in configs/ that fits this machine, trained as a user runs it: `llmkit train configs/NAME.yaml`, one
whole process each (data preparation from an empty cache, training, evaluations, checkpoints, samples), one after
the other. Records wall time, training tokens/s, the final validation loss (nats per token) and bits per char, the
precision the defaults chose, and a sample.

Presets that need tinyshakespeare get `data.source=` it; `gpt2-124m` gets a 20 KB stand-in for the chapter's text
(the play's first 20,479 characters). `small` and `medium`, whose full recipes take hours here, and the GPU recipe
`shakespeare-char`, run `--probe-steps` steps for tokens/s only. Presets that fine-tune or distil are measured by
their own benchmarks (finetune.py, instruct.py, distill.py). Beside a preset, the alternatives to its defaults
run too (VARIANTS: the quickstart with Muon, tiny in the other precision), so the defaults follow a measurement.

    python benchmarks/presets.py [--only quickstart tiny ...] [--probe-steps 30]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import yaml
from _common import SHAKESPEARE, report

REPO = pathlib.Path(__file__).resolve().parents[1]
FULL = ["quickstart", "shakespeare-char-cpu", "shakespeare-char-speedrun", "tiny", "word-level", "gpt2-124m"]
PROBE = ["small", "medium", "shakespeare-char"]
# the defaults' alternatives, measured beside the preset in the same run: (preset, label, overrides)
VARIANTS = [("quickstart", "optimizer muon", ["training.optimizer=muon"]),
            ("tiny", "bf16 flipped", ["training.bf16=FLIP"])]


def run(name: str, work: pathlib.Path, extra: list[str]) -> dict:
    config = REPO / "configs" / f"{name}.yaml"
    raw = yaml.safe_load(config.read_text())
    out = work / "runs" / name
    overrides = [f"training.output_dir={out}", f"data.cache_dir={work / 'cache' / name}", "training.disable_tqdm=true",
                 "training.report_to=none", *extra]
    source = (raw.get("data") or {}).get("source", "builtin")
    if name == "gpt2-124m":
        stand_in = work / "the-verdict-stand-in.txt"
        stand_in.write_text(SHAKESPEARE.read_text()[:20_479])
        overrides.append(f"data.source={stand_in}")
    elif source not in ("builtin", "builtin-instruct"):
        overrides.append(f"data.source={SHAKESPEARE}")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llmkit.cli", "train", str(config), *overrides], cwd=work,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"preset": name, "wall_s": wall, "error": proc.stderr.strip().splitlines()[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    samples = out / "samples.jsonl"
    sample = json.loads(samples.read_text().splitlines()[-1]).get("text", "") if samples.exists() and \
        samples.read_text().strip() else ""
    shutil.rmtree(out)
    return {"preset": name, "wall_s": wall, "steps": metrics["global_step"],
            "tokens_per_s": metrics["train_tokens_per_second"], "val_loss": metrics.get("eval_loss"),
            "bits_per_char": metrics.get("eval_bits_per_char"), "precision": metrics["mixed_precision"],
            "optimizer": metrics.get("optimizer"), "params_M": metrics["num_parameters"] / 1e6,
            "best_checkpoint": metrics.get("best_checkpoint"), "sample": sample[:160]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="preset names")
    parser.add_argument("--probe-steps", type=int, default=30)
    args = parser.parse_args()
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} not found: this benchmark needs ../shared beside the checkout")
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-presets-"))
    rows = []
    try:
        for name in [n for n in FULL + PROBE if not args.only or n in args.only]:
            extra = [f"training.max_steps={args.probe_steps}", f"training.eval_steps={args.probe_steps}",
                     "sample.max_new_tokens=0"] if name in PROBE else []
            row = run(name, work, extra)
            row["measured"] = f"{args.probe_steps}-step probe (tokens/s)" if name in PROBE else "full recipe"
            rows.append(row)
            print(json.dumps(row), flush=True)
            for preset, label, overrides in VARIANTS:
                if preset != name or "error" in row:
                    continue
                flip = "true" if row["precision"] == "no" else "false"
                variant = run(name, work, [o.replace("FLIP", flip) for o in overrides])
                variant.update(preset=f"{name} ({label})", measured="full recipe")
                rows.append(variant)
                print(json.dumps(variant), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("presets", [{k: r.get(k) for k in ("preset", "measured", "wall_s", "steps", "tokens_per_s", "val_loss",
                                              "bits_per_char", "precision", "optimizer")} for r in rows],
           {"details": rows})


if __name__ == "__main__":
    main()
