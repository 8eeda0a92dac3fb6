"""Where text comes from: files, globs, folders, jsonl/csv/parquet, Hub datasets, and the built-in corpus.

Design choices:
- A source becomes a stream of *documents* (one text file, one jsonl/csv/parquet row, one Hub row, one topic or
  one standard-library module of the built-in corpus). Documents are cut into *segments* of about 2 KB at line ends that cannot change how any
  of our tokenizers splits the text (a newline between two non-space characters), so tokenizing segments in
  parallel gives the same tokens as tokenizing whole documents. `doc_end` marks where an EOS goes.
- Structured files and Hub ids are read with `datasets.load_dataset` (streaming when asked). Plain text files
  are read here so that a bad byte is reported with its file and offset, and `data.errors` can replace it.
- The built-in corpus is the documentation that every CPython ships: the `pydoc_data.topics` reference
  (465 KB) and the standard library's docstrings (about 1.6 MB, read with `ast`), so about 2 MB of real
  English about Python, offline, with no file from llmkit. Its content depends on the Python version.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import glob
import hashlib
import json
import os
import pathlib
import re
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import OneLineError, first_line

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".tex", ".html", ".htm", ".py", ""}
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SEGMENT_CHARS = 2048
BUILTIN_VERSION = 2  # bump when what builtin_documents() collects changes: the cached corpus is then rebuilt
# Not documentation prose: installed packages, test suites, demos, and packages made of generated tables.
_STDLIB_SKIP = {"site-packages", "dist-packages", "idlelib", "lib2to3", "turtledemo", "ensurepip", "pydoc_data",
                "encodings"}


class DataError(OneLineError, ValueError):
    """Bad data input: the message names the file or setting and the fix."""


@dataclass(frozen=True)
class Segment:
    text: str
    doc_end: bool


def cache_root() -> pathlib.Path:
    """llmkit's cache folder: $LLMKIT_CACHE, else ~/.cache/llmkit."""
    return pathlib.Path(os.environ.get("LLMKIT_CACHE", pathlib.Path.home() / ".cache" / "llmkit"))


@functools.lru_cache(maxsize=1)
def builtin_documents() -> tuple[str, ...]:
    """The built-in corpus, in a fixed order: one document per documentation topic bundled with CPython
    (`pydoc_data.topics`), then one per standard-library module: its docstrings (module, classes, functions),
    read with `ast` from the installed sources, never imported. Parsing takes ~10 s, so the result is kept
    in the cache folder, keyed by the Python build and the standard library's location."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return cached_builtin("corpus", f"{sys.version}|{stdlib}|{BUILTIN_VERSION}", lambda: _parse_stdlib(stdlib))


def _parse_stdlib(stdlib: pathlib.Path) -> list[str]:
    from pydoc_data.topics import topics

    docs = [topics[name].strip() + "\n" for name in sorted(topics)]
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if parts[0] in _STDLIB_SKIP or "test" in parts or "tests" in parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        strings = [
            ast.get_docstring(node)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        strings = [d for d in strings if d and len(d) >= 40]  # one-liners like "Return self." add nothing
        if strings:
            docs.append("\n\n".join(strings) + "\n")
    return docs


def cached_builtin(name: str, key: str, build) -> tuple:
    """A built-in set kept as JSON in the cache folder under `name` and a hash of `key` (what it depends on):
    read if there, else `build()` and written (whole, then renamed, so a reader never sees half a file)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cached = cache_root() / "builtin" / f"{name}-{digest}.json"
    try:
        return tuple(json.loads(cached.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    items = build()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(items), encoding="utf-8")
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only cache only costs the work next time
    return tuple(items)


def resolve_files(source: str) -> list[pathlib.Path]:
    """Expand a file, a folder (recursively, text and table files) or a glob into a sorted list of files."""
    if any(ch in source for ch in "*?["):
        files = sorted(pathlib.Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        files = [f for f in files if f.is_file()]
        if not files:
            raise DataError(f"data.source {source!r}: the glob matches no file; check the pattern")
        return files
    path = pathlib.Path(os.path.expanduser(source))
    if path.is_dir():
        files = sorted(
            f for f in path.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)  # .git, ...
            and (f.suffix.lower() in TEXT_SUFFIXES or f.suffix.lower() in TABLE_BUILDERS)
        )
        if not files:
            raise DataError(
                f"data.source {source!r}: the folder holds no text files (.txt, .md, .jsonl, .csv, .parquet, ...)"
            )
        return files
    if path.is_file():
        return [path]
    raise DataError(f"data.source {source!r}: no such file or folder; check the path (or use data.source=builtin)")


def looks_like_hub_id(source: str) -> bool:
    """`name` or `namespace/name`, with no file suffix and no path prefix."""
    if source.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source):
        return False
    suffix = pathlib.PurePath(source).suffix.lower()
    return suffix not in (TEXT_SUFFIXES - {""}) | set(TABLE_BUILDERS) | {".gz", ".zip"}


def is_local(source: str) -> bool:
    return source == "builtin" or any(ch in source for ch in "*?[") or pathlib.Path(os.path.expanduser(source)).exists()


def source_fingerprint(source: str | None) -> list:
    """What identifies a source's content without reading it: each file's path, size and modification time
    (local sources), or the name (builtin, Hub ids; their settings are keyed by the caller)."""
    if not source or source == "builtin" or not is_local(source):
        return [source]
    return [(str(f), (st := f.stat()).st_size, st.st_mtime_ns) for f in resolve_files(source)]


def iter_documents(
    source: str,
    *,
    text_field: str = "text",
    errors: str = "strict",
    hub_config: str | None = None,
    hub_split: str = "train",
    streaming: bool = False,
) -> Iterator[str]:
    """Yield the documents of `source` in a fixed order (`errors` is checked with the config)."""
    if source == "builtin":
        yield from builtin_documents()
        return
    if not is_local(source):
        if not looks_like_hub_id(source):
            resolve_files(source)  # raises the missing-path message
        yield from _hub_documents(source, text_field, hub_config, hub_split, streaming)
        return
    for file in resolve_files(source):
        suffix = file.suffix.lower()
        if suffix in TABLE_BUILDERS:
            yield from _table_documents(file, TABLE_BUILDERS[suffix], text_field, streaming)
        else:
            yield _read_text(file, errors)


def iter_segments(source: str, *, clean=None, text_field: str = "text", errors: str = "strict",
                  hub_config: str | None = None, hub_split: str = "train", streaming: bool = False) -> Iterator[Segment]:
    """The segments of `source`, in a fixed order. Plain text files are read in chunks (memory stays flat however
    large the file), with exactly the cuts `segments()` makes on the whole document; cleaning works on whole
    documents, so a cleaned source is read document by document."""
    from .clean import clean_documents, is_active

    local = source != "builtin" and is_local(source)
    if (clean is None or not is_active(clean)) and local:
        for file in resolve_files(source):
            suffix = file.suffix.lower()
            if suffix in TABLE_BUILDERS:
                yield from segments(_table_documents(file, TABLE_BUILDERS[suffix], text_field, streaming))
            else:
                yield from _file_segments(file, errors)
        return
    docs = iter_documents(source, text_field=text_field, errors=errors, hub_config=hub_config, hub_split=hub_split,
                          streaming=streaming)
    yield from segments(clean_documents(docs, clean) if clean is not None else docs)


CHUNK_BYTES = 8 * 2**20


def _file_segments(file: pathlib.Path, errors: str, chunk: int = CHUNK_BYTES) -> Iterator[Segment]:
    """`segments([file's text])`, read `chunk` bytes at a time: a cut needs the characters around it only, so a cut
    found in the text read so far is the cut the whole document would get."""
    import codecs

    size = file.stat().st_size
    if size == 0:
        raise _empty(file)
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    buffer, seen_text = "", False
    with file.open("rb") as f:
        while True:
            data = f.read(chunk)
            try:
                buffer += decoder.decode(data, final=not data)
            except UnicodeDecodeError:
                _read_text(file, errors)  # the whole-file reader names the exact byte
                raise
            seen_text = seen_text or bool(buffer.strip())
            if not data:
                break
            start = 0
            while len(buffer) - start > SEGMENT_CHARS:
                cut = _safe_cut(buffer, start + SEGMENT_CHARS, len(buffer))
                if cut is None:
                    break  # no safe cut in what was read: read on
                yield Segment(buffer[start:cut], False)
                start = cut
            buffer = buffer[start:]
    if not seen_text:
        raise _empty(file)
    yield from segments(iter([buffer]))  # the tail: the file's last document ends here


def _read_text(file: pathlib.Path, errors: str) -> str:
    data = file.read_bytes()
    if not data.strip():
        raise _empty(file)
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{file}: byte {err.start} is not valid UTF-8 (0x{data[err.start]:02x}); re-encode the file as UTF-8 "
            "or set data.errors=replace"
        ) from None


def _empty(file: pathlib.Path) -> DataError:
    return DataError(f"{file}: the file is empty; remove it or point data.source at a file with text")


def _check_field(columns, text_field: str, where: str) -> None:
    if columns is not None and text_field not in columns:
        raise DataError(
            f"{where}: no text field {text_field!r}; its columns are {', '.join(map(str, columns))}; "
            "set data.text_field to one of them"
        )


@contextlib.contextmanager
def quiet_datasets():
    """datasets' "Generating train split" bars while a table file is read (a few rows: noise, not progress)."""
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _table_documents(file: pathlib.Path, builder: str, text_field: str, streaming: bool) -> Iterator[str]:
    from datasets import load_dataset

    if file.stat().st_size == 0:
        raise _empty(file)
    try:
        with quiet_datasets():
            ds = load_dataset(builder, data_files=str(file), split="train", streaming=streaming)
        _check_field(ds.column_names, text_field, str(file))
        for row in ds:
            text = row[text_field]
            if text:
                yield str(text)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - a malformed row surfaces as one of many datasets/pyarrow errors
        cause = err.__cause__ or err
        raise DataError(f"{file}: cannot be read as {builder} ({first_line(cause)}); fix the file or convert it") from None


def _hub_documents(repo_id, text_field, config, split, streaming) -> Iterator[str]:
    from datasets import load_dataset

    try:
        ds = load_dataset(repo_id, config, split=split, streaming=streaming)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs one line
        raise DataError(
            f"data.source {repo_id!r} is neither a local path nor a loadable Hub dataset ({first_line(err)}); "
            "check the path, or the id, data.hub_config and your connection"
        ) from None
    _check_field(ds.column_names, text_field, f"Hub dataset {repo_id}")
    for row in ds:
        if row[text_field]:
            yield str(row[text_field])


def segments(documents: Iterator[str], size: int = SEGMENT_CHARS) -> Iterator[Segment]:
    """Cut documents into segments of about `size` characters at tokenizer-safe newlines."""
    for doc in documents:
        start = 0
        n = len(doc)
        while n - start > size:
            cut = _safe_cut(doc, start + size, n)
            if cut is None:
                break
            yield Segment(doc[start:cut], False)
            start = cut
        yield Segment(doc[start:], True)


def _safe_cut(doc: str, at: int, n: int) -> int | None:
    """A cut at or after `at` no tokenizer can see: just after a newline with a non-space character on both
    sides, or, in CRLF text, between the "\r" and the "\n" (byte-level BPE splits "\r", "\n" apart there too)."""
    pos = at
    while True:
        pos = doc.find("\n", pos)
        if pos == -1 or pos + 1 >= n:
            return None
        if not doc[pos + 1].isspace():
            if pos > 0 and not doc[pos - 1].isspace():
                return pos + 1
            if pos > 1 and doc[pos - 1] == "\r" and not doc[pos - 2].isspace():
                return pos
        pos += 1


def row_split(index: int, d) -> str:
    """"train" or "validation" for row `index` of a table source under the data settings `d`: all training when a
    validation source is given or the ratio is 0, else the seeded assignment of `in_validation`."""
    if d.val_source or d.val_ratio == 0:
        return "train"
    return "validation" if in_validation(index, d.val_ratio, d.seed) else "train"


def in_validation(index: int, ratio: float, seed: int) -> bool:
    """Seeded, order-independent assignment of segment `index` to validation (same in streaming mode)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < ratio
