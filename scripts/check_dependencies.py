"""Know when the ground moves: run the default test suite against the newest releases of torch's companions,
and again against the lower bounds pyproject.toml declares, each in a scratch virtual environment.

torch stays at one wheel in both (the version installed in the interpreter running this script, or `--torch`),
so a CPU machine never pulls CUDA builds. Prints one table: environment, package, version, and the suite's
result. Exit code 0 when both suites pass. The suite includes tests/test_compat.py, which checks every private
touchpoint listed in llmkit/compat.py, so a release that moves one fails there by name.

When to run it: after any of transformers, peft, datasets, accelerate, tokenizers, evaluate or huggingface_hub
publishes a release (they move every few weeks, and a fresh `pip install` takes the newest), before raising or
lowering a bound in pyproject.toml, and before a release of llmkit.

    python scripts/check_dependencies.py                  # both environments (about 10 minutes on 2 cores)
    python scripts/check_dependencies.py --only newest    # just the newest releases
    python scripts/check_dependencies.py --keep /tmp/deps # keep the environments and logs there
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
COMPANIONS = ("transformers", "peft", "datasets", "accelerate", "tokenizers", "evaluate", "huggingface_hub", "trl")
SUMMARY = re.compile(r"^=*\s*(?P<text>(\d+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed|warnings?)"
                     r"(, )?)+).* in [\d.]+s", re.M)


def lower_bounds() -> dict[str, str]:
    """`name>=X` of each companion in pyproject.toml's dependencies: {name: X}."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = {}
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = req.name.replace("-", "_").lower()
        for s in req.specifier:
            if s.operator == ">=" and name in COMPANIONS:
                bounds[name] = s.version
    return bounds


def run(cmd: list[str], log: pathlib.Path, **kw) -> int:
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        return subprocess.run(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, **kw).returncode


def check(mode: str, work: pathlib.Path, torch_spec: str, pytest_args: list[str]) -> dict:
    env = work / f"venv-{mode}"
    log = work / f"{mode}.log"
    log.write_text("")
    shutil.rmtree(env, ignore_errors=True)
    python = env / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    started = time.monotonic()
    steps = [[sys.executable, "-m", "venv", env], [*pip, torch_spec]]
    if mode == "newest":
        steps.append([*pip, "--upgrade", "-e", f"{REPO}[dev]", *COMPANIONS])
    else:
        constraints = work / "lower-bounds.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in lower_bounds().items()))
        steps.append([*pip, "-e", f"{REPO}[dev]", "-c", constraints])
    for step in steps:
        if run(step, log) != 0:
            return {"mode": mode, "versions": {}, "result": "install failed", "ok": False, "log": str(log)}
    versions = json.loads(subprocess.run(
        [python, "-c", "import importlib.metadata as m, json; "
                       f"print(json.dumps({{n: m.version(n) for n in {('torch', *COMPANIONS)!r}}}))"],
        capture_output=True, text=True, check=True).stdout)
    rc = run([python, "-m", "pytest", "-m", "not slow", "-n", "2", "-q", "-p", "no:cacheprovider", *pytest_args], log, cwd=REPO)
    matches = SUMMARY.findall(log.read_text())
    summary = matches[-1][0].rstrip(", ") if matches else f"pytest exit {rc}"
    return {"mode": mode, "versions": versions, "result": summary, "ok": rc == 0, "log": str(log),
            "minutes": round((time.monotonic() - started) / 60, 1)}


def table(results: list[dict]) -> str:
    rows = [("environment", "package", "version", "suite")]
    for r in results:
        names = list(r["versions"]) or ["-"]
        for i, name in enumerate(names):
            verdict = ("passed" if r["ok"] else "FAILED") + f" ({r['result']})"
            rows.append((r["mode"] if i == 0 else "", name, r["versions"].get(name, "-"), verdict if i == 0 else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("newest", "lower"), help="run one environment only")
    parser.add_argument("--torch", default=None, help="torch requirement (default: the version installed here)")
    parser.add_argument("--keep", type=pathlib.Path, help="folder for the environments and logs (default: a temporary one)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args()
    torch_spec = args.torch or f"torch=={importlib.metadata.version('torch').split('+')[0]}"
    work = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="llmkit-deps-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in ([args.only] if args.only else ["newest", "lower"]):
        print(f"[{mode}] installing and running the default suite (log: {work / (mode + '.log')}) ...", flush=True)
        results.append(check(mode, work, torch_spec, args.pytest_args))
    print(table(results))
    (work / "results.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        for mode in ("newest", "lower"):
            shutil.rmtree(work / f"venv-{mode}", ignore_errors=True)
    print(f"logs and results.json in {work}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
