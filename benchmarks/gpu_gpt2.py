"""GPT-2 124M (12/12/768, context 1024) in bf16 on one GPU: tokens/s and MFU of `llmkit train` with AdamW and with
Muon, and of nanoGPT's own train.py (benchmarks/nanogpt/, `--compile=True`, and without compile) in the same
call.

Both train on the same tokens (the built-in corpus, tokenized by a 50,304-entry byte-level BPE that llmkit trains
here, so nothing is downloaded), batch 16 x 1024, for `--steps` steps; the first `--warmup` steps are left out.
MFU uses nanoGPT's FLOP count (6N + 12 L H Q T per token, N without position embeddings) against the GPU's dense
bf16 peak (`--peak-tflops`, default from the device name: H100/H200 989, A100 312, L4 121). On a machine
without CUDA it runs a tiny smoke version on CPU (`--smoke`), which checks the script, not the speed, and writes
no results.

    python benchmarks/gpu_gpt2.py [--steps 60] [--warmup 10] [--peak-tflops 989] [--only compile Muon]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from _common import print_table, report

REPO = pathlib.Path(__file__).resolve().parents[1]
NANOGPT = REPO / "benchmarks" / "nanogpt"
# "chunk=BYTES": llmkit-gpt's chunked fused loss (chunked_loss.py, which a training step uses where the logits
# are large) with chunks of that many bytes of fp32 logits instead of the device's own size (1 GiB on GPUs,
# 64 MiB on CPUs); "chunk=0": the loss from the whole (B, T, vocab) logits, as transformers' models take it.
VARIANTS = {
    "llmkit, AdamW (fused)": [],
    "llmkit, AdamW, torch.compile": ["training.torch_compile=true"],
    "llmkit, Muon + AdamW": ["training.optimizer=muon", "training.muon.lr=0.02"],
    "llmkit, AdamW, 64 MiB loss chunks": ["chunk=67108864"],
    "llmkit, AdamW, whole logits": ["chunk=0"],
}


def launcher(chunk: int | None) -> list[str]:
    """`python -m llmkit.cli`, or the same CLI with chunked_loss's chunk sizes set first (0: never chunk)."""
    if chunk is None:
        return ["-m", "llmkit.cli"]
    value = "1 << 62" if chunk == 0 else str(chunk)
    return ["-c", f"import sys, llmkit.models.chunked_loss as c; c.CHUNK_BYTES = c.ACCELERATOR_CHUNK_BYTES = {value}; "
                  "sys.argv[0] = 'llmkit'; "
                  "from llmkit.cli import main; sys.exit(main())"]


PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops(arg: float | None) -> float:
    if arg:
        return arg * 1e12
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((v for k, v in PEAKS.items() if k in name), 989e12)


def flops_per_token(n_params_no_pos: int, layers: int, heads: int, width: int, context: int) -> float:
    return 6 * n_params_no_pos + 12 * layers * heads * (width // heads) * context


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--only", nargs="*", help="run only the llmkit variants whose names contain one of these")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script runs")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke to check the script on CPU")
    layers, heads, width, context, batch, vocab = (12, 12, 768, 1024, 16, 50304) if cuda else (2, 2, 64, 64, 4, 512)
    steps, warmup = (args.steps, args.warmup) if cuda else (6, 2)
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-gpu-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    try:
        common = [f"data.cache_dir={work / 'cache'}", "data.source=builtin", "tokenizer.kind=bpe",
                  f"tokenizer.vocab_size={vocab}", f"model.n_layer={layers}", f"model.n_head={heads}",
                  f"model.n_embd={width}", f"model.n_positions={context}", "model.position_embedding_type=learned",
                  "model.bias=false", f"training.per_device_train_batch_size={batch}", f"training.max_steps={steps}",
                  "training.eval_strategy=no", "training.save_strategy=no", "training.load_best_model_at_end=false",
                  "training.logging_steps=1", "training.report_to=none", "training.disable_tqdm=true",
                  "sample.max_new_tokens=0", f"training.bf16={str(cuda).lower()}", "data.val_ratio=0.01"]
        subprocess.run([sys.executable, "-m", "llmkit.cli", "prepare", *common], cwd=work, env=env, check=True,
                       capture_output=True)
        shape = (layers, heads, width, context, batch)
        # nanoGPT first: each row is printed as it comes, so a call cut short still has the reference
        rows = [nanogpt_row(work, shape, steps, warmup, cuda, args.peak_tflops, env)]
        print(json.dumps(rows[-1]), flush=True)
        for name, extra in VARIANTS.items():
            if not args.only or any(o in name for o in args.only):
                rows.append(llmkit_row(name, extra, work, common, shape, warmup, args.peak_tflops, env))
                print(json.dumps(rows[-1]), flush=True)
            if name == "llmkit, AdamW, torch.compile" and cuda:  # both tools uncompiled: how much is compile's
                rows.append(nanogpt_row(work, shape, steps, warmup, cuda, args.peak_tflops, env, compiled=False))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not cuda:  # a check of the script: its figures say nothing, and are not written
        print_table(rows)
        failed = [r["run"] for r in rows if r["tokens_per_s"] is None]
        raise SystemExit(f"smoke run failed: {', '.join(failed)}" if failed else None)
    report("gpu_gpt2", rows, {"device": torch.cuda.get_device_name(), "shape": [layers, heads, width, context, batch]})


def llmkit_row(name: str, extra: list[str], work: pathlib.Path, common: list[str], shape: tuple, warmup: int,
               peak: float | None, env: dict) -> dict:
    """One `llmkit train` process; tokens/s is the median of its per-step rates after the warm-up steps (each log
    line covers the one step since the previous line), as nanoGPT's figure is."""
    layers, heads, width, context, _ = shape
    out = work / "run"
    chunk = next((int(o.split("=")[1]) for o in extra if o.startswith("chunk=")), None)
    overrides = [o for o in extra if not o.startswith("chunk=")]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *launcher(chunk), "train", *common, *overrides, f"training.output_dir={out}"],
                          cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"run": name, "tokens_per_s": None, "mfu": None, "tokens_per_s_whole_run": None,
                "note": proc.stderr.strip()[-300:]}
    history = json.loads((out / "log_history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out)
    n = metrics["num_parameters"] - context * width  # without the position table, as nanoGPT counts
    steady = [h["tokens_per_second"] for h in history if "tokens_per_second" in h and h["step"] > warmup]
    tps = float(np.median(steady)) if steady else metrics["train_tokens_per_second"]
    last = next((h["loss"] for h in reversed(history) if "loss" in h), float("nan"))
    return {"run": name, "tokens_per_s": tps,
            "mfu": tps * flops_per_token(n, layers, heads, width, context) / peak_flops(peak),
            "tokens_per_s_whole_run": metrics["train_tokens_per_second"],
            "note": f"{wall:.0f} s process, last loss {last:.3f}"}


def nanogpt_row(work: pathlib.Path, shape: tuple, steps: int, warmup: int, cuda: bool, peak: float | None,
                env: dict, compiled: bool = True) -> dict:
    """nanoGPT's train.py on the same tokens (train.bin/val.bin from llmkit's cache, llmkit's vocabulary size in
    its meta.pkl): its own loop, the median of its per-iteration times after the warm-up iterations. `compiled`:
    its default, on GPUs (never on CPUs)."""
    layers, heads, width, context, batch = shape
    data = work / "nanogpt" / "data" / "llmkit"
    if not data.exists():
        tokens, vocab = _cached_tokens(work / "cache")
        shutil.copytree(NANOGPT, work / "nanogpt")
        data.mkdir(parents=True)
        with open(data / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": vocab}, f)
        tokens[: int(len(tokens) * 0.95)].astype(np.uint16).tofile(data / "train.bin")
        tokens[int(len(tokens) * 0.95):].astype(np.uint16).tofile(data / "val.bin")
    compiled = compiled and cuda
    cmd = [sys.executable, "train.py", "--dataset=llmkit", f"--device={'cuda' if cuda else 'cpu'}", f"--compile={compiled}",
           f"--n_layer={layers}", f"--n_head={heads}", f"--n_embd={width}", f"--block_size={context}",
           f"--batch_size={batch}", "--gradient_accumulation_steps=1", f"--max_iters={steps}",
           "--eval_interval=100000", "--eval_iters=1", "--log_interval=1", f"--dtype={'bfloat16' if cuda else 'float32'}",
           "--always_save_checkpoint=False", f"--out_dir={work / 'nano-out'}"]
    name = "nanoGPT train.py" + (" (compile)" if compiled else " (no compile)" if cuda else "")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work / "nanogpt", env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"run": name, "tokens_per_s": None, "mfu": None, "tokens_per_s_whole_run": None,
                "note": proc.stderr[-300:]}
    iters = re.findall(r"^iter \d+: loss ([\d.]+), time ([\d.]+)ms", proc.stdout, re.M)
    ms = [float(t) for _, t in iters][warmup:] or [float(t) for _, t in iters]
    tps = batch * context / (np.median(ms) / 1000)
    n = _nanogpt_params(proc.stdout)
    return {"run": name, "tokens_per_s": tps,
            "mfu": tps * flops_per_token(n, layers, heads, width, context) / peak_flops(peak),
            "tokens_per_s_whole_run": None,
            "note": f"{time.perf_counter() - start:.0f} s process, last loss {float(iters[-1][0]):.3f}"}


def _cached_tokens(cache: pathlib.Path) -> tuple[np.ndarray, int]:
    """The train split llmkit prepared (`<cache>/<hash>/train.bin`, dtype in meta.json) and its vocabulary size."""
    files = sorted(cache.glob("*/train.bin"))
    if not files:
        raise SystemExit(f"no tokenized train split under {cache}")
    meta = json.loads((files[0].parent / "meta.json").read_text())
    return np.fromfile(files[0], dtype=meta["dtype"]), meta["vocab_size"]


def _nanogpt_params(stdout: str) -> int:
    m = re.search(r"number of parameters: ([\d.]+)M", stdout)
    return int(float(m.group(1)) * 1e6) if m else 0


if __name__ == "__main__":
    main()
