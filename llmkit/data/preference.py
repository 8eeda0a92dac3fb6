"""Preference data (`data.format: preference`): prompt / chosen / rejected rows for DPO and its relatives.

Design choices:
- Rows are read by the instruction data's readers (JSONL/CSV/parquet files, Hub datasets) with configurable
  columns (`data.prompt_field`, `data.chosen_field`, `data.rejected_field`). A prompt is a string (the user's
  message) or a list of chat messages; an answer is a string or a list of assistant messages.
- Pairs are handed to TRL's `DPOTrainer` as conversations (`[{"role", "content"}]`), which it renders with the
  tokenizer's chat template and tokenizes itself: the run's template (an instruct run's own, else the default
  instruct template, whose role markers become special tokens as for `data.format: instruct`).
- Unusable rows (a missing or empty field, chosen equal to rejected, a prompt that leaves no room for an answer in
  the context or exceeds `preference.max_prompt_length`) are counted by reason. `data.errors: strict` (the
  default) refuses the data in one line naming the first such row and the counts; `ignore` (or `replace`) drops
  them and the summary reports how many. Pairs longer than the context are kept and truncated at the end by
  TRL's collator (counted as truncated).
- `builtin-preference` is made offline from `builtin-instruct`: the question, its own docstring sentence as
  `chosen`, and a function of another module's sentence (fluent, plausible, about something else) as `rejected`.
  (A neighbour in the same module was tried: which of two `os.path` sentences belongs to a function the model
  never saw is not learnable at this size, and held-out accuracy stayed below chance.) Its validation split is the
  instruct set's (the same seeded rows held out), so a run tuned on it is scored on pairs it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config, ConfigError
from .sources import DataError, row_split

BUILTIN = "builtin-preference"
REASONS = {"missing": "a missing or empty field", "same": "chosen equals rejected",
           "prompt_too_long": "a prompt too long for the context"}


@dataclass
class PreferenceData:
    """Conversational preference pairs, split, as `datasets.Dataset`s for TRL's DPOTrainer (which tokenizes)."""

    tokenizer: object
    train: object
    val: object | None
    meta: dict = field(default_factory=dict)
    path = None
    cache_hit = False

    def train_dataset(self, block_size: int, packing: str | None = None, seed: int = 1337):
        return self.train

    def eval_dataset(self, block_size: int):
        return self.val

    def collator(self):
        return None  # TRL's DataCollatorForPreference, made by the DPOTrainer from its arguments


def builtin_preference_rows() -> tuple[dict, ...]:
    """(question, its own answer, a function of another module's answer) for each builtin-instruct row, in the
    same order (so the same rows are held out). The wrong answer is a real docstring sentence, fluent and of the
    same kind, about something else: the one half the set away, moved on until its module differs."""
    from .instruct import builtin_instruct_rows

    rows = builtin_instruct_rows()
    module = [r["prompt"].removeprefix("What does ").rsplit(".", 1)[0] for r in rows]
    n, out = len(rows), []
    for i, row in enumerate(rows):
        j = (i + n // 2) % n
        while module[j] == module[i] or rows[j]["response"] == row["response"]:
            j = (j + 1) % n
        out.append({"prompt": row["prompt"], "chosen": row["response"], "rejected": rows[j]["response"]})
    return tuple(out)


def read_pairs(source: str, cfg: Config):
    """(index, row) of a preference source."""
    if source == BUILTIN:
        yield from enumerate(builtin_preference_rows())
        return
    from .instruct import read_rows

    yield from read_rows(source, cfg)


def to_pair(row: dict, cfg: Config) -> dict | str:
    """The row as TRL's conversational pair, or the reason it is unusable (a key of REASONS)."""
    d = cfg.data
    prompt, chosen, rejected = (row.get(k) for k in (d.prompt_field, d.chosen_field, d.rejected_field))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}] if prompt.strip() else None
    answers = []
    for answer in (chosen, rejected):
        if isinstance(answer, str):
            answer = [{"role": "assistant", "content": answer}]
        ok = isinstance(answer, list) and answer and all(
            isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str)
            and m["content"].strip() for m in answer)
        answers.append([{"role": "assistant", "content": m["content"]} for m in answer] if ok else None)
    ok_prompt = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in prompt)
    if not ok_prompt or None in answers:
        return "missing"
    if answers[0] == answers[1]:
        return "same"
    return {"prompt": [{"role": m["role"], "content": m["content"]} for m in prompt], "chosen": answers[0],
            "rejected": answers[1]}


def prepare_preference(cfg: Config, tokenizer, log=print) -> PreferenceData:
    """Read, check and split the preference pairs of a config; `tokenizer` is the starting model's, given the run's
    chat template (its own if it has one) and role markers."""
    from datasets import Dataset

    from .instruct import prepare_tokenizer

    d, p = cfg.data, cfg.preference
    if d.errors not in ("strict", "replace", "ignore"):
        raise ConfigError(f"data.errors={d.errors!r} is unknown; use strict, replace or ignore")
    if d.chat_template or not getattr(tokenizer, "chat_template", None):
        prepare_tokenizer(tokenizer, cfg)
    context = cfg.block_size
    limit = min(p.max_prompt_length or context - 1, context - 1)
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    bad: dict[str, int] = dict.fromkeys(REASONS, 0)
    first_bad = None
    truncated = 0

    def add(split, index, row, source):
        nonlocal first_bad, truncated
        pair = to_pair(row, cfg)
        if isinstance(pair, dict):
            if len(rendered_ids(tokenizer, pair["prompt"], prompt=True)) > limit:
                pair = "prompt_too_long"
            else:
                longest = max(len(rendered_ids(tokenizer, pair["prompt"] + pair[k])) for k in ("chosen", "rejected"))
                truncated += longest > context
        if isinstance(pair, str):
            bad[pair] += 1
            first_bad = first_bad or f"{source} row {index}: {REASONS[pair]}"
            return
        splits[split].append(pair)

    for index, row in read_pairs(d.source, cfg):
        add(row_split(index, d), index, row, d.source)
    if d.val_source:
        for index, row in read_pairs(d.val_source, cfg):
            add("validation", index, row, d.val_source)
    unusable = sum(bad.values())
    counts = ", ".join(f"{n} {REASONS[k]}" for k, n in bad.items() if n)
    if unusable and d.errors == "strict":
        raise DataError(f"{unusable} unusable preference row(s) ({counts}); the first: {first_bad}"
                        f"{f' (limit {limit} tokens)' if bad['prompt_too_long'] else ''}; fix them, or set "
                        "data.errors=ignore to drop them")
    if unusable:
        log(f"preference rows dropped (data.errors={d.errors}): {counts}")
    if not splits["train"]:
        raise DataError(f"data.source {d.source!r}: no usable preference pairs for training")
    meta = {"examples": {k: len(v) for k, v in splits.items()}, "dropped": dict(bad), "truncated": truncated,
            "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "max_prompt_length": limit}
    val = Dataset.from_list(splits["validation"]) if splits["validation"] else None
    return PreferenceData(tokenizer, Dataset.from_list(splits["train"]), val, meta)


def rendered_ids(tokenizer, messages: list[dict], prompt: bool = False) -> list[int]:
    """The token ids of `messages` rendered with the tokenizer's chat template (with the generation prompt when
    `prompt`), counted without the tokenizer's too-long warning (the lengths are what is being checked)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def summary(data: PreferenceData) -> str:
    m = data.meta
    dropped = sum(m["dropped"].values())
    return (f"preference pairs: {m['examples'].get('train', 0):,} train, {m['examples'].get('validation', 0):,} "
            f"validation; {dropped} dropped, {m['truncated']} longer than the context (truncated at the end); "
            f"vocabulary {m['vocab_size']:,}")
