"""Instruction tuning (`data.format: instruct`) and distillation (`distill:`), on the training core.

The pretrained model is a tiny one llmkit trains here on the play (byte-level BPE); the instruction set is the
built-in one (questions about standard-library functions answered by their docstrings' first sentence).
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
import torch
from conftest import llmkit_cmd, llmkit_main, read_json, subprocess_env

from llmkit.config import ConfigError, load_config
from llmkit.data.instruct import DEFAULT_CHAT_TEMPLATE, encode, prepare_tokenizer
from llmkit.loading import load_model
from llmkit.tokenizers import train_tokenizer
from llmkit.training import train

BASE = ["tokenizer.kind=bpe", "tokenizer.vocab_size=512", "model.n_layer=2", "model.n_embd=48", "model.n_head=2",
        "model.n_positions=128", "training.per_device_train_batch_size=16", "training.learning_rate=3e-3",
        "training.warmup_steps=5", "training.logging_steps=5", "training.report_to=none",
        "training.disable_tqdm=true", "training.seed=0", "sample.max_new_tokens=0"]
TUNE = [k for k in BASE if not k.startswith(("tokenizer.", "model."))]


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("instruct")


@pytest.fixture(scope="module")
def base_run(work, shakespeare_head):
    cfg = load_config(None, [*BASE, f"data.source={shakespeare_head(150_000)}", f"data.cache_dir={work / 'cache'}",
                             "training.max_steps=150", "training.eval_steps=150"])
    train(cfg, output_dir=str(work / "base"), log=quiet)
    return work / "base"


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer("bpe", ["What does os.path.join do? Join two or more pathname components."] * 3, 300)
    cfg = load_config(None, ["data.format=instruct"])
    return prepare_tokenizer(tok, cfg)


def test_the_default_template_renders_the_curriculums_string_and_labels_only_the_answer(tokenizer):
    messages = [{"role": "user", "content": "What does os.path.join do?"},
                {"role": "assistant", "content": "Join two or more pathname components."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>What does os.path.join do?\n<|assistant|>Join two or more pathname components.<|endoftext|>"
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    for marker in ("<|user|>", "<|assistant|>", "<|system|>"):  # added as special tokens: never split
        assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1
    ids, labels = encode(messages, tokenizer)
    prompt = tokenizer(text.split("<|assistant|>")[0] + "<|assistant|>", add_special_tokens=False)["input_ids"]
    assert labels[: len(prompt)] == [-100] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tokenizer.eos_token_id
    assert encode(messages, tokenizer, train_on_prompt=True)[1] == ids


def test_multi_turn_conversations_label_every_answer_and_no_question(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a?"},
                {"role": "assistant", "content": "A."}, {"role": "user", "content": "b?"},
                {"role": "assistant", "content": "B."}]
    ids, labels = encode(messages, tokenizer)
    scored = tokenizer.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert scored == "A.<|endoftext|>B.<|endoftext|>"


def test_padded_batches_label_padding_minus_100_and_packed_examples_do_not_attend_across(tokenizer):
    from llmkit import build_model
    from llmkit.data.instruct import InstructData

    rows = []
    for q, a in (("What does os.path.join do?", "Join paths."), ("Why?", "Because it joins two or more.")):
        ids, labels = encode([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenizer)
        rows.append({"input_ids": ids, "labels": labels})
    padded = InstructData(tokenizer, rows, [], packing="padded").collator()(rows)
    pad_positions = padded["attention_mask"] == 0
    assert pad_positions.any() and (padded["labels"][pad_positions] == -100).all()
    packed = InstructData(tokenizer, rows, [], packing="packed").collator()(rows)
    first = len(rows[0]["input_ids"])
    assert packed["input_ids"].shape == (1, first + len(rows[1]["input_ids"]))
    assert packed["position_ids"][0, first] == 0  # the second example starts over
    assert packed["labels"][0, first] == -100  # nothing predicts the first token of the next example
    torch.manual_seed(0)
    for options in ({}, {"position_embedding_type": "rotary"}):
        model = build_model("llmkit-gpt", vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                            initializer_range=0.2, **options).eval()
        with torch.no_grad():
            base = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
            perturbed_ids = packed["input_ids"].clone()
            perturbed_ids[0, 1:first] = (perturbed_ids[0, 1:first] + 7) % len(tokenizer)  # change example 1 only
            perturbed = model(input_ids=perturbed_ids, position_ids=packed["position_ids"], use_cache=False).logits
            # what the Trainer's evaluation does: with labels, the model keeps no cache and the packing holds
            with_labels = model(input_ids=perturbed_ids, position_ids=packed["position_ids"],
                                labels=packed["labels"]).logits
        torch.testing.assert_close(with_labels, perturbed, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(base[0, :first], perturbed[0, :first])
        torch.testing.assert_close(perturbed[0, first:], base[0, first:], rtol=1e-5, atol=1e-5)


def answers_in_format(run_or_base, prompts: list[str], n: int = 60) -> list[bool]:
    """Greedy answers to `prompts` (chat template): True where the answer ends with the end-of-turn token."""
    from llmkit.data.instruct import chat_ids

    model, tokenizer = load_model(str(run_or_base), device="cpu")
    if not getattr(tokenizer, "chat_template", None):
        prepare_tokenizer(tokenizer, load_config(None, ["data.format=instruct"]))
        model.resize_token_embeddings(len(tokenizer))
    out = []
    for prompt in prompts:
        ids = chat_ids(tokenizer, [{"role": "user", "content": prompt}])
        new = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
        out.append(bool(len(new) and int(new[-1]) == tokenizer.eos_token_id))
    return out


@pytest.fixture(scope="module")
def instruct_run(work, base_run):
    cfg = load_config(None, [*TUNE, f"model.from_pretrained={base_run}", "data.format=instruct",
                             "data.source=builtin-instruct", "data.val_ratio=0.1", f"data.cache_dir={work / 'cache'}",
                             "lora.target_modules=all-linear", "lora.r=16", "lora.lora_alpha=32",
                             "training.learning_rate=1e-2", "training.max_steps=120", "training.eval_steps=60"])
    metrics = train(cfg, output_dir=str(work / "instruct"), log=quiet)
    return work / "instruct", metrics, cfg


def held_out_prompts(cfg) -> list[str]:
    from llmkit.data.instruct import builtin_instruct_rows
    from llmkit.data.sources import in_validation

    rows = builtin_instruct_rows()
    return [r["prompt"] for i, r in enumerate(rows) if in_validation(i, cfg.data.val_ratio, cfg.data.seed)][:8]


def test_instruction_tuning_teaches_the_format_on_held_out_prompts(instruct_run, base_run):
    run, metrics, cfg = instruct_run
    prompts = held_out_prompts(cfg)
    before, after = answers_in_format(base_run, prompts), answers_in_format(run, prompts)
    assert sum(after) >= 6 and sum(after) > sum(before), (before, after)
    tokenizer = load_model(str(run), device="cpu")[1]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|user|>Hi?\n<|assistant|>"  # the saved tokenizer renders what training saw
    assert (run / "chat_template.jinja").is_file() or "chat_template" in read_json(run / "tokenizer_config.json")
    history = read_json(run / "log_history.json")
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert evals[-1] < evals[0]


def test_generate_chat_answers_and_evaluate_scores_answer_tokens(instruct_run, base_run, work, tmp_path):
    run, _, cfg = instruct_run
    prompt = held_out_prompts(cfg)[0]
    proc = subprocess.run(llmkit_cmd("generate", run, "--chat", "--prompt", prompt, "--greedy", "--json",
                                     "--max-new-tokens", "60", "--device", "cpu"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)["samples"][0]
    assert answer and "<|" not in answer and "\n<|user|>" not in answer
    chat = subprocess.run(llmkit_cmd("generate", run, "--chat", "-i", "--greedy", "--max-new-tokens", "30",
                                     "--device", "cpu"), input=f"{prompt}\nAnd why?\n", env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0 and len([line for line in chat.stdout.splitlines() if line.strip()]) >= 2
    rows = tmp_path / "qa.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "response": "Return the value."}) + "\n"
                            for p in held_out_prompts(cfg)))
    out = subprocess.run(llmkit_cmd("evaluate", run, "--data", rows, "--format", "instruct", "--output",
                                    tmp_path / "e.json", "--device", "cpu"),
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "e.json").read_text())[0]
    tokenizer = load_model(str(run), device="cpu")[1]
    answer_tokens = len(tokenizer("Return the value.<|endoftext|>", add_special_tokens=False)["input_ids"])
    assert result["tokens"] == answer_tokens * len(held_out_prompts(cfg)) and result["loss"] > 0


BAD_ROWS = {
    "missing columns": ('{"question": "a?", "answer": "b"}\n', "row 0: no prompt/response columns"),
    "empty answer": ('{"prompt": "a?", "response": "b"}\n{"prompt": "c?", "response": " "}\n',
                     "row 1: the answer (response) is empty"),
    "template does not render": ('{"prompt": "a?", "response": "b"}\n', "data.chat_template does not render"),
    "template never ends the answer": ('{"prompt": "a?", "response": "b"}\n', "never ends an answer"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_instruction_data_fails_with_one_line(case, base_run, tmp_path, capfd):
    rows, message = BAD_ROWS[case]
    source = tmp_path / "rows.jsonl"
    source.write_text(rows)
    extra = []
    if case == "template does not render":
        extra = ["data.chat_template={% for m in messages %}{{ m.content }{% endfor %}"]
    elif case == "template never ends the answer":
        extra = ["data.chat_template={% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"]
    code, _, err = llmkit_main(capfd, "train", *TUNE, f"model.from_pretrained={base_run}", "data.format=instruct",
                               f"data.source={source}", "data.val_ratio=0", f"data.cache_dir={tmp_path / 'c'}",
                               "training.max_steps=2", *extra, "--output-dir", tmp_path / "run")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert message in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


# ---- distillation ----

@pytest.fixture(scope="module")
def teacher_corpus(shakespeare_head):
    return shakespeare_head(150_000)


def distill(work, name, *overrides) -> tuple[pathlib.Path, list[dict]]:
    cfg = load_config(None, [*TUNE, f"data.cache_dir={work / 'cache'}", "training.logging_steps=1",
                             "training.logging_first_step=true", *overrides])
    train(cfg, output_dir=str(work / name), log=quiet)
    return work / name, read_json(work / name / "log_history.json")


def test_distilling_a_teacher_into_its_own_copy_at_alpha_1_and_t_1_has_zero_soft_loss(work, base_run,
                                                                                        teacher_corpus):
    _, history = distill(work, "self-distill", f"model.from_pretrained={base_run}", f"data.source={teacher_corpus}",
                         f"distill.teacher={base_run}", "distill.alpha=1", "distill.temperature=1",
                         "training.max_steps=1", "training.eval_steps=1", "training.bf16=false")
    first = next(h for h in history if "distill_soft_loss" in h)
    assert first["distill_soft_loss"] == pytest.approx(0.0, abs=1e-5)
    assert first["loss"] == pytest.approx(0.0, abs=1e-5) and first["distill_hard_loss"] > 1.0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_a_half_depth_student_learns_the_teacher_and_the_kl_falls(work, base_run, teacher_corpus, kind):
    _, history = distill(work, f"student-{kind}", *[b for b in BASE if b.startswith("model.")], "model.n_layer=1",
                         f"data.source={teacher_corpus}", f"distill.teacher={base_run}", f"distill.kind={kind}",
                         "training.max_steps=40", "training.eval_steps=40")
    soft = [h["distill_soft_loss"] for h in history if "distill_soft_loss" in h]
    hard = [h["distill_hard_loss"] for h in history if "distill_hard_loss" in h]
    assert soft[-1] < 0.5 * soft[0] and hard[-1] < hard[0]


@pytest.mark.parametrize("tokenizer_setting, message", [
    ("char", "the student must use the teacher's tokenizer, not a new char one"),
    ("pretrained", "uses another tokenizer than the student"),
])
def test_a_teacher_with_another_tokenizer_is_refused(base_run, teacher_corpus, tmp_path, tokenizer_setting, message,
                                                     capfd):
    other = tmp_path / "char_tokenizer"
    train_tokenizer("char", [teacher_corpus.read_text()[:5000]]).save_pretrained(other)
    setting = ["tokenizer.kind=char"] if tokenizer_setting == "char" else ["tokenizer.kind=pretrained",
                                                                             f"tokenizer.name_or_path={other}"]
    code, _, err = llmkit_main(capfd, "train", *[b for b in BASE if not b.startswith("tokenizer.")], *setting,
                               f"data.source={teacher_corpus}", f"data.cache_dir={tmp_path / 'c'}",
                               f"distill.teacher={base_run}", "training.max_steps=2", "--output-dir", tmp_path / "run")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err[-3000:]
    assert not (tmp_path / "c").exists() and not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("overrides, message", [
    (["distill.teacher=x", "distill.alpha=1.5"], "distill.alpha must be in [0, 1]"),
    (["distill.teacher=x", "distill.temperature=0"], "distill.temperature must be positive"),
    (["distill.teacher=x", "distill.kind=js"], "distill.kind='js' is unknown"),
    (["distill.alpha=0.5"], "distill.teacher is required"),
    (["distill.tempreature=2"], "did you mean distill.temperature"),
])
def test_bad_distillation_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
