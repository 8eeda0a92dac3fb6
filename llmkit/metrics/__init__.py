"""`evaluate` modules shipped with llmkit, loaded from their local path (the Hub's cannot be fetched offline)."""

import pathlib

PERPLEXITY_PATH = str(pathlib.Path(__file__).resolve().parent / "perplexity")
