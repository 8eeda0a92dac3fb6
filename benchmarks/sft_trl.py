"""Instruction tuning through llmkit (`data.format: instruct`) against TRL's `SFTTrainer` on the same model, data and
steps.

The quickstart model, LoRA as `configs/instruct-lora.yaml` sets it (r 16, alpha 32, all linear layers, the grown
embeddings trained in full), 400 steps of 16 examples at 3e-3 on `builtin-instruct`'s training split. llmkit's
path: `llmkit train configs/instruct-lora.yaml` (answer-only loss, examples packed into one row with position ids
that restart per example). TRL's path, written as a user of TRL would: the same chat template and role markers on
the tokenizer, prompt/completion conversations, `SFTConfig(completion_only_loss=True, packing=True)` (TRL's
best-fit packing, padding-free), and the same optimizer, schedule, precision and LoRA settings that llmkit's
preset resolves to. Each runs as its own process (wall time, peak RSS). Both are scored the same way: answer loss
on the held-out 10% (`llmkit evaluate --format instruct`), answers in format (greedy answers to 40 held-out
questions that end with the end-of-turn token within 40 tokens), training tokens/s (non-padding tokens).

    python benchmarks/sft_trl.py [--base runs/quickstart] [--work runs/sft-bench]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

from _common import REPO, quickstart_run, report
from preference import answers_in_format, held_out_questions, run

PLAIN_TRL = '''
import json, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import llmkit  # noqa: F401  (the model's architecture, llmkit-gpt)

base, out, rows, settings, template = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
tokenizer = AutoTokenizer.from_pretrained(base)
tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>"]})
tokenizer.chat_template = template
model = AutoModelForCausalLM.from_pretrained(base)
model.resize_token_embeddings(len(tokenizer))
train = Dataset.from_list([json.loads(line) for line in open(rows)])
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                  modules_to_save=["wte", "lm_head"], task_type="CAUSAL_LM")
args = SFTConfig(output_dir=out, save_strategy="no", report_to="none", use_cpu=True, completion_only_loss=True,
                 packing=True, **settings)
trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=lora)
result = trainer.train()
trainer.save_model(out)
tokenizer.save_pretrained(out)
json.dump({"train_runtime": result.metrics["train_runtime"], "tokens": trainer.state.num_input_tokens_seen},
          open(out + "/plain_trl.json", "w"))
'''


def answers(run_dir: str) -> dict:
    from llmkit.evaluate import evaluate_answers
    from llmkit.loading import load_model

    model, tokenizer = load_model(run_dir, device="cpu")
    held = [{"prompt": q} for q in held_out_questions(10_000)]
    from llmkit.data.instruct import builtin_instruct_rows

    wanted = {r["prompt"] for r in held}
    path = pathlib.Path(run_dir) / "held-out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in builtin_instruct_rows() if r["prompt"] in wanted))
    loss = evaluate_answers(model, tokenizer, str(path))["loss"]
    return {"answer_loss": loss, "answers_in_format": answers_in_format(model, tokenizer)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(REPO / "runs" / "quickstart"))
    parser.add_argument("--work", default=str(REPO / "runs" / "sft-bench"))
    args = parser.parse_args()
    base = quickstart_run(pathlib.Path(args.base))
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from llmkit.config import load_config
    from llmkit.data.instruct import DEFAULT_CHAT_TEMPLATE, builtin_instruct_rows
    from llmkit.data.sources import in_validation
    from llmkit.training.arguments import training_arguments

    ours = work / "llmkit"
    shutil.rmtree(ours, ignore_errors=True)
    print("llmkit: instruct-lora ...", flush=True)
    cost = {"llmkit": run(["llmkit.cli", "train", str(REPO / "configs/instruct-lora.yaml"), "--output-dir", str(ours),
                           f"model.from_pretrained={base}", "training.report_to=none",
                           "training.disable_tqdm=true"], "llmkit")}
    metrics = json.loads((ours / "metrics.json").read_text())
    cost["llmkit"].update(train_s=metrics["train_runtime"], tokens_per_s=metrics["train_tokens_per_second"])

    cfg = load_config(REPO / "configs/instruct-lora.yaml", [f"model.from_pretrained={base}"])
    resolved = training_arguments(cfg, str(work / "unused"))
    keep = ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs",
            "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "optim", "bf16", "seed",
            "logging_steps")
    settings = {k: getattr(resolved, k) for k in keep}
    for k in ("optim", "lr_scheduler_type"):
        settings[k] = str(getattr(settings[k], "value", settings[k]))
    settings.update(max_length=cfg.block_size, include_num_input_tokens_seen="non_padding",
                    activation_checkpointing=False)
    rows = work / "train.jsonl"
    with rows.open("w") as f:
        for i, r in enumerate(builtin_instruct_rows()):
            if not in_validation(i, cfg.data.val_ratio, cfg.data.seed):
                f.write(json.dumps({"prompt": [{"role": "user", "content": r["prompt"]}],
                                    "completion": [{"role": "assistant", "content": r["response"]}]}) + "\n")
    theirs = work / "trl-sft"
    shutil.rmtree(theirs, ignore_errors=True)
    script = work / "trl_sft.py"
    script.write_text(PLAIN_TRL)
    print("TRL: SFTTrainer ...", flush=True)
    cost["TRL SFTTrainer"] = run([str(script), str(base), str(theirs), str(rows), json.dumps(settings),
                                  DEFAULT_CHAT_TEMPLATE], "TRL SFTTrainer")
    own = json.loads((theirs / "plain_trl.json").read_text())
    cost["TRL SFTTrainer"].update(train_s=own["train_runtime"], tokens_per_s=own["tokens"] / own["train_runtime"])
    out = []
    for name, folder in (("llmkit (data.format: instruct)", ours), ("TRL SFTTrainer", theirs)):
        c = cost["llmkit" if name.startswith("llmkit") else name]
        out.append({"path": name, **answers(str(folder)), "train_s": c["train_s"], "tokens_per_s": c["tokens_per_s"],
                    "peak_rss_mb": c["peak_rss_mb"]})
    report("sft_trl", out, {"trl_settings": settings, "processes": cost})


if __name__ == "__main__":
    main()
