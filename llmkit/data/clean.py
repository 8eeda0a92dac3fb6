"""Optional corpus cleaning from the seeds' curriculum (Day 36), applied per document, each step a switch.

Differences from the curriculum's code, on purpose: blank lines are never dropped as "metadata" (the
original's `len(line) < 4` deleted every blank line, so no paragraph survived to be filtered), and de-duplication
compares whole paragraphs, not their first 100 characters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from ..config import CleanConfig


def looks_like_metadata(line: str) -> bool:
    """Headers, footers, page numbers: short non-blank lines, `***` banners, short all-caps lines."""
    s = line.strip()
    if not s:
        return False
    return len(s) < 4 or s.startswith("***") or (s.isupper() and len(s) < 40)


def is_active(cfg: CleanConfig) -> bool:
    return any((cfg.drop_metadata_lines, cfg.collapse_blank_lines, cfg.min_words, cfg.max_words, cfg.dedup))


def clean_documents(documents: Iterator[str], cfg: CleanConfig) -> Iterator[str]:
    if not is_active(cfg):
        yield from documents
        return
    seen: set[bytes] = set()
    for doc in documents:
        if cfg.drop_metadata_lines:
            doc = "\n".join(line for line in doc.splitlines() if not looks_like_metadata(line))
        if cfg.collapse_blank_lines:
            doc = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", doc)
        paragraphs = doc.split("\n\n")
        kept = []
        for para in paragraphs:
            words = len(para.split())
            if cfg.min_words is not None and words < cfg.min_words:
                continue
            if cfg.max_words is not None and words > cfg.max_words:
                continue
            if cfg.dedup:
                key = hashlib.blake2b(para.strip().encode(), digest_size=16).digest()
                if key in seen:
                    continue
                seen.add(key)
            kept.append(para)
        doc = "\n\n".join(kept)
        if doc.strip():
            yield doc if doc.endswith("\n") else doc + "\n"
