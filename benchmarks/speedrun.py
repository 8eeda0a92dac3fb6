"""Time to quality: `llmkit train configs/shakespeare-char-speedrun.yaml` against nanoGPT's CPU recipe, in one run.

nanoGPT is its own `train.py` (benchmarks/nanogpt/, unmodified, MIT), run with the README's CPU command
(4/4/128, block 64, batch 12, 2000 iterations, `--compile=False`) on the data its `prepare.py` makes. llmkit is
the `llmkit` command. Each is one whole process, timed from start to exit after data preparation (imports,
evaluations, checkpoints, samples and plots included), one after the other: nanoGPT before and after llmkit,
since this machine's speed drifts over minutes. nanoGPT's `train.py` seeds torch with 1337 and has no seed setting:
its n-th run here offsets that seed by n (a wrapper around `torch.manual_seed`; the script itself is unmodified).

Records hold over seeds (modded-nanogpt's rule): the preset runs with `--seeds` (5 by default) and nanoGPT with
`--nanogpt-runs` (2), and the table gives each one's mean and spread of wall time and final loss, with a one-sided
Welch t-test that the preset's final loss is below nanoGPT's (p < 0.05 to claim the record).

`llmkit` sets glibc's malloc to keep the memory a step frees (llmkit/cli.py, `keep_freed_memory`); nanoGPT's
`train.py` runs with glibc's defaults, as its README runs it. `--nanogpt-with-llmkit-malloc` also runs nanoGPT
with the same two settings (glibc's own MALLOC_*_ variables), beside its plain runs, to show what the setting alone
is worth to it. Those runs are reported apart; the target and the speed-up are the plain runs'.

One evaluator scores every final model: mean next-character loss over the last 10% of the play (nanoGPT's
validation split), in consecutive blocks of 64 characters, fp32. The target is nanoGPT's final loss under it.

Two tables:
- the preset, once per seed: whole-process wall time, final loss, and how much faster than nanoGPT it reaches
  nanoGPT's final loss (the preset's whole run, when its final loss is at or below the target);
- the levers, one at a time on top of the previous ones, from nanoGPT's recipe in llmkit to the preset: each run
  evaluates every `--eval-every` steps, and its time to the target is when the first evaluation at or below the
  target is printed (stdout is read as it comes), so the extra evaluations count against it.

    python benchmarks/speedrun.py [--seeds 1 2 3 4 5] [--nanogpt-runs 2] [--no-levers]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _common import SHAKESPEARE, prepare_once, report, shakespeare_overrides
from torch.nn import functional as F

from llmkit.cli import MMAP_THRESHOLD, TRIM_THRESHOLD

REPO = pathlib.Path(__file__).resolve().parents[1]
NANOGPT = REPO / "benchmarks" / "nanogpt"
PRESET = REPO / "configs" / "shakespeare-char-speedrun.yaml"
CPU_PRESET = REPO / "configs" / "shakespeare-char-cpu.yaml"
NANOGPT_CPU = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
               "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
BLOCK = 64
# what llmkit's command line sets with mallopt (llmkit/cli.py), as glibc's environment variables
LLMKIT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

# Levers, each added to the ones above it: (name, config, overrides). The first is nanoGPT's recipe in llmkit
# (its model with learned positions, AdamW, cosine, fp32); "the preset" is configs/shakespeare-char-speedrun.yaml.
# Rows marked "(alone)" change one thing of the row above them and are not carried on.
MUON = ["training.optimizer=muon", "training.muon.lr=0.03"]
WSD = ["training.lr_scheduler_type=warmup_stable_decay", "training.warmup_steps=10",
       "training.lr_scheduler_kwargs={}"]  # decays over the last 20% by default
# the earlier presets' model, 4 blocks of 128 (the preset has 2 of 192) with Muon's momentum at 0.95 (0.9 now), and
# their 320 steps with a cosine decay over the last half (288 steps, a linear decay over the last 180 now)
# and random windows, as nanoGPT draws them (the preset cuts the play into shuffled blocks now)
WINDOWS = ["data.packing=random"]
FOUR_BY_128 = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "training.muon.momentum=0.95", *WINDOWS]
S320 = ["training.max_steps=320", "training.eval_steps=320", "training.save_steps=320", *WINDOWS]
LINEAR_320 = [*S320, "training.lr_scheduler_kwargs={num_decay_steps: 200, decay_type: linear}"]
PREVIOUS = [*FOUR_BY_128, *S320, "training.muon.lr=0.04", "training.lr_scheduler_kwargs={num_decay_steps: 160}"]
# the presets before that: batch 24 and Muon lr 0.03, in fp32 (as they ran: bf16 is the default on CPUs with AMX now)
B24 = [*FOUR_BY_128, "training.per_device_train_batch_size=24", "training.muon.lr=0.03", "training.bf16=false"]
OLD = [*B24, "training.learning_rate=2e-3", "training.max_steps=280",
       "training.lr_scheduler_kwargs={num_decay_steps: 140}"]
B24_220 = [*B24, "training.max_steps=220", "training.lr_scheduler_kwargs={num_decay_steps: 110}",
           "training.eval_steps=220", "training.save_steps=220"]
LEVERS = [
    ("nanoGPT's recipe in llmkit (learned positions, AdamW 1e-3, cosine, batch 12, 2000 steps, fp32)", CPU_PRESET,
     ["model.position_embedding_type=learned", "training.bf16=false"]),
    ("+ rotary positions (shakespeare-char-cpu.yaml in fp32)", CPU_PRESET, ["training.bf16=false"]),
    ("  bf16 autocast (alone, on the row above)", CPU_PRESET, ["training.bf16=true"]),
    ("+ AdamW lr 2e-3", CPU_PRESET, ["training.bf16=false", "training.learning_rate=2e-3"]),
    ("+ Muon 0.03 on the block matrices", CPU_PRESET, ["training.bf16=false", "training.learning_rate=2e-3", *MUON]),
    ("+ warmup-stable-decay, 600 steps", CPU_PRESET, ["training.bf16=false", "training.learning_rate=2e-3", *MUON, *WSD,
                                                     "training.max_steps=600"]),
    ("+ batch 24, 280 steps, decay over half (the preset before QK-norm)", PRESET, [*OLD, "model.qk_norm=false",
                                                                             "model.zero_init_residual=false"]),
    ("+ QK-norm", PRESET, [*OLD, "model.zero_init_residual=false"]),
    ("+ zero-initialised residual projections", PRESET, OLD),
    ("+ AdamW 4e-3 on embeddings and norms, 220 steps (an earlier preset)", PRESET, B24_220),
    ("  ReLU² (alone, on the row above)", PRESET, [*B24_220, "model.activation_function=relu2"]),
    ("  untied head (alone, on the row above)", PRESET, [*B24_220, "model.tie_word_embeddings=false"]),
    ("  bf16 autocast (alone, on the row above)", PRESET, [*B24_220, "training.bf16=true"]),
    ("  torch.compile (alone, on the row above)", PRESET, [*B24_220, "training.torch_compile=true"]),
    ("+ batch 12, 320 steps, Muon lr 0.04 (the previous preset, in fp32)", PRESET, [*PREVIOUS, "training.bf16=false"]),
    ("+ bf16 autocast, attention in fp32 (the previous preset)", PRESET, [*PREVIOUS, "training.bf16=true"]),
    ("+ linear decay over the last 200 steps (from a cosine over 160)", PRESET, [*FOUR_BY_128, *LINEAR_320,
                                                                                "training.muon.lr=0.04"]),
    ("+ 2 blocks of 192 (6 heads), Muon lr 0.03", PRESET, [*LINEAR_320, "training.muon.momentum=0.95"]),
    ("+ Muon momentum 0.9", PRESET, LINEAR_320),
    ("+ 288 steps, linear decay over the last 180", PRESET, WINDOWS),
    ("+ shuffled blocks instead of random windows: the preset", PRESET, []),
    ("  AdamW instead of Muon (alone, on the preset)", PRESET, ["training.optimizer=adamw", "training.muon=null",
                                                                "training.learning_rate=3e-3"]),
]


def run_timed(cmd: list[str], cwd: pathlib.Path, pattern: re.Pattern, env: dict | None = None) -> dict:
    """Run one process; timestamp every output line as it arrives. `evals`: (seconds since start, step, loss) of
    each line matching `pattern`, and the seconds spent in evaluations up to that line (Trainer's eval_runtime)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="", **(env or {}))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    evals, tail, eval_time = [], [], 0.0
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        runtime = re.search(r"'eval_runtime': '?([\d.]+)", line)
        if runtime:
            eval_time += float(runtime.group(1))
        match = pattern.search(line)
        if match:
            evals.append((time.perf_counter() - start, int(match.group(1)), float(match.group(2)), eval_time))
    proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"wall_s": wall, "evals": evals, "failed": "".join(tail[-3:]).strip()}
    return {"wall_s": wall, "evals": evals}


def val_text() -> str:
    text = SHAKESPEARE.read_text()
    return text[int(len(text) * 0.9):]  # nanoGPT's prepare.py: the last 10%


@torch.no_grad()
def score(model, ids: list[int]) -> float:
    """Mean next-token loss over consecutive blocks of BLOCK tokens with their next tokens (fp32)."""
    n = (len(ids) - 1) // BLOCK
    data = torch.tensor(ids[: n * BLOCK + 1])
    x = torch.stack([data[i * BLOCK : (i + 1) * BLOCK] for i in range(n)])
    y = torch.stack([data[i * BLOCK + 1 : (i + 1) * BLOCK + 1] for i in range(n)])
    total = 0.0
    for xb, yb in zip(x.split(64), y.split(64)):
        logits = model(xb)
        logits = logits[0] if isinstance(logits, tuple) else logits.logits
        total += F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), reduction="sum").item()
    return total / (n * BLOCK)


def score_nanogpt(out_dir: pathlib.Path) -> float:
    sys.path.insert(0, str(NANOGPT))
    try:
        from model import GPT, GPTConfig
    finally:
        sys.path.pop(0)
    ckpt = torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    chars = sorted(set(SHAKESPEARE.read_text()))
    stoi = {c: i for i, c in enumerate(chars)}

    class Full(torch.nn.Module):  # nanoGPT's forward returns the last position only without targets
        def forward(self, idx):
            b, t = idx.shape
            x = model.transformer.drop(model.transformer.wte(idx) + model.transformer.wpe(torch.arange(t)))
            for block in model.transformer.h:
                x = block(x)
            return model.lm_head(model.transformer.ln_f(x)), None

    return score(Full(), [stoi[c] for c in val_text()])


def score_llmkit(run: pathlib.Path) -> float:
    from llmkit.loading import load_model

    model, tokenizer = load_model(str(run), device="cpu")
    model.float().eval()
    return score(model, tokenizer(val_text(), add_special_tokens=False, verbose=False)["input_ids"])


SEEDED = """import runpy, sys, torch
offset, seed = int(sys.argv.pop(1)), torch.manual_seed
torch.manual_seed = lambda s: seed(s + offset)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def nanogpt(work: pathlib.Path, name: str, offset: int = 0, env: dict | None = None) -> dict:
    """One whole nanoGPT `train.py` process with its seed 1337 + `offset` (and `env` added to its environment)."""
    out = work / f"out-{name}"
    (work / "nanogpt" / "seeded.py").write_text(SEEDED)
    result = run_timed([sys.executable, "seeded.py", str(offset), *NANOGPT_CPU, f"--out_dir={out}"], work / "nanogpt",
                       re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)"), env)
    result["loss"] = score_nanogpt(out)
    shutil.rmtree(out)
    return result


def llmkit(work: pathlib.Path, config: pathlib.Path, overrides: list[str], name: str) -> dict:
    out = work / f"run-{name}"
    base = [*shakespeare_overrides(work), f"training.output_dir={out}", "training.report_to=none",
            "training.disable_tqdm=true"]
    result = run_timed([sys.executable, "-m", "llmkit.cli", "train", str(config), *base, *overrides], work,
                       re.compile(r"step (\d+)/\d+ \| eval loss ([\d.]+)"))
    result["loss"] = score_llmkit(out) if "failed" not in result else None
    shutil.rmtree(out, ignore_errors=True)
    return result


def time_to(target: float, result: dict) -> float | None:
    """Seconds from the process start to the first evaluation at or below the target, less the evaluations made
    before it (a run that stopped there would not have made them)."""
    previous = 0.0
    for t, _, loss, eval_time in result["evals"]:
        if loss <= target:
            return t - previous
        previous = eval_time
    return None


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation, min and max."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def below_test(preset: list[float], nano: list[float]) -> float | None:
    """p-value of the one-sided Welch t-test that the preset's mean final loss is below nanoGPT's."""
    from scipy import stats

    if len(preset) < 2 or len(nano) < 2:
        return None
    if statistics.stdev(preset) == 0 and statistics.stdev(nano) == 0:
        return 0.0 if max(preset) < min(nano) else 1.0
    return float(stats.ttest_ind(preset, nano, equal_var=False, alternative="less").pvalue)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--nanogpt-runs", type=int, default=2, help="nanoGPT runs, split before and after llmkit's")
    parser.add_argument("--no-levers", action="store_true")
    parser.add_argument("--eval-every", type=int, default=100, help="lever runs: steps between evaluations")
    parser.add_argument("--levers-only", nargs="*", type=int, help="lever rows to run (indices), default all")
    parser.add_argument("--preset", type=pathlib.Path, default=PRESET, help="the recipe timed against nanoGPT")
    parser.add_argument("--goal", type=float, default=5.0, help="the speed-up the verdict asks for")
    parser.add_argument("--nanogpt-with-llmkit-malloc", action="store_true",
                        help="also run nanoGPT with llmkit's malloc settings, beside each plain run (reported apart)")
    args = parser.parse_args()
    if not SHAKESPEARE.exists():
        raise SystemExit(f"{SHAKESPEARE} not found: this benchmark needs ../shared beside the checkout")
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise SystemExit('the seeds\' test needs scipy: pip install -e ".[dev]" (or pip install scipy)')
    work = pathlib.Path(tempfile.mkdtemp(prefix="llmkit-speedrun-"))
    nano_runs, tuned_runs = [], []
    try:
        shutil.copytree(NANOGPT, work / "nanogpt")
        data = work / "nanogpt" / "data" / "shakespeare_char"
        shutil.copy(SHAKESPEARE, data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
        prepare_once(work, {args.preset, CPU_PRESET})

        def nano(offset: int) -> None:
            r = nanogpt(work, f"nano-{offset}", offset)
            nano_runs.append({"seed": 1337 + offset, **r})
            print(f"nanoGPT seed {1337 + offset}: {r['wall_s']:.1f} s, final loss {r['loss']:.4f}", flush=True)
            if args.nanogpt_with_llmkit_malloc:
                r = nanogpt(work, f"nano-malloc-{offset}", offset, LLMKIT_MALLOC)
                tuned_runs.append({"seed": 1337 + offset, **r})
                print(f"nanoGPT seed {1337 + offset}, llmkit's malloc settings: {r['wall_s']:.1f} s, final loss "
                      f"{r['loss']:.4f}", flush=True)

        first = (args.nanogpt_runs + 1) // 2
        for offset in range(first):
            nano(offset)
        preset = {}
        for seed in args.seeds:
            preset[seed] = llmkit(work, args.preset, [f"training.seed={seed}"], f"preset-{seed}")
            if preset[seed]["loss"] is None:
                raise SystemExit(f"the preset failed: {preset[seed]['failed']}")
            print(f"preset seed {seed}: {preset[seed]['wall_s']:.1f} s, final loss {preset[seed]['loss']:.4f}",
                  flush=True)
        levers = {}  # names are unique
        if not args.no_levers:
            chosen = args.levers_only if args.levers_only is not None else range(len(LEVERS))
            for name, config, overrides in [LEVERS[i] for i in chosen]:
                every = [f"training.eval_steps={args.eval_every}", f"training.save_steps={args.eval_every}",
                         "training.load_best_model_at_end=false", "training.save_total_limit=1",
                         "training.eval_subsample_tokens=null"]  # every evaluation on the whole split
                levers[name] = llmkit(work, config, [*overrides, *every, f"training.seed={args.seeds[0]}"],
                                      f"lever-{len(levers)}")
                r = levers[name]
                print(f"{name}: {r['wall_s']:.1f} s, " + (f"final loss {r['loss']:.4f}" if r["loss"] is not None
                                                          else f"failed: {r['failed']}"), flush=True)
        for offset in range(first, args.nanogpt_runs):
            nano(offset)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    nano_wall = spread([r["wall_s"] for r in nano_runs])
    nano_loss = spread([r["loss"] for r in nano_runs])
    target = nano_loss["mean"]
    rows = [{"run": "nanoGPT train.py, CPU recipe", "seed": r["seed"], "wall_s": r["wall_s"], "final_loss": r["loss"],
             "time_to_target_s": r["wall_s"], "speedup": nano_wall["mean"] / r["wall_s"]} for r in nano_runs]
    for seed, r in preset.items():
        reached = r["loss"] <= target
        rows.append({"run": f"llmkit train {args.preset.name}", "seed": seed, "wall_s": r["wall_s"],
                     "final_loss": r["loss"], "time_to_target_s": r["wall_s"] if reached else None,
                     "speedup": nano_wall["mean"] / r["wall_s"] if reached else None})
    preset_wall = spread([r["wall_s"] for r in preset.values()])
    preset_loss = spread([r["loss"] for r in preset.values()])
    p_value = below_test([r["loss"] for r in preset.values()], [r["loss"] for r in nano_runs])
    speedup = nano_wall["mean"] / preset_wall["mean"]
    summary = {"nanogpt_wall_s": nano_wall, "nanogpt_final_loss": nano_loss, "preset_wall_s": preset_wall,
               "preset_final_loss": preset_loss, "speedup_of_means": speedup,
               "speedup_slowest_preset_vs_fastest_nanogpt": nano_wall["min"] / preset_wall["max"],
               "welch_one_sided_p_preset_loss_below_nanogpt": p_value,
               "seeds_at_or_below_target": sum(r["loss"] <= target for r in preset.values())}
    if tuned_runs:
        tuned_wall = spread([r["wall_s"] for r in tuned_runs])
        summary["nanogpt_with_llmkit_malloc"] = {"env": LLMKIT_MALLOC, "wall_s": tuned_wall,
                                                 "final_loss": spread([r["loss"] for r in tuned_runs]),
                                                 "speedup_of_means": tuned_wall["mean"] / preset_wall["mean"]}
    print(f"\ntarget: nanoGPT's mean final loss {target:.4f} (sd {nano_loss['sd']:.4f}, {len(nano_runs)} runs); "
          f"nanoGPT wall {nano_wall['mean']:.1f} s (sd {nano_wall['sd']:.1f})\n")
    lever_rows = []
    for name, r in levers.items():
        t = time_to(target, r)
        lever_rows.append({"lever": name, "wall_s": r["wall_s"], "final_loss": r["loss"],
                           "first_eval_at_target_step": next((s for _, s, loss, _ in r["evals"] if loss <= target),
                                                             None),
                           "time_to_target_s": t, "speedup": nano_wall["mean"] / t if t else None})
    report("speedrun", rows, {"target_loss": target, "preset": str(args.preset.relative_to(REPO)),
                              "summary": summary, "nanogpt": nano_runs, "nanogpt_with_llmkit_malloc": tuned_runs,
                              "levers": lever_rows,
                              "eval_every": args.eval_every, "seeds": args.seeds})
    if lever_rows:
        from _common import print_table

        print()
        print_table(lever_rows)
    print(f"\npreset over {len(preset)} seeds: wall {preset_wall['mean']:.1f} s (sd {preset_wall['sd']:.1f}), final "
          f"loss {preset_loss['mean']:.4f} (sd {preset_loss['sd']:.4f}); nanoGPT over {len(nano_runs)}: wall "
          f"{nano_wall['mean']:.1f} s, loss {nano_loss['mean']:.4f}; speed-up of the means {speedup:.2f}x; "
          f"one-sided Welch p = {p_value if p_value is None else f'{p_value:.3g}'}")
    if tuned_runs:
        tuned = summary["nanogpt_with_llmkit_malloc"]
        print(f"nanoGPT with llmkit's malloc settings over {len(tuned_runs)}: wall {tuned['wall_s']['mean']:.1f} s, "
              f"loss {tuned['final_loss']['mean']:.4f}; the preset {tuned['speedup_of_means']:.2f}x faster")
    verdict = (speedup >= args.goal and p_value is not None and p_value < 0.05
               and summary["seeds_at_or_below_target"] == len(preset))
    print(f"{'PASS' if verdict else 'FAIL'}: goal {args.goal:g}x over every seed with p < 0.05")


if __name__ == "__main__":
    main()
