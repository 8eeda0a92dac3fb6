"""Distillation, measured: a half-depth student trained with the teacher against the same student trained on the
data alone, for the same steps and tokens (`configs/distill.yaml`, teacher: the quickstart model).

Reports each student's validation loss and bits per character on the built-in corpus' validation split (the
teacher's too), and greedy decoding time of the student against the teacher (256 new tokens, best of 3).

    python benchmarks/distill.py [--teacher runs/quickstart] [--steps 1500]
Writes benchmarks/results/distill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from _common import quickstart_run, report

REPO = pathlib.Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "distill.yaml"


def decode_seconds(run: pathlib.Path) -> float:
    import torch

    from llmkit.loading import load_model

    model, tokenizer = load_model(str(run), device="cpu")
    ids = torch.tensor([[tokenizer.eos_token_id]])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=256, min_new_tokens=256, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default=str(REPO / "runs" / "quickstart"))
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    teacher = quickstart_run(pathlib.Path(args.teacher))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-distill-bench-"))
    common = [f"distill.teacher={teacher}", f"training.max_steps={args.steps}", f"training.eval_steps={args.steps}",
              "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=0"]
    runs = {"student, distilled (alpha 0.5, T 4)": [], "student, data only": ["distill=null",
                                                                             f"tokenizer.name_or_path={teacher}",
                                                                             "tokenizer.kind=pretrained"]}
    rows = []
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    teacher_s = decode_seconds(teacher)
    rows.append({"model": f"teacher ({json.loads((teacher / 'config.json').read_text())['n_layer']} layers)",
                 "val_loss": teacher_metrics["eval_loss"], "bits_per_char": teacher_metrics.get("eval_bits_per_char"),
                 "decode_256_s": teacher_s, "decode_speedup": 1.0, "train_s": None})
    for name, extra in runs.items():
        out = work / name.split(",")[1].strip().split()[0]
        subprocess.run([sys.executable, "-m", "llmkit.cli", "train", str(PRESET), *common, *extra,
                        "--output-dir", str(out)], check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        m = json.loads((out / "metrics.json").read_text())
        seconds = decode_seconds(out)
        rows.append({"model": name, "val_loss": m["eval_loss"], "bits_per_char": m.get("eval_bits_per_char"),
                     "decode_256_s": seconds, "decode_speedup": teacher_s / seconds, "train_s": m["train_runtime"]})
    report("distill", rows, extra={"steps": args.steps, "tokens_per_student": args.steps * 16 * 128})


if __name__ == "__main__":
    main()
