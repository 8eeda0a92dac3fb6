"""`llmkit evaluate`: sliding-window perplexity against direct computations, bits per char, and the CLI."""

import json
import math

import pytest
import torch
from conftest import fit_windows
from torch.nn import functional as F

from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM
from llmkit.cli import main
from llmkit.evaluate import evaluate_model
from llmkit.tokenizers import train_tokenizer

PERIODIC = "aaaaaab " * 40  # the next char after an "a" needs up to 6 chars of context
LONG = "the quick brown fox jumps over the lazy dog. abcdefgh " * 4  # ~220 chars, several contexts
CTX = 32


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer("char", [PERIODIC + LONG])


def make_model(tok, seed=0):
    torch.manual_seed(seed)
    config = LlmkitGPTConfig(vocab_size=len(tok), n_positions=CTX, n_embd=32, n_layer=2, n_head=2)
    return LlmkitGPTForCausalLM(config).eval()


@pytest.fixture(scope="module")
def trained(tok):
    ids = torch.tensor(tok(PERIODIC, add_special_tokens=False)["input_ids"])
    return fit_windows(make_model(tok), ids, 100, batch=8, context=CTX)


def stream(tok, text):
    return [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]


def test_perplexity_equals_a_direct_computation_on_a_short_text(tok):
    model = make_model(tok, seed=1)
    text = "abcdefgh abc"
    result = evaluate_model(model, tok, [text])
    ids = torch.tensor([stream(tok, text)])
    with torch.no_grad():
        loss = float(model(ids, labels=ids).loss)
    assert result["tokens"] == len(text)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def direct_nll(model, ids: torch.Tensor, first: int, end: int, context: int = CTX) -> float:
    """NLL of targets ids[first+1 : end+1], each predicted from (at most) `context` tokens ending at it."""
    begin = max(0, end - context)
    with torch.no_grad():
        logits = model(ids[begin:end].unsqueeze(0)).logits[0]
    return float(F.cross_entropy(logits[first - begin :], ids[first + 1 : end + 1], reduction="sum"))


def test_stride_equal_to_the_context_is_non_overlapping_blocks_and_the_last_keeps_a_full_context(tok):
    model = make_model(tok, seed=2)
    ids = torch.tensor(stream(tok, LONG))
    n = len(ids) - 1
    assert n > 4 * CTX and n % CTX  # a last block that is short of a full context
    total = sum(direct_nll(model, ids, start, min(start + CTX, n)) for start in range(0, n, CTX))
    result = evaluate_model(model, tok, [LONG], stride=CTX)
    assert result["tokens"] == n == len(LONG)
    assert result["loss"] == pytest.approx(total / n, rel=1e-5)
    # the last window reached back a full context (lm-evaluation-harness's rolling windows do the same)
    last = (n // CTX) * CTX
    short = float(F.cross_entropy(model(ids[last:n].unsqueeze(0)).logits[0], ids[last + 1 : n + 1],
                                  reduction="sum").detach())
    assert abs(direct_nll(model, ids, last, n) - short) > 1e-3  # so the two differ, and the test can tell


def test_per_document_scores_each_document_alone_from_a_fresh_start_and_counts_only_its_bytes(tok):
    model = make_model(tok, seed=5)
    documents = [LONG, "abc abc", "fox"]
    result = evaluate_model(model, tok, documents, per_document=True, stride=CTX // 2)
    total, count = 0.0, 0
    for doc in documents:
        ids = torch.tensor(stream(tok, doc))  # EOS then the document, no boundary after it
        n = len(ids) - 1
        end = 0
        while end < n:
            new_end = min(end + CTX // 2 if end else CTX, n)
            total += direct_nll(model, ids, end, new_end)
            end = new_end
        count += n
    assert result["tokens"] == count == sum(len(d) for d in documents)
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["bytes"] == sum(len(d.encode()) for d in documents)  # no boundary counted
    assert result["bits_per_byte"] == pytest.approx(total / math.log(2) / result["bytes"], rel=1e-6)
    joined = evaluate_model(model, tok, documents, stride=CTX // 2)
    assert joined["tokens"] == count + 2 and joined["loss"] != pytest.approx(result["loss"], rel=1e-6)


def test_bits_per_char_of_a_char_model_equal_bits_per_token(tok):
    model = make_model(tok, seed=3)
    result = evaluate_model(model, tok, [LONG, "abc abc", "fox"])
    assert result["bits_per_token"] == pytest.approx(result["loss"] / math.log(2))
    assert result["bits_per_char"] == pytest.approx(result["bits_per_token"], rel=1e-9)
    assert result["bits_per_byte"] == pytest.approx(result["bits_per_token"], rel=1e-9)  # ASCII


def test_smaller_stride_gives_lower_or_equal_loss_for_a_trained_model(trained, tok):
    text = PERIODIC[:200]
    full, sliding = (evaluate_model(trained, tok, [text], stride=s)["loss"] for s in (CTX, 4))
    # stride == context restarts from no context at every block; stride 4 keeps >= 28 tokens of context
    assert sliding < full


@pytest.mark.parametrize("stride", [0, -1, CTX + 1])
def test_invalid_stride_raises_a_clear_error(tok, stride):
    model = make_model(tok)
    with pytest.raises(ValueError, match=r"is outside \[1, 32\] \(the model.s context\); pass stride 32 or less"):
        evaluate_model(model, tok, [LONG], stride=stride)


def test_cli_evaluate_compares_two_models_and_writes_json(tok, trained, tmp_path, capsys):
    dirs = []
    for name, model in [("untrained", make_model(tok, seed=4)), ("trained", trained)]:
        path = tmp_path / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        dirs.append(str(path))
    data = tmp_path / "data.txt"
    data.write_text(PERIODIC[:150])
    out_json = tmp_path / "results.json"
    code = main(["evaluate", *dirs, "--data", str(data), "--output", str(out_json), "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "loss", "perplexity"]
    assert any(line.startswith(dirs[0]) for line in lines) and any(line.startswith(dirs[1]) for line in lines)
    results = json.loads(out_json.read_text())
    assert [r["model"] for r in results] == dirs
    assert results[1]["loss"] < results[0]["loss"]  # the trained model knows the periodic text
    for r in results:
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))


@pytest.mark.parametrize("case", ["stride_past_context", "zero_batch", "empty_data", "bad_device"])
def test_cli_evaluate_bad_input_is_one_line_and_exit_code_2(case, tok, tmp_path, capsys):
    path = tmp_path / "model"
    make_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    data = tmp_path / "data.txt"
    data.write_text("" if case == "empty_data" else PERIODIC[:150])
    extra = {"stride_past_context": ["--stride", "100"], "zero_batch": ["--batch-size", "0"],
             "empty_data": [], "bad_device": ["--device", "nodevice"]}[case]
    if case in ("zero_batch", "bad_device"):  # argparse rejects them itself
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", str(path), "--data", str(data), *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and ("must be positive" in err or "is not a device" in err), err
        return
    code = main(["evaluate", str(path), "--data", str(data), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("llmkit: error: ")]) == 1, err
