"""Perplexity of an in-memory causal LM on texts, with a sliding window: an `evaluate` metric.

Unlike the Hub's `perplexity` metric (which takes a model id and cannot be downloaded offline), this one takes a
loaded model and tokenizer. Two modes:
- joined (the default): the texts are joined as training joins documents, `EOS doc1 EOS doc2 ...`, and every
  token after the leading EOS is scored exactly once (the method of the transformers perplexity guide): a window
  ends every `stride` tokens and reaches `context` tokens back (the last one too: it keeps a full context), and
  each window scores only the targets not scored before, so each token is predicted with as much context as the
  model allows. This is how training sees and evaluates the data, so it is comparable with a run's eval loss.
  Bits per character and per byte count each document boundary (EOS) as one character (byte), so a char-level
  model's bits per character equal its bits per token.
- per document (`per_document=True`): each document is scored on its own, from a fresh start token (EOS/BOS), its
  boundary never predicted, and only its own characters and bytes counted: lm-evaluation-harness's rolling
  loglikelihood (its default stride is the whole context, the harness's disjoint windows), so bits per byte
  compare with published harness numbers (wikitext, ...).
Models with different tokenizers are comparable through bits per character or byte in either mode.
"""

import math

import datasets
import evaluate
import torch
from torch.nn import functional as F

_DESCRIPTION = "Sliding-window perplexity, bits per token, character and byte of a loaded causal LM."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): the texts (documents) to score.
    model: a loaded causal LM (transformers PreTrainedModel).
    tokenizer: its tokenizer (needs an EOS token).
    stride (int, optional): window step in tokens; default half the context, or the whole context per document
        (lm-evaluation-harness's disjoint rolling windows, so its bits per byte are reproduced at the defaults).
    context (int, optional): window length; default the model's context.
    batch_size (int): windows per forward pass.
    max_tokens (int, optional): stop after scoring this many tokens.
    per_document (bool): score each document alone from a fresh start token (lm-evaluation-harness's way).
Returns:
    loss, perplexity, bits_per_token, bits_per_char, bits_per_byte, tokens, chars, bytes, context, stride
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model, tokenizer, stride=None, context=None, batch_size=8, max_tokens=None,
                 per_document=False):
        config = model.config
        context = int(context or getattr(config, "n_positions", None) or config.max_position_embeddings)
        if stride is None:  # per document: the harness's rolling windows, which never overlap
            stride = context if per_document else max(1, context // 2)
        stride = int(stride)
        if not 0 < stride <= context:
            raise ValueError(f"stride {stride} is outside [1, {context}] (the model's context); pass stride "
                             f"{context} or less")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token; documents cannot be joined")
        # whole documents, windowed below (verbose=False: no "longer than the maximum" warning for them)
        encoded = tokenizer(list(predictions), add_special_tokens=False, verbose=False)["input_ids"]
        if per_document:  # each document alone: its own stream, start token first, nothing predicted past it
            streams = [[eos, *ids] for ids in encoded if ids]
            boundaries = 0
        else:
            stream = [eos]
            for ids in encoded:
                stream.extend(ids)
                stream.append(eos)
            stream.pop()  # no boundary after the last document
            streams = [stream]
            boundaries = len(encoded) - 1
        chars = sum(len(t) for t in predictions) + boundaries
        n_bytes = sum(len(t.encode("utf-8")) for t in predictions) + boundaries

        device = next(model.parameters()).device
        windows = []  # (stream, begin, first target index scored in this window, end)
        n_targets = 0
        budget = int(max_tokens) if max_tokens is not None else None
        for s_index, ids in enumerate(streams):
            targets_here = len(ids) - 1
            if budget is not None:
                targets_here = min(targets_here, budget - n_targets)
            scored, end = 0, 0
            while scored < targets_here:
                end = min(end + stride if end else context, targets_here)
                windows.append((s_index, max(0, end - context), scored, end))  # a full context, the last one too
                scored = end
            n_targets += max(0, targets_here)
            if budget is not None and n_targets >= budget:
                break
        tensors = [torch.tensor(ids, dtype=torch.long) for ids in streams]
        total_nll = 0.0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, len(windows), batch_size):
                group = windows[i : i + batch_size]
                width = max(end - b for _, b, _, end in group)
                inputs = torch.full((len(group), width), eos, dtype=torch.long)
                targets = torch.full((len(group), width), -100, dtype=torch.long)
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for row, (s_index, b, first, end) in enumerate(group):
                    ids = tensors[s_index]
                    inputs[row, : end - b] = ids[b:end]
                    mask[row, : end - b] = 1
                    targets[row, first - b : end - b] = ids[first + 1 : end + 1]
                logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits
                nll = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1),
                    ignore_index=-100, reduction="sum",
                )
                total_nll += float(nll.double())
        model.train(was_training)
        loss = total_nll / n_targets
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_token": loss / math.log(2),
            "bits_per_char": total_nll / math.log(2) / chars if max_tokens is None else None,
            "bits_per_byte": total_nll / math.log(2) / n_bytes if max_tokens is None else None,
            "tokens": n_targets,
            "chars": chars,
            "bytes": n_bytes,
            "context": context,
            "stride": stride,
            "per_document": bool(per_document),
        }
