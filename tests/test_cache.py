"""The KV cache invariant: decoding with the cache is decoding without it.

For every model form (positions, norm, MLP, head tying, llmkit-gpt and the stock GPT-2 switch) and for batched
left-padded prompts:
- greedy tokens with the cache equal greedy tokens without it;
- teacher-forced: every step logit generate() computed with its cache equals a full, cache-free forward of the
  same prefix, each prompt alone and unpadded (1e-4). Comparing logits along one fixed sequence means a near
  tie cannot flip a token and hide or fake a difference;
- past the context (llmkit's sliding window), each step equals a recompute of the cropped window.
The same holds for beam search, several samples per prompt, `pipeline()` and a LoRA (peft) model.

These are the tests that catch a transformers release renaming the cache argument under the model (5.24 moved
`past_key_values` to `cache`: a model that ignores the cache it is handed attends to the new token only).
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from llmkit import build_model
from llmkit.models.generation import generate_ids, generation_settings
from llmkit.tokenizers import train_tokenizer

VOCAB = 61
CTX = 24
PAD = 0


def _chain() -> list[int]:
    """A second-order Markov chain (next token = a random function of the previous two): what the test models
    learn, so their continuations of in-distribution prompts vary from step to step."""
    g = torch.Generator().manual_seed(0)
    table = torch.randint(1, VOCAB, (VOCAB, VOCAB), generator=g)
    chain = [1, 2]
    for _ in range(3000):
        chain.append(int(table[chain[-2], chain[-1]]))
    return chain


CHAIN = _chain()
PROMPTS = [CHAIN[100:107], CHAIN[211:213], CHAIN[322:326]]  # different lengths: left-padded into one batch


def _forms() -> dict[str, tuple[str, dict]]:
    forms = {}
    for pos, norm, mlp, tied in itertools.product(("learned", "rotary"), ("layernorm", "rmsnorm"), ("gelu", "swiglu"),
                                                  (True, False)):
        name = f"{pos}-{norm}-{mlp}-{'tied' if tied else 'untied'}"
        forms[name] = ("llmkit-gpt", dict(position_embedding_type=pos, norm_type=norm, mlp_type=mlp,
                                          tie_word_embeddings=tied))
    forms["learned-nobias-gelu_new"] = ("llmkit-gpt", dict(bias=False, activation_function="gelu_new"))
    forms["gpt2-tied"] = ("gpt2", dict(tie_word_embeddings=True))
    forms["gpt2-untied"] = ("gpt2", dict(tie_word_embeddings=False))
    return forms


FORMS = _forms()


def make(form: str, seed: int = 0):
    """A model of `form` trained for a few steps on `CHAIN`, so its greedy continuations vary."""
    return _trained(form, seed).eval()


@functools.cache
def _trained(form: str, seed: int):
    arch, options = FORMS[form]
    torch.manual_seed(seed)
    model = build_model(arch, vocab_size=VOCAB, n_positions=CTX, n_embd=32, n_layer=2, n_head=4, pad_token_id=PAD,
                        **options)
    chain = torch.tensor(CHAIN)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        starts = torch.randint(0, len(chain) - CTX, (8,))
        x = torch.stack([chain[s : s + CTX] for s in starts])
        model(x, labels=x, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def left_padded(prompts=PROMPTS):
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def full_forward_last_logits(model, prefix: list[int]) -> torch.Tensor:
    """The next-token logits of `prefix` from one forward pass with no cache at all."""
    with torch.no_grad():
        return model(torch.tensor([prefix]), use_cache=False).logits[0, -1]


GREEDY = dict(do_sample=False, pad_token_id=PAD, eos_token_id=None)


@pytest.mark.parametrize("form", FORMS)
def test_greedy_with_the_cache_equals_greedy_without_it_on_a_left_padded_batch(form):
    model = make(form)
    ids, mask = left_padded()
    n = CTX - ids.shape[1]
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=n, use_cache=True, **GREEDY)
    uncached = model.generate(ids, attention_mask=mask, max_new_tokens=n, use_cache=False, **GREEDY)
    assert cached.tolist() == uncached.tolist()
    assert len(set(cached[:, ids.shape[1]:].flatten().tolist())) > 3, "degenerate model: the test would prove little"


@pytest.mark.parametrize("form", FORMS)
def test_cached_step_logits_equal_a_full_forward_of_each_prompt_alone(form):
    model = make(form, seed=1)
    ids, mask = left_padded()
    width = ids.shape[1]
    out = model.generate(ids, attention_mask=mask, max_new_tokens=CTX - width, use_cache=True, output_logits=True,
                         return_dict_in_generate=True, **GREEDY)
    for row, prompt in enumerate(PROMPTS):
        sequence = prompt + out.sequences[row, width:].tolist()
        worst = 0.0
        for step, step_logits in enumerate(out.logits):
            reference = full_forward_last_logits(model, sequence[: len(prompt) + step])
            worst = max(worst, (step_logits[row] - reference).abs().max().item())
        assert worst < 1e-4, f"prompt {row}: cached step logits differ from a full forward by {worst:.2e}"


def _past_the_context(model, use_cache: bool):
    settings = dict(max_new_tokens=2 * CTX, do_sample=False, eos_token_id=None, pad_token_id=PAD, use_cache=use_cache)
    prompt = torch.tensor([PROMPTS[0]])
    return generate_ids(model, prompt, settings, return_logits=True)


@pytest.mark.parametrize("form", [f for f in FORMS if f.endswith("-tied") and "gelu-" in f] + ["gpt2-untied"])
def test_past_the_context_each_step_equals_a_recompute_of_the_cropped_window(form):
    model = make(form, seed=2)
    new, logits = _past_the_context(model, use_cache=True)
    assert new.shape == (1, 2 * CTX) and logits.shape == (1, 2 * CTX, VOCAB)
    sequence = PROMPTS[0] + new[0].tolist()
    for step in range(2 * CTX):
        end = len(PROMPTS[0]) + step  # predicting sequence[end] from at most CTX - 1 tokens before it
        reference = full_forward_last_logits(model, sequence[max(0, end - (CTX - 1)) : end])
        torch.testing.assert_close(logits[0, step], reference, atol=1e-4, rtol=0, msg=f"step {step}")
    uncached, _ = _past_the_context(model, use_cache=False)
    assert uncached.tolist() == new.tolist()


@pytest.mark.parametrize("form", ["learned-layernorm-gelu-tied", "rotary-rmsnorm-swiglu-untied", "gpt2-tied"])
def test_beam_search_with_the_cache_equals_beam_search_without_it(form):
    model = make(form, seed=3)
    ids, mask = left_padded()
    kw = dict(attention_mask=mask, max_new_tokens=12, num_beams=3, num_return_sequences=2, **GREEDY)
    cached = model.generate(ids, use_cache=True, **kw)
    assert cached.tolist() == model.generate(ids, use_cache=False, **kw).tolist()
    assert cached.shape[0] == 2 * len(PROMPTS)


@pytest.mark.parametrize("form", ["learned-layernorm-gelu-tied", "rotary-layernorm-gelu-tied"])
def test_several_samples_per_prompt_are_the_same_with_and_without_the_cache(form):
    model = make(form, seed=4)
    ids = torch.tensor([PROMPTS[0]])
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(11)
        runs.append(model.generate(ids, max_new_tokens=12, do_sample=True, top_k=0, temperature=3.0, num_return_sequences=4,
                                   pad_token_id=PAD, use_cache=use_cache).tolist())
    assert runs[0] == runs[1]
    assert len({tuple(r) for r in runs[0]}) > 1  # really four samples


def test_pipeline_text_equals_uncached_greedy_decoding():
    from transformers import pipeline

    from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM

    tok = train_tokenizer("char", ["the quick brown fox jumps over the lazy dog. " * 8])
    torch.manual_seed(5)
    model = LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                 position_embedding_type="rotary", initializer_range=0.2)).eval()
    ids = tok("the quick", return_tensors="pt", add_special_tokens=False)["input_ids"]
    expected = tok.decode(model.generate(ids, max_new_tokens=20, do_sample=False, use_cache=False,
                                         pad_token_id=tok.pad_token_id)[0], skip_special_tokens=True)
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    assert generator("the quick", max_new_tokens=20, do_sample=False)[0]["generated_text"] == expected


@pytest.mark.parametrize("form", ["learned-layernorm-gelu-tied", "rotary-rmsnorm-swiglu-untied", "gpt2-tied"])
def test_a_lora_model_decodes_the_same_with_and_without_the_cache(form):
    from peft import LoraConfig, get_peft_model

    model = make(form, seed=6)
    targets = ["c_attn", "c_proj", "c_fc"]
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                                            fan_in_fan_out=form.startswith("gpt2"))).eval()
    ids, mask = left_padded()
    kw = dict(attention_mask=mask, max_new_tokens=CTX - ids.shape[1], **GREEDY)
    out = lora.generate(input_ids=ids, use_cache=True, output_logits=True, return_dict_in_generate=True, **kw)
    assert out.sequences.tolist() == lora.generate(input_ids=ids, use_cache=False, **kw).tolist()
    width = ids.shape[1]
    for row, prompt in enumerate(PROMPTS):
        sequence = prompt + out.sequences[row, width:].tolist()
        for step, step_logits in enumerate(out.logits):
            reference = full_forward_last_logits(lora, sequence[: len(prompt) + step])
            torch.testing.assert_close(step_logits[row], reference, atol=1e-4, rtol=0)


def test_generation_settings_are_plain_generate_arguments():
    """Greedy settings carry no sampling flag, so a run's saved sampling config cannot leak into a greedy call."""
    tok = train_tokenizer("char", ["abc"])
    greedy = generation_settings(tok, temperature=0, top_k=40, top_p=0.9)
    assert greedy["do_sample"] is False and not {"temperature", "top_k", "top_p"} & set(greedy)
    sampled = generation_settings(tok, temperature=0.7, top_k=40)
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_k"]) == (True, 0.7, 40)
