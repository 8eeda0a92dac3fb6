"""transformers' model contract, kept by llmkit-gpt in every form, and llmkit-gpt beside the ecosystem's libraries.

Written for this project after transformers 5.24's `ModelTesterMixin`/`GenerationTesterMixin` and its GPT-2 and
Llama: what a client of transformers may rely on (hidden states, attentions, tuple outputs, attention backends,
generation outputs, assisted decoding, export, resizing, checkpointing), then what peft, TRL, `transformers
serve` and lm-evaluation-harness expect of a registered model, and registration in any order of imports.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import subprocess_env

from llmkit.models import LlmkitGPTForCausalLM, build_model

V, T, B = 61, 12, 2
FORMS = {
    "gpt2-like": dict(),
    "llama-like": dict(position_embedding_type="rotary", norm_type="rmsnorm", mlp_type="swiglu", bias=False),
    "rotary-layernorm-gelu-untied": dict(position_embedding_type="rotary", tie_word_embeddings=False),
    "learned-rmsnorm-swiglu-nobias": dict(norm_type="rmsnorm", mlp_type="swiglu", bias=False),
    "learned-qkv-bias-only": dict(bias=False, qkv_bias=True, tie_word_embeddings=False),
    "rotary-rmsnorm-gelu-bias": dict(position_embedding_type="rotary", norm_type="rmsnorm"),
    # the speedrun levers: QK-norm, ReLU², zero-initialised residual projections, an untied head
    "rotary-qknorm-relu2-zeroinit": dict(position_embedding_type="rotary", qk_norm=True, activation_function="relu2",
                                         zero_init_residual=True, bias=False, tie_word_embeddings=False),
    "learned-qknorm-bias": dict(qk_norm=True),
}
FORM_IDS = list(FORMS)


def make(form: str, seed: int = 0, **extra) -> LlmkitGPTForCausalLM:
    torch.manual_seed(seed)
    settings = dict(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, eos_token_id=0, pad_token_id=0,
                    bos_token_id=0)
    settings.update(FORMS[form])
    settings.update(extra)
    return build_model("llmkit-gpt", **settings).eval()


def ids(batch: int = B, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- outputs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORM_IDS)
def test_hidden_states_count_shapes_and_ends(form):
    model = make(form)
    x = ids()
    out = model(x, output_hidden_states=True)
    hs = out.hidden_states
    assert isinstance(hs, tuple) and len(hs) == model.config.n_layer + 1
    assert all(h.shape == (B, T, model.config.n_embd) for h in hs)
    base = model.transformer(x)
    torch.testing.assert_close(hs[-1], base.last_hidden_state)  # the last: the final norm's output
    torch.testing.assert_close(model.lm_head(hs[-1]), out.logits)
    first = model.transformer.wte(x)
    if not model.config.position_embedding_type == "rotary":
        first = first + model.transformer.wpe(torch.arange(T))
    torch.testing.assert_close(hs[0], first)  # the first: the embeddings, the input of block 0
    # the same through the config, and through the base model alone
    model.config.output_hidden_states = True
    assert len(model(x).hidden_states) == model.config.n_layer + 1
    assert len(model.transformer(x).hidden_states) == model.config.n_layer + 1


@pytest.mark.parametrize("form", FORM_IDS)
def test_eager_attentions_are_causal_distributions(form):
    model = make(form)
    model.set_attn_implementation("eager")
    attentions = model(ids(), output_attentions=True).attentions
    assert len(attentions) == model.config.n_layer
    for a in attentions:
        assert a.shape == (B, model.config.n_head, T, T)
        torch.testing.assert_close(a.sum(-1), torch.ones(B, model.config.n_head, T))
        assert torch.all(a.triu(1) == 0)  # nothing attends to the future
    model.config.output_attentions = True
    assert len(model(ids()).attentions) == model.config.n_layer


@pytest.mark.parametrize("form", FORM_IDS)
def test_tuple_outputs_equal_dict_outputs(form):
    model = make(form)
    x = ids()
    labels = x.clone()
    as_dict = model(x, labels=labels, output_hidden_states=True, use_cache=False)
    as_tuple = model(x, labels=labels, output_hidden_states=True, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected) == 3  # loss, logits, hidden states
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    for a, b in zip(as_tuple[2], as_dict.hidden_states):
        torch.testing.assert_close(a, b)
    model.config.return_dict = False  # the config's setting, as transformers' tests set it
    assert isinstance(model(x), tuple) and isinstance(model.transformer(x), tuple)


@pytest.mark.parametrize("form", FORM_IDS)
def test_eager_equals_sdpa_through_every_hidden_state(form):
    model = make(form)
    x = ids()
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # left padding on one row
    sdpa = model(x, attention_mask=mask, output_hidden_states=True)
    model.set_attn_implementation("eager")
    eager = model(x, attention_mask=mask, output_hidden_states=True)
    for a, b in zip(sdpa.hidden_states, eager.hidden_states):
        torch.testing.assert_close(a[:, 3:], b[:, 3:], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sdpa.logits[1], eager.logits[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("form", ["gpt2-like", "llama-like"])
def test_training_forward_returns_logits_and_the_fused_loss_only_when_asked(form):
    from llmkit.models.chunked_loss import logits_are_large

    model = make(form, vocab_size=8192, n_positions=640).train()
    x = torch.randint(0, 8192, (8, 640), generator=torch.Generator().manual_seed(0))
    assert logits_are_large(x.numel(), 8192)  # large enough for the fast path to chunk
    with torch.no_grad():
        plain = model(x, labels=x)
    assert plain.logits is not None and plain.logits.shape == (8, 640, 8192)
    fused = model(x, labels=x, fused_loss=True)
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-5, atol=1e-5)


# --- generation ----------------------------------------------------------------------------------------------


GENERATE_MODES = {
    "greedy": dict(do_sample=False),
    "sample": dict(do_sample=True, top_k=10),
    "beam": dict(do_sample=False, num_beams=2),
}


@pytest.mark.parametrize("form", ["gpt2-like", "llama-like"])
@pytest.mark.parametrize("mode", list(GENERATE_MODES))
def test_generate_returns_scores_hidden_states_and_attentions(form, mode):
    model = make(form)
    model.set_attn_implementation("eager")
    prompt, new = ids(length=5), 4
    torch.manual_seed(0)
    out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, return_dict_in_generate=True,
                         output_scores=True, output_logits=True, output_hidden_states=True,
                         output_attentions=True, **GENERATE_MODES[mode])
    rows = B * GENERATE_MODES[mode].get("num_beams", 1)
    assert out.sequences.shape == (B, 5 + new)
    assert len(out.scores) == len(out.logits) == new
    assert all(s.shape == (rows, V) for s in out.scores)
    hidden = out.decoder_hidden_states if hasattr(out, "decoder_hidden_states") else out.hidden_states
    attn = out.decoder_attentions if hasattr(out, "decoder_attentions") else out.attentions
    assert len(hidden) == len(attn) == new
    assert all(len(step) == model.config.n_layer + 1 for step in hidden)
    assert hidden[0][0].shape == (rows, 5, model.config.n_embd)  # the prompt's pass
    assert hidden[1][0].shape == (rows, 1, model.config.n_embd)  # then one token at a time, from the cache
    assert attn[1][0].shape == (rows, model.config.n_head, 1, 6)
    if mode == "greedy":  # the scores are the logits of the chosen tokens
        chosen = torch.stack([s.argmax(-1) for s in out.scores], dim=1)
        assert torch.equal(chosen, out.sequences[:, 5:])


@pytest.mark.parametrize("form", ["gpt2-like", "llama-like"])
def test_assisted_and_prompt_lookup_decoding_equal_greedy(form):
    model = make(form)
    assistant = make(form, seed=7, n_layer=1)
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6]])
    greedy = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assisted = model.generate(prompt, max_new_tokens=10, do_sample=False, assistant_model=assistant)
    lookup = model.generate(prompt, max_new_tokens=10, do_sample=False, prompt_lookup_num_tokens=3)
    assert torch.equal(assisted, greedy) and torch.equal(lookup, greedy)
    # with outputs asked for (this crashed inside transformers' assisted generation when attentions came back None)
    model.set_attn_implementation("eager")
    assistant.set_attn_implementation("eager")
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, assistant_model=assistant,
                         return_dict_in_generate=True, output_attentions=True, output_hidden_states=True)
    assert torch.equal(out.sequences, greedy[:, :16])
    assert out.attentions and all(len(step) == model.config.n_layer for step in out.attentions)


# --- export, resizing, checkpointing, config -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["gpt2-like", "llama-like", "rotary-layernorm-gelu-untied"])
def test_torch_export_equals_eager(form):
    model = make(form)
    x = ids()
    exported = torch.export.export(model, args=(x,), kwargs={"use_cache": False}, strict=False)
    got = exported.module()(x, use_cache=False)
    torch.testing.assert_close(got.logits if hasattr(got, "logits") else got["logits"], model(x, use_cache=False).logits)


@pytest.mark.parametrize("form", ["gpt2-like", "rotary-layernorm-gelu-untied"])
def test_resize_token_embeddings_keeps_the_old_rows_and_the_tie(form):
    model = make(form)
    x = ids()
    before = model(x).logits
    model.resize_token_embeddings(V + 7)
    assert model.get_input_embeddings().num_embeddings == V + 7
    assert model.get_output_embeddings().weight.shape[0] == V + 7
    assert model.config.vocab_size == V + 7
    torch.testing.assert_close(model(x).logits[..., :V], before)
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == model.config.tie_word_embeddings


@pytest.mark.parametrize("form", ["gpt2-like", "llama-like"])
def test_gradient_checkpointing_equals_none(form):
    grads = []
    for checkpointing in (False, True):
        model = make(form, dropout=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        x = ids()
        loss = model(x, labels=x).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l0, l1)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], rtol=1e-5, atol=1e-6)


def test_learned_position_configs_carry_no_rope_attributes():
    learned = make("gpt2-like").config
    assert not hasattr(learned, "rope_parameters") and "rope_parameters" not in learned.to_dict()
    assert "rope_theta" not in learned.to_dict()
    rotary = make("llama-like").config
    assert rotary.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}


def test_no_split_modules_and_support_flags_name_real_things():
    model = make("llama-like")
    classes = {type(m).__name__ for m in model.modules()}
    assert set(model._no_split_modules) <= classes
    assert model._supports_sdpa and model.supports_gradient_checkpointing
    assert model.config.model_type == "llmkit-gpt" and model.config.architectures in (None, ["LlmkitGPTForCausalLM"])


# --- beside the ecosystem's libraries -----------------------------------------------------------------------


@pytest.mark.parametrize("switch", ["trl.disable_dropout_in_model", "every nn.Dropout.p = 0"])
def test_dropout_switches_make_train_mode_forwards_identical(switch):
    model = make("gpt2-like", dropout=0.2).train()
    x = ids()
    assert not torch.equal(model(x).logits, model(x).logits)  # dropout is on in train mode
    if switch.startswith("trl"):
        from trl.trainer.utils import disable_dropout_in_model

        disable_dropout_in_model(model)
    else:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    assert model.training
    assert torch.equal(model(x).logits, model(x).logits)


def test_peft_lora_without_target_modules_uses_gpt2s_defaults():
    from peft import LoraConfig, get_peft_model

    model = make("gpt2-like")
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4))
    assert peft_model.peft_config["default"].target_modules == {"c_attn"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "c_attn" in n for n in trainable)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run folder's model files: what `AutoModelForCausalLM.from_pretrained(RUN)` and Auto lookups read."""
    from llmkit.tokenizers import train_tokenizer

    path = tmp_path_factory.mktemp("contract") / "run"
    tokenizer = train_tokenizer("char", ["to be or not to be, that is the question"])
    model = build_model("llmkit-gpt", vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=4,
                        eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


IMPORT_ORDERS = {
    "llmkit-then-trl": ["import llmkit", "import trl"],
    "trl-then-llmkit": ["import trl", "import llmkit"],
    "find_spec-first": ["import llmkit", "import importlib.util; importlib.util.find_spec('transformers')",
                        "importlib.util.find_spec('peft')", "import trl"],
    "peft-then-llmkit": ["import peft", "import llmkit"],
    "llmkit-then-peft": ["import llmkit", "import peft"],
    "transformers-first": ["import transformers", "import llmkit", "import peft"],
}


@pytest.mark.parametrize("order", list(IMPORT_ORDERS))
def test_every_import_order_loads_a_run_and_registers_with_peft(order, saved_run):
    code = "\n".join([*IMPORT_ORDERS[order], textwrap.dedent(f"""
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(saved_run)!r})
        assert type(model).__name__ == "LlmkitGPTForCausalLM", type(model)
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as targets
        assert targets["llmkit-gpt"] == ["c_attn"], targets.get("llmkit-gpt")
        print("loaded", model.config.model_type)
    """)])
    res = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "loaded llmkit-gpt" in res.stdout


def test_transformers_serve_model_manager_loads_a_run(saved_run):
    """`transformers serve` loads by class name (`getattr(transformers, config.architectures[0])`)."""
    import transformers
    from transformers.cli.serving.model_manager import ModelLoader

    import llmkit  # noqa: F401

    assert transformers.LlmkitGPTForCausalLM is LlmkitGPTForCausalLM
    model, tokenizer = ModelLoader(device="cpu", dtype="auto").load_model_and_processor(str(saved_run))
    assert isinstance(model, LlmkitGPTForCausalLM)
    assert tokenizer.decode(tokenizer("to be, or not")["input_ids"]) == "to be, or not"


def test_per_document_evaluation_equals_lm_evaluation_harness_at_its_defaults(saved_run):
    """Bits per byte of `evaluate --per-document` at its default stride, against lm-evaluation-harness's own
    rolling loglikelihood (HFLM) on the same model and documents: the harness's wikitext-style metric."""
    import math

    lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface")
    from llmkit.evaluate import evaluate_model
    from llmkit.loading import load_model

    model, tokenizer = load_model(str(saved_run), device="cpu")
    docs = ["to be or not to be " * 9, "that is the question, " * 5 + "or not", "be it so"]
    ours = evaluate_model(model, tokenizer, docs, per_document=True)
    lm = lm_eval_hf.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=32)
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=i) for i, d in
                enumerate(docs)]
    logprobs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    harness_bpb = -sum(logprobs) / sum(len(d.encode()) for d in docs) / math.log(2)
    assert ours["bits_per_byte"] == pytest.approx(harness_bpb, rel=1e-6)


# --- the core reads each fact once ------------------------------------------------------------------------------


def test_a_lora_config_on_a_local_base_reads_the_pretrained_config_and_adapter_once(saved_run, monkeypatch):
    """Resolving, checking and building a LoRA run on a pretrained model: one config read (transformers' own
    AutoConfig.from_pretrained, counted), one adapter look-up (a Hub id: one request each)."""
    from transformers import AutoConfig

    from llmkit import loading
    from llmkit.config import load_config
    from llmkit.training.workflow import check_lora_settings

    reads = []
    real = AutoConfig.from_pretrained.__func__

    def counted(cls, name, *args, **kwargs):
        reads.append(str(name))
        return real(cls, name, *args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", classmethod(counted))
    loading._load_config.cache_clear()
    loading._adapter_config.cache_clear()
    cfg = load_config(None, [f"model.from_pretrained={saved_run}", "model.dropout=0.1", "lora.r=4"])
    check_lora_settings(cfg)
    tokenizer = loading.load_tokenizer_for(str(saved_run))
    model = loading.model_from_config(cfg.model, tokenizer)
    assert model.config.attn_pdrop == 0.1 and cfg.model.n_layer == 2
    assert reads == [str(saved_run)]
    assert loading._adapter_config.cache_info().misses == 1
