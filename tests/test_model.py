"""The llmkit GPT as a transformers model: shapes, parity with GPT-2, caching, padding, saving, learning."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import llmkit
from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM, build_model
from llmkit.models.conversions import from_gpt2

SMALL = dict(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
VARIANTS = {
    "learned": {},
    "rotary": dict(position_embedding_type="rotary"),
    "modern": dict(position_embedding_type="rotary", norm_type="rmsnorm", mlp_type="swiglu", bias=False),
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return LlmkitGPTForCausalLM(LlmkitGPTConfig(**{**SMALL, **kw})).eval()


def test_parameter_counts_match_gpt2_small_and_the_seed_124m_config():
    gpt2_small = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    with torch.device("meta"):
        assert n_params(GPT2LMHeadModel(GPT2Config(**gpt2_small))) == 124_439_808
        assert n_params(build_model("llmkit-gpt", **gpt2_small)) == 124_439_808
        assert n_params(build_model("gpt2", **gpt2_small)) == 124_439_808
        seed_124m = build_model(
            "llmkit-gpt", **{**gpt2_small, "n_positions": 256}, qkv_bias=False, tie_word_embeddings=False
        )
        assert n_params(seed_124m) == 162_419_712


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n_embd=100, n_head=12), "n_embd (100) must be divisible by n_head (12)"),
        (dict(activation_function="gelu_fast_typo"), "activation_function='gelu_fast_typo' is unknown"),
        (dict(norm_type="batchnorm"), "norm_type='batchnorm' is not supported"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(attn_pdrop=1.5), "attn_pdrop must be in [0, 1)"),
    ],
)
def test_invalid_configs_fail_at_construction_with_one_line(kw, message):
    with pytest.raises(ValueError) as err:
        LlmkitGPTConfig(**{**SMALL, **kw})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_auto_classes_know_llmkit_gpt():
    config = AutoConfig.for_model("llmkit-gpt", **SMALL)
    assert isinstance(config, LlmkitGPTConfig)
    assert isinstance(AutoModelForCausalLM.from_config(config), LlmkitGPTForCausalLM)


def test_from_gpt2_matches_logits_and_greedy_tokens():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=101, n_positions=64, n_embd=48, n_layer=3, n_head=4)).eval()
    ours = from_gpt2(gpt2).eval()
    assert ours.config.activation_function == "gelu_new"
    ids = torch.randint(0, 101, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, gpt2(ids).logits, atol=1e-5, rtol=0)
    prompt = ids[:1, :5]
    kw = dict(max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, **kw), gpt2.generate(prompt, **kw))


def test_from_gpt2_loads_a_saved_folder(tmp_path):
    torch.manual_seed(1)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    gpt2.save_pretrained(tmp_path)
    ours = from_gpt2(str(tmp_path)).eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, gpt2(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_matches_full_forward_and_uncached_generation(variant):
    model = tiny(**VARIANTS[variant])
    ids = torch.randint(0, SMALL["vocab_size"], (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :5], use_cache=True)
        steps = [out.logits]
        cache = out.cache
        for t in range(5, 12):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)

    kw = dict(max_new_tokens=25, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids[:1, :3], use_cache=True, **kw), model.generate(ids[:1, :3], use_cache=False, **kw))


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padded_batch_generates_like_each_prompt_alone(variant):
    model = tiny(seed=3, **VARIANTS[variant])
    pad = 0
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23]]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kw = dict(max_new_tokens=15, do_sample=False, pad_token_id=pad)
    batched = model.generate(ids, attention_mask=mask, **kw)[:, width:]
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), **kw)[0, len(prompt) :]
        assert batched[row].tolist() == alone.tolist(), f"prompt {row} differs when batched"


def test_eager_and_sdpa_attention_agree():
    model = tiny()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    with torch.no_grad():
        sdpa_logits = model(ids).logits
        model.set_attn_implementation("eager")
        eager_logits = model(ids).logits
    torch.testing.assert_close(sdpa_logits, eager_logits, atol=1e-5, rtol=0)


def test_save_and_reload_through_auto_classes(tmp_path):
    model = tiny(**VARIANTS["modern"])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, LlmkitGPTForCausalLM)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_untied_head_round_trips(tmp_path):
    model = tiny(tie_word_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


def test_tied_embeddings_share_storage():
    model = tiny()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    model = LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=100, n_embd=256, n_layer=8, n_head=4))
    expected = 0.02 / (2 * 8) ** 0.5
    assert abs(model.transformer.h[0].attn.c_proj.weight.std().item() - expected) < 0.1 * expected
    assert abs(model.transformer.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.002


def test_resize_token_embeddings_keeps_old_rows_and_tie():
    model = tiny()
    old = model.transformer.wte.weight[:SMALL["vocab_size"]].clone()
    model.resize_token_embeddings(SMALL["vocab_size"] + 7)
    assert model.config.vocab_size == SMALL["vocab_size"] + 7
    assert torch.equal(model.transformer.wte.weight[: SMALL["vocab_size"]], old)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert model(torch.tensor([[SMALL["vocab_size"] + 6]])).logits.shape[-1] == SMALL["vocab_size"] + 7


def test_labels_give_shifted_loss_ignoring_minus_100():
    model = tiny()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, SMALL["vocab_size"])
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    # shift_labels (from llmkit's packed-block collator) scores every position
    targets = torch.randint(0, SMALL["vocab_size"], (2, 10))
    out = model(ids, shift_labels=targets)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, SMALL["vocab_size"]), targets.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("variant", ["learned", "modern"])
def test_gradient_checkpointing_gives_identical_gradients(variant):
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    grads = []
    for checkpointing in (False, True):
        model = tiny(seed=7, **VARIANTS[variant]).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_overfits_one_fixed_batch(variant):
    model = tiny(seed=0, **VARIANTS[variant]).train()
    torch.manual_seed(0)
    ids = torch.randint(0, SMALL["vocab_size"], (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(300):  # noqa: B007 (reported below)
        loss = model(ids, labels=ids).loss
        if loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"loss {loss.item():.3f} after {step} steps"


def test_i_love_ai_periodic_corpus_is_learned_exactly():
    # The seeds' experiment: corpus "I love AI !" repeated, 4 tokens, 2 layers, 8 wide, 2 heads, seq_len 8.
    vocab = ["I", "love", "AI", "!"]
    corpus = torch.tensor([0, 1, 2, 3] * 64)
    torch.manual_seed(0)
    model = LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=4, n_positions=64, n_embd=8, n_layer=2, n_head=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    windows = corpus.unfold(0, 9, 1)  # every 9-token window: 8 inputs + the next token
    for _ in range(300):
        batch = windows[torch.randint(0, len(windows), (16,))]
        loss = model(batch[:, :-1], shift_labels=batch[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model.eval().generate(torch.tensor([[0]]), max_new_tokens=11, do_sample=False, pad_token_id=0)
    assert " ".join(vocab[i] for i in out[0]) == "I love AI ! I love AI ! I love AI !"


def test_gpt2_arch_refuses_llmkit_only_options():
    with pytest.raises(ValueError, match="model.norm_type is an llmkit-gpt option"):
        build_model("gpt2", **SMALL, norm_type="rmsnorm")
    with pytest.raises(ValueError, match="must be divisible by n_head"):
        build_model("gpt2", vocab_size=10, n_embd=30, n_head=4)
    assert llmkit.build_config("gpt2", **SMALL).activation_function == "gelu_new"


def test_text_generation_pipeline_runs_our_model_from_objects_and_from_a_folder(tmp_path):
    from transformers import pipeline

    from llmkit.tokenizers import train_tokenizer

    tok = train_tokenizer("char", ["the quick brown fox jumps over the lazy dog. " * 8])
    torch.manual_seed(0)
    model = LlmkitGPTForCausalLM(
        LlmkitGPTConfig(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    ).eval()
    ids = tok("the quick", return_tensors="pt", add_special_tokens=False)["input_ids"]
    expected = tok.decode(model.generate(ids, max_new_tokens=6, do_sample=False)[0])

    from_objects = pipeline("text-generation", model=model, tokenizer=tok)
    out = from_objects("the quick", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert out == expected and len(out) == len("the quick") + 6

    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    from_folder = pipeline("text-generation", model=str(tmp_path))  # Auto classes resolve llmkit-gpt
    assert from_folder("the quick", max_new_tokens=6, do_sample=False)[0]["generated_text"] == expected


def test_rotary_logits_depend_on_relative_positions_only():
    """RoPE's defining property: shifting every position by the same amount changes nothing, while positions
    further apart do change the result (a wrong q/k rotation breaks the first, a missing one the second)."""
    model = tiny(seed=5, position_embedding_type="rotary", initializer_range=0.3)  # sharp attention
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    pos = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        base = model(ids, position_ids=pos).logits
        shifted = model(ids, position_ids=pos + 37).logits
        stretched = model(ids, position_ids=pos * 3).logits
    torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-4)
    assert (stretched - base).abs().max() > 1e-2


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}],
                         ids=["default RoPE", "linear scaling"])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["no QK-norm", "QK-norm"])
def test_queries_and_keys_are_transformers_rmsnorm_then_apply_rotary_pos_emb(qk_norm, rope):
    """llmkit-gpt normalises and rotates q and k together in fewer passes (`_rotate`); what reaches the attention
    function is, to fp32 rounding, transformers' own arithmetic on c_attn's output: each RMSNorm module (trained
    scales, q's and k's different), then Llama's `apply_rotary_pos_emb`, with position ids that are not 0..T-1."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    seen = []

    def recording_sdpa(module, query, key, value, *args, **kwargs):
        seen.append((query, key))
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)

    AttentionInterface.register("llmkit_test_qk_sdpa", recording_sdpa)
    model = tiny(seed=9, position_embedding_type="rotary", qk_norm=qk_norm, rope_parameters=rope,
                 attn_implementation="llmkit_test_qk_sdpa")
    attn = model.transformer.h[1].attn
    if qk_norm:
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(-1.5, -0.5)
    projected = []
    attn.c_attn.register_forward_hook(lambda m, i, o: projected.append(o))
    ids = torch.randint(0, SMALL["vocab_size"], (2, 12))
    pos = (torch.arange(12) + 5).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        model(ids, position_ids=pos)
        B, T, nh, hs = 2, 12, attn.n_head, attn.head_dim
        q, k, _ = (t.view(B, T, nh, hs) for t in projected[0].split(nh * hs, dim=2))
        if qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = model.transformer.rotary_emb(projected[0], pos)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    query, key = seen[1]
    torch.testing.assert_close(query, q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(key, k, rtol=1e-5, atol=1e-6)
    if qk_norm:  # a hooked norm (PEFT, accelerate's offloading, a user's hook) is called as a module, same result
        calls = []
        attn.k_norm.register_forward_hook(lambda m, i, o: calls.append(o.shape))
        seen.clear()
        with torch.no_grad():
            model(ids, position_ids=pos)
        assert calls == [(B, T, nh, hs)]
        torch.testing.assert_close(seen[1][0], q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(seen[1][1], k, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["learned", "rotary"])
def test_bf16_autocast_forward_and_backward_match_fp32(variant):
    model = tiny(seed=6, **VARIANTS[variant]).train()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    fp32 = model(ids, labels=ids).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(ids, labels=ids).loss
    bf16.backward()
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 2e-2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("variant", ["learned", "learned_qk_norm", "rotary_qk_norm"])
def test_attention_trains_in_fp32_under_cpu_autocast_for_short_contexts(variant):
    """Under CPU bf16 autocast, q, k and v reach the attention function in fp32 in training mode on fewer than
    CPU_FP32_ATTENTION_BELOW tokens (PyTorch's bf16 attention backward is the slow one there), with or without
    gradients (reentrant checkpointing's first pass has none: its recomputation must take the same path); in bf16
    in eval mode and on longer contexts. The projections stay bf16 and no fallback warns."""
    import warnings

    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from llmkit.models.modeling_llmkit_gpt import CPU_FP32_ATTENTION_BELOW

    seen = []

    def recording_sdpa(module, query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)

    AttentionInterface.register("llmkit_test_recording_sdpa", recording_sdpa)
    kw = {"learned": {}, "learned_qk_norm": dict(qk_norm=True),
          "rotary_qk_norm": dict(position_embedding_type="rotary", qk_norm=True)}[variant]
    model = tiny(seed=8, n_positions=CPU_FP32_ATTENTION_BELOW, attn_implementation="llmkit_test_recording_sdpa",
                 **kw)
    projected = []
    model.transformer.h[0].attn.c_proj.register_forward_hook(lambda m, i, o: projected.append(o.dtype))

    def step(length: int, train: bool, grad: bool) -> set:
        seen.clear()
        model.train(train)
        ids = torch.randint(0, SMALL["vocab_size"], (2, length))
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
            loss = model(ids, labels=ids).loss
        if grad:
            loss.backward()
        return set(seen)

    fp32, bf16 = {(torch.float32,) * 3 + (False,)}, {(torch.bfloat16,) * 3 + (True,)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "Mismatch dtype ... Cannot dispatch to fused implementation"
        assert step(16, train=True, grad=True) == fp32
        assert projected[-1] == torch.bfloat16
        assert step(16, train=True, grad=False) == fp32
        assert step(16, train=False, grad=False) == bf16
        assert step(CPU_FP32_ATTENTION_BELOW, train=True, grad=True) == bf16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow  # keeps the default suite under 15 minutes (it measured 15 min 57 s)
def test_rotary_model_compiles_fullgraph_to_the_eager_result():
    """One graph (the model claims `_can_compile_fullgraph`), the eager numbers, no fallback warnings."""
    import warnings

    model = tiny(seed=7, position_embedding_type="rotary")
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    with torch.no_grad():
        eager = model(ids).logits
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = torch.compile(model, fullgraph=True)(ids).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert not [w for w in caught if "inductor" in str(w.message).lower() or "complex" in str(w.message)]


@pytest.mark.parametrize("trained_head", [False, True])
def test_chunked_loss_equals_cross_entropy_on_the_full_logits_with_the_same_gradients(monkeypatch, trained_head):
    """The fused projection + cross-entropy used in training (llmkit/models/chunked_loss.py), in chunks of a few
    rows here, against transformers' loss on the materialized logits: loss, hidden-state and weight gradients."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    from llmkit.models import chunked_loss

    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 4 * 97 * 5)  # 5 rows per chunk
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16)
    weight = torch.randn(97, 16, requires_grad=trained_head)
    labels = torch.randint(0, 97, (3, 11))
    labels[0, :4] = -100
    for kwargs in (dict(labels=labels), dict(shift_labels=labels), dict(labels=labels, num_items_in_batch=torch.tensor(50))):
        grads = []
        for fused in (True, False):
            h = hidden.clone().requires_grad_()
            w = weight.detach().clone().requires_grad_(trained_head)
            if fused:
                loss = chunked_loss.chunked_causal_lm_loss(h, w, **kwargs)
            else:
                loss = ForCausalLMLoss(h @ w.t(), kwargs.get("labels"), 97, shift_labels=kwargs.get("shift_labels"),
                                       num_items_in_batch=kwargs.get("num_items_in_batch"))
            loss.backward()
            grads.append((loss.detach(), h.grad, w.grad))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
        if trained_head:
            torch.testing.assert_close(grads[0][2], grads[1][2], rtol=1e-4, atol=1e-6)


def test_loss_chunks_are_sized_for_the_device():
    """The logits are chunked wherever they exceed two 64 MB chunks, on every device (no GPU ever holds them whole
    for the loss); a chunk is 64 MB on CPU and up to 1 GB on GPUs, where small chunks leave the device waiting on
    launches: GPT-2's logits at batch 8 x 1024 go through in 25 chunks on a CPU and 2 on a GPU."""
    from llmkit.models.chunked_loss import chunk_bytes, logits_are_large

    assert logits_are_large(4 * 256, 50257) and logits_are_large(8 * 1024, 50257)
    assert not logits_are_large(64 * 256, 65)  # a char-level vocabulary
    chunks = {d: -(-8 * 1024 // (chunk_bytes(torch.device(d)) // (4 * 50257))) for d in ("cpu", "cuda")}
    assert chunks == {"cpu": 25, "cuda": 2}


def test_the_fused_loss_asked_for_in_training_returns_the_loss_without_logits(monkeypatch):
    from llmkit.models import chunked_loss

    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 4 * SMALL["vocab_size"] * 4)
    model = tiny(seed=2, tie_word_embeddings=False)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    grads = {}
    for mode in ("eval", "train"):
        model.zero_grad()
        getattr(model, mode)()
        out = model(ids, labels=ids, fused_loss=mode == "train")
        out.loss.backward()
        grads[mode] = (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, out.logits)
    assert grads["train"][2] is None and grads["eval"][2] is not None
    assert model(ids, labels=ids).logits is not None  # unasked, a training forward keeps the contract
    torch.testing.assert_close(grads["train"][0], grads["eval"][0], rtol=1e-5, atol=1e-6)
    for name, grad in grads["eval"][1].items():
        torch.testing.assert_close(grads["train"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen", [False, True])
def test_onednn_linear_equals_f_linear_with_the_same_gradients(monkeypatch, bias, frozen):
    """llmkit-gpt's projections on oneDNN (models/onednn.py), forced on here: outputs and gradients of the input,
    the weight (unless frozen, as under LoRA: then none is computed) and the bias equal F.linear's."""
    from llmkit.models import onednn

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        pytest.skip("this PyTorch build has no oneDNN")
    monkeypatch.setenv("LLMKIT_CPU_MATMUL", "onednn")
    onednn.enabled.cache_clear()
    try:
        torch.manual_seed(0)
        x = torch.randn(3, 7, 24)
        layer = onednn.Linear(24, 40, bias=bias)
        layer.weight.requires_grad_(not frozen)
        results = []
        for fn in (lambda t: layer(t), lambda t: torch.nn.functional.linear(t, layer.weight, layer.bias)):
            layer.zero_grad()
            t = x.clone().requires_grad_()
            y = fn(t)
            (y * torch.linspace(-1, 1, 40)).sum().backward()
            results.append((y.detach(), t.grad, layer.weight.grad, layer.bias.grad if bias else None))
        assert onednn.applies(x, layer.weight)
        for ours, reference in zip(*results):
            if reference is None:
                assert ours is None
            else:
                torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps PyTorch's own (oneDNN bf16) path
            assert not onednn.applies(x, layer.weight)
    finally:
        monkeypatch.delenv("LLMKIT_CPU_MATMUL")
        onednn.enabled.cache_clear()
