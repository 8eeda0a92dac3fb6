"""Fine-tuning: from a pretrained model (an llmkit run or a GPT-2 stand-in pretrained here), full or LoRA (peft),
the adapter run folder, adapters in every command, merge, the GPT-2 fast path, and the one-line errors.

The pretrained models are tiny models llmkit trains first on the play (byte-level BPE); the "new text" they are
fine-tuned on is Python's own documentation (`pydoc_data.topics`), so the validation loss has somewhere to go.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess

import pytest
import torch
from conftest import (
    assert_resumed_like_uninterrupted,
    kill_and_resume,
    llmkit_cmd,
    llmkit_main,
    read_json,
    subprocess_env,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from llmkit import LlmkitGPTForCausalLM
from llmkit.config import ConfigError, load_config
from llmkit.loading import load_model
from llmkit.models.conversions import from_gpt2
from llmkit.training import train
from llmkit.training.lora import apply_lora

TINY = [
    "tokenizer.kind=bpe", "tokenizer.vocab_size=400", "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
    "model.n_positions=64", "training.per_device_train_batch_size=8", "training.per_device_eval_batch_size=32",
    "training.learning_rate=3e-3", "training.warmup_steps=5", "training.logging_steps=5", "training.report_to=none",
    "training.disable_tqdm=true", "training.seed=3", "sample.max_new_tokens=6", "sample.prompts=[The]",
]
# what a fine-tune keeps: no size settings (they come from the pretrained model)
TUNE = [k for k in TINY if not k.startswith(("tokenizer.", "model."))]


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def new_text(work) -> pathlib.Path:
    from pydoc_data.topics import topics

    path = work / "python_docs.txt"
    path.write_text("\n\n".join(topics[name] for name in sorted(topics)[:40]))
    return path


def pretrain(work, corpus, name, *extra) -> pathlib.Path:
    cfg = load_config(None, [*TINY, f"data.source={corpus}", f"data.cache_dir={work / 'cache'}",
                             "training.max_steps=60", "training.eval_steps=30", *extra])
    train(cfg, output_dir=str(work / name), log=quiet)
    return work / name


@pytest.fixture(scope="module")
def base_run(work, shakespeare_head) -> pathlib.Path:
    return pretrain(work, shakespeare_head(100_000), "base")


@pytest.fixture(scope="module")
def gpt2_base_run(work, shakespeare_head) -> pathlib.Path:
    """A GPT2LMHeadModel pretrained here: the offline stand-in for openai-community/gpt2."""
    return pretrain(work, shakespeare_head(100_000), "gpt2-base", "model.arch=gpt2")


def finetune(work, base, text, name, *extra) -> tuple[pathlib.Path, dict]:
    cfg = load_config(None, [*TUNE, f"model.from_pretrained={base}", f"data.source={text}",
                             f"data.cache_dir={work / 'cache'}", "training.max_steps=40", "training.eval_steps=20",
                             *extra])
    metrics = train(cfg, output_dir=str(work / name), log=quiet)
    return work / name, metrics


def zero_shot_loss(base: pathlib.Path, run: pathlib.Path) -> float:
    """The base model's loss on the validation blocks the fine-tuning run evaluated on."""
    return val_loss(AutoModelForCausalLM.from_pretrained(base).eval(), run)


def val_loss(model, run: pathlib.Path) -> float:
    """`model`'s loss on the validation blocks of `run`."""
    from llmkit.data import BlockCollator, prepare_data

    cfg = load_config(run / "config.yaml")
    data = prepare_data(cfg, log=quiet)
    blocks = data.eval_dataset(cfg.block_size)
    batch = BlockCollator()([blocks[i] for i in range(len(blocks))])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"]).logits
    return torch.nn.functional.cross_entropy(out.flatten(0, 1), batch["shift_labels"].flatten()).item()


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lora_run(work, base_run, new_text):
    before = sha256(base_run / "model.safetensors")
    run, metrics = finetune(work, base_run, new_text, "lora", "lora.r=8", "lora.lora_alpha=16",
                            "lora.target_modules=[c_attn, c_proj, c_fc]", "training.learning_rate=1e-2")
    assert sha256(base_run / "model.safetensors") == before  # the base folder is only read
    return run, metrics


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 33, 2, 91, 120, 7, 64, 8, 300]])


def test_gpt2_small_with_the_seeds_lora_settings_trains_294912_of_124734720_parameters():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config())  # GPT-2 small's shape, random weights (no download)
    converted = from_gpt2(gpt2, fused_activation=True)
    seed = dict(r=8, lora_alpha=32, target_modules=["c_attn"], lora_dropout=0.05)
    lines = []
    stock = apply_lora(gpt2, seed, log=lines.append)
    assert lines == ["trainable: 294,912 / 124,734,720 total (0.24%)"]
    assert stock.peft_config["default"].fan_in_fan_out  # Conv1D, set for the user
    assert not apply_lora(converted, seed, log=lines.append).peft_config["default"].fan_in_fan_out
    assert lines[1] == lines[0]


def test_lora_run_lowers_the_loss_on_new_text_and_leaves_an_adapter_run_folder(lora_run, base_run):
    run, metrics = lora_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "generation_config.json",
                 "config.yaml", "metrics.json", "log_history.json", "loss_curve.png", "samples.jsonl"):
        assert (run / name).is_file(), name
    assert not (run / "model.safetensors").exists()
    config = read_json(run / "adapter_config.json")
    assert config["base_model_name_or_path"] == str(base_run)  # as the user gave it
    assert set(config["target_modules"]) == {"c_attn", "c_proj", "c_fc"} and config["r"] == 8
    saved = load_file(run / "adapter_model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)  # the adapter only, no base weight
    assert metrics["trainable_parameters"] < 0.2 * metrics["num_parameters"]
    assert metrics["eval_loss"] < zero_shot_loss(base_run, run) - 0.05


def test_the_adapter_reloads_with_peft_and_with_llmkit_and_leaves_the_base_bit_identical(lora_run, base_run):
    from peft import PeftModel

    run, _ = lora_run
    base = AutoModelForCausalLM.from_pretrained(base_run).eval()
    reference = logits(base, IDS)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_run), run).eval()
    ours, tokenizer = load_model(str(run), device="cpu")
    assert torch.equal(logits(plain, IDS), logits(ours, IDS))
    assert (logits(ours, IDS) - reference).abs().max() > 1e-2  # the adapter changes the model
    with ours.disable_adapter():
        assert torch.equal(logits(ours, IDS), reference)  # under it, the base weights are untouched
    assert tokenizer.get_vocab() == load_model(str(base_run), device="cpu")[1].get_vocab()


def test_merge_writes_a_plain_model_with_the_adapters_logits(lora_run, work):
    run, _ = lora_run
    out = work / "merged"
    proc = subprocess.run(llmkit_cmd("merge", run, out), env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapted, _ = load_model(str(run), device="cpu")
    torch.testing.assert_close(logits(merged, IDS), logits(adapted, IDS), atol=1e-5, rtol=0)
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    again = subprocess.run(llmkit_cmd("merge", run, out), env=subprocess_env(), capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr


def test_generate_and_evaluate_take_an_adapter_run_or_a_base_with_adapter(lora_run, base_run, new_text, work, capfd):
    run, _ = lora_run
    common = ["--prompt", "The", "--seed", "0", "--temperature", "1", "--max-new-tokens", "24", "--device", "cpu",
              "--no-stream"]
    direct = llmkit_main(capfd, "generate", run, *common)
    via_base = llmkit_main(capfd, "generate", base_run, "--adapter", run, *common)
    base_only = llmkit_main(capfd, "generate", base_run, *common)
    for code, _, err in (direct, via_base, base_only):
        assert code == 0, err[-3000:]
    assert direct[1] == via_base[1] and direct[1].startswith("The")
    assert direct[1] != base_only[1]
    code, out, err = llmkit_main(capfd, "evaluate", base_run, run, "--data", new_text, "--device", "cpu",
                                 "--output", work / "eval.json")
    assert code == 0, err[-3000:]
    rows = json.loads((work / "eval.json").read_text())
    assert [r["model"] for r in rows] == [str(base_run), str(run)]
    assert rows[1]["loss"] < rows[0]["loss"] - 0.05
    assert str(run) in out and str(base_run) in out


def test_full_finetuning_continues_from_the_pretrained_weights_with_its_context_and_tokenizer(
        work, base_run, new_text):
    run, metrics = finetune(work, base_run, new_text, "full", "training.learning_rate=2e-3")
    cfg = load_config(run / "config.yaml")
    assert (cfg.model.n_positions, cfg.tokenizer.kind, cfg.tokenizer.name_or_path) == (64, "pretrained", str(base_run))
    assert (run / "model.safetensors").is_file() and not (run / "adapter_config.json").exists()
    history = read_json(run / "log_history.json")
    first = next(h["loss"] for h in history if "loss" in h)
    assert first < 7.0  # it started from the pretrained weights (a new model starts near ln 400 = 6.0 + noise)
    assert metrics["eval_loss"] < zero_shot_loss(base_run, run) - 0.3
    assert metrics["trainable_parameters"] == metrics["num_parameters"]


def test_lora_resumes_after_sigkill_like_an_uninterrupted_run(work, base_run, new_text, tmp_path):
    run = kill_and_resume(tmp_path, [
        *TUNE, f"model.from_pretrained={base_run}", f"data.source={new_text}", f"data.cache_dir={work / 'cache'}",
        "lora.r=4", "training.max_steps=60", "training.eval_steps=10", "training.save_steps=10",
        "training.save_total_limit=3",
    ])
    assert_resumed_like_uninterrupted(run)
    assert (run["killed"] / "adapter_model.safetensors").is_file()


def test_new_special_tokens_train_the_embeddings_and_the_adapter_reloads_onto_a_fresh_base(
        work, base_run, new_text):
    from peft import PeftModel
    from transformers import AutoTokenizer

    grown = work / "grown_tokenizer"
    tok = AutoTokenizer.from_pretrained(base_run)
    tok.add_special_tokens({"extra_special_tokens": ["<|user|>", "<|assistant|>"]})
    tok.save_pretrained(grown)
    run, metrics = finetune(work, base_run, new_text, "lora-grown", f"tokenizer.name_or_path={grown}", "lora.r=4")
    config = read_json(run / "adapter_config.json")
    assert "wte" in {m.rsplit(".", 1)[-1] for m in config["modules_to_save"]}  # the tied head comes with it
    model, tokenizer = load_model(str(run), device="cpu")
    assert len(tokenizer) == len(tok) == model.get_input_embeddings().num_embeddings
    assert val_loss(model, run) == pytest.approx(metrics["eval_loss"], rel=1e-4)  # the model as it was trained
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    prompt = torch.tensor([[user, 40, 41, 42]])
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    ours = model.generate(input_ids=prompt, **kw)
    fresh = AutoModelForCausalLM.from_pretrained(base_run)
    fresh.resize_token_embeddings(len(tokenizer))
    plain = PeftModel.from_pretrained(fresh, run).eval()
    assert torch.equal(plain.generate(input_ids=prompt, **kw), ours)
    base = AutoModelForCausalLM.from_pretrained(base_run)
    trained_row = plain.get_input_embeddings().weight[user]
    assert not torch.equal(trained_row[:8], torch.zeros(8)) and user >= base.config.vocab_size


def test_gpt2_fast_path_adapter_loads_onto_stock_gpt2_with_the_same_logits(work, gpt2_base_run, new_text):
    """Trained through llmkit-gpt (`model.arch=llmkit-gpt`), shared for GPT-2: plain peft on GPT2LMHeadModel."""
    from peft import PeftModel

    run, metrics = finetune(work, gpt2_base_run, new_text, "gpt2-fast-lora", "model.arch=llmkit-gpt",
                            "lora.target_modules=[c_attn, c_fc]")
    config = read_json(run / "adapter_config.json")
    assert config["fan_in_fan_out"] is True and config["base_model_name_or_path"] == str(gpt2_base_run)
    stock = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(gpt2_base_run), run).eval()
    trained = from_gpt2(str(gpt2_base_run), fused_activation=True)
    assert trained.config.activation_function == "gelu_pytorch_tanh"
    trained = PeftModel.from_pretrained(trained, metrics["best_checkpoint"]).eval()  # as it was trained
    torch.testing.assert_close(logits(stock, IDS), logits(trained, IDS), atol=1e-4, rtol=0)
    assert metrics["eval_loss"] < zero_shot_loss(gpt2_base_run, run) - 0.05


def test_gpt2_fast_path_full_finetune_is_saved_as_gpt2(work, gpt2_base_run, new_text):
    run, metrics = finetune(work, gpt2_base_run, new_text, "gpt2-fast-full", "model.arch=llmkit-gpt",
                            "training.max_steps=20")
    assert read_json(run / "config.json")["model_type"] == "gpt2"
    model = AutoModelForCausalLM.from_pretrained(run)
    assert isinstance(model, GPT2LMHeadModel)
    assert zero_shot_loss(run, run) == pytest.approx(metrics["eval_loss"], rel=1e-3)  # the trained weights


@pytest.mark.parametrize("overrides, message", [
    (["lora.rr=8"], "unknown key lora.rr; did you mean lora.r?"),
    (["lora.target_modules=[q_proj]"], "'q_proj' matches no module of this llmkit-gpt model; its layers are c_attn"),
    (["lora.target_modules=.*q_proj"], "matches no module of this llmkit-gpt model"),
    (["lora.r=-3"], "lora settings rejected by peft"),
    (["model.n_layer=6"], "model.n_layer=6 contradicts the pretrained model"),
    (["model.n_positions=32"], "set data.block_size for shorter training blocks"),
    (["tokenizer.kind=bpe"], "needs its own tokenizer"),
])
def test_bad_fine_tuning_settings_fail_with_one_line(base_run, new_text, tmp_path, overrides, message, capfd):
    code, _, err = llmkit_main(capfd, "train", *TUNE, f"model.from_pretrained={base_run}", f"data.source={new_text}",
                               f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=2", *overrides,
                               "--output-dir", tmp_path / "run")
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmkit: error: ") and message in lines[0], err[-3000:]
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_adapters_without_their_base_or_on_another_base_fail_with_one_line(lora_run, work, tmp_path, capfd):
    run, _ = lora_run
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    for name in ("adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (orphan / name).write_bytes((run / name).read_bytes())
    config = read_json(run / "adapter_config.json")
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (orphan / "adapter_config.json").write_text(json.dumps(config))
    other = work / "other-shape"
    if not other.exists():
        LlmkitGPTForCausalLM(load_config_for_other_shape()).save_pretrained(other)
    cases = {
        "missing base": (["generate", orphan, "--prompt", "a"], "cannot load the base model"),
        "other shape": (["generate", other, "--adapter", run, "--prompt", "a"], "does not load onto"),
        "not an adapter": (["merge", other, tmp_path / "m"], "is not an adapter run"),
    }
    for case, (args, message) in cases.items():
        code, _, err = llmkit_main(capfd, *args, *(["--device", "cpu"] if args[0] == "generate" else []))
        lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
        assert code == 2, (case, err[-3000:])
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (case, err)
    assert not (tmp_path / "m").exists()


def load_config_for_other_shape():
    from llmkit import LlmkitGPTConfig

    return LlmkitGPTConfig(vocab_size=400, n_positions=64, n_embd=48, n_layer=2, n_head=2)


def test_a_config_cannot_start_from_an_unreachable_hub_model(tmp_path):
    with pytest.raises(ConfigError, match="cannot load a model config from 'nobody/no-such-model'"):
        load_config(None, ["model.from_pretrained=nobody/no-such-model"])


@pytest.mark.parametrize("options", [
    {}, dict(position_embedding_type="rotary"), dict(norm_type="rmsnorm", mlp_type="swiglu", bias=False),
    dict(position_embedding_type="rotary", norm_type="rmsnorm", mlp_type="swiglu", bias=False, tie_word_embeddings=False),
    dict(qkv_bias=False, activation_function="gelu_new"),
], ids=["learned", "rotary", "rmsnorm-swiglu-nobias", "llama-like-untied", "noqkvbias-gelu_new"])
def test_lora_trains_every_llmkit_gpt_variant_and_merges_exactly(options):
    from llmkit import build_model

    torch.manual_seed(0)
    model = build_model("llmkit-gpt", vocab_size=61, n_positions=32, n_embd=32, n_layer=2, n_head=4, **options)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    lines = []
    lora = apply_lora(model, {"target_modules": ["c_attn", "c_proj", "c_fc"], "r": 4}, log=lines.append)
    wrapped = {n.rsplit(".", 2)[0] for n, p in lora.named_parameters() if p.requires_grad}
    assert len(wrapped) == 2 * 4 * 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj in 2 blocks, A and B each
    ids = torch.randint(0, 61, (4, 32))
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = lora(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 0.1
    lora.eval()
    adapted = logits(lora, ids)
    merged = lora.merge_and_unload()
    torch.testing.assert_close(logits(merged, ids), adapted, atol=1e-5, rtol=0)
    assert any(not torch.equal(frozen[n], p) for n, p in merged.named_parameters())  # the merge changed weights


def test_lora_with_gradient_checkpointing_and_bf16_autocast(work, base_run, new_text, lora_run):
    """The lora_run fixture's settings again, with activations recomputed in the backward and bf16 autocast: it
    learns as much."""
    run, metrics = finetune(work, base_run, new_text, "lora-ckpt-bf16", "lora.r=8", "lora.lora_alpha=16",
                            "lora.target_modules=[c_attn, c_proj, c_fc]", "training.learning_rate=1e-2",
                            "training.activation_checkpointing=true", "training.bf16=true")
    assert metrics["mixed_precision"] == "bf16"
    assert metrics["eval_loss"] < zero_shot_loss(base_run, run) - 0.05
    assert metrics["eval_loss"] == pytest.approx(lora_run[1]["eval_loss"], abs=0.05)
