"""`llmkit evaluate`: loss, perplexity and bits per token/char/byte of models on any data source.

The numbers come from llmkit's own `evaluate` metric (`llmkit/metrics/perplexity`, loaded from its local path
with `evaluate.load`), which takes the loaded model; documents come from the same readers as training.
"""

from __future__ import annotations

import evaluate

from .data.sources import DataError, iter_documents
from .errors import ParameterError
from .loading import load_model
from .metrics import PERPLEXITY_PATH
from .models.generation import context_length


def load_perplexity():
    return evaluate.load(PERPLEXITY_PATH, module_type="metric")


def evaluate_model(model, tokenizer, documents: list[str], *, stride=None, batch_size=8, max_tokens=None,
                   per_document=False) -> dict:
    metric = load_perplexity()
    return metric.compute(predictions=documents, model=model, tokenizer=tokenizer, stride=stride,
                          batch_size=batch_size, max_tokens=max_tokens, per_document=per_document)


def evaluate_models(names: list[str], source: str, *, text_field="text", stride=None, batch_size=8,
                    max_tokens=None, device=None, adapter=None, instruct: dict | None = None,
                    per_document=False, preference: dict | None = None, reference: str | None = None) -> list[dict]:
    """Score each model on `source`: text (sliding-window perplexity); with `instruct` (the instruct column
    settings, `data.*` names), the loss on the answers of prompt/response or chat rows; with `preference` (the
    preference column settings), preference accuracy and margins on prompt/chosen/rejected rows (against
    `reference` when given)."""
    ref = None
    if preference is not None and reference is not None:
        ref = load_model(reference, device=device)
    if instruct is None and preference is None:
        documents = list(iter_documents(source, text_field=text_field))
        if not any(doc.strip() for doc in documents):
            raise ParameterError("data", f" {source}: there is no text to score; point it at a file or folder with text")
    results = []
    for name in names:
        model, tokenizer = load_model(name, device=device, adapter=adapter)
        context = context_length(model)
        if stride is not None and not 0 < stride <= context:
            raise ParameterError("stride", f" {stride} is outside [1, {context}] (the context of {name}); pass "
                                 f"{{param}} {context} or less")
        if preference is not None:
            result = evaluate_preferences(model, tokenizer, source, batch_size=batch_size, reference=ref,
                                          **preference)
        elif instruct is None:
            try:
                result = evaluate_model(model, tokenizer, documents, stride=stride, batch_size=batch_size,
                                        max_tokens=max_tokens, per_document=per_document)
            except ValueError as err:
                raise DataError(f"{name}: {err}") from None
        else:
            result = evaluate_answers(model, tokenizer, source, batch_size=batch_size, **instruct)
        results.append({"model": f"{name} + {adapter}" if adapter else name, "data": source, **result})
    return results


def evaluate_answers(model, tokenizer, source: str, *, batch_size: int = 8, **fields) -> dict:
    """Loss, perplexity and bits per token on the answer tokens of instruction data, rendered with the model's
    own chat template exactly as `data.format: instruct` trains (prompt tokens are context, not scored)."""
    import math

    from .config import ConfigError, load_config
    from .data.instruct import encode, read_rows, to_messages

    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("this model's tokenizer has no chat template: --format instruct scores models trained with "
                          "data.format=instruct")
    cfg = load_config(None, [f"data.{k}={v}" for k, v in fields.items()] + ["data.format=instruct"])
    context = context_length(model)
    examples = []
    for index, row in read_rows(source, cfg):
        ids, labels = encode(to_messages(row, index, source, cfg), tokenizer)
        examples.append((ids[:context], labels[:context]))
    scored = scored_logps(model, tokenizer, examples, batch_size)
    total, count = -sum(lp for lp, _ in scored), sum(n for _, n in scored)
    if count == 0:
        raise ParameterError("data", f" {source}: no answer tokens to score")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_token": loss / math.log(2),
            "tokens": count, "examples": len(examples)}


def scored_logps(model, tokenizer, examples: list[tuple[list[int], list[int]]], batch_size: int = 8):
    """(summed log-probability of the scored tokens, their count) of each (ids, labels) example: labels are -100
    on context tokens and the token ids on scored ones (aligned with the ids; the model predicts each from the
    ones before). Batched with right padding under an attention mask."""
    import torch
    from torch.nn import functional as F

    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            group = examples[start : start + batch_size]
            width = max(len(ids) for ids, _ in group)
            ids = torch.full((len(group), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            labels = torch.full((len(group), width), -100, dtype=torch.long)
            for row, (seq, lab) in enumerate(group):
                ids[row, : len(seq)], labels[row, : len(lab)], mask[row, : len(seq)] = (torch.tensor(seq),
                                                                                       torch.tensor(lab), 1)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            targets = labels[:, 1:].to(device)
            logp = -F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none")
            out += [(float(lp), int(n)) for lp, n in zip(logp.sum(-1).tolist(), (targets != -100).sum(-1).tolist())]
    return out


def evaluate_preferences(model, tokenizer, source: str, *, batch_size: int = 8, reference=None, **fields) -> dict:
    """Preference accuracy on prompt/chosen/rejected rows: the share of pairs whose chosen answer the model gives a
    higher log-probability than the rejected one (with a reference model: a higher log-ratio to the reference,
    DPO's implicit reward), the mean margin, and the per-token loss of the chosen answers. Rendered with the
    model's chat template as `data.format: preference` trains; `builtin-preference` is scored on its held-out
    split (the pairs a run tuned on it never saw)."""
    from .config import ConfigError, load_config
    from .data.preference import BUILTIN, read_pairs, rendered_ids, to_pair
    from .data.sources import in_validation

    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("this model's tokenizer has no chat template: --format preference scores models trained "
                          "with data.format=instruct or preference")
    cfg = load_config(None, [f"data.{k}={v}" for k, v in fields.items()])
    context = context_length(model)
    sequences, skipped = [], 0
    for index, row in read_pairs(source, cfg):
        if source == BUILTIN and not in_validation(index, cfg.data.val_ratio, cfg.data.seed):
            continue
        pair = to_pair(row, cfg)
        if isinstance(pair, str):
            skipped += 1
            continue
        prompt = rendered_ids(tokenizer, pair["prompt"], prompt=True)
        for key in ("chosen", "rejected"):
            ids = rendered_ids(tokenizer, pair["prompt"] + pair[key])
            begin = next((i for i, (a, b) in enumerate(zip(prompt, ids)) if a != b), min(len(prompt), len(ids)))
            ids = ids[:context]
            begin = min(begin, context - 1)
            sequences.append((ids, [-100] * begin + ids[begin:]))
    if not sequences:
        raise ParameterError("data", f" {source}: no usable prompt/chosen/rejected rows to score")
    ours = scored_logps(model, tokenizer, sequences, batch_size)
    theirs = scored_logps(reference[0], reference[1], sequences, batch_size) if reference is not None else None
    chosen, rejected = ours[0::2], ours[1::2]
    scores = [c[0] - r[0] for c, r in zip(chosen, rejected)]
    if theirs is not None:
        scores = [s - (tc[0] - tr[0]) for s, tc, tr in zip(scores, theirs[0::2], theirs[1::2])]
    import math

    chosen_loss = -sum(c[0] for c in chosen) / max(1, sum(c[1] for c in chosen))
    wins = sum(1.0 if s > 0 else 0.5 if s == 0 else 0.0 for s in scores)  # a tie (the reference itself) is chance
    return {"accuracy": wins / len(scores), "margin": sum(scores) / len(scores),
            "chosen_logp": sum(c[0] for c in chosen) / len(chosen),
            "rejected_logp": sum(r[0] for r in rejected) / len(rejected), "chosen_loss": chosen_loss,
            "chosen_perplexity": math.exp(min(chosen_loss, 50.0)), "pairs": len(scores), "skipped": skipped,
            "relative_to_reference": reference is not None}


def format_table(results: list[dict]) -> str:
    cols = ["model", "loss", "perplexity", "bits_per_token", "bits_per_char", "bits_per_byte", "tokens"]
    if results and "accuracy" in results[0]:
        cols = ["model", "accuracy", "margin", "chosen_logp", "rejected_logp", "chosen_loss", "pairs"]
    rows = [[_fmt(r.get(c)) for c in cols] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)
