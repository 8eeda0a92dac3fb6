"""Serving: `llmkit serve` on a run against `transformers serve` on the same weights exported as GPT-2.

One GPT-2-form run (learned positions, tanh GELU, 6/6/384, a 256-token context, trained briefly on the built-in
corpus; `_common.gpt2_form_run`), exported with `llmkit export RUN OUT --to gpt2`. Both servers run as whole
processes at once on 127.0.0.1 (each idle while the other works: the rounds alternate), and each gets the same
streamed greedy completion requests (`/v1/completions`, `temperature: 0`, `max_tokens` new tokens) from 1, 4 and 8
concurrent clients. Per request: time to first token (the first chunk with text), and the request's decode rate
(tokens after the first over the time after it); per round: the aggregate tokens/s of all its clients (every
token over the round's wall time). Token counts are the servers' own `usage`; every client's text is checked
equal to the single-client text of its server, and the two servers' texts to each other.

On CPU both generate one request at a time (transformers' continuous batching needs an accelerator's paged
attention), so concurrent clients queue: time to first token grows with the queue and the aggregate rate stays
that of one stream. What differs is the decoding path: llmkit-gpt's `generate()` against GPT2LMHeadModel's.

    python benchmarks/serve.py [--run runs/gpt2form] [--rounds 3] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from _common import REPO, gpt2_form_run, report

PROMPT = "The list"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, log: pathlib.Path) -> subprocess.Popen:
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{command[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{command} did not answer /health within 180 s: {log.read_text()[-2000:]}")


def stream_once(port: int, model: str, max_tokens: int) -> dict:
    """One streamed greedy completion: time to first token, end time, text and the server's token count."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # the last chunk: the server's token count
    start_t = time.perf_counter()
    first = None
    text, tokens = [], None
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise SystemExit(f"server error: {chunk['error']}")
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    first = first or time.perf_counter()
                    text.append(choice["text"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"start": start_t, "first": first, "end": end, "text": "".join(text), "tokens": tokens}


def round_of(port: int, model: str, clients: int, max_tokens: int) -> list[dict]:
    results: list[dict | None] = [None] * clients

    def client(i):
        results[i] = stream_once(port, model, max_tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summarize(results: list[dict]) -> dict:
    t0 = min(r["start"] for r in results)
    wall = max(r["end"] for r in results) - t0
    ttft = [r["first"] - r["start"] for r in results]
    decode = [(r["tokens"] - 1) / (r["end"] - r["first"]) for r in results if r["tokens"] > 1]
    return {"ttft_ms_median": statistics.median(ttft) * 1000, "ttft_ms_max": max(ttft) * 1000,
            "decode_tok_s_median": statistics.median(decode), "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
            "tokens": sum(r["tokens"] for r in results)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(REPO / "runs" / "gpt2form"), help="a GPT-2-form run (trained if absent)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency (best kept)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,4,8")
    args = parser.parse_args()
    tf_cli = pathlib.Path(sys.executable).parent / "transformers"  # the CLI of the transformers llmkit runs on
    if not tf_cli.exists():
        raise SystemExit(f"transformers' CLI is not installed beside this interpreter ({tf_cli})")
    run = gpt2_form_run(pathlib.Path(args.run))
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-serve-bench-"))
    export = work / "gpt2-export"
    subprocess.run([sys.executable, "-m", "llmkit.cli", "export", str(run), str(export), "--to", "gpt2"], check=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL)
    ports = {"llmkit serve (run)": free_port(), "transformers serve (GPT-2 export)": free_port()}
    commands = {
        "llmkit serve (run)": [sys.executable, "-m", "llmkit.cli", "serve", str(run), "--port",
                               str(ports["llmkit serve (run)"])],
        "transformers serve (GPT-2 export)": [str(tf_cli), "serve",
                                              str(export), "--device", "cpu", "--host", "127.0.0.1",
                                              "--port", str(ports["transformers serve (GPT-2 export)"])],
    }
    names = {"llmkit serve (run)": str(run), "transformers serve (GPT-2 export)": str(export)}
    procs = {}
    try:
        for server, command in commands.items():
            procs[server] = start(command, ports[server], work / f"{server.split()[0]}.log")
        alone = {}
        for server in commands:  # warm-up and the reference text each client must reproduce
            stream_once(ports[server], names[server], args.max_tokens)
            alone[server] = stream_once(ports[server], names[server], args.max_tokens)
        texts_equal = len({r["text"] for r in alone.values()}) == 1
        rows = []
        for clients in (int(c) for c in args.clients.split(",")):
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for server in commands:
                    results = round_of(ports[server], names[server], clients, args.max_tokens)
                    assert all(r["text"] == alone[server]["text"] for r in results), f"{server}: text differs"
                    summary = summarize(results)
                    if server not in best or summary["aggregate_tok_s"] > best[server]["aggregate_tok_s"]:
                        best[server] = summary
            for server, summary in best.items():
                rows.append({"clients": clients, "server": server, **summary})
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    ratios = {}
    for clients in sorted({r["clients"] for r in rows}):
        ours, theirs = (next(r for r in rows if r["clients"] == clients and r["server"] == s) for s in commands)
        ratios[str(clients)] = {"aggregate_tok_s": ours["aggregate_tok_s"] / theirs["aggregate_tok_s"],
                                "ttft_median": theirs["ttft_ms_median"] / ours["ttft_ms_median"]}
    report("serve", rows, {"run_overrides": "see _common.GPT2_FORM", "prompt": PROMPT, "max_tokens": args.max_tokens,
                           "rounds": args.rounds, "greedy_texts_equal_across_servers": texts_equal,
                           "llmkit_over_transformers": ratios})
    print("greedy texts equal across the servers:", texts_equal)
    for clients, r in ratios.items():
        print(f"{clients} clients: llmkit serve {r['aggregate_tok_s']:.2f}x the tokens/s, "
              f"{r['ttft_median']:.2f}x faster first token")


if __name__ == "__main__":
    main()
