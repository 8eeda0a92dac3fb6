"""Tokenizers: exact round trips (property-based), the seeds' word-level figures, saving and reloading with
plain transformers, special tokens, unknown symbols and vocabulary-size checks."""

import functools
import pathlib
import re

import pytest
from conftest import SEEDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llmkit.data import builtin_documents
from llmkit.tokenizers import EOS, PAD, UNK, load_tokenizer, tokenizer_hash, train_tokenizer

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEED_FILE = SEEDS / "000_7b66da0ec6b7d4dd.txt"
SEED_SNIPPET = pathlib.Path(__file__).parent / "data" / "seed_notebook_text.txt"


@functools.cache
def training_texts() -> tuple[str, ...]:
    return tuple(builtin_documents()[:20])


@functools.cache
def trained(kind: str, vocab_size: int | None = None):
    return train_tokenizer(kind, list(training_texts()), vocab_size)


@functools.cache
def char_alphabet() -> str:
    return "".join(sorted(set("".join(training_texts()))))


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def seed_text() -> str:
    """The seed notebook's `text = \"\"\"...\"\"\"` snippet: shipped in tests/data, and checked against the seed itself
    where ../shared is beside this checkout."""
    shipped = SEED_SNIPPET.read_text()
    if SEED_FILE.exists():
        match = re.search(r'text = """(.*?)"""', SEED_FILE.read_text(), re.S)
        assert match, "the seed notebook's text = \"\"\"...\"\"\" snippet was not found"
        assert match.group(1) == shipped, "tests/data/seed_notebook_text.txt differs from the seed notebook's text"
    return shipped


# --- round trips -------------------------------------------------------------------------------------------


@PROPERTY
@given(st.text())
def test_bpe_round_trips_any_unicode_string(text):
    tok = trained("bpe", 500)
    assert tok.decode(encode(tok, text)) == text


@PROPERTY
@given(st.text(alphabet=st.sampled_from(char_alphabet())))
def test_char_round_trips_text_from_the_training_alphabet(text):
    tok = trained("char")
    ids = encode(tok, text)
    assert len(ids) == len(text)  # one token per character, none unknown
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


@PROPERTY
@given(st.lists(st.sampled_from(sorted(set(re.findall(r"\w+|[^\w\s]", " ".join(training_texts()[:3]).lower())))),
                max_size=40))
def test_word_decode_then_encode_gives_the_same_ids(words):
    """Decoding drops whitespace, so the text may differ; re-encoding the decoded text must give the same ids."""
    tok = trained("word")
    ids = tok.convert_tokens_to_ids(words)
    assert tok.unk_token_id not in ids
    assert encode(tok, tok.decode(ids)) == ids


def test_bpe_round_trips_text_that_spells_special_tokens_and_odd_whitespace():
    tok = trained("bpe", 500)
    for text in [f" {EOS} x", f"a{PAD}b  ", "\r\n\u2028\x85\t", "\ufeffé e\u0301 ﬁ Ａ 🤖", ""]:
        assert tok.decode(encode(tok, text)) == text


# --- the seeds' word-level tokenizer ------------------------------------------------------------------------


def test_word_tokenizer_matches_the_seed_notebook_figures():
    text = seed_text()
    tok = train_tokenizer("word", [text])
    assert len(tok) - 3 == 123  # the notebook's "Vocabulary size: 123" plus EOS, pad, unk
    assert len(encode(tok, text)) == 238
    assert set(tok.all_special_tokens) >= {EOS, PAD, UNK}


def test_word_tokenizer_maps_unknown_words_to_unk_and_rejoins_punctuation():
    tok = train_tokenizer("word", [seed_text()])
    ids = encode(tok, "Well, qwertyuiop belly")
    assert ids[2] == tok.unk_token_id and tok.unk_token == UNK
    assert ids.count(tok.unk_token_id) == 1
    assert tok.decode(encode(tok, "Well, I'll hear it, sir: yet you must not think to")) == (
        "well, i'll hear it, sir: yet you must not think to"
    )
    assert tok.decode(encode(tok, "what answer made you")) == "what answer made you"
    assert tok.decode(encode(tok, "Well, sir, what answer made the belly?")) == "well, sir, what answer made the belly?"
    assert tok.decode(encode(tok, "Well, qwertyuiop belly"), skip_special_tokens=True) == "well, belly"


# --- special tokens, saving, reloading ---------------------------------------------------------------------

SAMPLE = "Hello wörld, I'll see\n  the 'quick' 🤖 fox -- 42!\n"


@pytest.mark.parametrize("kind", ["bpe", "char", "word", "pretrained"])
def test_every_kind_saves_and_reloads_with_auto_tokenizer_giving_identical_ids(kind, tmp_path):
    if kind == "pretrained":
        trained("bpe", 500).save_pretrained(tmp_path / "source")
        tok = train_tokenizer("pretrained", name_or_path=str(tmp_path / "source"))
    else:
        tok = trained(kind, 500)
    tok.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    text = SAMPLE + " ".join(training_texts()[0].split()[:200])
    assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert encode(reloaded, text) == encode(tok, text)
    assert reloaded.decode(encode(reloaded, text)) == tok.decode(encode(tok, text))
    assert len(reloaded) == len(tok)
    assert (reloaded.eos_token, reloaded.pad_token, reloaded.unk_token) == (tok.eos_token, tok.pad_token, tok.unk_token)
    assert tokenizer_hash(reloaded) == tokenizer_hash(tok)  # the data cache relies on it


@pytest.mark.parametrize("kind", ["bpe", "char", "word"])
def test_every_kind_has_eos_and_a_pad_token_distinct_from_eos(kind):
    tok = trained(kind, 500)
    assert tok.eos_token == EOS and tok.eos_token_id is not None
    assert tok.pad_token == PAD and tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.decode([tok.eos_token_id], skip_special_tokens=True) == ""
    if kind == "bpe":
        assert tok.unk_token is None  # byte-level BPE never needs one
    else:
        assert tok.unk_token == UNK and tok.unk_token_id not in (tok.eos_token_id, tok.pad_token_id)


def test_load_tokenizer_pads_with_eos_and_never_grows_a_pretrained_vocabulary(tmp_path):
    """GPT-2's tokenizer has no pad token: a new one would resize the model's embeddings (and make LoRA train and
    ship them), so the EOS pads, as GPT-2 users do."""
    backend = Tokenizer(models.WordLevel({"a": 0, "b": 1, EOS: 2, "<unk>": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS).save_pretrained(tmp_path / "no_pad")
    tok = load_tokenizer(str(tmp_path / "no_pad"))
    assert len(tok) == 4 and tok.pad_token == EOS and tok.pad_token_id == tok.eos_token_id == 2
    assert encode(tok, "a b") == [0, 1]
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp_path / "no_eos")
    tok = load_tokenizer(str(tmp_path / "no_eos"))  # documents are joined with an EOS: one is added
    assert tok.eos_token == EOS and len(tok) == 4 and tok.pad_token_id == tok.eos_token_id


def test_char_tokenizer_maps_an_unseen_character_to_unk():
    tok = train_tokenizer("char", ["hello world\n"])
    ids = encode(tok, "hex!")
    assert ids[0] == tok.convert_tokens_to_ids("h") and ids[1] == tok.convert_tokens_to_ids("e")
    assert ids[2:] == [tok.unk_token_id, tok.unk_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "he"
    assert len(tok) == 3 + len(set("hello world\n"))


def test_char_vocab_size_keeps_the_most_frequent_characters():
    tok = train_tokenizer("char", ["aaaa bbbb cc d"], 3 + 2)  # room for two characters: "a" and "b"
    assert len(tok) == 5
    a, b, unk = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b"), tok.unk_token_id
    assert encode(tok, "abcd") == [a, b, unk, unk]


@pytest.mark.parametrize(
    "kind, too_small, minimum",
    [("bpe", 257, 258), ("bpe", 10, 258), ("char", 3, 4), ("word", 3, 4)],
)
def test_vocab_size_below_the_base_alphabet_raises_one_line_naming_the_minimum(kind, too_small, minimum):
    with pytest.raises(ValueError) as err:
        train_tokenizer(kind, ["some text to learn from"], too_small)
    message = str(err.value)
    assert "\n" not in message
    assert f"at least {minimum}" in message and "tokenizer.vocab_size" in message


def test_bpe_at_the_minimum_vocab_size_still_round_trips():
    tok = train_tokenizer("bpe", ["some text to learn from"], 258)
    assert len(tok) == 258
    assert tok.decode(encode(tok, "näive ☃ text")) == "näive ☃ text"


@pytest.mark.parametrize(
    "args, kwargs, needle",
    [
        (("sentencepiece", ["x"]), {}, "tokenizer.kind='sentencepiece' is unknown"),
        (("pretrained",), {}, "tokenizer.name_or_path"),
        (("bpe", None), {}, "pass the corpus"),
        (("bpe", ["x"], -5), {}, "positive integer"),
    ],
)
def test_bad_tokenizer_settings_raise_one_line_value_errors(args, kwargs, needle):
    with pytest.raises(ValueError) as err:
        train_tokenizer(*args, **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)
