"""`llmkit export RUN OUT --to gguf [--quant f32|f16|q8_0|q4_0]`: a run as one GGUF file for llama.cpp and Ollama,
with an Ollama `Modelfile` beside it.

Design choices:
- Written with the `gguf` package (llama.cpp's own GGUF writer and quantizer), in llama.cpp's layout for the two
  architectures an llmkit-gpt form converts to exactly (`llmkit.models.conversions.stock_target`): `gpt2`
  (learned positions, LayerNorm, fused q/k/v, tanh GELU) and `llama` (rotary, RMSNorm, SwiGLU, no biases; q and
  k rows permuted to llama.cpp's rotary pairing, as its own converter does). transformers reads these files back
  (`from_pretrained(OUT, gguf_file=...)`), which is how the tests prove the file is the trained model.
- Supported? is one check before any work, one line naming the option to change: a form without a stock
  equivalent; exact GELU on the GPT-2 form (llama.cpp's GPT-2 runs the tanh GELU: `model.activation_function=
  gelu_new`); RoPE scaling; and char or word vocabularies, which GGUF's tokenizer models (byte-level BPE,
  SentencePiece) cannot state exactly (`tokenizer.kind=bpe`).
- The tokenizer travels in the metadata: byte-level BPE (`tokenizer.ggml.model = gpt2`, GPT-2's pre-tokenizer,
  which llmkit's BPE uses), its merges, special tokens as control tokens, BOS/EOS/pad ids, and the chat template.
- Quantization: `f32`; `f16` (matrices in f16, norms and biases in f32, as llama.cpp does); `q8_0` and `q4_0`
  (matrices whose rows are a multiple of 32 wide in llama.cpp's 8- or 4-bit blocks, quantized by the `gguf`
  package's own code, the rest f16). The slow tests check llama.cpp's logits on the q4_0 file against
  transformers' reading of it. The K-quants are not offered: the `gguf` package reads them but cannot write them.
- The `Modelfile` names the file, the run's chat template as Ollama's Go template (llmkit's default template is
  translated exactly; another is refused there with a note), the end-of-turn stop, the context and the run's
  sampling defaults, so `ollama create NAME -f OUT/Modelfile` needs no edits.
"""

from __future__ import annotations

import json
import pathlib

from .errors import ConfigError, ParameterError

QUANTS = ("f32", "f16", "q8_0", "q4_0")
GGUF_NAME = "model-{quant}.gguf"
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


def check_supported(model, tokenizer) -> tuple[str, dict]:
    """The llama.cpp architecture `model` exports to ("gpt2" or "llama") and the tokenizer's specification, or one
    ConfigError line."""
    from .models.conversions import stock_target, unsupported_reason

    config = model.config
    target = stock_target(config)
    if target is None:
        raise ParameterError("to", f" gguf: {unsupported_reason(config, 'gpt2')}")
    if target == "gpt2" and config.activation_function not in TANH_GELU:
        raise ParameterError("to", f" gguf: llama.cpp's GPT-2 runs the tanh GELU and this model uses "
                             f"{config.activation_function}; retrain with model.activation_function=gelu_new")
    rope = getattr(config, "rope_parameters", None) or {}
    if target == "llama" and rope.get("rope_type", "default") != "default":
        raise ParameterError("to", f" gguf: RoPE scaling ({rope['rope_type']}) is not written; retrain without "
                             "rope_parameters scaling")
    return target, _byte_level_bpe(tokenizer)


def _byte_level_bpe(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model, pre = spec.get("model", {}), spec.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if model.get("type") != "BPE" or not any(p.get("type") == "ByteLevel" for p in pres):
        kind = "char" if model.get("type") == "BPE" else str(model.get("type", "unknown")).lower()
        raise ParameterError("to", f" gguf: this run's tokenizer ({kind}) cannot be written exactly in GGUF, whose "
                             "tokenizer models are byte-level BPE and SentencePiece; train with tokenizer.kind=bpe")
    return spec


def _tokenizer_metadata(writer, tokenizer, spec: dict) -> None:
    import gguf

    vocab = spec["model"]["vocab"]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    size = max([*vocab.values(), *added.keys()]) + 1
    tokens, types = [""] * size, [gguf.TokenType.UNUSED] * size
    for token, index in vocab.items():
        tokens[index], types[index] = token, gguf.TokenType.NORMAL
    for index, token in added.items():
        tokens[index] = token["content"]
        types[index] = gguf.TokenType.CONTROL if token.get("special") else gguf.TokenType.USER_DEFINED
    for index, token in enumerate(tokens):
        if not token:
            tokens[index] = f"[PAD{index}]"
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "pad"):
        index = getattr(tokenizer, f"{kind}_token_id", None)
        if index is not None:
            getattr(writer, f"add_{kind}_token_id")(index)
    writer.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _tensors(model, target: str):
    """(llama.cpp name, float32 numpy array in (out, in) layout) for every weight of `model`."""
    import torch

    c = model.config
    sd = {k: v.detach().to(torch.float32).cpu() for k, v in model.state_dict().items()}
    out = [("token_embd.weight", sd["transformer.wte.weight"])]
    if target == "gpt2":
        out.append(("position_embd.weight", sd["transformer.wpe.weight"]))
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        if target == "gpt2":
            names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
                     "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
            for ours, theirs in names.items():
                for kind in ("weight", "bias"):
                    if p + f"{ours}.{kind}" in sd:
                        out.append((f"blk.{i}.{theirs}.{kind}", sd[p + f"{ours}.{kind}"]))
        else:
            q, k, v = sd[p + "attn.c_attn.weight"].chunk(3, dim=0)
            gate, up = sd[p + "mlp.c_fc.weight"].chunk(2, dim=0)
            out += [(f"blk.{i}.attn_norm.weight", sd[p + "ln_1.weight"]),
                    (f"blk.{i}.attn_q.weight", _permute(q, c.n_head)),
                    (f"blk.{i}.attn_k.weight", _permute(k, c.n_head)),
                    (f"blk.{i}.attn_v.weight", v),
                    (f"blk.{i}.attn_output.weight", sd[p + "attn.c_proj.weight"]),
                    (f"blk.{i}.ffn_norm.weight", sd[p + "ln_2.weight"]),
                    (f"blk.{i}.ffn_gate.weight", gate),
                    (f"blk.{i}.ffn_up.weight", up),
                    (f"blk.{i}.ffn_down.weight", sd[p + "mlp.c_proj.weight"])]
    out.append(("output_norm.weight", sd["transformer.ln_f.weight"]))
    if "transformer.ln_f.bias" in sd:
        out.append(("output_norm.bias", sd["transformer.ln_f.bias"]))
    if not c.tie_word_embeddings:
        out.append(("output.weight", sd["lm_head.weight"]))
    return [(name, t.contiguous().numpy()) for name, t in out]


def _permute(weights, n_head: int):
    """HF's rotary pairing (halves) to llama.cpp's (interleaved), as llama.cpp's convert_hf_to_gguf.py does."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(model, tokenizer, path: pathlib.Path, quant: str = "f32") -> pathlib.Path:
    """Write `model` (llmkit-gpt) and `tokenizer` as one GGUF file at `path`."""
    import gguf
    import numpy as np

    if quant not in QUANTS:
        raise ParameterError("quant", f" {quant} is unknown; use one of {', '.join(QUANTS)}")
    target, spec = check_supported(model, tokenizer)
    c = model.config
    writer = gguf.GGUFWriter(str(path), target)
    writer.add_name(pathlib.Path(str(getattr(model, "name_or_path", "") or "llmkit")).name or "llmkit")
    writer.add_context_length(c.n_positions)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.n_inner)
    writer.add_head_count(c.n_head)
    if target == "gpt2":
        writer.add_layer_norm_eps(c.layer_norm_epsilon)
    else:
        writer.add_head_count_kv(c.n_head)
        writer.add_layer_norm_rms_eps(c.layer_norm_epsilon)
        writer.add_rope_freq_base(float(c.rope_parameters.get("rope_theta", c.rope_theta)))
        writer.add_rope_dimension_count(c.n_embd // c.n_head)
        writer.add_vocab_size(c.vocab_size)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    blocks = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(quant)
    writer.add_file_type(file_type)
    _tokenizer_metadata(writer, tokenizer, spec)
    for name, data in _tensors(model, target):
        if data.ndim < 2 or quant == "f32":
            writer.add_tensor(name, data.astype(np.float32))
        elif blocks is not None and data.shape[-1] % gguf.GGML_QUANT_SIZES[blocks][0] == 0:
            writer.add_tensor(name, gguf.quants.quantize(data, blocks), raw_dtype=blocks)
        else:
            writer.add_tensor(name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# llmkit's default chat template (llmkit.data.instruct.DEFAULT_CHAT_TEMPLATE) as Ollama's Go template
# (the same branches, role by role; Ollama's last `<|assistant|>` is the generation prompt)
_OLLAMA_TEMPLATE = ('{{- range .Messages }}{{ if eq .Role "system" }}<|system|>{{ .Content }}\n'
                    '{{ else if eq .Role "user" }}<|user|>{{ .Content }}\n'
                    '{{ else if eq .Role "assistant" }}<|assistant|>{{ .Content }}<|endoftext|>{{ end }}{{ end }}'
                    '<|assistant|>')


def modelfile(gguf_name: str, model, tokenizer) -> str:
    """An Ollama Modelfile for the GGUF file: template, stop, context and the run's sampling defaults."""
    from .data.instruct import DEFAULT_CHAT_TEMPLATE

    lines = ["# Made by llmkit export --to gguf: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    template = getattr(tokenizer, "chat_template", None)
    if template == DEFAULT_CHAT_TEMPLATE:
        lines.append(f'TEMPLATE """{_OLLAMA_TEMPLATE}"""')
    elif template:
        lines.append("# the run's chat template is not llmkit's default, which is the one translated to Ollama's "
                     "Go template: write TEMPLATE by hand")
    else:
        lines.append('TEMPLATE """{{ .Prompt }}"""')  # a text model continues the prompt
    if tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    lines.append(f"PARAMETER num_ctx {model.config.n_positions}")
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.do_sample:
        for key, name in (("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
                          ("repetition_penalty", "repeat_penalty")):
            value = getattr(gen, key, None)
            if value is not None:
                lines.append(f"PARAMETER {name} {value}")
    elif gen is not None:
        lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def export_gguf(model, tokenizer, out: pathlib.Path, quant: str = "f32") -> None:
    """Into the (new, temporary) folder `out`: the GGUF file and its Modelfile."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError('--to gguf needs the gguf package: pip install "llmkit[gguf]"') from None
    out.mkdir(parents=True, exist_ok=True)
    name = GGUF_NAME.format(quant=quant)
    write_gguf(model, tokenizer, out / name, quant)
    (out / "Modelfile").write_text(modelfile(name, model, tokenizer))
