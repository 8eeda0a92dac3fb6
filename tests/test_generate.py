"""`llmkit generate`: greedy/sampling settings, stop strings, long outputs past the context, prompts, and the CLI."""

import warnings

import pytest
import torch
from conftest import fit_windows

from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM
from llmkit.cli import main
from llmkit.models.generation import generate_texts
from llmkit.tokenizers import train_tokenizer

TEXT = "abcdefgh " * 40 + "the quick brown fox jumps over the lazy dog. " * 4
PERIODIC = "abcdefgh " * 40
CTX = 32


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer("char", [TEXT])


def make_model(tok, seed=0, **kw):
    torch.manual_seed(seed)
    config = LlmkitGPTConfig(vocab_size=len(tok), n_positions=CTX, n_embd=32, n_layer=2, n_head=2, **kw)
    return LlmkitGPTForCausalLM(config).eval()


def train(model, tok, steps=100):
    ids = torch.tensor(tok(PERIODIC, add_special_tokens=False)["input_ids"])
    return fit_windows(model, ids, steps, batch=8, context=CTX)


@pytest.fixture(scope="module")
def trained(tok):
    return train(make_model(tok), tok)


@pytest.fixture(scope="module")
def trained_rotary(tok):
    return train(make_model(tok, position_embedding_type="rotary"), tok)


def argmax_loop(model, ids, n, window=None):
    """Hand greedy loop: full forward on (the last `window` of) the sequence, append the argmax."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids[-window:] if window else ids])
            nxt = int(model(x).logits[0, -1].argmax())
            ids.append(nxt)
            out.append(nxt)
    return out


def test_greedy_is_deterministic_and_equals_a_hand_argmax_loop(tok):
    model = make_model(tok, seed=3)
    a = generate_texts(model, tok, "abc", max_new_tokens=20, do_sample=False)
    b = generate_texts(model, tok, "abc", max_new_tokens=20, temperature=0)
    assert a == b and len(a) == 1
    prompt = tok("abc", add_special_tokens=False)["input_ids"]
    expected = argmax_loop(model, prompt, 20)
    assert a[0] == tok.decode(expected, skip_special_tokens=True)


def test_top_k_one_sampling_equals_greedy(trained, tok):
    greedy = generate_texts(trained, tok, "ab", max_new_tokens=25, do_sample=False)
    top1 = generate_texts(trained, tok, "ab", max_new_tokens=25, do_sample=True, top_k=1, temperature=1.0, seed=5)
    assert top1 == greedy


def test_same_seed_same_samples_other_seed_other_samples(tok):
    model = make_model(tok, seed=1)  # untrained: near-uniform, so samples differ
    kw = dict(max_new_tokens=30, do_sample=True, temperature=1.0)
    a = generate_texts(model, tok, "abc", seed=7, **kw)
    b = generate_texts(model, tok, "abc", seed=7, **kw)
    c = generate_texts(model, tok, "abc", seed=8, **kw)
    assert a == b
    assert a != c


def test_num_samples_gives_different_samples_in_one_call(tok):
    model = make_model(tok, seed=1)
    out = generate_texts(model, tok, "abc", max_new_tokens=30, do_sample=True, temperature=1.0, num_samples=4,
                         seed=0)
    assert len(out) == 4
    assert len(set(out)) == 4


def test_repetition_penalty_changes_a_looping_greedy_output(tok):
    # An untrained model loops on one character; the trained one is so sure of its cycle (one positive logit,
    # the rest negative) that a penalty, which divides positive logits, cannot move it.
    model = make_model(tok, seed=0)
    plain = generate_texts(model, tok, "abc", max_new_tokens=30, do_sample=False)[0]
    assert len(set(plain)) == 1  # loops
    penalized = generate_texts(model, tok, "abc", max_new_tokens=30, do_sample=False, repetition_penalty=5.0)[0]
    assert penalized != plain
    assert len(set(penalized)) > 3


def test_stop_string_stops_generation(trained, tok):
    plain = generate_texts(trained, tok, "abc", max_new_tokens=30, do_sample=False)[0]
    assert "fg" in plain
    out = generate_texts(trained, tok, "abc", max_new_tokens=30, do_sample=False, stop=["fg"])[0]
    assert out.endswith("fg")
    assert out == plain[: plain.index("fg") + 2]


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_generation_runs_past_the_context(position, trained, trained_rotary, tok):
    model = trained if position == "learned" else trained_rotary
    n = 3 * CTX
    out = generate_texts(model, tok, "abc", max_new_tokens=n, do_sample=False)[0]
    ids = tok(out, add_special_tokens=False)["input_ids"]
    assert len(ids) == n and len(out) == n  # char level, no EOS learned from a periodic text
    if position == "learned":
        prompt = tok("abc", add_special_tokens=False)["input_ids"]
        first = CTX - len(prompt)  # tokens generated while the context still has room
        expected_head = argmax_loop(model, prompt, first)
        assert ids[:first] == expected_head
        # After the context is full: each token from the last n_positions-1 tokens (sliding window).
        expected = argmax_loop(model, prompt + expected_head, n - first, window=CTX - 1)
        assert ids[first:] == expected


def test_prompt_longer_than_the_context_is_cut_with_a_warning(trained, tok):
    prompt = "abcdefgh " * 10  # 90 chars > 32
    with pytest.warns(UserWarning, match="longer than the context"):
        out = generate_texts(trained, tok, prompt, max_new_tokens=5, do_sample=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"][-(CTX - 1):]
    assert out[0] == tok.decode(argmax_loop(trained, ids, 5, window=CTX - 1), skip_special_tokens=True)


def test_unknown_characters_are_dropped_with_a_warning(trained, tok):
    with pytest.warns(UserWarning, match="dropped 2"):
        out = generate_texts(trained, tok, "ab€c§", max_new_tokens=8, do_sample=False)
    assert out == generate_texts(trained, tok, "abc", max_new_tokens=8, do_sample=False)


def test_empty_prompt_starts_from_eos(trained, tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = generate_texts(trained, tok, "", max_new_tokens=10, do_sample=False)
    assert len(out[0]) == 10
    assert out[0] == tok.decode(argmax_loop(trained, [tok.eos_token_id], 10), skip_special_tokens=True)


@pytest.fixture(scope="module")
def saved(trained, tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    trained.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_streaming_past_the_context_prints_the_text_once_as_one_piece(trained, tok, capsys):
    n = 2 * CTX
    text = generate_texts(trained, tok, "abc", max_new_tokens=n, do_sample=False, stream=True)[0]
    assert len(text) == n
    assert capsys.readouterr().out == text + "\n"  # no line break per token once the window slides


def test_cli_generate_greedy(saved, trained, tok, capsys):
    code = main(["generate", str(saved), "--prompt", "abc", "--greedy", "--no-stream", "--max-new-tokens", "20",
                 "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    expected = generate_texts(trained, tok, "abc", max_new_tokens=20, do_sample=False)[0]
    assert out == "abc" + expected + "\n"


def test_cli_generate_several_samples(saved, capsys):
    code = main(["generate", str(saved), "--prompt", "abc", "--num-samples", "3", "--seed", "1",
                 "--max-new-tokens", "15", "--temperature", "1.0", "--no-stream", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    for i in (1, 2, 3):
        assert f"--- sample {i} ---" in out
    assert "--- sample 4 ---" not in out
    assert out.count("\nabc") + out.startswith("abc") == 3


@pytest.mark.parametrize("path", ["as built", "blas", "no mkl"])
def test_cpu_decoding_layout_follows_the_kernel_path_and_puts_the_originals_back(tok, tmp_path, monkeypatch, path):
    """generate() on llmkit-gpt stores its linear weights (in, out) exactly when it decodes on MKL (the product MKL
    does fastest one row at a time; one-row products stay on MKL where onednn.py is on); without MKL the weights
    stay as they are. "as built" checks the path this machine takes by default; the others force the BLAS path
    through the documented switch (LLMKIT_CPU_MATMUL=blas) and a PyTorch build without MKL."""
    from transformers import AutoModelForCausalLM, GenerationMixin

    from llmkit.models import onednn

    if path == "blas":
        monkeypatch.setenv("LLMKIT_CPU_MATMUL", "blas")
    elif path == "no mkl":
        monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    onednn.enabled.cache_clear()  # and again at the end, so later tests see the restored setting
    try:
        swaps = torch.backends.mkl.is_available()
        model = make_model(tok, seed=4)
        before = {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
        seen = []
        hook = model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, o: seen.append(m.weight.stride()))
        settings = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True,
                        pad_token_id=tok.pad_token_id)
        prompt = torch.tensor([tok("abc", add_special_tokens=False)["input_ids"]])
        out = model.generate(prompt, **settings)
        hook.remove()
        n_inner, n_embd = model.config.n_inner, model.config.n_embd
        expected = (1, n_inner) if swaps else (n_embd, 1)  # (out, in) shape over (in, out) storage, or untouched
        assert seen and all(s == expected for s in seen), (path, seen[0])
        plain = GenerationMixin.generate(model, prompt, **settings)  # nn.Linear's own layout
        assert torch.equal(out.sequences, plain.sequences)
        for a, b in zip(out.scores, plain.scores):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()} == before
        assert model.lm_head.weight is model.transformer.wte.weight
        model.save_pretrained(tmp_path)  # contiguous again: safetensors can write it
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path).lm_head.weight, model.lm_head.weight)
    finally:
        onednn.enabled.cache_clear()


def test_decoding_layout_is_restored_after_concurrent_and_failing_calls(tok):
    import threading

    model = make_model(tok, seed=8)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    prompt = torch.tensor([tok("abc", add_special_tokens=False)["input_ids"]])
    outs = []

    def run():
        outs.append(model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 3 and all(torch.equal(o, outs[0]) for o in outs)
    with pytest.raises(ValueError):  # fails inside generate(), after the weights were swapped
        model.generate(prompt, max_new_tokens=5, num_beams=2, num_return_sequences=3, pad_token_id=tok.pad_token_id)
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before
    assert all(p.is_contiguous() for p in model.parameters())


def test_a_kept_decoding_layout_swaps_once_and_generates_the_same(tok):
    """`keep_cpu_decode_layout` (llmkit serve's model process): the (in, out) layout for good, each weight held
    once; later generate() calls swap nothing and decode exactly as the per-call swap does."""
    from llmkit.models.decode_layout import keep_cpu_decode_layout

    if not torch.backends.mkl.is_available():
        pytest.skip("the layout applies to MKL builds only")
    model = make_model(tok, seed=9)
    prompt = torch.tensor([tok("abc", add_special_tokens=False)["input_ids"]])
    settings = dict(max_new_tokens=16, do_sample=False, output_scores=True, return_dict_in_generate=True,
                    pad_token_id=tok.pad_token_id)
    swapped_per_call = model.generate(prompt, **settings)
    keep_cpu_decode_layout(model)
    fc = model.transformer.h[0].mlp.c_fc.weight
    kept = (fc.data_ptr(), fc.stride())
    assert not fc.is_contiguous() and fc.stride() == (1, model.config.n_inner)
    assert model.lm_head.weight is model.transformer.wte.weight
    out = model.generate(prompt, **settings)
    assert (fc.data_ptr(), fc.stride()) == kept  # nothing swapped back, nothing copied again
    assert model._decode_layout_swapped == []  # no originals held
    assert torch.equal(out.sequences, swapped_per_call.sequences)
    for a, b in zip(out.scores, swapped_per_call.scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
