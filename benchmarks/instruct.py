"""Instruction tuning, measured: `configs/instruct-lora.yaml` on the quickstart model, packed vs padded batches.

For the held-out 10% of the built-in instruction set: the loss on answer tokens before tuning (the quickstart
model with the chat markers added) and after, and the share of held-out prompts whose greedy answer ends with the
end-of-turn token within 60 tokens (answered in the trained format); and the training tokens/s with examples
packed into one row per batch (attention kept inside each example) and padded to the longest of the batch.

    python benchmarks/instruct.py [--base runs/quickstart] [--steps 400]
Writes benchmarks/results/instruct.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from _common import quickstart_run, report

REPO = pathlib.Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "instruct-lora.yaml"


def held_out(cfg) -> list[dict]:
    from llmkit.data.instruct import builtin_instruct_rows
    from llmkit.data.sources import in_validation

    rows = builtin_instruct_rows()
    return [r for i, r in enumerate(rows) if in_validation(i, cfg.data.val_ratio, cfg.data.seed)]


def in_format(model, tokenizer, prompts, n=60) -> float:
    import torch

    from llmkit.data.instruct import chat_ids

    done = 0
    with torch.no_grad():
        for prompt in prompts:
            ids = chat_ids(tokenizer, [{"role": "user", "content": prompt}])
            new = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
            done += bool(len(new)) and int(new[-1]) == tokenizer.eos_token_id
    return done / len(prompts)


def answer_loss(model, tokenizer, rows, work) -> float:
    from llmkit.evaluate import evaluate_answers

    path = work / "held_out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return evaluate_answers(model, tokenizer, str(path))["loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=str(REPO / "runs" / "quickstart"))
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    from llmkit.config import load_config
    from llmkit.data.instruct import prepare_tokenizer
    from llmkit.loading import load_model

    base = quickstart_run(pathlib.Path(args.base))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-instruct-bench-"))
    cfg = load_config(PRESET, [f"model.from_pretrained={base}"])
    rows = held_out(cfg)
    prompts = [r["prompt"] for r in rows][:40]

    model, tokenizer = load_model(str(base), device="cpu")
    prepare_tokenizer(tokenizer, cfg)
    model.resize_token_embeddings(len(tokenizer))
    results = [{"model": "before (quickstart + markers)", "answer_loss": answer_loss(model, tokenizer, rows, work),
                "in_format": in_format(model, tokenizer, prompts), "tokens_per_s": 0, "s": 0.0}]
    for packing in ("packed", "padded"):
        out = work / packing
        subprocess.run([sys.executable, "-m", "llmkit.cli", "train", str(PRESET), f"model.from_pretrained={base}",
                        f"data.packing={packing}", f"training.max_steps={args.steps}",
                        f"training.eval_steps={args.steps}", "training.report_to=none", "training.disable_tqdm=true",
                        "sample.max_new_tokens=0", f"data.cache_dir={work / 'cache'}", "--output-dir", str(out)],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = json.loads((out / "metrics.json").read_text())
        model, tokenizer = load_model(str(out), device="cpu")
        results.append({"model": f"after {args.steps} steps, {packing} batches",
                        "answer_loss": answer_loss(model, tokenizer, rows, work),
                        "in_format": in_format(model, tokenizer, prompts),
                        "tokens_per_s": round(metrics["train_tokens_per_second"]),
                        "s": metrics["train_runtime"]})
    report("instruct", results, extra={"held_out_examples": len(rows), "format_prompts": len(prompts),
                                       "steps": args.steps})


if __name__ == "__main__":
    main()
