"""Preference tuning: DPO (full and LoRA) through llmkit against the instruct model it starts from, and against
the same TRL DPOTrainer script written as a plain user would.

The chain is the README's: the quickstart model (`configs/quickstart.yaml`), instruction-tuned with
`configs/instruct-lora.yaml`, then `configs/dpo.yaml` and `configs/dpo-lora.yaml` on `builtin-preference`. Each
training runs as its own process (its peak RSS is the process's). Per model, on the held-out pairs (functions never
trained on): preference accuracy against the instruct model (DPO's implicit reward; the instruct model itself
scores 0.5, every pair a tie) and without a reference (which of the two answers gets the higher log-probability),
the margin, the chosen answers' loss, and answers in format (greedy chat answers to held-out questions that end
with the end-of-turn token within 40 tokens). The plain TRL script loads the merged instruct model with
`AutoModelForCausalLM`, builds the same conversational pairs and trains `trl.DPOTrainer` with the same settings as
`configs/dpo.yaml` resolves to (steps, batch, learning rate and schedule, AdamW, weight decay, clipping, bf16
autocast where llmkit picks it).

    python benchmarks/preference.py [--base runs/quickstart] [--work runs/preference-bench]
    python benchmarks/preference.py --memory [--run runs/gpt2form]

`--memory`: peak RSS of 5 DPO steps (batch 4) at a size where a model copy shows: GPT-2 small's shape (12 layers,
768 wide, 256 context, the built-in 2,048-token BPE; about 90M parameters, 360 MB a copy in fp32), one pretraining
step from scratch (the weights' values do not matter for memory): full DPO with its frozen reference copy, full
DPO with `precompute_reference` (no reference kept), and LoRA-DPO (the adapter disabled is the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from _common import REPO, quickstart_run, report

PAIRS = {"prompt_field": "prompt", "chosen_field": "chosen", "rejected_field": "rejected"}
MEASURE = (  # run a command and report its peak RSS (this process's children are the training processes)
    "import resource, runpy, sys, atexit\n"
    "atexit.register(lambda: print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
    "file=sys.stderr))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__') if sys.argv[0].endswith('.py') else "
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")

PLAIN_TRL = '''
import json, sys, time
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

import llmkit  # noqa: F401  (the model's architecture, llmkit-gpt)

model_dir, out, pairs, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
model = AutoModelForCausalLM.from_pretrained(model_dir)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
train = Dataset.from_list([json.loads(line) for line in open(pairs)])
args = DPOConfig(output_dir=out, save_strategy="no", report_to="none", use_cpu=True, **settings)
start = time.perf_counter()
trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
result = trainer.train()
trainer.save_model(out)
tokenizer.save_pretrained(out)
json.dump({"seconds": time.perf_counter() - start, "train_runtime": result.metrics["train_runtime"],
           "tokens": trainer.state.num_input_tokens_seen}, open(out + "/plain_trl.json", "w"))
'''


def run(argv: list[str], label: str) -> dict:
    """Run a training process; its wall time and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak / 1024}


def llmkit(*args) -> list[str]:
    return ["llmkit.cli", *map(str, args)]


def held_out_questions(n: int = 40) -> list[str]:
    from llmkit.data.preference import builtin_preference_rows
    from llmkit.data.sources import in_validation

    return [r["prompt"] for i, r in enumerate(builtin_preference_rows()) if in_validation(i, 0.1, 1337)][:n]


def measure(name: str, reference: str) -> dict:
    from llmkit.evaluate import evaluate_preferences
    from llmkit.loading import load_model

    model, tokenizer = load_model(name, device="cpu")
    ref = load_model(reference, device="cpu")
    relative = evaluate_preferences(model, tokenizer, "builtin-preference", reference=ref, **PAIRS)
    absolute = evaluate_preferences(model, tokenizer, "builtin-preference", **PAIRS)
    return {"accuracy_vs_instruct": relative["accuracy"], "margin_vs_instruct": relative["margin"],
            "accuracy_no_reference": absolute["accuracy"], "chosen_answer_loss": absolute["chosen_loss"],
            "answers_in_format": answers_in_format(model, tokenizer), "pairs": relative["pairs"]}


def answers_in_format(model, tokenizer, n: int = 40) -> float:
    """The share of greedy chat answers to `n` held-out questions that end with the end-of-turn token within 40."""
    import torch

    from llmkit.data.instruct import chat_ids

    in_format, questions = 0, held_out_questions(n)
    with torch.no_grad():
        for question in questions:
            ids = chat_ids(tokenizer, [{"role": "user", "content": question}])
            new = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
            in_format += bool(len(new)) and int(new[-1]) == tokenizer.eos_token_id
    return in_format / len(questions)


def memory(run_dir: str, work: pathlib.Path) -> None:
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.json").exists():
        run(llmkit("train", REPO / "configs/quickstart.yaml", "--output-dir", run_dir, "model.n_layer=12",
                   "model.n_head=12", "model.n_embd=768", "model.n_positions=256", "training.max_steps=1",
                   "training.eval_steps=1", "training.report_to=none", "sample.max_new_tokens=0",
                   "training.optimizer=adamw"), "the GPT-2-small-shaped run")
    common = [f"model.from_pretrained={run_dir}", "data.format=preference", "data.source=builtin-preference",
              "training.max_steps=5", "training.eval_steps=5", "training.per_device_train_batch_size=4",
              "training.per_device_eval_batch_size=4", "data.val_ratio=0.02",
              "training.learning_rate=1e-5", "training.report_to=none", "training.disable_tqdm=true",
              "sample.max_new_tokens=0"]
    variants = {"full DPO, reference copy": [], "full DPO, precompute_reference": ["preference.precompute_reference=true"],
                "LoRA-DPO (r 16, all linear)": ["lora.r=16", "lora.target_modules=all-linear", "lora.lora_alpha=32"]}
    rows = []
    import shutil

    for name, extra in variants.items():
        out = work / "memory" / name.split()[0].replace(",", "")
        shutil.rmtree(out, ignore_errors=True)
        cost = run(llmkit("train", "--output-dir", out, *common, *extra), name)
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append({"variant": name, "peak_rss_mb": cost["peak_rss_mb"], "trainable": metrics["trainable_parameters"],
                     "parameters": metrics["num_parameters"], "tokens_per_s": metrics["train_tokens_per_second"]})
        shutil.rmtree(out, ignore_errors=True)
    report("preference_memory", rows, {"run": str(run_dir), "steps": 5, "batch": 4})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="peak memory of the reference strategies only")
    parser.add_argument("--run", default=str(REPO / "runs" / "gpt2-small-shape"),
                        help="--memory: the model (made with one step if absent)")
    parser.add_argument("--base", default=str(REPO / "runs" / "quickstart"), help="the quickstart run (trained if absent)")
    parser.add_argument("--work", default=str(REPO / "runs" / "preference-bench"))
    args = parser.parse_args()
    if args.memory:
        return memory(args.run, pathlib.Path(args.work))
    base = quickstart_run(pathlib.Path(args.base))
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    instruct = work / "instruct-lora"
    if not (instruct / "adapter_config.json").exists():
        print("instruction-tuning the quickstart model ...", flush=True)
        run(llmkit("train", REPO / "configs/instruct-lora.yaml", "--output-dir", instruct,
                   f"model.from_pretrained={base}"), "instruct-lora")
    merged = work / "instruct-merged"
    if not (merged / "config.json").exists():
        run(llmkit("merge", instruct, merged), "merge")
    quiet = ["training.report_to=none", "training.disable_tqdm=true"]
    runs, costs = {}, {}
    for preset in ("dpo", "dpo-lora"):
        out = work / preset
        if out.exists():
            import shutil

            shutil.rmtree(out)
        print(f"training {preset} ...", flush=True)
        costs[preset] = run(llmkit("train", REPO / f"configs/{preset}.yaml", "--output-dir", out,
                                   f"model.from_pretrained={instruct}", *quiet), preset)
        metrics = json.loads((out / "metrics.json").read_text())
        costs[preset].update(train_seconds=metrics["train_runtime"], tokens_per_s=metrics["train_tokens_per_second"],
                             trainable=metrics["trainable_parameters"], eval_reward_accuracy=metrics.get(
                                 "eval_rewards/accuracies"))
        runs[preset] = out

    # the plain TRL script: same model (merged), same pairs, the settings configs/dpo.yaml resolves to
    from llmkit.config import load_config
    from llmkit.data.preference import builtin_preference_rows, to_pair
    from llmkit.data.sources import in_validation
    from llmkit.training.arguments import training_arguments

    cfg = load_config(REPO / "configs/dpo.yaml", [f"model.from_pretrained={instruct}"])
    resolved = training_arguments(cfg, str(work / "unused"))
    keep = ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs",
            "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "optim", "bf16", "seed",
            "beta", "max_length", "logging_steps")
    settings = {k: getattr(resolved, k) for k in keep}
    settings["optim"] = str(getattr(settings["optim"], "value", settings["optim"]))
    settings["lr_scheduler_type"] = str(getattr(settings["lr_scheduler_type"], "value", settings["lr_scheduler_type"]))
    settings.update(activation_checkpointing=False, include_num_input_tokens_seen="non_padding")
    pairs = work / "train-pairs.jsonl"
    with pairs.open("w") as f:
        for i, row in enumerate(builtin_preference_rows()):
            if not in_validation(i, 0.1, 1337):
                f.write(json.dumps(to_pair(row, cfg)) + "\n")
    plain = work / "plain-trl"
    script = work / "plain_trl.py"
    script.write_text(PLAIN_TRL)
    print("training the plain TRL script ...", flush=True)
    costs["plain TRL"] = run([str(script), str(merged), str(plain), str(pairs), json.dumps(settings)], "plain TRL")
    own = json.loads((plain / "plain_trl.json").read_text())
    costs["plain TRL"].update(train_seconds=own["train_runtime"], tokens_per_s=own["tokens"] / own["train_runtime"],
                              trainable=None, eval_reward_accuracy=None)
    runs["plain TRL"] = plain

    rows = [{"model": "instruct-lora (the start)", **measure(str(instruct), str(instruct)), "train_s": None,
             "tokens_per_s": None, "peak_rss_mb": None}]
    for name, path in runs.items():
        c = costs[name]
        rows.append({"model": name, **measure(str(path), str(instruct)), "train_s": c["train_seconds"],
                     "tokens_per_s": c["tokens_per_s"], "peak_rss_mb": c["peak_rss_mb"]})
    report("preference", rows, {"plain_trl_settings": settings, "processes": costs,
                                "llmkit_over_plain_trl_train_time": costs["dpo"]["train_seconds"] /
                                costs["plain TRL"]["train_seconds"]})


if __name__ == "__main__":
    main()
