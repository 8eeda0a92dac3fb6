"""Data pipeline: packing, collation, deterministic splits, the content-keyed cache, one-line errors for bad
inputs, every source kind, streaming parity and cleaning. Every cache lives under tmp_path."""

import itertools
import json
import os
import pathlib

import datasets
import numpy as np
import pytest
import torch

from llmkit.config import CleanConfig, ConfigError, load_config
from llmkit.data import BlockCollator, DataError, PackedBlocks, RandomWindows, builtin_documents, prepare_data
from llmkit.data.clean import clean_documents
from llmkit.data.sources import in_validation
from llmkit.tokenizers import EOS

# About 50 KB of real English in one file: about 25 segments, so a 10% random split has a few validation ones.
CORPUS = "".join(builtin_documents()[:12])


def quiet(*_args, **_kwargs):
    pass


@pytest.fixture(autouse=True)
def hf_datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` (jsonl/csv/parquet sources) writes its Arrow cache under tmp_path too."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


@pytest.fixture
def corpus_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def config(tmp_path, *overrides, cache="cache"):
    return load_config(None, [f"data.cache_dir={tmp_path / cache}", *overrides])


def prepare(tmp_path, *overrides, cache="cache"):
    return prepare_data(config(tmp_path, *overrides, cache=cache), log=quiet)


def char_data(tmp_path, source, *overrides, cache="cache"):
    return prepare(tmp_path, f"data.source={source}", "tokenizer.kind=char", "data.block_size=32", *overrides,
                   cache=cache)


def one_line_error(exc_type, tmp_path, *overrides) -> str:
    with pytest.raises(exc_type) as err:
        prepare(tmp_path, *overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def leftover_temp_dirs(root: pathlib.Path) -> list[str]:
    return [name for _, dirs, _ in os.walk(root) for name in dirs if name.startswith(".") and ".tmp-" in name]


# --- packing and collation -----------------------------------------------------------------------------------


def test_packed_blocks_are_block_size_plus_one_and_tile_the_token_stream(tmp_path, corpus_file):
    T = 32
    data = char_data(tmp_path, corpus_file)
    stream = np.asarray(data.train)
    blocks = data.train_dataset(T)
    assert isinstance(blocks, PackedBlocks)
    assert len(blocks) == (len(stream) - 1) // T > 100
    for i in range(len(blocks)):
        block = blocks[i]["input_ids"]
        assert block.dtype == torch.long and block.shape == (T + 1,)
        assert block.tolist() == stream[i * T : i * T + T + 1].tolist()
        if i + 1 < len(blocks):
            assert blocks[i + 1]["input_ids"][0] == block[-1]  # consecutive blocks share one token
    joined = torch.cat([blocks[0]["input_ids"]] + [blocks[i]["input_ids"][1:] for i in range(1, len(blocks))])
    assert joined.tolist() == stream[: len(blocks) * T + 1].tolist()
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    val = data.eval_dataset(T)
    assert len(val) == (len(data.val) - 1) // T and val[0]["input_ids"].shape == (T + 1,)


def test_block_collator_gives_inputs_and_next_token_shift_labels(tmp_path, corpus_file):
    T = 32
    blocks = char_data(tmp_path, corpus_file).train_dataset(T)
    examples = [blocks[i] for i in (0, 1, 7)]
    batch = BlockCollator()(examples)
    stacked = torch.stack([e["input_ids"] for e in examples])
    assert batch["input_ids"].shape == batch["shift_labels"].shape == (3, T)
    assert torch.equal(batch["shift_labels"][:, :-1], batch["input_ids"][:, 1:])
    assert torch.equal(batch["input_ids"], stacked[:, :-1]) and torch.equal(batch["shift_labels"], stacked[:, 1:])
    assert torch.equal(batch["labels"], batch["input_ids"])


def test_random_windows_depend_only_on_seed_and_index(tmp_path, corpus_file):
    T = 32
    data = char_data(tmp_path, corpus_file)
    stream = np.asarray(data.train)
    a, b = RandomWindows(data.train, T, seed=1), RandomWindows(data.train, T, seed=1)
    other = data.train_dataset(T, packing="random", seed=2)
    assert isinstance(other, RandomWindows)
    windows = np.lib.stride_tricks.sliding_window_view(stream, T + 1)
    for i in (0, 1, 5, 50, len(a) - 1):
        assert a[i]["input_ids"].shape == (T + 1,)
        assert torch.equal(a[i]["input_ids"], b[i]["input_ids"])
        assert (windows == a[i]["input_ids"].numpy()).all(axis=1).any()  # a contiguous slice of the stream
    assert [a[i]["input_ids"].tolist() for i in range(10)] != [a[i + 1]["input_ids"].tolist() for i in range(10)]
    assert any(not torch.equal(a[i]["input_ids"], other[i]["input_ids"]) for i in range(10))
    # Reading order does not matter: window 7 is the same whether read first or last.
    assert torch.equal(RandomWindows(data.train, T, 1)[7]["input_ids"], a[7]["input_ids"])


# --- splits --------------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_follows_the_seed(tmp_path, corpus_file):
    first = char_data(tmp_path, corpus_file, cache="a")
    second = char_data(tmp_path, corpus_file, cache="b")
    assert not second.cache_hit
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    assert first.path.name == second.path.name  # content-keyed: the same key anywhere
    reseeded = char_data(tmp_path, corpus_file, "data.seed=7", cache="c")
    assert not np.array_equal(reseeded.val, first.val)
    assert len(reseeded.train) + len(reseeded.val) == len(first.train) + len(first.val)  # same text, other split
    n_val = first.meta["val_chars"] / (first.meta["train_chars"] + first.meta["val_chars"])
    assert 0.0 < n_val < 0.4


def test_tail_split_puts_the_end_of_the_corpus_in_validation(tmp_path, corpus_file):
    data = char_data(tmp_path, corpus_file, "data.val_split=tail", "data.val_ratio=0.1")
    decode = data.tokenizer.decode
    train_text, val_text = decode(data.train.tolist()), decode(data.val.tolist())
    assert val_text.endswith(EOS) and EOS not in train_text  # one document: its end is in validation
    assert train_text + val_text == CORPUS + EOS
    assert 0.1 <= len(val_text) / len(CORPUS) < 0.2


# --- cache ---------------------------------------------------------------------------------------------------


def test_second_run_is_a_cache_hit_with_the_same_streams(tmp_path, corpus_file):
    first = char_data(tmp_path, corpus_file)
    second = char_data(tmp_path, corpus_file)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.path == first.path
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    assert {"meta.json", "train.bin", "val.bin", "tokenizer"} <= set(os.listdir(first.path))
    assert json.loads((first.path / "meta.json").read_text())["train_tokens"] == len(first.train)


def test_tokenizer_settings_are_part_of_the_cache_key(tmp_path, corpus_file):
    base = [f"data.source={corpus_file}", "data.block_size=32", "tokenizer.kind=bpe"]
    bpe300 = prepare(tmp_path, *base, "tokenizer.vocab_size=300")
    bpe400 = prepare(tmp_path, *base, "tokenizer.vocab_size=400")
    char = prepare(tmp_path, *base, "tokenizer.kind=char")
    again = prepare(tmp_path, *base, "tokenizer.vocab_size=300")
    assert [d.cache_hit for d in (bpe300, bpe400, char, again)] == [False, False, False, True]
    assert len({bpe300.path, bpe400.path, char.path}) == 3 and again.path == bpe300.path
    assert (len(bpe300.tokenizer), len(bpe400.tokenizer)) == (300, 400)
    assert len(bpe400.train) < len(bpe300.train) < len(char.train)


def test_a_new_block_size_reuses_the_cached_stream(tmp_path, corpus_file):
    small = char_data(tmp_path, corpus_file, "data.block_size=16")
    large = char_data(tmp_path, corpus_file, "data.block_size=48")
    assert large.cache_hit and large.path == small.path
    blocks = large.train_dataset(48)
    assert blocks[0]["input_ids"].shape == (49,) and len(blocks) == (len(large.train) - 1) // 48


def test_num_proc_2_gives_the_same_stream_as_num_proc_1(tmp_path, corpus_file):
    one = char_data(tmp_path, corpus_file, cache="one")
    two = char_data(tmp_path, corpus_file, "data.num_proc=2", cache="two")
    assert np.array_equal(one.train, two.train) and np.array_equal(one.val, two.val)


def test_an_entry_without_meta_json_is_not_trusted_and_is_rebuilt(tmp_path, corpus_file):
    """An interrupted prepare can leave the entry's folder without meta.json (the completion mark)."""
    first = char_data(tmp_path, corpus_file)
    expected, path = np.array(first.train), first.path  # a copy: the memory-mapped file is truncated below
    del first
    (path / "meta.json").unlink()
    (path / "train.bin").write_bytes(b"\x00\x00")  # truncated: must not be read
    again = char_data(tmp_path, corpus_file)
    assert not again.cache_hit and again.path == path
    assert (again.path / "meta.json").exists()
    assert np.array_equal(again.train, expected)
    assert again.meta["train_tokens"] == len(again.train) == (again.path / "train.bin").stat().st_size // 2


def test_a_stale_temp_folder_from_a_killed_run_is_ignored(tmp_path, corpus_file):
    cache = tmp_path / "cache"
    reference = char_data(tmp_path, corpus_file, cache="reference")
    stale = cache / f".{reference.path.name}.tmp-999999-1"
    stale.mkdir(parents=True)
    (stale / "train.bin").write_bytes(b"\x01\x02")
    data = char_data(tmp_path, corpus_file)
    assert not data.cache_hit and data.path == cache / reference.path.name
    assert np.array_equal(data.train, reference.train)


def test_a_run_that_raises_leaves_no_temp_folder(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.\n")
    with pytest.raises(DataError):
        prepare(tmp_path, f"data.source={short}", "tokenizer.kind=char", "data.block_size=64", "data.val_ratio=0")
    assert (tmp_path / "cache").exists()
    assert leftover_temp_dirs(tmp_path / "cache") == []


# --- bad inputs: one line, naming the file or setting --------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere" / "corpus.txt"
    message = one_line_error(DataError, tmp_path, f"data.source={missing}")
    assert str(missing) in message and "no such file" in message


def test_glob_matching_nothing(tmp_path):
    message = one_line_error(DataError, tmp_path, f"data.source={tmp_path}/*.nothing")
    assert "*.nothing" in message and "matches no file" in message


@pytest.mark.parametrize("content", ["", "  \n\n\t\n"])
def test_empty_file(tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_text(content)
    message = one_line_error(DataError, tmp_path, f"data.source={empty}")
    assert str(empty) in message and "empty" in message


def test_empty_jsonl_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    message = one_line_error(DataError, tmp_path, f"data.source={empty}")
    assert str(empty) in message and "empty" in message


def test_folder_without_text_files(tmp_path):
    folder = tmp_path / "binaries"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00\x01\x02")
    (folder / ".hidden.txt").write_text("hidden files are skipped")
    message = one_line_error(DataError, tmp_path, f"data.source={folder}")
    assert str(folder) in message and "no text files" in message


def test_non_utf8_bytes_name_the_file_and_offset_and_replace_works(tmp_path):
    bad = tmp_path / "latin1.txt"
    head = "Ünïcode is fine here. " * 10
    bad.write_bytes(head.encode() + "café au lait\n".encode("latin-1") * 10)
    offset = len(head.encode()) + len("caf")
    message = one_line_error(DataError, tmp_path, f"data.source={bad}", "tokenizer.kind=char", "data.block_size=16")
    assert str(bad) in message and f"byte {offset}" in message and "data.errors=replace" in message
    data = prepare(tmp_path, f"data.source={bad}", "tokenizer.kind=char", "data.block_size=16",
                   "data.errors=replace", "data.val_ratio=0")
    text = data.tokenizer.decode(data.train.tolist())
    assert text == head + "caf\ufffd au lait\n" * 10 + EOS


def test_corpus_shorter_than_one_block_says_how_many_tokens(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.\n")  # 21 characters + EOS = 22 char tokens
    message = one_line_error(DataError, tmp_path, f"data.source={short}", "tokenizer.kind=char",
                             "data.block_size=64", "data.val_ratio=0")
    assert "22 tokens" in message and "65" in message and "data.block_size" in message


def test_malformed_jsonl_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "no closing brace"\n')
    message = one_line_error(DataError, tmp_path, f"data.source={path}", "tokenizer.kind=char")
    assert "broken.jsonl" in message and "cannot be read as json" in message


def test_unknown_text_field_in_jsonl_names_the_columns(tmp_path):
    rows = tmp_path / "rows.jsonl"
    datasets.Dataset.from_dict({"body": ["first document " * 5, "second one " * 5], "id": [1, 2]}).to_json(rows)
    message = one_line_error(DataError, tmp_path, f"data.source={rows}")
    assert str(rows) in message and "'text'" in message and "body" in message and "id" in message
    data = prepare(tmp_path, f"data.source={rows}", "data.text_field=body", "tokenizer.kind=char",
                   "data.block_size=16", "data.val_ratio=0")
    assert data.tokenizer.decode(data.train.tolist()) == "first document " * 5 + EOS + "second one " * 5 + EOS


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.val_ratio=1.5", "data.val_ratio"),
        ("data.val_split=middle", "data.val_split='middle'"),
        ("data.packing=zigzag", "data.packing='zigzag'"),
        ("data.num_proc=0", "data.num_proc"),
        ("data.block_size=4096", "data.block_size=4096"),
        ("data.blocksize=64", "data.block_size"),  # unknown key: did-you-mean
        ("data.seed=abc", "data.seed"),
    ],
)
def test_bad_settings_raise_one_line_config_errors(tmp_path, corpus_file, override, needle):
    message = one_line_error(ConfigError, tmp_path, f"data.source={corpus_file}", override)
    assert needle in message


def test_streaming_with_a_tail_split_is_a_config_error(tmp_path, corpus_file):
    message = one_line_error(ConfigError, tmp_path, f"data.source={corpus_file}", "data.streaming=true",
                             "data.val_split=tail")
    assert "data.val_split=tail" in message


def test_unknown_errors_setting(tmp_path, corpus_file):
    message = one_line_error(ConfigError, tmp_path, f"data.source={corpus_file}", "data.errors=bogus")
    assert "data.errors='bogus'" in message


# --- sources -------------------------------------------------------------------------------------------------

DOCS = ["First document: alpha beta gamma.\nIts second line.\n", "Second document, about delta.\n",
        "Third document; epsilon zeta eta theta.\n"]


@pytest.fixture
def text_folder(tmp_path) -> pathlib.Path:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "01.txt").write_text(DOCS[0])
    (folder / "02.txt").write_text(DOCS[1])
    (folder / "sub" / "03.md").write_text(DOCS[2])
    (folder / ".notes.txt").write_text("hidden: never read\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "description.txt").write_text("inside a hidden folder: never read\n")
    (folder / "image.png").write_bytes(b"\x89PNG\x00\xff")
    return folder


@pytest.mark.parametrize("kind", ["char", "bpe", "word"])
def test_folder_of_text_files_separates_documents_with_eos(tmp_path, text_folder, kind):
    data = prepare(tmp_path, f"data.source={text_folder}", f"tokenizer.kind={kind}", "data.block_size=8",
                   "data.val_ratio=0", "tokenizer.vocab_size=300")
    eos = data.tokenizer.eos_token_id
    stream = data.train.tolist()
    assert data.val is None and stream.count(eos) == len(DOCS)
    assert stream[-1] == eos
    pieces = [data.tokenizer.decode(part) for part in _split_on(stream, eos)]
    if kind == "word":
        assert pieces[0].startswith("first document: alpha beta gamma.") and pieces[2].endswith("theta.")
    else:
        assert pieces == DOCS  # exact: sorted files, recursive, hidden files and folders and binary files skipped


@pytest.mark.parametrize("kind", ["char", "bpe", "word"])
def test_crlf_text_is_cut_into_segments_that_tokenize_like_the_whole(tmp_path, kind):
    from llmkit.data.sources import segments

    text = CORPUS.replace("\n", "\r\n")
    pieces = list(segments(iter([text])))
    assert len(pieces) > 10 and "".join(p.text for p in pieces) == text  # not one giant segment
    path = tmp_path / "crlf.txt"
    path.write_bytes(text.encode())
    data = prepare(tmp_path, f"data.source={path}", f"tokenizer.kind={kind}", "tokenizer.vocab_size=400",
                   "data.val_ratio=0", "data.block_size=8")
    whole = data.tokenizer(text, add_special_tokens=False)["input_ids"] + [data.tokenizer.eos_token_id]
    assert data.train.tolist() == whole


def _split_on(stream, sep):
    parts, current = [], []
    for token in stream:
        if token == sep:
            parts.append(current)
            current = []
        else:
            current.append(token)
    return parts


def test_glob_source(tmp_path, text_folder):
    data = char_data(tmp_path, f"{text_folder}/*.txt", "data.block_size=8", "data.val_ratio=0")
    assert data.tokenizer.decode(data.train.tolist()) == DOCS[0] + EOS + DOCS[1] + EOS


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_table_files_read_one_document_per_row(tmp_path, fmt):
    rows = ["A row with a comma, and a \"quote\".", "A second row\nspanning two lines.", "Row three: ünïcode ✓"]
    path = tmp_path / f"rows.{fmt}"
    table = datasets.Dataset.from_dict({"text": rows, "label": [0, 1, 2]})
    {"jsonl": table.to_json, "csv": table.to_csv, "parquet": table.to_parquet}[fmt](str(path))
    data = char_data(tmp_path, path, "data.block_size=8", "data.val_ratio=0")
    stream = data.train.tolist()
    assert stream.count(data.tokenizer.eos_token_id) == len(rows)
    assert data.tokenizer.decode(stream) == "".join(row + EOS for row in rows)


def test_builtin_corpus_is_large_with_one_eos_per_document(tmp_path):
    docs = builtin_documents()
    assert sum(map(len, docs)) >= 1_500_000  # the pydoc topics and the standard library docstrings
    data = prepare(tmp_path, "data.source=builtin", "tokenizer.kind=char", "data.block_size=64")
    assert data.meta["train_chars"] + data.meta["val_chars"] == sum(map(len, docs))
    eos = data.tokenizer.eos_token_id
    assert int((data.train == eos).sum() + (data.val == eos).sum()) == len(docs)


# --- streaming -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bpe", "char", "word"])
def test_streaming_gives_the_same_blocks_as_the_in_memory_path(tmp_path, kind):
    T = 64
    settings = ["data.source=builtin", f"tokenizer.kind={kind}", "tokenizer.vocab_size=400", f"data.block_size={T}"]
    in_memory = prepare(tmp_path, *settings, cache="memory")
    streamed = prepare(tmp_path, *settings, "data.streaming=true", cache="stream")
    assert streamed.train is None and streamed.meta["streaming"]
    assert streamed.tokenizer.get_vocab() == in_memory.tokenizer.get_vocab()
    blocks = list(itertools.islice(iter(streamed.train_dataset(T)), 6))
    reference = in_memory.train_dataset(T)
    assert [b["input_ids"].tolist() for b in blocks] == [reference[i]["input_ids"].tolist() for i in range(6)]
    val_blocks = list(itertools.islice(iter(streamed.eval_dataset(T)), 3))
    val_reference = in_memory.eval_dataset(T)
    assert [b["input_ids"].tolist() for b in val_blocks] == [val_reference[i]["input_ids"].tolist() for i in range(3)]


def test_streaming_char_vocabulary_matches_in_memory_when_a_character_is_only_in_validation(tmp_path):
    """In memory the char alphabet is learned from both splits; streaming must learn the same one."""
    folder = tmp_path / "docs"
    folder.mkdir()
    n_docs = 30
    val_docs = [i for i in range(n_docs) if in_validation(i, 0.1, 1337)]  # one segment per short document
    assert val_docs and len(val_docs) < n_docs
    for i in range(n_docs):
        text = f"document number {i:02d} says hello to the world again and again\n"
        if i == val_docs[0]:
            text = text.replace("hello", "hello!")  # "!" sorts before every letter and digit
        (folder / f"{i:02d}.txt").write_text(text)
    settings = [f"data.source={folder}", "tokenizer.kind=char", "data.block_size=16"]
    in_memory = prepare(tmp_path, *settings, cache="memory")
    assert "!" in in_memory.tokenizer.decode(in_memory.val.tolist())
    streamed = prepare(tmp_path, *settings, "data.streaming=true", cache="stream")
    first = next(iter(streamed.train_dataset(16)))["input_ids"].tolist()
    assert first == in_memory.train_dataset(16)[0]["input_ids"].tolist()
    assert streamed.tokenizer.get_vocab() == in_memory.tokenizer.get_vocab()


# --- cleaning ------------------------------------------------------------------------------------------------


def clean(text: str, **switches) -> str:
    return "".join(clean_documents(iter([text]), CleanConfig(**switches)))


def test_drop_metadata_lines_drops_banners_and_short_caps_but_keeps_blank_lines():
    doc = (
        "*** START OF THE PROJECT GUTENBERG EBOOK ***\n"
        "CHAPTER ONE\n"
        "\n"
        "It was a bright cold day in April, and the clocks were striking.\n"
        "\n"
        "Winston Smith slipped quickly through the glass doors.\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK ***\n"
    )
    out = clean(doc, drop_metadata_lines=True)
    assert "***" not in out and "CHAPTER ONE" not in out
    assert "It was a bright cold day in April, and the clocks were striking.\n\nWinston Smith" in out
    assert out.strip().split("\n\n") == [
        "It was a bright cold day in April, and the clocks were striking.",
        "Winston Smith slipped quickly through the glass doors.",
    ]
    assert clean(doc) == doc  # every switch off: untouched


def test_dedup_removes_a_repeated_paragraph_even_across_documents():
    a = "The same paragraph appears twice.\n\nA unique paragraph here.\n\nThe same paragraph appears twice.\n"
    out = list(clean_documents(iter([a, "The same paragraph appears twice.\n\nAnother new one.\n"]),
                               CleanConfig(dedup=True)))
    assert out == ["The same paragraph appears twice.\n\nA unique paragraph here.\n", "Another new one.\n"]


def test_min_words_drops_short_paragraphs():
    doc = "Too short.\n\nThis paragraph has comfortably more than five words in it.\n\nAlso short here.\n"
    assert clean(doc, min_words=5) == "This paragraph has comfortably more than five words in it.\n"
    assert clean("tiny\n\nwords\n", min_words=5) == ""


def test_cleaning_switches_apply_through_the_config_and_change_the_cache_key(tmp_path):
    path = tmp_path / "dup.txt"
    para = "A paragraph that the corpus repeats, word for word, several times over.\n"
    path.write_text("\n".join([para] * 5) + "\nAnd a closing paragraph that is different from the rest.\n")
    base = [f"data.source={path}", "tokenizer.kind=char", "data.block_size=16", "data.val_ratio=0"]
    plain = prepare(tmp_path, *base)
    deduped = prepare(tmp_path, *base, "data.clean.dedup=true")
    assert not deduped.cache_hit and deduped.path != plain.path
    text = deduped.tokenizer.decode(deduped.train.tolist())
    assert text.count("repeats") == 1 and "closing paragraph" in text
    assert len(deduped.train) < len(plain.train)


def test_streaming_tokenizer_follows_the_file_content_and_no_val_ratio_means_no_validation(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("abc abc abc\n" * 50)
    first = char_data(tmp_path, path, "data.streaming=true", "data.val_ratio=0")
    assert first.eval_dataset(32) is None
    path.write_text("xyz xyz xyz\n" * 60)  # same path, new content: a new tokenizer, not the cached one
    second = char_data(tmp_path, path, "data.streaming=true", "data.val_ratio=0")
    assert "x" in second.tokenizer.get_vocab() and "a" not in second.tokenizer.get_vocab()


@pytest.mark.slow
def test_prepare_memory_stays_flat_as_the_corpus_grows(tmp_path, shakespeare_path):
    """`llmkit prepare` streams: 8x the text, the same peak memory (within 15%). Each size runs in its own process
    (peak RSS is per process); the corpora are tinyshakespeare's lines shuffled, 6 MB and 48 MB."""
    import os
    import random
    import subprocess
    import sys

    from conftest import subprocess_env

    from llmkit.tokenizers import train_tokenizer

    train_tokenizer("bpe", [shakespeare_path.read_text()], 1024).save_pretrained(tmp_path / "tok")
    lines = shakespeare_path.read_text().split("\n")
    rng = random.Random(0)
    peaks = {}
    for mb in (6, 48):
        corpus = tmp_path / f"c{mb}.txt"
        with corpus.open("w") as f:
            while f.tell() < mb * 2**20:
                rng.shuffle(lines)
                f.write("\n".join(lines) + "\n")
        proc = subprocess.Popen([sys.executable, "-m", "llmkit.cli", "prepare", f"data.source={corpus}",
                                 "tokenizer.kind=pretrained", f"tokenizer.name_or_path={tmp_path / 'tok'}",
                                 f"data.cache_dir={tmp_path / 'cache'}"], env=subprocess_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        assert status == 0, proc.stderr.read().decode()[-3000:]
        peaks[mb] = usage.ru_maxrss
    assert peaks[48] < 1.15 * peaks[6], peaks
