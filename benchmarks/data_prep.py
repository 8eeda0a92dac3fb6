"""Data preparation at scale: llmkit's prepare vs the raw tokenizer and the run_clm.py recipe, MB/s and peak memory.

Corpora of 100 MB and 1 GB are built from tinyshakespeare with its lines shuffled (`--sizes`, in MB). Every
candidate uses the same byte-level BPE (vocab 4096, trained on tinyshakespeare) and runs in its own process, so
its peak resident memory (ru_maxrss) is its own:
- raw `tokenizers` `encode_batch` (and `encode_batch_fast`, which skips character offsets) over the whole file
  read into memory, in batches of 1024 lines-chunks of ~2 KB: the tokenizer's own speed, the ceiling;
- `llmkit prepare` (the corpus hashed, split, tokenized and written to train.bin/val.bin), with the Rust
  tokenizer's threads (num_proc 1) and with `data.num_proc` worker processes instead (2), and on one core
  (num_proc 1, TOKENIZERS_PARALLELISM=false), to show the scaling;
- the run_clm.py way (`load_dataset("text")`, `map(tokenize)`, `map(group_texts)`, num_proc 2), at the smallest
  size only (it runs at a fraction of a MB/s: an hour per GB here);
- streaming training (`data.streaming=true`) on the largest corpus: seconds from start to the first step, and
  peak memory over 20 steps.
Writes benchmarks/results/data_prep.json.

    python benchmarks/data_prep.py [--sizes 100 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from itertools import chain

from _common import SHAKESPEARE, print_table, report

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 4096
BLOCK = 256


def build_corpus(path: pathlib.Path, mb: int) -> pathlib.Path:
    lines = SHAKESPEARE.read_text().split("\n")
    rng = random.Random(0)
    written = 0
    with path.open("w") as f:
        while written < mb * 2**20:
            rng.shuffle(lines)
            text = "\n".join(lines) + "\n"
            f.write(text)
            written += len(text.encode())
    return path


# ---- the candidates, each run as `python data_prep.py --worker NAME CORPUS TOKENIZER WORK` ----

def raw(corpus, tokenizer, work, fast=False):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(pathlib.Path(tokenizer) / "tokenizer.json"))
    lines = pathlib.Path(corpus).read_text().split("\n")
    chunks = ["\n".join(lines[i : i + 40]) + "\n" for i in range(0, len(lines), 40)]
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    return sum(len(e.ids) for i in range(0, len(chunks), 1024) for e in encode(chunks[i : i + 1024],
                                                                                add_special_tokens=False))


def llmkit(corpus, tokenizer, work, num_proc=1):
    from llmkit.config import load_config
    from llmkit.data import prepare_data

    cfg = load_config(None, [f"data.source={corpus}", "tokenizer.kind=pretrained", f"tokenizer.name_or_path={tokenizer}",
                             f"data.cache_dir={pathlib.Path(work) / 'cache'}", f"data.num_proc={num_proc}",
                             f"data.block_size={BLOCK}"])
    data = prepare_data(cfg, log=lambda *a: None)
    return data.meta["train_tokens"] + data.meta["val_tokens"]


def run_clm(corpus, tokenizer, work, num_proc=2):
    """transformers/examples/pytorch/language-modeling/run_clm.py's data path, with its defaults."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    raw_ds = load_dataset("text", data_files={"train": str(corpus)}, split="train", keep_linebreaks=True,
                          cache_dir=str(pathlib.Path(work) / "hf_cache"))
    tokenized = raw_ds.map(lambda ex: tok(ex["text"]), batched=True, num_proc=num_proc, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // BLOCK) * BLOCK
        return {k: [t[i : i + BLOCK] for i in range(0, total, BLOCK)] for k, t in concatenated.items()}

    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc)
    return len(grouped) * BLOCK


def streaming_first_step(corpus, tokenizer, work):
    from transformers import TrainerCallback

    from llmkit.config import load_config
    from llmkit.training import train

    first = {}

    class First(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            first.setdefault("seconds", time.perf_counter() - START)

    cfg = load_config(None, [f"data.source={corpus}", "data.streaming=true", "tokenizer.kind=pretrained",
                             f"tokenizer.name_or_path={tokenizer}", "data.val_ratio=0", "model.n_positions=256",
                             "training.max_steps=20", "training.per_device_train_batch_size=8",
                             "training.report_to=none", "training.disable_tqdm=true", "sample.max_new_tokens=0"])
    train(cfg, output_dir=str(pathlib.Path(work) / "run"), log=lambda *a: None, callbacks=[First()])
    return first["seconds"]


START = time.perf_counter()
WORKERS = {
    "raw encode_batch": (raw, {}),
    "raw encode_batch_fast": (raw, {"fast": True}),
    "llmkit prepare (num_proc 1, tokenizer threads)": (llmkit, {"num_proc": 1}),
    "llmkit prepare (num_proc 2 processes)": (llmkit, {"num_proc": 2}),
    "llmkit prepare (one core)": (llmkit, {"num_proc": 1}),
    "run_clm.py way (num_proc 2)": (run_clm, {"num_proc": 2}),
    "streaming training: first step": (streaming_first_step, {}),
}


def run(name: str, corpus: pathlib.Path, tokenizer: pathlib.Path, work: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
               TOKENIZERS_PARALLELISM="false" if "one core" in name or "processes" in name else "true")
    out = work / "result.json"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", name, str(corpus), str(tokenizer), str(work)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "log.txt", "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{name} failed: see {work / 'log.txt'}")
    return {"value": json.loads(out.read_text())["value"], "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="corpus sizes in MB")
    parser.add_argument("--methods", nargs="+", help="run only the methods whose names contain one of these words, "
                        "replacing their rows in the last results (the rest are kept)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, corpus, tokenizer, work = args.worker
        fn, kwargs = WORKERS[name]
        value = fn(corpus, tokenizer, work, **kwargs)
        (pathlib.Path(work) / "result.json").write_text(json.dumps({"value": value}))
        return
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} is missing: the benchmark builds its corpora from tinyshakespeare")
    from llmkit.tokenizers import train_tokenizer

    root = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-data-bench-"))
    tokenizer = root / "tokenizer"
    train_tokenizer("bpe", [SHAKESPEARE.read_text()], VOCAB).save_pretrained(tokenizer)
    rows = []
    for mb in args.sizes:
        corpus = build_corpus(root / f"corpus-{mb}MB.txt", mb)
        size = corpus.stat().st_size / 2**20
        names = [n for n in WORKERS if "streaming" not in n and ("run_clm" not in n or mb == min(args.sizes))]
        if mb == max(args.sizes):
            names.append("streaming training: first step")
        if args.methods:
            names = [n for n in names if any(m in n for m in args.methods)] + ["raw encode_batch"]
        for name in names:
            work = root / f"{mb}-{len(rows)}"
            work.mkdir()
            r = run(name, corpus, tokenizer, work)
            row = {"corpus_MB": round(size), "method": name, "seconds": r["seconds"],
                   "MB_per_s": size / r["seconds"], "peak_rss_MB": round(r["peak_rss_mb"])}
            if "streaming" in name:
                row.update(seconds=r["value"], MB_per_s="-")
            rows.append(row)
            print_table([row])
        corpus.unlink()
    if args.methods:  # keep the other rows of the last results
        from _common import RESULTS

        last = json.loads((RESULTS / "data_prep.json").read_text())["rows"]
        mine = {(r["corpus_MB"], r["method"]) for r in rows}
        rows = [r for r in last if (r["corpus_MB"], r["method"]) not in mine] + rows
    for size in {r["corpus_MB"] for r in rows}:
        group = [r for r in rows if r["corpus_MB"] == size]
        raw_mb_s = next(r["MB_per_s"] for r in group if r["method"] == "raw encode_batch")
        for r in group:
            r["vs_raw_encode_batch"] = f"{r['MB_per_s'] / raw_mb_s:.2f}x" if r["MB_per_s"] != "-" else "-"
    print()
    report("data_prep", rows, extra={"vocab_size": VOCAB, "block_size": BLOCK})


if __name__ == "__main__":
    main()
