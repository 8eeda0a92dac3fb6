"""The curriculum's size ablation, measured: `llmkit sweep configs/ablation.yaml` over model width at a fixed token
budget on the built-in corpus, two seeds, with the power-law fit; a table, results/ablation.json and
results/ablation.png (final validation loss against non-embedding parameters, log-log, with the fit).

    python benchmarks/ablation.py                      # runs the sweep into runs/ablation (resumable)
    python benchmarks/ablation.py --from runs/ablation # re-reads a finished sweep
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

from _common import REPO, RESULTS, report

GRID = ["--grid", "model.n_embd=32,64,128,256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs" / "ablation"))
    parser.add_argument("--from", dest="source", default=None, help="a finished sweep's folder: no training")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    folder = pathlib.Path(args.source or args.out)
    if args.source is None:
        cmd = [sys.executable, "-m", "llmkit.cli", "sweep", str(REPO / "configs" / "ablation.yaml"), *GRID,
               "--seeds", str(args.seeds), "--fit", "power-law", "--out", str(folder)]
        subprocess.run(cmd, check=True)
    sweep = json.loads((folder / "sweep.json").read_text())
    by_width: dict[str, list[dict]] = {}
    for p in sweep["points"]:
        by_width.setdefault(p["model.n_embd"], []).append(p)
    rows = []
    for width, points in by_width.items():
        losses = [p["eval_loss"] for p in points if p["eval_loss"] is not None]
        rows.append({"n_embd": int(width), "non_embedding_params": points[0]["non_embedding_parameters"],
                     "params": points[0]["parameters"], "tokens": points[0]["tokens"],
                     "val_loss_mean": sum(losses) / len(losses),
                     "val_loss_seeds": [round(v, 4) for v in losses],
                     "bits_per_char_mean": sum(p["eval_bits_per_char"] for p in points) / len(points),
                     "wall_s_mean": sum(p["wall_seconds"] for p in points) / len(points),
                     "flops": points[0]["flops"]})
    fit = sweep["fit"]
    print(f"power law: L = {fit['E']:.3f} + {fit['A']:.4g} / N^{fit['alpha']:.3f}, alpha 95% interval "
          f"{fit.get('alpha_ci95')}")
    report("ablation", rows, {"fit": fit, "sweep": sweep})
    plot(rows, fit, RESULTS / "ablation.png")


def plot(rows: list[dict], fit: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter([r["non_embedding_params"]] * len(r["val_loss_seeds"]), r["val_loss_seeds"], color="#0969da",
                   s=18, zorder=3)
    xs = np.geomspace(min(r["non_embedding_params"] for r in rows), max(r["non_embedding_params"] for r in rows), 50)
    lo, hi = fit.get("alpha_ci95") or (None, None)
    label = f"L = {fit['E']:.2f} + {fit['A']:.3g} / N^{fit['alpha']:.3f}" + (
        f" (alpha 95%: {lo:.3f}-{hi:.3f})" if lo is not None else "")
    ax.plot(xs, fit["E"] + fit["A"] * xs ** -fit["alpha"], color="#cf222e", label=label)
    for r in rows:
        ax.annotate(f"d={r['n_embd']}", (r["non_embedding_params"], r["val_loss_mean"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final val loss (nats/token)")
    ax.set_title("Width ablation at 1.0M tokens (4 layers, built-in corpus)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
