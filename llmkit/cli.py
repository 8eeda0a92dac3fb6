"""The `llmkit` command: prepare, train, generate, evaluate, merge, export, push, pull, serve, report, sweep.

Every error ends as one line on stderr (`llmkit: error: ...`): exit code 2 for bad input, 1 for a fault of the
environment (the Hub down or answering 5xx, a full disk, a lost process; see llmkit/errors.py), 130 for Ctrl-C.
Tracebacks are for bugs; `LLMKIT_DEBUG=1` prints the traceback after the one line too. Library errors name
parameters (`temperature`, `stride`); this module renames them to its flags (`--temperature`, `--stride`).
`accelerate launch -m llmkit.cli train CONFIG` runs the same code data-parallel.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys

from .loading import quiet_library_output

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

GENERATE_HELP = """\
Escapes: --prompt and --stop (and the config's sample.prompts and sample.stop) turn \\n into a newline, \\t into a
tab and \\\\ into one backslash, so `--stop "\\n\\n"` stops at a blank line as typed in a shell; write \\\\n for a
backslash followed by n. --prompt-file and stdin are read as they are.

Long outputs: a model with learned positions sees at most n_positions tokens. Generation uses the KV cache
until the context is full, then computes each new token on the last n_positions-1 tokens (a sliding window,
positions shift). A prompt longer than the context keeps its end (with a warning); characters a char-level
tokenizer never saw are dropped (with a warning); an empty prompt starts from the EOS token.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (see configs/); defaults apply when omitted")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as training.max_steps=200 model.n_layer=2")


class Parser(argparse.ArgumentParser):
    """argparse, with argument errors as llmkit's one line (the usage text is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"llmkit: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="llmkit", description="Train, fine-tune, sample, evaluate and share small GPTs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("prepare", help="train/load the tokenizer and tokenize the data into the cache")
    _add_config_args(p)

    p = sub.add_parser("train", help="train a model from a YAML config")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument("--output-dir", help="run folder (default: training.output_dir)")

    p = sub.add_parser("generate", help="sample text from a trained model", epilog=GENERATE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder, adapter run folder or Hub id")
    p.add_argument("--adapter", help="LoRA adapter run (folder or Hub id) to apply to the model")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text, escapes decoded (default: read stdin if piped, else empty)")
    src.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--max-new-tokens", type=_positive_int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (same as --temperature 0)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--num-samples", type=_positive_int, default=1, help="several samples in one batched pass")
    p.add_argument("--seed", type=int, default=None, help="same seed, same text")
    p.add_argument("--stop", action="append", default=None,
                   help="stop string, escapes decoded: --stop \"\\n\\n\" stops at a blank line (repeatable)")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")
    p.add_argument("--interactive", "-i", action="store_true", help="keep the model loaded and read prompts")
    p.add_argument("--chat", action="store_true",
                   help="wrap prompts in the model's chat template and stop at the end of the answer; with -i the "
                        "conversation is kept")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1, mps (default: cuda if any)")
    p.add_argument("--json", action="store_true", help="print the samples as JSON")
    p.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2", default=None,
                   help="a generation sweep: every combination of these settings (temperature, top_k, top_p, "
                        "repetition_penalty, max_new_tokens, seed), each sample with its settings, seed and "
                        "checkpoint written to --output (JSONL) and an HTML page beside it")
    p.add_argument("--output", default=None, help="--sweep: the JSONL file (default: generation-sweep.jsonl)")

    p = sub.add_parser("evaluate", help="loss, perplexity and bits per char/byte of models on a data source")
    p.add_argument("models", nargs="+", help="run folders, adapter runs or Hub ids (several print a comparison table)")
    p.add_argument("--adapter", help="LoRA adapter run (folder or Hub id) applied to each model")
    p.add_argument("--per-document", action="store_true",
                   help="score each document alone from a fresh start token, counting only its own bytes "
                        "(lm-evaluation-harness's rolling loglikelihood, for comparing bits per byte with published "
                        "numbers); default: the documents joined with EOS as training sees them")
    p.add_argument("--format", choices=("text", "instruct", "preference"), default="text",
                   help="instruct: prompt/response (or chat messages) rows; scores the answer tokens only; "
                        "preference: prompt/chosen/rejected rows; preference accuracy and margin")
    p.add_argument("--chosen-field", default="chosen", help="--format preference: the better answer's column")
    p.add_argument("--rejected-field", default="rejected", help="--format preference: the worse answer's column")
    p.add_argument("--reference", help="--format preference: score log-ratios to this model (DPO's implicit reward)")
    p.add_argument("--prompt-field", default="prompt", help="--format instruct: the prompt column")
    p.add_argument("--response-field", default="response", help="--format instruct: the answer column")
    p.add_argument("--messages-field", default="messages", help="--format instruct: the chat messages column")
    p.add_argument("--data", required=True, help="data source: file, glob, folder, jsonl/csv/parquet, Hub id, builtin")
    p.add_argument("--text-field", default="text")
    p.add_argument("--stride", type=_positive_int, default=None, help="sliding-window stride (default: half the context; the whole context with --per-document, as "
                        "lm-evaluation-harness)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--max-tokens", type=_positive_int, default=None, help="score at most this many tokens per model")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1, mps (default: cuda if any)")
    p = sub.add_parser("merge", help="fold a LoRA adapter run into its base: a plain model folder")
    p.add_argument("adapter", help="adapter run folder or Hub id (its base comes from adapter_config.json)")
    p.add_argument("out", help="new folder for the merged model (must not exist)")
    p.add_argument("--base", help="the base model, when adapter_config.json's base_model_name_or_path is not reachable")

    p = sub.add_parser("export", help="an llmkit-gpt run as a folder that loads without llmkit")
    p.add_argument("run", help="run folder or Hub id of an llmkit-gpt model")
    p.add_argument("out", help="new folder (must not exist)")
    p.add_argument("--to", required=True, choices=("gpt2", "llama", "code", "gguf"),
                   help="gpt2 / llama: the exact stock architecture; code: llmkit-gpt with its modeling code "
                        "(trust_remote_code=True); gguf: one GGUF file for llama.cpp and an Ollama Modelfile")
    from .gguf_export import QUANTS  # stdlib-only at import: the command line starts as fast

    p.add_argument("--quant", choices=QUANTS, default="f32", help="--to gguf: the weights' type")

    p = sub.add_parser("push", help="push a run, adapter run, model or tokenizer folder to the Hugging Face Hub")
    p.add_argument("path", help="the folder to push (it is never modified)")
    p.add_argument("repo_id", help="NAME or USER/NAME (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (created when missing; default main)")
    p.add_argument("--commit-message")
    p.add_argument("--export", default="auto", choices=("auto", "gpt2", "llama", "code", "none"),
                   help="what a user without llmkit loads: auto (default) = the exact stock architecture when the "
                        "run has one, else code; none = llmkit-gpt as it is (needs llmkit)")
    p.add_argument("--checkpoints", action="store_true", help="also push checkpoint-N folders (weights, state)")
    p.add_argument("--optimizer-states", action="store_true",
                   help="with --checkpoints: also the optimizer/scheduler/RNG states (pickles) a resume needs")
    p.add_argument("--base-model", help="adapters: the Hub id of the base, when the run names a local folder")
    p.add_argument("--license", help="license for the model card (e.g. apache-2.0, mit)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")

    p = sub.add_parser("pull", help="download a model, adapter or tokenizer repo from the Hub")
    p.add_argument("repo_id")
    p.add_argument("dir", nargs="?", help="a new folder for the files (default: the Hub cache)")
    p.add_argument("--revision", help="branch, tag or commit")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")

    p = sub.add_parser("report", help="one self-contained HTML page comparing runs: curves, metrics, configs, "
                                      "samples")
    p.add_argument("runs", nargs="+", help="run folders (a sweep's points too)")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default: report.html)")
    p.add_argument("--title", default=None)

    p = sub.add_parser("sweep", help="train the cross product of config values (and seeds) as separate runs")
    _add_config_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a dotted config key and its values (repeatable: the cross product is swept)")
    p.add_argument("--seeds", type=_positive_int, default=None, help="each point with training.seed 0..N-1")
    p.add_argument("--out", default="runs/sweep", help="the sweep's folder: one run folder per point, sweep.csv, "
                                                      "sweep.json, sweep.html (default: runs/sweep)")
    p.add_argument("--parallel", type=_positive_int, default=1, help="points trained at once (default 1)")
    p.add_argument("--fit", choices=("power-law",), default=None,
                   help="fit the final validation loss: L = E + A / x^alpha, with a 95%% interval from the seeds")
    p.add_argument("--fit-x", choices=("params", "compute"), default="params",
                   help="--fit's x: non-embedding parameters (default) or training FLOPs")

    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (transformers' serving code)")
    p.add_argument("model", help="run folder, adapter run, exported folder or Hub id")
    p.add_argument("--adapter", help="LoRA adapter run (folder or Hub id) applied to the model (merged)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on every request (default: LLMKIT_API_KEY, if set)")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1, mps (default: cuda if any)")
    return parser


def _fast_exit() -> None:
    """At exit, freeze the garbage collector's view of the heap: Python's final collection otherwise walks every
    object the command made, and the libraries' where they were not frozen as they loaded (`libraries_loading`;
    benchmarks/startup.py). Objects are still released by reference counting; every file llmkit writes is closed
    before its command returns."""
    import atexit

    if not getattr(_fast_exit, "done", False):
        atexit.register(gc.freeze)
        _fast_exit.done = True


@contextlib.contextmanager
def libraries_loading():
    """A command's libraries (torch, transformers, datasets, peft) load with Python's cyclic garbage collector
    paused, and what they made is then frozen (`gc.freeze`: kept until exit and never walked again, as modules are).
    Collecting while they load walks the growing heap again and again, and later full collections during training
    walk it all once more (benchmarks/startup.py, benchmarks/speedrun.py; the README's "Time to quality"). The
    cyclic garbage the imports leave stays with the process. Done only where torch is not loaded yet (a command-line
    process) and the collector is on: a caller with torch loaded (a notebook, the tests) keeps its heap as it is."""
    paused = "torch" not in sys.modules and gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.freeze()
            gc.enable()


# glibc's malloc thresholds for llmkit's processes (see keep_freed_memory)
MMAP_THRESHOLD = 32 << 20  # blocks below it come from the heap: the ceiling of glibc's own adaptive threshold
TRIM_THRESHOLD = 256 << 20  # the free memory at the heap's top kept for the next step, not handed back at once
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def glibc_malloc_at_defaults() -> bool:
    """This process runs on glibc, and its environment leaves malloc's settings to it: none of glibc's `MALLOC_*`
    variables, no `GLIBC_TUNABLES` with `glibc.malloc`, no other allocator preloaded (`LD_PRELOAD` naming jemalloc,
    tcmalloc, mimalloc, ...)."""
    env = os.environ
    if (any(name.startswith("MALLOC_") for name in env) or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")
            or "malloc" in env.get("LD_PRELOAD", "")):
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, OSError, ValueError):  # not glibc (macOS, Windows, musl)
        return False


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a step frees for the next step, rather than return it to the system and
    take page faults to get it back. A forward and backward on a CPU allocate tensors of hundreds of KB to tens
    of MB and free them within the step. glibc's defaults serve blocks of 128 KB and more with fresh mappings and trim
    the heap's free top past 128 KB (both thresholds adapt upward as mapped blocks are freed, but not reliably to
    such a mix of sizes), so the same activations' pages fault in again in every step and every evaluation batch.
    Two `mallopt` settings, glibc's own (where PyTorch's CPU tuning guide preloads another allocator), serve blocks
    under 32 MB from the heap and keep up to 256 MB of free heap top; what a run frees stays with the process until
    it exits. Measured in benchmarks/cpu_malloc.py and benchmarks/speedrun.py (the README's "Time to quality").
    Not done, and the allocator left as it is, unless `glibc_malloc_at_defaults()`. Returns whether it was done."""
    if not glibc_malloc_at_defaults():
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "serve":  # before torch loads; a server computes in its model's process, and runs for days
        keep_freed_memory()
    if extra:  # overrides may come after a flag: `llmkit train CFG --resume training.max_steps=3000`
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "config", None) is not None and ("=" in args.config or not args.config):
        args.overrides = ([args.config] if args.config else []) + args.overrides  # no config file, only overrides
        args.config = None
    from .errors import OneLineError, ParameterError, first_line

    if args.command not in CONFIG_FIRST:
        with libraries_loading():  # transformers' logging module brings torch and transformers in
            quiet_library_output()
    _fast_exit()

    try:
        return COMMANDS[args.command](args)
    except OneLineError as err:  # bad input (2), or a fault of the environment or the run (1, 128 + signal)
        if isinstance(err, ParameterError) and err.parameter in FLAGS:
            err = err.named(FLAGS[err.parameter])
        return _one_line(str(err), getattr(err, "exit_code", 2))
    except OSError as err:
        if getattr(err, "filename", None) or "does not appear to have" in str(err) or "not a valid" in str(err):
            return _one_line(first_line(err), 2)
        raise
    except KeyboardInterrupt:
        print("llmkit: interrupted", file=sys.stderr)
        return 130


# commands that read and check their config before torch and transformers load (quiet_library_output imports
# transformers): a mistyped or ill-typed setting is reported at once
CONFIG_FIRST = ("train", "prepare")

# library parameter names -> this command line's flags, in messages
FLAGS = {"temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k",
         "repetition_penalty": "--repetition-penalty", "stride": "--stride", "data": "--data", "resume": "--resume",
         "to": "--to", "export": "--export"}


def _one_line(message: str, code: int) -> int:
    print(f"llmkit: error: {message}", file=sys.stderr)
    if os.environ.get("LLMKIT_DEBUG", "") not in ("", "0"):
        import traceback

        traceback.print_exc()
    return code


def cmd_prepare(args) -> int:
    from .config import load_config

    with libraries_loading():  # checking the config brings transformers in (its TrainingArguments)
        cfg = load_config(args.config, args.overrides)  # CONFIG_FIRST
        quiet_library_output()
        from .data import prepare_data, summary

    data = prepare_data(cfg)
    print(summary(data, cfg.block_size))
    return 0


def cmd_train(args) -> int:
    from .config import load_config

    started = _process_start()
    with libraries_loading():  # checking the config brings transformers in (its TrainingArguments)
        cfg = load_config(args.config, args.overrides)  # CONFIG_FIRST
        quiet_library_output()
        from .report import ReportCallback, write_report
        from .training import WallClock, run_folder, train

    clock = WallClock(since=started)
    out = run_folder(cfg, args.output_dir)
    keeper = ReportCallback(out)
    try:
        train(cfg, output_dir=args.output_dir, resume=args.resume, callbacks=[keeper], clock=clock)
    except BaseException:  # stopped (a signal, a fault): the page it kept said "training"; it now says where
        if keeper.written:
            import contextlib

            with contextlib.suppress(Exception):  # the run's own error is the one to report
                write_report([out], out / "report.html")
        raise
    if _main_process():  # the main process of a launch writes the run folder
        write_report([out], out / "report.html")
    if cfg.training.get("push_to_hub"):
        from .hub import push_finished_run

        push_finished_run(cfg, run_folder(cfg, args.output_dir))
    return 0


def _process_start() -> float | None:
    """This process's start (epoch seconds), for the run's "start-up" phase: interpreter and imports.

    On Linux, the kernel's own start time (clock ticks since boot, /proc/self/stat) against the boot-time clock now.
    psutil's `create_time` adds those ticks to /proc/stat's boot time in whole seconds, so it can run up to a second
    early; it serves the other platforms, and a /proc that gives no sensible answer."""
    import time

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime: after the command name
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        if 0.0 <= age < 86400.0:  # this process's age: anything else is an emulated /proc's answer
            return time.time() - age
    except (OSError, AttributeError, ValueError, IndexError):  # not Linux
        pass
    try:
        import psutil  # accelerate's dependency

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 (a platform without it: the phase is left out)
        return None


def _main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def cmd_generate(args) -> int:
    from .config import decode_escapes
    from .loading import load_model
    from .models.generation import generate_texts

    if args.output and not args.sweep:
        from .errors import ConfigError

        raise ConfigError("--output is for --sweep's samples; use --json to print samples as JSON")
    if args.sweep:  # bad sweep settings fail before the model loads
        from .sweep import parse_generation_sweep

        parse_generation_sweep(args.sweep)
    model, tokenizer = load_model(args.model, adapter=args.adapter, device=args.device)
    args.stop = [decode_escapes(s) for s in args.stop] if args.stop else None
    if args.prompt is not None:
        args.prompt = decode_escapes(args.prompt)
    settings = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        num_samples=args.num_samples,
        seed=args.seed,
        stop=args.stop,
        chat=args.chat,
    )
    stream = not args.no_stream and not args.json and args.num_samples == 1 and sys.stdout.isatty()
    conversation: list[dict] = []

    def run(prompt: str) -> None:
        query = [*conversation, {"role": "user", "content": prompt}] if args.chat else prompt
        try:
            texts = generate_texts(model, tokenizer, [query], stream=stream, **settings)
        except ValueError as err:
            raise _as_config_error(err) from None
        if args.chat and args.interactive:
            conversation.extend([{"role": "user", "content": prompt}, {"role": "assistant", "content": texts[0]}])
        if args.json:
            print(json.dumps({"prompt": prompt, "samples": texts}, ensure_ascii=False))
        elif not stream:
            for i, text in enumerate(texts):
                if len(texts) > 1:
                    print(f"--- sample {i + 1} ---")
                print(text if args.chat else prompt + text)
        else:
            print()

    if args.sweep:
        from .sweep import generation_sweep

        if args.interactive:
            from .errors import ConfigError

            raise ConfigError("--sweep runs a fixed set of prompts; leave out --interactive")
        prompt = _read_prompt(args)
        base = {k: v for k, v in settings.items()}
        out = args.output or "generation-sweep.jsonl"
        rows = generation_sweep(model, tokenizer, args.model, [prompt], args.sweep, base=base, out=out,
                                log=print if args.json else lambda line: None)
        if not args.json:
            for row in rows:
                shown = ", ".join(f"{k}={row['settings'][k]}" for k in sorted(row["settings"]))
                print(f"--- {shown}\n{row['text'] if args.chat else row['prompt'] + row['text']}")
        print(f"wrote {len(rows)} samples to {out} and {out.removesuffix('.jsonl')}.html", file=sys.stderr)
        return 0
    if args.interactive:
        terminal = sys.stdin.isatty()
        if terminal:
            print("llmkit: interactive mode; an empty line or Ctrl-D quits", file=sys.stderr)
        while True:
            try:
                prompt = input("> " if terminal else "")  # piped prompts: answers only
            except EOFError:
                break
            if not prompt:
                break
            run(prompt)
        return 0
    run(_read_prompt(args))
    return 0


def _read_prompt(args) -> str:
    """--prompt, --prompt-file, or stdin when piped; else empty."""
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as err:
            from .config import ConfigError

            raise ConfigError(f"--prompt-file {args.prompt_file}: {err}") from None
    if not sys.stdin.isatty():
        return sys.stdin.read()
    return ""


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_models, format_table

    if args.reference and args.format != "preference":
        from .errors import ConfigError

        raise ConfigError("--reference scores preference pairs against a reference model: add --format preference")
    try:
        results = evaluate_models(args.models, args.data, text_field=args.text_field, stride=args.stride,
                                  batch_size=args.batch_size, max_tokens=args.max_tokens, device=args.device,
                                  adapter=args.adapter, per_document=args.per_document,
                                  instruct=None if args.format != "instruct" else {
                                      "prompt_field": args.prompt_field, "response_field": args.response_field,
                                      "messages_field": args.messages_field},
                                  preference=None if args.format != "preference" else {
                                      "prompt_field": args.prompt_field, "chosen_field": args.chosen_field,
                                      "rejected_field": args.rejected_field},
                                  reference=args.reference)
    except ValueError as err:  # a library's check of an argument
        raise _as_config_error(err) from None
    print(format_table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_merge(args) -> int:
    from .export import merge

    out = merge(args.adapter, args.out, base=args.base)
    print(f"merged {args.adapter} into a plain model folder: {out}")
    return 0


def cmd_export(args) -> int:
    from .export import export

    out = export(args.run, args.out, to=args.to, quant=args.quant)
    print(f"exported {args.run} as {args.to}{f' ({args.quant})' if args.to == 'gguf' else ''} into {out}")
    return 0


def cmd_push(args) -> int:
    import time

    from .hub import push

    start = time.perf_counter()
    result = push(args.path, args.repo_id, token=args.token, private=args.private or None, revision=args.revision,
                  commit_message=args.commit_message, export=args.export, checkpoints=args.checkpoints,
                  optimizer_states=args.optimizer_states, base_model=args.base_model, license=args.license)
    what = "pushed" if result.changed else "nothing changed; the repo is already at"
    print(f"{what} {result.url} commit {result.commit} ({result.files} files, {result.bytes / 2**20:.1f} MB, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0


def cmd_pull(args) -> int:
    from .hub import pull

    path = pull(args.repo_id, args.dir, revision=args.revision, token=args.token)
    print(path)
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    out = write_report(args.runs, args.output, title=args.title)
    print(f"wrote {out} ({len(args.runs)} run{'s' if len(args.runs) > 1 else ''})")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import run_sweep

    result = run_sweep(args.config, args.overrides, args.grid, seeds=args.seeds, out=args.out,
                       parallel=args.parallel, fit=args.fit, fit_x=args.fit_x,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    rows = result["points"]
    failed = [r for r in rows if r["status"] == "failed"]
    keys = [*result["grid"], "seed"]
    for r in rows:
        loss = f"{r['eval_loss']:.4f}" if r["eval_loss"] is not None else "-"
        print(" ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in keys if r[k] is not None)
              + f"  {r['status']}  val loss {loss}" + (f"  ({r['error']})" if r["error"] else ""))
    fit = result.get("fit")
    if fit and fit.get("alpha") is not None:
        ci = fit.get("alpha_ci95")
        print(f"power law ({fit['x']}): L = {fit['E']:.4f} + {fit['A']:.4g} / x^{fit['alpha']:.4f}"
              + (f", alpha 95% interval [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
              + (f" ({fit['note']})" if fit.get("note") else ""))
    elif fit:
        print(f"power law: {fit['note']}")
    print(f"wrote {args.out}/sweep.csv, sweep.json and sweep.html")
    return 1 if failed else 0


def cmd_serve(args) -> int:
    from .serve import serve

    return serve(args.model, adapter=args.adapter, host=args.host, port=args.port, api_key=args.api_key,
                 device=args.device, log=lambda line: print(line, file=sys.stderr, flush=True))


def _device(text: str) -> str:
    """A torch device string, checked without importing torch (the command line answers at once)."""
    import re

    if not re.fullmatch(r"(cpu|cuda|mps|xpu|npu|hpu|mlu|musa)(:\d+)?|\d+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N or mps")
    return text


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _as_config_error(err: Exception):
    """A library's ValueError about an argument as llmkit's one line (ours already are: they keep their names)."""
    from .errors import ConfigError, OneLineError, first_line

    return err if isinstance(err, OneLineError) else ConfigError(first_line(err))


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "generate": cmd_generate, "evaluate": cmd_evaluate,
            "merge": cmd_merge, "export": cmd_export, "push": cmd_push, "pull": cmd_pull, "serve": cmd_serve,
            "report": cmd_report, "sweep": cmd_sweep}

if __name__ == "__main__":
    sys.exit(main())
