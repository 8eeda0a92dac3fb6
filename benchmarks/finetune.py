"""Fine-tuning, measured: quality per method, and the speed of LoRA on GPT-2 small's shape, stock vs llmkit.

Part `quality`: a model llmkit pretrains on the built-in corpus (the quickstart, `--base`, trained first when
missing) fine-tuned on tinyshakespeare for the same steps, batch and data by each method: zero-shot (no training),
LoRA with the seeds' settings (r 8, alpha 32, c_attn, dropout 0.05), LoRA on all linear layers, full fine-tuning.
Reports the validation loss on the play's last 10%, the trainable share, the saved file's size, training tokens/s
and the peak memory of the process.

Part `speed`: LoRA (the seeds' settings) on GPT-2 small's exact shape (124M, random weights: only shapes matter
for speed), context 256, batch 4, 20 steps from the same weights and data, each in its own process:
- the stock path: `GPT2LMHeadModel` + peft + Trainer (`llmkit train` with `model.from_pretrained` only);
- llmkit's path: the same plus `model.arch=llmkit-gpt` (exact conversion, fused tanh GELU, fused chunked loss);
both in fp32 (runs alternate, two rounds), the loss curves compared step by step, then each in its default
precision as a user would run it (the stock Trainer: fp32; llmkit: bf16 autocast where the CPU has it).
The step time is the median of steps 3-20 (after warm-up).

    python benchmarks/finetune.py [--part quality|speed] [--steps 300] [--base runs/quickstart]
Writes benchmarks/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from _common import RESULTS, SHAKESPEARE, print_table, quickstart_run, report

REPO = pathlib.Path(__file__).resolve().parents[1]


def worker(spec: dict) -> None:
    """Run one `llmkit train` in this process with a per-step timer; write the results as JSON."""
    from transformers import TrainerCallback

    from llmkit.config import load_config
    from llmkit.training import train

    times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    cfg = load_config(spec.get("config"), spec["overrides"])
    metrics = train(cfg, output_dir=spec["out"], log=lambda *a: None, callbacks=[StepTimer()])
    history = json.loads((pathlib.Path(spec["out"]) / "log_history.json").read_text())
    pathlib.Path(spec["result"]).write_text(json.dumps({
        "metrics": metrics,
        "losses": {h["step"]: h["loss"] for h in history if "loss" in h},
        "step_seconds": times,
    }))


def run_worker(spec: dict, work: pathlib.Path, name: str) -> dict:
    """`worker(spec)` in a fresh process; adds its peak resident memory."""
    spec = dict(spec, out=str(work / name), result=str(work / f"{name}.json"))
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{name} failed; see {work / (name + '.log')}")
    result = json.loads((work / f"{name}.json").read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def folder_size(run: pathlib.Path, names: tuple[str, ...]) -> int:
    return sum((run / n).stat().st_size for n in names if (run / n).exists())


def quality(args, work: pathlib.Path) -> list[dict]:
    base = quickstart_run(pathlib.Path(args.base))
    # the presets configs/quickstart-lora.yaml and configs/quickstart-finetune.yaml, as shipped
    common = [f"model.from_pretrained={base}", f"data.source={SHAKESPEARE}", f"data.cache_dir={work / 'cache'}",
              f"training.max_steps={args.steps}", f"training.eval_steps={args.steps}", "training.logging_steps=50",
              "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=0", "training.seed=0"]
    lora, full = str(REPO / "configs/quickstart-lora.yaml"), str(REPO / "configs/quickstart-finetune.yaml")
    methods = {
        "LoRA, seeds' settings (c_attn)": (lora, ["lora.target_modules=[c_attn]"]),
        "LoRA, all linear layers (quickstart-lora)": (lora, []),
        "full fine-tuning (quickstart-finetune)": (full, []),
    }
    zero = run_worker({"config": full, "overrides": [*common, "training.max_steps=1", "training.learning_rate=0",
                                                     "training.eval_steps=1"]}, work, "zero-shot")
    rows = [{"method": "zero-shot (pretrained on the built-in corpus)", "val_loss": zero["metrics"]["eval_loss"],
             "trainable": "0%", "saved_MB": 0.0, "tokens_per_s": 0, "peak_rss_MB": round(zero["peak_rss_mb"])}]
    for name, (config, extra) in methods.items():
        slug = f"method-{len(rows)}"
        r = run_worker({"config": config, "overrides": [*common, *extra]}, work, slug)
        m = r["metrics"]
        saved = folder_size(work / slug, ("adapter_model.safetensors", "model.safetensors"))
        rows.append({"method": name, "val_loss": m["eval_loss"],
                     "trainable": f"{100 * m['trainable_parameters'] / m['num_parameters']:.2f}%",
                     "saved_MB": saved / 2**20, "tokens_per_s": round(m["train_tokens_per_second"]),
                     "peak_rss_MB": round(r["peak_rss_mb"])})
    return rows


def make_gpt2_small(work: pathlib.Path) -> pathlib.Path:
    """GPT-2 small's exact shape with random weights and no dropout (the loss curves are compared step by step),
    with a byte-level BPE trained on the play standing in for GPT-2's tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmkit.tokenizers import train_tokenizer

    folder = work / "gpt2-small-shape"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)).save_pretrained(folder)
    train_tokenizer("bpe", [SHAKESPEARE.read_text()], 50257).save_pretrained(folder)
    return folder


def speed(args, work: pathlib.Path) -> tuple[list[dict], dict]:
    base = make_gpt2_small(work)
    common = [f"model.from_pretrained={base}", f"data.source={SHAKESPEARE}", f"data.cache_dir={work / 'cache'}",
              "data.block_size=256", "data.val_ratio=0", "training.per_device_train_batch_size=4",
              "training.max_steps=20", "training.logging_steps=1", "training.learning_rate=2e-4",
              "training.warmup_steps=0", "training.save_strategy=no", "training.report_to=none",
              "training.disable_tqdm=true", "sample.max_new_tokens=0", "training.seed=0",
              "lora.r=8", "lora.lora_alpha=32", "lora.target_modules=[c_attn]", "lora.lora_dropout=0.05"]
    paths = {"stock GPT2LMHeadModel + peft + Trainer": [], "llmkit path (model.arch=llmkit-gpt)": ["model.arch=llmkit-gpt"]}
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for rnd in range(2):  # alternate, so drift in the machine's speed hits both
        for i, (name, extra) in enumerate(paths.items()):
            runs[name].append(run_worker({"overrides": [*common, *extra, "training.bf16=false"]}, work,
                                         f"fp32-{i}-{rnd}"))
    defaults = {}
    for i, (name, extra) in enumerate(paths.items()):
        precision = ["training.bf16=false"] if i == 0 else []  # the stock Trainer's default is fp32
        defaults[name] = run_worker({"overrides": [*common, *extra, *precision]}, work, f"default-{i}")

    def step_time(r):
        return statistics.median(r["step_seconds"][2:])

    rows = []
    stock_fp32 = statistics.median(step_time(r) for r in runs[next(iter(paths))])
    for name, results in runs.items():
        t = statistics.median(step_time(r) for r in results)
        rows.append({"path": name, "precision": "fp32", "s_per_step": t, "vs_stock_fp32": stock_fp32 / t,
                     "peak_rss_MB": round(max(r["peak_rss_mb"] for r in results))})
    for name, r in defaults.items():
        precision = r["metrics"]["mixed_precision"]
        rows.append({"path": name + " (its default)", "precision": "fp32" if precision == "no" else precision,
                     "s_per_step": step_time(r), "vs_stock_fp32": stock_fp32 / step_time(r),
                     "peak_rss_MB": round(r["peak_rss_mb"])})
    curves = [runs[name][0]["losses"] for name in paths]
    diffs = [abs(curves[0][s] - curves[1][s]) for s in curves[0]]
    extra = {"loss_curve_max_abs_diff_fp32": max(diffs), "loss_curves_fp32": curves}
    print(f"fp32 loss curves over {len(diffs)} steps: max |stock - llmkit| = {max(diffs):.2e}")
    return rows, extra


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("quality", "speed"), help="run one part only")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps of the quality part")
    parser.add_argument("--base", default=str(REPO / "runs" / "quickstart"), help="the pretrained quickstart run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} is missing: this benchmark fine-tunes on tinyshakespeare")
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-finetune-bench-"))
    out = {}
    previous = RESULTS / "finetune.json"
    if args.part and previous.exists():  # keep the other part's last result
        out = {k: v for k, v in json.loads(previous.read_text()).items() if k in ("quality", "speed", "speed_extra")}
    if args.part in (None, "quality"):
        out["quality"] = quality(args, work)
    if args.part in (None, "speed"):
        out["speed"], out["speed_extra"] = speed(args, work)
    if "quality" in out:
        print("quality (tinyshakespeare, same steps, batch and data per method):")
        print_table(out["quality"])
    if "speed" in out:
        print("\nspeed (LoRA, GPT-2 small shape, context 256, batch 4):")
        print_table(out["speed"])
    report("finetune", [], extra=out, table=False)


if __name__ == "__main__":
    main()
