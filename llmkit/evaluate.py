"""`llmkit evaluate`: loss, perplexity and bits per token/char/byte of models on any data source.

The numbers come from llmkit's own `evaluate` metric (`llmkit/metrics/perplexity`, loaded from its local path
with `evaluate.load`), which takes the loaded model; documents come from the same readers as training.
"""

from __future__ import annotations

import evaluate

from .data.sources import DataError, iter_documents
from .metrics import PERPLEXITY_PATH
from .models.loading import load_model


def load_perplexity():
    return evaluate.load(PERPLEXITY_PATH, module_type="metric")


def evaluate_model(model, tokenizer, documents: list[str], *, stride=None, batch_size=8, max_tokens=None) -> dict:
    metric = load_perplexity()
    return metric.compute(predictions=documents, model=model, tokenizer=tokenizer, stride=stride,
                          batch_size=batch_size, max_tokens=max_tokens)


def evaluate_models(names: list[str], source: str, *, text_field="text", stride=None, batch_size=8,
                    max_tokens=None, device=None, adapter=None) -> list[dict]:
    documents = list(iter_documents(source, text_field=text_field))
    if not any(doc.strip() for doc in documents):
        raise DataError(f"--data {source}: there is no text to score; point it at a file or folder with text")
    results = []
    for name in names:
        model, tokenizer = load_model(name, device=device, adapter=adapter)
        result = evaluate_model(model, tokenizer, documents, stride=stride, batch_size=batch_size,
                                max_tokens=max_tokens)
        results.append({"model": f"{name} + {adapter}" if adapter else name, "data": source, **result})
    return results


def format_table(results: list[dict]) -> str:
    cols = ["model", "loss", "perplexity", "bits_per_token", "bits_per_char", "bits_per_byte", "tokens"]
    rows = [[_fmt(r.get(c)) for c in cols] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)
