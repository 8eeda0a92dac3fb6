"""Data: sources to documents, tokenization with `datasets`, a content-keyed cache, and training blocks."""

from .pipeline import (
    BlockCollator,
    PackedBlocks,
    PreparedData,
    RandomWindows,
    StreamingBlocks,
    prepare_data,
    summary,
)
from .sources import DataError, builtin_documents

__all__ = [
    "BlockCollator",
    "DataError",
    "PackedBlocks",
    "PreparedData",
    "RandomWindows",
    "StreamingBlocks",
    "builtin_documents",
    "prepare_data",
    "summary",
]
