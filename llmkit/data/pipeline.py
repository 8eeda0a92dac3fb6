"""From a config's `tokenizer` and `data` sections to token streams on disk and the datasets training reads.

Design choices:
- Preparing streams: one pass hashes the sources (the cache key) and measures them, a second feeds a new
  tokenizer (BPE and word vocabularies from at most `tokenizer.sample_chars`, spread over the corpus), a third
  tokenizes ~2 KB segments (see `sources`: files are read in chunks) in batches with the fast tokenizer's Rust
  batch encoder, or `data.num_proc` worker processes, appending tokens to disk as they come: no pass holds the
  corpus in memory, and tokenizing runs at the batch encoder's own speed (benchmarks/data_prep.py). EOS ends every
  document. Structured sources (jsonl/csv/parquet, Hub datasets) are read with `datasets`.
- The cache holds each split's token stream as a flat binary file (nanoGPT's train.bin: uint16 when the
  vocabulary fits, else uint32), memory-mapped when read, beside the tokenizer that produced it. Its key
  hashes the corpus content, the tokenizer's content and every setting that changes the stream (split,
  seed, cleaning); blocks are views computed at load time, so no block-size-dependent result is ever cached.
- A cache entry is written in a temporary folder and renamed into place only when complete, so an
  interrupted run leaves nothing a later run would trust.
- Training examples are blocks of `block_size + 1` tokens: inputs are the first `block_size`, targets the last
  `block_size` (`shift_labels`), so every position is scored. `packing: blocks` tiles the stream with a
  stride of `block_size` (consecutive blocks share one token, so no transition is lost); `packing: random`
  draws nanoGPT-style random windows whose offsets are a pure function of (seed, index), so a resumed run
  sees the same windows.
- Streaming mode reads, tokenizes and packs on the fly (`datasets.IterableDataset`): memory stays flat.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import IterableDataset

from ..config import Config, ConfigError, first_line
from ..tokenizers import load_tokenizer, tokenizer_hash, train_tokenizer
from .sources import (
    DataError,
    Segment,
    cache_root,
    in_validation,
    iter_segments,
    source_fingerprint,
)

CACHE_VERSION = 1


def default_cache_dir() -> pathlib.Path:
    return cache_root() / "data"


@dataclass
class PreparedData:
    """A tokenizer and its token streams (memory-mapped), or a streaming recipe when `streaming` is set."""

    tokenizer: object
    train: np.ndarray | None
    val: np.ndarray | None
    meta: dict
    path: pathlib.Path | None = None
    cache_hit: bool = False
    stream: dict = field(default_factory=dict)

    def train_dataset(self, block_size: int, packing: str = "blocks", seed: int = 1337):
        if self.train is None:
            return StreamingBlocks(block_size=block_size, split="train", **self.stream)
        if packing == "random":
            return RandomWindows(self.train, block_size, seed)
        return PackedBlocks(self.train, block_size)

    def eval_dataset(self, block_size: int):
        if self.train is None:
            d = self.stream["cfg"].data
            if not d.val_source and d.val_ratio == 0:
                return None  # no validation stream, as in memory
            return StreamingBlocks(block_size=block_size, split="validation", **self.stream)
        return PackedBlocks(self.val, block_size) if self.val is not None and len(self.val) else None

    def collator(self):
        return BlockCollator()


class PackedBlocks(torch.utils.data.Dataset):
    """Block i = tokens[i*T : i*T + T + 1]: T inputs and their T next-token targets."""

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.tokens, self.block_size = tokens, block_size
        self.n = (len(tokens) - 1) // block_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        T = self.block_size
        return {"input_ids": torch.from_numpy(self.tokens[i * T : i * T + T + 1].astype(np.int64))}


class RandomWindows(PackedBlocks):
    """nanoGPT's random windows; the offsets are drawn from the seed, so window i is the same in every run
    (a resumed run included)."""

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int):
        super().__init__(tokens, block_size)
        # all offsets drawn at once (a generator per window costs ~15 us, measurable in a small model's step)
        self.starts = np.random.default_rng(seed).integers(0, len(tokens) - block_size, size=self.n)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        T = self.block_size
        start = int(self.starts[i])
        return {"input_ids": torch.from_numpy(self.tokens[start : start + T + 1].astype(np.int64))}


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Blocks packed on the fly from a `datasets.IterableDataset` of tokenized segments."""

    def __init__(self, block_size: int, split: str, cfg: Config, tokenizer):
        self.block_size, self.split, self.cfg, self.tokenizer = block_size, split, cfg, tokenizer

    def __iter__(self) -> Iterator[dict]:
        T = self.block_size
        buffer: list[int] = []
        for row in token_stream(self.cfg, self.tokenizer, self.split):
            buffer.extend(row["input_ids"])
            while len(buffer) >= T + 1:
                yield {"input_ids": torch.tensor(buffer[: T + 1], dtype=torch.long)}
                del buffer[:T]


class BlockCollator:
    """Stack blocks of T+1 tokens into `input_ids` (T), `labels` (= input_ids, the HF convention) and
    `shift_labels` (the T next tokens, used by the loss as they are)."""

    def __call__(self, examples: list[dict]) -> dict:
        blocks = torch.stack([e["input_ids"] for e in examples])
        inputs = blocks[:, :-1].contiguous()
        return {"input_ids": inputs, "labels": inputs, "shift_labels": blocks[:, 1:].contiguous()}


def validate_data_config(cfg: Config) -> None:
    d = cfg.data
    if not 0.0 <= d.val_ratio < 1.0:
        raise ConfigError(f"data.val_ratio must be in [0, 1), got {d.val_ratio}")
    if d.val_split not in ("random", "tail"):
        raise ConfigError(f"data.val_split={d.val_split!r} is unknown; use random or tail")
    if d.format not in ("text", "instruct", "preference"):
        raise ConfigError(f"data.format={d.format!r} is unknown; use text, instruct or preference")
    if d.format == "text" and d.packing not in ("blocks", "random"):
        raise ConfigError(f"data.packing={d.packing!r} is unknown for text; use blocks or random")
    if cfg.block_size <= 0:
        raise ConfigError(f"data.block_size must be positive, got {cfg.block_size}")
    if cfg.block_size > cfg.model.n_positions and cfg.model.position_embedding_type != "rotary":
        raise ConfigError(
            f"data.block_size={cfg.block_size} exceeds the context model.n_positions={cfg.model.n_positions}; "
            "lower data.block_size or raise model.n_positions"
        )
    if d.errors not in ("strict", "replace", "ignore"):
        raise ConfigError(f"data.errors={d.errors!r} is unknown; use strict, replace or ignore")
    from ..tokenizers import KINDS

    if cfg.tokenizer.kind not in KINDS:
        raise ConfigError(f"tokenizer.kind={cfg.tokenizer.kind!r} is unknown; use one of {', '.join(KINDS)}")
    if cfg.tokenizer.kind == "pretrained" and not cfg.tokenizer.name_or_path:
        raise ConfigError("tokenizer.kind=pretrained needs tokenizer.name_or_path (a folder or a Hub id)")
    if d.num_proc < 1:
        raise ConfigError(f"data.num_proc must be at least 1, got {d.num_proc}")
    if d.streaming and d.val_split == "tail" and not d.val_source:
        raise ConfigError("data.val_split=tail needs the corpus length; in streaming mode use random or val_source")


def _segments(cfg: Config, source: str) -> Iterator[Segment]:
    d = cfg.data
    return iter_segments(source, clean=d.clean, text_field=d.text_field, errors=d.errors, hub_config=d.hub_config,
                         hub_split=d.hub_split, streaming=d.streaming)


def split_segments(cfg: Config, train_chars: int | None = None) -> Iterator[tuple[str, Segment]]:
    """Yield (split, segment) in corpus order: train source first, then the validation source if any.

    `data.val_split: tail` (nanoGPT's split: the last `val_ratio` of the characters, whole segments, is validation)
    needs the source's length in characters, `train_chars` (from `scan`)."""
    d = cfg.data
    tail = d.val_split == "tail" and not d.val_source and d.val_ratio > 0
    if tail and train_chars is None:
        raise ValueError("a tail split needs the corpus length: pass train_chars (see scan)")
    done = 0
    for i, seg in enumerate(_segments(cfg, d.source)):
        done += len(seg.text)
        if d.val_source or d.val_ratio == 0:
            yield "train", seg
        elif tail:  # validation once what follows this segment is under val_ratio of the whole
            yield ("validation" if train_chars - done < d.val_ratio * train_chars else "train"), seg
        else:
            yield ("validation" if in_validation(i, d.val_ratio, d.seed) else "train"), seg
    if d.val_source:
        for seg in _segments(cfg, d.val_source):
            yield "validation", seg


@dataclass
class Scan:
    """One streaming pass over the sources: their content hash and size, without holding the text."""

    fingerprint: str
    train_chars: int  # of data.source
    chars: int  # of every source
    has_text: bool


def scan(cfg: Config) -> Scan:
    d = cfg.data
    h = hashlib.sha256()
    sizes, has_text = [], False
    for source in filter(None, (d.source, d.val_source)):
        total = 0
        h.update(f"source\0{len(sizes)}\0".encode())
        for seg in _segments(cfg, source):
            h.update(f"{int(seg.doc_end)}\0{len(seg.text)}\0".encode())
            h.update(seg.text.encode())
            total += len(seg.text)
            has_text = has_text or not seg.text.isspace()
        sizes.append(total)
    return Scan(h.hexdigest(), sizes[0], sum(sizes), has_text)


def _tokenize_batch(tokenizer):
    eos = tokenizer.eos_token_id

    def fn(batch):
        # segments are longer than a model's context on purpose (blocks are cut later): no length warning
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [x + [eos] if end else x for x, end in zip(ids, batch["doc_end"])]}

    return fn


def token_stream(cfg: Config, tokenizer, split: str) -> IterableDataset:
    """Streaming: tokenized segments of one split, read lazily with `datasets.IterableDataset`."""

    def gen():
        for s, seg in split_segments(cfg):
            if s == split:
                yield {"text": seg.text, "doc_end": seg.doc_end}

    ds = IterableDataset.from_generator(gen)
    return ds.map(_tokenize_batch(tokenizer), batched=True, batch_size=64, remove_columns=["text", "doc_end"])


def _settings_key(cfg: Config) -> dict:
    d = cfg.data
    return {
        "val_ratio": d.val_ratio if not d.val_source else None,
        "val_split": d.val_split,
        "seed": d.seed,
        "errors": d.errors,
        "text_field": d.text_field,
        "clean": vars(d.clean),
        "segment_version": CACHE_VERSION,
    }


def _tokenizer_settings(cfg: Config) -> dict:
    t = cfg.tokenizer
    return {"kind": t.kind, "vocab_size": t.vocab_size, "min_frequency": t.min_frequency, "lowercase": t.lowercase,
            "sample_chars": t.sample_chars if t.kind != "char" else None}


def _atomic_dir(final: pathlib.Path) -> pathlib.Path:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    tmp.mkdir(parents=True)
    return tmp


def _commit_dir(tmp: pathlib.Path, final: pathlib.Path, marker: str) -> None:
    if final.exists() and not (final / marker).exists():  # an incomplete entry: never trusted, replaced
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished the same entry first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _get_tokenizer(cfg: Config, corpus_fp: str, train_texts, cache_root: pathlib.Path, log):
    t = cfg.tokenizer
    if t.kind == "pretrained":
        try:
            return train_tokenizer("pretrained", name_or_path=t.name_or_path,
                                   trust_remote_code=cfg.model.trust_remote_code)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"tokenizer.name_or_path={t.name_or_path}: cannot load a tokenizer ({first_line(err)})"
            ) from None
    key = _hash({"corpus": corpus_fp, **_tokenizer_settings(cfg)})
    folder = cache_root / "tokenizers" / key
    if (folder / "tokenizer.json").exists():
        return load_tokenizer(str(folder))
    log(f"training a {t.kind} tokenizer ...")
    try:
        tok = train_tokenizer(t.kind, train_texts(), t.vocab_size, min_frequency=t.min_frequency,
                              lowercase=t.lowercase)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    tmp = _atomic_dir(folder)
    tok.save_pretrained(tmp)
    _commit_dir(tmp, folder, "tokenizer.json")
    return tok


def _vocabulary_splits(cfg: Config) -> tuple[str, ...]:
    """BPE and word vocabularies are learned from the training split only; a char alphabet from all text, so no
    validation character becomes <|unk|> (nanoGPT's way)."""
    return ("train", "validation") if cfg.tokenizer.kind == "char" else ("train",)


def _vocabulary_texts(cfg: Config, plan: Scan | None = None) -> Iterator[str]:
    """The texts a new tokenizer learns from: every segment of `_vocabulary_splits`, except that BPE and word
    vocabularies of a corpus larger than `tokenizer.sample_chars` learn from every k-th training segment (spread
    over the whole corpus; in streaming mode, whose length is unknown, the first `sample_chars`)."""
    learn_from = _vocabulary_splits(cfg)
    budget = cfg.tokenizer.sample_chars if cfg.tokenizer.kind != "char" else None
    every = 1
    if budget and plan is not None and plan.train_chars > budget:
        every = -(-plan.train_chars // budget)
    taken = 0
    for i, (split, seg) in enumerate(split_segments(cfg, plan.train_chars if plan else None)):
        if split not in learn_from or i % every:
            continue
        if budget and plan is None and taken >= budget:
            return
        taken += len(seg.text)
        yield seg.text


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def prepare_data(cfg: Config, log=print) -> PreparedData:
    """Train or load the tokenizer, tokenize both splits (or reuse the cache), and return them."""
    validate_data_config(cfg)
    start = time.perf_counter()
    cache_root = pathlib.Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()

    if cfg.data.streaming:
        return _prepare_streaming(cfg, cache_root, log)
    if cfg.data.format == "preference":  # a pretrained model's tokenizer (config.py requires from_pretrained)
        from .preference import prepare_preference

        data = prepare_preference(cfg, _get_tokenizer(cfg, "", None, cache_root, log), log)
        data.meta["seconds"] = time.perf_counter() - start
        return data
    if cfg.data.format == "instruct":
        from .instruct import prepare_instruct

        def tokenizer_for(texts):
            fp = _hash({"instruct": source_fingerprint(cfg.data.source), "val": source_fingerprint(cfg.data.val_source),
                        "template": cfg.data.chat_template, **_settings_key(cfg)})
            return _get_tokenizer(cfg, fp, texts, cache_root, log)

        data = prepare_instruct(cfg, tokenizer_for, log)
        data.meta["seconds"] = time.perf_counter() - start
        return data

    plan = scan(cfg)
    if not plan.has_text:
        raise DataError(f"data.source {cfg.data.source!r}: no text left (after cleaning); check the files")
    corpus_fp = plan.fingerprint
    tokenizer = _get_tokenizer(cfg, corpus_fp, lambda: _vocabulary_texts(cfg, plan), cache_root, log)
    tok_hash = tokenizer_hash(tokenizer)
    key = _hash({"corpus": corpus_fp, "tokenizer": tok_hash, **_settings_key(cfg)})
    folder = cache_root / key
    hit = (folder / "meta.json").exists()
    if hit:
        meta = json.loads((folder / "meta.json").read_text())
    else:
        tmp = _atomic_dir(folder)
        try:
            meta = _tokenize_to(tmp, plan, tokenizer, cfg, log)
            meta.update(corpus_fingerprint=corpus_fp, tokenizer_hash=tok_hash, settings=_settings_key(cfg))
            tokenizer.save_pretrained(tmp / "tokenizer")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks the entry complete
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _commit_dir(tmp, folder, "meta.json")
        meta = json.loads((folder / "meta.json").read_text())

    dtype = np.dtype(meta["dtype"])
    train = np.memmap(folder / "train.bin", dtype=dtype, mode="r") if meta["train_tokens"] else np.zeros(0, dtype)
    val = np.memmap(folder / "val.bin", dtype=dtype, mode="r") if meta["val_tokens"] else None
    data = PreparedData(tokenizer, train, val, meta, folder, hit)
    check_enough_tokens(data, cfg)
    if val is None and cfg.data.val_ratio > 0 and not cfg.data.val_source:
        log(f"warning: data.val_ratio={cfg.data.val_ratio} drew no validation text from this small corpus (it "
            "splits ~2 KB segments), so there will be no evaluation; set data.val_split=tail or data.val_source")
    meta["seconds"] = time.perf_counter() - start
    return data


def _tokenize_to(folder: pathlib.Path, plan: Scan, tokenizer, cfg: Config, log) -> dict:
    """Tokenize the segments of both splits, streaming: batches of segments go through the fast tokenizer's batch
    encoder (its own threads) or, with `data.num_proc` > 1, through that many worker processes, and the tokens
    are appended to train.bin / val.bin as they come, so memory stays flat however large the corpus."""
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id}
    counts = {split: {"chars": 0, "bytes": 0, "tokens": 0} for split in ("train", "val")}
    files = {"train": (folder / "train.bin").open("wb"), "val": (folder / "val.bin").open("wb")}
    encode = _Encoder(tokenizer, dtype)
    pool = None
    if cfg.data.num_proc > 1:
        import multiprocessing

        # the encoder (and its tokenizer) goes to each worker once, at the fork; tasks carry only their text
        pool = multiprocessing.get_context("fork").Pool(cfg.data.num_proc, initializer=_start_worker,
                                                        initargs=(encode,))
    try:
        batches = _batches(split_segments(cfg, plan.train_chars), counts)
        results = _in_order(pool, _encode_in_worker, batches, 2 * cfg.data.num_proc) if pool else map(encode, batches)
        for split, tokens in results:
            files[split].write(tokens.tobytes())
            counts[split]["tokens"] += len(tokens)
    finally:
        for f in files.values():
            f.close()
        if pool is not None:
            pool.terminate()
    for split, c in counts.items():
        meta.update({f"{split}_{k}": v for k, v in c.items()})
    return meta


def _batches(pairs, counts: dict, size: int = 1024) -> Iterator[tuple[str, list[str], list[bool]]]:
    """Segments of each split, `size` at a time and in corpus order within the split (the two splits interleave
    segment by segment: batching them apart keeps the batches large), counting characters and bytes."""
    pending: dict[str, tuple[list[str], list[bool]]] = {"train": ([], []), "val": ([], [])}
    for s, seg in pairs:
        split = "train" if s == "train" else "val"
        texts, ends = pending[split]
        texts.append(seg.text)
        ends.append(seg.doc_end)
        counts[split]["chars"] += len(seg.text)
        counts[split]["bytes"] += len(seg.text.encode())
        if len(texts) == size:
            yield split, texts, ends
            pending[split] = ([], [])
    for split, (texts, ends) in pending.items():
        if texts:
            yield split, texts, ends


def _in_order(pool, fn, items, window: int):
    """`pool.imap(fn, items)` with at most `window` items in flight: Pool.imap reads its input as fast as it can, so
    a corpus would pile up in the task queue; this keeps memory flat."""
    from collections import deque

    pending = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


_worker_encoder = None  # in a worker process: the parent's _Encoder, inherited at the fork


def _start_worker(encoder) -> None:
    global _worker_encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker per core: no thread pool inside each
    _worker_encoder = encoder


def _encode_in_worker(batch):
    return _worker_encoder(batch)


class _Encoder:
    """(split, segments, doc ends) -> (split, token array with an EOS after every document's last segment)."""

    def __init__(self, tokenizer, dtype):
        self.tokenizer, self.dtype = tokenizer, dtype

    def __call__(self, batch):
        split, texts, ends = batch
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        eos = self.tokenizer.eos_token_id
        if backend is not None:  # the Rust batch encoder; without character offsets when it can
            fast = getattr(backend, "encode_batch_fast", backend.encode_batch)
            ids = [e.ids for e in fast(texts, add_special_tokens=False)]
        else:
            ids = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        pieces = [np.asarray(x + [eos] if end else x, dtype=self.dtype) for x, end in zip(ids, ends)]
        return split, np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)


def check_enough_tokens(data: PreparedData, cfg: Config) -> None:
    need = cfg.block_size + 1
    for name, tokens in (("training", data.train), ("validation", data.val)):
        if tokens is not None and 0 < len(tokens) < need or (name == "training" and len(tokens) == 0):
            raise DataError(
                f"the {name} split has {len(tokens)} tokens but one block needs {need} (data.block_size + 1); "
                f"use more text or set data.block_size={max(1, len(tokens) - 1)} or lower"
            )


def _prepare_streaming(cfg: Config, cache_root: pathlib.Path, log) -> PreparedData:
    if cfg.tokenizer.kind == "pretrained":
        tokenizer = _get_tokenizer(cfg, "", None, cache_root, log)
    else:
        # The tokenizer is trained on a pass over the training stream (the trainer keeps counts, not text).
        d = cfg.data
        fp = _hash({"streaming": source_fingerprint(d.source), "val": source_fingerprint(d.val_source),
                    "hub": [d.hub_config, d.hub_split], **_settings_key(cfg)})
        tokenizer = _get_tokenizer(cfg, fp, lambda: _vocabulary_texts(cfg), cache_root, log)
    meta = {"vocab_size": len(tokenizer), "streaming": True, "eos_token_id": tokenizer.eos_token_id}
    return PreparedData(tokenizer, None, None, meta, stream={"cfg": cfg, "tokenizer": tokenizer})


def summary(data: PreparedData, block_size: int) -> str:
    """A short report of what was prepared."""
    if not isinstance(data, PreparedData):
        from .instruct import InstructData
        from .instruct import summary as instruct_summary
        from .preference import summary as preference_summary

        return instruct_summary(data) if isinstance(data, InstructData) else preference_summary(data)
    m = data.meta
    if m.get("streaming"):
        return f"streaming from {data.stream['cfg'].data.source}; vocabulary {m['vocab_size']}"
    lines = [f"{'split':<11}{'chars':>12}{'tokens':>12}{'chars/token':>13}{'blocks':>9}"]
    for name, prefix, tokens in (("train", "train", data.train), ("validation", "val", data.val)):
        n_tokens = m[f"{prefix}_tokens"]
        if not n_tokens:
            continue
        blocks = (len(tokens) - 1) // block_size
        lines.append(
            f"{name:<11}{m[prefix + '_chars']:>12,}{n_tokens:>12,}{m[prefix + '_chars'] / n_tokens:>13.2f}{blocks:>9,}"
        )
    lines.append(
        f"vocabulary {m['vocab_size']:,}; block {block_size}; {'cache hit' if data.cache_hit else 'tokenized'} "
        f"in {m.get('seconds', 0):.1f}s; saved in {data.path}"
    )
    return "\n".join(lines)
