"""Every mode of `llmkit generate` and `llmkit evaluate`, run in-process through the CLI's `main` (argument parsing,
prompt sources and printing are what is tested; the process start-up is covered by test_cli.py)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from conftest import fit_windows

from llmkit import LlmkitGPTConfig, LlmkitGPTForCausalLM
from llmkit.cli import main
from llmkit.models.generation import generate_texts
from llmkit.tokenizers import train_tokenizer

VERSE = "ROMEO: abc def\nCE ghi\n\nJULIET: abc\n\n"
CTX = 48


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny char model trained on a periodic verse, so greedy decoding reproduces it (blank lines included)."""
    tok = train_tokenizer("char", [VERSE * 20])
    torch.manual_seed(0)
    model = LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=len(tok), n_positions=CTX, n_embd=48, n_layer=2,
                                                 n_head=2))
    fit_windows(model, torch.tensor(tok(VERSE * 40, add_special_tokens=False)["input_ids"]), 250, batch=16,
                context=CTX)
    path = tmp_path_factory.mktemp("run") / "run"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def cli(*args, stdin: str | None = None, monkeypatch=None, capsys=None) -> str:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["generate", str(args[0]), "--device", "cpu", "--no-stream", *map(str, args[1:])]) == 0
    return capsys.readouterr().out


def test_greedy_stop_at_a_blank_line_as_typed_in_a_shell(run, capsys, monkeypatch):
    full = cli(run, "--prompt", "ROMEO:", "--greedy", "--max-new-tokens", "40", capsys=capsys)
    assert "\n\n" in full[:-1]  # the model does write a blank line ...
    stopped = cli(run, "--prompt", "ROMEO:", "--greedy", "--max-new-tokens", "40", "--stop", r"\n\n", capsys=capsys)
    assert stopped == full[: full.index("\n\n") + 2] + "\n"  # ... and "\n\n" typed in a shell stops there
    two = cli(run, "--prompt", "ROMEO:", "--greedy", "--max-new-tokens", "40", "--stop", r"\nCE", "--stop", "zzz",
              capsys=capsys)
    assert two.endswith("\nCE\n") and len(two) < len(full)
    literal = cli(run, "--prompt", "ROMEO:", "--greedy", "--max-new-tokens", "40", "--stop", r"\\n", capsys=capsys)
    assert literal == full  # a literal backslash-n never occurs: no stop


def test_prompt_from_stdin_from_a_file_and_interactively(run, capsys, monkeypatch, tmp_path):
    direct = cli(run, "--prompt", "JULIET:", "--greedy", "--max-new-tokens", "12", capsys=capsys)
    piped = cli(run, "--greedy", "--max-new-tokens", "12", stdin="JULIET:", monkeypatch=monkeypatch, capsys=capsys)
    (tmp_path / "p.txt").write_text("JULIET:")
    from_file = cli(run, "--prompt-file", tmp_path / "p.txt", "--greedy", "--max-new-tokens", "12", capsys=capsys)
    assert direct == piped == from_file and direct.startswith("JULIET:")
    session = cli(run, "-i", "--greedy", "--max-new-tokens", "12", stdin="ROMEO:\nJULIET:\n",
                  monkeypatch=monkeypatch, capsys=capsys)  # two prompts, then the end of input: a clean exit
    expected = [cli(run, "--prompt", p, "--greedy", "--max-new-tokens", "12", capsys=capsys)
                for p in ("ROMEO:", "JULIET:")]
    assert session == "".join(expected)


def test_json_output_schema_several_samples_and_the_same_seed(run, capsys):
    out = cli(run, "--prompt", "ROMEO:", "--json", "--num-samples", "4", "--seed", "3", "--temperature", "1.5",
              "--max-new-tokens", "20", capsys=capsys)
    record = json.loads(out)
    assert set(record) == {"prompt", "samples"} and record["prompt"] == "ROMEO:"
    assert len(record["samples"]) == 4 and all(isinstance(s, str) for s in record["samples"])
    again = json.loads(cli(run, "--prompt", "ROMEO:", "--json", "--num-samples", "4", "--seed", "3", "--temperature",
                           "1.5", "--max-new-tokens", "20", capsys=capsys))
    assert again == record  # same seed, same text
    other = json.loads(cli(run, "--prompt", "ROMEO:", "--json", "--num-samples", "4", "--seed", "4", "--temperature",
                           "1.5", "--max-new-tokens", "20", capsys=capsys))
    assert other != record


def test_top_p_and_repetition_penalty_reach_the_sampler(run, capsys, tmp_path):
    from llmkit.loading import load_model

    model, tok = load_model(str(run), device="cpu")
    tight = cli(run, "--prompt", "ROMEO:", "--top-p", "0.01", "--seed", "0", "--temperature", "1.0",
                "--max-new-tokens", "30", capsys=capsys)
    greedy = generate_texts(model, tok, "ROMEO:", do_sample=False, max_new_tokens=30)[0]
    assert tight == "ROMEO:" + greedy + "\n"  # top-p 0.01 keeps only the most likely token
    loose = {cli(run, "--prompt", "ROMEO:", "--top-p", "1.0", "--temperature", "3.0", "--seed", str(s),
                 "--max-new-tokens", "30", capsys=capsys) for s in range(3)}
    assert len(loose) > 1  # without the cut, hot sampling wanders
    torch.manual_seed(2)  # an untrained model loops on one character; a penalty breaks the loop
    LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=len(tok), n_positions=CTX, n_embd=32, n_layer=1, n_head=2)
                         ).save_pretrained(tmp_path / "untrained")
    tok.save_pretrained(tmp_path / "untrained")
    plain = cli(tmp_path / "untrained", "--prompt", "ab", "--greedy", "--max-new-tokens", "30", capsys=capsys)
    penalized = cli(tmp_path / "untrained", "--prompt", "ab", "--greedy", "--repetition-penalty", "5.0",
                    "--max-new-tokens", "30", capsys=capsys)
    assert len(set(plain[2:-1])) <= 2 and len(set(penalized[2:-1])) > 3


def test_several_models_max_tokens_output_and_bits_per_char_on_bpe(run, tmp_path, capsys):
    text = VERSE * 6
    (tmp_path / "data.txt").write_text(text)
    bpe = train_tokenizer("bpe", [VERSE * 20], 300)
    torch.manual_seed(1)
    model = LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=len(bpe), n_positions=32, n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "bpe_run")
    bpe.save_pretrained(tmp_path / "bpe_run")
    assert main(["evaluate", str(run), str(tmp_path / "bpe_run"), "--data", str(tmp_path / "data.txt"),
                 "--output", str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert str(run) in table and str(tmp_path / "bpe_run") in table
    char_row, bpe_row = json.loads((tmp_path / "e.json").read_text())
    assert bpe_row["chars"] == len(text) == char_row["chars"]  # the scored text, characters counted once
    assert bpe_row["tokens"] < len(text)  # BPE merges characters
    nll = bpe_row["loss"] * bpe_row["tokens"]
    assert bpe_row["bits_per_char"] == pytest.approx(nll / math.log(2) / len(text), rel=1e-9)
    assert char_row["bits_per_char"] == pytest.approx(char_row["bits_per_token"], rel=1e-9)
    assert main(["evaluate", str(run), "--data", str(tmp_path / "data.txt"), "--max-tokens", "50",
                 "--output", str(tmp_path / "m.json"), "--device", "cpu"]) == 0
    (limited,) = json.loads((tmp_path / "m.json").read_text())
    assert limited["tokens"] == 50 and limited["bits_per_char"] is None  # part of the text: no per-char figure


def test_stop_strings_on_a_char_vocabulary_without_the_matchers_probe_letters():
    """transformers' stop-string matcher probes the vocabulary behind "abcdef"; a char tokenizer that never saw
    those letters made it fail ("substring not found"). llmkit gives it letters the vocabulary has."""
    tok = train_tokenizer("char", ["XYZ: To be\n\n" * 10])
    assert tok.unk_token_id in tok("abcdef", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    model = LlmkitGPTForCausalLM(LlmkitGPTConfig(vocab_size=len(tok), n_positions=16, n_embd=16, n_layer=1, n_head=2))
    stop_id = tok("Z", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():  # every step writes "Z": the last hidden state is all ones, only Z's row sees it
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()  # tied: the embeddings are zero too, which this test does not need
        model.lm_head.weight[stop_id] = 1.0
    texts = generate_texts(model, tok, ["XY"], max_new_tokens=10, temperature=0, stop=["ZZZ"])
    assert texts == ["ZZZ"]
