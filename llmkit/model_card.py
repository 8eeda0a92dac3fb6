"""The model card of a pushed folder: `huggingface_hub.ModelCard` with `ModelCardData` metadata, and a body built
from what the run folder holds (config.yaml, metrics.json, samples.jsonl, loss_curve.png, report.html, config.json).

The metadata is what the Hub indexes: library, `pipeline_tag: text-generation`, tags, license, `base_model` for
fine-tunes and adapters (when it is a Hub repo), `datasets` (when the data was a Hub dataset), and the evaluation
results as `model-index` (loss, perplexity, bits per character on the run's validation split).
"""

from __future__ import annotations

import json
import pathlib
import re

import yaml

LOCAL_PREFIXES = ("/", ".", "~")


def _hub_id(name: str | None) -> str | None:
    """`name` when it names a Hub repo (not a local path, not `builtin`), else None."""
    if not name or name == "builtin" or name.startswith(LOCAL_PREFIXES) or pathlib.Path(name).exists():
        return None
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def _read(path: pathlib.Path, loader=json.loads):
    try:
        return loader(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def build_card(path: pathlib.Path, staged: pathlib.Path, *, kind: str, exported: str | None,
               repo_id: str | None, license: str | None):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = _read(path / "config.yaml", yaml.safe_load) or {}
    metrics = _read(path / "metrics.json") or {}
    model_config = _read(staged / "config.json") or _read(path / "config.json") or {}
    adapter = _read(staged / "adapter_config.json") or {}
    data = cfg.get("data") or {}
    model = cfg.get("model") or {}
    name = repo_id or path.name

    base = adapter.get("base_model_name_or_path") if kind == "adapter" else model.get("from_pretrained")
    dataset = _hub_id(data.get("source"))
    arch = model_config.get("model_type") or (model.get("arch") if kind != "adapter" else None)
    preference = cfg.get("preference") or None
    tags = ["llmkit", "text-generation"] + [t for t in (arch, "lora" if kind == "adapter" else None,
                                                        "custom_code" if exported == "code" else None,
                                                        *(("trl", "dpo") if preference else ())) if t]
    eval_results = []
    if metrics.get("eval_loss") is not None:
        source = dataset or (pathlib.Path(data.get("source", "text")).name or "text")
        for metric, key in (("loss", "eval_loss"), ("perplexity", "eval_perplexity"),
                            ("bits_per_character", "eval_bits_per_char")):
            if metrics.get(key) is not None:
                eval_results.append(EvalResult(task_type="text-generation", dataset_type=dataset or "text",
                                               dataset_name=source, dataset_split="validation", metric_type=metric,
                                               metric_value=round(float(metrics[key]), 4)))
    card_data = ModelCardData(
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        license=license,
        base_model=_hub_id(base),
        datasets=[dataset] if dataset else None,
        model_name=name,
        eval_results=eval_results or None,
    )
    body = "\n\n".join(filter(None, [
        f"# {name}",
        _summary(kind, exported, base, data, metrics, preference, model.get("from_pretrained")),
        _architecture(model_config, adapter, metrics),
        _training(cfg, metrics),
        _evaluation(metrics),
        _curves(staged),
        _samples(path),
        _usage(name, kind, exported, base),
        _reproduce(cfg, path),
    ]))
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")


def _curves(staged: pathlib.Path) -> str | None:
    """The loss curve, and a link to the run's report (every curve against steps, tokens, time and FLOPs, the
    metrics, config and samples: `llmkit report`), the same page the run folder holds."""
    parts = []
    if (staged / "loss_curve.png").exists():
        parts.append("![loss curve](loss_curve.png)")
    if (staged / "report.html").exists():
        parts.append("The run's full report (curves against steps, tokens, wall time and FLOPs; metrics; config; "
                     "samples by step) is [report.html](report.html): download it and open it in a browser, offline.")
    return "## Loss curve\n\n" + "\n\n".join(parts) if parts else None


def _summary(kind, exported, base, data, metrics, preference=None, start=None) -> str:
    what = {"adapter": f"A LoRA adapter for `{base}`", "tokenizer": "A tokenizer",
            "run": "A language model", "model": "A language model"}[kind]
    trained = f", trained with llmkit on `{data.get('source')}`" if data.get("source") else ""
    if preference:  # what a preference run is, on what pairs, from which model
        trained = (f", preference-tuned with llmkit ({preference.get('method', 'dpo')}, beta "
                   f"{preference.get('beta')}, on TRL's DPOTrainer) on the pairs of `{data.get('source')}`, starting "
                   f"from `{start}`")
    loads = {"gpt2": " It is a stock `GPT2LMHeadModel`: transformers loads it without llmkit.",
             "llama": " It is a stock `LlamaForCausalLM`: transformers loads it without llmkit.",
             "code": " Its modeling code is in this repo: transformers loads it with `trust_remote_code=True`."}
    return f"{what}{trained}.{loads.get(exported, '')}"


def _architecture(config: dict, adapter: dict, metrics: dict) -> str | None:
    if adapter:
        rows = [("method", adapter.get("peft_type", "LORA")), ("rank r", adapter.get("r")),
                ("lora_alpha", adapter.get("lora_alpha")), ("target modules", ", ".join(sorted(
                    adapter.get("target_modules") or []) if isinstance(adapter.get("target_modules"), list)
                    else str(adapter.get("target_modules")))), ("modules trained in full",
                                                                 ", ".join(adapter.get("modules_to_save") or []) or "-")]
        if metrics.get("trainable_parameters"):
            rows.append(("trainable parameters", f"{metrics['trainable_parameters']:,} of "
                                                 f"{metrics['num_parameters']:,}"))
    elif config:
        get = config.get
        rows = [("architecture", get("model_type")), ("layers", get("n_layer", get("num_hidden_layers"))),
                ("heads", get("n_head", get("num_attention_heads"))), ("width", get("n_embd", get("hidden_size"))),
                ("context", get("n_positions", get("max_position_embeddings"))), ("vocabulary", get("vocab_size"))]
        if metrics.get("num_parameters"):
            rows.append(("parameters", f"{metrics['num_parameters']:,}"))
        if get("model_type") == "llmkit-gpt":
            rows += [(k.replace("_", " "), get(k)) for k in ("position_embedding_type", "norm_type", "mlp_type")]
    else:
        return None
    return "## Architecture\n\n" + _table(rows)


def _training(cfg: dict, metrics: dict) -> str | None:
    training = cfg.get("training") or {}
    if not training and not metrics:
        return None
    keep = ("max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
            "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim")
    rows = [(k, v) for k, v in training.items() if k in keep]
    rows += [(k.replace("_", " "), metrics[k]) for k in ("global_step", "train_tokens", "mixed_precision")
             if metrics.get(k) is not None]
    if metrics.get("train_tokens_per_second"):
        rows.append(("tokens/s", f"{metrics['train_tokens_per_second']:,.0f}"))
    return "## Training\n\n" + _table(rows) if rows else None


def _evaluation(metrics: dict) -> str | None:
    rows = [(k.removeprefix("eval_").replace("_", " "), f"{metrics[k]:.4f}") for k in
            ("eval_loss", "eval_perplexity", "eval_bits_per_token", "eval_bits_per_char") if metrics.get(k) is not None]
    return "## Evaluation (validation split)\n\n" + _table(rows) if rows else None


def _samples(path: pathlib.Path) -> str | None:
    lines = [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines() if line.strip()] \
        if (path / "samples.jsonl").is_file() else []
    if not lines:
        return None
    last = max(s["step"] for s in lines)
    shown = [s for s in lines if s["step"] == last][:3]
    return f"## Samples (step {last})\n\n" + "\n\n".join(f"```text\n{s['prompt']}{s['text']}\n```" for s in shown)


def _usage(name: str, kind: str, exported: str | None, base: str | None) -> str:
    if kind == "tokenizer":
        plain = f'from transformers import AutoTokenizer\n\ntokenizer = AutoTokenizer.from_pretrained("{name}")'
        return f"## How to use\n\n```python\n{plain}\n```"
    if kind == "adapter":
        plain = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                 f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
                 f'model = PeftModel.from_pretrained(base, "{name}")\n'
                 f'tokenizer = AutoTokenizer.from_pretrained("{name}")')
    else:
        remote = ", trust_remote_code=True" if exported == "code" else ""
        plain = ("from transformers import pipeline\n\n"
                 f'generator = pipeline("text-generation", model="{name}"{remote})\n'
                 'print(generator("The", max_new_tokens=50)[0]["generated_text"])')
    needs = " (llmkit-gpt: `pip install llmkit`, or `llmkit push --export code`)" if exported is None and \
        kind != "adapter" else ""
    return (f"## How to use\n\nWith transformers{needs}:\n\n```python\n{plain}\n```\n\nWith llmkit:\n\n"
            f"```bash\nllmkit generate {name} --prompt \"The\" --max-new-tokens 50\n```")


def _reproduce(cfg: dict, path: pathlib.Path) -> str | None:
    if not cfg:
        return None
    source = (cfg.get("data") or {}).get("source")
    return ("## Reproduce\n\n`config.yaml` in this repo is the run's resolved config:\n\n```bash\n"
            f"llmkit train config.yaml\n```\n\n(It read its training text from `{source}`; point "
            "`data.source=...` at your copy.)")


def _table(rows) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines)
