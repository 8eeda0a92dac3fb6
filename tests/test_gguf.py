"""`llmkit export RUN OUT --to gguf`: the GGUF file is the trained model, read back by transformers' own GGUF
loader (`from_pretrained(OUT, gguf_file=...)`), for the GPT-2 form and the Llama form, at each quantization; the
refusals are one line; the Ollama Modelfile names the file, the template and the stop."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import llmkit_main, train_run

from llmkit.loading import load_model

pytest.importorskip("gguf", reason='--to gguf needs its extra: pip install "llmkit[gguf]"')

TINY = ["tokenizer.kind=bpe", "tokenizer.vocab_size=400", "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
        "model.n_positions=96", "training.max_steps=60", "training.learning_rate=3e-3", "training.report_to=none",
        "training.disable_tqdm=true", "sample.max_new_tokens=0"]
FORMS = {
    "gpt2": ["model.activation_function=gelu_new"],
    "llama": ["model.position_embedding_type=rotary", "model.norm_type=rmsnorm", "model.mlp_type=swiglu",
              "model.bias=false", "model.tie_word_embeddings=false"],
}
TEXT = "ROMEO: To be, or not to be, that is the question.\nJULIET: Whether 'tis nobler in the mind to suffer"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_head):
    root = tmp_path_factory.mktemp("gguf-runs")
    corpus = shakespeare_head(60_000)
    cache = f"data.cache_dir={root / 'cache'}"
    out = {name: train_run(root / name, [*TINY, *extra, f"data.source={corpus}", cache]) for name, extra in FORMS.items()}
    out["instruct"] = train_run(root / "instruct", [*TINY, *FORMS["llama"], "data.format=instruct",
                                                    "data.source=builtin-instruct", cache])
    return out


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """`llmkit export RUN OUT --to gguf --quant Q` for each run and quantization (in-process: the command line's
    own entry point, without an interpreter start each)."""
    from llmkit.cli import main

    root = tmp_path_factory.mktemp("gguf-out")
    made = {}
    for name in ("gpt2", "llama", "instruct"):
        for quant in ("f32", "f16", "q8_0", "q4_0"):
            out = root / f"{name}-{quant}"
            assert main(["export", str(runs[name]), str(out), "--to", "gguf", "--quant", quant]) == 0
            made[name, quant] = out
    return made


def read_back(folder, quant, config):
    """transformers' GGUF loader on the file. (It maps GPT-2's `context_length` to `n_ctx`, not to the position
    table's `n_positions`, so a learned-position model is read with the table's size given.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"n_positions": config.n_positions} if config.position_embedding_type == "learned" else {}
    name = f"model-{quant}.gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def perplexity(model, ids) -> float:
    with torch.no_grad():
        return math.exp(model(ids, labels=ids).loss.item())


@pytest.mark.parametrize("form", ["gpt2", "llama", "instruct"])
def test_f32_is_the_trained_model_logits_tokenizer_and_greedy_text(runs, exports, form):
    ours, tokenizer = load_model(str(runs[form]), device="cpu")
    theirs, their_tokenizer = read_back(exports[form, "f32"], "f32", ours.config)
    assert type(theirs).__name__ == ("GPT2LMHeadModel" if form == "gpt2" else "LlamaForCausalLM")
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert their_tokenizer(TEXT).input_ids == ids[0].tolist()  # the vocabulary and merges travelled
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-4, rtol=0)
    prompt = ids[:, :4]
    settings = dict(max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(theirs.generate(prompt, **settings), ours.generate(prompt, **settings))
    if form == "instruct":  # the chat template and the end of turn are in the metadata
        assert their_tokenizer.chat_template == tokenizer.chat_template
        assert their_tokenizer.eos_token_id == tokenizer.eos_token_id


@pytest.mark.slow  # keeps the default suite under 15 minutes; .ci/run runs the slow suite after it
@pytest.mark.parametrize("form", ["gpt2", "llama"])
def test_f16_within_its_rounding_q8_0_within_one_percent_perplexity_and_q4_0_within_five(runs, exports, form):
    ours, tokenizer = load_model(str(runs[form]), device="cpu")
    ids = tokenizer(TEXT * 2, return_tensors="pt").input_ids[:, : ours.config.n_positions]
    with torch.no_grad():
        reference = ours(ids).logits
        f16, _ = read_back(exports[form, "f16"], "f16", ours.config)
        torch.testing.assert_close(f16(ids).logits, reference, atol=2e-2, rtol=1e-2)
    q8, _ = read_back(exports[form, "q8_0"], "q8_0", ours.config)
    assert perplexity(q8, ids) == pytest.approx(perplexity(ours, ids), rel=0.01)
    q4, _ = read_back(exports[form, "q4_0"], "q4_0", ours.config)
    assert perplexity(q4, ids) == pytest.approx(perplexity(ours, ids), rel=0.05)
    sizes = {q: (exports[form, q] / f"model-{q}.gguf").stat().st_size for q in ("f32", "f16", "q8_0", "q4_0")}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_the_modelfile_names_the_file_the_template_the_stop_and_the_context(runs, exports):
    text = (exports["instruct", "q8_0"] / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in text and (exports["instruct", "q8_0"] / "model-q8_0.gguf").is_file()
    assert 'PARAMETER stop "<|endoftext|>"' in text and "PARAMETER num_ctx 96" in text
    assert "TEMPLATE" in text and "<|assistant|>" in text and "<|user|>" in text
    plain = (exports["gpt2", "f32"] / "Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}"""' in plain  # a text model continues the prompt


def test_forms_and_vocabularies_gguf_cannot_state_are_refused_in_one_line(runs, tmp_path, shakespeare_head, capfd):
    corpus = shakespeare_head(20_000)
    cases = {
        "exact GELU on the GPT-2 form": ([], "model.activation_function=gelu_new"),
        "no stock equivalent": (["model.position_embedding_type=rotary"], "rotary positions"),
        "a char vocabulary": (["tokenizer.kind=char", "model.activation_function=gelu_new"], "tokenizer.kind=bpe"),
    }
    for name, (extra, message) in cases.items():
        run = tmp_path / name.replace(" ", "_")
        train_run(run, [*[t for t in TINY if "max_steps" not in t], "training.max_steps=2", *extra,
                        f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}"])
        out = tmp_path / f"{run.name}-gguf"
        code, _, err = llmkit_main(capfd, "export", run, out, "--to", "gguf")
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], (name, err[-2000:])
        assert lines[0].startswith("llmkit: error: --to gguf: ")
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}.tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("form,quant", [("gpt2", "f32"), ("gpt2", "f16"), ("llama", "f32"), ("llama", "f16")])
def test_llama_cpp_itself_greedy_decodes_the_same_64_tokens(runs, exports, form, quant):
    """llama.cpp (llama-cpp-python, built from source by .ci/run before the slow suite) loads the file, tokenizes
    the prompt as llmkit does and greedy-decodes the same 64 tokens as `generate()` on the run."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: .ci/run builds it from "
                                    "source before the slow suite (cmake and a C++ compiler)")
    ours, tokenizer = load_model(str(runs[form]), device="cpu")
    llm = llama_cpp.Llama(model_path=str(exports[form, quant] / f"model-{quant}.gguf"),
                          n_ctx=ours.config.n_positions, n_threads=2, seed=0, verbose=False)
    prompt = tokenizer("ROMEO:").input_ids
    assert llm.tokenize(b"ROMEO:", add_bos=False, special=False) == prompt
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        theirs.append(token)
        if len(theirs) == 64:
            break
    expected = ours.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    assert theirs == expected


@pytest.mark.slow
def test_llama_cpp_answers_an_instruct_run_in_its_template_and_stops_at_the_end_of_turn(runs, exports):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: .ci/run builds it from "
                                    "source before the slow suite (cmake and a C++ compiler)")
    from llmkit.models.generation import generate_texts

    ours, tokenizer = load_model(str(runs["instruct"]), device="cpu")
    llm = llama_cpp.Llama(model_path=str(exports["instruct", "f32"] / "model-f32.gguf"),
                          n_ctx=ours.config.n_positions, n_threads=2, seed=0, verbose=False)
    question = [{"role": "user", "content": "What does os.path.join do?"}]
    answer = llm.create_chat_completion(messages=question, temperature=0.0, top_k=1, max_tokens=60)
    expected = generate_texts(ours, tokenizer, [question], max_new_tokens=60, temperature=0.0, chat=True)[0]
    assert answer["choices"][0]["message"]["content"].strip() == expected.strip()
    assert answer["choices"][0]["finish_reason"] == "stop" or len(expected) >= 60


@pytest.mark.slow
@pytest.mark.parametrize("form,quant", [("gpt2", "q8_0"), ("gpt2", "q4_0"), ("llama", "q8_0"), ("llama", "q4_0")])
def test_llama_cpp_reads_the_quantized_blocks_as_transformers_does(runs, exports, form, quant, monkeypatch):
    """The blocks the `gguf` package's quantizer wrote mean to llama.cpp what they mean to transformers' GGUF
    dequantizer: the same next-token choices over a window and the same perplexity (llama.cpp quantizes the
    activations to 8 bits for its quantized products, so the logits are not equal to the digit)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: .ci/run builds it from "
                                    "source before the slow suite (cmake and a C++ compiler)")
    ours, tokenizer = load_model(str(runs[form]), device="cpu")
    ids = tokenizer(TEXT * 2).input_ids[: ours.config.n_positions]
    theirs, _ = read_back(exports[form, quant], quant, ours.config)
    with torch.no_grad():
        reference = theirs(torch.tensor([ids])).logits[0]
    if b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
        # llama.cpp's AMX kernels (Intel Sapphire Rapids and later) crash in ggml_backend_amx_mul_mat on q8_0/q4_0
        # weights at every width tried here, 64 to 256, in its own converter's files too (ggml-org/llama.cpp#20824,
        # open); read them through the plain CPU kernels there,
        # as `use_extra_bufts=False` in llama.cpp's model parameters does (llama-cpp-python has no argument for it)
        default = llama_cpp.llama_cpp.llama_model_default_params

        def no_amx():
            params = default()
            params.use_extra_bufts = False
            return params

        monkeypatch.setattr(llama_cpp.llama.llama_cpp, "llama_model_default_params", no_amx)
    llm = llama_cpp.Llama(model_path=str(exports[form, quant] / f"model-{quant}.gguf"), n_ctx=ours.config.n_positions,
                          n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    logits = torch.tensor(llm.scores[: len(ids)], dtype=torch.float32)
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    assert agree >= 0.95, agree

    def nll(x):
        return torch.nn.functional.cross_entropy(x[:-1], torch.tensor(ids[1:])).item()

    assert math.exp(nll(logits)) == pytest.approx(math.exp(nll(reference)), rel=0.01)

