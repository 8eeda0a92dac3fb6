"""Sharing on the Hub, end to end with the real huggingface_hub client against the test Hub on 127.0.0.1
(tests/hub_server.py): push, pull into an empty cache, generate; adapters and tokenizers; exports that load
without llmkit; the model card; `training.push_to_hub`; every fault as one line; tokens leak nowhere.

The client runs in subprocesses (`llmkit ...` and plain Python), because the Hub endpoint is read at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO
from hub_server import HubServer

from llmkit.config import load_config
from llmkit.training import train

SECRET = "hf_" + "Sx7Qk2Lm9Tz4Wv1Rb8Yn3Hc6Jd5Pf0Ga"  # alice's token: must appear in no file and no output
BOB = "hf_bobReadsOnly0123456789abcdef"
TOKENS = {SECRET: "alice", BOB: "bob"}
TINY = ["tokenizer.kind=char", "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.n_positions=64",
        "training.per_device_train_batch_size=8", "training.learning_rate=3e-3", "training.warmup_steps=2",
        "training.logging_steps=5", "training.report_to=none", "training.disable_tqdm=true", "training.seed=1",
        "training.max_steps=20", "training.eval_steps=10", "sample.max_new_tokens=8", "sample.prompts=[ROMEO]"]


def quiet(*args):
    pass


def client_env(server_url: str, home: pathlib.Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=server_url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
               CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", LLMKIT_HUB_TIMEOUT="20",
               PYTHONPATH=str(REPO))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def llmkit(*args, env: dict, cwd: pathlib.Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def python(code: str, env: dict, *args) -> dict:
    """Run `code` in a fresh interpreter (it prints one JSON line); llmkit is made unimportable there."""
    guard = textwrap.dedent("""\
        import importlib.abc, json, sys
        class _NoLlmkit(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "llmkit" or name.startswith("llmkit."):
                    raise ImportError("llmkit is not installed here")
        sys.meta_path.insert(0, _NoLlmkit())
    """)
    env = dict(env, PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tree_hash(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hub():
    with HubServer(TOKENS) as server:
        yield server


@pytest.fixture(scope="module")
def runs(shakespeare_head, tmp_path_factory) -> dict[str, pathlib.Path]:
    """Tiny runs trained here: learned/LayerNorm (exports to GPT-2), rotary/RMSNorm/SwiGLU without biases (to
    Llama), rotary/LayerNorm (no stock equivalent: pushed with its code), and a LoRA adapter on the first."""
    root = tmp_path_factory.mktemp("hub-runs")
    corpus = shakespeare_head(60_000)
    variants = {
        "gpt2like": [],
        "llamalike": ["model.position_embedding_type=rotary", "model.norm_type=rmsnorm", "model.mlp_type=swiglu",
                      "model.bias=false"],
        "codeonly": ["model.position_embedding_type=rotary", "model.qk_norm=true"],  # QK-norm: in the code only
    }
    out = {}
    for name, extra in variants.items():
        cfg = load_config(None, [*TINY, f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", *extra])
        train(cfg, output_dir=str(root / name), log=quiet)
        out[name] = root / name
    cfg = load_config(None, [*[t for t in TINY if not t.startswith(("model.", "tokenizer."))],
                             f"model.from_pretrained={out['gpt2like']}", f"data.source={corpus}",
                             f"data.cache_dir={root / 'cache'}", "lora.r=4", "training.learning_rate=2e-2"])
    train(cfg, output_dir=str(root / "adapter"), log=quiet)
    out["adapter"] = root / "adapter"
    return out


def greedy(target, env, *extra) -> str:
    return ok(llmkit("generate", target, "--prompt", "ROMEO:", "--greedy", "--max-new-tokens", "24", "--no-stream",
                     "--device", "cpu", *extra, env=env)).stdout


def test_push_then_pull_into_an_empty_cache_generates_the_same_text(hub, runs, tmp_path):
    run = runs["gpt2like"]
    before = tree_hash(run)
    local = greedy(run, client_env(hub.url, tmp_path / "local"))
    pusher = client_env(hub.url, tmp_path / "pusher")
    proc = ok(llmkit("push", run, "alice/tiny", "--token", SECRET, env=pusher))
    commit = proc.stdout.split("commit ")[1].split()[0]
    assert proc.stdout.startswith(f"pushed {hub.url}/alice/tiny commit ") and len(commit) == 40
    assert tree_hash(run) == before  # the local folder is only read
    files = set(_repo_files(hub, "alice/tiny"))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "config.yaml",
            "metrics.json", "log_history.json", "loss_curve.png", "samples.jsonl", "README.md"} <= files
    assert not [f for f in files if f.startswith("checkpoint-") or f.endswith((".bin", ".pt", ".pth"))]
    assert json.loads(hub.get_file("alice/tiny", "config.json"))["model_type"] == "gpt2"  # loads without llmkit

    again = ok(llmkit("push", run, "alice/tiny", "--token", SECRET, env=pusher))
    assert again.stdout.startswith(f"nothing changed; the repo is already at {hub.url}/alice/tiny commit {commit}")

    fresh = client_env(hub.url, tmp_path / "fresh-cache")
    pulled = pathlib.Path(ok(llmkit("pull", "alice/tiny", env=fresh)).stdout.strip())
    assert pulled.is_relative_to(tmp_path / "fresh-cache") and (pulled / "model.safetensors").is_file()
    assert greedy("alice/tiny", dict(fresh, HF_HUB_OFFLINE="1")) == local  # from the cache alone


def _repo_files(hub: HubServer, repo_id: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"{hub.url}/api/models/{repo_id}/tree/main?recursive=true") as response:
        return [e["path"] for e in json.loads(response.read()) if e["type"] == "file"]


@pytest.mark.slow  # keeps the default suite under 15 minutes (it measured 15 min 57 s)
def test_push_to_a_new_branch_and_pull_that_revision(hub, runs, tmp_path):
    env = client_env(hub.url, tmp_path / "home")
    ok(llmkit("push", runs["gpt2like"], "alice/branched", "--token", SECRET, env=env))
    ok(llmkit("push", runs["codeonly"], "alice/branched", "--revision", "experiment", "--token", SECRET,
              "--commit-message", "rotary variant", env=env))
    main = pathlib.Path(ok(llmkit("pull", "alice/branched", tmp_path / "main", env=env)).stdout.strip())
    branch = pathlib.Path(ok(llmkit("pull", "alice/branched", tmp_path / "branch", "--revision", "experiment",
                                    env=env)).stdout.strip())
    assert json.loads((main / "config.json").read_text())["model_type"] == "gpt2"
    assert json.loads((branch / "config.json").read_text())["model_type"] == "llmkit-gpt"  # pushed with its code


@pytest.mark.slow  # keeps the default suite under 15 minutes (it measured 15 min 57 s)
def test_an_adapter_run_is_pushed_and_pulled_with_its_base(hub, runs, tmp_path):
    env = client_env(hub.url, tmp_path / "home")
    local = greedy(runs["adapter"], env)
    ok(llmkit("push", runs["gpt2like"], "alice/tiny-base", "--export", "none", "--token", SECRET, env=env))
    ok(llmkit("push", runs["adapter"], "alice/tiny-lora", "--base-model", "alice/tiny-base", "--token", SECRET,
              env=env))
    config = json.loads(hub.get_file("alice/tiny-lora", "adapter_config.json"))
    assert config["base_model_name_or_path"] == "alice/tiny-base"
    assert json.loads((runs["adapter"] / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        runs["gpt2like"])  # the local run is untouched
    fresh = client_env(hub.url, tmp_path / "fresh")
    ok(llmkit("pull", "alice/tiny-lora", env=fresh))  # and its base, into the cache
    assert greedy("alice/tiny-lora", dict(fresh, HF_HUB_OFFLINE="1")) == local


def test_a_tokenizer_alone_round_trips(hub, runs, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "tok"
    AutoTokenizer.from_pretrained(runs["gpt2like"]).save_pretrained(folder)
    env = client_env(hub.url, tmp_path / "home")
    ok(llmkit("push", folder, "alice/tiny-tokenizer", "--token", SECRET, env=env))
    fresh = client_env(hub.url, tmp_path / "fresh")
    out = python("""
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained("alice/tiny-tokenizer")
        print(json.dumps(tok("ROMEO: to be", add_special_tokens=False)["input_ids"]))
    """, fresh)
    assert out == AutoTokenizer.from_pretrained(folder)("ROMEO: to be", add_special_tokens=False)["input_ids"]


LOAD_AND_SCORE = """
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=sys.argv[2] == "remote").eval()
    ids = torch.tensor([[5, 9, 14, 3, 22, 7, 30, 11]])
    with torch.no_grad():
        logits = model(ids).logits
    assert not any(m.startswith("llmkit") for m in sys.modules)
    print(json.dumps({"class": type(model).__name__, "logits": logits.flatten().tolist()}))
"""


def local_logits(run: pathlib.Path) -> torch.Tensor:
    from llmkit.loading import load_model

    model, _ = load_model(str(run), device="cpu")
    with torch.no_grad():
        return model(torch.tensor([[5, 9, 14, 3, 22, 7, 30, 11]])).logits.flatten()


@pytest.mark.parametrize("run, export, cls", [
    ("gpt2like", "auto", "GPT2LMHeadModel"), ("llamalike", "auto", "LlamaForCausalLM"),
    ("codeonly", "auto", "LlmkitGPTForCausalLM"), ("gpt2like", "code", "LlmkitGPTForCausalLM"),
])
def test_pushed_models_load_from_the_hub_in_a_process_without_llmkit(hub, runs, tmp_path, run, export, cls):
    env = client_env(hub.url, tmp_path / "home")
    repo = f"alice/{run}-{export}"
    ok(llmkit("push", runs[run], repo, "--export", export, "--token", SECRET, env=env))
    out = python(LOAD_AND_SCORE, client_env(hub.url, tmp_path / "fresh"), repo, "remote" if cls.startswith("Llmkit") else "")
    assert out["class"] == cls
    torch.testing.assert_close(torch.tensor(out["logits"]), local_logits(runs[run]), atol=1e-5, rtol=0)


@pytest.mark.slow  # keeps the default suite under 15 minutes (it measured 15 min 57 s)
def test_export_command_writes_folders_that_load_without_llmkit(runs, tmp_path):
    env = client_env("http://127.0.0.1:9", tmp_path / "home", HF_HUB_OFFLINE="1")
    for run, to, cls in (("gpt2like", "gpt2", "GPT2LMHeadModel"), ("llamalike", "llama", "LlamaForCausalLM"),
                         ("codeonly", "code", "LlmkitGPTForCausalLM")):
        out = tmp_path / f"{run}-{to}"
        ok(llmkit("export", runs[run], out, "--to", to, env=env))
        loaded = python(LOAD_AND_SCORE, env, out, "remote" if to == "code" else "")
        assert loaded["class"] == cls
        torch.testing.assert_close(torch.tensor(loaded["logits"]), local_logits(runs[run]), atol=1e-5, rtol=0)
        # inference settings only: no training or load-time state
        assert json.loads((out / "config.json").read_text())["use_cache"] is True
        tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
        assert not {"local_files_only", "is_local"} & tokenizer_config.keys(), tokenizer_config
    for run in ("gpt2like", "adapter"):  # the run folders themselves too
        assert "local_files_only" not in json.loads((runs[run] / "tokenizer_config.json").read_text())
    assert json.loads((runs["gpt2like"] / "config.json").read_text())["use_cache"] is True
    refused = llmkit("export", runs["codeonly"], tmp_path / "nope", "--to", "gpt2", env=env)
    assert refused.returncode == 2 and "rotary positions: GPT-2 has a learned position table" in refused.stderr
    assert not (tmp_path / "nope").exists()


def test_the_model_card_passes_the_hubs_metadata_checks_and_holds_the_runs_metrics(hub, runs, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    env = client_env(hub.url, tmp_path / "home")
    ok(llmkit("push", runs["adapter"], "alice/card-check", "--base-model", "alice/tiny-base", "--license", "mit",
              "--token", SECRET, env=env))
    card = ModelCard(hub.get_file("alice/card-check", "README.md").decode())
    data = card.data.to_dict()
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == ("peft", "text-generation", "mit")
    assert "llmkit" in data["tags"] and "lora" in data["tags"] and data["base_model"] == "alice/tiny-base"
    _, results = model_index_to_eval_results(data["model-index"])
    metrics = json.loads((runs["adapter"] / "metrics.json").read_text())
    values = {r.metric_type: r.metric_value for r in results}
    assert values["loss"] == pytest.approx(metrics["eval_loss"], abs=1e-4)
    assert values["perplexity"] == pytest.approx(metrics["eval_perplexity"], abs=1e-3)
    for section in ("## Architecture", "## Training", "## Evaluation", "![loss curve](loss_curve.png)",
                    "## Samples", "PeftModel.from_pretrained", "llmkit generate alice/card-check", "llmkit train"):
        assert section in card.text, section
    out = python("""
        from huggingface_hub import ModelCard
        card = ModelCard.load("alice/card-check")
        card.validate()  # the Hub's own YAML validation endpoint
        print(json.dumps({"ok": True}))
    """, client_env(hub.url, tmp_path / "validate"))
    assert out["ok"]


def test_training_push_to_hub_pushes_the_complete_run_folder(hub, shakespeare_head, tmp_path):
    env = client_env(hub.url, tmp_path / "home")
    out = tmp_path / "run"
    proc = ok(llmkit("train", *TINY, f"data.source={shakespeare_head(60_000)}", f"data.cache_dir={tmp_path / 'c'}",
                     "training.push_to_hub=true", "training.hub_model_id=alice/pushed-by-train",
                     f"training.hub_token={SECRET}", "--output-dir", out, env=env))
    files = set(_repo_files(hub, "alice/pushed-by-train"))
    local = {p.name for p in out.iterdir() if p.is_file()} - {"README.md"}
    assert {"metrics.json", "log_history.json", "loss_curve.png", "report.html", "samples.jsonl", "config.yaml"} <= files
    assert local - files <= {"training_args.bin", ".llmkit-lock"} and "README.md" in files  # the lock stays local
    assert "[report.html](report.html)" in hub.get_file("alice/pushed-by-train", "README.md").decode()
    assert "pushed " in proc.stdout
    for text in (proc.stdout, proc.stderr, *(p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())):
        assert SECRET not in text


FAULTS = {
    # name: (server fault to inject or None, command (RUN/TMP placeholders), stderr must contain)
    "bad token (401)": (None, ["push", "RUN", "alice/f1", "--token", "hf_wrongwrongwrongwrong"], "refused the token"),
    "no write access (403)": (None, ["push", "RUN", "bob/f2", "--token", SECRET], "no write access to bob/f2"),
    "repo not found on pull (404)": (None, ["pull", "alice/never-pushed", "TMP/p"], "repo alice/never-pushed not found"),
    "revision not found on pull": (None, ["pull", "alice/seeded", "TMP/p", "--revision", "nope"],
                                   "that revision does not exist"),
    "500 in the middle of the commit": (("POST", r"/api/models/alice/f5/commit/", 500, 0.0),
                                        ["push", "RUN", "alice/f5", "--token", SECRET], "failed with 500"),
    "timeout": (("GET", r"/api/models/alice/seeded", None, 8.0), ["pull", "alice/seeded", "TMP/p"],
                "did not answer in time"),
    "invalid repo id": (None, ["push", "RUN", "alice//bad", "--token", SECRET], "is not a valid repo id"),
    "not a run folder": (None, ["push", "TMP", "alice/f8", "--token", SECRET], "is not a run, adapter run, model"),
    "private repo without a token": (None, ["pull", "alice/private-seeded", "TMP/p"], "if it is private"),
    "Hub unreachable": ("unreachable", ["pull", "alice/seeded", "TMP/p"], "cannot be reached"),
}


# faults of the Hub or the network, not of the input: exit code 1 (the others are 2)
ENVIRONMENT_FAULTS = {"500 in the middle of the commit", "timeout", "Hub unreachable"}


def test_every_hub_fault_is_one_line_and_leaves_the_local_folder_alone_and_a_retry_succeeds(hub, runs, tmp_path):
    env = client_env(hub.url, tmp_path / "seed")
    ok(llmkit("push", runs["gpt2like"], "alice/seeded", "--export", "none", "--token", SECRET, env=env))
    ok(llmkit("push", runs["gpt2like"], "alice/private-seeded", "--private", "--export", "none", "--token", SECRET,
              env=env))
    before = tree_hash(runs["gpt2like"])
    procs = {}
    servers = []
    for i, (name, (fault, args, _)) in enumerate(FAULTS.items()):
        work = tmp_path / f"case{i}"
        work.mkdir()
        server = hub
        if isinstance(fault, tuple):  # its own server, seeded the same way, so the fault hits this case only
            server = HubServer(TOKENS).start()
            servers.append(server)
            seeded = client_env(server.url, work / "seed")
            ok(llmkit("push", runs["gpt2like"], "alice/seeded", "--export", "none", "--token", SECRET, env=seeded))
            method, path, status, delay = fault
            server.inject(method, path, status=status, delay=delay, times=50 if status is None else 1)
        url = "http://127.0.0.1:9" if fault == "unreachable" else server.url
        cmd = [str(runs["gpt2like"]) if a == "RUN" else a.replace("TMP", str(work / "empty")) for a in args]
        (work / "empty").mkdir()
        procs[name] = (subprocess.Popen([sys.executable, "-m", "llmkit.cli", *cmd], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        env=client_env(url, work / "home", LLMKIT_HUB_TIMEOUT="2")), server, cmd, work)
    try:
        for name, (proc, server, cmd, work) in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert proc.returncode == (1 if name in ENVIRONMENT_FAULTS else 2), (name, stderr[-3000:])
            assert len(lines) == 1 and lines[0].startswith("llmkit: error: "), (name, stderr[-3000:])
            assert FAULTS[name][2] in lines[0], (name, lines[0])
            assert "Traceback" not in stderr and SECRET not in stderr + stdout
            assert not any((work / "empty").iterdir()) or name == "not a run folder"
            if name in ("500 in the middle of the commit", "timeout"):  # the fault has passed: the retry succeeds
                server.clear_faults()
                retry = subprocess.run([sys.executable, "-m", "llmkit.cli", *cmd], capture_output=True, text=True,
                                       env=client_env(server.url, work / "home"), timeout=300)
                assert retry.returncode == 0, (name, retry.stderr[-3000:])
    finally:
        for server in servers:
            server.stop()
    assert tree_hash(runs["gpt2like"]) == before
