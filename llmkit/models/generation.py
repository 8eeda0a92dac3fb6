"""`llmkit generate`: text from a trained model with HF `generate()` and its logits processors.

Design choices:
- Decoding is `model.generate()` with its own settings (greedy, temperature, top-k, top-p, repetition
  penalty, `stop_strings`, `num_return_sequences` for several samples in one batched pass, `TextStreamer` for
  token-by-token output). llmkit adds only the glue around it.
- Longer than the context: a model with learned positions cannot see past `n_positions` tokens. Generation
  runs with the KV cache until the context is full; after that each new token is computed on the last
  `n_positions - 1` tokens (the seeds' sliding window: positions shift, so the cache is recomputed).
  Rotary models take the same path, since they were trained on windows of that length.
- A prompt longer than the context keeps its end, with a warning. Characters a char-level tokenizer never saw
  are dropped with a warning (the seeds do the same). An empty prompt starts from the EOS/BOS token.
- `seed` makes sampling reproducible: the same seed gives the same text.
- llmkit-gpt on an x86 CPU decodes with its linear weights stored (in, out) for the whole call
  (models/decode_layout.py), faster token by token (benchmarks/generation.py).
- Stop strings are transformers' `StopStringCriteria`, given a probe prefix the tokenizer can encode: its default
  ("abcdef") decodes to unknown tokens on a char-level vocabulary without those letters, and it fails.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable

import torch
from transformers import GenerationConfig, StoppingCriteriaList, StopStringCriteria, TextStreamer, set_seed

from ..compat import stop_string_vocab
from ..errors import ParameterError
from .decode_layout import cpu_decode_layout
from .modeling_llmkit_gpt import LlmkitGPTPreTrainedModel


def context_length(model) -> int:
    """The tokens a model (or its config) takes at once."""
    config = getattr(model, "config", model)
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024))


def encode_prompt(tokenizer, prompt: str, context: int) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids:
        warnings.warn(f"dropped {ids.count(unk)} prompt token(s) the tokenizer does not know", stacklevel=2)
        ids = [i for i in ids if i != unk]
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    if len(ids) >= context:
        warnings.warn(f"prompt of {len(ids)} tokens is longer than the context; keeping its last {context - 1}",
                      stacklevel=2)
        ids = ids[-(context - 1):]
    return ids


def generate_ids(model, input_ids: torch.Tensor, settings: dict, *, tokenizer=None, streamer=None,
                 stop: list[str] | None = None, return_logits: bool = False):
    """`model.generate(input_ids, **settings)`, continued past the context with a sliding window. Returns only the
    new tokens (rows that ended early are padded with `pad_token_id`), and with `return_logits` also each new
    token's raw logits, (B, N, vocab).

    `settings` are generate()'s own keyword arguments (see `generation_settings`): passed as arguments rather than
    as a `GenerationConfig`, they override the model's saved generation config in the supported way (a greedy
    call does not inherit the sampling flags the run saved)."""
    # llmkit-gpt decodes on (in, out)-stored weights on CPU: swap them once for the whole loop, not once per
    # generate() call past the context. Other models are left as they are (the copy doubles weight memory).
    layout = cpu_decode_layout(model) if isinstance(model, LlmkitGPTPreTrainedModel) else contextlib.nullcontext()
    with layout:
        new, logits = _generate_ids(model, input_ids, settings, tokenizer, streamer, stop, return_logits)
    return (new, logits) if return_logits else new


def _generate_ids(model, input_ids, settings, tokenizer, streamer, stop, return_logits):
    context = context_length(model)
    wanted = settings["max_new_tokens"]
    stop = _representable(stop, tokenizer)
    extra = dict(stopping_criteria=StoppingCriteriaList([_StopStrings(tokenizer, stop)])) if stop else {}
    if return_logits:
        extra.update(output_logits=True, return_dict_in_generate=True)
    first = dict(settings, max_new_tokens=min(wanted, context - input_ids.shape[1]))
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **first, **extra,
                         streamer=_HoldEnd(streamer) if streamer else None)
    sequences = out.sequences if return_logits else out
    logits = list(out.logits) if return_logits else []
    new = sequences[:, input_ids.shape[1]:]
    eos, pad = settings.get("eos_token_id"), settings.get("pad_token_id")
    one = dict(settings, max_new_tokens=1, num_return_sequences=1)
    while new.shape[1] < wanted and not _finished(new, eos, stop, tokenizer):
        window = torch.cat([input_ids.expand(new.shape[0], -1), new], dim=1)[:, -(context - 1):]
        out = model.generate(window, attention_mask=torch.ones_like(window), **one, **extra)
        step = (out.sequences if return_logits else out)[:, -1:]
        if return_logits:
            logits.append(out.logits[0])
        if eos is not None and pad is not None:  # a row that has ended stays ended, as inside generate()
            step = step.masked_fill(_ended(new, eos).unsqueeze(1), pad)
        if streamer:
            streamer.put(step.cpu())
        new = torch.cat([new, step], dim=1)
    if streamer:
        streamer.end()  # once, after the last window: the text streams as one piece
    return new, torch.stack(logits, dim=1) if return_logits else None


class _HoldEnd:
    """A streamer whose `end()` waits: the first `generate()` call must not close the stream (and print its
    newline) when generation goes on past the context."""

    def __init__(self, streamer):
        self.streamer = streamer

    def put(self, value):
        self.streamer.put(value)

    def end(self):
        pass


def _ended(new: torch.Tensor, eos: int | list[int]) -> torch.Tensor:
    """(B,) True where a row holds an end-of-sequence token."""
    return torch.isin(new, torch.tensor(eos if isinstance(eos, list) else [eos], device=new.device)).any(dim=1)


def _finished(new, eos, stop, tokenizer) -> bool:
    if eos is not None and bool(_ended(new, eos).all()):
        return True
    if stop and tokenizer is not None:
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        return all(any(s in t for s in stop) for t in texts)
    return False


def generation_settings(tokenizer, *, max_new_tokens=100, do_sample=None, temperature=1.0, top_k=None,
                        top_p=None, repetition_penalty=None, num_samples=1) -> dict:
    """generate()'s keyword arguments for these options, checked: greedy when temperature is 0 or do_sample is
    False (and then no sampling flag is set at all), sampling otherwise."""
    if do_sample is None or temperature == 0:  # temperature 0 means greedy, also with do_sample set
        do_sample = temperature is not None and temperature > 0
    if temperature is not None and temperature < 0:
        raise ParameterError("temperature", f" must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ParameterError("top_p", f" must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise ParameterError("top_k", f" must be >= 0, got {top_k}")
    settings = dict(
        max_new_tokens=max_new_tokens,
        do_sample=bool(do_sample),
        num_return_sequences=num_samples,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if do_sample:
        settings.update(temperature=temperature or 1.0, top_k=top_k or 0, top_p=top_p if top_p is not None else 1.0)
    if repetition_penalty is not None:
        if repetition_penalty <= 0:
            raise ParameterError("repetition_penalty", f" must be > 0, got {repetition_penalty}")
        settings["repetition_penalty"] = repetition_penalty
    return settings


def make_generation_config(tokenizer, **options) -> GenerationConfig:
    """The `GenerationConfig` a run folder saves (`generation_config.json`): `generation_settings` as a config."""
    return GenerationConfig(**generation_settings(tokenizer, **options))


def generate_texts(model, tokenizer, prompts: Iterable[str] | str, *, max_new_tokens: int = 100,
                   do_sample: bool | None = None, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, repetition_penalty: float | None = None, num_samples: int = 1,
                   seed: int | None = None, stop: list[str] | None = None, stream: bool = False,
                   chat: bool = False) -> list[str]:
    """Text in, text out: the continuations (without the prompt) of each prompt, `num_samples` per prompt.

    With `chat`, each prompt is a user message (or a list of {role, content} messages, a conversation so far)
    rendered with the tokenizer's chat template, and the answer ends at the end-of-turn (EOS) token."""
    if isinstance(prompts, str) or (chat and prompts and isinstance(prompts[0], dict)):
        prompts = [prompts]
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; train it with data.format=instruct, or "
                         "generate without --chat")
    unwrapped = getattr(model, "module", model)
    was_training = unwrapped.training
    unwrapped.eval()
    device = next(unwrapped.parameters()).device
    settings = generation_settings(tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   temperature=temperature, top_k=top_k, top_p=top_p,
                                   repetition_penalty=repetition_penalty, num_samples=num_samples)
    outputs = []
    try:
        for prompt in prompts:
            if seed is not None:
                set_seed(seed)
            context = context_length(unwrapped)
            ids = chat_prompt(tokenizer, prompt, context) if chat else encode_prompt(tokenizer, prompt, context)
            ids = torch.tensor([ids], device=device)
            streamer = None
            if stream and num_samples == 1:
                streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            with torch.no_grad():
                new = generate_ids(unwrapped, ids, settings, tokenizer=tokenizer, streamer=streamer, stop=stop)
            for row in new:
                text = tokenizer.decode(row, skip_special_tokens=True)
                outputs.append(_cut_at_stop(text, stop))
    finally:
        unwrapped.train(was_training)
    return outputs


def chat_prompt(tokenizer, conversation: str | list[dict], context: int) -> list[int]:
    """The ids of a conversation (or one user message) followed by the assistant's turn, rendered with the chat
    template; the oldest turns are left out when it does not fit the context."""
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else list(conversation)
    while True:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < context or len(messages) <= 1:
            return ids[-(context - 1):]
        messages = messages[2:] if messages[0]["role"] != "system" else messages[:1] + messages[3:]


class _StopStrings(StopStringCriteria):
    """transformers' stop-string matcher, reading the vocabulary behind a prefix of characters the tokenizer has."""

    @staticmethod
    def clean_tokenizer_vocab(tokenizer, static_prefix="abcdef", stop_string_matching_mode=None):
        unk = tokenizer.unk_token_id
        if unk is not None and unk in tokenizer(static_prefix, add_special_tokens=False)["input_ids"]:
            special = set(tokenizer.all_special_tokens)
            letters = sorted(t for t in tokenizer.get_vocab() if len(t) == 1 and t.isalnum() and t not in special)
            static_prefix = "".join(letters[:6]) or static_prefix
        return stop_string_vocab(tokenizer, static_prefix, stop_string_matching_mode)


def _representable(stop: list[str] | None, tokenizer) -> list[str] | None:
    """The stop strings the model can produce: one with a character the tokenizer has no token for can never
    appear in the output (and transformers' stop-string matcher refuses it), so it is left out."""
    if not stop or tokenizer is None or tokenizer.unk_token_id is None:
        return stop
    kept = [s for s in stop if tokenizer.unk_token_id not in tokenizer(s, add_special_tokens=False)["input_ids"]]
    return kept or None


def _cut_at_stop(text: str, stop: list[str] | None) -> str:
    for s in stop or []:
        if s in text:
            text = text[: text.index(s) + len(s)]
    return text
