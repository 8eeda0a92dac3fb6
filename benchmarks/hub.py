"""Sharing, measured: push and pull of the quickstart run through the Hub client (against the test Hub on
127.0.0.1, tests/hub_server.py), the same greedy text before the push and after the pull, and which stock
architecture each preset's model exports to.

    python benchmarks/hub.py [--run runs/quickstart]      (the run is trained first when missing)
Writes benchmarks/results/hub.json. Times are local-loopback times: they measure llmkit's and the client's work
(staging, export, hashing, the card), not a network.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from _common import print_table, report

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
TOKEN = "hf_" + "benchmarkToken0123456789abcdef"


def llmkit(*args, env) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "llmkit.cli", *map(str, args)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return proc


def presets_table() -> list[dict]:
    from llmkit.config import load_config
    from llmkit.models import build_config
    from llmkit.models.conversions import stock_target, unsupported_reason

    rows = []
    for path in sorted((REPO / "configs").glob("*.yaml")):
        m = load_config(path).model if "from_pretrained" not in path.read_text() else None
        if m is None:
            rows.append({"preset": path.name, "model": "a pretrained model's", "pushed as": "its own architecture "
                         "(GPT-2 presets: GPT2LMHeadModel; fast path saved back as GPT-2)"})
            continue
        options = {k: getattr(m, k) for k in ("n_layer", "n_head", "n_embd", "n_positions", "n_inner",
                                             "activation_function", "mlp_type", "norm_type",
                                             "position_embedding_type", "bias", "qkv_bias", "tie_word_embeddings")
                   if getattr(m, k) is not None}
        if m.arch == "gpt2":
            rows.append({"preset": path.name, "model": "gpt2", "pushed as": "GPT2LMHeadModel (stock already)"})
            continue
        config = build_config("llmkit-gpt", vocab_size=64, **options)
        target = stock_target(config)
        if target is None:
            pushed = "llmkit-gpt + code (trust_remote_code): " + unsupported_reason(config, "gpt2").split(";")[0]
        else:
            pushed = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[target]
        rows.append({"preset": path.name, "model": "llmkit-gpt", "pushed as": pushed})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(REPO / "runs" / "quickstart"))
    args = parser.parse_args()
    from hub_server import HubServer

    run = pathlib.Path(args.run)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base_env.update(PYTHONPATH=str(REPO), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    if not (run / "config.json").exists():
        print(f"training the quickstart into {run} ...", flush=True)
        llmkit("train", REPO / "configs/quickstart.yaml", "--output-dir", run, env=base_env)
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-hub-bench-"))
    rows = []
    with HubServer({TOKEN: "bench"}) as server:
        env = dict(base_env, HF_ENDPOINT=server.url, HF_HOME=str(work / "home"))
        greedy = ["--prompt", "The list", "--greedy", "--max-new-tokens", "40", "--no-stream", "--device", "cpu"]
        before = llmkit("generate", run, *greedy, env=env).stdout
        for export in ("auto", "none"):
            start = time.perf_counter()
            out = llmkit("push", run, f"bench/quickstart-{export}", "--export", export, "--token", TOKEN, env=env)
            push_s = time.perf_counter() - start
            start = time.perf_counter()
            llmkit("push", run, f"bench/quickstart-{export}", "--export", export, "--token", TOKEN, env=env)
            repush_s = time.perf_counter() - start
            fresh = dict(env, HF_HOME=str(work / f"fresh-{export}"))
            start = time.perf_counter()
            pulled = pathlib.Path(llmkit("pull", f"bench/quickstart-{export}", env=fresh).stdout.strip())
            pull_s = time.perf_counter() - start
            after = llmkit("generate", f"bench/quickstart-{export}", *greedy, env=dict(fresh, HF_HUB_OFFLINE="1")).stdout
            size = sum(p.stat().st_size for p in pulled.rglob("*") if p.is_file())
            rows.append({"push (--export)": export, "files": out.stdout.split("(")[1].split(" files")[0],
                         "MB": size / 2**20, "push_s": push_s, "re-push (no-op)_s": repush_s, "pull_s": pull_s,
                         "same greedy text": after == before})
    print(f"greedy text before the push: {before!r}")
    print_table(rows)
    presets = presets_table()
    print()
    print_table(presets)
    report("hub", rows, extra={"greedy_text": before, "presets": presets}, table=False)


if __name__ == "__main__":
    main()
