"""Tokenizers trained with the `tokenizers` library and returned as ordinary HF fast tokenizers.

Design choices:
- Every kind is a `tokenizers.Tokenizer` wrapped in `PreTrainedTokenizerFast`, so `save_pretrained`,
  `AutoTokenizer.from_pretrained` and `push_to_hub` work with no llmkit code at load time.
- Special tokens: `<|endoftext|>` is EOS (and BOS: an empty prompt starts from it), separating documents;
  `<|pad|>` is a distinct pad token in the tokenizers llmkit trains (a pretrained tokenizer without one pads with
  its EOS, so its vocabulary and the model's embeddings stay as they are);
  `<|unk|>` for char and word tokenizers (byte-level BPE never needs one).
- `bpe`: GPT-2's byte-level BPE. The 256 byte symbols are always in the vocabulary, so any Unicode string
  round-trips exactly.
- `char`: one token per character seen in training (a BPE model with no merges). A character never seen becomes `<|unk|>` (and so is
  dropped by `decode(..., skip_special_tokens=True)`); decode joins with no separator.
- `word`: the seeds' scheme: lowercase, words `\\w+` and single punctuation marks as tokens, whitespace
  dropped; unknown words become `<|unk|>`. Decode puts a space before each word, none before punctuation,
  and none after an apostrophe ("i'll", "o'the").
- `clean_up_tokenization_spaces=False` everywhere: transformers' clean-up would corrupt char-level text.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
KINDS = ("bpe", "char", "word", "pretrained")
DEFAULT_BPE_VOCAB = 4096
WORD_PATTERN = r"\w+|[^\w\s]"  # the seeds' \b\w+\b|[^\w\s]; \w+ already stops at word boundaries
_NO_SPACE_BEFORE = ".,!?;:'\\-"


def train_tokenizer(
    kind: str,
    texts: Iterable[str] | None = None,
    vocab_size: int | None = None,
    *,
    name_or_path: str | None = None,
    min_frequency: int = 1,
    lowercase: bool = True,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """Train a tokenizer of `kind` on `texts` (or load a pretrained one) and return an HF fast tokenizer.

    Args:
        kind: "bpe", "char", "word" or "pretrained".
        texts: an iterable of strings (documents); not needed for "pretrained".
        vocab_size: BPE target size (default 4096); for char/word an upper bound (most frequent kept).
        name_or_path: Hub id or folder, for "pretrained".
        min_frequency: drop BPE merges / words seen fewer times.
        lowercase: word level only (the seeds lowercase).
    """
    if kind == "pretrained":
        if not name_or_path:
            raise ValueError("tokenizer.kind=pretrained needs tokenizer.name_or_path (a Hub id or a folder)")
        return load_tokenizer(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if kind not in KINDS:
        raise ValueError(f"tokenizer.kind={kind!r} is unknown; use one of {', '.join(KINDS)}")
    if texts is None:
        raise ValueError(f"a {kind} tokenizer is trained on texts; pass the corpus")
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size <= 0):
        raise ValueError(f"tokenizer.vocab_size must be a positive integer, got {vocab_size!r}")
    builder = {"bpe": _bpe, "char": _char, "word": _word}[kind]
    tok = builder(texts, vocab_size, min_frequency=min_frequency, lowercase=lowercase)
    return wrap(tok, unk=kind != "bpe")


def wrap(tok: Tokenizer, unk: bool) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        unk_token=UNK if unk else None,
        clean_up_tokenization_spaces=False,
    )


LOAD_STATE_KWARGS = ("local_files_only", "is_local")  # transformers keeps them and would save them


def load_tokenizer(
    name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False, config=None
) -> PreTrainedTokenizerBase:
    """Load any tokenizer by Hub id or folder, as it is: a pretrained model's vocabulary must not grow (that would
    resize its embeddings, and LoRA would then have to train and ship them). Only what llmkit cannot work without
    is added: an EOS token to join documents (a new token, rare), and a pad token, which is the EOS when missing
    (GPT-2's practice; llmkit masks labels explicitly, never by the pad id)."""
    kwargs = {"config": config} if config is not None else {}  # the model's config, when the caller has read it
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code,
                                              **kwargs)
    for key in LOAD_STATE_KWARGS:  # how this process loaded it (offline, from a folder), not what it is
        tokenizer.init_kwargs.pop(key, None)
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": EOS})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """Content hash: the same vocabulary, rules and special tokens give the same hash, wherever loaded from."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow (Python) tokenizer: its vocabulary stands for it
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    return h.hexdigest()[:16]


def _check_vocab(vocab_size: int | None, base: int, what: str) -> None:
    if vocab_size is not None and vocab_size < base:
        raise ValueError(
            f"tokenizer.vocab_size={vocab_size} is smaller than the base alphabet ({what}); use at least {base}"
        )


def _bpe(texts, vocab_size, *, min_frequency, **_) -> Tokenizer:
    vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    _check_vocab(vocab_size, len(alphabet) + 2, f"{len(alphabet)} byte symbols + 2 special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _char(texts, vocab_size, **_) -> Tokenizer:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    if not counts:
        raise ValueError("the corpus is empty: a char tokenizer needs at least one character")
    specials = [EOS, PAD, UNK]
    if vocab_size is not None:
        _check_vocab(vocab_size, len(specials) + 1, "3 special tokens + 1 character")
        kept = sorted(counts, key=lambda c: (-counts[c], c))[: vocab_size - len(specials)]
    else:
        kept = list(counts)
    vocab = {tok: i for i, tok in enumerate(specials + sorted(kept))}
    # A BPE model with no merges splits text into characters: 9x faster than a per-character pre-tokenizer.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    return tok


def _word(texts, vocab_size, *, min_frequency, lowercase, **_) -> Tokenizer:
    specials = [EOS, PAD, UNK]
    _check_vocab(vocab_size, len(specials) + 1, "3 special tokens + 1 word")
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace(Regex(f"^(?=[^{_NO_SPACE_BEFORE}])"), " "),  # a space before each word
            decoders.Fuse(),
            decoders.Replace("' ", "'"),  # contractions: i'll, o'the
            decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size or 10**9, min_frequency=min_frequency, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return tok


__all__ = ["EOS", "KINDS", "PAD", "UNK", "load_tokenizer", "tokenizer_hash", "train_tokenizer"]
