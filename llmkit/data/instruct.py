"""Instruction data (`data.format: instruct`): prompt/response rows or chat `messages`, rendered with a chat
template stored in the tokenizer, labelled so that the loss falls on the answers.

Design choices:
- The template is the tokenizer's own `chat_template` (Jinja), so `apply_chat_template`, `pipeline()` with
  messages and the Hub all render what training saw. The default is the curriculum's
  `<|user|>{question}\\n<|assistant|>{answer}<|endoftext|>` (with `<|system|>` for system messages); any template
  can be given (`data.chat_template`, a string or a .jinja file). Its `<|...|>` role markers become special tokens
  when the tokenizer lacks them (the embeddings then grow, and train, under LoRA too).
- Labels: -100 on every prompt and padding token, the token ids on every answer token (and its end-of-turn token,
  so the model learns to stop). Each assistant turn's span is found by rendering the conversation up to it (with
  the generation prompt) and through it, so any template works, multi-turn included.
- Examples are packed into one row per batch with position ids that restart at each example (transformers'
  `DataCollatorWithFlattening`): transformers' mask then keeps attention inside each example. `data.packing:
  padded` pads to the longest example of the batch instead (benchmarks/instruct.py measures both).
- Examples longer than the context are truncated or dropped (`data.overlong`), counted and reported.
- `builtin-instruct` is an instruction set built offline: "What does `module.function` do?" answered by the first
  sentence of the function's docstring, for functions of common standard-library modules.
"""

from __future__ import annotations

import functools
import pathlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..config import Config, ConfigError, first_line
from .sources import DataError, quiet_datasets, row_split

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MARKER = re.compile(r"<\|[A-Za-z0-9_]+\|>")
BUILTIN = "builtin-instruct"
ROLES = ("system", "user", "assistant")
TABLES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def chat_template(cfg: Config) -> str:
    given = cfg.data.chat_template
    if not given:
        return DEFAULT_CHAT_TEMPLATE
    path = pathlib.Path(given).expanduser()
    if len(given) < 4096 and given.endswith(".jinja"):
        if not path.is_file():
            raise ConfigError(f"data.chat_template {given}: no such file; pass a Jinja template string or a .jinja file")
        return path.read_text()
    return given


def prepare_tokenizer(tokenizer, cfg: Config):
    """Give `tokenizer` the run's chat template and any role marker it lacks (as special tokens)."""
    template = chat_template(cfg)
    markers = cfg.data.special_tokens if cfg.data.special_tokens is not None else MARKER.findall(template)
    vocab = tokenizer.get_vocab()
    missing = list(dict.fromkeys(m for m in markers if m not in vocab))
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = template
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                      tokenize=False)
    except Exception as err:  # noqa: BLE001 - jinja raises many types
        raise ConfigError(f"data.chat_template does not render ({first_line(err)}); fix the Jinja template") from None
    return tokenizer


# ---- rows ----

def read_rows(source: str, cfg: Config) -> Iterator[tuple[int, dict]]:
    """(index, row) of an instruction source: builtin-instruct, a jsonl/csv/parquet file, or a Hub dataset."""
    if source == BUILTIN:
        yield from enumerate(builtin_instruct_rows())
        return
    from datasets import load_dataset

    path = pathlib.Path(source).expanduser()
    try:
        if path.is_file():
            builder = TABLES.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{source}: instruction data is read from .jsonl, .csv or .parquet files (or a Hub "
                                "dataset); convert it or set data.format=text")
            with quiet_datasets():
                ds = load_dataset(builder, data_files=str(path), split="train")
        elif path.exists():
            raise DataError(f"{source}: a folder; point data.source at one .jsonl, .csv or .parquet file")
        else:
            ds = load_dataset(source, cfg.data.hub_config, split=cfg.data.hub_split)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types
        raise DataError(f"data.source {source!r}: cannot be read as instruction data ({first_line(err)})") from None
    yield from enumerate(ds)


def to_messages(row: dict, index: int, source: str, cfg: Config) -> list[dict]:
    d = cfg.data
    where = f"{source} row {index}"
    if d.messages_field in row and row[d.messages_field] is not None:
        messages = row[d.messages_field]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: {d.messages_field} must be a non-empty list of {{role, content}}")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: each message needs a role (system, user, assistant) and a text content; "
                                f"got {m!r}"[:300])
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise DataError(f"{where}: no assistant message with text: nothing to learn from")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if d.prompt_field in row and d.response_field in row:
        prompt, response = row[d.prompt_field], row[d.response_field]
        if response is None or not str(response).strip():
            raise DataError(f"{where}: the answer ({d.response_field}) is empty; remove the row or fill it in")
        return [{"role": "user", "content": str(prompt or "")}, {"role": "assistant", "content": str(response)}]
    raise DataError(
        f"{where}: no {d.prompt_field}/{d.response_field} columns and no {d.messages_field} list; its columns are "
        f"{', '.join(map(str, row))}; set data.prompt_field and data.response_field (or data.messages_field)"
    )


# ---- tokens and labels ----

def encode(messages: list[dict], tokenizer, *, train_on_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: labels are -100 except on the assistant answers."""
    def ids_of(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def render(msgs, prompt=False) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    ids = ids_of(render(messages))
    if train_on_prompt:
        return ids, list(ids)
    labels = [-100] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = ids_of(render(messages[:i], prompt=True)), ids_of(render(messages[: i + 1]))
        if ids[: len(before)] != before or ids[: len(through)] != through:
            raise ConfigError("data.chat_template renders turns that do not tokenize as prefixes of the whole "
                              "conversation; separate turns with special tokens (such as <|user|>)")
        if not through or through[-1] != tokenizer.eos_token_id:
            raise ConfigError(f"data.chat_template never ends an answer with the end-of-turn token "
                              f"{tokenizer.eos_token!r}; end assistant turns with {{{{ eos_token }}}}")
        labels[len(before) : len(through)] = through[len(before) :]
    return ids, labels


@dataclass
class InstructData:
    """Tokenized instruction examples, split, with the collator that batches them."""

    tokenizer: object
    train: list[dict]
    val: list[dict]
    meta: dict = field(default_factory=dict)
    packing: str = "packed"
    path = None
    cache_hit = False

    def train_dataset(self, block_size: int, packing: str | None = None, seed: int = 1337):
        return self.train

    def eval_dataset(self, block_size: int):
        return self.val or None

    def collator(self):
        if self.packing == "padded":
            from transformers import DataCollatorForSeq2Seq

            return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100, return_tensors="pt")
        from transformers import DataCollatorWithFlattening

        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)


def prepare_instruct(cfg: Config, tokenizer_for, log=print) -> InstructData:
    """Read, split, render, tokenize and label the instruction examples of a config.

    `tokenizer_for(texts)` returns the run's tokenizer (loaded, or trained on the rendered texts)."""
    d = cfg.data
    if d.packing not in ("packed", "padded"):
        raise ConfigError(f"data.packing={d.packing!r} is not for instruction data; use packed or padded")
    if d.overlong not in ("truncate", "drop"):
        raise ConfigError(f"data.overlong={d.overlong!r} is unknown; use truncate or drop")
    splits: dict[str, list[list[dict]]] = {"train": [], "validation": []}
    for index, row in read_rows(d.source, cfg):
        splits[row_split(index, d)].append(to_messages(row, index, d.source, cfg))
    if d.val_source:
        for index, row in read_rows(d.val_source, cfg):
            splits["validation"].append(to_messages(row, index, d.val_source, cfg))
    if not splits["train"]:
        raise DataError(f"data.source {d.source!r}: no instruction examples for training")

    template_for_texts = DEFAULT_CHAT_TEMPLATE if not d.chat_template else chat_template(cfg)
    tokenizer = tokenizer_for(lambda: (_plain_render(m, template_for_texts) for m in splits["train"]))
    prepare_tokenizer(tokenizer, cfg)
    context = cfg.block_size
    meta = {"truncated": 0, "dropped": 0, "examples": {}, "answer_tokens": {}, "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id}
    out = {}
    for split, conversations in splits.items():
        rows = []
        for messages in conversations:
            ids, labels = encode(messages, tokenizer, train_on_prompt=d.train_on_prompt)
            if len(ids) > context:
                if d.overlong == "drop" or all(x == -100 for x in labels[:context]):
                    meta["dropped"] += 1
                    continue
                ids, labels = ids[:context], labels[:context]
                meta["truncated"] += 1
            rows.append({"input_ids": ids, "labels": labels})
        out[split] = rows
        meta["examples"][split] = len(rows)
        meta["answer_tokens"][split] = sum(sum(x != -100 for x in r["labels"]) for r in rows)
    if meta["truncated"] or meta["dropped"]:
        log(f"instruction examples longer than the context ({context} tokens): {meta['truncated']} truncated, "
            f"{meta['dropped']} dropped (data.overlong={d.overlong})")
    return InstructData(tokenizer, out["train"], out["validation"], meta, packing=d.packing)


def _plain_render(messages: list[dict], template: str) -> str:
    """The conversation as text for training a new tokenizer (markers included; EOS spelled out)."""
    from jinja2 import Template

    return Template(template).render(messages=messages, eos_token="<|endoftext|>", add_generation_prompt=False)


def summary(data: InstructData) -> str:
    m = data.meta
    return (f"instruction examples: {m['examples'].get('train', 0):,} train, {m['examples'].get('validation', 0):,} "
            f"validation; answer tokens {m['answer_tokens'].get('train', 0):,} / "
            f"{m['answer_tokens'].get('validation', 0):,}; {m['truncated']} truncated, {m['dropped']} dropped; "
            f"vocabulary {m['vocab_size']:,}; batches {data.packing}")


def chat_ids(tokenizer, messages: list[dict]) -> torch.Tensor:
    """The prompt ids for the next assistant turn of `messages` (1, T)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


# ---- the built-in instruction set ----

@functools.lru_cache(maxsize=1)
def builtin_instruct_rows() -> tuple[dict, ...]:
    """("What does m.f do?", first sentence of f's docstring) for public functions of common standard-library
    modules (`llmkit/data/stdlib_answers.py`), in a fixed order; the same on every machine with the same Python.

    They are read in a fresh, isolated interpreter (`python -I`), whatever this process imported (libraries replace
    stdlib hooks such as `sys.unraisablehook` or `warnings.showwarning`, which would change the set), and kept in
    llmkit's cache folder, keyed by the Python build."""
    import json
    import subprocess
    import sys

    from . import stdlib_answers
    from .sources import cached_builtin

    script = pathlib.Path(stdlib_answers.__file__)

    def read() -> list[dict]:
        proc = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise DataError(f"builtin-instruct: reading the standard library's docstrings failed: "
                            f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        return json.loads(proc.stdout)

    return cached_builtin("instruct", f"{sys.version}|{sys.executable}|{script.read_bytes().hex()}", read)
