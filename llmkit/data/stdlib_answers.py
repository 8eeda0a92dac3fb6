"""The answers of `builtin-instruct`: for public functions of common standard-library modules, "What does m.f do?"
answered by the first sentence of the function's docstring.

A standalone script (standard library only): `llmkit.data.instruct.builtin_instruct_rows` runs it in a fresh,
isolated interpreter (`python -I`) and prints nothing else than the rows as JSON, so the set does not depend on what
the calling process imported.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import sys

BUILTIN_MODULES = ("os", "os.path", "shutil", "pathlib", "json", "re", "math", "random", "statistics", "itertools",
                   "functools", "operator", "collections", "heapq", "bisect", "copy", "string", "textwrap",
                   "datetime", "time", "calendar", "glob", "fnmatch", "csv", "hashlib", "base64", "binascii",
                   "zlib", "gzip", "urllib.parse", "html", "uuid", "secrets", "struct", "tempfile", "difflib",
                   "keyword", "unicodedata", "shlex", "fractions", "decimal", "cmath", "inspect", "types", "array",
                   "contextlib", "traceback", "warnings", "weakref", "platform", "locale", "zipfile", "tarfile",
                   "sqlite3", "pprint", "reprlib", "codecs", "io", "sys", "builtins")


def collect() -> list[dict]:
    rows, seen = [], set()
    for module_name in BUILTIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in sorted(dir(module)):
            obj = getattr(module, name, None)
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            answer = first_sentence(inspect.getdoc(obj) or "")
            key = hashlib.sha1(f"{module_name}.{name}".encode()).hexdigest()
            if answer and key not in seen:
                seen.add(key)
                rows.append({"prompt": f"What does {module_name}.{name} do?", "response": answer})
    return rows


def first_sentence(doc: str) -> str | None:
    lines = [line for line in doc.strip().splitlines()]
    if lines and ("(" in lines[0] and lines[0].rstrip().endswith(")") or "->" in lines[0]):
        lines = lines[1:]  # a C function's signature line
    text = " ".join(" ".join(lines).split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match.group(1) if match else None
    if sentence is None or not 20 <= len(sentence) <= 200 or not sentence[0].isupper():
        return None
    return sentence


if __name__ == "__main__":
    json.dump(collect(), sys.stdout)
