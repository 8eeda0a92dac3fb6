"""GGUF: llama.cpp on the exported file against `llmkit generate` on the run; file sizes and perplexity per type.

(Not `gguf.py`: a script of that name would shadow the `gguf` package it exports with.)

The GPT-2-form run of the serving benchmark (`_common.gpt2_form_run`: 6/6/384, a 256-token context, byte-level
BPE) is exported with `llmkit export RUN OUT --to gguf --quant Q` for every type llmkit writes. Per type: the file
size; llama.cpp's perplexity on a held-out window of the built-in corpus (llama-cpp-python's logits, the same
window llmkit-gpt scores); and greedy decoding of `--new-tokens` tokens from the same prompt, timed whole
(prompt included) as the best of `--rounds` rounds that alternate llama.cpp and llmkit-gpt's `generate()`
in this process, both on this machine's threads. The ratio is reported as it comes out, whichever way.
Needs llama-cpp-python (built from source: `pip install llama-cpp-python`, minutes).

    python benchmarks/gguf_decode.py [--run runs/gpt2form] [--rounds 5] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import tempfile
import time

import numpy as np
import torch
from _common import REPO, gpt2_form_run, report

from llmkit.gguf_export import GGUF_NAME, QUANTS
from llmkit.loading import load_model

PROMPT = "The list"


def held_out_window(tokenizer, length: int) -> list[int]:
    """`length` tokens of the built-in corpus's last documents (the same window for every candidate)."""
    from llmkit.data.sources import builtin_documents

    return tokenizer("".join(builtin_documents()[-40:])).input_ids[-length:]


def nll_of(logits: np.ndarray, ids: list[int]) -> float:
    logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(REPO / "runs" / "gpt2form"), help="a GPT-2-form run (trained if absent)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama-cpp-python is not installed: pip install llama-cpp-python (builds llama.cpp)") from None
    from llmkit.cli import main as llmkit_main

    run = gpt2_form_run(pathlib.Path(args.run))
    model, tokenizer = load_model(str(run), device="cpu")
    n, threads = args.new_tokens, torch.get_num_threads()
    prompt = tokenizer(PROMPT).input_ids
    window = held_out_window(tokenizer, model.config.n_positions)
    with torch.no_grad():
        ours_nll = nll_of(model(torch.tensor([window])).logits[0].numpy(), window)
        settings = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                        pad_token_id=tokenizer.pad_token_id)
        ours_tokens = model.generate(torch.tensor([prompt]), **settings)[0, len(prompt):].tolist()

    def llmkit_generate():
        with torch.no_grad():
            model.generate(torch.tensor([prompt]), **settings)

    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-gguf-bench-"))
    weights = sum(f.stat().st_size for f in run.glob("*.safetensors"))
    rows = [{"weights": "run (safetensors, f32)", "MB": weights / 1e6, "perplexity": math.exp(ours_nll),
             "greedy_tokens_equal": n, "tok_s": None, "vs_llmkit": 1.0}]
    best_ours = float("inf")
    for quant in QUANTS:
        out = work / quant
        assert llmkit_main(["export", str(run), str(out), "--to", "gguf", "--quant", quant]) == 0
        path = out / GGUF_NAME.format(quant=quant)
        scorer = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.n_positions, n_threads=threads,
                                 logits_all=True, verbose=False)
        scorer.eval(window)
        their_nll = nll_of(scorer.scores[: len(window)], window)
        del scorer
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.n_positions, n_threads=threads, seed=0,
                              verbose=False)

        def llama_generate(llm=llm):
            tokens = []
            for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
                tokens.append(token)
                if len(tokens) == n:
                    return tokens
            return tokens

        theirs_tokens = llama_generate()
        agree = next((i for i, (a, b) in enumerate(zip(theirs_tokens, ours_tokens)) if a != b), len(theirs_tokens))
        best_theirs = float("inf")
        for _ in range(args.rounds):  # alternating: the machine's drift hits both alike
            start = time.perf_counter()
            llama_generate()
            best_theirs = min(best_theirs, time.perf_counter() - start)
            start = time.perf_counter()
            llmkit_generate()
            best_ours = min(best_ours, time.perf_counter() - start)
        rows.append({"weights": f"GGUF {quant}", "MB": path.stat().st_size / 1e6, "perplexity": math.exp(their_nll),
                     "greedy_tokens_equal": agree, "tok_s": n / best_theirs, "vs_llmkit": None})
    rows[0]["tok_s"] = n / best_ours
    for row in rows[1:]:
        row["vs_llmkit"] = row["tok_s"] / rows[0]["tok_s"]
    report("gguf_decode", rows, {"prompt": PROMPT, "new_tokens": n, "threads": threads, "rounds": args.rounds,
                          "perplexity_window_tokens": len(window), "run_overrides": "see _common.GPT2_FORM",
                          "llama_cpp_python": llama_cpp.__version__,
                          "note": "tok_s: greedy decoding of new_tokens from the prompt, timed whole; "
                                  "greedy_tokens_equal: leading tokens equal to llmkit-gpt's greedy decoding; "
                                  "perplexity: llama.cpp's logits for GGUF rows"})


if __name__ == "__main__":
    main()
