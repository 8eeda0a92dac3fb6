"""Data preparation speed: llmkit's prepare_data vs the run_clm.py recipe, on tinyshakespeare, in one run.

Both sides use the same BPE tokenizer (vocab 4096), trained once by llmkit and saved; its training time is
reported on its own row. Timed per run, each from a cold cache (a fresh folder):
- llmkit: `prepare_data` with tokenizer.kind=pretrained (segmenting, the seeded split, tokenization with
  `Dataset.map`, writing train.bin/val.bin) plus the block view of block 64;
- run_clm.py: `load_dataset("text", keep_linebreaks=True)` (one row per line), `map(tokenize, batched=True)`,
  then `map(group_texts, batched=True)` into blocks of 64, with the same num_proc.
Prints MB/s (of the UTF-8 corpus) and llmkit's speedup, and writes benchmarks/results/data_prep.json.

    python benchmarks/data_prep.py [--repeats 3] [--num-proc 1 2] [--tokenizers-parallelism false]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time
from itertools import chain

from _common import SHAKESPEARE, report

BLOCK = 64
VOCAB = 4096


def quiet(*_args, **_kwargs):
    pass


def llmkit_prepare(tokenizer_dir: pathlib.Path, work: pathlib.Path, num_proc: int) -> int:
    from llmkit.config import load_config
    from llmkit.data import prepare_data

    cfg = load_config(None, [
        f"data.source={SHAKESPEARE}",
        "tokenizer.kind=pretrained",
        f"tokenizer.name_or_path={tokenizer_dir}",
        f"data.cache_dir={work / 'llmkit_cache'}",
        f"data.num_proc={num_proc}",
        f"data.block_size={BLOCK}",
    ])
    data = prepare_data(cfg, log=quiet)
    assert not data.cache_hit
    blocks = data.train_dataset(BLOCK)
    blocks[len(blocks) - 1]  # the last block is readable
    return data.meta["train_tokens"] + data.meta["val_tokens"]


def run_clm_prepare(tokenizer_dir: pathlib.Path, work: pathlib.Path, num_proc: int) -> int:
    """transformers/examples/pytorch/language-modeling/run_clm.py's data path, with its defaults."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw = load_dataset("text", data_files={"train": str(SHAKESPEARE)}, split="train", keep_linebreaks=True,
                       cache_dir=str(work / "hf_cache"))

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc if num_proc > 1 else None,
                        remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(concatenated[next(iter(examples))])
        total_length = (total_length // BLOCK) * BLOCK
        result = {k: [t[i : i + BLOCK] for i in range(0, total_length, BLOCK)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc if num_proc > 1 else None)
    grouped[len(grouped) - 1]
    return sum(len(ids) for ids in tokenized["input_ids"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold runs per candidate (the median is kept)")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokenizers-parallelism", default="false", choices=["true", "false"],
                        help="the Rust tokenizer's own threads; false makes num_proc the only parallelism")
    args = parser.parse_args()
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} is missing: the benchmark reads ../shared/data/tinyshakespeare.txt")
    os.environ["TOKENIZERS_PARALLELISM"] = args.tokenizers_parallelism
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    import datasets

    from llmkit.tokenizers import train_tokenizer

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    text = SHAKESPEARE.read_text(encoding="utf-8")
    mb = len(text.encode()) / 1e6

    with tempfile.TemporaryDirectory(prefix="llmkit-bench-") as tmp:
        root = pathlib.Path(tmp)
        start = time.perf_counter()
        tokenizer = train_tokenizer("bpe", [text], VOCAB)
        train_s = time.perf_counter() - start
        tokenizer_dir = root / "tokenizer"
        tokenizer.save_pretrained(tokenizer_dir)

        candidates = []
        for n in args.num_proc:
            candidates.append(("run_clm.py (load_dataset text + map + group_texts)", n, run_clm_prepare))
            candidates.append(("llmkit prepare_data", n, llmkit_prepare))
        times = {(name, n): [] for name, n, _ in candidates}
        tokens = {}
        # Interleave rounds so that machine noise hits every candidate alike; a fresh cache folder each run.
        for r in range(args.repeats):
            for name, n, fn in candidates:
                work = root / f"run-{r}-{n}-{fn.__name__}"
                start = time.perf_counter()
                tokens[(name, n)] = fn(tokenizer_dir, work, n)
                times[(name, n)].append(time.perf_counter() - start)

    rows = [{"method": f"BPE training (vocab {VOCAB}, once)", "num_proc": 1, "seconds": train_s,
             "MB_per_s": mb / train_s, "tokens": "-", "speedup": "-"}]
    for name, n, _ in candidates:
        seconds = sorted(times[(name, n)])[len(times[(name, n)]) // 2]
        baseline = sorted(times[(candidates[0][0], n)])[len(times[(candidates[0][0], n)]) // 2]
        rows.append({"method": name, "num_proc": n, "seconds": seconds, "MB_per_s": mb / seconds,
                     "tokens": tokens[(name, n)], "speedup": f"{baseline / seconds:.2f}x"})
    report("data_prep", rows, {
        "corpus": SHAKESPEARE.name, "corpus_mb": mb, "block_size": BLOCK, "vocab_size": VOCAB,
        "repeats": args.repeats, "tokenizers_parallelism": args.tokenizers_parallelism,
        "all_seconds": {f"{name} | num_proc={n}": t for (name, n), t in times.items()},
    })


if __name__ == "__main__":
    main()
