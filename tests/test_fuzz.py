"""Fuzzed round trips (hypothesis): tokenizers on arbitrary Unicode (the documented unknown-token rules of the
char and word kinds), and the config parser, which on any YAML and any override raises nothing but its own
one-line ConfigError."""

from __future__ import annotations

import functools

import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from llmkit.config import ConfigError, load_config
from llmkit.tokenizers import train_tokenizer

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])
TRAIN = ["The quick brown fox jumps over the lazy dog. Ünïcödé, ñ and 你好 too: it's fine!\n" * 3]


@functools.cache
def tokenizer(kind: str):
    return train_tokenizer(kind, TRAIN, 400 if kind == "bpe" else None)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@PROPERTY
@given(st.text())
def test_bpe_round_trips_arbitrary_unicode(text):
    tok = tokenizer("bpe")
    assert tok.decode(ids(tok, text)) == text


@PROPERTY
@given(st.text())
def test_char_maps_each_unseen_character_to_unk_and_round_trips_the_rest(text):
    """One token per character; a character the tokenizer never saw is <|unk|>, dropped when decoding. (Text that
    spells a special token, such as <|endoftext|>, is that token, as everywhere in transformers.)"""
    tok = tokenizer("char")
    assume(not any(s in text for s in tok.all_special_tokens))
    vocab = tok.get_vocab()
    out = ids(tok, text)
    assert out == [vocab.get(c, tok.unk_token_id) for c in text]
    assert tok.decode(out, skip_special_tokens=True) == "".join(c for c in text if c in vocab)


@PROPERTY
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))))
def test_word_maps_unknown_words_to_unk_and_decoded_known_words_encode_back(text):
    """Lowercased, split into words and punctuation marks (the seeds' rule); a word the tokenizer never saw is
    <|unk|>; decoding then encoding again gives the same ids without the unknown ones."""
    tok = tokenizer("word")
    assume(not any(s in text.lower() for s in tok.all_special_tokens))
    vocab = tok.get_vocab()
    out = ids(tok, text)
    backend = tok.backend_tokenizer
    words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]
    assert out == [vocab.get(w, tok.unk_token_id) for w in words]
    known = [i for i in out if i != tok.unk_token_id]
    assert ids(tok, tok.decode(known)) == known


KEYS = st.sampled_from(["model.n_layer", "model.n_embd", "model.arch", "model.dropout", "model.position_embedding_type",
                        "tokenizer.kind", "tokenizer.vocab_size", "data.val_ratio", "data.packing", "data.format",
                        "training.max_steps", "training.learning_rate", "training.eval_strategy", "sample.prompts",
                        "sample.top_k", "lora.r", "distill.alpha", "distill", "lora", "model", "nonsense.key",
                        "model.n_layerz", "training"])
VALUES = st.one_of(st.text(max_size=20), st.integers(-5, 10**6).map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["null", "[]", "{}", "[a, b]", "{x: 1}", "yes", "no", "~", "1e-3", "-", ":", "'"]))


@PROPERTY
@given(st.lists(st.tuples(KEYS, VALUES), max_size=6), st.lists(st.text(max_size=30), max_size=2))
@example(pairs=[], raw=["0\n0="])  # a key with a line break in it (found by this test in CI)
def test_overrides_give_a_config_or_one_line_config_error(pairs, raw):
    overrides = [f"{k}={v}" for k, v in pairs] + raw
    try:
        load_config(None, overrides)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)


YAML_KEYS = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans())  # YAML keys are any scalar
YAML_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(YAML_KEYS, inner, max_size=3)),
                           max_leaves=10)


@PROPERTY
@given(st.one_of(st.dictionaries(st.sampled_from(["model", "tokenizer", "data", "training", "sample", "lora",
                                                  "distill", "x"]), YAML_VALUES, max_size=4),
                 YAML_VALUES, st.text(max_size=60)))
@example(document="?")  # a key YAML reads as null (found by this test in CI)
@example(document={"training": {1: 2}, "model": {None: 1}})
def test_any_yaml_file_gives_a_config_or_one_line_config_error(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    try:
        load_config(path)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
