"""llmkit-gpt <-> stock GPT-2 / Llama: exact logits and greedy tokens both ways, one-line refusals for what a
target lacks, and exported folders that load in a process that never imports llmkit."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.activations import GELUTanh

from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM
from llmkit.models.conversions import (
    TARGETS,
    export_model,
    from_gpt2,
    from_llama,
    import_model,
    stock_target,
    unsupported_reason,
)

# initializer_range=0.2: logits spread over several units, so a wrong transpose or split cannot hide
SMALL = dict(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2)
MODERN = dict(
    position_embedding_type="rotary", norm_type="rmsnorm", mlp_type="swiglu", bias=False, qkv_bias=False
)
ATOL = 1e-5

GPT2_CASES = {
    "gelu-biases-tied": dict(activation_function="gelu"),
    "gelu_new-qkv_bias_only-untied": dict(
        activation_function="gelu_new", bias=False, qkv_bias=True, tie_word_embeddings=False
    ),
    "gelu_pytorch_tanh-no_qkv_bias-n_inner-dropout": dict(
        activation_function="gelu_pytorch_tanh", qkv_bias=False, n_inner=40, embd_pdrop=0.1, resid_pdrop=0.2
    ),
    "relu-no_biases-untied-n_inner": dict(
        activation_function="relu", bias=False, tie_word_embeddings=False, n_inner=72, layer_norm_epsilon=1e-6
    ),
}
LLAMA_CASES = {
    "tied": dict(MODERN),
    "untied-rope_theta-n_inner": dict(MODERN, tie_word_embeddings=False, rope_theta=500_000.0, n_inner=48),
    "linear_rope_scaling": dict(
        MODERN, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    ),
}
STOCK = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}


def tiny(seed=1, **kw) -> LlmkitGPTForCausalLM:
    # seed 1: every case below continues its prompts with varied tokens (seed 0 repeats one token in one case)
    torch.manual_seed(seed)
    return LlmkitGPTForCausalLM(LlmkitGPTConfig(**{**SMALL, **kw})).eval()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row: masks must agree too
    return ids, mask


def assert_same_function(a: nn.Module, b: nn.Module) -> float:
    """Equal logits (fp32, 1e-5) with and without padding, identical greedy tokens; returns the max diff."""
    ids, mask = inputs()
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
        ma, mb = a(ids, attention_mask=mask).logits, b(ids, attention_mask=mask).logits
    assert la.std() > 0.5  # not flat: the comparison means something
    torch.testing.assert_close(la, lb, atol=ATOL, rtol=0)
    torch.testing.assert_close(ma[1, 5:], mb[1, 5:], atol=ATOL, rtol=0)
    prompt = ids[:, :4]
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    ga, gb = a.generate(prompt, **kw), b.generate(prompt, **kw)
    assert torch.equal(ga, gb)
    assert len(set(ga[:, 4:].flatten().tolist())) > 1  # a varied continuation, not one token repeated
    return max((la - lb).abs().max().item(), (ma[1, 5:] - mb[1, 5:]).abs().max().item())


def assert_round_trip_exact(ours: LlmkitGPTForCausalLM, back: LlmkitGPTForCausalLM) -> None:
    """Every original tensor comes back bit for bit; tensors the original lacks (biases) come back zero."""
    mine, theirs = ours.state_dict(), back.state_dict()
    for name, tensor in mine.items():
        assert torch.equal(theirs[name], tensor), name
    for name in theirs.keys() - mine.keys():
        assert name.endswith(".bias") and not theirs[name].any(), name
    for key in (
        "position_embedding_type",
        "norm_type",
        "mlp_type",
        "n_inner",
        "layer_norm_epsilon",
        "tie_word_embeddings",
        "rope_parameters",
        "n_positions",
        "attn_pdrop",
    ):
        assert getattr(back.config, key, None) == getattr(ours.config, key, None), key
    assert back.lm_head.weight is back.transformer.wte.weight or not ours.config.tie_word_embeddings


@pytest.mark.parametrize("case", GPT2_CASES)
def test_gpt2_options_export_exactly_and_convert_back(case):
    ours = tiny(**GPT2_CASES[case])
    assert unsupported_reason(ours.config, "gpt2") is None and stock_target(ours.config) == "gpt2"
    gpt2 = export_model(ours, "gpt2")
    assert type(gpt2) is GPT2LMHeadModel and not gpt2.training
    c, g = ours.config, gpt2.config
    assert g.activation_function == (
        "gelu_new" if c.activation_function == "gelu_pytorch_tanh" else c.activation_function
    )
    assert (g.n_inner, g.tie_word_embeddings, g.layer_norm_epsilon) == (
        c.n_inner,
        c.tie_word_embeddings,
        c.layer_norm_epsilon,
    )
    assert (g.embd_pdrop, g.attn_pdrop, g.resid_pdrop) == (c.embd_pdrop, c.attn_pdrop, c.resid_pdrop)
    assert (gpt2.lm_head.weight is gpt2.transformer.wte.weight) == c.tie_word_embeddings
    # Conv1D stores (in, out): c_attn is (C, 3C) with q | k | v columns
    assert torch.equal(gpt2.transformer.h[0].attn.c_attn.weight, ours.transformer.h[0].attn.c_attn.weight.t())
    assert_same_function(ours, gpt2)

    back = import_model(gpt2, fused_activation=c.activation_function == "gelu_pytorch_tanh").eval()
    assert back.config.activation_function == c.activation_function
    assert_round_trip_exact(ours, back)
    assert_same_function(ours, back)


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_options_export_exactly_and_convert_back(case):
    ours = tiny(**LLAMA_CASES[case])
    assert unsupported_reason(ours.config, "llama") is None and stock_target(ours.config) == "llama"
    llama = export_model(ours, "llama")
    assert type(llama) is LlamaForCausalLM
    c, lc = ours.config, llama.config
    assert (lc.num_key_value_heads, lc.head_dim, lc.intermediate_size) == (
        c.n_head,
        c.n_embd // c.n_head,
        c.n_inner,
    )
    assert (lc.hidden_act, lc.attention_bias, lc.mlp_bias) == ("silu", False, False)
    assert lc.rope_parameters == c.rope_parameters and lc.max_position_embeddings == c.n_positions
    assert torch.equal(llama.model.rotary_emb.inv_freq, ours.transformer.rotary_emb.inv_freq)
    assert (llama.lm_head.weight is llama.model.embed_tokens.weight) == c.tie_word_embeddings
    # c_fc rows are gate | up, in the order of `gate, up = h.chunk(2, -1)`
    gate = ours.transformer.h[1].mlp.c_fc.weight[: c.n_inner]
    assert torch.equal(llama.model.layers[1].mlp.gate_proj.weight, gate)
    assert_same_function(ours, llama)

    back = import_model(llama).eval()
    assert_round_trip_exact(ours, back)
    ids, _ = inputs(1)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ours(ids).logits)  # the same modules and weights: bit for bit


def test_rope_theta_reaches_the_llama_export():
    default, custom = tiny(**MODERN), tiny(**MODERN, rope_theta=500_000.0)
    exported = export_model(custom, "llama")
    assert exported.config.rope_parameters["rope_theta"] == 500_000.0
    assert not torch.equal(
        exported.model.rotary_emb.inv_freq, export_model(default, "llama").model.rotary_emb.inv_freq
    )


def test_stock_llama_imports_exactly():
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        initializer_range=0.2,
        rope_parameters={"rope_type": "default", "rope_theta": 50_000.0},
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=None,
    )
    llama = LlamaForCausalLM(config).eval()
    ours = from_llama(llama).eval()
    assert ours.config.rope_parameters["rope_theta"] == 50_000.0 and ours.config.n_inner == 56
    assert_same_function(llama, ours)


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(num_key_value_heads=2),
            "grouped-query attention (num_key_value_heads=2 < num_attention_heads=4)",
        ),
        (dict(attention_bias=True), "attention_bias/mlp_bias"),
        (dict(hidden_act="gelu"), "hidden_act=gelu"),
        (dict(head_dim=16), "head_dim=16 != hidden_size/num_attention_heads=8"),
    ],
)
def test_llama_without_an_llmkit_equivalent_is_refused_in_one_line(kw, message):
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=11,
            hidden_size=32,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=4,
            **kw,
        )
    )
    with pytest.raises(ValueError) as err:
        from_llama(llama)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_from_gpt2_fused_activation_uses_the_fused_kernel_and_matches_stock_gpt2():
    torch.manual_seed(4)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=97,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            initializer_range=0.2,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).eval()
    assert gpt2.config.activation_function == "gelu_new"
    ours = from_gpt2(gpt2, fused_activation=True).eval()
    assert ours.config.activation_function == "gelu_pytorch_tanh"
    x = torch.randn(64) * 3
    for block in ours.transformer.h:
        assert isinstance(block.mlp.act, GELUTanh)
        assert torch.equal(block.mlp.act(x), nn.functional.gelu(x, approximate="tanh"))  # the one-kernel GELU
    assert_same_function(gpt2, ours)
    assert from_gpt2(gpt2).config.activation_function == "gelu_new"  # off by default
    assert export_model(ours, "gpt2").config.activation_function == "gelu_new"  # exported under GPT-2's name


@pytest.mark.parametrize(
    "target, kw, message",
    [
        (
            "gpt2",
            dict(position_embedding_type="rotary"),
            "rotary positions: GPT-2 has a learned position table; "
            "retrain with model.position_embedding_type=learned",
        ),
        ("gpt2", dict(mlp_type="swiglu"), "SwiGLU MLP: GPT-2's MLP has no gate"),
        ("gpt2", dict(norm_type="rmsnorm"), "RMSNorm: GPT-2 has LayerNorm only"),
        (
            "gpt2",
            MODERN,
            "rotary positions: GPT-2 has a learned position table; export with --to llama or retrain with "
            "model.position_embedding_type=learned model.norm_type=layernorm model.mlp_type=gelu",
        ),
        (
            "llama",
            dict(MODERN, position_embedding_type="learned"),
            "learned positions: Llama has no position table, only rotary positions; "
            "retrain with model.position_embedding_type=rotary",
        ),
        (
            "llama",
            dict(MODERN, bias=True, qkv_bias=None),
            "biases (model.bias=true, model.qkv_bias=true): the Llama export has no",
        ),
        ("llama", dict(MODERN, qkv_bias=True), "biases (model.qkv_bias=true)"),
        ("llama", dict(MODERN, norm_type="layernorm"), "LayerNorm: Llama has RMSNorm only"),
        ("gpt2", dict(qk_norm=True), "QK-norm: GPT-2 normalises neither queries nor keys; retrain with "
                                     "model.qk_norm=false"),
        ("llama", dict(MODERN, qk_norm=True), "QK-norm: Llama normalises neither queries nor keys; retrain with "
                                              "model.qk_norm=false"),
        (
            "llama",
            dict(),
            "learned positions: Llama has no position table, only rotary positions; export with "
            "--to gpt2 or retrain with model.position_embedding_type=rotary model.norm_type=rmsnorm",
        ),
    ],
)
def test_unsupported_options_give_a_one_line_reason(target, kw, message):
    model = tiny(**kw)
    reason = unsupported_reason(model.config, target)
    assert reason is not None and message in reason and "\n" not in reason
    with pytest.raises(ValueError) as err:
        export_model(model, target)
    assert str(err.value) == reason
    other = next(t for t in TARGETS if t != target)
    # the reason offers the other target exactly when that one fits
    assert stock_target(model.config) == (other if f"--to {other}" in reason else None)


def test_stock_target_is_none_without_an_equivalent_and_bad_arguments_are_refused():
    config = LlmkitGPTConfig(**SMALL, position_embedding_type="rotary")  # rotary + LayerNorm: neither target
    assert stock_target(config) is None
    with pytest.raises(ValueError, match="unknown export target 'mistral'; use one of gpt2, llama"):
        export_model(tiny(), "mistral")
    with pytest.raises(ValueError, match="GPT2LMHeadModel or LlamaForCausalLM, got Linear"):
        import_model(nn.Linear(2, 2))


def test_export_keeps_dtype_and_mode_and_owns_its_weights():
    ours = tiny().to(torch.bfloat16).train()
    gpt2 = export_model(ours, "gpt2")
    assert gpt2.dtype == torch.bfloat16 and gpt2.training
    with torch.no_grad():
        gpt2.transformer.wte.weight.zero_()
    assert ours.transformer.wte.weight.any()  # a copy, not a view of the llmkit tensors


FRESH = r"""
import sys

class RefuseLlmkit:  # any attempt to import llmkit fails loudly
    def find_spec(self, name, path=None, target=None):
        if name == "llmkit" or name.startswith("llmkit."):
            raise ImportError("the exported model tried to import " + name)

sys.meta_path.insert(0, RefuseLlmkit())
import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
expected = torch.load(sys.argv[1], weights_only=True)
for target in ("gpt2", "llama"):
    model = AutoModelForCausalLM.from_pretrained(sys.argv[2] + "/" + target).eval()
    with torch.no_grad():
        logits = model(expected["ids"]).logits
    tokens = model.generate(expected["ids"][:, :4], max_new_tokens=12, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(logits, expected[target + "_logits"], atol=1e-5, rtol=0)
    assert torch.equal(tokens, expected[target + "_tokens"])
    print(target, type(model).__name__, (logits - expected[target + "_logits"]).abs().max().item())
assert not [m for m in sys.modules if m == "llmkit" or m.startswith("llmkit.")]
"""


def test_exported_folders_load_with_auto_classes_in_a_process_without_llmkit(tmp_path):
    ids, _ = inputs(2)
    expected = {"ids": ids}
    for target, kw in (("gpt2", GPT2_CASES["gelu_new-qkv_bias_only-untied"]), ("llama", LLAMA_CASES["tied"])):
        ours = tiny(**kw)
        export_model(ours, target).save_pretrained(tmp_path / target)
        saved = json.loads((tmp_path / target / "config.json").read_text())
        assert saved["model_type"] == target and "auto_map" not in saved
        assert saved["architectures"] == [STOCK[target].__name__]
        with torch.no_grad():
            expected[f"{target}_logits"] = ours(ids).logits
        expected[f"{target}_tokens"] = ours.generate(
            ids[:, :4], max_new_tokens=12, do_sample=False, pad_token_id=0
        )
    torch.save(expected, tmp_path / "expected.pt")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    result = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "expected.pt"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gpt2 GPT2LMHeadModel" in result.stdout and "llama LlamaForCausalLM" in result.stdout
