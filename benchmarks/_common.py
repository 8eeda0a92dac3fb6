"""Shared helpers for the benchmarks: a plain-PyTorch nanoGPT reference, timing, and the table/JSON report."""

from __future__ import annotations

import json
import math
import pathlib
import platform
import time

import torch
from torch import nn
from torch.nn import functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SHAKESPEARE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


class NanoGPT(nn.Module):
    """nanoGPT's model.py reduced to what the benchmarks need (baseline, not used by llmkit itself)."""

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, bias=True):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList([_Block(n_embd, n_head, bias) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate_recompute(self, idx, max_new_tokens):
        """The seeds' loop: crop to the context, run the whole window, take the argmax, append."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.block_size :])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx


class _Block(nn.Module):
    def __init__(self, n_embd, n_head, bias=True):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


def quickstart_run(folder: pathlib.Path) -> pathlib.Path:
    """The quickstart model the fine-tuning, instruction and distillation benchmarks start from: `folder` as it is,
    or trained there first with `llmkit train configs/quickstart.yaml` (a few minutes)."""
    import os
    import subprocess
    import sys

    if not (folder / "config.json").exists():
        print(f"pretraining the quickstart model into {folder} ...", flush=True)
        subprocess.run([sys.executable, "-m", "llmkit.cli", "train", str(REPO / "configs/quickstart.yaml"),
                        "--output-dir", str(folder)], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                       stdout=subprocess.DEVNULL)
    return folder


def shakespeare_overrides(work: pathlib.Path) -> list[str]:
    """The overrides that point a config at tinyshakespeare with its token cache under `work`."""
    return [f"data.source={SHAKESPEARE}", f"data.cache_dir={work / 'cache'}"]


def prepare_once(work: pathlib.Path, configs) -> None:
    """Tokenize tinyshakespeare for each config into `work`'s cache, before any timing (`llmkit prepare`)."""
    import subprocess
    import sys

    for config in configs:
        subprocess.run([sys.executable, "-m", "llmkit.cli", "prepare", str(config), *shakespeare_overrides(work)],
                       cwd=work, check=True, capture_output=True)


GPT2_FORM = ["model.position_embedding_type=learned", "model.activation_function=gelu_new", "model.qk_norm=false",
             "model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.n_positions=256",
             "training.max_steps=300", "training.eval_steps=300", "sample.max_new_tokens=0"]


def gpt2_form_run(folder: pathlib.Path) -> pathlib.Path:
    """A run in the form with stock equivalents (GPT-2: learned positions, tanh GELU; nanoGPT's baby-GPT shape,
    6/6/384, a 256-token context), trained briefly on the built-in corpus: what the serving and GGUF benchmarks
    export (`--to gpt2`, `--to gguf`). `folder` as it is, or trained there first (about five minutes)."""
    import os
    import subprocess
    import sys

    if not (folder / "config.json").exists():
        print(f"training a GPT-2-form run into {folder} ...", flush=True)
        subprocess.run([sys.executable, "-m", "llmkit.cli", "train", str(REPO / "configs/quickstart.yaml"),
                        "--output-dir", str(folder), *GPT2_FORM], check=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL)
    return folder


def time_it(fn, warmup: int, iters: int) -> float:
    """Median seconds per call of fn() after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(w) for c, w in zip(columns, widths)))


def report(name: str, rows: list[dict], extra: dict | None = None, table: bool = True) -> pathlib.Path:
    """Print rows as a table and write them (with the commit, date and machine) to benchmarks/results/<name>.json."""
    if table:
        print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, **provenance(), "rows": rows, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def provenance() -> dict:
    """What a figure needs to be trusted later: the commit, the date, and the machine it was measured on."""
    import datetime
    import importlib.metadata
    import os
    import subprocess

    repo = pathlib.Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    flags = []
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "fma", "asimd", "sve")
                flags = sorted(set(line.split(":", 1)[1].split()) & set(wanted))
                break
        model = next((line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "commit": commit,
        "uncommitted_changes": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu": model,
            "cpu_flags": flags,
            "mkl": torch.backends.mkl.is_available(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": version("transformers"),
            "peft": version("peft"),
            "accelerate": version("accelerate"),
        },
    }


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)
